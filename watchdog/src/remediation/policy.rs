//! The remediation policy: pure, replayable. Findings and the clock in,
//! steps out (what to do, or why not); no I/O, no executor, no aya, tokio or
//! kube. The same inputs give the same steps, so recorded sessions replay
//! to the same remediation records (the golden replays show them).
//!
//! Per finding, a ladder: the finding's own actions in escalation order
//! (e.g. `kill_container`, then `evict_pod`). A rung is taken once the
//! finding has stayed active for the delay; the next one when the previous
//! step did not resolve it within the step timeout. Every rung passes the
//! same gates, in this order, and a refused rung says why in its record:
//! an executor exists for the action; the node is not excluded by a label;
//! the target is in scope (by default `kill_container` acts only on the
//! cgroups of Kubernetes pods) and no pod it touches is in an excluded
//! namespace; in `enforce` the action is allowed explicitly; the node has
//! been up long enough; the target is not cooling down from an earlier
//! action; the node's hourly budget is not spent.
//!
//! A cause's ladder is the finding's own actions unless the configuration
//! gives one (`[remediation.ladder.<cause>]`): then it lists the action
//! kinds in order, each rung taking the finding's targets of that kind, and
//! may add the node-wide ones (`cordon`, `taint`, `escalate`), with a
//! confirm time of its own instead of the delay.
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::model::Time;
use crate::model::finding::{Cause, Finding, FindingId, FindingStatus, PodId, RemedyAction};

use super::{ActionKind, Mode};

/// What the policy needs to decide (from flags or the `[remediation]`
/// section). Recorded with the session, so that a replay plans the same.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PolicyConfig {
    pub mode: Mode,
    /// Actions `enforce` may run (nothing by default).
    pub allow: BTreeSet<ActionKind>,
    /// How long a finding stays active before its first action.
    pub delay_ms: u64,
    /// How long an action has to resolve its finding before the next rung.
    pub step_timeout_ms: u64,
    /// No second action on the same target within this time.
    pub cooldown_ms: u64,
    /// Actions (planned ones too, in dry-run) per node per rolling hour.
    pub max_per_hour: u32,
    /// `kill_container` on any pids cgroup, not only pods' (`--remediation-scope any`).
    pub any_cgroup: bool,
    /// `kill_container` only below this cgroup (`--remediation-cgroup-prefix`).
    pub cgroup_prefix: Option<String>,
    /// Per-cause ladders (absent: the finding's own actions, after the delay).
    pub ladders: BTreeMap<Cause, Ladder>,
    /// No action touches a pod of these namespaces.
    pub exclude_namespaces: Vec<String>,
    /// No action at all on a node carrying one of these labels (`key` or
    /// `key=value`).
    pub exclude_node_labels: Vec<String>,
    /// The node's labels as the agent read them from the apiserver at start
    /// (None: unknown, e.g. no apiserver).
    pub node_labels: Option<BTreeMap<String, String>>,
    /// No action before the node has been up this long.
    pub min_uptime_ms: u64,
    /// When the node booted (the live agent fills it in from /proc/uptime;
    /// None in recordings made before it existed: not checked).
    pub booted_at: Option<Time>,
    /// The session reaches a cluster (`run` with an apiserver): the actions
    /// through the apiserver can be planned and run; without one they are
    /// refused (and the ladder moves on).
    pub cluster: bool,
    /// `reexec_systemd` may act on the node's own PID 1 (the host's
    /// systemd, as on most nodes); off by default: only a systemd that is
    /// PID 1 of its own PID namespace (a container's, a kind node's).
    pub allow_host_init: bool,
}

/// One cause's ladder (`[remediation.ladder.<cause>]`).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Ladder {
    /// The action kinds, in escalation order.
    pub actions: Vec<ActionKind>,
    /// How long a finding of this cause stays active before its first rung
    /// (None: the policy's delay).
    pub confirm_ms: Option<u64>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            mode: Mode::DryRun,
            allow: BTreeSet::new(),
            delay_ms: 60_000,
            step_timeout_ms: 120_000,
            cooldown_ms: 600_000,
            max_per_hour: 3,
            any_cgroup: false,
            cgroup_prefix: None,
            ladders: BTreeMap::new(),
            exclude_namespaces: Vec::new(),
            exclude_node_labels: Vec::new(),
            node_labels: None,
            min_uptime_ms: 0,
            booted_at: None,
            cluster: false,
            allow_host_init: false,
        }
    }
}

/// What the policy decided for one rung.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Dry-run: every gate passed; this is what would run (`allowed`: in
    /// enforce too; otherwise enforce would refuse it as not allowed).
    Plan { allowed: bool },
    /// Enforce: every gate passed; the executor re-checks, then runs it.
    Execute,
    /// A gate refused it (the reason says which).
    Skip(String),
    /// The finding resolved after this action ran.
    Verified,
}

/// One remediation step of a finding.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub at: Time,
    pub finding: FindingId,
    pub cause: Cause,
    pub action: RemedyAction,
    pub decision: Decision,
    /// The node's budget after this step, e.g. "1 of 3 actions this hour".
    pub budget: String,
    /// The one pod the action acts on, when there is one (its Events are
    /// posted on the Pod too).
    pub pod: Option<PodId>,
}

/// Where a finding stands on its ladder.
#[derive(Clone, Debug)]
struct Track {
    cause: Cause,
    first_seen: Time,
    /// The ladder's rungs from the latest actions the finding named
    /// (updates may name new targets).
    actions: Vec<RemedyAction>,
    /// The pods the finding names.
    pods: Vec<PodId>,
    /// The rungs taken (planned, executed or refused), by kind and target:
    /// the next is the first of `actions` not among them (an update that
    /// adds or drops a target neither repeats nor skips a rung).
    taken_rungs: Vec<(ActionKind, String)>,
    /// When the last rung was taken (planned or executed).
    last_step: Option<Time>,
    /// The last rung that ran (enforce) or was planned: verified on resolve.
    acted: Option<(RemedyAction, bool)>,
    /// `acted` before the last rung was taken (restored when that rung's
    /// re-check refuses it: nothing ran).
    prev_acted: Option<(RemedyAction, bool)>,
    /// The key of the last temporary refusal (cooldown, budget, re-check),
    /// to record it once, not every tick.
    waiting: Option<String>,
}

pub struct Policy {
    cfg: PolicyConfig,
    tracks: BTreeMap<FindingId, Track>,
    /// When actions were taken (or planned), for the hourly budget.
    taken: VecDeque<Time>,
    /// Target -> when it was last acted on.
    cooldown: BTreeMap<String, Time>,
}

const HOUR_MS: u64 = 3_600_000;

impl Policy {
    pub fn new(cfg: PolicyConfig) -> Self {
        Self {
            cfg,
            tracks: BTreeMap::new(),
            taken: VecDeque::new(),
            cooldown: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.cfg
    }

    /// Actions an earlier agent of this boot took (its journal): they count
    /// against the hourly budget, and their targets cool down, as if this
    /// policy had taken them.
    pub fn restore(&mut self, taken: &[(Time, String)]) {
        for (at, target) in taken {
            self.taken.push_back(*at);
            let t = self.cooldown.entry(target.clone()).or_insert(*at);
            *t = (*t).max(*at);
        }
        self.taken.make_contiguous().sort();
    }

    /// A finding report: starts, updates or ends its ladder. A resolution
    /// after an action gives a `Verified` step.
    pub fn on_finding(&mut self, f: &Finding) -> Vec<Step> {
        if self.cfg.mode == Mode::Off {
            return Vec::new();
        }
        match f.status {
            FindingStatus::Active | FindingStatus::Update => {
                let t = self.tracks.entry(f.id.clone()).or_insert_with(|| Track {
                    cause: f.cause,
                    first_seen: f.first_seen,
                    actions: Vec::new(),
                    pods: Vec::new(),
                    taken_rungs: Vec::new(),
                    prev_acted: None,
                    last_step: None,
                    acted: None,
                    waiting: None,
                });
                let rungs = rungs(self.cfg.ladders.get(&f.cause), &f.remedy.actions);
                if !rungs.is_empty() {
                    t.actions = rungs;
                }
                let pods = f.pods();
                if !pods.is_empty() {
                    t.pods = pods;
                }
                Vec::new()
            }
            FindingStatus::Resolved => {
                let Some(t) = self.tracks.remove(&f.id) else {
                    return Vec::new();
                };
                match t.acted {
                    Some((action, true)) => vec![Step {
                        at: f.resolved_at.unwrap_or(f.last_seen),
                        finding: f.id.clone(),
                        cause: t.cause,
                        pod: pod_of(&action, &t.pods),
                        action,
                        decision: Decision::Verified,
                        budget: self.budget_text(),
                    }],
                    _ => Vec::new(),
                }
            }
        }
    }

    /// The rungs due now.
    pub fn tick(&mut self, now: Time) -> Vec<Step> {
        if self.cfg.mode == Mode::Off {
            return Vec::new();
        }
        while self
            .taken
            .front()
            .is_some_and(|t| now.millis_since(*t) >= HOUR_MS)
        {
            self.taken.pop_front();
        }
        let cooldown_ms = self.cfg.cooldown_ms;
        self.cooldown
            .retain(|_, t| now.millis_since(*t) < cooldown_ms);
        let ids: Vec<FindingId> = self.tracks.keys().cloned().collect();
        let mut steps = Vec::new();
        for id in ids {
            self.advance(&id, now, &mut steps);
        }
        steps
    }

    /// Takes the finding's due rungs: refused ones one after the other (a
    /// permanent refusal moves on to the next rung at once), until one is
    /// planned or runs, or one has to wait.
    fn advance(&mut self, id: &FindingId, now: Time, steps: &mut Vec<Step>) {
        loop {
            let Some(t) = self.tracks.get(id) else {
                return;
            };
            let delay = self
                .cfg
                .ladders
                .get(&t.cause)
                .and_then(|l| l.confirm_ms)
                .unwrap_or(self.cfg.delay_ms);
            if now.millis_since(t.first_seen) < delay {
                return;
            }
            if let Some(last) = t.last_step
                && now.millis_since(last) < self.cfg.step_timeout_ms
            {
                return;
            }
            let Some(action) = t
                .actions
                .iter()
                .find(|a| !t.taken_rungs.contains(&(a.kind(), a.target())))
                .cloned()
            else {
                return;
            };
            let cause = t.cause;
            let pods = t.pods.clone();
            match self.gate(&action, &pods, now) {
                Gate::Pass => {
                    let decision = if self.cfg.mode == Mode::Enforce {
                        Decision::Execute
                    } else {
                        Decision::Plan {
                            allowed: self.cfg.allow.contains(&action.kind()),
                        }
                    };
                    self.taken.push_back(now);
                    self.cooldown.insert(action.target(), now);
                    let t = self.tracks.get_mut(id).expect("looked up above");
                    t.taken_rungs.push((action.kind(), action.target()));
                    t.last_step = Some(now);
                    t.prev_acted = t.acted.take();
                    t.acted = Some((action.clone(), decision == Decision::Execute));
                    // (A re-check refusal is remembered until one passes.)
                    if !t
                        .waiting
                        .as_deref()
                        .is_some_and(|w| w.starts_with("recheck "))
                    {
                        t.waiting = None;
                    }
                    steps.push(self.step(now, id, cause, action, decision));
                    return;
                }
                Gate::Refuse(reason) => {
                    let t = self.tracks.get_mut(id).expect("looked up above");
                    t.taken_rungs.push((action.kind(), action.target()));
                    t.waiting = None;
                    steps.push(self.step(now, id, cause, action, Decision::Skip(reason)));
                }
                Gate::Wait { key, reason } => {
                    let t = self.tracks.get_mut(id).expect("looked up above");
                    if t.waiting.as_deref() != Some(key.as_str()) {
                        t.waiting = Some(key);
                        steps.push(self.step(now, id, cause, action, Decision::Skip(reason)));
                    }
                    return;
                }
            }
        }
    }

    /// An executed action failed: the next rung comes after the step
    /// timeout, as when it did not help.
    pub fn failed(&mut self, id: &FindingId) {
        if let Some(t) = self.tracks.get_mut(id) {
            t.acted = None;
        }
    }

    /// The executor's re-check passed: a later refusal is new again.
    pub fn recheck_passed(&mut self, id: &FindingId) {
        if let Some(t) = self.tracks.get_mut(id) {
            t.waiting = None;
        }
    }

    /// The executor's re-check refused the rung just taken (the target is
    /// not, at this instant, what the finding said: a fork bomb's cgroup
    /// briefly below its limit): nothing ran, so nothing is charged and the
    /// same rung is tried again at the next tick. True when this refusal
    /// is new (to be recorded), false when the last one said the same
    /// (`kind`: what kind of refusal, without its changing numbers).
    pub fn recheck_failed(
        &mut self,
        id: &FindingId,
        action: &RemedyAction,
        at: Time,
        kind: &str,
    ) -> bool {
        if let Some(i) = self.taken.iter().rposition(|t| *t == at) {
            self.taken.remove(i);
        }
        self.cooldown.remove(&action.target());
        let Some(t) = self.tracks.get_mut(id) else {
            return false;
        };
        let rung = (action.kind(), action.target());
        t.taken_rungs.retain(|r| *r != rung);
        t.last_step = None;
        t.acted = t.prev_acted.take();
        let key = format!("recheck {} {kind}", action.target());
        let new = t.waiting.as_deref() != Some(key.as_str());
        t.waiting = Some(key);
        new
    }

    fn gate(&self, action: &RemedyAction, pods: &[PodId], now: Time) -> Gate {
        let kind = action.kind();
        if let Some(why) = kind.unavailable() {
            return Gate::Refuse(why.into());
        }
        if kind.cluster_visible() && !self.cfg.cluster {
            return Gate::Refuse(format!(
                "{} acts through the apiserver, and this session has no cluster (`watchdog run` in a cluster)",
                kind.name()
            ));
        }
        if !self.cfg.exclude_node_labels.is_empty() {
            match &self.cfg.node_labels {
                None => {
                    return Gate::Refuse(
                        "node labels unknown (no apiserver answered at start): the node-label exclusions cannot be checked".into(),
                    );
                }
                Some(labels) => {
                    if let Some(sel) = self
                        .cfg
                        .exclude_node_labels
                        .iter()
                        .find(|sel| label_matches(labels, sel))
                    {
                        return Gate::Refuse(format!("node excluded: it carries the label {sel}"));
                    }
                }
            }
        }
        if let RemedyAction::KillContainer { cgroup } = action
            && !self.cfg.any_cgroup
            && !is_pod_cgroup(cgroup)
        {
            return Gate::Refuse(format!(
                "out of scope: {cgroup} is not a pod's cgroup (kill_container acts on pods only unless the scope is `any`)"
            ));
        }
        if let (RemedyAction::KillContainer { cgroup }, Some(prefix)) =
            (action, &self.cfg.cgroup_prefix)
            && !under(cgroup, prefix)
        {
            return Gate::Refuse(format!(
                "out of scope: {cgroup} is not below the cgroup prefix {prefix}"
            ));
        }
        if touches_pods(kind) && !self.cfg.exclude_namespaces.is_empty() {
            if let Some(p) = pods.iter().find(|p| {
                p.namespace
                    .as_ref()
                    .is_some_and(|ns| self.cfg.exclude_namespaces.contains(ns))
            }) {
                return Gate::Refuse(format!(
                    "excluded namespace: pod {} is in {}",
                    p.uid,
                    p.namespace.as_deref().unwrap_or_default()
                ));
            }
            if let Some(PodId { uid, .. }) = pods.iter().find(|p| p.namespace.is_none()) {
                return Gate::Wait {
                    key: format!("namespace {uid}"),
                    reason: format!(
                        "pod {uid}'s namespace is not known yet (the runtime has not named it): namespace exclusions are configured"
                    ),
                };
            }
        }
        if self.cfg.mode == Mode::Enforce && !self.cfg.allow.contains(&kind) {
            return Gate::Refuse(format!(
                "not allowed: enforce runs only the actions allowed explicitly (--allow-actions {})",
                kind.name()
            ));
        }
        if let Some(booted) = self.cfg.booted_at
            && now.millis_since(booted) < self.cfg.min_uptime_ms
        {
            return Gate::Wait {
                key: "uptime".into(),
                reason: format!(
                    "the node has been up {:.0} s, less than the minimum {:.0} s",
                    now.secs_since(booted),
                    self.cfg.min_uptime_ms as f64 / 1000.0
                ),
            };
        }
        if let Some(t) = self.cooldown.get(&action.target()) {
            let left = self.cfg.cooldown_ms.saturating_sub(now.millis_since(*t));
            return Gate::Wait {
                key: format!("cooldown {}", action.target()),
                reason: format!(
                    "cooling down: {} was acted on {:.0} s ago ({:.0} s left)",
                    action.target(),
                    now.secs_since(*t),
                    left as f64 / 1000.0
                ),
            };
        }
        if self.taken.len() >= self.cfg.max_per_hour as usize {
            return Gate::Wait {
                key: "budget".into(),
                reason: format!(
                    "node budget spent: {} actions in the last hour",
                    self.taken.len()
                ),
            };
        }
        Gate::Pass
    }

    pub fn budget_text(&self) -> String {
        format!(
            "{} of {} actions this hour",
            self.taken.len(),
            self.cfg.max_per_hour
        )
    }

    /// A step of finding `id`, with the budget as it stands now.
    fn step(
        &self,
        at: Time,
        id: &FindingId,
        cause: Cause,
        action: RemedyAction,
        decision: Decision,
    ) -> Step {
        let pod = self.tracks.get(id).and_then(|t| pod_of(&action, &t.pods));
        Step {
            at,
            finding: id.clone(),
            cause,
            pod,
            action,
            decision,
            budget: self.budget_text(),
        }
    }
}

enum Gate {
    Pass,
    /// Permanent for this rung: take the next one.
    Refuse(String),
    /// Temporary (cooldown, budget): stay on this rung. The key (without
    /// the changing numbers) decides whether it is said again.
    Wait {
        key: String,
        reason: String,
    },
}

/// A Kubernetes pod's cgroup (or one of its containers'): a `kubepods`
/// component, then within the next two (the QoS class may come between) a
/// `pod<uid>` one (cgroupfs `/kubepods/burstable/pod<uid>/<id>`, systemd
/// `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/...`).
pub fn is_pod_cgroup(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let Some(k) = parts.iter().position(|p| p.starts_with("kubepods")) else {
        return false;
    };
    parts[k + 1..].iter().take(2).any(|p| {
        let uid = p.strip_prefix("pod").or_else(|| {
            p.strip_prefix("kubepods-").and_then(|r| {
                r.split_once("-pod")
                    .map(|x| x.1)
                    .or_else(|| r.strip_prefix("pod"))
            })
        });
        uid.is_some_and(|u| {
            !u.is_empty() && u.chars().next().is_some_and(|c| c.is_ascii_hexdigit())
        })
    })
}

/// The rungs of a finding's ladder: its own actions, or the configured
/// ladder's kinds in order, each taking the finding's targets of that kind
/// (the node-wide kinds name the node).
fn rungs(ladder: Option<&Ladder>, actions: &[RemedyAction]) -> Vec<RemedyAction> {
    let Some(l) = ladder.filter(|l| !l.actions.is_empty()) else {
        return actions.to_vec();
    };
    l.actions
        .iter()
        .flat_map(|k| match k {
            ActionKind::Cordon => vec![RemedyAction::Cordon],
            ActionKind::Taint => vec![RemedyAction::Taint],
            ActionKind::Escalate => vec![RemedyAction::Escalate],
            k => actions.iter().filter(|a| a.kind() == *k).cloned().collect(),
        })
        .collect()
}

/// The one pod `action` acts on: the evicted one, or the finding's only pod
/// for a container kill.
fn pod_of(action: &RemedyAction, pods: &[PodId]) -> Option<PodId> {
    match action {
        RemedyAction::EvictPod {
            pod_uid,
            namespace,
            name,
        } => Some(PodId {
            uid: pod_uid.clone(),
            namespace: namespace.clone(),
            name: name.clone(),
        }),
        RemedyAction::KillContainer { .. } if pods.len() == 1 => pods.first().cloned(),
        _ => None,
    }
}

/// The actions that touch the finding's pods (their processes, or the
/// mount they use): namespace exclusions apply to them.
fn touches_pods(kind: ActionKind) -> bool {
    matches!(
        kind,
        ActionKind::KillContainer
            | ActionKind::EvictPod
            | ActionKind::AbortFuse
            | ActionKind::ForceUnmount
    )
}

/// A node label selector (`key` or `key=value`) matches `labels`.
pub fn label_matches(labels: &BTreeMap<String, String>, sel: &str) -> bool {
    match sel.split_once('=') {
        Some((k, v)) => labels.get(k.trim()).is_some_and(|x| x == v.trim()),
        None => labels.contains_key(sel.trim()),
    }
}

/// A node-label exclusion as the config may give it: `key` or `key=value`.
pub fn label_selector_ok(sel: &str) -> bool {
    let (k, v) = match sel.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (sel, None),
    };
    let key_ok = !k.is_empty()
        && k.split('/').count() <= 2
        && k.split('/').all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        });
    let value_ok = v.is_none_or(|v| {
        v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    });
    key_ok && value_ok
}

/// `path` is `prefix` or below it (whole components).
pub fn under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty()
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|r| r.starts_with('/'))
}

#[cfg(test)]
mod tests;
