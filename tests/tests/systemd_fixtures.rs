//! Self-tests of the systemd/D-Bus fixtures (no agent): runc with the systemd
//! cgroup driver starts a container through our fake systemd, and each of the
//! three D-Bus faults leaves runc hung, and resolves when the fault is lifted.
//! Every fixture cleans up after itself (checked at the end of each test).
//!
//! Run: `cargo test -p watchdog-tests --test systemd_fixtures -- --test-threads=1 --nocapture`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use watchdog_tests::systemd::*;

/// How long a hung runc must stay hung in these tests.
const HANG: Duration = Duration::from_secs(3);

/// What must be gone after the fixtures dropped.
struct Leftovers {
    pids: Vec<u32>,
    ns_holder: u32,
    slice: String,
    dirs: Vec<PathBuf>,
}

impl Leftovers {
    fn check(&self) {
        for &p in self.pids.iter().chain([&self.ns_holder]) {
            assert!(!pid_alive(p), "pid {p} survived the fixtures");
        }
        for m in cgroup_mounts() {
            let d = m.join(&self.slice);
            assert!(!d.exists(), "{} survived", d.display());
        }
        for d in &self.dirs {
            assert!(!d.exists(), "{} survived", d.display());
        }
        // No mount of ours is visible on the host (they only ever existed in
        // the private namespace, which is gone with its holder).
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mi.contains("wdt-ns-"),
            "a wdt-ns mount is visible on the host"
        );
        eprintln!(
            "cleanup verified: pids {:?} + holder {} gone, no {} cgroup dirs, no temp dirs, no mounts",
            self.pids, self.ns_holder, self.slice
        );
    }
}

fn thread_states(pid: u32) -> String {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in rd.flatten() {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            let st = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                .unwrap_or("?")
                .to_owned();
            let wchan = std::fs::read_to_string(t.path().join("wchan")).unwrap_or_default();
            let sc = std::fs::read_to_string(t.path().join("syscall")).unwrap_or_default();
            let nr = sc.split_whitespace().next().unwrap_or("?").to_owned();
            out.push(format!("{st}/{wchan}/nr{nr}"));
        }
    }
    out.join(" ")
}

/// The interesting strace lines: connects, auth, big writes, EAGAIN.
fn strace_summary(text: &str) -> String {
    text.lines()
        .filter(|l| {
            l.contains("connect(")
                || l.contains("AUTH")
                || l.contains("BEGIN")
                || l.contains("EAGAIN") && l.contains("write(")
                || (l.contains("write(") && l.contains("\"l\\1"))
                || l.contains("write resumed")
                || (l.contains("write(") && l.contains("\"xxxx"))
        })
        .map(|l| if l.len() > 180 { &l[..180] } else { l })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn healthy_start_through_fake_systemd_on_the_bus() {
    if !skip_unless_systemd_prereqs() {
        return;
    }
    let ns = PrivateNs::start().unwrap();
    assert_eq!(ns.our_mounts().len(), 2, "{:?}", ns.our_mounts());
    assert!(ns.host_path("/run/systemd/system").is_dir());
    let bus = DbusDaemon::start(&ns).unwrap();
    let fake = FakeSystemd::start(&ns, Transport::Bus, FakeMode::Answer).unwrap();
    let mut c = RuncContainer::start(&ns, &RuncOpts::default()).unwrap();
    let status = c.wait_exit(Duration::from_secs(20));
    let took = c.started_at().elapsed();
    eprintln!("runc run -d took {took:?}: {status:?}\n{}", c.output());
    assert!(
        status.is_some_and(|s| s.success()),
        "runc failed: {}\n{}",
        c.output(),
        fake.log()
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(
        fake.log()
            .contains("StartTransientUnit path=/org/freedesktop/systemd1 sender=:1.")
    );
    assert!(fake.log().contains(&c.unit()));
    let pid = c.container_pid().expect("container init pid");
    eprintln!(
        "container init pid {pid}, cgroup dirs {:?}",
        c.cgroup_dirs()
    );
    assert!(c.cgroup_pids().contains(&pid));
    assert!(!c.cgroup_dirs().is_empty());
    // runc delete goes through StopUnit.
    c.delete(20).unwrap();
    assert!(
        fake.wait_log("StopUnit", Duration::from_secs(2)),
        "{}",
        fake.log()
    );
    let left = Leftovers {
        pids: vec![pid, c.runc_pid(), bus.pid(), fake.pid()],
        ns_holder: ns.holder_pid(),
        slice: c.slice().to_owned(),
        dirs: vec![c.bundle().to_path_buf()],
    };
    drop(c);
    drop(fake);
    drop(bus);
    drop(ns);
    left.check();
}

#[test]
fn stopped_dbus_daemon_hangs_runc_after_auth() {
    if !skip_unless_systemd_prereqs() {
        return;
    }
    let ns = PrivateNs::start().unwrap();
    let mut bus = DbusDaemon::start(&ns).unwrap();
    let fake = FakeSystemd::start(&ns, Transport::Bus, FakeMode::Answer).unwrap();
    bus.stop().unwrap();
    let mut c = RuncContainer::start(
        &ns,
        &RuncOpts {
            strace: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(c.wait_exit(HANG).is_none(), "runc finished: {}", c.output());
    assert!(c.runc_running());
    let st = c.strace_text();
    eprintln!(
        "runc {} threads: {}\nstrace:\n{}",
        c.runc_pid(),
        thread_states(c.runc_pid()),
        strace_summary(&st)
    );
    assert!(
        st.contains("connect(") && st.contains("/var/run/dbus/system_bus_socket\"}, 34) = 0"),
        "{st}"
    );
    assert!(
        st.contains("write(") && st.contains("\"AUTH\\r\\n\", 6"),
        "{st}"
    );
    assert!(
        !st.contains("AUTH EXTERNAL"),
        "the stopped daemon answered?\n{st}"
    );
    assert!(!fake.log().contains("StartTransientUnit"));
    // Resolves on SIGCONT.
    let t = Instant::now();
    bus.cont().unwrap();
    assert!(
        fake.wait_log("StartTransientUnit", Duration::from_secs(10)),
        "{}",
        fake.log()
    );
    assert!(
        c.wait_exit(Duration::from_secs(10)).is_some(),
        "runc still hung after SIGCONT"
    );
    eprintln!("runc continued {:?} after SIGCONT", t.elapsed());
    assert!(c.container_pid().is_some(), "{}", c.output());
    let left = Leftovers {
        pids: vec![c.runc_pid(), bus.pid(), fake.pid()]
            .into_iter()
            .chain(c.container_pid())
            .collect(),
        ns_holder: ns.holder_pid(),
        slice: c.slice().to_owned(),
        dirs: vec![c.bundle().to_path_buf()],
    };
    drop(c);
    drop(fake);
    drop(bus);
    drop(ns);
    left.check();
}

#[test]
fn never_reply_hangs_runc_in_start_transient_unit() {
    if !skip_unless_systemd_prereqs() {
        return;
    }
    let ns = PrivateNs::start().unwrap();
    let bus = DbusDaemon::start(&ns).unwrap();
    let mut fake = FakeSystemd::start(&ns, Transport::Bus, FakeMode::NeverReply).unwrap();
    let mut c = RuncContainer::start(
        &ns,
        &RuncOpts {
            strace: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        fake.wait_log("holding StartTransientUnit", Duration::from_secs(10)),
        "{}",
        fake.log()
    );
    assert!(c.wait_exit(HANG).is_none(), "runc finished: {}", c.output());
    let st = c.strace_text();
    eprintln!(
        "runc {} threads: {}\nstrace:\n{}",
        c.runc_pid(),
        thread_states(c.runc_pid()),
        strace_summary(&st)
    );
    assert!(c.container_pid().is_none());
    // Resolves when the held call is answered.
    let t = Instant::now();
    fake.answer().unwrap();
    assert!(
        c.wait_exit(Duration::from_secs(10)).is_some(),
        "runc still hung after answer"
    );
    eprintln!("runc continued {:?} after the answer", t.elapsed());
    assert!(c.container_pid().is_some(), "{}", c.output());
    let left = Leftovers {
        pids: vec![c.runc_pid(), bus.pid(), fake.pid()]
            .into_iter()
            .chain(c.container_pid())
            .collect(),
        ns_holder: ns.holder_pid(),
        slice: c.slice().to_owned(),
        dirs: vec![c.bundle().to_path_buf()],
    };
    drop(c);
    drop(fake);
    drop(bus);
    drop(ns);
    left.check();
}

#[test]
fn never_reply_hang_is_cleaned_up_without_resolving() {
    if !skip_unless_systemd_prereqs() {
        return;
    }
    let ns = PrivateNs::start().unwrap();
    let bus = DbusDaemon::start(&ns).unwrap();
    let fake = FakeSystemd::start(&ns, Transport::Bus, FakeMode::NeverReply).unwrap();
    let mut c = RuncContainer::start(&ns, &RuncOpts::default()).unwrap();
    assert!(fake.wait_log("holding StartTransientUnit", Duration::from_secs(10)));
    assert!(c.wait_exit(Duration::from_secs(1)).is_none());
    let kids = descendants(c.runc_pid());
    eprintln!("hung runc {} has children {kids:?}", c.runc_pid());
    let left = Leftovers {
        pids: [c.runc_pid(), bus.pid(), fake.pid()]
            .into_iter()
            .chain(kids)
            .collect(),
        ns_holder: ns.holder_pid(),
        slice: c.slice().to_owned(),
        dirs: vec![c.bundle().to_path_buf()],
    };
    let t = Instant::now();
    drop(c);
    drop(fake);
    drop(bus);
    drop(ns);
    eprintln!("teardown took {:?}", t.elapsed());
    left.check();
}

#[test]
fn private_socket_stop_reading_makes_runc_write_partial_then_eagain() {
    if !skip_unless_systemd_prereqs() {
        return;
    }
    let ns = PrivateNs::start().unwrap();
    // No dbus-daemon: runc's system bus connect fails and it falls back to
    // /run/systemd/private.
    let mut fake = FakeSystemd::start(&ns, Transport::Private, FakeMode::StopReading).unwrap();
    let opts = RuncOpts {
        big_description: Some(300_000),
        strace: true,
        ..Default::default()
    };
    let mut c = RuncContainer::start(&ns, &opts).unwrap();
    assert!(
        fake.wait_log("stop reading", Duration::from_secs(10)),
        "{}",
        fake.log()
    );
    assert!(c.wait_exit(HANG).is_none(), "runc finished: {}", c.output());
    let st = c.strace_text();
    eprintln!(
        "runc {} threads: {}\nstrace:\n{}",
        c.runc_pid(),
        thread_states(c.runc_pid()),
        strace_summary(&st)
    );
    assert!(
        st.contains("\"/var/run/dbus/system_bus_socket\"}, 34) = -1 ENOENT"),
        "{st}"
    );
    assert!(st.contains("\"/run/systemd/private\"}, 23) = 0"), "{st}");
    assert!(
        st.lines()
            .any(|l| l.contains("write(") && l.contains("= -1 EAGAIN")),
        "no write EAGAIN:\n{st}"
    );
    let t = Instant::now();
    fake.answer().unwrap();
    assert!(
        c.wait_exit(Duration::from_secs(10)).is_some(),
        "runc still hung after reading resumed"
    );
    eprintln!("runc continued {:?} after reading resumed", t.elapsed());
    assert!(c.container_pid().is_some(), "{}", c.output());
    let left = Leftovers {
        pids: vec![c.runc_pid(), fake.pid()]
            .into_iter()
            .chain(c.container_pid())
            .collect(),
        ns_holder: ns.holder_pid(),
        slice: c.slice().to_owned(),
        dirs: vec![c.bundle().to_path_buf()],
    };
    drop(c);
    drop(fake);
    drop(ns);
    left.check();
}

#[test]
fn fixtures_clean_up_when_the_test_panics_mid_hang() {
    if !skip_unless_systemd_prereqs() {
        return;
    }
    let seen = std::sync::Mutex::new(None);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let ns = PrivateNs::start().unwrap();
        let fake = FakeSystemd::start(&ns, Transport::Private, FakeMode::StopReading).unwrap();
        let mut c = RuncContainer::start(
            &ns,
            &RuncOpts {
                big_description: Some(300_000),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(fake.wait_log("stop reading", Duration::from_secs(10)));
        assert!(
            c.wait_exit(Duration::from_millis(500)).is_none(),
            "{}",
            c.output()
        );
        let kids = descendants(c.runc_pid());
        *seen.lock().unwrap() = Some(Leftovers {
            pids: [c.runc_pid(), fake.pid()].into_iter().chain(kids).collect(),
            ns_holder: ns.holder_pid(),
            slice: c.slice().to_owned(),
            dirs: vec![c.bundle().to_path_buf()],
        });
        panic!("deliberate panic with runc hung on a stalled private socket");
    }));
    assert!(r.is_err());
    seen.lock()
        .unwrap()
        .take()
        .expect("reached the panic")
        .check();
}

#[test]
fn dockerd_with_systemd_driver_runs_and_hangs_in_never_reply() {
    if !skip_unless_systemd_prereqs() || !watchdog_tests::dockerd::skip_unless_docker_prereqs() {
        return;
    }
    let ns = PrivateNs::start().unwrap();
    let bus = DbusDaemon::start(&ns).unwrap();
    let mut fake = FakeSystemd::start(&ns, Transport::Bus, FakeMode::Answer).unwrap();
    let mut d = SystemdDockerd::start(&ns).unwrap();
    let image = d.dockerd_mut().busybox_image().unwrap();
    let t = Instant::now();
    let id = d
        .dockerd_mut()
        .run_detached(&[&image, "sleep", "1000"])
        .unwrap();
    eprintln!(
        "docker run -d with the systemd driver took {:?}",
        t.elapsed()
    );
    assert!(
        fake.log().contains(&format!("docker-{id}.scope")),
        "{}",
        fake.log()
    );
    let dirs = d.cgroup_dirs();
    eprintln!("cgroup dirs: {dirs:?}");
    assert!(
        dirs.iter()
            .any(|p| p.ends_with(format!("docker-{id}.scope")))
    );

    // Never reply: `docker run` hangs (runc create waits on StartTransientUnit).
    drop(fake);
    fake = FakeSystemd::start(&ns, Transport::Bus, FakeMode::NeverReply).unwrap();
    let t = Instant::now();
    let out = d
        .dockerd()
        .docker(
            &["run", "-d", "--network", "none", &image, "sleep", "1000"],
            8,
        )
        .unwrap();
    eprintln!(
        "hung docker run: {:?} after {:?}: {}",
        out.status,
        t.elapsed(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success());
    assert!(
        t.elapsed() >= Duration::from_secs(7),
        "docker run returned early"
    );
    assert!(
        fake.log().contains("holding StartTransientUnit"),
        "{}",
        fake.log()
    );
    let runcs = d.runc_pids();
    eprintln!("hung runc processes of our dockerd: {runcs:?}");
    for p in &runcs {
        let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        eprintln!(
            "  {p}: {} threads: {}",
            String::from_utf8_lossy(&cmd).replace('\0', " "),
            thread_states(*p)
        );
    }
    assert!(!runcs.is_empty(), "no hung runc found");
    let left = Leftovers {
        pids: [d.dockerd().pid(), bus.pid(), fake.pid()]
            .into_iter()
            .chain(runcs)
            .collect(),
        ns_holder: ns.holder_pid(),
        slice: d.slice().to_owned(),
        dirs: vec![
            d.dockerd().exec_root().to_path_buf(),
            d.dockerd().data_root().to_path_buf(),
        ],
    };
    let t = Instant::now();
    drop(d);
    eprintln!("dockerd teardown took {:?}", t.elapsed());
    drop(fake);
    drop(bus);
    drop(ns);
    left.check();
}
