//! PLEG health estimate: how long ago kubelet's PLEG last relisted, against
//! its threshold (3 min generic, 10 min evented), and how soon kubelet will
//! report the node unhealthy, from every source there is:
//!
//! - kubelet's `kubelet_pleg_last_seen_seconds` (scraped): the truth while the
//!   scrape is fresh;
//! - kubelet's log line `PLEG is not healthy: pleg was last seen active X ago`;
//! - the node's Ready condition message (same text);
//! - the agent's own relist: a listing that does not return keeps kubelet's
//!   relist time from advancing at all; an inspect that hangs holds kubelet's
//!   relist for one runtime request timeout (2 min) per hung container and
//!   relist, which exceeds the threshold from two hung containers on (or
//!   one that kubelet calls twice, kubernetes issue 94829).
//!
//! The largest fresh reading wins (the earliest warning). Pure: time comes
//! from the observations and `tick(now)`.
use std::collections::{BTreeMap, BTreeSet};

use crate::model::{
    finding::{
        FindingId,
        pleg::{PlegEstimate, PlegSource, PlegStatus, Reading, SLOW_OPERATION_S, Transition},
    },
    settings::PlegConfig,
};
use crate::{
    model::Time,
    model::kubelet::{
        HungCall, KubeletLog, KubeletLogEvent, KubeletMetrics, NodeReady, PlegMessage, Relist,
        SourceKind, SourceState, SourceStatus,
    },
};

const MAX_KUBELET_ERRORS: usize = 5;
const MAX_TRANSITIONS: usize = 10;

#[derive(Default)]
pub struct Pleg {
    cfg: PlegConfig,
    metrics: Option<KubeletMetrics>,
    metrics_baseline: Option<BTreeMap<String, f64>>,
    log_pleg: Option<(Time, PlegMessage)>,
    kubelet_errors: Vec<(Time, String)>,
    node: Option<NodeReady>,
    transitions: Vec<Transition>,
    relist: Option<Relist>,
    /// Start of the last relist whose listing answered.
    last_listed: Option<Time>,
    unavailable: BTreeSet<SourceKind>,
    last_emit: Option<(Time, String)>,
    /// `kubelet_pleg_relist_interval_seconds_count` and the first scrape
    /// that saw it at that value.
    relist_count: Option<(f64, Time)>,
    /// Relists kubelet counted between the last two scrapes (None: not known).
    relists_since_previous: Option<f64>,
    /// Mean relist duration and slow runtime operations between the last
    /// two scrapes.
    relist_duration_s: Option<f64>,
    slow_operations: BTreeMap<String, f64>,
    /// What the evented-PLEG metrics say (see [`evented_stream`]).
    evented_stream: Option<String>,
}

/// How far kubelet's clock may be ahead of the agent's before its gauge
/// reading is a source problem.
const CLOCK_SLACK_MS: u64 = 60_000;

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

impl Pleg {
    pub fn new(cfg: PlegConfig) -> Self {
        Self {
            cfg,
            ..Self::default()
        }
    }

    pub fn config(&self) -> &PlegConfig {
        &self.cfg
    }

    fn threshold_s(&self) -> f64 {
        secs(self.cfg.threshold_ms)
    }

    pub fn metrics(&mut self, m: &KubeletMetrics, related: &[FindingId]) -> Option<PlegEstimate> {
        if self.metrics_baseline.is_none() {
            self.metrics_baseline = Some(
                m.runtime_operations
                    .iter()
                    .map(|(k, v)| (k.clone(), v.errors))
                    .collect(),
            );
        }
        self.relists_since_previous = None;
        if let Some(h) = &m.relist_interval {
            match self.relist_count {
                Some((c, _)) if c == h.count => self.relists_since_previous = Some(0.0),
                Some((c, _)) => {
                    self.relists_since_previous = (h.count > c).then_some(h.count - c);
                    self.relist_count = Some((h.count, m.at));
                }
                None => self.relist_count = Some((h.count, m.at)),
            }
        }
        if let Some(prev) = &self.metrics {
            let mean = |now: (f64, f64), before: (f64, f64)| {
                let n = now.0 - before.0;
                (n >= 1.0).then(|| ((now.1 - before.1) / n).max(0.0))
            };
            self.relist_duration_s = match (&m.relist_duration, &prev.relist_duration) {
                (Some(a), Some(b)) => mean((a.count, a.sum_s), (b.count, b.sum_s)),
                _ => None,
            };
            self.slow_operations = m
                .runtime_operations
                .iter()
                .filter_map(|(op, v)| {
                    let b = prev.runtime_operations.get(op)?;
                    let s = mean((v.count, v.sum_s), (b.count, b.sum_s))?;
                    (s >= SLOW_OPERATION_S).then(|| (op.clone(), (s * 1000.0).round() / 1000.0))
                })
                .collect();
        }
        self.evented_stream = evented_stream(
            self.cfg.evented,
            m,
            self.metrics
                .as_ref()
                .and_then(|p| p.evented_connection_errors),
        );
        self.metrics = Some(m.clone());
        self.evaluate(m.at, related)
    }

    pub fn log(&mut self, l: &KubeletLog, related: &[FindingId]) -> Option<PlegEstimate> {
        let what = match &l.event {
            KubeletLogEvent::PlegUnhealthy {
                last_seen_s,
                threshold_s,
            } => {
                self.log_pleg = Some((
                    l.at,
                    PlegMessage {
                        last_seen_s: *last_seen_s,
                        threshold_s: *threshold_s,
                    },
                ));
                None
            }
            KubeletLogEvent::RuntimeDeadline {
                operation,
                container_id,
                pod,
            } => Some(format!(
                "{operation} deadline exceeded{}{}",
                container_id
                    .as_ref()
                    .map(|c| format!(" for container {}", &c[..c.len().min(12)]))
                    .unwrap_or_default(),
                pod.as_ref()
                    .map(|p| format!(" of pod {}", p.name))
                    .unwrap_or_default()
            )),
            KubeletLogEvent::KillContainerError {
                pod,
                container,
                error,
            } => Some(format!(
                "KillContainer {container}{} failed: {error}",
                pod.as_ref()
                    .map(|p| format!(" of pod {}", p.name))
                    .unwrap_or_default()
            )),
            KubeletLogEvent::ForkEagain { binary } => Some(format!(
                "{} could not fork{}: resource temporarily unavailable",
                l.program.as_deref().unwrap_or("a process"),
                binary.as_ref().map(|b| format!(" {b}")).unwrap_or_default()
            )),
            KubeletLogEvent::RuntimeUnreachable { endpoint } => {
                Some(format!("cannot connect to the runtime at {endpoint}"))
            }
        };
        if let Some(w) = what {
            self.kubelet_errors.retain(|(_, s)| *s != w);
            self.kubelet_errors.push((l.at, w));
            if self.kubelet_errors.len() > MAX_KUBELET_ERRORS {
                self.kubelet_errors.remove(0);
            }
        }
        self.evaluate(l.at, related)
    }

    pub fn node_ready(&mut self, n: &NodeReady, related: &[FindingId]) -> Option<PlegEstimate> {
        if self.node.as_ref().map(|o| &o.status) != Some(&n.status) {
            self.transitions.push(Transition {
                at: n.last_transition.unwrap_or(n.at),
                status: n.status.clone(),
                reason: n.reason.clone(),
            });
            if self.transitions.len() > MAX_TRANSITIONS {
                self.transitions.remove(0);
            }
        }
        self.node = Some(n.clone());
        self.evaluate(n.at, related)
    }

    pub fn relist(&mut self, r: &Relist, related: &[FindingId]) -> Option<PlegEstimate> {
        if r.listed {
            self.last_listed = Some(r.at);
        }
        self.relist = Some(r.clone());
        // Judged when the relist ended (its hung calls' ages are as of then).
        self.evaluate(r.at.plus_millis(r.duration_ms), related)
    }

    pub fn source(&mut self, s: &SourceStatus, related: &[FindingId]) -> Option<PlegEstimate> {
        if s.state == SourceState::Available {
            self.unavailable.remove(&s.source);
        } else {
            self.unavailable.insert(s.source);
        }
        self.evaluate(s.at, related)
    }

    /// Periodic re-evaluation (readings age, predictions count down).
    pub fn tick(&mut self, now: Time, related: &[FindingId]) -> Option<PlegEstimate> {
        self.evaluate(now, related)
    }

    fn fresh(&self, at: Time, now: Time) -> bool {
        now.millis_since(at) <= self.cfg.max_reading_age_ms
    }

    /// Why kubelet's `kubelet_pleg_last_seen_seconds` cannot be true, if it
    /// cannot.
    fn gauge_problem(&self, m: &KubeletMetrics, seen: Time) -> Option<String> {
        if seen.0 > m.at.0 + CLOCK_SLACK_MS {
            return Some(format!(
                "kubelet_pleg_last_seen_seconds is {:.0} s ahead of this node's clock at the scrape: kubelet's clock is skewed or the page is not live",
                secs(seen.0 - m.at.0)
            ));
        }
        if let Some(start) = m.process_start
            && seen.0 + CLOCK_SLACK_MS < start.0
        {
            return Some(format!(
                "kubelet_pleg_last_seen_seconds is {:.0} s older than kubelet's own start (process_start_time_seconds): a stale page or a skewed clock",
                secs(start.0 - seen.0)
            ));
        }
        let stale_ms = m.at.millis_since(seen);
        if let Some(n) = self.relists_since_previous
            && n >= 1.0
            && stale_ms > self.cfg.stalled_after_ms
        {
            return Some(format!(
                "kubelet counted {n:.0} relists since the previous scrape (kubelet_pleg_relist_interval_seconds_count) while kubelet_pleg_last_seen_seconds says {:.0} s ago: a stale gauge or a skewed clock",
                secs(stale_ms)
            ));
        }
        None
    }

    fn readings(&self, now: Time, problems: &mut Vec<String>) -> Vec<Reading> {
        let mut v = Vec::new();
        if let Some(m) = &self.metrics
            && self.fresh(m.at, now)
            && !self.unavailable.contains(&SourceKind::KubeletMetrics)
        {
            if let Some(seen) = m.pleg_last_seen {
                match self.gauge_problem(m, seen) {
                    Some(p) => problems.push(p),
                    None => v.push(Reading {
                        source: PlegSource::KubeletMetrics,
                        seconds_since_relist: now.secs_since(seen),
                        unbounded: true,
                    }),
                }
            }
            // The relist count, stuck since a scrape before the last one:
            // the last relist was before that scrape.
            if let Some((_, since)) = self.relist_count
                && self.relists_since_previous == Some(0.0)
            {
                v.push(Reading {
                    source: PlegSource::KubeletRelistCount,
                    seconds_since_relist: now.secs_since(since),
                    unbounded: true,
                });
            }
        }
        if let Some((at, p)) = &self.log_pleg
            && self.fresh(*at, now)
        {
            v.push(Reading {
                source: PlegSource::KubeletLog,
                seconds_since_relist: now.secs_since(*at) + p.last_seen_s,
                unbounded: true,
            });
        }
        if let Some(n) = &self.node
            && n.status.as_deref() != Some("True")
            && let Some(p) = &n.pleg
        {
            v.push(Reading {
                source: PlegSource::NodeCondition,
                seconds_since_relist: now.secs_since(n.at) + p.last_seen_s,
                unbounded: true,
            });
        }
        if let Some(r) = &self.relist
            && self.fresh(r.at, now)
        {
            let list_hung = r.hung.iter().any(|h| h.call == "list");
            let inspects: Vec<&HungCall> = r.hung.iter().filter(|h| h.call == "inspect").collect();
            if list_hung || !r.listed {
                // kubelet's relist time does not move until a listing answers.
                if let Some(since) = self.last_listed.or(r.hung.first().map(|h| h.since)) {
                    v.push(Reading {
                        source: PlegSource::AgentRelist,
                        seconds_since_relist: now.secs_since(since),
                        unbounded: true,
                    });
                }
            } else if let Some(oldest) = inspects.iter().map(|h| h.since).min() {
                let blocked = now.secs_since(oldest);
                let rt = self.cfg.runtime_request_timeout_ms;
                let per_relist = secs(rt) * inspects.len() as f64;
                let unbounded = rt == 0 || per_relist >= self.threshold_s();
                v.push(Reading {
                    source: PlegSource::AgentRelist,
                    seconds_since_relist: if unbounded {
                        blocked
                    } else {
                        blocked.min(per_relist)
                    },
                    unbounded,
                });
            } else if let Some(l) = self.last_listed {
                v.push(Reading {
                    source: PlegSource::AgentRelist,
                    seconds_since_relist: now.secs_since(l),
                    unbounded: false,
                });
            }
        }
        v
    }

    pub fn estimate(&self, now: Time, related: &[FindingId]) -> PlegEstimate {
        let mut source_problems = Vec::new();
        let readings = self.readings(now, &mut source_problems);
        let worst = readings
            .iter()
            .max_by(|a, b| a.seconds_since_relist.total_cmp(&b.seconds_since_relist));
        let threshold_s = self.threshold_s();
        let log_says = self
            .log_pleg
            .as_ref()
            .is_some_and(|(at, _)| self.fresh(*at, now));
        let node_says = self
            .node
            .as_ref()
            .is_some_and(|n| n.status.as_deref() != Some("True") && n.pleg.is_some());
        let kubelet_reports_unhealthy = log_says || node_says;
        let stale = worst.map(|w| w.seconds_since_relist);
        let hung = self
            .relist
            .as_ref()
            .filter(|r| self.fresh(r.at, now))
            .map(|r| r.hung.clone())
            .unwrap_or_default();
        let status = match stale {
            _ if kubelet_reports_unhealthy => PlegStatus::Unhealthy,
            Some(s) if s >= threshold_s => PlegStatus::Unhealthy,
            Some(s) if s * 1000.0 >= self.cfg.stalled_after_ms as f64 || !hung.is_empty() => {
                PlegStatus::Stalled
            }
            Some(_) => PlegStatus::Healthy,
            None => PlegStatus::Unknown,
        };
        let predicted_unhealthy_in_s = match (status, worst) {
            (PlegStatus::Unhealthy, _) => Some(0.0),
            (PlegStatus::Stalled, Some(w)) if w.unbounded => {
                Some(((threshold_s - w.seconds_since_relist) * 10.0).round() / 10.0)
            }
            _ => None,
        };
        let runtime_errors = match (&self.metrics, &self.metrics_baseline) {
            (Some(m), Some(base)) => m
                .runtime_operations
                .iter()
                // exec_sync errors are workloads' failing exec probes, not
                // the runtime's health.
                .filter(|(op, _)| op.as_str() != "exec_sync")
                .filter_map(|(op, v)| {
                    let d = v.errors - base.get(op).copied().unwrap_or(0.0);
                    (d > 0.0).then(|| (op.clone(), d))
                })
                .collect(),
            _ => BTreeMap::new(),
        };
        let relist = self.relist.as_ref().filter(|r| self.fresh(r.at, now));
        let mut e = PlegEstimate {
            at: now,
            status,
            seconds_since_relist: stale.map(|s| (s * 10.0).round() / 10.0),
            source: worst.map(|w| w.source),
            threshold_s,
            evented: self.cfg.evented,
            predicted_unhealthy_in_s,
            kubelet_reports_unhealthy,
            node_ready: self.node.as_ref().and_then(|n| n.status.clone()),
            runtime: self.relist.as_ref().map(|r| r.runtime.clone()),
            runtime_endpoint: self
                .relist
                .as_ref()
                .map(|r| r.endpoint.clone())
                .filter(|e| !e.is_empty()),
            slowest_container: relist.and_then(|r| r.slowest.clone()),
            hung,
            agent_relist_ms: relist.map(|r| r.duration_ms),
            runtime_errors,
            relist_duration_s: self
                .relist_duration_s
                .map(|s| (s * 1000.0).round() / 1000.0),
            slow_operations: self.slow_operations.clone(),
            evented_stream: self.evented_stream.clone(),
            kubelet_errors: self.kubelet_errors.iter().map(|(_, s)| s.clone()).collect(),
            node_transitions: self.transitions.clone(),
            related_findings: related.to_vec(),
            readings,
            source_problems,
            message: String::new(),
        };
        e.message = message(&e);
        e
    }

    /// The estimate when it changed meaningfully or `report_every_ms` passed.
    fn evaluate(&mut self, now: Time, related: &[FindingId]) -> Option<PlegEstimate> {
        let e = self.estimate(now, related);
        if e.status == PlegStatus::Unknown
            && self.last_emit.is_none()
            && e.source_problems.is_empty()
        {
            return None;
        }
        let key = format!(
            "{:?}|{:?}|{}|{}|{:?}|{:?}|{:?}",
            e.status,
            e.source,
            e.kubelet_reports_unhealthy,
            e.hung
                .iter()
                .map(|h| format!("{}:{}", h.call, h.container_id.as_deref().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(","),
            e.node_ready,
            e.related_findings,
            e.kubelet_errors.len(),
        ) + &e.source_problems.len().to_string()
            + &format!("{:?}", e.slow_operations.keys().collect::<Vec<_>>())
            // The kind of evented-stream note (not its counts).
            + &e.evented_stream
                .as_deref()
                .map(|n| n.split(' ').take(5).collect::<Vec<_>>().join(" "))
                .unwrap_or_default();
        let due = match &self.last_emit {
            None => true,
            Some((t, k)) => *k != key || now.millis_since(*t) >= self.cfg.report_every_ms,
        };
        if !due {
            return None;
        }
        self.last_emit = Some((now, key));
        Some(e)
    }
}

fn message(e: &PlegEstimate) -> String {
    let mut s = match (e.status, e.seconds_since_relist, e.source) {
        (PlegStatus::Unknown, _, _) => "PLEG state unknown: no source has a fresh reading".into(),
        (st, Some(since), Some(src)) => format!(
            "PLEG {}: last relist {since:.0} s ago (threshold {:.0} s, from {})",
            match st {
                PlegStatus::Healthy => "healthy",
                PlegStatus::Stalled => "stalled",
                _ => "UNHEALTHY",
            },
            e.threshold_s,
            src.name()
        ),
        (_, _, _) => "PLEG unhealthy (kubelet reports it)".into(),
    };
    if let Some(p) = e.predicted_unhealthy_in_s
        && e.status == PlegStatus::Stalled
    {
        s.push_str(&format!(
            "; kubelet reports the node unhealthy in ~{p:.0} s"
        ));
    }
    if e.kubelet_reports_unhealthy {
        s.push_str("; kubelet reports PLEG is not healthy");
    }
    if let Some(h) = e.hung.first() {
        s.push_str(&format!(
            "; {} hung for {:.0} s",
            h.describe(),
            secs(h.elapsed_ms)
        ));
        if e.hung.len() > 1 {
            s.push_str(&format!(" (+{} more)", e.hung.len() - 1));
        }
    }
    if !e.related_findings.is_empty() {
        s.push_str(&format!(
            "; related: {}",
            e.related_findings
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let Some(d) = e.relist_duration_s
        && d >= SLOW_OPERATION_S
    {
        s.push_str(&format!("; kubelet's relists take {d:.1} s on average"));
    }
    if !e.slow_operations.is_empty() {
        s.push_str(&format!(
            "; slow runtime calls (kubelet's mean): {}",
            e.slow_operations
                .iter()
                .map(|(op, v)| format!("{op} {v:.1} s"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let Some(note) = &e.evented_stream {
        s.push_str(&format!("; {note}"));
    }
    for p in &e.source_problems {
        s.push_str(&format!("; reading left out: {p}"));
    }
    s
}

/// kubelet's CRI event stream (evented PLEG), from its connection counters:
/// failing to connect since the previous scrape (kubelet falls back to the
/// relist after 5 failures), never connected while evented PLEG is
/// configured here, or connected while this agent assumes the generic
/// relist (whose threshold is 3 min, not 10). None: nothing to say.
fn evented_stream(
    configured: bool,
    m: &KubeletMetrics,
    prev_errors: Option<f64>,
) -> Option<String> {
    let ok = m.evented_connections;
    let err = m.evented_connection_errors;
    if let (Some(e), Some(p)) = (err, prev_errors)
        && e > p
    {
        return Some(format!(
            "kubelet's CRI event stream (evented PLEG) failed to connect {:.0} times since the previous scrape ({e:.0} in all): after 5 failures kubelet falls back to relisting",
            e - p
        ));
    }
    match ok {
        Some(n) if n == 0.0 && configured => Some(format!(
            "evented PLEG is configured but kubelet's CRI event stream never connected (kubelet_evented_pleg_connection_success_count 0{}): kubelet relists instead",
            err.map(|e| format!(", {e:.0} errors")).unwrap_or_default()
        )),
        Some(n) if n > 0.0 && !configured => Some(format!(
            "kubelet's CRI event stream connected {n:.0} times (evented PLEG is on): its PLEG threshold is 10 min, not the 3 min assumed here (set pleg.evented = true)"
        )),
        _ => None,
    }
}

#[cfg(test)]
#[path = "pleg_tests.rs"]
mod tests;
