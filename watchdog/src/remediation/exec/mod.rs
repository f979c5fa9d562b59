//! Executors: the only code that acts on the node. Each action re-checks
//! its target just before acting (the policy decided on a finding that may
//! be seconds old) and acts only on the objects the finding named. One file
//! per action family: `cgroup` (kill_container), `fuse` (abort_fuse),
//! `mount` (force_unmount), `systemd` (reexec_systemd), `process`
//! (kill_process).
//!
//! What they touch never hangs on the faults watchdog diagnoses: cgroupfs,
//! fusectl and /proc are kernel file systems; processes are signalled
//! through a pidfd opened first and checked afterwards (their start time),
//! so a reused PID is never hit; the host's PID 1 and the agent itself are
//! never signalled. The few calls that could still wait (a statvfs of a
//! tmpfs in another mount namespace, a stat of systemd's binary, an
//! unmount, a D-Bus `Ping`) run on a thread of their own under a deadline
//! ([`with_deadline`]); nothing forks.
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::context::cgroup::PidsHierarchy;
use crate::context::procfs::ProcReader;
use crate::model::finding::RemedyAction;

mod cgroup;
mod fuse;
mod mount;
mod process;
mod systemd;

pub use mount::UNMOUNT_TYPES;

/// Acts on the node, or says why it will not.
pub trait Executor {
    /// Re-check the target against the finding, reading only. Ok: what the
    /// action would do (for the record); Err: why it must not run.
    fn recheck(&mut self, action: &RemedyAction) -> Result<String, String>;
    /// Act. Ok: what was done; Err: what failed.
    fn execute(&mut self, action: &RemedyAction) -> Result<String, String>;
}

/// What an action does, in the words of its record.
pub fn describe(action: &RemedyAction) -> String {
    match action {
        RemedyAction::KillContainer { cgroup } => {
            format!("kill every task of cgroup {cgroup}")
        }
        RemedyAction::EvictPod { .. } => format!("evict {}", action.target()),
        RemedyAction::AbortFuse { mount_point, dev } => {
            format!("abort FUSE connection {dev} of {mount_point}")
        }
        RemedyAction::ForceUnmount { mount_point } => format!("umount -f {mount_point}"),
        RemedyAction::ReexecSystemd { socket, .. } => {
            format!("re-execute the systemd serving {socket}")
        }
        RemedyAction::KillProcess { pid, comm, .. } => format!("kill process {pid} ({comm})"),
        RemedyAction::Cordon => "cordon the node (spec.unschedulable)".into(),
        RemedyAction::Taint => "taint the node NoSchedule".into(),
        RemedyAction::Escalate => {
            "set the node condition WatchdogRemediationFailed for a node-repair controller".into()
        }
    }
}

/// `watchdog replay`: nothing to re-check on a recording (its node is
/// elsewhere), nothing ever runs.
pub struct ReplayExecutor;

impl Executor for ReplayExecutor {
    fn recheck(&mut self, action: &RemedyAction) -> Result<String, String> {
        Ok(describe(action))
    }

    fn execute(&mut self, _action: &RemedyAction) -> Result<String, String> {
        Err("a replay runs nothing".into())
    }
}

/// The live node under `root` (normally `/`).
pub struct NodeExecutor {
    reader: ProcReader,
    root: PathBuf,
    pids: Option<PidsHierarchy>,
    /// How long a kill waits for the cgroup to empty (short: the agent's
    /// loop waits with it; the finding's resolution verifies the rest).
    pub kill_wait: Duration,
    /// `reexec_systemd` may signal the node's own PID 1 (the host's
    /// systemd). Off: only a systemd that is PID 1 of a PID namespace of
    /// its own (a kind node's, a system container's) is re-executed.
    pub allow_host_init: bool,
    /// How long `reexec_systemd` waits for the new systemd to answer a
    /// `Ping` after its SIGTERM.
    pub reexec_wait: Duration,
    /// `force_unmount`: the mount namespace whose table the finding named
    /// (None: the agent's view of the host, see [`NodeExecutor::new`]).
    mount_ns: Option<u32>,
    /// `force_unmount`: the file system types it may unmount.
    unmount_types: Vec<String>,
}

/// Passes of "list the cgroup's tasks, SIGKILL each" at most (a fork bomb
/// refills freed slots between a list and its kills).
const KILL_PASSES: usize = 50;

impl NodeExecutor {
    pub fn new(root: &Path) -> Self {
        let reader = ProcReader::new(root);
        let pids = crate::context::cgroup::discover(&reader);
        Self {
            reader,
            root: root.to_owned(),
            pids,
            kill_wait: Duration::from_millis(300),
            allow_host_init: false,
            reexec_wait: Duration::from_secs(3),
            mount_ns: None,
            unmount_types: UNMOUNT_TYPES.iter().map(|t| (*t).to_owned()).collect(),
        }
    }

    /// `force_unmount` in the mount namespace of process `pid` (its
    /// mountinfo is re-checked, the unmount happens there), with these file
    /// system types allowed instead of [`UNMOUNT_TYPES`]. For tests, which
    /// unmount a tmpfs or FUSE mount of their own in a namespace of their
    /// own: a node has no reason to unmount anything but a network mount.
    pub fn with_unmount_in(mut self, pid: Option<u32>, types: &[&str]) -> Self {
        self.mount_ns = pid;
        self.unmount_types = types.iter().map(|t| (*t).to_owned()).collect();
        self
    }
}

impl Executor for NodeExecutor {
    fn recheck(&mut self, action: &RemedyAction) -> Result<String, String> {
        match action {
            RemedyAction::KillContainer { cgroup } => self.recheck_kill_container(cgroup),
            RemedyAction::AbortFuse { mount_point, dev } => {
                self.recheck_abort_fuse(mount_point, dev)
            }
            RemedyAction::ForceUnmount { mount_point } => self
                .recheck_force_unmount(mount_point)
                .map(|m| m.describe()),
            RemedyAction::ReexecSystemd { socket, client } => self
                .systemd_target(socket, *client)
                .map(|t| t.describe(socket)),
            RemedyAction::KillProcess { pid, comm, start } => self
                .recheck_kill_process(*pid, comm, *start)
                .map(|t| t.describe()),
            other => Err(format!("no executor for {}", other.kind().name())),
        }
    }

    fn execute(&mut self, action: &RemedyAction) -> Result<String, String> {
        match action {
            RemedyAction::KillContainer { cgroup } => self.kill_container(cgroup),
            RemedyAction::AbortFuse { mount_point, dev } => self.abort_fuse(mount_point, dev),
            RemedyAction::ForceUnmount { mount_point } => self.force_unmount(mount_point),
            RemedyAction::ReexecSystemd { socket, client } => self.reexec_systemd(socket, *client),
            RemedyAction::KillProcess { pid, comm, start } => self.kill_process(*pid, comm, *start),
            other => Err(format!("no executor for {}", other.kind().name())),
        }
    }
}

fn write_file(path: &Path, value: &str) -> Result<(), String> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|e| format!("write {value:?} to {}: {e}", path.display()))
}

/// A process held by a pidfd: signals reach that process or none.
struct Pidfd(std::os::fd::OwnedFd);

impl Pidfd {
    fn open(pid: u32) -> Result<Self, String> {
        // SAFETY: plain syscall; the fd it returns is owned below.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(format!(
                "pidfd_open({pid}): {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: a new fd of ours.
        Ok(Self(unsafe {
            <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32)
        }))
    }

    fn kill(&self) -> Result<(), String> {
        self.signal(libc::SIGKILL)
    }

    fn signal(&self, sig: i32) -> Result<(), String> {
        use std::os::fd::AsRawFd as _;
        // SAFETY: our pidfd; no siginfo.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            return Err(format!(
                "pidfd_send_signal: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit (its pidfd becomes
    /// readable); true when it did.
    fn wait_exit(&self, timeout: Duration) -> bool {
        use std::os::fd::AsRawFd as _;
        let mut p = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, ms) > 0 }
    }
}

/// Runs `f` on a thread of its own and waits at most `timeout` for it: a
/// call that could block (an unmount, a stat, a D-Bus call) cannot hold
/// the agent longer. At the deadline the thread is left behind (it ends
/// when its call returns) and the error says what did not return.
pub fn with_deadline<T: Send + 'static>(
    what: &str,
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("wd-remedy".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| format!("{what}: no thread: {e}"))?;
    rx.recv_timeout(timeout).map_err(|_| {
        format!(
            "{what} did not return within {:.1} s",
            timeout.as_secs_f64()
        )
    })
}
