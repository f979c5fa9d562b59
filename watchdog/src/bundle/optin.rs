//! The opt-in parts of a bundle, each rate-limited, neither on by default:
//!
//! - **containerd's goroutines** (`runtime/containerd-goroutines.txt`):
//!   SIGUSR1 to the containerd that serves the runtime endpoint (the holder
//!   of its listening socket, found through /proc fds, comm `containerd`,
//!   signalled through a pidfd checked against its start time), then the
//!   dump it writes. containerd (1.6 here: `dumpStacks` in
//!   `cmd/containerd/command/main.go`) logs the stacks as one log line and
//!   writes them to `containerd.<its pid>.stacks.log` in its temp directory
//!   (`/tmp` unless `TMPDIR`), overwritten at each dump: read through
//!   `/proc/<pid>/root/tmp/`, only when written after the signal, capped,
//!   on a thread of its own with a deadline. The signal costs containerd a
//!   stop-the-world stack walk (milliseconds with hundreds of goroutines).
//! - **sysrq-w** (`kernel/sysrq-w.txt`): `w` written to
//!   `/proc/sysrq-trigger` makes the kernel log every blocked (D) task with
//!   its stack, then the lines that followed are read from `/dev/kmsg`
//!   (non-blocking). It floods the kernel log (and a serial console) on a
//!   node with many blocked tasks.
//!
//! At most one of each per [`MIN_INTERVAL`] (per containerd process; per
//! node for sysrq-w), for the agent's life.
use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::context::procfs::ProcReader;

/// At most one goroutine dump per containerd process, and one sysrq-w on
/// the node, per this long.
pub const MIN_INTERVAL: Duration = Duration::from_secs(600);
/// The most of a goroutine dump a bundle keeps.
pub const DUMP_CAP: u64 = 8 << 20;
/// The most of the kernel's sysrq-w report a bundle keeps.
pub const SYSRQ_CAP: u64 = 4 << 20;
/// `/proc/sysrq-trigger`, relative to the root.
const SYSRQ_TRIGGER: &str = "proc/sysrq-trigger";

/// The containerd serving a runtime socket, as found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Containerd {
    pub pid: u32,
    /// Field 22 of /proc/<pid>/stat: with the pid, the process's identity.
    pub start_time: u64,
    /// The socket path it was found by.
    pub socket: String,
}

/// SIGUSR1 sent to `target` at `sent`.
#[derive(Clone, Debug)]
pub struct Signalled {
    pub target: Containerd,
    pub sent: SystemTime,
}

/// When each containerd (pid, start time) was last signalled, and when
/// sysrq-w was last written.
static LAST_DUMP: Mutex<Option<HashMap<(u32, u64), Instant>>> = Mutex::new(None);
static LAST_SYSRQ: Mutex<Option<Instant>> = Mutex::new(None);

/// The path of a `unix://` endpoint (or a plain path).
pub fn socket_path(endpoint: &str) -> &str {
    endpoint.strip_prefix("unix://").unwrap_or(endpoint)
}

/// The process holding the listening socket bound at `socket` (as the
/// kernel names it; also tried without the host root's prefix), when it is
/// a containerd. Readlinks of /proc/*/fd only.
pub fn find_containerd(reader: &ProcReader, socket: &str) -> Result<Containerd, String> {
    let root = reader.root().display().to_string();
    let bare = socket
        .strip_prefix(root.trim_end_matches('/'))
        .filter(|p| root != "/" && p.starts_with('/'))
        .unwrap_or(socket);
    let all = crate::dbus::sock_diag::dump().map_err(|e| format!("sock_diag: {e}"))?;
    let listeners: Vec<u64> = all
        .iter()
        .filter(|s| {
            s.listening() && matches!(s.name.as_deref(), Some(n) if n == socket || n == bare)
        })
        .map(|s| s.inode)
        .collect();
    if listeners.is_empty() {
        return Err(format!(
            "no process listens on {socket} in this network namespace"
        ));
    }
    for pid in reader.pids() {
        let Ok(fds) = reader.list(&reader.pid_file(pid, "fd")) else {
            continue;
        };
        let holds = fds.iter().any(|fd| {
            reader
                .read_link(&reader.pid_file(pid, &format!("fd/{}", fd.name)))
                .ok()
                .and_then(|l| crate::context::procfs::parse_socket_link(&l))
                .is_some_and(|ino| listeners.contains(&ino))
        });
        if !holds {
            continue;
        }
        let comm = reader.comm(pid);
        if comm != "containerd" {
            return Err(format!(
                "{socket} is served by {comm}[{pid}], not containerd: no goroutine dump"
            ));
        }
        let start_time =
            start_time(reader, pid).ok_or_else(|| format!("containerd[{pid}] is gone"))?;
        return Ok(Containerd {
            pid,
            start_time,
            socket: socket.to_owned(),
        });
    }
    Err(format!(
        "no process of this PID namespace holds the socket listening on {socket}"
    ))
}

fn start_time(reader: &ProcReader, pid: u32) -> Option<u64> {
    let stat = reader.read_pid_file(pid, "stat")?;
    // After the comm's closing parenthesis: state is field 3, start time 22.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// SIGUSR1 to `target`, unless one was sent to that process less than
/// [`MIN_INTERVAL`] ago: through a pidfd, after checking that the process
/// it holds has the start time found (a reused pid gets no signal).
pub fn signal_containerd(reader: &ProcReader, target: &Containerd) -> Result<Signalled, String> {
    let key = (target.pid, target.start_time);
    let mut last = LAST_DUMP.lock().unwrap_or_else(|e| e.into_inner());
    let map = last.get_or_insert_with(HashMap::new);
    if let Some(t) = map.get(&key)
        && t.elapsed() < MIN_INTERVAL
    {
        return Err(format!(
            "rate limited: containerd[{}] was asked for its goroutines {} s ago (at most once per {} s)",
            target.pid,
            t.elapsed().as_secs(),
            MIN_INTERVAL.as_secs()
        ));
    }
    // SAFETY: pidfd_open takes a pid and flags; the fd is ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, target.pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(format!(
            "pidfd_open(containerd[{}]): {}",
            target.pid,
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a new fd we own.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    if start_time(reader, target.pid) != Some(target.start_time)
        || reader.comm(target.pid) != "containerd"
    {
        return Err(format!(
            "containerd[{}] exited (its pid now names another process): no signal sent",
            target.pid
        ));
    }
    let sent = SystemTime::now();
    // SAFETY: our pidfd; no siginfo.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SIGUSR1,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        return Err(format!(
            "SIGUSR1 to containerd[{}]: {}",
            target.pid,
            std::io::Error::last_os_error()
        ));
    }
    map.insert(key, Instant::now());
    Ok(Signalled {
        target: target.clone(),
        sent,
    })
}

/// Finds the containerd serving `socket` (or says why none) and signals it.
pub fn request_dump(
    reader: &ProcReader,
    socket: &Result<String, String>,
) -> Result<Signalled, String> {
    let socket = socket.as_ref().map_err(Clone::clone)?;
    let target = find_containerd(reader, socket)?;
    signal_containerd(reader, &target)
}

/// Where containerd writes its dump, seen through its own root.
pub fn dump_path(reader: &ProcReader, pid: u32) -> PathBuf {
    reader
        .pid_dir(pid)
        .join("root/tmp")
        .join(format!("containerd.{pid}.stacks.log"))
}

/// The dump containerd wrote after `s.sent`: waited for up to `wait` (the
/// file written since the signal, its size the same twice 50 ms apart),
/// each read on a thread of its own given what is left of the time (a read
/// that hangs is abandoned with its thread). Returns the text (at most
/// [`DUMP_CAP`] bytes), whether it was cut, and the path read.
pub fn collect_dump(
    reader: &ProcReader,
    s: &Signalled,
    wait: Duration,
) -> Result<(Vec<u8>, bool, PathBuf), String> {
    let path = dump_path(reader, s.target.pid);
    let deadline = Instant::now() + wait;
    let mut last_size = None;
    let mut why = String::from("not written");
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match read_fresh(path.clone(), s.sent, left.max(Duration::from_millis(100))) {
            Ok(Some((data, truncated))) => {
                let size = data.len();
                if last_size == Some(size) || Instant::now() >= deadline {
                    return Ok((data, truncated, path));
                }
                last_size = Some(size);
            }
            Ok(None) => why = "not written since the signal".into(),
            Err(e) => why = e,
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "containerd[{}] wrote no goroutine dump to {} within {} ms ({why}); its log (journal: journalctl -u containerd) holds it as one line \"=== BEGIN goroutine stack dump ===\"",
                s.target.pid,
                path.display(),
                wait.as_millis()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The file when modified at or after `since` (None: older, or absent).
fn read_fresh(
    path: PathBuf,
    since: SystemTime,
    limit: Duration,
) -> Result<Option<(Vec<u8>, bool)>, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let p = path.clone();
    std::thread::Builder::new()
        .name("bundle-dump".into())
        .spawn(move || {
            let _ = tx.send(read_if_newer(&p, since));
        })
        .map_err(|e| format!("thread: {e}"))?;
    rx.recv_timeout(limit).map_err(|_| {
        format!(
            "{}: no answer within {} ms",
            path.display(),
            limit.as_millis()
        )
    })?
}

fn read_if_newer(path: &Path, since: SystemTime) -> Result<Option<(Vec<u8>, bool)>, String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let m = f
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // A dump of an earlier signal (the file is overwritten at each), or
    // something that is not a plain file. File times come from the
    // kernel's coarse clock, a tick behind ours: 50 ms of slack.
    let since = since - Duration::from_millis(50);
    if !m.is_file() || m.modified().map_or(true, |t| t < since) || m.len() == 0 {
        return Ok(None);
    }
    let mut data = Vec::new();
    f.take(DUMP_CAP)
        .read_to_end(&mut data)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let truncated = data.len() as u64 >= DUMP_CAP;
    Ok(Some((data, truncated)))
}

/// sysrq-w: `w` to `<root>/proc/sysrq-trigger`, then the kernel log lines
/// that followed, at most [`SYSRQ_CAP`] bytes. Unavailable (an error, the
/// bundle still written) when the kernel has no magic SysRq, and rate
/// limited per node.
pub fn sysrq_w(root: &Path) -> Result<(String, bool), String> {
    sysrq_w_at(&root.join(SYSRQ_TRIGGER), &LAST_SYSRQ)
}

fn sysrq_w_at(trigger: &Path, last: &Mutex<Option<Instant>>) -> Result<(String, bool), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if std::fs::symlink_metadata(trigger).is_err() {
        return Err(format!(
            "unavailable: {} does not exist (kernel built without CONFIG_MAGIC_SYSRQ)",
            trigger.display()
        ));
    }
    let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(t) = *last
        && t.elapsed() < MIN_INTERVAL
    {
        return Err(format!(
            "rate limited: sysrq-w was written {} s ago (at most once per {} s)",
            t.elapsed().as_secs(),
            MIN_INTERVAL.as_secs()
        ));
    }
    // The kernel log's end before: what follows is the report.
    let mut kmsg = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
        .map_err(|e| format!("/dev/kmsg: {e}"))?;
    // SEEK_END on /dev/kmsg: the next read returns the next new record.
    std::io::Seek::seek(&mut kmsg, std::io::SeekFrom::End(0))
        .map_err(|e| format!("/dev/kmsg: {e}"))?;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(trigger)
        .and_then(|mut f| f.write_all(b"w"))
        .map_err(|e| format!("{}: {e}", trigger.display()))?;
    *last = Some(Instant::now());
    // The kernel prints the report within the write; read what is there.
    let mut out = String::new();
    let mut buf = vec![0u8; 8192];
    loop {
        match kmsg.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let rec = String::from_utf8_lossy(&buf[..n]);
                if let Some((_, msg)) = rec.split_once(';') {
                    out.push_str(msg);
                    if !msg.ends_with('\n') {
                        out.push('\n');
                    }
                }
                if out.len() as u64 >= SYSRQ_CAP {
                    return Ok((out, true));
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(format!("/dev/kmsg: {e}")),
        }
    }
    Ok((out, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This kernel has no magic SysRq: the bundle says so and goes on;
    /// nothing is written, nothing is rate limited.
    #[test]
    fn sysrq_w_without_magic_sysrq_is_unavailable() {
        let dir = std::env::temp_dir().join(format!("wd-sysrq-{}", std::process::id()));
        let last = Mutex::new(None);
        let e = sysrq_w_at(&dir.join("proc/sysrq-trigger"), &last).unwrap_err();
        assert_eq!(
            e,
            format!(
                "unavailable: {}/proc/sysrq-trigger does not exist (kernel built without CONFIG_MAGIC_SYSRQ)",
                dir.display()
            )
        );
        assert!(last.lock().unwrap().is_none());
        // The real one, on this kernel.
        if !Path::new("/proc/sysrq-trigger").exists() {
            let e = sysrq_w(Path::new("/")).unwrap_err();
            assert!(
                e.starts_with("unavailable: /proc/sysrq-trigger does not exist"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_second_sysrq_w_within_the_interval_is_refused() {
        let dir = std::env::temp_dir().join(format!("wd-sysrq-rl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A plain file standing in for the trigger (never the real one).
        let trigger = dir.join("sysrq-trigger");
        std::fs::write(&trigger, b"").unwrap();
        let last = Mutex::new(Some(Instant::now()));
        let e = sysrq_w_at(&trigger, &last).unwrap_err();
        assert!(
            e.starts_with("rate limited: sysrq-w was written 0 s ago"),
            "{e}"
        );
        assert_eq!(std::fs::read(&trigger).unwrap(), b"", "nothing written");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn start_time_is_field_22_after_the_comm() {
        let r = ProcReader::new(Path::new("/"));
        let me = std::process::id();
        let t = start_time(&r, me).unwrap();
        assert!(t > 0);
        assert_eq!(start_time(&r, me), Some(t));
    }

    #[test]
    fn a_socket_nobody_listens_on_has_no_containerd() {
        let r = ProcReader::new(Path::new("/"));
        let e = find_containerd(&r, "/run/wd-no-such-socket.sock").unwrap_err();
        assert!(
            e.starts_with("no process listens on /run/wd-no-such-socket.sock"),
            "{e}"
        );
    }

    /// A listener of this test process: found, and refused as not
    /// containerd (nothing is signalled).
    #[test]
    fn a_socket_held_by_another_program_is_not_signalled() {
        let path = std::env::temp_dir().join(format!("wd-optin-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let r = ProcReader::new(Path::new("/"));
        let e = find_containerd(&r, path.to_str().unwrap()).unwrap_err();
        let me = std::process::id();
        assert!(
            e.ends_with(&format!("[{me}], not containerd: no goroutine dump")),
            "{e}"
        );
        let _ = std::fs::remove_file(&path);
    }
}
