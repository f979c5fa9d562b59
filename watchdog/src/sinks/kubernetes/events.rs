//! Kubernetes Events on the Node: a Warning when a finding becomes active or
//! a limit nears exhaustion, a Normal one when it resolves. Pure and rate
//! limited: a token bucket (`per_minute`, burst of the same size), and while
//! the apiserver is unreachable the pending events are coalesced by subject
//! (the latest per finding wins) and bounded, so a long outage ends with one
//! event per subject, not a storm.
use std::collections::VecDeque;

use super::conditions::truncate;
use crate::model::Time;
use crate::model::finding::{Finding, FindingStatus, Warning, WarningStatus};
use crate::remediation::{RemediationRecord, StepStatus};

/// `kill_container` -> `KillContainer`, `dry-run` -> `DryRun`.
pub(crate) fn pascal(s: &str) -> String {
    s.split(['_', '-'])
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// Events waiting to be sent; beyond this the oldest are dropped (counted).
const MAX_PENDING: usize = 64;
/// Kubernetes limits: reason and action 128 characters, note 1 kB.
const MAX_REASON: usize = 128;
const MAX_NOTE: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEvent {
    pub warning: bool,
    /// PascalCase, e.g. `PIDExhausted`, `PIDExhaustionResolved`.
    pub reason: String,
    pub action: String,
    pub note: String,
    /// What it is about (finding id); newer events replace pending older ones.
    pub subject: String,
    /// Also posted on this Pod (a remediation step that acts on one).
    pub pod: Option<PodObject>,
}

/// A Pod an Event is also posted on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodObject {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

pub struct EventQueue {
    pending: VecDeque<NodeEvent>,
    tokens: f64,
    per_minute: f64,
    last_refill: Option<Time>,
    pub dropped: u64,
}

impl EventQueue {
    pub fn new(per_minute: u32) -> Self {
        Self {
            pending: VecDeque::new(),
            tokens: f64::from(per_minute),
            per_minute: f64::from(per_minute.max(1)),
            last_refill: None,
            dropped: 0,
        }
    }

    fn push(&mut self, ev: NodeEvent) {
        self.pending.retain(|p| p.subject != ev.subject);
        self.pending.push_back(ev);
        while self.pending.len() > MAX_PENDING {
            self.pending.pop_front();
            self.dropped += 1;
        }
    }

    /// An event for a finding's first report and for its resolution;
    /// updates are not events (the condition message carries them). The
    /// finding's evidence bundle, when it has one, is named before the
    /// remedy (so that a long remedy cannot cut it off).
    pub fn finding(&mut self, f: &Finding, bundle: Option<&crate::bundle::auto::BundleRef>) {
        use crate::bundle::auto::BundleStatus;
        let (warning, reason, action) = match f.status {
            FindingStatus::Active => (true, f.problem_reason(), "Diagnosed"),
            FindingStatus::Resolved => (false, f.cause.resolved_reason(), "Recovered"),
            FindingStatus::Update => return,
        };
        let bundle = match bundle {
            Some(b) if matches!(b.status, BundleStatus::Pending | BundleStatus::Written) => {
                format!(" Evidence bundle: {}.", b.describe())
            }
            _ => String::new(),
        };
        let note = format!("{}{bundle} Remedy: {}", f.summary, f.remedy.text);
        self.push(NodeEvent {
            warning,
            reason: truncate(reason, MAX_REASON),
            action: action.into(),
            note: truncate(&note, MAX_NOTE),
            subject: f.id.to_string(),
            pod: None,
        });
    }

    /// A remediation step: planned (dry-run), skipped, succeeded, failed or
    /// verified (`started` is followed by its outcome: no event of its own).
    pub fn remediation(&mut self, r: &RemediationRecord) {
        let warning = match r.status {
            StepStatus::Started => return,
            StepStatus::Failed => true,
            StepStatus::Planned
            | StepStatus::Skipped
            | StepStatus::Succeeded
            | StepStatus::Verified
            | StepStatus::Undone => false,
        };
        let reason = format!("{}{}", pascal(r.action.name()), pascal(r.status.name()));
        let note = format!(
            "{} {} ({}, {}): {} [{}]",
            r.action.name(),
            r.target,
            r.finding,
            r.mode.name(),
            r.reason,
            r.budget
        );
        self.push(NodeEvent {
            warning,
            reason: truncate(&reason, MAX_REASON),
            action: "Remediate".into(),
            note: truncate(&note, MAX_NOTE),
            subject: format!(
                "remediation/{}/{}/{}",
                r.finding,
                r.action.name(),
                r.status.name()
            ),
            pod: r.pod.as_ref().and_then(|p| {
                Some(PodObject {
                    namespace: p.namespace.clone()?,
                    name: p.name.clone()?,
                    uid: p.uid.clone(),
                })
            }),
        });
    }

    /// A bundle written (or failed) for a finding: the Event names the
    /// file on the node.
    pub fn bundle(&mut self, b: &crate::bundle::auto::BundleRecord) {
        use crate::bundle::auto::BundleStatus;
        let (warning, reason, note) = match (b.status, &b.path) {
            (BundleStatus::Written, Some(path)) => (
                false,
                "BundleWritten",
                format!(
                    "evidence bundle {path} ({} bytes) for {}: {}{}",
                    b.size.unwrap_or(0),
                    b.finding,
                    b.reason,
                    b.fetch
                        .as_deref()
                        .map(|f| format!("; fetch: {f}"))
                        .unwrap_or_default()
                ),
            ),
            (BundleStatus::Failed, _) => (
                true,
                "BundleFailed",
                format!("no evidence bundle for {}: {}", b.finding, b.reason),
            ),
            // Rate limited: the records say so; no Event.
            _ => return,
        };
        self.push(NodeEvent {
            warning,
            reason: reason.into(),
            action: "Capture".into(),
            note: truncate(&note, MAX_NOTE),
            subject: format!("bundle/{}", b.finding),
            pod: None,
        });
    }

    pub fn warning(&mut self, w: &Warning) {
        if w.status != WarningStatus::Raised {
            return;
        }
        self.push(NodeEvent {
            warning: true,
            reason: "PIDLimitNearlyFull".into(),
            action: "Warned".into(),
            note: truncate(&w.message, MAX_NOTE),
            subject: format!("warning/{:?}/{:?}/{:?}", w.limit, w.cgroup, w.uid),
            pod: None,
        });
    }

    fn refill(&mut self, now: Time) {
        if let Some(last) = self.last_refill {
            let add = now.millis_since(last) as f64 * self.per_minute / 60_000.0;
            self.tokens = (self.tokens + add).min(self.per_minute);
        }
        self.last_refill = Some(now);
    }

    /// The events the rate limit lets out now (they leave the queue; put
    /// back with `retry` if sending fails).
    pub fn take(&mut self, now: Time) -> Vec<NodeEvent> {
        self.refill(now);
        let mut out = Vec::new();
        while self.tokens >= 1.0 {
            let Some(ev) = self.pending.pop_front() else {
                break;
            };
            self.tokens -= 1.0;
            out.push(ev);
        }
        out
    }

    /// Sending failed: keep the events (unless a newer one for the same
    /// subject arrived meanwhile) and give the tokens back.
    pub fn retry(&mut self, unsent: Vec<NodeEvent>) {
        for ev in unsent.into_iter().rev() {
            self.tokens = (self.tokens + 1.0).min(self.per_minute);
            if !self.pending.iter().any(|p| p.subject == ev.subject) {
                self.pending.push_front(ev);
            }
        }
        while self.pending.len() > MAX_PENDING {
            self.pending.pop_front();
            self.dropped += 1;
        }
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(subject: &str) -> NodeEvent {
        NodeEvent {
            warning: true,
            reason: "R".into(),
            action: "A".into(),
            note: "n".into(),
            subject: subject.into(),
            pod: None,
        }
    }

    /// The finding's Event names its bundle and how to fetch it, before
    /// the remedy: a remedy too long for the note cuts the remedy, never
    /// the bundle.
    #[test]
    fn a_finding_event_names_its_bundle_and_the_fetch_path() {
        use crate::bundle::auto::{BundleRef, BundleStatus, fetch_command};
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden/pid_exhaustion_cgroup.jsonl");
        let mut cap = crate::sinks::Capture::default();
        crate::replay::replay(&path, &mut cap).unwrap();
        let mut f = cap
            .0
            .into_iter()
            .find_map(|r| match r {
                crate::sinks::Record::Finding(f) => Some(f.finding),
                _ => None,
            })
            .unwrap();
        assert_eq!(f.status, FindingStatus::Active);
        f.remedy.text = "x".repeat(2000);
        let file = "watchdog-n1-pid_exhaustion-20261122T143458167Z-0a1b2c3d.tar.gz";
        let dir = std::path::Path::new("/var/log/watchdog");
        let b = BundleRef {
            status: BundleStatus::Pending,
            file: Some(file.into()),
            path: Some(dir.join(file).display().to_string()),
            fetch: fetch_command(dir, "n1", file),
            reason: None,
        };
        let mut q = EventQueue::new(10);
        q.finding(&f, Some(&b));
        let ev = q.take(Time(0)).pop().unwrap();
        let want = format!(
            " Evidence bundle: /var/log/watchdog/{file} (being written; fetch: kubectl get --raw /api/v1/nodes/n1/proxy/logs/watchdog/{file} > {file}). Remedy: xxx"
        );
        assert!(ev.note.contains(&want), "{}", ev.note);
        assert!(ev.note.starts_with(&f.summary), "{}", ev.note);
        assert!(ev.note.len() <= MAX_NOTE);
        // Skipped (rate limited): the Event does not name one.
        let skipped = BundleRef {
            status: BundleStatus::Skipped,
            file: None,
            path: None,
            fetch: None,
            reason: Some("rate limited".into()),
        };
        q.finding(&f, Some(&skipped));
        let ev = q.take(Time(60_000)).pop().unwrap();
        assert!(!ev.note.contains("bundle"), "{}", ev.note);
    }

    #[test]
    fn remediation_steps_are_events_but_started() {
        use crate::model::finding::{Cause, FindingId};
        use crate::remediation::{ActionKind, Mode};
        let rec = |status| RemediationRecord {
            at: Time(1000),
            finding: FindingId::new(Cause::PidExhaustion, "pids_cgroup/kubepods/pod1"),
            cause: Cause::PidExhaustion,
            action: ActionKind::KillContainer,
            target: "cgroup /kubepods/pod1".into(),
            mode: Mode::DryRun,
            status,
            reason: "dry-run: would kill every task of cgroup /kubepods/pod1".into(),
            budget: "1 of 3 actions this hour".into(),
            pod: None,
        };
        let mut q = EventQueue::new(10);
        q.remediation(&rec(StepStatus::Started));
        assert_eq!(q.pending(), 0);
        q.remediation(&rec(StepStatus::Planned));
        q.remediation(&rec(StepStatus::Failed));
        let evs = q.take(Time(2000));
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].reason, "KillContainerPlanned");
        assert!(!evs[0].warning);
        assert!(
            evs[0].note.contains("dry-run: would kill"),
            "{}",
            evs[0].note
        );
        assert_eq!(evs[1].reason, "KillContainerFailed");
        assert!(evs[1].warning);
    }

    #[test]
    fn rate_limited_with_refill() {
        let mut q = EventQueue::new(2);
        for i in 0..5 {
            q.push(ev(&format!("s{i}")));
        }
        assert_eq!(q.take(Time(0)).len(), 2);
        assert_eq!(q.take(Time(10_000)).len(), 0);
        assert_eq!(q.take(Time(30_000)).len(), 1);
        assert_eq!(q.pending(), 2);
    }

    #[test]
    fn outage_coalesces_by_subject() {
        let mut q = EventQueue::new(10);
        let sent = q.take(Time(0));
        assert!(sent.is_empty());
        q.push(ev("a"));
        let failed = q.take(Time(1000));
        q.retry(failed);
        for _ in 0..20 {
            q.push(ev("a"));
            q.push(ev("b"));
        }
        assert_eq!(q.pending(), 2);
        assert_eq!(q.take(Time(2000)).len(), 2);
    }

    #[test]
    fn resolved_reasons_are_pascal_case() {
        use crate::model::finding::Cause;
        assert_eq!(
            Cause::PidExhaustion.resolved_reason(),
            "PIDExhaustionResolved"
        );
        assert_eq!(Cause::StorageHang.resolved_reason(), "StorageHangResolved");
    }
}
