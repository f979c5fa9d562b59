//! The pure diagnosis engine: observations in, reports (findings and
//! warnings) out. It reads no clock, file or socket: time comes from the
//! observations and from `tick(now)`, so recorded streams replay to the same
//! findings.
pub mod pid_exhaustion;
pub mod storage_hang;

use serde::Serialize;

use crate::{observation::Observation, time::Time};

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// A finding resolves after this long without new evidence.
    pub resolve_after_ms: u64,
    /// An active finding is re-reported at most this often while it changes.
    pub update_every_ms: u64,
    /// Warn when a limit is this full (percent).
    pub warn_percent: f64,
    /// Clear the warning below this (hysteresis).
    pub warn_clear_percent: f64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            resolve_after_ms: 30_000,
            update_every_ms: 5_000,
            warn_percent: 90.0,
            warn_clear_percent: 85.0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    PidExhaustion,
    StorageHang,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingStatus {
    /// First report.
    Active,
    /// Still active, with new evidence.
    Update,
    /// Recovered.
    Resolved,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Confidence {
    /// A kernel counter proves it (e.g. pids.events of that cgroup rose).
    Certain,
    /// The limit was at its maximum when read right after the failure.
    Likely,
    /// No limit could be shown to be exhausted.
    Unknown,
}

/// One step of the evidence chain.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Evidence {
    pub at: Time,
    pub what: String,
}

/// A diagnosis. Cause-specific fields are flattened into the same record.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub cause: Cause,
    pub status: FindingStatus,
    /// Stable id of this finding (cause and culprit).
    pub id: String,
    pub summary: String,
    pub confidence: Confidence,
    pub first_seen: Time,
    pub last_seen: Time,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
    pub evidence: Vec<Evidence>,
    pub remedy: String,
    #[serde(flatten)]
    pub detail: Detail,
}

#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum Detail {
    Pid(pid_exhaustion::PidDetail),
    Storage(storage_hang::StorageDetail),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WarningStatus {
    Raised,
    Cleared,
}

/// A limit approaching exhaustion (before anything failed).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Warning {
    pub cause: Cause,
    pub status: WarningStatus,
    pub at: Time,
    pub limit: pid_exhaustion::Limit,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    pub current: u64,
    pub max: u64,
    pub percent: f64,
    pub message: String,
}

#[derive(Clone, Debug)]
pub enum Report {
    Finding(Box<Finding>),
    Warning(Warning),
}

pub struct Engine {
    pid: pid_exhaustion::PidExhaustion,
    storage: storage_hang::StorageHang,
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Self {
        Self {
            storage: storage_hang::StorageHang::new(&cfg),
            pid: pid_exhaustion::PidExhaustion::new(cfg),
        }
    }

    pub fn observe(&mut self, obs: &Observation) -> Vec<Report> {
        match obs {
            Observation::ForkFailed(f) => self.pid.fork_failed(f),
            Observation::PidLimits(l) => self.pid.limits(l),
            Observation::NprocUsage(n) => self.pid.nproc_usage(n),
            Observation::BlockedTasks(b) => self.storage.observe(b),
        }
    }

    /// Advance time: periodic updates and resolutions.
    pub fn tick(&mut self, now: Time) -> Vec<Report> {
        let mut r = self.pid.tick(now);
        r.extend(self.storage.tick(now));
        r
    }

    /// A PID-exhaustion finding is active (arms the fork probe).
    pub fn has_active(&self) -> bool {
        self.pid.has_active()
    }

    /// Findings still active, as last reported.
    pub fn active(&self) -> Vec<Finding> {
        let mut a = self.pid.active();
        a.extend(self.storage.active());
        a
    }
}
