//! `watchdog replay FILE`: diagnose a recording made with `--record`.
use std::{path::PathBuf, process::ExitCode};

use crate::sinks::{Sink, json::JsonLines, terminal::Terminal};

#[derive(clap::Args)]
pub struct Args {
    /// A file written by `watchdog trace --record FILE` or `watchdog run --record FILE`,
    /// or a bundle (`watchdog bundle`), read without extracting it.
    file: PathBuf,
    /// Write one JSON object per line (each with a "type") instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut sink: Box<dyn Sink> = if a.json {
        Box::new(JsonLines::new(stdout.lock()))
    } else {
        Box::new(Terminal::new(stdout.lock()))
    };
    crate::replay::replay(&a.file, sink.as_mut())?;
    Ok(ExitCode::SUCCESS)
}
