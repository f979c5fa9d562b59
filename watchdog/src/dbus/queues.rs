//! The sock_diag sweep: while a connection waits, the queues of the waiting
//! connections and of the followed listeners, and which processes hold
//! their peers (one pass over /proc/*/fd, readlink only).
use std::collections::{HashMap, HashSet};

use super::{DbusTracker, sock_diag};
use crate::{
    context::procfs::parse_socket_link,
    model::Time,
    model::dbus::{ConnQueue, Holder, ListenerQueue, SocketQueues},
};

impl DbusTracker {
    /// Every poll: while some connection waits, the queues of the waiting
    /// connections and of the followed listeners (None when nothing waits).
    pub fn sweep(&mut self, now: Time) -> Option<SocketQueues> {
        let suspects: Vec<((u32, i32), String)> = self
            .suspects(now)
            .into_iter()
            .map(|(k, t)| (k, t.socket.clone()))
            .collect();
        if suspects.is_empty() {
            return None;
        }
        let all = match sock_diag::dump() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("sock_diag dump of unix sockets failed: {e}");
                Vec::new()
            }
        };
        let by_inode: HashMap<u64, &sock_diag::UnixSock> =
            all.iter().map(|s| (s.inode, s)).collect();
        let mut conns = Vec::new();
        let mut want: HashSet<u64> = HashSet::new();
        for ((pid, fd), _) in &suspects {
            let Some(inode) = self.proc.socket_inode(*pid, *fd) else {
                continue;
            };
            // Not in the dump: a socket of another network namespace (or the
            // dump failed); its queues are unknown.
            let Some(me) = by_inode.get(&inode) else {
                continue;
            };
            let me = Some(me);
            let peer_inode = me.and_then(|s| s.peer);
            let peer = peer_inode.and_then(|p| by_inode.get(&p));
            if let Some(p) = peer_inode {
                want.insert(p);
            }
            conns.push(ConnQueue {
                pid: *pid,
                fd: *fd,
                inode,
                unread_by_peer: peer.and_then(|p| p.rqlen).map(|r| u64::from(r.0)),
                send_queue: me
                    .and_then(|s| s.rqlen)
                    .map(|r| u64::from(r.1))
                    .unwrap_or(0),
                unread_here: me
                    .and_then(|s| s.rqlen)
                    .map(|r| u64::from(r.0))
                    .unwrap_or(0),
                peer_inode,
                peer: None,
                // The server's end appears in sock_diag once accept()ed.
                peer_not_accepted: peer_inode.is_some() && peer.is_none(),
            });
        }
        // A listener by the path the clients used, or by where it leads
        // (/var/run -> /run), or by the path its accepted ends carry.
        let mut names: HashMap<String, String> = HashMap::new();
        for (_, s) in &suspects {
            names.insert(s.clone(), s.clone());
            // The spellings configured for it (a listener bound at
            // /var/run/dbus/... on older systems).
            for (p, r) in self.paths.iter().zip(&self.real_paths) {
                if r == s {
                    names.insert(p.clone(), s.clone());
                }
            }
        }
        for c in &conns {
            if let Some(n) = c
                .peer_inode
                .and_then(|p| by_inode.get(&p))
                .and_then(|p| p.name.clone())
                && let Some(s) = suspects
                    .iter()
                    .find(|((pid, fd), _)| (*pid, *fd) == (c.pid, c.fd))
            {
                names.insert(n, s.1.clone());
            }
        }
        let mut listeners: Vec<ListenerQueue> = all
            .iter()
            .filter(|s| s.listening() && s.name.as_ref().is_some_and(|n| names.contains_key(n)))
            .map(|s| {
                want.insert(s.inode);
                ListenerQueue {
                    socket: names[s.name.as_ref().expect("filtered")].clone(),
                    inode: s.inode,
                    pending: s.rqlen.map(|r| u64::from(r.0)).unwrap_or(0),
                    backlog: s.rqlen.map(|r| u64::from(r.1)).unwrap_or(0),
                    holder: None,
                }
            })
            .collect();
        if self
            .holders_scanned
            .is_none_or(|t| now.millis_since(t) >= 5_000)
            && want.iter().any(|i| !self.holders.contains_key(i))
        {
            self.holders_scanned = Some(now);
            self.find_holders(&want);
        }
        for c in &mut conns {
            c.peer = c.peer_inode.and_then(|p| self.holders.get(&p).cloned());
        }
        for l in &mut listeners {
            l.holder = self.holders.get(&l.inode).cloned();
        }
        Some(SocketQueues {
            at: now,
            conns,
            listeners,
        })
    }

    /// Which processes hold these socket inodes (one pass over /proc/*/fd;
    /// readlink only, nothing that can block on a mount).
    fn find_holders(&mut self, want: &HashSet<u64>) {
        let missing: HashSet<u64> = want
            .iter()
            .filter(|i| !self.holders.contains_key(i))
            .copied()
            .collect();
        if missing.is_empty() {
            return;
        }
        for pid in self.proc.pids() {
            let Ok(fds) = self.proc.list(&self.proc.pid_file(pid, "fd")) else {
                continue;
            };
            for fd in fds {
                let Some(ino) = self
                    .proc
                    .read_link(&self.proc.pid_file(pid, &format!("fd/{}", fd.name)))
                    .ok()
                    .and_then(|l| parse_socket_link(&l))
                else {
                    continue;
                };
                if missing.contains(&ino) && !self.holders.contains_key(&ino) {
                    let comm = self.proc.comm(pid);
                    self.holders.insert(ino, Holder { pid, comm });
                }
            }
        }
    }
}
