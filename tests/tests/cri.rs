//! The agent's CRI relist against a real containerd (Debian's 1.6, CRI
//! plugin on, private sockets and root): `pleg` records name containerd and
//! its endpoint; the test's containerd stopped (SIGSTOP, our own process)
//! gives a `runtime_unresponsive` finding naming the endpoint and the hung
//! `ListPodSandbox`, resolved after SIGCONT; an endpoint with nothing behind
//! it is reported once, not once per retry.
//!
//! Run as root, one test at a time:
//! `cargo test -p watchdog-tests --test cri -- --test-threads=1`
use std::time::Duration;

use serde_json::Value;
use watchdog_tests::containerd::{Containerd, skip_unless_containerd_prereqs};
use watchdog_tests::*;

fn agent_args(endpoint: &str) -> Vec<String> {
    [
        "trace",
        "--json",
        "--duration",
        "120s",
        "--fork-probe",
        "off",
        "--no-dbus-probe",
        "--kubelet-metrics-url",
        "off",
        "--runtime-endpoint",
        endpoint,
        "--relist-interval",
        "500ms",
        "--runtime-call-timeout",
        "2s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn runtime_finding(v: &Value, status: &str) -> bool {
    v["type"] == "finding" && v["cause"] == "runtime_unresponsive" && v["status"] == status
}

#[test]
fn cri_relist_names_containerd_and_a_stopped_containerd_is_unresponsive() {
    if !skip_unless_containerd_prereqs() {
        return;
    }
    let mut ctd = Containerd::start().expect("containerd starts");
    let endpoint = ctd.endpoint();
    let mut agent = Agent::start_recorded(&agent_args(&endpoint));

    // 1. Healthy: the agent's own relist over CRI, naming the runtime (from
    //    its Version answer) and the endpoint.
    let Some(rec) = agent.wait_for_record(
        |v| v["type"] == "pleg" && v["source"] == "agent_relist" && v["status"] == "healthy",
        Duration::from_secs(15),
    ) else {
        panic!(
            "no healthy pleg record from the CRI relist\n{}",
            agent.report()
        );
    };
    assert_eq!(rec.value["runtime"], "containerd", "{}", rec.value);
    assert_eq!(
        rec.value["runtime_endpoint"],
        endpoint.as_str(),
        "{}",
        rec.value
    );
    let src = agent
        .records()
        .into_iter()
        .find(|v| v["type"] == "source" && v["source"] == "runtime_relist")
        .expect("a runtime_relist source record");
    assert_eq!(src["state"], "available", "{src}");
    assert_eq!(src["target"], endpoint.as_str(), "{src}");

    // 2. containerd stopped: its listing hangs; the finding names the
    //    runtime, the endpoint and the call kubelet would wait on.
    ctd.signal(libc::SIGSTOP).unwrap();
    let Some(rec) =
        agent.wait_for_record(|v| runtime_finding(v, "active"), Duration::from_secs(20))
    else {
        let _ = ctd.signal(libc::SIGCONT);
        panic!("no runtime_unresponsive finding\n{}", agent.report());
    };
    let f = &rec.value;
    eprintln!("finding: {f}");
    let summary = f["summary"].as_str().unwrap();
    assert!(summary.contains("containerd"), "{summary}");
    assert!(summary.contains(&endpoint), "{summary}");
    assert!(summary.contains("ListPodSandbox"), "{summary}");
    assert_eq!(f["runtime_endpoint"], endpoint.as_str(), "{f}");
    assert_eq!(f["hung"][0]["call"], "list", "{f}");
    assert_eq!(f["hung"][0]["operation"], "ListPodSandbox", "{f}");
    assert!(agent.is_running(), "{}", agent.report());

    // 3. Resumed: the relist answers again and the finding resolves.
    ctd.signal(libc::SIGCONT).unwrap();
    let Some(rec) =
        agent.wait_for_record(|v| runtime_finding(v, "resolved"), Duration::from_secs(30))
    else {
        panic!(
            "the finding did not resolve after SIGCONT\n{}",
            agent.report()
        );
    };
    assert!(
        rec.value["summary"]
            .as_str()
            .unwrap()
            .contains("the runtime answers again"),
        "{}",
        rec.value
    );
    assert!(agent.is_running(), "{}", agent.report());
    let _ = agent.stop();
    drop(ctd);
}

#[test]
fn cri_unreachable_endpoint_is_reported_once() {
    if !skip_unless_root() {
        return;
    }
    let endpoint = format!("unix:///run/wd-no-cri-{}.sock", std::process::id());
    let agent = Agent::start_recorded(&agent_args(&endpoint));
    let Some(rec) = agent.wait_for_record(
        |v| v["type"] == "source" && v["source"] == "runtime_relist",
        Duration::from_secs(10),
    ) else {
        panic!("no source record for the runtime\n{}", agent.report());
    };
    assert_eq!(rec.value["state"], "unavailable", "{}", rec.value);
    assert_eq!(rec.value["target"], endpoint.as_str(), "{}", rec.value);
    assert!(
        rec.value["message"].as_str().unwrap().contains("Version"),
        "{}",
        rec.value
    );
    // Reported once, not once per retry: barrier 3 s of retries later, by the
    // agent's own poll clock.
    agent.wait_for_poll_after(rec.wall + Duration::from_secs(3), Duration::from_secs(10));
    let n = agent
        .records()
        .iter()
        .filter(|v| v["type"] == "source" && v["source"] == "runtime_relist")
        .count();
    assert_eq!(n, 1);
    assert!(
        !agent.records().iter().any(|v| runtime_finding(v, "active")),
        "an unreachable runtime is not a hung one:\n{}",
        agent.report()
    );
}
