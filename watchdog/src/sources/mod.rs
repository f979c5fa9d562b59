//! Sources outside the kernel: kubelet's view of PLEG and the agent's own
//! relist of the container runtime. Each runs as a task on the agent's
//! single-thread runtime under one supervision loop ([`supervise`]) and sends
//! [`Observation`]s through one bounded channel (`try_send`; a full channel
//! drops and counts: [`LossySender`]):
//!
//! - [`kubelet::metrics`]: scrape kubelet's `/metrics` (PLEG last seen,
//!   relist duration/interval, runtime operation latencies and errors);
//! - [`kubelet::log`]: follow kubelet's log file (PLEG line, runtime
//!   deadlines, KillContainerError, fork EAGAIN);
//! - [`kubelet::node`]: watch this node's Ready condition through the apiserver;
//! - [`runtime`]: the agent's own relist, over a [`runtime::RuntimeClient`]
//!   (Docker today).
//!
//! The loop retries with backoff, reports each source's health once per
//! change (a [`SourceStatus`]) and puts every call under a deadline: no source
//! is ever fatal, and a hung kubelet, apiserver or runtime never blocks the
//! agent.
pub mod kubelet;
pub mod runtime;

use std::{
    future::Future,
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

/// The sending end of a bounded channel that never waits: a full channel
/// drops the item and counts it.
pub struct LossySender<T> {
    tx: mpsc::Sender<T>,
    drops: Arc<AtomicU64>,
}

// Not derived: that would require `T: Clone`.
impl<T> Clone for LossySender<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            drops: self.drops.clone(),
        }
    }
}

impl<T> LossySender<T> {
    pub fn new(tx: mpsc::Sender<T>) -> Self {
        Self::with_drops(tx, Arc::default())
    }

    /// Counts its drops in `drops` (a counter the caller already exports).
    pub fn with_drops(tx: mpsc::Sender<T>, drops: Arc<AtomicU64>) -> Self {
        Self { tx, drops }
    }

    /// A channel of `capacity` items.
    pub fn bounded(capacity: usize) -> (Self, mpsc::Receiver<T>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Self::new(tx), rx)
    }

    /// Never waits: a full channel drops the item and counts it.
    /// Returns false when the receiver is gone.
    pub fn send(&self, item: T) -> bool {
        match self.tx.try_send(item) {
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
}

/// The sending end shared by the sources.
pub type ObsSender = LossySender<Observation>;

impl LossySender<Observation> {
    /// A channel of [`QUEUE`] observations.
    pub fn channel() -> (Self, mpsc::Receiver<Observation>) {
        Self::bounded(QUEUE)
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
        // The sinks report the change (one `source` line or record); the
        // log only repeats it for `--log debug`.
        tracing::debug!(
            "{} {:?} at {}: {message}",
            self.source.name(),
            state,
            self.target
        );
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

/// How the loop runs one source.
#[derive(Clone, Debug)]
pub struct Supervision {
    pub kind: SourceKind,
    /// Where it reads from (URL, path, socket, node name), in its statuses.
    pub target: String,
    /// Every start and call is cut after this long (reported unavailable and
    /// retried with the backoff). Sources that bound their own calls more
    /// precisely (with an error that says which request) get a deadline a
    /// little beyond theirs, so theirs speaks first. None only where a call
    /// may rightly wait without end and each read is bounded below it (a
    /// watch stream), or where the call is synchronous (cannot be cut).
    pub deadline: Option<Duration>,
    /// Pause after a call that answered; the first retry delay.
    pub interval: Duration,
    /// Longest retry delay (the delay doubles from `interval` up to this).
    pub max_backoff: Duration,
}

/// What one call of a source gave, in the order the loop sends it.
#[derive(Debug, Default)]
pub struct Step {
    /// The source's state, reported when it differs from the last one.
    pub state: Option<(SourceState, String)>,
    /// Sent after the state.
    pub observations: Vec<Observation>,
    /// Reported after the observations even when the state did not change
    /// (new information about the source).
    pub news: Option<(SourceState, String)>,
}

impl Step {
    pub fn available(message: impl Into<String>) -> Self {
        Self {
            state: Some((SourceState::Available, message.into())),
            ..Self::default()
        }
    }

    pub fn with(mut self, obs: Observation) -> Self {
        self.observations.push(obs);
        self
    }
}

/// How one call of a source ended.
#[derive(Debug)]
pub enum Call {
    /// It answered: report and send the step, wait `interval`.
    Answered(Step),
    /// It failed: report the source unavailable, retry after the backoff.
    Failed(String),
    /// The source has nothing more to give (its stream ended).
    Ended,
}

/// Why a source did not start.
#[derive(Debug)]
pub enum StartError {
    /// Report unavailable and retry after the backoff.
    Retry(String),
    /// Not configured or not possible here: report disabled and stop.
    Disabled(String),
}

/// A source the loop runs: one `start` (retried until it succeeds), then
/// calls until the receiver is gone or the source ends.
pub trait Source: Send {
    /// What `start` builds and every call uses (a client, a follower).
    type Client: Send;

    fn supervision(&self) -> Supervision;

    fn start(&mut self) -> impl Future<Output = Result<Self::Client, StartError>> + Send;

    fn call(&mut self, client: &mut Self::Client) -> impl Future<Output = Call> + Send;
}

/// `fut` cut after `deadline`, when there is one.
async fn within<T>(deadline: Option<Duration>, fut: impl Future<Output = T>) -> Option<T> {
    match deadline {
        Some(d) => tokio::time::timeout(d, fut).await.ok(),
        None => Some(fut.await),
    }
}

fn no_answer(deadline: Option<Duration>) -> String {
    format!("no answer within {:?}", deadline.unwrap_or_default())
}

/// Runs `source` until the receiver is gone (or the source ends): start it
/// (retried with backoff), then call it every `interval`, backing off after
/// failures, each start and call under the deadline; reports its state
/// whenever it changes.
pub async fn supervise<S: Source>(mut source: S, out: ObsSender) {
    let sup = source.supervision();
    let mut rep = Reporter::new(out, sup.kind, sup.target.clone());
    let mut backoff = Backoff::new(sup.interval, sup.max_backoff);
    let mut client = loop {
        match within(sup.deadline, source.start()).await {
            Some(Ok(c)) => break c,
            Some(Err(StartError::Disabled(e))) => {
                rep.status(SourceState::Disabled, e);
                return;
            }
            Some(Err(StartError::Retry(e))) => rep.status(SourceState::Unavailable, e),
            None => rep.status(SourceState::Unavailable, no_answer(sup.deadline)),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    };
    loop {
        let call = within(sup.deadline, source.call(&mut client))
            .await
            .unwrap_or_else(|| Call::Failed(no_answer(sup.deadline)));
        let delay = match call {
            Call::Answered(step) => {
                if let Some((state, message)) = step.state {
                    rep.status(state, message);
                }
                for obs in step.observations {
                    if !rep.send(obs) {
                        return;
                    }
                }
                if let Some((state, message)) = step.news {
                    rep.force_status(state, message);
                }
                backoff.reset();
                sup.interval
            }
            Call::Failed(e) => {
                rep.status(SourceState::Unavailable, e);
                backoff.next_delay()
            }
            Call::Ended => return,
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
}

/// Where kubelet's log lines come from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum LogTarget {
    /// Not read; the reason is reported as the source's status.
    #[default]
    Off,
    /// A file (kubelet's `--log-file`, or the syslog file), followed.
    File(PathBuf),
    /// The systemd journal in these directories.
    Journal(Vec<PathBuf>),
}

/// Which PLEG sources a session runs, and how.
#[derive(Clone, Debug, Default)]
pub struct PlegSources {
    /// kubelet's /metrics; None: not scraped.
    pub metrics: Option<kubelet::metrics::ScrapeConfig>,
    /// Where kubelet's log lines are read from.
    pub log: LogTarget,
    /// Watch this node's Ready condition (in-cluster config); None: no node name.
    pub node_name: Option<String>,
    pub node_watch: bool,
    /// The agent's own relist; None: off.
    pub relist: Option<runtime::RelistConfig>,
}

impl PlegSources {
    /// Nothing at all (sessions that only trace the kernel).
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether any source is configured (else PLEG is not followed).
    pub fn any(&self) -> bool {
        self.metrics.is_some()
            || self.node_watch
            || self.relist.is_some()
            || self.log != LogTarget::Off
    }

    /// Spawns one task per configured source on the current runtime.
    pub fn spawn(self, out: &ObsSender) {
        let any = self.any();
        if let Some(m) = self.metrics {
            tokio::spawn(supervise(
                kubelet::metrics::MetricsSource::new(m),
                out.clone(),
            ));
        }
        if any {
            match self.log {
                LogTarget::Journal(dirs) => {
                    tokio::spawn(supervise(
                        kubelet::journal::JournalSource::new(dirs),
                        out.clone(),
                    ));
                }
                LogTarget::File(path) => {
                    tokio::spawn(supervise(
                        kubelet::log::LogSource::new(Some(path)),
                        out.clone(),
                    ));
                }
                LogTarget::Off => {
                    tokio::spawn(supervise(kubelet::log::LogSource::new(None), out.clone()));
                }
            }
        }
        if self.node_watch {
            let client = kubelet::node::in_cluster_client();
            tokio::spawn(kubelet::node::run(client, self.node_name, out.clone()));
        }
        if let Some(r) = self.relist {
            tokio::spawn(runtime::run(r, out.clone()));
        }
    }
}

#[cfg(test)]
mod tests;
