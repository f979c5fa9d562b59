//! kubelet's view of PLEG, from three sources that each run as a task on the
//! agent's single-thread runtime and send [`Observation`]s through one bounded
//! channel (`try_send`; a full channel drops and counts):
//!
//! - [`metrics`]: scrape kubelet's `/metrics` (PLEG last seen, relist
//!   duration/interval, runtime operation latencies and errors);
//! - [`log`]: follow kubelet's log file (PLEG line, runtime deadlines,
//!   KillContainerError, fork EAGAIN);
//! - [`node`]: watch this node's Ready condition through the apiserver.
//!
//! The agent's own relist is in [`crate::runtime`]. Each source reports its
//! health once per change (a [`SourceStatus`]) and retries with backoff; none
//! is ever fatal, and a hung kubelet, apiserver or runtime never blocks the
//! agent: every call has a timeout.
pub mod log;
pub mod metrics;
pub mod node;

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::mpsc;

use crate::model::{
    Observation,
    kubelet::{SourceKind, SourceState, SourceStatus},
    time::Time,
};

/// Observations waiting for the agent loop; beyond this they are dropped.
pub const QUEUE: usize = 1024;

/// The sending end shared by the sources, with the drop counter.
#[derive(Clone)]
pub struct ObsSender {
    tx: mpsc::Sender<Observation>,
    drops: Arc<AtomicU64>,
}

impl ObsSender {
    pub fn new(tx: mpsc::Sender<Observation>) -> Self {
        Self {
            tx,
            drops: Arc::default(),
        }
    }

    /// A channel of [`QUEUE`] observations.
    pub fn channel() -> (Self, mpsc::Receiver<Observation>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Self::new(tx), rx)
    }

    /// Never waits: a full queue drops the observation and counts it.
    /// Returns false when the receiver is gone.
    pub fn send(&self, obs: Observation) -> bool {
        match self.tx.try_send(obs) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.drops.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    pub fn drops(&self) -> u64 {
        self.drops.load(Ordering::Relaxed)
    }

    pub fn drop_counter(&self) -> Arc<AtomicU64> {
        self.drops.clone()
    }
}

/// One source's sender: reports its health when the state changes.
pub struct Reporter {
    pub out: ObsSender,
    pub source: SourceKind,
    pub target: String,
    last: Option<SourceState>,
}

impl Reporter {
    pub fn new(out: ObsSender, source: SourceKind, target: impl Into<String>) -> Self {
        Self {
            out,
            source,
            target: target.into(),
            last: None,
        }
    }

    /// Sends a status when `state` differs from the last one sent.
    pub fn status(&mut self, state: SourceState, message: impl Into<String>) {
        if self.last != Some(state) {
            self.force_status(state, message);
        }
    }

    /// Sends a status even if the state did not change (new information).
    pub fn force_status(&mut self, state: SourceState, message: impl Into<String>) {
        self.last = Some(state);
        let message = message.into();
        match state {
            SourceState::Available => {
                tracing::info!("{} {}: {message}", self.source.name(), self.target)
            }
            _ => tracing::warn!(
                "{} unavailable: {message} at {}",
                self.source.name(),
                self.target
            ),
        }
        self.out.send(Observation::Source(SourceStatus {
            at: Time::now(),
            source: self.source,
            state,
            target: self.target.clone(),
            message,
        }));
    }

    pub fn send(&self, obs: Observation) -> bool {
        self.out.send(obs)
    }
}

/// Exponential retry delay: `min` doubling up to `max`; reset on success.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Scrape kubelet's metrics every `cfg.interval` until the receiver is gone.
pub async fn run_metrics(cfg: metrics::ScrapeConfig, out: ObsSender) {
    let mut rep = Reporter::new(out, SourceKind::KubeletMetrics, cfg.url.clone());
    let mut backoff = Backoff::new(cfg.interval, Duration::from_secs(60));
    let scraper = loop {
        match metrics::Scraper::new(cfg.clone()) {
            Ok(s) => break s,
            Err(e) => {
                rep.status(SourceState::Unavailable, e.to_string());
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    };
    loop {
        let delay = match scraper.scrape().await {
            Ok(m) => {
                rep.status(
                    SourceState::Available,
                    format!("scraping every {:?}", cfg.interval),
                );
                if !rep.send(Observation::KubeletMetrics(Box::new(m))) {
                    return;
                }
                backoff.reset();
                cfg.interval
            }
            Err(e) => {
                rep.status(SourceState::Unavailable, e.to_string());
                backoff.next_delay()
            }
        };
        tokio::time::sleep(delay).await;
    }
}

/// How often a source re-reports new unparseable lines.
const UNPARSEABLE_REPORT_EVERY: Duration = Duration::from_secs(60);

/// Follow kubelet's log file (`None`: report the source as disabled).
pub async fn run_log(path: Option<PathBuf>, out: ObsSender) {
    let Some(path) = path else {
        let mut rep = Reporter::new(out, SourceKind::KubeletLog, "journal");
        rep.status(
            SourceState::Disabled,
            "no --kubelet-log file given; reading the systemd journal is not supported yet \
             (use kubelet's --log-file, or the syslog file journald forwards to)",
        );
        return;
    };
    let mut rep = Reporter::new(out, SourceKind::KubeletLog, path.display().to_string());
    let mut follower = log::Follower::new(&path);
    let mut backoff = Backoff::new(log::POLL, Duration::from_secs(30));
    let mut reported_unparseable = 0;
    let mut last_report = tokio::time::Instant::now() - UNPARSEABLE_REPORT_EVERY;
    loop {
        let delay = match follower.poll(Time::now()) {
            Ok(events) => {
                rep.status(SourceState::Available, "following");
                for e in events {
                    if !rep.send(Observation::KubeletLog(e)) {
                        return;
                    }
                }
                let c = &follower.counters;
                if c.unparseable > reported_unparseable
                    && last_report.elapsed() >= UNPARSEABLE_REPORT_EVERY
                {
                    reported_unparseable = c.unparseable;
                    last_report = tokio::time::Instant::now();
                    let (line, why) = follower.last_unparseable.clone().unwrap_or_default();
                    rep.force_status(
                        SourceState::Available,
                        format!(
                            "{} of {} lines unparseable (skipped); last: {why}: {line}",
                            c.unparseable, c.lines
                        ),
                    );
                }
                backoff.reset();
                log::POLL
            }
            Err(e) => {
                rep.status(SourceState::Unavailable, format!("cannot read: {e}"));
                backoff.next_delay()
            }
        };
        tokio::time::sleep(delay).await;
    }
}

/// Which PLEG sources a session runs, and how.
#[derive(Clone, Debug, Default)]
pub struct PlegSources {
    /// kubelet's /metrics; None: not scraped.
    pub metrics: Option<metrics::ScrapeConfig>,
    /// kubelet's log file; None: reported as disabled (journal not supported yet).
    pub log: Option<PathBuf>,
    /// Watch this node's Ready condition (in-cluster config); None: no node name.
    pub node_name: Option<String>,
    pub node_watch: bool,
    /// The agent's own relist; None: off.
    pub relist: Option<crate::runtime::RelistConfig>,
}

impl PlegSources {
    /// Nothing at all (sessions that only trace the kernel).
    pub fn none() -> Self {
        Self::default()
    }

    /// Spawns one task per configured source on the current runtime.
    pub fn spawn(self, out: &ObsSender) {
        let any = self.metrics.is_some()
            || self.node_watch
            || self.relist.is_some()
            || self.log.is_some();
        if let Some(m) = self.metrics {
            tokio::spawn(run_metrics(m, out.clone()));
        }
        if any {
            tokio::spawn(run_log(self.log, out.clone()));
        }
        if self.node_watch {
            let client = node::in_cluster_client();
            tokio::spawn(node::run(client, self.node_name, out.clone()));
        }
        if let Some(r) = self.relist {
            tokio::spawn(crate::runtime::docker::run(r, out.clone()));
        }
    }
}

/// This node's name: `$NODE_NAME` (downward API), else the hostname.
pub fn default_node_name() -> Option<String> {
    if let Some(n) = std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()) {
        return Some(n);
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}
