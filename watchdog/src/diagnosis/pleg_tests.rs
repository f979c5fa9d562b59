use std::collections::BTreeMap;

use super::*;
use crate::model::finding::Cause;
use crate::model::{
    kubelet::{Histogram, LoggedPod, RuntimeOperation, SlowCall},
    settings::EVENTED_THRESHOLD_MS,
};

const T0: Time = Time(1_785_000_000_000);

fn at(s: u64) -> Time {
    T0.plus_millis(s * 1000)
}

fn metrics(now: Time, last_seen: Time, container_status_errors: f64) -> KubeletMetrics {
    let mut ops = BTreeMap::new();
    ops.insert(
        "container_status".to_owned(),
        RuntimeOperation {
            count: 10.0,
            sum_s: 1.0,
            errors: container_status_errors,
        },
    );
    KubeletMetrics {
        process_start: None,
        at: now,
        pleg_last_seen: Some(last_seen),
        relist_duration: None,
        relist_interval: None,
        runtime_operations: ops,
        unparseable_lines: 0,
        evented_connections: None,
        evented_connection_errors: None,
    }
}

fn relist(start: Time, listed: bool, hung: Vec<HungCall>) -> Relist {
    Relist {
        at: start,
        runtime: "docker".into(),
        endpoint: "unix:///var/run/docker.sock".into(),
        listed,
        complete: listed && hung.is_empty(),
        duration_ms: 12,
        containers: 3,
        sandboxes: 0,
        inspected: 3 - hung.len() as u32,
        inspect_errors: 0,
        error: None,
        slowest: Some(SlowCall {
            container_id: "aaa".into(),
            container_name: "web".into(),
            elapsed_ms: 4,
        }),
        hung,
    }
}

fn hung(id: &str, since: Time, now: Time) -> HungCall {
    HungCall {
        call: "inspect".into(),
        operation: Some("ContainerInspect".into()),
        container_id: Some(id.into()),
        container_name: Some(format!("name-{id}")),
        pod: None,
        since,
        elapsed_ms: now.millis_since(since),
        processes: Vec::new(),
    }
}

#[test]
fn healthy_from_kubelet_metrics() {
    let mut p = Pleg::new(PlegConfig::default());
    let e = p.metrics(&metrics(at(10), at(9), 0.0), &[]).unwrap();
    assert_eq!(e.status, PlegStatus::Healthy);
    assert_eq!(e.source, Some(PlegSource::KubeletMetrics));
    assert_eq!(e.seconds_since_relist, Some(1.0));
    assert_eq!(e.predicted_unhealthy_in_s, None);
    assert_eq!(e.threshold_s, 180.0);
    assert!(!e.kubelet_reports_unhealthy);
}

#[test]
fn stuck_last_seen_counts_down_to_unhealthy() {
    let mut p = Pleg::new(PlegConfig::default());
    p.metrics(&metrics(at(0), at(0), 0.0), &[]);
    // Scrapes keep coming, last_seen does not move.
    let mut last = None;
    for s in (5..=200).step_by(5) {
        if let Some(e) = p.metrics(&metrics(at(s), at(0), 0.0), &[]) {
            last = Some(e);
        }
        if s == 60 {
            let e = p.estimate(at(60), &[]);
            assert_eq!(e.status, PlegStatus::Stalled);
            assert_eq!(e.predicted_unhealthy_in_s, Some(120.0));
            assert!(e.message.contains("in ~120 s"), "{}", e.message);
        }
    }
    let e = last.unwrap();
    assert_eq!(e.status, PlegStatus::Unhealthy);
    assert_eq!(e.predicted_unhealthy_in_s, Some(0.0));
    assert_eq!(e.seconds_since_relist, Some(200.0));
}

#[test]
fn stale_metrics_are_not_used() {
    let mut p = Pleg::new(PlegConfig::default());
    p.metrics(&metrics(at(0), at(0), 0.0), &[]);
    let e = p.estimate(at(31), &[]);
    assert_eq!(e.status, PlegStatus::Unknown);
    assert!(e.readings.is_empty());
}

#[test]
fn one_hung_inspect_is_bounded_by_kubelets_request_timeout() {
    let mut p = Pleg::new(PlegConfig::default());
    p.relist(&relist(at(0), true, vec![]), &[]);
    // From t=10 s the inspect of "nfs" hangs; relists go on around it.
    let e = p
        .relist(
            &relist(at(30), true, vec![hung("nfs", at(10), at(30))]),
            &[],
        )
        .unwrap();
    assert_eq!(e.status, PlegStatus::Stalled);
    assert_eq!(e.source, Some(PlegSource::AgentRelist));
    assert_eq!(e.seconds_since_relist, Some(20.0));
    // One 2-minute timeout per relist stays below the 3-minute threshold.
    assert_eq!(e.predicted_unhealthy_in_s, None);
    assert_eq!(e.hung[0].container_id.as_deref(), Some("nfs"));
    assert!(
        e.message
            .contains("ContainerInspect name-nfs hung for 20 s"),
        "{}",
        e.message
    );
    p.relist(
        &relist(at(300), true, vec![hung("nfs", at(10), at(300))]),
        &[],
    );
    let e = p.estimate(at(300), &[]);
    assert_eq!(e.seconds_since_relist, Some(120.0));
    assert_eq!(e.status, PlegStatus::Stalled);
}

#[test]
fn two_hung_inspects_predict_unhealthy() {
    let mut p = Pleg::new(PlegConfig::default());
    let e = p
        .relist(
            &relist(
                at(40),
                true,
                vec![hung("a", at(10), at(40)), hung("b", at(20), at(40))],
            ),
            &[],
        )
        .unwrap();
    assert_eq!(e.status, PlegStatus::Stalled);
    assert_eq!(e.seconds_since_relist, Some(30.0));
    assert_eq!(e.predicted_unhealthy_in_s, Some(150.0));
    // Evented PLEG: 10 minutes.
    let mut p = Pleg::new(PlegConfig {
        threshold_ms: EVENTED_THRESHOLD_MS,
        evented: true,
        ..PlegConfig::default()
    });
    let e = p
        .relist(
            &relist(
                at(40),
                true,
                vec![hung("a", at(10), at(40)), hung("b", at(20), at(40))],
            ),
            &[],
        )
        .unwrap();
    // 2 x 120 s per relist < 600 s: bounded.
    assert_eq!(e.predicted_unhealthy_in_s, None);
    assert!(e.evented);
    assert_eq!(e.threshold_s, 600.0);
}

#[test]
fn hung_listing_grows_without_bound() {
    let mut p = Pleg::new(PlegConfig::default());
    p.relist(&relist(at(0), true, vec![]), &[]);
    let list = HungCall {
        call: "list".into(),
        operation: Some("ContainerList".into()),
        container_id: None,
        container_name: None,
        pod: None,
        since: at(5),
        elapsed_ms: 95_000,
        processes: Vec::new(),
    };
    let mut r = relist(at(100), false, vec![list]);
    r.error = Some("listing containers took longer than 10s".into());
    let e = p.relist(&r, &[]).unwrap();
    assert_eq!(e.seconds_since_relist, Some(100.0));
    assert_eq!(e.predicted_unhealthy_in_s, Some(80.0));
    assert!(e.message.contains("ContainerList hung"), "{}", e.message);
}

#[test]
fn node_condition_and_transitions() {
    let mut p = Pleg::new(PlegConfig::default());
    let ready = |t: Time, status: &str, pleg: Option<PlegMessage>| NodeReady {
        at: t,
        node: "worker-7".into(),
        status: Some(status.into()),
        reason: Some(
            if status == "True" {
                "KubeletReady"
            } else {
                "KubeletNotReady"
            }
            .into(),
        ),
        message: None,
        last_transition: Some(t),
        pleg,
    };
    p.node_ready(&ready(at(0), "True", None), &[]);
    let msg = PlegMessage {
        last_seen_s: 226.75,
        threshold_s: 180.0,
    };
    let e = p
        .node_ready(&ready(at(100), "False", Some(msg)), &[])
        .unwrap();
    assert_eq!(e.status, PlegStatus::Unhealthy);
    assert!(e.kubelet_reports_unhealthy);
    assert_eq!(e.source, Some(PlegSource::NodeCondition));
    assert_eq!(e.seconds_since_relist, Some(226.8));
    assert_eq!(e.node_ready.as_deref(), Some("False"));
    let e = p.node_ready(&ready(at(200), "True", None), &[]).unwrap();
    assert_eq!(e.status, PlegStatus::Unknown);
    let st: Vec<_> = e
        .node_transitions
        .iter()
        .map(|t| t.status.clone().unwrap())
        .collect();
    assert_eq!(st, ["True", "False", "True"]);
}

#[test]
fn log_lines_report_unhealthy_and_name_failures() {
    let mut p = Pleg::new(PlegConfig::default());
    p.metrics(&metrics(at(0), at(0), 2.0), &[]);
    let log = |t: Time, event: KubeletLogEvent| KubeletLog {
        at: t,
        logged: None,
        program: Some("kubelet".into()),
        event,
    };
    p.log(
        &log(
            at(1),
            KubeletLogEvent::KillContainerError {
                pod: Some(LoggedPod {
                    name: "bushuzu-nettools-88854d496-9nvlk".into(),
                    namespace: None,
                    uid: None,
                }),
                container: "bushuzu-nettools".into(),
                error: "rpc error: code = DeadlineExceeded desc = context deadline exceeded".into(),
            },
        ),
        &[],
    );
    p.metrics(&metrics(at(2), at(2), 5.0), &[]);
    let e = p
        .log(
            &log(
                at(3),
                KubeletLogEvent::PlegUnhealthy {
                    last_seen_s: 237.1,
                    threshold_s: 180.0,
                },
            ),
            &[FindingId::new(
                Cause::PidExhaustion,
                "pids_cgroup//kubepods",
            )],
        )
        .unwrap();
    assert_eq!(e.status, PlegStatus::Unhealthy);
    assert_eq!(e.source, Some(PlegSource::KubeletLog));
    assert_eq!(e.seconds_since_relist, Some(237.1));
    assert_eq!(e.runtime_errors["container_status"], 3.0);
    assert!(
        e.kubelet_errors[0]
            .contains("KillContainer bushuzu-nettools of pod bushuzu-nettools-88854d496-9nvlk")
    );
    assert_eq!(e.related_findings.len(), 1);
    assert!(
        e.message.contains("related: pid_exhaustion"),
        "{}",
        e.message
    );
    // The log reading expires: with the metrics fresh and moving, healthy again.
    p.metrics(&metrics(at(40), at(40), 5.0), &[]);
    let e = p.estimate(at(40), &[]);
    assert_eq!(e.status, PlegStatus::Healthy);
    assert!(!e.kubelet_reports_unhealthy);
}

#[test]
fn emitted_on_change_and_every_ten_seconds() {
    let mut p = Pleg::new(PlegConfig::default());
    assert!(p.tick(at(0), &[]).is_none(), "nothing known, nothing said");
    let mut emitted = Vec::new();
    for s in 1..=40 {
        // Healthy scrapes each second until 20 s, then kubelet stops relisting.
        let seen = if s <= 20 { at(s) } else { at(20) };
        if let Some(e) = p.metrics(&metrics(at(s), seen, 0.0), &[]) {
            emitted.push((s, e.status));
        }
        if let Some(e) = p.tick(at(s), &[]) {
            emitted.push((s, e.status));
        }
    }
    assert_eq!(
        emitted,
        [
            (1, PlegStatus::Healthy),
            (11, PlegStatus::Healthy),
            (21, PlegStatus::Healthy),
            (31, PlegStatus::Healthy),
            (35, PlegStatus::Stalled),
        ],
        "first, every 10 s, then at once on the change (15 s without relist)"
    );
}

#[test]
fn json_record_shape() {
    let mut p = Pleg::new(PlegConfig::default());
    let e = p
        .relist(
            &relist(
                at(40),
                true,
                vec![hung("a", at(10), at(40)), hung("b", at(20), at(40))],
            ),
            &[],
        )
        .unwrap();
    let v = serde_json::to_value(crate::sinks::Record::Pleg(Box::new(e))).unwrap();
    assert_eq!(v["type"], "pleg");
    assert_eq!(v["status"], "stalled");
    assert_eq!(v["source"], "agent_relist");
    assert_eq!(v["seconds_since_relist"], 30.0);
    assert_eq!(v["threshold_s"], 180.0);
    assert_eq!(v["predicted_unhealthy_in_s"], 150.0);
    assert_eq!(v["hung"][0]["container_id"], "a");
    assert_eq!(v["hung"][0]["elapsed_ms"], 30_000);
    assert_eq!(v["slowest_container"]["container_name"], "web");
    assert!(v["message"].as_str().unwrap().starts_with("PLEG stalled"));
}

fn with_count(mut m: KubeletMetrics, count: f64) -> KubeletMetrics {
    m.relist_interval = Some(Histogram {
        count,
        sum_s: count,
        buckets: vec![(f64::INFINITY, count)],
    });
    m
}

#[test]
fn a_gauge_ahead_of_the_clock_is_a_source_problem_not_a_reading() {
    let mut p = Pleg::new(PlegConfig::default());
    // kubelet's clock 10 minutes ahead.
    let e = p.metrics(&metrics(at(1000), at(1600), 0.0), &[]).unwrap();
    assert_eq!(e.status, PlegStatus::Unknown, "{e:?}");
    assert!(e.readings.is_empty(), "{e:?}");
    assert_eq!(e.source_problems.len(), 1, "{e:?}");
    assert!(e.source_problems[0].contains("600 s ahead"), "{e:?}");
    assert!(e.message.contains("reading left out"), "{}", e.message);
}

#[test]
fn a_gauge_older_than_kubelet_is_a_source_problem_not_a_stall() {
    // The page as captured: its gauge years old while kubelet answers.
    let mut p = Pleg::new(PlegConfig::default());
    let mut m = metrics(at(200_000_000), at(1), 0.0);
    m.process_start = Some(at(199_000_000));
    let e = p.metrics(&m, &[]).unwrap();
    assert_eq!(e.status, PlegStatus::Unknown, "{e:?}");
    assert_eq!(e.seconds_since_relist, None);
    assert!(
        e.source_problems[0].contains("older than kubelet's own start"),
        "{e:?}"
    );
}

#[test]
fn a_relist_count_that_advances_contradicts_a_stale_gauge() {
    let mut p = Pleg::new(PlegConfig::default());
    p.metrics(&with_count(metrics(at(100), at(99), 0.0), 1000.0), &[]);
    // The gauge stops at 99 while kubelet keeps counting relists.
    let e = p
        .metrics(&with_count(metrics(at(160), at(99), 0.0), 1060.0), &[])
        .unwrap();
    assert_ne!(e.status, PlegStatus::Stalled, "{e:?}");
    assert!(e.source_problems[0].contains("60 relists"), "{e:?}");
}

#[test]
fn a_relist_count_that_stops_is_a_reading_without_a_clock() {
    let mut p = Pleg::new(PlegConfig::default());
    let mut m = metrics(at(0), at(0), 0.0);
    m.pleg_last_seen = None;
    p.metrics(&with_count(m.clone(), 500.0), &[]);
    let mut m2 = m.clone();
    m2.at = at(5);
    let e = p.metrics(&with_count(m2, 505.0), &[]);
    assert!(e.is_none_or(|e| e.status != PlegStatus::Stalled));
    // Stuck from the scrape at 5 s on.
    let mut last = None;
    for s in (10..=30).step_by(5) {
        let mut m = m.clone();
        m.at = at(s);
        last = p.metrics(&with_count(m, 505.0), &[]).or(last);
    }
    let e = p.estimate(at(30), &[]);
    assert_eq!(e.source, Some(PlegSource::KubeletRelistCount), "{e:?}");
    assert_eq!(e.seconds_since_relist, Some(25.0), "{e:?}");
    assert_eq!(e.status, PlegStatus::Stalled, "{e:?}");
    assert!(last.is_some());
}

#[test]
fn exec_sync_errors_are_not_runtime_errors() {
    let mut p = Pleg::new(PlegConfig::default());
    let mut m = metrics(at(0), at(0), 0.0);
    m.runtime_operations.insert(
        "exec_sync".into(),
        RuntimeOperation {
            count: 10.0,
            sum_s: 1.0,
            errors: 1.0,
        },
    );
    p.metrics(&m, &[]);
    let mut m = metrics(at(5), at(5), 2.0);
    m.runtime_operations.insert(
        "exec_sync".into(),
        RuntimeOperation {
            count: 20.0,
            sum_s: 2.0,
            errors: 9.0,
        },
    );
    let e = p.metrics(&m, &[]).unwrap_or_else(|| p.estimate(at(5), &[]));
    assert_eq!(
        e.runtime_errors.keys().collect::<Vec<_>>(),
        vec!["container_status"],
        "{e:?}"
    );
}

#[test]
fn slow_runtime_operations_and_relists_are_named_from_kubelets_histograms() {
    let mut p = Pleg::new(PlegConfig::default());
    let mut m = metrics(at(0), at(0), 0.0);
    m.relist_duration = Some(Histogram {
        count: 100.0,
        sum_s: 10.0,
        buckets: vec![(f64::INFINITY, 100.0)],
    });
    p.metrics(&m, &[]);
    let mut m = metrics(at(5), at(5), 0.0);
    // 2 container_status calls took 8 s between the scrapes; 4 relists 6 s.
    m.runtime_operations
        .get_mut("container_status")
        .unwrap()
        .count = 12.0;
    m.runtime_operations
        .get_mut("container_status")
        .unwrap()
        .sum_s = 9.0;
    m.relist_duration = Some(Histogram {
        count: 104.0,
        sum_s: 16.0,
        buckets: vec![(f64::INFINITY, 104.0)],
    });
    let e = p.metrics(&m, &[]).unwrap_or_else(|| p.estimate(at(5), &[]));
    assert_eq!(
        e.slow_operations.get("container_status"),
        Some(&4.0),
        "{e:?}"
    );
    assert_eq!(e.relist_duration_s, Some(1.5), "{e:?}");
    assert!(
        e.message.contains("container_status 4.0 s"),
        "{}",
        e.message
    );
    assert!(e.message.contains("relists take 1.5 s"), "{}", e.message);
}

#[test]
fn evented_pleg_connection_counters_say_what_the_event_stream_does() {
    let with = |ok: Option<f64>, err: Option<f64>, t: u64| KubeletMetrics {
        evented_connections: ok,
        evented_connection_errors: err,
        ..metrics(at(t), at(t - 1), 0.0)
    };
    // Evented PLEG configured here, the stream failing between scrapes.
    let mut p = Pleg::new(PlegConfig {
        evented: true,
        ..PlegConfig::default()
    });
    let e = p.metrics(&with(Some(0.0), Some(2.0), 10), &[]).unwrap();
    assert_eq!(
        e.evented_stream.as_deref(),
        Some(
            "evented PLEG is configured but kubelet's CRI event stream never connected (kubelet_evented_pleg_connection_success_count 0, 2 errors): kubelet relists instead"
        )
    );
    let e = p.metrics(&with(Some(0.0), Some(5.0), 15), &[]).unwrap();
    let note = e.evented_stream.clone().unwrap();
    assert!(
        note.starts_with("kubelet's CRI event stream (evented PLEG) failed to connect 3 times since the previous scrape (5 in all)"),
        "{note}"
    );
    assert!(e.message.contains(&note), "{}", e.message);
    // Connected and nothing failing: nothing to say.
    let mut p = Pleg::new(PlegConfig {
        evented: true,
        ..PlegConfig::default()
    });
    let e = p.metrics(&with(Some(1.0), Some(0.0), 10), &[]).unwrap();
    assert_eq!(e.evented_stream, None);
    // Connected while this agent assumes the generic relist's threshold.
    let mut p = Pleg::new(PlegConfig::default());
    let e = p.metrics(&with(Some(1.0), Some(0.0), 10), &[]).unwrap();
    assert!(
        e.evented_stream.as_deref().is_some_and(
            |n| n.contains("its PLEG threshold is 10 min") && n.contains("pleg.evented = true")
        ),
        "{e:?}"
    );
    // A kubelet without evented PLEG metrics: nothing.
    let mut p = Pleg::new(PlegConfig::default());
    let e = p.metrics(&with(None, None, 10), &[]).unwrap();
    assert_eq!(e.evented_stream, None);
}
