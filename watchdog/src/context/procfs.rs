//! Reading /proc (under a root, so tests can use recorded trees). Only files
//! that never wait on user storage or on another task's mmap lock: `status`,
//! `limits`, `cgroup`, `loadavg`, sysctls. Never `cmdline` or `environ`.
use std::path::{Path, PathBuf};

use crate::{
    model::{Consumer, SystemPids},
    paths,
};

#[derive(Clone, Debug)]
pub struct Procfs {
    root: PathBuf,
}

/// The fields of /proc/<pid>/status the agent uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcStatus {
    pub pid: u32,
    pub comm: String,
    /// Real uid.
    pub uid: u32,
    pub threads: u64,
    /// One-letter state (R, S, D, Z...).
    pub state: char,
}

pub fn parse_status(pid: u32, text: &str) -> Option<ProcStatus> {
    let mut comm = None;
    let mut uid = None;
    let mut threads = None;
    let mut state = '?';
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "Name" => comm = Some(v.to_owned()),
            "Uid" => uid = v.split_whitespace().next().and_then(|u| u.parse().ok()),
            "Threads" => threads = v.parse().ok(),
            "State" => state = v.chars().next().unwrap_or('?'),
            _ => {}
        }
    }
    Some(ProcStatus {
        pid,
        comm: comm?,
        uid: uid?,
        threads: threads?,
        state,
    })
}

/// Soft "Max processes" of a /proc/<pid>/limits text; Ok(None) for unlimited.
pub fn parse_nproc_limit(text: &str) -> Option<Option<u64>> {
    let line = text.lines().find(|l| l.starts_with("Max processes"))?;
    let soft = line
        .trim_start_matches("Max processes")
        .split_whitespace()
        .next()?;
    Some(if soft == "unlimited" {
        None
    } else {
        Some(soft.parse().ok()?)
    })
}

impl Procfs {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    fn proc_dir(&self) -> PathBuf {
        self.root.join(paths::PROC)
    }

    fn read(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.root.join(rel)).ok()
    }

    pub fn read_pid_file(&self, pid: u32, file: &str) -> Option<String> {
        std::fs::read_to_string(self.proc_dir().join(pid.to_string()).join(file)).ok()
    }

    pub fn system(&self) -> SystemPids {
        let num = |rel: &str| {
            self.read(rel)
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0)
        };
        // loadavg: "0.00 0.01 0.05 1/123 4567": the denominator is nr_threads.
        let threads = self
            .read(paths::LOADAVG)
            .and_then(|s| {
                s.split_whitespace()
                    .nth(3)
                    .and_then(|f| f.split_once('/'))
                    .and_then(|(_, t)| t.parse().ok())
            })
            .unwrap_or(0);
        SystemPids {
            threads,
            threads_max: num(paths::THREADS_MAX),
            pid_max: num(paths::PID_MAX),
        }
    }

    pub fn status(&self, pid: u32) -> Option<ProcStatus> {
        parse_status(pid, &self.read_pid_file(pid, "status")?)
    }

    /// Soft RLIMIT_NPROC of a process: None if unreadable, Some(None) if unlimited.
    pub fn nproc_limit(&self, pid: u32) -> Option<Option<u64>> {
        parse_nproc_limit(&self.read_pid_file(pid, "limits")?)
    }

    pub fn pids(&self) -> Vec<u32> {
        let Ok(rd) = std::fs::read_dir(self.proc_dir()) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect()
    }

    /// Every process's status (one file read per process).
    pub fn all_status(&self) -> Vec<ProcStatus> {
        self.pids()
            .into_iter()
            .filter_map(|p| self.status(p))
            .collect()
    }
}

/// Tasks (threads) of `uid`: what RLIMIT_NPROC counts.
pub fn tasks_of_uid(all: &[ProcStatus], uid: u32) -> u64 {
    all.iter().filter(|s| s.uid == uid).map(|s| s.threads).sum()
}

/// The `n` processes holding the most tasks.
pub fn top_consumers(mut procs: Vec<ProcStatus>, n: usize) -> Vec<Consumer> {
    procs.sort_by(|a, b| b.threads.cmp(&a.threads).then(a.pid.cmp(&b.pid)));
    procs
        .into_iter()
        .take(n)
        .map(|s| Consumer {
            pid: s.pid,
            comm: s.comm,
            threads: s.threads,
            uid: s.uid,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status() {
        let text = "Name:\tjava\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t77\nUid:\t1000\t1000\t1000\t1000\nThreads:\t212\n";
        let s = parse_status(77, text).unwrap();
        assert_eq!(
            (s.comm.as_str(), s.uid, s.threads, s.state),
            ("java", 1000, 212, 'S')
        );
        assert_eq!(parse_status(1, "Name:\tx\n"), None);
    }

    #[test]
    fn parses_limits() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
Max cpu time              unlimited            unlimited            seconds   \n\
Max processes             20                   63704                processes \n";
        assert_eq!(parse_nproc_limit(text), Some(Some(20)));
        let unl =
            "Max processes             unlimited            unlimited            processes \n";
        assert_eq!(parse_nproc_limit(unl), Some(None));
        assert_eq!(parse_nproc_limit("nothing"), None);
    }
}
