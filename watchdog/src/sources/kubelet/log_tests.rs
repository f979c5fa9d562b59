use super::*;

/// Every real line quoted by the incident reports (/work/shared/incidents),
/// verbatim, one per line.
const INCIDENT_LINES: &str = include_str!("fixtures/incident-lines.log");

fn event(line: &str) -> KubeletLogEvent {
    match parse_line(line) {
        Parsed::Event { event, .. } => event,
        other => panic!("{line:?} parsed as {other:?}"),
    }
}

#[test]
fn go_durations() {
    assert_eq!(parse_go_duration("3m0s"), Some(180.0));
    let d = parse_go_duration("3m57.138893648s").unwrap();
    assert!((d - 237.138893648).abs() < 1e-9, "{d}");
    assert_eq!(parse_go_duration("1h2m3s"), Some(3723.0));
    assert_eq!(parse_go_duration("250ms"), Some(0.25));
    assert!((parse_go_duration("1.5µs").unwrap() - 1.5e-6).abs() < 1e-15);
    assert_eq!(parse_go_duration("0"), Some(0.0));
    for bad in ["", "3", "m", "3x", "3m0", "-1s", "1..2s"] {
        assert_eq!(parse_go_duration(bad), None, "{bad:?}");
    }
}

#[test]
fn every_incident_line_is_understood() {
    let lines: Vec<&str> = INCIDENT_LINES.lines().collect();
    assert!(lines.len() >= 20, "fixture has {} lines", lines.len());
    let (mut events, mut ignored) = (0, 0);
    for l in &lines {
        match parse_line(l) {
            Parsed::Event { .. } => events += 1,
            Parsed::Ignored => ignored += 1,
            Parsed::Unparseable(why) => panic!("real line unparseable ({why}): {l}"),
        }
    }
    // The four pod-sync lines of seed-000 (CrashLoopBackOff, SyncLoop ADD,
    // pod not found) say nothing about PLEG or the runtime.
    assert_eq!(ignored, 4, "lines ignored");
    assert_eq!(events, lines.len() - 4);
}

#[test]
fn pleg_line() {
    let l = "I0729 11:20:59.245243 9575 kubelet.go:1823] skipping pod synchronization - PLEG is not healthy: pleg was last seen active 3m57.138893648s ago; threshold is 3m0s.";
    let Parsed::Event {
        logged,
        program,
        event:
            KubeletLogEvent::PlegUnhealthy {
                last_seen_s,
                threshold_s,
            },
    } = parse_line(l)
    else {
        panic!("{:?}", parse_line(l))
    };
    assert_eq!(logged.as_deref(), Some("0729 11:20:59.245243"));
    assert_eq!(program, None);
    assert!((last_seen_s - 237.138893648).abs() < 1e-9);
    assert_eq!(threshold_s, 180.0);
}

#[test]
fn pleg_in_node_condition_and_structured_log() {
    // seed-002's `kubectl describe node` message.
    let m = parse_pleg_message(
        "PLEG is not healthy: pleg was last seen active 3m46.752815514s ago; threshold is 3m0s",
    )
    .unwrap();
    assert!((m.last_seen_s - 226.752815514).abs() < 1e-9);
    assert_eq!(m.threshold_s, 180.0);
    // kubelet >= 1.20 structured logging; evented PLEG's 10 minute threshold.
    let l = r#"I0101 00:00:00.000000    1234 kubelet.go:2210] "Skipping pod synchronization" err="[container runtime is down, PLEG is not healthy: pleg was last seen active 10m5.5s ago; threshold is 10m0s]""#;
    assert_eq!(
        event(l),
        KubeletLogEvent::PlegUnhealthy {
            last_seen_s: 605.5,
            threshold_s: 600.0
        }
    );
}

#[test]
fn runtime_deadline_names_container_and_pod() {
    let l = r#"E0729 11:21:02.178079 9575 remote_runtime.go:321] ContainerStatus "052b011f5fcc54536223afb2d544344c58e62b96bc836a64140c5e36af004ceb" from runtime service failed: rpc error: code = DeadlineExceeded desc = context deadline exceeded"#;
    assert_eq!(
        event(l),
        KubeletLogEvent::RuntimeDeadline {
            operation: "ContainerStatus".into(),
            container_id: Some(
                "052b011f5fcc54536223afb2d544344c58e62b96bc836a64140c5e36af004ceb".into()
            ),
            pod: None,
        }
    );
    let l = r#"E0729 11:21:02.178130 9575 kuberuntime_manager.go:917] getPodContainerStatuses for pod "bushuzu-nettools-88854d496-9nvlk_p000(472cb4d7-caf0-11ea-ab9d-ac1f6ba4811c)" failed: rpc error: code = DeadlineExceeded desc = context deadline exceeded"#;
    assert_eq!(
        event(l),
        KubeletLogEvent::RuntimeDeadline {
            operation: "getPodContainerStatuses".into(),
            container_id: None,
            pod: Some(LoggedPod {
                name: "bushuzu-nettools-88854d496-9nvlk".into(),
                namespace: Some("p000".into()),
                uid: Some("472cb4d7-caf0-11ea-ab9d-ac1f6ba4811c".into()),
            }),
        }
    );
}

#[test]
fn kill_container_error() {
    let l = r#"E0729 11:21:50.993186 9575 kubelet_pods.go:1093] Failed killing the pod "bushuzu-nettools-88854d496-9nvlk": failed to "KillContainer" for "bushuzu-nettools" with KillContainerError: "rpc error: code = DeadlineExceeded desc = context deadline exceeded""#;
    assert_eq!(
        event(l),
        KubeletLogEvent::KillContainerError {
            pod: Some(LoggedPod {
                name: "bushuzu-nettools-88854d496-9nvlk".into(),
                namespace: None,
                uid: None,
            }),
            container: "bushuzu-nettools".into(),
            error: "rpc error: code = DeadlineExceeded desc = context deadline exceeded".into(),
        }
    );
}

#[test]
fn fork_failures_behind_syslog_prefixes() {
    let l = r#"Mar 22 15:23:22 v-docker-k6 dockerd: time="2023-03-22T15:23:22.849523296+08:00" level=warning msg="failed to retrieve runc version: fork/exec /usr/bin/runc: resource temporarily unavailable""#;
    let Parsed::Event {
        logged,
        program,
        event: ev,
    } = parse_line(l)
    else {
        panic!()
    };
    assert_eq!(logged.as_deref(), Some("Mar 22 15:23:22"));
    assert_eq!(program.as_deref(), Some("dockerd"));
    assert_eq!(
        ev,
        KubeletLogEvent::ForkEagain {
            binary: Some("/usr/bin/runc".into())
        }
    );
    let l = "Mar 22 15:23:27 v-docker-k6 kube-proxy: E0322 15:23:27.490837    3904 proxier.go:1520] Failed to execute iptables-save, syncing all rules: fork/exec /usr/sbin/iptables-save: resource temporarily unavailable";
    let Parsed::Event {
        logged, program, ..
    } = parse_line(l)
    else {
        panic!()
    };
    assert_eq!(logged.as_deref(), Some("0322 15:23:27.490837"));
    assert_eq!(program.as_deref(), Some("kube-proxy"));
    assert_eq!(
        event(l),
        KubeletLogEvent::ForkEagain {
            binary: Some("/usr/sbin/iptables-save".into())
        }
    );
    let l = "Mar 22 15:23:23 v-docker-k6 systemd-udevd: fork of '/usr/lib/systemd/systemd-sysctl --prefix=/net/ipv4/conf/calico_tmp_B' failed: Resource temporarily unavailable";
    assert_eq!(
        event(l),
        KubeletLogEvent::ForkEagain {
            binary: Some("/usr/lib/systemd/systemd-sysctl".into())
        }
    );
    let l = "Mar  2 15:23:23 v-docker-k6 systemd-udevd[411]: fork of child failed: Resource temporarily unavailable";
    let Parsed::Event {
        program, event: ev, ..
    } = parse_line(l)
    else {
        panic!()
    };
    assert_eq!(program.as_deref(), Some("systemd-udevd"));
    assert_eq!(ev, KubeletLogEvent::ForkEagain { binary: None });
}

#[test]
fn docker_unreachable() {
    assert_eq!(
        event(
            "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"
        ),
        KubeletLogEvent::RuntimeUnreachable {
            endpoint: "unix:///var/run/docker.sock".into()
        }
    );
}

#[test]
fn broken_lines_are_counted_not_fatal() {
    let bad = [
        "I0729 11:20:59.245243 9575 kubelet.go:1823] PLEG is not healthy: pleg was last seen active soon ago; threshold is 3m0s.",
        "I0729 11:20:59.245243 9575 kubelet.go:1823] PLEG is not healthy: pleg was last seen active 3m",
        "E0729 x] failed with KillContainerError",
        "Mar 22 15:23:22 h dockerd: fork/exec : resource temporarily unavailable",
    ];
    for l in bad {
        assert!(
            matches!(parse_line(l), Parsed::Unparseable(_)),
            "{l:?} -> {:?}",
            parse_line(l)
        );
    }
    assert_eq!(parse_line(""), Parsed::Ignored);
    assert_eq!(parse_line("\u{0}\u{1}garbage"), Parsed::Ignored);
}

#[test]
fn follower_splits_lines_across_reads_and_counts() {
    let mut f = Follower::new(Path::new("/nonexistent"));
    let now = Time::from_millis(1_000);
    let pleg = "I0729 11:20:59.245243 9575 kubelet.go:1823] skipping pod synchronization - PLEG is not healthy: pleg was last seen active 3m57.138893648s ago; threshold is 3m0s.\n";
    let (a, b) = pleg.split_at(40);
    assert!(f.feed(a.as_bytes(), now).is_empty());
    let got = f.feed(
        format!("{b}noise\nPLEG is not healthy: bad\n").as_bytes(),
        now,
    );
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].at, now);
    assert_eq!(f.counters.lines, 3);
    assert_eq!(f.counters.events, 1);
    assert_eq!(f.counters.unparseable, 1);
    assert!(f.last_unparseable.as_ref().unwrap().0.contains("bad"));
    // A huge line is cut at MAX_LINE and counted; memory stays bounded.
    let huge = vec![b'x'; MAX_LINE * 3];
    f.feed(&huge, now);
    f.feed(&huge, now);
    assert!(f.partial.len() <= MAX_LINE);
    f.feed(b"\n", now);
    assert_eq!(f.counters.too_long, 1);
    assert_eq!(f.counters.lines, 4);
}

#[test]
fn follower_follows_appends_and_rotation() {
    use std::io::Write;
    let dir = std::env::temp_dir().join(format!("watchdog-log-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kubelet.log");
    let line = "E0729 11:21:02.178079 9575 remote_runtime.go:321] ContainerStatus \"052b011f5fcc\" from runtime service failed: rpc error: code = DeadlineExceeded desc = context deadline exceeded\n";
    std::fs::write(&path, line).unwrap();
    let mut f = Follower::new(&path);
    let now = Time::from_millis(5);
    // Starts at the end: the old line is not replayed as news.
    assert!(f.poll(now).unwrap().is_empty());
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(line.as_bytes())
        .unwrap();
    assert_eq!(f.poll(now).unwrap().len(), 1);
    // Rotation: a new file at the same path is read from its start.
    std::fs::rename(&path, dir.join("kubelet.log.1")).unwrap();
    std::fs::write(&path, format!("{line}{line}")).unwrap();
    assert_eq!(f.poll(now).unwrap().len(), 2);
    assert_eq!(f.counters.rotations, 1);
    // Truncation in place also restarts at 0.
    std::fs::write(&path, line).unwrap();
    assert_eq!(f.poll(now).unwrap().len(), 1);
    std::fs::remove_file(&path).unwrap();
    assert!(
        f.poll(now).is_err(),
        "a missing file is an error, not a panic"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
