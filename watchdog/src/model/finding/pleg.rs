//! The PLEG estimate (`"type": "pleg"` records): how stale kubelet's relist
//! is, from which source, and when kubelet will report it.
use std::collections::BTreeMap;

use serde::Serialize;

use crate::model::{
    Time,
    kubelet::{HungCall, SlowCall},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlegSource {
    KubeletMetrics,
    /// `kubelet_pleg_relist_interval_seconds_count` stopped advancing
    /// between scrapes (needs no clock agreement).
    KubeletRelistCount,
    KubeletLog,
    NodeCondition,
    AgentRelist,
}

impl PlegSource {
    pub fn name(self) -> &'static str {
        match self {
            Self::KubeletMetrics => "kubelet metrics",
            Self::KubeletRelistCount => "kubelet relist count",
            Self::KubeletLog => "kubelet log",
            Self::NodeCondition => "node condition",
            Self::AgentRelist => "agent relist",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlegStatus {
    /// Relisting normally.
    Healthy,
    /// The relist is late or a runtime call hangs; kubelet has not reported it.
    Stalled,
    /// Past the threshold, or kubelet says so.
    Unhealthy,
    /// No source has a fresh reading.
    Unknown,
}

/// One source's view.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Reading {
    pub source: PlegSource,
    pub seconds_since_relist: f64,
    /// Whether this staleness keeps growing until the cause goes away (false:
    /// hung inspects that kubelet's request timeout bounds below the threshold).
    pub unbounded: bool,
}

/// A state change of the node's Ready condition.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Transition {
    pub at: Time,
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The PLEG estimate (`"type": "pleg"` record).
/// A runtime operation slower than this on average between two scrapes is
/// named in the estimate.
pub const SLOW_OPERATION_S: f64 = 1.0;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlegEstimate {
    pub at: Time,
    pub status: PlegStatus,
    /// Seconds since PLEG's last successful relist (largest fresh reading).
    pub seconds_since_relist: Option<f64>,
    pub source: Option<PlegSource>,
    pub threshold_s: f64,
    pub evented: bool,
    /// Seconds until kubelet reports PLEG unhealthy (0: already past the
    /// threshold); None when nothing predicts it.
    pub predicted_unhealthy_in_s: Option<f64>,
    /// kubelet itself says PLEG is unhealthy (log line or node condition).
    pub kubelet_reports_unhealthy: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_ready: Option<String>,
    /// The runtime the agent's relist asks (`containerd`, `docker`) and where.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_endpoint: Option<String>,
    /// The slowest inspect of the agent's last relist.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slowest_container: Option<SlowCall>,
    /// Runtime calls of the agent that have not returned.
    pub hung: Vec<HungCall>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_relist_ms: Option<u64>,
    /// Increase of `kubelet_runtime_operations_errors_total` since the first
    /// scrape, by operation type (non-zero only).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub runtime_errors: BTreeMap<String, f64>,
    /// kubelet's mean relist duration between the last two scrapes
    /// (`kubelet_pleg_relist_duration_seconds`): an early warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relist_duration_s: Option<f64>,
    /// Runtime operations whose mean latency between the last two scrapes
    /// (`kubelet_runtime_operations_duration_seconds`) was at least
    /// [`SLOW_OPERATION_S`]: which CRI call is slow.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub slow_operations: BTreeMap<String, f64>,
    /// What kubelet's evented-PLEG metrics say of its CRI event stream,
    /// when that is worth saying (connections failing, never connected, or
    /// connected while the agent assumes the relist's threshold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evented_stream: Option<String>,
    /// Recent runtime failures kubelet logged (deadlines, KillContainerError, fork EAGAIN).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kubelet_errors: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub node_transitions: Vec<Transition>,
    /// Active findings of other detectors (the kernel-level causes).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub related_findings: Vec<super::FindingId>,
    pub readings: Vec<Reading>,
    /// Readings left out because they cannot be true (a skewed clock, a
    /// stale page): problems of the source, never a stall.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source_problems: Vec<String>,
    pub message: String,
}
