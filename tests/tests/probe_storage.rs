//! Probe-level test of `storage_sleep` (tp_btf `sched_switch`), as aya's own
//! integration tests do: load the programs, fill their tables, trigger real
//! sleeps, read the BLOCKED map and the drop counters. What it must record:
//! - a D sleep of any task (here an unwatched one, blocked creating a file
//!   on a frozen ext4 of the test's own), with the syscall, the dirfd and
//!   the path read from its registers and memory, and a kernel stack;
//! - an interruptible sleep of a watched task in a tracked file syscall
//!   (`read` on a FIFO), with its fd.
//!
//! And not: the same read by an unwatched task, nor a watched task's sleep
//! in an untracked syscall (`clock_nanosleep`).
#![cfg(target_arch = "x86_64")]

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use watchdog::probes::{KernelLayout, Probes, STORAGE_PROBES};
use watchdog_common::{
    AT_FDCWD, ArgKind, BLOCKED_MAP, BlockedEntry, COMM_LEN, CommPattern, DROP_BLOCKED,
    DROP_PATH_READ, SYSCALL_KINDS_MAP, TASK_INTERRUPTIBLE, TASK_UNINTERRUPTIBLE, WATCH_COMMS_MAP,
};
use watchdog_tests::frozen::{FrozenExt4, skip_unless_freeze_prereqs};
use watchdog_tests::{ChildGuard, PYTHON, unix_ns, wait};

const WATCHED: &str = "wd-probe-w";
const UNWATCHED: &str = "wd-probe-u";
const NR_READ: u32 = 0;
const NR_OPENAT: u32 = 257;

const READ_FIFO: &str = "import os, sys; fd = os.open(sys.argv[1], os.O_RDWR); os.read(fd, 1)";
const SLEEP: &str = "import time, sys; time.sleep(600)";
const CREATE: &str =
    "import os, sys; os.close(os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY, 0o644))";

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn spawn(dir: &Path, name: &str, script: &str, arg: &Path) -> ChildGuard {
    let exe = dir.join(name);
    if !exe.exists() {
        std::os::unix::fs::symlink(PYTHON, &exe).expect("symlink python3");
    }
    let mut cmd = Command::new(&exe);
    cmd.args(["-c", script])
        .arg(arg)
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    ChildGuard::spawn(&mut cmd, &format!("{name} {script}")).expect("spawn")
}

fn wchan(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default()
}

fn wait_wchan(pid: u32, want: &[&str]) {
    if let Err(e) = wait::until(
        &format!("pid {pid} to sleep in {want:?}"),
        Duration::from_secs(10),
        || {
            let w = wchan(pid);
            if want.contains(&w.as_str()) {
                Ok(())
            } else {
                Err(w)
            }
        },
    ) {
        panic!("{e}");
    }
}

fn pattern(name: &str) -> CommPattern {
    let mut p = CommPattern {
        name: [0; COMM_LEN],
        len: name.len() as u32,
        prefix: 0,
    };
    p.name[..name.len()].copy_from_slice(name.as_bytes());
    p
}

fn path_of(e: &BlockedEntry) -> String {
    let end = e.path.iter().position(|b| *b == 0).unwrap_or(e.path.len());
    String::from_utf8_lossy(&e.path[..end]).into_owned()
}

#[test]
fn storage_sleep_records_d_sleeps_and_watched_file_syscalls_only() {
    if !skip_unless_freeze_prereqs() {
        return;
    }
    let layout = KernelLayout::from_btf(Path::new("/sys/kernel/btf/vmlinux"));
    let mut probes = Probes::load(&layout, &STORAGE_PROBES, &[]).expect("load the probes");
    for s in &probes.statuses {
        assert_eq!(
            s.status,
            watchdog::probes::ProbeState::Attached,
            "{} {:?}",
            s.name,
            s.detail
        );
    }
    let mut comms: Array<MapData, CommPattern> =
        Array::try_from(probes.take_map(WATCH_COMMS_MAP).unwrap()).unwrap();
    comms.set(0, pattern(WATCHED), 0).unwrap();
    let mut kinds: Array<MapData, u8> =
        Array::try_from(probes.take_map(SYSCALL_KINDS_MAP).unwrap()).unwrap();
    for (nr, _, kind) in watchdog::storage::syscalls::TRACKED {
        kinds.set(*nr, *kind as u8, 0).unwrap();
    }
    let blocked: BpfHashMap<MapData, u32, BlockedEntry> =
        BpfHashMap::try_from(probes.take_map(BLOCKED_MAP).unwrap()).unwrap();

    // Children first: they drop (are killed) after the guard thawed.
    let mut kids: Vec<ChildGuard> = Vec::new();
    let mut frozen = FrozenExt4::mount().unwrap_or_else(|e| panic!("{e}"));
    let dir = Dir(std::env::temp_dir().join(format!(
        "wd-probe-{}-{}",
        std::process::id(),
        unix_ns(SystemTime::now())
    )));
    fs::create_dir_all(&dir.0).unwrap();
    let fifo = dir.0.join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    frozen.freeze().unwrap_or_else(|e| panic!("{e}"));
    let target = frozen.mount_point().join("newfile");

    kids.push(spawn(&dir.0, WATCHED, READ_FIFO, &fifo));
    kids.push(spawn(&dir.0, UNWATCHED, READ_FIFO, &fifo));
    kids.push(spawn(&dir.0, WATCHED, SLEEP, &fifo));
    kids.push(spawn(&dir.0, UNWATCHED, CREATE, &target));
    let pids: Vec<u32> = kids.iter().map(ChildGuard::pid).collect();
    wait_wchan(
        pids[0],
        &[
            "pipe_read",
            "anon_pipe_read",
            "fifo_pipe_read",
            "pipe_wait_readable",
        ],
    );
    wait_wchan(
        pids[1],
        &[
            "pipe_read",
            "anon_pipe_read",
            "fifo_pipe_read",
            "pipe_wait_readable",
        ],
    );
    wait_wchan(pids[2], &["hrtimer_nanosleep", "do_nanosleep"]);
    wait_wchan(pids[3], &["percpu_rwsem_wait"]);

    let entries: HashMap<u32, BlockedEntry> = blocked.iter().filter_map(Result::ok).collect();
    let get = |pid: u32| entries.get(&pid).copied();

    let w = get(pids[0]).unwrap_or_else(|| panic!("no entry for the watched read {}", pids[0]));
    assert_ne!(w.state & TASK_INTERRUPTIBLE, 0, "{w:?}");
    assert_eq!(w.tgid, pids[0]);
    assert_eq!(w.nr, NR_READ, "{w:?}");
    assert_eq!(w.kind, ArgKind::Fd as u32, "{w:?}");
    assert!(w.fd >= 3, "{w:?}");
    assert!(w.stack_id < 0, "interruptible sleeps carry no stack: {w:?}");
    assert!(w.switches > 0, "{w:?}");

    assert!(
        get(pids[1]).is_none(),
        "an unwatched task's interruptible read was recorded: {:?}",
        get(pids[1])
    );
    assert!(
        get(pids[2]).is_none(),
        "a watched task's nanosleep was recorded: {:?}",
        get(pids[2])
    );

    let d = get(pids[3]).unwrap_or_else(|| panic!("no entry for the D sleep {}", pids[3]));
    assert_ne!(d.state & TASK_UNINTERRUPTIBLE, 0, "{d:?}");
    assert_eq!(d.nr, NR_OPENAT, "{d:?}");
    assert_eq!(d.kind, ArgKind::DirfdPath1 as u32, "{d:?}");
    assert_eq!(d.fd, AT_FDCWD, "{d:?}");
    assert_eq!(path_of(&d), target.to_str().unwrap());
    assert!(d.stack_id >= 0, "a D sleep carries its stack: {d:?}");

    assert_eq!(probes.drop_slot(DROP_BLOCKED), 0, "BLOCKED overflowed");
    // Readable (a counter of failed path reads; the paths above were read).
    let _ = probes.drop_slot(DROP_PATH_READ);

    frozen.thaw().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        kids[3].wait_timeout(Duration::from_secs(5)).is_some(),
        "the creator is still blocked after the thaw"
    );
}
