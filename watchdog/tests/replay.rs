//! Golden replays: every recording in tests/golden/*.jsonl (made by a real
//! `watchdog trace --record` session on this kind of fault) is diagnosed
//! offline, and its findings, warnings and summary must equal the
//! `*.expected.json` next to it. `WATCHDOG_BLESS=1` rewrites the expected
//! files after an intended change (review the diff).
use std::path::{Path, PathBuf};

use serde_json::Value;
use watchdog::sinks::{Capture, Record};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn replay_records(path: &Path) -> Vec<Value> {
    let mut cap = Capture::default();
    watchdog::replay::replay(path, &mut cap)
        .unwrap_or_else(|e| panic!("replay of {} failed: {e:#}", path.display()));
    cap.0
        .iter()
        .filter(|r| !matches!(r, Record::Replay(_)))
        .map(|r| serde_json::to_value(r).unwrap())
        .collect()
}

fn check(name: &str) -> Vec<Value> {
    let rec = golden_dir().join(format!("{name}.jsonl"));
    let expected_path = golden_dir().join(format!("{name}.expected.json"));
    let got = replay_records(&rec);
    let got_text = serde_json::to_string_pretty(&got).unwrap() + "\n";
    if std::env::var_os("WATCHDOG_BLESS").is_some() {
        std::fs::write(&expected_path, &got_text).unwrap();
    }
    let want = std::fs::read_to_string(&expected_path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with WATCHDOG_BLESS=1 to create it)",
            expected_path.display()
        )
    });
    if got_text != want {
        let tmp = std::env::temp_dir().join(format!("{name}.got.json"));
        std::fs::write(&tmp, &got_text).unwrap();
        panic!(
            "replay of {name} differs from {}; got written to {} (diff them; WATCHDOG_BLESS=1 accepts)",
            expected_path.display(),
            tmp.display()
        );
    }
    got
}

fn findings<'a>(records: &'a [Value], cause: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["type"] == "finding" && r["cause"] == cause)
        .collect()
}

#[test]
fn every_golden_recording_has_an_expected_file() {
    for e in std::fs::read_dir(golden_dir()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "jsonl") {
            let exp = p.with_extension("expected.json");
            assert!(exp.exists(), "{} has no {}", p.display(), exp.display());
        }
    }
}

#[test]
fn pid_exhaustion_cgroup() {
    let r = check("pid_exhaustion_cgroup");
    let f = findings(&r, "pid_exhaustion");
    let statuses: Vec<&str> = f.iter().map(|f| f["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["active", "update", "resolved"], "{f:#?}");
    assert_eq!(f[0]["limit"], "pids_cgroup");
    assert_eq!(f[0]["confidence"], "certain");
    // first_seen is stable across the finding's life; the timeline grows.
    assert!(f.iter().all(|x| x["first_seen"] == f[0]["first_seen"]));
    assert_eq!(f[2]["timeline"].as_array().unwrap().len(), 3);
    assert!(f[2]["duration_s"].as_f64().unwrap() > 0.0);
    let summary = r.last().unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["active"].as_array().unwrap().len(), 0);
}

/// The session's remediation policy is in the recording's header: the
/// replay plans with it (dry-run: a replay acts on nothing), the same steps
/// every time.
#[test]
fn remediation_pid_enforce() {
    let r = check("remediation_pid_enforce");
    let steps: Vec<&Value> = r.iter().filter(|v| v["type"] == "remediation").collect();
    assert_eq!(steps.len(), 1, "{steps:#?}");
    let s = steps[0];
    assert_eq!(s["action"], "kill_container");
    assert_eq!(s["status"], "planned");
    assert_eq!(s["mode"], "dry-run", "a replay never enforces: {s}");
    assert_eq!(s["target"], "cgroup /wd-golden-5987");
    assert_eq!(s["cause"], "pid_exhaustion");
    assert!(
        s["reason"]
            .as_str()
            .unwrap()
            .starts_with("dry-run: would kill every task of cgroup /wd-golden-5987"),
        "{s}"
    );
    assert_eq!(s["budget"], "1 of 3 actions this hour");
    // After the delay from the finding's first report.
    let f = findings(&r, "pid_exhaustion");
    let first = f[0]["first_seen"].as_str().unwrap();
    assert!(s["at"].as_str().unwrap() > first, "{s} vs {first}");
    // The same recording without a policy in its header (older
    // recordings): the default, whose 1 min delay this short fault never
    // reaches.
    let plain = check("pid_exhaustion_cgroup");
    assert!(!plain.iter().any(|v| v["type"] == "remediation"));
}

/// The storage-hang recording under a policy with a ladder of its own
/// (abort_fuse, cordon, escalate; a 1 s confirm time, 2 s per rung) and a
/// minimum uptime the node reaches during the recording: the first rung
/// waits for the uptime, then is planned; the cluster-visible rungs are
/// skipped, since a replay (like a `trace` by hand) has no cluster.
#[test]
fn remediation_storage_ladder() {
    let r = check("remediation_storage_ladder");
    let steps: Vec<(String, String, String)> = r
        .iter()
        .filter(|v| v["type"] == "remediation")
        .map(|s| {
            (
                s["action"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
                s["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let shape: Vec<(&str, &str)> = steps
        .iter()
        .map(|(a, s, _)| (a.as_str(), s.as_str()))
        .collect();
    assert_eq!(
        shape,
        vec![
            ("abort_fuse", "skipped"),
            ("abort_fuse", "planned"),
            ("cordon", "skipped"),
            ("escalate", "skipped"),
        ],
        "{steps:#?}"
    );
    assert!(
        steps[0].2.starts_with("the node has been up "),
        "{steps:#?}"
    );
    assert!(
        steps[0].2.ends_with("less than the minimum 16 s"),
        "{steps:#?}"
    );
    assert!(
        steps[1]
            .2
            .starts_with("dry-run: would abort FUSE connection "),
        "{steps:#?}"
    );
    assert!(!steps[1].2.contains("enforce needs"), "allowed: {steps:#?}");
    assert!(
        steps[2]
            .2
            .contains("cordon acts through the apiserver, and this session has no cluster"),
        "{steps:#?}"
    );
}

#[test]
fn bad_recordings_give_clear_errors() {
    let dir = std::env::temp_dir().join(format!("wd-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("garbage.jsonl");
    std::fs::write(&p, "this is not json\n").unwrap();
    let mut cap = Capture::default();
    let e = watchdog::replay::replay(&p, &mut cap)
        .unwrap_err()
        .to_string();
    assert!(e.contains("garbage.jsonl:1"), "{e}");
    let e = watchdog::replay::replay(&dir.join("missing.jsonl"), &mut cap)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot open recording"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Recorded by tests/tests/pleg.rs (WATCHDOG_GOLDEN_OUT): a private dockerd
/// whose `docker start` blocks on a hung FUSE volume, so the agent's relist
/// has one inspect that never answers, then kubelet's PLEG log line.
#[test]
fn runtime_unresponsive_hung_inspect() {
    let r = check("runtime_unresponsive_hung_inspect");
    let f = findings(&r, "runtime_unresponsive");
    assert!(!f.is_empty(), "no runtime_unresponsive finding");
    assert_eq!(f[0]["status"], "active");
    assert_eq!(f[0]["hung"][0]["call"], "inspect", "{:#}", f[0]);
    assert!(
        f[0]["pleg"]["message"]
            .as_str()
            .unwrap()
            .starts_with("PLEG stale for"),
        "{:#}",
        f[0]
    );
    let pleg: Vec<&Value> = r.iter().filter(|v| v["type"] == "pleg").collect();
    assert!(pleg.iter().any(|p| p["status"] == "stalled"), "{pleg:#?}");
    assert!(
        pleg.iter().any(|p| p["kubelet_reports_unhealthy"] == true),
        "the kubelet log line must make PLEG unhealthy: {pleg:#?}"
    );
}

/// Recorded by tests/tests/agent_run.rs (`watchdog run`, WATCHDOG_GOLDEN_OUT):
/// a runtime-named process stuck on a FUSE mount that never answers while a
/// pids cgroup is exhausted. Two causes at once, then both released.
#[test]
fn mixed_pid_storage() {
    let r = check("mixed_pid_storage");
    let s = findings(&r, "storage_hang");
    let p = findings(&r, "pid_exhaustion");
    assert_eq!(
        s.first().map(|f| &f["status"]),
        Some(&Value::from("active"))
    );
    assert_eq!(
        p.first().map(|f| &f["status"]),
        Some(&Value::from("active"))
    );
    assert_eq!(s.last().unwrap()["status"], "resolved");
    assert_eq!(p.last().unwrap()["status"], "resolved");
    let (sid, pid) = (&s[0]["id"], &p[0]["id"]);
    let names = |f: &&Value, other: &Value| {
        f["concurrent"]
            .as_array()
            .is_some_and(|c| c.contains(other))
    };
    assert!(s.iter().any(|f| names(f, pid)), "storage never names {pid}");
    assert!(p.iter().any(|f| names(f, sid)), "pid never names {sid}");
    assert_eq!(s[0]["wait"], "fuse");
    assert_eq!(p[0]["limit"], "pids_cgroup");
}

/// Recorded by tests/tests/pleg.rs with storage tracking on: dockerd blocks
/// in newfstatat on a hung FUSE volume while starting a container, the
/// agent's relist finds the container's inspect hung. First the runtime
/// fallback, then the kernel cause: the storage hang explains PLEG.
#[test]
fn storage_hang_dockerd_pleg() {
    let r = check("storage_hang_dockerd_pleg");
    let rt = findings(&r, "runtime_unresponsive");
    let st = findings(&r, "storage_hang");
    assert_eq!(rt[0]["status"], "active");
    let resolved = rt
        .iter()
        .find(|f| f["status"] == "resolved")
        .expect("runtime_unresponsive resolves once the kernel cause is found");
    let sid = st[0]["id"].as_str().unwrap();
    assert!(
        resolved["summary"]
            .as_str()
            .unwrap()
            .contains(&format!("explained by {sid}")),
        "{resolved:#}"
    );
    assert_eq!(st[0]["wait"], "fuse");
    assert!(
        st[0]["blocked"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["comm"] == "dockerd"),
        "{:#}",
        st[0]
    );
    let link = st
        .iter()
        .rev()
        .find_map(|f| f["pleg"]["message"].as_str())
        .expect("the storage finding carries the PLEG link");
    assert!(
        link.starts_with("PLEG stale for") && link.ends_with(&format!("explained by {sid}")),
        "{link}"
    );
}

fn systemd_statuses(r: &[Value]) -> Vec<(String, String)> {
    findings(r, "systemd_hang")
        .iter()
        .map(|f| {
            (
                f["status"].as_str().unwrap().to_owned(),
                f["stuck"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[test]
fn systemd_hang_bus_stopped() {
    let r = check("systemd_hang_bus_stopped");
    let s = systemd_statuses(&r);
    assert_eq!(s.first().map(|x| x.0.as_str()), Some("active"), "{s:?}");
    assert!(s.iter().all(|x| x.1 == "bus_not_reading"), "{s:?}");
    assert_eq!(s.last().map(|x| x.0.as_str()), Some("resolved"), "{s:?}");
    let f = findings(&r, "systemd_hang");
    assert_eq!(f[0]["socket"], "/var/run/dbus/system_bus_socket");
    assert_eq!(f[0]["waiting"][0]["comm"], "runc");
}

#[test]
fn systemd_hang_never_reply() {
    let r = check("systemd_hang_never_reply");
    let s = systemd_statuses(&r);
    assert_eq!(s.first().map(|x| x.0.as_str()), Some("active"), "{s:?}");
    assert!(s.iter().all(|x| x.1 == "systemd_not_replying"), "{s:?}");
    assert_eq!(s.last().map(|x| x.0.as_str()), Some("resolved"), "{s:?}");
    let last = *findings(&r, "systemd_hang").last().unwrap();
    assert!(
        last["summary"]
            .as_str()
            .unwrap()
            .contains("replies flow again"),
        "{last}"
    );
}

#[test]
fn systemd_hang_private_stop_reading() {
    let r = check("systemd_hang_private_stop_reading");
    let f = findings(&r, "systemd_hang");
    assert_eq!(f[0]["status"], "active");
    assert_eq!(f[0]["socket"], "/run/systemd/private");
    assert_eq!(f[0]["stuck"], "systemd_not_reading");
    assert_eq!(f[0]["waiting"][0]["write_stalled"], true);
    assert_eq!(f.last().unwrap()["status"], "resolved");
}
