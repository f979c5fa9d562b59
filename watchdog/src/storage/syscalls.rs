//! The syscalls tracked in flight for watched processes: those that can block
//! on a file system, with where their file argument is. Numbers per
//! architecture; the loader writes them into the SYSCALL_KINDS map.
use watchdog_common::ArgKind::{self, DirfdPath1, Fd, NoArg, Path0, Path1};

#[cfg(target_arch = "x86_64")]
pub const TRACKED: &[(u32, &str, ArgKind)] = &[
    (0, "read", Fd),
    (1, "write", Fd),
    (2, "open", Path0),
    (3, "close", Fd),
    (4, "stat", Path0),
    (5, "fstat", Fd),
    (6, "lstat", Path0),
    (17, "pread64", Fd),
    (18, "pwrite64", Fd),
    (19, "readv", Fd),
    (20, "writev", Fd),
    (21, "access", Path0),
    (59, "execve", Path0),
    (74, "fsync", Fd),
    (75, "fdatasync", Fd),
    (76, "truncate", Path0),
    (77, "ftruncate", Fd),
    (80, "chdir", Path0),
    (81, "fchdir", Fd),
    (82, "rename", Path0),
    (83, "mkdir", Path0),
    (84, "rmdir", Path0),
    (85, "creat", Path0),
    (87, "unlink", Path0),
    (89, "readlink", Path0),
    (90, "chmod", Path0),
    (92, "chown", Path0),
    (94, "lchown", Path0),
    (137, "statfs", Path0),
    (138, "fstatfs", Fd),
    (162, "sync", NoArg),
    (165, "mount", Path1),
    (166, "umount2", Path0),
    (188, "setxattr", Path0),
    (191, "getxattr", Path0),
    (192, "lgetxattr", Path0),
    (217, "getdents64", Fd),
    (257, "openat", DirfdPath1),
    (258, "mkdirat", DirfdPath1),
    (260, "fchownat", DirfdPath1),
    (262, "newfstatat", DirfdPath1),
    (263, "unlinkat", DirfdPath1),
    (264, "renameat", DirfdPath1),
    (267, "readlinkat", DirfdPath1),
    (268, "fchmodat", DirfdPath1),
    (269, "faccessat", DirfdPath1),
    (285, "fallocate", Fd),
    (306, "syncfs", Fd),
    (316, "renameat2", DirfdPath1),
    (322, "execveat", DirfdPath1),
    (332, "statx", DirfdPath1),
    (428, "open_tree", DirfdPath1),
    (437, "openat2", DirfdPath1),
    (439, "faccessat2", DirfdPath1),
];

#[cfg(target_arch = "aarch64")]
pub const TRACKED: &[(u32, &str, ArgKind)] = &[
    (5, "setxattr", Path0),
    (8, "getxattr", Path0),
    (9, "lgetxattr", Path0),
    (34, "mkdirat", DirfdPath1),
    (35, "unlinkat", DirfdPath1),
    (38, "renameat", DirfdPath1),
    (39, "umount2", Path0),
    (40, "mount", Path1),
    (43, "statfs", Path0),
    (44, "fstatfs", Fd),
    (45, "truncate", Path0),
    (46, "ftruncate", Fd),
    (47, "fallocate", Fd),
    (48, "faccessat", DirfdPath1),
    (49, "chdir", Path0),
    (50, "fchdir", Fd),
    (53, "fchmodat", DirfdPath1),
    (54, "fchownat", DirfdPath1),
    (56, "openat", DirfdPath1),
    (57, "close", Fd),
    (61, "getdents64", Fd),
    (63, "read", Fd),
    (64, "write", Fd),
    (65, "readv", Fd),
    (66, "writev", Fd),
    (67, "pread64", Fd),
    (68, "pwrite64", Fd),
    (78, "readlinkat", DirfdPath1),
    (79, "newfstatat", DirfdPath1),
    (80, "fstat", Fd),
    (81, "sync", NoArg),
    (82, "fsync", Fd),
    (83, "fdatasync", Fd),
    (221, "execve", Path0),
    (267, "syncfs", Fd),
    (276, "renameat2", DirfdPath1),
    (281, "execveat", DirfdPath1),
    (291, "statx", DirfdPath1),
    (428, "open_tree", DirfdPath1),
    (437, "openat2", DirfdPath1),
    (439, "faccessat2", DirfdPath1),
];

/// Name and argument kind of a tracked syscall number.
pub fn lookup(nr: u32) -> Option<(&'static str, ArgKind)> {
    TRACKED
        .iter()
        .find(|(n, _, _)| *n == nr)
        .map(|(_, name, kind)| (*name, *kind))
}

/// A syscall's name for output: the tracked name, else `syscall_<nr>`.
pub fn name(nr: u32) -> String {
    lookup(nr)
        .map(|(n, _)| n.to_owned())
        .unwrap_or_else(|| format!("syscall_{nr}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        let mut seen = std::collections::HashSet::new();
        for (nr, name, _) in TRACKED {
            assert!(
                *nr < watchdog_common::SYSCALL_SLOTS,
                "{name} nr {nr} out of range"
            );
            assert!(seen.insert(*nr), "duplicate nr {nr}");
        }
        assert_eq!(lookup(lookup_nr("newfstatat")).unwrap().1, DirfdPath1);
        assert_eq!(lookup(lookup_nr("statfs")).unwrap().1, Path0);
        assert_eq!(lookup(lookup_nr("mount")).unwrap().1, Path1);
        assert_eq!(name(9999), "syscall_9999");
    }

    fn lookup_nr(name: &str) -> u32 {
        TRACKED.iter().find(|(_, n, _)| *n == name).unwrap().0
    }
}
