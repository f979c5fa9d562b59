//! Bundles captured by themselves (`trace --bundle-dir DIR`, `[bundle]` of
//! `run`): when a finding goes active, a bundle of the evidence for it, at
//! most one per finding, at most one per `min_interval` on the node, the
//! directory's bundles kept under a total size (oldest deleted first). A
//! `bundle` record names the file (the terminal, JSON, an Event).
//!
//! The capture runs on the agent's thread at the poll after the finding
//! (when the recording holds what produced it), through the same never-hang
//! readers as `watchdog bundle`.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Capture, Named, SessionRecords, Window};
use crate::model::Time;
use crate::model::finding::{FindingId, FindingStatus};
use crate::sinks::{Record, Sink, Stats};

#[derive(Clone, Debug)]
pub struct AutoOptions {
    pub dir: PathBuf,
    /// At most one bundle per this long on the node.
    pub min_interval: Duration,
    /// The directory's `watchdog-*.tar.gz` are kept under this many bytes.
    pub max_total_bytes: u64,
    pub root: PathBuf,
    pub node: String,
    pub journal_dirs: Vec<PathBuf>,
    pub sockets: Vec<String>,
    /// The session's recording, when it records.
    pub recording: Option<PathBuf>,
    /// Opt-in: containerd's goroutine dump, from the containerd serving this
    /// socket (or why there is none).
    pub goroutines: Option<Result<String, String>>,
    /// Opt-in: sysrq-w's report of the blocked tasks.
    pub sysrq_w: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BundleStatus {
    /// Named, not written yet (the finding's first record: the capture
    /// runs at the next poll).
    Pending,
    Written,
    Skipped,
    Failed,
}

impl BundleStatus {
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Written => "written",
            Self::Skipped => "skipped",
            Self::Failed => "failed",
        }
    }
}

/// The bundle a finding names in its records (`bundle`) and its Event:
/// the file is decided as the finding goes active, before it is written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BundleRef {
    pub status: BundleStatus,
    /// The file's name (none when skipped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Where it is (or will be) on the node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// How to fetch it through the apiserver, when the directory is under
    /// `/var/log` (kubelet serves it at `/logs/`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetch: Option<String>,
    /// Why there is none (skipped, failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl BundleRef {
    /// One line for people (terminal, Events).
    pub fn describe(&self) -> String {
        let fetch = self
            .fetch
            .as_deref()
            .map(|f| format!("; fetch: {f}"))
            .unwrap_or_default();
        match (self.status, &self.path) {
            (BundleStatus::Pending, Some(p)) => format!("{p} (being written{fetch})"),
            (BundleStatus::Written, Some(p)) => format!("{p} (written{fetch})"),
            (status, _) => format!(
                "none ({}: {})",
                status.name(),
                self.reason.as_deref().unwrap_or("")
            ),
        }
    }
}

/// The bundle file of a finding: `watchdog-<node>-<cause>-<first seen, UTC>-<id hash>.tar.gz`,
/// the same for the same node and finding.
pub fn file_name(node: &str, id: &FindingId, first_seen: Time) -> String {
    use sha2::Digest as _;
    let stamp: String = first_seen
        .rfc3339()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let hash = sha2::Sha256::digest(id.to_string().as_bytes());
    format!(
        "watchdog-{}-{}-{stamp}-{}.tar.gz",
        file_word(node),
        file_word(id.cause.name()),
        super::hex(&hash[..4])
    )
}

/// `kubectl get --raw /api/v1/nodes/<node>/proxy/logs/<dir below /var/log>/<file>`
/// when `dir` is below `/var/log` (kubelet's `/logs/` serves that
/// directory); None otherwise (then `kubectl cp` from the agent's pod).
pub fn fetch_command(dir: &Path, node: &str, file: &str) -> Option<String> {
    use std::path::Component;
    let rel = dir.strip_prefix("/var/log").ok()?;
    let mut url = format!("/api/v1/nodes/{node}/proxy/logs/");
    for c in rel.components() {
        match c {
            Component::Normal(n) => {
                url.push_str(n.to_str()?);
                url.push('/');
            }
            _ => return None,
        }
    }
    Some(format!("kubectl get --raw {url}{file} > {file}"))
}

/// A bundle captured for a finding (or why not).
#[derive(Clone, Debug, Serialize)]
pub struct BundleRecord {
    pub at: Time,
    pub finding: FindingId,
    pub status: BundleStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// How to fetch it through the apiserver (see [`fetch_command`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetch: Option<String>,
    /// What it holds, or why there is none.
    pub reason: String,
    /// Older bundles deleted to stay under the directory's size.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deleted: Vec<String>,
    /// How long the capture held the agent's thread.
    pub took_ms: u64,
}

/// How long the capture (a poll after the signal) waits for containerd's
/// goroutine dump at most: it is normally written within milliseconds.
const GOROUTINES_WAIT: Duration = Duration::from_millis(250);

/// How far before a finding's first sighting its bundle's kernel log and
/// journal go back.
const LEAD: Duration = Duration::from_secs(300);

pub struct AutoBundle<'a> {
    inner: &'a mut dyn Sink,
    opts: AutoOptions,
    started: Time,
    records: SessionRecords,
    /// Findings already given a bundle (or refused one).
    done: BTreeSet<String>,
    /// The bundle each finding names, by id, until it resolves.
    refs: BTreeMap<String, BundleRef>,
    /// Findings gone active since the last poll, in order: a bundle to
    /// capture, or the record of one refused.
    pending: Vec<Pending>,
    last: Option<Instant>,
}

enum Pending {
    /// Its id, first-seen time, record, the file it names, and the
    /// goroutine dump asked for (opt-in).
    Capture {
        id: FindingId,
        first_seen: Time,
        finding: serde_json::Value,
        out: PathBuf,
        goroutines: Option<Result<super::optin::Signalled, String>>,
    },
    Refused(BundleRecord),
}

/// At most this many findings' bundles are remembered (the rest are
/// named on their first record only).
const REFS_CAP: usize = 4096;

impl<'a> AutoBundle<'a> {
    pub fn new(inner: &'a mut dyn Sink, opts: AutoOptions) -> Self {
        Self {
            inner,
            opts,
            started: Time::now(),
            records: SessionRecords::default(),
            done: BTreeSet::new(),
            refs: BTreeMap::new(),
            pending: Vec::new(),
            last: None,
        }
    }

    /// The bundle of a finding going active, decided now (so that its
    /// first record and Event name the file): pending, or refused by the
    /// rate limit.
    fn decide(
        &mut self,
        id: &FindingId,
        first_seen: Time,
        finding: serde_json::Value,
    ) -> BundleRef {
        let capturing = self.pending.iter().find_map(|p| match p {
            Pending::Capture { id, .. } => Some(id.to_string()),
            Pending::Refused(_) => None,
        });
        let refused = match (capturing, self.last) {
            (Some(other), _) => Some(format!(
                "rate limited: the bundle of {other} is being captured (at most one per {} s)",
                self.opts.min_interval.as_secs()
            )),
            (None, Some(last)) if last.elapsed() < self.opts.min_interval => Some(format!(
                "rate limited: a bundle was written {} s ago (at most one per {} s)",
                last.elapsed().as_secs(),
                self.opts.min_interval.as_secs()
            )),
            _ => None,
        };
        if let Some(reason) = refused {
            self.pending.push(Pending::Refused(BundleRecord {
                at: Time::now(),
                finding: id.clone(),
                status: BundleStatus::Skipped,
                path: None,
                size: None,
                fetch: None,
                reason: reason.clone(),
                deleted: Vec::new(),
                took_ms: 0,
            }));
            return BundleRef {
                status: BundleStatus::Skipped,
                file: None,
                path: None,
                fetch: None,
                reason: Some(reason),
            };
        }
        self.last = Some(Instant::now());
        let file = file_name(&self.opts.node, id, first_seen);
        let out = self.opts.dir.join(&file);
        let r = BundleRef {
            status: BundleStatus::Pending,
            path: Some(out.display().to_string()),
            fetch: fetch_command(&self.opts.dir, &self.opts.node, &file),
            file: Some(file),
            reason: None,
        };
        // containerd is asked now: its dump is written by the capture at
        // the next poll (never waited for on the agent's thread).
        let goroutines = self.opts.goroutines.as_ref().map(|socket| {
            let reader = crate::context::procfs::ProcReader::new(&self.opts.root);
            super::optin::request_dump(&reader, socket)
        });
        self.pending.push(Pending::Capture {
            id: id.clone(),
            first_seen,
            finding,
            out,
            goroutines,
        });
        r
    }

    fn capture_pending(&mut self) {
        for p in std::mem::take(&mut self.pending) {
            let rec = match p {
                Pending::Refused(rec) => rec,
                Pending::Capture {
                    id,
                    first_seen,
                    finding,
                    out,
                    goroutines,
                } => {
                    let took = Instant::now();
                    let mut rec = self.capture(&id, first_seen, &finding, &out, goroutines);
                    rec.took_ms = took.elapsed().as_millis() as u64;
                    if let Some(r) = self.refs.get_mut(&id.to_string()) {
                        r.status = rec.status;
                        if rec.status != BundleStatus::Written {
                            r.reason = Some(rec.reason.clone());
                        }
                    }
                    rec
                }
            };
            self.inner.emit(&Record::Bundle(rec));
        }
    }

    fn capture(
        &mut self,
        id: &FindingId,
        first_seen: Time,
        finding: &serde_json::Value,
        out: &Path,
        goroutines: Option<Result<super::optin::Signalled, String>>,
    ) -> BundleRecord {
        let now = Time::now();
        let mut rec = BundleRecord {
            at: now,
            finding: id.clone(),
            status: BundleStatus::Failed,
            path: None,
            size: None,
            fetch: None,
            reason: String::new(),
            deleted: Vec::new(),
            took_ms: 0,
        };
        if let Err(e) = create_private_dir(&self.opts.dir) {
            rec.reason = format!("{}: {e}", self.opts.dir.display());
            return rec;
        }
        let out = out.to_owned();
        let mut named = Named::default();
        named.add_finding(finding);
        // The window: from five minutes before the finding (not from the
        // agent's start, weeks ago for `run`) to now.
        let start = Time(
            first_seen
                .0
                .saturating_sub(LEAD.as_millis() as u64)
                .max(self.started.0),
        );
        let reader = crate::context::procfs::ProcReader::new(&self.opts.root);
        let uptime_start = reader
            .read_trim(&reader.proc_path("uptime"))
            .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
            .map(|up| (up - now.secs_since(start)).max(0.0))
            .unwrap_or(0.0);
        let written = super::capture(
            Capture {
                root: &self.opts.root,
                node: &self.opts.node,
                trigger: format!("finding {id}"),
                window: Window { start, end: now },
                records: &self.records,
                recording: self.opts.recording.as_deref(),
                named: &named,
                journal_dirs: &self.opts.journal_dirs,
                sockets: &self.opts.sockets,
                uptime_start,
                goroutines: goroutines.map(|g| (g, GOROUTINES_WAIT)),
                sysrq_w: self.opts.sysrq_w,
            },
            &out,
        );
        match written {
            Ok(w) => {
                rec.status = BundleStatus::Written;
                rec.path = Some(out.display().to_string());
                rec.size = Some(w.size);
                rec.fetch = out
                    .file_name()
                    .and_then(|f| f.to_str())
                    .and_then(|f| fetch_command(&self.opts.dir, &self.opts.node, f));
                rec.reason = format!(
                    "{} tasks, {} mounts, {} pids cgroups",
                    w.tasks,
                    named.mounts.len(),
                    named.cgroups.len()
                );
                rec.deleted = prune(&self.opts.dir, self.opts.max_total_bytes, &out);
            }
            Err(e) => {
                rec.status = BundleStatus::Failed;
                rec.reason = e;
            }
        }
        rec
    }
}

impl AutoBundle<'_> {
    /// `f` with its bundle (when there is one) to the sinks and the
    /// session's records.
    fn forward(&mut self, f: &crate::sinks::FindingRecord, bundle: Option<BundleRef>) {
        let rec = Record::Finding(Box::new(crate::sinks::FindingRecord {
            finding: f.finding.clone(),
            bundle: bundle.or_else(|| f.bundle.clone()),
        }));
        self.inner.emit(&rec);
        if let Ok(v) = serde_json::to_value(&rec) {
            self.records.keep(&rec, &v);
        }
    }
}

/// A name part made of letters, digits, `-` and `_` only.
fn file_word(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The bundle directory, made root-only when we make it.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(e) if dir.is_dir() => {
            let _ = e;
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Deletes the oldest `watchdog-*.tar.gz` of `dir` (never `keep`) until
/// they total at most `max` bytes; returns the names deleted.
fn prune(dir: &Path, max: u64, keep: &Path) -> Vec<String> {
    let mut bundles: Vec<(std::time::SystemTime, u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("watchdog-") && n.ends_with(".tar.gz")
        })
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            m.is_file().then(|| {
                (
                    m.modified().unwrap_or(std::time::UNIX_EPOCH),
                    m.len(),
                    e.path(),
                )
            })
        })
        .collect();
    bundles.sort();
    let mut total: u64 = bundles.iter().map(|b| b.1).sum();
    let mut deleted = Vec::new();
    for (_, size, path) in bundles {
        if total <= max {
            break;
        }
        if path == keep {
            continue;
        }
        if std::fs::remove_file(&path).is_ok() {
            total -= size;
            deleted.push(path.display().to_string());
        }
    }
    deleted
}

impl Sink for AutoBundle<'_> {
    fn emit(&mut self, record: &Record) {
        // Bundles of the last poll's findings come before the summary.
        if matches!(record, Record::Summary(_)) {
            self.capture_pending();
        }
        let Record::Finding(f) = record else {
            self.inner.emit(record);
            if let Ok(v) = serde_json::to_value(record) {
                self.records.keep(record, &v);
            }
            return;
        };
        // The finding names its bundle: decided as it goes active, its
        // outcome on the later records.
        let key = f.id.to_string();
        if f.status == FindingStatus::Active && self.done.insert(key.clone()) {
            let v = serde_json::to_value(&f.finding).unwrap_or_default();
            let r = self.decide(&f.id, f.first_seen, v);
            if self.refs.len() < REFS_CAP {
                self.refs.insert(key.clone(), r.clone());
            }
            self.forward(f, Some(r));
            return;
        }
        let r = if f.status == FindingStatus::Resolved {
            self.refs.remove(&key)
        } else {
            self.refs.get(&key).cloned()
        };
        self.forward(f, r);
    }

    /// Every poll, after the engine's tick (the recording holds what the
    /// findings came from): the bundles of the findings gone active.
    fn stats(&mut self, stats: &Stats<'_>) {
        self.inner.stats(stats);
        self.capture_pending();
    }

    fn wants_status(&self) -> bool {
        self.inner.wants_status()
    }

    fn status(&mut self, status: &crate::sinks::status::StatusSnapshot) {
        self.inner.status(status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bundles of a golden recording into `dir`, one per hour at most.
    fn test_options(dir: &Path, golden: &Path) -> AutoOptions {
        AutoOptions {
            dir: dir.to_path_buf(),
            min_interval: Duration::from_secs(3600),
            max_total_bytes: 1 << 30,
            root: PathBuf::from("/"),
            node: "test-node".into(),
            journal_dirs: Vec::new(),
            sockets: Vec::new(),
            recording: Some(golden.to_path_buf()),
            goroutines: None,
            sysrq_w: false,
        }
    }
    #[test]
    fn the_oldest_bundles_go_first_and_the_new_one_stays() {
        let dir = std::env::temp_dir().join(format!("wd-auto-prune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut paths = Vec::new();
        for (i, name) in [
            "watchdog-a.tar.gz",
            "watchdog-b.tar.gz",
            "watchdog-c.tar.gz",
        ]
        .iter()
        .enumerate()
        {
            let p = dir.join(name);
            std::fs::write(&p, vec![0u8; 100]).unwrap();
            let t = std::time::UNIX_EPOCH + Duration::from_secs(1000 + i as u64);
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(t)
                .unwrap();
            paths.push(p);
        }
        // Not a bundle: never deleted.
        std::fs::write(dir.join("notes.txt"), vec![0u8; 1000]).unwrap();
        let deleted = prune(&dir, 150, &paths[0]);
        // The oldest is the one just written (keep): b goes, then c.
        assert_eq!(
            deleted,
            vec![
                paths[1].display().to_string(),
                paths[2].display().to_string()
            ]
        );
        assert!(paths[0].exists() && dir.join("notes.txt").exists());
        assert!(prune(&dir, 150, &paths[0]).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The golden recording with a PID and a storage finding, replayed
    /// through the auto-bundler: the first finding gets a bundle, the
    /// second is refused by the interval, each once, all before the summary.
    #[test]
    fn one_bundle_per_interval_and_per_finding() {
        struct Cap(Vec<Record>);
        impl Sink for Cap {
            fn emit(&mut self, r: &Record) {
                self.0.push(r.clone());
            }
        }
        let golden =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/mixed_pid_storage.jsonl");
        let dir = std::env::temp_dir().join(format!("wd-auto-rate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cap = Cap(Vec::new());
        {
            let mut auto = AutoBundle::new(&mut cap, test_options(&dir, &golden));
            crate::replay::replay(&golden, &mut auto).unwrap();
        }
        let active: BTreeSet<String> = cap
            .0
            .iter()
            .filter_map(|r| match r {
                Record::Finding(f) if f.status == FindingStatus::Active => Some(f.id.to_string()),
                _ => None,
            })
            .collect();
        assert!(active.len() >= 2, "the golden has two findings: {active:?}");
        let bundles: Vec<&BundleRecord> = cap
            .0
            .iter()
            .filter_map(|r| match r {
                Record::Bundle(b) => Some(b),
                _ => None,
            })
            .collect();
        assert_eq!(bundles.len(), active.len(), "one record per finding");
        assert_eq!(bundles[0].status, BundleStatus::Written, "{:?}", bundles[0]);
        let path = PathBuf::from(bundles[0].path.as_deref().unwrap());
        assert!(path.starts_with(&dir) && path.is_file());
        assert!(
            path.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("watchdog-test-node-"),
            "{path:?}"
        );
        for b in &bundles[1..] {
            assert_eq!(b.status, BundleStatus::Skipped, "{b:?}");
            assert!(b.reason.starts_with("rate limited"), "{b:?}");
        }
        let summary = cap
            .0
            .iter()
            .position(|r| matches!(r, Record::Summary(_)))
            .unwrap();
        let last_bundle = cap
            .0
            .iter()
            .rposition(|r| matches!(r, Record::Bundle(_)))
            .unwrap();
        assert!(last_bundle < summary, "bundles come before the summary");
        // Each finding names its bundle: the first record the file to come
        // (pending), the later ones what became of it.
        let written_id = &bundles[0].finding;
        let written_at = cap
            .0
            .iter()
            .position(|r| matches!(r, Record::Bundle(b) if &b.finding == written_id))
            .unwrap();
        let refs: Vec<(usize, FindingStatus, BundleRef)> = cap
            .0
            .iter()
            .enumerate()
            .filter_map(|(i, r)| match r {
                Record::Finding(f) if &f.id == written_id => Some((
                    i,
                    f.status,
                    f.bundle.clone().expect("every record names it"),
                )),
                _ => None,
            })
            .collect();
        assert_eq!(refs[0].1, FindingStatus::Active);
        assert_eq!(refs[0].2.status, BundleStatus::Pending);
        assert_eq!(
            refs[0].2.path, bundles[0].path,
            "named before it is written"
        );
        // Until the capture (at the next poll; in a replay, before the
        // summary) pending, then written.
        for (i, _, r) in &refs {
            let want = if *i < written_at {
                BundleStatus::Pending
            } else {
                BundleStatus::Written
            };
            assert_eq!(r.status, want, "{r:?}");
            assert_eq!(r.path, bundles[0].path);
        }
        // Not under /var/log: no apiserver path.
        assert_eq!(refs[0].2.fetch, None);
        for b in &bundles[1..] {
            let first = cap
                .0
                .iter()
                .find_map(|r| match r {
                    Record::Finding(f) if f.id == b.finding => f.bundle.clone(),
                    _ => None,
                })
                .unwrap();
            assert_eq!(first.status, BundleStatus::Skipped);
            assert_eq!(first.reason.as_deref(), Some(b.reason.as_str()));
            assert_eq!(first.path, None);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A finding's update after the capture (the next poll) names the
    /// bundle written; its resolution too, and then it is forgotten.
    #[test]
    fn records_after_the_capture_name_the_bundle_written() {
        let golden =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/pid_exhaustion_cgroup.jsonl");
        let mut all = crate::sinks::Capture::default();
        crate::replay::replay(&golden, &mut all).unwrap();
        let findings: Vec<Record> = all
            .0
            .into_iter()
            .filter(|r| matches!(r, Record::Finding(_)))
            .collect();
        let statuses: Vec<FindingStatus> = findings
            .iter()
            .map(|r| match r {
                Record::Finding(f) => f.status,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            statuses,
            [
                FindingStatus::Active,
                FindingStatus::Update,
                FindingStatus::Resolved
            ]
        );
        let dir = std::env::temp_dir().join(format!("wd-auto-after-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cap = crate::sinks::Capture::default();
        {
            let mut auto = AutoBundle::new(&mut cap, test_options(&dir, &golden));
            auto.emit(&findings[0]);
            // The poll after it.
            auto.capture_pending();
            auto.emit(&findings[1]);
            auto.emit(&findings[2]);
            assert!(
                auto.refs.is_empty(),
                "a resolved finding's bundle is let go"
            );
        }
        let refs: Vec<BundleRef> = cap
            .0
            .iter()
            .filter_map(|r| match r {
                Record::Finding(f) => f.bundle.clone(),
                _ => None,
            })
            .collect();
        let statuses: Vec<BundleStatus> = refs.iter().map(|r| r.status).collect();
        assert_eq!(
            statuses,
            [
                BundleStatus::Pending,
                BundleStatus::Written,
                BundleStatus::Written
            ]
        );
        let path = refs[0].path.clone().unwrap();
        assert!(
            refs.iter()
                .all(|r| r.path.as_deref() == Some(path.as_str()))
        );
        assert!(Path::new(&path).is_file(), "{path}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_bundle_below_var_log_is_fetched_through_kubelets_logs() {
        let id = FindingId::new(
            crate::model::finding::Cause::StorageHang,
            "fuse:/mnt/x".to_owned(),
        );
        let file = file_name("node-1", &id, Time::from_millis(1_795_000_000_123));
        assert!(
            file.starts_with("watchdog-node-1-storage_hang-")
                && file.ends_with(".tar.gz")
                && file.len()
                    == "watchdog-node-1-storage_hang-20261112T072640123Z-01234567.tar.gz".len(),
            "{file}"
        );
        // The same node and finding: the same name.
        assert_eq!(
            file,
            file_name("node-1", &id, Time::from_millis(1_795_000_000_123))
        );
        assert_eq!(
            fetch_command(Path::new("/var/log/watchdog"), "node-1", &file).unwrap(),
            format!("kubectl get --raw /api/v1/nodes/node-1/proxy/logs/watchdog/{file} > {file}")
        );
        assert_eq!(
            fetch_command(Path::new("/var/lib/watchdog"), "n", &file),
            None
        );
        assert_eq!(
            fetch_command(Path::new("/var/log/../etc"), "n", &file),
            None
        );
        assert_eq!(
            fetch_command(Path::new("/var/log"), "n", "f.tar.gz").unwrap(),
            "kubectl get --raw /api/v1/nodes/n/proxy/logs/f.tar.gz > f.tar.gz"
        );
    }

    #[test]
    fn names_in_file_names_are_plain() {
        assert_eq!(file_word("node-1.example/x"), "node-1_example_x");
    }
}
