//! kubelet's log from the systemd journal, read without `journalctl`: real
//! journal files written by systemd's own `systemd-journal-remote` (Debian's,
//! zstd-compressed, keyed-hash, compact), in a directory laid out as journald
//! lays it out (`<machine-id>/system.journal`), fed kubelet's and
//! containerd's real lines (`../shared/incidents`).
//!
//! The agent follows from the tail (an old PLEG line is not reported), reads
//! what is appended, including a message long enough to be stored
//! compressed, survives a journald-style rotation (the active file renamed
//! `system@...journal`, a new `system.journal`), and ignores other units.
//!
//! Run as root: `cargo test -p watchdog-tests --test journal -- --test-threads=1`
use std::time::Duration;

use serde_json::Value;
use watchdog_tests::journal::*;
use watchdog_tests::*;

const PLEG_LINE: &str = "I0729 11:20:59.245243 9575 kubelet.go:1823] skipping pod synchronization - PLEG is not healthy: pleg was last seen active 3m57.138893648s ago; threshold is 3m0s.";
const FORK_LINE: &str = "time=\"2019-03-22T15:23:22Z\" level=error msg=\"failed to start shim: fork/exec /usr/bin/containerd-shim-runc-v2: resource temporarily unavailable\"";
const DEADLINE_LINE: &str = "E0729 11:21:03.112233 9575 remote_runtime.go:295] ContainerStatus \"3f5a0c1b2d4e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8\" from runtime service failed: rpc error: code = DeadlineExceeded desc = context deadline exceeded";

fn pleg(v: &Value) -> bool {
    v["type"] == "pleg"
}

fn kubelet_errors(v: &Value) -> String {
    v["kubelet_errors"].to_string()
}

#[test]
fn kubelet_lines_are_followed_from_the_journal_across_rotation() {
    if !skip_unless_journal_prereqs() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("wd-journal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut w = JournalWriter::in_dir(&dir);
    let machine = dir.join(MACHINE_ID);
    // History: must not be reported (the agent follows from the tail).
    w.append(&[
        ("kubelet.service", "kubelet", PLEG_LINE),
        (
            "containerd.service",
            "containerd",
            "level=info msg=\"starting containerd\"",
        ),
    ]);
    let dir_arg = dir.to_string_lossy().into_owned();
    let agent = Agent::start_recorded(&[
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
        "off",
        "--kubelet-log",
        "journal",
        "--journal-dir",
        &dir_arg,
    ]);
    let Some(src) = agent.wait_for_record(
        |v| v["type"] == "source" && v["source"] == "kubelet_log",
        Duration::from_secs(10),
    ) else {
        panic!("no kubelet_log source record\n{}", agent.report());
    };
    assert_eq!(src.value["state"], "available", "{}", src.value);
    assert!(
        src.value["target"].as_str().unwrap().contains(&dir_arg),
        "{}",
        src.value
    );
    agent.wait_for_poll_after(src.wall + Duration::from_secs(1), Duration::from_secs(10));
    assert!(
        !agent
            .records()
            .iter()
            .any(|v| pleg(v) && v["kubelet_reports_unhealthy"] == true),
        "an entry written before the start was reported:\n{}",
        agent.report()
    );

    // 1. Appended: another unit (ignored), a long containerd line (stored
    //    zstd-compressed: over 512 bytes), kubelet's PLEG line.
    let long_fork = format!("{FORK_LINE} {}", "x".repeat(2000));
    w.append(&[
        ("ssh.service", "sshd", PLEG_LINE),
        ("containerd.service", "containerd", &long_fork),
        ("kubelet.service", "kubelet", PLEG_LINE),
    ]);
    let Some(rec) = agent.wait_for_record(
        |v| pleg(v) && v["kubelet_reports_unhealthy"] == true,
        Duration::from_secs(10),
    ) else {
        panic!(
            "the PLEG line from the journal was not read\n{}",
            agent.report()
        );
    };
    assert_eq!(rec.value["source"], "kubelet_log", "{}", rec.value);
    let Some(rec) = agent.wait_for_record(
        |v| pleg(v) && kubelet_errors(v).contains("containerd-shim-runc-v2"),
        Duration::from_secs(10),
    ) else {
        panic!(
            "the compressed containerd line was not read\n{}",
            agent.report()
        );
    };
    assert!(
        kubelet_errors(&rec.value).contains("containerd could not fork"),
        "{}",
        rec.value
    );
    // The same files read from the head (evidence of what was logged
    // before a session): the followed units only, through the same parser.
    let (logs, counts) = watchdog::sources::kubelet::journal::read_history(
        std::slice::from_ref(&dir),
        1000,
        watchdog::model::Time(0),
    )
    .expect("read the journal from its head");
    assert_eq!(
        counts.entries, 4,
        "kubelet's and containerd's entries, not sshd's: {} entries, {} events",
        counts.entries, counts.events
    );
    let shown = serde_json::to_string(&logs).unwrap().to_lowercase();
    assert!(
        logs.len() >= 3 && shown.contains("pleg") && shown.contains("fork"),
        "the PLEG lines and the fork failure are read back: {shown}"
    );

    // 2. Rotation as journald does it: the active file is archived under a
    //    new name, the next entries go to a new system.journal.
    std::fs::rename(
        machine.join("system.journal"),
        machine.join(
            "system@0123456789abcdef0123456789abcdef-0000000000000001-0005f0e1d2c3b4a5.journal",
        ),
    )
    .unwrap();
    w.append(&[("kubelet.service", "kubelet", DEADLINE_LINE)]);
    let Some(rec) = agent.wait_for_record(
        |v| pleg(v) && kubelet_errors(v).contains("ContainerStatus deadline exceeded"),
        Duration::from_secs(15),
    ) else {
        panic!(
            "the line after the rotation was not read\n{}",
            agent.report()
        );
    };
    eprintln!("after rotation: {}", rec.value["kubelet_errors"]);
    let mut agent = agent;
    assert!(agent.is_running(), "{}", agent.report());
    let _ = agent.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_journal_directory_is_reported_not_fatal() {
    if !skip_unless_root() {
        return;
    }
    let dir = format!("/tmp/wd-no-journal-{}", std::process::id());
    let agent = Agent::start(&[
        "trace",
        "--json",
        "--duration",
        "30s",
        "--fork-probe",
        "off",
        "--no-dbus-probe",
        "--kubelet-metrics-url",
        "off",
        "--runtime-endpoint",
        "off",
        "--journal-dir",
        &dir,
    ]);
    let Some(src) = agent.wait_for_record(
        |v| v["type"] == "source" && v["source"] == "kubelet_log",
        Duration::from_secs(10),
    ) else {
        panic!("no kubelet_log source record\n{}", agent.report());
    };
    assert_eq!(src.value["state"], "unavailable", "{}", src.value);
    let msg = src.value["message"].as_str().unwrap();
    assert!(msg.contains(&dir), "{msg}");
    let mut agent = agent;
    assert!(agent.is_running(), "{}", agent.report());
    let _ = agent.stop();
}
