//! The pure diagnosis engine: observations in, reports (findings and
//! warnings) out. It reads no clock, file or socket: time comes from the
//! observations and from `tick(now)`, so recorded streams replay to the same
//! findings.
pub mod pid_exhaustion;
pub mod pleg;
pub mod runtime_unresponsive;
pub mod storage_hang;
pub mod systemd_hang;

use std::collections::{BTreeMap, HashMap};

use crate::model::{
    Observation, Time,
    finding::{Cause, Finding, FindingStatus, PlegLink, Report, Transition},
    settings::EngineConfig,
};

/// One cause's detector. Pure like the engine: observations and time in,
/// reports out. Each keeps its own findings' lifecycle (active, update,
/// resolved); the engine adds what spans causes (timeline, concurrency, PLEG).
pub trait Detector {
    fn observe(&mut self, obs: &Observation) -> Vec<Report>;
    /// Advance time: periodic updates and resolutions.
    fn tick(&mut self, now: Time) -> Vec<Report>;
    /// Findings still active, as last reported.
    fn active(&self) -> Vec<Finding>;
}

/// Transitions kept per finding: the first report and the latest ones.
const MAX_TIMELINE: usize = 24;

pub struct Engine {
    detectors: Vec<Box<dyn Detector>>,
    /// kubelet's PLEG health, estimated from every PLEG signal.
    pleg: pleg::Pleg,
    /// The fallback cause, fed by the PLEG estimates.
    runtime: runtime_unresponsive::RuntimeUnresponsive,
    /// Status transitions by finding id (dropped when a finding resolves).
    timelines: HashMap<String, Vec<Transition>>,
    /// Active findings by id, with their cause and summary.
    active: BTreeMap<String, (Cause, String)>,
    /// kubelet's PLEG staleness while it is stalled or unhealthy.
    pleg_view: Option<PlegView>,
}

/// What the engine knows of PLEG health right now.
#[derive(Clone, Debug, PartialEq)]
pub struct PlegView {
    pub at: Time,
    pub stale_s: f64,
    pub threshold_s: f64,
    pub until_unhealthy_s: Option<f64>,
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Self {
        Self {
            pleg: pleg::Pleg::new(cfg.pleg.clone()),
            runtime: runtime_unresponsive::RuntimeUnresponsive::new(cfg.clone()),
            detectors: vec![
                Box::new(systemd_hang::SystemdHang::new(&cfg)),
                Box::new(storage_hang::StorageHang::new(&cfg)),
                Box::new(pid_exhaustion::PidExhaustion::new(cfg)),
            ],
            timelines: HashMap::new(),
            active: BTreeMap::new(),
            pleg_view: None,
        }
    }

    pub fn observe(&mut self, obs: &Observation) -> Vec<Report> {
        let mut out = Vec::new();
        for d in &mut self.detectors {
            out.extend(d.observe(obs));
        }
        let mut out = self.annotate(out);
        // Kernel observations (fork-failure storms included) stop here.
        let estimate = match obs {
            Observation::KubeletMetrics(m) => self.pleg.metrics(m, &self.kernel_causes()),
            Observation::KubeletLog(l) => self.pleg.log(l, &self.kernel_causes()),
            Observation::NodeReady(n) => self.pleg.node_ready(n, &self.kernel_causes()),
            Observation::Relist(r) => self.pleg.relist(r, &self.kernel_causes()),
            Observation::Source(s) => self.pleg.source(s, &self.kernel_causes()),
            _ => None,
        };
        if let Some(e) = estimate {
            out.extend(self.pleg_estimate(e));
        }
        out
    }

    /// Advance time: periodic updates and resolutions.
    pub fn tick(&mut self, now: Time) -> Vec<Report> {
        let mut out = Vec::new();
        for d in &mut self.detectors {
            out.extend(d.tick(now));
        }
        let mut out = self.annotate(out);
        let related = self.kernel_causes();
        match self.pleg.tick(now, &related) {
            Some(e) => out.extend(self.pleg_estimate(e)),
            None => {
                let r = self.runtime.tick(now);
                out.extend(self.annotate(r));
            }
        }
        out
    }

    /// Ids of active kernel-level findings: what explains a stuck runtime.
    fn kernel_causes(&self) -> Vec<String> {
        self.active
            .iter()
            .filter(|(_, (c, _))| *c != Cause::RuntimeUnresponsive)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// A new PLEG estimate: remember the staleness for the PLEG links, let
    /// the runtime fallback decide, then report the estimate.
    fn pleg_estimate(&mut self, e: crate::model::finding::pleg::PlegEstimate) -> Vec<Report> {
        self.pleg_view = match (e.status, e.seconds_since_relist) {
            (
                crate::model::finding::pleg::PlegStatus::Stalled
                | crate::model::finding::pleg::PlegStatus::Unhealthy,
                Some(stale_s),
            ) => Some(PlegView {
                at: e.at,
                stale_s,
                threshold_s: e.threshold_s,
                until_unhealthy_s: e.predicted_unhealthy_in_s,
            }),
            _ => None,
        };
        let related = self.kernel_causes();
        let r = self.runtime.estimate(&e, &related);
        let mut out = self.annotate(r);
        out.push(Report::Pleg(Box::new(e)));
        out
    }

    /// A PID-exhaustion finding is active (arms the fork probe).
    /// Active findings of one cause.
    pub fn has_active_cause(&self, cause: Cause) -> bool {
        self.active.values().any(|(c, _)| *c == cause)
    }

    /// Findings still active, as last reported.
    pub fn active(&self) -> Vec<Finding> {
        let mut v: Vec<Finding> = self
            .detectors
            .iter()
            .flat_map(|d| d.active())
            .chain(self.runtime.active())
            .collect();
        for f in &mut v {
            f.timeline = self.timelines.get(&f.id).cloned().unwrap_or_default();
            f.concurrent = self.concurrent_with(&f.id);
            f.pleg = self.pleg_link(f);
        }
        v.sort_by(|a, b| a.first_seen.cmp(&b.first_seen).then(a.id.cmp(&b.id)));
        v
    }

    fn concurrent_with(&self, id: &str) -> Vec<String> {
        self.active.keys().filter(|k| *k != id).cloned().collect()
    }

    /// The PLEG link of a finding: how long relist has been stale and which
    /// active causes explain it.
    fn pleg_link(&self, f: &Finding) -> Option<PlegLink> {
        let p = self.pleg_view.as_ref()?;
        if f.status == FindingStatus::Resolved || p.stale_s <= 0.0 {
            return None;
        }
        // Kernel-level causes explain it; the runtime fallback only when
        // nothing else is active.
        let mut causes: Vec<&str> = self
            .active
            .iter()
            .filter(|(_, (c, _))| *c != Cause::RuntimeUnresponsive)
            .map(|(id, _)| id.as_str())
            .collect();
        if causes.is_empty() {
            causes.push(f.id.as_str());
        }
        let when = match p.until_unhealthy_s {
            Some(0.0) => "kubelet reports it now".to_owned(),
            Some(s) => format!("kubelet reports it in ~{s:.0} s"),
            None => format!("kubelet's threshold is {:.0} s", p.threshold_s),
        };
        Some(PlegLink {
            stale_s: p.stale_s,
            threshold_s: p.threshold_s,
            until_unhealthy_s: p.until_unhealthy_s,
            message: format!(
                "PLEG stale for {:.0} s ({when}); explained by {}",
                p.stale_s,
                causes.join(" and ")
            ),
        })
    }

    /// Record transitions and add what spans causes to each finding report.
    fn annotate(&mut self, reports: Vec<Report>) -> Vec<Report> {
        // First update the set of active findings so that every report of
        // this batch sees the others (two causes appearing together).
        for r in &reports {
            if let Report::Finding(f) = r {
                if f.status == FindingStatus::Resolved {
                    self.active.remove(&f.id);
                } else {
                    self.active
                        .insert(f.id.clone(), (f.cause, f.summary.clone()));
                }
            }
        }
        reports
            .into_iter()
            .map(|r| match r {
                Report::Finding(mut f) => {
                    let tl = self.timelines.entry(f.id.clone()).or_default();
                    tl.push(Transition {
                        at: match f.status {
                            FindingStatus::Active => f.first_seen,
                            FindingStatus::Update => f.last_seen,
                            FindingStatus::Resolved => f.resolved_at.unwrap_or(f.last_seen),
                        },
                        status: f.status,
                        summary: f.summary.clone(),
                    });
                    if tl.len() > MAX_TIMELINE {
                        tl.remove(1);
                    }
                    f.timeline = tl.clone();
                    if f.status == FindingStatus::Resolved {
                        self.timelines.remove(&f.id);
                    }
                    f.concurrent = self.concurrent_with(&f.id);
                    f.pleg = self.pleg_link(&f);
                    Report::Finding(f)
                }
                other => other,
            })
            .collect()
    }
}
