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

mod fuzz;
mod image;
mod install;
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
        /// Seconds each fuzz target runs at the end (0: none).
        #[arg(long, default_value_t = 15)]
        fuzz_seconds: u64,
    },
    /// Set up (cargo-fuzz included), build the fuzz targets of `fuzz/` and run
    /// each for a bounded time, seeded from real data; a crash fails.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only these targets (default: all).
        targets: Vec<String>,
    },
    /// Set up, build the agent as a static (musl) binary and an image `FROM
    /// scratch` from deploy/Dockerfile with Docker (DOCKER_HOST, the system's,
    /// or a private dockerd started for the build), saved as
    /// target/image/watchdog-<version>-amd64.tar. No registry needed.
    Image {
        /// The image's name (default watchdog:<version>).
        #[arg(long)]
        tag: Option<String>,
    },
    /// Build the agent (release) and install it under a prefix: the binary,
    /// bash/zsh/fish completions and the manual pages (one per command).
    Install {
        /// Installation prefix.
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
        /// Install this binary instead of building one.
        #[arg(long)]
        bin: Option<PathBuf>,
    },
    /// Set up, then run the benchmarks in this order: watchdog-bench (overhead
    /// and detection latency), storage-bench, dbus-bench, redis-bench (the
    /// real workload). Extra arguments go to watchdog-bench, or to the one
    /// bench named by `--only` (e.g. `--only redis -- --rounds 1`).
    Bench {
        /// Run only these benches (comma-separated or repeated).
        #[arg(long, value_enum, value_delimiter = ',')]
        only: Vec<BenchName>,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

/// The benchmark binaries of `watchdog-tests`, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum BenchName {
    /// watchdog-bench: getppid and fork loops, fork-failure detection latency.
    Watchdog,
    /// storage-bench: the storage-hang probes (`ONLY=getppid|stat|pingpong`
    /// in the environment runs one workload).
    Storage,
    /// dbus-bench: the D-Bus/systemd socket tracking.
    Dbus,
    /// redis-bench: redis-server + redis-benchmark, no agent vs default vs
    /// the old raw-syscall design.
    Redis,
}

impl BenchName {
    const ALL: [BenchName; 4] = [
        BenchName::Watchdog,
        BenchName::Storage,
        BenchName::Dbus,
        BenchName::Redis,
    ];

    fn binary(self) -> &'static str {
        match self {
            BenchName::Watchdog => "watchdog-bench",
            BenchName::Storage => "storage-bench",
            BenchName::Dbus => "dbus-bench",
            BenchName::Redis => "redis-bench",
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Setup => setup::ensure(),
        Cmd::Trace { args } => trace(args),
        Cmd::Test {
            no_lint,
            fuzz_seconds,
        } => test(no_lint, fuzz_seconds),
        Cmd::Fuzz { seconds, targets } => fuzz::fuzz(seconds, &targets),
        Cmd::Bench { only, args } => bench(&only, args),
        Cmd::Image { tag } => image::image(tag),
        Cmd::Install { prefix, bin } => install(&prefix, bin),
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

fn install(prefix: &Path, bin: Option<PathBuf>) -> Result<()> {
    let bin = match bin {
        Some(b) => b,
        None => {
            setup::ensure()?;
            run(cargo().args(["build", "--release", "--package", "watchdog"]))?;
            workspace_root().join("target/release/watchdog")
        }
    };
    let files = install::install(&bin, prefix)?;
    eprintln!("xtask: {} files under {}", files.len(), prefix.display());
    Ok(())
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

fn test(no_lint: bool, fuzz_seconds: u64) -> Result<()> {
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
    // The static agent of the image and debug-pod tests.
    let static_bin = image::build_static()?;
    // Helm and the Kubernetes schemas of the chart test.
    let chart_tools = setup::chart_tools()?;
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
        )
        .env("WATCHDOG_STATIC_BIN", &static_bin)
        .env("WATCHDOG_CHART_TOOLS", &chart_tools))?;
    // Every parser of outside input, fuzzed for a short bounded time.
    if fuzz_seconds > 0 {
        fuzz::fuzz(fuzz_seconds, &[])?;
    }
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

fn bench(only: &[BenchName], args: Vec<OsString>) -> Result<()> {
    let selected: Vec<BenchName> = BenchName::ALL
        .into_iter()
        .filter(|b| only.is_empty() || only.contains(b))
        .collect();
    // Extra arguments: watchdog-bench's (as before), or the single bench's.
    let args_for = match selected.as_slice() {
        [one] => *one,
        _ => BenchName::Watchdog,
    };
    if !args.is_empty() && !selected.contains(&args_for) {
        bail!(
            "extra arguments go to watchdog-bench or to a single bench chosen with --only; \
             got --only {}",
            selected
                .iter()
                .map(|b| format!("{b:?}").to_lowercase())
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    setup::ensure()?;
    build_release_agent_and_tests()?;
    let agent = workspace_root().join("target/release/watchdog");
    for b in selected {
        let mut cmd = Command::new(workspace_root().join("target/release").join(b.binary()));
        cmd.env("WATCHDOG_BIN", &agent);
        if b == args_for {
            cmd.args(&args);
        }
        run(&mut cmd)?;
    }
    Ok(())
}
