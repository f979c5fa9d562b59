//! The agent must keep working while the PIDs it diagnoses are exhausted: it
//! runs here inside the very pids cgroup that a fork loop fills, so any
//! thread or process it tried to create would fail. It must still report the
//! finding, keep updating it, and end with a summary.
//!
//! Also: the default `--fork-probe auto` keeps the sys_exit hook detached on a
//! healthy node and attaches it under pressure.

use std::time::Duration;

use serde_json::Value;
use watchdog_tests::*;

#[test]
fn agent_inside_the_exhausted_cgroup_keeps_reporting() {
    if !skip_unless_pid_exhaustion_prereqs() {
        return;
    }
    let cg = PidsCgroup::new(16);
    let mut agent = Agent::start(&[
        "trace",
        "--json",
        "--duration",
        "60s",
        "--fork-probe",
        "always",
    ]);
    cg.add_pid(agent.pid());
    let workload = fork_until_eagain(
        &ForkOpts::default()
            .in_cgroup(&cg)
            .failures(1_000_000)
            .time_limit(Duration::from_secs(20)),
    );
    assert!(
        workload
            .wait_first_eagain(Duration::from_secs(15))
            .is_some(),
        "the fork loop never hit the cgroup's limit: {:?}",
        workload.output()
    );
    let path = cg.path_in_hierarchy();
    let mine = |v: &Value| v["type"] == "finding" && v["cgroup"] == path.as_str();
    let first = agent
        .wait_for_record(
            |v| mine(v) && v["status"] == "active",
            Duration::from_secs(5),
        )
        .unwrap_or_else(|| {
            panic!(
                "no finding while the agent shares the exhausted cgroup\n{}",
                agent.report()
            )
        });
    assert_eq!(first.value["limit"], "pids_cgroup");
    assert_eq!(
        cg.current(),
        Some(16),
        "the cgroup stays at its limit during the test"
    );
    // Still working 5+ s later, while forks keep failing: an update comes.
    let update = agent
        .wait_for_record(
            |v| mine(v) && v["status"] == "update",
            Duration::from_secs(12),
        )
        .unwrap_or_else(|| {
            panic!(
                "no update from the agent under exhaustion\n{}",
                agent.report()
            )
        });
    assert!(
        update.value["failures"].as_u64() > first.value["failures"].as_u64(),
        "the update counts more failures: {} then {}",
        first.value,
        update.value
    );
    assert!(
        agent.is_running(),
        "the agent died under PID exhaustion\n{}",
        agent.report()
    );
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{}/status", agent.pid()))
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with("Threads:")).map(|l| l
                .split_whitespace()
                .nth(1)
                .unwrap_or("")
                .to_owned())),
        Some("1".to_owned()),
        "the agent runs on a single thread"
    );
    drop(workload);
    let run = agent.stop_full();
    let summary = run
        .summary()
        .unwrap_or_else(|| panic!("no summary\n{}", run.report()));
    assert_eq!(summary["drops"]["kernel"], 0, "{summary}");
}

#[test]
fn fork_probe_stays_detached_when_healthy_and_attaches_under_pressure() {
    if !skip_unless_pid_exhaustion_prereqs() {
        return;
    }
    let agent = Agent::start(&[
        "trace",
        "--json",
        "--duration",
        "60s",
        "--arm-percent",
        "50",
    ]);
    let (ready, _) = agent
        .wait_for(|v| v["type"] == "ready", Duration::ZERO)
        .expect("ready record");
    let status = |name: &str| {
        ready["probes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .map(|p| p["status"].clone())
    };
    assert_eq!(
        status("fork_failures"),
        Some(Value::from("standby")),
        "{ready}"
    );
    assert_eq!(
        status("nproc_pressure"),
        Some(Value::from("attached")),
        "{ready}"
    );

    // A cgroup filling up slowly (one fork per 50 ms): the poller sees it
    // pass 50 % before any fork fails, and attaches the probe.
    let cg = PidsCgroup::new(40);
    let workload = fork_until_eagain(
        &ForkOpts::default()
            .in_cgroup(&cg)
            .failures(1_000_000)
            .fork_interval(Duration::from_millis(50))
            .time_limit(Duration::from_secs(20)),
    );
    let armed = agent
        .wait_for_record(
            |v| v["type"] == "probe" && v["name"] == "fork_failures",
            Duration::from_secs(10),
        )
        .unwrap_or_else(|| panic!("the fork probe was never attached\n{}", agent.report()));
    assert_eq!(armed.value["status"], "attached", "{}", armed.value);
    // Another limited cgroup on a shared machine may arm it first; on a quiet
    // one (CI) the reason names ours.
    let reason = armed.value["reason"].as_str().unwrap_or("").to_owned();
    if !reason.contains(&cg.path_in_hierarchy()) {
        eprintln!("note: armed by other pressure on this machine: {reason}");
    }
    let eagain = workload
        .wait_first_eagain(Duration::from_secs(15))
        .expect("the workload hit the limit");
    // Attached before the first failure, so the first report already names
    // the failing process.
    let pid = u64::from(workload.pid());
    let finding = agent
        .wait_for_record(
            |v| v["type"] == "finding" && v["cgroup"] == cg.path_in_hierarchy().as_str(),
            Duration::from_secs(5),
        )
        .unwrap_or_else(|| panic!("no finding\n{}", agent.report()));
    eprintln!(
        "auto mode: first EAGAIN -> finding {:.1} ms",
        secs_since_unix_ns(finding.wall, eagain) * 1e3
    );
    assert!(
        finding.value["processes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["pid"].as_u64() == Some(pid)),
        "{}",
        finding.value
    );
}
