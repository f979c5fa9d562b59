//! Node conditions, one per cause, in node-problem-detector's style. Pure:
//! findings and time in, the desired conditions out. A condition turns True
//! when a finding of its cause is active and False when the last one
//! resolves; `last_transition` changes only then, so it stays stable across
//! heartbeats, updates and apiserver outages.
use std::collections::BTreeMap;

use crate::model::Time;
use crate::model::finding::{Cause, Finding, FindingId, FindingStatus};

/// Kubernetes caps a condition message; stay well inside it.
const MAX_MESSAGE: usize = 1024;

/// A node condition, free of Kubernetes API types.
#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    pub type_: &'static str,
    pub status: bool,
    /// CamelCase, e.g. `PIDsCgroupLimitReached`.
    pub reason: String,
    pub message: String,
    pub last_transition: Time,
}

pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

pub struct ConditionManager {
    conditions: BTreeMap<Cause, Condition>,
    /// Active findings by id (cause, reason, summary, first seen).
    active: BTreeMap<FindingId, (Cause, &'static str, String, Time)>,
    /// The apiserver has not got the current state yet.
    dirty: bool,
    last_sync: Option<Time>,
    resync_ms: u64,
}

impl ConditionManager {
    /// All conditions start False ("no problem") as of `now`.
    pub fn new(now: Time, resync_ms: u64) -> Self {
        let conditions = Cause::ALL
            .into_iter()
            .map(|c| {
                (
                    c,
                    Condition {
                        type_: c.condition_type(),
                        status: false,
                        reason: c.healthy_reason().into(),
                        message: format!("watchdog finds no {}", c.name().replace('_', " ")),
                        last_transition: now,
                    },
                )
            })
            .collect();
        Self {
            conditions,
            active: BTreeMap::new(),
            dirty: true,
            last_sync: None,
            resync_ms,
        }
    }

    /// Take a finding report into account.
    pub fn finding(&mut self, f: &Finding) {
        let cause = f.cause;
        let at = match f.status {
            FindingStatus::Resolved => {
                self.active.remove(&f.id);
                f.resolved_at.unwrap_or(f.last_seen)
            }
            _ => {
                self.active.insert(
                    f.id.clone(),
                    (cause, f.problem_reason(), f.summary.clone(), f.first_seen),
                );
                f.first_seen
            }
        };
        let mut of_cause: Vec<&(Cause, &'static str, String, Time)> =
            self.active.values().filter(|(c, ..)| *c == cause).collect();
        of_cause.sort_by_key(|(.., first)| *first);
        let cond = self
            .conditions
            .get_mut(&cause)
            .expect("every cause has a condition");
        let before = cond.clone();
        match of_cause.first() {
            Some((_, reason, _, _)) => {
                if !cond.status {
                    cond.last_transition = at;
                }
                cond.status = true;
                cond.reason = (*reason).into();
                let msg = of_cause
                    .iter()
                    .map(|(.., summary, _)| summary.as_str())
                    .collect::<Vec<_>>()
                    .join("; ");
                cond.message = truncate(&msg, MAX_MESSAGE);
            }
            None => {
                if cond.status {
                    cond.last_transition = at;
                }
                cond.status = false;
                cond.reason = cause.healthy_reason().into();
                // The resolved report's summary says how it ended (over
                // after N s, replies flow again, explained by ...).
                cond.message = truncate(&format!("recovered: {}", f.summary), MAX_MESSAGE);
            }
        }
        if *cond != before {
            self.dirty = true;
        }
    }

    /// Whether the apiserver needs the conditions now: they changed since the
    /// last successful sync, or the heartbeat (resync) is due.
    pub fn due(&self, now: Time) -> bool {
        self.dirty
            || self
                .last_sync
                .is_none_or(|t| now.millis_since(t) >= self.resync_ms)
    }

    pub fn snapshot(&self) -> Vec<Condition> {
        self.conditions.values().cloned().collect()
    }

    /// The apiserver accepted `sent` at `now`. Changes made meanwhile stay dirty.
    pub fn synced(&mut self, sent: &[Condition], now: Time) {
        self.last_sync = Some(now);
        if sent == self.snapshot().as_slice() {
            self.dirty = false;
        }
    }
}
