//! systemd hangs, end to end: real runc with `--systemd-cgroup` (and our own
//! dockerd with the systemd cgroup driver) asking our fake systemd for a
//! transient scope, through our own dbus-daemon or on systemd's private
//! socket, all inside a private mount namespace; the agent runs in the same
//! namespace. Each fault must give a `systemd_hang` finding within the
//! threshold + 2 s that names the socket, the stuck side and the runc
//! process, and resolve when replies flow again; a healthy start gives none.
//!
//! Run: `cargo test -p watchdog-tests --test systemd_hang -- --test-threads=1 --nocapture`
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use serde_json::Value;
use watchdog_tests::{Agent, agent_bin, systemd::*};

/// The agent's threshold in these tests.
const THRESHOLD: Duration = Duration::from_secs(3);
/// What the issue allows on top of it.
const SLACK: Duration = Duration::from_secs(2);

struct Run {
    agent: Agent,
    record: PathBuf,
}

fn start_agent(ns: &PrivateNs, name: &str) -> Run {
    start_agent_with(ns, name, &[])
}

fn start_agent_with(ns: &PrivateNs, name: &str, extra: &[&str]) -> Run {
    let record =
        std::env::temp_dir().join(format!("wd-systemd-{name}-{}.jsonl", std::process::id()));
    let mut args = ns.launcher_args();
    args.extend([
        agent_bin().display().to_string(),
        "trace".into(),
        "--json".into(),
        "--no-pleg".into(),
        "--fork-probe".into(),
        "off".into(),
        "--poll-interval".into(),
        "250ms".into(),
        "--systemd-threshold".into(),
        format!("{}s", THRESHOLD.as_secs()),
        "--record".into(),
        record.display().to_string(),
    ]);
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let agent = Agent::start_with(Path::new(NSENTER), &args, Duration::from_secs(30));
    Run { agent, record }
}

impl Run {
    fn finding(&self, status: &str, timeout: Duration) -> Option<(Value, Instant)> {
        self.agent.wait_for(
            |v| v["type"] == "finding" && v["cause"] == "systemd_hang" && v["status"] == status,
            timeout,
        )
    }

    /// The first active finding, which must come within `timeout`.
    fn expect_active(&self, timeout: Duration) -> (Value, Instant) {
        self.finding("active", timeout).unwrap_or_else(|| {
            let calls: Vec<String> = self.socket_calls().iter().map(|c| c.to_string()).collect();
            panic!(
                "no systemd_hang finding: {}\nsocket calls recorded ({}):\n{}",
                self.agent.report(),
                calls.len(),
                calls.join("\n")
            )
        })
    }

    /// After the fault is lifted: runc finishes and the finding resolves.
    fn expect_resolved(&self, c: &mut RuncContainer) -> Value {
        assert!(
            c.wait_exit(Duration::from_secs(10)).is_some(),
            "{}",
            c.output()
        );
        self.finding("resolved", Duration::from_secs(5))
            .unwrap_or_else(|| panic!("not resolved: {}", self.agent.report()))
            .0
    }

    /// The absence check: once the agent has polled past `until` (its own
    /// clock, in the recording), no active finding came.
    fn expect_no_finding_until(&self, until: SystemTime, what: &str) {
        let timeout =
            until.duration_since(SystemTime::now()).unwrap_or_default() + Duration::from_secs(10);
        self.agent.wait_for_poll_after(until, timeout);
        assert!(
            self.finding("active", Duration::ZERO).is_none(),
            "{what} gave a finding: {}",
            self.agent.report()
        );
    }

    fn socket_calls(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["observe"]["kind"] == "socket_call")
            .map(|v| v["observe"].clone())
            .collect()
    }

    fn keep_recording(&self, name: &str) {
        if let Ok(dir) = std::env::var("WATCHDOG_GOLDEN_OUT") {
            let _ = std::fs::copy(&self.record, Path::new(&dir).join(format!("{name}.jsonl")));
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.record);
    }
}

fn waiting_pids(f: &Value) -> Vec<u64> {
    f["waiting"]
        .as_array()
        .map(|a| a.iter().filter_map(|w| w["pid"].as_u64()).collect())
        .unwrap_or_default()
}

/// The finding came within threshold + slack of the request that hangs.
fn assert_in_time(hang_started: Instant, found_at: Instant, f: &Value) {
    let delay = found_at.duration_since(hang_started);
    eprintln!(
        "finding after {delay:?} (threshold {THRESHOLD:?}): {}",
        f["summary"]
    );
    assert!(
        delay <= THRESHOLD + SLACK,
        "finding took {delay:?}, more than threshold + 2 s: {f}"
    );
}

#[test]
fn healthy_container_start_gives_no_finding_but_is_traced() {
    if !skip_unless_systemd_prereqs() {
        return;
    }
    let ns = PrivateNs::start().unwrap();
    let _bus = DbusDaemon::start(&ns).unwrap();
    let _fake = FakeSystemd::start(&ns, Transport::Bus, FakeMode::Answer).unwrap();
    let run = start_agent(&ns, "healthy");
    let mut c = RuncContainer::start(&ns, &RuncOpts::default()).unwrap();
    assert!(
        c.wait_exit(Duration::from_secs(10)).is_some(),
        "runc did not finish: {}",
        c.output()
    );
    assert!(c.container_pid().is_some(), "{}", c.output());
    run.expect_no_finding_until(
        SystemTime::now() + THRESHOLD + SLACK + Duration::from_secs(1),
        "a healthy start",
    );
    // Not vacuous: the agent followed runc's conversation with the bus.
    let calls = run.socket_calls();
    let runc = c.runc_pid() as u64;
    let of_runc: Vec<&Value> = calls.iter().filter(|v| v["pid"] == runc).collect();
    eprintln!("{} socket calls of runc {runc}", of_runc.len());
    assert!(
        of_runc.iter().any(|v| v["call"] == "connect"
            // runc dials /var/run/dbus/...: named by where it leads.
            && v["socket"] == SYSTEM_BUS_SOCKET
            && v["ret"] == 0
            && v["process"]["action"] == "run"),
        "no connect of runc to the bus recorded: {calls:?}"
    );
    assert!(
        of_runc
            .iter()
            .any(|v| v["call"] == "send" && v["ret"].as_i64() > Some(100))
    );
    assert!(
        of_runc
            .iter()
            .any(|v| v["call"] == "recv" && v["ret"].as_i64() > Some(0))
    );
    assert!(
        of_runc
            .iter()
            .any(|v| v["call"] == "recv" && v["ret"] == -11),
        "no EAGAIN read"
    );
}

#[test]
fn stopped_dbus_daemon_while_a_container_starts() {
    if !skip_unless_systemd_prereqs() {
        return;
    }
    let ns = PrivateNs::start().unwrap();
    let mut bus = DbusDaemon::start(&ns).unwrap();
    let _fake = FakeSystemd::start(&ns, Transport::Bus, FakeMode::Answer).unwrap();
    let run = start_agent(&ns, "bus-stopped");
    bus.stop().unwrap();
    let started = Instant::now();
    let mut c = RuncContainer::start(&ns, &RuncOpts::default()).unwrap();
    let (f, at) = run.expect_active(THRESHOLD + SLACK + Duration::from_secs(3));
    assert_in_time(started, at, &f);
    assert_eq!(f["socket"], SYSTEM_BUS_SOCKET, "{f}");
    assert_eq!(f["stuck"], "bus_not_reading", "{f}");
    assert!(waiting_pids(&f).contains(&(c.runc_pid() as u64)), "{f}");
    let w = &f["waiting"][0];
    assert_eq!(w["comm"], "runc");
    assert_eq!(w["container"], c.id(), "{f}");
    assert!(f["bytes_queued"].as_u64() > Some(0), "{f}");
    assert!(f["remedy"].as_str().unwrap().contains("bus daemon"));
    // The probes corroborate: the bus does not answer.
    let upd = run.agent.wait_for(
        |v| {
            v["type"] == "finding"
                && v["cause"] == "systemd_hang"
                && v["probes"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|p| p["target"] == "org.freedesktop.DBus"))
        },
        Duration::from_secs(12),
    );
    if let Some((u, _)) = &upd {
        eprintln!("probes: {}", u["probes"]);
    }
    // Lift the fault: runc goes on, replies flow, the finding resolves.
    bus.cont().unwrap();
    let r = run.expect_resolved(&mut c);
    assert!(
        r["summary"]
            .as_str()
            .unwrap()
            .contains("replies flow again"),
        "{r}"
    );
    assert!(
        upd.is_some(),
        "no bus probe result in any update: {}",
        run.agent.report()
    );
    run.keep_recording("systemd_hang_bus_stopped");
}

/// Where requests are not followed (kernels without the socket
/// tracepoints; here forced with `--dbus-requests off`), the agent's own
/// probes, every 5 s, still find a bus that stopped answering, and the
/// finding resolves when it answers again.
#[test]
fn without_request_tracking_the_agent_probes_find_a_stopped_bus() {
    if !skip_unless_systemd_prereqs() {
        return;
    }
    let ns = PrivateNs::start().unwrap();
    let mut bus = DbusDaemon::start(&ns).unwrap();
    let _fake = FakeSystemd::start(&ns, Transport::Bus, FakeMode::Answer).unwrap();
    let run = start_agent_with(&ns, "probes-only", &["--dbus-requests", "off"]);
    let ready = run
        .agent
        .wait_for(|v| v["type"] == "ready", Duration::ZERO)
        .unwrap()
        .0;
    assert!(
        !ready["probes"].to_string().contains("dbus_sock"),
        "request probes attached with --dbus-requests off: {ready}"
    );
    // Healthy first: the probes answer, nothing is found.
    run.expect_no_finding_until(SystemTime::now() + Duration::from_secs(6), "a healthy bus");
    bus.stop().unwrap();
    // The next probe (every 5 s) times out (2 s), then the threshold.
    let (f, _) = run.expect_active(
        Duration::from_secs(5)
            + Duration::from_secs(2)
            + THRESHOLD
            + SLACK
            + Duration::from_secs(2),
    );
    assert_eq!(f["socket"], SYSTEM_BUS_SOCKET, "{f}");
    assert_eq!(f["stuck"], "bus_not_reading", "{f}");
    assert!(
        f["summary"]
            .as_str()
            .unwrap()
            .starts_with("the agent's D-Bus probes got no answer"),
        "{f}"
    );
    assert_eq!(f["waiting"].as_array().map(Vec::len), Some(0), "{f}");
    bus.cont().unwrap();
    let (r, _) = run
        .finding("resolved", Duration::from_secs(12))
        .unwrap_or_else(|| panic!("not resolved: {}", run.agent.report()));
    assert!(
        r["summary"]
            .as_str()
            .unwrap()
            .contains("answers the agent's probes again"),
        "{r}"
    );
}

#[test]
fn systemd_never_replies_to_start_transient_unit() {
    if !skip_unless_systemd_prereqs() {
        return;
    }
    let ns = PrivateNs::start().unwrap();
    let _bus = DbusDaemon::start(&ns).unwrap();
    let mut fake = FakeSystemd::start(&ns, Transport::Bus, FakeMode::NeverReply).unwrap();
    let run = start_agent(&ns, "never-reply");
    let mut c = RuncContainer::start(&ns, &RuncOpts::default()).unwrap();
    assert!(fake.wait_log("holding StartTransientUnit", Duration::from_secs(10)));
    let held = Instant::now();
    let (f, at) = run.expect_active(THRESHOLD + SLACK + Duration::from_secs(3));
    assert_in_time(held, at, &f);
    assert_eq!(f["socket"], SYSTEM_BUS_SOCKET, "{f}");
    assert_eq!(f["stuck"], "systemd_not_replying", "{f}");
    assert_eq!(f["waiting"][0]["pid"], c.runc_pid() as u64, "{f}");
    assert_eq!(f["waiting"][0]["container"], c.id(), "{f}");
    assert_eq!(f["containers"][0], c.id(), "{f}");
    assert!(
        f["remedy"].as_str().unwrap().contains("kill -TERM 1"),
        "{f}"
    );
    // systemd answers the agent's Ping: it is up, this call never completes.
    let upd = run.agent.wait_for(
        |v| {
            v["type"] == "finding"
                && v["cause"] == "systemd_hang"
                && v["stuck_detail"]
                    .as_str()
                    .is_some_and(|s| s.contains("answers the agent's Ping"))
        },
        Duration::from_secs(12),
    );
    fake.answer().unwrap();
    let r = run.expect_resolved(&mut c);
    assert!(
        r["summary"]
            .as_str()
            .unwrap()
            .contains("replies flow again"),
        "{r}"
    );
    assert!(
        upd.is_some(),
        "no Ping corroboration: {}",
        run.agent.report()
    );
    run.keep_recording("systemd_hang_never_reply");
}

#[test]
fn a_connection_opened_before_the_agent_started_is_followed() {
    if !skip_unless_systemd_prereqs() {
        return;
    }
    let ns = PrivateNs::start().unwrap();
    let _bus = DbusDaemon::start(&ns).unwrap();
    let mut fake = FakeSystemd::start(&ns, Transport::Bus, FakeMode::NeverReply).unwrap();
    // Connected before the agent runs, as kubelet, CRI-O or containerd keep
    // their connection to systemd for life.
    let mut client = SystemdClient::start(&ns, Transport::Bus, "containerd").unwrap();
    let run = start_agent(&ns, "existing");
    client.start_unit("wdt-existing.scope").unwrap();
    assert!(
        fake.wait_log("holding StartTransientUnit", Duration::from_secs(10)),
        "{}\n{}",
        fake.log(),
        client.log()
    );
    let held = Instant::now();
    let (f, at) = run.expect_active(THRESHOLD + SLACK + Duration::from_secs(3));
    assert_in_time(held, at, &f);
    assert_eq!(f["socket"], SYSTEM_BUS_SOCKET, "{f}");
    assert_eq!(f["stuck"], "systemd_not_replying", "{f}");
    assert_eq!(f["waiting"][0]["pid"], client.pid(), "{f}");
    assert_eq!(f["waiting"][0]["comm"], "containerd", "{f}");
    let adopted = run.socket_calls().into_iter().any(|c| {
        c["call"] == "connect"
            && c["syscall"] == "connected_before_start"
            && c["pid"] == client.pid()
    });
    assert!(adopted, "no adopted connect in {:?}", run.socket_calls());
    fake.answer().unwrap();
    assert!(
        client.wait_log("REPLY", Duration::from_secs(10)),
        "{}",
        client.log()
    );
    let r = run
        .finding("resolved", Duration::from_secs(5))
        .unwrap_or_else(|| panic!("not resolved: {}", run.agent.report()))
        .0;
    assert!(
        r["summary"]
            .as_str()
            .unwrap()
            .contains("replies flow again"),
        "{r}"
    );
    // Hung again, then the client dies: the kernel forgets its connections
    // at exit (it was marked as holding some when adopted), and the finding
    // resolves for want of waiters.
    fake.refault().unwrap();
    client.start_unit("wdt-existing-2.scope").unwrap();
    let again = run
        .agent
        .wait_for(
            |v| {
                v["type"] == "finding"
                    && v["cause"] == "systemd_hang"
                    && v["status"] == "active"
                    && v["first_seen"] != f["first_seen"]
            },
            THRESHOLD + SLACK + Duration::from_secs(3),
        )
        .unwrap_or_else(|| panic!("not hung again: {}", run.agent.report()))
        .0;
    assert_eq!(again["waiting"][0]["pid"], client.pid(), "{again}");
    drop(client);
    let gone = run
        .agent
        .wait_for(
            |v| {
                v["type"] == "finding"
                    && v["status"] == "resolved"
                    && v["summary"]
                        .as_str()
                        .is_some_and(|s| s.contains("no process waits"))
            },
            Duration::from_secs(5),
        )
        .unwrap_or_else(|| panic!("not resolved at exit: {}", run.agent.report()))
        .0;
    assert_eq!(gone["cause"], "systemd_hang", "{gone}");
}

#[test]
fn systemd_stops_reading_a_large_message_on_its_private_socket() {
    if !skip_unless_systemd_prereqs() {
        return;
    }
    let ns = PrivateNs::start().unwrap();
    let mut fake = FakeSystemd::start(&ns, Transport::Private, FakeMode::StopReading).unwrap();
    let run = start_agent(&ns, "stop-reading");
    let started = Instant::now();
    let mut c = RuncContainer::start(
        &ns,
        &RuncOpts {
            big_description: Some(300_000),
            ..Default::default()
        },
    )
    .unwrap();
    let (f, at) = run.expect_active(THRESHOLD + SLACK + Duration::from_secs(3));
    assert_in_time(started, at, &f);
    assert_eq!(f["socket"], "/run/systemd/private", "{f}");
    assert_eq!(f["socket_kind"], "systemd_private", "{f}");
    assert_eq!(f["stuck"], "systemd_not_reading", "{f}");
    let w = f["waiting"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["pid"] == c.runc_pid() as u64)
        .unwrap_or_else(|| panic!("runc not among the waiting: {f}"));
    assert_eq!(w["write_stalled"], true, "{f}");
    assert!(w["bytes_sent"].as_u64() > Some(100_000), "{f}");
    assert!(w["bytes_unsent"].as_u64() > Some(0), "{f}");
    // runc fell back to the private socket after the bus was missing.
    assert!(
        f["evidence"].to_string().contains("ENOENT"),
        "no refused bus connect in the evidence: {f}"
    );
    let calls = run.socket_calls();
    assert!(
        calls.iter().any(|v| v["pid"] == c.runc_pid() as u64
            && v["call"] == "send"
            && v["ret"] == -11
            && v["requested"].as_u64() > Some(0)),
        "no EAGAIN write recorded"
    );
    fake.answer().unwrap();
    let r = run.expect_resolved(&mut c);
    eprintln!("{}", r["summary"]);
    run.keep_recording("systemd_hang_private_stop_reading");
}

#[test]
fn dockerd_with_the_systemd_driver_names_the_container_being_created() {
    if !skip_unless_systemd_prereqs() || !watchdog_tests::dockerd::skip_unless_docker_prereqs() {
        return;
    }
    let ns = PrivateNs::start().unwrap();
    let _bus = DbusDaemon::start(&ns).unwrap();
    let fake = FakeSystemd::start(&ns, Transport::Bus, FakeMode::Answer).unwrap();
    let mut d = SystemdDockerd::start(&ns).unwrap();
    let image = d.dockerd_mut().busybox_image().unwrap();
    // Healthy first: a container starts through systemd, no finding.
    let run = start_agent(&ns, "dockerd");
    d.dockerd_mut()
        .run_detached(&[&image, "sleep", "1000"])
        .unwrap();
    drop(fake);
    let _fake = FakeSystemd::start(&ns, Transport::Bus, FakeMode::NeverReply).unwrap();
    run.expect_no_finding_until(
        SystemTime::now() + Duration::from_secs(1),
        "a healthy docker run",
    );
    // Then systemd stops replying: `docker run` hangs in runc create.
    let host = d.dockerd().host();
    let img = image.clone();
    let started = Instant::now();
    let docker = std::thread::spawn(move || {
        std::process::Command::new("timeout")
            .args([
                "-s",
                "KILL",
                "20",
                "docker",
                "-H",
                &host,
                "run",
                "-d",
                "--network",
                "none",
                &img,
                "sleep",
                "1000",
            ])
            .output()
    });
    let (f, at) = run.expect_active(THRESHOLD + SLACK + Duration::from_secs(5));
    eprintln!("after docker run: {:?}", at.duration_since(started));
    let runcs = d.runc_pids();
    assert!(
        waiting_pids(&f)
            .iter()
            .any(|p| runcs.contains(&(*p as u32))),
        "waiting {:?} not among our dockerd's runc {runcs:?}: {f}",
        waiting_pids(&f)
    );
    let w = &f["waiting"][0];
    assert_eq!(w["comm"], "runc", "{f}");
    assert_eq!(w["action"], "create", "{f}");
    let id = w["container"].as_str().unwrap_or_default();
    assert_eq!(id.len(), 64, "not a docker container id: {f}");
    assert_eq!(f["stuck"], "systemd_not_replying", "{f}");
    drop(d);
    let _ = docker.join();
}

/// The same hang through containerd's CRI (runc with `SystemdCgroup = true`),
/// as on a kubeadm node: the pod sandbox kubelet asks for waits in `runc
/// create` for systemd's reply.
#[test]
fn containerd_with_the_systemd_driver_names_the_sandbox_being_created() {
    use watchdog_tests::containerd::{Containerd, ContainerdOpts, PodSpec};
    if !skip_unless_systemd_prereqs()
        || !watchdog_tests::containerd::skip_unless_containerd_prereqs()
    {
        return;
    }
    let ns = PrivateNs::start().unwrap();
    let _bus = DbusDaemon::start(&ns).unwrap();
    let fake = FakeSystemd::start(&ns, Transport::Bus, FakeMode::Answer).unwrap();
    let ctd = Containerd::start_with(ContainerdOpts {
        mount_ns_of: Some(ns.holder_pid()),
        systemd_cgroup: true,
    })
    .unwrap_or_else(|e| panic!("{e}"));
    ctd.import_image().unwrap_or_else(|e| panic!("{e}"));
    let spec = |n: u32| PodSpec {
        namespace: "default".into(),
        name: format!("sys-{n}"),
        uid: format!("6b2d1e3f-{n:04x}-4a5b-9c8d-0242ac120004"),
        container: "app".into(),
        command: vec!["sleep".into(), "1000".into()],
        mounts: Vec::new(),
    };
    // Healthy first: a pod starts through systemd, no finding.
    let run = start_agent(&ns, "containerd");
    let pod = ctd
        .run_pod(&spec(1))
        .unwrap_or_else(|e| panic!("a healthy pod: {e}\n{}", ctd.log_tail()));
    drop(fake);
    let _fake = FakeSystemd::start(&ns, Transport::Bus, FakeMode::NeverReply).unwrap();
    run.expect_no_finding_until(
        SystemTime::now() + Duration::from_secs(1),
        "a healthy pod start",
    );
    // Then systemd stops replying: RunPodSandbox hangs in runc create.
    let started = Instant::now();
    let hung = std::thread::scope(|s| {
        let h = s.spawn(|| ctd.run_pod(&spec(2)));
        let (f, at) = run.expect_active(THRESHOLD + SLACK + Duration::from_secs(5));
        eprintln!("after RunPodSandbox: {:?}", at.duration_since(started));
        let runcs = ctd.runc_pids();
        assert!(
            waiting_pids(&f)
                .iter()
                .any(|p| runcs.contains(&(*p as u32))),
            "waiting {:?} not among our containerd's runc {runcs:?}: {f}",
            waiting_pids(&f)
        );
        let w = &f["waiting"][0];
        assert_eq!(w["comm"], "runc", "{f}");
        assert_eq!(w["action"], "create", "{f}");
        let id = w["container"].as_str().unwrap_or_default();
        assert_eq!(id.len(), 64, "not a sandbox id: {f}");
        assert_eq!(f["stuck"], "systemd_not_replying", "{f}");
        // Release runc: the hung pod fails, the scope thread ends.
        for p in runcs {
            // SAFETY: a runc of our own containerd's shim.
            unsafe { libc::kill(p as i32, libc::SIGKILL) };
        }
        h.join()
    });
    assert!(hung.is_ok(), "the pod thread panicked");
    ctd.remove_pod(&pod);
    drop(run);
    drop(ctd);
}
