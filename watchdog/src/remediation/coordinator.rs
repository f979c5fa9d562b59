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
use std::collections::BTreeMap;

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
    /// Refused for now, to be tried again (an eviction a
    /// PodDisruptionBudget holds back: HTTP 429): not a failure.
    pub not_now: bool,
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

/// What runs through the apiserver, for which finding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterAction {
    pub action: RemedyAction,
    /// Undo what this agent's own earlier action did (uncordon, untaint,
    /// clear its condition).
    pub undo: bool,
    pub cause: Cause,
    pub finding: FindingId,
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

/// The apiserver side of the cluster budget, as [`ClusterBudget`]'s driver
/// uses it (`cluster::Kube` on a real apiserver; fakes in tests). Every call
/// has its own deadline inside.
pub trait ClusterOps {
    /// Take a free slot (or keep ours). `why` is shown on the Lease.
    fn acquire(&mut self, why: &str) -> impl std::future::Future<Output = Acquire>;
    /// Renew our slot. Ok(true): renewed; Ok(false): not renewed this time
    /// (apiserver unreachable) but still valid; Err: lost (taken over, or
    /// past its validity): stop acting.
    fn renew(&mut self) -> impl std::future::Future<Output = Result<bool, String>>;
    /// Give our slot back.
    fn release(&mut self) -> impl std::future::Future<Output = Result<(), String>>;
    /// The node's labels now: Ok(Some(why)) when it carries one of the
    /// excluded ones (labelling a node stops remediation on it within a
    /// pass, without restarting the agent).
    fn excluded(&mut self) -> impl std::future::Future<Output = Result<Option<String>, String>>;
    /// The breaker for `cause`: Ok(Some(why)) while too many nodes show it.
    fn breaker(
        &mut self,
        cause: Cause,
    ) -> impl std::future::Future<Output = Result<Option<String>, String>>;
    /// Run a cluster-visible action (or its undo); true with it: "not now"
    /// (try again later), not a failure.
    fn act(
        &mut self,
        action: &ClusterAction,
    ) -> impl std::future::Future<Output = (Result<String, String>, bool)>;
}

/// What asking for a slot gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acquire {
    /// We hold this slot (its text, e.g. "slot watchdog-remediation-1 of 2").
    Held(String),
    /// No slot free, or the rate window is full: why, with the holders.
    Busy(String),
    /// The apiserver did not answer (or failed): no lease.
    Unreachable(String),
}

/// Shared between the remediator's thread (admit/submit/poll) and the
/// driver task.
#[derive(Default)]
struct State {
    /// Findings that asked for the budget, with their cause and when.
    wanting: BTreeMap<FindingId, (Cause, tokio::time::Instant)>,
    /// When the last wanting finding finished (the release delay runs from it).
    idle_since: Option<tokio::time::Instant>,
    held: Option<String>,
    /// Until when the held slot may be acted under: from the start of the
    /// last successful acquire or renewal, plus the lease duration less a
    /// margin (past it, nothing is admitted under the slot).
    valid_until: Option<tokio::time::Instant>,
    /// Why there is no slot (the last refusal), or that none was asked yet.
    refusal: Option<String>,
    unreachable: bool,
    /// Open breakers, by cause.
    breakers: BTreeMap<Cause, String>,
    /// When each cause's breaker was last judged (an answer, open or
    /// closed): a cause is admitted only on a recent judgement.
    checked: BTreeMap<Cause, tokio::time::Instant>,
    /// The node carries an excluded label (as last read), and when the
    /// labels were last read.
    excluded: Option<String>,
    labels_read: Option<tokio::time::Instant>,
    /// Findings that resolved: their queued (not yet sent) actions are
    /// dropped. Cleared when the finding asks again.
    finished: std::collections::BTreeSet<FindingId>,
    queue: Vec<(u64, ClusterAction)>,
    done: Vec<Outcome>,
    /// Node-local actions admitted while the apiserver was unreachable.
    local_taken: std::collections::VecDeque<tokio::time::Instant>,
}

/// How the cluster budget behaves (from `[remediation.cluster]`).
#[derive(Clone, Debug)]
pub struct ClusterPolicy {
    /// How long a slot is valid after a successful write (the lease's
    /// duration; a margin is taken off).
    pub lease_valid: std::time::Duration,
    /// A breaker judgement is reused this long (nodes are listed at most
    /// this often per cause), and trusted at most twice this long.
    pub breaker_every: std::time::Duration,
    pub release_delay: std::time::Duration,
    /// How often the driver renews a held slot (a third of its duration).
    pub renew_every: std::time::Duration,
    /// A finding that stopped asking for this long no longer holds a slot.
    pub want_expires: std::time::Duration,
    pub local_when_apiserver_down: bool,
    pub local_max_per_hour: u32,
}

/// The cluster budget: the remediator's side of it. Cheap and synchronous:
/// it reads what the driver task last saw and queues work for it.
pub struct ClusterBudget {
    state: Arc<Mutex<State>>,
    notify: Arc<tokio::sync::Notify>,
    policy: ClusterPolicy,
}

use std::sync::{Arc, Mutex};

impl ClusterBudget {
    /// The budget and its driver (spawn the driver on the agent's runtime).
    pub fn new<O: ClusterOps>(
        ops: O,
        policy: ClusterPolicy,
    ) -> (Self, impl std::future::Future<Output = ()>) {
        let state = Arc::new(Mutex::new(State::default()));
        let notify = Arc::new(tokio::sync::Notify::new());
        let driver = drive(ops, state.clone(), notify.clone(), policy.clone());
        (
            Self {
                state,
                notify,
                policy,
            },
            driver,
        )
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Budget for ClusterBudget {
    fn admit(&mut self, finding: &FindingId, cause: Cause, kind: ActionKind, _: Time) -> Admission {
        let now = tokio::time::Instant::now();
        let policy = self.policy.clone();
        let mut s = self.state();
        s.wanting.insert(finding.clone(), (cause, now));
        s.finished.remove(finding);
        s.idle_since = None;
        let judged = s
            .checked
            .get(&cause)
            .is_some_and(|t| now.duration_since(*t) < policy.breaker_every * 2);
        let valid = s.valid_until.is_some_and(|v| now < v);
        let labels_fresh = s
            .labels_read
            .is_some_and(|t| now.duration_since(t) < policy.breaker_every * 2);
        let answer = if let Some(why) = &s.excluded {
            Admission::Wait(format!("node excluded: {why}"))
        } else if !labels_fresh && !s.unreachable {
            Admission::Wait("reading the node's labels".into())
        } else if let Some(why) = s.breakers.get(&cause) {
            Admission::Wait(format!("breaker open: {why}"))
        } else if s.unreachable {
            let why = s
                .refusal
                .clone()
                .unwrap_or_else(|| "apiserver unreachable".into());
            while s
                .local_taken
                .front()
                .is_some_and(|t| now.duration_since(*t).as_secs() >= 3600)
            {
                s.local_taken.pop_front();
            }
            if kind.cluster_visible() || !policy.local_when_apiserver_down {
                Admission::Wait(format!(
                    "no cluster slot: {why}; nothing cluster-visible runs without one{}",
                    if kind.cluster_visible() {
                        ""
                    } else {
                        " (node-local actions neither: remediation.cluster.local_when_apiserver_down is off)"
                    }
                ))
            } else if s.local_taken.len() >= policy.local_max_per_hour as usize {
                Admission::Wait(format!(
                    "no cluster slot ({why}) and the node-local budget is spent: {} of {} this hour",
                    s.local_taken.len(),
                    policy.local_max_per_hour
                ))
            } else {
                s.local_taken.push_back(now);
                Admission::Go(format!(
                    "node-local budget while the apiserver is unreachable ({} of {} this hour)",
                    s.local_taken.len(),
                    policy.local_max_per_hour
                ))
            }
        } else if !judged {
            Admission::Wait(format!("checking the breaker for {}", cause.name()))
        } else if let (Some(slot), true) = (&s.held, valid) {
            Admission::Go(format!("cluster {slot}"))
        } else if s.held.is_some() {
            Admission::Wait("the cluster slot was not renewed in time".into())
        } else {
            Admission::Wait(
                s.refusal
                    .clone()
                    .unwrap_or_else(|| "asking the cluster for a remediation slot".into()),
            )
        };
        drop(s);
        self.notify.notify_one();
        answer
    }

    fn submit(&mut self, ticket: u64, action: &ClusterAction) -> Result<String, String> {
        let mut s = self.state();
        let valid = s
            .valid_until
            .is_some_and(|v| tokio::time::Instant::now() < v);
        if !action.undo && (s.held.is_none() || !valid) {
            return Err("the cluster slot was lost before the action could be sent".into());
        }
        s.queue.push((ticket, action.clone()));
        drop(s);
        self.notify.notify_one();
        Ok("sent to the apiserver".into())
    }

    fn poll(&mut self) -> Vec<Outcome> {
        std::mem::take(&mut self.state().done)
    }

    fn finished(&mut self, finding: &FindingId, _: Time) {
        let mut s = self.state();
        s.wanting.remove(finding);
        s.finished.insert(finding.clone());
        if s.wanting.is_empty() {
            s.idle_since = Some(tokio::time::Instant::now());
        }
        drop(s);
        self.notify.notify_one();
    }

    fn describe(&self) -> Option<String> {
        let s = self.state();
        Some(match (&s.held, s.unreachable) {
            (Some(slot), _) => format!("cluster {slot}"),
            (None, true) => "cluster budget: apiserver unreachable".into(),
            (None, false) => "cluster budget: no slot held".into(),
        })
    }
}

/// The driver: takes a slot while findings want one, renews it, gives it
/// back after the release delay, keeps the breakers current, and runs the
/// queued actions. Each pass is woken by the remediator or by the renewal
/// timer.
async fn drive<O: ClusterOps>(
    mut ops: O,
    state: Arc<Mutex<State>>,
    notify: Arc<tokio::sync::Notify>,
    policy: ClusterPolicy,
) {
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    let mut last_renew = tokio::time::Instant::now();
    // A slot is acted under for its duration less this (the time a write
    // may take to land, and the other agents' skew margin).
    let valid_for = policy.lease_valid.mul_f64(0.8);
    loop {
        let busy = {
            let s = lock();
            s.held.is_some() || !s.wanting.is_empty()
        };
        let wait = if busy {
            policy.renew_every.min(std::time::Duration::from_secs(5))
        } else {
            policy.renew_every
        };
        let _ = tokio::time::timeout(wait, notify.notified()).await;
        let now = tokio::time::Instant::now();
        // Stale wants expire: every lock expires.
        let (causes, queue, held, idle_since, due) = {
            let mut s = lock();
            s.wanting
                .retain(|_, (_, at)| now.duration_since(*at) < policy.want_expires);
            if s.wanting.is_empty() && s.idle_since.is_none() {
                s.idle_since = Some(now);
            }
            let causes: std::collections::BTreeSet<Cause> =
                s.wanting.values().map(|(c, _)| *c).collect();
            // Breakers are judged at most every `breaker_every` per cause.
            let due: Vec<Cause> = causes
                .iter()
                .copied()
                .filter(|c| {
                    s.checked
                        .get(c)
                        .is_none_or(|t| now.duration_since(*t) >= policy.breaker_every)
                })
                .collect();
            (
                causes,
                std::mem::take(&mut s.queue),
                s.held.clone(),
                s.idle_since,
                due,
            )
        };
        let labels_due = !causes.is_empty()
            && lock()
                .labels_read
                .is_none_or(|t| now.duration_since(t) >= policy.breaker_every);
        if labels_due {
            let r = ops.excluded().await;
            let mut s = lock();
            match r {
                Ok(ex) => {
                    s.excluded = ex;
                    s.labels_read = Some(tokio::time::Instant::now());
                }
                Err(e) => {
                    s.labels_read = None;
                    s.unreachable = true;
                    s.refusal = Some(e);
                }
            }
        }
        for c in due {
            let r = ops.breaker(c).await;
            let mut s = lock();
            match r {
                Ok(open) => {
                    s.checked.insert(c, tokio::time::Instant::now());
                    match open {
                        Some(why) => {
                            s.breakers.insert(c, why);
                        }
                        None => {
                            s.breakers.remove(&c);
                        }
                    }
                    s.unreachable = false;
                }
                Err(e) => {
                    // Not judged: nothing of this cause is admitted under a
                    // slot (the node-local rules for an unreachable
                    // apiserver apply).
                    s.checked.remove(&c);
                    s.unreachable = true;
                    s.refusal = Some(e);
                }
            }
        }
        for (ticket, action) in queue {
            let dropped = !action.undo && lock().finished.contains(&action.finding);
            let (result, not_now) = if dropped {
                (
                    Err("not sent: the finding resolved before it could be".into()),
                    false,
                )
            } else {
                ops.act(&action).await
            };
            lock().done.push(Outcome {
                ticket,
                result,
                not_now,
            });
        }
        // A breaker open for every cause that wants a slot: take none, and
        // give back one held (it would only keep another node waiting).
        let stopped = {
            let s = lock();
            !causes.is_empty()
                && (s.excluded.is_some() || causes.iter().all(|c| s.breakers.contains_key(c)))
        };
        let wanted = !causes.is_empty();
        match held {
            None if wanted && !stopped => {
                let why = causes
                    .iter()
                    .map(|c| c.name())
                    .collect::<Vec<_>>()
                    .join(", ");
                let started = tokio::time::Instant::now();
                let r = ops.acquire(&why).await;
                let mut s = lock();
                match r {
                    Acquire::Held(slot) => {
                        s.held = Some(slot);
                        s.valid_until = Some(started + valid_for);
                        s.unreachable = false;
                        s.refusal = None;
                        last_renew = started;
                    }
                    Acquire::Busy(why) => {
                        s.unreachable = false;
                        s.refusal = Some(why);
                    }
                    Acquire::Unreachable(why) => {
                        s.unreachable = true;
                        s.refusal = Some(why);
                    }
                }
            }
            None => {}
            Some(_) => {
                let idle_long = !wanted
                    && idle_since.is_some_and(|t| now.duration_since(t) >= policy.release_delay);
                if idle_long || stopped {
                    let r = ops.release().await;
                    let mut s = lock();
                    s.held = None;
                    s.valid_until = None;
                    match r {
                        Ok(()) => s.unreachable = false,
                        // It expires by itself.
                        Err(e) => tracing::warn!(
                            "remediation slot release failed (it expires by itself): {e}"
                        ),
                    }
                } else if last_renew.elapsed() >= policy.renew_every {
                    let started = tokio::time::Instant::now();
                    let r = ops.renew().await;
                    let mut s = lock();
                    match r {
                        Ok(true) => {
                            last_renew = started;
                            s.valid_until = Some(started + valid_for);
                            s.unreachable = false;
                        }
                        // Still valid: tried again at the next pass.
                        Ok(false) => {}
                        Err(e) => {
                            s.held = None;
                            s.valid_until = None;
                            s.refusal = Some(format!("the slot was lost: {e}"));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Answers in turn; records what it was asked.
    #[derive(Clone, Default)]
    struct Fake(Arc<Mutex<FakeState>>);

    #[derive(Default)]
    struct FakeState {
        acquire: Vec<Acquire>,
        breaker: Option<String>,
        excluded: Option<String>,
        calls: Vec<String>,
    }

    impl Fake {
        fn calls(&self) -> Vec<String> {
            self.0.lock().unwrap().calls.clone()
        }
    }

    impl ClusterOps for Fake {
        async fn acquire(&mut self, why: &str) -> Acquire {
            let mut s = self.0.lock().unwrap();
            s.calls.push(format!("acquire {why}"));
            if s.acquire.is_empty() {
                Acquire::Held("slot watchdog-remediation-0 of 1".into())
            } else {
                s.acquire.remove(0)
            }
        }
        async fn renew(&mut self) -> Result<bool, String> {
            self.0.lock().unwrap().calls.push("renew".into());
            Ok(true)
        }
        async fn release(&mut self) -> Result<(), String> {
            self.0.lock().unwrap().calls.push("release".into());
            Ok(())
        }
        async fn excluded(&mut self) -> Result<Option<String>, String> {
            Ok(self.0.lock().unwrap().excluded.clone())
        }
        async fn breaker(&mut self, _: Cause) -> Result<Option<String>, String> {
            Ok(self.0.lock().unwrap().breaker.clone())
        }
        async fn act(&mut self, a: &ClusterAction) -> (Result<String, String>, bool) {
            self.0
                .lock()
                .unwrap()
                .calls
                .push(format!("act {:?}", a.action));
            (Ok("done".into()), false)
        }
    }

    fn policy() -> ClusterPolicy {
        ClusterPolicy {
            lease_valid: Duration::from_secs(60),
            breaker_every: Duration::from_secs(30),
            release_delay: Duration::from_secs(120),
            renew_every: Duration::from_secs(20),
            want_expires: Duration::from_secs(1800),
            local_when_apiserver_down: true,
            local_max_per_hour: 1,
        }
    }

    fn id() -> FindingId {
        FindingId::new(Cause::StorageHang, "/mnt/x")
    }

    fn cordon() -> ClusterAction {
        ClusterAction {
            action: RemedyAction::Cordon,
            undo: false,
            cause: Cause::StorageHang,
            finding: id(),
        }
    }

    /// Lets the driver run a pass.
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_is_asked_for_held_renewed_used_and_given_back_after_the_delay() {
        let fake = Fake::default();
        fake.0.lock().unwrap().acquire = vec![Acquire::Busy("1 of 1 slots held by node-b".into())];
        let (mut b, driver) = ClusterBudget::new(fake.clone(), policy());
        tokio::spawn(driver);
        let now = Time::from_millis(0);
        let a = b.admit(&id(), Cause::StorageHang, ActionKind::AbortFuse, now);
        assert_eq!(a, Admission::Wait("reading the node's labels".into()));
        settle().await;
        let a = b.admit(&id(), Cause::StorageHang, ActionKind::AbortFuse, now);
        assert_eq!(a, Admission::Wait("1 of 1 slots held by node-b".into()));
        // The next pass (at most 5 s later while wanting) gets it.
        tokio::time::sleep(Duration::from_secs(6)).await;
        settle().await;
        let a = b.admit(&id(), Cause::StorageHang, ActionKind::Cordon, now);
        assert_eq!(
            a,
            Admission::Go("cluster slot watchdog-remediation-0 of 1".into())
        );
        b.submit(7, &cordon()).unwrap();
        settle().await;
        assert_eq!(
            b.poll(),
            vec![Outcome {
                ticket: 7,
                result: Ok("done".into()),
                not_now: false,
            }]
        );
        // Held while wanted: renewed every 20 s.
        tokio::time::sleep(Duration::from_secs(25)).await;
        settle().await;
        assert!(
            fake.calls().contains(&"renew".to_string()),
            "{:?}",
            fake.calls()
        );
        // Finished: kept for the release delay, then given back.
        b.finished(&id(), now);
        tokio::time::sleep(Duration::from_secs(60)).await;
        settle().await;
        assert!(!fake.calls().contains(&"release".to_string()));
        tokio::time::sleep(Duration::from_secs(70)).await;
        settle().await;
        assert!(
            fake.calls().contains(&"release".to_string()),
            "{:?}",
            fake.calls()
        );
        assert_eq!(
            b.describe().as_deref(),
            Some("cluster budget: no slot held")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn apiserver_unreachable_means_nothing_cluster_visible_and_node_local_only_under_its_own_budget()
     {
        let fake = Fake::default();
        fake.0.lock().unwrap().acquire = vec![
            Acquire::Unreachable("apiserver call timed out after 5s".into()),
            Acquire::Unreachable("apiserver call timed out after 5s".into()),
        ];
        let (mut b, driver) = ClusterBudget::new(fake.clone(), policy());
        tokio::spawn(driver);
        let now = Time::from_millis(0);
        b.admit(&id(), Cause::StorageHang, ActionKind::AbortFuse, now);
        settle().await;
        let a = b.admit(&id(), Cause::StorageHang, ActionKind::Cordon, now);
        assert!(
            matches!(&a, Admission::Wait(w) if w.starts_with("no cluster slot: apiserver call timed out after 5s; nothing cluster-visible")),
            "{a:?}"
        );
        let a = b.admit(&id(), Cause::StorageHang, ActionKind::AbortFuse, now);
        assert!(
            matches!(&a, Admission::Go(g) if g.contains("1 of 1 this hour")),
            "{a:?}"
        );
        let a = b.admit(&id(), Cause::StorageHang, ActionKind::AbortFuse, now);
        assert!(
            matches!(&a, Admission::Wait(w) if w.contains("node-local budget is spent")),
            "{a:?}"
        );
        assert!(
            b.submit(1, &cordon()).is_err(),
            "nothing is sent without a slot"
        );
        // Off by default: nothing at all.
        let (mut b, driver) = ClusterBudget::new(
            Fake(Arc::new(Mutex::new(FakeState {
                acquire: vec![Acquire::Unreachable("down".into())],
                ..FakeState::default()
            }))),
            ClusterPolicy {
                local_when_apiserver_down: false,
                ..policy()
            },
        );
        tokio::spawn(driver);
        b.admit(&id(), Cause::StorageHang, ActionKind::AbortFuse, now);
        settle().await;
        let a = b.admit(&id(), Cause::StorageHang, ActionKind::AbortFuse, now);
        assert!(
            matches!(&a, Admission::Wait(w) if w.contains("local_when_apiserver_down is off")),
            "{a:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_breaker_stops_every_action_of_its_cause() {
        let fake = Fake::default();
        fake.0.lock().unwrap().breaker = Some("4 nodes show StorageHung (limit 3)".into());
        let (mut b, driver) = ClusterBudget::new(fake.clone(), policy());
        tokio::spawn(driver);
        let now = Time::from_millis(0);
        b.admit(&id(), Cause::StorageHang, ActionKind::AbortFuse, now);
        settle().await;
        let a = b.admit(&id(), Cause::StorageHang, ActionKind::AbortFuse, now);
        assert_eq!(
            a,
            Admission::Wait("breaker open: 4 nodes show StorageHung (limit 3)".into())
        );
        assert!(
            !fake.calls().iter().any(|c| c.starts_with("acquire")),
            "no slot taken while the breaker is open: {:?}",
            fake.calls()
        );
        // Judged again after `breaker_every` (30 s), then a slot is taken.
        fake.0.lock().unwrap().breaker = None;
        tokio::time::sleep(Duration::from_secs(31)).await;
        settle().await;
        let a = b.admit(&id(), Cause::StorageHang, ActionKind::AbortFuse, now);
        assert!(matches!(a, Admission::Go(_)), "{a:?}");
    }
}

#[cfg(test)]
mod label_tests {
    use std::time::Duration;

    use super::*;

    #[derive(Clone, Default)]
    struct Labels(Arc<Mutex<Option<String>>>, Arc<Mutex<Vec<String>>>);

    impl ClusterOps for Labels {
        async fn acquire(&mut self, _: &str) -> Acquire {
            self.1.lock().unwrap().push("acquire".into());
            Acquire::Held("slot watchdog-remediation-0 of 1".into())
        }
        async fn renew(&mut self) -> Result<bool, String> {
            Ok(true)
        }
        async fn release(&mut self) -> Result<(), String> {
            self.1.lock().unwrap().push("release".into());
            Ok(())
        }
        async fn excluded(&mut self) -> Result<Option<String>, String> {
            Ok(self.0.lock().unwrap().clone())
        }
        async fn breaker(&mut self, _: Cause) -> Result<Option<String>, String> {
            Ok(None)
        }
        async fn act(&mut self, _: &ClusterAction) -> (Result<String, String>, bool) {
            (Ok("done".into()), false)
        }
    }

    /// Labelling the node stops remediation on it within a pass (30 s at
    /// most), without restarting the agent, and gives its slot back.
    #[tokio::test(start_paused = true)]
    async fn labelling_the_node_stops_remediation_and_gives_the_slot_back() {
        let ops = Labels::default();
        let (mut b, driver) = ClusterBudget::new(
            ops.clone(),
            ClusterPolicy {
                lease_valid: Duration::from_secs(60),
                breaker_every: Duration::from_secs(30),
                release_delay: Duration::from_secs(120),
                renew_every: Duration::from_secs(20),
                want_expires: Duration::from_secs(240),
                local_when_apiserver_down: false,
                local_max_per_hour: 1,
            },
        );
        tokio::spawn(driver);
        let id = FindingId::new(Cause::StorageHang, "/mnt/x");
        let now = Time::from_millis(0);
        let settle = || tokio::time::sleep(Duration::from_millis(50));
        b.admit(&id, Cause::StorageHang, ActionKind::AbortFuse, now);
        settle().await;
        let a = b.admit(&id, Cause::StorageHang, ActionKind::AbortFuse, now);
        assert!(matches!(a, Admission::Go(_)), "{a:?}");
        *ops.0.lock().unwrap() =
            Some("it carries the label watchdog.io/remediation=disabled".into());
        tokio::time::sleep(Duration::from_secs(31)).await;
        b.admit(&id, Cause::StorageHang, ActionKind::AbortFuse, now);
        settle().await;
        let a = b.admit(&id, Cause::StorageHang, ActionKind::AbortFuse, now);
        assert_eq!(
            a,
            Admission::Wait(
                "node excluded: it carries the label watchdog.io/remediation=disabled".into()
            )
        );
        assert!(
            ops.1.lock().unwrap().contains(&"release".to_string()),
            "the slot is given back: {:?}",
            ops.1.lock().unwrap()
        );
    }
}
