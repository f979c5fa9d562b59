//! Probe-level test of `storage_sleep` (tp_btf `sched_switch`), as aya's own
//! integration tests do: load the programs, fill their tables, trigger real
//! sleeps, read the BLOCKED map and the drop counters. What it must record:
//! - a D sleep of any task (here an unwatched one, blocked creating a file
//!   on a frozen ext4 of the test's own), with the syscall, the dirfd and
//!   the path read from its registers and memory, and a kernel stack;
//! - an interruptible sleep of a watched task in a tracked file syscall on
//!   storage (a stat waiting for a FUSE daemon of the test's own that never
//!   answers), with the syscall and the path.
//!
//! And not: the same stat by an unwatched task, a watched task's read on a
//! FIFO (a pipe is no storage), nor its sleep in an untracked syscall
//! (`clock_nanosleep`).
#![cfg(target_arch = "x86_64")]

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use watchdog::probes::{KernelLayout, Probes, STORAGE_PROBES};
use watchdog_common::{
    AT_FDCWD, ArgKind, BLOCKED_MAP, BlockedEntry, COMM_LEN, CommPattern, DROP_BLOCKED,
    DROP_PATH_READ, DROP_SLEEPING, DROP_STACK, SLEEPING_MAP, SYSCALL_KINDS_MAP, TASK_INTERRUPTIBLE,
    TASK_UNINTERRUPTIBLE, WATCH_COMMS_MAP,
};
use watchdog_tests::frozen::{FrozenExt4, skip_unless_freeze_prereqs};
use watchdog_tests::fuse::{HangingFuse, skip_unless_fuse_prereqs};
use watchdog_tests::names::ProcessNames;
use watchdog_tests::{ChildGuard, wait};

const WATCHED: &str = "wd-probe-w";
const UNWATCHED: &str = "wd-probe-u";
/// stat, newfstatat, statx.
const NR_STATS: [u32; 3] = [4, 262, 332];
const NR_OPENAT: u32 = 257;

const READ_FIFO: &str = "import os, sys; fd = os.open(sys.argv[1], os.O_RDWR); os.read(fd, 1)";
const STAT: &str = "import os, sys; os.stat(sys.argv[1])";
const SLEEP: &str = "import time, sys; time.sleep(600)";
const CREATE: &str =
    "import os, sys; os.close(os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY, 0o644))";

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
    if !skip_unless_freeze_prereqs() || !skip_unless_fuse_prereqs() {
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
    let sleeping: BpfHashMap<MapData, u32, BlockedEntry> =
        BpfHashMap::try_from(probes.take_map(SLEEPING_MAP).unwrap()).unwrap();

    // Children first: they drop (are killed) after the guard thawed.
    let mut kids: Vec<ChildGuard> = Vec::new();
    let mut frozen = FrozenExt4::mount().unwrap_or_else(|e| panic!("{e}"));
    let fuse = HangingFuse::start();
    let names = ProcessNames::new();
    let fifo = names.dir().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    frozen.freeze().unwrap_or_else(|e| panic!("{e}"));
    let target = frozen.mount_point().join("newfile");

    kids.push(names.spawn(WATCHED, STAT, &fuse.hang_path()));
    // One at a time on the FUSE mount: a blocked lookup holds the directory.
    wait_wchan(kids[0].pid(), &["request_wait_answer"]);
    kids.push(names.spawn(WATCHED, READ_FIFO, &fifo));
    kids.push(names.spawn(WATCHED, SLEEP, &fifo));
    kids.push(names.spawn(UNWATCHED, CREATE, &target));
    kids.push(names.spawn(UNWATCHED, STAT, &fuse.hang_path()));
    let pids: Vec<u32> = kids.iter().map(ChildGuard::pid).collect();
    let pipe = [
        "pipe_read",
        "anon_pipe_read",
        "fifo_pipe_read",
        "pipe_wait_readable",
    ];
    wait_wchan(pids[1], &pipe);
    wait_wchan(pids[2], &["hrtimer_nanosleep", "do_nanosleep"]);
    wait_wchan(pids[3], &["percpu_rwsem_wait", "__percpu_down_read"]);
    // The second stat waits for the first's lookup (a lock) or its own request.
    std::thread::sleep(Duration::from_millis(300));

    // Interruptible sleeps go to SLEEPING, D sleeps to BLOCKED; the latest
    // sleep of each task counts.
    let mut entries: HashMap<u32, BlockedEntry> = HashMap::new();
    for e in blocked.iter().chain(sleeping.iter()).filter_map(Result::ok) {
        let cur = entries.entry(e.0).or_insert(e.1);
        if e.1.since_ns > cur.since_ns {
            *cur = e.1;
        }
    }
    let get = |pid: u32| entries.get(&pid).copied();

    let w = get(pids[0]).unwrap_or_else(|| panic!("no entry for the watched stat {}", pids[0]));
    assert_ne!(w.state & TASK_INTERRUPTIBLE, 0, "{w:?}");
    assert_eq!(w.tgid, pids[0]);
    assert!(NR_STATS.contains(&w.nr), "{w:?}");
    assert!(
        w.kind == ArgKind::Path0 as u32 || w.kind == ArgKind::DirfdPath1 as u32,
        "{w:?}"
    );
    assert_eq!(path_of(&w), fuse.hang_path().to_str().unwrap());
    assert!(w.stack_id < 0, "interruptible sleeps carry no stack: {w:?}");
    assert!(w.switches > 0, "{w:?}");

    // (A D sleep of theirs, e.g. on a cold page cache at start, is recorded
    // and rightly so; an interruptible one must not be.)
    let sleeping = |pid: u32| get(pid).filter(|e| e.state & TASK_UNINTERRUPTIBLE == 0);
    for (pid, what) in [
        (pids[1], "a watched task's read on a FIFO"),
        (pids[2], "a watched task's nanosleep"),
        (pids[4], "an unwatched task's stat"),
    ] {
        assert!(
            sleeping(pid).is_none(),
            "{what} was recorded: {:?}",
            get(pid)
        );
    }

    let d = get(pids[3]).unwrap_or_else(|| panic!("no entry for the D sleep {}", pids[3]));
    assert_ne!(d.state & TASK_UNINTERRUPTIBLE, 0, "{d:?}");
    assert_eq!(d.nr, NR_OPENAT, "{d:?}");
    assert_eq!(d.kind, ArgKind::DirfdPath1 as u32, "{d:?}");
    assert_eq!(d.fd, AT_FDCWD, "{d:?}");
    assert_eq!(path_of(&d), target.to_str().unwrap());
    // A D sleep carries its stack, unless the stack map's bucket held another
    // (-EEXIST, counted; the sweep then reads /proc/<tid>/stack).
    assert!(
        d.stack_id >= 0 || probes.drop_slot(DROP_STACK) > 0,
        "a D sleep without its stack and no stack drop counted: {d:?}"
    );

    assert_eq!(probes.drop_slot(DROP_BLOCKED), 0, "BLOCKED overflowed");
    assert_eq!(probes.drop_slot(DROP_SLEEPING), 0, "SLEEPING overflowed");
    // Readable (a counter of failed path reads; the paths above were read).
    let _ = probes.drop_slot(DROP_PATH_READ);

    frozen.thaw().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        kids[3].wait_timeout(Duration::from_secs(5)).is_some(),
        "the creator is still blocked after the thaw"
    );
}
