//! Executors: the only code that acts on the node. Each action re-checks
//! its target just before acting (the policy decided on a finding that may
//! be seconds old) and acts only on the objects the finding named.
//!
//! What they touch never hangs on the faults watchdog diagnoses: cgroupfs,
//! fusectl and /proc are kernel file systems; processes are signalled
//! through a pidfd opened first and checked afterwards, so a reused PID is
//! never hit; PID 1 and the agent itself are never signalled.
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::context::cgroup::PidsHierarchy;
use crate::context::procfs::ProcReader;
use crate::model::finding::RemedyAction;

mod cgroup;
mod fuse;

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
        RemedyAction::EvictPod { pod_uid } => format!("evict pod {pod_uid}"),
        RemedyAction::AbortFuse { mount_point, dev } => {
            format!("abort FUSE connection {dev} of {mount_point}")
        }
        RemedyAction::ForceUnmount { mount_point } => format!("umount -f {mount_point}"),
        RemedyAction::ReexecSystemd { socket } => {
            format!("re-execute the systemd serving {socket}")
        }
        RemedyAction::KillProcess { pid, comm } => format!("kill process {pid} ({comm})"),
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
        }
    }
}

impl Executor for NodeExecutor {
    fn recheck(&mut self, action: &RemedyAction) -> Result<String, String> {
        match action {
            RemedyAction::KillContainer { cgroup } => self.recheck_kill_container(cgroup),
            RemedyAction::AbortFuse { mount_point, dev } => {
                self.recheck_abort_fuse(mount_point, dev)
            }
            other => Err(format!("no executor for {}", other.kind().name())),
        }
    }

    fn execute(&mut self, action: &RemedyAction) -> Result<String, String> {
        match action {
            RemedyAction::KillContainer { cgroup } => self.kill_container(cgroup),
            RemedyAction::AbortFuse { mount_point, dev } => self.abort_fuse(mount_point, dev),
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
        use std::os::fd::AsRawFd as _;
        // SAFETY: our pidfd; no siginfo.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                libc::SIGKILL,
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
}
