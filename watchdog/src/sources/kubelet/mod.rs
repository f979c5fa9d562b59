//! kubelet's view of PLEG, from three sources run by [`super::supervise`]:
//!
//! - [`metrics`]: scrape kubelet's `/metrics` (PLEG last seen, relist
//!   duration/interval, runtime operation latencies and errors);
//! - [`log`]: follow kubelet's log file (PLEG line, runtime deadlines,
//!   KillContainerError, fork EAGAIN);
//! - [`journal`]: the same lines from the systemd journal (kubelet's and the
//!   runtimes' units), read without `journalctl`;
//! - [`node`]: watch this node's Ready condition through the apiserver.
//!
//! The agent's own relist is in [`super::runtime`].
pub mod journal;
pub mod log;
pub mod metrics;
pub mod node;
