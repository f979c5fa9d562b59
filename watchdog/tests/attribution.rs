//! Attribution of failed forks (EAGAIN) over recorded /proc and cgroupfs trees:
//! which of the four PID limits fired (pids cgroup, RLIMIT_NPROC,
//! kernel.threads-max, kernel.pid_max), who owns it, who holds the tasks, and
//! how full the other limits are. Covers cgroup v1 and v2 and the kubepods
//! naming of both kubelet cgroup drivers.
//!
//! The trees live in `tests/fixtures/<scenario>/` (see the README there). The
//! events carry `pids_cgroup_id = 0`, so the agent finds the caller's cgroup
//! through `<root>/proc/<pid>/cgroup`: inode numbers of a checked-in tree
//! cannot match a kernel's cgroup ids.
use std::{
    fs,
    mem::size_of,
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
};

use watchdog::context::NodeContext;
use watchdog::context::cgroup::CgroupVersion;
use watchdog::diagnosis::Engine;
use watchdog::model::finding::pid::{
    CgroupUsage, Headroom, Limit, PidDetail, ProcessFailures, Usage,
};
use watchdog::model::finding::{Confidence, Detail, Finding, FindingStatus, Report, WarningStatus};
use watchdog::model::pod::{CgroupDriver, PodRef};
use watchdog::model::settings::EngineConfig;
use watchdog::model::{Consumer, ForkFailed, Observation, PidsCgroupState, SystemPids, Time};
use watchdog_common::{COMM_LEN, EventHeader, EventKind, ForkFailureEvent, ForkSyscall};

const T0: Time = Time(1_785_000_000_000);

/// Flags of a pthread_create (glibc clone3): VM|FS|FILES|SIGHAND|THREAD|
/// SYSVSEM|SETTLS|PARENT_SETTID|CHILD_CLEARTID.
const PTHREAD_FLAGS: u64 = 0x003d_0f00;
/// Flags of a Go runtime thread (clone): VM|FS|FILES|SIGHAND|SYSVSEM|THREAD.
const GO_THREAD_FLAGS: u64 = 0x0005_0f00;
/// Flags of glibc fork(): CHILD_SETTID|CHILD_CLEARTID|SIGCHLD.
const FORK_FLAGS: u64 = 0x0120_0011;

// Scenario 1: v1, cgroupfs driver.
const P1: &str = "8d3f1a52-6c1e-4b7a-9f0e-2d5c7b9a4e61";
const P1_APP: &str = "48bdab86263db98789a1b3ae6bc19fe2f40301d811e95d5084eaf81ca1b7e31a";
const P2: &str = "c0a8e3b4-1f27-4d6a-8b35-9e0f4c2d7a18";
// Scenario 2: v2, systemd driver, containerd.
const P3: &str = "5b1e9c44-0d7f-4a3b-b6e2-81f9a0c3d5e7";
const P3_APP: &str = "9cce78da50bee190590d9224a01dfa379c8ece64151f5d6d221be2697151b581";
// Scenario 4: v1, systemd driver, docker.
const P4: &str = "e2c7a9d0-3b41-4f85-9c6e-0a7d5b1f8e23";
const P4_APP: &str = "591855b7f35f4cbba8b99ae4067710c96f20dc043930872cb3a21cb80098ebed";
// Scenario 7: v2, cgroupfs driver, Guaranteed.
const P8: &str = "0f6b2d93-84e1-4c7a-9b25-e3a1d8c60f47";
const P8_APP: &str = "5327ffb845ae0c495db5015425959b786a1139bd4558e6d91bb18a9d782dac1f";

fn pod1() -> String {
    format!("/kubepods/burstable/pod{P1}")
}

fn pod1_app() -> String {
    format!("{}/{P1_APP}", pod1())
}

fn pod3() -> String {
    format!(
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
        P3.replace('-', "_")
    )
}

fn pod3_app() -> String {
    format!("{}/cri-containerd-{P3_APP}.scope", pod3())
}

fn pod4_app() -> String {
    format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/docker-{P4_APP}.scope",
        P4.replace('-', "_")
    )
}

fn pod8() -> String {
    format!("/kubepods/pod{P8}")
}

fn pod8_app() -> String {
    format!("{}/{P8_APP}", pod8())
}

// ------------------------------------------------------------------ helpers

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A private copy of a fixture tree that a test may rewrite; removed on drop.
struct TempTree(PathBuf);

impl TempTree {
    fn copy_of(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "watchdog-attribution-{}-{}-{name}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        copy_dir(&fixture(name), &dir);
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// Overwrite a control file of the pids hierarchy (`mount` relative to
    /// the root, `cgroup` the path inside the hierarchy).
    fn write_cgroup_file(&self, mount: &str, cgroup: &str, file: &str, text: &str) {
        let p = self
            .0
            .join(mount)
            .join(cgroup.trim_start_matches('/'))
            .join(file);
        assert!(p.exists(), "{} is not in the tree", p.display());
        fs::write(&p, text).unwrap();
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            fs::copy(e.path(), &target).unwrap();
        }
    }
}

const V1_MOUNT: &str = "sys/fs/cgroup/pids";
const V2_MOUNT: &str = "sys/fs/cgroup";

fn event(
    tid: u32,
    pid: u32,
    uid: u32,
    comm: &str,
    syscall: ForkSyscall,
    clone_flags: u64,
) -> ForkFailureEvent {
    let mut c = [0u8; COMM_LEN];
    c[..comm.len()].copy_from_slice(comm.as_bytes());
    ForkFailureEvent {
        header: EventHeader::new(
            EventKind::ForkFailure,
            size_of::<ForkFailureEvent>(),
            9_876_543_210,
        ),
        tid,
        pid,
        uid,
        gid: uid,
        syscall: syscall as u32,
        ret: -11,
        clone_flags,
        cgroup_id: 0,
        pids_cgroup_id: 0,
        comm: c,
    }
}

/// The observation of one failure (boxed or not, whichever the enum holds).
fn fork_obs(f: ForkFailed) -> Observation {
    #[allow(clippy::useless_conversion)]
    Observation::ForkFailed(f.into())
}

fn findings(reports: &[Report]) -> Vec<&Finding> {
    reports
        .iter()
        .filter_map(|r| match r {
            Report::Finding(f) => Some(&**f),
            Report::Warning(_) | Report::Pleg(_) => None,
        })
        .collect()
}

/// The one finding among `reports`.
fn only_finding(reports: &[Report]) -> Finding {
    let f = findings(reports);
    assert_eq!(f.len(), 1, "expected one finding in {reports:#?}");
    f[0].clone()
}

fn pid(f: &Finding) -> &PidDetail {
    #[allow(unreachable_patterns)]
    match &f.detail {
        Detail::Pid(d) => d,
        _ => panic!("not a PID finding: {f:#?}"),
    }
}

fn usage(current: u64, max: u64, percent: f64) -> Usage {
    Usage {
        current,
        max,
        percent,
    }
}

fn cg_usage(cgroup: &str, current: u64, max: u64, percent: f64) -> CgroupUsage {
    CgroupUsage {
        cgroup: cgroup.to_owned(),
        usage: usage(current, max, percent),
    }
}

fn consumer(pid: u32, comm: &str, threads: u64, uid: u32) -> Consumer {
    Consumer {
        pid,
        comm: comm.to_owned(),
        threads,
        uid,
    }
}

fn state(path: &str, current: u64, max: Option<u64>, events_max: u64) -> PidsCgroupState {
    PidsCgroupState {
        path: path.to_owned(),
        current,
        max,
        events_max,
    }
}

fn process(pid: u32, comm: &str, uid: u32, thread: bool) -> ProcessFailures {
    ProcessFailures {
        pid,
        comm: comm.to_owned(),
        uid,
        failures: 1,
        thread_failures: u64::from(thread),
    }
}

/// Read one failure from a tree and feed it to a fresh engine.
fn diagnose_one(tree: &str, ev: &ForkFailureEvent) -> (ForkFailed, Finding) {
    let mut ctx = NodeContext::new(&fixture(tree));
    let obs = ctx.fork_failed(ev, T0);
    let mut engine = Engine::new(EngineConfig::default());
    let reports = engine.observe(&fork_obs(obs.clone()));
    let f = only_finding(&reports);
    assert_eq!(f.status, FindingStatus::Active);
    assert_eq!((f.first_seen, f.last_seen), (T0, T0));
    (obs, f)
}

// ---------------------------------------------------------------- discovery

#[test]
fn discovers_the_pids_hierarchy_of_every_tree() {
    for (tree, mount, version) in [
        // From mountinfo: hybrid hosts (v1 pids + an empty unified tree).
        ("v1-cgroupfs-pod-limit", V1_MOUNT, CgroupVersion::V1),
        ("v1-docker-service-tasksmax", V1_MOUNT, CgroupVersion::V1),
        ("rlimit-nproc", V1_MOUNT, CgroupVersion::V1),
        // From mountinfo: unified hosts.
        ("v2-systemd-pod-limit", V2_MOUNT, CgroupVersion::V2),
        ("healthy-transient", V2_MOUNT, CgroupVersion::V2),
        // No mountinfo recorded: the conventional mount points.
        ("threads-max", V2_MOUNT, CgroupVersion::V2),
        ("pid-max", V1_MOUNT, CgroupVersion::V1),
    ] {
        let root = fixture(tree);
        let ctx = NodeContext::new(&root);
        let h = ctx
            .pids
            .as_ref()
            .unwrap_or_else(|| panic!("{tree}: no pids hierarchy"));
        assert_eq!(h.mount, root.join(mount), "{tree}");
        assert_eq!(h.version, version, "{tree}");
    }
}

// ---------------------------------------------------------------- scenarios

/// 1. cgroup v1, cgroupfs driver: a Burstable pod with podPidsLimit 1024 is
///    full; the limit sits on the pod cgroup, not the container's.
#[test]
fn v1_cgroupfs_pod_limit() {
    let ev = event(
        48213,
        41877,
        185,
        "java",
        ForkSyscall::Clone3,
        PTHREAD_FLAGS,
    );
    let (obs, f) = diagnose_one("v1-cgroupfs-pod-limit", &ev);

    // The observation: the caller's cgroup from /proc/41877/cgroup (the tid
    // has no directory of its own in the tree) and its ancestors, leaf first.
    assert_eq!(obs.pids_cgroup.as_deref(), Some(pod1_app().as_str()));
    assert_eq!(
        obs.cgroup_chain,
        vec![
            state(&pod1_app(), 1001, None, 311),
            state(&pod1(), 1024, Some(1024), 0),
            state("/kubepods/burstable", 1296, None, 0),
            state("/kubepods", 1452, None, 0),
        ]
    );
    assert_eq!(
        (obs.comm.as_str(), obs.syscall.as_str(), obs.thread),
        ("java", "clone3", true)
    );
    assert_eq!(obs.user, None, "java's RLIMIT_NPROC is unlimited");
    assert_eq!(
        obs.system,
        SystemPids {
            threads: 2315,
            threads_max: 255_208,
            pid_max: 4_194_304,
        }
    );

    let d = pid(&f);
    assert_eq!(d.limit, Limit::PidsCgroup);
    assert_eq!(f.confidence, Confidence::Likely);
    assert_eq!(
        f.id.to_string(),
        format!("pid_exhaustion/pids_cgroup/{}", pod1())
    );
    assert_eq!(d.cgroup.as_deref(), Some(pod1().as_str()));
    assert_eq!(d.uid, 185);
    assert_eq!(
        d.pod,
        Some(PodRef {
            namespace: None,
            name: None,
            container_name: None,
            pod_uid: P1.into(),
            qos: "burstable".into(),
            container_id: Some(P1_APP.into()),
            runtime: None,
            driver: CgroupDriver::Cgroupfs,
        })
    );
    assert_eq!(d.failures, 1);
    assert_eq!(d.kernel_rejections, None);
    assert_eq!(d.processes, vec![process(41877, "java", 185, true)]);
    assert_eq!(
        d.top_consumers,
        vec![
            consumer(41877, "java", 1000, 185),
            consumer(41702, "envoy", 22, 101),
            consumer(41533, "pause", 1, 65535),
            consumer(41860, "tini", 1, 185),
        ]
    );
    assert_eq!(
        d.limits,
        Headroom {
            pids_cgroups: vec![cg_usage(&pod1(), 1024, 1024, 100.0)],
            rlimit_nproc: None,
            threads_max: Some(usage(2315, 255_208, 0.9)),
            pid_max: Some(usage(2315, 4_194_304, 0.1)),
        }
    );
    assert!(
        f.summary.contains(&format!(
            "pids cgroup {} is at its limit (1024 of 1024 tasks) [pod uid {P1}]",
            pod1()
        )),
        "{}",
        f.summary
    );
    assert!(
        f.remedy
            .text
            .contains("The largest holder is java[41877] with 1000 tasks."),
        "{}",
        f.remedy.text
    );
}

/// 2. cgroup v2, systemd driver, containerd: a BestEffort pod with
///    podPidsLimit 512 is full.
#[test]
fn v2_systemd_pod_limit() {
    let ev = event(
        90377,
        90241,
        0,
        "gunicorn",
        ForkSyscall::Clone3,
        PTHREAD_FLAGS,
    );
    let (obs, f) = diagnose_one("v2-systemd-pod-limit", &ev);

    assert_eq!(obs.pids_cgroup.as_deref(), Some(pod3_app().as_str()));
    assert_eq!(
        obs.cgroup_chain,
        vec![
            state(&pod3_app(), 511, None, 0),
            state(&pod3(), 512, Some(512), 37),
            state("/kubepods.slice/kubepods-besteffort.slice", 530, None, 37),
            state("/kubepods.slice", 734, None, 37),
        ]
    );
    assert_eq!(obs.user, None, "root is exempt from RLIMIT_NPROC");

    let d = pid(&f);
    assert_eq!(d.limit, Limit::PidsCgroup);
    assert_eq!(f.confidence, Confidence::Likely);
    assert_eq!(d.cgroup.as_deref(), Some(pod3().as_str()));
    assert_eq!(d.uid, 0);
    assert_eq!(
        d.pod,
        Some(PodRef {
            namespace: None,
            name: None,
            container_name: None,
            pod_uid: P3.into(),
            qos: "besteffort".into(),
            container_id: Some(P3_APP.into()),
            runtime: Some("containerd".into()),
            driver: CgroupDriver::Systemd,
        })
    );
    assert_eq!(d.processes, vec![process(90241, "gunicorn", 0, true)]);
    // Most threads first, ties by pid; five at most (the pause process is out).
    assert_eq!(
        d.top_consumers,
        vec![
            consumer(90243, "gunicorn", 128, 0),
            consumer(90240, "gunicorn", 127, 0),
            consumer(90241, "gunicorn", 127, 0),
            consumer(90242, "gunicorn", 126, 0),
            consumer(90211, "gunicorn", 3, 0),
        ]
    );
    assert_eq!(
        d.limits,
        Headroom {
            pids_cgroups: vec![cg_usage(&pod3(), 512, 512, 100.0)],
            rlimit_nproc: None,
            threads_max: Some(usage(1876, 127_390, 1.5)),
            pid_max: Some(usage(1876, 4_194_304, 0.0)),
        }
    );
}

/// 3. cgroup v1: systemd's TasksMax on docker.service (4915, 15% of pid_max
///    32768) is full; dockerd itself leaks threads. Not a pod.
#[test]
fn v1_docker_service_tasksmax() {
    let ev = event(
        27731,
        1187,
        0,
        "dockerd",
        ForkSyscall::Clone,
        GO_THREAD_FLAGS,
    );
    let (obs, f) = diagnose_one("v1-docker-service-tasksmax", &ev);

    assert_eq!(
        obs.pids_cgroup.as_deref(),
        Some("/system.slice/docker.service")
    );
    assert_eq!(obs.pod, None);

    let d = pid(&f);
    assert_eq!(d.limit, Limit::PidsCgroup);
    assert_eq!(f.confidence, Confidence::Likely);
    // The id is the limit's name and the owner (here an absolute path).
    assert_eq!(
        f.id.to_string(),
        "pid_exhaustion/pids_cgroup//system.slice/docker.service"
    );
    assert_eq!(d.cgroup.as_deref(), Some("/system.slice/docker.service"));
    assert_eq!(d.uid, 0);
    assert_eq!(d.pod, None);
    assert_eq!(d.processes, vec![process(1187, "dockerd", 0, true)]);
    assert_eq!(
        d.top_consumers,
        vec![
            consumer(1187, "dockerd", 4310, 0),
            consumer(1302, "docker-containe", 581, 0),
            consumer(2261, "docker-proxy", 8, 0),
            consumer(2279, "docker-proxy", 8, 0),
            consumer(2297, "docker-containe", 8, 0),
        ]
    );
    assert_eq!(
        d.limits,
        Headroom {
            pids_cgroups: vec![cg_usage("/system.slice/docker.service", 4915, 4915, 100.0)],
            rlimit_nproc: None,
            threads_max: Some(usage(6210, 63_704, 9.7)),
            pid_max: Some(usage(6210, 32_768, 19.0)),
        }
    );
    assert!(f.remedy.text.contains("TasksMax="), "{}", f.remedy.text);
}

/// 4. RLIMIT_NPROC: uid 1000 (in two pods, docker's default-ulimit nproc
///    200:400) holds 200 tasks; no pids cgroup on its way has a limit.
#[test]
fn rlimit_nproc() {
    let ev = event(23114, 23114, 1000, "node", ForkSyscall::Clone, FORK_FLAGS);
    let (obs, f) = diagnose_one("rlimit-nproc", &ev);

    assert_eq!(obs.pids_cgroup.as_deref(), Some(pod4_app().as_str()));
    assert!(
        obs.cgroup_chain.iter().all(|c| c.max.is_none()),
        "{:?}",
        obs.cgroup_chain
    );
    assert!(!obs.thread);

    let d = pid(&f);
    assert_eq!(d.limit, Limit::RlimitNproc);
    assert_eq!(f.confidence, Confidence::Likely);
    assert_eq!(f.id.to_string(), "pid_exhaustion/rlimit_nproc/uid 1000");
    assert_eq!(d.uid, 1000);
    // For this limit `cgroup` is the failing task's.
    assert_eq!(d.cgroup.as_deref(), Some(pod4_app().as_str()));
    assert_eq!(
        d.pod,
        Some(PodRef {
            namespace: None,
            name: None,
            container_name: None,
            pod_uid: P4.into(),
            qos: "burstable".into(),
            container_id: Some(P4_APP.into()),
            runtime: Some("docker".into()),
            driver: CgroupDriver::Systemd,
        })
    );
    assert_eq!(d.processes, vec![process(23114, "node", 1000, false)]);
    // The uid's tasks across the node, not only this pod's; uid 1001 and
    // root are not counted.
    assert_eq!(
        d.top_consumers,
        vec![
            consumer(23114, "node", 96, 1000),
            consumer(30021, "ruby", 40, 1000),
            consumer(30022, "ruby", 40, 1000),
            consumer(24001, "node", 21, 1000),
            consumer(30001, "ruby", 2, 1000),
        ]
    );
    assert_eq!(
        d.limits,
        Headroom {
            pids_cgroups: vec![],
            rlimit_nproc: Some(usage(200, 200, 100.0)),
            threads_max: Some(usage(1644, 127_390, 1.3)),
            pid_max: Some(usage(1644, 4_194_304, 0.0)),
        }
    );
    assert!(
        f.summary
            .contains("uid 1000 reached its RLIMIT_NPROC (200 of 200)"),
        "{}",
        f.summary
    );
}

/// 5. kernel.threads-max (3934 on a small VM) reached; the tree has no
///    mountinfo, the v2 hierarchy is found at /sys/fs/cgroup.
#[test]
fn threads_max() {
    let ev = event(
        28399,
        730,
        0,
        "kubelet",
        ForkSyscall::Clone,
        GO_THREAD_FLAGS,
    );
    let (obs, f) = diagnose_one("threads-max", &ev);

    assert_eq!(
        obs.pids_cgroup.as_deref(),
        Some("/system.slice/kubelet.service")
    );

    let d = pid(&f);
    assert_eq!(d.limit, Limit::ThreadsMax);
    assert_eq!(f.confidence, Confidence::Likely);
    assert_eq!(f.id.to_string(), "pid_exhaustion/threads_max/system");
    assert_eq!(d.cgroup.as_deref(), Some("/system.slice/kubelet.service"));
    assert_eq!(d.uid, 0);
    assert_eq!(d.pod, None);
    // Node-wide consumers: a leaking python3 in a BestEffort pod.
    assert_eq!(
        d.top_consumers,
        vec![
            consumer(20188, "python3", 3406, 0),
            consumer(730, "kubelet", 58, 0),
            consumer(655, "containerd", 31, 0),
            consumer(20071, "containerd-shim", 11, 0),
            consumer(1, "systemd", 1, 0),
        ]
    );
    assert_eq!(
        d.limits,
        Headroom {
            pids_cgroups: vec![cg_usage("/system.slice/kubelet.service", 58, 590, 9.8)],
            rlimit_nproc: None,
            threads_max: Some(usage(3934, 3934, 100.0)),
            pid_max: Some(usage(3934, 4_194_304, 0.1)),
        }
    );
    assert!(
        f.summary
            .contains("kernel.threads-max reached (3934 of 3934)"),
        "{}",
        f.summary
    );
}

/// 6. kernel.pid_max (32768) nearly used up: 32600 tasks, within the 300
///    pids the kernel reserves. The tree has no mountinfo (v1 at
///    /sys/fs/cgroup/pids).
#[test]
fn pid_max() {
    let ev = event(
        4415,
        4410,
        0,
        "containerd-shim",
        ForkSyscall::Clone,
        FORK_FLAGS,
    );
    let (obs, f) = diagnose_one("pid-max", &ev);

    assert_eq!(
        obs.pids_cgroup.as_deref(),
        Some("/system.slice/containerd.service")
    );
    assert_eq!(obs.comm, "containerd-shim");

    let d = pid(&f);
    assert_eq!(d.limit, Limit::PidMax);
    assert_eq!(f.confidence, Confidence::Likely);
    assert_eq!(f.id.to_string(), "pid_exhaustion/pid_max/system");
    assert_eq!(
        d.cgroup.as_deref(),
        Some("/system.slice/containerd.service")
    );
    assert_eq!(
        d.processes,
        vec![process(4410, "containerd-shim", 0, false)]
    );
    assert_eq!(
        d.top_consumers,
        vec![
            consumer(4502, "grpc-server", 29_750, 1000),
            consumer(911, "kubelet", 62, 0),
            consumer(802, "containerd", 30, 0),
            consumer(4410, "containerd-shim", 11, 0),
            consumer(1, "systemd", 1, 0),
        ]
    );
    assert_eq!(
        d.limits,
        Headroom {
            pids_cgroups: vec![],
            rlimit_nproc: None,
            threads_max: Some(usage(32_600, 127_390, 25.6)),
            pid_max: Some(usage(32_600, 32_768, 99.5)),
        }
    );
    assert!(
        f.remedy.text.contains("kernel.pid_max"),
        "{}",
        f.remedy.text
    );
}

/// 7. Nothing is at its limit (a Guaranteed pod at 211 of 1024, the system
///    far from full): the engine still reports, saying so.
#[test]
fn healthy_transient() {
    let ev = event(
        50187,
        50110,
        1000,
        "node",
        ForkSyscall::Clone3,
        PTHREAD_FLAGS,
    );
    let (obs, f) = diagnose_one("healthy-transient", &ev);

    assert_eq!(obs.pids_cgroup.as_deref(), Some(pod8_app().as_str()));
    assert_eq!(obs.consumers, vec![], "no limit is near: no consumers read");

    let d = pid(&f);
    assert_eq!(d.limit, Limit::Unknown);
    assert_eq!(f.confidence, Confidence::Unknown);
    assert_eq!(
        f.id.to_string(),
        format!("pid_exhaustion/unknown/{}", pod8_app())
    );
    assert_eq!(d.cgroup.as_deref(), Some(pod8_app().as_str()));
    assert_eq!(d.uid, 1000);
    assert_eq!(
        d.pod,
        Some(PodRef {
            namespace: None,
            name: None,
            container_name: None,
            pod_uid: P8.into(),
            qos: "guaranteed".into(),
            container_id: Some(P8_APP.into()),
            runtime: None,
            driver: CgroupDriver::Cgroupfs,
        })
    );
    assert_eq!(d.top_consumers, vec![]);
    assert_eq!(
        d.limits,
        Headroom {
            pids_cgroups: vec![cg_usage(&pod8(), 211, 1024, 20.6)],
            rlimit_nproc: None,
            threads_max: Some(usage(987, 63_704, 1.5)),
            pid_max: Some(usage(987, 4_194_304, 0.0)),
        }
    );
    assert!(
        f.summary.contains("no PID limit was full when read"),
        "{}",
        f.summary
    );
}

// ------------------------------------------------------- periodic samples

#[test]
fn pid_limits_lists_the_limited_cgroups_and_those_below_v1() {
    let mut ctx = NodeContext::new(&fixture("v1-cgroupfs-pod-limit"));
    let mut l = ctx.pid_limits(T0);
    l.cgroups.sort_by(|a, b| a.path.cmp(&b.path));
    assert_eq!(l.at, T0);
    // Cgroups below a limit are sampled too: on v1 the kernel counts a
    // rejection in the forking task's own (unlimited) cgroup.
    let below: Vec<&str> = l
        .cgroups
        .iter()
        .filter(|c| c.max.is_none())
        .map(|c| c.path.as_str())
        .collect();
    assert_eq!(below.len(), 6, "{below:#?}");
    assert!(
        below
            .iter()
            .all(|p| p.starts_with("/kubepods/burstable/pod")
                || p.starts_with("/user.slice/user-0.slice/"))
    );
    let forking = format!(
        "{}/48bdab86263db98789a1b3ae6bc19fe2f40301d811e95d5084eaf81ca1b7e31a",
        pod1()
    );
    assert_eq!(
        l.cgroups
            .iter()
            .find(|c| c.path == forking)
            .map(|c| c.events_max),
        Some(311)
    );
    l.cgroups.retain(|c| c.max.is_some());
    assert_eq!(
        l.cgroups,
        vec![
            state(&pod1(), 1024, Some(1024), 0),
            state(&format!("/kubepods/burstable/pod{P2}"), 57, Some(1024), 0),
            state("/system.slice/kubelet.service", 64, Some(38_281), 0),
            state("/user.slice/user-0.slice", 2, Some(84_218), 0),
        ]
    );
    assert_eq!(
        l.system,
        SystemPids {
            threads: 2315,
            threads_max: 255_208,
            pid_max: 4_194_304,
        }
    );
}

#[test]
fn pid_limits_lists_the_limited_cgroups_and_those_below_v2() {
    let mut ctx = NodeContext::new(&fixture("v2-systemd-pod-limit"));
    let mut l = ctx.pid_limits(T0);
    l.cgroups.sort_by(|a, b| a.path.cmp(&b.path));
    assert_eq!(
        l.cgroups.iter().filter(|c| c.max.is_none()).count(),
        2,
        "the two container scopes of the pod"
    );
    l.cgroups.retain(|c| c.max.is_some());
    assert_eq!(
        l.cgroups,
        vec![
            state(&pod3(), 512, Some(512), 37),
            state("/system.slice/kubelet.service", 71, Some(19_108), 0),
        ]
    );
}

/// The v2 tree after 9 more rejections by the pod's limit. The kernel's
/// pids.events is hierarchical on v2: the pod slice and its ancestors count.
fn v2_after_9_rejections() -> TempTree {
    let t = TempTree::copy_of("v2-systemd-pod-limit");
    for cg in [
        pod3().as_str(),
        "/kubepods.slice/kubepods-besteffort.slice",
        "/kubepods.slice",
    ] {
        t.write_cgroup_file(V2_MOUNT, cg, "pids.events", "max 46\n");
    }
    t
}

#[test]
fn rising_pids_events_between_samples_is_certain() {
    let later = v2_after_9_rejections();
    let s1 = NodeContext::new(&fixture("v2-systemd-pod-limit")).pid_limits(T0);
    let s2 = NodeContext::new(later.path()).pid_limits(T0.plus_millis(10_000));
    let mut engine = Engine::new(EngineConfig::default());

    // First sample: the full pod raises a warning, nothing failed yet.
    let r1 = engine.observe(&Observation::PidLimits(s1));
    assert!(findings(&r1).is_empty(), "{r1:#?}");
    let warnings: Vec<_> = r1
        .iter()
        .filter_map(|r| match r {
            Report::Warning(w) => Some(w),
            Report::Finding(_) | Report::Pleg(_) => None,
        })
        .collect();
    assert_eq!(warnings.len(), 1, "{r1:#?}");
    let w = warnings[0];
    assert_eq!(
        (w.status, w.limit, w.cgroup.as_deref(), w.current, w.max),
        (
            WarningStatus::Raised,
            Limit::PidsCgroup,
            Some(pod3().as_str()),
            512,
            512
        )
    );

    // Second sample: the counter rose by 9, proof even without a probe event.
    let r2 = engine.observe(&Observation::PidLimits(s2));
    let f = only_finding(&r2);
    let d = pid(&f);
    assert_eq!(f.status, FindingStatus::Active);
    assert_eq!(f.confidence, Confidence::Certain);
    assert_eq!(d.limit, Limit::PidsCgroup);
    assert_eq!(d.cgroup.as_deref(), Some(pod3().as_str()));
    assert_eq!(d.kernel_rejections, Some(9));
    assert_eq!(d.failures, 0);
    assert_eq!(
        d.pod,
        Some(PodRef {
            namespace: None,
            name: None,
            container_name: None,
            pod_uid: P3.into(),
            qos: "besteffort".into(),
            container_id: None,
            runtime: None,
            driver: CgroupDriver::Systemd,
        })
    );
    assert_eq!(
        d.limits,
        Headroom {
            pids_cgroups: vec![cg_usage(&pod3(), 512, 512, 100.0)],
            rlimit_nproc: None,
            threads_max: Some(usage(1876, 127_390, 1.5)),
            pid_max: Some(usage(1876, 4_194_304, 0.0)),
        }
    );
    assert!(
        f.summary.contains("the kernel rejected 9 forks"),
        "{}",
        f.summary
    );
}

#[test]
fn sample_after_a_failure_makes_the_finding_certain() {
    let later = v2_after_9_rejections();
    let ev = event(
        90377,
        90241,
        0,
        "gunicorn",
        ForkSyscall::Clone3,
        PTHREAD_FLAGS,
    );
    let obs = NodeContext::new(&fixture("v2-systemd-pod-limit")).fork_failed(&ev, T0);
    let s2 = NodeContext::new(later.path()).pid_limits(T0.plus_millis(3000));
    let mut engine = Engine::new(EngineConfig::default());

    let first = only_finding(&engine.observe(&fork_obs(obs)));
    assert_eq!(first.confidence, Confidence::Likely);
    // The existing finding is updated, not reported again right away.
    let r = engine.observe(&Observation::PidLimits(s2));
    assert!(findings(&r).is_empty(), "{r:#?}");

    let active = engine.active();
    assert_eq!(active.len(), 1, "{active:#?}");
    let d = pid(&active[0]);
    assert_eq!(active[0].confidence, Confidence::Certain);
    assert_eq!(d.cgroup.as_deref(), Some(pod3().as_str()));
    assert_eq!(d.kernel_rejections, Some(9));
    assert_eq!(d.failures, 1);
    assert_eq!(active[0].last_seen, T0.plus_millis(3000));
}

#[test]
fn second_failure_after_the_counter_rose_is_certain() {
    let later = v2_after_9_rejections();
    let ev = event(
        90377,
        90241,
        0,
        "gunicorn",
        ForkSyscall::Clone3,
        PTHREAD_FLAGS,
    );
    let o1 = NodeContext::new(&fixture("v2-systemd-pod-limit")).fork_failed(&ev, T0);
    let o2 = NodeContext::new(later.path()).fork_failed(&ev, T0.plus_millis(1500));
    let mut engine = Engine::new(EngineConfig::default());

    assert_eq!(findings(&engine.observe(&fork_obs(o1))).len(), 1);
    let r = engine.observe(&fork_obs(o2));
    assert!(
        findings(&r).is_empty(),
        "same finding, no new report: {r:#?}"
    );

    let active = engine.active();
    assert_eq!(active.len(), 1, "{active:#?}");
    let f = &active[0];
    let d = pid(f);
    assert_eq!(f.confidence, Confidence::Certain);
    assert_eq!(d.cgroup.as_deref(), Some(pod3().as_str()));
    assert_eq!(d.failures, 2);
    assert_eq!(
        d.processes,
        vec![ProcessFailures {
            pid: 90241,
            comm: "gunicorn".into(),
            uid: 0,
            failures: 2,
            thread_failures: 2,
        }]
    );
    let rose = format!("pids.events max rose 37 -> 46; {} holds 512", pod3());
    assert!(
        f.evidence.iter().any(|e| e.what.starts_with(&rose)),
        "{:#?}",
        f.evidence
    );
}

// ------------------------------------------- where pids.events counts

// The kernel does not always count a rejection in the cgroup whose limit
// fired. On cgroup v1 (and on v2 mounted with pids_localevents, or kernels
// before "cgroup/pids: Make event counters hierarchical"), pids.events `max`
// counts in the *forking task's* cgroup: for a podPidsLimit that is the
// container's cgroup, whose pids.max is `max`. On v2 with hierarchical
// events, it counts in the limited cgroup *and every ancestor*.

/// The v1 tree after 7 more rejections: counted in the java container's
/// cgroup (the forking task's), the pod cgroup's counter stays at 0.
fn v1_after_7_rejections() -> TempTree {
    let t = TempTree::copy_of("v1-cgroupfs-pod-limit");
    t.write_cgroup_file(V1_MOUNT, &pod1_app(), "pids.events", "max 318\n");
    t
}

#[test]

fn v1_second_failure_still_names_the_limited_cgroup() {
    let later = v1_after_7_rejections();
    let ev = event(
        48213,
        41877,
        185,
        "java",
        ForkSyscall::Clone3,
        PTHREAD_FLAGS,
    );
    let o1 = NodeContext::new(&fixture("v1-cgroupfs-pod-limit")).fork_failed(&ev, T0);
    let o2 = NodeContext::new(later.path()).fork_failed(&ev, T0.plus_millis(1500));
    let mut engine = Engine::new(EngineConfig::default());
    engine.observe(&fork_obs(o1));
    let r = engine.observe(&fork_obs(o2));

    assert!(findings(&r).is_empty(), "a second finding: {r:#?}");
    let active = engine.active();
    let named: Vec<_> = active.iter().map(|f| pid(f).cgroup.clone()).collect();
    assert_eq!(named, vec![Some(pod1())]);
    assert_eq!(pid(&active[0]).failures, 2);
}

#[test]

fn v1_rising_counter_between_samples_is_certain() {
    let later = v1_after_7_rejections();
    let s1 = NodeContext::new(&fixture("v1-cgroupfs-pod-limit")).pid_limits(T0);
    let s2 = NodeContext::new(later.path()).pid_limits(T0.plus_millis(10_000));
    let mut engine = Engine::new(EngineConfig::default());
    engine.observe(&Observation::PidLimits(s1));
    let r = engine.observe(&Observation::PidLimits(s2));

    let f = only_finding(&r);
    assert_eq!(f.confidence, Confidence::Certain);
    assert_eq!(pid(&f).cgroup.as_deref(), Some(pod1().as_str()));
    assert_eq!(pid(&f).kernel_rejections, Some(7));
}

#[test]

fn v2_hierarchical_counter_of_a_limited_ancestor_is_not_a_finding() {
    // kubepods.slice limited to the node's allocatable pids (kubelet with a
    // pid reservation), far from full.
    let before = TempTree::copy_of("v2-systemd-pod-limit");
    before.write_cgroup_file(V2_MOUNT, "/kubepods.slice", "pids.max", "110000\n");
    let later = v2_after_9_rejections();
    later.write_cgroup_file(V2_MOUNT, "/kubepods.slice", "pids.max", "110000\n");
    let s1 = NodeContext::new(before.path()).pid_limits(T0);
    let s2 = NodeContext::new(later.path()).pid_limits(T0.plus_millis(10_000));
    let mut engine = Engine::new(EngineConfig::default());
    engine.observe(&Observation::PidLimits(s1));
    let r = engine.observe(&Observation::PidLimits(s2));

    let named: Vec<_> = findings(&r).iter().map(|f| pid(f).cgroup.clone()).collect();
    assert_eq!(named, vec![Some(pod3())], "{r:#?}");
}
