//! kubelet's (and the runtimes') entries in the systemd journal, followed
//! without forking `journalctl`: `sdjournal` (pure Rust: reads the journal
//! files directly, zstd/lz4 compressed, follows appends and rotation through
//! inotify) on the journal directory (`/var/log/journal`, `/run/log/journal`,
//! or the host's, mounted into a DaemonSet).
//!
//! The reader's engine runs on a thread of its own (its `poll(2)` blocks up
//! to [`POLL`]); entries reach the agent through a bounded queue (64). The
//! agent drains it every [`super::log::POLL`] and parses each `MESSAGE` like
//! a log line (the klog header kubelet writes is in the message). Only new
//! entries are read: from the tail at start, and after a reader failure from
//! just after the last entry seen, so that nothing is lost or read twice.
//! Files that appear corrupt are skipped by the reader when it opens the
//! directory; a reader that stops (all files vacuumed, a corrupt file in the
//! way) is opened again at the next poll.
use std::{
    path::PathBuf,
    sync::mpsc::TryRecvError,
    time::{Duration, UNIX_EPOCH},
};

use sdjournal::{Journal, JournalConfig, LiveJournal, LiveSubscription, SubscriptionOptions};

use super::log::{Parsed, parse_line};
use crate::{
    model::{
        Observation, Time,
        kubelet::{KubeletLog, SourceKind, SourceState},
    },
    sources::{Call, Source, StartError, Step, Supervision},
};

/// Where journald keeps its files: persistent first, then volatile.
pub const JOURNAL_DIRS: &[&str] = &["/var/log/journal", "/run/log/journal"];

/// The units followed: kubelet, and the runtimes whose errors kubelet's
/// problems come from (`fork/exec ...: resource temporarily unavailable`).
pub const UNITS: &[&str] = &[
    "kubelet.service",
    "containerd.service",
    "docker.service",
    "crio.service",
];

/// The reader's longest blocking wait (inotify, else a stat poll).
const POLL: Duration = Duration::from_millis(250);

/// Entries handed over per call at most (the rest waits in the journal).
const MAX_PER_CALL: usize = 4096;

/// The journal directories that exist here, in [`JOURNAL_DIRS`] order,
/// under the host root (a debug pod's own /var/log is empty).
pub fn existing_dirs() -> Vec<PathBuf> {
    JOURNAL_DIRS
        .iter()
        .map(|d| crate::paths::host::path(d))
        .filter(|p| p.is_dir())
        .collect()
}

/// A running reader: its engine thread and the subscription.
struct Reader {
    sub: LiveSubscription,
    _engine: std::thread::JoinHandle<()>,
}

fn open(dirs: &[PathBuf], since_usec: Option<u64>) -> Result<Reader, String> {
    let cfg = JournalConfig {
        poll_interval: POLL,
        ..JournalConfig::default()
    };
    let shown = || {
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let journal = Journal::open_dirs_with_config(dirs, cfg)
        .map_err(|e| format!("cannot open the journal in {}: {e}", shown()))?;
    let mut live: LiveJournal = journal
        .live()
        .map_err(|e| format!("cannot follow the journal in {}: {e}", shown()))?;
    drop(journal);
    let mut filter = live.filter();
    for unit in UNITS {
        filter.or_group(|g| {
            g.match_exact("_SYSTEMD_UNIT", unit.as_bytes());
        });
    }
    // kubelet run outside a unit of that name (e.g. by a wrapper).
    filter.or_group(|g| {
        g.match_exact("SYSLOG_IDENTIFIER", b"kubelet");
    });
    let sub = match since_usec {
        None => live.subscribe(filter),
        Some(t) => {
            let mut o = SubscriptionOptions::new(filter);
            o.since_realtime(t);
            live.subscribe_with_options(o)
        }
    }
    .map_err(|e| format!("cannot follow the journal in {}: {e}", shown()))?;
    let engine = std::thread::Builder::new()
        .name("journal".into())
        .spawn(move || {
            if let Err(e) = live.run() {
                tracing::debug!("journal reader stopped: {e}");
            }
        })
        .map_err(|e| format!("cannot start the journal reader thread: {e}"))?;
    Ok(Reader {
        sub,
        _engine: engine,
    })
}

/// The journal follower: the reader (None after it stopped, until it is
/// opened again) and what it has read.
pub struct JournalFollower {
    dirs: Vec<PathBuf>,
    reader: Option<Reader>,
    /// `__REALTIME_TIMESTAMP` of the last entry handed over.
    last_usec: Option<u64>,
    pub entries: u64,
    pub events: u64,
    pub unparseable: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    pub last_unparseable: Option<(String, &'static str)>,
}

impl JournalFollower {
    /// Opens the journal in `dirs`, following from its tail.
    pub fn open(dirs: Vec<PathBuf>) -> Result<Self, String> {
        let reader = open(&dirs, None)?;
        Ok(Self::with_reader(dirs, Some(reader)))
    }

    fn with_reader(dirs: Vec<PathBuf>, reader: Option<Reader>) -> Self {
        Self {
            dirs,
            reader,
            last_usec: None,
            entries: 0,
            events: 0,
            unparseable: 0,
            errors: 0,
            last_error: None,
            last_unparseable: None,
        }
    }

    /// Entries that arrived since the last call, parsed; Err when the reader
    /// stopped and cannot be opened again now.
    pub fn poll(&mut self, now: Time) -> Result<Vec<KubeletLog>, String> {
        if self.reader.is_none() {
            // Resume just after the last entry handed over.
            self.reader = Some(open(&self.dirs, self.last_usec.map(|t| t + 1))?);
        }
        let mut out = Vec::new();
        for _ in 0..MAX_PER_CALL {
            let Some(r) = &self.reader else { break };
            match r.sub.try_recv() {
                Ok(Ok(e)) => {
                    self.last_usec = Some(e.realtime_usec());
                    self.take(
                        e.get("SYSLOG_IDENTIFIER").or_else(|| e.get("_COMM")),
                        e.get("MESSAGE"),
                        e.realtime_usec(),
                        now,
                        &mut out,
                    );
                }
                Ok(Err(e)) => {
                    self.errors += 1;
                    self.last_error = Some(e.to_string());
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.reader = None;
                    self.errors += 1;
                    let why = "the journal reader stopped (files vacuumed or corrupt?); reopening";
                    self.last_error = Some(why.into());
                    break;
                }
            }
        }
        Ok(out)
    }

    /// One journal entry: its program and message (bytes as stored).
    fn take(
        &mut self,
        program: Option<&[u8]>,
        msg: Option<&[u8]>,
        usec: u64,
        now: Time,
        out: &mut Vec<KubeletLog>,
    ) {
        self.entries += 1;
        let program = program.map(|p| String::from_utf8_lossy(p).into_owned());
        let Some(msg) = msg else {
            return;
        };
        let text = String::from_utf8_lossy(&msg[..msg.len().min(super::log::MAX_LINE)]);
        self.entry(&text, program, usec, now, out);
    }

    fn entry(
        &mut self,
        text: &str,
        program: Option<String>,
        usec: u64,
        now: Time,
        out: &mut Vec<KubeletLog>,
    ) {
        match parse_line(text) {
            Parsed::Event {
                logged,
                program: p,
                event,
            } => {
                self.events += 1;
                out.push(KubeletLog {
                    at: now,
                    // The klog stamp when the message has one; else the
                    // journal's own (UTC, microseconds).
                    logged: logged.or_else(|| Some(stamp(usec))),
                    program: program.or(p),
                    event,
                });
            }
            Parsed::Ignored => {}
            Parsed::Unparseable(why) => {
                self.unparseable += 1;
                let mut shown: String = text.chars().take(200).collect();
                if shown.len() < text.len() {
                    shown.push('…');
                }
                self.last_unparseable = Some((shown, why));
            }
        }
    }
}

/// The followed units' entries already in the journal files of `dirs`,
/// oldest first, at most `max`, read as the follower reads new ones (the
/// same files, filter and parser), with the follower's counters. For
/// evidence of what was logged before a session, and the journal fuzz
/// target (a journal file is input from elsewhere: a bundle, a copied
/// directory).
pub fn read_history(
    dirs: &[PathBuf],
    max: usize,
    now: Time,
) -> Result<(Vec<KubeletLog>, JournalFollower), String> {
    let q = history_query(dirs, None, max)?;
    let mut f = JournalFollower::with_reader(dirs.to_vec(), None);
    let mut out = Vec::new();
    for e in q.iter().map_err(|e| e.to_string())? {
        match e {
            Ok(e) => {
                f.last_usec = Some(e.realtime_usec());
                f.take(
                    e.get("SYSLOG_IDENTIFIER").or_else(|| e.get("_COMM")),
                    e.get("MESSAGE"),
                    e.realtime_usec(),
                    now,
                    &mut out,
                );
            }
            Err(e) => {
                f.errors += 1;
                f.last_error = Some(e.to_string());
            }
        }
    }
    Ok((out, f))
}

/// The followed units' entries from `since_usec` on (all when None), oldest
/// first, at most `max`.
fn history_query(
    dirs: &[PathBuf],
    since_usec: Option<u64>,
    max: usize,
) -> Result<sdjournal::JournalQuery, String> {
    let cfg = JournalConfig {
        poll_interval: POLL,
        ..JournalConfig::default()
    };
    let journal = Journal::open_dirs_with_config(dirs, cfg).map_err(|e| e.to_string())?;
    let mut q = journal.query();
    for unit in UNITS {
        q.or_group(|g| {
            g.match_exact("_SYSTEMD_UNIT", unit.as_bytes());
        });
    }
    q.or_group(|g| {
        g.match_exact("SYSLOG_IDENTIFIER", b"kubelet");
    });
    q.seek_head().limit(max);
    if let Some(t) = since_usec {
        q.since_realtime(t);
    }
    Ok(q)
}

/// The followed units' entries from `since_usec` on as text, one line each
/// (`<UTC stamp> <program>[<pid>]: <message>`, a message cut at the
/// parser's line cap and its line breaks shown as `\n`), at most `max`;
/// with the number of entries the journal could not read.
pub fn history_lines(
    dirs: &[PathBuf],
    since_usec: Option<u64>,
    max: usize,
) -> Result<(Vec<String>, u64), String> {
    let q = history_query(dirs, since_usec, max)?;
    let mut out = Vec::new();
    let mut errors = 0;
    for e in q.iter().map_err(|e| e.to_string())? {
        let Ok(e) = e else {
            errors += 1;
            continue;
        };
        let field = |name: &str| e.get(name).map(|v| String::from_utf8_lossy(v).into_owned());
        let program = field("SYSLOG_IDENTIFIER")
            .or_else(|| field("_COMM"))
            .unwrap_or_else(|| "?".into());
        let pid = field("_PID").unwrap_or_default();
        let msg = e.get("MESSAGE").unwrap_or_default();
        let msg = String::from_utf8_lossy(&msg[..msg.len().min(super::log::MAX_LINE)])
            .replace('\n', "\\n");
        out.push(format!(
            "{} {program}[{pid}]: {msg}",
            stamp(e.realtime_usec())
        ));
    }
    Ok((out, errors))
}

/// `2026-12-07T04:31:43.123456Z`
fn stamp(usec: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_micros(usec);
    chrono::DateTime::<chrono::Utc>::from(t)
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

/// The journal as a supervised source.
pub struct JournalSource {
    dirs: Vec<PathBuf>,
    reported: (u64, u64),
}

impl JournalSource {
    pub fn new(dirs: Vec<PathBuf>) -> Self {
        Self {
            dirs,
            reported: (0, 0),
        }
    }

    fn target(&self) -> String {
        format!(
            "journal {}",
            self.dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

impl Source for JournalSource {
    type Client = JournalFollower;

    fn supervision(&self) -> Supervision {
        Supervision {
            kind: SourceKind::KubeletLog,
            target: self.target(),
            // Opening reads the files' headers on the agent's thread: local
            // files of journald, never a user mount. Bounded all the same.
            deadline: Some(Duration::from_secs(10)),
            interval: super::log::POLL,
            max_backoff: Duration::from_secs(30),
        }
    }

    async fn start(&mut self) -> Result<JournalFollower, StartError> {
        if self.dirs.is_empty() {
            return Err(StartError::Disabled(format!(
                "no journal directory found ({}); give --journal-dir or --kubelet-log FILE",
                JOURNAL_DIRS.join(", ")
            )));
        }
        JournalFollower::open(self.dirs.clone()).map_err(StartError::Retry)
    }

    async fn call(&mut self, f: &mut JournalFollower) -> Call {
        let events = match f.poll(Time::now()) {
            Ok(e) => e,
            Err(e) => return Call::Failed(e),
        };
        let mut step = Step::available(format!(
            "following the units {} and SYSLOG_IDENTIFIER=kubelet",
            UNITS.join(", ")
        ));
        step.observations = events.into_iter().map(Observation::KubeletLog).collect();
        if (f.unparseable, f.errors) != self.reported {
            self.reported = (f.unparseable, f.errors);
            let mut parts = Vec::new();
            if f.unparseable > 0 {
                let (line, why) = f.last_unparseable.clone().unwrap_or_default();
                parts.push(format!(
                    "{} of {} entries unparseable (skipped); last: {why}: {line}",
                    f.unparseable, f.entries
                ));
            }
            if let Some(e) = &f.last_error {
                parts.push(format!("{} reader errors; last: {e}", f.errors));
            }
            step.news = Some((SourceState::Available, parts.join("; ")));
        }
        Call::Answered(step)
    }
}
