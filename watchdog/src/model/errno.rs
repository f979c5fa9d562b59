//! The errno values the observations carry (syscall returns are `-errno`),
//! by name, so that no module compares raw numbers.

pub const ENOENT: i64 = 2;
pub const EAGAIN: i64 = 11;
pub const EACCES: i64 = 13;
pub const ECONNRESET: i64 = 104;
pub const ECONNREFUSED: i64 = 111;
pub const EINPROGRESS: i64 = 115;

/// A syscall's return value failed with `errno`.
pub fn failed_with(ret: i64, errno: i64) -> bool {
    ret == -errno
}

/// The name of a negative syscall return (`-11` is `EAGAIN`).
pub fn name(ret: i64) -> String {
    match -ret {
        ENOENT => "ENOENT".into(),
        EAGAIN => "EAGAIN".into(),
        EACCES => "EACCES".into(),
        ECONNRESET => "ECONNRESET".into(),
        ECONNREFUSED => "ECONNREFUSED".into(),
        EINPROGRESS => "EINPROGRESS".into(),
        n => format!("errno {n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_negative_returns() {
        assert_eq!(name(-11), "EAGAIN");
        assert_eq!(name(-111), "ECONNREFUSED");
        assert_eq!(name(-5), "errno 5");
        assert!(failed_with(-115, EINPROGRESS));
        assert!(!failed_with(115, EINPROGRESS));
    }
}
