//! Options of the systemd-hang detection and the socket paths it follows:
//! the defaults (with `$DBUS_SYSTEM_BUS_ADDRESS`), D-Bus address parsing,
//! validation of configured paths, and where a configured path leads.
use std::{fs, path::Path, time::Duration};

use watchdog_common::{SOCK_PATH_LEN, SOCK_PATH_SLOTS};

/// Socket paths followed by default (the system bus under both spellings
/// clients use; /var/run is a symlink to /run).
pub const DEFAULT_SOCKETS: &[&str] = &[
    "/run/systemd/private",
    "/run/dbus/system_bus_socket",
    "/var/run/dbus/system_bus_socket",
];

/// How requests on the followed sockets are followed
/// (`--dbus-requests`, `systemd.requests`).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Deserialize,
    serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum DbusRequests {
    /// The socket tracepoints where the kernel has them (Linux 6.3+), else
    /// no request tracking: never a syscall hook.
    #[default]
    Auto,
    /// `sock_send_length`/`sock_recv_length` (tp_btf): requests by serial.
    SocketTracepoints,
    /// The raw `sys_enter`/`sys_exit` programs: every syscall of the node
    /// pays the tracing slow path. Only when asked (older kernels).
    Syscalls,
    /// No request tracking.
    Off,
}

/// The path the request tracking takes on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestPath {
    SocketTracepoints,
    Syscalls,
    Off,
}

impl RequestPath {
    pub fn name(self) -> &'static str {
        match self {
            Self::SocketTracepoints => "socket_tracepoints",
            Self::Syscalls => "syscalls",
            Self::Off => "off",
        }
    }
}

impl DbusRequests {
    /// The path for this kernel (`socket_tracepoints`: it has
    /// `sock_send_length`/`sock_recv_length`), and why.
    pub fn resolve(self, socket_tracepoints: bool) -> (RequestPath, String) {
        const WITHOUT: &str = "the agent's own probes (Ping of systemd, GetId of the bus, every \
             5 s) still see a server that stopped answering, without naming who waits";
        match (self, socket_tracepoints) {
            (Self::Auto | Self::SocketTracepoints, true) => (
                RequestPath::SocketTracepoints,
                "requests followed by serial from the socket tracepoints sock_send_length/sock_recv_length (no syscall hook)".into(),
            ),
            (Self::Auto, false) => (
                RequestPath::Off,
                format!(
                    "this kernel has no sock_send_length/sock_recv_length tracepoints (Linux < 6.3): requests are not followed; {WITHOUT}; `--dbus-requests syscalls` follows them with a syscall hook (every syscall of the node pays)"
                ),
            ),
            (Self::SocketTracepoints, false) => (
                RequestPath::Off,
                format!(
                    "socket-tracepoints asked, but this kernel has no sock_send_length/sock_recv_length tracepoints (Linux < 6.3): requests are not followed; {WITHOUT}"
                ),
            ),
            (Self::Syscalls, _) => (
                RequestPath::Syscalls,
                "requests followed from the raw sys_enter/sys_exit programs (asked for; every syscall of the node pays the tracing slow path)".into(),
            ),
            (Self::Off, _) => (
                RequestPath::Off,
                format!("requests are not followed (asked for); {WITHOUT}"),
            ),
        }
    }
}

/// Options of the systemd-hang detection (`[systemd]` in the config).
#[derive(Clone, Debug)]
pub struct DbusOptions {
    /// How requests are followed.
    pub requests: DbusRequests,
    pub sockets: Vec<String>,
    /// Probe the bus and systemd while a connection waits.
    pub probe: bool,
    pub probe_timeout: Duration,
    /// Start corroborating when a connection has waited this long.
    pub suspect_after_ms: u64,
}

impl Default for DbusOptions {
    fn default() -> Self {
        Self {
            requests: DbusRequests::Auto,
            sockets: default_sockets(std::env::var("DBUS_SYSTEM_BUS_ADDRESS").ok().as_deref()),
            probe: true,
            probe_timeout: Duration::from_secs(2),
            suspect_after_ms: 2_000,
        }
    }
}

/// The default paths, plus the unix path of `DBUS_SYSTEM_BUS_ADDRESS`.
pub fn default_sockets(bus_address: Option<&str>) -> Vec<String> {
    let mut v: Vec<String> = DEFAULT_SOCKETS.iter().map(|s| (*s).to_owned()).collect();
    if let Some(p) = bus_address.and_then(unix_path_of_address)
        && !v.contains(&p)
    {
        v.push(p);
    }
    v
}

/// The `path=` of the first `unix:` entry of a D-Bus address.
pub fn unix_path_of_address(addr: &str) -> Option<String> {
    addr.split(';').find_map(|entry| {
        let rest = entry.strip_prefix("unix:")?;
        rest.split(',')
            .find_map(|kv| kv.strip_prefix("path="))
            .map(str::to_owned)
    })
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A missing map or a failed map update (shared with the storage probes).
    #[error(transparent)]
    Maps(#[from] crate::storage::SetupError),
    #[error(
        "systemd.sockets {0:?}: a socket path is absolute and at most {max} bytes",
        max = SOCK_PATH_LEN - 1
    )]
    BadPath(String),
    #[error("systemd.sockets: at most {max} paths, got {got}", max = SOCK_PATH_SLOTS)]
    TooManyPaths { got: usize },
}

pub fn validate_sockets(paths: &[String]) -> Result<(), SetupError> {
    if paths.len() > SOCK_PATH_SLOTS as usize {
        return Err(SetupError::TooManyPaths { got: paths.len() });
    }
    for p in paths {
        if !p.starts_with('/') || p.len() >= SOCK_PATH_LEN || p.contains('\0') {
            return Err(SetupError::BadPath(p.clone()));
        }
    }
    Ok(())
}

/// The path with its directory's symlinks resolved (`/var/run/dbus/x` ->
/// `/run/dbus/x`); only the directory is resolved, the socket itself is
/// not touched.
pub(super) fn canonical_socket_path(path: &str) -> Option<String> {
    let p = Path::new(path);
    let root = crate::paths::host::get().path;
    let dir = if root == Path::new("/") {
        fs::canonicalize(p.parent()?).ok()?
    } else {
        // Links inside the host's tree lead to the host's paths.
        crate::paths::host::resolve_dir(&root, p.parent()?.to_str()?)?
    };
    let real = dir.join(p.file_name()?).to_string_lossy().into_owned();
    (real != path).then_some(real)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::procfs::parse_socket_link;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn socket_paths_are_named_by_where_they_lead() {
        let dir = std::env::temp_dir().join(format!("wd-canon-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("run/dbus")).unwrap();
        fs::create_dir_all(dir.join("var")).unwrap();
        std::os::unix::fs::symlink("../run", dir.join("var/run")).unwrap();
        let real = fs::canonicalize(&dir).unwrap();
        let via = format!("{}/var/run/dbus/system_bus_socket", real.display());
        assert_eq!(
            canonical_socket_path(&via),
            Some(format!("{}/run/dbus/system_bus_socket", real.display()))
        );
        // Already real, or a directory that does not exist: kept as given.
        assert_eq!(
            canonical_socket_path(&format!("{}/run/dbus/x", real.display())),
            None
        );
        assert_eq!(canonical_socket_path("/nonexistent-wd/dbus/x"), None);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn auto_never_takes_the_syscall_hook() {
        use DbusRequests::*;
        assert_eq!(Auto.resolve(true).0, RequestPath::SocketTracepoints);
        assert_eq!(Auto.resolve(false).0, RequestPath::Off);
        assert!(Auto.resolve(false).1.contains("--dbus-requests syscalls"));
        assert_eq!(SocketTracepoints.resolve(false).0, RequestPath::Off);
        assert_eq!(Syscalls.resolve(true).0, RequestPath::Syscalls);
        assert_eq!(Off.resolve(true).0, RequestPath::Off);
    }

    #[test]
    fn addresses_and_paths() {
        assert_eq!(
            unix_path_of_address("unix:path=/x/bus,guid=1;tcp:host=a"),
            Some("/x/bus".into())
        );
        assert_eq!(unix_path_of_address("unix:abstract=/tmp/x"), None);
        let d = default_sockets(Some("unix:path=/custom/bus"));
        assert_eq!(d.len(), 4);
        assert_eq!(
            default_sockets(Some("unix:path=/run/dbus/system_bus_socket")).len(),
            3
        );
        assert!(validate_sockets(&s(&["relative"])).is_err());
        assert!(validate_sockets(&[format!("/{}", "x".repeat(120))]).is_err());
        assert!(validate_sockets(&s(&["/a"; 9])).is_err());
        assert!(validate_sockets(&s(DEFAULT_SOCKETS)).is_ok());
        assert_eq!(parse_socket_link("socket:[42]"), Some(42));
        assert_eq!(parse_socket_link("pipe:[42]"), None);
    }
}
