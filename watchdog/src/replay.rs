//! `watchdog replay`: diagnose a recorded observation stream offline, with
//! the same engine and outputs as a live session. Deterministic: the
//! engine's clock is the recording's.
use std::{io::BufRead, path::Path};

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

/// `f` on a stream of the recording at `path` (a plain file or a bundle).
fn with_stream<T>(
    path: &Path,
    f: impl FnOnce(recording::Stream<Box<dyn BufRead + '_>>) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    if crate::bundle::is_bundle(path) {
        crate::bundle::with_recording(path, f)
    } else {
        let file = std::fs::File::open(path).map_err(|source| recording::RecordingError::Open {
            path: path.to_owned(),
            source,
        })?;
        let input: Box<dyn BufRead + '_> = Box::new(std::io::BufReader::new(file));
        f(recording::Stream::open(input, path)?)
    }
}

/// Replays in two passes over the file, each one line at a time: the first
/// checks every line and counts the inputs (a broken file is refused before
/// any output), the second feeds the engine. Memory is the engine's state
/// and one line, whatever the file holds.
pub fn replay(path: &Path, sink: &mut dyn Sink) -> anyhow::Result<Summary> {
    let (header, inputs, truncated_tail) = with_stream(path, |mut s| {
        let mut n = 0usize;
        while let Some(l) = s.next_input() {
            l?;
            n += 1;
        }
        Ok((s.header.clone(), n, s.truncated_tail))
    })?;
    sink.emit(&Record::Replay(ReplayInfo {
        file: path.display().to_string(),
        recorded_by: header.version.clone(),
        started: header.started,
        node: header.node.clone(),
        kernel: header.kernel.clone(),
        inputs,
        truncated_tail,
    }));
    // The session's policy (the default for older recordings), planning
    // only: a replay acts on nothing.
    let policy = header.remediation.clone().unwrap_or_default();
    let remediation = (policy.mode != Mode::Off).then(|| {
        Remediator::new(
            PolicyConfig {
                mode: Mode::DryRun,
                ..policy
            },
            Box::new(ReplayExecutor),
        )
    });
    let mut diag = Diagnoser::new(header.engine.clone(), None).with_remediation(remediation);
    let mut last = header.started;
    let mut observations = 0u64;
    with_stream(path, |mut s| {
        while let Some(input) = s.next_input() {
            match input? {
                Line::Observe(o) => {
                    last = last.max(o.at());
                    observations += 1;
                    diag.observe(o, sink);
                }
                Line::Tick(t) => {
                    last = last.max(t);
                    diag.tick(t, sink);
                }
                // The stream refuses it already.
                Line::Recording(_) => {
                    anyhow::bail!("{}: a second recording header", path.display())
                }
            }
        }
        Ok(())
    })?;
    let summary = Summary {
        at: last,
        duration_s: last.secs_since(header.started),
        events: observations,
        findings: diag.findings_total(),
        warnings: diag.warnings,
        drops: Drops {
            findings_refused: diag.engine.findings_refused(),
            ..Drops::default()
        },
        recorded: None,
        active: diag.engine.active(),
    };
    sink.emit(&Record::Summary(summary.clone()));
    Ok(summary)
}
