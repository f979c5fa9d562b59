//! The remediation journal: every action's intent is appended (and
//! fsync'd) before it runs, its outcome after, one JSON line each, keyed by
//! the boot id. A restarted agent reads back this boot's lines, so the
//! actions it already took count against the hourly budget and their
//! targets stay cooling down: it neither repeats nor forgets them. Lines of
//! other boots are kept (evidence) but do not count.
use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::Time;

/// One journal line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub boot_id: String,
    pub at: Time,
    pub finding: String,
    pub action: String,
    pub target: String,
    /// `started` (the intent, written before acting), then `succeeded`,
    /// `failed` or `verified`.
    pub status: String,
    #[serde(default)]
    pub detail: String,
}

/// The journal larger than this is not read back (the newest lines are the
/// ones that count; a rotated journal starts empty).
const MAX_READ: u64 = 4 << 20;

pub struct Journal {
    path: PathBuf,
    file: File,
    boot_id: String,
}

impl Journal {
    /// Opens (creating it and its directory) the journal at `path` for this
    /// boot, and returns the actions this boot already started, oldest
    /// first: (when, target).
    pub fn open(path: &Path, boot_id: &str) -> Result<(Self, Vec<(Time, String)>), String> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::os::unix::fs::DirBuilderExt::mode(
                std::fs::DirBuilder::new().recursive(true),
                0o700,
            )
            .create(dir)
            .map_err(|e| format!("remediation journal {}: mkdir: {e}", path.display()))?;
        }
        let taken = read_taken(path, boot_id)?;
        let mut opts = OpenOptions::new();
        opts.create(true).append(true);
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        std::os::unix::fs::OpenOptionsExt::custom_flags(&mut opts, libc::O_NOFOLLOW);
        let mut file = opts
            .open(path)
            .map_err(|e| format!("remediation journal {}: {e}", path.display()))?;
        // A line torn by a crash gets its end, so the next line is whole.
        if ends_torn(path) {
            file.write_all(b"\n")
                .map_err(|e| format!("remediation journal {}: {e}", path.display()))?;
        }
        Ok((
            Self {
                path: path.to_owned(),
                file,
                boot_id: boot_id.to_owned(),
            },
            taken,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line and makes it durable (the intent must be on disk
    /// before the action runs).
    pub fn append(
        &mut self,
        at: Time,
        finding: &str,
        action: &str,
        target: &str,
        status: &str,
        detail: &str,
    ) -> Result<(), String> {
        let e = Entry {
            boot_id: self.boot_id.clone(),
            at,
            finding: finding.into(),
            action: action.into(),
            target: target.into(),
            status: status.into(),
            detail: detail.into(),
        };
        let mut line = serde_json::to_string(&e).map_err(|e| e.to_string())?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.sync_data())
            .map_err(|e| format!("remediation journal {}: {e}", self.path.display()))
    }
}

/// The file's last byte is not a newline.
fn ends_torn(path: &Path) -> bool {
    use std::io::{Read as _, Seek as _};
    let Ok(mut f) = File::open(path) else {
        return false;
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut last = [0u8; 1];
    len > 0
        && f.seek(std::io::SeekFrom::Start(len - 1)).is_ok()
        && f.read_exact(&mut last).is_ok()
        && last[0] != b'\n'
}

/// This boot's started actions in the journal at `path` (none when it does
/// not exist). Lines that do not parse are skipped (a line cut short by a
/// crash); a journal that cannot be read is an error.
fn read_taken(path: &Path, boot_id: &str) -> Result<Vec<(Time, String)>, String> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("remediation journal {}: {e}", path.display())),
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut r = BufReader::new(f);
    if len > MAX_READ {
        use std::io::Seek as _;
        let _ = r.seek(std::io::SeekFrom::Start(len - MAX_READ));
        // The first line is probably cut: skip it.
        let mut skip = Vec::new();
        let _ = r.read_until(b'\n', &mut skip);
    }
    let mut out = Vec::new();
    for line in r.split(b'\n') {
        let line = line.map_err(|e| format!("remediation journal {}: {e}", path.display()))?;
        let Ok(e) = serde_json::from_slice::<Entry>(&line) else {
            continue;
        };
        if e.boot_id == boot_id && e.status == "started" {
            out.push((e.at, e.target));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reopened_journal_returns_this_boots_started_actions_only() {
        let dir = std::env::temp_dir().join(format!("wd-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub/remediation.jsonl");
        let (mut j, taken) = Journal::open(&path, "boot-a").unwrap();
        assert!(taken.is_empty());
        j.append(
            Time::from_millis(1000),
            "f",
            "kill_container",
            "cgroup /x",
            "started",
            "",
        )
        .unwrap();
        j.append(
            Time::from_millis(1100),
            "f",
            "kill_container",
            "cgroup /x",
            "succeeded",
            "ok",
        )
        .unwrap();
        drop(j);
        // A torn last line (a crash mid-write) is skipped.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"boot_id\":\"boot-a\",\"at\":")
            .unwrap();
        let (mut j, taken) = Journal::open(&path, "boot-a").unwrap();
        assert_eq!(
            taken,
            vec![(Time::from_millis(1000), "cgroup /x".to_string())]
        );
        // The torn line got its end: the next line is whole.
        j.append(
            Time::from_millis(2000),
            "g",
            "abort_fuse",
            "fuse connection 0:1 (/m)",
            "started",
            "",
        )
        .unwrap();
        drop(j);
        let (_, taken) = Journal::open(&path, "boot-a").unwrap();
        assert_eq!(taken.len(), 2, "{taken:?}");
        // Another boot: nothing counts.
        let (_, taken) = Journal::open(&path, "boot-b").unwrap();
        assert!(taken.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unreadable_journal_is_an_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("wd-journal-dir-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A directory where the file should be.
        let err = Journal::open(&dir, "boot").err().unwrap();
        assert!(err.contains(&dir.display().to_string()), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
