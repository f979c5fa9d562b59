//! The live session: probes -> ring buffer -> decoding -> node context ->
//! observations -> diagnosis engine -> sinks.
//!
//! It runs on one thread (a current-thread tokio runtime built before any
//! probe attaches), so it needs no new thread or process while the node is
//! out of PIDs: nothing here forks, and tokio's blocking pool is never used.
pub mod arming;
pub mod diagnoser;

use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::{
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior},
};
use watchdog_common::decode::Event;

use crate::context::NodeContext;
use crate::dbus::options::RequestPath;
use crate::model::finding::Cause;
use crate::model::settings::EngineConfig;
use crate::model::{NprocUsage, Observation};
use crate::paths;
use crate::probes::{
    self, DBUS_SOCKET_PROBES, DBUS_SYSCALL_PROBES, FORK_FAILURES, KernelLayout, NPROC_PRESSURE,
    ProbePath, ProbeSpec, ProbeState, Probes, STORAGE_PROBES,
};
use crate::recording::{Header, Recorder};
use crate::ringbuf::{self, Counters};
use crate::sinks::status::{self, StatusSnapshot};
use crate::sinks::{Drops, ProbeChange, Ready, Record, Sink, Stats, Summary};
use crate::{context::clock::MonotonicClock, model::Time};
use arming::{Arming, Change, ForkProbeMode};
use diagnoser::Diagnoser;

/// Events waiting for the engine; beyond this they are dropped and counted.
const QUEUE: usize = 8192;

#[derive(Clone, Debug)]
pub struct TraceOptions {
    /// End after this long; None runs until SIGINT/SIGTERM.
    pub duration: Option<Duration>,
    /// How often limits are sampled and findings re-evaluated.
    pub poll_interval: Duration,
    pub engine: EngineConfig,
    /// Root of /proc and /sys (normally `/`).
    pub root: PathBuf,
    pub fork_probe: ForkProbeMode,
    /// `auto`: attach the fork probe when a PID limit is this full (percent).
    pub arm_percent: f64,
    /// `auto`: detach it after this long without pressure.
    pub disarm_after: Duration,
    /// Record every engine input to this file (`watchdog replay` reads it).
    pub record: Option<PathBuf>,
    /// This node's name (recorded; used by the Kubernetes outputs).
    pub node_name: Option<String>,
    /// Outputs besides the records (metrics endpoint, Kubernetes), for the
    /// `ready` record.
    pub outputs: Vec<String>,
    /// kubelet metrics/log/node watch and the agent's own relist.
    pub pleg_sources: crate::sources::PlegSources,
    /// Storage-hang detection; None leaves its probes unattached.
    pub storage: Option<crate::storage::StorageOptions>,
    /// D-Bus/systemd socket tracking (needs the storage probes).
    pub dbus: Option<crate::dbus::options::DbusOptions>,
    /// Remediation policy (dry-run by default).
    pub remediation: crate::remediation::PolicyConfig,
    /// Where enforce journals its actions.
    pub remediation_journal: PathBuf,
    /// The cluster's remediation budget (`run` with an apiserver); None:
    /// the node's own budget, nothing cluster-visible.
    pub remediation_budget: crate::remediation::coordinator::BudgetSlot,
    /// Changes an earlier agent left on the node (`run` reads them at start).
    pub remediation_inherited: Vec<(
        crate::model::finding::RemedyAction,
        crate::model::finding::Cause,
    )>,
}

impl Default for TraceOptions {
    fn default() -> Self {
        Self {
            duration: None,
            poll_interval: Duration::from_secs(1),
            engine: EngineConfig::default(),
            root: "/".into(),
            fork_probe: ForkProbeMode::Auto,
            arm_percent: 75.0,
            disarm_after: Duration::from_secs(60),
            record: None,
            node_name: None,
            outputs: Vec::new(),
            pleg_sources: crate::sources::PlegSources::none(),
            storage: Some(crate::storage::StorageOptions::default()),
            dbus: Some(crate::dbus::options::DbusOptions::default()),
            remediation: crate::remediation::PolicyConfig::default(),
            remediation_journal: PathBuf::from(paths::REMEDIATION_JOURNAL),
            remediation_budget: Default::default(),
            remediation_inherited: Vec::new(),
        }
    }
}

/// The remediation policy with the node's executor; in enforce, with its
/// journal (this boot's earlier actions restored). A journal that cannot be
/// opened leaves remediation in dry-run, said on stderr: nothing may act
/// without its intent on disk.
fn remediator(opts: &mut TraceOptions) -> Option<crate::remediation::Remediator> {
    use crate::remediation::{Journal, Mode, NodeExecutor, NodeOnly, PolicyConfig, Remediator};
    let mut cfg = opts.remediation.clone();
    if cfg.mode == Mode::Off {
        return None;
    }
    let mut executor = NodeExecutor::new(&opts.root);
    executor.allow_host_init = cfg.allow_host_init;
    let executor = Box::new(executor);
    let budget = opts
        .remediation_budget
        .take()
        .unwrap_or_else(|| Box::new(NodeOnly));
    if cfg.mode != Mode::Enforce {
        return Some(Remediator::new(cfg, executor).with_budget(budget));
    }
    let reader = crate::context::procfs::ProcReader::new(&opts.root);
    let boot_id = reader
        .read_trim(&reader.rooted(paths::BOOT_ID))
        .unwrap_or_else(|| "unknown-boot".into());
    match Journal::open(&opts.remediation_journal, &boot_id) {
        Ok((journal, taken)) => {
            if !taken.is_empty() {
                tracing::warn!(
                    "remediation: {} actions of this boot in {} count against the budget",
                    taken.len(),
                    journal.path().display()
                );
            }
            Some(
                Remediator::new(cfg, executor)
                    .with_budget(budget)
                    .with_inherited(std::mem::take(&mut opts.remediation_inherited), Time::now())
                    .with_journal(journal, &taken),
            )
        }
        Err(e) => {
            tracing::warn!("remediation stays in dry-run: {e}");
            cfg = PolicyConfig {
                mode: Mode::DryRun,
                ..cfg
            };
            Some(Remediator::new(cfg, executor).with_budget(budget))
        }
    }
}

/// When the node booted: now less /proc/uptime (the policy's minimum
/// uptime is measured from it).
fn booted_at(root: &std::path::Path, now: Time) -> Option<Time> {
    let reader = crate::context::procfs::ProcReader::new(root);
    let up: f64 = reader
        .read_trim(&reader.rooted(paths::UPTIME))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(Time::from_millis(
        now.0.saturating_sub((up * 1000.0) as u64),
    ))
}

/// Run a tracing session until its duration ends or a signal arrives.
pub fn trace(opts: TraceOptions, sink: &mut dyn Sink) -> anyhow::Result<Summary> {
    block_on(session(opts, sink))
}

/// Run `fut` on the agent's single-threaded runtime (built before any probe
/// attaches; it never starts another thread).
pub fn block_on<T>(fut: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(fut)
}

/// Attach or detach the fork probe as PID pressure comes and goes (`auto`).
fn apply_arming(
    auto: bool,
    arming: &mut Arming,
    probes: &mut Probes,
    sink: &mut dyn Sink,
    now: Time,
    pressure: Option<String>,
) {
    if !auto {
        return;
    }
    let (result, reason) = match arming.update(now, pressure) {
        None => return,
        Some(Change::Arm(why)) => (probes.arm(&FORK_FAILURES), why),
        Some(Change::Disarm(why)) => (probes.disarm(&FORK_FAILURES), why),
    };
    let status = probes
        .state(FORK_FAILURES.name)
        .unwrap_or(ProbeState::Unavailable);
    let reason = match result {
        Ok(()) => reason,
        Err(e) => format!("{reason}; but: {e}"),
    };
    sink.emit(&Record::Probe(ProbeChange {
        at: now,
        name: FORK_FAILURES.name,
        status,
        reason,
    }));
}

/// One kernel event to the engine, enriched from the node context (and, for
/// RLIMIT_NPROC pressure, to the fork probe's arming).
#[expect(
    clippy::too_many_arguments,
    reason = "the session's state, borrowed piecewise by the event branch and a poll's catch-up"
)]
fn on_event(
    ev: Event,
    ctx: &mut NodeContext,
    clock: &MonotonicClock,
    diag: &mut Diagnoser,
    dbus: Option<&mut crate::dbus::DbusTracker>,
    auto: bool,
    arming: &mut Arming,
    probes: &mut Probes,
    sink: &mut dyn Sink,
) {
    match ev {
        Event::ForkFailure(f) => {
            let obs = Observation::ForkFailed(Box::new(
                ctx.fork_failed(&f, clock.to_time(f.header.ts_ns)),
            ));
            diag.observe(obs, sink);
        }
        Event::NprocPressure(n) => {
            let at = clock.to_time(n.header.ts_ns);
            let usage = NprocUsage {
                at,
                uid: n.uid,
                pid: n.pid,
                comm: crate::context::nul_terminated(&n.comm),
                tasks: n.tasks,
                limit: n.limit,
            };
            let why = format!(
                "uid {} at {}/{} of its RLIMIT_NPROC",
                n.uid, n.tasks, n.limit
            );
            diag.observe(Observation::NprocUsage(usage), sink);
            apply_arming(auto, arming, probes, sink, at, Some(why));
        }
        Event::Socket(s) => {
            if let Some(t) = dbus {
                let started = (s.start_ns != 0).then(|| clock.to_time(s.start_ns));
                for call in t.calls(&s, clock.to_time(s.header.ts_ns), started) {
                    diag.observe(Observation::SocketCall(call), sink);
                }
            }
        }
    }
}

/// Start the D-Bus probes that are due, each a task of its own with its
/// timeout; the answers come back as observations on `tx`.
fn spawn_bus_probes(
    due: Vec<(String, crate::model::dbus::ProbeTarget)>,
    timeout: std::time::Duration,
    tx: &crate::sources::ObsSender,
) {
    for (socket, target) in due {
        let tx = tx.clone();
        tokio::spawn(async move {
            let p = crate::dbus::probe::probe(socket, target, timeout).await;
            tx.send(Observation::BusProbe(p));
        });
    }
}

/// What the status line shows that only a poll reads (the limits, the
/// storage sweep); the rest is read when the line is drawn.
#[derive(Default)]
struct Polled {
    limits: Vec<status::LimitFill>,
    blocked: Option<status::Blocked>,
}

/// The live status as of `now`, for a sink that draws it.
fn status_snapshot(
    elapsed: Duration,
    probes: &Probes,
    diag: &Diagnoser,
    pleg: bool,
    dbus: Option<&crate::dbus::DbusTracker>,
    polled: &Polled,
    now: Time,
) -> StatusSnapshot {
    let wanted = probes
        .statuses
        .iter()
        .filter(|p| p.status != ProbeState::Standby);
    StatusSnapshot {
        elapsed,
        probes_attached: wanted
            .clone()
            .filter(|p| p.status == ProbeState::Attached)
            .count(),
        probes_wanted: wanted.count(),
        pleg: pleg.then(|| status::PlegLine::of(&diag.engine.pleg_now(now))),
        limits: polled.limits.clone(),
        blocked: polled.blocked,
        dbus: dbus.map(|t| {
            let (requests, longest_ms) = t.waiting(now, status::DBUS_SHOWN_AFTER_MS);
            status::DbusWaiting {
                requests,
                longest_s: longest_ms as f64 / 1000.0,
            }
        }),
        bundle: None,
    }
}

fn drops(probes: &Probes, counters: &Counters, sources: u64, storage: bool) -> Drops {
    Drops {
        kernel: probes.kernel_drops(),
        userspace: Counters::get(&counters.userspace_drops),
        decode_errors: Counters::get(&counters.decode_errors),
        sources,
        storage: storage.then(|| crate::storage::StorageDrops::read(probes)),
        findings_refused: 0,
    }
}

/// The session loop, on the current runtime: probes, context, engine, sinks.
pub async fn session(mut opts: TraceOptions, sink: &mut dyn Sink) -> anyhow::Result<Summary> {
    let started = Time::now();
    if opts.remediation.booted_at.is_none() {
        opts.remediation.booted_at = booted_at(&opts.root, started);
    }
    let started_at = Instant::now();
    let layout = KernelLayout::from_btf(std::path::Path::new(paths::KERNEL_BTF));
    let (wanted, standby): (&[_], &[_]) = match opts.fork_probe {
        ForkProbeMode::Always => (&[FORK_FAILURES, NPROC_PRESSURE], &[]),
        ForkProbeMode::Auto => (&[NPROC_PRESSURE], &[FORK_FAILURES]),
        ForkProbeMode::Off => (&[NPROC_PRESSURE], &[]),
    };
    // How D-Bus requests are followed: `auto` never takes a syscall hook.
    let (mut dbus_path, mut dbus_why) = match &opts.dbus {
        Some(d) if opts.storage.is_some() => d.requests.resolve(layout.sock_tracepoints),
        Some(_) => (
            RequestPath::Off,
            "the D-Bus request tracking needs the storage probes' watched set, which is off".into(),
        ),
        None => (RequestPath::Off, "systemd-hang detection is off".into()),
    };
    let dbus_probes: &[ProbeSpec] = match dbus_path {
        RequestPath::SocketTracepoints => &DBUS_SOCKET_PROBES,
        RequestPath::Syscalls => &DBUS_SYSCALL_PROBES,
        RequestPath::Off => &[],
    };
    let wanted: Vec<_> = wanted
        .iter()
        .copied()
        .chain(opts.storage.iter().flat_map(|_| STORAGE_PROBES))
        .chain(dbus_probes.iter().copied())
        .collect();
    let mut probes = Probes::load(&layout, &wanted, standby)?;
    let mut storage = opts
        .storage
        .as_ref()
        .and_then(|s| crate::storage::StorageTracker::start(&mut probes, &opts.root, s));
    if let Some(t) = storage.as_mut() {
        let n = t.adopt_blocked();
        if n > 0 {
            tracing::debug!("{n} tasks already in D state at start are followed");
        }
    }
    if let Some(p) = dbus_probes
        .iter()
        .find(|p| probes.state(p.name) != Some(ProbeState::Attached))
    {
        dbus_why = format!(
            "{dbus_why}; but probe {} is unavailable: requests are not followed",
            p.name
        );
        dbus_path = RequestPath::Off;
    } else if dbus_path != RequestPath::Off && storage.is_none() {
        dbus_why =
            "the storage probes' watched set is unavailable: requests are not followed".into();
        dbus_path = RequestPath::Off;
    }
    let mut dbus = match (&opts.dbus, dbus_path) {
        (None, _) => None,
        (Some(_), RequestPath::Off) => {
            tracing::warn!("D-Bus/systemd requests are not followed: {dbus_why}");
            None
        }
        (Some(d), path) => match crate::dbus::DbusTracker::new(&mut probes, &opts.root, d, path) {
            Ok(t) => Some(t),
            Err(e) => {
                dbus_why = format!("systemd-hang request tracking is off: {e}");
                dbus_path = RequestPath::Off;
                tracing::warn!("{dbus_why}");
                None
            }
        },
    };
    // Without request tracking, the agent's own probes still watch the bus
    // and systemd.
    let mut health = match (&opts.dbus, &dbus) {
        (Some(d), None) => crate::dbus::probe::HealthProbes::new(d),
        _ => None,
    };
    let probe_paths = vec![ProbePath {
        part: "dbus_requests",
        path: dbus_path.name(),
        choices: &["socket_tracepoints", "syscalls", "off"],
        detail: dbus_why,
    }];
    // Connections to systemd that kubelet, CRI-O, containerd or dockerd
    // opened before we started: follow them from now on.
    let mut adopted = Vec::new();
    if let (Some(t), Some(s)) = (dbus.as_mut(), storage.as_ref()) {
        for (e, call) in t.adopt_existing(s.runtimes_at_start(), Time::now()) {
            tracing::info!(
                "following {}[{}] fd {} to {}, connected before start",
                call.comm,
                e.pid,
                e.fd,
                call.socket
            );
            adopted.push(call);
        }
    }
    let mut arming = Arming::new(opts.arm_percent, opts.disarm_after.as_millis() as u64);
    let auto = opts.fork_probe == ForkProbeMode::Auto
        && probes.state(FORK_FAILURES.name) == Some(ProbeState::Standby);
    let counters = Arc::new(Counters::default());
    let mut events = match probes.take_events() {
        Some(rb) => match ringbuf::Reader::new(rb, QUEUE, counters.clone()) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::error!("kernel events are unavailable: cannot read the ring buffer: {e}");
                None
            }
        },
        None => {
            tracing::error!(
                "the eBPF object has no events ring buffer; kernel events are unavailable"
            );
            None
        }
    };

    // kubelet and runtime sources: tasks on this thread, one bounded queue.
    let (pleg_tx, mut pleg_rx) = crate::sources::ObsSender::channel();
    opts.pleg_sources.clone().spawn(&pleg_tx);

    let mut ctx = NodeContext::new(&opts.root);
    // What this run can rule out: a finding says only what was checked.
    let mut engine = opts.engine.clone();
    engine.checks = crate::model::settings::KernelChecks {
        pid_exhaustion: true,
        storage_hang: storage.is_some(),
        systemd_hang: opts.dbus.is_some() && (dbus.is_some() || health.is_some()),
    };
    let recorder = match &opts.record {
        Some(path) => Some(Recorder::create(path, {
            let mut h = Header::new(&engine, opts.node_name.clone(), probes::kernel_release());
            h.remediation = Some(opts.remediation.clone());
            h
        })?),
        None => None,
    };
    let remediation = remediator(&mut opts);
    let mut diag = Diagnoser::new(engine, recorder).with_remediation(remediation);
    for call in adopted {
        diag.observe(Observation::SocketCall(call), sink);
    }
    let clock = MonotonicClock::new();

    sink.emit(&Record::Ready(Ready {
        at: Time::now(),
        version: env!("CARGO_PKG_VERSION"),
        kernel: probes::kernel_release(),
        probes: probes.statuses.clone(),
        probe_paths: probe_paths.clone(),
        pids_hierarchy: ctx
            .pids
            .as_ref()
            .map(|h| format!("{} ({:?})", h.mount.display(), h.version).to_lowercase()),
        node: opts.node_name.clone(),
        outputs: opts.outputs.clone(),
        recording: opts.record.as_ref().map(|p| p.display().to_string()),
        systemd_sockets: dbus.as_ref().map(|t| t.sockets().to_vec()),
    }));
    // Loading parsed the kernel's BTF (megabytes, several times) and the
    // eBPF object; glibc keeps the freed heap unless asked to give it back.
    // (musl's allocator, in the static build, unmaps freed memory itself.)
    // SAFETY: malloc_trim only releases free memory.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0)
    };
    if probes.state(FORK_FAILURES.name) == Some(ProbeState::Unavailable) {
        tracing::warn!(
            "fork failures are only seen through pids.events polling (cgroup limits only)"
        );
    }
    // First sample: baseline of every pids cgroup's rejection counter.
    let now = Time::now();
    let first = ctx.pid_limits(now);
    let pressure = arming.sample_pressure(&first);
    // The live status line (a terminal): drawn about once a second.
    let live = sink.wants_status();
    let warn_percent = opts.engine.warn_percent;
    let mut polled = Polled {
        limits: status::fullest_limits(&first, warn_percent),
        blocked: storage.as_ref().map(|_| status::Blocked::default()),
    };
    let pleg_followed = opts.pleg_sources.any();
    let mut status_tick = tokio::time::interval(Duration::from_secs(1));
    status_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    diag.observe(Observation::PidLimits(first), sink);
    apply_arming(auto, &mut arming, &mut probes, sink, now, pressure);

    let mut poll = tokio::time::interval(opts.poll_interval);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    poll.tick().await;
    let deadline = opts.duration.map(|d| Instant::now() + d);
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;

    loop {
        tokio::select! {
            ev = async {
                match events.as_mut() {
                    Some(r) => r.next().await,
                    None => std::future::pending().await,
                }
            } => match ev {
                Ok(ev) => on_event(ev, &mut ctx, &clock, &mut diag, dbus.as_mut(), auto, &mut arming, &mut probes, sink),
                Err(e) => {
                    tracing::error!("ring buffer reader stopped: {e}");
                    break;
                }
            },
            Some(obs) = pleg_rx.recv() => diag.observe(obs, sink),
            _ = poll.tick() => {
                // Evidence already in the kernel goes to the engine before the
                // sample: a failure counted in `pids.events` is reported with
                // the process its ring-buffer event names, never ahead of it.
                for ev in events.iter_mut().flat_map(ringbuf::Reader::catch_up) {
                    on_event(ev, &mut ctx, &clock, &mut diag, dbus.as_mut(), auto, &mut arming, &mut probes, sink);
                }
                // After the catch-up: every event handed over is older.
                let now = Time::now();
                let sample = ctx.pid_limits(now);
                let mut pressure = arming.sample_pressure(&sample);
                if live {
                    polled.limits = status::fullest_limits(&sample, warn_percent);
                }
                diag.observe(Observation::PidLimits(sample), sink);
                if let Some(s) = storage.as_mut() {
                    let blocked = s.sweep(now);
                    polled.blocked = Some(status::Blocked::of(&blocked));
                    diag.observe(Observation::BlockedTasks(blocked), sink);
                }
                if let Some(t) = dbus.as_mut() {
                    for call in t.prune(now) {
                        diag.observe(Observation::SocketCall(call), sink);
                    }
                    if let Some(q) = t.sweep(now) {
                        diag.observe(Observation::SocketQueues(q), sink);
                    }
                    spawn_bus_probes(t.probes_due(now), t.probe_timeout(), &pleg_tx);
                }
                if let Some(h) = health.as_mut() {
                    spawn_bus_probes(h.due(now), h.timeout(), &pleg_tx);
                }
                diag.tick(now, sink);
                if pressure.is_none() && diag.engine.has_active_cause(Cause::PidExhaustion) {
                    pressure = Some("a PID-exhaustion finding is active".into());
                }
                apply_arming(auto, &mut arming, &mut probes, sink, now, pressure);
                sink.stats(&Stats {
                    probes: &probes.statuses,
                    paths: &probe_paths,
                    events: Counters::get(&counters.events),
                    drops: Drops {
                        findings_refused: diag.engine.findings_refused(),
                        ..drops(&probes, &counters, pleg_tx.drops(), storage.is_some())
                    },
                });
            }
            _ = status_tick.tick(), if live && sink.wants_status() => {
                let snap = status_snapshot(started_at.elapsed(), &probes, &diag, pleg_followed, dbus.as_ref(), &polled, Time::now());
                sink.status(&snap);
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break,
        }
    }

    let end = Time::now();
    let summary = Summary {
        at: end,
        duration_s: end.secs_since(started),
        events: Counters::get(&counters.events),
        findings: diag.findings_total(),
        warnings: diag.warnings,
        drops: Drops {
            findings_refused: diag.engine.findings_refused(),
            ..drops(&probes, &counters, pleg_tx.drops(), storage.is_some())
        },
        recorded: diag.recorded_lines(),
        active: diag.engine.active(),
    };
    sink.emit(&Record::Summary(summary.clone()));
    Ok(summary)
}
