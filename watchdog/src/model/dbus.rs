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
    /// The messages this call starts, walked by the socket-tracepoint probe
    /// along the connection's byte stream: requests and replies by serial.
    /// None from the syscall probes and in older recordings (then any bytes
    /// read answer every request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<Message>>,
    /// The probe lost the message boundaries in these bytes (a header split
    /// across reads, unknown bytes, too many messages): a read is taken to
    /// answer everything, as without messages.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub desync: bool,
}

impl SocketCall {
    /// An observation of nothing but who and where (the tracker's
    /// connects, closes and process exits it infers itself).
    pub fn bare(at: Time, pid: u32, fd: i32, call: CallKind, syscall: &str) -> Self {
        Self {
            at,
            pid,
            tid: pid,
            comm: String::new(),
            fd,
            call,
            syscall: syscall.into(),
            ret: 0,
            requested: 0,
            socket: String::new(),
            started: None,
            ktime_ns: None,
            started_ktime_ns: None,
            message: None,
            process: None,
            messages: None,
            desync: false,
        }
    }
}

/// One message start in a call's bytes, as far as the probe copied it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// A METHOD_CALL.
    Call {
        serial: u32,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        no_reply: bool,
        /// Its member (method name), when within the copied bytes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        member: Option<String>,
    },
    /// A METHOD_RETURN; `reply_to` is its REPLY_SERIAL (None when that
    /// field is beyond the copied bytes).
    Return {
        serial: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<u32>,
    },
    Error {
        serial: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<u32>,
    },
    Signal {
        serial: u32,
    },
    /// SASL authentication lines (without their CRLF); the credential NUL
    /// byte a client sends first is the line "\\0".
    Sasl {
        lines: Vec<String>,
    },
    /// Bytes that start no message the probe recognised.
    Unknown,
}

/// D-Bus header field codes and type codes used here.
const FIELD_MEMBER: u8 = 3;
const FIELD_REPLY_SERIAL: u8 = 5;

impl Message {
    /// Parse a message start: `bytes` as the probe copied them (`kind` 1 =
    /// binary D-Bus header, 2 = SASL text; see watchdog-common).
    pub fn parse(kind: u8, bytes: &[u8]) -> Self {
        match kind {
            watchdog_common::SOCK_MSG_DBUS => Self::parse_header(bytes).unwrap_or(Self::Unknown),
            watchdog_common::SOCK_MSG_SASL => Self::parse_sasl(bytes),
            _ => Self::Unknown,
        }
    }

    /// The fixed header (byte order, type, flags, version, body length,
    /// serial, fields length) and the fields within `b`.
    pub fn parse_header(b: &[u8]) -> Option<Self> {
        if b.len() < 16 || b[3] != 1 {
            return None;
        }
        let le = match b[0] {
            b'l' => true,
            b'B' => false,
            _ => return None,
        };
        let u32_at = |i: usize| -> Option<u32> {
            let v: [u8; 4] = b.get(i..i + 4)?.try_into().ok()?;
            Some(if le {
                u32::from_le_bytes(v)
            } else {
                u32::from_be_bytes(v)
            })
        };
        let serial = u32_at(8)?;
        let fields_len = u32_at(12)? as usize;
        // Fields: an array of (BYTE code, VARIANT), each struct 8-aligned.
        let end = (16 + fields_len).min(b.len());
        let mut reply_to = None;
        let mut member = None;
        let mut i = 16;
        while i + 4 <= end {
            let code = b[i];
            let sig_len = b[i + 1] as usize;
            let Some(sig) = b.get(i + 2..i + 2 + sig_len) else {
                break;
            };
            let mut v = i + 2 + sig_len + 1;
            let next = match sig {
                b"u" => {
                    v = v.next_multiple_of(4);
                    let val = u32_at(v);
                    if code == FIELD_REPLY_SERIAL {
                        reply_to = val;
                    }
                    v + 4
                }
                b"s" | b"o" => {
                    v = v.next_multiple_of(4);
                    let Some(len) = u32_at(v) else { break };
                    let start = v + 4;
                    if code == FIELD_MEMBER
                        && let Some(s) = b.get(start..start + len as usize)
                    {
                        member = Some(String::from_utf8_lossy(s).into_owned());
                    }
                    start + len as usize + 1
                }
                b"g" => {
                    let Some(&len) = b.get(v) else { break };
                    v + 1 + len as usize + 1
                }
                _ => break,
            };
            i = next.next_multiple_of(8);
        }
        Some(match b[1] {
            1 => Self::Call {
                serial,
                no_reply: b[2] & 0x1 != 0,
                member,
            },
            2 => Self::Return { serial, reply_to },
            3 => Self::Error { serial, reply_to },
            4 => Self::Signal { serial },
            _ => return None,
        })
    }

    /// SASL text: complete lines (the last one may be cut at the probe's
    /// copy size), the leading credential NUL as its own line.
    pub fn parse_sasl(b: &[u8]) -> Self {
        let mut lines = Vec::new();
        let mut rest = b;
        if let [0, tail @ ..] = rest {
            lines.push("\\0".to_owned());
            rest = tail;
        }
        for l in rest.split(|&c| c == b'\n') {
            let l = l.strip_suffix(b"\r").unwrap_or(l);
            if !l.is_empty() {
                lines.push(String::from_utf8_lossy(l).into_owned());
            }
        }
        Self::Sasl { lines }
    }

    /// A request that waits for an answer: a method call without
    /// NO_REPLY_EXPECTED.
    pub fn awaited_serial(&self) -> Option<u32> {
        match self {
            Self::Call {
                serial,
                no_reply: false,
                ..
            } => Some(*serial),
            _ => None,
        }
    }

    /// The peer is expected to answer it: a method call expecting a reply,
    /// or SASL lines the server answers.
    pub fn awaits_answer(&self) -> bool {
        match self {
            Self::Sasl { lines } => lines.iter().any(|l| sasl_client_waits(l)),
            m => m.awaited_serial().is_some(),
        }
    }

    /// An answer to SASL lines (OK, REJECTED, ERROR, DATA, AGREE_UNIX_FD).
    pub fn answers_sasl(&self) -> bool {
        matches!(self, Self::Sasl { lines } if lines.iter().any(|l| sasl_server_answers(l)))
    }

    /// A reply and the serial it answers (None inside: a reply whose
    /// REPLY_SERIAL was not copied).
    pub fn answers(&self) -> Option<Option<u32>> {
        match self {
            Self::Return { reply_to, .. } | Self::Error { reply_to, .. } => Some(*reply_to),
            _ => None,
        }
    }
}

/// The length of the binary message whose header starts `b` (16 + fields
/// padded to 8 + body), if `b` starts one.
pub fn wire_len(b: &[u8]) -> Option<u64> {
    if b.len() < 16 || !(1..=4).contains(&b[1]) || b[3] != 1 {
        return None;
    }
    let v = |i: usize| [b[i], b[i + 1], b[i + 2], b[i + 3]];
    let (body, fields) = match b[0] {
        b'l' => (u32::from_le_bytes(v(4)), u32::from_le_bytes(v(12))),
        b'B' => (u32::from_be_bytes(v(4)), u32::from_be_bytes(v(12))),
        _ => return None,
    };
    Some(16 + u64::from(fields).next_multiple_of(8) + u64::from(body))
}

/// The bytes the probe copied where SASL text starts a call (`call_rest`:
/// the call's bytes from there): the lines up to the last CRLF, then a
/// binary message if one starts right after them (a server's `OK` and
/// `AGREE_UNIX_FD` often share a read with its first message). The bool:
/// bytes of the call went by unseen (a second message, or bytes that start
/// nothing), so the read must be taken to answer everything.
pub fn parse_sasl_slot(b: &[u8], call_rest: u64) -> (Vec<Message>, bool) {
    let end = b
        .windows(2)
        .rposition(|w| w == b"\r\n")
        .map_or(b.len(), |i| i + 2);
    let mut out = vec![Message::parse_sasl(&b[..end])];
    let tail = &b[end..];
    if tail.is_empty() {
        return (out, call_rest > b.len() as u64);
    }
    match wire_len(tail).zip(Message::parse_header(tail)) {
        Some((len, m)) => {
            out.push(m);
            (out, (end as u64).saturating_add(len) < call_rest)
        }
        None => (out, true),
    }
}

/// The SASL lines a client sends that the server answers (AUTH, DATA,
/// NEGOTIATE_UNIX_FD, CANCEL, ERROR); the credential byte and BEGIN expect
/// nothing.
pub fn sasl_client_waits(line: &str) -> bool {
    ["AUTH", "DATA", "NEGOTIATE_UNIX_FD", "CANCEL", "ERROR"]
        .iter()
        .any(|w| line == *w || line.starts_with(&format!("{w} ")))
}

/// The SASL lines a server answers with (OK, REJECTED, ERROR, DATA,
/// AGREE_UNIX_FD).
pub fn sasl_server_answers(line: &str) -> bool {
    ["OK", "REJECTED", "ERROR", "DATA", "AGREE_UNIX_FD"]
        .iter()
        .any(|w| line == *w || line.starts_with(&format!("{w} ")))
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
    /// Its start time (clock ticks after boot, `/proc/<pid>/stat` field
    /// 22): with the pid, names this process and no later one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<u64>,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A little-endian header: type, flags, serial, then raw fields.
    fn header(ty: u8, flags: u8, serial: u32, body: u32, fields: &[u8]) -> Vec<u8> {
        let mut b = vec![b'l', ty, flags, 1];
        b.extend(body.to_le_bytes());
        b.extend(serial.to_le_bytes());
        b.extend((fields.len() as u32).to_le_bytes());
        b.extend(fields);
        b
    }

    /// A REPLY_SERIAL field (code 5, signature "u").
    fn reply_serial(v: u32) -> Vec<u8> {
        let mut f = vec![5, 1, b'u', 0];
        f.extend(v.to_le_bytes());
        f
    }

    /// A string field padded to 8.
    fn string_field(code: u8, s: &str) -> Vec<u8> {
        let mut f = vec![code, 1, b's', 0];
        f.extend((s.len() as u32).to_le_bytes());
        f.extend(s.as_bytes());
        f.push(0);
        while f.len() % 8 != 0 {
            f.push(0);
        }
        f
    }

    #[test]
    fn method_calls_replies_and_signals_by_serial() {
        let mut fields = string_field(1, "/org/freedesktop/systemd1");
        fields.extend(string_field(3, "StartTransientUnit"));
        let call = header(1, 0, 7, 100, &fields);
        assert_eq!(
            Message::parse(1, &call),
            Message::Call {
                serial: 7,
                no_reply: false,
                member: Some("StartTransientUnit".into())
            }
        );
        assert_eq!(Message::parse(1, &call).awaited_serial(), Some(7));
        let no_reply = header(1, 1, 8, 0, &[]);
        assert_eq!(Message::parse(1, &no_reply).awaited_serial(), None);
        // sd-bus/dbus-daemon put REPLY_SERIAL first; after a DESTINATION too.
        let ret = header(2, 1, 55, 8, &reply_serial(7));
        assert_eq!(
            Message::parse(1, &ret),
            Message::Return {
                serial: 55,
                reply_to: Some(7)
            }
        );
        let mut f = string_field(6, ":1.42");
        f.extend(reply_serial(9));
        assert_eq!(
            Message::parse(1, &header(3, 1, 56, 0, &f)).answers(),
            Some(Some(9))
        );
        assert_eq!(
            Message::parse(1, &header(4, 1, 57, 0, &[])),
            Message::Signal { serial: 57 }
        );
        // Cut before the field: a reply to an unknown serial.
        assert_eq!(Message::parse(1, &ret[..18]).answers(), Some(None));
        // Big endian.
        let mut be = vec![b'B', 2, 0, 1];
        be.extend(0u32.to_be_bytes());
        be.extend(3u32.to_be_bytes());
        be.extend(8u32.to_be_bytes());
        be.extend([5, 1, b'u', 0]);
        be.extend(2u32.to_be_bytes());
        assert_eq!(
            Message::parse(1, &be),
            Message::Return {
                serial: 3,
                reply_to: Some(2)
            }
        );
        assert_eq!(Message::parse(1, b"xyz"), Message::Unknown);
        assert_eq!(Message::parse(0, b"l\x01\x00\x01"), Message::Unknown);
    }

    #[test]
    fn a_sasl_answer_and_the_first_message_in_one_read() {
        let mut b = b"OK 0123\r\nAGREE_UNIX_FD\r\n".to_vec();
        let sasl_len = b.len() as u64;
        let ret = header(2, 1, 1, 0, &reply_serial(1));
        b.extend(&ret);
        let (m, lost) = parse_sasl_slot(&b, b.len() as u64);
        assert!(!lost, "{m:?}");
        assert_eq!(m.len(), 2);
        assert!(m[0].answers_sasl());
        assert_eq!(m[1].answers(), Some(Some(1)));
        // A second message beyond: lost.
        let (_, lost) = parse_sasl_slot(&b, sasl_len + 2 * ret.len() as u64);
        assert!(lost);
        // The credential byte alone, and text that is neither.
        let (m, lost) = parse_sasl_slot(b"\0", 1);
        assert!(!lost && !m[0].awaits_answer());
        let (_, lost) = parse_sasl_slot(b"OK 1\r\nxyz", 10);
        assert!(lost);
        assert_eq!(wire_len(&ret), Some(ret.len() as u64));
    }

    #[test]
    fn sasl_lines_as_sd_bus_and_servers_send_them() {
        // sd-bus: one 48-byte write.
        let m = Message::parse(2, b"\0AUTH EXTERNAL 30\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n");
        let Message::Sasl { lines } = &m else {
            panic!("{m:?}")
        };
        assert_eq!(
            lines,
            &["\\0", "AUTH EXTERNAL 30", "NEGOTIATE_UNIX_FD", "BEGIN"]
        );
        assert_eq!(
            lines.iter().filter(|l| sasl_client_waits(l)).count(),
            2,
            "AUTH and NEGOTIATE_UNIX_FD wait, the NUL and BEGIN do not"
        );
        let Message::Sasl { lines } = Message::parse(2, b"OK 0123\r\nAGREE_UNIX_FD\r\n") else {
            panic!()
        };
        assert!(lines.iter().all(|l| sasl_server_answers(l)));
        assert!(!sasl_client_waits("BEGIN"));
        assert!(!sasl_server_answers("BEGIN"));
        assert!(!sasl_client_waits("AUTHX"));
    }
}
