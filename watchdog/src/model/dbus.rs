//! Observations of D-Bus/systemd sockets: the calls of runtime processes on
//! their connections (kernel probe), the socket queues (sock_diag) and the
//! agent's own probes of the bus and of systemd.
use serde::{Deserialize, Serialize};

use super::time::Time;

/// The syscall of a [`SocketCall`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallKind {
    Connect,
    Send,
    Recv,
    Close,
    /// The process exec'd or exited: all its connections are gone.
    ProcessGone,
}

/// One call of a watched process on a connection to a followed socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketCall {
    pub at: Time,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub fd: i32,
    pub call: CallKind,
    /// The syscall's name (write, sendmsg, recvmsg...).
    pub syscall: String,
    /// Bytes, 0, or a negative errno (-11 = EAGAIN).
    pub ret: i64,
    /// Bytes asked to send, or room to receive.
    #[serde(default)]
    pub requested: u64,
    /// The socket path of the connection.
    pub socket: String,
    /// When the syscall started (sends), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<Time>,
    /// The kernel's monotonic clock (ns) at the syscall's exit and, for
    /// sends, at its entry. `at` and `started` have milliseconds: a reply
    /// read in the same millisecond as the next request started is ordered
    /// by these. Absent in recordings made before they existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ktime_ns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ktime_ns: Option<u64>,
    /// Sends: what the bytes start (from the first bytes sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<MessageKind>,
    /// Who connected (connect only): what it was doing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessInfo>,
}

/// What a send starts, from its first bytes: a D-Bus message header (byte
/// order, type, flags, version 1), or a line of the SASL authentication.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// A method call that expects a reply.
    MethodCall,
    /// A method call flagged NO_REPLY_EXPECTED.
    MethodCallNoReply,
    MethodReturn,
    Error,
    Signal,
    /// An authentication line that the server answers (AUTH, DATA,
    /// NEGOTIATE_UNIX_FD...).
    Auth,
    /// The credentials byte or BEGIN: no answer follows.
    AuthNoReply,
    /// Not the start of a message (e.g. the rest of a partial write).
    Other,
}

impl MessageKind {
    /// Classify the first bytes of a send.
    pub fn of(head: [u8; 4]) -> Self {
        match head {
            [b'l' | b'B', t @ 1..=4, flags, 1] => match t {
                1 if flags & 0x1 != 0 => Self::MethodCallNoReply,
                1 => Self::MethodCall,
                2 => Self::MethodReturn,
                3 => Self::Error,
                _ => Self::Signal,
            },
            [0, ..] | [b'B', b'E', b'G', b'I'] => Self::AuthNoReply,
            [c, ..] if c.is_ascii_uppercase() => Self::Auth,
            _ => Self::Other,
        }
    }

    /// The peer is expected to answer it.
    pub fn expects_reply(self) -> bool {
        matches!(self, Self::MethodCall | Self::Auth)
    }
}

/// What a connecting process is, read once at its connect.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// The command line, shortened.
    pub cmdline: String,
    /// The container it is creating/handling (runc/crun's container id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// runc's subcommand (create, run, start, delete...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Pod from the bundle's annotations (namespace/name), when there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// Queues of tracked connections and of the followed sockets' listeners,
/// from sock_diag (taken while some connection waits for a reply).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketQueues {
    pub at: Time,
    pub conns: Vec<ConnQueue>,
    pub listeners: Vec<ListenerQueue>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnQueue {
    pub pid: u32,
    pub fd: i32,
    pub inode: u64,
    /// Bytes this end has sent that the server has not read yet; None when
    /// the server's end is not visible (not accept()ed yet).
    pub unread_by_peer: Option<u64>,
    /// Kernel memory of this end's sent data not yet consumed (bytes plus
    /// buffer overhead): above 0 while the server has not read everything.
    #[serde(default)]
    pub send_queue: u64,
    /// Bytes queued for this end that it has not read.
    pub unread_here: u64,
    /// The server's end: its inode, and who holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_inode: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<Holder>,
    /// The server has not accept()ed this connection yet.
    #[serde(default)]
    pub peer_not_accepted: bool,
}

/// A process holding a socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub comm: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerQueue {
    pub socket: String,
    pub inode: u64,
    /// Connections waiting for accept().
    pub pending: u64,
    pub backlog: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<Holder>,
}

/// What the agent's own D-Bus probe got.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ProbeOutcome {
    Answered { ms: u64 },
    Timeout { ms: u64 },
    Failed { error: String },
}

/// Whom a probe asks: systemd (`Ping`) or the bus daemon itself (`GetId`),
/// recorded by their D-Bus names (and ordered as those names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ProbeTarget {
    #[serde(rename = "org.freedesktop.DBus")]
    Bus,
    #[serde(rename = "org.freedesktop.systemd1")]
    Systemd,
}

impl ProbeTarget {
    /// The D-Bus name.
    pub fn bus_name(self) -> &'static str {
        match self {
            Self::Systemd => "org.freedesktop.systemd1",
            Self::Bus => "org.freedesktop.DBus",
        }
    }
}

/// One active probe: `Ping` of systemd (through the bus, or on its private
/// socket), or `GetId` of the bus itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusProbe {
    pub at: Time,
    /// The socket path probed.
    pub socket: String,
    pub target: ProbeTarget,
    #[serde(flatten)]
    pub outcome: ProbeOutcome,
}
