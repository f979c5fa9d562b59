//! The cluster budget and actions against the in-memory apiserver
//! (`mock.rs`), with tokio's paused clock: 50 agents racing for 2 slots,
//! expiry judged on the observer's clock whatever the holder's wall clock
//! says, renewal, the rate window, K from the pool, the breaker, an
//! apiserver that is down, and actions that undo only their own.
use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::json;
use tokio::time::{Instant, advance, sleep};

use super::mock::{Down, Mock};
use super::*;
use crate::model::Time;
use crate::model::finding::Cause;

const NS: &str = "watchdog";
const YEAR_MS: u64 = 365 * 24 * 3600 * 1000;

fn cfg(max_nodes: u32, max_percent: u32) -> LeaseConfig {
    LeaseConfig {
        max_nodes,
        max_percent,
        lease_duration: Duration::from_secs(15),
        skew_margin: Duration::from_secs(2),
        rate_max: 10_000,
        rate_window: Duration::from_secs(3600),
        timeout: Duration::from_secs(1),
        ..LeaseConfig::new(NS)
    }
}

fn mock_with_nodes(seed: u64, n: usize) -> Mock {
    let m = Mock::new(seed);
    for i in 0..n {
        m.state()
            .add_node(&format!("node-{i}"), json!({"pool": "a"}));
    }
    m
}

/// A wall clock that follows tokio's (paused) clock, offset by `skew_ms`.
fn wall(skew_ms: i64) -> lease::WallClock {
    let start = Instant::now();
    let base = 1_700_000_000_000i64 + skew_ms;
    Arc::new(move || Time((base + start.elapsed().as_millis() as i64) as u64))
}

fn agent(m: &Mock, node: &str, c: LeaseConfig) -> Semaphore {
    Semaphore::with_identity(m.client(), format!("{node}_start1"), c).with_wall_clock(wall(0))
}

fn intent() -> Intent {
    Intent {
        finding: "pid_exhaustion/pids_cgroup/kubepods/pod1".into(),
        cause: "pid_exhaustion".into(),
        action: "kill_container".into(),
        target: "cgroup /kubepods/pod1".into(),
    }
}

fn held(a: &Acquire) -> &Slot {
    match a {
        Acquire::Held(s) => s,
        other => panic!("expected a slot, got: {other}"),
    }
}

/// 50 agents, K = 2: never more than 2 agents acting at once (checked by
/// the agents at every acquisition, and by the mock after every write:
/// slots within K, no holder in two slots); every agent gets its turn;
/// the races were real (409s).
#[tokio::test(start_paused = true)]
async fn fifty_agents_race_for_two_slots() {
    for seed in 1..=4u64 {
        let m = mock_with_nodes(seed, 50);
        m.state().max_slots = Some(2);
        let acting: Arc<Mutex<BTreeSet<usize>>> = Arc::default();
        let max_acting = Arc::new(Mutex::new(0usize));
        let mut tasks = Vec::new();
        for i in 0..50usize {
            let (m, acting, max_acting) = (m.clone(), acting.clone(), max_acting.clone());
            tasks.push(tokio::spawn(async move {
                let mut sem = agent(&m, &format!("node-{i}"), cfg(2, 100));
                let mut rng = seed * 7919 + i as u64 * 104_729 + 1;
                let mut next = move || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                };
                let mut tries = 0u32;
                loop {
                    tries += 1;
                    match sem.acquire(&intent()).await {
                        Acquire::Held(slot) => {
                            assert!(sem.may_act());
                            assert!(slot.index < 2 && slot.holders.len() <= 2, "{slot:?}");
                            {
                                let mut a = acting.lock().unwrap();
                                a.insert(i);
                                assert!(a.len() <= 2, "seed {seed}: agents acting at once: {a:?}");
                                let mut mx = max_acting.lock().unwrap();
                                *mx = (*mx).max(a.len());
                            }
                            sleep(Duration::from_millis(500 + next() % 3000)).await;
                            assert!(matches!(sem.renew().await, Renew::Renewed { .. }));
                            sleep(Duration::from_millis(next() % 2000)).await;
                            acting.lock().unwrap().remove(&i);
                            sem.release().await.unwrap();
                            return tries;
                        }
                        Acquire::Full { slots, holders } => {
                            assert_eq!(slots, 2);
                            assert!(holders.len() <= 2, "{holders:?}");
                        }
                        other => panic!("seed {seed}: agent {i}: {other}"),
                    }
                    sleep(Duration::from_millis(500 + next() % 4000)).await;
                }
            }));
        }
        let all = async {
            let mut turns = 0;
            for t in tasks {
                t.await.unwrap();
                turns += 1;
            }
            turns
        };
        let turns = tokio::time::timeout(Duration::from_secs(24 * 3600), all)
            .await
            .unwrap_or_else(|_| panic!("seed {seed}: not every agent got a turn"));
        assert_eq!(turns, 50);
        assert_eq!(
            *max_acting.lock().unwrap(),
            2,
            "seed {seed}: both slots used"
        );
        let s = m.state();
        assert!(s.conflicts > 0, "seed {seed}: no race happened");
        for i in 0..2 {
            let l = s.lease(NS, &lease::slot_name(i)).unwrap();
            assert!(l["spec"]["holderIdentity"].is_null(), "released: {l}");
            assert!(l["spec"]["leaseTransitions"].as_i64().unwrap() > 0);
        }
        assert!(s.lease(NS, &lease::slot_name(2)).is_none());
    }
}

/// A holder that stops renewing loses its slot only once the record has
/// been unchanged for leaseDuration (+ margin) on the OBSERVER's clock,
/// whatever the holder's wall clock wrote into renewTime; the holder
/// itself stops acting before that.
#[tokio::test(start_paused = true)]
async fn expiry_is_judged_on_the_observers_clock() {
    for skew in [0i64, YEAR_MS as i64, -(YEAR_MS as i64)] {
        let m = mock_with_nodes(3, 3);
        let mut a = Semaphore::with_identity(m.client(), "node-0_a".into(), cfg(1, 100))
            .with_wall_clock(wall(skew));
        let mut b = agent(&m, "node-1", cfg(1, 100));
        let mut c = agent(&m, "node-2", cfg(1, 100));
        held(&a.acquire(&intent()).await);
        let renew_time =
            m.state().lease(NS, "watchdog-remediation-0").unwrap()["spec"]["renewTime"].clone();
        // B first sees A's record at t=0, C at t=10.
        let full = b.acquire(&intent()).await;
        assert_eq!(
            full.to_string(),
            "1 of 1 slots held by node-0",
            "skew {skew}"
        );
        advance(Duration::from_secs(10)).await;
        assert!(matches!(c.acquire(&intent()).await, Acquire::Full { .. }));
        assert!(matches!(b.acquire(&intent()).await, Acquire::Full { .. }));
        // t=16: A no longer may act (15 s since its last write was sent);
        // B still waits for the margin.
        advance(Duration::from_secs(6)).await;
        assert!(!a.may_act(), "skew {skew}");
        assert!(matches!(b.acquire(&intent()).await, Acquire::Full { .. }));
        // t=18: 18 s on B's clock (> 15 + 2): expired for B; 8 s for C.
        advance(Duration::from_secs(2)).await;
        assert!(
            matches!(c.acquire(&intent()).await, Acquire::Full { .. }),
            "skew {skew}: C saw the record only 8 s ago"
        );
        let slot = held(&b.acquire(&intent()).await).clone();
        assert_eq!(slot.name, "watchdog-remediation-0");
        {
            let s = m.state();
            let l = s.lease(NS, "watchdog-remediation-0").unwrap();
            assert_eq!(l["spec"]["holderIdentity"], "node-1_start1");
            assert_eq!(l["spec"]["leaseTransitions"], 1);
            assert_ne!(l["spec"]["renewTime"], renew_time);
        }
        // A comes back: its renewal is refused; it knows it lost.
        match a.renew().await {
            Renew::Lost(why) => assert!(why.contains("node-1_start1"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(a.holding().is_none() && !a.may_act());
    }
}

/// Renewing keeps the slot: its record changes, so nobody's clock runs out.
#[tokio::test(start_paused = true)]
async fn renewal_keeps_the_slot() {
    let m = mock_with_nodes(4, 3);
    let mut a = agent(&m, "node-0", cfg(1, 100));
    let mut b = agent(&m, "node-1", cfg(1, 100));
    held(&a.acquire(&intent()).await);
    for _ in 0..24 {
        advance(Duration::from_secs(5)).await;
        assert!(matches!(a.renew().await, Renew::Renewed { .. }));
        assert!(a.may_act());
        assert!(matches!(b.acquire(&intent()).await, Acquire::Full { .. }));
    }
    // acquire() while holding renews too.
    let slot = held(&a.acquire(&intent()).await).clone();
    assert_eq!(slot.holder, "node-0_start1");
    a.release().await.unwrap();
    assert!(!a.may_act());
    held(&b.acquire(&intent()).await);
}

/// The apiserver down (failing or hanging): no lease, nothing written,
/// no cluster-visible action; a holder that cannot renew stops acting
/// after its lease duration.
#[tokio::test(start_paused = true)]
async fn apiserver_down_means_nothing_cluster_wide() {
    for down in [Down::Error, Down::Hang] {
        let m = mock_with_nodes(5, 3);
        let mut holder = agent(&m, "node-2", cfg(2, 100));
        held(&holder.acquire(&intent()).await);
        m.state().down = down;
        let mut a = agent(&m, "node-0", cfg(2, 100));
        let r = a.acquire(&intent()).await;
        assert!(matches!(r, Acquire::Unreachable(_)), "{r}");
        let text = r.to_string();
        assert!(
            text.contains("no lease, no cluster-visible action"),
            "{text}"
        );
        if down == Down::Hang {
            assert!(text.contains("no answer within 1s"), "{text}");
        }
        assert!(matches!(holder.renew().await, Renew::Unreachable(_)));
        assert!(holder.may_act(), "still within the lease");
        advance(Duration::from_secs(16)).await;
        assert!(matches!(holder.renew().await, Renew::Unreachable(_)));
        assert!(!holder.may_act(), "unrenewed for the lease duration");
        let actions = NodeActions::new(
            m.client(),
            "node-0",
            "node-0_start1",
            Duration::from_secs(1),
        );
        assert!(actions.cordon("test").await.is_err());
        assert!(actions.taint(Cause::PidExhaustion).await.is_err());
        assert!(
            !breaker::check(m.client(), Cause::PidExhaustion, &BreakerConfig::default())
                .await
                .is_closed()
        );
        let s = m.state();
        assert_eq!(s.leases.len(), 1, "only the earlier holder's slot");
        assert!(
            s.lease(NS, "watchdog-remediation-0").unwrap()["spec"]["holderIdentity"]
                == "node-2_start1"
        );
        assert!(s.node("node-0")["spec"]["unschedulable"].is_null());
    }
    // Nodes that cannot be counted: unreachable, not some K.
    let m = mock_with_nodes(6, 3);
    m.state().fail_node_list = true;
    let r = agent(&m, "node-0", cfg(2, 100)).acquire(&intent()).await;
    assert!(r.to_string().contains("cannot count the pool"), "{r}");
    assert!(m.state().leases.is_empty());
}

/// At most R acquisitions per window, released leases included; the
/// window slides on.
#[tokio::test(start_paused = true)]
async fn rate_window() {
    let m = mock_with_nodes(7, 10);
    let c = LeaseConfig {
        rate_max: 3,
        ..cfg(2, 100)
    };
    let mut agents: Vec<Semaphore> = (0..4)
        .map(|i| agent(&m, &format!("node-{i}"), c.clone()))
        .collect();
    for a in agents.iter_mut().take(3) {
        held(&a.acquire(&intent()).await);
        a.release().await.unwrap();
        advance(Duration::from_secs(60)).await;
    }
    let r = agents[3].acquire(&intent()).await;
    assert_eq!(
        r.to_string(),
        "rate window full: 3 acquisitions in the last 1h (at most 3)"
    );
    // Each took the free slot 0: its history holds all three (a single
    // acquireTime could never count more acquisitions than there are slots).
    let hist = m.state().lease(NS, "watchdog-remediation-0").unwrap()["metadata"]["annotations"]
        [lease::ACQUISITIONS]
        .as_str()
        .unwrap()
        .split(',')
        .count();
    assert_eq!(hist, 3);
    // t = 180 s now; the first acquisition (t = 0) leaves the window at 3600 s.
    advance(Duration::from_secs(3590 - 180)).await;
    assert!(matches!(
        agents[3].acquire(&intent()).await,
        Acquire::RateLimited { .. }
    ));
    advance(Duration::from_secs(15)).await;
    held(&agents[3].acquire(&intent()).await);
}

/// K from the pool: 10 % of 5 nodes is 1 slot; the selector picks the pool.
#[tokio::test(start_paused = true)]
async fn k_from_percent_of_the_pool() {
    let m = mock_with_nodes(8, 5);
    let mut a = agent(&m, "node-0", cfg(3, 10));
    let mut b = agent(&m, "node-1", cfg(3, 10));
    let slot = held(&a.acquire(&intent()).await).clone();
    assert_eq!(slot.slots, 1);
    assert_eq!(
        slot.holders,
        vec!["node-0".to_owned()],
        "{}",
        Acquire::Held(slot.clone())
    );
    assert_eq!(
        b.acquire(&intent()).await.to_string(),
        "1 of 1 slots held by node-0"
    );
    // 20 more nodes elsewhere: 25 % of a pool of 25 is 6, capped at 3...
    for i in 0..20 {
        m.state()
            .add_node(&format!("other-{i}"), json!({"pool": "b"}));
    }
    let mut c = agent(&m, "node-2", cfg(3, 25));
    assert_eq!(held(&c.acquire(&intent()).await).slots, 3);
    // ...but the pool `pool=a` is 5 nodes: 1 slot, held.
    let mut d = agent(
        &m,
        "node-3",
        LeaseConfig {
            node_selector: Some("pool=a".into()),
            ..cfg(3, 25)
        },
    );
    assert!(matches!(
        d.acquire(&intent()).await,
        Acquire::Full { slots: 1, .. }
    ));
}

/// The breaker over the Nodes' conditions, and the pool paged.
#[tokio::test]
async fn breaker_counts_nodes_showing_the_cause() {
    let m = mock_with_nodes(9, 1200);
    let cfgb = BreakerConfig {
        max_nodes: Some(3),
        max_percent: Some(10),
        node_selector: None,
        timeout: Duration::from_secs(5),
    };
    for i in 0..3 {
        m.state().node_mut(&format!("node-{i}"))["status"]["conditions"] =
            json!([{"type": "PIDExhausted", "status": "True"}]);
    }
    let v = breaker::check(m.client(), Cause::PidExhaustion, &cfgb).await;
    assert_eq!(
        v.to_string(),
        "breaker closed: 3 of 1200 nodes show PIDExhausted"
    );
    m.state().node_mut("node-3")["status"]["conditions"] =
        json!([{"type": "PIDExhausted", "status": "True"}]);
    let v = breaker::check(m.client(), Cause::PidExhaustion, &cfgb).await;
    assert!(!v.is_closed());
    assert!(v.to_string().contains("more than 3 nodes"), "{v}");
    assert!(
        breaker::check(m.client(), Cause::StorageHang, &cfgb)
            .await
            .is_closed()
    );
    let pages = m
        .state()
        .calls
        .iter()
        .filter(|c| *c == "GET /api/v1/nodes")
        .count();
    assert_eq!(pages, 9, "3 checks of 3 pages of 500");
}

fn node_actions(m: &Mock) -> NodeActions {
    NodeActions::new(
        m.client(),
        "node-0",
        "node-0_start1",
        Duration::from_secs(1),
    )
}

#[tokio::test]
async fn cordon_undoes_only_its_own() {
    let m = mock_with_nodes(10, 2);
    let act = node_actions(&m);
    assert_eq!(
        act.cordon("pid_exhaustion").await.unwrap(),
        Cordon::Cordoned
    );
    {
        let s = m.state();
        let n = s.node("node-0");
        assert_eq!(n["spec"]["unschedulable"], true);
        assert!(
            n["metadata"]["annotations"][CORDONED_BY]
                .as_str()
                .unwrap()
                .starts_with("node-0_start1: pid_exhaustion")
        );
    }
    assert_eq!(act.cordon("again").await.unwrap(), Cordon::AlreadyOurs);
    assert_eq!(act.uncordon_if_ours().await.unwrap(), Uncordon::Uncordoned);
    {
        let s = m.state();
        let n = s.node("node-0");
        assert!(n["spec"]["unschedulable"].is_null());
        assert!(n["metadata"]["annotations"][CORDONED_BY].is_null());
    }
    // Cordoned by someone else: ours to leave alone, before and after.
    m.state().node_mut("node-0")["spec"]["unschedulable"] = json!(true);
    assert_eq!(act.cordon("x").await.unwrap(), Cordon::AlreadyCordoned);
    assert_eq!(act.uncordon_if_ours().await.unwrap(), Uncordon::NotOurs);
    assert_eq!(m.state().node("node-0")["spec"]["unschedulable"], true);
    // Ours, but a human uncordoned it meanwhile: only the mark goes.
    m.state().node_mut("node-0")["spec"]["unschedulable"] = json!(false);
    assert_eq!(act.cordon("y").await.unwrap(), Cordon::Cordoned);
    m.state().node_mut("node-0")["spec"]["unschedulable"] = json!(false);
    assert_eq!(act.uncordon_if_ours().await.unwrap(), Uncordon::MarkRemoved);
    assert!(m.state().node("node-0")["metadata"]["annotations"][CORDONED_BY].is_null());
}

#[tokio::test]
async fn taint_undoes_only_its_own_and_keeps_a_racers() {
    let m = mock_with_nodes(11, 2);
    m.state().node_mut("node-0")["spec"]["taints"] =
        json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]);
    let act = node_actions(&m);
    // Another writer adds a taint between our read and our write: the
    // precondition refuses our patch; we read again and keep theirs.
    m.state().race_next_node_patch = true;
    assert_eq!(act.taint(Cause::StorageHang).await.unwrap(), Taint::Added);
    let keys = |m: &Mock| -> Vec<String> {
        m.state().node("node-0")["spec"]["taints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["key"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(keys(&m), ["dedicated", "other/racer", TAINT_KEY]);
    assert_eq!(
        m.state().node("node-0")["spec"]["taints"][2]["value"],
        "storage_hang"
    );
    assert_eq!(
        act.taint(Cause::StorageHang).await.unwrap(),
        Taint::AlreadyPresent
    );
    assert_eq!(act.untaint().await.unwrap(), Untaint::Removed);
    assert_eq!(keys(&m), ["dedicated", "other/racer"]);
    assert_eq!(act.untaint().await.unwrap(), Untaint::Absent);
    assert!(!TAINT_KEY.contains("kubernetes.io"));
}

#[tokio::test]
async fn escalate_sets_its_own_condition_only() {
    let m = mock_with_nodes(12, 1);
    m.state().node_mut("node-0")["status"]["conditions"] =
        json!([{"type": "Ready", "status": "True"}, {"type": "PIDExhausted", "status": "True"}]);
    let act = node_actions(&m);
    act.escalate(Cause::PidExhaustion, "kill_container did not resolve it")
        .await
        .unwrap();
    let conds = m.state().node("node-0")["status"]["conditions"].clone();
    assert_eq!(conds.as_array().unwrap().len(), 3);
    let c = conds
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == ESCALATION_CONDITION)
        .unwrap()
        .clone();
    assert_eq!(c["status"], "True");
    assert_eq!(c["reason"], "PidExhaustionUnremedied");
    act.clear_escalation("resolved").await.unwrap();
    let conds = m.state().node("node-0")["status"]["conditions"].clone();
    assert_eq!(conds[2]["status"], "False");
    assert_eq!(conds[0]["status"], "True", "Ready untouched");
}

#[tokio::test]
async fn eviction_is_pdb_aware_and_uid_checked() {
    let m = mock_with_nodes(13, 1);
    m.state().add_pod("app", "web-0", "uid-1");
    let act = node_actions(&m);
    // A PDB refuses: not now, and the pod stays.
    m.state().evict_429 = true;
    match act.evict_pod("app", "web-0", "uid-1").await.unwrap() {
        Evict::NotNow(why) => assert!(why.contains("disruption budget"), "{why}"),
        other => panic!("{other}"),
    }
    m.state().evict_429 = false;
    // Re-created under the same name: refused, untouched.
    let r = act.evict_pod("app", "web-0", "uid-0").await.unwrap();
    assert_eq!(
        r,
        Evict::UidMismatch {
            found: "uid-1".into()
        }
    );
    assert!(m.state().pods.contains_key(&("app".into(), "web-0".into())));
    // The right pod: evicted, with the uid as a precondition.
    assert_eq!(
        act.evict_pod("app", "web-0", "uid-1").await.unwrap(),
        Evict::Evicted
    );
    assert!(m.state().pods.is_empty());
    // Gone already: success.
    assert_eq!(
        act.evict_pod("app", "web-0", "uid-1").await.unwrap(),
        Evict::Gone
    );
    let calls = m.state().calls.clone();
    assert_eq!(
        calls.iter().filter(|c| c.ends_with("/eviction")).count(),
        2,
        "no eviction posted for the wrong uid or a gone pod: {calls:?}"
    );
}

/// The whole chain on the in-memory apiserver: the remediator (enforce,
/// a ladder of `cordon`) asks the cluster budget, whose driver takes a
/// Lease slot, cordons the node, and once the finding resolves uncordons it
/// (watchdog's own cordon) and gives the slot back after the release delay.
#[tokio::test(start_paused = true)]
async fn a_cordon_runs_under_a_lease_and_is_undone_and_the_slot_released() {
    use crate::model::finding::{Finding, FindingStatus, RemedyAction};
    use crate::remediation::{
        ActionKind, Journal, Mode, PolicyConfig, Remediator, ReplayExecutor, policy::Ladder,
    };
    let m = mock_with_nodes(21, 4);
    let section = crate::config::ClusterSection {
        lease_namespace: Some(NS.into()),
        release_delay: Duration::from_secs(30),
        ..Default::default()
    };
    let (b, driver) = budget::build(
        m.client(),
        "node-0",
        &section,
        Duration::from_secs(1),
        Duration::from_secs(120),
        &[],
    );
    tokio::spawn(driver);
    let dir = std::env::temp_dir().join(format!("wd-cluster-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (journal, _) = Journal::open(&dir.join("j.jsonl"), "boot").unwrap();
    let mut cfg = PolicyConfig {
        mode: Mode::Enforce,
        allow: [ActionKind::Cordon].into(),
        cluster: true,
        ..PolicyConfig::default()
    };
    cfg.ladders.insert(
        Cause::StorageHang,
        Ladder {
            actions: vec![ActionKind::Cordon],
            confirm_ms: Some(0),
        },
    );
    let mut r = Remediator::new(cfg, Box::new(ReplayExecutor))
        .with_budget(Box::new(b))
        .with_journal(journal, &[]);
    let finding = |status: FindingStatus, at: u64| {
        Finding::for_tests(
            Cause::StorageHang,
            "/mnt/nfs",
            status,
            0,
            at,
            vec![RemedyAction::ForceUnmount {
                mount_point: "/mnt/nfs".into(),
            }],
        )
    };
    let settle = || sleep(Duration::from_millis(50));
    let statuses = |rs: &[crate::remediation::RemediationRecord]| {
        rs.iter()
            .map(|r| format!("{} {}: {}", r.action.name(), r.status.name(), r.reason))
            .collect::<Vec<_>>()
    };
    r.on_finding(&finding(FindingStatus::Active, 0));
    let s = statuses(&r.tick(Time(1_000)));
    assert_eq!(
        s,
        vec!["cordon skipped: budget: reading the node's labels (tried again at every poll)"]
    );
    settle().await;
    let lease = m
        .state()
        .lease(NS, "watchdog-remediation-0")
        .cloned()
        .unwrap();
    assert!(
        lease["spec"]["holderIdentity"]
            .as_str()
            .unwrap()
            .starts_with("node-0_"),
        "{lease}"
    );
    let s = statuses(&r.tick(Time(2_000)));
    assert_eq!(s.len(), 1, "{s:?}");
    assert!(
        s[0].starts_with("cordon started: cordon the node (spec.unschedulable) (under the cluster slot watchdog-remediation-0 held (1 of 1 slots held by node-0))"),
        "{s:?}"
    );
    assert!(
        m.state().node("node-0")["spec"]["unschedulable"].is_null(),
        "not yet: sent to the driver"
    );
    settle().await;
    let s = statuses(&r.tick(Time(3_000)));
    assert_eq!(s, vec!["cordon succeeded: cordoned (marked as watchdog's)"]);
    assert_eq!(m.state().node("node-0")["spec"]["unschedulable"], true);
    // Resolved: verified; watchdog's cordon undone.
    let s = statuses(&r.on_finding(&finding(FindingStatus::Resolved, 10_000)));
    assert_eq!(
        s[0],
        "cordon verified: the finding resolved after this action"
    );
    assert!(s[1].starts_with("cordon started: undo: "), "{s:?}");
    settle().await;
    let s = statuses(&r.tick(Time(11_000)));
    assert_eq!(s, vec!["cordon undone: uncordoned (watchdog's cordon)"]);
    assert!(m.state().node("node-0")["spec"]["unschedulable"].is_null());
    assert!(m.state().node("node-0")["metadata"]["annotations"][CORDONED_BY].is_null());
    // The slot is kept for the release delay, then given back.
    sleep(Duration::from_secs(10)).await;
    assert!(
        m.state().lease(NS, "watchdog-remediation-0").unwrap()["spec"]["holderIdentity"]
            .as_str()
            .is_some_and(|h| h.starts_with("node-0_"))
    );
    sleep(Duration::from_secs(30)).await;
    let lease = m
        .state()
        .lease(NS, "watchdog-remediation-0")
        .cloned()
        .unwrap();
    assert!(
        lease["spec"]["holderIdentity"]
            .as_str()
            .unwrap_or("")
            .is_empty(),
        "released: {lease}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
