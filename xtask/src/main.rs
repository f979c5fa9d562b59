//! Set-up, build and test orchestration: `cargo xtask <command>`.
//!
//! Every command first makes sure the machine has what the build needs
//! (Debian packages, the nightly's `rust-src`, bpf-linker built for LLVM 22),
//! installing what is missing, idempotently, and saying what it does.
use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

mod setup;

#[derive(Parser)]
#[command(about = "watchdog's set-up, build and test tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (apt packages, rust-src, bpf-linker).
    Setup,
    /// Set up, build (release) and run `watchdog trace` on this node; extra
    /// arguments go to `watchdog trace` (e.g. `-- --duration 30s --json`).
    Trace {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Set up, then run formatting and lint checks, unit tests and the
    /// privileged kernel tests (root required; an unexpected skip fails).
    Test {
        /// Skip fmt and clippy.
        #[arg(long)]
        no_lint: bool,
    },
    /// Set up, then run the overhead and detection-latency benchmarks.
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Setup => setup::ensure(),
        Cmd::Trace { args } => trace(args),
        Cmd::Test { no_lint } => test(no_lint),
        Cmd::Bench { args } => bench(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Run a command in the workspace root, echoing it; fail on non-zero exit.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    cmd.current_dir(workspace_root());
    eprintln!("xtask: running {}", show(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("could not start {}", show(cmd)))?;
    if !status.success() {
        bail!("{} failed: {status}", show(cmd));
    }
    Ok(())
}

pub(crate) fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    // bpf-linker lives in ~/.cargo/bin, which a fresh root shell may lack.
    cmd.env("PATH", setup::path_with_cargo_bin());
    cmd
}

fn trace(args: Vec<OsString>) -> Result<()> {
    setup::ensure()?;
    run(cargo().args(["build", "--release", "--package", "watchdog"]))?;
    let bin = workspace_root().join("target/release/watchdog");
    let mut cmd = Command::new(&bin);
    cmd.arg("trace").args(args);
    eprintln!("xtask: running {}", show(&cmd));
    let status = cmd
        .status()
        .with_context(|| format!("could not start {}", bin.display()))?;
    if !status.success() {
        bail!("watchdog trace exited with {status}");
    }
    Ok(())
}

fn test(no_lint: bool) -> Result<()> {
    setup::ensure()?;
    if !no_lint {
        run(cargo().args(["fmt", "--all", "--check"]))?;
        run(cargo().args([
            "clippy",
            "--workspace",
            "--exclude",
            "watchdog-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        // The eBPF crate is linted for its own target with the nightly.
        run(Command::new("rustup")
            .args([
                "run",
                "nightly",
                "cargo",
                "clippy",
                "--package",
                "watchdog-ebpf",
            ])
            .args([
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--",
            ])
            .args(["-C", "panic=abort", "-D", "warnings"])
            .env("PATH", setup::path_with_cargo_bin())
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO"))?;
    }
    // Build the binaries the kernel tests spawn, then every test: unit tests in
    // parallel, the privileged kernel tests with one thread (kernel state is shared).
    build_release_agent_and_tests()?;
    run(cargo().args(["test", "--workspace", "--exclude", "watchdog-tests"]))?;
    run(cargo()
        .args([
            "test",
            "--release",
            "--package",
            "watchdog-tests",
            "--",
            "--test-threads=1",
        ])
        .env(
            "WATCHDOG_BIN",
            workspace_root().join("target/release/watchdog"),
        ))?;
    Ok(())
}

/// The agent binary the kernel tests and the bench spawn, and the bench itself.
fn build_release_agent_and_tests() -> Result<()> {
    run(cargo().args([
        "build",
        "--release",
        "--package",
        "watchdog",
        "--package",
        "watchdog-tests",
    ]))
}

fn bench(args: Vec<OsString>) -> Result<()> {
    setup::ensure()?;
    build_release_agent_and_tests()?;
    let mut cmd = Command::new(workspace_root().join("target/release/watchdog-bench"));
    cmd.env(
        "WATCHDOG_BIN",
        workspace_root().join("target/release/watchdog"),
    );
    cmd.args(args);
    run(&mut cmd)?;
    // Storage-hang probes: overhead on unwatched and watched tasks, detection delay.
    let mut storage = Command::new(workspace_root().join("target/release/storage-bench"));
    storage.env(
        "WATCHDOG_BIN",
        workspace_root().join("target/release/watchdog"),
    );
    run(&mut storage)?;
    // D-Bus/systemd socket tracking: unrelated, watched and tracked socket I/O.
    let mut dbus = Command::new(workspace_root().join("target/release/dbus-bench"));
    dbus.env(
        "WATCHDOG_BIN",
        workspace_root().join("target/release/watchdog"),
    );
    run(&mut dbus)
}
