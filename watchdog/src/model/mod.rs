//! The data model: every observation the engine consumes and every record it
//! produces, in one place that imports nothing with I/O (no aya, tokio, kube,
//! files or sockets). Recordings are this module serialised, so it is also the
//! recording schema: change it compatibly.
//!
//! - [`Observation`]: what the probes, the node context and the sources saw,
//!   timestamped ([`pids`], [`storage`], [`dbus`], [`kubelet`]);
//! - [`pod`]: Kubernetes pod and container identity from cgroup paths;
//! - [`time`]: wall-clock milliseconds as recorded.
use serde::{Deserialize, Serialize};

pub mod cgroup;
pub mod dbus;
pub mod errno;
pub mod finding;
pub mod kubelet;
pub mod pids;
pub mod pod;
pub mod settings;
pub mod storage;
pub mod time;

pub use pids::{
    Consumer, ForkFailed, NprocUsage, PidLimits, PidsCgroupState, SystemPids, UserTasks,
};
pub use storage::{BlockedTask, BlockedTasks, MountRef, WaitClass};
pub use time::Time;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Observation {
    /// A process-creating syscall failed with EAGAIN (kernel probe).
    ForkFailed(Box<ForkFailed>),
    /// Periodic sample of the PID limits (pids cgroups with a limit, system).
    PidLimits(PidLimits),
    /// A user's task count neared its RLIMIT_NPROC (kernel probe, rate-limited).
    NprocUsage(NprocUsage),
    /// One scrape of kubelet's /metrics (PLEG and runtime operation metrics).
    KubeletMetrics(Box<kubelet::KubeletMetrics>),
    /// A kubelet (or runtime/system) log line about PLEG or the runtime.
    KubeletLog(kubelet::KubeletLog),
    /// This node's Ready condition (sent when it changes).
    NodeReady(kubelet::NodeReady),
    /// One of the agent's own relists of the container runtime.
    Relist(Box<kubelet::Relist>),
    /// A kubelet/runtime source became available or unavailable.
    Source(kubelet::SourceStatus),
    /// The runtime's names of its containers and their pods (on change).
    RuntimeNames(Box<kubelet::RuntimeNames>),
    /// Tasks blocked on storage past the threshold (storage sweep, every poll).
    BlockedTasks(BlockedTasks),
    /// A call on a D-Bus/systemd socket connection of a runtime process.
    SocketCall(dbus::SocketCall),
    /// Queue lengths of those connections and sockets (sock_diag).
    SocketQueues(dbus::SocketQueues),
    /// The agent's own probe of the bus or of systemd.
    BusProbe(dbus::BusProbe),
}

impl Observation {
    pub fn at(&self) -> Time {
        match self {
            Self::ForkFailed(f) => f.at,
            Self::PidLimits(p) => p.at,
            Self::NprocUsage(n) => n.at,
            Self::KubeletMetrics(m) => m.at,
            Self::KubeletLog(l) => l.at,
            Self::NodeReady(n) => n.at,
            Self::Relist(r) => r.at,
            Self::Source(s) => s.at,
            Self::RuntimeNames(n) => n.at,
            Self::BlockedTasks(b) => b.at,
            Self::SocketCall(c) => c.at,
            Self::SocketQueues(q) => q.at,
            Self::BusProbe(p) => p.at,
        }
    }
}
