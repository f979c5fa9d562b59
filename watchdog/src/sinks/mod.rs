//! Where reports go: a person's terminal or JSON lines. Every output record
//! is a [`Record`]; its `type` field names the kind.
pub mod json;
pub mod kubernetes;
pub mod metrics;
pub mod status;
pub mod storage;
pub mod systemd;
pub mod terminal;

use serde::Serialize;

use crate::model::Time;
use crate::model::finding::{Finding, Warning};
use crate::probes::{ProbePath, ProbeState, ProbeStatus};

/// Drop counters at every hop, reported in the summary.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Drops {
    /// Events the probes could not reserve in the ring buffer.
    pub kernel: u64,
    /// Decoded events dropped because the engine's queue was full.
    pub userspace: u64,
    /// Ring-buffer records that did not decode.
    pub decode_errors: u64,
    /// kubelet/runtime observations dropped because their queue was full.
    #[serde(default)]
    pub sources: u64,
    /// Failed inserts of the storage probes' maps (full maps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage: Option<crate::storage::StorageDrops>,
    /// New findings the engine refused because too many were active at
    /// once (a hostile or broken recording).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub findings_refused: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Clone, Debug, Serialize)]
pub struct Ready {
    pub at: Time,
    pub version: &'static str,
    pub kernel: String,
    pub probes: Vec<ProbeStatus>,
    /// Which way each part with a choice runs (e.g. `dbus_requests`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub probe_paths: Vec<ProbePath>,
    /// Where the pids controller's hierarchy is, e.g. `/sys/fs/cgroup/pids (v1)`.
    pub pids_hierarchy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Outputs besides these records, e.g. `metrics http://0.0.0.0:9102/metrics`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<String>,
    /// Where engine inputs are recorded (`--record`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recording: Option<String>,
    /// Socket paths whose connections are followed for systemd hangs
    /// (absent: the D-Bus tracking is off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub systemd_sockets: Option<Vec<String>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub at: Time,
    pub duration_s: f64,
    /// Kernel events received.
    pub events: u64,
    /// Distinct findings reported during the session.
    pub findings: u64,
    pub warnings: u64,
    pub drops: Drops,
    /// Lines written to the `--record` file, when recording.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded: Option<u64>,
    /// Findings still active at the end.
    pub active: Vec<Finding>,
}

/// A probe attached or detached during the session (fork probe in `auto`).
#[derive(Clone, Debug, Serialize)]
pub struct ProbeChange {
    pub at: Time,
    pub name: &'static str,
    pub status: ProbeState,
    pub reason: String,
}

/// A finding as the sinks get it: the engine's report, and the bundle
/// captured for it when the auto-bundler is on (the engine never names one:
/// the auto-bundler, a sink, attaches it).
#[derive(Clone, Debug, Serialize)]
pub struct FindingRecord {
    #[serde(flatten)]
    pub finding: Finding,
    /// The bundle of this finding: named as it goes active (`pending`),
    /// then `written`, `failed` or `skipped` on its later records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle: Option<crate::bundle::auto::BundleRef>,
}

impl From<Finding> for FindingRecord {
    fn from(finding: Finding) -> Self {
        Self {
            finding,
            bundle: None,
        }
    }
}

impl std::ops::Deref for FindingRecord {
    type Target = Finding;

    fn deref(&self) -> &Finding {
        &self.finding
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    Ready(Ready),
    Probe(ProbeChange),
    Finding(Box<FindingRecord>),
    Warning(Warning),
    /// PLEG health estimate.
    Pleg(Box<crate::model::finding::pleg::PlegEstimate>),
    /// A kubelet/runtime source became available or unavailable.
    Source(crate::model::kubelet::SourceStatus),
    Summary(Summary),
    /// First record of `watchdog replay`.
    Replay(crate::replay::ReplayInfo),
    /// A remediation step: planned, skipped, started, succeeded, failed or
    /// verified.
    Remediation(crate::remediation::RemediationRecord),
    /// A bundle captured for a finding (`--bundle-dir`), or why not.
    Bundle(crate::bundle::auto::BundleRecord),
    /// The result of one of the agent's own D-Bus probes (`Ping` of
    /// systemd, `GetId` of the bus), as the engine got it: bundles keep the
    /// latest in `systemd/probes.jsonl`. Not shown on the terminal (the
    /// systemd finding quotes the probe it used).
    BusProbe(crate::model::dbus::BusProbe),
}

pub trait Sink {
    fn emit(&mut self, record: &Record);
    /// Periodic agent health (every poll): probe states and counters. Only
    /// sinks that export state (metrics) care.
    fn stats(&mut self, _stats: &Stats<'_>) {}
    /// Whether this sink draws a live status line (a terminal): the agent
    /// then builds a [`status::StatusSnapshot`] about once a second.
    fn wants_status(&self) -> bool {
        false
    }
    /// The session's status as of now (only when [`Sink::wants_status`]).
    fn status(&mut self, _status: &status::StatusSnapshot) {}
}

/// The agent's own health, as of now.
pub struct Stats<'a> {
    pub probes: &'a [ProbeStatus],
    pub paths: &'a [ProbePath],
    /// Kernel events received so far.
    pub events: u64,
    pub drops: Drops,
}

/// Sends every record to several sinks.
#[derive(Default)]
pub struct Fanout(pub Vec<Box<dyn Sink>>);

impl Sink for Fanout {
    fn emit(&mut self, record: &Record) {
        for s in &mut self.0 {
            s.emit(record);
        }
    }

    fn stats(&mut self, stats: &Stats<'_>) {
        for s in &mut self.0 {
            s.stats(stats);
        }
    }

    fn wants_status(&self) -> bool {
        self.0.iter().any(|s| s.wants_status())
    }

    fn status(&mut self, status: &status::StatusSnapshot) {
        for s in &mut self.0 {
            if s.wants_status() {
                s.status(status);
            }
        }
    }
}

/// Collects records (tests).
#[derive(Default)]
pub struct Capture(pub Vec<Record>);

impl Sink for Capture {
    fn emit(&mut self, record: &Record) {
        self.0.push(record.clone());
    }
}

/// One terminal line for a PLEG estimate (plus the hung calls).
pub fn pleg_line(p: &crate::model::finding::pleg::PlegEstimate) -> String {
    let mut s = format!("[{}] PLEG    {}\n", p.at.hms(), p.message);
    for h in p.hung.iter().skip(1) {
        s.push_str(&format!(
            "    hung:          {} {} for {:.0} s\n",
            h.call,
            h.container_name
                .as_deref()
                .or(h.container_id.as_deref())
                .unwrap_or("(all)"),
            h.elapsed_ms as f64 / 1000.0
        ));
    }
    for e in &p.kubelet_errors {
        s.push_str(&format!("    kubelet:       {e}\n"));
    }
    s
}
