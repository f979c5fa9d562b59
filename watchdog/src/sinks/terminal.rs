//! Human-readable output for a person running `watchdog trace` in a terminal.
use super::status::StatusSnapshot;
use super::{Record, Sink};
use crate::model::finding::{Detail, Finding, FindingStatus, WarningStatus};
use crate::model::kubelet::SourceState;
use crate::probes::ProbeState;

pub struct Terminal<W: std::io::Write> {
    out: W,
    /// The live status line, on a terminal only.
    live: Option<LiveLine>,
}

/// The status line at the bottom of a terminal: erased before each record
/// and drawn again after it; erased for good before the summary.
struct LiveLine {
    /// The terminal's width now (it can be resized).
    columns: fn() -> usize,
    last: Option<StatusSnapshot>,
    /// The line is on the screen (the cursor stands at its end).
    shown: bool,
    /// The summary is out: no more status.
    ended: bool,
}

/// Back to the start of the line, and clear it.
pub const ERASE: &[u8] = b"\r\x1b[2K";

/// A status line is on the screen now: the log writer (`--log`, on stderr)
/// erases it before a log line when stderr is a terminal too, so the line
/// does not end up after the status text; the next tick draws it again.
pub static STATUS_ON_SCREEN: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

impl<W: std::io::Write> Terminal<W> {
    pub fn new(out: W) -> Self {
        Self { out, live: None }
    }

    /// With the live status line at the bottom, `columns()` wide. Only for
    /// a terminal (see [`status_line_wanted`]): it writes carriage returns
    /// and escape sequences.
    pub fn with_status_line(mut self, columns: fn() -> usize) -> Self {
        self.live = Some(LiveLine {
            columns,
            last: None,
            shown: false,
            ended: false,
        });
        self
    }

    /// The status line as `buf` ends: drawn (a carriage return and the
    /// line, no line break), unless there is none to draw.
    fn draw(live: &mut LiveLine, buf: &mut Vec<u8>) {
        if live.ended {
            return;
        }
        let Some(s) = &live.last else {
            return;
        };
        // One column spare: a line filling the last column would leave
        // some terminals wrapped to the next line.
        let line = super::status::render_status(s, (live.columns)().saturating_sub(1));
        buf.extend_from_slice(ERASE);
        buf.extend_from_slice(line.as_bytes());
        live.shown = true;
        STATUS_ON_SCREEN.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Whether `watchdog trace` draws its status line: stdout is a terminal, and
/// not a dumb one.
pub fn status_line_wanted() -> bool {
    use std::io::IsTerminal as _;
    std::io::stdout().is_terminal() && std::env::var_os("TERM").is_none_or(|t| t != "dumb")
}

/// Columns of the terminal on stdout (TIOCGWINSZ), else 80.
pub fn stdout_columns() -> usize {
    // SAFETY: TIOCGWINSZ writes one winsize into `ws`; a failed call leaves
    // it zeroed.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 {
        usize::from(ws.ws_col)
    } else {
        80
    }
}

impl<W: std::io::Write> Drop for Terminal<W> {
    /// A session that ends without its summary (an error) leaves no status
    /// line behind either.
    fn drop(&mut self) {
        if let Some(live) = self.live.as_mut()
            && live.shown
        {
            live.shown = false;
            STATUS_ON_SCREEN.store(false, std::sync::atomic::Ordering::Relaxed);
            let _ = self.out.write_all(ERASE).and_then(|()| self.out.flush());
        }
    }
}

/// stderr for the log lines (`--log`): when a status line is on the same
/// terminal, it is erased first (one write per log line, as tracing's
/// formatter writes).
pub struct LogWriter {
    stderr_is_terminal: bool,
}

impl LogWriter {
    pub fn new() -> Self {
        use std::io::IsTerminal as _;
        Self {
            stderr_is_terminal: std::io::stderr().is_terminal(),
        }
    }
}

impl Default for LogWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine {
            erase: self.stderr_is_terminal,
        }
    }
}

pub struct LogLine {
    /// Still to check for a status line before the first byte.
    erase: bool,
}

impl std::io::Write for LogLine {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let mut err = std::io::stderr().lock();
        if std::mem::take(&mut self.erase)
            && STATUS_ON_SCREEN.swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            err.write_all(ERASE)?;
        }
        err.write(b)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

pub fn render_finding(f: &Finding) -> String {
    let mut s = String::new();
    let tag = match f.status {
        FindingStatus::Active => "FINDING",
        FindingStatus::Update => "UPDATE ",
        FindingStatus::Resolved => "RESOLVED",
    };
    s.push_str(&format!(
        "[{}] {tag} {:?} {}: {}\n",
        f.last_seen.hms(),
        f.confidence,
        cause_name(f),
        f.summary
    ));
    if f.status != FindingStatus::Resolved {
        match &f.detail {
            Detail::Pid(d) => render_pid(&mut s, d),
            Detail::Storage(d) => s.push_str(&super::storage::render_detail(d)),
            Detail::Systemd(d) => s.push_str(&super::systemd::render_detail(d)),
            Detail::Runtime(d) => {
                for h in &d.hung {
                    s.push_str(&format!(
                        "    hung call:     {} {} for {:.0} s\n",
                        h.call,
                        h.container_name
                            .as_deref()
                            .or(h.container_id.as_deref())
                            .unwrap_or("(all containers)"),
                        h.elapsed_ms as f64 / 1000.0
                    ));
                }
                for e in &d.kubelet_errors {
                    s.push_str(&format!("    kubelet:       {e}\n"));
                }
            }
        }
        if let Some(p) = &f.pleg {
            s.push_str(&format!("    PLEG:          {}\n", p.message));
        }
        if !f.concurrent.is_empty() {
            s.push_str(&format!(
                "    also active:   {}\n",
                f.concurrent
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        for e in &f.evidence {
            s.push_str(&format!("    evidence:      [{}] {}\n", e.at.hms(), e.what));
        }
        s.push_str(&format!("    remedy:        {}\n", f.remedy.text));
    }
    s
}

fn render_pid(s: &mut String, d: &crate::model::finding::pid::PidDetail) {
    {
        if !d.processes.is_empty() {
            let p: Vec<String> = d
                .processes
                .iter()
                .map(|p| format!("{}[{}] uid {} x{}", p.comm, p.pid, p.uid, p.failures))
                .collect();
            s.push_str(&format!("    failing:       {}\n", p.join(", ")));
        }
        if let Some(pod) = &d.pod {
            s.push_str(&format!("    pod:           {}\n", pod.describe()));
        }
        if !d.top_consumers.is_empty() {
            let c: Vec<String> = d
                .top_consumers
                .iter()
                .map(|c| format!("{}[{}] {} tasks", c.comm, c.pid, c.threads))
                .collect();
            s.push_str(&format!("    top holders:   {}\n", c.join(", ")));
        }
        let mut lim = Vec::new();
        for c in &d.limits.pids_cgroups {
            lim.push(format!(
                "pids {} {}/{} ({}%)",
                c.cgroup, c.usage.current, c.usage.max, c.usage.percent
            ));
        }
        if let Some(u) = &d.limits.rlimit_nproc {
            lim.push(format!(
                "RLIMIT_NPROC {}/{} ({}%)",
                u.current, u.max, u.percent
            ));
        }
        if let Some(u) = &d.limits.threads_max {
            lim.push(format!(
                "threads-max {}/{} ({}%)",
                u.current, u.max, u.percent
            ));
        }
        if let Some(u) = &d.limits.pid_max {
            lim.push(format!("pid_max {}/{} ({}%)", u.current, u.max, u.percent));
        }
        if !lim.is_empty() {
            s.push_str(&format!("    limits:        {}\n", lim.join("; ")));
        }
    }
}

fn cause_name(f: &Finding) -> String {
    match &f.detail {
        Detail::Pid(d) => format!("pid_exhaustion/{}", d.limit.name()),
        Detail::Storage(d) => format!("storage_hang/{:?}", d.wait).to_lowercase(),
        Detail::Systemd(d) => format!("systemd_hang/{}", d.stuck.name()),
        _ => f.cause.name().to_owned(),
    }
}

impl<W: std::io::Write> Sink for Terminal<W> {
    fn emit(&mut self, record: &Record) {
        let text = match record {
            Record::Ready(r) => {
                let mut s = format!("watchdog {} on kernel {}: tracing", r.version, r.kernel);
                if let Some(h) = &r.pids_hierarchy {
                    s.push_str(&format!(" (pids cgroups at {h})"));
                }
                s.push('\n');
                for p in &r.probes {
                    let state = match p.status {
                        ProbeState::Attached => "attached",
                        ProbeState::Standby => "standby (attaches under PID pressure)",
                        ProbeState::Unavailable => "UNAVAILABLE",
                    };
                    s.push_str(&format!("  probe {:<14} {:<16} {state}", p.name, p.hook));
                    if let Some(d) = &p.detail {
                        s.push_str(&format!(" ({d})"));
                    }
                    s.push('\n');
                }
                for p in &r.probe_paths {
                    s.push_str(&format!("  {} via {}: {}\n", p.part, p.path, p.detail));
                }
                for o in &r.outputs {
                    s.push_str(&format!("  output {o}\n"));
                }
                if let Some(p) = &r.recording {
                    s.push_str(&format!("  recording engine inputs to {p}\n"));
                }
                match &r.systemd_sockets {
                    Some(v) => s.push_str(&format!(
                        "  following D-Bus/systemd connections to {}\n",
                        v.join(", ")
                    )),
                    None => s.push_str("  D-Bus/systemd connections are NOT followed\n"),
                }
                s.push_str("  Ctrl-C ends the session with a summary.\n");
                s
            }
            Record::Probe(p) => {
                let state = format!("{:?}", p.status).to_lowercase();
                format!("[{}] probe {} {state}: {}\n", p.at.hms(), p.name, p.reason)
            }
            Record::Finding(f) => {
                let mut s = render_finding(f);
                if let Some(b) = &f.bundle {
                    s.push_str(&format!("    bundle:        {}\n", b.describe()));
                }
                s
            }
            Record::Warning(w) => {
                let tag = if w.status == WarningStatus::Raised {
                    "WARNING"
                } else {
                    "CLEARED"
                };
                format!("[{}] {tag} {}\n", w.at.hms(), w.message)
            }
            Record::Replay(r) => format!(
                "replaying {} ({} inputs recorded by watchdog {} on {} kernel {}, from {}){}\n",
                r.file,
                r.inputs,
                r.recorded_by,
                r.node.as_deref().unwrap_or("an unnamed node"),
                r.kernel,
                r.started.rfc3339(),
                if r.truncated_tail {
                    "; its truncated last line was skipped"
                } else {
                    ""
                }
            ),
            Record::Pleg(p) => super::pleg_line(p),
            // In the JSON and the bundles; the finding quotes the probe.
            Record::BusProbe(_) => return,
            Record::Bundle(b) => {
                use crate::bundle::auto::BundleStatus;
                match (b.status, &b.path) {
                    (BundleStatus::Written, Some(path)) => format!(
                        "[{}] bundle  {path} ({:.1} KiB; {}; {} ms) for {}{}\n",
                        b.at.hms(),
                        b.size.unwrap_or(0) as f64 / 1024.0,
                        b.reason,
                        b.took_ms,
                        b.finding,
                        if b.deleted.is_empty() {
                            String::new()
                        } else {
                            format!("; deleted the oldest: {}", b.deleted.join(", "))
                        }
                    ),
                    (BundleStatus::Failed, _) => format!(
                        "[{}] bundle  FAILED for {}: {}\n",
                        b.at.hms(),
                        b.finding,
                        b.reason
                    ),
                    _ => format!(
                        "[{}] bundle  none for {}: {}\n",
                        b.at.hms(),
                        b.finding,
                        b.reason
                    ),
                }
            }
            Record::Remediation(r) => format!(
                "[{}] REMEDY  {} {} {}: {} [{}; {}]\n",
                r.at.hms(),
                r.action.name(),
                r.status.name().to_uppercase(),
                r.finding,
                r.reason,
                r.mode.name(),
                r.budget
            ),
            Record::Source(s) => format!(
                "[{}] source  {} {}: {}: {}\n",
                s.at.hms(),
                s.source.name(),
                s.target,
                match s.state {
                    SourceState::Available => "available",
                    SourceState::Unavailable => "UNAVAILABLE",
                    SourceState::Disabled => "disabled",
                },
                s.message
            ),
            Record::Summary(s) => {
                let mut t = format!(
                    "\nsummary: {:.1} s, {} kernel events, {} findings, {} warnings; drops: kernel {}, userspace {}, undecodable {}\n",
                    s.duration_s,
                    s.events,
                    s.findings,
                    s.warnings,
                    s.drops.kernel,
                    s.drops.userspace,
                    s.drops.decode_errors
                );
                if s.active.is_empty() {
                    t.push_str("no active findings\n");
                } else {
                    t.push_str("active findings:\n");
                    for f in &s.active {
                        t.push_str(&render_finding(f));
                    }
                }
                t
            }
        };
        let text = escape_controls(&text);
        let Some(live) = self.live.as_mut() else {
            let _ = self
                .out
                .write_all(text.as_bytes())
                .and_then(|()| self.out.flush());
            return;
        };
        // One write: erase the status line, the record, the line again.
        let mut buf = Vec::with_capacity(text.len() + 256);
        if live.shown {
            buf.extend_from_slice(ERASE);
            live.shown = false;
            STATUS_ON_SCREEN.store(false, std::sync::atomic::Ordering::Relaxed);
        }
        buf.extend_from_slice(text.as_bytes());
        if matches!(record, Record::Summary(_)) {
            live.ended = true;
        }
        Self::draw(live, &mut buf);
        let _ = self.out.write_all(&buf).and_then(|()| self.out.flush());
    }

    fn wants_status(&self) -> bool {
        self.live.as_ref().is_some_and(|l| !l.ended)
    }

    fn status(&mut self, status: &StatusSnapshot) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        live.last = Some(status.clone());
        let mut buf = Vec::new();
        Self::draw(live, &mut buf);
        if !buf.is_empty() {
            let _ = self.out.write_all(&buf).and_then(|()| self.out.flush());
        }
    }
}

/// Names chosen by processes and mounts (comm, paths, cgroups) reach the
/// text: control characters other than the line breaks (an escape sequence
/// could repaint or retitle the operator's terminal) and bidirectional
/// overrides (which reorder what is shown) are printed escaped. JSON keeps
/// them exact.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| {
        (c.is_control() && c != '\n')
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(bad) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if bad(c) {
            if (c as u32) < 0x100 {
                out.push_str(&format!("\\x{:02x}", c as u32));
            } else {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod escape_tests {
    use super::escape_controls;

    #[test]
    fn control_characters_and_bidi_overrides_are_shown_escaped() {
        assert_eq!(escape_controls("plain\nlines"), "plain\nlines");
        assert_eq!(
            escape_controls("comm \u{1b}]0;pwned\u{7}\u{1b}[2J x"),
            "comm \\x1b]0;pwned\\x07\\x1b[2J x"
        );
        assert_eq!(escape_controls("a\tb\rc"), "a\\x09b\\x0dc");
        assert_eq!(
            escape_controls("/mnt/\u{202e}txt.exe"),
            "/mnt/\\u{202e}txt.exe"
        );
        assert_eq!(escape_controls("caf\u{e9} \u{9b}"), "caf\u{e9} \\x9b");
    }
}

#[cfg(test)]
mod status_line_tests {
    use std::time::Duration;

    use super::Terminal;
    use crate::model::Time;
    use crate::probes::ProbeState;
    use crate::sinks::status::StatusSnapshot;
    use crate::sinks::{Drops, ProbeChange, Record, Sink, Summary};

    fn probe() -> Record {
        Record::Probe(ProbeChange {
            at: Time::from_millis(0),
            name: "fork_failures",
            status: ProbeState::Attached,
            reason: "uid 0 at 90/100 of its RLIMIT_NPROC".into(),
        })
    }

    fn summary() -> Record {
        Record::Summary(Summary {
            at: Time::from_millis(4_000),
            duration_s: 4.0,
            events: 3,
            findings: 0,
            warnings: 0,
            drops: Drops::default(),
            recorded: None,
            active: Vec::new(),
        })
    }

    fn snapshot(secs: u64) -> StatusSnapshot {
        StatusSnapshot {
            elapsed: Duration::from_secs(secs),
            probes_attached: 6,
            probes_wanted: 6,
            ..StatusSnapshot::default()
        }
    }

    fn text(r: &Record) -> String {
        let mut out = Vec::new();
        Terminal::new(&mut out).emit(r);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn without_the_status_line_records_are_written_as_they_are() {
        let mut out = Vec::new();
        {
            let mut t = Terminal::new(&mut out);
            assert!(!t.wants_status());
            t.status(&snapshot(1));
            t.emit(&probe());
            t.emit(&summary());
        }
        let out = String::from_utf8(out).unwrap();
        assert_eq!(out, format!("{}{}", text(&probe()), text(&summary())));
        assert!(!out.contains('\r') && !out.contains('\x1b'), "{out:?}");
    }

    #[test]
    fn the_status_line_is_erased_around_records_and_gone_after_the_summary() {
        let mut out = Vec::new();
        {
            let mut t = Terminal::new(&mut out).with_status_line(|| 61);
            assert!(t.wants_status());
            // Nothing to draw before the first snapshot.
            t.emit(&probe());
            t.status(&snapshot(1));
            t.status(&snapshot(2));
            t.emit(&probe());
            t.emit(&summary());
            assert!(!t.wants_status());
            t.status(&snapshot(3));
        }
        let line = |s| format!("\r\x1b[2Kwatchdog 0:0{s} · probes 6/6 · limits n/a");
        let want = [
            text(&probe()),
            line(1),
            line(2),
            // Erased, the record, drawn again.
            "\r\x1b[2K".into(),
            text(&probe()),
            line(2),
            // Erased for good: the summary stays on a clean screen.
            "\r\x1b[2K".into(),
            text(&summary()),
        ]
        .concat();
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }

    #[test]
    fn a_session_ending_without_its_summary_leaves_no_status_line() {
        let mut out = Vec::new();
        {
            let mut t = Terminal::new(&mut out).with_status_line(|| 80);
            t.status(&snapshot(5));
        }
        let out = String::from_utf8(out).unwrap();
        assert!(out.ends_with("limits n/a\r\x1b[2K"), "{out:?}");
    }

    #[test]
    fn the_status_line_keeps_one_column_spare() {
        let mut out = Vec::new();
        {
            let mut t = Terminal::new(&mut out).with_status_line(|| 20);
            t.status(&snapshot(5));
            t.emit(&summary());
        }
        let out = String::from_utf8(out).unwrap();
        let drawn = out.split("\r\x1b[2K").nth(1).unwrap();
        assert_eq!(drawn, "0:05 · limits n/a");
        assert!(drawn.chars().count() <= 19);
    }
}
