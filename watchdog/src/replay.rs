//! `watchdog replay`: diagnose a recorded observation stream offline, with
//! the same engine and outputs as a live session. Deterministic: the
//! engine's clock is the recording's.
use std::path::Path;

use serde::Serialize;

use crate::{
    agent::diagnoser::Diagnoser,
    model::Time,
    recording::{self, Line},
    remediation::{Mode, PolicyConfig, Remediator, ReplayExecutor},
    sinks::{Drops, Record, Sink, Summary},
};

/// First record of a replay: what is being replayed.
#[derive(Clone, Debug, Serialize)]
pub struct ReplayInfo {
    pub file: String,
    /// watchdog version that recorded it.
    pub recorded_by: String,
    pub started: Time,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub kernel: String,
    /// Observations and ticks in the file.
    pub inputs: usize,
    /// The last line was cut short (recorder killed mid-write) and skipped.
    pub truncated_tail: bool,
}

pub fn replay(path: &Path, sink: &mut dyn Sink) -> anyhow::Result<Summary> {
    let rec = if crate::bundle::is_bundle(path) {
        crate::bundle::read_recording(path)?
    } else {
        recording::read(path)?
    };
    sink.emit(&Record::Replay(ReplayInfo {
        file: path.display().to_string(),
        recorded_by: rec.header.version.clone(),
        started: rec.header.started,
        node: rec.header.node.clone(),
        kernel: rec.header.kernel.clone(),
        inputs: rec.inputs.len(),
        truncated_tail: rec.truncated_tail,
    }));
    // The session's policy (the default for older recordings), planning
    // only: a replay acts on nothing.
    let policy = rec.header.remediation.clone().unwrap_or_default();
    let remediation = (policy.mode != Mode::Off).then(|| {
        Remediator::new(
            PolicyConfig {
                mode: Mode::DryRun,
                ..policy
            },
            Box::new(ReplayExecutor),
        )
    });
    let mut diag = Diagnoser::new(rec.header.engine.clone(), None).with_remediation(remediation);
    let mut last = rec.header.started;
    let mut observations = 0u64;
    for input in rec.inputs {
        match input {
            Line::Observe(o) => {
                last = last.max(o.at());
                observations += 1;
                diag.observe(o, sink);
            }
            Line::Tick(t) => {
                last = last.max(t);
                diag.tick(t, sink);
            }
            Line::Recording(_) => {
                anyhow::bail!(
                    "{}: a second recording header inside the file",
                    path.display()
                )
            }
        }
    }
    let summary = Summary {
        at: last,
        duration_s: last.secs_since(rec.header.started),
        events: observations,
        findings: diag.findings_total(),
        warnings: diag.warnings,
        drops: Drops::default(),
        recorded: None,
        active: diag.engine.active(),
    };
    sink.emit(&Record::Summary(summary.clone()));
    Ok(summary)
}
