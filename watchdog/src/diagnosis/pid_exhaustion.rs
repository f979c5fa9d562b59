//! PID exhaustion: which of the four limits made fork/clone fail with EAGAIN,
//! who owns it, who is failing, who holds the tasks, and how close the other
//! limits are.
//!
//! The kernel (copy_process) checks, in this order: the user's RLIMIT_NPROC
//! (root and CAP_SYS_RESOURCE exempt), `kernel.threads-max` against
//! nr_threads, a free pid below `kernel.pid_max`, then every pids cgroup from
//! the task's up to the root. Attribution follows the same order, with the
//! pids.events counter as proof for the cgroup case.
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use super::{Book, Detector};
use crate::model::finding::pid::{CgroupUsage, Headroom, Limit, PidDetail, ProcessFailures, Usage};
use crate::model::finding::{
    Cause, Confidence, Detail, Evidence, Finding, FindingId, FindingStatus, Remedy, RemedyAction,
    Report, Warning, WarningStatus,
};
use crate::model::settings::EngineConfig;
use crate::model::{
    Consumer, ForkFailed, NprocUsage, Observation, PidLimits, PidsCgroupState, SystemPids, Time,
    cgroup::{ancestry, is_below},
    pod::PodRef,
};

/// Pids the kernel keeps for itself below pid_max (RESERVED_PIDS).
const RESERVED_PIDS: u64 = 300;
const MAX_PROCESSES: usize = 10;
const MAX_EVIDENCE: usize = 8;
const RATE_WINDOW_S: u64 = 10;

/// What a finding's derived fields are rebuilt from (the finding itself is in
/// the engine's [`Book`]).
#[derive(Clone, Default)]
struct Counts {
    /// (second, failures) buckets for the rate.
    buckets: VecDeque<(u64, u64)>,
    processes: BTreeMap<u32, ProcessFailures>,
}

fn finding_id(limit: Limit, owner: &str) -> FindingId {
    FindingId::new(Cause::PidExhaustion, format!("{}/{owner}", limit.name()))
}

pub struct PidExhaustion {
    cfg: EngineConfig,
    /// Per active finding.
    counts: HashMap<FindingId, Counts>,
    /// Last pids.events `max` count seen per cgroup path.
    events_seen: HashMap<String, u64>,
    /// Warnings currently raised, by (limit, owner).
    warnings: HashSet<(Limit, String)>,
    /// Last RLIMIT_NPROC pressure report per uid (the kernel only reports
    /// while a user is near its limit, so silence clears the warning).
    nproc_seen: HashMap<u32, Time>,
}

/// Which limit fired, who owns it, how sure we are, and why.
fn attribute(
    f: &ForkFailed,
    events_seen: &HashMap<String, u64>,
) -> (Limit, String, Confidence, String) {
    if let Some(u) = f.user
        && let Some(limit) = u.rlimit_nproc
        && u.tasks >= limit
    {
        return (
            Limit::RlimitNproc,
            format!("uid {}", u.uid),
            Confidence::Likely,
            format!(
                "uid {} holds {} tasks, RLIMIT_NPROC of {}[{}] is {}",
                u.uid, u.tasks, f.comm, f.pid, limit
            ),
        );
    }
    let s = f.system;
    if s.threads_max > 0 && s.threads >= s.threads_max {
        return (
            Limit::ThreadsMax,
            "system".into(),
            Confidence::Likely,
            format!(
                "{} tasks in the system, kernel.threads-max is {}",
                s.threads, s.threads_max
            ),
        );
    }
    if s.pid_max > 0 && s.threads + RESERVED_PIDS >= s.pid_max {
        return (
            Limit::PidMax,
            "system".into(),
            Confidence::Likely,
            format!(
                "{} tasks in the system, kernel.pid_max is {}",
                s.threads, s.pid_max
            ),
        );
    }
    // A rising rejection counter is proof. On cgroup v1 it rises in the
    // forking task's own cgroup, on v2 in the limited cgroup and every
    // ancestor: the limit that fired is the nearest one at or above it.
    if let Some(i) = f.cgroup_chain.iter().position(|c| {
        events_seen
            .get(&c.path)
            .is_some_and(|seen| c.events_max > *seen)
    }) {
        let counted = &f.cgroup_chain[i];
        let seen = events_seen[&counted.path];
        let c = limiting_cgroup(f.cgroup_chain[i..].iter()).unwrap_or(counted);
        let at = if c.path == counted.path {
            String::new()
        } else {
            format!(" (counted in {})", counted.path)
        };
        return (
            Limit::PidsCgroup,
            c.path.clone(),
            Confidence::Certain,
            format!(
                "pids.events max rose {seen} -> {}{at}; {} holds {} of pids.max {}",
                counted.events_max,
                c.path,
                c.current,
                c.max.map_or("max".into(), |m| m.to_string())
            ),
        );
    }
    if let Some(c) = f
        .cgroup_chain
        .iter()
        .find(|c| c.max.is_some_and(|m| c.current >= m))
    {
        return (
            Limit::PidsCgroup,
            c.path.clone(),
            Confidence::Likely,
            format!(
                "pids cgroup {} at its limit: pids.current {} of pids.max {}",
                c.path,
                c.current,
                c.max.unwrap_or(0)
            ),
        );
    }
    if let Some(c) = f
        .cgroup_chain
        .iter()
        .find(|c| c.events_max > 0 && !events_seen.contains_key(&c.path))
    {
        return (
            Limit::PidsCgroup,
            c.path.clone(),
            Confidence::Likely,
            format!(
                "pids.events of {} has counted {} rejections",
                c.path, c.events_max
            ),
        );
    }
    (
        Limit::Unknown,
        f.pids_cgroup.clone().unwrap_or_else(|| "unknown".into()),
        Confidence::Unknown,
        "no PID limit was at its maximum when read right after the failure".into(),
    )
}

/// The cgroup whose limit explains a rejection counted at the head of a
/// leaf-first chain: the nearest at its limit, else the nearest with a limit.
fn limiting_cgroup<'a>(
    chain: impl Iterator<Item = &'a PidsCgroupState> + Clone,
) -> Option<&'a PidsCgroupState> {
    chain
        .clone()
        .find(|c| c.max.is_some_and(|m| c.current >= m))
        .or_else(|| chain.into_iter().find(|c| c.max.is_some()))
}

fn headroom(f: &ForkFailed) -> Headroom {
    Headroom {
        pids_cgroups: f
            .cgroup_chain
            .iter()
            .filter_map(|c| {
                c.max.map(|m| CgroupUsage {
                    cgroup: c.path.clone(),
                    usage: Usage::new(c.current, m),
                })
            })
            .collect(),
        rlimit_nproc: f
            .user
            .and_then(|u| u.rlimit_nproc.map(|l| Usage::new(u.tasks, l))),
        threads_max: system_usage(f.system.threads, f.system.threads_max),
        pid_max: system_usage(f.system.threads, f.system.pid_max),
    }
}

fn system_usage(cur: u64, max: u64) -> Option<Usage> {
    (max > 0).then(|| Usage::new(cur, max))
}

/// `n` and the noun, plural unless `n` is 1 ("1 fork", "2 forks").
fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn remedy_text(limit: Limit, owner: &str, consumers: &[Consumer]) -> String {
    let top = consumers
        .first()
        .map(|c| {
            format!(
                " The largest holder is {}[{}] with {}.",
                c.comm,
                c.pid,
                count(c.threads, "task")
            )
        })
        .unwrap_or_default();
    match limit {
        Limit::PidsCgroup => format!(
            "Raise pids.max of {owner} (for a pod: kubelet's podPidsLimit; for a systemd unit: TasksMax=), or stop the task leak inside it.{top}"
        ),
        Limit::RlimitNproc => format!(
            "Raise RLIMIT_NPROC for {owner} (ulimit -u, LimitNPROC= in the unit, nproc in limits.conf), or stop the task leak of that user.{top}"
        ),
        Limit::ThreadsMax => format!("Raise kernel.threads-max, or find the task leak.{top}"),
        Limit::PidMax => format!("Raise kernel.pid_max (e.g. 4194304), or find the task leak.{top}"),
        Limit::Unknown => "fork fails with EAGAIN but no PID limit was full when read; check pids.events of the task's cgroups and the kernel log (`fork rejected by pids controller`).".into(),
    }
}

impl PidExhaustion {
    pub fn new(cfg: EngineConfig) -> Self {
        Self {
            cfg,
            counts: HashMap::new(),
            events_seen: HashMap::new(),
            warnings: HashSet::new(),
            nproc_seen: HashMap::new(),
        }
    }

    pub fn fork_failed(&mut self, f: &ForkFailed, book: &mut Book) -> Vec<Report> {
        let (limit, owner, confidence, why) = attribute(f, &self.events_seen);
        for c in &f.cgroup_chain {
            self.events_seen.insert(c.path.clone(), c.events_max);
        }
        let id = finding_id(limit, &owner);
        let is_new = !book.contains(&id);
        if is_new {
            self.counts.remove(&id);
        }
        let counts = match self.counts.get_mut(&id) {
            Some(c) => c,
            None => self.counts.entry(id.clone()).or_default(),
        };
        let mut fresh = is_new.then(|| new_finding(f, limit, &owner, confidence));
        let Some(finding) = fresh.as_mut().or_else(|| book.change(&id, true)) else {
            return Vec::new();
        };
        let fd = detail_mut(finding);

        // Counts, rate, processes.
        fd.failures += 1;
        let sec = f.at.0 / 1000;
        match counts.buckets.back_mut() {
            Some((s, n)) if *s == sec => *n += 1,
            _ => counts.buckets.push_back((sec, 1)),
        }
        while counts
            .buckets
            .front()
            .is_some_and(|(s, _)| *s + RATE_WINDOW_S <= sec)
        {
            counts.buckets.pop_front();
        }
        let p = counts
            .processes
            .entry(f.pid)
            .or_insert_with(|| ProcessFailures {
                pid: f.pid,
                comm: f.comm.clone(),
                uid: f.uid,
                failures: 0,
                thread_failures: 0,
            });
        p.failures += 1;
        p.thread_failures += u64::from(f.thread);

        fd.limits = headroom(f);
        if !f.consumers.is_empty() {
            fd.top_consumers = f.consumers.clone();
        }
        if fd.pod.is_none() {
            fd.pod = f.pod.clone();
        }
        finding.last_seen = f.at;
        if confidence == Confidence::Certain {
            finding.confidence = Confidence::Certain;
        }
        if finding.evidence.len() < MAX_EVIDENCE && !finding.evidence.iter().any(|e| e.what == why)
        {
            finding.evidence.push(Evidence {
                at: f.at,
                what: why,
            });
        }
        // Derived fields (sorted processes, summary) are rebuilt only when a
        // report goes out, not on every failure of a storm.
        match fresh {
            Some(mut finding) => {
                refresh(&mut finding, counts);
                match book.open(finding) {
                    Some(f) => vec![Report::Finding(Box::new(f))],
                    // Refused (too many active): nothing kept for it.
                    None => {
                        self.counts.remove(&id);
                        Vec::new()
                    }
                }
            }
            None => Vec::new(),
        }
    }

    pub fn limits(&mut self, l: &PidLimits, book: &mut Book) -> Vec<Report> {
        let mut out = Vec::new();
        // Rejections counted by the kernel since the last sample: proof of a
        // pids-cgroup exhaustion even when the probe missed the failures.
        // Only the deepest cgroups whose counter rose are causes (on v2 every
        // ancestor counts too); each is charged to the limit above it.
        let rising: Vec<(&PidsCgroupState, u64)> = l
            .cgroups
            .iter()
            .filter_map(|c| {
                let seen = self.events_seen.insert(c.path.clone(), c.events_max)?;
                (c.events_max > seen).then(|| (c, c.events_max - seen))
            })
            .collect();
        let by_path: HashMap<&str, &PidsCgroupState> =
            l.cgroups.iter().map(|c| (c.path.as_str(), c)).collect();
        for &(counted, delta) in &rising {
            if rising.iter().any(|(r, _)| is_below(&r.path, &counted.path)) {
                continue;
            }
            let chain: Vec<&PidsCgroupState> = ancestry(&counted.path)
                .iter()
                .filter_map(|p| by_path.get(p.as_str()).copied())
                .collect();
            let c = limiting_cgroup(chain.iter().copied()).unwrap_or(counted);
            let at = if c.path == counted.path {
                String::new()
            } else {
                format!(" (counted in {})", counted.path)
            };
            let why = format!(
                "pids.events max rose by {delta} to {}{at}; {} holds {} of {}",
                counted.events_max,
                c.path,
                c.current,
                c.max.map_or("max".into(), |m| m.to_string())
            );
            let id = finding_id(Limit::PidsCgroup, &c.path);
            match book.change(&id, true) {
                Some(finding) => {
                    let fd = detail_mut(finding);
                    *fd.kernel_rejections.get_or_insert(0) += delta;
                    finding.last_seen = l.at;
                    finding.confidence = Confidence::Certain;
                    if finding.evidence.len() < MAX_EVIDENCE {
                        finding.evidence.push(Evidence {
                            at: l.at,
                            what: why,
                        });
                    }
                }
                None => {
                    let counts = Counts::default();
                    let finding = finding_from_cgroup(id.clone(), c, l, delta, why, &counts);
                    if let Some(f) = book.open(finding) {
                        self.counts.insert(id, counts);
                        out.push(Report::Finding(Box::new(f)));
                    }
                }
            }
        }
        // Keep the culprit cgroups' usage and holders current.
        for id in book.ids(Cause::PidExhaustion) {
            let Some(finding) = book.change(&id, false) else {
                continue;
            };
            let fd = detail_mut(finding);
            if let Some(c) = fd
                .cgroup
                .as_ref()
                .and_then(|cg| l.consumers.get(cg))
                .filter(|c| !c.is_empty())
            {
                fd.top_consumers = c.clone();
            }
            for u in &mut fd.limits.pids_cgroups {
                if let Some(c) = l.cgroups.iter().find(|c| c.path == u.cgroup) {
                    u.usage = Usage::new(c.current, c.max.unwrap_or(u.usage.max));
                }
            }
        }
        out.extend(self.warnings(l));
        out
    }

    fn warnings(&mut self, l: &PidLimits) -> Vec<Report> {
        let mut levels: Vec<(Limit, String, Option<String>, u64, u64)> = l
            .cgroups
            .iter()
            .filter_map(|c| {
                c.max.map(|m| {
                    (
                        Limit::PidsCgroup,
                        c.path.clone(),
                        Some(c.path.clone()),
                        c.current,
                        m,
                    )
                })
            })
            .collect();
        let s: SystemPids = l.system;
        if s.threads_max > 0 {
            levels.push((
                Limit::ThreadsMax,
                "system".into(),
                None,
                s.threads,
                s.threads_max,
            ));
        }
        if s.pid_max > 0 {
            levels.push((Limit::PidMax, "system".into(), None, s.threads, s.pid_max));
        }
        let mut out = Vec::new();
        let mut present = HashSet::new();
        for (limit, owner, cgroup, cur, max) in levels {
            let pct = if max == 0 {
                0.0
            } else {
                cur as f64 * 100.0 / max as f64
            };
            let key = (limit, owner.clone());
            present.insert(key.clone());
            let raised = self.warnings.contains(&key);
            let what = match &cgroup {
                Some(c) => format!("pids cgroup {c}"),
                None => format!(
                    "kernel.{}",
                    if limit == Limit::ThreadsMax {
                        "threads-max"
                    } else {
                        "pid_max"
                    }
                ),
            };
            let status = if !raised && pct >= self.cfg.warn_percent {
                self.warnings.insert(key);
                WarningStatus::Raised
            } else if raised && pct < self.cfg.warn_clear_percent {
                self.warnings.remove(&key);
                WarningStatus::Cleared
            } else {
                continue;
            };
            let verb = if status == WarningStatus::Raised {
                "is near its limit"
            } else {
                "is back below its limit"
            };
            out.push(Report::Warning(Warning {
                cause: Cause::PidExhaustion,
                status,
                at: l.at,
                limit,
                cgroup,
                uid: None,
                current: cur,
                max,
                percent: (pct * 10.0).round() / 10.0,
                message: format!("{what} {verb}: {cur} of {max} tasks ({pct:.0}%)"),
            }));
        }
        // A limited cgroup that disappeared (pod deleted) clears its warning.
        let gone: Vec<_> = self
            .warnings
            .iter()
            .filter(|k| k.0 == Limit::PidsCgroup && !present.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            self.warnings.remove(&key);
            out.push(Report::Warning(Warning {
                cause: Cause::PidExhaustion,
                status: WarningStatus::Cleared,
                at: l.at,
                limit: key.0,
                cgroup: Some(key.1.clone()),
                uid: None,
                current: 0,
                max: 0,
                percent: 0.0,
                message: format!("pids cgroup {} is gone", key.1),
            }));
        }
        out
    }

    /// A user near its RLIMIT_NPROC: warn at the threshold.
    pub fn nproc_usage(&mut self, n: &NprocUsage) -> Vec<Report> {
        self.nproc_seen.insert(n.uid, n.at);
        let pct = if n.limit == 0 {
            0.0
        } else {
            n.tasks as f64 * 100.0 / n.limit as f64
        };
        let key = (Limit::RlimitNproc, format!("uid {}", n.uid));
        if pct < self.cfg.warn_percent || self.warnings.contains(&key) {
            return Vec::new();
        }
        self.warnings.insert(key);
        vec![Report::Warning(Warning {
            cause: Cause::PidExhaustion,
            status: WarningStatus::Raised,
            at: n.at,
            limit: Limit::RlimitNproc,
            cgroup: None,
            uid: Some(n.uid),
            current: n.tasks,
            max: n.limit,
            percent: (pct * 10.0).round() / 10.0,
            message: format!(
                "uid {} is near its RLIMIT_NPROC: {} of {} tasks ({pct:.0}%), last fork by {}[{}]",
                n.uid, n.tasks, n.limit, n.comm, n.pid
            ),
        })]
    }

    pub fn tick(&mut self, now: Time, book: &mut Book) -> Vec<Report> {
        let mut out = Vec::new();
        // RLIMIT_NPROC warnings clear after a quiet period.
        let quiet: Vec<u32> = self
            .nproc_seen
            .iter()
            .filter(|(_, at)| now.millis_since(**at) >= self.cfg.resolve_after_ms)
            .map(|(uid, _)| *uid)
            .collect();
        for uid in quiet {
            self.nproc_seen.remove(&uid);
            if self
                .warnings
                .remove(&(Limit::RlimitNproc, format!("uid {uid}")))
            {
                out.push(Report::Warning(Warning {
                    cause: Cause::PidExhaustion,
                    status: WarningStatus::Cleared,
                    at: now,
                    limit: Limit::RlimitNproc,
                    cgroup: None,
                    uid: Some(uid),
                    current: 0,
                    max: 0,
                    percent: 0.0,
                    message: format!(
                        "uid {uid} has not forked near its RLIMIT_NPROC for {} s",
                        self.cfg.resolve_after_ms / 1000
                    ),
                }));
            }
        }
        for id in book.ids(Cause::PidExhaustion) {
            let quiet = book
                .get(&id)
                .is_some_and(|f| now.millis_since(f.last_seen) >= self.cfg.resolve_after_ms);
            let report = if quiet {
                let counts = self.counts.remove(&id).unwrap_or_default();
                if let Some(f) = book.change(&id, false) {
                    refresh(f, &counts);
                }
                book.resolve(&id, now, None, |f, d| {
                    format!("resolved after {d:.0} s: {}", f.summary)
                })
            } else {
                let empty = Counts::default();
                let counts = self.counts.get(&id).unwrap_or(&empty);
                book.flush(&id, now, |f| refresh(f, counts))
            };
            out.extend(report.map(|f| Report::Finding(Box::new(f))));
        }
        out
    }
}

impl Detector for PidExhaustion {
    fn observe(&mut self, obs: &Observation, book: &mut Book) -> Vec<Report> {
        match obs {
            Observation::ForkFailed(f) => self.fork_failed(f, book),
            Observation::PidLimits(l) => self.limits(l, book),
            Observation::NprocUsage(n) => self.nproc_usage(n),
            _ => Vec::new(),
        }
    }

    fn tick(&mut self, now: Time, book: &mut Book) -> Vec<Report> {
        PidExhaustion::tick(self, now, book)
    }

    fn refresh(&self, f: &mut Finding) {
        if let Some(c) = self.counts.get(&f.id) {
            refresh(f, c);
        }
    }
}

fn detail_mut(f: &mut Finding) -> &mut PidDetail {
    match &mut f.detail {
        Detail::Pid(d) => d,
        _ => unreachable!("PID-exhaustion findings are only built with PID detail"),
    }
}

/// A new, active finding for `limit` owned by `owner`, first seen `at`.
fn blank(
    limit: Limit,
    owner: &str,
    at: Time,
    confidence: Confidence,
    cgroup: Option<String>,
    uid: u32,
    pod: Option<PodRef>,
) -> Finding {
    Finding {
        cause: Cause::PidExhaustion,
        status: FindingStatus::Active,
        id: finding_id(limit, owner),
        summary: String::new(),
        confidence,
        first_seen: at,
        last_seen: at,
        resolved_at: None,
        duration_s: None,
        evidence: Vec::new(),
        timeline: Vec::new(),
        concurrent: Vec::new(),
        pleg: None,
        remedy: Remedy::new(String::new(), Vec::new()),
        detail: Detail::Pid(PidDetail {
            limit,
            pod,
            cgroup,
            uid,
            failures: 0,
            kernel_rejections: None,
            rate_per_sec: 0.0,
            processes: Vec::new(),
            limits: Headroom::default(),
            top_consumers: Vec::new(),
        }),
    }
}

fn new_finding(f: &ForkFailed, limit: Limit, owner: &str, confidence: Confidence) -> Finding {
    let uid = match (limit, f.user) {
        (Limit::RlimitNproc, Some(u)) => u.uid,
        _ => f.uid,
    };
    let cgroup = match limit {
        Limit::PidsCgroup => Some(owner.to_owned()),
        _ => f.pids_cgroup.clone(),
    };
    blank(limit, owner, f.at, confidence, cgroup, uid, f.pod.clone())
}

/// A finding proven by a pids.events rise seen in a periodic sample alone.
fn finding_from_cgroup(
    id: FindingId,
    c: &PidsCgroupState,
    l: &PidLimits,
    delta: u64,
    why: String,
    counts: &Counts,
) -> Finding {
    let pod = crate::model::pod::pod_from_cgroup_path(&c.path);
    let mut f = blank(
        Limit::PidsCgroup,
        &c.path,
        l.at,
        Confidence::Certain,
        Some(c.path.clone()),
        0,
        pod,
    );
    debug_assert_eq!(f.id, id);
    f.evidence.push(Evidence {
        at: l.at,
        what: why,
    });
    let d = detail_mut(&mut f);
    d.kernel_rejections = Some(delta);
    d.limits = Headroom {
        pids_cgroups: vec![CgroupUsage {
            cgroup: c.path.clone(),
            usage: Usage::new(c.current, c.max.unwrap_or(0)),
        }],
        rlimit_nproc: None,
        threads_max: system_usage(l.system.threads, l.system.threads_max),
        pid_max: system_usage(l.system.threads, l.system.pid_max),
    };
    d.top_consumers = l.consumers.get(&c.path).cloned().unwrap_or_default();
    refresh(&mut f, counts);
    f
}

/// Recompute the derived fields (processes list, rate, summary, remedy).
fn refresh(f: &mut Finding, t: &Counts) {
    let mut procs: Vec<ProcessFailures> = t.processes.values().cloned().collect();
    procs.sort_by(|a, b| b.failures.cmp(&a.failures).then(a.pid.cmp(&b.pid)));
    procs.truncate(MAX_PROCESSES);
    let window_failures: u64 = t.buckets.iter().map(|(_, n)| n).sum();
    let span = match (t.buckets.front(), t.buckets.back()) {
        (Some((a, _)), Some((b, _))) => (b - a + 1).min(RATE_WINDOW_S),
        _ => 1,
    };
    let (summary, remedy);
    {
        let d = detail_mut(f);
        d.processes = procs;
        d.rate_per_sec = (window_failures as f64 / span as f64 * 10.0).round() / 10.0;
        let who = d
            .processes
            .iter()
            .take(3)
            .map(|p| format!("{}[{}] x{}", p.comm, p.pid, p.failures))
            .collect::<Vec<_>>()
            .join(", ");
        let usage = |u: &Option<Usage>| {
            u.as_ref()
                .map(|u| format!(" ({} of {})", u.current, u.max))
                .unwrap_or_default()
        };
        let what = match d.limit {
            Limit::PidsCgroup => {
                let cg = d.cgroup.clone().unwrap_or_default();
                let u = d
                    .limits
                    .pids_cgroups
                    .iter()
                    .find(|c| c.cgroup == cg)
                    .map(|c| &c.usage);
                match u {
                    // Still full: the limit is what fails.
                    Some(u) if u.current >= u.max => {
                        format!(
                            "pids cgroup {cg} is at its limit ({} of {} tasks)",
                            u.current, u.max
                        )
                    }
                    // It emptied since (the leak was killed, the pod ended).
                    Some(u) => format!(
                        "pids cgroup {cg} hit its limit (now {} of {} tasks)",
                        u.current, u.max
                    ),
                    // Not read (the cgroup is gone): as when it failed.
                    None => format!("pids cgroup {cg} is at its limit"),
                }
            }
            Limit::RlimitNproc => format!(
                "uid {} reached its RLIMIT_NPROC{}",
                d.uid,
                usage(&d.limits.rlimit_nproc)
            ),
            Limit::ThreadsMax => {
                format!("kernel.threads-max reached{}", usage(&d.limits.threads_max))
            }
            Limit::PidMax => format!("kernel.pid_max reached{}", usage(&d.limits.pid_max)),
            Limit::Unknown => {
                "fork/clone fails with EAGAIN; no PID limit was full when read".into()
            }
        };
        let failing = if d.failures > 0 {
            format!(
                "; {} ({}/s) by {who}",
                count(d.failures, "failed fork/clone call"),
                d.rate_per_sec
            )
        } else {
            format!(
                "; the kernel rejected {}",
                count(d.kernel_rejections.unwrap_or(0), "fork")
            )
        };
        let pod = d
            .pod
            .as_ref()
            .map(|p| format!(" [pod {}]", p.label()))
            .unwrap_or_default();
        summary = format!("{what}{pod}{failing}");
        let owner = match d.limit {
            Limit::RlimitNproc => format!("uid {}", d.uid),
            _ => d.cgroup.clone().unwrap_or_default(),
        };
        let mut actions = Vec::new();
        if let (Limit::PidsCgroup, Some(cgroup)) = (d.limit, &d.cgroup) {
            actions.push(RemedyAction::KillContainer {
                cgroup: cgroup.clone(),
            });
        }
        if let Some(p) = &d.pod {
            actions.push(RemedyAction::EvictPod {
                pod_uid: p.pod_uid.clone(),
                namespace: p.namespace.clone(),
                name: p.name.clone(),
            });
        }
        remedy = Remedy::new(remedy_text(d.limit, &owner, &d.top_consumers), actions);
    }
    f.summary = summary;
    f.remedy = remedy;
}

#[cfg(test)]
mod tests;
