//! `kill_container`: every task of a pids cgroup (v2 `cgroup.kill`; v1
//! freezer then SIGKILL, re-read until empty).
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use super::{KILL_PASSES, NodeExecutor, Pidfd, write_file};
use crate::context::cgroup::{self, CgroupVersion, PidsHierarchy};
use crate::context::procfs::ProcReader;
use crate::paths;

impl NodeExecutor {
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

    pub(super) fn recheck_kill_container(&self, path: &str) -> Result<String, String> {
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

    pub(super) fn kill_container(&self, path: &str) -> Result<String, String> {
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
