//! D-Bus/systemd sockets: the tracker behind the `systemd_hang` cause.
//!
//! The kernel side (watchdog-ebpf/src/dbus.rs) follows the connections of
//! watched runtime processes to the configured socket paths and sends one
//! event per connect, send, receive and close on them. Here each event
//! becomes a [`SocketCall`](crate::model::dbus::SocketCall) observation (a connect also reads who connected:
//! the runc command line and the container it is creating), and while some
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
}

pub struct DbusTracker {
    proc: ProcReader,
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
