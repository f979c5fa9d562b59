//! The agent's relist against Docker (bollard, unix socket).
//!
//! Every call runs in its own task and is awaited with a timeout. A call that
//! times out is not cancelled: it stays outstanding (its task keeps waiting,
//! up to `abandon_after`) and is reported as hung with its elapsed time on
//! every relist; the container it concerns is not inspected again until the
//! call returns, so a hung runtime never accumulates more requests from us.
//! A hung listing likewise blocks new listings. Nothing here blocks the agent.
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use bollard::{
    ClientVersion, Docker,
    query_parameters::{InspectContainerOptions, ListContainersOptions},
};
use tokio::{sync::Semaphore, task::JoinHandle};

use super::{HungCall, Relist, RelistConfig, SlowCall};
use crate::{
    kubelet::{Backoff, ObsSender, Reporter},
    model::{
        Observation,
        kubelet::{SourceKind, SourceState},
        time::Time,
    },
};

/// API version spoken before negotiation (Docker 20.10 to 28 accept it).
const FALLBACK_API: ClientVersion = ClientVersion {
    major_version: 1,
    minor_version: 41,
};

type ListResult = Result<Vec<(String, String)>, String>;

/// A call still running after its timeout.
struct Outstanding<T> {
    handle: JoinHandle<Option<T>>,
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
    fut: impl std::future::Future<Output = T> + Send + 'static,
    abandon: Duration,
) -> JoinHandle<Option<T>> {
    tokio::spawn(async move { tokio::time::timeout(abandon, fut).await.ok() })
}

pub struct DockerRelist {
    docker: Docker,
    cfg: RelistConfig,
    list: Option<Outstanding<ListResult>>,
    inspects: HashMap<String, Outstanding<Result<(), String>>>,
}

/// Connects (no request yet): Err when the socket path is wrong.
pub fn connect(cfg: &RelistConfig) -> Result<Docker, String> {
    let Some(path) = cfg.docker_host.strip_prefix("unix://") else {
        return Err(format!(
            "docker host {:?}: only unix:// sockets are supported (a TCP host name would be resolved on the blocking pool)",
            cfg.docker_host
        ));
    };
    Docker::connect_with_unix(path, cfg.abandon_after.as_secs().max(1), &FALLBACK_API)
        .map_err(|e| e.to_string())
}

impl DockerRelist {
    pub fn new(docker: Docker, cfg: RelistConfig) -> Self {
        Self {
            docker,
            cfg,
            list: None,
            inspects: HashMap::new(),
        }
    }

    /// Agree on the API version with the daemon (one call, with the timeout).
    pub async fn negotiate(&mut self) -> Result<(), String> {
        let d = self.docker.clone();
        match tokio::time::timeout(self.cfg.call_timeout, d.negotiate_version()).await {
            Ok(Ok(d)) => {
                self.docker = d;
                Ok(())
            }
            Ok(Err(e)) => Err(e.to_string()),
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
            runtime: "docker".into(),
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
            None => {
                let d = self.docker.clone();
                let fut = async move {
                    let opts = ListContainersOptions {
                        all: true,
                        ..Default::default()
                    };
                    d.list_containers(Some(opts))
                        .await
                        .map(|cs| {
                            cs.into_iter()
                                .filter_map(|c| {
                                    let name = c
                                        .names
                                        .and_then(|n| n.into_iter().next())
                                        .unwrap_or_default()
                                        .trim_start_matches('/')
                                        .to_owned();
                                    c.id.map(|id| (id, name))
                                })
                                .collect()
                        })
                        .map_err(|e| e.to_string())
                };
                Some(Outstanding {
                    handle: spawn_call(fut, self.cfg.abandon_after),
                    since: at,
                    started: Instant::now(),
                    name: String::new(),
                })
            }
        };
        let containers = match listing {
            None => None,
            Some(mut o) => {
                let left = self.cfg.call_timeout.saturating_sub(o.started.elapsed());
                match tokio::time::timeout(left, &mut o.handle).await {
                    Err(_) => {
                        r.error = Some(format!(
                            "listing containers took longer than {:?}",
                            self.cfg.call_timeout
                        ));
                        self.list = Some(o);
                        None
                    }
                    Ok(Ok(Some(Ok(cs)))) => Some(cs),
                    Ok(Ok(Some(Err(e)))) => {
                        r.error = Some(format!("listing containers: {e}"));
                        None
                    }
                    Ok(Ok(None)) => {
                        r.error = Some(format!(
                            "listing containers abandoned after {:?}",
                            self.cfg.abandon_after
                        ));
                        None
                    }
                    Ok(Err(e)) => {
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
        for (id, name) in containers {
            if self.inspects.contains_key(&id) {
                continue;
            }
            let d = self.docker.clone();
            let sem = sem.clone();
            let (started_tx, started_rx) = tokio::sync::oneshot::channel();
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            let call_id = id.clone();
            let timeout = self.cfg.call_timeout;
            let fut = async move {
                let permit = sem.acquire_owned().await.ok();
                let t0 = Instant::now();
                let _ = started_tx.send((Time::now(), t0));
                let call = d.inspect_container(&call_id, None::<InspectContainerOptions>);
                let mut call = std::pin::pin!(call);
                // Hold the concurrency slot only until the call counts as hung.
                let res = tokio::select! {
                    res = &mut call => Some(res),
                    _ = tokio::time::sleep(timeout) => None,
                };
                drop(permit);
                let res = match res {
                    Some(r) => r,
                    None => {
                        let _ = done_tx.send(None);
                        return call.await.map(|_| ()).map_err(|e| e.to_string());
                    }
                };
                let out = res.map(|_| ()).map_err(|e| e.to_string());
                let _ = done_tx.send(Some((t0.elapsed(), out.clone())));
                out
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

/// Relist forever, sending each [`Relist`].
pub async fn run(cfg: RelistConfig, out: ObsSender) {
    let mut rep = Reporter::new(out, SourceKind::RuntimeRelist, cfg.docker_host.clone());
    let mut backoff = Backoff::new(cfg.interval, Duration::from_secs(60));
    let mut relister = loop {
        match connect(&cfg) {
            Ok(d) => {
                let mut r = DockerRelist::new(d, cfg.clone());
                match r.negotiate().await {
                    Ok(()) => break r,
                    Err(e) => rep.status(SourceState::Unavailable, e),
                }
            }
            Err(e) => rep.status(SourceState::Unavailable, e),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    };
    loop {
        let r = relister.relist().await;
        match (&r.error, r.listed) {
            (Some(e), false) => rep.status(SourceState::Unavailable, e.clone()),
            _ => rep.status(
                SourceState::Available,
                format!("relisting every {:?}", cfg.interval),
            ),
        }
        if !rep.send(Observation::Relist(Box::new(r))) {
            return;
        }
        tokio::time::sleep(cfg.interval).await;
    }
}
