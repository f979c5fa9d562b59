//! `watchdog bundle`: a tracing session, then its kernel evidence in one
//! tar.gz for a bug report (see [`crate::bundle`]).
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::agent;
use crate::bundle::{Capture, Named, SessionRecords, Window};
use crate::context::procfs::ProcReader;
use crate::model::Time;
use crate::sinks::{Record, Sink, json::JsonLines};

use super::trace;

#[derive(clap::Args)]
pub struct BundleArgs {
    /// Where to write the bundle (default: `watchdog-<node>-<UTC time>.tar.gz`
    /// in the current directory). Created readable by root only.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Opt-in: at the end of the session, SIGUSR1 to the containerd
    /// serving the runtime endpoint (--runtime-endpoint, else detected) and
    /// its goroutine dump in `runtime/containerd-goroutines.txt` (at most
    /// once per 10 min per containerd process).
    #[arg(long)]
    containerd_goroutines: bool,
    /// Opt-in: `w` written to /proc/sysrq-trigger (the kernel logs every
    /// blocked task with its stack) and that report in `kernel/sysrq-w.txt`.
    #[arg(long)]
    sysrq_w: bool,
    /// The session: every `watchdog trace` option (`--duration` defaults to
    /// 30s here; Ctrl-C ends it early and the bundle is still written).
    #[command(flatten)]
    trace: trace::Args,
}

/// The session's records, kept for the bundle while they go to the
/// terminal (or JSON) as in `trace`; the status line (a terminal only)
/// says what the bundle holds so far.
struct Tee<'a> {
    inner: &'a mut dyn Sink,
    records: SessionRecords,
    named: Named,
    /// The session's recording (its size, on the status line).
    recording: PathBuf,
}

impl Sink for Tee<'_> {
    fn emit(&mut self, record: &Record) {
        self.inner.emit(record);
        let Ok(v) = serde_json::to_value(record) else {
            return;
        };
        if let Record::Finding(_) = record {
            self.named.add_finding(&v);
        }
        self.records.keep(record, &v);
    }

    fn stats(&mut self, stats: &crate::sinks::Stats<'_>) {
        self.inner.stats(stats);
    }

    fn wants_status(&self) -> bool {
        self.inner.wants_status()
    }

    fn status(&mut self, status: &crate::sinks::status::StatusSnapshot) {
        // Our own file in our own private directory: a stat that cannot
        // hang on what is diagnosed.
        let recorded = std::fs::metadata(&self.recording)
            .map(|m| m.len())
            .unwrap_or(0);
        let mut s = status.clone();
        s.bundle = Some(crate::sinks::status::BundleProgress {
            findings: self.records.findings,
            bytes: self.records.all.len_bytes() as u64 + recorded,
        });
        self.inner.status(&s);
    }
}

pub fn run(a: BundleArgs) -> anyhow::Result<ExitCode> {
    let no_status = a.trace.no_status;
    let (mut opts, json) = trace::options(a.trace)?;
    opts.duration.get_or_insert(Duration::from_secs(30));
    let reader = ProcReader::new(&opts.root);
    let uptime_start = reader
        .read_trim(&reader.proc_path("uptime"))
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    let (node, journal_dirs, sockets) = trace::session_sources(&opts);
    let goroutines_socket = a
        .containerd_goroutines
        .then(|| trace::runtime_socket(&opts));
    // The recording goes to a new directory of our own, root only.
    let dir = trace::private_temp_dir("bundle")?;
    let recording = dir.join("recording.jsonl");
    opts.record = Some(recording.clone());
    let root = opts.root.clone();
    let start = Time::now();
    let stdout = std::io::stdout();
    let mut inner: Box<dyn Sink> = if json {
        Box::new(JsonLines::new(stdout.lock()))
    } else {
        Box::new(trace::terminal(stdout.lock(), no_status))
    };
    let mut tee = Tee {
        inner: inner.as_mut(),
        records: SessionRecords::default(),
        named: Named::default(),
        recording: recording.clone(),
    };
    let session = agent::trace(opts, &mut tee);
    let end = Time::now();
    let (records, named) = (tee.records, tee.named);
    let findings = records.findings;
    drop(inner);
    if let Err(e) = session {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }

    let stamp: String = end
        .rfc3339()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let out = a.out.unwrap_or_else(|| {
        PathBuf::from(format!(
            "watchdog-{}-{stamp}.tar.gz",
            node.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_")
        ))
    });
    // containerd is asked for its goroutines now, its dump waited for by
    // the capture (here nothing else waits on this thread).
    let goroutines = goroutines_socket.map(|socket| {
        (
            crate::bundle::optin::request_dump(&reader, &socket),
            Duration::from_secs(3),
        )
    });
    let written = crate::bundle::capture(
        Capture {
            root: &root,
            node: &node,
            trigger: "manual".into(),
            window: Window { start, end },
            records: &records,
            recording: Some(&recording),
            named: &named,
            journal_dirs: &journal_dirs,
            sockets: &sockets,
            uptime_start,
            goroutines,
            sysrq_w: a.sysrq_w,
        },
        &out,
    );
    let _ = std::fs::remove_dir_all(&dir);
    let written = written.map_err(|e| anyhow::anyhow!("the bundle could not be written: {e}"))?;
    let (size, tasks) = (written.size, written.tasks);
    eprintln!(
        "bundle: {} ({:.1} KiB; {findings} finding records, {} tasks, {} mounts, {} pids cgroups; {} files, {} listed unreadable in manifest.json)",
        out.display(),
        size as f64 / 1024.0,
        tasks,
        named.mounts.len(),
        named.cgroups.len(),
        written.files,
        written.unreadable
    );
    Ok(ExitCode::SUCCESS)
}
