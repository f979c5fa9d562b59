//! Storage hangs: tasks blocked on a FUSE mount whose daemon never answers.
//!
//! Every test makes its own hanging mount ([`HangingFuse`]) and, where it
//! needs one, its own dockerd ([`Dockerd`]); both clean up on drop (the FUSE
//! connection is aborted through fusectl before anything is killed). Blocked
//! children are declared before the FUSE guard so that it drops (aborts)
//! first: SIGKILL alone cannot end a task blocked on a FUSE request.
//!
//! The agent runs with `--hang-threshold 3s` to keep the tests short; the
//! deadline for a finding is that threshold + 2 s after the call blocked.
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use watchdog_tests::dockerd::{Dockerd, skip_unless_docker_prereqs};
use watchdog_tests::frozen::{FrozenExt4, skip_unless_freeze_prereqs};
use watchdog_tests::fuse::{FuseOpts, HangingFuse, skip_unless_fuse_prereqs};
use watchdog_tests::names::ProcessNames;
use watchdog_tests::{Agent, ChildGuard, PYTHON, secs_since_unix_ns, unix_ns, wait};

const THRESHOLD: Duration = Duration::from_secs(3);
const TRACE: &[&str] = &["trace", "--json", "--hang-threshold", "3s"];

const STAT: &str = "import os, sys; os.stat(sys.argv[1])";
const STATFS: &str = "import os, sys; os.statvfs(sys.argv[1])";
const READ: &str = "import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.read(fd, 16)";
const CREATE: &str =
    "import os, sys; os.close(os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY, 0o644))";

fn is_storage_finding(v: &Value, mount: &str) -> bool {
    v["type"] == "finding" && v["cause"] == "storage_hang" && v["mount_point"] == mount
}

fn blocked(v: &Value, pid: u32) -> Option<&Value> {
    v["blocked"]
        .as_array()?
        .iter()
        .find(|b| b["pid"].as_u64() == Some(u64::from(pid)))
}

fn mount_str(f: &HangingFuse) -> String {
    f.mount_point().to_string_lossy().into_owned()
}

/// /proc/<pid>/stat state letter.
fn state(pid: u32) -> Option<char> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 2..].chars().next()
}

fn wchan(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default()
}

/// Waits until `pid` sleeps in `request_wait_answer` (blocked on our FUSE).
fn wait_blocked_on_fuse(pid: u32, within: Duration) -> bool {
    let what = format!("pid {pid} to block in request_wait_answer");
    wait::until_every(&what, within, Duration::from_millis(20), || {
        let w = wchan(pid);
        if w == "request_wait_answer" {
            Ok(())
        } else {
            Err(w)
        }
    })
    .is_ok()
}

/// A python process that stats `path` (blocks on the hanging mount).
fn stat_in_background(path: &Path) -> ChildGuard {
    let mut cmd = Command::new(PYTHON);
    cmd.args(["-c", STAT]).arg(path).stdin(Stdio::null());
    ChildGuard::spawn(&mut cmd, "stat on hanging FUSE").expect("spawn python")
}

#[cfg(target_arch = "x86_64")]
const NR_READ: &str = "0";
#[cfg(target_arch = "aarch64")]
const NR_READ: &str = "63";

/// Waits until `pid` sleeps inside read(2). A blocked lookup holds its
/// directory's FUSE inode lock (libfuse2 has no parallel dirops), so the
/// reader must be past its open before anything else looks up there.
fn wait_in_read(pid: u32) {
    let what = format!("pid {pid} to block in read (D state)");
    if let Err(e) = wait::until(&what, Duration::from_secs(5), || {
        let sc = fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        let nr = sc.split_whitespace().next().map(str::to_owned);
        match (nr, state(pid)) {
            (Some(nr), Some('D')) if nr == NR_READ => Ok(()),
            seen => Err((seen, wchan(pid))),
        }
    }) {
        panic!("{e}");
    }
}

/// Waits for the resolution of `id` and returns it.
fn expect_resolved(agent: &Agent, id: &str, within: Duration) -> Value {
    agent
        .wait_for(
            |v| v["type"] == "finding" && v["id"] == id && v["status"] == "resolved",
            within,
        )
        .unwrap_or_else(|| panic!("{id} did not resolve within {within:?}\n{}", agent.report()))
        .0
}

#[test]
fn runtime_blocked_on_stat_statfs_read_is_found_within_threshold_plus_2s() {
    if !skip_unless_fuse_prereqs() {
        return;
    }
    // Blocked children first: they drop after the FUSE guard aborted.
    let mut kids: Vec<ChildGuard> = Vec::new();
    let mut fuse =
        HangingFuse::start_with(FuseOpts { hang_statfs: true }).unwrap_or_else(|e| panic!("{e}"));
    let names = ProcessNames::new();
    let agent = Agent::start(TRACE);
    let mp = mount_str(&fuse);

    let spawned = SystemTime::now();
    kids.push(names.spawn("conmon", READ, &fuse.read_hang_path()));
    wait_in_read(kids[0].pid());
    kids.push(names.spawn("runc", STAT, &fuse.hang_path()));
    kids.push(names.spawn("crun", STATFS, fuse.mount_point()));
    // Ordered as the assertions below: runc, crun, conmon.
    let pids: Vec<u32> = [1, 2, 0].iter().map(|i| kids[*i].pid()).collect();
    let deadline = THRESHOLD + Duration::from_secs(2);
    let Some(rec) = agent.wait_for_record(
        |v| is_storage_finding(v, &mp) && pids.iter().all(|p| blocked(v, *p).is_some()),
        deadline,
    ) else {
        let states: Vec<String> = pids
            .iter()
            .map(|p| format!("{p}: {:?} {}", state(*p), wchan(*p)))
            .collect();
        panic!(
            "no storage_hang finding naming all of {pids:?} on {mp} within {deadline:?} \
             (tasks: {states:?})\n{}",
            agent.report()
        );
    };
    let f = rec.value;
    println!(
        "detection: {:.2} s after the calls started (threshold {THRESHOLD:?})",
        secs_since_unix_ns(rec.wall, unix_ns(spawned))
    );
    // conmon's read blocks first; runc and crun start a few ms later and may
    // cross the threshold one sweep after it. Then the first report (active)
    // names conmon alone and the one naming all three is its update.
    let first = agent
        .records()
        .into_iter()
        .find(|v| is_storage_finding(v, &mp))
        .expect("the record found above");
    assert_eq!(first["status"], "active", "{first:#}");
    assert!(f["status"] == "active" || f["status"] == "update", "{f:#}");
    assert_eq!(f["fs_type"], "fuse");
    assert_eq!(f["source"], fuse.fsname());
    assert_eq!(f["dev"], fuse.dev());
    assert_eq!(f["wait"], "fuse");
    assert_eq!(f["confidence"], "certain");
    assert_eq!(f["id"], format!("storage_hang:{mp}"));
    for (pid, comm, syscalls, path) in [
        (
            pids[0],
            "runc",
            &["newfstatat", "statx", "stat"][..],
            fuse.hang_path(),
        ),
        (
            pids[1],
            "crun",
            &["statfs"][..],
            fuse.mount_point().to_owned(),
        ),
        (pids[2], "conmon", &["read"][..], fuse.read_hang_path()),
    ] {
        let b = blocked(&f, pid).unwrap();
        assert_eq!(b["comm"], comm, "{b:#}");
        assert!(
            syscalls.iter().any(|s| b["syscall"] == *s),
            "{comm}: syscall {} not in {syscalls:?}",
            b["syscall"]
        );
        assert_eq!(b["path"], path.to_string_lossy().as_ref(), "{b:#}");
        let for_s = b["blocked_for_s"].as_f64().unwrap();
        assert!((3.0..10.0).contains(&for_s), "{comm} blocked_for_s {for_s}");
        assert_eq!(b["wait"], "fuse");
        // Nobody signalled them: the FUSE request waits are interruptible
        // (S), the page wait of the read is TASK_KILLABLE: all killable.
        assert_eq!(b["killable"], true, "{b:#}");
    }
    let stack: Vec<&str> = f["stack"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        stack.iter().any(|s| s.starts_with("request_wait_answer")),
        "stack {stack:?}"
    );
    let processes = f["processes"].as_array().unwrap();
    for c in ["runc", "crun", "conmon"] {
        assert!(processes.iter().any(|p| p == c), "{processes:?}");
    }

    // SIGKILL: the request is with the daemon already, so the task now waits
    // uninterruptibly and cannot die. The finding must say so (updates come
    // every 5 s at most).
    kids[1].signal(libc::SIGKILL).unwrap();
    let stat_pid = pids[0];
    let Some((u, _)) = agent.wait_for(
        |v| {
            is_storage_finding(v, &mp)
                && blocked(v, stat_pid).is_some_and(|b| b["killable"] == false && b["state"] == "D")
        },
        Duration::from_secs(8),
    ) else {
        panic!(
            "no update showing pid {stat_pid} unkillable in D (state now {:?})\n{}",
            state(stat_pid),
            agent.report()
        );
    };
    assert!(u["unkillable"].as_u64().unwrap() >= 1, "{u:#}");
    assert_eq!(u["first_seen"], f["first_seen"]);

    // Release: the abort fails every request, the tasks finish or die.
    let aborted = Instant::now();
    fuse.abort().unwrap();
    let r = expect_resolved(
        &agent,
        &format!("storage_hang:{mp}"),
        Duration::from_secs(4),
    );
    println!(
        "resolution: {:.2} s after the abort",
        aborted.elapsed().as_secs_f64()
    );
    let d = r["duration_s"].as_f64().unwrap();
    assert!(d >= 3.0, "duration_s {d}");
    for k in &mut kids {
        assert!(
            k.wait_timeout(Duration::from_secs(5)).is_some(),
            "{} still alive after the abort",
            k.label()
        );
    }
    assert!(agent.bad_lines().is_empty(), "{:?}", agent.bad_lines());
}

/// A workload's own process (any name: not a runtime, not watched) blocked
/// in D on a frozen ext4 is found with its syscall and path (read at the
/// switch, in the kernel), its mount and the freeze wait.
#[test]
fn workload_blocked_on_a_frozen_ext4_is_found_with_its_path_and_mount() {
    if !skip_unless_freeze_prereqs() {
        return;
    }
    // The child first: it drops (is killed) after the guard thawed.
    let mut kids: Vec<ChildGuard> = Vec::new();
    let mut fs = FrozenExt4::mount().unwrap_or_else(|e| panic!("{e}"));
    let names = ProcessNames::new();
    let agent = Agent::start(TRACE);
    let mp = fs.mount_point().to_string_lossy().into_owned();
    fs.freeze().unwrap_or_else(|e| panic!("{e}"));
    let target = fs.mount_point().join("newfile");
    let spawned = SystemTime::now();
    kids.push(names.spawn("java", CREATE, &target));
    let pid = kids[0].pid();
    if let Err(e) = wait::until(
        &format!("pid {pid} to block in D on the frozen file system"),
        Duration::from_secs(5),
        || match (state(pid), wchan(pid)) {
            (Some('D'), w) if w == "percpu_rwsem_wait" || w == "__percpu_down_read" => Ok(()),
            seen => Err(seen),
        },
    ) {
        panic!("{e}");
    }
    let deadline = THRESHOLD + Duration::from_secs(2);
    let Some(rec) = agent.wait_for_record(
        |v| is_storage_finding(v, &mp) && blocked(v, pid).is_some(),
        deadline,
    ) else {
        panic!(
            "no storage_hang finding for java ({pid}) on {mp} within {deadline:?}\n{}",
            agent.report()
        );
    };
    println!(
        "detection: {:.2} s after the open started (threshold {THRESHOLD:?})",
        secs_since_unix_ns(rec.wall, unix_ns(spawned))
    );
    let f = rec.value;
    assert_eq!(f["fs_type"], "ext4", "{f:#}");
    assert_eq!(f["source"], fs.device(), "{f:#}");
    assert_eq!(f["wait"], "frozen", "{f:#}");
    assert_eq!(f["id"], format!("storage_hang:{mp}"));
    let b = blocked(&f, pid).unwrap();
    assert_eq!(b["comm"], "java", "{b:#}");
    assert_eq!(b["state"], "D", "{b:#}");
    assert_eq!(b["syscall"], "openat", "{b:#}");
    assert_eq!(b["path"], target.to_string_lossy().as_ref(), "{b:#}");
    let stack = f["stack"].to_string();
    assert!(stack.contains("percpu_"), "{stack}");
    assert!(
        f["remedy"].to_string().contains("fsfreeze -u"),
        "{}",
        f["remedy"]
    );

    fs.thaw().unwrap_or_else(|e| panic!("{e}"));
    expect_resolved(
        &agent,
        &format!("storage_hang:{mp}"),
        Duration::from_secs(4),
    );
    assert!(
        kids[0].wait_timeout(Duration::from_secs(5)).is_some(),
        "java still blocked after the thaw"
    );
}

#[test]
fn unwatched_tasks_are_found_only_in_d_state() {
    if !skip_unless_fuse_prereqs() {
        return;
    }
    let mut kids: Vec<ChildGuard> = Vec::new();
    let mut fuse = HangingFuse::start();
    let names = ProcessNames::new();
    let agent = Agent::start(TRACE);
    let mp = mount_str(&fuse);
    // Not a runtime name: no syscall tracking. The read waits for the page
    // in D (killable); the stat waits interruptibly (S) and is not reported.
    kids.push(names.spawn("wd-reader", READ, &fuse.read_hang_path()));
    wait_in_read(kids[0].pid());
    kids.push(names.spawn("wd-statter", STAT, &fuse.hang_path()));
    let (reader, statter) = (kids[0].pid(), kids[1].pid());
    let Some((f, _)) = agent.wait_for(
        |v| is_storage_finding(v, &mp) && blocked(v, reader).is_some(),
        THRESHOLD + Duration::from_secs(3),
    ) else {
        panic!(
            "no finding for the unwatched reader {reader} (state {:?}, wchan {})\n{}",
            state(reader),
            wchan(reader),
            agent.report()
        );
    };
    let b = blocked(&f, reader).unwrap();
    assert_eq!(b["comm"], "wd-reader");
    assert_eq!(b["state"], "D");
    // The syscall and fd from its registers at the switch, the fd's link.
    assert_eq!(b["syscall"], "read", "{b:#}");
    assert_eq!(b["path"], fuse.read_hang_path().to_string_lossy().as_ref());
    assert_eq!(b["wait"], "fuse");
    assert_eq!(
        b["killable"], true,
        "folio_wait_bit_killable sleeps TASK_KILLABLE: {b:#}"
    );
    // The stack comes from the sched_switch record, symbolised via kallsyms.
    let stack = f["stack"].to_string();
    assert!(stack.contains("folio_wait_bit"), "{stack}");
    assert!(
        blocked(&f, statter).is_none(),
        "an S-state unwatched task was reported: {f:#}"
    );
    fuse.abort().unwrap();
    expect_resolved(
        &agent,
        &format!("storage_hang:{mp}"),
        Duration::from_secs(4),
    );
}

#[test]
fn slow_but_progressing_io_gives_no_finding() {
    if !skip_unless_fuse_prereqs() {
        return;
    }
    let names = ProcessNames::new();
    let agent = Agent::start_recorded(&["trace", "--json", "--hang-threshold", "2s"]);
    // fsync after every small write on the root file system, for 6 s.
    let file = names.dir().join("fsync-load");
    let script = "import os, sys, time\n\
        fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600)\n\
        end = time.time() + 6\n\
        n = 0\n\
        while time.time() < end:\n    os.write(fd, b'x' * 4096); os.fsync(fd); n += 1\n\
        print(n)\n";
    let mut load = names.spawn("runc", script, &file);
    assert!(
        load.wait_timeout(Duration::from_secs(20))
            .is_some_and(|s| s.success()),
        "fsync loop failed"
    );
    // Barrier: the agent has swept the blocked tasks after the load ended.
    agent.wait_for_poll_after(std::time::SystemTime::now(), Duration::from_secs(10));
    let pid = u64::from(load.pid());
    let bad: Vec<Value> = agent
        .stop_full()
        .values()
        .into_iter()
        .filter(|v| {
            v["cause"] == "storage_hang"
                && v["blocked"]
                    .as_array()
                    .is_some_and(|b| b.iter().any(|t| t["pid"].as_u64() == Some(pid)))
        })
        .collect();
    assert!(bad.is_empty(), "progressing I/O was reported: {bad:#?}");
}

#[test]
fn dockerd_blocked_on_a_container_volume_names_the_mount_and_dockerd() {
    if !skip_unless_docker_prereqs() || !skip_unless_fuse_prereqs() {
        return;
    }
    // Drop order (reverse): agent, FUSE guard (abort), docker CLI, dockerd.
    let mut dockerd = Dockerd::start().unwrap_or_else(|e| panic!("{e}"));
    let mut kids: Vec<ChildGuard> = Vec::new();
    let mut fuse = HangingFuse::start();
    let mp = mount_str(&fuse);
    let image = dockerd.busybox_image().unwrap_or_else(|e| panic!("{e}"));
    let agent = Agent::start(TRACE);

    // A container whose volume is on the mount; its process blocks there.
    let vol = format!("{}:/data", fuse.vol_dir().display());
    let id = dockerd
        .run_detached(&["-v", &vol, &image, "sh", "-c", "stat /data/hang; sleep 600"])
        .unwrap_or_else(|e| panic!("{e}\n{}", dockerd.log_tail()));
    // Now the daemon dies for everyone: dockerd's own check of the volume
    // source for a new container blocks (newfstatat in dockerd).
    fuse.hang_everything().unwrap();
    let vol2 = format!("{}:/data2", fuse.vol_dir().display());
    let mut cmd = Command::new("timeout");
    cmd.args([
        "-s",
        "KILL",
        "60",
        "docker",
        "-H",
        &dockerd.host(),
        "run",
        "-d",
    ])
    .args(["--network", "none", "-v", &vol2, &image, "true"])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    kids.push(ChildGuard::spawn(&mut cmd, "docker run on the hung volume").unwrap());

    let dpid = dockerd.pid();
    let Some((f, _)) = agent.wait_for(
        |v| {
            is_storage_finding(v, &mp)
                && blocked(v, dpid).is_some()
                && v["containers"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["container_id"] == id.as_str()))
        },
        THRESHOLD + Duration::from_secs(10),
    ) else {
        panic!(
            "no storage_hang finding on {mp} naming dockerd {dpid} and container {id}\n{}\n{}",
            agent.report(),
            dockerd.log_tail()
        );
    };
    let d = blocked(&f, dpid).unwrap();
    assert_eq!(d["comm"], "dockerd", "{d:#}");
    assert!(
        d["path"].as_str().is_some_and(|p| p.starts_with(&mp)),
        "dockerd's path {d:#}"
    );
    assert_eq!(f["processes"][0], "dockerd", "{f:#}");
    assert_eq!(f["fs_type"], "fuse");
    assert_eq!(f["wait"], "fuse");

    fuse.abort().unwrap();
    expect_resolved(
        &agent,
        &format!("storage_hang:{mp}"),
        Duration::from_secs(10),
    );
}

/// A container's own process, in a pod's cgroup (kubelet's cgroupfs layout
/// below this dockerd's private parent), blocked writing to its volume on a
/// frozen ext4: the finding names the mount, the container and the pod.
#[test]
fn a_pod_container_blocked_on_a_frozen_volume_names_its_container_and_pod() {
    if !skip_unless_docker_prereqs() || !skip_unless_freeze_prereqs() {
        return;
    }
    // Drop order (reverse): agent, freeze guard (thaw, umount), dockerd.
    let mut dockerd = Dockerd::start().unwrap_or_else(|e| panic!("{e}"));
    let mut fs = FrozenExt4::mount().unwrap_or_else(|e| panic!("{e}"));
    let image = dockerd.busybox_image().unwrap_or_else(|e| panic!("{e}"));
    let agent = Agent::start(TRACE);
    let mp = fs.mount_point().to_string_lossy().into_owned();
    let pod_uid = format!(
        "5e1f0c2a-{:04x}-4c1e-9d7a-0242ac120002",
        std::process::id() & 0xffff
    );
    let parent = format!(
        "/{}/kubepods/besteffort/pod{pod_uid}",
        dockerd
            .cgroup_parent()
            .expect("dockerd has its own cgroup parent")
    );
    fs.freeze().unwrap_or_else(|e| panic!("{e}"));
    let vol = format!("{mp}:/data");
    let id = dockerd
        .run_detached(&[
            "--cgroup-parent",
            &parent,
            "-v",
            &vol,
            &image,
            "sh",
            "-c",
            "echo x > /data/f; sleep 600",
        ])
        .unwrap_or_else(|e| panic!("{e}\n{}", dockerd.log_tail()));
    let Some((f, _)) = agent.wait_for(
        |v| {
            is_storage_finding(v, &mp)
                && v["containers"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["container_id"] == id.as_str()))
        },
        THRESHOLD + Duration::from_secs(5),
    ) else {
        panic!(
            "no storage_hang finding on {mp} naming container {id}\n{}\n{}",
            agent.report(),
            dockerd.log_tail()
        );
    };
    assert_eq!(f["wait"], "frozen", "{f:#}");
    assert_eq!(f["fs_type"], "ext4", "{f:#}");
    let pods = f["pods"].to_string();
    assert!(
        pods.contains(&pod_uid),
        "pod {pod_uid} not in {pods}: {f:#}"
    );
    let b = f["blocked"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["comm"] == "sh"))
        .unwrap_or_else(|| panic!("the container's sh is not among the blocked: {f:#}"));
    assert_eq!(b["syscall"], "openat", "{b:#}");
    // As the task sees it (its mount namespace): /data/f.
    assert_eq!(b["path"], "/data/f", "{b:#}");
    assert_eq!(b["state"], "D", "{b:#}");

    fs.thaw().unwrap_or_else(|e| panic!("{e}"));
    expect_resolved(
        &agent,
        &format!("storage_hang:{mp}"),
        Duration::from_secs(5),
    );
    dockerd
        .docker_ok(&["rm", "-f", &id], 30)
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn fixture_fuse_blocks_and_abort_releases() {
    if !skip_unless_fuse_prereqs() {
        return;
    }
    let mut fuse = HangingFuse::start();
    // Answering paths answer.
    assert_eq!(
        std::fs::metadata(fuse.file_path())
            .expect("stat file")
            .len(),
        4096
    );
    assert!(fuse.vol_dir().is_dir());
    let mut stat = stat_in_background(&fuse.hang_path());
    assert!(
        wait_blocked_on_fuse(stat.pid(), Duration::from_secs(5)),
        "stat of {} did not block in request_wait_answer (wchan {:?}, state {:?})",
        fuse.hang_path().display(),
        wchan(stat.pid()),
        state(stat.pid())
    );
    // A signal moves it from the interruptible to the killable (D) wait.
    stat.signal(libc::SIGTERM).unwrap();
    let pid = stat.pid();
    let _ = wait::until(
        "the signalled stat to be in D state",
        Duration::from_secs(2),
        || match state(pid) {
            Some('D') => Ok(()),
            other => Err(other),
        },
    );
    assert_eq!(state(stat.pid()), Some('D'));
    fuse.abort().expect("abort");
    assert!(
        stat.wait_timeout(Duration::from_secs(5)).is_some(),
        "abort did not release the blocked stat"
    );
}

#[test]
fn fixture_dockerd_runs_a_container_with_a_fuse_volume() {
    if !skip_unless_docker_prereqs() || !skip_unless_fuse_prereqs() {
        return;
    }
    let mut dockerd = Dockerd::start().unwrap_or_else(|e| panic!("{e}"));
    let fuse = HangingFuse::start();
    let image = dockerd.busybox_image().unwrap_or_else(|e| panic!("{e}"));
    let vol = format!("{}:/data", fuse.vol_dir().display());
    let id = dockerd
        .run_detached(&[
            "-v",
            &vol,
            &image,
            "sh",
            "-c",
            "cat /data/file >/dev/null; sleep 600",
        ])
        .unwrap_or_else(|e| panic!("{e}\n{}", dockerd.log_tail()));
    let pid = dockerd.container_pid(&id).unwrap_or_else(|e| panic!("{e}"));
    assert!(pid > 1);
}

/// `watchdog trace` is run during an incident: tasks blocked before it
/// started are found too (adopted from /proc at start: the switch probe
/// only sees a sleep begin), with the syscall and path /proc gives.
#[test]
fn a_task_blocked_before_the_agent_started_is_found() {
    if !skip_unless_fuse_prereqs() {
        return;
    }
    let mut kids: Vec<ChildGuard> = Vec::new();
    let fuse = HangingFuse::start();
    let names = ProcessNames::new();
    kids.push(names.spawn("wd-early", READ, &fuse.read_hang_path()));
    let pid = kids[0].pid();
    wait_in_read(pid);
    // Blocked for a while before the agent exists.
    std::thread::sleep(Duration::from_secs(1));
    let agent = Agent::start(TRACE);
    let mp = mount_str(&fuse);
    let Some((f, _)) = agent.wait_for(
        |v| is_storage_finding(v, &mp) && blocked(v, pid).is_some(),
        THRESHOLD + Duration::from_secs(3),
    ) else {
        panic!(
            "no finding for {pid}, blocked before the agent started (state {:?}, wchan {})\n{}",
            state(pid),
            wchan(pid),
            agent.report()
        );
    };
    let b = blocked(&f, pid).unwrap();
    assert_eq!(b["comm"], "wd-early");
    assert_eq!(b["state"], "D");
    assert_eq!(b["syscall"], "read", "{b:#}");
    assert_eq!(b["path"], fuse.read_hang_path().to_string_lossy().as_ref());
    assert!(
        b.get("killable").is_none_or(Value::is_null),
        "/proc cannot tell whether an adopted sleep is killable: {b:#}"
    );
    // Blocked at least since the agent started (a lower bound).
    let blocked_s = b["blocked_for_s"].as_f64().unwrap_or(0.0);
    assert!(
        blocked_s >= THRESHOLD.as_secs_f64(),
        "blocked for {blocked_s} s: {b:#}"
    );
    drop(fuse);
    drop(kids);
    agent.stop();
}
