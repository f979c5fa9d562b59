//! Storage hangs: tasks blocked on a FUSE mount whose daemon never answers.
//!
//! Every test makes its own hanging mount ([`HangingFuse`]) and, where it
//! needs one, its own dockerd ([`Dockerd`]); both clean up on drop (the FUSE
//! connection is aborted through fusectl before anything is killed).
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use watchdog_tests::dockerd::{Dockerd, skip_unless_docker_prereqs};
use watchdog_tests::fuse::{HangingFuse, skip_unless_fuse_prereqs};
use watchdog_tests::{ChildGuard, PYTHON};

/// /proc/<pid>/stat state letter.
fn state(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 2..].chars().next()
}

fn wchan(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default()
}

/// Waits until `pid` sleeps in `request_wait_answer` (blocked on our FUSE).
fn wait_blocked_on_fuse(pid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if wchan(pid) == "request_wait_answer" {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A python process that stats `path` (blocks on the hanging mount).
fn stat_in_background(path: &Path) -> ChildGuard {
    let mut cmd = Command::new(PYTHON);
    cmd.args(["-c", "import os, sys; os.stat(sys.argv[1])"])
        .arg(path)
        .stdin(Stdio::null());
    ChildGuard::spawn(&mut cmd, "stat on hanging FUSE").expect("spawn python")
}

#[test]
fn fixture_fuse_blocks_and_abort_releases() {
    if !skip_unless_fuse_prereqs() {
        return;
    }
    let mut fuse = HangingFuse::start();
    // Answering paths answer.
    assert_eq!(
        std::fs::metadata(fuse.file_path())
            .expect("stat file")
            .len(),
        4096
    );
    assert!(fuse.vol_dir().is_dir());
    let mut stat = stat_in_background(&fuse.hang_path());
    assert!(
        wait_blocked_on_fuse(stat.pid(), Duration::from_secs(5)),
        "stat of {} did not block in request_wait_answer (wchan {:?}, state {:?})",
        fuse.hang_path().display(),
        wchan(stat.pid()),
        state(stat.pid())
    );
    // A signal moves it from the interruptible to the killable (D) wait.
    stat.signal(libc::SIGTERM).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(state(stat.pid()), Some('D'));
    fuse.abort().expect("abort");
    assert!(
        stat.wait_timeout(Duration::from_secs(5)).is_some(),
        "abort did not release the blocked stat"
    );
}

#[test]
fn fixture_dockerd_runs_a_container_with_a_fuse_volume() {
    if !skip_unless_docker_prereqs() || !skip_unless_fuse_prereqs() {
        return;
    }
    let mut dockerd = Dockerd::start().unwrap_or_else(|e| panic!("{e}"));
    let fuse = HangingFuse::start();
    let image = dockerd.busybox_image().unwrap_or_else(|e| panic!("{e}"));
    let vol = format!("{}:/data", fuse.vol_dir().display());
    let id = dockerd
        .run_detached(&[
            "-v",
            &vol,
            &image,
            "sh",
            "-c",
            "cat /data/file >/dev/null; sleep 600",
        ])
        .unwrap_or_else(|e| panic!("{e}\n{}", dockerd.log_tail()));
    let pid = dockerd.container_pid(&id).unwrap_or_else(|e| panic!("{e}"));
    assert!(pid > 1);
}
