//! The engine as the live session and replay drive it: every input is
//! recorded (with `--record`) before the engine sees it, and every report
//! goes to the sinks and is counted.
use std::collections::BTreeMap;

use crate::diagnosis::Engine;
use crate::model::finding::{Cause, FindingStatus, Report, WarningStatus};
use crate::model::settings::EngineConfig;
use crate::model::{Observation, Time};
use crate::recording::{Line, Recorder};
use crate::remediation::Remediator;
use crate::sinks::{Record, Sink};

pub struct Diagnoser {
    pub engine: Engine,
    recorder: Option<Recorder>,
    /// Distinct findings reported (first reports), by cause.
    pub findings: BTreeMap<Cause, u64>,
    pub warnings: u64,
    /// The remediation policy and its executor (None: off).
    remediation: Option<Remediator>,
}

impl Diagnoser {
    pub fn new(cfg: EngineConfig, recorder: Option<Recorder>) -> Self {
        Self {
            engine: Engine::new(cfg),
            recorder,
            findings: BTreeMap::new(),
            warnings: 0,
            remediation: None,
        }
    }

    /// Findings go to `r` too; its steps become `remediation` records.
    pub fn with_remediation(mut self, r: Option<Remediator>) -> Self {
        self.remediation = r;
        self
    }

    pub fn observe(&mut self, obs: Observation, sink: &mut dyn Sink) {
        match &obs {
            Observation::Source(s) => sink.emit(&Record::Source(s.clone())),
            Observation::BusProbe(p) => sink.emit(&Record::BusProbe(p.clone())),
            _ => {}
        }
        let reports = self.engine.observe(&obs);
        if let Some(r) = self.recorder.as_mut() {
            // Fork failures come in storms: they reach the file at the next
            // tick; anything else right away, so a killed agent loses nothing.
            let storm = matches!(obs, Observation::ForkFailed(_));
            r.write(&Line::Observe(obs));
            if !storm {
                r.flush();
            }
        }
        self.emit(reports, sink);
    }

    pub fn tick(&mut self, now: Time, sink: &mut dyn Sink) {
        if let Some(r) = self.recorder.as_mut() {
            r.write(&Line::Tick(now));
            r.flush();
        }
        let reports = self.engine.tick(now);
        self.emit(reports, sink);
        if let Some(r) = self.remediation.as_mut() {
            for step in r.tick(now) {
                sink.emit(&Record::Remediation(step));
            }
        }
    }

    pub fn findings_total(&self) -> u64 {
        self.findings.values().sum()
    }

    pub fn recorded_lines(&self) -> Option<u64> {
        self.recorder.as_ref().map(|r| r.lines)
    }

    fn emit(&mut self, reports: Vec<Report>, sink: &mut dyn Sink) {
        for r in reports {
            match r {
                Report::Finding(f) => {
                    if f.status == FindingStatus::Active {
                        *self.findings.entry(f.cause).or_default() += 1;
                    }
                    let steps = self
                        .remediation
                        .as_mut()
                        .map(|r| r.on_finding(&f))
                        .unwrap_or_default();
                    sink.emit(&Record::Finding(Box::new((*f).into())));
                    for step in steps {
                        sink.emit(&Record::Remediation(step));
                    }
                }
                Report::Warning(w) => {
                    if w.status == WarningStatus::Raised {
                        self.warnings += 1;
                    }
                    sink.emit(&Record::Warning(w));
                }
                Report::Pleg(p) => sink.emit(&Record::Pleg(p)),
            }
        }
    }
}
