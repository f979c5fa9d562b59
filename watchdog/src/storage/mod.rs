//! The storage-hang sweep: which tasks sleep uninterruptibly, and which
//! watched processes sleep in a file syscall, for longer than the threshold;
//! and on which mount, in which container, in which pod.
//!
//! The probe records every sleep with its syscall and path at the switch
//! (see watchdog-ebpf/src/storage.rs), so a workload's own process blocked
//! on a frozen or dead mount is attributed like a runtime's;
//! every poll interval [`StorageTracker::sweep`] reads them and enriches the
//! old entries from /proc only, through the [`ProcReader`]: `stat`,
//! `status`, `stack`, `syscall`, `cgroup`, `mountinfo`, and readlink of
//! `cwd`, `ns/mnt` and `fd/N`. None of these touch the hung mount (no
//! stat/statfs/open of user paths; no `cmdline`, `environ` or `mem`, which
//! take the task's mmap lock).
pub mod stack;
pub mod syscalls;

use std::{
    collections::{HashMap, HashSet},
    path::Path,
};

use aya::maps::{Array, HashMap as BpfHashMap, MapData, StackTraceMap};
use watchdog_common::{
    AT_FDCWD, ArgKind, BLOCKED_MAP, BlockedEntry, COMM_LEN, CommPattern, NO_SYSCALL, SLEEPING_MAP,
    STACKS_MAP, SYSCALL_KINDS_MAP, TASK_UNINTERRUPTIBLE, TASK_WAKEKILL, WATCH_COMMS_MAP,
    WATCH_COMMS_SLOTS, WATCHED_BYTES_MAP, WATCHED_MAP,
};

use crate::{
    context::clock::MonotonicClock,
    context::{
        mounts,
        procfs::{ProcReader, parse_stat},
    },
    model::Time,
    model::{BlockedTask, BlockedTasks, MountRef, WaitClass},
    probes::Probes,
};

/// Runtime process names watched by default (`*` = prefix).
pub const DEFAULT_WATCH_COMMS: &[&str] = &[
    "kubelet",
    "dockerd",
    "containerd",
    "containerd-shim*",
    "runc",
    "crun",
    "crio",
    "conmon",
];

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("the eBPF object has no {0} map (build mismatch)")]
    MissingMap(&'static str),
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error(
        "--watch-comm {0:?}: a process name is 1 to 15 bytes (TASK_COMM_LEN - 1), optionally ending in '*' for a prefix"
    )]
    BadComm(String),
    #[error("--watch-comm: at most {max} names, got {got}")]
    TooManyComms { max: u32, got: usize },
}

/// A parsed `--watch-comm` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommMatch {
    pub name: String,
    pub prefix: bool,
}

impl CommMatch {
    pub fn parse(s: &str) -> Result<Self, SetupError> {
        let (name, prefix) = match s.strip_suffix('*') {
            Some(n) => (n, true),
            None => (s, false),
        };
        // The kernel truncates comm to 15 bytes: a longer exact name can
        // never match, a longer prefix is cut.
        if name.is_empty() || name.contains('*') || (!prefix && name.len() > COMM_LEN - 1) {
            return Err(SetupError::BadComm(s.to_owned()));
        }
        let name = name[..name.len().min(COMM_LEN - 1)].to_owned();
        Ok(Self { name, prefix })
    }

    pub fn matches(&self, comm: &str) -> bool {
        if self.prefix {
            comm.starts_with(&self.name)
        } else {
            comm == self.name
        }
    }

    fn pattern(&self) -> CommPattern {
        let mut name = [0u8; COMM_LEN];
        name[..self.name.len()].copy_from_slice(self.name.as_bytes());
        CommPattern {
            name,
            len: self.name.len() as u32,
            prefix: u32::from(self.prefix),
        }
    }
}

pub fn parse_comms<S: AsRef<str>>(list: &[S]) -> Result<Vec<CommMatch>, SetupError> {
    if list.len() > WATCH_COMMS_SLOTS as usize {
        return Err(SetupError::TooManyComms {
            max: WATCH_COMMS_SLOTS,
            got: list.len(),
        });
    }
    list.iter().map(|s| CommMatch::parse(s.as_ref())).collect()
}

/// Processes to watch at start: runtimes by name, and all their descendants.
pub fn initial_watch_set(procs: &HashMap<u32, (String, u32)>, comms: &[CommMatch]) -> HashSet<u32> {
    let mut memo: HashMap<u32, bool> = HashMap::new();
    let mut out = HashSet::new();
    for &pid in procs.keys() {
        let mut chain = Vec::new();
        let mut cur = pid;
        let verdict = loop {
            if let Some(v) = memo.get(&cur) {
                break *v;
            }
            let Some((comm, ppid)) = procs.get(&cur) else {
                break false;
            };
            chain.push(cur);
            if comms.iter().any(|c| c.matches(comm)) {
                break true;
            }
            if *ppid == 0 || *ppid == cur || chain.len() > 4096 {
                break false;
            }
            cur = *ppid;
        };
        for p in chain {
            memo.insert(p, verdict);
        }
        if verdict {
            out.insert(pid);
        }
    }
    out
}

/// `watchdog trace` options of the storage-hang detection.
#[derive(Clone, Debug)]
pub struct StorageOptions {
    /// A call or D sleep counts as a hang after this long (still blocked).
    pub threshold_ms: u64,
    pub watch_comms: Vec<CommMatch>,
}

impl Default for StorageOptions {
    fn default() -> Self {
        Self {
            threshold_ms: 10_000,
            watch_comms: parse_comms(DEFAULT_WATCH_COMMS).expect("valid default names"),
        }
    }
}

/// Kernel-side failures of the storage probes, from the DROPS slots.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, PartialEq, Eq)]
pub struct StorageDrops {
    /// WATCHED inserts that failed (map full): processes not tracked.
    pub watched: u64,
    /// Sleeps recorded without their path (the user string was unreadable).
    pub path_reads: u64,
    /// D sleeps not recorded (BLOCKED full).
    pub blocked: u64,
    /// Watched tasks' interruptible sleeps not recorded (SLEEPING full).
    pub sleeping: u64,
    /// Kernel stacks not stored (stack map full or hash collision).
    pub stacks: u64,
    /// D-Bus/systemd connections not followed (SOCK_CONNS full).
    pub sock_conns: u64,
    /// Socket decisions not stored (the kernel refused a DBUS_SOCKS socket-storage entry; socket tracepoints).
    pub dbus_socks: u64,
    /// Followed calls whose bytes went by unparsed (unknown syscall, failed
    /// read; socket tracepoints): the next event says desync.
    pub dbus_reads: u64,
}

impl StorageDrops {
    pub fn read(probes: &Probes) -> Self {
        Self {
            watched: probes.drop_slot(watchdog_common::DROP_WATCHED),
            path_reads: probes.drop_slot(watchdog_common::DROP_PATH_READ),
            blocked: probes.drop_slot(watchdog_common::DROP_BLOCKED),
            sleeping: probes.drop_slot(watchdog_common::DROP_SLEEPING),
            stacks: probes.drop_slot(watchdog_common::DROP_STACK),
            sock_conns: probes.drop_slot(watchdog_common::DROP_SOCK_CONNS),
            dbus_socks: probes.drop_slot(watchdog_common::DROP_DBUS_SOCKS),
            dbus_reads: probes.drop_slot(watchdog_common::DROP_DBUS_READS),
        }
    }
}

/// Counters of the last sweep, for the summary and `ready`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SweepStats {
    pub watched: usize,
    /// Entries in the BLOCKED and SLEEPING maps (sleeps recorded, current
    /// or not).
    pub blocked: usize,
    pub sleeping: usize,
    pub stale_removed: u64,
}

/// Owns the storage maps and turns them into observations.
pub struct StorageTracker {
    proc: ProcReader,
    threshold_ns: u64,
    /// D sleeps, then watched tasks' interruptible sleeps.
    blocked: BpfHashMap<MapData, u32, BlockedEntry>,
    sleeping: BpfHashMap<MapData, u32, BlockedEntry>,
    watched: BpfHashMap<MapData, u32, u8>,
    /// Processes running at start whose own name is a runtime name (not
    /// their descendants).
    runtimes_at_start: Vec<u32>,
    stacks: Option<StackTraceMap<MapData>>,
    symbolizer: stack::Symbolizer,
    clock: MonotonicClock,
    pub stats: SweepStats,
}

/// Take a map out of the probes' object as type `T`.
pub(crate) fn take<T>(
    probes: &mut Probes,
    name: &'static str,
    conv: impl FnOnce(aya::maps::Map) -> Result<T, aya::maps::MapError>,
) -> Result<T, SetupError> {
    let m = probes.take_map(name).ok_or(SetupError::MissingMap(name))?;
    conv(m).map_err(|source| SetupError::Map { map: name, source })
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl StorageTracker {
    /// Fill the name and syscall tables, then seed WATCHED from /proc. Call
    /// after the probes are attached (so nothing forked meanwhile is missed).
    pub fn new(
        probes: &mut Probes,
        root: &Path,
        comms: &[CommMatch],
        threshold_ms: u64,
    ) -> Result<Self, SetupError> {
        let mut names: Array<MapData, CommPattern> =
            take(probes, WATCH_COMMS_MAP, Array::try_from)?;
        for (i, c) in comms.iter().enumerate() {
            names
                .set(i as u32, c.pattern(), 0)
                .map_err(|source| SetupError::Map {
                    map: WATCH_COMMS_MAP,
                    source,
                })?;
        }
        let mut kinds: Array<MapData, u8> = take(probes, SYSCALL_KINDS_MAP, Array::try_from)?;
        for (nr, _, kind) in syscalls::TRACKED {
            kinds
                .set(*nr, *kind as u8, 0)
                .map_err(|source| SetupError::Map {
                    map: SYSCALL_KINDS_MAP,
                    source,
                })?;
        }
        let mut watched: BpfHashMap<MapData, u32, u8> =
            take(probes, WATCHED_MAP, BpfHashMap::try_from)?;
        let mut bytes: Array<MapData, [u8; 64]> = take(probes, WATCHED_BYTES_MAP, Array::try_from)?;
        let proc = ProcReader::new(root);
        let procs = all_procs(&proc);
        let seed = initial_watch_set(&procs, comms);
        let mut runtimes_at_start: Vec<u32> = procs
            .iter()
            .filter(|(_, (comm, _))| comms.iter().any(|c| c.matches(comm)))
            .map(|(pid, _)| *pid)
            .collect();
        runtimes_at_start.sort_unstable();
        let mut words: HashMap<u32, [u8; 64]> = HashMap::new();
        for pid in &seed {
            if let Err(e) = watched.insert(pid, 1, 0) {
                tracing::warn!("cannot watch pid {pid}: {e}");
            }
            words.entry(pid >> 6).or_insert([0; 64])[(pid & 63) as usize] = 1;
        }
        // Merge with what the probes set since they attached (a store racing
        // this read-modify-write of one 64-byte element could be lost: the
        // window is this loop, once at start).
        for (i, add) in words {
            let mut cur = bytes.get(&i, 0).unwrap_or([0; 64]);
            for (c, a) in cur.iter_mut().zip(add) {
                *c |= a;
            }
            if let Err(e) = bytes.set(i, cur, 0) {
                tracing::warn!("cannot mark pids {}..{} watched: {e}", i * 64, i * 64 + 63);
            }
        }
        let stacks = take(probes, STACKS_MAP, StackTraceMap::try_from)
            .map_err(|e| tracing::warn!("kernel stacks unavailable: {e}"))
            .ok();
        Ok(Self {
            symbolizer: stack::Symbolizer::new(proc.clone()),
            proc,
            threshold_ns: threshold_ms * 1_000_000,
            blocked: take(probes, BLOCKED_MAP, BpfHashMap::try_from)?,
            sleeping: take(probes, SLEEPING_MAP, BpfHashMap::try_from)?,
            watched,
            runtimes_at_start,
            stacks,
            clock: MonotonicClock::new(),
            stats: SweepStats {
                watched: seed.len(),
                ..SweepStats::default()
            },
        })
    }

    /// Processes running at start whose own name is a runtime name.
    pub fn runtimes_at_start(&self) -> &[u32] {
        &self.runtimes_at_start
    }

    /// [`StorageTracker::new`] when every storage probe attached; otherwise
    /// logs why and returns None (the other probes keep running).
    pub fn start(probes: &mut Probes, root: &Path, opts: &StorageOptions) -> Option<Self> {
        let missing: Vec<String> = probes
            .statuses
            .iter()
            .filter(|s| {
                crate::probes::STORAGE_PROBES
                    .iter()
                    .any(|p| p.name == s.name)
                    && s.status != crate::probes::ProbeState::Attached
            })
            .map(|s| format!("{} ({})", s.name, s.detail.as_deref().unwrap_or("?")))
            .collect();
        if !missing.is_empty() {
            tracing::warn!(
                "storage-hang detection is off, its probes are unavailable: {}",
                missing.join("; ")
            );
            return None;
        }
        match Self::new(probes, root, &opts.watch_comms, opts.threshold_ms) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!("storage-hang detection is off: {e}");
                None
            }
        }
    }

    /// Tasks already in D state when the probes attached: the
    /// `sched_switch` probe records a sleep when it begins, and these will not
    /// switch again until they wake, so without this a `trace` started
    /// during an incident would never see the very tasks it is run for.
    /// Each gets a BLOCKED entry (unless the probe wrote one since) with its
    /// context-switch count (the sweep's "still blocked" test), blocked at
    /// least since now (when the sleep began is not known: the scheduler's
    /// per-CPU clocks behind `se.exec_start` drift by seconds on VMs);
    /// syscall, path and stack come from /proc at the sweep. Returns how
    /// many.
    pub fn adopt_blocked(&mut self) -> usize {
        let now = monotonic_ns();
        let mut n = 0;
        for pid in self.proc.pids() {
            let tasks: Vec<u32> = self.proc.list_numbers(&self.proc.pid_dir(pid).join("task"));
            for tid in tasks {
                let Some((_, 'D', _)) = self
                    .task_read(pid, tid, "stat")
                    .as_deref()
                    .and_then(parse_stat)
                else {
                    continue;
                };
                let Some(sw) = switches(&self.proc, pid, tid) else {
                    continue;
                };
                let e = BlockedEntry {
                    since_ns: now,
                    switches: sw,
                    stack_id: -1,
                    state: TASK_UNINTERRUPTIBLE,
                    tgid: pid,
                    nr: NO_SYSCALL,
                    kind: 0,
                    fd: AT_FDCWD,
                    flags: watchdog_common::BLOCKED_ADOPTED,
                    path: [0; watchdog_common::PATH_LEN],
                };
                // BPF_NOEXIST: a record the probe wrote since wins.
                if self.blocked.insert(tid, e, 1).is_ok() {
                    n += 1;
                }
            }
        }
        n
    }

    /// A file of a task (`/proc/<tgid>/task/<tid>/<file>`).
    fn task_read(&self, tgid: u32, tid: u32, file: &str) -> Option<String> {
        self.proc.read(&self.proc.task_file(tgid, tid, file)).ok()
    }

    /// Readlink of `/proc/<tgid>/fd/<fd>`.
    fn fd_link(&self, tgid: u32, fd: impl std::fmt::Display) -> Option<String> {
        self.proc
            .read_link(&self.proc.pid_file(tgid, &format!("fd/{fd}")))
            .ok()
    }

    /// One sweep. `at` is the observation time.
    pub fn sweep(&mut self, at: Time) -> BlockedTasks {
        let now = monotonic_ns();
        let threshold = self.threshold_ns;
        let mut cands: HashMap<u32, BlockedEntry> = HashMap::new();

        for d in [true, false] {
            let map = if d {
                &mut self.blocked
            } else {
                &mut self.sleeping
            };
            let limit = if d {
                watchdog_common::BLOCKED_ENTRIES
            } else {
                watchdog_common::SLEEPING_ENTRIES
            };
            let entries: Vec<(u32, BlockedEntry)> = map
                .iter()
                .filter_map(Result::ok)
                .take(limit as usize * 2)
                .collect();
            if d {
                self.stats.blocked = entries.len();
            } else {
                self.stats.sleeping = entries.len();
            }
            for (tid, e) in entries {
                if now.saturating_sub(e.since_ns) < threshold {
                    continue;
                }
                // Valid only while the task has not been switched since (gone
                // tasks are stale too: the exit probe may have attached late).
                match switches(&self.proc, e.tgid, tid) {
                    Some(n) if e.switches == 0 || n == e.switches => {
                        // A D record wins over an older interruptible one.
                        cands.entry(tid).or_insert(e);
                    }
                    _ => {
                        let map = if d {
                            &mut self.blocked
                        } else {
                            &mut self.sleeping
                        };
                        let _ = map.remove(&tid);
                        self.stats.stale_removed += 1;
                    }
                }
            }
        }
        self.stats.watched = self.watched.keys().filter_map(Result::ok).count();

        let mut tasks = Vec::new();
        let mut host_mounts: Option<Vec<mounts::MountEntry>> = None;
        let mut ns_mounts: HashMap<String, Vec<mounts::MountEntry>> = HashMap::new();
        for (tid, e) in cands {
            if let Some(t) = self.enrich(tid, &e, now, &mut host_mounts, &mut ns_mounts) {
                tasks.push(t);
            }
        }
        tasks.sort_by(|a, b| a.since.cmp(&b.since).then(a.tid.cmp(&b.tid)));
        BlockedTasks {
            at,
            threshold_ms: threshold / 1_000_000,
            tasks,
        }
    }

    fn enrich(
        &mut self,
        tid: u32,
        e: &BlockedEntry,
        now: u64,
        host_mounts: &mut Option<Vec<mounts::MountEntry>>,
        ns_mounts: &mut HashMap<String, Vec<mounts::MountEntry>>,
    ) -> Option<BlockedTask> {
        let tgid = e.tgid;
        let (comm, state, _) = parse_stat(&self.task_read(tgid, tid, "stat")?)?;
        // A D-sleep record is only current while the task is still in D.
        let d = e.state & TASK_UNINTERRUPTIBLE != 0;
        if d && state != 'D' {
            return None;
        }
        let stack = self.stack_of(tgid, tid, e);
        let wait = stack::classify(&stack);
        // A long read on a pipe or socket is no hang: report only D, or a
        // wait on storage (FUSE requests sleep interruptibly until signalled).
        if state != 'D' && wait == WaitClass::Other {
            return None;
        }
        let killable = match state {
            // Adopted at start: /proc does not say.
            'D' if e.flags & watchdog_common::BLOCKED_ADOPTED != 0 => None,
            'D' => Some(e.state & TASK_WAKEKILL != 0),
            _ => Some(true),
        };
        let kind = ArgKind::from_u32(e.kind);
        let (syscall, path) = if e.nr == NO_SYSCALL {
            // A kernel thread or a fault: /proc says what it can (offsets
            // unknown on this kernel also end here).
            if e.state & TASK_UNINTERRUPTIBLE != 0 && self.kthread(tgid) {
                (None, None)
            } else {
                self.proc_syscall(tgid, tid)
            }
        } else {
            (Some(syscalls::name(e.nr)), self.path_of(tgid, tid, e, kind))
        };
        let mount = path.as_deref().and_then(|p| {
            let ns = self
                .proc
                .read_link(&self.proc.pid_file(tgid, "ns/mnt"))
                .unwrap_or_else(|_| format!("pid:{tgid}"));
            let table = ns_mounts.entry(ns).or_insert_with(|| {
                mounts::parse(
                    &self
                        .proc
                        .read_pid_file(tgid, "mountinfo")
                        .unwrap_or_default(),
                )
            });
            let m = mounts::mount_of(table, p)?.clone();
            let host = host_mounts.get_or_insert_with(|| {
                mounts::parse(
                    &self
                        .proc
                        .read(&self.proc.rooted(crate::paths::host::mountinfo()))
                        // PID 1's may be unreadable (no CAP_SYS_PTRACE over it).
                        .or_else(|_| self.proc.read(&self.proc.rooted(crate::paths::MOUNTINFO)))
                        .unwrap_or_default(),
                )
            });
            Some(match mounts::same_fs(host, &m.dev) {
                Some(h) => MountRef {
                    mount_point: h.mount_point.clone(),
                    fs_type: h.fs_type.clone(),
                    source: h.source.clone(),
                    dev: h.dev.clone(),
                    mount_point_in_task: (h.mount_point != m.mount_point)
                        .then(|| m.mount_point.clone()),
                },
                None => MountRef {
                    mount_point: m.mount_point.clone(),
                    fs_type: m.fs_type,
                    source: m.source,
                    dev: m.dev,
                    mount_point_in_task: None,
                },
            })
        });
        // A page-cache wait (folio lock) on a FUSE or NFS file is that
        // server not answering: the request went out asynchronously, so the
        // waiter's stack shows only the generic page wait.
        let stack_wait = wait;
        let wait = match (wait, mount.as_ref()) {
            (WaitClass::Block | WaitClass::Other, Some(m)) => fs_wait(&m.fs_type).unwrap_or(wait),
            _ => wait,
        };
        // A D sleep that is neither a storage wait nor on a known mount (a
        // driver's kernel thread, a lock of something else) is not ours to
        // report; a watched call stuck on a lock under a hung mount has its
        // path, so it stays.
        if wait == WaitClass::Other && mount.is_none() {
            return None;
        }
        let cgroup_text = self.proc.read_pid_file(tgid, "cgroup").unwrap_or_default();
        let cgroup = container_cgroup(&cgroup_text);
        let start_ns = e.since_ns;
        let since = self.clock.to_time(start_ns);
        let watched = self.watched.get(&tgid, 0).is_ok();
        Some(BlockedTask {
            tid,
            pid: tgid,
            comm,
            state: state.to_string(),
            killable,
            syscall,
            path,
            since,
            blocked_for_s: now.saturating_sub(start_ns) as f64 / 1e9,
            wait,
            wait_in_stack: wait == stack_wait,
            stack,
            mount,
            container_id: cgroup.as_deref().and_then(container_id),
            pod: cgroup
                .as_deref()
                .and_then(crate::model::pod::pod_from_cgroup_path),
            cgroup,
            watched,
        })
    }

    /// The recorded stack (symbolised) of a D task, else its current stack
    /// from /proc.
    fn stack_of(&mut self, tgid: u32, tid: u32, d: &BlockedEntry) -> Vec<String> {
        if d.stack_id >= 0 {
            if let Some(s) = self.symbolizer.cached(d.stack_id) {
                return s.clone();
            }
            if let Some(st) = &self.stacks
                && let Ok(trace) = st.get(&(d.stack_id as u32), 0)
            {
                let ips: Vec<u64> = trace.frames().iter().map(|f| f.ip).collect();
                return self.symbolizer.symbolize(d.stack_id, &ips);
            }
        }
        self.task_read(tgid, tid, "stack")
            .map(|t| stack::parse_proc_stack(&t))
            .unwrap_or_default()
    }

    /// The process is a kernel thread (no syscall to show).
    fn kthread(&self, tgid: u32) -> bool {
        // Kernel threads have an empty cmdline... but cmdline takes the mmap
        // lock; their `stat` flags field (9th) has PF_KTHREAD instead.
        self.proc
            .read_pid_file(tgid, "stat")
            .and_then(|t| {
                let rest = t.rsplit_once(')')?.1;
                rest.split_whitespace().nth(6)?.parse::<u64>().ok()
            })
            .is_some_and(|flags| flags & 0x0020_0000 != 0)
    }

    /// Absolute path of a sleeping call's file argument, as the task sees it.
    fn path_of(&self, tgid: u32, tid: u32, s: &BlockedEntry, kind: ArgKind) -> Option<String> {
        let raw = crate::context::nul_terminated(&s.path);
        match kind {
            ArgKind::Fd => self.fd_link(tgid, s.fd),
            ArgKind::Path0 | ArgKind::Path1 | ArgKind::DirfdPath1 => {
                if raw.starts_with('/') {
                    return Some(mounts::normalize(&raw));
                }
                if raw.is_empty() {
                    // AT_EMPTY_PATH (fstat as newfstatat(fd, ""), statx):
                    // the fd itself; else the path was unreadable.
                    return (kind == ArgKind::DirfdPath1 && s.fd >= 0)
                        .then(|| self.fd_link(tgid, s.fd))
                        .flatten();
                }
                let base = if s.fd == AT_FDCWD || kind != ArgKind::DirfdPath1 {
                    self.proc
                        .read_link(&self.proc.task_file(tgid, tid, "cwd"))
                        .ok()?
                } else {
                    self.fd_link(tgid, s.fd)?
                };
                Some(mounts::join(&base, &raw))
            }
            _ => None,
        }
    }

    /// Syscall (and the file of an fd argument) of an untracked D task from
    /// /proc/<pid>/task/<tid>/syscall.
    fn proc_syscall(&self, tgid: u32, tid: u32) -> (Option<String>, Option<String>) {
        let Some(text) = self.task_read(tgid, tid, "syscall") else {
            return (None, None);
        };
        let mut f = text.split_whitespace();
        let Some(nr) = f.next().and_then(|n| n.parse::<u32>().ok()) else {
            return (None, None);
        };
        let arg0 = f
            .next()
            .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok());
        let path = match (syscalls::lookup(nr), arg0) {
            (Some((_, ArgKind::Fd)), Some(fd)) if fd < 1 << 31 => self.fd_link(tgid, fd),
            _ => None,
        };
        (Some(syscalls::name(nr)), path)
    }
}

/// Context switches of a task so far (nvcsw + nivcsw).
fn switches(proc: &ProcReader, tgid: u32, tid: u32) -> Option<u64> {
    let s = proc.read(&proc.task_file(tgid, tid, "status")).ok()?;
    let mut total = 0u64;
    let mut found = 0;
    for l in s.lines() {
        if let Some(v) = l
            .strip_prefix("voluntary_ctxt_switches:")
            .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
        {
            total += v.trim().parse::<u64>().ok()?;
            found += 1;
        }
    }
    (found == 2).then_some(total)
}

/// The wait class a file system's own type implies, for network and
/// userspace file systems.
pub fn fs_wait(fs_type: &str) -> Option<WaitClass> {
    if fs_type == "fuse" || fs_type == "fuseblk" || fs_type.starts_with("fuse.") {
        Some(WaitClass::Fuse)
    } else if fs_type == "nfs" || fs_type == "nfs4" {
        Some(WaitClass::Nfs)
    } else {
        None
    }
}

/// pid -> (comm, ppid) of every process.
fn all_procs(proc: &ProcReader) -> HashMap<u32, (String, u32)> {
    let mut out = HashMap::new();
    for pid in proc.pids() {
        if let Some((comm, _, ppid)) = proc.read_pid_file(pid, "stat").and_then(|t| parse_stat(&t))
        {
            out.insert(pid, (comm, ppid));
        }
    }
    out
}

/// The cgroup path that names a container, else the unified (or first) one.
pub fn container_cgroup(proc_cgroup: &str) -> Option<String> {
    let paths: Vec<&str> = proc_cgroup
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .collect();
    paths
        .iter()
        .find(|p| crate::model::pod::pod_from_cgroup_path(p).is_some())
        .or_else(|| paths.iter().find(|p| container_id(p).is_some()))
        .map(|p| (*p).to_owned())
        .or_else(|| {
            proc_cgroup
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .map(str::to_owned)
        })
        .or_else(|| paths.first().map(|p| (*p).to_owned()))
}

/// Docker, containerd and CRI-O ids are 64 hex digits.
fn is_hex_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The container id in a cgroup path: `/docker/<id>`, `/kubepods/.../<id>`,
/// `.../docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`,
/// `libpod-<id>.scope`.
pub fn container_id(cgroup: &str) -> Option<String> {
    cgroup.split('/').rev().find_map(|c| {
        let c = c.strip_suffix(".scope").unwrap_or(c);
        let id = c.rsplit_once('-').map(|(_, id)| id).unwrap_or(c);
        is_hex_id(id).then(|| id.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "052b011f5fcc54536223afb2d544344c58e62b96bc836a64140c5e36af004ceb";

    #[test]
    fn comm_patterns() {
        let c = parse_comms(&["dockerd", "containerd-shim*"]).unwrap();
        assert!(c[0].matches("dockerd"));
        assert!(!c[0].matches("dockerd2"));
        assert!(c[1].matches("containerd-shim"));
        assert!(!c[1].matches("containerd"));
        assert!(CommMatch::parse("").is_err());
        assert!(CommMatch::parse("a-very-long-process-name").is_err());
        assert!(
            CommMatch::parse("a-very-long-process-name*")
                .unwrap()
                .name
                .len()
                == 15
        );
        let p = c[1].pattern();
        assert_eq!(p.len, 15);
        assert_eq!(p.prefix, 1);
        assert!(parse_comms(&vec!["x"; 17]).is_err());
        assert_eq!(parse_comms(DEFAULT_WATCH_COMMS).unwrap().len(), 8);
    }

    #[test]
    fn watch_set_includes_descendants() {
        let procs: HashMap<u32, (String, u32)> = [
            (1, ("init", 0)),
            (100, ("dockerd", 1)),
            (101, ("containerd", 100)),
            (200, ("containerd-shim", 1)),
            (201, ("sh", 200)),
            (202, ("sleep", 201)),
            (300, ("bash", 1)),
        ]
        .into_iter()
        .map(|(p, (c, pp))| (p, (c.to_owned(), pp)))
        .collect();
        let comms = parse_comms(DEFAULT_WATCH_COMMS).unwrap();
        let mut w: Vec<u32> = initial_watch_set(&procs, &comms).into_iter().collect();
        w.sort();
        assert_eq!(w, [100, 101, 200, 201, 202]);
    }

    #[test]
    fn fs_types_imply_waits() {
        assert_eq!(fs_wait("fuse.sshfs"), Some(WaitClass::Fuse));
        assert_eq!(fs_wait("fuseblk"), Some(WaitClass::Fuse));
        assert_eq!(fs_wait("nfs4"), Some(WaitClass::Nfs));
        assert_eq!(fs_wait("ext4"), None);
    }

    #[test]
    fn container_ids_from_cgroups() {
        assert_eq!(
            container_id(&format!("/docker/{CID}")).as_deref(),
            Some(CID)
        );
        assert_eq!(
            container_id(&format!("/system.slice/docker-{CID}.scope")).as_deref(),
            Some(CID)
        );
        assert_eq!(
            container_id(&format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podx.slice/cri-containerd-{CID}.scope"
            ))
            .as_deref(),
            Some(CID)
        );
        assert_eq!(container_id("/user.slice/user-0.slice"), None);
        let text = format!("12:pids:/docker/{CID}\n1:name=systemd:/docker/{CID}\n0::/\n");
        assert_eq!(container_cgroup(&text), Some(format!("/docker/{CID}")));
        assert_eq!(
            container_cgroup("0::/user.slice\n").as_deref(),
            Some("/user.slice")
        );
    }
}
