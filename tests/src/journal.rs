//! Real journal files, written by systemd's own `systemd-journal-remote`
//! (Debian's: zstd-compressed, keyed-hash, compact) from journal export
//! text, for the tests that read kubelet's log from the journal.
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{skip_unless, skip_unless_root};

pub const JOURNAL_REMOTE: &str = "/lib/systemd/systemd-journal-remote";
/// The machine id directory journald makes (`<dir>/<machine-id>/`).
pub const MACHINE_ID: &str = "3d1219c7c4c5404aaa1f6d2a48adfda4";
pub const BOOT_ID: &str = "0123456789abcdef0123456789abcdef";

/// Root and systemd-journal-remote.
pub fn skip_unless_journal_prereqs() -> bool {
    skip_unless_root()
        && skip_unless(
            Path::new(JOURNAL_REMOTE).exists(),
            &format!("{JOURNAL_REMOTE} is missing (apt-get install systemd-journal-remote)"),
        )
}

/// Appends entries to one journal file, stamped now.
pub struct JournalWriter {
    pub file: PathBuf,
    mono: u64,
}

impl JournalWriter {
    /// `<dir>/<machine-id>/system.journal`, as journald lays it out.
    pub fn in_dir(dir: &Path) -> Self {
        let machine = dir.join(MACHINE_ID);
        std::fs::create_dir_all(&machine).expect("create the journal directory");
        Self {
            file: machine.join("system.journal"),
            mono: 1_000_000,
        }
    }

    /// Entries of (unit, syslog identifier, message); an empty unit is
    /// left out.
    pub fn append(&mut self, entries: &[(&str, &str, &str)]) {
        let mut text = String::new();
        for (unit, ident, msg) in entries {
            self.mono += 1000;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_micros();
            text.push_str(&format!(
                "__REALTIME_TIMESTAMP={now}\n__MONOTONIC_TIMESTAMP={}\n_BOOT_ID={BOOT_ID}\n",
                self.mono
            ));
            if !unit.is_empty() {
                text.push_str(&format!("_SYSTEMD_UNIT={unit}\n"));
            }
            text.push_str(&format!(
                "SYSLOG_IDENTIFIER={ident}\n_HOSTNAME=node1\n_PID=9575\nPRIORITY=6\nMESSAGE={msg}\n\n"
            ));
        }
        let mut child = Command::new(JOURNAL_REMOTE)
            .arg("-o")
            .arg(&self.file)
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("systemd-journal-remote starts");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "systemd-journal-remote: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
