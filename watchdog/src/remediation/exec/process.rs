//! `kill_process`: SIGKILL of one runtime process a finding named by pid
//! and start time (a runc waiting on a hung systemd), through a pidfd.
//!
//! Also what every signalling executor reads about its target first
//! ([`Proc`]): comm, state, start time and pid in its own PID namespace,
//! all from `/proc/<pid>/stat` and `status` (kernel text, never the
//! process's memory).
use std::time::Instant;

use super::{NodeExecutor, Pidfd};
use crate::context::procfs::{parse_innermost_pid, parse_start_time, parse_stat};

/// A process as /proc shows it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Proc {
    pub pid: u32,
    pub comm: String,
    pub state: char,
    pub start: u64,
    /// Its pid in its own PID namespace (1: that namespace's init).
    pub ns_pid: u32,
}

impl Proc {
    /// `runc[1234]`.
    pub fn name(&self) -> String {
        format!("{}[{}]", self.comm, self.pid)
    }
}

impl NodeExecutor {
    /// What /proc says about `pid`; Err when it is gone.
    pub(super) fn proc(&self, pid: u32) -> Result<Proc, String> {
        let stat = self
            .reader
            .read_pid_file(pid, "stat")
            .ok_or_else(|| format!("process {pid} is gone"))?;
        let (comm, state, _) =
            parse_stat(&stat).ok_or_else(|| format!("process {pid}: unreadable stat"))?;
        let start = parse_start_time(&stat)
            .ok_or_else(|| format!("process {pid}: no start time in its stat"))?;
        let ns_pid = self
            .reader
            .read_pid_file(pid, "status")
            .as_deref()
            .and_then(parse_innermost_pid)
            .ok_or_else(|| format!("process {pid}: no NSpid in its status"))?;
        Ok(Proc {
            pid,
            comm,
            state,
            start,
            ns_pid,
        })
    }

    /// Holds `pid` by a pidfd, then checks that the process held is the one
    /// the recheck saw (same start time): a pid reused in between is never
    /// signalled.
    pub(super) fn hold(&self, pid: u32, start: u64) -> Result<Pidfd, String> {
        let fd = Pidfd::open(pid)?;
        match self.reader.start_time(pid) {
            Some(s) if s == start => Ok(fd),
            Some(s) => Err(format!(
                "process {pid} is another process now (started at tick {s}, not {start}): nothing signalled"
            )),
            None => Err(format!("process {pid} is gone: nothing signalled")),
        }
    }

    pub(super) fn recheck_kill_process(
        &self,
        pid: u32,
        comm: &str,
        start: u64,
    ) -> Result<Killable, String> {
        let p = self.proc(pid)?;
        kill_gate(&p, comm, start, std::process::id())?;
        Ok(Killable(p))
    }

    pub(super) fn kill_process(&self, pid: u32, comm: &str, start: u64) -> Result<String, String> {
        let p = self.recheck_kill_process(pid, comm, start)?.0;
        let fd = self.hold(pid, start)?;
        let t = Instant::now();
        fd.kill()?;
        if fd.wait_exit(self.kill_wait) {
            Ok(format!(
                "killed {} (SIGKILL through a pidfd); it exited in {:.0} ms",
                p.name(),
                t.elapsed().as_secs_f64() * 1000.0
            ))
        } else {
            // In uninterruptible sleep it dies when its call returns: the
            // finding's resolution verifies it.
            Ok(format!(
                "SIGKILL sent to {} through a pidfd; still exiting after {:.0} ms (state {})",
                p.name(),
                t.elapsed().as_secs_f64() * 1000.0,
                self.proc(pid).map(|p| p.state).unwrap_or('?')
            ))
        }
    }
}

/// A process that passed the `kill_process` re-check.
pub(super) struct Killable(Proc);

impl Killable {
    pub fn describe(&self) -> String {
        format!(
            "kill {} with SIGKILL (state {}, started at tick {})",
            self.0.name(),
            self.0.state,
            self.0.start
        )
    }
}

/// Whether `kill_process` may kill `p`, which the finding named as `comm`
/// started at `start`; `me` is the agent's pid. Never an init (the host's
/// PID 1 or any namespace's), never the agent, never another process that
/// took the pid.
pub(super) fn kill_gate(p: &Proc, comm: &str, start: u64, me: u32) -> Result<(), String> {
    if p.start != start {
        return Err(format!(
            "process {} is not the one the finding named (started at tick {}, not {start}): the pid was reused",
            p.pid, p.start
        ));
    }
    if p.comm != comm {
        return Err(format!("process {} is {} now, not {comm}", p.pid, p.name()));
    }
    if p.pid == 1 || p.ns_pid == 1 {
        return Err(format!(
            "{} is PID 1 of its PID namespace: an init is never killed",
            p.name()
        ));
    }
    if p.pid == me {
        return Err(format!("{} is this agent", p.name()));
    }
    if matches!(p.state, 'Z' | 'X') {
        return Err(format!(
            "{} has already exited (state {})",
            p.name(),
            p.state
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: u32, comm: &str, start: u64, ns_pid: u32, state: char) -> Proc {
        Proc {
            pid,
            comm: comm.into(),
            state,
            start,
            ns_pid,
        }
    }

    #[test]
    fn kill_gate_refuses_inits_the_agent_and_reused_pids() {
        assert!(kill_gate(&p(500, "runc", 77, 500, 'S'), "runc", 77, 9).is_ok());
        let e = kill_gate(&p(500, "runc", 78, 500, 'S'), "runc", 77, 9).unwrap_err();
        assert!(e.contains("reused"), "{e}");
        let e = kill_gate(&p(500, "bash", 77, 500, 'S'), "runc", 77, 9).unwrap_err();
        assert!(e.contains("bash[500] now, not runc"), "{e}");
        let e = kill_gate(&p(500, "runc", 77, 1, 'S'), "runc", 77, 9).unwrap_err();
        assert!(e.contains("PID 1 of its PID namespace"), "{e}");
        let e = kill_gate(&p(1, "runc", 77, 1, 'S'), "runc", 77, 9).unwrap_err();
        assert!(e.contains("never killed"), "{e}");
        let e = kill_gate(&p(9, "runc", 77, 9, 'S'), "runc", 77, 9).unwrap_err();
        assert!(e.contains("this agent"), "{e}");
        let e = kill_gate(&p(500, "runc", 77, 500, 'Z'), "runc", 77, 9).unwrap_err();
        assert!(e.contains("already exited"), "{e}");
    }
}
