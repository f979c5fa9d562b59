//! The agent's CRI relist against a real containerd (Debian's 1.6, CRI
//! plugin on, private sockets and root): `pleg` records name containerd and
//! its endpoint; the test's containerd stopped (SIGSTOP, our own process)
//! gives a `runtime_unresponsive` finding naming the endpoint and the hung
//! `ListPodSandbox`, resolved after SIGCONT; an endpoint with nothing behind
//! it is reported once, not once per retry. A pod made over CRI as kubelet
//! makes one, whose container blocks on its volume (a frozen ext4 of the
//! test's own), gives a `storage_hang` finding that names the container and
//! the pod by name, from the relist (never from a call on the finding's path).
//!
//! Run as root, one test at a time:
//! `cargo test -p watchdog-tests --test cri -- --test-threads=1`
use std::time::Duration;

use serde_json::Value;
use watchdog_tests::containerd::{Containerd, PodSpec, skip_unless_containerd_prereqs};
use watchdog_tests::frozen::{FrozenExt4, skip_unless_freeze_prereqs};
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

#[test]
fn a_cri_pod_blocked_on_a_frozen_volume_is_named_by_pod_and_container() {
    if !skip_unless_containerd_prereqs() || !skip_unless_freeze_prereqs() {
        return;
    }
    // Drop order (reverse): agent, freeze guard (thaw, umount), containerd.
    let ctd = Containerd::start().expect("containerd starts");
    let mut fs = FrozenExt4::mount().unwrap_or_else(|e| panic!("{e}"));
    ctd.import_image()
        .unwrap_or_else(|e| panic!("{e}\n{}", ctd.log_tail()));
    let mut args = agent_args(&ctd.endpoint());
    args.extend(["--hang-threshold".to_owned(), "3s".to_owned()]);
    let agent = Agent::start_recorded(&args);
    let mp = fs.mount_point().to_string_lossy().into_owned();
    let uid = format!(
        "7a1c0d2e-{:04x}-4b5e-8c9d-0242ac120003",
        std::process::id() & 0xffff
    );
    let name = format!("web-{}", std::process::id());
    fs.freeze().unwrap_or_else(|e| panic!("{e}"));
    let pod = ctd
        .run_pod(&PodSpec {
            namespace: "shop".into(),
            name: name.clone(),
            uid: uid.clone(),
            container: "app".into(),
            command: ["sh", "-c", "echo x > /data/f; sleep 600"]
                .map(String::from)
                .to_vec(),
            mounts: vec![(mp.clone(), "/data".into())],
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", ctd.log_tail()));
    let named = |v: &Value| {
        v["type"] == "finding"
            && v["cause"] == "storage_hang"
            && v["mount_point"] == mp.as_str()
            && v["containers"].as_array().is_some_and(|c| {
                c.iter().any(|c| {
                    c["container_id"] == pod.container_id.as_str()
                        && c["container_name"] == "app"
                        && c["pod"]["name"] == name.as_str()
                })
            })
    };
    let Some(rec) = agent.wait_for_record(named, Duration::from_secs(20)) else {
        let _ = fs.thaw();
        ctd.remove_pod(&pod);
        let names: Vec<String> = agent
            .recording()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("runtime_names"))
            .map(str::to_owned)
            .collect();
        panic!(
            "no storage_hang finding naming container app of pod shop/{name}\nnames observed: {names:#?}\n{}\n{}",
            agent.report(),
            ctd.log_tail()
        );
    };
    let f = &rec.value;
    let c = f["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["container_id"] == pod.container_id.as_str())
        .unwrap();
    assert_eq!(c["pod"]["namespace"], "shop", "{f:#}");
    assert_eq!(c["pod"]["uid"], uid.as_str(), "{f:#}");
    let pods = f["pods"].to_string();
    assert!(pods.contains(&format!("\"name\":\"{name}\"")), "{pods}");
    assert!(pods.contains("\"namespace\":\"shop\""), "{pods}");
    fs.thaw().unwrap_or_else(|e| panic!("{e}"));
    ctd.remove_pod(&pod);
    drop(agent);
    drop(fs);
    drop(ctd);
}
