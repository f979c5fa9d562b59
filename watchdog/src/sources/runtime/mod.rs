//! The agent's own relist: what kubelet's generic PLEG does every second
//! (list all containers, inspect each), timed per call so that the agent sees
//! a hung runtime, and which container hangs it, before kubelet reports PLEG
//! unhealthy. The loop here is the same for every runtime; a runtime is a
//! [`RuntimeClient`]:
//!
//! - [`cri`]: the CRI (containerd, CRI-O, cri-dockerd) over gRPC on its unix
//!   socket, as kubelet's generic PLEG asks it: `ListPodSandbox`,
//!   `ListContainers`, then `PodSandboxStatus`/`ContainerStatus` for the pods
//!   that changed.
//! - [`docker`]: Docker Engine API over its unix socket (bollard): list, then
//!   inspect every container.
//!
//! Every call runs in its own task and is awaited with a timeout. A call that
//! times out is not cancelled: it stays outstanding (its task keeps waiting,
//! up to `abandon_after`) and is reported as hung with its elapsed time on
//! every relist; the container it concerns is not inspected again until the
//! call returns, so a hung runtime never accumulates more requests from us.
//! A hung listing likewise blocks new listings. Nothing here blocks the agent.
pub mod cri;
pub mod docker;

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures::future::Either;
use tokio::{
    sync::Semaphore,
    task::{JoinError, JoinHandle},
};

use super::{Call, ObsSender, Source, StartError, Step, Supervision, supervise};
use crate::model::{
    Observation,
    kubelet::{
        HungCall, NamedContainer, PodName, Relist, RuntimeNames, SlowCall, SourceKind, SourceState,
    },
    time::Time,
};

/// Where kubelet looks for a CRI runtime when none is configured, in its
/// order: containerd, CRI-O, cri-dockerd.
pub const CRI_CANDIDATES: &[&str] = &[
    "unix:///run/containerd/containerd.sock",
    "unix:///run/crio/crio.sock",
    "unix:///var/run/cri-dockerd.sock",
];
/// Docker Engine API, the last fallback of the detection.
pub const DOCKER_DEFAULT: &str = "unix:///var/run/docker.sock";

/// Which runtime the relist asks, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuntimeEndpoint {
    /// Docker Engine API at `unix:///var/run/docker.sock` (unix sockets only:
    /// no DNS lookups).
    Docker { host: String },
    /// A CRI runtime (containerd, CRI-O, cri-dockerd) at `unix://PATH`.
    Cri { endpoint: String },
    /// The first of [`CRI_CANDIDATES`], then [`DOCKER_DEFAULT`], whose
    /// socket exists, looked for again at every (re)start of the source.
    Detect,
}

impl RuntimeEndpoint {
    /// The address as configured (the source's status target).
    pub fn address(&self) -> &str {
        match self {
            Self::Docker { host } => host,
            Self::Cri { endpoint } => endpoint,
            Self::Detect => "detect (containerd, CRI-O, cri-dockerd, Docker)",
        }
    }

    /// The endpoint [`Self::Detect`] picks on this node now: the first
    /// candidate whose path is a socket (a `stat` of a path under `/run`,
    /// never of a user mount).
    pub fn detect() -> Result<Self, String> {
        use std::os::unix::fs::FileTypeExt as _;
        let is_socket = |uri: &str| {
            uri.strip_prefix("unix://")
                .and_then(|p| std::fs::metadata(p).ok())
                .is_some_and(|m| m.file_type().is_socket())
        };
        // Under the host root (a debug pod sees the host's /run at /host/run).
        let on_host = crate::paths::host::unix_uri;
        if let Some(e) = CRI_CANDIDATES
            .iter()
            .map(|e| on_host(e))
            .find(|e| is_socket(e))
        {
            return Ok(Self::Cri { endpoint: e });
        }
        let docker = on_host(DOCKER_DEFAULT);
        if is_socket(&docker) {
            return Ok(Self::Docker { host: docker });
        }
        Err(format!(
            "no container runtime socket found (looked for {} and {docker}); give --runtime-endpoint",
            CRI_CANDIDATES
                .iter()
                .map(|e| on_host(e))
                .collect::<Vec<_>>()
                .join(", ")
        ))
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
            endpoint: RuntimeEndpoint::Detect,
            interval: Duration::from_secs(5),
            call_timeout: Duration::from_secs(10),
            concurrency: 4,
            abandon_after: Duration::from_secs(600),
        }
    }
}

/// What a listed object is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    /// A CRI pod sandbox.
    Sandbox,
    Container,
}

/// A container (or a CRI pod sandbox) as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    /// Without Docker's leading `/`; empty when the runtime gives none.
    pub name: String,
    pub kind: ObjectKind,
    /// The runtime's state (`CONTAINER_RUNNING`, `running`...): a change
    /// makes the pod "changed" for kubelet's relist.
    pub state: String,
    /// The objects of one pod share it (the CRI sandbox id); None: the
    /// object is its own group.
    pub group: Option<String>,
    pub pod: Option<PodName>,
}

impl Container {
    fn group(&self) -> &str {
        self.group.as_deref().unwrap_or(&self.id)
    }
}

/// The pod named by kubelet's labels on a container
/// (`io.kubernetes.pod.namespace`, `.name`, `.uid`).
pub fn pod_from_labels<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Option<PodName> {
    Some(PodName {
        namespace: get("io.kubernetes.pod.namespace")?.to_owned(),
        name: get("io.kubernetes.pod.name")?.to_owned(),
        uid: get("io.kubernetes.pod.uid").unwrap_or_default().to_owned(),
    })
}

/// Which listing call a listing is in, shared between the call and the
/// relist (an index into [`RuntimeClient::list_ops`]).
pub type Stage = Arc<AtomicUsize>;

/// One container runtime's API, as the relist uses it. The relist owns the
/// timeouts, the concurrency bound and the outstanding calls: a client only
/// makes calls. The futures send nothing before they are first polled.
pub trait RuntimeClient: Send + Sync + 'static {
    /// The runtime's name in [`Relist::runtime`] (known after `version`).
    fn runtime(&self) -> &str;

    /// Where it is asked (`unix://...`).
    fn endpoint(&self) -> &str;

    /// The runtime's names of the listing calls, in the order `list` makes
    /// them.
    fn list_ops(&self) -> &'static [&'static str];

    /// The runtime's name of the status call for an object.
    fn inspect_op(&self, kind: ObjectKind) -> &'static str;

    /// True: inspect only the objects of pods that changed since the last
    /// relist (kubelet's generic PLEG); false: every object every time.
    fn changed_only(&self) -> bool;

    /// Agree on the API version with the runtime (one call).
    fn version(&mut self) -> impl Future<Output = Result<(), String>> + Send;

    /// Every object, running or not; stores the index of the call in flight
    /// in `stage`.
    fn list(
        &self,
        stage: Stage,
    ) -> impl Future<Output = Result<Vec<Container>, String>> + Send + 'static;

    /// One object's status (what matters is whether and when it answers).
    fn inspect(&self, obj: &Container)
    -> impl Future<Output = Result<(), String>> + Send + 'static;
}

/// A call still running after its timeout.
struct Outstanding<T> {
    handle: JoinHandle<Option<Result<T, String>>>,
    since: Time,
    started: Instant,
    /// The runtime's name of the call.
    op: &'static str,
    /// For a listing: which of `list_ops` is in flight.
    stage: Option<(&'static [&'static str], Stage)>,
    name: String,
    pod: Option<PodName>,
}

impl<T> Outstanding<T> {
    fn operation(&self) -> &'static str {
        match &self.stage {
            Some((ops, stage)) => ops
                .get(stage.load(Ordering::Relaxed))
                .copied()
                .unwrap_or(self.op),
            None => self.op,
        }
    }

    fn hung(&self, call: &str, id: Option<&str>) -> HungCall {
        HungCall {
            call: call.to_owned(),
            operation: Some(self.operation().to_owned()),
            container_id: id.map(str::to_owned),
            container_name: (!self.name.is_empty()).then(|| self.name.clone()),
            pod: self.pod.clone(),
            since: self.since,
            elapsed_ms: self.started.elapsed().as_millis() as u64,
            processes: Vec::new(),
        }
    }
}

/// The runtime helpers (`runc`, `crun`) whose command line names container
/// `id` and that have run at least `min_age_ms`: what a call hung on that
/// container may wait behind. Reads `comm` (never blocks) first, and the
/// command line only of a process none of whose threads is in
/// uninterruptible sleep (reading it takes the process's mmap lock).
pub fn stuck_helpers(
    reader: &crate::context::procfs::ProcReader,
    id: &str,
    min_age_ms: u64,
) -> Vec<crate::model::kubelet::StuckProcess> {
    const HELPERS: [&str; 2] = ["runc", "crun"];
    /// At most this many named (a call waits behind one, rarely a few).
    const MAX: usize = 3;
    if id.len() < 12 {
        return Vec::new();
    }
    let uptime_ms = reader
        .read_trim(&reader.rooted(crate::paths::UPTIME))
        .and_then(|u| u.split_whitespace().next()?.parse::<f64>().ok())
        .map(|s| (s * 1000.0) as u64);
    // SAFETY: sysconf has no preconditions.
    let tck = (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as u64;
    let mut out = Vec::new();
    for pid in reader.pids() {
        let comm = reader.comm(pid);
        if !HELPERS.contains(&comm.as_str()) || reader.any_task_in_d(pid) {
            continue;
        }
        let Some(cmdline) = reader.read_pid_file(pid, "cmdline") else {
            continue;
        };
        if !cmdline.split('\0').any(|a| a == id || a.contains(id)) {
            continue;
        }
        let (Some(start), Some(up)) = (reader.start_time(pid), uptime_ms) else {
            continue;
        };
        let age_ms = up.saturating_sub(start * 1000 / tck);
        if age_ms >= min_age_ms {
            out.push(crate::model::kubelet::StuckProcess {
                pid,
                comm,
                start,
                age_ms,
            });
        }
        if out.len() >= MAX {
            break;
        }
    }
    out
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
    /// Each object's state as of its last answered inspect (for
    /// [`RuntimeClient::changed_only`]).
    seen: HashMap<String, String>,
    /// The version call answered.
    versioned: bool,
    /// The container names last sent, and the new set when it changed.
    names_sent: Vec<NamedContainer>,
    names_new: Option<RuntimeNames>,
    /// The node's /proc (runc/crun helpers of hung calls).
    procs: crate::context::procfs::ProcReader,
    /// Per hung container: when its helpers were last looked up, and them.
    helpers: HashMap<String, (Instant, Vec<crate::model::kubelet::StuckProcess>)>,
}

impl<C: RuntimeClient> Relister<C> {
    pub fn new(client: C, cfg: RelistConfig) -> Self {
        Self {
            procs: crate::context::procfs::ProcReader::new(std::path::Path::new("/")),
            helpers: HashMap::new(),
            client,
            cfg,
            list: None,
            inspects: HashMap::new(),
            seen: HashMap::new(),
            versioned: false,
            names_sent: Vec::new(),
            names_new: None,
        }
    }

    /// Agree on the API version with the runtime (one call, with the
    /// timeout). `Ok(false)`: no answer in time; the relist goes on without
    /// (its listing then shows the hang) and asks again once a listing
    /// answers.
    pub async fn negotiate(&mut self) -> Result<bool, String> {
        match tokio::time::timeout(self.cfg.call_timeout, self.client.version()).await {
            Ok(r) => {
                self.versioned = r.is_ok();
                r.map(|()| true)
            }
            Err(_) => Ok(false),
        }
    }

    /// The runtime's container names, when they changed since last taken.
    pub fn take_names(&mut self) -> Option<RuntimeNames> {
        self.names_new.take()
    }

    fn hung_calls(&mut self) -> Vec<HungCall> {
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
        // Which runc/crun each hung inspect may wait behind: looked up at
        // most every 10 s per container, and only while calls hang.
        let now = Instant::now();
        self.helpers
            .retain(|id, _| v.iter().any(|h| h.container_id.as_deref() == Some(id)));
        for h in v.iter_mut() {
            let Some(id) = h.container_id.clone() else {
                continue;
            };
            let fresh = self
                .helpers
                .get(&id)
                .is_some_and(|(at, _)| now.duration_since(*at) < Duration::from_secs(10));
            if !fresh {
                let found = stuck_helpers(&self.procs, &id, h.elapsed_ms);
                self.helpers.insert(id.clone(), (now, found));
            }
            h.processes = self.helpers[&id].1.clone();
        }
        v
    }

    /// The objects to inspect this relist: all of them, or (changed_only)
    /// those of the groups (pods) with an object that is new, gone or in
    /// another state since its last answered inspect.
    fn to_inspect(&self, objects: Vec<Container>) -> Vec<Container> {
        if !self.client.changed_only() {
            return objects;
        }
        let listed: HashSet<&str> = objects.iter().map(|o| o.id.as_str()).collect();
        let mut changed: HashSet<String> = objects
            .iter()
            .filter(|o| self.seen.get(&o.id) != Some(&o.state))
            .map(|o| o.group().to_owned())
            .collect();
        // A vanished object changes its pod too (kubelet sees it gone).
        let groups: HashMap<&str, &str> =
            objects.iter().map(|o| (o.id.as_str(), o.group())).collect();
        for id in self.seen.keys() {
            if !listed.contains(id.as_str())
                && let Some(g) = groups.get(id.as_str())
            {
                changed.insert((*g).to_owned());
            }
        }
        objects
            .into_iter()
            .filter(|o| changed.contains(o.group()))
            .collect()
    }

    /// One relist: list all objects, inspect those that need it (bounded
    /// concurrency, per-call timeout).
    pub async fn relist(&mut self) -> Relist {
        let at = Time::now();
        let start = Instant::now();
        let mut r = Relist {
            at,
            runtime: self.client.runtime().to_owned(),
            endpoint: self.client.endpoint().to_owned(),
            listed: false,
            complete: false,
            duration_ms: 0,
            containers: 0,
            sandboxes: 0,
            inspected: 0,
            inspect_errors: 0,
            error: None,
            slowest: None,
            hung: Vec::new(),
        };
        // Calls that returned since the last relist are no longer outstanding.
        self.inspects.retain(|_, o| !o.handle.is_finished());
        let ops = self.client.list_ops();
        let listing = match self.list.take() {
            Some(o) if !o.handle.is_finished() => {
                self.list = Some(o);
                r.error = Some(format!(
                    "the previous listing ({}) has not returned",
                    self.list.as_ref().map(|o| o.operation()).unwrap_or("list")
                ));
                None
            }
            Some(o) => Some(o),
            None => {
                let stage = Stage::default();
                Some(Outstanding {
                    handle: spawn_call(self.client.list(stage.clone()), self.cfg.abandon_after),
                    since: at,
                    started: Instant::now(),
                    op: ops.first().copied().unwrap_or("list"),
                    stage: Some((ops, stage)),
                    name: String::new(),
                    pod: None,
                })
            }
        };
        let objects = match listing {
            None => None,
            Some(mut o) => {
                let left = self.cfg.call_timeout.saturating_sub(o.started.elapsed());
                let op = o.operation();
                match answer(&mut o.handle, left).await {
                    Ok(cs) => Some(cs),
                    Err(NoAnswer::Late) => {
                        r.error = Some(format!(
                            "{} took longer than {:?}",
                            o.operation(),
                            self.cfg.call_timeout
                        ));
                        self.list = Some(o);
                        None
                    }
                    Err(NoAnswer::Failed(e)) => {
                        r.error = Some(format!("{op}: {e}"));
                        None
                    }
                    Err(NoAnswer::Abandoned) => {
                        r.error =
                            Some(format!("{op} abandoned after {:?}", self.cfg.abandon_after));
                        None
                    }
                    Err(NoAnswer::Lost(e)) => {
                        r.error = Some(format!("{op}: listing task failed: {e}"));
                        None
                    }
                }
            }
        };
        let Some(objects) = objects else {
            r.duration_ms = start.elapsed().as_millis() as u64;
            r.hung = self.hung_calls();
            return r;
        };
        r.listed = true;
        if !self.versioned {
            // The runtime answers again: learn its name now.
            let _ = self.negotiate().await;
            r.runtime = self.client.runtime().to_owned();
        }
        r.containers = objects
            .iter()
            .filter(|o| o.kind == ObjectKind::Container)
            .count() as u32;
        r.sandboxes = objects.len() as u32 - r.containers;
        let mut names: Vec<NamedContainer> = objects
            .iter()
            .filter(|o| o.kind == ObjectKind::Container)
            .map(|o| NamedContainer {
                id: o.id.clone(),
                name: o.name.clone(),
                pod: o.pod.clone(),
            })
            .collect();
        names.sort_by(|a, b| a.id.cmp(&b.id));
        if names != self.names_sent {
            self.names_new = Some(RuntimeNames {
                at,
                runtime: r.runtime.clone(),
                containers: names.clone(),
            });
            self.names_sent = names;
        }
        let states: HashMap<String, (String, String)> = objects
            .iter()
            .map(|o| (o.id.clone(), (o.state.clone(), o.group().to_owned())))
            .collect();

        // Inspect every object that needs it and is not already hung,
        // `concurrency` at a time.
        let sem = Arc::new(Semaphore::new(self.cfg.concurrency.max(1)));
        let mut pending = Vec::new();
        for obj in self.to_inspect(objects) {
            if self.inspects.contains_key(&obj.id) {
                continue;
            }
            let call = self.client.inspect(&obj);
            let op = self.client.inspect_op(obj.kind);
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
            pending.push((obj, op, handle, started_rx, done_rx));
        }
        let mut slowest: Option<SlowCall> = None;
        let mut complete = true;
        // Groups with an inspect that failed or hangs: inspected again next
        // time (kubelet re-inspects them too).
        let mut unsettled: HashSet<String> = HashSet::new();
        for (obj, op, handle, started_rx, done_rx) in pending {
            match done_rx.await {
                Ok(Some((elapsed, res))) => {
                    r.inspected += 1;
                    if let Err(e) = res {
                        r.inspect_errors += 1;
                        unsettled.insert(obj.group().to_owned());
                        if r.error.is_none() {
                            r.error = Some(format!("{op} {}: {e}", obj.name));
                        }
                    }
                    let ms = elapsed.as_millis() as u64;
                    if slowest.as_ref().is_none_or(|s| ms > s.elapsed_ms) {
                        slowest = Some(SlowCall {
                            container_id: obj.id.clone(),
                            container_name: obj.name.clone(),
                            elapsed_ms: ms,
                        });
                    }
                }
                // Timed out: keep the call outstanding.
                Ok(None) | Err(_) => {
                    complete = false;
                    unsettled.insert(obj.group().to_owned());
                    let (since, started) = started_rx
                        .await
                        .unwrap_or_else(|_| (Time::now(), Instant::now()));
                    self.inspects.insert(
                        obj.id.clone(),
                        Outstanding {
                            handle,
                            since,
                            started,
                            op,
                            stage: None,
                            name: obj.name,
                            pod: obj.pod,
                        },
                    );
                }
            }
        }
        self.seen = states
            .into_iter()
            .filter(|(id, (_, group))| {
                !unsettled.contains(group) && !self.inspects.contains_key(id)
            })
            .map(|(id, (state, _))| (id, state))
            .collect();
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
        // A runtime that accepts the connection but does not answer is hung,
        // not unavailable: the relist reports its listing as a hung call.
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
        let mut observations = vec![Observation::Relist(Box::new(r))];
        if let Some(n) = relister.take_names() {
            observations.push(Observation::RuntimeNames(Box::new(n)));
        }
        Call::Answered(Step {
            state: Some(state),
            observations,
            news: None,
        })
    }
}

/// The runtime client the configuration names, or that detection picks.
pub enum AnyClient {
    Docker(docker::DockerClient),
    Cri(cri::CriClient),
}

impl AnyClient {
    /// A client for `endpoint` (no request yet); [`RuntimeEndpoint::Detect`]
    /// looks for the runtime's socket now.
    pub fn connect(endpoint: &RuntimeEndpoint, abandon_after: Duration) -> Result<Self, String> {
        match endpoint {
            RuntimeEndpoint::Docker { host } => {
                docker::DockerClient::connect(host, abandon_after).map(Self::Docker)
            }
            RuntimeEndpoint::Cri { endpoint } => cri::CriClient::connect(endpoint).map(Self::Cri),
            RuntimeEndpoint::Detect => Self::connect(&RuntimeEndpoint::detect()?, abandon_after),
        }
    }
}

impl RuntimeClient for AnyClient {
    fn runtime(&self) -> &str {
        match self {
            Self::Docker(c) => c.runtime(),
            Self::Cri(c) => c.runtime(),
        }
    }

    fn endpoint(&self) -> &str {
        match self {
            Self::Docker(c) => c.endpoint(),
            Self::Cri(c) => c.endpoint(),
        }
    }

    fn list_ops(&self) -> &'static [&'static str] {
        match self {
            Self::Docker(c) => c.list_ops(),
            Self::Cri(c) => c.list_ops(),
        }
    }

    fn inspect_op(&self, kind: ObjectKind) -> &'static str {
        match self {
            Self::Docker(c) => c.inspect_op(kind),
            Self::Cri(c) => c.inspect_op(kind),
        }
    }

    fn changed_only(&self) -> bool {
        match self {
            Self::Docker(c) => c.changed_only(),
            Self::Cri(c) => c.changed_only(),
        }
    }

    async fn version(&mut self) -> Result<(), String> {
        match self {
            Self::Docker(c) => c.version().await,
            Self::Cri(c) => c.version().await,
        }
    }

    fn list(
        &self,
        stage: Stage,
    ) -> impl Future<Output = Result<Vec<Container>, String>> + Send + 'static {
        match self {
            Self::Docker(c) => Either::Left(c.list(stage)),
            Self::Cri(c) => Either::Right(c.list(stage)),
        }
    }

    fn inspect(
        &self,
        obj: &Container,
    ) -> impl Future<Output = Result<(), String>> + Send + 'static {
        match self {
            Self::Docker(c) => Either::Left(c.inspect(obj)),
            Self::Cri(c) => Either::Right(c.inspect(obj)),
        }
    }
}

/// Relist forever, sending each [`Relist`].
pub async fn run(cfg: RelistConfig, out: ObsSender) {
    let endpoint = cfg.endpoint.clone();
    let abandon_after = cfg.abandon_after;
    let connect = move || AnyClient::connect(&endpoint, abandon_after);
    supervise(RelistSource::new(cfg, connect), out).await
}
