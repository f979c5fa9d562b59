//! `runtime_unresponsive`: the container runtime is stuck (PLEG's relist is
//! stalled or past kubelet's threshold, runtime calls hang) and no kernel
//! cause is proven. It is the engine's fallback: when a kernel-level finding
//! (PID exhaustion, storage hang, systemd hang) becomes active, this finding
//! resolves as "explained by" it, since that finding carries the PLEG link.

use crate::model::finding::pleg::{PlegEstimate, PlegSource, PlegStatus};
use crate::model::finding::runtime::RuntimeDetail;
use crate::model::finding::{Cause, Confidence, Detail, Evidence, Finding, FindingStatus, Report};
use crate::model::settings::EngineConfig;
use crate::model::time::Time;

const MAX_EVIDENCE: usize = 8;

pub struct RuntimeUnresponsive {
    cfg: EngineConfig,
    current: Option<Tracked>,
}

struct Tracked {
    finding: Finding,
    last_bad: Time,
    last_reported: Time,
    dirty: bool,
}

fn stuck(e: &PlegEstimate) -> bool {
    matches!(e.status, PlegStatus::Stalled | PlegStatus::Unhealthy) || !e.hung.is_empty()
}

fn summary(e: &PlegEstimate) -> String {
    let mut parts = Vec::new();
    if let Some(s) = e.seconds_since_relist {
        parts.push(format!(
            "PLEG relist stale for {s:.0} s{}",
            e.source
                .map(|src| format!(" ({})", src_name(src)))
                .unwrap_or_default()
        ));
    }
    if !e.hung.is_empty() {
        let calls: Vec<String> = e
            .hung
            .iter()
            .take(3)
            .map(|h| {
                format!(
                    "{} {} hung {:.0} s",
                    h.call,
                    h.container_name
                        .as_deref()
                        .or(h.container_id.as_deref())
                        .unwrap_or("(all containers)"),
                    h.elapsed_ms as f64 / 1000.0
                )
            })
            .collect();
        parts.push(format!("runtime calls not answering: {}", calls.join(", ")));
    }
    if e.kubelet_reports_unhealthy {
        parts.push("kubelet reports PLEG unhealthy".into());
    } else if let Some(p) = e.predicted_unhealthy_in_s {
        parts.push(format!("kubelet reports PLEG unhealthy in ~{p:.0} s"));
    }
    format!(
        "container runtime unresponsive: {}; no kernel cause found (no PID exhaustion, storage hang or systemd hang)",
        parts.join("; ")
    )
}

fn src_name(s: PlegSource) -> &'static str {
    match s {
        PlegSource::KubeletMetrics => "kubelet metrics",
        PlegSource::KubeletLog => "kubelet log",
        PlegSource::NodeCondition => "node condition",
        PlegSource::AgentRelist => "agent relist",
    }
}

const REMEDY: &str = "Find what the runtime waits on: dump its goroutines (SIGUSR1 to dockerd writes them to its log; containerd: `ctr pprof goroutines`), check the hung container's mounts and its shim; restart the runtime only as a last resort (running containers survive a dockerd restart only with live-restore).";

impl RuntimeUnresponsive {
    pub fn new(cfg: EngineConfig) -> Self {
        Self { cfg, current: None }
    }

    /// A new PLEG estimate; `kernel_causes` are the ids of active
    /// kernel-level findings.
    pub fn estimate(&mut self, e: &PlegEstimate, kernel_causes: &[String]) -> Vec<Report> {
        if !kernel_causes.is_empty() {
            return self.resolve(e.at, format!("explained by {}", kernel_causes.join(", ")));
        }
        if !stuck(e) {
            return self.resolve(e.at, "the runtime answers again".into());
        }
        let detail = RuntimeDetail {
            seconds_since_relist: e.seconds_since_relist,
            source: e.source,
            threshold_s: e.threshold_s,
            predicted_unhealthy_in_s: e.predicted_unhealthy_in_s,
            kubelet_reports_unhealthy: e.kubelet_reports_unhealthy,
            hung: e.hung.clone(),
            kubelet_errors: e.kubelet_errors.clone(),
        };
        let confidence = if e.kubelet_reports_unhealthy || !e.hung.is_empty() {
            Confidence::Likely
        } else {
            Confidence::Unknown
        };
        let text = summary(e);
        let evidence = Evidence {
            at: e.at,
            what: e.message.clone(),
        };
        match &mut self.current {
            None => {
                let f = Finding {
                    cause: Cause::RuntimeUnresponsive,
                    status: FindingStatus::Active,
                    id: "runtime_unresponsive/runtime".into(),
                    summary: text,
                    confidence,
                    first_seen: e.at,
                    last_seen: e.at,
                    resolved_at: None,
                    duration_s: None,
                    evidence: vec![evidence],
                    timeline: Vec::new(),
                    concurrent: Vec::new(),
                    pleg: None,
                    remedy: REMEDY.into(),
                    detail: Detail::Runtime(detail),
                };
                self.current = Some(Tracked {
                    finding: f.clone(),
                    last_bad: e.at,
                    last_reported: e.at,
                    dirty: false,
                });
                vec![Report::Finding(Box::new(f))]
            }
            Some(t) => {
                t.last_bad = e.at;
                t.finding.last_seen = e.at;
                if t.finding.summary != text {
                    t.dirty = true;
                    if t.finding.evidence.len() >= MAX_EVIDENCE {
                        t.finding.evidence.remove(1);
                    }
                    t.finding.evidence.push(evidence);
                }
                t.finding.summary = text;
                t.finding.confidence = confidence;
                t.finding.detail = Detail::Runtime(detail);
                self.maybe_update(e.at)
            }
        }
    }

    fn maybe_update(&mut self, now: Time) -> Vec<Report> {
        let Some(t) = &mut self.current else {
            return Vec::new();
        };
        if t.dirty && now.millis_since(t.last_reported) >= self.cfg.update_every_ms {
            t.dirty = false;
            t.last_reported = now;
            t.finding.status = FindingStatus::Update;
            return vec![Report::Finding(Box::new(t.finding.clone()))];
        }
        Vec::new()
    }

    fn resolve(&mut self, now: Time, why: String) -> Vec<Report> {
        let Some(t) = self.current.take() else {
            return Vec::new();
        };
        let mut f = t.finding;
        f.status = FindingStatus::Resolved;
        f.resolved_at = Some(now);
        f.duration_s = Some(now.secs_since(f.first_seen));
        f.summary = format!(
            "resolved after {:.0} s ({why}): {}",
            now.secs_since(f.first_seen),
            f.summary
        );
        vec![Report::Finding(Box::new(f))]
    }

    /// No stuck estimate for `resolve_after` (the sources went quiet).
    pub fn tick(&mut self, now: Time) -> Vec<Report> {
        match &self.current {
            Some(t) if now.millis_since(t.last_bad) >= self.cfg.resolve_after_ms => {
                self.resolve(now, "no sign of a stuck runtime since".into())
            }
            Some(_) => self.maybe_update(now),
            None => Vec::new(),
        }
    }

    pub fn active(&self) -> Vec<Finding> {
        self.current.iter().map(|t| t.finding.clone()).collect()
    }
}
