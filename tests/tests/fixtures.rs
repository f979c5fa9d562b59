//! Self-tests of the fixtures in `watchdog_tests` (no agent needed): the
//! kernel really refuses forks the way the agent tests rely on, and every
//! fixture cleans up after itself.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use watchdog_tests::*;

fn pid_alive(pid: u32) -> bool {
    // A zombie still has /proc/<pid>; treat it as dead.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s
                .rfind(')')
                .and_then(|i| s[i + 1..].split_whitespace().next());
            state != Some("Z") && state != Some("X")
        })
        .unwrap_or(false)
}

#[test]
fn pids_cgroup_is_created_and_removed() {
    if !skip_unless_pid_exhaustion_prereqs() {
        return;
    }
    let cg = PidsCgroup::new(8);
    let fs_path = cg.fs_path().to_path_buf();
    assert!(fs_path.is_dir());
    let name = cg.name().to_string();
    assert!(
        name.starts_with(&format!("watchdog-test-{}-", std::process::id())),
        "{name}"
    );
    assert_eq!(cg.path_in_hierarchy(), format!("/{name}"));
    let max = std::fs::read_to_string(fs_path.join("pids.max")).unwrap();
    assert_eq!(max.trim(), "8");

    // A process we start and move in is killed when the guard drops.
    let mut sleeper = Command::new("/bin/sleep");
    sleeper.arg("600").stdout(Stdio::null());
    let sleeper = ChildGuard::spawn(&mut sleeper, "sleep").unwrap();
    cg.add_pid(sleeper.pid());
    assert_eq!(cg.procs(), vec![sleeper.pid()]);
    assert_eq!(cg.current(), Some(1));
    let t = Instant::now();
    drop(cg);
    eprintln!("cgroup with one process removed in {:?}", t.elapsed());
    assert!(!fs_path.exists(), "{} still exists", fs_path.display());
    drop(sleeper);

    // Two cgroups at once get different names.
    let a = PidsCgroup::new(4);
    let b = PidsCgroup::new(4);
    assert_ne!(a.fs_path(), b.fs_path());
}

#[test]
fn child_guard_kills_its_whole_group() {
    if !skip_unless_root() {
        return;
    }
    // sh starts a background sleep (same process group) and prints its pid.
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "/bin/sleep 600 & echo $!; wait"])
        .stdout(Stdio::piped());
    let mut g = ChildGuard::spawn(&mut cmd, "sh with a grandchild").unwrap();
    let mut out = g.take_stdout().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&mut out), &mut line).unwrap();
    let grandchild: u32 = line.trim().parse().unwrap();
    let leader = g.pid();
    assert!(pid_alive(grandchild));
    drop(g);
    let _ = wait::until("the grandchild to be gone", Duration::from_secs(5), || {
        if pid_alive(grandchild) {
            Err("alive")
        } else {
            Ok(())
        }
    });
    assert!(
        !pid_alive(grandchild),
        "grandchild {grandchild} survived the group kill"
    );
    assert!(!pid_alive(leader), "leader {leader} survived");
}

#[test]
fn fork_workload_hits_eagain_in_pids_cgroup() {
    if !skip_unless_pid_exhaustion_prereqs() {
        return;
    }
    let cg = PidsCgroup::new(8);
    let w = fork_until_eagain(&ForkOpts::default().in_cgroup(&cg).failures(5));
    let pid = w.pid();
    let first = w.wait_first_eagain(Duration::from_secs(15));
    assert!(first.is_some(), "no EAGAIN; output: {:?}", w.output());
    assert_eq!(cg.current(), Some(8), "the cgroup should be at its limit");
    assert!(
        cg.procs().contains(&pid),
        "python {pid} is not in {:?}",
        cg.procs()
    );
    let out = w.finish(Duration::from_secs(15));
    eprintln!("{out:?}");
    assert_eq!(out.status.map(|s| s.code()), Some(Some(0)), "{out:?}");
    assert_eq!(out.failures, 5, "{out:?}");
    assert_eq!(out.forked, 7, "8 = python + 7 children: {out:?}");
    assert!(
        cg.events_max().unwrap_or(0) >= 5,
        "pids.events max: {:?}",
        cg.events_max()
    );
    let path = cg.fs_path().to_path_buf();
    drop(cg);
    assert!(!path.exists());
}

#[test]
fn fork_workload_hits_eagain_under_rlimit_nproc() {
    if !skip_unless_rlimit_prereqs() {
        return;
    }
    let existing = count_tasks_of_uid(NOBODY);
    let limit = existing as u64 + 10;
    let w = fork_until_eagain(&ForkOpts::default().as_user(NOBODY, limit).failures(5));
    let pid = w.pid();
    let first = w.wait_first_eagain(Duration::from_secs(15));
    assert!(first.is_some(), "no EAGAIN; output: {:?}", w.output());
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or("");
    assert!(uid_line.contains(&NOBODY.to_string()), "{uid_line}");
    let out = w.finish(Duration::from_secs(15));
    eprintln!("existing tasks of uid {NOBODY}: {existing}, ulimit -u {limit}: {out:?}");
    assert_eq!(out.status.map(|s| s.code()), Some(Some(0)), "{out:?}");
    assert_eq!(out.failures, 5);
    // python itself + its children reach the limit (other tasks of the uid
    // may come and go meanwhile on a shared machine).
    assert!(out.forked >= 1 && out.forked as u64 <= limit, "{out:?}");
}

#[test]
fn fork_workload_fills_slowly_with_an_interval() {
    if !skip_unless_pid_exhaustion_prereqs() {
        return;
    }
    let cg = PidsCgroup::new(5);
    let t = Instant::now();
    let w = fork_until_eagain(
        &ForkOpts::default()
            .in_cgroup(&cg)
            .failures(1)
            .fork_interval(Duration::from_millis(50)),
    );
    assert!(
        w.wait_first_eagain(Duration::from_secs(15)).is_some(),
        "{:?}",
        w.output()
    );
    // 4 children, 50 ms after each.
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    let out = w.finish(Duration::from_secs(10));
    assert_eq!(out.forked, 4, "{out:?}");
}

#[test]
fn fork_workload_without_limit_reports_no_eagain() {
    if !skip_unless_root() {
        return;
    }
    let cg = PidsCgroup::new(1000);
    let w = fork_until_eagain(
        &ForkOpts::default()
            .in_cgroup(&cg)
            .time_limit(Duration::from_millis(300)),
    );
    let out = w.finish(Duration::from_secs(10));
    assert_eq!(out.first_eagain_ns, None, "{out:?}");
    assert_eq!(out.status.map(|s| s.code()), Some(Some(2)), "{out:?}");
    assert!(out.forked > 0);
}

/// Agent fixture against a fake agent written in sh: ready, records, SIGINT
/// handling, summary, and stderr capture.
#[test]
fn agent_fixture_with_fake_agent() {
    let dir = std::env::temp_dir().join(format!("watchdog-fake-agent-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fake = dir.join("fake-watchdog");
    std::fs::write(
        &fake,
        "#!/bin/sh\n\
         trap 'echo \"{\\\"type\\\":\\\"summary\\\",\\\"events\\\":0}\"; exit 0' INT\n\
         echo starting >&2\n\
         echo '{\"type\":\"ready\",\"probes\":[]}'\n\
         echo 'not json'\n\
         echo '{\"type\":\"finding\",\"n\":1}'\n\
         while :; do sleep 0.05; done\n",
    )
    .unwrap();
    let mut perms = std::fs::metadata(&fake).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&fake, perms).unwrap();

    let agent = Agent::start_with(Path::new(&fake), &["trace"], Duration::from_secs(5));
    let (v, _) = agent
        .wait_for(|v| v["type"] == "finding", Duration::from_secs(5))
        .unwrap();
    assert_eq!(v["n"], 1);
    assert!(
        agent
            .wait_for(|v| v["type"] == "nope", Duration::from_millis(100))
            .is_none()
    );
    assert_eq!(agent.bad_lines(), vec!["not json".to_string()]);
    assert!(agent.stderr().contains("starting"));
    let run = agent.stop_full();
    assert!(!run.killed, "SIGINT should have stopped it");
    assert!(run.status.is_some_and(|s| s.success()), "{:?}", run.status);
    assert_eq!(run.summary().map(|s| s["events"].clone()), Some(0.into()));
    assert_eq!(run.values().len(), 3);
    let _ = std::fs::remove_dir_all(&dir);
}
