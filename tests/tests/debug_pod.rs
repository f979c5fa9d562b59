//! The one-shot use during an incident: `kubectl debug node/<n> -it
//! --profile=sysadmin --image=<watchdog image> -- /watchdog trace`. That pod
//! shares the host's PID namespace, but its own `/` is the image (the static
//! agent alone): the host's `/` is at `/host`, and the pod's `/run` and
//! `/var/log` are empty. The agent must find the runtime's socket and
//! kubelet's journal under `/host` by itself.
//!
//! The test lays out a mount namespace of its own like that pod: a tmpfs
//! root holding only the static agent, the host's `/` rbind-mounted at
//! `/host`, a procfs of the host's PID namespace, the host's `/sys` and
//! `/dev`. In that namespace only, the host's `/run/containerd` is the
//! socket directory of the test's own containerd and the host's
//! `/var/log/journal` holds a journal written by systemd's own tools (this
//! machine has neither). Then `chroot` and run, with no path given: the
//! relist must reach containerd over CRI at `/host/run/containerd/...`
//! and the kubelet log must follow `/host/var/log/journal`.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::Value;
use watchdog_tests::{containerd::*, journal::*, *};

/// A directory removed at drop (after the namespace that mounted on it is gone).
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `/watchdog <args>` chrooted into a debug pod's layout; returns
/// (exit success, stdout, stderr).
fn in_debug_pod(
    root: &Path,
    ctd_run: &Path,
    journal: &Path,
    args: &[&str],
) -> (bool, String, String) {
    let r = root.display();
    // Mounts made in the new namespace only (private propagation): the host
    // sees none of them, and they vanish with the namespace. Directories are
    // made only on tmpfs mounts of this namespace, never in the host's tree.
    let script = format!(
        "set -e
mount -t tmpfs -o size=64m wd-debug-pod {r}
mkdir -p {r}/host {r}/proc {r}/sys {r}/dev {r}/run {r}/var/log {r}/tmp
cp \"$WD_STATIC\" {r}/watchdog
mount --rbind / {r}/host
mount --make-rslave {r}/host
mount -t tmpfs -o size=1m wd-host-run {r}/host/run
mkdir -p {r}/host/run/containerd
mount --bind {ctd} {r}/host/run/containerd
mount -t tmpfs -o size=1m wd-host-log {r}/host/var/log
mkdir -p {r}/host/var/log/journal
mount --bind {journal} {r}/host/var/log/journal
mount -t proc proc {r}/proc
mount --rbind /sys {r}/sys
mount --rbind /dev {r}/dev
exec chroot {r} /watchdog \"$@\"",
        ctd = ctd_run.display(),
        journal = journal.display(),
    );
    let out = Command::new("timeout")
        .args([
            "-s",
            "KILL",
            "90",
            "unshare",
            "--mount",
            "--propagation",
            "private",
        ])
        .args(["sh", "-c", &script, "debug-pod"])
        .args(args)
        .env("WD_STATIC", static_agent_bin().unwrap())
        .env_remove("HOST_ROOT")
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run unshare");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_agent_finds_the_hosts_runtime_and_journal_under_host_in_a_debug_pod_layout() {
    if !skip_unless_containerd_prereqs() {
        return;
    }
    let Some(_) = static_agent_bin() else {
        skip_unless(false, NO_STATIC_AGENT);
        return;
    };
    for bin in ["/usr/bin/unshare", "/usr/sbin/chroot", JOURNAL_REMOTE] {
        if !skip_unless(Path::new(bin).exists(), &format!("{bin} is missing")) {
            return;
        }
    }
    let base = Dir(std::env::temp_dir().join(format!("wd-debug-pod-{}", std::process::id())));
    let root = base.0.join("root");
    let journal = base.0.join("journal");
    std::fs::create_dir_all(&root).unwrap();
    JournalWriter::in_dir(&journal).append(&[(
        "kubelet.service",
        "kubelet",
        "I0729 11:20:59.245243 9575 kubelet.go:2410] SyncLoop (PLEG): event",
    )]);

    let ctd = Containerd::start().expect("start a private containerd");
    let sock = ctd
        .endpoint()
        .strip_prefix("unix://")
        .map(PathBuf::from)
        .expect("a unix endpoint");
    assert_eq!(
        sock.file_name().and_then(|n| n.to_str()),
        Some("containerd.sock"),
        "the fixture's socket keeps containerd's own name"
    );
    let ctd_run = sock.parent().unwrap().to_path_buf();

    // 1. check: the host root is detected, no flag or variable given.
    let (ok, stdout, stderr) = in_debug_pod(&root, &ctd_run, &journal, &["check", "--json"]);
    let rec = json_records(&stdout);
    let check = rec
        .iter()
        .find(|r| r["type"] == "check")
        .unwrap_or_else(|| panic!("no check record (exit ok: {ok}):\n{stdout}\n{stderr}"));
    let host_root = check["facts"]
        .as_array()
        .and_then(|a| a.iter().find(|f| f["name"] == "host_root"))
        .unwrap_or_else(|| panic!("no host_root fact: {check}"));
    assert!(
        host_root["detail"]
            .as_str()
            .unwrap_or("")
            .starts_with("/host (detected"),
        "the debug pod's /host must be detected: {host_root}"
    );
    assert_eq!(
        check["ok"], true,
        "check in the debug pod layout: {check}\n{stderr}"
    );

    // 2. trace: the relist over CRI and the journal, found under /host.
    let (ok, stdout, stderr) = in_debug_pod(
        &root,
        &ctd_run,
        &journal,
        &[
            "trace",
            "--json",
            "--duration",
            "6s",
            "--kubelet-metrics-url",
            "off",
            "--fork-probe",
            "off",
        ],
    );
    assert!(
        ok,
        "trace in the debug pod layout failed:\n{stdout}\n{stderr}"
    );
    let rec = json_records(&stdout);
    let source = |name: &str| {
        rec.iter()
            .filter(|r| r["type"] == "source" && r["source"] == name)
            .cloned()
            .collect::<Vec<_>>()
    };
    let relist = source("runtime_relist");
    assert!(
        relist.iter().any(|r| r["state"] == "available"),
        "the runtime relist must be available: {relist:?}\n{stdout}\n{stderr}"
    );
    // The relist really ran over CRI against the socket under /host.
    let pleg: Vec<&Value> = rec
        .iter()
        .filter(|r| r["type"] == "pleg" && r["source"] == "agent_relist")
        .collect();
    assert!(
        pleg.iter().any(|r| r["runtime"] == "containerd"
            && r["runtime_endpoint"] == "unix:///host/run/containerd/containerd.sock"),
        "the relist must reach containerd at /host/run/containerd/containerd.sock: {pleg:?}\n{stdout}\n{stderr}"
    );
    let log = source("kubelet_log");
    assert!(
        log.iter().any(|r| r["state"] == "available"
            && r["target"]
                .as_str()
                .is_some_and(|t| t.contains("/host/var/log/journal"))),
        "kubelet's journal must be followed at /host/var/log/journal: {log:?}\n{stdout}\n{stderr}"
    );
    assert!(
        rec.iter().any(|r| r["type"] == "summary"),
        "no summary:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.trim().is_empty(),
        "nothing on stderr without --log; got:\n{stderr}"
    );
    drop(ctd);
}
