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
];

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
                "-max_len=65536",
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
