//! Every filesystem path the agent reads, in one place. Paths under /proc and
//! /sys are joined to a root (normally `/`) so that tests can point the agent
//! at recorded trees.

pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";
pub const TRACEFS: &str = "/sys/kernel/tracing";
pub const LOCKDOWN: &str = "/sys/kernel/security/lockdown";

/// Relative to the root.
pub const PROC: &str = "proc";
pub const SYS: &str = "sys";
pub const KALLSYMS: &str = "proc/kallsyms";
pub const MOUNTINFO: &str = "proc/self/mountinfo";
pub const LOADAVG: &str = "proc/loadavg";
pub const THREADS_MAX: &str = "proc/sys/kernel/threads-max";
pub const PID_MAX: &str = "proc/sys/kernel/pid_max";
pub const OSRELEASE: &str = "proc/sys/kernel/osrelease";
pub const HOSTNAME: &str = "proc/sys/kernel/hostname";
pub const BOOT_ID: &str = "proc/sys/kernel/random/boot_id";
pub const UPTIME: &str = "proc/uptime";
/// The remediation journal (`--remediation-journal`, `[remediation] journal`).
pub const REMEDIATION_JOURNAL: &str = "/var/lib/watchdog/remediation.jsonl";
/// Where the pids hierarchy is mounted on cgroup v1 and v2 hosts when
/// mountinfo cannot tell (recorded trees without a mountinfo).
pub const CGROUP_V1_PIDS: &str = "sys/fs/cgroup/pids";
pub const CGROUP_V2: &str = "sys/fs/cgroup";
/// cgroup v1 freezer hierarchy (remediation freezes a cgroup before its kills).
pub const CGROUP_V1_FREEZER: &str = "sys/fs/cgroup/freezer";
/// fusectl: one directory per FUSE connection (remediation aborts one).
pub const FUSE_CONNECTIONS: &str = "sys/fs/fuse/connections";

/// Where the host's `/` is, for a node's own files that a pod does not see at
/// their usual path: the runtime's sockets, the journal, systemd's and the
/// bus's sockets, the host's mount table. `/` on the host itself and in the
/// DaemonSet (which mounts those paths at the host's path or the host's root
/// at `/host`); `/host` in a `kubectl debug node --profile=sysadmin` pod.
/// `/proc`, `/sys` and cgroupfs are never taken from it: they are the
/// kernel's, and the pod sees the host's through its host PID namespace.
pub mod host {
    use std::{
        ffi::OsString,
        os::unix::fs::MetadataExt as _,
        path::{Path, PathBuf},
        sync::OnceLock,
    };

    static ROOT: OnceLock<HostRoot> = OnceLock::new();

    /// The host root in use and how it was chosen (`watchdog check` says).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct HostRoot {
        pub path: PathBuf,
        pub how: &'static str,
    }

    impl HostRoot {
        pub fn is_host(&self) -> bool {
            self.path == Path::new("/")
        }
    }

    /// Where the debug pod of `kubectl debug node/<n>` puts the host's `/`.
    pub const DEBUG_POD_ROOT: &str = "/host";

    /// The host root from `--host-root`, else `$HOST_ROOT`, else `/host`
    /// when it is the root of PID 1 (same device and inode as
    /// `/proc/1/root`: a debug pod with the host's PID namespace), else `/`.
    /// A given root must be a directory; an empty one means `/`.
    pub fn resolve(flag: Option<&Path>, env: Option<OsString>) -> Result<HostRoot, String> {
        let given = match (flag, env) {
            (Some(p), _) => Some((p.to_path_buf(), "--host-root")),
            (None, Some(e)) if !e.is_empty() => Some((PathBuf::from(e), "$HOST_ROOT")),
            _ => None,
        };
        if let Some((path, how)) = given {
            if !path.is_absolute() {
                return Err(format!("{how} {}: not an absolute path", path.display()));
            }
            match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(format!("{how} {}: not a directory", path.display())),
                Err(e) => return Err(format!("{how} {}: {e}", path.display())),
            }
            return Ok(HostRoot { path, how });
        }
        let same = |a: &str, b: &str| match (std::fs::metadata(a), std::fs::metadata(b)) {
            (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
            _ => false,
        };
        if same(DEBUG_POD_ROOT, "/proc/1/root") && !same("/", "/proc/1/root") {
            return Ok(HostRoot {
                path: PathBuf::from(DEBUG_POD_ROOT),
                how: "detected (/host is the root of PID 1)",
            });
        }
        // PID 1's root cannot be read (no CAP_SYS_PTRACE over it): the debug
        // pod's layout itself, a whole file system's root mounted at /host.
        if std::fs::metadata("/proc/1/root").is_err()
            && std::fs::read_to_string("/proc/self/mountinfo")
                .is_ok_and(|m| mounts_a_root_at(&m, DEBUG_POD_ROOT))
            && ["run", "var", "proc"]
                .iter()
                .all(|d| Path::new(DEBUG_POD_ROOT).join(d).is_dir())
        {
            return Ok(HostRoot {
                path: PathBuf::from(DEBUG_POD_ROOT),
                how: "detected (a file system's root is mounted at /host)",
            });
        }
        Ok(HostRoot {
            path: PathBuf::from("/"),
            how: "default",
        })
    }

    /// Whether mountinfo text has a mount at `at` of its file system's root
    /// (field 4 is `/`, field 5 is `at`).
    fn mounts_a_root_at(mountinfo: &str, at: &str) -> bool {
        mountinfo.lines().any(|l| {
            let mut f = l.split(' ').skip(3);
            f.next() == Some("/") && f.next() == Some(at)
        })
    }

    /// Set once at start (the first call wins).
    pub fn set(root: HostRoot) {
        let _ = ROOT.set(root);
    }

    pub fn get() -> HostRoot {
        ROOT.get().cloned().unwrap_or(HostRoot {
            path: PathBuf::from("/"),
            how: "default",
        })
    }

    /// `path` (absolute, as on the host) as this process reaches it: under
    /// the host root, its directory's links resolved inside the host's tree
    /// (`/var/run/docker.sock` is `<root>/run/docker.sock` on a host whose
    /// `/var/run` links to `/run`).
    pub fn path(path: &str) -> PathBuf {
        path_under(&get().path, path)
    }

    /// [`path`] under `root`.
    pub fn path_under(root: &Path, path: &str) -> PathBuf {
        if root == Path::new("/") {
            return PathBuf::from(path);
        }
        let p = Path::new(path);
        match (p.parent().and_then(|d| d.to_str()), p.file_name()) {
            (Some(dir), Some(name)) => match resolve_dir(root, dir) {
                Some(real) => join(root, &real.join(name).to_string_lossy()),
                None => join(root, path),
            },
            _ => join(root, path),
        }
    }

    pub fn join(root: &Path, path: &str) -> PathBuf {
        if root == Path::new("/") {
            PathBuf::from(path)
        } else {
            root.join(path.trim_start_matches('/'))
        }
    }

    /// A `unix://PATH` endpoint on the host, as this process reaches it.
    pub fn unix_uri(uri: &str) -> String {
        match uri.strip_prefix("unix://") {
            Some(p) => format!("unix://{}", path(p).display()),
            None => uri.to_owned(),
        }
    }

    /// The host's mount table, relative to the procfs root: PID 1's when the
    /// host root is elsewhere (this process sits in a mount namespace of its
    /// own), else this process's.
    pub fn mountinfo() -> &'static str {
        if get().is_host() {
            super::MOUNTINFO
        } else {
            "proc/1/mountinfo"
        }
    }

    /// The directory of a host path with its symlinks resolved inside the
    /// host root (an absolute link such as Debian's `/var/run -> /run` leads
    /// to the host's `/run`, not this process's). Only directories are
    /// resolved; at most 40 links. The result is a host path.
    pub fn resolve_dir(root: &Path, dir: &str) -> Option<PathBuf> {
        let mut done = PathBuf::from("/");
        let mut todo: Vec<OsString> = Path::new(dir)
            .components()
            .rev()
            .filter_map(|c| match c {
                std::path::Component::Normal(n) => Some(n.to_os_string()),
                std::path::Component::ParentDir => Some(OsString::from("..")),
                _ => None,
            })
            .collect();
        let mut links = 0;
        while let Some(name) = todo.pop() {
            if name == ".." {
                done.pop();
                continue;
            }
            let next = done.join(&name);
            let here = join(root, next.to_str()?);
            let meta = std::fs::symlink_metadata(&here).ok()?;
            if meta.file_type().is_symlink() {
                links += 1;
                if links > 40 {
                    return None;
                }
                let target = std::fs::read_link(&here).ok()?;
                if target.is_absolute() {
                    done = PathBuf::from("/");
                }
                for c in target.components().rev() {
                    match c {
                        std::path::Component::Normal(n) => todo.push(n.to_os_string()),
                        std::path::Component::ParentDir => todo.push(OsString::from("..")),
                        _ => {}
                    }
                }
            } else if meta.is_dir() {
                done = next;
            } else {
                return None;
            }
        }
        Some(done)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn paths_join_and_strip_under_a_root() {
            assert_eq!(
                join(Path::new("/"), "/run/x.sock"),
                PathBuf::from("/run/x.sock")
            );
            assert_eq!(
                join(Path::new("/host"), "/run/x.sock"),
                PathBuf::from("/host/run/x.sock")
            );
        }

        #[test]
        fn a_root_mount_is_told_from_a_sub_directory_mount() {
            let m = "100 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
                     200 100 8:1 / /host rw - ext4 /dev/sda1 rw\n\
                     201 100 8:1 /var/lib /data rw - ext4 /dev/sda1 rw\n";
            assert!(mounts_a_root_at(m, "/host"));
            assert!(!mounts_a_root_at(m, "/data"));
            assert!(!mounts_a_root_at("", "/host"));
        }

        #[test]
        fn links_resolve_inside_the_root() {
            let root = std::env::temp_dir().join(format!("wd-hostroot-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(root.join("run/dbus")).unwrap();
            std::fs::create_dir_all(root.join("var/lib")).unwrap();
            // Debian's absolute link: it must lead to <root>/run, not /run.
            std::os::unix::fs::symlink("/run", root.join("var/run")).unwrap();
            std::os::unix::fs::symlink("../../run/dbus", root.join("var/lib/dbus")).unwrap();
            assert_eq!(
                resolve_dir(&root, "/var/run/dbus"),
                Some(PathBuf::from("/run/dbus"))
            );
            assert_eq!(
                resolve_dir(&root, "/var/lib/dbus"),
                Some(PathBuf::from("/run/dbus"))
            );
            assert_eq!(
                resolve_dir(&root, "/run/dbus"),
                Some(PathBuf::from("/run/dbus"))
            );
            assert_eq!(resolve_dir(&root, "/nonexistent"), None);
            std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
            assert_eq!(resolve_dir(&root, "/loop"), None);
            let _ = std::fs::remove_dir_all(&root);
        }

        #[test]
        fn a_socket_under_a_linked_directory_is_found_in_the_hosts_tree() {
            let root = std::env::temp_dir().join(format!("wd-hostpath-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(root.join("run")).unwrap();
            std::fs::create_dir_all(root.join("var")).unwrap();
            std::os::unix::fs::symlink("/run", root.join("var/run")).unwrap();
            assert_eq!(
                path_under(&root, "/var/run/docker.sock"),
                root.join("run/docker.sock")
            );
            assert_eq!(
                path_under(&root, "/run/crio/crio.sock"),
                root.join("run/crio/crio.sock")
            );
            // A directory that is not there: joined as given.
            assert_eq!(
                path_under(&root, "/opt/x/y.sock"),
                root.join("opt/x/y.sock")
            );
            assert_eq!(
                path_under(Path::new("/"), "/var/run/x"),
                PathBuf::from("/var/run/x")
            );
            let _ = std::fs::remove_dir_all(&root);
        }

        #[test]
        fn a_given_root_must_be_an_absolute_directory() {
            assert!(resolve(Some(Path::new("relative")), None).is_err());
            let e = resolve(Some(Path::new("/nonexistent-wd-root")), None).unwrap_err();
            assert!(e.starts_with("--host-root /nonexistent-wd-root: "), "{e}");
            let e = resolve(None, Some("/etc/hostname".into())).unwrap_err();
            assert_eq!(e, "$HOST_ROOT /etc/hostname: not a directory");
            let r = resolve(None, Some("/tmp".into())).unwrap();
            assert_eq!((r.path.as_path(), r.how), (Path::new("/tmp"), "$HOST_ROOT"));
            // Not in a debug pod here: the default.
            assert!(resolve(None, None).unwrap().is_host());
        }
    }
}
