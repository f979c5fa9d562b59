//! The `watchdog` command line: one file per subcommand.
mod bench_floor;
mod check;
mod replay;
mod run;
mod trace;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "watchdog",
    version,
    about = "Finds from kernel evidence why a Kubernetes node goes NotReady (PLEG is not healthy)"
)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Command,
    /// Diagnostics on stderr: a filter such as `watchdog=debug` or
    /// `watchdog=debug,kube=info`, or a bare level (error, warn, info, debug,
    /// trace), which applies to the libraries too. By default only
    /// watchdog's own warnings.
    #[arg(long, global = true, default_value = "watchdog=warn")]
    log: String,
}

#[derive(Subcommand)]
enum Command {
    /// One-shot tracing session: attach, report findings live, summarize at the end.
    Trace(trace::Args),
    /// The node agent (DaemonSet): all probes, metrics, Kubernetes conditions and events.
    Run(run::Args),
    /// Which probes this kernel supports, and for each one that is not, why and what to do.
    Check(check::Args),
    /// Diagnose a recorded observation stream (`--record FILE`) offline.
    Replay(replay::Args),
    /// Attach only an empty program on the probes' hook (benchmark floor).
    #[command(hide = true)]
    BenchFloor(bench_floor::Args),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|e| {
        eprintln!(
            "watchdog: --log {:?} is not a log level or filter ({e}); using watchdog=warn",
            cli.log
        );
        tracing_subscriber::EnvFilter::new("watchdog=warn")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: no escape codes in a file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.cmd {
        Command::Trace(a) => trace::run(a),
        Command::Check(a) => check::run(a),
        Command::Run(a) => run::run(a),
        Command::Replay(a) => replay::run(a),
        Command::BenchFloor(a) => bench_floor::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("watchdog: {e:#}");
            ExitCode::from(2)
        }
    }
}
