//! A systemd journal file (kubelet's log on modern nodes), read as the agent
//! reads the journal: the same files, filter and line parser. A journal file
//! is input from elsewhere too: a bundle, a directory copied off a node.
//! Seeded with a real file written by systemd-journal-remote
//! (`cargo xtask fuzz` makes it).
#![no_main]
use std::{path::PathBuf, sync::OnceLock};

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // One directory per fuzzing process (on tmpfs when /dev/shm is there).
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let d = base.join(format!("wd-fuzz-journal-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("create the fuzz directory");
        d
    });
    std::fs::write(dir.join("system.journal"), data).expect("write the journal file");
    let _ = watchdog::sources::kubelet::journal::read_history(
        std::slice::from_ref(dir),
        1000,
        watchdog::model::Time(0),
    );
});
