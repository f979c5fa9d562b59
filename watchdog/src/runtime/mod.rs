//! Container runtime clients for the agent's own relist: what kubelet's
//! generic PLEG does every second (list all containers, inspect each), timed
//! per call so that the agent sees a hung runtime, and which container hangs
//! it, before kubelet reports PLEG unhealthy.
//!
//! - [`docker`]: Docker Engine API over its unix socket (bollard).
//! - next: the CRI (containerd, CRI-O) over its unix socket.
pub mod docker;

use std::time::Duration;

pub use crate::model::kubelet::{HungCall, Relist, SlowCall};

#[derive(Clone, Debug)]
pub struct RelistConfig {
    /// `unix:///var/run/docker.sock` (unix sockets only: no DNS lookups).
    pub docker_host: String,
    /// Pause between the end of one relist and the start of the next.
    pub interval: Duration,
    /// A call taking longer than this is reported as hung.
    pub call_timeout: Duration,
    /// Inspects in flight at once.
    pub concurrency: usize,
    /// A hung call is abandoned (its connection closed) after this long; until
    /// then the container is not inspected again (no pile-up of requests).
    pub abandon_after: Duration,
}

impl Default for RelistConfig {
    fn default() -> Self {
        Self {
            docker_host: "unix:///var/run/docker.sock".into(),
            interval: Duration::from_secs(5),
            call_timeout: Duration::from_secs(10),
            concurrency: 4,
            abandon_after: Duration::from_secs(600),
        }
    }
}
