//! D-Bus/systemd sockets: the tracker behind the `systemd_hang` cause.
//!
//! The kernel side (watchdog-ebpf/src/dbus.rs) follows the connections of
//! watched runtime processes to the configured socket paths and sends one
//! event per send and receive on them (from the socket tracepoints, with
//! the messages each starts), or, on the syscall path, per connect, send,
//! receive and close. Here each event becomes a
//! [`SocketCall`](crate::model::dbus::SocketCall) observation (the first
//! call of a connection, or its connect, also reads who connected: the runc
//! command line and the container it is creating), and while some
//! connection waits for a reply the tracker corroborates: the socket queues
//! from sock_diag ([`SocketQueues`](crate::model::dbus::SocketQueues)) and the agent's own probes of the bus and
//! of systemd ([`probe`]), both bounded in time.
//!
//! One file per job: [`options`] (defaults, addresses, validation),
//! [`setup`] (the kernel maps), [`adopt`] (connections opened before start),
//! [`calls`] (kernel events as observations), [`prune`] (vanished
//! processes), [`queues`] (the sock_diag sweep), [`probe`] (the agent's own
//! probes and their schedule), [`process`] (who connected).
pub mod adopt;
pub mod calls;
pub mod options;
pub mod probe;
pub mod process;
pub mod prune;
pub mod queues;
pub mod setup;
pub mod sock_diag;

use std::collections::HashMap;

use aya::maps::{HashMap as BpfHashMap, MapData};
use watchdog_common::SockConn;

use crate::{
    context::procfs::ProcReader,
    model::Time,
    model::dbus::{Holder, ProbeTarget},
};
use options::DbusOptions;

/// A connection as the tracker follows it (for corroboration only; the
/// engine decides).
#[derive(Clone, Debug)]
struct Tracked {
    socket: String,
    pending_since: Option<Time>,
    /// The socket's inode when the tracker first saw it (None: the fd was
    /// already gone). There is no close hook on the socket-tracepoint path:
    /// a connection whose fd no longer leads to this inode is closed.
    inode: Option<u64>,
    /// With messages (socket tracepoints): the serials of the calls waiting
    /// for their reply, and whether the SASL exchange waits for the server.
    calls: std::collections::BTreeSet<u32>,
    auth: bool,
}

impl Tracked {
    fn new(socket: String, inode: Option<u64>) -> Self {
        Self {
            socket,
            pending_since: None,
            inode,
            calls: Default::default(),
            auth: false,
        }
    }
}

pub struct DbusTracker {
    proc: ProcReader,
    /// How requests are followed on this kernel.
    path: options::RequestPath,
    opts: DbusOptions,
    /// The configured path of each map slot.
    paths: Vec<String>,
    /// Where each leads (`/var/run/dbus/x` -> `/run/dbus/x`): observations
    /// name the real socket, so clients spelling one bus two ways wait on
    /// one finding.
    real_paths: Vec<String>,
    conns: HashMap<(u32, i32), Tracked>,
    /// Socket inode -> holder, and inodes searched for in vain.
    holders: HashMap<u64, Holder>,
    /// When each (socket, target) was last probed.
    probed: HashMap<(String, ProbeTarget), Time>,
    /// Last scan of /proc for socket holders (at most one per 5 s).
    holders_scanned: Option<Time>,
    /// The kernel's table of followed connections, to adopt the ones opened
    /// before the probes attached.
    sock_conns: BpfHashMap<MapData, u64, SockConn>,
}

impl DbusTracker {
    pub fn sockets(&self) -> &[String] {
        &self.paths
    }

    pub fn path(&self) -> options::RequestPath {
        self.path
    }

    /// Requests waiting for a reply for at least `min_ms` (a connection
    /// counts its calls, or one without messages), and the oldest's wait.
    pub fn waiting(&self, now: Time, min_ms: u64) -> (usize, u64) {
        self.conns
            .values()
            .filter_map(|t| {
                let ms = now.millis_since(t.pending_since?);
                (ms >= min_ms).then_some((t.calls.len().max(1), ms))
            })
            .fold((0, 0), |(n, longest), (c, ms)| (n + c, longest.max(ms)))
    }

    /// Connections waiting for a reply for at least `suspect_after_ms`.
    fn suspects(&self, now: Time) -> Vec<((u32, i32), &Tracked)> {
        let mut v: Vec<_> = self
            .conns
            .iter()
            .filter(|(_, t)| {
                t.pending_since
                    .is_some_and(|s| now.millis_since(s) >= self.opts.suspect_after_ms)
            })
            .map(|(k, t)| (*k, t))
            .collect();
        v.sort_by_key(|(k, _)| *k);
        v
    }
}
