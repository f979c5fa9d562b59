//! `watchdog trace`: a one-shot tracing session for an incident.
use std::{process::ExitCode, time::Duration};

use crate::{
    agent::{self, TraceOptions, arming::ForkProbeMode},
    diagnosis::EngineConfig,
    sinks::{Sink, json::JsonLines, terminal::Terminal},
    storage::{StorageOptions, parse_comms},
};

#[derive(clap::Args)]
pub struct Args {
    /// Stop after this long (e.g. 30s, 5m); default: until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Write one JSON object per line (each with a "type") instead of text.
    #[arg(long)]
    json: bool,
    /// How often limits are sampled and findings re-evaluated.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// Warn when a PID limit is at least this full (percent).
    #[arg(long, default_value_t = 90.0, value_parser = percent)]
    warn_percent: f64,
    /// A finding resolves after this long without new evidence.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    resolve_after: Duration,
    /// When the fork-failure probe (a sys_exit hook, which slows every
    /// syscall of the node by a few percent) is attached: auto = only while a
    /// PID limit is under pressure.
    #[arg(long, value_enum, default_value = "auto")]
    fork_probe: ForkProbeMode,
    /// `--fork-probe auto` attaches it when a PID limit is this full (percent).
    #[arg(long, default_value_t = 75.0, value_parser = percent)]
    arm_percent: f64,
    /// A syscall of a watched process, or an uninterruptible sleep of any
    /// task, still blocked after this long is a storage hang.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    hang_threshold: Duration,
    /// Process names whose syscalls are tracked, with their descendants
    /// (comma-separated or repeated; a trailing '*' matches a prefix).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kubelet,dockerd,containerd,containerd-shim*,runc,crun,crio,conmon"
    )]
    watch_comm: Vec<String>,
    /// Do not attach the storage-hang probes.
    #[arg(long)]
    no_storage: bool,
}

fn percent(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|e| format!("{s:?} is not a number: {e}"))?;
    if (1.0..=100.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not between 1 and 100"))
    }
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    if a.poll_interval.is_zero() {
        anyhow::bail!("--poll-interval must be greater than zero");
    }
    if a.hang_threshold < Duration::from_millis(100) {
        anyhow::bail!("--hang-threshold must be at least 100ms");
    }
    let storage = if a.no_storage {
        None
    } else {
        Some(StorageOptions {
            threshold_ms: a.hang_threshold.as_millis() as u64,
            watch_comms: parse_comms(&a.watch_comm)?,
        })
    };
    let opts = TraceOptions {
        storage,
        duration: a.duration,
        poll_interval: a.poll_interval,
        engine: EngineConfig {
            warn_percent: a.warn_percent,
            warn_clear_percent: (a.warn_percent - 5.0).max(0.0),
            resolve_after_ms: a.resolve_after.as_millis() as u64,
            ..EngineConfig::default()
        },
        fork_probe: a.fork_probe,
        arm_percent: a.arm_percent,
        ..TraceOptions::default()
    };
    let stdout = std::io::stdout();
    let mut sink: Box<dyn Sink> = if a.json {
        Box::new(JsonLines::new(stdout.lock()))
    } else {
        Box::new(Terminal::new(stdout.lock()))
    };
    agent::trace(opts, sink.as_mut())?;
    Ok(ExitCode::SUCCESS)
}
