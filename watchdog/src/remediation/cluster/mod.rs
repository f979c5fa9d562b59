//! Cluster-visible remediation: the budget shared by every agent of the
//! cluster, and the actions other nodes and tools can see. Async (kube);
//! the pure policy (`remediation::policy`) decides *whether* a rung is due,
//! this module decides whether the cluster lets this node act now, and
//! performs the cluster-side actions.
//!
//! - [`lease`]: a semaphore of K `coordination.k8s.io/v1` Leases (at most K
//!   nodes remediating at once, K from a count and a percent of the pool,
//!   never below 1) and a rate window (at most R acquisitions per window W),
//!   without a controller. Expiry is judged as client-go's leader election
//!   judges it: from the LOCAL monotonic instant this agent first saw the
//!   record's current resourceVersion, never from the holder's `renewTime`,
//!   so a skewed clock cannot steal or pin a slot.
//! - [`breaker`]: refuses everything when too many nodes show the same cause
//!   (a fleet-wide fault is not a node's to fix).
//! - [`node`]: cordon, taint, escalate (a node condition for NHC/MHC/EKS
//!   repair; watchdog never reboots) and the PDB-aware Eviction API. Each
//!   undoes only what it did itself: a cordon it set (marked by an
//!   annotation), its own taint key, its own condition.
//! - [`budget`]: all of it as the cluster budget's driver uses it
//!   (`remediation::coordinator`). Remediation Events on the Pod a step
//!   acts on go through the Kubernetes sink with the Node's.
//!
//! Every apiserver call has a timeout; an error or a timeout is
//! "unreachable", and without a lease nothing cluster-visible happens.
use std::{future::Future, time::Duration};

use k8s_openapi::api::core::v1::Node;
use kube::{
    Api,
    api::{ListParams, ObjectMeta},
};

pub mod breaker;
pub mod budget;
pub mod lease;
pub mod node;

#[cfg(test)]
mod mock;
#[cfg(test)]
mod tests;

pub use breaker::{Breaker, BreakerConfig};
pub use lease::{Acquire, Intent, LeaseConfig, Renew, Semaphore, Slot};
pub use node::{Cordon, Evict, NodeActions, Taint, Uncordon, Untaint};

/// The project's own domain for annotations, labels, taint keys (never a
/// `kubernetes.io` key).
pub const DOMAIN: &str = "watchdog.io";
/// On a Node: watchdog set `spec.unschedulable` (the value says which
/// agent and why); only then does it clear it.
pub const CORDONED_BY: &str = "watchdog.io/cordoned-by";
/// The NoSchedule taint watchdog adds (value: the cause).
pub const TAINT_KEY: &str = "watchdog.io/remediation";
/// The node condition `escalate` sets when watchdog's own remedies failed:
/// what NHC / MHC / EKS node repair can be configured to act on.
pub const ESCALATION_CONDITION: &str = "WatchdogRemediationFailed";

/// Nodes are listed in pages of this size.
const PAGE: u32 = 500;
/// And at most this many pages (a 100 000-node pool).
const MAX_PAGES: usize = 200;

/// An apiserver call that did not succeed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("{what}: no answer within {after:?}")]
    Timeout { what: String, after: Duration },
    /// The apiserver answered with an error status.
    #[error("{what}: HTTP {code} {reason}: {message}")]
    Status {
        what: String,
        code: u16,
        reason: String,
        message: String,
    },
    /// Connection, TLS, decoding.
    #[error("{what}: {message}")]
    Transport { what: String, message: String },
}

impl CallError {
    pub fn code(&self) -> Option<u16> {
        match self {
            Self::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// One apiserver call under `timeout`.
pub(crate) async fn call<T>(
    timeout: Duration,
    what: impl Into<String>,
    fut: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, CallError> {
    let what = what.into();
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err(CallError::Timeout {
            what,
            after: timeout,
        }),
        Ok(Ok(v)) => Ok(v),
        Ok(Err(kube::Error::Api(s))) => Err(CallError::Status {
            what,
            code: s.code,
            reason: s.reason.clone(),
            message: s.message.clone(),
        }),
        Ok(Err(e)) => Err(CallError::Transport {
            what,
            message: e.to_string(),
        }),
    }
}

/// The names of the pool's Nodes (metadata only, paged; each page under
/// `timeout`). A failure is a failure: never a partial count.
pub async fn list_node_names(
    nodes: &Api<Node>,
    selector: Option<&str>,
    timeout: Duration,
) -> Result<Vec<ObjectMeta>, CallError> {
    let mut out = Vec::new();
    let mut lp = ListParams::default().limit(PAGE);
    if let Some(s) = selector {
        lp = lp.labels(s);
    }
    for _ in 0..MAX_PAGES {
        let page = call(timeout, "list nodes", nodes.list_metadata(&lp)).await?;
        out.extend(page.items.into_iter().map(|n| n.metadata));
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => return Ok(out),
        }
    }
    Ok(out)
}

/// The pool's Nodes (whole objects: the breaker reads their conditions).
pub async fn list_nodes(
    nodes: &Api<Node>,
    selector: Option<&str>,
    timeout: Duration,
) -> Result<Vec<Node>, CallError> {
    let mut out = Vec::new();
    let mut lp = ListParams::default().limit(PAGE);
    if let Some(s) = selector {
        lp = lp.labels(s);
    }
    for _ in 0..MAX_PAGES {
        let page = call(timeout, "list nodes", nodes.list(&lp)).await?;
        out.extend(page.items);
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => return Ok(out),
        }
    }
    Ok(out)
}

/// `a_1f2e3d4c` -> `a`: the node part of a holder identity.
pub fn holder_node(holder: &str) -> &str {
    holder.rsplit_once('_').map_or(holder, |(n, _)| n)
}

/// A suffix that differs at every agent start: 8 hex digits of a random
/// UUID from the kernel, or the PID and the time when that is unreadable.
pub fn start_suffix() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .ok()
        .and_then(|u| u.trim().replace('-', "").get(..8).map(str::to_owned))
        .unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            format!("{:04x}{:04x}", std::process::id() & 0xffff, t & 0xffff)
        })
}
