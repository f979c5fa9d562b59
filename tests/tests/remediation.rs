//! Real kernel tests of remediation: the agent binary runs `trace --json`
//! with a policy while a fault of the test's own holds; the executors act
//! only on what the test made. The fork bomb runs as PID 1 of a PID
//! namespace of its own (`unshare --pid --fork`), in a pod-like pids cgroup
//! of this test (`watchdog-test-<pid>-<n>/kubepods/burstable/pod<uid>/ctr0`):
//! every process the agent may signal is inside both.
//!
//! Run as root with one test thread (kernel state is shared):
//! `WATCHDOG_BIN=target/release/watchdog cargo test --release -p watchdog-tests --test remediation -- --test-threads=1`

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use watchdog_tests::*;

const UNSHARE: &str = "/usr/bin/unshare";

/// A fork bomb held at its cgroup's limit: the namespace's init forks
/// children that sleep, and keeps retrying the forks the limit refuses.
const BOMB_PY: &str = r#"
import os, sys, time
print("started", flush=True)
while True:
    try:
        pid = os.fork()
    except OSError:
        time.sleep(0.005)
        continue
    if pid == 0:
        time.sleep(3600)
        os._exit(0)
"#;

struct Bomb {
    child: ChildGuard,
}

impl Bomb {
    /// Starts the bomb in `cg` (the shell moves itself in before exec'ing
    /// python: every fork happens inside) and waits until the cgroup is full.
    fn start(cg: &PidsCgroup, max: u64) -> Self {
        let script = format!(
            "echo $$ > {} || exit 97; exec {PYTHON} -c {}",
            sh_quote(&cg.procs_file().to_string_lossy()),
            sh_quote(BOMB_PY)
        );
        let mut cmd = Command::new(UNSHARE);
        cmd.args(["--pid", "--fork", "--kill-child", "/bin/sh", "-c", &script])
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = ChildGuard::spawn(&mut cmd, "fork bomb").unwrap_or_else(|e| panic!("{e}"));
        let start = Instant::now();
        while cg.current() != Some(max) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the bomb did not fill its cgroup: {:?} of {max}",
                cg.current()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child }
    }
}

fn skip_unless_prereqs() -> bool {
    skip_unless_pid_exhaustion_prereqs()
        && skip_unless(
            Path::new(UNSHARE).exists(),
            "unshare (util-linux) is missing",
        )
}

fn remediation_records(records: &[Value]) -> Vec<Value> {
    records
        .iter()
        .filter(|v| v["type"] == "remediation")
        .cloned()
        .collect()
}

const MAX: u64 = 8;

/// The first component of a cgroup path of the test's own
/// (`/watchdog-test-<pid>-<n>`): enforce is confined below it.
fn own_prefix(path: &str) -> String {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    assert!(first.starts_with("watchdog-test-"), "{path}");
    format!("/{first}")
}

/// Enforce with kill_container allowed: the pod's cgroup is emptied, the
/// finding resolves, and the step is verified. Nothing outside the cgroup
/// is touched (the test process and the unshare parent survive).
#[test]
fn kill_container_empties_a_fork_bombing_pod_cgroup() {
    if !skip_unless_prereqs() {
        return;
    }
    let cg = PidsCgroup::new_pod(MAX);
    let path = cg.path_in_hierarchy();
    let journal = std::env::temp_dir().join(format!("wd-remediation-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&journal);
    // Only the test's own cgroups, even on a host with real pods.
    let prefix = own_prefix(&path);
    // A process of the test outside the cgroup: it must survive.
    let mut sentinel = ChildGuard::spawn(
        Command::new("/bin/sleep").arg("60").stdin(Stdio::null()),
        "sentinel",
    )
    .unwrap();
    let args = [
        "trace",
        "--json",
        "--no-pleg",
        "--no-systemd",
        "--fork-probe",
        "always",
        "--poll-interval",
        "250ms",
        "--resolve-after",
        "2s",
        "--remediation",
        "enforce",
        "--allow-actions",
        "kill_container",
        "--remediation-delay",
        "1s",
        "--remediation-journal",
        journal.to_str().unwrap(),
        "--remediation-cgroup-prefix",
        &prefix,
    ];
    let agent = Agent::start(&args);
    let mut bomb = Bomb::start(&cg, MAX);
    let unshare_pid = bomb.child.pid();
    let done = agent
        .wait_for(
            |v| {
                v["type"] == "remediation"
                    && v["status"] == "succeeded"
                    && v["target"] == format!("cgroup {path}")
            },
            Duration::from_secs(20),
        )
        .unwrap_or_else(|| panic!("no kill_container succeeded: {}", agent.report()))
        .0;
    eprintln!("succeeded: {done}");
    assert_eq!(done["action"], "kill_container");
    assert_eq!(done["mode"], "enforce");
    // The cgroup is empty (or emptying: SIGKILLed tasks leave at once here,
    // none is in uninterruptible sleep).
    let start = Instant::now();
    while !cg.procs().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "cgroup {path} still holds {:?}",
            cg.procs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Only the cgroup's tasks: the unshare parent outside it ends because its
    // child (the namespace's init) was killed, not by a signal of its own.
    let status = bomb
        .child
        .wait_timeout(Duration::from_secs(5))
        .expect("unshare ends once its child is gone");
    eprintln!("unshare {unshare_pid} ended: {status:?}");
    assert!(
        sentinel.try_wait().is_none(),
        "a process outside the cgroup was killed"
    );
    let verified = agent
        .wait_for(
            |v| v["type"] == "remediation" && v["status"] == "verified",
            Duration::from_secs(15),
        )
        .unwrap_or_else(|| panic!("the step was not verified: {}", agent.report()))
        .0;
    assert_eq!(verified["target"], format!("cgroup {path}"), "{verified}");
    let records = agent.stop();
    let steps = remediation_records(&records);
    let statuses: Vec<&str> = steps.iter().filter_map(|v| v["status"].as_str()).collect();
    assert_eq!(statuses, ["started", "succeeded", "verified"], "{steps:#?}");
    // The finding that the action answered resolved.
    assert!(
        records.iter().any(|v| v["type"] == "finding"
            && v["cause"] == "pid_exhaustion"
            && v["status"] == "resolved"
            && v["cgroup"] == path.as_str()),
        "no resolved finding for {path}"
    );
    // The journal holds the intent (written before the kill) and outcomes.
    let lines = std::fs::read_to_string(&journal).unwrap();
    let statuses: Vec<String> = lines
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["status"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(statuses, ["started", "succeeded", "verified"], "{lines}");

    // A restarted agent (same journal, same boot) does not act twice on the
    // same cgroup within the cooldown: the bomb comes back, the agent says
    // why it waits and touches nothing.
    let agent = Agent::start(&args);
    let _bomb = Bomb::start(&cg, MAX);
    let waiting = agent
        .wait_for(
            |v| v["type"] == "remediation" && v["status"] == "skipped",
            Duration::from_secs(20),
        )
        .unwrap_or_else(|| panic!("no skipped step after the restart: {}", agent.report()))
        .0;
    assert!(
        waiting["reason"]
            .as_str()
            .unwrap()
            .starts_with("cooling down"),
        "{waiting}"
    );
    assert_eq!(waiting["budget"], "1 of 3 actions this hour", "{waiting}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(cg.current(), Some(MAX), "the restarted agent acted again");
    let records = agent.stop();
    assert!(
        !remediation_records(&records)
            .iter()
            .any(|v| v["status"] == "started"),
        "{:#?}",
        remediation_records(&records)
    );
    let _ = std::fs::remove_file(&journal);
}

/// The default mode is dry-run: the plan is recorded, nothing is touched.
/// A cgroup that is not a pod's is out of scope even in enforce.
#[test]
fn dry_run_plans_and_touches_nothing() {
    if !skip_unless_prereqs() {
        return;
    }
    let cg = PidsCgroup::new_pod(MAX);
    let path = cg.path_in_hierarchy();
    let agent = Agent::start(&[
        "trace",
        "--json",
        "--no-pleg",
        "--no-systemd",
        "--fork-probe",
        "always",
        "--poll-interval",
        "250ms",
        "--remediation-delay",
        "1s",
    ]);
    let bomb = Bomb::start(&cg, MAX);
    let procs_before = cg.procs();
    let planned = agent
        .wait_for(
            |v| v["type"] == "remediation" && v["status"] == "planned",
            Duration::from_secs(20),
        )
        .unwrap_or_else(|| panic!("no planned step: {}", agent.report()))
        .0;
    eprintln!("planned: {planned}");
    assert_eq!(planned["mode"], "dry-run");
    assert_eq!(planned["action"], "kill_container");
    assert_eq!(planned["target"], format!("cgroup {path}"));
    let reason = planned["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!("dry-run: would kill every task of cgroup {path}"))
            && reason.contains("--allow-actions kill_container"),
        "{reason}"
    );
    // Nothing was touched: a second later the same processes are there.
    std::thread::sleep(Duration::from_secs(1));
    let procs_after = cg.procs();
    assert_eq!(procs_before, procs_after, "dry-run touched the cgroup");
    assert_eq!(cg.current(), Some(MAX));
    let records = agent.stop();
    assert!(
        !remediation_records(&records)
            .iter()
            .any(|v| ["started", "succeeded", "failed"]
                .contains(&v["status"].as_str().unwrap_or(""))),
        "dry-run ran something: {:#?}",
        remediation_records(&records)
    );
    drop(bomb);
    drop(cg);

    // Enforce, but on a cgroup that is not a pod's: refused as out of scope.
    let cg = PidsCgroup::new(MAX);
    let path = cg.path_in_hierarchy();
    let prefix = own_prefix(&path);
    let journal =
        std::env::temp_dir().join(format!("wd-remediation-scope-{}.jsonl", std::process::id()));
    let agent = Agent::start(&[
        "trace",
        "--json",
        "--no-pleg",
        "--no-systemd",
        "--fork-probe",
        "always",
        "--poll-interval",
        "250ms",
        "--remediation",
        "enforce",
        "--allow-actions",
        "kill_container",
        "--remediation-delay",
        "1s",
        "--remediation-cgroup-prefix",
        &prefix,
        "--remediation-journal",
        journal.to_str().unwrap(),
    ]);
    let _bomb = Bomb::start(&cg, MAX);
    let skipped = agent
        .wait_for(
            |v| v["type"] == "remediation" && v["status"] == "skipped",
            Duration::from_secs(20),
        )
        .unwrap_or_else(|| panic!("no skipped step: {}", agent.report()))
        .0;
    assert_eq!(skipped["target"], format!("cgroup {path}"));
    assert!(
        skipped["reason"]
            .as_str()
            .unwrap()
            .starts_with("out of scope"),
        "{skipped}"
    );
    assert_eq!(
        cg.current(),
        Some(MAX),
        "an out-of-scope cgroup was touched"
    );
    agent.stop();
    let _ = std::fs::remove_file(&journal);
}

/// Enforce with abort_fuse allowed: a task of the test's own blocked in D
/// on the test's hanging FUSE mount gets its error once the agent aborts
/// the connection through fusectl; the finding resolves and the step is
/// verified.
#[test]
fn abort_fuse_releases_a_task_blocked_on_a_hung_fuse_mount() {
    use watchdog_tests::fuse::{HangingFuse, skip_unless_fuse_prereqs};
    use watchdog_tests::names::ProcessNames;
    if !skip_unless_fuse_prereqs() {
        return;
    }
    const READ: &str = "import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.read(fd, 16)";
    // Declared before the mount: the mount's guard (abort, unmount) drops first.
    let mut reader: Option<ChildGuard> = None;
    let fuse = HangingFuse::start();
    let names = ProcessNames::new();
    let journal =
        std::env::temp_dir().join(format!("wd-remediation-fuse-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&journal);
    let agent = Agent::start(&[
        "trace",
        "--json",
        "--no-pleg",
        "--no-systemd",
        "--hang-threshold",
        "2s",
        "--poll-interval",
        "250ms",
        "--resolve-after",
        "2s",
        "--remediation",
        "enforce",
        "--allow-actions",
        "abort_fuse",
        "--remediation-delay",
        "1s",
        "--remediation-journal",
        journal.to_str().unwrap(),
    ]);
    let child = reader.insert(names.spawn("wd-reader", READ, &fuse.read_hang_path()));
    let pid = child.pid();
    let mp = fuse.mount_point().to_string_lossy().into_owned();
    let done = agent
        .wait_for(
            |v| {
                v["type"] == "remediation"
                    && v["action"] == "abort_fuse"
                    && v["status"] != "started"
            },
            Duration::from_secs(20),
        )
        .unwrap_or_else(|| panic!("no abort_fuse step: {}", agent.report()))
        .0;
    eprintln!("abort_fuse: {done}");
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        done["target"],
        format!("fuse connection {} ({mp})", fuse.dev()),
        "{done}"
    );
    // The blocked read returned (with ENOTCONN): the reader exits.
    let status = child
        .wait_timeout(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("reader {pid} still blocked after the abort"));
    assert!(
        !status.success(),
        "the read failed, so python exits non-zero"
    );
    let verified = agent
        .wait_for(
            |v| v["type"] == "remediation" && v["status"] == "verified",
            Duration::from_secs(15),
        )
        .unwrap_or_else(|| panic!("the step was not verified: {}", agent.report()))
        .0;
    assert_eq!(verified["action"], "abort_fuse", "{verified}");
    agent.stop();
    let _ = std::fs::remove_file(&journal);
}
