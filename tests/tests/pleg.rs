//! The agent's own relist against a real (private) dockerd, and kubelet's log
//! fed to the running agent: `watchdog trace --json` must emit `"type":
//! "pleg"` records that name a container whose inspect hangs, while the agent
//! keeps relisting the others and never blocks.
//!
//! The hang is real: a container's volume source is on a FUSE mount whose
//! daemon never answers; `docker start` of it blocks inside dockerd (a stat of
//! the source, in the kernel) holding the container's lock, and every
//! `inspect` of that container waits behind it, as with the NFS-backed
//! container of kubernetes issue 94829. (`docker rm -f` of a container whose
//! process is blocked on the mount does not do it: dockerd waits for the exit
//! without the container lock, and inspect answers.)
//!
//! Run as root, one test at a time:
//! `cargo test -p watchdog-tests --test pleg -- --test-threads=1`
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use watchdog_tests::dockerd::{Dockerd, skip_unless_docker_prereqs};
use watchdog_tests::fuse::{HangingFuse, skip_unless_fuse_prereqs};
use watchdog_tests::*;

fn pleg(v: &Value) -> bool {
    v["type"] == "pleg"
}

fn hung_ids(v: &Value) -> Vec<String> {
    v["hung"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h["container_id"].as_str().map(str::to_owned))
        .collect()
}

fn agent_args(host: &str, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "trace",
        "--json",
        "--duration",
        "120s",
        "--fork-probe",
        "off",
        "--kubelet-metrics-url",
        "off",
        "--docker-host",
        host,
        "--relist-interval",
        "500ms",
        "--runtime-call-timeout",
        "2s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// `docker inspect` of `id` answers within `secs` seconds.
fn inspect_answers(d: &Dockerd, id: &str, secs: u64) -> bool {
    d.docker(&["inspect", "--format", "{{.Id}}", id], secs)
        .is_ok_and(|o| o.status.success())
}

#[test]
fn relist_healthy_then_a_hung_inspect_is_named() {
    if !skip_unless_docker_prereqs() || !skip_unless_fuse_prereqs() {
        return;
    }
    // Drop order: the FUSE guard (declared last) aborts the mount first,
    // which releases dockerd, then the Dockerd guard cleans up.
    let mut dockerd = Dockerd::start().unwrap_or_else(|e| panic!("{e}"));
    let fuse = HangingFuse::start();
    let image = dockerd.busybox_image().unwrap_or_else(|e| panic!("{e}"));
    let healthy = dockerd
        .run_detached(&[
            "--name",
            &format!("healthy-{}", std::process::id()),
            &image,
            "sleep",
            "600",
        ])
        .unwrap_or_else(|e| panic!("{e}\n{}", dockerd.log_tail()));
    // Its volume source is a path on the hanging mount: `create` does not
    // look at it, `start` does (holding the container's lock while it waits).
    let vol = format!("{}:/data", fuse.hang_path().display());
    let nfs_name = format!("nfs-{}", std::process::id());
    let nfs = dockerd
        .docker_ok(
            &[
                "create",
                "--network",
                "none",
                "--name",
                &nfs_name,
                "-v",
                &vol,
                &image,
                "sleep",
                "600",
            ],
            20,
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", dockerd.log_tail()));

    let log_dir = std::env::temp_dir().join(format!("wd-pleg-log-{}", std::process::id()));
    std::fs::create_dir_all(&log_dir).unwrap();
    // A runc of the test's own naming the container (a copy of sh called
    // `runc`, the container id in its command line), running since before
    // the call that will hang: what the hung call may wait behind, named for
    // `kill_process` by pid and start time, and killed (enforce, that action
    // only).
    let runc_bin = log_dir.join("runc");
    std::fs::copy("/bin/sh", &runc_bin).unwrap();
    let mut runc_cmd = Command::new(&runc_bin);
    // `read` from a pipe the guard keeps open: the shell waits, never forks.
    runc_cmd
        .args(["-c", "read x", &nfs])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut runc = ChildGuard::spawn(&mut runc_cmd, "a runc of the test's own").unwrap();
    let runc_pid = runc.pid();
    let log = log_dir.join("kubelet.log");
    std::fs::write(&log, "").unwrap();
    let host = dockerd.host();
    let record = log_dir.join("observations.jsonl");
    let agent = Agent::start(&agent_args(
        &host,
        &[
            "--kubelet-log",
            log.to_str().unwrap(),
            "--record",
            record.to_str().unwrap(),
            "--remediation-delay",
            "1s",
            "--remediation",
            "enforce",
            "--allow-actions",
            "kill_process",
            "--remediation-journal",
            log_dir.join("remediation.jsonl").to_str().unwrap(),
        ],
    ));

    // 1. Healthy: the agent relists both containers.
    let Some(rec) = agent.wait_for_record(
        |v| pleg(v) && v["status"] == "healthy" && v["source"] == "agent_relist",
        Duration::from_secs(15),
    ) else {
        panic!(
            "no healthy pleg record from the agent's relist\n{}",
            agent.report()
        );
    };
    eprintln!("healthy: {}", rec.value);
    assert!(hung_ids(&rec.value).is_empty());
    assert!(rec.value["agent_relist_ms"].as_u64().unwrap() < 2000);
    assert!(rec.value["slowest_container"]["container_id"].is_string());
    let src = agent
        .records()
        .into_iter()
        .find(|v| v["type"] == "source" && v["source"] == "runtime_relist")
        .expect("a source record for the relist");
    assert_eq!(src["state"], "available", "{src}");
    assert_eq!(src["target"], host.as_str());
    // Sources that cannot work here say so once, and the rest goes on.
    let node = agent
        .records()
        .into_iter()
        .find(|v| v["type"] == "source" && v["source"] == "node_watch")
        .expect("a source record for the node watch");
    assert_eq!(node["state"], "disabled", "{node}");

    // 2. The hang: `docker start` stats the volume source on the FUSE mount
    //    and blocks in the kernel holding the container's lock; every inspect
    //    of that container waits behind it.
    assert!(
        inspect_answers(&dockerd, &nfs, 10),
        "inspect must answer before the start"
    );
    let mut start = Command::new("timeout");
    start
        .args([
            "-s",
            "KILL",
            "100",
            "/usr/local/bin/docker",
            "-H",
            &host,
            "start",
            &nfs,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut start = ChildGuard::spawn(&mut start, "docker start (blocks)").unwrap();
    let hang_started = Instant::now();
    // Until dockerd's stat of the volume source waits for our FUSE daemon.
    let dockerd_pid = dockerd.pid();
    let blocked = wait::until(
        "a dockerd thread to block in request_wait_answer",
        Duration::from_secs(10),
        || {
            let wchans: Vec<String> = std::fs::read_dir(format!("/proc/{dockerd_pid}/task"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("wchan")).ok())
                .collect();
            if wchans.iter().any(|w| w == "request_wait_answer") {
                Ok(())
            } else {
                Err(wchans)
            }
        },
    );
    if let Err(e) = blocked {
        panic!("{e}\n{}", dockerd.log_tail());
    }
    assert!(
        start.try_wait().is_none(),
        "docker start returned: the volume source did not hang\n{}",
        dockerd.log_tail()
    );
    assert!(
        !inspect_answers(&dockerd, &nfs, 3),
        "docker inspect of the container being started answered: no hang to observe"
    );
    assert!(
        inspect_answers(&dockerd, &healthy, 5),
        "the healthy container's inspect must answer"
    );

    let Some(rec) = agent.wait_for_record(
        |v| pleg(v) && hung_ids(v).contains(&nfs),
        Duration::from_secs(15),
    ) else {
        panic!(
            "no pleg record naming the hung container {nfs}\n{}",
            agent.report()
        );
    };
    let latency = hang_started.elapsed();
    eprintln!("hung after {latency:?}: {}", rec.value);
    let v = &rec.value;
    assert_eq!(v["status"], "stalled", "{v}");
    assert_eq!(v["source"], "agent_relist");
    assert_eq!(v["hung"][0]["call"], "inspect");
    assert_eq!(v["hung"][0]["container_name"], nfs_name.as_str());
    assert!(v["hung"][0]["elapsed_ms"].as_u64().unwrap() >= 2000, "{v}");
    assert_eq!(v["threshold_s"], 180.0);
    assert!(v["message"].as_str().unwrap().contains(&nfs_name), "{v}");
    assert!(
        !hung_ids(v).contains(&healthy),
        "the healthy container is not hung: {v}"
    );

    // The engine's fallback cause: the runtime is stuck and no kernel cause
    // is proven (yet); it names the hung call.
    let Some(rec) = agent.wait_for_record(
        |v| v["type"] == "finding" && v["cause"] == "runtime_unresponsive",
        Duration::from_secs(10),
    ) else {
        panic!("no runtime_unresponsive finding\n{}", agent.report());
    };
    let f = &rec.value;
    eprintln!("runtime finding: {f}");
    assert_eq!(f["status"], "active", "{f}");
    assert_eq!(f["hung"][0]["container_name"], nfs_name.as_str(), "{f}");
    assert!(
        f["summary"]
            .as_str()
            .unwrap()
            .contains(&format!("container runtime docker at {host} unresponsive")),
        "{f}"
    );
    // The runc naming the hung container is on the hung call, and
    // `kill_process` kills it by pid and start time.
    let target = format!("process {runc_pid} (runc)");
    let Some(done) = agent.wait_for_record(
        |v| {
            v["type"] == "remediation"
                && v["action"] == "kill_process"
                && v["target"] == target.as_str()
                && v["status"] != "started"
        },
        Duration::from_secs(10),
    ) else {
        panic!(
            "no kill_process outcome for the test's runc {runc_pid}\n{}",
            agent.report()
        );
    };
    assert_eq!(done.value["status"], "succeeded", "{}", done.value);
    assert_eq!(
        done.value["cause"], "runtime_unresponsive",
        "{}",
        done.value
    );
    let named = agent.records().into_iter().any(|v| {
        pleg(&v)
            && v["hung"]
                .as_array()
                .is_some_and(|h| h.iter().any(|h| h["processes"][0]["pid"] == runc_pid))
    });
    assert!(named, "the hung call names the runc\n{}", agent.report());
    let gone = wait::until("the test's runc to exit", Duration::from_secs(5), || {
        runc.try_wait().map(|_| ()).ok_or(())
    });
    assert!(gone.is_ok(), "the runc still runs\n{}", agent.report());
    drop(runc);

    // 3. The hang keeps growing, the agent keeps relisting the rest and keeps
    //    exactly one outstanding inspect for the hung container: until a
    //    report of it 8 s older.
    let e0 = v["hung"][0]["elapsed_ms"].as_u64().unwrap();
    let elapsed = |v: &Value| v["hung"][0]["elapsed_ms"].as_u64().unwrap_or(0);
    let grown = agent
        .wait_for_record(
            |v| pleg(v) && hung_ids(v).contains(&nfs) && elapsed(v) >= e0 + 8000,
            Duration::from_secs(20),
        )
        .unwrap_or_else(|| panic!("elapsed did not grow past {e0} + 8000\n{}", agent.report()));
    let later: Vec<Value> = agent
        .full_records()
        .into_iter()
        .take_while(|r| r.at <= grown.at)
        .map(|r| r.value)
        .filter(|v| pleg(v) && hung_ids(v).contains(&nfs))
        .collect();
    let last = later.last().unwrap();
    assert_eq!(hung_ids(last), vec![nfs.clone()], "{last}");
    let e1 = last["hung"][0]["elapsed_ms"].as_u64().unwrap();
    assert!(e1 >= e0 + 8000, "elapsed did not grow: {e0} -> {e1}");
    assert_eq!(
        last["hung"][0]["since"], v["hung"][0]["since"],
        "the same outstanding call (no new request per relist)"
    );
    assert!(
        last["slowest_container"]["container_id"] == healthy.as_str(),
        "the healthy container is still inspected: {last}"
    );
    // Periodic, not every relist: 8+ s at one relist per 0.5 s.
    assert!(
        later.len() <= 4,
        "{} pleg records in the {:?} since the hang began",
        later.len(),
        grown.at.duration_since(hang_started)
    );

    // 4. kubelet says it too: its log line makes PLEG unhealthy.
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    writeln!(f, "I0729 11:20:59.245243 9575 kubelet.go:1823] skipping pod synchronization - PLEG is not healthy: pleg was last seen active 3m57.138893648s ago; threshold is 3m0s.").unwrap();
    writeln!(f, "this line means nothing").unwrap();
    let Some(rec) = agent.wait_for_record(
        |v| pleg(v) && v["status"] == "unhealthy" && v["kubelet_reports_unhealthy"] == true,
        Duration::from_secs(5),
    ) else {
        panic!(
            "the PLEG log line did not make an unhealthy record\n{}",
            agent.report()
        );
    };
    assert_eq!(rec.value["source"], "kubelet_log");
    assert_eq!(rec.value["predicted_unhealthy_in_s"], 0.0);

    // 5. The agent is alive and answers; release everything.
    let mut agent = agent;
    assert!(agent.is_running(), "{}", agent.report());
    drop(fuse);
    let _ = start.wait_timeout(Duration::from_secs(20));
    let _ = agent.stop();
    // WATCHDOG_GOLDEN_OUT=DIR keeps the recording (to refresh the golden replays).
    if let Some(dir) = std::env::var_os("WATCHDOG_GOLDEN_OUT") {
        std::fs::copy(
            &record,
            std::path::Path::new(&dir).join("pleg_hung_inspect.jsonl"),
        )
        .unwrap();
    }
    let _ = std::fs::remove_dir_all(&log_dir);
    drop(dockerd);
}

#[test]
fn unreachable_runtime_is_reported_not_fatal() {
    if !skip_unless_root() {
        return;
    }
    let sock = format!("unix:///run/wd-no-docker-{}.sock", std::process::id());
    let agent = Agent::start_recorded(&agent_args(&sock, &["--kubelet-log", "off"]));
    let Some(rec) = agent.wait_for_record(
        |v| v["type"] == "source" && v["source"] == "runtime_relist",
        Duration::from_secs(10),
    ) else {
        panic!("no source record for the runtime\n{}", agent.report());
    };
    assert_eq!(rec.value["state"], "unavailable", "{}", rec.value);
    assert!(
        rec.value["message"]
            .as_str()
            .unwrap()
            .contains("wd-no-docker"),
        "{}",
        rec.value
    );
    let log = agent
        .records()
        .into_iter()
        .find(|v| v["type"] == "source" && v["source"] == "kubelet_log")
        .expect("kubelet log source record");
    assert_eq!(log["state"], "disabled");
    assert!(log["message"].as_str().unwrap().contains("journal"));
    // Reported once, not once per retry: barrier 3 s of retries later, by the
    // agent's own poll clock.
    agent.wait_for_poll_after(rec.wall + Duration::from_secs(3), Duration::from_secs(10));
    let n = agent
        .records()
        .iter()
        .filter(|v| v["type"] == "source" && v["source"] == "runtime_relist")
        .count();
    assert_eq!(n, 1);
}
