//! Pruning: connections of processes that vanished without the kernel
//! saying so, and connections whose fd was closed (the socket-tracepoint
//! path has no close hook), leave the tracker and the kernel's table.
use super::DbusTracker;
use crate::{
    model::Time,
    model::dbus::{CallKind, SocketCall},
};

/// The `syscall` of the close observation of a connection whose fd no
/// longer leads to its socket.
pub const FD_GONE: &str = "fd_gone";

impl DbusTracker {
    /// Every poll, before [`DbusTracker::sweep`]: connections whose process
    /// is gone without the kernel saying so (a lost event, or an adopted
    /// connection whose process exited before its first call on it marked
    /// it): out of the kernel's table, and a `ProcessGone` observation each.
    /// Then connections whose fd is closed or leads to another socket (one
    /// readlink of /proc/PID/fd/N each, nothing that can hang on a mount):
    /// a `Close` observation each, so that no request of a closed connection
    /// waits for ever.
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
        let mut out: Vec<SocketCall> = pids
            .into_iter()
            .map(|pid| SocketCall::bare(now, pid, -1, CallKind::ProcessGone, "exit"))
            .collect();
        let closed: Vec<(u32, i32)> = self
            .conns
            .iter()
            .filter(|((pid, fd), t)| {
                t.inode.is_none() || self.proc.socket_inode(*pid, *fd) != t.inode
            })
            .map(|(k, _)| *k)
            .collect();
        for (pid, fd) in closed {
            if let Some(t) = self.conns.remove(&(pid, fd)) {
                out.push(SocketCall {
                    socket: t.socket,
                    ..SocketCall::bare(now, pid, fd, CallKind::Close, FD_GONE)
                });
            }
        }
        out
    }
}
