//! Node context: turns raw kernel events into observations by reading /proc
//! and cgroupfs (never user mounts), and samples the node's limits. All reads
//! go through one [`procfs::ProcReader`] (the agent's only way to read /proc,
//! /sys and cgroupfs, whose rules it enforces), under a root directory so
//! tests can use recorded trees.
pub mod cgroup;
pub mod clock;
pub mod mounts;
pub mod procfs;

use std::{
    collections::HashMap,
    path::Path,
    time::{Duration, Instant},
};

use watchdog_common::{CLONE_THREAD, ForkFailureEvent, ForkSyscall};

use crate::{
    model::Time,
    model::{ForkFailed, PidLimits, PidsCgroupState, SystemPids, UserTasks},
};
use cgroup::{CgroupIndex, PidsHierarchy};

/// A NUL-padded kernel string (comm, path) as text.
pub fn nul_terminated(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}
use procfs::ProcReader;

/// How long cached reads stay fresh during a burst of failures: a fork storm
/// can fail thousands of times a second, the limits move slower than that.
const FRESH: Duration = Duration::from_millis(250);
/// How often the (costlier) list of top consumers is recomputed per owner.
const CONSUMERS_EVERY: Duration = Duration::from_secs(2);
const TOP_N: usize = 5;

struct Cached<T> {
    at: Instant,
    value: T,
}

pub struct NodeContext {
    pub procfs: ProcReader,
    pub pids: Option<PidsHierarchy>,
    index: CgroupIndex,
    chains: HashMap<String, Cached<Vec<PidsCgroupState>>>,
    system: Option<Cached<SystemPids>>,
    users: HashMap<u32, Cached<u64>>,
    consumers_at: HashMap<Scope, Instant>,
}

/// What a limit counts: a user's tasks, a cgroup's, or the whole system's.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Scope {
    Uid(u32),
    Cgroup(String),
    System,
}

impl NodeContext {
    pub fn new(root: &Path) -> Self {
        Self {
            procfs: ProcReader::new(root),
            pids: cgroup::discover(&ProcReader::new(root)),
            index: CgroupIndex::default(),
            chains: HashMap::new(),
            system: None,
            users: HashMap::new(),
            consumers_at: HashMap::new(),
        }
    }

    fn system(&mut self, now: Instant) -> SystemPids {
        match &self.system {
            Some(c) if now.duration_since(c.at) < FRESH => c.value,
            _ => {
                let v = self.procfs.system();
                self.system = Some(Cached { at: now, value: v });
                v
            }
        }
    }

    fn chain(&mut self, path: &str, now: Instant) -> Vec<PidsCgroupState> {
        let Some(h) = &self.pids else {
            return Vec::new();
        };
        if let Some(c) = self.chains.get(path)
            && now.duration_since(c.at) < FRESH
        {
            return c.value.clone();
        }
        let v = h.chain(path);
        self.chains.insert(
            path.to_owned(),
            Cached {
                at: now,
                value: v.clone(),
            },
        );
        v
    }

    fn user_tasks(&mut self, uid: u32, now: Instant) -> u64 {
        if let Some(c) = self.users.get(&uid)
            && now.duration_since(c.at) < FRESH
        {
            return c.value;
        }
        let v = procfs::tasks_of_uid(&self.procfs.all_status(), uid);
        self.users.insert(uid, Cached { at: now, value: v });
        v
    }

    fn consumers_due(&mut self, scope: &Scope, now: Instant) -> bool {
        match self.consumers_at.get(scope) {
            Some(at) if now.duration_since(*at) < CONSUMERS_EVERY => false,
            _ => {
                self.consumers_at.insert(scope.clone(), now);
                true
            }
        }
    }

    /// The processes holding the most tasks within a limit's scope.
    fn consumers(&self, scope: &Scope) -> Vec<crate::model::Consumer> {
        let procs = match scope {
            Scope::Uid(uid) => self
                .procfs
                .all_status()
                .into_iter()
                .filter(|s| s.uid == *uid)
                .collect(),
            Scope::Cgroup(path) => match &self.pids {
                Some(h) => h
                    .procs_below(path)
                    .into_iter()
                    .filter_map(|p| self.procfs.status(p))
                    .collect(),
                None => Vec::new(),
            },
            Scope::System => self.procfs.all_status(),
        };
        procfs::top_consumers(procs, TOP_N)
    }

    /// The caller's pids cgroup: from the kernel's cgroup id, else /proc.
    fn pids_path(&mut self, ev: &ForkFailureEvent) -> Option<String> {
        let h = self.pids.as_ref()?;
        if let Some(p) = self.index.lookup(h, ev.pids_cgroup_id) {
            return Some(p);
        }
        let text = self
            .procfs
            .read_pid_file(ev.tid, "cgroup")
            .or_else(|| self.procfs.read_pid_file(ev.pid, "cgroup"))?;
        cgroup::pids_path_from_proc_cgroup(&text, h.version)
    }

    /// Build the observation for one failed fork, reading the limits now.
    pub fn fork_failed(&mut self, ev: &ForkFailureEvent, at: Time) -> ForkFailed {
        let now = Instant::now();
        let pids_cgroup = self.pids_path(ev);
        let cgroup_chain = pids_cgroup
            .as_deref()
            .map(|p| self.chain(p, now))
            .unwrap_or_default();
        let system = self.system(now);
        // Root is exempt from RLIMIT_NPROC; an unreadable or unlimited limit
        // cannot be the one that fired.
        let limit = (ev.uid != 0)
            .then(|| self.procfs.nproc_limit(ev.pid))
            .flatten()
            .flatten();
        let user = limit.map(|limit| UserTasks {
            uid: ev.uid,
            tasks: self.user_tasks(ev.uid, now),
            rlimit_nproc: Some(limit),
        });

        // Top consumers of the limit this failure is closest to.
        let near = |cur: u64, max: u64| max > 0 && cur * 10 >= max * 9;
        let scope = if let Some(u) =
            user.filter(|u| u.rlimit_nproc.is_some_and(|l| near(u.tasks, l)))
        {
            Some(Scope::Uid(u.uid))
        } else if let Some(c) = cgroup_chain
            .iter()
            .find(|c| c.max.is_some_and(|m| near(c.current, m)))
        {
            Some(Scope::Cgroup(c.path.clone()))
        } else if near(system.threads, system.threads_max) || near(system.threads, system.pid_max) {
            Some(Scope::System)
        } else {
            None
        };
        let consumers = match scope {
            Some(s) if self.consumers_due(&s, now) => self.consumers(&s),
            _ => Vec::new(),
        };

        ForkFailed {
            at,
            tid: ev.tid,
            pid: ev.pid,
            uid: ev.uid,
            comm: nul_terminated(&ev.comm),
            syscall: ForkSyscall::from_u32(ev.syscall).name().to_owned(),
            thread: ev.clone_flags & CLONE_THREAD != 0,
            pod: pids_cgroup
                .as_deref()
                .and_then(crate::model::pod::pod_from_cgroup_path),
            pids_cgroup,
            cgroup_chain,
            system,
            user,
            consumers,
        }
    }

    /// Periodic sample of every limited pids cgroup (and those below), the
    /// system limits, and who holds the tasks of cgroups at their limit.
    pub fn pid_limits(&mut self, at: Time) -> PidLimits {
        let now = Instant::now();
        let cgroups = self
            .pids
            .as_ref()
            .map(PidsHierarchy::limited_and_below)
            .unwrap_or_default();
        let system = self.procfs.system();
        self.system = Some(Cached {
            at: now,
            value: system,
        });
        let mut consumers = std::collections::BTreeMap::new();
        for c in cgroups
            .iter()
            .filter(|c| c.max.is_some_and(|m| c.current >= m))
        {
            let scope = Scope::Cgroup(c.path.clone());
            if self.consumers_due(&scope, now) {
                consumers.insert(c.path.clone(), self.consumers(&scope));
            }
        }
        PidLimits {
            at,
            cgroups,
            system,
            consumers,
        }
    }
}
