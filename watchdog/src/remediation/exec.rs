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
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use crate::context::cgroup::{self, CgroupVersion, PidsHierarchy};
use crate::context::procfs::ProcReader;
use crate::model::finding::RemedyAction;
use crate::paths;

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
        RemedyAction::ReexecSystemd { socket } => {
            format!("re-execute the systemd serving {socket}")
        }
        RemedyAction::KillProcess { pid, comm } => format!("kill process {pid} ({comm})"),
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
}

/// Passes of "list the cgroup's tasks, SIGKILL each" at most (a fork bomb
/// refills freed slots between a list and its kills).
const KILL_PASSES: usize = 50;

impl NodeExecutor {
    pub fn new(root: &Path) -> Self {
        let reader = ProcReader::new(root);
        let pids = cgroup::discover(&reader);
        Self {
            reader,
            root: root.to_owned(),
            pids,
            kill_wait: Duration::from_millis(300),
        }
    }

    fn hierarchy(&self) -> Result<&PidsHierarchy, String> {
        self.pids
            .as_ref()
            .ok_or_else(|| "no pids cgroup hierarchy found on this node".to_string())
    }

    /// The cgroup's directory, refusing the root and any path that could
    /// leave the hierarchy.
    fn cgroup_dir(&self, path: &str) -> Result<PathBuf, String> {
        let rel = Path::new(path.trim_start_matches('/'));
        if rel.as_os_str().is_empty() {
            return Err("refusing the root cgroup".into());
        }
        if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(format!("refusing cgroup path {path:?} (not a plain path)"));
        }
        Ok(self.hierarchy()?.dir(path))
    }

    fn recheck_kill_container(&self, path: &str) -> Result<String, String> {
        self.cgroup_dir(path)?;
        let h = self.hierarchy()?;
        let state = h
            .state(path)
            .ok_or_else(|| format!("cgroup {path} is gone"))?;
        let Some(max) = state.max else {
            return Err(format!("cgroup {path} has no pids limit any more"));
        };
        if state.current < max {
            return Err(format!(
                "cgroup {path} is no longer at its limit ({} of {max})",
                state.current
            ));
        }
        let tasks = h.procs_below(path);
        if tasks.is_empty() {
            return Err(format!("cgroup {path} has no process left"));
        }
        if let Some(p) = tasks.iter().find(|p| **p == 1 || **p == std::process::id()) {
            return Err(format!(
                "cgroup {path} holds process {p} (PID 1 or this agent): never killed"
            ));
        }
        Ok(format!(
            "kill every task of cgroup {path} ({} processes, {} of {max} PIDs)",
            tasks.len(),
            state.current
        ))
    }

    fn kill_container(&self, path: &str) -> Result<String, String> {
        let dir = self.cgroup_dir(path)?;
        let h = self.hierarchy()?;
        let start = Instant::now();
        let how = if h.version == CgroupVersion::V2 && dir.join("cgroup.kill").exists() {
            write_file(&dir.join("cgroup.kill"), "1")?;
            "cgroup.kill"
        } else if self.freeze_v1(path, true) {
            // Frozen: nothing forks; one pass reaches every task, and the
            // kills take effect at the thaw.
            for pid in h.procs_below(path) {
                kill_in_cgroup(&self.reader, pid, path, h.version);
            }
            if !self.freeze_v1(path, false) {
                return Err(format!(
                    "cgroup {path}: SIGKILL sent to every task but the freezer cgroup did not thaw: write THAWED to its freezer.state"
                ));
            }
            "freezer, then SIGKILL to each task"
        } else {
            // A fork bomb refills freed slots between a list and its kills:
            // list and kill until empty.
            for _ in 0..KILL_PASSES {
                let tasks = h.procs_below(path);
                if tasks.is_empty() {
                    break;
                }
                for pid in tasks {
                    kill_in_cgroup(&self.reader, pid, path, h.version);
                }
            }
            "SIGKILL to each task (no freezer cgroup at that path)"
        };
        // SIGKILLed tasks leave the cgroup once they reach the signal (a
        // task in uninterruptible sleep does not).
        loop {
            let left = h.procs_below(path);
            if left.is_empty() {
                return Ok(format!(
                    "cgroup {path} emptied ({how}) in {:.2} s",
                    start.elapsed().as_secs_f64()
                ));
            }
            if start.elapsed() >= self.kill_wait {
                // Killed, still exiting (a task in uninterruptible sleep dies
                // when its I/O ends): the finding's resolution verifies it.
                return Ok(format!(
                    "SIGKILL sent to every task of cgroup {path} ({how}); {} processes still exiting after {:.2} s",
                    left.len(),
                    start.elapsed().as_secs_f64()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// cgroup v1: freeze (or thaw) the freezer cgroup at the same path, when
    /// there is one; true when it froze (or thawed).
    fn freeze_v1(&self, path: &str, freeze: bool) -> bool {
        let dir = self
            .reader
            .rooted(paths::CGROUP_V1_FREEZER)
            .join(path.trim_start_matches('/'));
        let state = dir.join("freezer.state");
        if !self.reader.exists(&state) {
            return false;
        }
        let want = if freeze { "FROZEN" } else { "THAWED" };
        if write_file(&state, want).is_err() {
            return false;
        }
        if !freeze {
            return self.reader.read_trim(&state).as_deref() == Some("THAWED");
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(200) {
            if self.reader.read_trim(&state).as_deref() == Some("FROZEN") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // FREEZING (a task in D state): the kills go ahead all the same.
        true
    }

    /// The fusectl directory of a FUSE mount's connection (`0:NN` -> NN):
    /// where mountinfo shows fusectl mounted (systemd mounts it at
    /// /sys/fs/fuse/connections), else that default.
    fn fuse_dir(&self, dev: &str) -> Result<(PathBuf, ProcReader), String> {
        let (major, minor) = dev
            .split_once(':')
            .and_then(|(a, m)| Some((a.parse::<u32>().ok()?, m.parse::<u32>().ok()?)))
            .ok_or_else(|| format!("{dev:?} is not a major:minor device"))?;
        if major != 0 {
            // fusectl names a connection by the whole device number; a
            // block-device FUSE mount (fuseblk) is not aborted by its minor.
            return Err(format!(
                "{dev} is a block-device FUSE mount (fuseblk): abort its connection by hand in fusectl"
            ));
        }
        let mountinfo = self
            .reader
            .read(&self.reader.rooted(paths::MOUNTINFO))
            .unwrap_or_default();
        let ctl = mountinfo
            .lines()
            .find_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                right
                    .starts_with("fusectl ")
                    .then(|| left.split(' ').nth(4))
                    .flatten()
                    .map(crate::context::mounts::unescape)
            })
            .map(|mp| self.root.join(mp.trim_start_matches('/')))
            .unwrap_or_else(|| self.root.join(paths::FUSE_CONNECTIONS));
        // fusectl is a kernel file system: reading it never hangs.
        let reader = self.reader.with_cgroupfs(&ctl);
        Ok((ctl.join(minor.to_string()), reader))
    }

    fn recheck_abort_fuse(&self, mount_point: &str, dev: &str) -> Result<String, String> {
        let (dir, ctl) = self.fuse_dir(dev)?;
        if !ctl.exists(&dir.join("abort")) {
            return Err(format!(
                "no FUSE connection {dev} in {} (unmounted, or fusectl not mounted: mount -t fusectl none /sys/fs/fuse/connections)",
                dir.display()
            ));
        }
        let mountinfo = self
            .reader
            .read(&self.reader.rooted(paths::MOUNTINFO))
            .map_err(|e| format!("mountinfo: {e}"))?;
        let mounted = mountinfo.lines().any(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.len() > 4
                && f[2] == dev
                && crate::context::mounts::unescape(f[4]) == mount_point
                && l.split_once(" - ")
                    .is_some_and(|(_, r)| r.starts_with("fuse"))
        });
        if !mounted {
            return Err(format!("{mount_point} is no longer a FUSE mount of {dev}"));
        }
        let waiting = ctl
            .read_trim(&dir.join("waiting"))
            .unwrap_or_else(|| "?".into());
        Ok(format!(
            "abort FUSE connection {dev} of {mount_point} ({waiting} requests waiting)"
        ))
    }

    fn abort_fuse(&self, mount_point: &str, dev: &str) -> Result<String, String> {
        let (dir, _) = self.fuse_dir(dev)?;
        write_file(&dir.join("abort"), "1")?;
        Ok(format!(
            "aborted FUSE connection {dev} of {mount_point}: its waiting requests fail with ENOTCONN"
        ))
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

/// SIGKILL `pid` if, once held by a pidfd, it is still in cgroup `path`.
fn kill_in_cgroup(reader: &ProcReader, pid: u32, path: &str, version: CgroupVersion) {
    if pid <= 1 || pid == std::process::id() {
        return;
    }
    let Ok(fd) = Pidfd::open(pid) else {
        return;
    };
    let inside = reader
        .read_pid_file(pid, "cgroup")
        .and_then(|t| cgroup::pids_path_from_proc_cgroup(&t, version))
        .is_some_and(|p| in_cgroup(&p, path));
    if inside {
        let _ = fd.kill();
    }
}

/// Pids cgroup `p` (of a task) is `path` or below it.
fn in_cgroup(p: &str, path: &str) -> bool {
    let want = path.trim_end_matches('/');
    p == want
        || p.strip_prefix(want)
            .is_some_and(|rest| rest.starts_with('/'))
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

#[cfg(test)]
mod tests {
    use super::in_cgroup;

    #[test]
    fn cgroups_match_the_path_and_below_only() {
        assert!(in_cgroup("/kubepods/pod1", "/kubepods/pod1"));
        assert!(in_cgroup("/kubepods/pod1/ctr", "/kubepods/pod1"));
        assert!(!in_cgroup("/kubepods/pod10", "/kubepods/pod1"));
        assert!(!in_cgroup("/", "/kubepods/pod1"));
    }
}
