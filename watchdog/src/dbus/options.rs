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

/// Options of the systemd-hang detection (`[systemd]` in the config).
#[derive(Clone, Debug)]
pub struct DbusOptions {
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
    let dir = fs::canonicalize(p.parent()?).ok()?;
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
