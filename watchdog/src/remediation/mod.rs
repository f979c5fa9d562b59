//! Remediation: the smallest fix for a proven cause, behind a pure policy
//! (`policy`) and executors (`exec`), dry-run by default.
//!
//! Findings come in from the engine (`Remediator::on_finding`), the clock
//! ticks (`Remediator::tick`); the policy says which rung of a finding's
//! ladder is due and whether it passes its gates; in `enforce` the executor
//! re-checks the target just before acting, then acts. Every step is a
//! `remediation` record: planned, skipped (with the reason), started,
//! succeeded, failed, verified (the finding resolved after it).
//!
//! The node's actions (`exec`, one file per family): `kill_container`
//! (pid_exhaustion), `abort_fuse` and `force_unmount` (storage_hang: FUSE,
//! then NFS/CIFS/Ceph/9p with `umount2(MNT_FORCE)` in the mount namespace
//! the finding's table came from, never lazy), `reexec_systemd`
//! (systemd_hang: SIGTERM to the systemd serving the hung socket, only when
//! it is PID 1 of its own PID namespace, not the host's, not stopped, with
//! room on /run (systemd #5016) and its binary unchanged on disk (#19725);
//! verified by a `Ping`) and `kill_process` (a runc/crun the systemd_hang
//! finding saw waiting, named by pid and start time; shims are never named:
//! moby #43491). The actions through the apiserver (`evict_pod`, `cordon`,
//! `taint`, `escalate`) run under the cluster budget (`coordinator`, `cluster`).
use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use serde::Serialize;

use crate::model::Time;
use crate::model::finding::{Cause, Finding, FindingId, FindingStatus, RemedyAction};

pub mod cluster;
pub mod coordinator;
pub mod exec;
pub mod journal;
pub mod policy;

pub use coordinator::{Admission, Budget, ClusterAction, NodeOnly};
pub use exec::{Executor, NodeExecutor, ReplayExecutor};
pub use journal::Journal;
pub use policy::{Decision, Policy, PolicyConfig, Step};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// No remediation at all (no records).
    Off,
    /// Every gate is evaluated and the record says what would run.
    #[default]
    DryRun,
    /// Allowed actions run.
    Enforce,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::DryRun => "dry-run",
            Self::Enforce => "enforce",
        }
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Self::Off),
            "dry-run" => Ok(Self::DryRun),
            "enforce" => Ok(Self::Enforce),
            _ => Err(format!(
                "unknown remediation mode `{s}` (expected off, dry-run or enforce)"
            )),
        }
    }
}

/// The kinds of action, as `--allow-actions` names them.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    KillContainer,
    EvictPod,
    AbortFuse,
    ForceUnmount,
    ReexecSystemd,
    KillProcess,
    Cordon,
    Taint,
    Escalate,
}

impl ActionKind {
    pub const ALL: [ActionKind; 9] = [
        Self::KillContainer,
        Self::EvictPod,
        Self::AbortFuse,
        Self::ForceUnmount,
        Self::ReexecSystemd,
        Self::KillProcess,
        Self::Cordon,
        Self::Taint,
        Self::Escalate,
    ];

    /// Seen by the whole cluster (through the apiserver): never taken
    /// without a slot of the cluster's remediation budget.
    pub fn cluster_visible(self) -> bool {
        matches!(
            self,
            Self::EvictPod | Self::Cordon | Self::Taint | Self::Escalate
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::KillContainer => "kill_container",
            Self::EvictPod => "evict_pod",
            Self::AbortFuse => "abort_fuse",
            Self::ForceUnmount => "force_unmount",
            Self::ReexecSystemd => "reexec_systemd",
            Self::KillProcess => "kill_process",
            Self::Cordon => "cordon",
            Self::Taint => "taint",
            Self::Escalate => "escalate",
        }
    }

    /// Why this action cannot run in this version (its executor is not
    /// built yet); None when it can.
    pub fn unavailable(self) -> Option<&'static str> {
        match self {
            Self::KillContainer
            | Self::AbortFuse
            | Self::EvictPod
            | Self::Cordon
            | Self::Taint
            | Self::Escalate
            | Self::ForceUnmount
            | Self::ReexecSystemd
            | Self::KillProcess => None,
        }
    }
}

impl FromStr for ActionKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown action `{s}` (expected one of {})",
                    Self::ALL.map(Self::name).join(", ")
                )
            })
    }
}

impl RemedyAction {
    pub fn kind(&self) -> ActionKind {
        match self {
            Self::KillContainer { .. } => ActionKind::KillContainer,
            Self::EvictPod { .. } => ActionKind::EvictPod,
            Self::AbortFuse { .. } => ActionKind::AbortFuse,
            Self::ForceUnmount { .. } => ActionKind::ForceUnmount,
            Self::ReexecSystemd { .. } => ActionKind::ReexecSystemd,
            Self::KillProcess { .. } => ActionKind::KillProcess,
            Self::Cordon => ActionKind::Cordon,
            Self::Taint => ActionKind::Taint,
            Self::Escalate => ActionKind::Escalate,
        }
    }

    /// The object acted on, as records and cooldowns name it.
    pub fn target(&self) -> String {
        match self {
            Self::KillContainer { cgroup } => format!("cgroup {cgroup}"),
            Self::EvictPod {
                pod_uid,
                namespace: Some(ns),
                name: Some(name),
            } => format!("pod {ns}/{name} (uid {pod_uid})"),
            Self::EvictPod { pod_uid, .. } => format!("pod {pod_uid}"),
            Self::AbortFuse { mount_point, dev } => {
                format!("fuse connection {dev} ({mount_point})")
            }
            Self::ForceUnmount { mount_point } => format!("mount {mount_point}"),
            Self::ReexecSystemd { socket, .. } => format!("systemd serving {socket}"),
            Self::KillProcess { pid, comm, .. } => format!("process {pid} ({comm})"),
            Self::Cordon => "node scheduling".into(),
            Self::Taint => "node taints".into(),
            Self::Escalate => "node condition WatchdogRemediationFailed".into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Planned,
    Skipped,
    Started,
    Succeeded,
    Failed,
    Verified,
    /// What an action of watchdog's own did was undone (an uncordon after
    /// its cordon, its taint removed) once the finding resolved.
    Undone,
}

impl StepStatus {
    pub fn name(self) -> &'static str {
        match self {
            Self::Planned => "planned",
            Self::Skipped => "skipped",
            Self::Started => "started",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Verified => "verified",
            Self::Undone => "undone",
        }
    }
}

/// One `remediation` record.
#[derive(Clone, Debug, Serialize)]
pub struct RemediationRecord {
    pub at: Time,
    pub finding: FindingId,
    pub cause: Cause,
    pub action: ActionKind,
    pub target: String,
    pub mode: Mode,
    pub status: StepStatus,
    pub reason: String,
    pub budget: String,
    /// The pod acted on, when the action names one (its Events go to the
    /// Pod as well as the Node).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<crate::model::finding::PodId>,
}

/// The policy and an executor: findings and ticks in, records out.
pub struct Remediator {
    policy: Policy,
    executor: Box<dyn Executor>,
    /// The budget actions run under (enforce): the node's own, or a slot of
    /// the cluster's.
    budget: Box<dyn Budget>,
    /// Where intents and outcomes go before and after acting (enforce).
    journal: Option<Journal>,
    /// Cluster-visible actions started and not finished, by ticket.
    pending: BTreeMap<u64, Pending>,
    next_ticket: u64,
    /// Node-wide changes of watchdog's own (a cordon, a taint, the
    /// escalation condition) and the findings they were made for: undone
    /// when the last one resolves; kept until the undo succeeded.
    undoable: BTreeMap<ActionKind, Undoable>,
    /// Rungs held back "not now" (an eviction a PodDisruptionBudget
    /// refuses), by finding and target, since when: resent at every poll
    /// without a new `started`, until the step timeout moves the ladder on.
    retrying: BTreeMap<(FindingId, String), Time>,
}

/// A node-wide change of watchdog's own, and who still needs it.
struct Undoable {
    action: RemedyAction,
    cause: Cause,
    findings: BTreeSet<FindingId>,
    /// An undo was sent and has not come back.
    in_flight: bool,
    /// Undo (again) from then on, when no finding needs it.
    retry_at: Option<Time>,
}

/// How long a change found on the node at start (an earlier agent's
/// cordon, taint or condition) waits for a finding of this agent to claim
/// it before it is undone.
pub const INHERITED_GRACE_MS: u64 = 600_000;
/// A failed undo is tried again this long after.
const UNDO_RETRY_MS: u64 = 30_000;

/// A step whose action runs through the apiserver.
struct Pending {
    at: Time,
    finding: FindingId,
    cause: Cause,
    action: RemedyAction,
    budget: String,
    pod: Option<crate::model::finding::PodId>,
    /// An undo (its success is `undone`).
    undo: bool,
}

impl Remediator {
    pub fn new(cfg: PolicyConfig, executor: Box<dyn Executor>) -> Self {
        Self {
            policy: Policy::new(cfg),
            executor,
            budget: Box::new(NodeOnly),
            journal: None,
            pending: BTreeMap::new(),
            next_ticket: 1,
            undoable: BTreeMap::new(),
            retrying: BTreeMap::new(),
        }
    }

    /// Actions run under `budget` (the cluster's) instead of the node's own.
    pub fn with_budget(mut self, budget: Box<dyn Budget>) -> Self {
        self.budget = budget;
        self
    }

    /// Changes of watchdog's own found on the node at start (a restarted
    /// agent's cordon, taint or condition): undone after
    /// [`INHERITED_GRACE_MS`] unless a finding of this agent claims them.
    pub fn with_inherited(mut self, found: Vec<(RemedyAction, Cause)>, now: Time) -> Self {
        for (action, cause) in found {
            self.undoable.insert(
                action.kind(),
                Undoable {
                    action,
                    cause,
                    findings: BTreeSet::new(),
                    in_flight: false,
                    retry_at: Some(Time::from_millis(now.0 + INHERITED_GRACE_MS)),
                },
            );
        }
        self
    }

    /// Journal every action; `taken` (this boot's actions already in it)
    /// count against the budget and cool their targets down.
    pub fn with_journal(mut self, journal: Journal, taken: &[(Time, String)]) -> Self {
        self.policy.restore(taken);
        self.journal = Some(journal);
        self
    }

    pub fn mode(&self) -> Mode {
        self.policy.config().mode
    }

    pub fn on_finding(&mut self, f: &Finding) -> Vec<RemediationRecord> {
        let steps = self.policy.on_finding(f);
        let mut out = self.run(steps);
        if f.status == FindingStatus::Resolved {
            let now = f.resolved_at.unwrap_or(f.last_seen);
            self.budget.finished(&f.id, now);
            self.retrying.retain(|(id, _), _| *id != f.id);
            for u in self.undoable.values_mut() {
                if u.findings.remove(&f.id) && u.findings.is_empty() {
                    u.retry_at = Some(now);
                }
            }
            out.extend(self.undo_due(now));
        }
        out
    }

    pub fn tick(&mut self, now: Time) -> Vec<RemediationRecord> {
        let mut out = self.finish_pending(now);
        out.extend(self.undo_due(now));
        let steps = self.policy.tick(now);
        out.extend(self.run(steps));
        out
    }

    /// The records' budget: the policy's, and in enforce the cluster's.
    fn budget_text(&self, policy: &str) -> String {
        match self.budget.describe() {
            Some(b) if self.mode() == Mode::Enforce => format!("{policy}; {b}"),
            _ => policy.to_string(),
        }
    }

    fn journal(
        &mut self,
        at: Time,
        finding: &FindingId,
        action: &RemedyAction,
        status: StepStatus,
        detail: &str,
    ) -> Result<(), String> {
        match self.journal.as_mut() {
            Some(j) => j.append(
                at,
                &finding.to_string(),
                action.kind().name(),
                &action.target(),
                status.name(),
                detail,
            ),
            None => Ok(()),
        }
    }

    /// Outcomes of cluster-visible actions that finished since the last tick.
    fn finish_pending(&mut self, now: Time) -> Vec<RemediationRecord> {
        let mut out = Vec::new();
        let step_timeout = self.policy.config().step_timeout_ms;
        for o in self.budget.poll() {
            let Some(p) = self.pending.remove(&o.ticket) else {
                continue;
            };
            let key = (p.finding.clone(), p.action.target());
            let (status, detail) = match (o.result, p.undo) {
                (Err(why), false) if o.not_now => {
                    let since = *self.retrying.entry(key.clone()).or_insert(p.at);
                    if now.millis_since(since) >= step_timeout {
                        // Held back for a whole step: the next rung.
                        self.retrying.remove(&key);
                        self.policy.failed(&p.finding);
                        (
                            StepStatus::Failed,
                            format!(
                                "held back for {:.0} s ({why}): the next rung comes",
                                now.secs_since(since)
                            ),
                        )
                    } else {
                        // Nothing happened, nothing is charged; the same rung
                        // again next poll (said once).
                        if !self
                            .policy
                            .recheck_failed(&p.finding, &p.action, p.at, "not now")
                        {
                            continue;
                        }
                        (
                            StepStatus::Skipped,
                            format!("not now: {why} (tried again at every poll)"),
                        )
                    }
                }
                (Ok(done), true) => {
                    let kind = p.action.kind();
                    if self
                        .undoable
                        .get(&kind)
                        .is_some_and(|u| u.findings.is_empty())
                    {
                        self.undoable.remove(&kind);
                    } else if let Some(u) = self.undoable.get_mut(&kind) {
                        u.in_flight = false;
                    }
                    if o.not_now {
                        // Nothing of watchdog's was there to undo.
                        (StepStatus::Skipped, format!("nothing to undo: {done}"))
                    } else {
                        (StepStatus::Undone, done)
                    }
                }
                (Err(why), true) => {
                    if let Some(u) = self.undoable.get_mut(&p.action.kind()) {
                        u.in_flight = false;
                        u.retry_at = Some(Time::from_millis(now.0 + UNDO_RETRY_MS));
                    }
                    (
                        StepStatus::Failed,
                        format!("undo failed ({why}); tried again in 30 s"),
                    )
                }
                (Ok(done), false) => {
                    self.retrying.remove(&key);
                    (StepStatus::Succeeded, done)
                }
                (Err(why), false) => {
                    self.retrying.remove(&key);
                    self.policy.failed(&p.finding);
                    (StepStatus::Failed, why)
                }
            };
            if let Err(e) = self.journal(now, &p.finding, &p.action, status, &detail) {
                tracing::warn!("{e}");
            }
            out.push(RemediationRecord {
                at: now.max(p.at),
                finding: p.finding,
                cause: p.cause,
                action: p.action.kind(),
                target: p.action.target(),
                mode: self.mode(),
                status,
                reason: detail,
                budget: p.budget,
                pod: p.pod,
            });
        }
        out
    }

    /// What watchdog changed on the node that no finding needs any more
    /// (the last one resolved, or an earlier agent's change nobody claimed
    /// within the grace) is undone; a failed undo is tried again.
    fn undo_due(&mut self, now: Time) -> Vec<RemediationRecord> {
        let mut out = Vec::new();
        let due: Vec<ActionKind> = self
            .undoable
            .iter()
            .filter(|(_, u)| {
                u.findings.is_empty() && !u.in_flight && u.retry_at.is_some_and(|t| now >= t)
            })
            .map(|(k, _)| *k)
            .collect();
        let budget = self.budget_text(&self.policy.budget_text());
        let mode = self.mode();
        for kind in due {
            let ticket = self.next_ticket;
            self.next_ticket += 1;
            let Some(u) = self.undoable.get_mut(&kind) else {
                continue;
            };
            u.in_flight = true;
            u.retry_at = None;
            let (action, cause) = (u.action.clone(), u.cause);
            let finding = FindingId::new(cause, format!("undo {}", action.target()));
            let rec = |status, reason| RemediationRecord {
                at: now,
                finding: finding.clone(),
                cause,
                action: kind,
                target: action.target(),
                mode,
                status,
                reason,
                budget: budget.clone(),
                pod: None,
            };
            let sent = self.budget.submit(
                ticket,
                &ClusterAction {
                    action: action.clone(),
                    undo: true,
                    cause,
                    finding: finding.clone(),
                },
            );
            match sent {
                Ok(what) => {
                    out.push(rec(StepStatus::Started, format!("undo: {what}")));
                    self.pending.insert(
                        ticket,
                        Pending {
                            at: now,
                            finding: finding.clone(),
                            cause,
                            action,
                            budget: budget.clone(),
                            pod: None,
                            undo: true,
                        },
                    );
                }
                Err(why) => {
                    if let Some(u) = self.undoable.get_mut(&kind) {
                        u.in_flight = false;
                        u.retry_at = Some(Time::from_millis(now.0 + UNDO_RETRY_MS));
                    }
                    out.push(rec(
                        StepStatus::Failed,
                        format!("undo: {why}; tried again in 30 s"),
                    ));
                }
            }
        }
        out
    }

    /// The executor's re-check, or for an action through the apiserver,
    /// whether one is there to take it.
    fn recheck(&mut self, action: &RemedyAction) -> Result<String, String> {
        if !action.kind().cluster_visible() {
            return self.executor.recheck(action);
        }
        if self.budget.describe().is_none() {
            return Err(format!(
                "{} acts through the apiserver, and no cluster is configured (`watchdog run` in a cluster)",
                action.kind().name()
            ));
        }
        if let RemedyAction::EvictPod {
            pod_uid,
            namespace: None,
            ..
        }
        | RemedyAction::EvictPod {
            pod_uid,
            name: None,
            ..
        } = action
        {
            return Err(format!(
                "pod {pod_uid} has no name yet (the runtime has not named it): the Eviction API needs namespace/name"
            ));
        }
        Ok(exec::describe(action))
    }

    fn run(&mut self, steps: Vec<Step>) -> Vec<RemediationRecord> {
        let mode = self.mode();
        let mut out = Vec::new();
        let has_journal = self.journal.is_some();
        for s in steps {
            let budget = self.budget_text(&s.budget);
            let rec = |status: StepStatus, reason: String| RemediationRecord {
                at: s.at,
                finding: s.finding.clone(),
                cause: s.cause,
                action: s.action.kind(),
                target: s.action.target(),
                mode,
                status,
                reason,
                budget: budget.clone(),
                pod: s.pod.clone(),
            };
            match &s.decision {
                Decision::Skip(why) => out.push(rec(StepStatus::Skipped, why.clone())),
                Decision::Verified => {
                    let why = "the finding resolved after this action";
                    if let Err(e) =
                        self.journal(s.at, &s.finding, &s.action, StepStatus::Verified, why)
                    {
                        tracing::warn!("{e}");
                    }
                    out.push(rec(StepStatus::Verified, why.into()));
                }
                Decision::Plan { allowed } => match self.recheck(&s.action) {
                    Ok(what) => out.push(rec(
                        StepStatus::Planned,
                        if *allowed {
                            format!("dry-run: would {what}")
                        } else {
                            format!(
                                "dry-run: would {what} (enforce needs --allow-actions {})",
                                s.action.kind().name()
                            )
                        },
                    )),
                    Err(why) => out.push(rec(StepStatus::Skipped, format!("re-check: {why}"))),
                },
                Decision::Execute if !has_journal => {
                    // Nothing acts without its intent on disk.
                    self.policy.failed(&s.finding);
                    out.push(rec(
                        StepStatus::Failed,
                        "not run: enforce needs the remediation journal".into(),
                    ));
                }
                Decision::Execute => {
                    // The kind of refusal (not its numbers): said once each.
                    let admitted = match self.recheck(&s.action) {
                        Err(why) => Err(("target".to_string(), format!("re-check: {why}"))),
                        Ok(what) => {
                            match self
                                .budget
                                .admit(&s.finding, s.cause, s.action.kind(), s.at)
                            {
                                Admission::Go(under) => Ok((what, under)),
                                Admission::Wait(why) => Err((
                                    why.split(' ').take(3).collect::<Vec<_>>().join(" "),
                                    format!("budget: {why}"),
                                )),
                            }
                        }
                    };
                    let (what, under) = match admitted {
                        Err((kind, why)) => {
                            if self
                                .policy
                                .recheck_failed(&s.finding, &s.action, s.at, &kind)
                            {
                                out.push(rec(
                                    StepStatus::Skipped,
                                    format!("{why} (tried again at every poll)"),
                                ));
                            }
                            continue;
                        }
                        Ok(x) => x,
                    };
                    // A rung held back "not now" is resent: no new intent.
                    let resent = self
                        .retrying
                        .contains_key(&(s.finding.clone(), s.action.target()));
                    if !resent {
                        self.policy.recheck_passed(&s.finding);
                        // The intent is on disk before anything runs: a
                        // restarted agent knows this action was taken.
                        if let Err(e) =
                            self.journal(s.at, &s.finding, &s.action, StepStatus::Started, &what)
                        {
                            self.policy.failed(&s.finding);
                            out.push(rec(
                                StepStatus::Failed,
                                format!("not run: the intent could not be journaled: {e}"),
                            ));
                            continue;
                        }
                        out.push(rec(
                            StepStatus::Started,
                            format!("{what} (under the {under})"),
                        ));
                    }
                    if s.action.kind().cluster_visible() {
                        // Owned from the moment it is sent: an undo queued
                        // behind it reaches it, whatever its outcome.
                        if matches!(
                            s.action,
                            RemedyAction::Cordon | RemedyAction::Taint | RemedyAction::Escalate
                        ) {
                            let u =
                                self.undoable
                                    .entry(s.action.kind())
                                    .or_insert_with(|| Undoable {
                                        action: s.action.clone(),
                                        cause: s.cause,
                                        findings: BTreeSet::new(),
                                        in_flight: false,
                                        retry_at: None,
                                    });
                            u.findings.insert(s.finding.clone());
                            u.retry_at = None;
                        }
                        let ticket = self.next_ticket;
                        self.next_ticket += 1;
                        match self.budget.submit(
                            ticket,
                            &ClusterAction {
                                action: s.action.clone(),
                                undo: false,
                                cause: s.cause,
                                finding: s.finding.clone(),
                            },
                        ) {
                            Ok(_) => {
                                self.pending.insert(
                                    ticket,
                                    Pending {
                                        at: s.at,
                                        finding: s.finding.clone(),
                                        cause: s.cause,
                                        action: s.action.clone(),
                                        budget: budget.clone(),
                                        pod: s.pod.clone(),
                                        undo: false,
                                    },
                                );
                            }
                            Err(why) => {
                                self.policy.failed(&s.finding);
                                if let Err(e) = self.journal(
                                    s.at,
                                    &s.finding,
                                    &s.action,
                                    StepStatus::Failed,
                                    &why,
                                ) {
                                    tracing::warn!("{e}");
                                }
                                out.push(rec(StepStatus::Failed, why));
                            }
                        }
                        continue;
                    }
                    let (status, detail) = match self.executor.execute(&s.action) {
                        Ok(done) => (StepStatus::Succeeded, done),
                        Err(why) => {
                            self.policy.failed(&s.finding);
                            (StepStatus::Failed, why)
                        }
                    };
                    if let Err(e) = self.journal(s.at, &s.finding, &s.action, status, &detail) {
                        tracing::warn!("{e}");
                    }
                    out.push(rec(status, detail));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
