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

    /// The name in records and the `cause` label of the metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::SystemdHang => "systemd_hang",
            Self::PidExhaustion => "pid_exhaustion",
            Self::StorageHang => "storage_hang",
            Self::RuntimeUnresponsive => "runtime_unresponsive",
        }
    }

    /// The node condition this cause sets (True while a finding is active).
    pub fn condition_type(self) -> &'static str {
        match self {
            Self::SystemdHang => "SystemdHung",
            Self::PidExhaustion => "PIDExhausted",
            Self::StorageHang => "StorageHung",
            Self::RuntimeUnresponsive => "RuntimeUnresponsive",
        }
    }

    /// The condition's reason while no finding of this cause is active.
    pub fn healthy_reason(self) -> &'static str {
        match self {
            Self::SystemdHang => "SystemdResponsive",
            Self::PidExhaustion => "PIDsAvailable",
            Self::StorageHang => "NoStorageHang",
            Self::RuntimeUnresponsive => "RuntimeResponsive",
        }
    }

    /// The reason of the Event sent when a finding of this cause resolves.
    pub fn resolved_reason(self) -> &'static str {
        match self {
            Self::SystemdHang => "SystemdHangResolved",
            Self::PidExhaustion => "PIDExhaustionResolved",
            Self::StorageHang => "StorageHangResolved",
            Self::RuntimeUnresponsive => "RuntimeUnresponsiveResolved",
        }
    }

    /// Seen in the kernel (PID limits, storage, systemd), as opposed to the
    /// runtime fallback, which a kernel cause explains.
    pub fn is_kernel(self) -> bool {
        self != Self::RuntimeUnresponsive
    }

    /// How a finding id of this cause joins the cause and the key (kept as
    /// recordings and Events have always shown them).
    fn id_separator(self) -> char {
        match self {
            Self::PidExhaustion | Self::RuntimeUnresponsive => '/',
            Self::SystemdHang | Self::StorageHang => ':',
        }
    }
}

/// A finding's stable identity: its cause and its culprit (the limit and its
/// owner, the mount, the socket). Shown as `storage_hang:/mnt/x` or
/// `pid_exhaustion/pids_cgroup/kubepods/...`; ordered as that text.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FindingId {
    pub cause: Cause,
    pub key: String,
}

impl FindingId {
    pub fn new(cause: Cause, key: impl Into<String>) -> Self {
        Self {
            cause,
            key: key.into(),
        }
    }
}

impl std::fmt::Display for FindingId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}{}{}",
            self.cause.name(),
            self.cause.id_separator(),
            self.key
        )
    }
}

impl Ord for FindingId {
    /// The order of the displayed ids (no cause name is a prefix of another).
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.cause.name(), &self.key).cmp(&(other.cause.name(), &other.key))
    }
}

impl PartialOrd for FindingId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Serialize for FindingId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What would fix a finding: the operator's instructions (`text`, what the
/// records show as `remedy`) and the actions, with their targets, that
/// remediation may take for it. Nothing reads the text back.
#[derive(Clone, Debug, PartialEq)]
pub struct Remedy {
    pub text: String,
    pub actions: Vec<RemedyAction>,
}

impl Remedy {
    pub fn new(text: impl Into<String>, actions: Vec<RemedyAction>) -> Self {
        Self {
            text: text.into(),
            actions,
        }
    }
}

impl Serialize for Remedy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// An action on the objects a finding names, in escalation order within a
/// remedy. The node-wide actions (cordon, taint, escalate) name no object of
/// the finding: detectors never list them; the policy adds them where a
/// configured ladder asks for them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemedyAction {
    /// Kill every task of the container cgroup that holds the PIDs.
    KillContainer { cgroup: String },
    /// Evict the pod that holds the PIDs (by namespace and name once the
    /// runtime named it: the Eviction API needs them; the uid guards against
    /// a re-created pod of the same name).
    EvictPod {
        pod_uid: String,
        namespace: Option<String>,
        name: Option<String>,
    },
    /// Abort the FUSE connection of a hung mount (`major:minor` of the mount).
    AbortFuse { mount_point: String, dev: String },
    /// `umount -f` of a hung network mount.
    ForceUnmount { mount_point: String },
    /// Make the systemd serving this socket re-execute itself. `client`: a
    /// process the finding saw waiting on it, whose network and mount
    /// namespaces say which listener of that path is meant (a kind node's
    /// systemd and the host's both serve `/run/systemd/private`).
    ReexecSystemd {
        socket: String,
        client: Option<ProcRef>,
    },
    /// Kill a runtime process stuck in a call (runc, a shim). `start`: its
    /// start time, so that a reused pid is never hit.
    KillProcess { pid: u32, comm: String, start: u64 },
    /// Mark the node unschedulable (undone only if watchdog set it).
    Cordon,
    /// Add the project's own NoSchedule taint (removed only by watchdog).
    Taint,
    /// Set a node condition that a node-repair controller (NHC, MHC, EKS
    /// auto-repair) can act on; watchdog itself never reboots.
    Escalate,
}

/// A process as a finding names it: its pid and its start time (clock
/// ticks after boot, field 22 of `/proc/<pid>/stat`): the pair is unique
/// for the boot, the pid alone is not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcRef {
    pub pid: u32,
    pub start: u64,
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

/// A pod a finding names: its uid, and its namespace and name once the
/// runtime named it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodId {
    pub uid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
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
    pub id: FindingId,
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
    pub concurrent: Vec<FindingId>,
    /// How this finding explains kubelet's PLEG staleness, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pleg: Option<PlegLink>,
    pub remedy: Remedy,
    #[serde(flatten)]
    pub detail: Detail,
}

#[cfg(test)]
impl Finding {
    /// A finding of `cause` keyed `key`, first seen at `first_ms`, reported
    /// at `at_ms` with `status` and the remedy `actions`, and no detail of
    /// its own (a runtime finding's empty fields): for the tests of what
    /// consumes findings (the lifecycle, the policy, the remediator).
    pub(crate) fn for_tests(
        cause: Cause,
        key: &str,
        status: FindingStatus,
        first_ms: u64,
        at_ms: u64,
        actions: Vec<RemedyAction>,
    ) -> Finding {
        Finding {
            cause,
            status,
            id: FindingId::new(cause, key),
            summary: String::new(),
            confidence: Confidence::Certain,
            first_seen: Time::from_millis(first_ms),
            last_seen: Time::from_millis(at_ms),
            resolved_at: (status == FindingStatus::Resolved).then(|| Time::from_millis(at_ms)),
            duration_s: None,
            evidence: Vec::new(),
            timeline: Vec::new(),
            concurrent: Vec::new(),
            pleg: None,
            remedy: Remedy::new("", actions),
            detail: Detail::Runtime(runtime::RuntimeDetail {
                runtime: None,
                runtime_endpoint: None,
                seconds_since_relist: None,
                source: None,
                threshold_s: 180.0,
                predicted_unhealthy_in_s: None,
                kubelet_reports_unhealthy: false,
                hung: Vec::new(),
                kubelet_errors: Vec::new(),
            }),
        }
    }
}

impl Finding {
    /// The pods this finding names (by uid; namespace and name once the
    /// runtime named them): what namespace exclusions are checked against
    /// and what remediation Events are also posted on.
    pub fn pods(&self) -> Vec<PodId> {
        let mut out: Vec<PodId> = Vec::new();
        let mut add = |uid: &str, ns: Option<&String>, name: Option<&String>| match out
            .iter_mut()
            .find(|p| p.uid == uid)
        {
            Some(p) => {
                if p.namespace.is_none() {
                    p.namespace = ns.cloned();
                }
                if p.name.is_none() {
                    p.name = name.cloned();
                }
            }
            None => out.push(PodId {
                uid: uid.to_string(),
                namespace: ns.cloned(),
                name: name.cloned(),
            }),
        };
        match &self.detail {
            Detail::Pid(d) => {
                if let Some(p) = &d.pod {
                    add(&p.pod_uid, p.namespace.as_ref(), p.name.as_ref());
                }
            }
            Detail::Storage(d) => {
                for p in &d.pods {
                    add(&p.pod_uid, p.namespace.as_ref(), p.name.as_ref());
                }
                for c in &d.containers {
                    if let Some(p) = &c.pod {
                        add(&p.uid, Some(&p.namespace), Some(&p.name));
                    } else if let Some(uid) = &c.pod_uid {
                        add(uid, None, None);
                    }
                }
            }
            Detail::Runtime(_) | Detail::Systemd(_) => {}
        }
        out
    }

    /// The reason of the node condition and Event while it is active: what
    /// exactly fired (CamelCase).
    pub fn problem_reason(&self) -> &'static str {
        match &self.detail {
            Detail::Pid(d) => match d.limit {
                pid::Limit::PidsCgroup => "PIDsCgroupLimitReached",
                pid::Limit::RlimitNproc => "RlimitNprocReached",
                pid::Limit::ThreadsMax => "ThreadsMaxReached",
                pid::Limit::PidMax => "PidMaxReached",
                pid::Limit::Unknown => "ForkFailing",
            },
            Detail::Systemd(d) => match d.stuck {
                systemd::Stuck::BusNotReading => "SystemBusNotReading",
                systemd::Stuck::SystemdNotReading => "SystemdNotReading",
                systemd::Stuck::SystemdNotReplying => "SystemdNotReplying",
            },
            Detail::Storage(_) | Detail::Runtime(_) => self.cause.condition_type(),
        }
    }
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
