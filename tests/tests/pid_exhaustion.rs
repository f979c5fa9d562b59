//! Real kernel tests of the agent's PID-exhaustion detection: the agent binary
//! runs `trace --json` while a workload makes the kernel refuse forks.
//!
//! Run as root with one test thread (kernel state is shared):
//! `WATCHDOG_BIN=target/release/watchdog cargo test --release -p watchdog-tests -- --test-threads=1`

use std::time::Duration;

use serde_json::Value;
use watchdog_tests::*;

/// The fork probe attached for the whole session: every failure is attributed.
const TRACE: &[&str] = &[
    "trace",
    "--json",
    "--duration",
    "60s",
    "--fork-probe",
    "always",
];
/// The default mode (`--fork-probe auto`): the probe attaches only under pressure.
const TRACE_DEFAULT: &[&str] = &["trace", "--json", "--duration", "60s"];
/// The longest a finding may take after the first refused fork.
const DETECTION_DEADLINE: Duration = Duration::from_secs(5);

fn is_pid_finding(v: &Value) -> bool {
    v["type"] == "finding" && v["cause"] == "pid_exhaustion"
}

fn process_pids(v: &Value) -> Vec<u64> {
    v["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["pid"].as_u64())
        .collect()
}

fn findings(records: &[Value]) -> Vec<&Value> {
    records.iter().filter(|v| v["type"] == "finding").collect()
}

/// Waits for the workload's first EAGAIN, then for a finding that `pred`
/// accepts; returns the finding and prints the detection latency.
fn expect_finding(
    agent: &Agent,
    workload: &ForkWorkload,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let Some(eagain_ns) = workload.wait_first_eagain(Duration::from_secs(15)) else {
        panic!(
            "workload never got EAGAIN ({what}); its output: {:?}",
            workload.output()
        );
    };
    let Some(rec) = agent.wait_for_record(|v| is_pid_finding(v) && pred(v), DETECTION_DEADLINE)
    else {
        panic!(
            "no pid_exhaustion finding for {what} within {DETECTION_DEADLINE:?} after the first \
             EAGAIN (python pid {}).\nfindings received: {:#?}",
            workload.pid(),
            findings(&agent.records())
        );
    };
    let latency = secs_since_unix_ns(rec.wall, eagain_ns);
    eprintln!(
        "detection latency ({what}): first EAGAIN -> finding received = {:.1} ms",
        latency * 1e3
    );
    eprintln!("finding: {}", rec.value);
    assert!(
        latency <= DETECTION_DEADLINE.as_secs_f64(),
        "finding came {latency:.3} s after the first EAGAIN"
    );
    rec.value
}

#[test]
fn pids_cgroup_exhaustion_is_reported() {
    if !skip_unless_pid_exhaustion_prereqs() {
        return;
    }
    let agent = Agent::start(TRACE);
    let (ready, _) = agent
        .wait_for(|v| v["type"] == "ready", Duration::ZERO)
        .expect("start() saw the ready record");
    let fork_probe = ready["probes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "fork_failures")
        .cloned();
    assert_eq!(
        fork_probe.as_ref().map(|p| &p["status"]),
        Some(&Value::from("attached")),
        "ready record must list the fork_failures probe as attached: {ready}"
    );
    let cg = PidsCgroup::new(8);
    let path = cg.path_in_hierarchy();
    // Keep the pressure on (as a real fork bomb does) until the finding is in.
    let workload = fork_until_eagain(
        &ForkOpts::default()
            .in_cgroup(&cg)
            .failures(100_000)
            .time_limit(Duration::from_secs(20)),
    );
    let pid = workload.pid() as u64;
    let finding = expect_finding(&agent, &workload, "pids cgroup", |v| {
        v["cgroup"] == path.as_str() || process_pids(v).contains(&pid)
    });
    assert_eq!(finding["cgroup"], path.as_str(), "cgroup of {finding}");
    assert_eq!(finding["limit"], "pids_cgroup", "limit of {finding}");
    assert_eq!(
        finding["status"], "active",
        "first report must be active: {finding}"
    );
    assert!(
        process_pids(&finding).contains(&pid),
        "processes of {finding} lack the python pid {pid}"
    );
    let comm = finding["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["pid"].as_u64() == Some(pid))
        .map(|p| p["comm"].clone());
    assert_eq!(
        comm,
        Some(Value::from("python3")),
        "comm of pid {pid} in {finding}"
    );
    assert!(
        finding["failures"].as_u64().is_some_and(|n| n >= 1),
        "failures of {finding}"
    );

    drop(workload);
    eprintln!("pids.events max of {path}: {:?}", cg.events_max());
    drop(cg);
    let run = agent.stop_full();
    assert!(!run.killed, "the agent ignored SIGINT for 10 s");
    assert!(
        run.status.is_some_and(|s| s.success()),
        "agent exit status {:?}",
        run.status
    );
    assert!(
        run.bad_lines.is_empty(),
        "non-JSON stdout lines: {:?}",
        run.bad_lines
    );
    let summary = run.summary().unwrap_or_else(|| {
        panic!(
            "last record is not a summary: {:?}",
            run.records.last().map(|r| &r.value)
        )
    });
    eprintln!("summary: {summary}");
    assert_eq!(summary["drops"]["kernel"], 0, "kernel drops in {summary}");
    assert!(
        summary["findings"].as_u64().is_some_and(|n| n >= 1),
        "findings in {summary}"
    );
    assert!(
        summary["events"].as_u64().is_some_and(|n| n >= 1),
        "events in {summary}"
    );
}

#[test]
fn rlimit_nproc_exhaustion_is_reported() {
    if !skip_unless_rlimit_prereqs() {
        return;
    }
    let agent = Agent::start(TRACE);
    let existing = count_tasks_of_uid(NOBODY);
    let limit = existing as u64 + 10;
    eprintln!("uid {NOBODY} has {existing} tasks; ulimit -u {limit}");
    let workload = fork_until_eagain(
        &ForkOpts::default()
            .as_user(NOBODY, limit)
            .failures(100_000)
            .time_limit(Duration::from_secs(20)),
    );
    let pid = workload.pid() as u64;
    // Match on our pid only: other tests on a shared machine may exhaust
    // uid 65534's limit at the same time.
    let finding = expect_finding(&agent, &workload, "RLIMIT_NPROC", |v| {
        process_pids(v).contains(&pid)
    });
    assert_eq!(finding["limit"], "rlimit_nproc", "limit of {finding}");
    assert_eq!(finding["uid"], NOBODY, "uid of {finding}");
    assert_eq!(
        finding["status"], "active",
        "first report must be active: {finding}"
    );
    assert!(
        process_pids(&finding).contains(&pid),
        "processes of {finding} lack the python pid {pid}"
    );
    drop(workload);
    let run = agent.stop_full();
    assert!(
        run.status.is_some_and(|s| s.success()),
        "agent exit status {:?}",
        run.status
    );
    let summary = run
        .summary()
        .unwrap_or_else(|| panic!("no summary record at the end"));
    eprintln!("summary: {summary}");
    assert_eq!(summary["drops"]["kernel"], 0, "kernel drops in {summary}");
}

/// Whether a finding/warning/probe record is about something this test did
/// not start: it names processes, none of them ours, and another cgroup. Only such
/// records are tolerated (and reported) in the healthy-load test, because
/// other tests may exhaust pids on a shared machine at the same time.
fn is_foreign(v: &Value, our_pid: u64, our_cgroup: &str) -> bool {
    let pids = process_pids(v);
    if v["type"] == "probe" {
        // The fork probe was attached: foreign if the reason names neither us
        // nor our cgroup (another test put some limit under pressure).
        let reason = v["reason"].as_str().unwrap_or("");
        return !reason.is_empty()
            && !reason.contains(our_cgroup)
            && !reason.contains(&format!("[{our_pid}]"));
    }
    !pids.is_empty() && !pids.contains(&our_pid) && v["cgroup"] != our_cgroup
}

#[test]
fn healthy_fork_load_is_not_reported() {
    healthy_fork_load(TRACE);
}

/// The default mode must not even attach the fork probe for a healthy load.
#[test]
fn healthy_fork_load_is_not_reported_in_default_mode() {
    healthy_fork_load(TRACE_DEFAULT);
}

fn healthy_fork_load(args: &[&str]) {
    if !skip_unless_pid_exhaustion_prereqs() {
        return;
    }
    const N: u32 = 3000;
    let agent = Agent::start_recorded(args);
    // A pids cgroup far from its limit: attributes the load, and checks that a
    // limited-but-healthy cgroup is not reported either.
    let cg = PidsCgroup::new(10_000);
    let path = cg.path_in_hierarchy();
    let script = format!(
        "echo $$ > {} || exit 97; i=0; while [ $i -lt {N} ]; do /bin/true; i=$((i+1)); done",
        cg.procs_file().display()
    );
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.args(["-c", &script]);
    let started = std::time::Instant::now();
    let mut load = ChildGuard::spawn(&mut cmd, "fork+exec loop").unwrap();
    let load_pid = load.pid() as u64;
    let status = load.wait_timeout(Duration::from_secs(300));
    let took = started.elapsed();
    assert!(status.is_some_and(|s| s.success()), "fork loop: {status:?}");
    eprintln!("{N} fork+exec of /bin/true took {took:?} with the agent running");
    drop(load);
    // Barrier: the agent has handed every event of the load to the engine
    // and sampled the cgroup after it ended.
    agent.wait_for_poll_after(std::time::SystemTime::now(), Duration::from_secs(10));
    assert_eq!(
        cg.events_max(),
        Some(0),
        "the kernel refused forks of the healthy load"
    );
    drop(cg);
    let run = agent.stop_full();
    assert!(
        run.status.is_some_and(|s| s.success()),
        "agent exit status {:?}",
        run.status
    );
    let (foreign, ours): (Vec<_>, Vec<_>) = run
        .values()
        .into_iter()
        .filter(|v| v["type"] == "finding" || v["type"] == "warning" || v["type"] == "probe")
        .partition(|v| is_foreign(v, load_pid, &path));
    assert!(
        ours.is_empty(),
        "a healthy fork load (sh pid {load_pid} in {path}, agent {args:?}) produced \
         findings/warnings/probe attachments:\n{ours:#?}"
    );
    let summary = run
        .summary()
        .unwrap_or_else(|| panic!("no summary record at the end"));
    eprintln!("summary: {summary}");
    assert_eq!(summary["drops"]["kernel"], 0, "kernel drops in {summary}");
    if foreign.is_empty() {
        assert_eq!(summary["events"], 0, "events in {summary}");
        assert_eq!(summary["findings"], 0, "findings in {summary}");
    } else {
        eprintln!(
            "NOTE: {} finding/warning records about processes this test did not start \
             (another test on this machine exhausted pids meanwhile); not checking \
             summary.events == 0. They were:",
            foreign.len()
        );
        for v in &foreign {
            eprintln!(
                "  {} {} {} processes {:?}",
                v["type"],
                v["limit"],
                v["cgroup"],
                process_pids(v)
            );
        }
    }
}

/// Default mode, sudden exhaustion: the fork probe is in standby when the
/// first fork fails, so the first report comes from `pids.events` at the next
/// poll; the rejection then attaches the probe and a later report of the same
/// finding names the failing process.
#[test]
fn sudden_exhaustion_is_reported_in_default_mode() {
    if !skip_unless_pid_exhaustion_prereqs() {
        return;
    }
    // As on a node: the cgroup exists, at rest, before it is exhausted.
    let cg = PidsCgroup::new(8);
    let path = cg.path_in_hierarchy();
    let agent = Agent::start_recorded(TRACE_DEFAULT);
    // The agent has sampled it at rest.
    agent.wait_for_poll_after(std::time::SystemTime::now(), Duration::from_secs(10));
    let workload = fork_until_eagain(
        &ForkOpts::default()
            .in_cgroup(&cg)
            .failures(1_000_000)
            .time_limit(Duration::from_secs(30)),
    );
    let pid = workload.pid() as u64;
    let first = expect_finding(&agent, &workload, "pids cgroup, default mode", |v| {
        v["cgroup"] == path.as_str()
    });
    assert_eq!(first["limit"], "pids_cgroup", "limit of {first}");
    assert_eq!(
        first["status"], "active",
        "first report must be active: {first}"
    );
    let attached = agent.wait_for(
        |v| v["type"] == "probe" && v["name"] == "fork_failures" && v["status"] == "attached",
        Duration::from_secs(5),
    );
    assert!(
        attached.is_some(),
        "the cgroup's rejections did not attach the fork probe"
    );
    let named = agent.wait_for(
        |v| is_pid_finding(v) && v["cgroup"] == path.as_str() && process_pids(v).contains(&pid),
        Duration::from_secs(15),
    );
    let Some((named, _)) = named else {
        panic!(
            "no report of {path} named the failing python pid {pid} within 15 s of the probe \
             attaching; findings: {:#?}",
            findings(&agent.records())
        );
    };
    eprintln!(
        "attributed report: status {} failures {}",
        named["status"], named["failures"]
    );
    drop(workload);
    drop(cg);
    let run = agent.stop_full();
    assert!(
        run.status.is_some_and(|s| s.success()),
        "agent exit status {:?}",
        run.status
    );
    let summary = run
        .summary()
        .unwrap_or_else(|| panic!("no summary record at the end"));
    assert_eq!(summary["drops"]["kernel"], 0, "kernel drops in {summary}");
}
