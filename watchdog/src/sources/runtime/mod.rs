//! The agent's own relist: what kubelet's generic PLEG does every second
//! (list all containers, inspect each), timed per call so that the agent sees
//! a hung runtime, and which container hangs it, before kubelet reports PLEG
//! unhealthy. The loop here is the same for every runtime; a runtime is a
//! [`RuntimeClient`]:
//!
//! - [`docker`]: Docker Engine API over its unix socket (bollard).
//! - next: the CRI (containerd, CRI-O) over its unix socket.
//!
//! Every call runs in its own task and is awaited with a timeout. A call that
//! times out is not cancelled: it stays outstanding (its task keeps waiting,
//! up to `abandon_after`) and is reported as hung with its elapsed time on
//! every relist; the container it concerns is not inspected again until the
//! call returns, so a hung runtime never accumulates more requests from us.
//! A hung listing likewise blocks new listings. Nothing here blocks the agent.
pub mod docker;

use std::{
    collections::HashMap,
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    sync::Semaphore,
    task::{JoinError, JoinHandle},
};

use super::{Call, ObsSender, Source, StartError, Step, Supervision, supervise};
use crate::model::{
    Observation,
    kubelet::{HungCall, Relist, SlowCall, SourceKind, SourceState},
    time::Time,
};

/// Which runtime the relist asks, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuntimeEndpoint {
    /// Docker Engine API at `unix:///var/run/docker.sock` (unix sockets only:
    /// no DNS lookups).
    Docker { host: String },
}

impl RuntimeEndpoint {
    /// The address as configured (the source's status target).
    pub fn address(&self) -> &str {
        match self {
            Self::Docker { host } => host,
        }
    }
}

#[derive(Clone, Debug)]
pub struct RelistConfig {
    pub endpoint: RuntimeEndpoint,
    /// Pause between the end of one relist and the start of the next.
    pub interval: Duration,
    /// A call taking longer than this is reported as hung.
    pub call_timeout: Duration,
    /// Inspects in flight at once.
    pub concurrency: usize,
    /// A hung call is abandoned (its connection closed) after this long; until
    /// then the container is not inspected again (no pile-up of requests).
    pub abandon_after: Duration,
}

impl Default for RelistConfig {
    fn default() -> Self {
        Self {
            endpoint: RuntimeEndpoint::Docker {
                host: "unix:///var/run/docker.sock".into(),
            },
            interval: Duration::from_secs(5),
            call_timeout: Duration::from_secs(10),
            concurrency: 4,
            abandon_after: Duration::from_secs(600),
        }
    }
}

/// A container as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    /// Without Docker's leading `/`; empty when the runtime gives none.
    pub name: String,
}

/// One container runtime's API, as the relist uses it. The relist owns the
/// timeouts, the concurrency bound and the outstanding calls: a client only
/// makes calls. The futures send nothing before they are first polled.
pub trait RuntimeClient: Send + Sync + 'static {
    /// The runtime's name in [`Relist::runtime`].
    const RUNTIME: &'static str;

    /// Agree on the API version with the runtime (one call).
    fn version(&mut self) -> impl Future<Output = Result<(), String>> + Send;

    /// Every container, running or not.
    fn list(&self) -> impl Future<Output = Result<Vec<Container>, String>> + Send + 'static;

    /// One container's status (what matters is whether and when it answers).
    fn inspect(&self, id: &str) -> impl Future<Output = Result<(), String>> + Send + 'static;
}

/// A call still running after its timeout.
struct Outstanding<T> {
    handle: JoinHandle<Option<Result<T, String>>>,
    since: Time,
    started: Instant,
    name: String,
}

impl<T> Outstanding<T> {
    fn hung(&self, call: &str, id: Option<&str>) -> HungCall {
        HungCall {
            call: call.to_owned(),
            container_id: id.map(str::to_owned),
            container_name: (!self.name.is_empty()).then(|| self.name.clone()),
            since: self.since,
            elapsed_ms: self.started.elapsed().as_millis() as u64,
        }
    }
}

/// Spawns `fut` as a task that gives up after `abandon` (returns None then).
fn spawn_call<T: Send + 'static>(
    fut: impl Future<Output = Result<T, String>> + Send + 'static,
    abandon: Duration,
) -> JoinHandle<Option<Result<T, String>>> {
    tokio::spawn(async move { tokio::time::timeout(abandon, fut).await.ok() })
}

/// Why a spawned call gave no answer.
enum NoAnswer {
    /// Not within the time waited; still outstanding.
    Late,
    /// The runtime answered with an error.
    Failed(String),
    /// Given up after `abandon_after`.
    Abandoned,
    /// Its task panicked or was cancelled.
    Lost(JoinError),
}

/// The answer of a spawned call, waiting at most `left` for it.
async fn answer<T>(
    handle: &mut JoinHandle<Option<Result<T, String>>>,
    left: Duration,
) -> Result<T, NoAnswer> {
    match tokio::time::timeout(left, handle).await {
        Err(_) => Err(NoAnswer::Late),
        Ok(Ok(Some(r))) => r.map_err(NoAnswer::Failed),
        Ok(Ok(None)) => Err(NoAnswer::Abandoned),
        Ok(Err(e)) => Err(NoAnswer::Lost(e)),
    }
}

/// The relist of one runtime, with its calls still outstanding.
pub struct Relister<C> {
    client: C,
    cfg: RelistConfig,
    list: Option<Outstanding<Vec<Container>>>,
    inspects: HashMap<String, Outstanding<()>>,
}

impl<C: RuntimeClient> Relister<C> {
    pub fn new(client: C, cfg: RelistConfig) -> Self {
        Self {
            client,
            cfg,
            list: None,
            inspects: HashMap::new(),
        }
    }

    /// Agree on the API version with the runtime (one call, with the timeout).
    pub async fn negotiate(&mut self) -> Result<(), String> {
        match tokio::time::timeout(self.cfg.call_timeout, self.client.version()).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "no answer to the version request within {:?}",
                self.cfg.call_timeout
            )),
        }
    }

    fn hung_calls(&self) -> Vec<HungCall> {
        let mut v: Vec<HungCall> = self
            .list
            .iter()
            .map(|o| o.hung("list", None))
            .chain(
                self.inspects
                    .iter()
                    .map(|(id, o)| o.hung("inspect", Some(id))),
            )
            .collect();
        v.sort_by_key(|h| std::cmp::Reverse(h.elapsed_ms));
        v
    }

    /// One relist: list all containers, inspect each (bounded concurrency,
    /// per-call timeout).
    pub async fn relist(&mut self) -> Relist {
        let at = Time::now();
        let start = Instant::now();
        let mut r = Relist {
            at,
            runtime: C::RUNTIME.into(),
            listed: false,
            complete: false,
            duration_ms: 0,
            containers: 0,
            inspected: 0,
            inspect_errors: 0,
            error: None,
            slowest: None,
            hung: Vec::new(),
        };
        // Calls that returned since the last relist are no longer outstanding.
        self.inspects.retain(|_, o| !o.handle.is_finished());
        let listing = match self.list.take() {
            Some(o) if !o.handle.is_finished() => {
                self.list = Some(o);
                r.error = Some("the previous container listing has not returned".into());
                None
            }
            Some(o) => Some(o),
            None => Some(Outstanding {
                handle: spawn_call(self.client.list(), self.cfg.abandon_after),
                since: at,
                started: Instant::now(),
                name: String::new(),
            }),
        };
        let containers = match listing {
            None => None,
            Some(mut o) => {
                let left = self.cfg.call_timeout.saturating_sub(o.started.elapsed());
                match answer(&mut o.handle, left).await {
                    Ok(cs) => Some(cs),
                    Err(NoAnswer::Late) => {
                        r.error = Some(format!(
                            "listing containers took longer than {:?}",
                            self.cfg.call_timeout
                        ));
                        self.list = Some(o);
                        None
                    }
                    Err(NoAnswer::Failed(e)) => {
                        r.error = Some(format!("listing containers: {e}"));
                        None
                    }
                    Err(NoAnswer::Abandoned) => {
                        r.error = Some(format!(
                            "listing containers abandoned after {:?}",
                            self.cfg.abandon_after
                        ));
                        None
                    }
                    Err(NoAnswer::Lost(e)) => {
                        r.error = Some(format!("listing task failed: {e}"));
                        None
                    }
                }
            }
        };
        let Some(containers) = containers else {
            r.duration_ms = start.elapsed().as_millis() as u64;
            r.hung = self.hung_calls();
            return r;
        };
        r.listed = true;
        r.containers = containers.len() as u32;

        // Inspect every container not already hung, `concurrency` at a time.
        let sem = Arc::new(Semaphore::new(self.cfg.concurrency.max(1)));
        let mut pending = Vec::new();
        for Container { id, name } in containers {
            if self.inspects.contains_key(&id) {
                continue;
            }
            let call = self.client.inspect(&id);
            let sem = sem.clone();
            let (started_tx, started_rx) = tokio::sync::oneshot::channel();
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            let timeout = self.cfg.call_timeout;
            let fut = async move {
                let permit = sem.acquire_owned().await.ok();
                let t0 = Instant::now();
                let _ = started_tx.send((Time::now(), t0));
                let mut call = std::pin::pin!(call);
                // Hold the concurrency slot only until the call counts as hung.
                let res = tokio::select! {
                    res = &mut call => Some(res),
                    _ = tokio::time::sleep(timeout) => None,
                };
                drop(permit);
                let Some(res) = res else {
                    let _ = done_tx.send(None);
                    return call.await;
                };
                let _ = done_tx.send(Some((t0.elapsed(), res.clone())));
                res
            };
            let handle = spawn_call(fut, self.cfg.abandon_after);
            pending.push((id, name, handle, started_rx, done_rx));
        }
        let mut slowest: Option<SlowCall> = None;
        let mut complete = true;
        for (id, name, handle, started_rx, done_rx) in pending {
            match done_rx.await {
                Ok(Some((elapsed, res))) => {
                    r.inspected += 1;
                    if let Err(e) = res {
                        r.inspect_errors += 1;
                        if r.error.is_none() {
                            r.error = Some(format!("inspect {name}: {e}"));
                        }
                    }
                    let ms = elapsed.as_millis() as u64;
                    if slowest.as_ref().is_none_or(|s| ms > s.elapsed_ms) {
                        slowest = Some(SlowCall {
                            container_id: id,
                            container_name: name,
                            elapsed_ms: ms,
                        });
                    }
                }
                // Timed out: keep the call outstanding.
                Ok(None) | Err(_) => {
                    complete = false;
                    let (since, started) = started_rx
                        .await
                        .unwrap_or_else(|_| (Time::now(), Instant::now()));
                    self.inspects.insert(
                        id,
                        Outstanding {
                            handle,
                            since,
                            started,
                            name,
                        },
                    );
                }
            }
        }
        r.complete = complete && self.inspects.is_empty();
        r.slowest = slowest;
        r.duration_ms = start.elapsed().as_millis() as u64;
        r.hung = self.hung_calls();
        r
    }
}

/// The relist as a supervised source: `connect` makes a client (no request
/// yet), the start agrees on the API version, each call is one relist.
pub struct RelistSource<F> {
    cfg: RelistConfig,
    connect: F,
}

impl<C, F> RelistSource<F>
where
    C: RuntimeClient,
    F: Fn() -> Result<C, String> + Send,
{
    pub fn new(cfg: RelistConfig, connect: F) -> Self {
        Self { cfg, connect }
    }
}

impl<C, F> Source for RelistSource<F>
where
    C: RuntimeClient,
    F: Fn() -> Result<C, String> + Send,
{
    type Client = Relister<C>;

    fn supervision(&self) -> Supervision {
        Supervision {
            kind: SourceKind::RuntimeRelist,
            target: self.cfg.endpoint.address().to_owned(),
            // None: the relist bounds each of its calls itself (a call past
            // `call_timeout` is reported hung and kept outstanding until
            // `abandon_after`); cutting a whole relist would drop its pending
            // inspects and ask the hung runtime again.
            deadline: None,
            interval: self.cfg.interval,
            max_backoff: Duration::from_secs(60),
        }
    }

    async fn start(&mut self) -> Result<Relister<C>, StartError> {
        let client = (self.connect)().map_err(StartError::Retry)?;
        let mut r = Relister::new(client, self.cfg.clone());
        r.negotiate().await.map_err(StartError::Retry)?;
        Ok(r)
    }

    async fn call(&mut self, relister: &mut Relister<C>) -> Call {
        let r = relister.relist().await;
        let state = match (&r.error, r.listed) {
            (Some(e), false) => (SourceState::Unavailable, e.clone()),
            _ => (
                SourceState::Available,
                format!("relisting every {:?}", self.cfg.interval),
            ),
        };
        Call::Answered(Step {
            state: Some(state),
            observations: vec![Observation::Relist(Box::new(r))],
            news: None,
        })
    }
}

/// Relist forever, sending each [`Relist`].
pub async fn run(cfg: RelistConfig, out: ObsSender) {
    match cfg.endpoint.clone() {
        RuntimeEndpoint::Docker { host } => {
            let abandon_after = cfg.abandon_after;
            let connect = move || docker::DockerClient::connect(&host, abandon_after);
            supervise(RelistSource::new(cfg, connect), out).await
        }
    }
}
