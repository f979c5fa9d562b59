//! The image: the static (musl) agent in an image `FROM scratch`
//! (`deploy/Dockerfile`), built by the test's own dockerd from a build
//! context of the binary alone (no base image, no registry), runs `watchdog
//! check` and `watchdog trace` when started as the DaemonSet starts it: the
//! host's PID namespace (its /proc), the host's /sys and /run, every
//! capability this sandbox's bounding set has (`--privileged` fails here:
//! the set lacks CAP_SYS_RESOURCE; and this Docker, 20.10, does not know
//! CAP_BPF or CAP_PERFMON by name, so the chart's exact set is checked on the
//! agent itself, below, with `setpriv`).
//!
//! The static binary comes from `WATCHDOG_STATIC_BIN` (`cargo xtask test`
//! builds it with `--target x86_64-unknown-linux-musl`).
use std::{fs, path::PathBuf};

use serde_json::Value;
use watchdog_tests::{dockerd::*, *};

/// An ELF without a PT_INTERP program header needs no dynamic loader (and
/// no libc in the image).
fn is_static_elf(bytes: &[u8]) -> Result<bool, String> {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 {
        return Err("not a 64-bit ELF file".into());
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        if o + 4 > bytes.len() {
            return Err("program headers past the end of the file".into());
        }
        const PT_INTERP: u32 = 3;
        if u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap()) == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A directory removed at drop.
struct Dir(PathBuf);

impl Dir {
    fn new(p: PathBuf) -> Dir {
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).expect("create the build context");
        Dir(p)
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn image_from_scratch_runs_check_and_trace_with_the_hosts_sys_proc_and_run() {
    if !skip_unless_docker_prereqs() {
        return;
    }
    let bin = static_agent_bin();
    if !skip_unless(bin.is_some(), NO_STATIC_AGENT) {
        return;
    }
    let bin = bin.unwrap();
    let bytes = fs::read(&bin).expect("read the static agent");
    assert_eq!(
        is_static_elf(&bytes),
        Ok(true),
        "{} must be a static binary (no dynamic loader in a FROM scratch image)",
        bin.display()
    );

    let d = Dockerd::start().expect("start a private dockerd");
    // The build context: the binary and the repository's Dockerfile, nothing else.
    let ctx = Dir::new(std::env::temp_dir().join(format!("wd-image-ctx-{}", std::process::id())));
    fs::copy(&bin, ctx.path().join("watchdog")).expect("copy the agent into the context");
    let dockerfile = workspace_root().join("deploy/Dockerfile");
    let text = fs::read_to_string(&dockerfile).expect("read deploy/Dockerfile");
    assert!(
        text.lines().any(|l| l.trim() == "FROM scratch"),
        "deploy/Dockerfile must build FROM scratch:\n{text}"
    );
    fs::copy(&dockerfile, ctx.path().join("Dockerfile")).expect("copy the Dockerfile");
    let tag = format!("wd-image-test-{}:latest", std::process::id());
    let ctx_s = ctx.path().to_string_lossy().to_string();
    let out = std::process::Command::new("timeout")
        .args(["-s", "KILL", "120", "docker", "-H", &d.host()])
        .args(["build", "-q", "-t", &tag, &ctx_s])
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .expect("run docker build");
    assert!(
        out.status.success(),
        "docker build of deploy/Dockerfile failed: {}{}\ndockerd log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        d.log_tail()
    );
    // Nothing but the agent in it.
    let history = d
        .docker_ok(
            &["image", "inspect", "-f", "{{json .RootFS.Layers}}", &tag],
            30,
        )
        .expect("inspect the image");
    let layers: Vec<Value> = serde_json::from_str(&history).expect("layers as JSON");
    assert_eq!(layers.len(), 1, "one layer (the binary): {history}");

    // As the DaemonSet runs it (hostPID, /sys and /run of the host).
    let run = |args: &[&str], secs: u64| {
        let mut full = vec!["run", "--rm", "--network", "none", "--pid", "host"];
        full.extend_from_slice(&ALL_CAPS_ARGS);
        full.extend_from_slice(&["-v", "/sys:/sys", "-v", "/run:/run", &tag]);
        full.extend_from_slice(args);
        let out = d.docker(&full, secs).expect("run docker");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            out.status.success(),
            "watchdog {args:?} in the image failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
        (stdout, stderr)
    };

    let (stdout, stderr) = run(&["check", "--json"], 60);
    let rec = json_records(&stdout);
    let c = rec
        .iter()
        .find(|r| r["type"] == "check")
        .unwrap_or_else(|| panic!("no check record:\n{stdout}\n{stderr}"));
    assert_eq!(c["ok"], true, "check in the image: {c}");
    for fact in ["btf", "privileges", "pids_cgroups"] {
        let f = c["facts"]
            .as_array()
            .and_then(|a| a.iter().find(|f| f["name"] == fact))
            .unwrap_or_else(|| panic!("no {fact} fact: {c}"));
        assert_eq!(f["ok"], true, "{fact} in the image: {f}");
    }

    let (stdout, stderr) = run(
        &[
            "trace",
            "--json",
            "--duration",
            "3s",
            "--no-pleg",
            "--runtime-endpoint",
            "off",
        ],
        90,
    );
    let rec = json_records(&stdout);
    let ready = rec
        .iter()
        .find(|r| r["type"] == "ready")
        .unwrap_or_else(|| panic!("no ready record:\n{stdout}\n{stderr}"));
    let probes = ready["probes"].as_array().expect("probes in ready");
    for name in [
        "storage_sleep",
        "storage_exec",
        "dbus_sock_send",
        "dbus_sock_recv",
    ] {
        let p = probes
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in ready: {ready}"));
        assert_eq!(p["status"], "attached", "{name} in the image: {p}");
    }
    assert!(
        rec.iter().any(|r| r["type"] == "summary"),
        "no summary record at the end:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.trim().is_empty(),
        "nothing on stderr without --log; got:\n{stderr}"
    );
}

#[test]
fn static_elf_check_tells_static_from_dynamic() {
    // The test binary itself is dynamic (glibc).
    let me = fs::read(std::env::current_exe().unwrap()).unwrap();
    assert_eq!(is_static_elf(&me), Ok(false));
    assert!(is_static_elf(b"#!/bin/sh\n").is_err());
}

/// The Helm chart runs the agent with [`CHART_CAPABILITIES`] instead of a
/// privileged container: with exactly those (every other capability dropped
/// from the bounding set, as the runtime does for `capabilities.drop: [ALL]`),
/// `check` passes and `trace` attaches its probes and reads the host.
#[test]
fn the_charts_capabilities_are_enough_for_check_and_trace() {
    if !skip_unless_root() {
        return;
    }
    let setpriv = "/usr/bin/setpriv";
    if !skip_unless(
        std::path::Path::new(setpriv).exists(),
        "setpriv is missing (apt-get install util-linux)",
    ) {
        return;
    }
    let set = std::iter::once("-all".to_owned())
        .chain(
            CHART_CAPABILITIES
                .iter()
                .map(|c| format!("+{}", c.to_lowercase())),
        )
        .collect::<Vec<_>>()
        .join(",");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(setpriv)
            .args(["--bounding-set", &set, "--inh-caps", "-all", "--"])
            .arg(agent_bin())
            .args(args)
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run setpriv");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        (out.status.success(), stdout, stderr)
    };
    // The bounding set really is the chart's (the test can tell).
    let (_, status, _) = {
        let out = std::process::Command::new(setpriv)
            .args(["--bounding-set", &set, "--inh-caps", "-all", "--"])
            .args(["grep", "^CapEff", "/proc/self/status"])
            .output()
            .expect("run setpriv");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            (),
        )
    };
    assert!(
        status.contains("000000c000280000"),
        "BPF, PERFMON, SYS_ADMIN and SYS_PTRACE only: {status}"
    );

    let (ok, stdout, stderr) = run(&["check", "--json"]);
    let rec = json_records(&stdout);
    let c = rec
        .iter()
        .find(|r| r["type"] == "check")
        .unwrap_or_else(|| panic!("no check record:\n{stdout}\n{stderr}"));
    assert!(
        ok && c["ok"] == true,
        "check with the chart's capabilities: {c}\n{stderr}"
    );

    let (ok, stdout, stderr) = run(&[
        "trace",
        "--json",
        "--duration",
        "3s",
        "--no-pleg",
        "--runtime-endpoint",
        "off",
    ]);
    assert!(
        ok,
        "trace with the chart's capabilities:\n{stdout}\n{stderr}"
    );
    let rec = json_records(&stdout);
    let ready = rec
        .iter()
        .find(|r| r["type"] == "ready")
        .unwrap_or_else(|| panic!("no ready record:\n{stdout}\n{stderr}"));
    for p in ready["probes"].as_array().expect("probes in ready") {
        // fork_failures waits in standby until a PID limit is under pressure.
        let want = if p["name"] == "fork_failures" {
            "standby"
        } else {
            "attached"
        };
        assert_eq!(p["status"], want, "with the chart's capabilities: {p}");
    }
    assert!(
        !ready["pids_hierarchy"].is_null(),
        "the pids cgroups are read: {ready}"
    );
    assert!(
        stderr.trim().is_empty(),
        "nothing on stderr without --log; got:\n{stderr}"
    );
}
