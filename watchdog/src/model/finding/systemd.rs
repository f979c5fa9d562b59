//! `systemd_hang` details: which socket, which side is stuck, who waits.
use serde::Serialize;

use crate::model::{
    Time,
    dbus::{BusProbe, Holder, ListenerQueue},
};

/// Which end of the conversation is stuck.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stuck {
    /// The bus daemon does not read (or accept) what clients send.
    BusNotReading,
    /// systemd does not read its private socket.
    SystemdNotReading,
    /// The request was read, and systemd sends no reply.
    SystemdNotReplying,
}

impl Stuck {
    pub fn name(self) -> &'static str {
        match self {
            Self::BusNotReading => "bus_not_reading",
            Self::SystemdNotReading => "systemd_not_reading",
            Self::SystemdNotReplying => "systemd_not_replying",
        }
    }
}

/// Whose socket a path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SocketKind {
    /// systemd's own peer-to-peer socket (`/run/systemd/private`).
    SystemdPrivate,
    /// The system bus (dbus-daemon or dbus-broker in front of systemd).
    SystemBus,
}

impl SocketKind {
    pub fn of(path: &str) -> Self {
        if path.ends_with("systemd/private") {
            Self::SystemdPrivate
        } else {
            Self::SystemBus
        }
    }
}

/// A process waiting for systemd, as the finding lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Waiting {
    pub comm: String,
    pub pid: u32,
    pub fd: i32,
    pub waiting_s: f64,
    /// Bytes sent since its last reply.
    pub bytes_sent: u64,
    /// Bytes it still has to send (a partial write or EAGAIN).
    pub bytes_unsent: u64,
    /// Its sends come back partial or EAGAIN: the peer does not read.
    pub write_stalled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// Its start time (clock ticks after boot): remediation acts on this
    /// process only, never on a later one with the same pid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SystemdDetail {
    /// The socket path the waiting processes connected to.
    pub socket: String,
    pub socket_kind: SocketKind,
    pub stuck: Stuck,
    /// Why that side, in words.
    pub stuck_detail: String,
    /// When the oldest waiting request was sent.
    pub since: Time,
    pub waiting_s: f64,
    /// Waiting processes, longest first (at most 20; `waiting_total` counts all).
    pub waiting: Vec<Waiting>,
    pub waiting_total: usize,
    /// Containers being created (or handled) by the waiting processes.
    pub containers: Vec<String>,
    /// Bytes sent and not yet read by the server (sock_diag), or sent without
    /// a reply when the queues are unknown.
    pub bytes_queued: u64,
    /// The server end (dbus-daemon, systemd) when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<Holder>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listener: Option<ListenerQueue>,
    /// The agent's latest probes of the bus and of systemd.
    pub probes: Vec<BusProbe>,
}
