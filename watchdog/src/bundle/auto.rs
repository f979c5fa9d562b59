//! Bundles captured by themselves (`trace --bundle-dir DIR`, `[bundle]` of
//! `run`): when a finding goes active, a bundle of the evidence for it, at
//! most one per finding, at most one per `min_interval` on the node, the
//! directory's bundles kept under a total size (oldest deleted first). A
//! `bundle` record names the file (the terminal, JSON, an Event).
//!
//! The capture runs on the agent's thread at the poll after the finding
//! (when the recording holds what produced it), through the same never-hang
//! readers as `watchdog bundle`.
use std::collections::BTreeSet;
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BundleStatus {
    Written,
    Skipped,
    Failed,
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
    /// What it holds, or why there is none.
    pub reason: String,
    /// Older bundles deleted to stay under the directory's size.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deleted: Vec<String>,
    /// How long the capture held the agent's thread.
    pub took_ms: u64,
}

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
    /// Findings gone active since the last poll: their id, first-seen
    /// time and record.
    pending: Vec<(FindingId, Time, serde_json::Value)>,
    last: Option<Instant>,
}

impl<'a> AutoBundle<'a> {
    pub fn new(inner: &'a mut dyn Sink, opts: AutoOptions) -> Self {
        Self {
            inner,
            opts,
            started: Time::now(),
            records: SessionRecords::default(),
            done: BTreeSet::new(),
            pending: Vec::new(),
            last: None,
        }
    }

    fn capture_pending(&mut self) {
        for (id, first_seen, finding) in std::mem::take(&mut self.pending) {
            let took = Instant::now();
            let mut rec = self.capture(&id, first_seen, &finding);
            rec.took_ms = took.elapsed().as_millis() as u64;
            self.inner.emit(&Record::Bundle(rec));
        }
    }

    fn capture(
        &mut self,
        id: &FindingId,
        first_seen: Time,
        finding: &serde_json::Value,
    ) -> BundleRecord {
        let now = Time::now();
        let mut rec = BundleRecord {
            at: now,
            finding: id.clone(),
            status: BundleStatus::Skipped,
            path: None,
            size: None,
            reason: String::new(),
            deleted: Vec::new(),
            took_ms: 0,
        };
        if let Some(last) = self.last
            && last.elapsed() < self.opts.min_interval
        {
            rec.reason = format!(
                "rate limited: a bundle was written {} s ago (at most one per {} s)",
                last.elapsed().as_secs(),
                self.opts.min_interval.as_secs()
            );
            return rec;
        }
        if let Err(e) = create_private_dir(&self.opts.dir) {
            rec.status = BundleStatus::Failed;
            rec.reason = format!("{}: {e}", self.opts.dir.display());
            return rec;
        }
        let stamp: String = now
            .rfc3339()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        let name = format!(
            "watchdog-{}-{}-{stamp}.tar.gz",
            file_word(&self.opts.node),
            file_word(id.cause.name())
        );
        let out = self.opts.dir.join(name);
        let mut named = Named::default();
        named.add_finding(finding);
        self.last = Some(Instant::now());
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
            },
            &out,
        );
        match written {
            Ok(w) => {
                rec.status = BundleStatus::Written;
                rec.path = Some(out.display().to_string());
                rec.size = Some(w.size);
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
        self.inner.emit(record);
        let Ok(v) = serde_json::to_value(record) else {
            return;
        };
        self.records.keep(record, &v);
        if let Record::Finding(f) = record
            && f.status == FindingStatus::Active
            && self.done.insert(f.id.to_string())
        {
            self.pending.push((f.id.clone(), f.first_seen, v));
        }
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
            let mut auto = AutoBundle::new(
                &mut cap,
                AutoOptions {
                    dir: dir.clone(),
                    min_interval: Duration::from_secs(3600),
                    max_total_bytes: 1 << 30,
                    root: PathBuf::from("/"),
                    node: "test-node".into(),
                    journal_dirs: Vec::new(),
                    sockets: Vec::new(),
                    recording: Some(golden.clone()),
                },
            );
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
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn names_in_file_names_are_plain() {
        assert_eq!(file_word("node-1.example/x"), "node-1_example_x");
    }
}
