//! Real kernel tests of remediation: the agent binary runs `trace --json`
//! with a policy while a fault of the test's own holds; the executors act
//! only on what the test made. The fork bomb runs as PID 1 of a PID
//! namespace of its own (`unshare --pid --fork`), in a pod-like pids cgroup
//! of this test (`watchdog-test-<pid>-<n>/kubepods/burstable/pod<uid>/ctr0`):
//! every process the agent may signal is inside both.
//!
//! Also: `force_unmount` on a tmpfs in a mount namespace of the test's own and
//! on a hung FUSE mount of its own (direct library calls, the node's type
//! list relaxed); `reexec_systemd` on a real systemd 252 (PID 1 of a container
//! the test starts) and refused on the fake one; `kill_process` of the
//! container's runc waiting on its stopped systemd, end to end.
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

// ---------------------------------------------------------------------------
// force_unmount, reexec_systemd, kill_process
// ---------------------------------------------------------------------------

use watchdog::model::finding::{ProcRef, RemedyAction};
use watchdog::remediation::{Executor, NodeExecutor};

/// `/proc/<pid>/stat` field 22 (start time in clock ticks).
fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    watchdog::context::procfs::parse_start_time(&stat).unwrap()
}

/// (mount point, fs type, source) of `/proc/<pid>/mountinfo`.
fn mounts_of(pid: &str) -> Vec<(String, String, String)> {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mp = watchdog::context::mounts::unescape(left.split(' ').nth(4)?);
            let mut r = right.split(' ');
            Some((mp, r.next()?.to_owned(), r.next()?.to_owned()))
        })
        .collect()
}

/// force_unmount's mechanics on a tmpfs the test mounts in a private mount
/// namespace of its own (a holder process made by `unshare -m`): refused as
/// not a network file system with the node's type list, refused when the
/// table of the agent's own namespace does not show it, unmounted in the
/// holder's namespace (unshare(CLONE_FS) + setns on the executor's thread)
/// with the list relaxed to tmpfs. The test's own mount table never sees it.
#[test]
fn force_unmount_unmounts_in_the_namespace_that_shows_the_mount() {
    if !skip_unless_root() || !skip_unless(Path::new(UNSHARE).exists(), "unshare is missing") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("wd-fu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let source = format!("wdt-fu-{}", std::process::id());
    let script = format!(
        "mount -t tmpfs {source} {} || exit 97; echo ready; exec sleep 600",
        sh_quote(&dir.to_string_lossy())
    );
    let mut cmd = Command::new(UNSHARE);
    cmd.args(["-m", "--propagation", "private", "/bin/sh", "-c", &script])
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut holder = ChildGuard::spawn(&mut cmd, "mount namespace holder").unwrap();
    let mut out = holder.take_stdout().unwrap();
    let mut buf = [0u8; 6];
    std::io::Read::read_exact(&mut out, &mut buf).expect("the holder mounted its tmpfs");
    let hpid = holder.pid();
    let mp = dir.to_string_lossy().into_owned();
    assert!(
        mounts_of(&hpid.to_string())
            .iter()
            .any(|(m, t, s)| *m == mp && t == "tmpfs" && *s == source)
    );
    assert!(!mounts_of("self").iter().any(|(m, _, _)| *m == mp));
    let action = RemedyAction::ForceUnmount {
        mount_point: mp.clone(),
    };

    // The node's list: tmpfs is no network file system.
    let mut node = NodeExecutor::new(Path::new("/"))
        .with_unmount_in(Some(hpid), &watchdog::remediation::exec::UNMOUNT_TYPES);
    let e = node.recheck(&action).unwrap_err();
    eprintln!("node's types: {e}");
    assert!(e.contains("tmpfs, not a network file system"), "{e}");
    assert!(node.execute(&action).is_err());
    // The agent's own table (the host's here) does not show it.
    let e = NodeExecutor::new(Path::new("/"))
        .recheck(&action)
        .unwrap_err();
    assert!(e.contains("no longer mounted"), "{e}");

    let mut ex = NodeExecutor::new(Path::new("/")).with_unmount_in(Some(hpid), &["tmpfs"]);
    let plan = ex.recheck(&action).unwrap();
    eprintln!("plan: {plan}");
    assert!(
        plan.starts_with(&format!(
            "umount -f {mp} (tmpfs from {source}) in the mount namespace of process {hpid}"
        )),
        "{plan}"
    );
    let t = Instant::now();
    let done = ex.execute(&action).unwrap();
    eprintln!("done in {:?}: {done}", t.elapsed());
    assert!(
        done.starts_with(&format!("unmounted {mp} (tmpfs) with MNT_FORCE")),
        "{done}"
    );
    assert!(
        !mounts_of(&hpid.to_string())
            .iter()
            .any(|(m, _, _)| *m == mp),
        "still mounted in the holder's namespace"
    );
    // Gone: a second re-check says so.
    let e = ex.recheck(&action).unwrap_err();
    assert!(e.contains("no longer mounted"), "{e}");
    assert!(holder.try_wait().is_none(), "the holder was touched");
    drop(holder);
    let _ = std::fs::remove_dir(&dir);
}

/// `umount -f` on a real hung FUSE mount of the test's own: the kernel's
/// umount_begin aborts the connection, so a reader blocked in D state gets
/// its error, and the mount goes once the reader has closed its file. The
/// node refuses FUSE (abort_fuse is its action); the list is relaxed here.
#[test]
fn force_unmount_of_a_hung_fuse_mount_releases_its_blocked_reader() {
    use watchdog_tests::fuse::{HangingFuse, skip_unless_fuse_prereqs};
    use watchdog_tests::names::ProcessNames;
    if !skip_unless_fuse_prereqs() {
        return;
    }
    const READ: &str = "import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.read(fd, 16)";
    let mut reader: Option<ChildGuard> = None;
    let fuse = HangingFuse::start();
    let names = ProcessNames::new();
    let child = reader.insert(names.spawn("wd-fu-reader", READ, &fuse.read_hang_path()));
    let pid = child.pid();
    let mp = fuse.mount_point().to_string_lossy().into_owned();
    let fstype = mounts_of("self")
        .into_iter()
        .find(|(m, _, _)| *m == mp)
        .map(|(_, t, _)| t)
        .expect("the FUSE mount");
    // Blocked in D on the mount.
    let t = Instant::now();
    while std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| watchdog::context::procfs::parse_stat(&s))
        .map(|(_, st, _)| st)
        != Some('D')
    {
        assert!(t.elapsed() < Duration::from_secs(10), "reader not in D");
        std::thread::sleep(Duration::from_millis(20));
    }
    let action = RemedyAction::ForceUnmount {
        mount_point: mp.clone(),
    };
    let e = NodeExecutor::new(Path::new("/"))
        .recheck(&action)
        .unwrap_err();
    assert!(e.contains("abort_fuse is the action for it"), "{e}");
    let mut ex = NodeExecutor::new(Path::new("/")).with_unmount_in(None, &[fstype.as_str()]);
    eprintln!("plan: {}", ex.recheck(&action).unwrap());
    let t = Instant::now();
    let done = ex.execute(&action).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("done in {:?}: {done}", t.elapsed());
    let status = child
        .wait_timeout(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("reader {pid} still blocked after umount -f"));
    assert!(!status.success(), "the read failed");
    // Unmounted now (by the executor's retries, or it said still busy).
    if done.contains("still busy") {
        eprintln!("the executor gave up while the reader still had the file open");
    } else {
        assert!(
            !mounts_of("self").iter().any(|(m, _, _)| *m == mp),
            "{done}"
        );
    }
}

/// reexec_systemd on a REAL systemd 252, PID 1 of a container the test
/// starts, through a direct library call: no cure-able hang of a real
/// systemd can be made here (a stopped one is refused, below; the sd-bus
/// cookie overflow it cures cannot be provoked), so the executor is aimed
/// at a healthy systemd as a finding would name it (the socket and a
/// client of the container: its dbus-daemon). Re-check: served by that
/// systemd (found through the client's network namespace, on the private
/// socket and, socket-activated, on the bus socket as runtimes spell it);
/// a stopped systemd is refused. Execute: SIGTERM through a pidfd, the new
/// image seen, `Ping` answered; after it the pid is the same, systemd logged
/// `Reexecuting.`, and a Ping and a scope request (systemd-run --scope, the
/// call runc makes) succeed.
#[test]
fn reexec_systemd_re_executes_a_real_systemd_and_it_serves_again() {
    use watchdog_tests::systemd_real::{Client, RealSystemd, skip_unless_real_systemd_prereqs};
    let Some(tar) = skip_unless_real_systemd_prereqs() else {
        return;
    };
    let mut sd = RealSystemd::start(&tar).unwrap_or_else(|e| panic!("{e}"));
    let pid = sd.systemd_pid();
    let client = sd
        .processes()
        .into_iter()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim() == "dbus-daemon")
        })
        .expect("the container's dbus-daemon");
    let client = Some(ProcRef {
        pid: client,
        start: start_time(client),
    });
    let start_before = start_time(pid);
    let mut ex = NodeExecutor::new(Path::new("/"));
    let private = RemedyAction::ReexecSystemd {
        socket: "/run/systemd/private".into(),
        client,
    };
    let plan = ex.recheck(&private).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("plan: {plan}");
    assert!(
        plan.starts_with(&format!(
            "re-execute systemd[{pid}] (PID 1 of its PID namespace"
        )),
        "{plan}"
    );
    assert!(
        plan.contains("systemd on disk is the running binary"),
        "{plan}"
    );
    let bus = RemedyAction::ReexecSystemd {
        socket: "/var/run/dbus/system_bus_socket".into(),
        client,
    };
    let plan = ex.recheck(&bus).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        plan.starts_with(&format!("re-execute systemd[{pid}]")),
        "{plan}"
    );
    // Without a client the agent's own namespace is searched: the host
    // has no systemd serving that path.
    let e = ex
        .recheck(&RemedyAction::ReexecSystemd {
            socket: "/run/systemd/private".into(),
            client: None,
        })
        .unwrap_err();
    assert!(!e.contains(&format!("systemd[{pid}]")), "{e}");

    // Stopped: refused, nothing signalled.
    sd.stop_systemd().unwrap();
    let e = ex.recheck(&private).unwrap_err();
    let e2 = ex.execute(&private).unwrap_err();
    sd.cont_systemd().unwrap();
    eprintln!("stopped: {e}");
    assert!(e.contains("is stopped"), "{e}");
    assert!(e2.contains("is stopped"), "{e2}");

    // Executed as the bus socket's finding names it (the executor's own
    // Ping then goes through the bus to systemd).
    let t = Instant::now();
    let done = ex
        .execute(&bus)
        .unwrap_or_else(|e| panic!("{e}\n{}", sd.logs()));
    let took = t.elapsed();
    eprintln!("re-exec in {took:?}: {done}");
    assert!(
        done.starts_with(&format!("systemd[{pid}] re-executed")),
        "{done}"
    );
    assert!(
        done.contains("Ping on /var/run/dbus/system_bus_socket answered"),
        "{done}"
    );
    assert_eq!(start_time(pid), start_before, "systemd kept its pid");
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap()
            .trim(),
        "systemd"
    );
    let journal = sd
        .exec_ok(
            &["journalctl", "-b", "--no-pager", "-o", "cat", "_PID=1"],
            20,
        )
        .unwrap_or_default();
    assert!(
        journal.contains("Reexecuting"),
        "systemd's journal: {journal}"
    );
    // Served again: a Ping and a scope request.
    let ping = sd
        .exec_ok(
            &[
                "busctl",
                "call",
                "org.freedesktop.systemd1",
                "/org/freedesktop/systemd1",
                "org.freedesktop.DBus.Peer",
                "Ping",
            ],
            20,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("Ping after: {:?}", ping.trim());
    let t = Instant::now();
    sd.run_client(Client::SystemdRun)
        .unwrap_or_else(|e| panic!("scope request after the re-exec: {e}"));
    eprintln!("systemd-run --scope after the re-exec: {:?}", t.elapsed());
}

/// reexec_systemd aimed at the test's FAKE systemd (python, serving
/// /run/systemd/private in a private mount namespace) through a direct
/// library call, with the fake's connected client (comm containerd) as the
/// finding's waiting client: refused at the re-check and at execute (the
/// server is not systemd); the fake keeps running.
#[test]
fn reexec_systemd_refuses_a_server_that_is_not_systemd() {
    use watchdog_tests::systemd::*;
    if !skip_unless_systemd_prereqs() {
        return;
    }
    let ns = PrivateNs::start().unwrap();
    let fake = FakeSystemd::start(&ns, Transport::Private, FakeMode::NeverReply).unwrap();
    let client = SystemdClient::start(&ns, Transport::Private, "containerd").unwrap();
    let action = RemedyAction::ReexecSystemd {
        socket: SYSTEMD_PRIVATE_SOCKET.into(),
        client: Some(ProcRef {
            pid: client.pid(),
            start: start_time(client.pid()),
        }),
    };
    let mut ex = NodeExecutor::new(Path::new("/"));
    let e = ex.recheck(&action).unwrap_err();
    eprintln!("re-check: {e}");
    assert!(
        e.starts_with("/run/systemd/private is served by")
            && e.contains(&format!("[{}] (not systemd)", fake.pid())),
        "{e}"
    );
    let e = ex.execute(&action).unwrap_err();
    assert!(e.contains("(not systemd)"), "{e}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(pid_alive(fake.pid()), "the fake keeps running");
    assert!(fake.log().contains("listening"), "{}", fake.log());
}

/// kill_process end to end on the REAL systemd: systemd (the container's
/// PID 1) is stopped while the container's own `runc --systemd-cgroup run`
/// waits for its StartTransientUnit; the agent's systemd_hang finding names
/// that runc (pid and start time). In enforce with only kill_process
/// allowed, the reexec_systemd rung is refused (not allowed) and the runc
/// is killed; the finding resolves and the step is verified. systemd is
/// continued afterwards (the fixture's own SIGCONT) and was never signalled
/// by the agent.
#[test]
fn kill_process_kills_the_runc_waiting_on_a_stopped_systemd() {
    use watchdog_tests::systemd_real::{Client, RealSystemd, skip_unless_real_systemd_prereqs};
    let Some(tar) = skip_unless_real_systemd_prereqs() else {
        return;
    };
    let mut sd = RealSystemd::start(&tar).unwrap_or_else(|e| panic!("{e}"));
    let journal =
        std::env::temp_dir().join(format!("wd-remediation-kill-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&journal);
    let agent = Agent::start(&[
        "trace",
        "--json",
        "--no-pleg",
        "--fork-probe",
        "off",
        "--poll-interval",
        "500ms",
        "--systemd-threshold",
        "3s",
        "--resolve-after",
        "2s",
        "--remediation",
        "enforce",
        "--allow-actions",
        "kill_process",
        "--remediation-delay",
        "1s",
        "--remediation-journal",
        journal.to_str().unwrap(),
    ]);
    let sd_start = start_time(sd.systemd_pid());
    sd.stop_systemd().unwrap();
    let mut c = sd
        .spawn_client(Client::Runc)
        .unwrap_or_else(|e| panic!("{e}"));
    let pid = c.pid();
    let target = format!("process {pid} (runc)");
    let done = agent
        .wait_for(
            |v| v["type"] == "remediation" && v["target"] == target && v["status"] != "started",
            Duration::from_secs(30),
        )
        .unwrap_or_else(|| panic!("no kill_process of runc {pid}: {}", agent.report()))
        .0;
    eprintln!("kill_process: {done}");
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["action"], "kill_process", "{done}");
    let t = Instant::now();
    while c.running() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "runc {pid} still runs"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let verified = agent
        .wait_for(
            |v| v["type"] == "remediation" && v["status"] == "verified",
            Duration::from_secs(20),
        )
        .unwrap_or_else(|| panic!("the step was not verified: {}", agent.report()))
        .0;
    assert_eq!(verified["target"], target, "{verified}");
    let records = agent.stop();
    let steps = remediation_records(&records);
    for s in &steps {
        eprintln!("{s}");
    }
    let reexec = steps
        .iter()
        .find(|v| v["action"] == "reexec_systemd")
        .expect("the reexec_systemd rung");
    assert_eq!(reexec["status"], "skipped", "{reexec}");
    assert!(
        reexec["reason"]
            .as_str()
            .unwrap()
            .starts_with("not allowed"),
        "{reexec}"
    );
    // systemd itself: untouched by the agent (still stopped until we
    // continue it, same process).
    assert_eq!(
        watchdog_tests::systemd::proc_state(sd.systemd_pid()),
        Some('T')
    );
    assert_eq!(start_time(sd.systemd_pid()), sd_start);
    sd.cont_systemd().unwrap();
    let _ = c.wait_exit(Duration::from_secs(10));
    let _ = std::fs::remove_file(&journal);
}
