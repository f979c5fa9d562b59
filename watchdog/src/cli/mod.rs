//! The `watchdog` command line: one file per subcommand.
mod bench_floor;
mod bundle;
mod check;
mod replay;
mod run;
mod trace;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// `--version`: the package version, the git revision it was built from
/// and the target.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("WATCHDOG_GIT_REV"),
    ", ",
    env!("WATCHDOG_TARGET"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "watchdog",
    version = VERSION,
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
    /// Where the host's `/` is mounted (a `kubectl debug node` pod: `/host`):
    /// the runtime's sockets, the journal and systemd's sockets are looked
    /// for under it. Default: $HOST_ROOT, else `/host` when it is PID 1's
    /// root, else `/`.
    #[arg(long, global = true, value_name = "DIR")]
    host_root: Option<std::path::PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// One-shot tracing session: attach, report findings live, summarize at the end.
    Trace(trace::TraceCmd),
    /// The node agent (DaemonSet): all probes, metrics, Kubernetes conditions and events.
    Run(run::Args),
    /// Which probes this kernel supports, and for each one that is not, why and what to do.
    Check(check::Args),
    /// Diagnose a recorded observation stream (`--record FILE`, or a bundle) offline.
    Replay(replay::Args),
    /// Trace for a while, then write the kernel evidence in one tar.gz for a bug report.
    Bundle(bundle::BundleArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff; `watchdog man | man -l -`).
    Man,
    /// Attach only an empty program on the probes' hook (benchmark floor).
    #[command(hide = true)]
    BenchFloor(bench_floor::Args),
}

/// The command without its hidden subcommands (completion scripts list
/// every subcommand they are given).
fn public_command() -> clap::Command {
    let cmd = <Cli as clap::CommandFactory>::command();
    let subs: Vec<clap::Command> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .cloned()
        .collect();
    clap::Command::new("watchdog")
        .version(VERSION)
        .about(cmd.get_about().cloned().unwrap_or_default())
        .args(cmd.get_arguments().cloned())
        .subcommands(subs)
}

/// The completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut public_command(), "watchdog", &mut out);
    out
}

/// The manual page (roff), with a page section per subcommand.
pub fn man_page() -> std::io::Result<Vec<u8>> {
    let cmd = public_command();
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut out)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        // A one-shot command: the page name lives until exit.
        let name: &'static str = format!("watchdog-{}", sub.get_name()).leak();
        let sub = sub.clone().name(name);
        out.extend_from_slice(b"\n");
        clap_mangen::Man::new(sub).render(&mut out)?;
    }
    Ok(out)
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
fn print_bytes(b: &[u8]) {
    use std::io::Write as _;
    let _ = std::io::stdout().lock().write_all(b);
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
        // Erases the status line of `trace` first when it shares the terminal.
        .with_writer(crate::sinks::terminal::LogWriter::new())
        // Colours only on a terminal: no escape codes in a file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match crate::paths::host::resolve(cli.host_root.as_deref(), std::env::var_os("HOST_ROOT")) {
        Ok(root) => crate::paths::host::set(root),
        Err(e) => {
            eprintln!("watchdog: {e}");
            return ExitCode::from(2);
        }
    }
    let result = match cli.cmd {
        Command::Trace(a) => trace::run(a),
        Command::Check(a) => check::run(a),
        Command::Run(a) => run::run(a),
        Command::Replay(a) => replay::run(a),
        Command::Bundle(a) => bundle::run(a),
        Command::BenchFloor(a) => bench_floor::run(a),
        Command::Completions { shell } => {
            print_bytes(&completions(shell));
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => man_page()
            .map(|b| {
                print_bytes(&b);
                ExitCode::SUCCESS
            })
            .map_err(anyhow::Error::from),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("watchdog: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        // clap's own checks (unique names and groups...), which otherwise
        // fire only when a debug build parses that subcommand.
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn version_names_the_revision_and_target() {
        assert!(super::VERSION.starts_with(env!("CARGO_PKG_VERSION")));
        assert!(super::VERSION.contains("(git "), "{}", super::VERSION);
    }

    #[test]
    fn completions_and_man_page_cover_the_subcommands_and_flags() {
        let bash = String::from_utf8(super::completions(clap_complete::Shell::Bash)).unwrap();
        for w in [
            "trace",
            "run",
            "check",
            "replay",
            "--remediation",
            "--allow-actions",
        ] {
            assert!(bash.contains(w), "bash completion lacks {w}");
        }
        assert!(!bash.contains("bench-floor"), "hidden subcommand completed");
        let man = String::from_utf8(super::man_page().unwrap()).unwrap();
        assert!(
            man.contains(".TH watchdog"),
            "{}",
            &man[..200.min(man.len())]
        );
        assert!(man.contains("watchdog\\-trace") || man.contains("watchdog-trace"));
        assert!(man.contains("remediation"));
    }
}
