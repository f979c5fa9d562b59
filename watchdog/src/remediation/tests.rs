//! The remediator with a budget: actions wait for it, cluster-visible ones
//! finish later, and what watchdog changed on the node is undone when the
//! finding resolves.
use std::cell::RefCell;
use std::rc::Rc;

use super::coordinator::Outcome;
use super::*;
use policy::Ladder;

const CG: &str = "/kubepods/burstable/pod0f1e/ctr1";

fn finding(status: FindingStatus, at_ms: u64) -> Finding {
    Finding::for_tests(
        Cause::PidExhaustion,
        &format!("pids_cgroup{CG}"),
        status,
        0,
        at_ms,
        vec![RemedyAction::KillContainer { cgroup: CG.into() }],
    )
}

/// Re-checks pass; every run is logged.
#[derive(Default)]
struct Recorded(Rc<RefCell<Vec<String>>>);

impl Executor for Recorded {
    fn recheck(&mut self, action: &RemedyAction) -> Result<String, String> {
        Ok(exec::describe(action))
    }
    fn execute(&mut self, action: &RemedyAction) -> Result<String, String> {
        self.0.borrow_mut().push(action.kind().name().into());
        Ok(format!("did {}", action.kind().name()))
    }
}

#[derive(Default)]
struct FakeCluster {
    /// Admission answers, in turn (then Go).
    answers: Vec<Admission>,
    submitted: Vec<(u64, ClusterAction)>,
    done: Vec<Outcome>,
    finished: Vec<FindingId>,
}

struct Shared(Rc<RefCell<FakeCluster>>);

impl Budget for Shared {
    fn admit(&mut self, _: &FindingId, _: Cause, _: ActionKind, _: Time) -> Admission {
        let mut c = self.0.borrow_mut();
        if c.answers.is_empty() {
            Admission::Go("cluster slot watchdog-remediation-0".into())
        } else {
            c.answers.remove(0)
        }
    }
    fn submit(&mut self, ticket: u64, action: &ClusterAction) -> Result<String, String> {
        self.0.borrow_mut().submitted.push((ticket, action.clone()));
        Ok("sent".into())
    }
    fn poll(&mut self) -> Vec<Outcome> {
        std::mem::take(&mut self.0.borrow_mut().done)
    }
    fn finished(&mut self, f: &FindingId, _: Time) {
        self.0.borrow_mut().finished.push(f.clone());
    }
    fn describe(&self) -> Option<String> {
        Some("cluster budget".into())
    }
}

fn statuses(rs: &[RemediationRecord]) -> Vec<(&'static str, &'static str)> {
    rs.iter()
        .map(|r| (r.action.name(), r.status.name()))
        .collect()
}

/// A journal in a directory of its own (removed when dropped).
struct TempJournal(std::path::PathBuf);

impl Drop for TempJournal {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn journal(name: &str) -> (TempJournal, Journal) {
    let dir = std::env::temp_dir().join(format!("wd-remediator-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (j, _) = Journal::open(&dir.join("journal.jsonl"), "boot-1").unwrap();
    (TempJournal(dir), j)
}

#[test]
fn actions_wait_for_the_cluster_budget_cluster_ones_finish_later_and_a_cordon_is_undone() {
    let mut cfg = PolicyConfig {
        mode: Mode::Enforce,
        allow: [ActionKind::KillContainer, ActionKind::Cordon].into(),
        cluster: true,
        ..PolicyConfig::default()
    };
    cfg.ladders.insert(
        Cause::PidExhaustion,
        Ladder {
            actions: vec![ActionKind::KillContainer, ActionKind::Cordon],
            confirm_ms: None,
        },
    );
    let cluster = Rc::new(RefCell::new(FakeCluster {
        answers: vec![
            Admission::Wait("2 of 2 slots held by node-a, node-b".into()),
            Admission::Wait("2 of 2 slots held by node-a, node-b".into()),
        ],
        ..FakeCluster::default()
    }));
    let ran = Rc::new(RefCell::new(Vec::new()));
    let (_dir, j) = journal("cluster");
    let mut r = Remediator::new(cfg, Box::new(Recorded(ran.clone())))
        .with_budget(Box::new(Shared(cluster.clone())))
        .with_journal(j, &[]);
    let t = Time::from_millis;
    assert!(r.on_finding(&finding(FindingStatus::Active, 0)).is_empty());
    let s = r.tick(t(60_000));
    assert_eq!(statuses(&s), vec![("kill_container", "skipped")]);
    assert!(s[0].reason.contains("budget: 2 of 2 slots held"), "{s:?}");
    assert!(s[0].budget.ends_with("; cluster budget"), "{s:?}");
    assert!(r.tick(t(61_000)).is_empty(), "the same wait is said once");
    assert!(ran.borrow().is_empty(), "nothing ran without a slot");
    let s = r.tick(t(62_000));
    assert_eq!(
        statuses(&s),
        vec![
            ("kill_container", "started"),
            ("kill_container", "succeeded")
        ]
    );
    assert!(
        s[0].reason
            .ends_with("(under the cluster slot watchdog-remediation-0)"),
        "{s:?}"
    );
    assert_eq!(*ran.borrow(), vec!["kill_container".to_string()]);
    // Not resolved within the step timeout: the cordon, through the
    // apiserver: started now, its outcome at a later tick.
    let s = r.tick(t(182_000));
    assert_eq!(statuses(&s), vec![("cordon", "started")]);
    let ticket = {
        let c = cluster.borrow();
        assert_eq!(c.submitted.len(), 1);
        assert_eq!(c.submitted[0].1.action, RemedyAction::Cordon);
        assert!(!c.submitted[0].1.undo);
        c.submitted[0].0
    };
    assert!(r.tick(t(183_000)).is_empty(), "still running");
    cluster.borrow_mut().done.push(Outcome {
        ticket,
        result: Ok("cordoned".into()),
        not_now: false,
    });
    assert_eq!(statuses(&r.tick(t(184_000))), vec![("cordon", "succeeded")]);
    // Resolved: the cordon is verified, the budget told, and the cordon
    // (watchdog's own) undone.
    let s = r.on_finding(&finding(FindingStatus::Resolved, 190_000));
    assert_eq!(
        statuses(&s),
        vec![("cordon", "verified"), ("cordon", "started")]
    );
    assert!(s[1].reason.starts_with("undo: "), "{s:?}");
    let undo = {
        let c = cluster.borrow();
        assert_eq!(c.finished.len(), 1);
        assert_eq!(c.submitted[1].1.action, RemedyAction::Cordon);
        assert!(c.submitted[1].1.undo);
        c.submitted[1].0
    };
    cluster.borrow_mut().done.push(Outcome {
        ticket: undo,
        result: Ok("uncordoned".into()),
        not_now: false,
    });
    let s = r.tick(t(191_000));
    assert_eq!(statuses(&s), vec![("cordon", "undone")]);
    assert_eq!(s[0].reason, "uncordoned");
}

#[test]
fn without_a_cluster_cluster_visible_actions_never_run() {
    let mut cfg = PolicyConfig {
        mode: Mode::Enforce,
        allow: [ActionKind::Cordon, ActionKind::EvictPod].into(),
        ..PolicyConfig::default()
    };
    cfg.ladders.insert(
        Cause::PidExhaustion,
        Ladder {
            actions: vec![ActionKind::Cordon],
            confirm_ms: Some(0),
        },
    );
    let ran = Rc::new(RefCell::new(Vec::new()));
    let (_dir, j) = journal("node");
    let mut r = Remediator::new(cfg, Box::new(Recorded(ran.clone()))).with_journal(j, &[]);
    r.on_finding(&finding(FindingStatus::Active, 0));
    let s = r.tick(Time::from_millis(1_000));
    assert_eq!(statuses(&s), vec![("cordon", "skipped")]);
    assert!(
        s[0].reason
            .contains("cordon acts through the apiserver, and this session has no cluster"),
        "{s:?}"
    );
    assert!(ran.borrow().is_empty());
}

#[test]
fn an_earlier_agents_cordon_is_undone_after_the_grace_and_a_failed_undo_is_retried() {
    let cluster = Rc::new(RefCell::new(FakeCluster::default()));
    let (_dir, j) = journal("inherited");
    let t0 = Time::from_millis(1_000_000);
    let mut r = Remediator::new(
        PolicyConfig {
            mode: Mode::Enforce,
            allow: [ActionKind::KillContainer].into(),
            cluster: true,
            ..PolicyConfig::default()
        },
        Box::new(Recorded::default()),
    )
    .with_budget(Box::new(Shared(cluster.clone())))
    .with_inherited(vec![(RemedyAction::Cordon, Cause::StorageHang)], t0)
    .with_journal(j, &[]);
    let t = |ms: u64| Time::from_millis(t0.0 + ms);
    assert!(
        r.tick(t(INHERITED_GRACE_MS - 1)).is_empty(),
        "within the grace"
    );
    let s = r.tick(t(INHERITED_GRACE_MS));
    assert_eq!(statuses(&s), vec![("cordon", "started")]);
    let ticket = {
        let c = cluster.borrow();
        assert!(c.submitted[0].1.undo, "an undo");
        c.submitted[0].0
    };
    cluster.borrow_mut().done.push(Outcome {
        ticket,
        result: Err("apiserver call timed out".into()),
        not_now: false,
    });
    let s = r.tick(t(INHERITED_GRACE_MS + 1_000));
    assert_eq!(statuses(&s), vec![("cordon", "failed")]);
    assert!(s[0].reason.contains("tried again in 30 s"), "{s:?}");
    assert!(r.tick(t(INHERITED_GRACE_MS + 20_000)).is_empty());
    let s = r.tick(t(INHERITED_GRACE_MS + 31_000));
    assert_eq!(statuses(&s), vec![("cordon", "started")]);
    let ticket = cluster.borrow().submitted[1].0;
    cluster.borrow_mut().done.push(Outcome {
        ticket,
        result: Ok("uncordoned (watchdog's cordon)".into()),
        not_now: false,
    });
    let s = r.tick(t(INHERITED_GRACE_MS + 32_000));
    assert_eq!(statuses(&s), vec![("cordon", "undone")]);
    assert!(
        r.tick(t(INHERITED_GRACE_MS + 100_000)).is_empty(),
        "done with it"
    );
}
