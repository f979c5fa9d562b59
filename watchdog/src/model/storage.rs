//! Observations of tasks blocked on storage (the storage sweep's output).
use serde::{Deserialize, Serialize};

use super::{pod::PodRef, time::Time};

/// What a blocked task waits for, from its kernel stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitClass {
    /// A FUSE request the daemon has not answered (`request_wait_answer`).
    Fuse,
    /// An NFS/SUNRPC call (`rpc_wait_bit_killable`, `nfs_*`).
    Nfs,
    /// Block I/O (`io_schedule`, `folio_wait_bit`, `blk_*`).
    Block,
    /// A write to a frozen file system (`fsfreeze -f`): `percpu_rwsem_wait`
    /// under `sb_start_write`/`mnt_want_write`.
    Frozen,
    Other,
}

impl WaitClass {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Fuse => "waiting for the FUSE daemon to answer",
            Self::Nfs => "waiting for the NFS server (RPC)",
            Self::Block => "waiting for block I/O",
            Self::Frozen => "waiting for a frozen file system to thaw",
            Self::Other => "in uninterruptible sleep",
        }
    }
}

/// The mount a blocked call is on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRef {
    /// As the node (the agent's mount namespace) sees it when it has the same
    /// file system mounted, else as the task sees it.
    pub mount_point: String,
    pub fs_type: String,
    pub source: String,
    /// `major:minor` of the file system.
    pub dev: String,
    /// The mount point in the task's own mount namespace, when different
    /// (e.g. a container's volume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_point_in_task: Option<String>,
}

/// A task stuck in a syscall or in uninterruptible sleep for longer than the
/// threshold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlockedTask {
    pub tid: u32,
    /// Process id (tgid).
    pub pid: u32,
    /// Thread name.
    pub comm: String,
    /// `/proc/<pid>/stat` state: `D` (uninterruptible) or `S`.
    pub state: String,
    /// SIGKILL would still end it: D with TASK_WAKEKILL, or S. None when the
    /// kernel's exact state is unknown (D without a sched_switch record).
    pub killable: Option<bool>,
    /// The syscall it is stuck in, when known.
    pub syscall: Option<String>,
    /// The path argument (absolute, as the task sees it), or the file of the
    /// fd argument.
    pub path: Option<String>,
    /// When the syscall started (or the sleep began, without a syscall).
    pub since: Time,
    pub blocked_for_s: f64,
    pub wait: WaitClass,
    /// `wait` shows in the stack itself (else it was inferred from the
    /// mount's type, e.g. a page wait on a FUSE file).
    #[serde(default)]
    pub wait_in_stack: bool,
    /// Symbolised kernel stack, innermost first.
    pub stack: Vec<String>,
    pub mount: Option<MountRef>,
    /// The process's cgroup path (the one naming a container, if any).
    pub cgroup: Option<String>,
    pub container_id: Option<String>,
    pub pod: Option<PodRef>,
    /// The process was watched (a runtime or its descendant): its syscalls
    /// were tracked in flight.
    pub watched: bool,
}

/// One sweep: every task blocked past the threshold (possibly none, so that
/// findings resolve).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlockedTasks {
    pub at: Time,
    pub threshold_ms: u64,
    pub tasks: Vec<BlockedTask>,
}
