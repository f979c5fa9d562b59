//! `storage_hang` details: the mount, the blocked tasks, their containers.
use serde::Serialize;

use crate::model::{WaitClass, kubelet::PodName, pod::PodRef};

/// A blocked task as the finding lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BlockedProcess {
    pub comm: String,
    pub pid: u32,
    pub tid: u32,
    pub syscall: Option<String>,
    pub path: Option<String>,
    pub blocked_for_s: f64,
    pub state: String,
    pub killable: Option<bool>,
    pub wait: WaitClass,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
}

/// A container (and its pod, when it is a Kubernetes one) with blocked tasks.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct AffectedContainer {
    pub container_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// The runtime's names (filled in by the engine when the relist knows them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodName>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StorageDetail {
    /// `unknown` when the blocked calls could not be tied to a mount.
    pub mount_point: String,
    pub fs_type: Option<String>,
    pub source: Option<String>,
    pub dev: Option<String>,
    /// The dominant wait (fuse, nfs, block, other).
    pub wait: WaitClass,
    /// Blocked tasks, longest blocked first (at most 20; `blocked_total` counts all).
    pub blocked: Vec<BlockedProcess>,
    pub blocked_total: usize,
    /// Tasks that SIGKILL can no longer end (plain TASK_UNINTERRUPTIBLE).
    pub unkillable: usize,
    /// Symbolised kernel stack of the longest-blocked task, innermost first.
    pub stack: Vec<String>,
    pub containers: Vec<AffectedContainer>,
    pub pods: Vec<PodRef>,
    /// Distinct process names blocked (runtime components first: kubelet, dockerd...).
    pub processes: Vec<String>,
}
