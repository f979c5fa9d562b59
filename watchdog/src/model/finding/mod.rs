//! What the engine reports: findings (one cause, its culprit, the evidence
//! chain), warnings (a limit nearly full) and PLEG estimates. Cause-specific
//! details live in the submodules, one per cause.
use serde::{Deserialize, Serialize};

use super::Time;

pub mod pid;
pub mod pleg;
pub mod runtime;
pub mod storage;
pub mod systemd;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// systemd stopped answering on D-Bus; runtimes wait for it.
    SystemdHang,
    /// fork/clone fail with EAGAIN: a PID limit is exhausted.
    PidExhaustion,
    /// Tasks blocked in uninterruptible sleep on a mount.
    StorageHang,
    /// The container runtime is stuck and no kernel cause is proven.
    RuntimeUnresponsive,
}

impl Cause {
    pub const ALL: [Cause; 4] = [
        Cause::SystemdHang,
        Cause::PidExhaustion,
        Cause::StorageHang,
        Cause::RuntimeUnresponsive,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::SystemdHang => "systemd_hang",
            Self::PidExhaustion => "pid_exhaustion",
            Self::StorageHang => "storage_hang",
            Self::RuntimeUnresponsive => "runtime_unresponsive",
        }
    }
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
    /// Status transitions of this finding (first report, updates, resolution),
    /// oldest first; filled in by the engine.
    pub timeline: Vec<Transition>,
    /// Other findings active at the same time (two causes at once).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub concurrent: Vec<String>,
    /// How this finding explains kubelet's PLEG staleness, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pleg: Option<PlegLink>,
    pub remedy: String,
    #[serde(flatten)]
    pub detail: Detail,
}

/// One status change of a finding.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Transition {
    pub at: Time,
    pub status: FindingStatus,
    pub summary: String,
}

/// The link from kubelet's PLEG staleness to the causes that explain it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlegLink {
    /// Seconds since the last successful relist.
    pub stale_s: f64,
    /// kubelet's threshold, seconds.
    pub threshold_s: f64,
    /// Seconds until kubelet reports PLEG unhealthy (0 when it already
    /// does); absent when nothing predicts it (e.g. one hung call that
    /// kubelet's request timeout bounds below the threshold).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until_unhealthy_s: Option<f64>,
    /// Human-readable: "PLEG stale for 47 s; explained by storage_hang on ...".
    pub message: String,
}

#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum Detail {
    Pid(pid::PidDetail),
    Runtime(runtime::RuntimeDetail),
    Storage(storage::StorageDetail),
    Systemd(systemd::SystemdDetail),
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
    pub limit: pid::Limit,
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
    /// PLEG health estimate (on change and periodically).
    Pleg(Box<pleg::PlegEstimate>),
}
