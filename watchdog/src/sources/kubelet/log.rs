//! kubelet's log: parse the lines that matter for PLEG (and the runtime and
//! fork failures that cause it), and follow a log file without spawning a
//! process.
//!
//! Lines are klog (`E0729 11:21:02.178079 9575 file.go:321] msg`), possibly
//! behind a syslog prefix (`Mar 22 15:23:22 host dockerd: ...`), and may be
//! structured (`"Skipping pod synchronization" err="[..., PLEG is not healthy:
//! ...]"`): the parser looks for the message text, not for a fixed layout.
//! The same parser reads the systemd journal's messages ([`super::journal`]).
use std::{
    fs::File,
    io::{Read, Seek, SeekFrom},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    model::{
        Observation, Time,
        kubelet::{KubeletLog, KubeletLogEvent, LoggedPod, PlegMessage, SourceKind, SourceState},
    },
    sources::{Call, Source, StartError, Step, Supervision},
};

/// The longest line kept; longer lines are cut and counted as unparseable.
pub const MAX_LINE: usize = 16 * 1024;
/// The most read from the file per poll (a log flood must not become a CPU
/// storm; the rest is read on the next polls).
pub const MAX_READ_PER_POLL: usize = 1024 * 1024;

/// Parses a Go `time.Duration` string (`3m57.138893648s`, `3m0s`, `1h2m`,
/// `250ms`, `1.5µs`) into seconds.
pub fn parse_go_duration(s: &str) -> Option<f64> {
    let s = s.trim();
    if s == "0" {
        return Some(0.0);
    }
    if s.is_empty() {
        return None;
    }
    let mut total = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let value: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[unit_end..];
    }
    Some(total)
}

/// The duration token at the start of `s` (Go duration characters), without
/// a sentence's final period.
fn duration_token(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || "._hmsunµμ".contains(c)))
        .unwrap_or(s.len());
    s[..end].trim_end_matches('.')
}

/// `PLEG is not healthy: pleg was last seen active 3m57.1s ago; threshold is
/// 3m0s` anywhere in `text` (log line or node condition message).
pub fn parse_pleg_message(text: &str) -> Option<PlegMessage> {
    const SEEN: &str = "pleg was last seen active ";
    const THRESHOLD: &str = "threshold is ";
    let i = text.find(SEEN)? + SEEN.len();
    let last_seen_s = parse_go_duration(duration_token(&text[i..]))?;
    let j = text[i..].find(THRESHOLD)? + i + THRESHOLD.len();
    let threshold_s = parse_go_duration(duration_token(&text[j..]))?;
    Some(PlegMessage {
        last_seen_s,
        threshold_s,
    })
}

/// The outcome of parsing one line.
#[derive(Clone, Debug, PartialEq)]
pub enum Parsed {
    /// A line that matters, and what it says.
    Event {
        logged: Option<String>,
        program: Option<String>,
        event: KubeletLogEvent,
    },
    /// Nothing about PLEG, the runtime or forks.
    Ignored,
    /// It mentions one of those but its details could not be read.
    Unparseable(&'static str),
}

/// Quoted strings of `s`, in order (no escapes inside kubelet's quotes here
/// except `\"`, which is kept as is).
fn quoted(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(a) = rest.find('"') {
        let after = &rest[a + 1..];
        let mut end = None;
        let b = after.as_bytes();
        let mut k = 0;
        while k < b.len() {
            if b[k] == b'\\' {
                k += 2;
                continue;
            }
            if b[k] == b'"' {
                end = Some(k);
                break;
            }
            k += 1;
        }
        let Some(e) = end else { break };
        out.push(&after[..e]);
        rest = &after[e + 1..];
    }
    out
}

fn is_hex_id(s: &str) -> bool {
    s.len() >= 12 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `name_namespace(uid)` or a bare pod name.
fn logged_pod(s: &str) -> LoggedPod {
    let (head, uid) = match s.split_once('(') {
        Some((h, rest)) => (h, rest.strip_suffix(')').map(str::to_owned)),
        None => (s, None),
    };
    // Pod names cannot contain '_' (DNS subdomain): the last '_' splits the namespace.
    match head.rsplit_once('_') {
        Some((name, ns)) if uid.is_some() => LoggedPod {
            name: name.to_owned(),
            namespace: Some(ns.to_owned()),
            uid,
        },
        _ => LoggedPod {
            name: head.to_owned(),
            namespace: None,
            uid,
        },
    }
}

/// Splits a syslog prefix (`Mar 22 15:23:22 host prog[pid]: `) off a line:
/// (stamp, program, rest).
fn split_syslog(line: &str) -> Option<(String, String, &str)> {
    let month = line.get(..3)?;
    if !month.bytes().all(|b| b.is_ascii_alphabetic()) {
        return None;
    }
    let rest = line[3..].trim_start_matches(' ');
    let (day, rest) = rest.split_once(' ')?;
    if day.is_empty() || day.len() > 2 || !day.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (clock, rest) = rest.split_once(' ')?;
    if clock.len() != 8 || clock.as_bytes()[2] != b':' || clock.as_bytes()[5] != b':' {
        return None;
    }
    let (_host, rest) = rest.split_once(' ')?;
    let (prog, rest) = rest.split_once(' ')?;
    let prog = prog.strip_suffix(':')?;
    let prog = prog.split('[').next().unwrap_or(prog);
    Some((format!("{month} {day} {clock}"), prog.to_owned(), rest))
}

/// Splits a klog header (`E0729 11:21:02.178079 9575 file.go:321] `) off a
/// message: (stamp, rest).
fn split_klog(msg: &str) -> Option<(String, &str)> {
    let b = msg.as_bytes();
    if b.len() < 6
        || !matches!(b[0], b'I' | b'W' | b'E' | b'F')
        || !b[1..5].iter().all(u8::is_ascii_digit)
        || b[5] != b' '
    {
        return None;
    }
    let close = msg.find("] ")?;
    let mut f = msg[1..close].split_whitespace();
    let stamp = format!("{} {}", f.next()?, f.next()?);
    Some((stamp, &msg[close + 2..]))
}

/// (stamp, program, message) of a line; the klog stamp wins over syslog's
/// (it has microseconds).
fn split_headers(line: &str) -> (Option<String>, Option<String>, &str) {
    let (mut logged, program, msg) = match split_syslog(line) {
        Some((stamp, prog, rest)) => (Some(stamp), Some(prog), rest),
        None => (None, None, line),
    };
    match split_klog(msg) {
        Some((stamp, rest)) => {
            logged = Some(stamp);
            (logged, program, rest)
        }
        None => (logged, program, msg),
    }
}

/// Parses one log line.
pub fn parse_line(line: &str) -> Parsed {
    let (logged, program, msg) = split_headers(line.trim_end());
    let ev = |event| Parsed::Event {
        logged: logged.clone(),
        program: program.clone(),
        event,
    };
    if msg.contains("PLEG is not healthy") {
        return match parse_pleg_message(msg) {
            Some(p) => ev(KubeletLogEvent::PlegUnhealthy {
                last_seen_s: p.last_seen_s,
                threshold_s: p.threshold_s,
            }),
            None => Parsed::Unparseable("PLEG line without a readable last-seen and threshold"),
        };
    }
    if let Some(k) = msg.find("KillContainerError") {
        // ...pod "<pod>": failed to "KillContainer" for "<c>" with KillContainerError: "<err>"
        let q = quoted(msg);
        let container = msg[..k]
            .rfind(" for \"")
            .and_then(|i| quoted(&msg[i..k]).first().map(|s| (*s).to_owned()));
        let error = quoted(&msg[k..]).first().map(|s| (*s).to_owned());
        let pod = q
            .first()
            .filter(|p| **p != "KillContainer")
            .map(|p| logged_pod(p));
        return match (container, error) {
            (Some(container), Some(error)) => ev(KubeletLogEvent::KillContainerError {
                pod,
                container,
                error,
            }),
            _ => Parsed::Unparseable("KillContainerError line without a container or error"),
        };
    }
    if msg.contains("DeadlineExceeded") {
        let operation = msg
            .split(|c: char| c.is_whitespace() || c == '"' || c == ':')
            .find(|w| !w.is_empty())
            .unwrap_or("")
            .to_owned();
        let q = quoted(msg);
        let container_id = q.iter().find(|s| is_hex_id(s)).map(|s| (*s).to_owned());
        let pod = msg
            .find("for pod \"")
            .and_then(|i| quoted(&msg[i..]).first().map(|p| logged_pod(p)));
        if operation.is_empty() {
            return Parsed::Unparseable("DeadlineExceeded line without an operation");
        }
        return ev(KubeletLogEvent::RuntimeDeadline {
            operation,
            container_id,
            pod,
        });
    }
    let lower_eagain = msg.contains("resource temporarily unavailable")
        || msg.contains("Resource temporarily unavailable");
    if lower_eagain {
        if let Some(i) = msg.find("fork/exec ") {
            let rest = &msg[i + "fork/exec ".len()..];
            let binary = rest.split(':').next().unwrap_or("").trim();
            return if binary.is_empty() {
                Parsed::Unparseable("fork/exec line without a binary")
            } else {
                ev(KubeletLogEvent::ForkEagain {
                    binary: Some(binary.to_owned()),
                })
            };
        }
        if let Some(i) = msg.find("fork of ") {
            let rest = &msg[i + "fork of ".len()..];
            let binary = rest
                .strip_prefix('\'')
                .and_then(|r| r.split('\'').next())
                .and_then(|cmd| cmd.split_whitespace().next())
                .map(str::to_owned);
            return ev(KubeletLogEvent::ForkEagain { binary });
        }
        return Parsed::Ignored;
    }
    if let Some(i) = msg.find("Cannot connect to the Docker daemon at ") {
        let rest = &msg[i + "Cannot connect to the Docker daemon at ".len()..];
        let endpoint = rest
            .split(|c: char| c.is_whitespace())
            .next()
            .unwrap_or("")
            .trim_end_matches('.');
        return if endpoint.is_empty() {
            Parsed::Unparseable("Docker connect error without an endpoint")
        } else {
            ev(KubeletLogEvent::RuntimeUnreachable {
                endpoint: endpoint.to_owned(),
            })
        };
    }
    Parsed::Ignored
}

/// Counters of the follower, reported in its status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogCounters {
    pub lines: u64,
    pub events: u64,
    pub unparseable: u64,
    /// Lines longer than [`MAX_LINE`] (cut).
    pub too_long: u64,
    pub rotations: u64,
}

/// Follows a log file by polling: reads what was appended since the last poll,
/// reopens it when it is rotated (new inode) or truncated. Plain reads of a
/// regular file; it starts at the file's end.
pub struct Follower {
    path: PathBuf,
    file: Option<(File, u64)>,
    pos: u64,
    partial: Vec<u8>,
    /// The partial line went beyond MAX_LINE (the rest is dropped).
    partial_cut: bool,
    pub counters: LogCounters,
    /// The last unparseable line and why (for the status message).
    pub last_unparseable: Option<(String, &'static str)>,
}

impl Follower {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            file: None,
            pos: 0,
            partial: Vec::new(),
            partial_cut: false,
            counters: LogCounters::default(),
            last_unparseable: None,
        }
    }

    /// Opens the file if needed (at its end the first time, at its start after
    /// a rotation). Err: the file cannot be opened.
    fn ensure_open(&mut self) -> std::io::Result<()> {
        let meta = std::fs::metadata(&self.path)?;
        match &self.file {
            Some((_, ino)) if *ino == meta.ino() && meta.len() >= self.pos => Ok(()),
            prev => {
                let rotated = prev.is_some();
                let mut f = File::open(&self.path)?;
                let ino = f.metadata()?.ino();
                self.pos = if rotated {
                    self.counters.rotations += 1;
                    0
                } else {
                    f.seek(SeekFrom::End(0))?
                };
                f.seek(SeekFrom::Start(self.pos))?;
                self.partial.clear();
                self.partial_cut = false;
                self.file = Some((f, ino));
                Ok(())
            }
        }
    }

    /// Reads new complete lines (at most [`MAX_READ_PER_POLL`] bytes) and
    /// parses them; returns the events.
    pub fn poll(&mut self, now: Time) -> std::io::Result<Vec<KubeletLog>> {
        self.ensure_open()?;
        let Some((f, _)) = &mut self.file else {
            return Ok(Vec::new());
        };
        let mut buf = Vec::new();
        let n = f.take(MAX_READ_PER_POLL as u64).read_to_end(&mut buf)?;
        self.pos += n as u64;
        Ok(self.feed(&buf, now))
    }

    /// Splits `bytes` into lines (keeping an incomplete last line for later)
    /// and parses them.
    pub fn feed(&mut self, bytes: &[u8], now: Time) -> Vec<KubeletLog> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let mut line = std::mem::take(&mut self.partial);
            line.extend_from_slice(&rest[..nl]);
            let cut = std::mem::take(&mut self.partial_cut) || line.len() > MAX_LINE;
            rest = &rest[nl + 1..];
            self.line(&line, cut, now, &mut out);
        }
        let room = MAX_LINE.saturating_sub(self.partial.len());
        self.partial
            .extend_from_slice(&rest[..rest.len().min(room)]);
        if rest.len() > room {
            // The line goes on beyond MAX_LINE: what fits is kept, counted at its end.
            self.partial_cut = true;
        }
        out
    }

    fn line(&mut self, raw: &[u8], cut: bool, now: Time, out: &mut Vec<KubeletLog>) {
        self.counters.lines += 1;
        let raw = &raw[..raw.len().min(MAX_LINE)];
        let text = String::from_utf8_lossy(raw);
        if cut {
            self.counters.too_long += 1;
        }
        match parse_line(&text) {
            Parsed::Event {
                logged,
                program,
                event,
            } => {
                self.counters.events += 1;
                out.push(KubeletLog {
                    at: now,
                    logged,
                    program,
                    event,
                });
            }
            Parsed::Ignored => {}
            Parsed::Unparseable(why) => {
                self.counters.unparseable += 1;
                let mut shown: String = text.chars().take(200).collect();
                if shown.len() < text.len() {
                    shown.push('…');
                }
                self.last_unparseable = Some((shown, why));
            }
        }
    }
}

/// How often the file is polled.
pub const POLL: Duration = Duration::from_millis(500);

/// How often new unparseable lines are re-reported.
const UNPARSEABLE_REPORT_EVERY: Duration = Duration::from_secs(60);

/// kubelet's log file as a supervised source (`None`: reported as disabled).
pub struct LogSource {
    path: Option<PathBuf>,
    reported_unparseable: u64,
    last_report: tokio::time::Instant,
}

impl LogSource {
    pub fn new(path: Option<PathBuf>) -> Self {
        Self {
            path,
            reported_unparseable: 0,
            last_report: tokio::time::Instant::now() - UNPARSEABLE_REPORT_EVERY,
        }
    }
}

impl Source for LogSource {
    type Client = Follower;

    fn supervision(&self) -> Supervision {
        Supervision {
            kind: SourceKind::KubeletLog,
            target: self
                .path
                .as_ref()
                .map_or("journal".into(), |p| p.display().to_string()),
            // A plain read of a regular file: synchronous, nothing to cut.
            deadline: None,
            interval: POLL,
            max_backoff: Duration::from_secs(30),
        }
    }

    async fn start(&mut self) -> Result<Follower, StartError> {
        match &self.path {
            Some(path) => Ok(Follower::new(path)),
            None => Err(StartError::Disabled(format!(
                "kubelet's log is not read: no --kubelet-log file given and no journal directory \
                 ({}); give --kubelet-log FILE or --journal-dir DIR",
                super::journal::JOURNAL_DIRS.join(", ")
            ))),
        }
    }

    async fn call(&mut self, follower: &mut Follower) -> Call {
        let events = match follower.poll(Time::now()) {
            Ok(events) => events,
            Err(e) => return Call::Failed(format!("cannot read: {e}")),
        };
        let mut step = Step::available("following");
        step.observations = events.into_iter().map(Observation::KubeletLog).collect();
        let c = &follower.counters;
        if c.unparseable > self.reported_unparseable
            && self.last_report.elapsed() >= UNPARSEABLE_REPORT_EVERY
        {
            self.reported_unparseable = c.unparseable;
            self.last_report = tokio::time::Instant::now();
            let (line, why) = follower.last_unparseable.clone().unwrap_or_default();
            step.news = Some((
                SourceState::Available,
                format!(
                    "{} of {} lines unparseable (skipped); last: {why}: {line}",
                    c.unparseable, c.lines
                ),
            ));
        }
        Call::Answered(step)
    }
}

#[cfg(test)]
#[path = "log_tests.rs"]
mod tests;
