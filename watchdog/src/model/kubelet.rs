//! Observation data from kubelet and the container runtime (serde, data only:
//! no clients or handles). The diagnosis engine consumes these; the sources in
//! [`crate::sources`] produce them.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::time::Time;

/// A histogram as kubelet exposes it, cumulative since kubelet started.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    pub count: f64,
    pub sum_s: f64,
    /// `(le, cumulative count)`, ascending, `+Inf` last.
    pub buckets: Vec<(f64, f64)>,
}

impl Histogram {
    pub fn mean_s(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum_s / self.count)
    }
}

/// One runtime operation type (`operation_type` label): its latency
/// histogram and error counter.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RuntimeOperation {
    pub count: f64,
    pub sum_s: f64,
    pub errors: f64,
}

/// What one scrape of kubelet's `/metrics` said about PLEG and the runtime.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KubeletMetrics {
    pub at: Time,
    /// `kubelet_pleg_last_seen_seconds`: when PLEG last completed a relist's
    /// listing (kubelet's own clock, same node).
    pub pleg_last_seen: Option<Time>,
    /// `process_start_time_seconds`: when kubelet started (its clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_start: Option<Time>,
    /// `kubelet_pleg_relist_duration_seconds`.
    pub relist_duration: Option<Histogram>,
    /// `kubelet_pleg_relist_interval_seconds`.
    pub relist_interval: Option<Histogram>,
    /// `kubelet_runtime_operations_duration_seconds` and
    /// `kubelet_runtime_operations_errors_total`, by operation type.
    pub runtime_operations: BTreeMap<String, RuntimeOperation>,
    /// Lines of the page the parser could not read (kept going).
    pub unparseable_lines: u64,
    /// `kubelet_evented_pleg_connection_success_count` and `_error_count`
    /// (evented PLEG, kubelet 1.26+): the CRI event stream's connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evented_connections: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evented_connection_errors: Option<f64>,
}

/// A pod as kubelet names it in logs: `name_namespace(uid)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedPod {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// What a log line said.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum KubeletLogEvent {
    /// `PLEG is not healthy: pleg was last seen active 3m57.1s ago; threshold is 3m0s`
    PlegUnhealthy { last_seen_s: f64, threshold_s: f64 },
    /// A runtime call that hit its deadline (`code = DeadlineExceeded`).
    RuntimeDeadline {
        /// `ContainerStatus`, `getPodContainerStatuses`, ...
        operation: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        container_id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pod: Option<LoggedPod>,
    },
    /// `failed to "KillContainer" for "<c>" with KillContainerError: "<err>"`
    KillContainerError {
        #[serde(skip_serializing_if = "Option::is_none")]
        pod: Option<LoggedPod>,
        container: String,
        error: String,
    },
    /// `fork/exec <binary>: resource temporarily unavailable` (or a
    /// `fork of ... failed: Resource temporarily unavailable`).
    ForkEagain {
        #[serde(skip_serializing_if = "Option::is_none")]
        binary: Option<String>,
    },
    /// `Cannot connect to the Docker daemon at <endpoint>`
    RuntimeUnreachable { endpoint: String },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KubeletLog {
    /// When the agent read the line (log stamps lack the year and zone).
    pub at: Time,
    /// The line's own stamp as written (`0729 11:20:59.245243`, `Mar 22 15:23:22`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logged: Option<String>,
    /// The writing program when the line has a syslog prefix (`dockerd`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
    #[serde(flatten)]
    pub event: KubeletLogEvent,
}

/// The PLEG part of a node condition message.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlegMessage {
    pub last_seen_s: f64,
    pub threshold_s: f64,
}

/// This node's Ready condition, as the apiserver has it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeReady {
    pub at: Time,
    pub node: String,
    /// "True", "False" or "Unknown"; None when the node has no Ready condition.
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_transition: Option<Time>,
    /// Parsed from the message when it says `PLEG is not healthy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pleg: Option<PlegMessage>,
}

/// A pod as the runtime names it (CRI sandbox metadata, or the
/// `io.kubernetes.pod.*` labels kubelet puts on every container).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl std::fmt::Display for PodName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A container as the runtime names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedContainer {
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodName>,
}

/// Every container the runtime listed, with its name and pod: sent by the
/// relist when the set changes, so that findings name pods and containers
/// the way an operator does (`namespace/name`), never by a call on the
/// diagnosis path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuntimeNames {
    pub at: Time,
    pub runtime: String,
    pub containers: Vec<NamedContainer>,
}

/// A runtime call the agent made that has not answered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HungCall {
    /// `list` (a listing: kubelet's relist time waits for it) or `inspect`
    /// (one object's status).
    pub call: String,
    /// The runtime's own name for the call: `ListPodSandbox`,
    /// `ListContainers`, `PodSandboxStatus`, `ContainerStatus` (CRI),
    /// `ContainerList`, `ContainerInspect` (Docker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// The container's or the sandbox's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodName>,
    pub since: Time,
    pub elapsed_ms: u64,
    /// runc/crun invocations for this container (its id in their command
    /// line) alive since before the call: what it may be waiting behind,
    /// and what `kill_process` may end (named with their start time).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<StuckProcess>,
}

/// A runtime helper process a hung call may wait behind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StuckProcess {
    pub pid: u32,
    pub comm: String,
    /// Start time (clock ticks after boot, `/proc/<pid>/stat` field 22).
    pub start: u64,
    /// How long it has been running.
    pub age_ms: u64,
}

impl HungCall {
    /// `ContainerStatus web (pod default/nginx)`, `ListPodSandbox`.
    pub fn describe(&self) -> String {
        let op = self.operation.as_deref().unwrap_or(&self.call);
        match (
            self.container_name
                .as_deref()
                .or(self.container_id.as_deref()),
            &self.pod,
        ) {
            (None, _) => op.to_owned(),
            (Some(c), Some(p)) => format!("{op} {c} (pod {p})"),
            (Some(c), None) => format!("{op} {c}"),
        }
    }
}

/// The slowest inspect of a relist.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlowCall {
    pub container_id: String,
    pub container_name: String,
    pub elapsed_ms: u64,
}

/// One relist by the agent: list all containers, inspect each (what kubelet's
/// generic PLEG does through the CRI).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Relist {
    /// When the relist started.
    pub at: Time,
    /// `docker`, or the CRI runtime's own name (`containerd`, `cri-o`).
    pub runtime: String,
    /// Where it was asked (`unix:///run/containerd/containerd.sock`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub endpoint: String,
    /// The listing answered (kubelet updates its relist time at this point).
    pub listed: bool,
    /// Every inspect answered in time as well.
    pub complete: bool,
    pub duration_ms: u64,
    pub containers: u32,
    /// Pod sandboxes listed (CRI only).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sandboxes: u32,
    pub inspected: u32,
    /// Inspects that returned an error (not hangs).
    pub inspect_errors: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slowest: Option<SlowCall>,
    /// Calls still unanswered (this relist's and earlier ones').
    pub hung: Vec<HungCall>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    KubeletMetrics,
    KubeletLog,
    NodeWatch,
    RuntimeRelist,
}

impl SourceKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::KubeletMetrics => "kubelet metrics",
            Self::KubeletLog => "kubelet log",
            Self::NodeWatch => "node watch",
            Self::RuntimeRelist => "runtime relist",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceState {
    Available,
    Unavailable,
    /// Not configured (e.g. no node name, no log path).
    Disabled,
}

/// A source's health, sent when it changes (not on every retry).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceStatus {
    pub at: Time,
    pub source: SourceKind,
    pub state: SourceState,
    /// Where it reads from (URL, path, socket, node name).
    pub target: String,
    /// Why, e.g. `connection refused`.
    pub message: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}
