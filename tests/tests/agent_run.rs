//! `watchdog run`, the DaemonSet agent, on the real kernel: a config file,
//! a PID exhaustion in a pids cgroup of our own, findings on stdout, the
//! Prometheus endpoint scraped over HTTP while it lasts, and the `--record`
//! file replayed offline to the same findings.
//!
//! Run as root with one test thread (kernel state is shared).
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use serde_json::Value;
use watchdog_tests::ChildGuard;
use watchdog_tests::*;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET a path over plain HTTP/1.1; returns (status line, body).
fn http_get(port: u16, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("metrics endpoint 127.0.0.1:{port} refused: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

/// The value of one sample line (`name{labels} value`) of a metrics page.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l[series.len()..].trim().parse().ok())
}

/// `watchdog run` with a config file, metrics on 127.0.0.1:`port` and a recording.
fn start_run(
    config: &std::path::Path,
    port: u16,
    record: &std::path::Path,
    duration: &str,
) -> Agent {
    Agent::start(&[
        "run".to_owned(),
        "--config".into(),
        config.display().to_string(),
        "--metrics-addr".into(),
        format!("127.0.0.1:{port}"),
        "--record".into(),
        record.display().to_string(),
        "--duration".into(),
        duration.into(),
    ])
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("wd-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn run_reports_to_stdout_metrics_and_recording() {
    if !skip_unless_pid_exhaustion_prereqs() {
        return;
    }
    let dir = TempDir::new("run");
    let config = dir.0.join("watchdog.toml");
    let record = dir.0.join("observations.jsonl");
    std::fs::write(
        &config,
        "node_name = \"test-node\"\n[engine]\nresolve_after = \"5s\"\n[kubernetes]\nenabled = false\n",
    )
    .unwrap();
    let port = free_port();
    let agent = start_run(&config, port, &record, "90s");
    let ready = agent
        .wait_for(|v| v["type"] == "ready", Duration::ZERO)
        .unwrap()
        .0;
    assert_eq!(ready["node"], "test-node", "{ready}");
    assert!(
        ready["outputs"]
            .to_string()
            .contains(&format!("127.0.0.1:{port}/metrics")),
        "{ready}"
    );

    // Healthy node: the endpoint answers, nothing is active.
    let (status, page) = http_get(port, "/metrics");
    assert!(status.contains("200"), "{status}\n{page}");
    assert_eq!(
        sample(&page, "watchdog_findings_active{cause=\"pid_exhaustion\"}"),
        Some(0.0),
        "{page}"
    );
    assert_eq!(http_get(port, "/healthz").1, "ok\n");
    assert!(http_get(port, "/nope").0.contains("404"));

    let cg = PidsCgroup::new(8);
    let path = cg.path_in_hierarchy();
    let workload = fork_until_eagain(
        &ForkOpts::default()
            .in_cgroup(&cg)
            .failures(100_000)
            .time_limit(Duration::from_secs(15)),
    );
    let finding = agent
        .wait_for(
            |v| {
                v["type"] == "finding"
                    && v["cause"] == "pid_exhaustion"
                    && v["cgroup"] == path.as_str()
            },
            Duration::from_secs(10),
        )
        .unwrap_or_else(|| panic!("no finding for {path}\n{}", agent.report()))
        .0;
    assert_eq!(finding["limit"], "pids_cgroup", "{finding}");
    assert_eq!(finding["timeline"][0]["status"], "active", "{finding}");

    // While it is active, Prometheus sees it, and the fork probe attached.
    // (On timeout, the assertions below say which series is missing.)
    let page = wait::until_every(
        "the incident on the metrics page",
        Duration::from_secs(5),
        Duration::from_millis(200),
        || {
            let (_, page) = http_get(port, "/metrics");
            let seen = (
                sample(&page, "watchdog_findings_active{cause=\"pid_exhaustion\"}"),
                sample(
                    &page,
                    "watchdog_probe_state{probe=\"fork_failures\",state=\"attached\"}",
                ),
                sample(&page, "watchdog_kernel_events_total"),
            );
            match seen {
                (Some(a), Some(p), Some(e)) if a >= 1.0 && p == 1.0 && e >= 1.0 => Ok(page),
                _ => Err(seen),
            }
        },
    )
    .unwrap_or_else(|_| http_get(port, "/metrics").1);
    eprintln!("metrics during the incident:\n{page}");
    for (series, min) in [
        ("watchdog_findings_active{cause=\"pid_exhaustion\"}", 1.0),
        ("watchdog_findings_total{cause=\"pid_exhaustion\"}", 1.0),
        (
            "watchdog_probe_state{probe=\"fork_failures\",state=\"attached\"}",
            1.0,
        ),
        ("watchdog_kernel_events_total", 1.0),
        ("watchdog_dropped_events_total{hop=\"kernel\"}", 0.0),
        ("process_resident_memory_bytes", 1e6),
        ("process_cpu_seconds_total", 0.0),
    ] {
        let v = sample(&page, series);
        assert!(
            v.is_some_and(|v| v >= min),
            "{series} = {v:?}, want >= {min}\n{page}"
        );
    }
    assert_eq!(
        sample(&page, "watchdog_findings_active{cause=\"storage_hang\"}"),
        Some(0.0)
    );

    // The workload ends; the finding resolves after resolve_after (5 s).
    drop(workload);
    drop(cg);
    let resolved = agent
        .wait_for(
            |v| v["type"] == "finding" && v["id"] == finding["id"] && v["status"] == "resolved",
            Duration::from_secs(20),
        )
        .unwrap_or_else(|| panic!("finding never resolved\n{}", agent.report()))
        .0;
    assert_eq!(resolved["first_seen"], finding["first_seen"]);
    let page = http_get(port, "/metrics").1;
    assert_eq!(
        sample(&page, "watchdog_findings_active{cause=\"pid_exhaustion\"}"),
        Some(0.0),
        "{page}"
    );

    let live = agent.stop();
    let summary = live.last().unwrap();
    assert_eq!(summary["type"], "summary", "{summary}");
    assert!(summary["recorded"].as_u64().unwrap() > 3, "{summary}");

    // The recording replays to the same findings as the live session.
    let out = Command::new(agent_bin())
        .args(["replay", "--json"])
        .arg(&record)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replayed: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let key = |v: &Value| {
        (
            v["id"].clone(),
            v["status"].clone(),
            v["first_seen"].clone(),
            v["summary"].clone(),
        )
    };
    let live_findings: Vec<_> = live
        .iter()
        .filter(|v| v["type"] == "finding")
        .map(key)
        .collect();
    let replay_findings: Vec<_> = replayed
        .iter()
        .filter(|v| v["type"] == "finding")
        .map(key)
        .collect();
    assert_eq!(
        live_findings, replay_findings,
        "replay differs from the live session"
    );
    assert_eq!(replayed[0]["type"], "replay");
    assert_eq!(replayed[0]["node"], "test-node");
}

fn run_fails(args: &[&str]) -> String {
    let out = Command::new(agent_bin()).args(args).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "watchdog {args:?} should exit 2; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn run_stops_on_a_bad_config_or_a_taken_port() {
    let dir = TempDir::new("badcfg");
    let config = dir.0.join("bad.toml");
    std::fs::write(&config, "[probes]\narm_percent = 300\n").unwrap();
    let err = run_fails(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--duration",
        "1s",
    ]);
    assert!(
        err.contains("bad.toml")
            && err.contains("probes.arm_percent = 300: must be between 1 and 100"),
        "{err}"
    );
    std::fs::write(&config, "[metrics]\nadress = \"x\"\n").unwrap();
    let err = run_fails(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--duration",
        "1s",
    ]);
    assert!(
        err.contains("unknown field `adress`") && err.contains("line 2"),
        "{err}"
    );
    let err = run_fails(&["run", "--config", "/nonexistent/watchdog.toml"]);
    assert!(
        err.contains("cannot read config file /nonexistent/watchdog.toml"),
        "{err}"
    );

    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = run_fails(&[
        "run",
        "--metrics-addr",
        &addr,
        "--no-kubernetes",
        "--duration",
        "1s",
    ]);
    assert!(
        err.contains(&format!("--metrics-addr {addr}: cannot listen")),
        "{err}"
    );
}

/// Two causes at once, through `watchdog run`: a runtime-named process stuck
/// on a FUSE mount that never answers, while a pids cgroup is exhausted.
/// Both findings are active together, each names the other as concurrent,
/// Prometheus counts one of each, and both resolve when released.
#[test]
fn two_causes_at_once_through_run() {
    use watchdog_tests::fuse::{FuseOpts, HangingFuse, skip_unless_fuse_prereqs};
    if !skip_unless_pid_exhaustion_prereqs() || !skip_unless_fuse_prereqs() {
        return;
    }
    let dir = TempDir::new("mixed");
    // The blocked child is declared first so that it drops after the FUSE
    // guard has aborted the connection (a D-state task cannot be killed).
    let mut stuck: Option<ChildGuard>;
    let mut fuse =
        HangingFuse::start_with(FuseOpts { hang_statfs: true }).unwrap_or_else(|e| panic!("{e}"));
    let config = dir.0.join("watchdog.toml");
    let record = dir.0.join("observations.jsonl");
    std::fs::write(
        &config,
        "[engine]\nresolve_after = \"5s\"\n[storage]\nhang_threshold = \"3s\"\n\
         [pleg]\nenabled = false\n[kubernetes]\nenabled = false\n",
    )
    .unwrap();
    let port = free_port();
    let agent = start_run(&config, port, &record, "120s");

    // A process named like a runtime stats a file on the hung mount.
    let runc = dir.0.join("runc");
    std::os::unix::fs::symlink(PYTHON, &runc).unwrap();
    let mut cmd = Command::new(&runc);
    cmd.args(["-c", "import os, sys; os.stat(sys.argv[1])"])
        .arg(fuse.hang_path())
        .stdin(std::process::Stdio::null());
    stuck = Some(ChildGuard::spawn(&mut cmd, "runc (stat on the hung mount)").unwrap());
    let runc_pid = stuck.as_ref().unwrap().pid();

    let cg = PidsCgroup::new(8);
    let path = cg.path_in_hierarchy();
    let workload = fork_until_eagain(
        &ForkOpts::default()
            .in_cgroup(&cg)
            .failures(1_000_000)
            .time_limit(Duration::from_secs(40)),
    );

    let mount = fuse.mount_point().display().to_string();
    let is_storage = |v: &Value| {
        v["type"] == "finding" && v["cause"] == "storage_hang" && v["mount_point"] == mount.as_str()
    };
    let is_pid = |v: &Value| {
        v["type"] == "finding" && v["cause"] == "pid_exhaustion" && v["cgroup"] == path.as_str()
    };
    let storage = agent
        .wait_for(is_storage, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no storage_hang finding on {mount}\n{}", agent.report()))
        .0;
    let pid = agent
        .wait_for(is_pid, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no pid_exhaustion finding for {path}\n{}", agent.report()))
        .0;
    assert!(
        storage["blocked"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["pid"].as_u64() == Some(runc_pid.into()) && b["comm"] == "runc"),
        "{storage:#}"
    );
    // Whichever came second names the first as concurrent; later updates
    // of either name the other.
    let (sid, pidid) = (storage["id"].clone(), pid["id"].clone());
    let names = |v: &Value, other: &Value| {
        v["concurrent"]
            .as_array()
            .is_some_and(|c| c.contains(other))
    };
    if let Err(e) = wait::until_every(
        "the findings naming each other as concurrent",
        Duration::from_secs(15),
        Duration::from_millis(300),
        || {
            let recs = agent.records();
            let s_ok = recs.iter().any(|v| is_storage(v) && names(v, &pidid));
            let p_ok = recs.iter().any(|v| is_pid(v) && names(v, &sid));
            if s_ok && p_ok {
                Ok(())
            } else {
                Err(format!("storage: {s_ok}, pid: {p_ok}"))
            }
        },
    ) {
        panic!("{e}\n{}", agent.report());
    }
    let page = http_get(port, "/metrics").1;
    for cause in ["storage_hang", "pid_exhaustion"] {
        let series = format!("watchdog_findings_active{{cause=\"{cause}\"}}");
        assert_eq!(sample(&page, &series), Some(1.0), "{series}\n{page}");
    }

    // Release both: abort the FUSE connection, end the fork workload.
    fuse.abort().unwrap();
    drop(workload);
    drop(cg);
    if let Some(mut s) = stuck.take() {
        let _ = s.wait_timeout(Duration::from_secs(5));
    }
    for (what, id) in [("storage", &sid), ("pid", &pidid)] {
        agent
            .wait_for(
                |v| v["type"] == "finding" && v["id"] == *id && v["status"] == "resolved",
                Duration::from_secs(20),
            )
            .unwrap_or_else(|| panic!("the {what} finding never resolved\n{}", agent.report()));
    }
    let live = agent.stop();
    assert_eq!(live.last().unwrap()["type"], "summary");
    if let Some(out) = std::env::var_os("WATCHDOG_GOLDEN_OUT") {
        std::fs::copy(
            &record,
            std::path::Path::new(&out).join("mixed_pid_storage.jsonl"),
        )
        .unwrap();
    }
    drop(fuse);
}
