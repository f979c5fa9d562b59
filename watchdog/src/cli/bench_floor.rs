//! `watchdog bench-floor` (hidden): attach only an empty program on the
//! probes' sys_exit hook and wait for SIGINT/SIGTERM. Benchmarks compare the
//! agent against this to separate the kernel's fixed cost of any syscall hook
//! from the probes' own work. `--enter` adds sys_enter; `--sock` attaches
//! empty programs on the socket tracepoints instead.
use std::process::ExitCode;

use tokio::signal::unix::{SignalKind, signal};

use crate::probes::{
    BENCH_FLOOR, BENCH_FLOOR_ENTER, BENCH_FLOOR_SOCK, KernelLayout, ProbeState, Probes,
};

#[derive(clap::Args)]
pub struct Args {
    /// Also attach an empty sys_enter program (the floor of the storage
    /// probes' syscall tracking, which hooks both).
    #[arg(long)]
    enter: bool,
    /// Attach only empty programs on the socket tracepoints
    /// (`sock_send_length`/`sock_recv_length`), the floor of the default
    /// D-Bus request tracking, and nothing on sys_exit.
    #[arg(long, conflicts_with = "enter")]
    sock: bool,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let wanted: &[_] = if a.sock {
        &BENCH_FLOOR_SOCK
    } else if a.enter {
        &[BENCH_FLOOR, BENCH_FLOOR_ENTER]
    } else {
        &[BENCH_FLOOR]
    };
    let probes = Probes::load(&KernelLayout::default(), wanted, &[])?;
    if probes
        .statuses
        .iter()
        .any(|s| s.status != ProbeState::Attached)
    {
        anyhow::bail!("could not attach the empty program: {:?}", probes.statuses);
    }
    println!(
        "{}",
        serde_json::json!({"type": "ready", "probes": probes.statuses})
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        anyhow::Ok(())
    })?;
    drop(probes);
    Ok(ExitCode::SUCCESS)
}
