//! Pruning: connections of processes that vanished without the kernel
//! saying so leave the tracker and the kernel's table.
use super::DbusTracker;
use crate::{
    model::Time,
    model::dbus::{CallKind, SocketCall},
};

impl DbusTracker {
    /// Every poll, before [`DbusTracker::sweep`]: connections whose process
    /// is gone without the kernel saying so (a lost event, or an adopted
    /// connection whose process exited before its first call on it marked
    /// it): out of the kernel's table, and a `ProcessGone` observation each.
    pub fn prune(&mut self, now: Time) -> Vec<SocketCall> {
        let gone: Vec<(u32, i32)> = self
            .conns
            .keys()
            .filter(|(pid, _)| !self.proc.pid_exists(*pid))
            .copied()
            .collect();
        let mut pids: Vec<u32> = Vec::new();
        for (pid, fd) in gone {
            self.conns.remove(&(pid, fd));
            let _ = self
                .sock_conns
                .remove(&((u64::from(pid) << 32) | u64::from(fd as u32)));
            if !pids.contains(&pid) {
                pids.push(pid);
            }
        }
        pids.into_iter()
            .map(|pid| SocketCall {
                at: now,
                pid,
                tid: pid,
                comm: String::new(),
                fd: -1,
                call: CallKind::ProcessGone,
                syscall: "exit".into(),
                ret: 0,
                requested: 0,
                socket: String::new(),
                started: None,
                ktime_ns: None,
                started_ktime_ns: None,
                message: None,
                process: None,
            })
            .collect()
    }
}
