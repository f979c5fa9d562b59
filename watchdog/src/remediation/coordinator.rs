//! The budget an action runs under, asked just before it runs (enforce):
//! the node's own when there is no cluster (a `trace` by hand, where the
//! command line is the operator's say-so), or a slot of the cluster-wide
//! budget (`cluster`: Leases as a semaphore, the breaker, the rate window).
//!
//! The policy stays pure: which rung is due and whether it passes its gates
//! is decided from the findings and the clock alone (and replays). Whether
//! the cluster lets this node act now is asked here, like the executor's
//! re-check: a refusal is temporary (retried at every poll, recorded once),
//! and nothing is charged.
use crate::model::Time;
use crate::model::finding::{Cause, FindingId, RemedyAction};

use super::ActionKind;

/// May an action run now?
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Yes; the text says under which budget (for the record).
    Go(String),
    /// Not now (no slot free, breaker open, apiserver unreachable): asked
    /// again at the next poll.
    Wait(String),
}

/// The outcome of an action run elsewhere (the apiserver), by ticket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub ticket: u64,
    pub result: Result<String, String>,
}

pub trait Budget {
    /// May `kind` run now for finding `finding` (of `cause`)?
    fn admit(
        &mut self,
        finding: &FindingId,
        cause: Cause,
        kind: ActionKind,
        now: Time,
    ) -> Admission;
    /// Runs a cluster-visible action (or its undo) under ticket `ticket`;
    /// its outcome comes from `poll`. Err: it cannot even be started.
    fn submit(&mut self, ticket: u64, action: &ClusterAction) -> Result<String, String>;
    /// Outcomes of submitted actions, as they finish.
    fn poll(&mut self) -> Vec<Outcome>;
    /// `finding` needs the budget no more (it resolved): its slot is kept
    /// for the release delay, then given back.
    fn finished(&mut self, finding: &FindingId, now: Time);
    /// What the records say of this budget (e.g. "cluster slot 1 of 2");
    /// None when there is no cluster (the node's own budget alone).
    fn describe(&self) -> Option<String>;
}

/// The budget a session's remediator takes at its start (set by `run`
/// when it reaches an apiserver); cloned with the session's options.
#[derive(Clone, Default)]
pub struct BudgetSlot(std::sync::Arc<std::sync::Mutex<Option<Box<dyn Budget + Send>>>>);

impl BudgetSlot {
    pub fn new(budget: Box<dyn Budget + Send>) -> Self {
        Self(std::sync::Arc::new(std::sync::Mutex::new(Some(budget))))
    }

    pub fn take(&self) -> Option<Box<dyn Budget>> {
        self.0.lock().ok()?.take().map(|b| b as Box<dyn Budget>)
    }
}

impl std::fmt::Debug for BudgetSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = self.0.lock().map(|b| b.is_some()).unwrap_or(false);
        write!(f, "BudgetSlot({})", if set { "cluster" } else { "node" })
    }
}

/// What runs through the apiserver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterAction {
    Do(RemedyAction),
    /// Undo what an earlier `Do` of this agent did (uncordon, untaint).
    Undo(RemedyAction),
}

/// No cluster: node-local actions run under the node's own budget (the
/// policy's hourly cap); cluster-visible ones cannot run at all.
pub struct NodeOnly;

impl Budget for NodeOnly {
    fn admit(&mut self, _: &FindingId, _: Cause, kind: ActionKind, _: Time) -> Admission {
        if kind.cluster_visible() {
            // The policy's re-check refused it already (no apiserver); this
            // is the guard behind it.
            Admission::Wait(format!(
                "{} needs the apiserver, and none is configured",
                kind.name()
            ))
        } else {
            Admission::Go("node budget (no cluster configured)".into())
        }
    }

    fn submit(&mut self, _: u64, action: &ClusterAction) -> Result<String, String> {
        Err(format!(
            "no apiserver configured: {:?} cannot run on this node alone",
            action
        ))
    }

    fn poll(&mut self) -> Vec<Outcome> {
        Vec::new()
    }

    fn finished(&mut self, _: &FindingId, _: Time) {}

    fn describe(&self) -> Option<String> {
        None
    }
}
