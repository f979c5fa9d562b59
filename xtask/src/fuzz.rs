//! `cargo xtask fuzz`: the cargo-fuzz targets in `fuzz/` (libFuzzer, the
//! nightly toolchain), each seeded from real data and run for a bounded time.
//! A crash or a hang fails the command and leaves its input in
//! `fuzz/artifacts/<target>/`; it then becomes a unit test.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{run, setup, workspace_root};

/// Every target in `fuzz/fuzz_targets`, in the order they run.
pub const TARGETS: &[&str] = &[
    "metrics_page",
    "kubelet_log_line",
    "recording",
    "mountinfo",
    "proc_text",
    "dbus_message",
    "sock_diag",
    "ringbuf_event",
    "config_toml",
    "journal_file",
];

/// The longest input of a target: a journal file holds its hash tables
/// (3.6 MiB in the seed systemd writes), the others are text or messages.
fn max_len(target: &str) -> usize {
    match target {
        "journal_file" => 4 << 20,
        _ => 65536,
    }
}

/// A real journal file for the `journal_file` target: kubelet's and
/// containerd's lines from the field reports, written by systemd's own
/// `systemd-journal-remote` (a set-up package), cut after its last object
/// (the rest of the 8 MiB it allocates is zeros) with the header's arena size
/// made to match. None when the tool is missing.
fn journal_seed(root: &Path) -> Option<PathBuf> {
    const REMOTE: &str = "/lib/systemd/systemd-journal-remote";
    if !Path::new(REMOTE).exists() {
        eprintln!("xtask: {REMOTE} is missing: the journal_file target runs without a seed");
        return None;
    }
    let dir = root.join("target/fuzz-seeds/journal_file");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).ok()?;
    let file = dir.join("seed.journal");
    let entries = [
        (
            "kubelet.service",
            "kubelet",
            "I0729 11:20:59.245243 9575 kubelet.go:1823] skipping pod synchronization - PLEG is not healthy: pleg was last seen active 3m57.138893648s ago; threshold is 3m0s.",
        ),
        (
            "containerd.service",
            "containerd",
            "time=\"2019-03-22T15:23:22Z\" level=error msg=\"failed to start shim: fork/exec /usr/bin/containerd-shim-runc-v2: resource temporarily unavailable\"",
        ),
        (
            "kubelet.service",
            "kubelet",
            "E0729 11:21:03.112233 9575 remote_runtime.go:295] ContainerStatus \"3f5a0c1b2d4e\" from runtime service failed: rpc error: code = DeadlineExceeded desc = context deadline exceeded",
        ),
    ];
    let mut export = String::new();
    for (i, (unit, ident, msg)) in entries.iter().enumerate() {
        export.push_str(&format!(
            "__REALTIME_TIMESTAMP={}\n__MONOTONIC_TIMESTAMP={}\n\
             _BOOT_ID=0123456789abcdef0123456789abcdef\n_SYSTEMD_UNIT={unit}\n\
             SYSLOG_IDENTIFIER={ident}\n_PID=9575\nPRIORITY=6\nMESSAGE={msg}\n\n",
            1_700_000_000_000_000u64 + i as u64 * 1000,
            1000 + i * 1000
        ));
    }
    let mut child = Command::new(REMOTE)
        .arg("-o")
        .arg(&file)
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    use std::io::Write as _;
    child.stdin.take()?.write_all(export.as_bytes()).ok()?;
    if !child.wait().ok()?.success() {
        return None;
    }
    let mut bytes = fs::read(&file).ok()?;
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    // Header: header_size at 88, arena_size at 96, tail_object_offset at 136.
    let header_size = u64_at(&bytes, 88);
    let tail = u64_at(&bytes, 136) as usize;
    let end = (tail + u64_at(&bytes, tail + 8) as usize).next_multiple_of(8);
    if end > bytes.len() || end > max_len("journal_file") {
        return None;
    }
    bytes[96..104].copy_from_slice(&(end as u64 - header_size).to_le_bytes());
    bytes.truncate(end);
    fs::write(&file, bytes).ok()?;
    Some(file)
}

/// Seeds of each target: files of real data in this repository (and the
/// field reports of `../shared/incidents/` when they are there).
fn seeds(target: &str, root: &Path) -> Vec<PathBuf> {
    let glob = |dir: &Path, suffix: &str| -> Vec<PathBuf> {
        fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with(suffix))
            .collect()
    };
    let fixtures = root.join("watchdog/tests/fixtures");
    let kubelet = root.join("watchdog/src/sources/kubelet/fixtures");
    match target {
        "metrics_page" => vec![kubelet.join("kubelet-metrics.txt")],
        "kubelet_log_line" => {
            let mut v = glob(&root.join("../shared/incidents"), ".txt");
            v.extend(glob(&kubelet, ".log"));
            v
        }
        "recording" => glob(&root.join("watchdog/tests/golden"), ".jsonl"),
        "mountinfo" => glob(&fixtures, "")
            .into_iter()
            .map(|d| d.join("proc/self/mountinfo"))
            .collect(),
        "proc_text" => glob(&fixtures, "")
            .into_iter()
            .flat_map(|d| glob(&d.join("proc"), ""))
            .flat_map(|p| [p.join("status"), p.join("stat"), p.join("limits")])
            .collect(),
        "config_toml" => glob(&root.join("fuzz/seeds/config_toml"), ".toml"),
        "dbus_message" => glob(&root.join("fuzz/seeds/dbus_message"), ""),
        "journal_file" => journal_seed(root).into_iter().collect(),
        _ => Vec::new(),
    }
    .into_iter()
    .filter(|p| p.is_file())
    .collect()
}

fn cargo_fuzz() -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", "nightly", "cargo", "fuzz"])
        .env("PATH", setup::path_with_cargo_bin())
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .current_dir(workspace_root());
    c
}

/// Builds every target, then runs each (or the ones named) for `seconds`.
pub fn fuzz(seconds: u64, only: &[String]) -> Result<()> {
    setup::ensure()?;
    setup::cargo_fuzz()?;
    let root = workspace_root();
    let targets: Vec<&str> = TARGETS
        .iter()
        .copied()
        .filter(|t| only.is_empty() || only.iter().any(|o| o == t))
        .collect();
    if targets.is_empty() {
        bail!(
            "no such fuzz target; the targets are {}",
            TARGETS.join(", ")
        );
    }
    run(cargo_fuzz().args(["build", "-O"])).context("building the fuzz targets")?;
    let mut report = Vec::new();
    for t in &targets {
        // The corpus grows across runs; the seeds are copied in each time.
        let corpus = root.join("fuzz/corpus").join(t);
        fs::create_dir_all(&corpus)?;
        for (i, s) in seeds(t, &root).iter().enumerate() {
            let _ = fs::copy(s, corpus.join(format!("seed-{i}")));
        }
        eprintln!("xtask: fuzzing {t} for {seconds} s");
        let out = cargo_fuzz()
            .args(["run", "-O", t])
            .arg(&corpus)
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-timeout=10",
                "-rss_limit_mb=2048",
                &format!("-max_len={}", max_len(t)),
                "-print_final_stats=1",
            ])
            .output()
            .with_context(|| format!("running the fuzz target {t}"))?;
        let err = String::from_utf8_lossy(&out.stderr);
        let runs = err
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|| "?".into());
        if !out.status.success() {
            let tail: Vec<&str> = err.lines().rev().take(40).collect();
            eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            bail!(
                "fuzz target {t} failed after {runs} runs; its input is in fuzz/artifacts/{t}/ (make it a unit test)"
            );
        }
        report.push(format!("{t}: {runs} runs, no crash"));
    }
    for r in report {
        eprintln!("xtask: {r}");
    }
    Ok(())
}
