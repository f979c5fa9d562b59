use super::*;
use crate::{
    diagnosis::Engine,
    model::{Observation, UserTasks},
};

const T0: u64 = 1_790_000_000_000;

fn cg(path: &str, current: u64, max: Option<u64>, events_max: u64) -> PidsCgroupState {
    PidsCgroupState {
        path: path.into(),
        current,
        max,
        events_max,
    }
}

fn sys(threads: u64) -> SystemPids {
    SystemPids {
        threads,
        threads_max: 100_000,
        pid_max: 32_768,
    }
}

fn failure(ms: u64, pid: u32, chain: Vec<PidsCgroupState>) -> Observation {
    Observation::ForkFailed(Box::new(ForkFailed {
        at: Time(T0 + ms),
        tid: pid,
        pid,
        uid: 0,
        comm: "bash".into(),
        syscall: "clone".into(),
        thread: false,
        pids_cgroup: chain.first().map(|c| c.path.clone()),
        cgroup_chain: chain,
        system: sys(500),
        user: None,
        pod: None,
        consumers: vec![],
    }))
}

fn limits(ms: u64, cgroups: Vec<PidsCgroupState>, system: SystemPids) -> Observation {
    Observation::PidLimits(PidLimits {
        at: Time(T0 + ms),
        cgroups,
        system,
        consumers: Default::default(),
    })
}

fn findings(r: &[Report]) -> Vec<&Finding> {
    r.iter()
        .filter_map(|r| match r {
            Report::Finding(f) => Some(f.as_ref()),
            Report::Warning(_) | Report::Pleg(_) => None,
        })
        .collect()
}

fn warnings(r: &[Report]) -> Vec<&Warning> {
    r.iter()
        .filter_map(|r| match r {
            Report::Warning(w) => Some(w),
            Report::Finding(_) | Report::Pleg(_) => None,
        })
        .collect()
}

fn pid(f: &Finding) -> &PidDetail {
    let Detail::Pid(d) = &f.detail else {
        panic!("a PID finding without PID detail: {f:?}")
    };
    d
}

#[test]
fn cgroup_at_limit_is_reported_at_the_first_failure() {
    let mut e = Engine::new(EngineConfig::default());
    let r = e.observe(&failure(
        0,
        42,
        vec![cg("/pod/ctr", 3, None, 0), cg("/pod", 64, Some(64), 0)],
    ));
    let f = findings(&r);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].status, FindingStatus::Active);
    assert_eq!(f[0].confidence, Confidence::Likely);
    let d = pid(f[0]);
    assert_eq!(d.limit, Limit::PidsCgroup);
    assert_eq!(
        d.cgroup.as_deref(),
        Some("/pod"),
        "the ancestor whose limit is full, not the leaf"
    );
    assert_eq!(d.failures, 1);
    assert_eq!(d.processes[0].pid, 42);
    assert_eq!(d.limits.pids_cgroups.len(), 1);
    assert_eq!(d.limits.pids_cgroups[0].usage.percent, 100.0);
    assert!(f[0].remedy.text.contains("pids.max of /pod"));
}

#[test]
fn rising_pids_events_makes_it_certain_even_below_the_limit() {
    let mut e = Engine::new(EngineConfig::default());
    e.observe(&limits(0, vec![cg("/a", 10, Some(20), 5)], sys(100)));
    // pids.current dropped back by the time it was read, but the counter rose.
    let r = e.observe(&failure(500, 7, vec![cg("/a", 12, Some(20), 6)]));
    let f = findings(&r);
    assert_eq!(f[0].confidence, Confidence::Certain);
    assert_eq!(pid(f[0]).cgroup.as_deref(), Some("/a"));
    assert!(
        f[0].evidence[0].what.contains("rose 5 -> 6"),
        "{:?}",
        f[0].evidence
    );
}

#[test]
fn rlimit_is_checked_before_cgroups_like_the_kernel_does() {
    let mut e = Engine::new(EngineConfig::default());
    let mut obs = failure(0, 9, vec![cg("/a", 20, Some(20), 0)]);
    if let Observation::ForkFailed(f) = &mut obs {
        f.uid = 1000;
        f.user = Some(UserTasks {
            uid: 1000,
            tasks: 50,
            rlimit_nproc: Some(50),
        });
    }
    let r = e.observe(&obs);
    let d = pid(findings(&r)[0]);
    assert_eq!(d.limit, Limit::RlimitNproc);
    assert_eq!(d.uid, 1000);
    assert_eq!(
        d.limits.rlimit_nproc.as_ref().map(|u| (u.current, u.max)),
        Some((50, 50))
    );
}

#[test]
fn system_limits() {
    let mut e = Engine::new(EngineConfig::default());
    let mut obs = failure(0, 9, vec![]);
    if let Observation::ForkFailed(f) = &mut obs {
        f.system = SystemPids {
            threads: 4000,
            threads_max: 4000,
            pid_max: 32_768,
        };
    }
    assert_eq!(pid(findings(&e.observe(&obs))[0]).limit, Limit::ThreadsMax);

    let mut e = Engine::new(EngineConfig::default());
    if let Observation::ForkFailed(f) = &mut obs {
        f.system = SystemPids {
            threads: 32_500,
            threads_max: 100_000,
            pid_max: 32_768,
        };
    }
    assert_eq!(pid(findings(&e.observe(&obs))[0]).limit, Limit::PidMax);
}

#[test]
fn nothing_full_is_reported_as_unknown() {
    let mut e = Engine::new(EngineConfig::default());
    let r = e.observe(&failure(0, 9, vec![cg("/a", 3, Some(20), 0)]));
    let f = findings(&r);
    assert_eq!(pid(f[0]).limit, Limit::Unknown);
    assert_eq!(f[0].confidence, Confidence::Unknown);
}

#[test]
fn repeated_failures_update_then_resolve_with_stable_first_seen() {
    let cfg = EngineConfig {
        resolve_after_ms: 10_000,
        update_every_ms: 2_000,
        ..EngineConfig::default()
    };
    let mut e = Engine::new(cfg);
    let chain = || vec![cg("/a", 8, Some(8), 0)];
    assert_eq!(findings(&e.observe(&failure(0, 1, chain()))).len(), 1);
    for i in 1..=9 {
        assert!(
            e.observe(&failure(i * 100, 1 + (i as u32 % 2), chain()))
                .is_empty(),
            "no report per failure"
        );
    }
    // Not yet time for an update.
    assert!(e.tick(Time(T0 + 1_000)).is_empty());
    let r = e.tick(Time(T0 + 2_500));
    let f = findings(&r);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].status, FindingStatus::Update);
    assert_eq!(f[0].first_seen, Time(T0));
    let d = pid(f[0]);
    assert_eq!(d.failures, 10);
    assert_eq!(d.processes.len(), 2);
    assert_eq!(d.processes.iter().map(|p| p.failures).sum::<u64>(), 10);
    assert_eq!(d.rate_per_sec, 10.0);
    // Nothing new: no further update.
    assert!(e.tick(Time(T0 + 6_000)).is_empty());
    // Resolved 10 s after the last failure (at 900 ms).
    assert!(e.tick(Time(T0 + 10_800)).is_empty());
    let r = e.tick(Time(T0 + 10_900));
    let f = findings(&r);
    assert_eq!(f[0].status, FindingStatus::Resolved);
    assert_eq!(f[0].first_seen, Time(T0));
    assert_eq!(f[0].resolved_at, Some(Time(T0 + 10_900)));
    assert_eq!(f[0].duration_s, Some(10.9));
    assert!(e.active().is_empty());
}

#[test]
fn kernel_counter_alone_creates_a_finding_when_the_probe_saw_nothing() {
    let mut e = Engine::new(EngineConfig::default());
    assert!(findings(&e.observe(&limits(0, vec![cg("/b", 5, Some(10), 0)], sys(100)))).is_empty());
    let r = e.observe(&limits(1000, vec![cg("/b", 10, Some(10), 7)], sys(100)));
    let f = findings(&r);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].confidence, Confidence::Certain);
    let d = pid(f[0]);
    assert_eq!(
        (
            d.limit,
            d.cgroup.as_deref(),
            d.kernel_rejections,
            d.failures
        ),
        (Limit::PidsCgroup, Some("/b"), Some(7), 0)
    );
    // Holders sampled later are added to it.
    let mut sample = PidLimits {
        at: Time(T0 + 1050),
        cgroups: vec![cg("/b", 10, Some(10), 7)],
        system: sys(100),
        consumers: Default::default(),
    };
    sample.consumers.insert(
        "/b".into(),
        vec![Consumer {
            pid: 77,
            comm: "java".into(),
            threads: 9,
            uid: 0,
        }],
    );
    e.observe(&Observation::PidLimits(sample));
    assert_eq!(pid(&e.active()[0]).top_consumers[0].pid, 77);
    // The probe's failures then join the same finding.
    assert!(
        e.observe(&failure(1100, 3, vec![cg("/b", 10, Some(10), 8)]))
            .is_empty()
    );
    assert_eq!(e.active().len(), 1);
    assert_eq!(pid(&e.active()[0]).failures, 1);
}

#[test]
fn two_cgroups_give_two_findings() {
    let mut e = Engine::new(EngineConfig::default());
    e.observe(&failure(0, 1, vec![cg("/x", 4, Some(4), 0)]));
    e.observe(&failure(10, 2, vec![cg("/y", 9, Some(9), 0)]));
    let ids: Vec<String> = e.active().into_iter().map(|f| f.id.to_string()).collect();
    assert_eq!(
        ids,
        vec![
            "pid_exhaustion/pids_cgroup//x",
            "pid_exhaustion/pids_cgroup//y"
        ]
    );
}

#[test]
fn warnings_raise_once_and_clear_with_hysteresis() {
    let mut e = Engine::new(EngineConfig::default());
    let w = |e: &mut Engine, ms, cur| {
        let r = e.observe(&limits(ms, vec![cg("/p", cur, Some(100), 0)], sys(100)));
        warnings(&r)
            .into_iter()
            .map(|w| (w.status, w.current))
            .collect::<Vec<_>>()
    };
    assert!(w(&mut e, 0, 80).is_empty());
    assert_eq!(w(&mut e, 1000, 91), vec![(WarningStatus::Raised, 91)]);
    assert!(w(&mut e, 2000, 95).is_empty(), "raised once");
    assert!(
        w(&mut e, 3000, 88).is_empty(),
        "between clear and raise: stays raised"
    );
    assert_eq!(w(&mut e, 4000, 80), vec![(WarningStatus::Cleared, 80)]);
    // A cgroup that disappears clears its warning.
    assert_eq!(w(&mut e, 5000, 99), vec![(WarningStatus::Raised, 99)]);
    let r = e.observe(&limits(6000, vec![], sys(100)));
    assert_eq!(warnings(&r).len(), 1);
    assert_eq!(warnings(&r)[0].status, WarningStatus::Cleared);
}

#[test]
fn system_warning_near_pid_max() {
    let mut e = Engine::new(EngineConfig::default());
    let r = e.observe(&limits(
        0,
        vec![],
        SystemPids {
            threads: 30_000,
            threads_max: 100_000,
            pid_max: 32_768,
        },
    ));
    let w = warnings(&r);
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].limit, Limit::PidMax);
    assert!(w[0].message.contains("kernel.pid_max"));
}

#[test]
fn findings_serialize_with_the_documented_fields() {
    let mut e = Engine::new(EngineConfig::default());
    let r = e.observe(&failure(0, 42, vec![cg("/a", 8, Some(8), 0)]));
    let rec = crate::sinks::Record::Finding(Box::new(findings(&r)[0].clone().into()));
    let v: serde_json::Value = serde_json::to_value(&rec).unwrap();
    assert_eq!(v["type"], "finding");
    assert_eq!(v["cause"], "pid_exhaustion");
    assert_eq!(v["status"], "active");
    assert_eq!(v["limit"], "pids_cgroup");
    assert_eq!(v["cgroup"], "/a");
    assert_eq!(v["uid"], 0);
    assert_eq!(v["failures"], 1);
    assert_eq!(v["processes"][0]["pid"], 42);
    assert_eq!(v["first_seen"], Time(T0).rfc3339());
    assert!(v["evidence"].is_array() && v["limits"]["pids_cgroups"].is_array());
}

#[test]
fn rlimit_pressure_warns_once_and_clears_after_silence() {
    let cfg = EngineConfig {
        resolve_after_ms: 10_000,
        ..EngineConfig::default()
    };
    let mut e = Engine::new(cfg);
    let usage = |ms, tasks| {
        Observation::NprocUsage(crate::model::NprocUsage {
            at: Time(T0 + ms),
            uid: 1000,
            pid: 5,
            comm: "java".into(),
            tasks,
            limit: 200,
        })
    };
    assert!(
        e.observe(&usage(0, 160)).is_empty(),
        "80% is below the warning"
    );
    let r = e.observe(&usage(500, 185));
    let w = warnings(&r);
    assert_eq!(
        (w[0].status, w[0].limit, w[0].uid, w[0].current, w[0].max),
        (
            WarningStatus::Raised,
            Limit::RlimitNproc,
            Some(1000),
            185,
            200
        )
    );
    assert!(e.observe(&usage(600, 190)).is_empty());
    assert!(warnings(&e.tick(Time(T0 + 5_000))).is_empty());
    let r = e.tick(Time(T0 + 10_600));
    assert_eq!(warnings(&r)[0].status, WarningStatus::Cleared);
    // Cgroup samples never clear a uid warning.
    e.observe(&usage(11_000, 195));
    assert!(warnings(&e.observe(&limits(11_500, vec![], sys(100)))).is_empty());
}

/// A finding known by cgroup path only gets its pod's and container's names
/// in an update once the runtime relist names them.
#[test]
fn names_from_the_runtime_arrive_in_an_update() {
    use crate::model::kubelet::{NamedContainer, PodName, RuntimeNames};
    let uid = "0d5c2b8e-1b1f-4a8e-9f5a-2b6c7d8e9f01";
    let cid = "a".repeat(64);
    let pod_cg = format!("/kubepods/burstable/pod{uid}");
    let ctr_cg = format!("{pod_cg}/{cid}");
    let mut e = Engine::new(EngineConfig::default());
    let mut obs = failure(
        0,
        42,
        vec![cg(&ctr_cg, 3, None, 0), cg(&pod_cg, 64, Some(64), 0)],
    );
    if let Observation::ForkFailed(f) = &mut obs {
        f.pod = crate::model::pod::pod_from_cgroup_path(&ctr_cg);
    }
    let r = e.observe(&obs);
    let f = findings(&r);
    let pod = pid(f[0]).pod.clone().expect("the pod from the cgroup path");
    assert_eq!(pod.pod_uid, uid);
    assert_eq!(pod.name, None);
    assert!(
        f[0].summary.contains(&format!("[pod uid {uid}]")),
        "{}",
        f[0].summary
    );
    let r = e.observe(&Observation::RuntimeNames(Box::new(RuntimeNames {
        at: Time(1000),
        runtime: "containerd".into(),
        containers: vec![NamedContainer {
            id: cid.clone(),
            name: "app".into(),
            pod: Some(PodName {
                namespace: "shop".into(),
                name: "web-0".into(),
                uid: uid.into(),
            }),
        }],
    })));
    let f = findings(&r);
    assert_eq!(f.len(), 1, "{r:?}");
    assert_eq!(f[0].status, FindingStatus::Update);
    let pod = pid(f[0]).pod.clone().unwrap();
    assert_eq!(pod.namespace.as_deref(), Some("shop"));
    assert_eq!(pod.name.as_deref(), Some("web-0"));
    // The summary and the terminal name the pod now.
    assert!(
        f[0].summary.contains("[pod shop/web-0]"),
        "{}",
        f[0].summary
    );
    assert!(!f[0].summary.contains("[pod uid"), "{}", f[0].summary);
    let text = crate::sinks::terminal::render_finding(f[0]);
    assert!(
        text.contains(&format!(
            "pod:           shop/web-0 (uid {uid}, burstable) container app ({})",
            &"a".repeat(12)
        )),
        "{text}"
    );
    // The same names again: nothing new to report.
    let r = e.observe(&Observation::RuntimeNames(Box::new(RuntimeNames {
        at: Time(2000),
        runtime: "containerd".into(),
        containers: vec![NamedContainer {
            id: cid,
            name: "app".into(),
            pod: Some(PodName {
                namespace: "shop".into(),
                name: "web-0".into(),
                uid: uid.into(),
            }),
        }],
    })));
    assert!(findings(&r).is_empty(), "{r:?}");
}
