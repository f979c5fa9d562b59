//! PID-limit observations: fork failures, limit samples, RLIMIT_NPROC pressure.
use serde::{Deserialize, Serialize};

use super::{pod::PodRef, time::Time};

/// State of one pids cgroup, read from its control files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidsCgroupState {
    /// Path inside the pids hierarchy, e.g. `/kubepods/burstable/pod.../...`.
    pub path: String,
    /// `pids.current`: tasks (threads) charged to it.
    pub current: u64,
    /// `pids.max`; None for "max".
    pub max: Option<u64>,
    /// The `max` counter of `pids.events`: forks this cgroup's limit rejected.
    pub events_max: u64,
}

impl PidsCgroupState {
    pub fn percent(&self) -> Option<f64> {
        self.max
            .filter(|m| *m > 0)
            .map(|m| self.current as f64 * 100.0 / m as f64)
    }
}

/// System-wide task limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemPids {
    /// Tasks (threads) in the system: `nr_threads`, from /proc/loadavg.
    pub threads: u64,
    /// `kernel.threads-max`.
    pub threads_max: u64,
    /// `kernel.pid_max`.
    pub pid_max: u64,
}

/// A user's tasks against the `RLIMIT_NPROC` of a process of theirs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserTasks {
    pub uid: u32,
    /// Tasks (threads) whose real uid is `uid`.
    pub tasks: u64,
    /// Soft `RLIMIT_NPROC` of the failing process; None for unlimited.
    pub rlimit_nproc: Option<u64>,
}

/// A process and how many tasks (threads) it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consumer {
    pub pid: u32,
    pub comm: String,
    pub threads: u64,
    pub uid: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForkFailed {
    pub at: Time,
    pub tid: u32,
    pub pid: u32,
    pub uid: u32,
    pub comm: String,
    /// fork, vfork, clone or clone3.
    pub syscall: String,
    /// The call was creating a thread (CLONE_THREAD).
    pub thread: bool,
    /// The caller's cgroup in the pids hierarchy, when known.
    pub pids_cgroup: Option<String>,
    /// That cgroup and its ancestors (leaf first), read right after the failure.
    pub cgroup_chain: Vec<PidsCgroupState>,
    pub system: SystemPids,
    /// The caller's user and its RLIMIT_NPROC, when the limit is finite.
    pub user: Option<UserTasks>,
    pub pod: Option<PodRef>,
    /// Largest task holders of the limits this failure is near (may be empty
    /// when the context refreshed them recently).
    pub consumers: Vec<Consumer>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PidLimits {
    pub at: Time,
    /// Every pids cgroup that has a limit, and every cgroup below one (on
    /// cgroup v1 rejections are counted in the forking task's own cgroup).
    pub cgroups: Vec<PidsCgroupState>,
    pub system: SystemPids,
    /// Largest task holders of the cgroups at their limit (refreshed at most
    /// every few seconds per cgroup), by cgroup path.
    #[serde(default)]
    pub consumers: std::collections::BTreeMap<String, Vec<Consumer>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NprocUsage {
    pub at: Time,
    pub uid: u32,
    /// The process that forked while the user was near its limit.
    pub pid: u32,
    pub comm: String,
    /// Tasks the user holds (the kernel's own count).
    pub tasks: u64,
    /// That process's soft RLIMIT_NPROC.
    pub limit: u64,
}
