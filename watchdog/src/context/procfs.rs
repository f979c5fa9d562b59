//! The one way the agent reads the kernel's view of processes: [`ProcReader`].
//!
//! The rule it enforces for every caller (the node context, the storage
//! sweep, the D-Bus tracker, evidence collectors): **never touch a user
//! mount.** The agent diagnoses dead FUSE/NFS servers and hung disks; one
//! stat, open or listing of a path on such a mount would hang the agent in
//! the very fault it must report. So the reader:
//!
//! - accepts only paths under its roots: `<root>/proc`, `<root>/sys`, and
//!   cgroupfs mounts it was told about ([`ProcReader::with_cgroupfs`]);
//!   anything else is refused with an error naming the path;
//! - never follows a link except by readlink: the final component is opened
//!   with `O_NOFOLLOW` (and stat'ed without following), and /proc's links to
//!   the outside (`cwd`, `root`, `exe`, `fd/N`, `ns/N`, `map_files/N`) are
//!   refused anywhere but as the final component of [`ProcReader::read_link`]
//!   (their targets are only text, never resolved or stat'ed);
//! - caps what it reads ([`MAX_READ`] unless the caller gives a cap).
//!
//! Callers still choose which files: `status`, `stat`, `stack`, `syscall`,
//! `limits`, `cgroup`, `mountinfo` never wait on user storage; `cmdline`
//! takes the process's mmap lock (read it only when no thread is in D state:
//! [`ProcReader::any_task_in_d`]); `environ` and `mem` are never read.
//! All roots hang off one directory (normally `/`) so tests can use recorded
//! trees.
use std::{
    fs::File,
    io::{self, Read},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Component, Path, PathBuf},
};

use crate::{
    model::{Consumer, SystemPids},
    paths,
};

/// Default cap of one read: mountinfo of a node with thousands of mounts
/// fits; a runaway file does not cost the agent more than this.
pub const MAX_READ: u64 = 4 << 20;

/// /proc entries that link outside procfs (`fd`, `ns` and `map_files` hold
/// such links): their targets may be on a user mount.
const LINKS: [&str; 3] = ["cwd", "root", "exe"];
const LINK_DIRS: [&str; 3] = ["fd", "ns", "map_files"];

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("{}: outside /proc, /sys and cgroupfs, which are all the agent reads", path.display())]
    OutsideRoots { path: PathBuf },
    #[error(
        "{}: goes through a /proc link whose target may be a user mount (only readlink of the link itself is allowed)",
        path.display()
    )]
    ThroughLink { path: PathBuf },
    #[error("{}: process {pid} is gone", path.display())]
    Gone { pid: u32, path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// What a path is checked for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Open, list or stat: the final component must not be a link.
    Open,
    /// Readlink: the final component may be a link.
    Readlink,
}

/// One entry of a directory listing (name and whether it is a directory,
/// from the directory itself: nothing is stat'ed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub is_dir: bool,
}

/// Reads /proc, /sys and cgroupfs under a root, and nothing else (see the
/// module documentation for the rule).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcReader {
    root: PathBuf,
    proc: PathBuf,
    sys: PathBuf,
    cgroupfs: Vec<PathBuf>,
}

/// The fields of /proc/<pid>/status the agent uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcStatus {
    pub pid: u32,
    pub comm: String,
    /// Real uid.
    pub uid: u32,
    pub threads: u64,
    /// One-letter state (R, S, D, Z...).
    pub state: char,
}

pub fn parse_status(pid: u32, text: &str) -> Option<ProcStatus> {
    let mut comm = None;
    let mut uid = None;
    let mut threads = None;
    let mut state = '?';
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "Name" => comm = Some(v.to_owned()),
            "Uid" => uid = v.split_whitespace().next().and_then(|u| u.parse().ok()),
            "Threads" => threads = v.parse().ok(),
            "State" => state = v.chars().next().unwrap_or('?'),
            _ => {}
        }
    }
    Some(ProcStatus {
        pid,
        comm: comm?,
        uid: uid?,
        threads: threads?,
        state,
    })
}

/// `/proc/<pid>/stat`: (comm, state, ppid).
pub fn parse_stat(text: &str) -> Option<(String, char, u32)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let mut f = text.get(close + 2..)?.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    Some((comm, state, ppid))
}

/// `/proc/<pid>/stat` field 22, the start time in clock ticks after boot
/// (with the pid, unique for the boot: a reused pid has a later one).
pub fn parse_start_time(text: &str) -> Option<u64> {
    let close = text.rfind(')')?;
    // Fields 3.. follow the comm: field 22 is the 20th of them.
    text.get(close + 2..)?
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// The innermost pid of `/proc/<pid>/status`'s `NSpid:` line (the pid in
/// the process's own PID namespace: 1 for a namespace's init).
pub fn parse_innermost_pid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// `socket:[123]` (a /proc/<pid>/fd link) -> 123.
pub fn parse_socket_link(l: &str) -> Option<u64> {
    l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// Soft "Max processes" of a /proc/<pid>/limits text; Ok(None) for unlimited.
pub fn parse_nproc_limit(text: &str) -> Option<Option<u64>> {
    let line = text.lines().find(|l| l.starts_with("Max processes"))?;
    let soft = line
        .trim_start_matches("Max processes")
        .split_whitespace()
        .next()?;
    Some(if soft == "unlimited" {
        None
    } else {
        Some(soft.parse().ok()?)
    })
}

impl ProcReader {
    /// /proc and /sys under `root` (normally `/`).
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            proc: root.join(paths::PROC),
            sys: root.join(paths::SYS),
            cgroupfs: Vec::new(),
        }
    }

    /// The same reader, also allowed to read below `mount`, which the
    /// caller knows from mountinfo to be a cgroupfs (kernfs: reading it
    /// never touches user storage).
    pub fn with_cgroupfs(&self, mount: &Path) -> Self {
        let mut r = self.clone();
        if !r.allows(mount) {
            r.cgroupfs.push(mount.to_owned());
        }
        r
    }

    fn allows(&self, path: &Path) -> bool {
        self.check(path, Access::Open).is_ok()
    }

    /// `<root>/proc/<rel>` (`rel` relative, e.g. `loadavg`, `self/mountinfo`).
    pub fn proc_path(&self, rel: &str) -> PathBuf {
        self.proc.join(rel)
    }

    /// `<root>/<rel>` for the root-relative paths of [`crate::paths`]
    /// (`proc/...`, `sys/...`).
    pub fn rooted(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    /// The directory every root hangs off (normally `/`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn pid_dir(&self, pid: u32) -> PathBuf {
        self.proc.join(pid.to_string())
    }

    /// `<root>/proc/<pid>/<file>`.
    pub fn pid_file(&self, pid: u32, file: &str) -> PathBuf {
        self.pid_dir(pid).join(file)
    }

    /// `<root>/proc/<tgid>/task/<tid>/<file>`.
    pub fn task_file(&self, tgid: u32, tid: u32, file: &str) -> PathBuf {
        self.pid_dir(tgid)
            .join("task")
            .join(tid.to_string())
            .join(file)
    }

    /// Lexical check of `path` against the roots and /proc's links. Nothing
    /// is resolved: `..` is refused rather than interpreted.
    fn check(&self, path: &Path, access: Access) -> Result<(), ProcError> {
        let outside = || ProcError::OutsideRoots {
            path: path.to_owned(),
        };
        let (rel, is_proc) = if let Ok(rel) = path.strip_prefix(&self.proc) {
            (rel, true)
        } else if let Some(rel) = std::iter::once(&self.sys)
            .chain(&self.cgroupfs)
            .find_map(|r| path.strip_prefix(r).ok())
        {
            (rel, false)
        } else {
            return Err(outside());
        };
        let names: Vec<&str> = rel
            .components()
            .map(|c| match c {
                Component::Normal(n) => n.to_str().ok_or_else(outside),
                _ => Err(outside()),
            })
            .collect::<Result<_, _>>()?;
        if !is_proc {
            return Ok(());
        }
        for (i, name) in names.iter().enumerate() {
            let is_link = LINKS.contains(name) || (i > 0 && LINK_DIRS.contains(&names[i - 1]));
            let last = i + 1 == names.len();
            if is_link && !(last && access == Access::Readlink) {
                return Err(ProcError::ThroughLink {
                    path: path.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// The error of a failed access: a process that vanished is named as such.
    fn error(&self, path: &Path, source: io::Error) -> ProcError {
        let gone =
            source.kind() == io::ErrorKind::NotFound || source.raw_os_error() == Some(libc::ESRCH);
        let pid = path
            .strip_prefix(&self.proc)
            .ok()
            .and_then(|r| r.components().next())
            .and_then(|c| c.as_os_str().to_str()?.parse::<u32>().ok());
        match pid {
            Some(pid) if gone && std::fs::symlink_metadata(self.pid_dir(pid)).is_err() => {
                ProcError::Gone {
                    pid,
                    path: path.to_owned(),
                }
            }
            _ => ProcError::Io {
                path: path.to_owned(),
                source,
            },
        }
    }

    /// Open a file for reading, at most `cap` bytes of it (streaming
    /// readers such as the kallsyms symboliser).
    pub fn open(&self, path: &Path, cap: u64) -> Result<io::Take<File>, ProcError> {
        self.check(path, Access::Open)?;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map(|f| f.take(cap))
            .map_err(|e| self.error(path, e))
    }

    /// At most `cap` bytes of a file.
    pub fn read_bytes(&self, path: &Path, cap: u64) -> Result<Vec<u8>, ProcError> {
        let mut out = Vec::new();
        self.open(path, cap)?
            .read_to_end(&mut out)
            .map_err(|e| self.error(path, e))?;
        Ok(out)
    }

    /// A text file, at most [`MAX_READ`] bytes of it.
    pub fn read(&self, path: &Path) -> Result<String, ProcError> {
        self.read_capped(path, MAX_READ)
    }

    /// A text file, at most `cap` bytes of it (a character cut by the cap
    /// is dropped). Not UTF-8: an error, as `read_to_string`.
    pub fn read_capped(&self, path: &Path, cap: u64) -> Result<String, ProcError> {
        let mut bytes = self.read_bytes(path, cap)?;
        match String::from_utf8(bytes) {
            Ok(s) => Ok(s),
            Err(e) if e.utf8_error().error_len().is_none() && e.as_bytes().len() as u64 == cap => {
                let valid = e.utf8_error().valid_up_to();
                bytes = e.into_bytes();
                bytes.truncate(valid);
                Ok(String::from_utf8(bytes).expect("valid prefix"))
            }
            Err(e) => Err(ProcError::Io {
                path: path.to_owned(),
                source: io::Error::new(io::ErrorKind::InvalidData, e),
            }),
        }
    }

    /// A file's text, trimmed; None when unreadable.
    pub fn read_trim(&self, path: &Path) -> Option<String> {
        self.read(path).ok().map(|s| s.trim().to_owned())
    }

    /// Where a link points, as text: the target is never resolved or stat'ed.
    pub fn read_link(&self, path: &Path) -> Result<String, ProcError> {
        self.check(path, Access::Readlink)?;
        std::fs::read_link(path)
            .map(|l| l.to_string_lossy().into_owned())
            .map_err(|e| self.error(path, e))
    }

    /// A directory's entries (nothing in it is stat'ed; `.` and `..` left out).
    pub fn list(&self, dir: &Path) -> Result<Vec<Entry>, ProcError> {
        self.check(dir, Access::Open)?;
        let rd = std::fs::read_dir(dir).map_err(|e| self.error(dir, e))?;
        Ok(rd
            .flatten()
            .map(|e| Entry {
                name: e.file_name().to_string_lossy().into_owned(),
                is_dir: e.file_type().map(|t| t.is_dir()).unwrap_or(false),
            })
            .collect())
    }

    /// The entries of a directory whose names are numbers (pids, tids, fds).
    pub fn list_numbers<N: std::str::FromStr>(&self, dir: &Path) -> Vec<N> {
        self.list(dir)
            .map(|v| v.into_iter().filter_map(|e| e.name.parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Whether a path exists (the final component is not followed).
    pub fn exists(&self, path: &Path) -> bool {
        self.check(path, Access::Open).is_ok() && std::fs::symlink_metadata(path).is_ok()
    }

    /// Whether a path is a directory (the final component is not followed).
    pub fn is_dir(&self, path: &Path) -> bool {
        self.check(path, Access::Open).is_ok()
            && std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
    }

    /// The inode of a path (the final component is not followed).
    pub fn inode(&self, path: &Path) -> Result<u64, ProcError> {
        self.check(path, Access::Open)?;
        std::fs::symlink_metadata(path)
            .map(|m| m.ino())
            .map_err(|e| self.error(path, e))
    }

    /// Every process id.
    pub fn pids(&self) -> Vec<u32> {
        self.list_numbers(&self.proc)
    }

    pub fn pid_exists(&self, pid: u32) -> bool {
        self.exists(&self.pid_dir(pid))
    }

    /// `/proc/<pid>/<file>` as text.
    pub fn read_pid_file(&self, pid: u32, file: &str) -> Option<String> {
        self.read(&self.pid_file(pid, file)).ok()
    }

    /// A process's start time ([`parse_start_time`]); None when gone.
    pub fn start_time(&self, pid: u32) -> Option<u64> {
        parse_start_time(&self.read_pid_file(pid, "stat")?)
    }

    /// A process's name from `/proc/<pid>/comm` ("" when unreadable).
    pub fn comm(&self, pid: u32) -> String {
        self.read_pid_file(pid, "comm")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    }

    /// The socket inode behind `/proc/<pid>/fd/<fd>`, if it is a socket.
    pub fn socket_inode(&self, pid: u32, fd: i32) -> Option<u64> {
        parse_socket_link(
            &self
                .read_link(&self.pid_file(pid, &format!("fd/{fd}")))
                .ok()?,
        )
    }

    /// Whether any thread of `pid` is in uninterruptible sleep (true when
    /// its tasks cannot be listed).
    pub fn any_task_in_d(&self, pid: u32) -> bool {
        let task = self.pid_file(pid, "task");
        let Ok(tids) = self.list(&task) else {
            return true;
        };
        tids.iter().any(|t| {
            self.read(&task.join(&t.name).join("stat"))
                .ok()
                .and_then(|s| parse_stat(&s))
                .is_some_and(|(_, state, _)| state == 'D')
        })
    }

    pub fn system(&self) -> SystemPids {
        let num = |rel: &str| {
            self.read(&self.rooted(rel))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0)
        };
        // loadavg: "0.00 0.01 0.05 1/123 4567": the denominator is nr_threads.
        let threads = self
            .read(&self.rooted(paths::LOADAVG))
            .ok()
            .and_then(|s| {
                s.split_whitespace()
                    .nth(3)
                    .and_then(|f| f.split_once('/'))
                    .and_then(|(_, t)| t.parse().ok())
            })
            .unwrap_or(0);
        SystemPids {
            threads,
            threads_max: num(paths::THREADS_MAX),
            pid_max: num(paths::PID_MAX),
        }
    }

    pub fn status(&self, pid: u32) -> Option<ProcStatus> {
        parse_status(pid, &self.read_pid_file(pid, "status")?)
    }

    /// Soft RLIMIT_NPROC of a process: None if unreadable, Some(None) if unlimited.
    pub fn nproc_limit(&self, pid: u32) -> Option<Option<u64>> {
        parse_nproc_limit(&self.read_pid_file(pid, "limits")?)
    }

    /// Every process's status (one file read per process).
    pub fn all_status(&self) -> Vec<ProcStatus> {
        self.pids()
            .into_iter()
            .filter_map(|p| self.status(p))
            .collect()
    }
}

/// Tasks (threads) of `uid`: what RLIMIT_NPROC counts.
pub fn tasks_of_uid(all: &[ProcStatus], uid: u32) -> u64 {
    all.iter().filter(|s| s.uid == uid).map(|s| s.threads).sum()
}

/// The `n` processes holding the most tasks.
pub fn top_consumers(mut procs: Vec<ProcStatus>, n: usize) -> Vec<Consumer> {
    procs.sort_by(|a, b| b.threads.cmp(&a.threads).then(a.pid.cmp(&b.pid)));
    procs
        .into_iter()
        .take(n)
        .map(|s| Consumer {
            pid: s.pid,
            comm: s.comm,
            threads: s.threads,
            uid: s.uid,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recorded tree of its own, removed on drop.
    struct Tree(PathBuf);

    impl Tree {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("wd-procreader-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("proc/77")).unwrap();
            Self(dir)
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn refuses_paths_outside_its_roots() {
        let r = ProcReader::new(Path::new("/"));
        for p in [
            "/etc/hostname",
            "/procx/1/status",
            "/proc/../etc/passwd",
            "/tmp",
        ] {
            let e = r.read(Path::new(p)).unwrap_err();
            assert!(matches!(e, ProcError::OutsideRoots { .. }), "{p}: {e}");
            assert!(e.to_string().starts_with(p), "{e}");
        }
        assert!(r.list(Path::new("/home")).is_err());
        assert!(r.read_link(Path::new("/etc/mtab")).is_err());
        assert!(!r.exists(Path::new("/etc")));
        assert!(r.read(Path::new("/proc/self/status")).is_ok());
        let cg = Path::new("/elsewhere/cgroup");
        assert!(!r.allows(cg));
        assert!(r.with_cgroupfs(cg).allows(&cg.join("pids.max")));
    }

    #[test]
    fn follows_proc_links_only_by_readlink() {
        let r = ProcReader::new(Path::new("/"));
        let through = |e: ProcError| matches!(e, ProcError::ThroughLink { .. });
        assert!(through(r.read(Path::new("/proc/self/cwd/x")).unwrap_err()));
        assert!(through(r.read(Path::new("/proc/self/fd/0")).unwrap_err()));
        assert!(through(r.list(Path::new("/proc/self/root")).unwrap_err()));
        assert!(through(
            r.read_link(Path::new("/proc/self/root/etc/mtab"))
                .unwrap_err()
        ));
        assert!(through(r.read(&r.task_file(1, 1, "exe")).unwrap_err()));
        assert!(r.read_link(Path::new("/proc/self/cwd")).is_ok());
        assert!(r.read_link(Path::new("/proc/self/ns/mnt")).is_ok());
        assert!(!r.list(Path::new("/proc/self/fd")).unwrap().is_empty());
        let f = std::fs::File::open("/proc/self/status").unwrap();
        use std::os::fd::AsRawFd as _;
        let link = r
            .read_link(&r.pid_file(std::process::id(), &format!("fd/{}", f.as_raw_fd())))
            .unwrap();
        assert_eq!(link, format!("/proc/{}/status", std::process::id()));
    }

    #[test]
    fn caps_reads() {
        let t = Tree::new("cap");
        std::fs::write(t.0.join("proc/big"), "x".repeat(10_000)).unwrap();
        // 'é' is two bytes: a cap through it drops the half character.
        std::fs::write(t.0.join("proc/utf8"), "aé").unwrap();
        let r = ProcReader::new(&t.0);
        assert_eq!(r.read_capped(&r.proc_path("big"), 100).unwrap().len(), 100);
        assert_eq!(r.read(&r.proc_path("big")).unwrap().len(), 10_000);
        assert_eq!(r.read_bytes(&r.proc_path("big"), 7).unwrap().len(), 7);
        assert_eq!(r.read_capped(&r.proc_path("utf8"), 2).unwrap(), "a");
        assert_eq!(r.read_capped(&r.proc_path("utf8"), 3).unwrap(), "aé");
    }

    #[test]
    fn a_vanished_pid_is_named() {
        let t = Tree::new("gone");
        let r = ProcReader::new(&t.0);
        let e = r.read(&r.pid_file(4242, "status")).unwrap_err();
        assert!(matches!(e, ProcError::Gone { pid: 4242, .. }), "{e}");
        assert!(e.to_string().ends_with("process 4242 is gone"), "{e}");
        assert!(matches!(
            r.read_link(&r.pid_file(4242, "fd/3")).unwrap_err(),
            ProcError::Gone { pid: 4242, .. }
        ));
        // The process is there, the file is not: an I/O error, not "gone".
        let e = r.read(&r.pid_file(77, "stack")).unwrap_err();
        assert!(matches!(e, ProcError::Io { .. }), "{e}");
        assert!(r.pid_exists(77) && !r.pid_exists(4242));
    }

    #[test]
    fn parses_status() {
        let text = "Name:\tjava\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t77\nUid:\t1000\t1000\t1000\t1000\nThreads:\t212\n";
        let s = parse_status(77, text).unwrap();
        assert_eq!(
            (s.comm.as_str(), s.uid, s.threads, s.state),
            ("java", 1000, 212, 'S')
        );
        assert_eq!(parse_status(1, "Name:\tx\n"), None);
    }

    #[test]
    fn parses_limits() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
Max cpu time              unlimited            unlimited            seconds   \n\
Max processes             20                   63704                processes \n";
        assert_eq!(parse_nproc_limit(text), Some(Some(20)));
        let unl =
            "Max processes             unlimited            unlimited            processes \n";
        assert_eq!(parse_nproc_limit(unl), Some(None));
        assert_eq!(parse_nproc_limit("nothing"), None);
    }

    #[test]
    fn stat_parsing_with_odd_comm() {
        let (comm, state, ppid) = parse_stat("42 (a) b (c)) D 7 42 42 0 -1").unwrap();
        assert_eq!(comm, "a) b (c)");
        assert_eq!(state, 'D');
        assert_eq!(ppid, 7);
    }
}
