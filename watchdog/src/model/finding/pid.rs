//! `pid_exhaustion` details: which PID limit fired, who owns it, who fails.
use serde::Serialize;

use crate::model::{Consumer, pod::PodRef};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    PidsCgroup,
    RlimitNproc,
    ThreadsMax,
    PidMax,
    Unknown,
}

impl Limit {
    pub fn name(self) -> &'static str {
        match self {
            Self::PidsCgroup => "pids_cgroup",
            Self::RlimitNproc => "rlimit_nproc",
            Self::ThreadsMax => "threads_max",
            Self::PidMax => "pid_max",
            Self::Unknown => "unknown",
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ProcessFailures {
    pub pid: u32,
    pub comm: String,
    pub uid: u32,
    pub failures: u64,
    /// Of which thread creations (CLONE_THREAD).
    pub thread_failures: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Usage {
    pub current: u64,
    pub max: u64,
    pub percent: f64,
}

impl Usage {
    pub fn new(current: u64, max: u64) -> Self {
        let percent = if max == 0 {
            0.0
        } else {
            (current as f64 * 1000.0 / max as f64).round() / 10.0
        };
        Self {
            current,
            max,
            percent,
        }
    }
}

/// How full every limit was at the last failure.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Headroom {
    /// The failing task's pids cgroups with a limit (leaf first).
    pub pids_cgroups: Vec<CgroupUsage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rlimit_nproc: Option<Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads_max: Option<Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid_max: Option<Usage>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CgroupUsage {
    pub cgroup: String,
    #[serde(flatten)]
    pub usage: Usage,
}

#[derive(Clone, Debug, Serialize)]
pub struct PidDetail {
    pub limit: Limit,
    /// The cgroup whose limit fired (pids_cgroup), else the failing tasks' cgroup.
    pub cgroup: Option<String>,
    /// The user whose RLIMIT_NPROC fired (rlimit_nproc), else the first failing task's uid.
    pub uid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
    /// Failed fork/clone calls seen by the probe.
    pub failures: u64,
    /// Forks the cgroup's limit rejected, from its pids.events (includes ones
    /// the probe may have missed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_rejections: Option<u64>,
    /// Failures per second over the last 10 s.
    pub rate_per_sec: f64,
    pub processes: Vec<ProcessFailures>,
    pub limits: Headroom,
    pub top_consumers: Vec<Consumer>,
}
