//! The pure diagnosis engine: observations in, reports (findings and
//! warnings) out. It reads no clock, file or socket: time comes from the
//! observations and from `tick(now)`, so recorded streams replay to the same
//! findings.
pub mod lifecycle;
pub mod names;
pub mod pid_exhaustion;
pub mod pleg;
pub mod runtime_unresponsive;
pub mod storage_hang;
pub mod systemd_hang;

pub use lifecycle::{Book, Urgency};

use crate::model::{
    Observation, Time,
    finding::{
        Cause, Finding, FindingId, FindingStatus, PlegLink, Report,
        pleg::{PlegEstimate, PlegStatus},
    },
    settings::EngineConfig,
};

/// One cause's detector. Pure like the engine: observations and time in,
/// evidence out. The lifecycle of its findings (active, update, resolved,
/// timeline) is the engine's [`Book`], lent to every call; the detector
/// supplies the keys and the evidence.
pub trait Detector {
    fn observe(&mut self, obs: &Observation, book: &mut Book) -> Vec<Report>;
    /// Advance time: periodic updates and resolutions.
    fn tick(&mut self, now: Time, book: &mut Book) -> Vec<Report>;
    /// A new PLEG estimate (`Some`, with the active kernel-level findings that
    /// explain it), or a tick without one (`None`): causes seen through PLEG
    /// rather than the kernel act on it. Called after every detector has seen
    /// the same observation or tick.
    fn pleg(
        &mut self,
        _estimate: Option<(&PlegEstimate, &[FindingId])>,
        _now: Time,
        _book: &mut Book,
    ) -> Vec<Report> {
        Vec::new()
    }
    /// Rebuild derived fields a detector keeps out of the hot path (called
    /// before a finding is shown as active).
    fn refresh(&self, _f: &mut Finding) {}
}

pub struct Engine {
    /// Kernel-level causes first, then the runtime fallback.
    detectors: Vec<Box<dyn Detector>>,
    /// Every active finding and its lifecycle.
    book: Book,
    /// kubelet's PLEG health, estimated from every PLEG signal.
    pleg: pleg::Pleg,
    /// kubelet's PLEG staleness while it is stalled or unhealthy.
    pleg_view: Option<PlegView>,
    /// Pods and containers by name, from the runtime relist.
    names: names::Names,
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
    /// New findings refused because too many were active at once.
    pub fn findings_refused(&self) -> u64 {
        self.book.refused
    }

    pub fn new(cfg: EngineConfig) -> Self {
        Self {
            pleg: pleg::Pleg::new(cfg.pleg.clone()),
            book: Book::new(cfg.update_every_ms),
            detectors: vec![
                Box::new(systemd_hang::SystemdHang::new(&cfg)),
                Box::new(storage_hang::StorageHang::new(&cfg)),
                Box::new(pid_exhaustion::PidExhaustion::new(cfg.clone())),
                Box::new(runtime_unresponsive::RuntimeUnresponsive::new(cfg)),
            ],
            pleg_view: None,
            names: names::Names::default(),
        }
    }

    pub fn observe(&mut self, obs: &Observation) -> Vec<Report> {
        if let Observation::RuntimeNames(n) = obs {
            return self.names(n);
        }
        let mut out = Vec::new();
        for d in &mut self.detectors {
            out.extend(d.observe(obs, &mut self.book));
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
            out.extend(d.tick(now, &mut self.book));
        }
        let mut out = self.annotate(out);
        let related = self.kernel_causes();
        match self.pleg.tick(now, &related) {
            Some(e) => out.extend(self.pleg_estimate(e)),
            None => {
                let mut r = Vec::new();
                for d in &mut self.detectors {
                    r.extend(d.pleg(None, now, &mut self.book));
                }
                out.extend(self.annotate(r));
            }
        }
        out
    }

    /// New names from the runtime: the active findings they name are
    /// reported again, now with names.
    fn names(&mut self, n: &crate::model::kubelet::RuntimeNames) -> Vec<Report> {
        self.names.update(n);
        let ids: Vec<FindingId> = self.book.all_ids().cloned().collect();
        let mut r = Vec::new();
        for id in ids {
            let names = &self.names;
            if let Some(f) = self.book.update_now(&id, n.at, |f| names.fill(f)) {
                r.push(Report::Finding(Box::new(f)));
            }
        }
        self.annotate(r)
    }

    /// Ids of active kernel-level findings: what explains a stuck runtime.
    fn kernel_causes(&self) -> Vec<FindingId> {
        self.book
            .all_ids()
            .filter(|id| id.cause.is_kernel())
            .cloned()
            .collect()
    }

    /// A new PLEG estimate: remember the staleness for the PLEG links, let
    /// the causes seen through PLEG decide, then report the estimate.
    fn pleg_estimate(&mut self, e: PlegEstimate) -> Vec<Report> {
        self.pleg_view = match (e.status, e.seconds_since_relist) {
            (PlegStatus::Stalled | PlegStatus::Unhealthy, Some(stale_s)) => Some(PlegView {
                at: e.at,
                stale_s,
                threshold_s: e.threshold_s,
                until_unhealthy_s: e.predicted_unhealthy_in_s,
            }),
            _ => None,
        };
        let related = self.kernel_causes();
        let mut r = Vec::new();
        for d in &mut self.detectors {
            r.extend(d.pleg(Some((&e, &related)), e.at, &mut self.book));
        }
        let mut out = self.annotate(r);
        out.push(Report::Pleg(Box::new(e)));
        out
    }

    /// kubelet's PLEG as estimated at `now` from the readings so far (the
    /// live status line; nothing is reported or remembered).
    pub fn pleg_now(&self, now: Time) -> PlegEstimate {
        self.pleg.estimate(now, &[])
    }

    /// Active findings of one cause.
    pub fn has_active_cause(&self, cause: Cause) -> bool {
        self.book.all_ids().any(|id| id.cause == cause)
    }

    /// Findings still active, as last changed.
    pub fn active(&self) -> Vec<Finding> {
        let mut v: Vec<Finding> = self.book.active().collect();
        for f in &mut v {
            for d in &self.detectors {
                d.refresh(f);
            }
            f.concurrent = self.concurrent_with(&f.id);
            f.pleg = self.pleg_link(f);
        }
        v.sort_by(|a, b| a.first_seen.cmp(&b.first_seen).then(a.id.cmp(&b.id)));
        v
    }

    fn concurrent_with(&self, id: &FindingId) -> Vec<FindingId> {
        self.book.all_ids().filter(|k| *k != id).cloned().collect()
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
        // Kernel-level causes explain it (a kernel finding names itself with
        // the others); the runtime fallback is the PLEG story itself, never
        // "explained by" itself.
        let causes = self.kernel_causes();
        let when = match p.until_unhealthy_s {
            Some(0.0) => format!("past kubelet's threshold of {:.0} s", p.threshold_s),
            Some(s) => format!("kubelet reports it in ~{s:.0} s"),
            None => format!("kubelet's threshold is {:.0} s", p.threshold_s),
        };
        let explained = if causes.is_empty() {
            String::new()
        } else {
            format!(
                "; explained by {}",
                causes
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" and ")
            )
        };
        Some(PlegLink {
            stale_s: p.stale_s,
            threshold_s: p.threshold_s,
            until_unhealthy_s: p.until_unhealthy_s,
            message: format!("PLEG stale for {:.0} s ({when}){explained}", p.stale_s),
        })
    }

    /// Add what spans causes to each finding report of a batch (the book
    /// already holds every change of the batch, so each report sees the
    /// others: two causes appearing together).
    fn annotate(&self, reports: Vec<Report>) -> Vec<Report> {
        reports
            .into_iter()
            .map(|r| match r {
                Report::Finding(mut f) => {
                    self.names.fill(&mut f);
                    f.concurrent = self.concurrent_with(&f.id);
                    f.pleg = self.pleg_link(&f);
                    Report::Finding(f)
                }
                other => other,
            })
            .collect()
    }
}

/// A detector with a book of its own, for its unit tests.
#[cfg(test)]
pub(crate) struct Harness<D> {
    pub d: D,
    pub book: Book,
}

#[cfg(test)]
impl<D: Detector> Harness<D> {
    pub fn new(d: D) -> Self {
        Self {
            d,
            book: Book::new(EngineConfig::default().update_every_ms),
        }
    }

    pub fn observe(&mut self, obs: &Observation) -> Vec<Report> {
        self.d.observe(obs, &mut self.book)
    }

    pub fn tick(&mut self, now: Time) -> Vec<Report> {
        self.d.tick(now, &mut self.book)
    }

    pub fn active(&self) -> Vec<Finding> {
        self.book.active().collect()
    }
}
