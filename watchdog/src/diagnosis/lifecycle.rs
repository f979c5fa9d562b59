//! The lifecycle of every finding, written once: the first report (active),
//! updates (new evidence, at most every `update_every_ms` unless a detector
//! says it is urgent), the resolution (duration, closing evidence), and the
//! status transitions each report carries (its timeline).
//!
//! The engine owns one [`Book`] and lends it to the detectors, which supply
//! the evidence and the keys; the book is also what the engine asks for the
//! active findings (concurrency, PLEG links, what explains a stuck runtime).
use std::collections::BTreeMap;

use crate::model::{
    Time,
    finding::{Cause, Evidence, Finding, FindingId, FindingStatus, Transition},
};

/// Transitions kept per finding: the first report and the latest ones.
const MAX_TIMELINE: usize = 24;

/// Findings active at once at most: a node has a handful; a hostile or
/// broken recording could ask for millions. A new finding past this is
/// refused and counted ([`Book::refused`]).
pub const MAX_ACTIVE: usize = 4096;

/// When a changed finding is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Urgency {
    /// Now (e.g. more tasks blocked on the mount).
    Now,
    /// If the last report is `update_every_ms` old; else kept silently.
    WhenDue,
    /// Not reported (nothing worth a report changed); kept silently.
    Never,
}

struct Entry {
    finding: Finding,
    last_reported: Time,
    /// Changed since the last report (reported by [`Book::flush`] when due).
    pending: bool,
    timeline: Vec<Transition>,
}

pub struct Book {
    update_every_ms: u64,
    entries: BTreeMap<FindingId, Entry>,
    /// New findings refused because [`MAX_ACTIVE`] were active.
    pub refused: u64,
}

impl Book {
    pub fn new(update_every_ms: u64) -> Self {
        Self {
            update_every_ms,
            entries: BTreeMap::new(),
            refused: 0,
        }
    }

    pub fn contains(&self, id: &FindingId) -> bool {
        self.entries.contains_key(id)
    }

    pub fn get(&self, id: &FindingId) -> Option<&Finding> {
        self.entries.get(id).map(|e| &e.finding)
    }

    /// The finding's content, to change without reporting it now; a
    /// `significant` change is reported by the next [`Book::flush`] that
    /// finds an update due (the rest rides along with it).
    pub fn change(&mut self, id: &FindingId, significant: bool) -> Option<&mut Finding> {
        self.entries.get_mut(id).map(|e| {
            e.pending |= significant;
            &mut e.finding
        })
    }

    /// Reports a new finding (status active, first seen when it says, as
    /// of its last-seen time); None (counted) when [`MAX_ACTIVE`] are active.
    pub fn open(&mut self, mut f: Finding) -> Option<Finding> {
        if self.entries.len() >= MAX_ACTIVE {
            self.refused += 1;
            return None;
        }
        f.status = FindingStatus::Active;
        let mut e = Entry {
            last_reported: f.last_seen,
            finding: f,
            pending: false,
            timeline: Vec::new(),
        };
        let out = Self::report(&mut e);
        self.entries.insert(out.id.clone(), e);
        Some(out)
    }

    /// Reports `f` if it is new; otherwise replaces the content of the
    /// active finding (keeping its earliest first-seen time) and reports it
    /// as an update when `urgency` says so.
    pub fn upsert(&mut self, mut f: Finding, urgency: Urgency) -> Option<Finding> {
        let Some(e) = self.entries.get_mut(&f.id) else {
            return self.open(f);
        };
        f.first_seen = f.first_seen.min(e.finding.first_seen);
        f.status = FindingStatus::Update;
        let at = f.last_seen;
        e.finding = f;
        let due = match urgency {
            Urgency::Now => true,
            Urgency::WhenDue => at.millis_since(e.last_reported) >= self.update_every_ms,
            Urgency::Never => false,
        };
        due.then(|| {
            e.last_reported = at;
            Self::report(e)
        })
    }

    /// Reports the changes made through [`Book::change`] when the last
    /// report is old enough; `prepare` rebuilds derived fields first.
    pub fn flush(
        &mut self,
        id: &FindingId,
        now: Time,
        prepare: impl FnOnce(&mut Finding),
    ) -> Option<Finding> {
        let e = self.entries.get_mut(id)?;
        if !e.pending || now.millis_since(e.last_reported) < self.update_every_ms {
            return None;
        }
        prepare(&mut e.finding);
        e.finding.status = FindingStatus::Update;
        e.pending = false;
        e.last_reported = now;
        Some(Self::report(e))
    }

    /// Reports a finding's changed content now, whenever it was last
    /// reported (e.g. names that arrived for it).
    pub fn update_now(
        &mut self,
        id: &FindingId,
        now: Time,
        change: impl FnOnce(&mut Finding) -> bool,
    ) -> Option<Finding> {
        let e = self.entries.get_mut(id)?;
        if !change(&mut e.finding) {
            return None;
        }
        e.finding.status = FindingStatus::Update;
        e.finding.last_seen = e.finding.last_seen.max(now);
        e.pending = false;
        e.last_reported = now;
        Some(Self::report(e))
    }

    /// Resolves a finding: its duration, an optional closing piece of
    /// evidence, and the summary `summary(finding, duration_s)` gives.
    pub fn resolve(
        &mut self,
        id: &FindingId,
        at: Time,
        closing: Option<Evidence>,
        summary: impl FnOnce(&Finding, f64) -> String,
    ) -> Option<Finding> {
        let mut e = self.entries.remove(id)?;
        let duration = at.secs_since(e.finding.first_seen);
        let f = &mut e.finding;
        f.summary = summary(f, duration);
        f.status = FindingStatus::Resolved;
        f.resolved_at = Some(at);
        f.duration_s = Some(duration);
        f.evidence.extend(closing);
        Some(Self::report(&mut e))
    }

    /// Ids of the active findings of `cause`.
    pub fn ids(&self, cause: Cause) -> Vec<FindingId> {
        self.entries
            .keys()
            .filter(|id| id.cause == cause)
            .cloned()
            .collect()
    }

    /// Ids of every active finding, in order.
    pub fn all_ids(&self) -> impl Iterator<Item = &FindingId> {
        self.entries.keys()
    }

    /// Active findings as last changed, with their timelines.
    pub fn active(&self) -> impl Iterator<Item = Finding> + '_ {
        self.entries.values().map(|e| {
            let mut f = e.finding.clone();
            f.timeline = e.timeline.clone();
            f
        })
    }

    /// The report of the finding's current state; its transition joins the
    /// timeline.
    fn report(e: &mut Entry) -> Finding {
        let f = &e.finding;
        let when = match f.status {
            FindingStatus::Active => f.first_seen,
            FindingStatus::Update => f.last_seen,
            FindingStatus::Resolved => f.resolved_at.unwrap_or(f.last_seen),
        };
        e.timeline.push(Transition {
            at: when,
            status: f.status,
            summary: f.summary.clone(),
        });
        if e.timeline.len() > MAX_TIMELINE {
            e.timeline.remove(1);
        }
        let mut out = e.finding.clone();
        out.timeline = e.timeline.clone();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::finding::Confidence;

    fn finding(first: u64, last: u64, summary: &str) -> Finding {
        let mut f = Finding::for_tests(
            Cause::RuntimeUnresponsive,
            "runtime",
            FindingStatus::Active,
            first,
            last,
            Vec::new(),
        );
        f.summary = summary.into();
        f.confidence = Confidence::Likely;
        f
    }

    /// A recording that asks for more findings at once than a node has:
    /// the book stops at [`MAX_ACTIVE`] and counts the rest; an active one
    /// still updates.
    #[test]
    fn findings_past_the_cap_are_refused_and_counted() {
        let mut b = Book::new(5_000);
        for i in 0..MAX_ACTIVE + 10 {
            let mut f = finding(1_000, 1_000, "x");
            f.id = FindingId::new(Cause::RuntimeUnresponsive, format!("r{i}"));
            let opened = b.upsert(f, Urgency::Now);
            assert_eq!(opened.is_some(), i < MAX_ACTIVE, "finding {i}");
        }
        assert_eq!(b.refused, 10);
        let mut f = finding(1_000, 9_000, "y");
        f.id = FindingId::new(Cause::RuntimeUnresponsive, "r0");
        assert!(
            b.upsert(f, Urgency::Now).is_some(),
            "an active finding still updates"
        );
        assert_eq!(b.refused, 10);
    }

    #[test]
    fn open_update_when_due_or_urgent_then_resolve() {
        let mut b = Book::new(5_000);
        let f = b.open(finding(1_000, 2_000, "a")).unwrap();
        assert_eq!(f.status, FindingStatus::Active);
        assert_eq!(f.timeline.len(), 1);
        // Not due 3 s after the first report; kept silently.
        assert!(
            b.upsert(finding(1_500, 5_000, "b"), Urgency::WhenDue)
                .is_none()
        );
        assert_eq!(b.get(&f.id).unwrap().summary, "b");
        assert_eq!(b.get(&f.id).unwrap().first_seen, Time(1_000));
        // Urgent: at once.
        let u = b.upsert(finding(1_000, 5_500, "c"), Urgency::Now).unwrap();
        assert_eq!(u.status, FindingStatus::Update);
        assert!(
            b.upsert(finding(1_000, 20_000, "d"), Urgency::Never)
                .is_none()
        );
        let r = b
            .resolve(&f.id, Time(21_000), None, |f, d| {
                format!("{} over after {d}", f.summary)
            })
            .unwrap();
        assert_eq!(r.status, FindingStatus::Resolved);
        assert_eq!(r.duration_s, Some(20.0));
        assert_eq!(r.summary, "d over after 20");
        let states: Vec<FindingStatus> = r.timeline.iter().map(|t| t.status).collect();
        assert_eq!(
            states,
            [
                FindingStatus::Active,
                FindingStatus::Update,
                FindingStatus::Resolved
            ]
        );
        assert!(!b.contains(&f.id));
    }

    #[test]
    fn significant_changes_flush_when_due() {
        let mut b = Book::new(5_000);
        let id = b.open(finding(1_000, 1_000, "a")).unwrap().id;
        b.change(&id, false).unwrap().summary = "quiet".into();
        assert!(
            b.flush(&id, Time(10_000), |_| {}).is_none(),
            "nothing significant"
        );
        b.change(&id, true).unwrap().summary = "loud".into();
        assert!(b.flush(&id, Time(3_000), |_| {}).is_none(), "not due yet");
        let u = b.flush(&id, Time(6_000), |f| f.summary.push('!')).unwrap();
        assert_eq!(
            (u.status, u.summary.as_str()),
            (FindingStatus::Update, "loud!")
        );
        assert!(
            b.flush(&id, Time(20_000), |_| {}).is_none(),
            "reported already"
        );
    }
}
