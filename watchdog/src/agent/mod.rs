//! The live session: probes -> ring buffer -> decoding -> node context ->
//! observations -> diagnosis engine -> sinks.
//!
//! It runs on one thread (a current-thread tokio runtime built before any
//! probe attaches), so it needs no new thread or process while the node is
//! out of PIDs: nothing here forks, and tokio's blocking pool is never used.
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
    observation::Observation,
    paths,
    probes::{self, FORK_FAILURES, KernelLayout, Probes},
    ringbuf::{self, Counters},
    sinks::{Drops, Ready, Record, Sink, Summary},
    time::{MonotonicClock, Time},
};

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
}

impl Default for TraceOptions {
    fn default() -> Self {
        Self {
            duration: None,
            poll_interval: Duration::from_secs(1),
            engine: EngineConfig::default(),
            root: "/".into(),
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
    let mut probes = Probes::load(&layout, &[FORK_FAILURES])?;
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
    if !probes.attached(FORK_FAILURES.name) {
        tracing::warn!(
            "fork failures are only seen through pids.events polling (cgroup limits only)"
        );
    }
    // First sample: baseline of every pids cgroup's rejection counter.
    let first = ctx.pid_limits(Time::now());
    emit_reports(
        sink,
        engine.observe(&Observation::PidLimits(first)),
        &mut findings,
        &mut warnings,
    );

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
                        let obs = Observation::ForkFailed(ctx.fork_failed(&f, clock.to_time(f.header.ts_ns)));
                        emit_reports(sink, engine.observe(&obs), &mut findings, &mut warnings);
                    }
                }
            }
            _ = poll.tick() => {
                let now = Time::now();
                let obs = Observation::PidLimits(ctx.pid_limits(now));
                emit_reports(sink, engine.observe(&obs), &mut findings, &mut warnings);
                emit_reports(sink, engine.tick(now), &mut findings, &mut warnings);
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
        },
        active: engine.active(),
    };
    sink.emit(&Record::Summary(summary.clone()));
    Ok(summary)
}
