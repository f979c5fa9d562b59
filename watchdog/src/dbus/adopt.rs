//! Adoption of connections opened before the agent started: found through
//! sock_diag (the client ends whose peer carries a followed path) and
//! `/proc/<pid>/fd` (readlink only), put in the kernel's table.
use std::collections::HashMap;

use watchdog_common::SockConn;

use super::{DbusTracker, Tracked, options::RequestPath, process::process_info, sock_diag};
use crate::{
    model::Time,
    model::dbus::{CallKind, SocketCall},
};

/// The `syscall` of the connect observation of a connection opened before
/// the agent started.
pub const EXISTING: &str = "connected_before_start";

/// A connection to a followed socket that a process opened before the agent
/// started (kubelet, CRI-O, containerd and dockerd keep theirs for life).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Existing {
    pub pid: u32,
    pub fd: i32,
    pub inode: u64,
    /// The map slot of the followed path.
    pub slot: u32,
}

/// The client sockets connected to a followed socket, by inode, with the
/// slot of its path. A client end has no name; its peer, the server's
/// accepted end, carries the listener's path (as `ss -x` shows it).
/// `slot_of` maps such a path to its slot.
pub fn existing_clients(
    all: &[sock_diag::UnixSock],
    slot_of: impl Fn(&str) -> Option<u32>,
) -> HashMap<u64, u32> {
    let named: HashMap<u64, &str> = all
        .iter()
        .filter(|s| !s.listening())
        .filter_map(|s| Some((s.inode, s.name.as_deref()?)))
        .collect();
    all.iter()
        .filter(|s| s.name.is_none())
        .filter_map(|s| {
            let path = named.get(&s.peer?)?;
            Some((s.inode, slot_of(path)?))
        })
        .collect()
}

impl DbusTracker {
    /// The slot of a path a listener bound: a followed path as configured
    /// or as it resolved at start. Strings only: these are paths any
    /// process bound, anywhere, and resolving one could hang on its mount.
    fn slot_of(&self, bound: &str) -> Option<u32> {
        self.paths
            .iter()
            .zip(&self.real_paths)
            .position(|(p, r)| p == bound || r == bound)
            .map(|i| i as u32)
    }

    /// Follow the connections `pids` (the runtime processes running at
    /// start) opened to the followed sockets before the probes attached:
    /// found through sock_diag and `/proc/<pid>/fd` (readlink only), put in
    /// the kernel's table, and returned as connect observations at `now`.
    /// A request such a connection sent before now is not seen; every later
    /// one is.
    pub fn adopt_existing(&mut self, pids: &[u32], now: Time) -> Vec<(Existing, SocketCall)> {
        let all = match sock_diag::dump() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(
                    "connections to systemd opened before start are not followed: sock_diag dump of unix sockets failed: {e}"
                );
                return Vec::new();
            }
        };
        let clients = existing_clients(&all, |p| self.slot_of(p));
        if clients.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for &pid in pids {
            for fd in self
                .proc
                .list_numbers::<i32>(&self.proc.pid_file(pid, "fd"))
            {
                let Some(inode) = self.proc.socket_inode(pid, fd) else {
                    continue;
                };
                let Some(&slot) = clients.get(&inode) else {
                    continue;
                };
                // The syscall probes follow the fds in their table; the
                // socket tracepoints find the socket by themselves.
                let key = (u64::from(pid) << 32) | u64::from(fd as u32);
                let syscalls = self.path == RequestPath::Syscalls;
                if syscalls
                    && let Err(e) = self.sock_conns.insert(key, SockConn { slot, _pad: 0 }, 0)
                {
                    tracing::warn!("cannot follow pid {pid} fd {fd}: {e}");
                    continue;
                }
                // Closed (and the fd reused) between the dump and now: drop it.
                if self.proc.socket_inode(pid, fd) != Some(inode) {
                    if syscalls {
                        let _ = self.sock_conns.remove(&key);
                    }
                    continue;
                }
                let socket = self.real_paths[slot as usize].clone();
                self.conns
                    .insert((pid, fd), Tracked::new(socket.clone(), Some(inode)));
                let call = SocketCall {
                    comm: self.proc.comm(pid),
                    socket,
                    process: Some(process_info(&self.proc, pid)),
                    ..SocketCall::bare(now, pid, fd, CallKind::Connect, EXISTING)
                };
                out.push((
                    Existing {
                        pid,
                        fd,
                        inode,
                        slot,
                    },
                    call,
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, path::Path};

    use super::*;
    use crate::context::procfs::ProcReader;

    #[test]
    fn existing_clients_are_found_by_their_peers_path() {
        use std::os::{fd::AsRawFd, unix::fs::MetadataExt};
        let dir = std::env::temp_dir().join(format!("wd-existing-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bus.sock");
        let other = dir.join("other.sock");
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let lo = std::os::unix::net::UnixListener::bind(&other).unwrap();
        let c = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let (server, _) = l.accept().unwrap();
        let co = std::os::unix::net::UnixStream::connect(&other).unwrap();
        let (_so, _) = lo.accept().unwrap();
        let ino = |fd: i32| fs::metadata(format!("/proc/self/fd/{fd}")).unwrap().ino();
        let want = path.to_str().unwrap();
        let found = existing_clients(&sock_diag::dump().unwrap(), |p| (p == want).then_some(3));
        assert_eq!(found.get(&ino(c.as_raw_fd())), Some(&3), "{found:?}");
        assert!(
            !found.contains_key(&ino(server.as_raw_fd())),
            "the server end"
        );
        assert!(!found.contains_key(&ino(co.as_raw_fd())), "another path");
        assert_eq!(
            ProcReader::new(Path::new("/")).socket_inode(std::process::id(), c.as_raw_fd()),
            Some(ino(c.as_raw_fd()))
        );
        drop((l, lo));
        let _ = fs::remove_dir_all(&dir);
    }
}
