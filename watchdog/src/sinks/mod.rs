//! Where reports go: a person's terminal or JSON lines. Every output record
//! is a [`Record`]; its `type` field names the kind.
pub mod json;
pub mod storage;
pub mod terminal;

use serde::Serialize;

use crate::{
    diagnosis::{Finding, Warning},
    probes::{ProbeState, ProbeStatus},
    time::Time,
};

/// Drop counters at every hop, reported in the summary.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Drops {
    /// Events the probes could not reserve in the ring buffer.
    pub kernel: u64,
    /// Decoded events dropped because the engine's queue was full.
    pub userspace: u64,
    /// Ring-buffer records that did not decode.
    pub decode_errors: u64,
    /// Failed inserts of the storage probes' maps (full maps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage: Option<crate::storage::StorageDrops>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Ready {
    pub at: Time,
    pub version: &'static str,
    pub kernel: String,
    pub probes: Vec<ProbeStatus>,
    /// Where the pids controller's hierarchy is, e.g. `/sys/fs/cgroup/pids (v1)`.
    pub pids_hierarchy: Option<String>,
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

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    Ready(Ready),
    Probe(ProbeChange),
    Finding(Box<Finding>),
    Warning(Warning),
    Summary(Summary),
}

pub trait Sink {
    fn emit(&mut self, record: &Record);
}

/// Collects records (tests).
#[derive(Default)]
pub struct Capture(pub Vec<Record>);

impl Sink for Capture {
    fn emit(&mut self, record: &Record) {
        self.0.push(record.clone());
    }
}
