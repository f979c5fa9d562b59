//! The live session: probes -> ring buffer -> decoding -> node context ->
//! observations -> diagnosis engine -> sinks.
//!
//! It runs on one thread (a current-thread tokio runtime built before any
//! probe attaches), so it needs no new thread or process while the node is
//! out of PIDs: nothing here forks, and tokio's blocking pool is never used.
pub mod arming;

use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    time::{Instant, MissedTickBehavior},
};
use watchdog_common::decode::Event;

use crate::{
    context::NodeContext,
    diagnosis::{Engine, EngineConfig, Report},
    observation::{NprocUsage, Observation},
    paths,
    probes::{
        self, FORK_FAILURES, KernelLayout, NPROC_PRESSURE, ProbeState, Probes, STORAGE_PROBES,
    },
    ringbuf::{self, Counters},
    sinks::{Drops, ProbeChange, Ready, Record, Sink, Summary},
    time::{MonotonicClock, Time},
};
use arming::{Arming, Change, ForkProbeMode};

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
    /// Storage-hang detection; None leaves its probes unattached.
    pub storage: Option<crate::storage::StorageOptions>,
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
            storage: Some(crate::storage::StorageOptions::default()),
        }
    }
}

/// Run a tracing session until its duration ends or a signal arrives.
pub fn trace(opts: TraceOptions, sink: &mut dyn Sink) -> anyhow::Result<Summary> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(trace_async(opts, sink))
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

fn emit_reports(sink: &mut dyn Sink, reports: Vec<Report>, findings: &mut u64, warnings: &mut u64) {
    for r in reports {
        match r {
            Report::Finding(f) => {
                if f.status == crate::diagnosis::FindingStatus::Active {
                    *findings += 1;
                }
                sink.emit(&Record::Finding(f));
            }
            Report::Warning(w) => {
                if w.status == crate::diagnosis::WarningStatus::Raised {
                    *warnings += 1;
                }
                sink.emit(&Record::Warning(w));
            }
        }
    }
}

async fn trace_async(opts: TraceOptions, sink: &mut dyn Sink) -> anyhow::Result<Summary> {
    let started = Time::now();
    let layout = KernelLayout::from_btf(std::path::Path::new(paths::KERNEL_BTF));
    let (wanted, standby): (&[_], &[_]) = match opts.fork_probe {
        ForkProbeMode::Always => (&[FORK_FAILURES, NPROC_PRESSURE], &[]),
        ForkProbeMode::Auto => (&[NPROC_PRESSURE], &[FORK_FAILURES]),
        ForkProbeMode::Off => (&[NPROC_PRESSURE], &[]),
    };
    let wanted: Vec<_> = wanted
        .iter()
        .copied()
        .chain(opts.storage.iter().flat_map(|_| STORAGE_PROBES))
        .collect();
    let mut probes = Probes::load(&layout, &wanted, standby)?;
    let mut storage = opts
        .storage
        .as_ref()
        .and_then(|s| crate::storage::StorageTracker::start(&mut probes, &opts.root, s));
    let mut arming = Arming::new(opts.arm_percent, opts.disarm_after.as_millis() as u64);
    let auto = opts.fork_probe == ForkProbeMode::Auto
        && probes.state(FORK_FAILURES.name) == Some(ProbeState::Standby);
    let counters = Arc::new(Counters::default());
    let (tx, mut rx) = mpsc::channel::<Event>(QUEUE);
    if let Some(rb) = probes.take_events() {
        let c = counters.clone();
        tokio::spawn(async move {
            if let Err(e) = ringbuf::forward(rb, tx, c).await {
                tracing::error!("ring buffer reader stopped: {e}");
            }
        });
    } else {
        tracing::error!("the eBPF object has no events ring buffer; kernel events are unavailable");
    }

    let mut ctx = NodeContext::new(&opts.root);
    let mut engine = Engine::new(opts.engine.clone());
    let clock = MonotonicClock::new();
    let (mut findings, mut warnings) = (0u64, 0u64);

    sink.emit(&Record::Ready(Ready {
        at: Time::now(),
        version: env!("CARGO_PKG_VERSION"),
        kernel: probes::kernel_release(),
        probes: probes.statuses.clone(),
        pids_hierarchy: ctx
            .pids
            .as_ref()
            .map(|h| format!("{} ({:?})", h.mount.display(), h.version).to_lowercase()),
    }));
    if probes.state(FORK_FAILURES.name) == Some(ProbeState::Unavailable) {
        tracing::warn!(
            "fork failures are only seen through pids.events polling (cgroup limits only)"
        );
    }
    // First sample: baseline of every pids cgroup's rejection counter.
    let now = Time::now();
    let first = ctx.pid_limits(now);
    let pressure = arming.sample_pressure(&first);
    emit_reports(
        sink,
        engine.observe(&Observation::PidLimits(first)),
        &mut findings,
        &mut warnings,
    );
    apply_arming(auto, &mut arming, &mut probes, sink, now, pressure);

    let mut poll = tokio::time::interval(opts.poll_interval);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    poll.tick().await;
    let deadline = opts.duration.map(|d| Instant::now() + d);
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;

    loop {
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { break };
                match ev {
                    Event::ForkFailure(f) => {
                        let obs = Observation::ForkFailed(Box::new(ctx.fork_failed(&f, clock.to_time(f.header.ts_ns))));
                        emit_reports(sink, engine.observe(&obs), &mut findings, &mut warnings);
                    }
                    Event::NprocPressure(n) => {
                        let at = clock.to_time(n.header.ts_ns);
                        let comm_len = n.comm.iter().position(|&b| b == 0).unwrap_or(n.comm.len());
                        let usage = NprocUsage {
                            at,
                            uid: n.uid,
                            pid: n.pid,
                            comm: String::from_utf8_lossy(&n.comm[..comm_len]).into_owned(),
                            tasks: n.tasks,
                            limit: n.limit,
                        };
                        let why = format!("uid {} at {}/{} of its RLIMIT_NPROC", n.uid, n.tasks, n.limit);
                        emit_reports(sink, engine.observe(&Observation::NprocUsage(usage)), &mut findings, &mut warnings);
                        apply_arming(auto, &mut arming, &mut probes, sink, at, Some(why));
                    }
                }
            }
            _ = poll.tick() => {
                let now = Time::now();
                let sample = ctx.pid_limits(now);
                let mut pressure = arming.sample_pressure(&sample);
                emit_reports(sink, engine.observe(&Observation::PidLimits(sample)), &mut findings, &mut warnings);
                emit_reports(sink, engine.tick(now), &mut findings, &mut warnings);
                if let Some(s) = storage.as_mut() {
                    let blocked = Observation::BlockedTasks(s.sweep(now));
                    emit_reports(sink, engine.observe(&blocked), &mut findings, &mut warnings);
                }
                if pressure.is_none() && engine.has_active() {
                    pressure = Some("a PID-exhaustion finding is active".into());
                }
                apply_arming(auto, &mut arming, &mut probes, sink, now, pressure);
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
        findings,
        warnings,
        drops: Drops {
            kernel: probes.kernel_drops(),
            userspace: Counters::get(&counters.userspace_drops),
            decode_errors: Counters::get(&counters.decode_errors),
            storage: storage
                .as_ref()
                .map(|_| crate::storage::StorageDrops::read(&probes)),
        },
        active: engine.active(),
    };
    sink.emit(&Record::Summary(summary.clone()));
    Ok(summary)
}
