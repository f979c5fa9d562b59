use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::model::finding::{Detail, Remedy};

const POD_CG: &str = "/kubepods/burstable/pod0f1e/ctr1";

fn finding(
    status: FindingStatus,
    first_ms: u64,
    at_ms: u64,
    actions: Vec<RemedyAction>,
) -> Finding {
    Finding::for_tests(
        Cause::PidExhaustion,
        &format!("pids_cgroup{POD_CG}"),
        status,
        first_ms,
        at_ms,
        actions,
    )
}

fn ladder(cgroup: &str) -> Vec<RemedyAction> {
    vec![
        RemedyAction::KillContainer {
            cgroup: cgroup.into(),
        },
        RemedyAction::EvictPod {
            pod_uid: "0f1e".into(),
            namespace: Some("shop".into()),
            name: Some("cart-7d9".into()),
        },
    ]
}

fn enforce(allow: &[ActionKind]) -> PolicyConfig {
    PolicyConfig {
        mode: Mode::Enforce,
        allow: allow.iter().copied().collect::<BTreeSet<_>>(),
        ..PolicyConfig::default()
    }
}

fn t(ms: u64) -> Time {
    Time::from_millis(ms)
}

fn decisions(steps: &[Step]) -> Vec<(ActionKind, Decision)> {
    steps
        .iter()
        .map(|s| (s.action.kind(), s.decision.clone()))
        .collect()
}

#[test]
fn dry_run_is_the_default_and_plans_after_the_delay() {
    let mut p = Policy::new(PolicyConfig::default());
    assert!(
        p.on_finding(&finding(FindingStatus::Active, 0, 0, ladder(POD_CG)))
            .is_empty()
    );
    assert!(p.tick(t(59_999)).is_empty(), "before the 1 min delay");
    let s = p.tick(t(60_000));
    assert_eq!(
        decisions(&s),
        vec![(ActionKind::KillContainer, Decision::Plan { allowed: false })]
    );
    assert_eq!(s[0].budget, "1 of 3 actions this hour");
    // Nothing more until the step timeout; then the next rung (evict_pod,
    // refused: it goes through the apiserver and this session has none).
    assert!(p.tick(t(60_000 + 119_999)).is_empty());
    let s = p.tick(t(180_000));
    assert!(
        matches!(&s[..], [Step { decision: Decision::Skip(r), .. }] if r.contains("evict_pod acts through the apiserver")),
        "{s:?}"
    );
    // The ladder is done: silence.
    assert!(p.tick(t(900_000)).is_empty());
    // A dry-run plan is not "verified" when the finding resolves.
    assert!(
        p.on_finding(&finding(
            FindingStatus::Resolved,
            0,
            950_000,
            ladder(POD_CG)
        ))
        .is_empty()
    );
}

#[test]
fn enforce_runs_only_allowed_actions() {
    let mut p = Policy::new(enforce(&[]));
    p.on_finding(&finding(FindingStatus::Active, 0, 0, ladder(POD_CG)));
    let s = p.tick(t(60_000));
    assert_eq!(s.len(), 2, "both rungs refused at once: {s:?}");
    assert!(
        matches!(&s[0].decision, Decision::Skip(r) if r.contains("--allow-actions kill_container"))
    );

    let mut p = Policy::new(enforce(&[ActionKind::KillContainer]));
    p.on_finding(&finding(FindingStatus::Active, 0, 0, ladder(POD_CG)));
    let s = p.tick(t(60_000));
    assert_eq!(
        decisions(&s),
        vec![(ActionKind::KillContainer, Decision::Execute)]
    );
    let v = p.on_finding(&finding(FindingStatus::Resolved, 0, 61_000, ladder(POD_CG)));
    assert_eq!(
        decisions(&v),
        vec![(ActionKind::KillContainer, Decision::Verified)]
    );
    assert_eq!(v[0].at, t(61_000));
}

#[test]
fn off_says_nothing() {
    let mut p = Policy::new(PolicyConfig {
        mode: Mode::Off,
        ..PolicyConfig::default()
    });
    p.on_finding(&finding(FindingStatus::Active, 0, 0, ladder(POD_CG)));
    assert!(p.tick(t(3_600_000)).is_empty());
}

#[test]
fn kill_container_is_scoped_to_pods_by_default() {
    let mut p = Policy::new(enforce(&[ActionKind::KillContainer]));
    p.on_finding(&finding(
        FindingStatus::Active,
        0,
        0,
        ladder("/system.slice/sshd.service"),
    ));
    let s = p.tick(t(60_000));
    assert!(
        matches!(&s[0].decision, Decision::Skip(r) if r.starts_with("out of scope")),
        "{s:?}"
    );
    let mut p = Policy::new(PolicyConfig {
        any_cgroup: true,
        ..enforce(&[ActionKind::KillContainer])
    });
    p.on_finding(&finding(
        FindingStatus::Active,
        0,
        0,
        ladder("/system.slice/sshd.service"),
    ));
    assert_eq!(p.tick(t(60_000))[0].decision, Decision::Execute);
}

#[test]
fn pod_cgroups_in_both_drivers() {
    assert!(is_pod_cgroup("/kubepods/burstable/pod0f1e/abc"));
    assert!(is_pod_cgroup("/kubepods/pod0f1e"));
    assert!(is_pod_cgroup(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f1e.slice/cri-containerd-abc.scope"
    ));
    assert!(!is_pod_cgroup("/kubepods"));
    assert!(!is_pod_cgroup("/kubepods/burstable"));
    assert!(!is_pod_cgroup("/system.slice/containerd.service"));
    assert!(!is_pod_cgroup("/pod0f1e"));
}

#[test]
fn the_hourly_budget_and_cooldown_hold_actions_back_and_say_so_once() {
    let cfg = PolicyConfig {
        max_per_hour: 1,
        ..enforce(&[ActionKind::KillContainer])
    };
    let mut p = Policy::new(cfg);
    let other = "/kubepods/burstable/pod9999/ctr2";
    let mut f2 = finding(FindingStatus::Active, 0, 0, ladder(other));
    f2.id = FindingId::new(Cause::PidExhaustion, format!("pids_cgroup{other}"));
    p.on_finding(&finding(FindingStatus::Active, 0, 0, ladder(POD_CG)));
    p.on_finding(&f2);
    let s = p.tick(t(60_000));
    assert_eq!(s.len(), 2, "{s:?}");
    let executed = s.iter().filter(|s| s.decision == Decision::Execute).count();
    assert_eq!(executed, 1, "{s:?}");
    assert!(
        s.iter()
            .any(|s| matches!(&s.decision, Decision::Skip(r) if r.contains("budget spent")))
    );
    // Said once, not every tick.
    assert!(p.tick(t(61_000)).is_empty());
    // An hour later the budget is back.
    let s = p.tick(t(60_000 + 3_600_000));
    assert!(s.iter().any(|s| s.decision == Decision::Execute), "{s:?}");
}

#[test]
fn the_same_target_cools_down() {
    let mut p = Policy::new(enforce(&[ActionKind::KillContainer]));
    p.on_finding(&finding(FindingStatus::Active, 0, 0, ladder(POD_CG)));
    assert_eq!(p.tick(t(60_000))[0].decision, Decision::Execute);
    // Resolved without the verification (say the agent lost it), then the
    // same cgroup fills again: its kill waits for the cooldown.
    p.on_finding(&finding(FindingStatus::Resolved, 0, 61_000, ladder(POD_CG)));
    p.on_finding(&finding(
        FindingStatus::Active,
        100_000,
        100_000,
        ladder(POD_CG),
    ));
    let s = p.tick(t(160_000));
    assert!(
        matches!(&s[0].decision, Decision::Skip(r) if r.starts_with("cooling down")),
        "{s:?}"
    );
    let s = p.tick(t(60_000 + 600_000));
    assert_eq!(s[0].decision, Decision::Execute, "{s:?}");
}

#[test]
fn the_same_findings_replay_to_the_same_steps() {
    let run = || {
        let mut p = Policy::new(enforce(&[ActionKind::KillContainer]));
        let mut all = Vec::new();
        p.on_finding(&finding(FindingStatus::Active, 0, 0, ladder(POD_CG)));
        for ms in (0..400_000).step_by(1000) {
            all.extend(p.tick(t(ms)));
        }
        all
    };
    assert_eq!(run(), run());
}

#[test]
fn modes_and_actions_parse_with_clear_errors() {
    assert_eq!("dry-run".parse::<Mode>(), Ok(Mode::DryRun));
    assert!(
        "yes"
            .parse::<Mode>()
            .unwrap_err()
            .contains("off, dry-run or enforce")
    );
    assert_eq!(
        "abort_fuse".parse::<ActionKind>(),
        Ok(ActionKind::AbortFuse)
    );
    assert!(
        "reboot"
            .parse::<ActionKind>()
            .unwrap_err()
            .contains("kill_container")
    );
}

#[test]
fn restored_actions_count_against_the_budget_and_cool_their_targets() {
    let mut p = Policy::new(enforce(&[ActionKind::KillContainer]));
    // An earlier agent of this boot killed this cgroup 30 s before.
    p.restore(&[(t(30_000), format!("cgroup {POD_CG}"))]);
    p.on_finding(&finding(FindingStatus::Active, 0, 0, ladder(POD_CG)));
    let s = p.tick(t(60_000));
    assert!(
        matches!(&s[0].decision, Decision::Skip(r) if r.starts_with("cooling down")),
        "{s:?}"
    );
    assert_eq!(s[0].budget, "1 of 3 actions this hour");
}

#[test]
fn a_cooldown_is_said_once_though_its_seconds_change() {
    let mut p = Policy::new(enforce(&[ActionKind::KillContainer]));
    p.restore(&[(t(30_000), format!("cgroup {POD_CG}"))]);
    p.on_finding(&finding(FindingStatus::Active, 0, 0, ladder(POD_CG)));
    assert_eq!(p.tick(t(60_000)).len(), 1);
    assert!(p.tick(t(61_000)).is_empty());
    assert!(p.tick(t(300_000)).is_empty());
}

#[test]
fn a_refused_recheck_charges_nothing_and_retries_the_same_rung() {
    let mut p = Policy::new(enforce(&[ActionKind::KillContainer]));
    p.on_finding(&finding(FindingStatus::Active, 0, 0, ladder(POD_CG)));
    let s = p.tick(t(60_000));
    assert_eq!(s[0].decision, Decision::Execute);
    let (id, action) = (s[0].finding.clone(), s[0].action.clone());
    assert!(
        p.recheck_failed(&id, &action, t(60_000), "target"),
        "first refusal is recorded"
    );
    // Retried at the next tick, same rung, budget and cooldown untouched.
    let s = p.tick(t(61_000));
    assert_eq!(
        decisions(&s),
        vec![(ActionKind::KillContainer, Decision::Execute)]
    );
    assert_eq!(s[0].budget, "1 of 3 actions this hour");
    assert!(
        !p.recheck_failed(&id, &action, t(61_000), "target"),
        "the same refusal is not said again"
    );
}

#[test]
fn a_cgroup_prefix_narrows_the_scope() {
    let mut p = Policy::new(PolicyConfig {
        cgroup_prefix: Some("/kubepods/besteffort".into()),
        ..enforce(&[ActionKind::KillContainer])
    });
    p.on_finding(&finding(FindingStatus::Active, 0, 0, ladder(POD_CG)));
    let s = p.tick(t(60_000));
    assert!(
        matches!(&s[0].decision, Decision::Skip(r) if r.contains("not below the cgroup prefix")),
        "{s:?}"
    );
    assert!(under("/kubepods/besteffort/pod1", "/kubepods/besteffort"));
    assert!(!under("/kubepods/besteffort2/pod1", "/kubepods/besteffort"));
}

#[test]
fn only_real_pod_cgroups_are_pods() {
    assert!(!is_pod_cgroup("/kubepods-x/podman.service"));
    assert!(!is_pod_cgroup("/system.slice/kubepods-helper/pod"));
    assert!(is_pod_cgroup("/kubepods.slice/kubepods-pod0f1e.slice"));
}

/// A storage finding on a FUSE mount naming pods (uid, namespace if known).
fn storage_finding(status: FindingStatus, at_ms: u64, pods: &[(&str, Option<&str>)]) -> Finding {
    use crate::model::WaitClass;
    use crate::model::finding::storage::StorageDetail;
    use crate::model::pod::{CgroupDriver, PodRef};
    let mut f = finding(status, 0, at_ms, Vec::new());
    f.cause = Cause::StorageHang;
    f.id = FindingId::new(Cause::StorageHang, "/mnt/fuse");
    f.remedy = Remedy::new(
        "",
        vec![RemedyAction::AbortFuse {
            mount_point: "/mnt/fuse".into(),
            dev: "0:52".into(),
        }],
    );
    f.detail = Detail::Storage(StorageDetail {
        mount_point: "/mnt/fuse".into(),
        fs_type: Some("fuse".into()),
        source: None,
        dev: Some("0:52".into()),
        wait: WaitClass::Fuse,
        blocked: Vec::new(),
        blocked_total: 1,
        unkillable: 1,
        stack: Vec::new(),
        containers: Vec::new(),
        pods: pods
            .iter()
            .map(|(uid, ns)| PodRef {
                pod_uid: uid.to_string(),
                qos: "burstable".into(),
                container_id: None,
                runtime: None,
                driver: CgroupDriver::Cgroupfs,
                namespace: ns.map(str::to_string),
                name: ns.map(|_| "web-0".to_string()),
                container_name: None,
            })
            .collect(),
        processes: Vec::new(),
    });
    f
}

#[test]
fn a_configured_ladder_orders_the_rungs_adds_node_actions_and_has_its_own_confirm_time() {
    let mut cfg = PolicyConfig::default();
    cfg.ladders.insert(
        Cause::PidExhaustion,
        Ladder {
            actions: vec![
                ActionKind::EvictPod,
                ActionKind::Cordon,
                ActionKind::Escalate,
            ],
            confirm_ms: Some(5_000),
        },
    );
    let mut p = Policy::new(PolicyConfig {
        max_per_hour: 10,
        cluster: true,
        ..cfg
    });
    p.on_finding(&finding(FindingStatus::Active, 0, 0, ladder(POD_CG)));
    assert!(
        p.tick(t(4_999)).is_empty(),
        "before the cause's confirm time"
    );
    // kill_container is not in this ladder: the first rung is evict_pod.
    let s = p.tick(t(5_000));
    assert_eq!(
        decisions(&s),
        vec![(ActionKind::EvictPod, Decision::Plan { allowed: false })]
    );
    assert_eq!(
        s[0].action.target(),
        "pod shop/cart-7d9 (uid 0f1e)",
        "the Eviction API's names travel with the action"
    );
    let s = p.tick(t(5_000 + 120_000));
    assert_eq!(
        decisions(&s),
        vec![(ActionKind::Cordon, Decision::Plan { allowed: false })]
    );
    let s = p.tick(t(5_000 + 240_000));
    assert_eq!(
        decisions(&s),
        vec![(ActionKind::Escalate, Decision::Plan { allowed: false })]
    );
    assert!(p.tick(t(5_000 + 360_000)).is_empty(), "the ladder is done");
    // Causes without a ladder keep the finding's own actions and the delay.
    let mut p = Policy::new(PolicyConfig::default());
    p.on_finding(&storage_finding(FindingStatus::Active, 0, &[]));
    assert!(p.tick(t(59_999)).is_empty());
    assert_eq!(
        decisions(&p.tick(t(60_000))),
        vec![(ActionKind::AbortFuse, Decision::Plan { allowed: false })]
    );
}

#[test]
fn excluded_namespaces_are_never_touched_and_unknown_ones_wait_for_their_names() {
    let cfg = PolicyConfig {
        exclude_namespaces: vec!["kube-system".into()],
        ..PolicyConfig::default()
    };
    // A pod of kube-system uses the mount: aborting it would hit that pod.
    let mut p = Policy::new(cfg.clone());
    p.on_finding(&storage_finding(
        FindingStatus::Active,
        0,
        &[("aa11", Some("shop")), ("bb22", Some("kube-system"))],
    ));
    let s = p.tick(t(60_000));
    assert!(
        matches!(&s[..], [Step { decision: Decision::Skip(r), .. }] if r == "excluded namespace: pod bb22 is in kube-system"),
        "{s:?}"
    );
    // Namespace not known yet: wait (said once), then act once it is named.
    let mut p = Policy::new(cfg);
    p.on_finding(&storage_finding(
        FindingStatus::Active,
        0,
        &[("aa11", None)],
    ));
    let s = p.tick(t(60_000));
    assert!(
        matches!(&s[..], [Step { decision: Decision::Skip(r), .. }] if r.contains("pod aa11's namespace is not known yet")),
        "{s:?}"
    );
    assert!(p.tick(t(61_000)).is_empty(), "the same wait is said once");
    p.on_finding(&storage_finding(
        FindingStatus::Update,
        62_000,
        &[("aa11", Some("shop"))],
    ));
    assert_eq!(
        decisions(&p.tick(t(62_000))),
        vec![(ActionKind::AbortFuse, Decision::Plan { allowed: false })]
    );
}

#[test]
fn node_label_exclusions_need_the_labels_and_refuse_a_labelled_node() {
    let labels = |kv: &[(&str, &str)]| {
        Some(
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        )
    };
    let cfg = PolicyConfig {
        exclude_node_labels: vec![
            "watchdog.io/remediation=disabled".into(),
            "node-role.kubernetes.io/control-plane".into(),
        ],
        ..PolicyConfig::default()
    };
    let run = |node_labels| {
        let mut p = Policy::new(PolicyConfig {
            node_labels,
            ..cfg.clone()
        });
        p.on_finding(&storage_finding(FindingStatus::Active, 0, &[]));
        p.tick(t(60_000))
    };
    let s = run(None);
    assert!(
        matches!(&s[..], [Step { decision: Decision::Skip(r), .. }] if r.contains("node labels unknown")),
        "{s:?}"
    );
    let s = run(labels(&[("node-role.kubernetes.io/control-plane", "")]));
    assert!(
        matches!(&s[..], [Step { decision: Decision::Skip(r), .. }] if r == "node excluded: it carries the label node-role.kubernetes.io/control-plane"),
        "{s:?}"
    );
    let s = run(labels(&[("watchdog.io/remediation", "enabled")]));
    assert_eq!(
        decisions(&s),
        vec![(ActionKind::AbortFuse, Decision::Plan { allowed: false })],
        "another value of the label is not excluded"
    );
}

#[test]
fn nothing_acts_before_the_minimum_uptime() {
    let mut p = Policy::new(PolicyConfig {
        min_uptime_ms: 600_000,
        booted_at: Some(t(0)),
        ..PolicyConfig::default()
    });
    p.on_finding(&storage_finding(FindingStatus::Active, 0, &[]));
    let s = p.tick(t(60_000));
    assert!(
        matches!(&s[..], [Step { decision: Decision::Skip(r), .. }] if r == "the node has been up 60 s, less than the minimum 600 s"),
        "{s:?}"
    );
    assert!(p.tick(t(300_000)).is_empty(), "said once");
    assert_eq!(
        decisions(&p.tick(t(600_000))),
        vec![(ActionKind::AbortFuse, Decision::Plan { allowed: false })]
    );
}
