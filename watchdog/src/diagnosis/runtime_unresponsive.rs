//! `runtime_unresponsive`: the container runtime is stuck (PLEG's relist is
//! stalled or past kubelet's threshold, runtime calls hang) and no kernel
//! cause is proven. It is the engine's fallback: when a kernel-level finding
//! (PID exhaustion, storage hang, systemd hang) becomes active, this finding
//! resolves as "explained by" it, since that finding carries the PLEG link.

use super::{Book, Detector};
use crate::model::{
    Observation, Time,
    finding::{
        Cause, Confidence, Detail, Evidence, Finding, FindingId, FindingStatus, Remedy, Report,
        pleg::{PlegEstimate, PlegStatus},
        runtime::RuntimeDetail,
    },
    settings::{EngineConfig, KernelChecks},
};

const MAX_EVIDENCE: usize = 8;

pub struct RuntimeUnresponsive {
    cfg: EngineConfig,
    /// When the runtime last looked stuck, while a finding is active.
    last_bad: Option<Time>,
}

fn id() -> FindingId {
    FindingId::new(Cause::RuntimeUnresponsive, "runtime")
}

fn stuck(e: &PlegEstimate) -> bool {
    matches!(e.status, PlegStatus::Stalled | PlegStatus::Unhealthy) || !e.hung.is_empty()
}

fn summary(e: &PlegEstimate, checks: &KernelChecks) -> String {
    let mut parts = Vec::new();
    if let Some(s) = e.seconds_since_relist {
        parts.push(format!(
            "PLEG relist stale for {s:.0} s{}",
            e.source
                .map(|src| format!(" ({})", src.name()))
                .unwrap_or_default()
        ));
    }
    if !e.hung.is_empty() {
        let calls: Vec<String> = e
            .hung
            .iter()
            .take(3)
            .map(|h| {
                format!(
                    "{} hung {:.0} s",
                    h.describe(),
                    h.elapsed_ms as f64 / 1000.0
                )
            })
            .collect();
        parts.push(format!("runtime calls not answering: {}", calls.join(", ")));
    }
    if e.kubelet_reports_unhealthy {
        parts.push("kubelet reports PLEG unhealthy".into());
    } else if let Some(p) = e.predicted_unhealthy_in_s {
        if p <= 0.0 {
            parts.push(format!("past kubelet's {:.0} s threshold", e.threshold_s));
        } else {
            parts.push(format!("kubelet reports PLEG unhealthy in ~{p:.0} s"));
        }
    }
    let (checked, unchecked) = checks.split();
    let mut ruled_out = if checked.is_empty() {
        "no kernel cause checked".to_owned()
    } else {
        format!("no kernel cause found (no {})", list(&checked, "or"))
    };
    if !unchecked.is_empty() {
        ruled_out.push_str(&format!("; not checked: {}", list(&unchecked, "and")));
    }
    let runtime = match (&e.runtime, &e.runtime_endpoint) {
        (Some(r), Some(ep)) => format!("container runtime {r} at {ep}"),
        (Some(r), None) => format!("container runtime {r}"),
        _ => "container runtime".to_owned(),
    };
    if e.hung.is_empty() {
        // Only kubelet's staleness: the runtime itself was not seen hanging.
        let relist = match &e.runtime {
            Some(_) => format!("{runtime} answers the agent's relist"),
            None => "the runtime was not checked (no relist)".to_owned(),
        };
        let state = match e.status {
            PlegStatus::Unhealthy => "PLEG unhealthy",
            _ => "PLEG stalled",
        };
        return format!(
            "{state}, cause not determined: {}; {relist}; {ruled_out}",
            parts.join("; ")
        );
    }
    format!("{runtime} unresponsive: {}; {ruled_out}", parts.join("; "))
}

/// `a, b or c` (`word` = "or"), `a and b`.
fn list(v: &[&str], word: &str) -> String {
    match v {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [init @ .., last] => format!("{} {word} {last}", init.join(", ")),
    }
}

const REMEDY: &str = "Find what the runtime waits on: dump its goroutines (SIGUSR1 to dockerd writes them to its log; containerd: `ctr pprof goroutines`), check the hung container's mounts and its shim; restart the runtime only as a last resort (running containers survive a dockerd restart only with live-restore).";

impl RuntimeUnresponsive {
    pub fn new(cfg: EngineConfig) -> Self {
        Self {
            cfg,
            last_bad: None,
        }
    }

    /// A new PLEG estimate; `kernel_causes` are the ids of active
    /// kernel-level findings.
    fn estimate(
        &mut self,
        e: &PlegEstimate,
        kernel_causes: &[FindingId],
        book: &mut Book,
    ) -> Vec<Report> {
        if !kernel_causes.is_empty() {
            let why = format!(
                "explained by {}",
                kernel_causes
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            return self.resolve(e.at, why, book);
        }
        if !stuck(e) {
            return self.resolve(e.at, "the runtime answers again".into(), book);
        }
        let detail = RuntimeDetail {
            seconds_since_relist: e.seconds_since_relist,
            source: e.source,
            threshold_s: e.threshold_s,
            predicted_unhealthy_in_s: e.predicted_unhealthy_in_s,
            kubelet_reports_unhealthy: e.kubelet_reports_unhealthy,
            runtime: e.runtime.clone(),
            runtime_endpoint: e.runtime_endpoint.clone(),
            hung: e.hung.clone(),
            kubelet_errors: e.kubelet_errors.clone(),
        };
        // A hung call of the agent's own is the runtime seen hanging; kubelet's
        // staleness alone says PLEG is stuck, not why.
        let confidence = if !e.hung.is_empty() {
            Confidence::Likely
        } else {
            Confidence::Unknown
        };
        let text = summary(e, &self.cfg.checks);
        let evidence = Evidence {
            at: e.at,
            what: e.message.clone(),
        };
        self.last_bad = Some(e.at);
        let id = id();
        let actions = helper_kills(&e.hung);
        if !book.contains(&id) {
            return book
                .open(Finding {
                    cause: Cause::RuntimeUnresponsive,
                    status: FindingStatus::Active,
                    id,
                    summary: text,
                    confidence,
                    first_seen: e.at,
                    last_seen: e.at,
                    resolved_at: None,
                    duration_s: None,
                    evidence: vec![evidence],
                    timeline: Vec::new(),
                    concurrent: Vec::new(),
                    pleg: None,
                    remedy: Remedy::new(REMEDY, actions),
                    detail: Detail::Runtime(detail),
                })
                .map(|f| Report::Finding(Box::new(f)))
                .into_iter()
                .collect();
        }
        let changed = book.get(&id).is_some_and(|f| f.summary != text);
        if let Some(f) = book.change(&id, changed) {
            f.last_seen = e.at;
            if changed {
                if f.evidence.len() >= MAX_EVIDENCE {
                    f.evidence.remove(1);
                }
                f.evidence.push(evidence);
            }
            f.summary = text;
            f.confidence = confidence;
            f.detail = Detail::Runtime(detail);
            if !actions.is_empty() {
                f.remedy = Remedy::new(REMEDY, actions);
            }
        }
        Self::flush(e.at, book)
    }

    /// Reports a new summary once an update is due.
    fn flush(now: Time, book: &mut Book) -> Vec<Report> {
        book.flush(&id(), now, |_| {})
            .map(|f| vec![Report::Finding(Box::new(f))])
            .unwrap_or_default()
    }

    fn resolve(&mut self, now: Time, why: String, book: &mut Book) -> Vec<Report> {
        self.last_bad = None;
        book.resolve(&id(), now, None, |f, d| {
            format!("resolved after {d:.0} s ({why}): {}", f.summary)
        })
        .map(|f| vec![Report::Finding(Box::new(f))])
        .unwrap_or_default()
    }
}

impl Detector for RuntimeUnresponsive {
    fn observe(&mut self, _obs: &Observation, _book: &mut Book) -> Vec<Report> {
        Vec::new()
    }

    fn tick(&mut self, _now: Time, _book: &mut Book) -> Vec<Report> {
        Vec::new()
    }

    /// Fed by the PLEG estimates; without one, a tick resolves the finding
    /// after `resolve_after` without a stuck estimate (the sources went
    /// quiet), else reports what changed when due.
    fn pleg(
        &mut self,
        estimate: Option<(&PlegEstimate, &[FindingId])>,
        now: Time,
        book: &mut Book,
    ) -> Vec<Report> {
        match (estimate, self.last_bad) {
            (Some((e, kernel)), _) => self.estimate(e, kernel, book),
            (None, Some(bad)) if now.millis_since(bad) >= self.cfg.resolve_after_ms => {
                self.resolve(now, "no sign of a stuck runtime since".into(), book)
            }
            (None, Some(_)) => Self::flush(now, book),
            (None, None) => Vec::new(),
        }
    }
}

/// `kill_process` of each runc/crun a hung call may wait behind (alive
/// since before the call, its container's id in its command line; named by
/// pid and start time), the longest-running first, at most 3. Shims are
/// never named (killing one left Docker showing stale state: moby #43491).
fn helper_kills(
    hung: &[crate::model::kubelet::HungCall],
) -> Vec<crate::model::finding::RemedyAction> {
    let mut procs: Vec<&crate::model::kubelet::StuckProcess> =
        hung.iter().flat_map(|h| h.processes.iter()).collect();
    procs.sort_by_key(|p| std::cmp::Reverse(p.age_ms));
    procs.dedup_by_key(|p| (p.pid, p.start));
    procs
        .into_iter()
        .take(3)
        .map(|p| crate::model::finding::RemedyAction::KillProcess {
            pid: p.pid,
            comm: p.comm.clone(),
            start: p.start,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::diagnosis::Engine;
    use crate::model::{
        Observation, Time,
        finding::{Cause, Confidence, Report},
        kubelet::KubeletMetrics,
        settings::{EngineConfig, KernelChecks},
    };

    const T0: Time = Time(1_785_000_000_000);

    fn page(at_s: u64, seen_s: u64) -> Observation {
        Observation::KubeletMetrics(Box::new(KubeletMetrics {
            at: T0.plus_millis(at_s * 1000),
            pleg_last_seen: Some(T0.plus_millis(seen_s * 1000)),
            process_start: None,
            relist_duration: None,
            relist_interval: None,
            runtime_operations: BTreeMap::new(),
            unparseable_lines: 0,
            evented_connections: None,
            evented_connection_errors: None,
        }))
    }

    /// kubelet's stale PLEG with no relist and no kernel check: the finding
    /// says what it could not check, and claims no cause.
    #[test]
    fn stale_pleg_with_nothing_else_checked_is_cause_not_determined() {
        let cfg = EngineConfig {
            checks: KernelChecks {
                pid_exhaustion: false,
                storage_hang: false,
                systemd_hang: false,
            },
            ..EngineConfig::default()
        };
        let mut e = Engine::new(cfg);
        let mut found = None;
        for s in (0..=200).step_by(5) {
            for r in e.observe(&page(s, 0)) {
                if let Report::Finding(f) = r
                    && f.cause == Cause::RuntimeUnresponsive
                {
                    found = Some(f);
                }
            }
        }
        let f = found.expect("a finding");
        assert!(
            f.summary
                .starts_with("PLEG unhealthy, cause not determined"),
            "{}",
            f.summary
        );
        assert!(
            f.summary.contains("the runtime was not checked"),
            "{}",
            f.summary
        );
        assert!(
            f.summary.contains("no kernel cause checked"),
            "{}",
            f.summary
        );
        assert!(
            f.summary
                .contains("not checked: PID exhaustion, storage hang and systemd hang"),
            "{}",
            f.summary
        );
        assert!(
            f.summary.contains("past kubelet's 180 s threshold"),
            "{}",
            f.summary
        );
        assert!(!f.summary.contains("in ~0 s"), "{}", f.summary);
        assert_eq!(f.confidence, Confidence::Unknown);
        let link = f.pleg.expect("a PLEG link");
        assert!(!link.message.contains("explained by"), "{}", link.message);
    }

    /// The runc/crun a hung call may wait behind become `kill_process`
    /// rungs, by pid and start time, the longest-running first, each once,
    /// at most three.
    #[test]
    fn helpers_of_hung_calls_are_killed_by_pid_and_start_time() {
        use crate::model::finding::RemedyAction;
        use crate::model::kubelet::{HungCall, StuckProcess};
        let p = |pid, age_ms| StuckProcess {
            pid,
            comm: "runc".into(),
            start: u64::from(pid) * 10,
            age_ms,
        };
        let call = |processes| HungCall {
            call: "inspect".into(),
            operation: Some("ContainerInspect".into()),
            container_id: Some("c".repeat(64)),
            container_name: None,
            pod: None,
            since: T0,
            elapsed_ms: 5_000,
            processes,
        };
        let actions = super::helper_kills(&[
            call(vec![p(10, 9_000), p(11, 60_000)]),
            call(vec![p(11, 60_000), p(12, 7_000), p(13, 6_000)]),
        ]);
        assert_eq!(
            actions,
            vec![
                RemedyAction::KillProcess {
                    pid: 11,
                    comm: "runc".into(),
                    start: 110
                },
                RemedyAction::KillProcess {
                    pid: 10,
                    comm: "runc".into(),
                    start: 100
                },
                RemedyAction::KillProcess {
                    pid: 12,
                    comm: "runc".into(),
                    start: 120
                },
            ]
        );
        assert!(super::helper_kills(&[call(Vec::new())]).is_empty());
    }
}
