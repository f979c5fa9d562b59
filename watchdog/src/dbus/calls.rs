//! Socket-call decoding: one kernel event becomes [`SocketCall`]
//! observations, and the tracker's view of the connection (pending or not)
//! follows it. On the socket-tracepoint path a connection becomes known at
//! its first call (there is no connect hook): that call is preceded by a
//! connect observation of the tracker's own (`first_seen`).
use watchdog_common::{
    SOCK_EV_DESYNC, SOCK_EV_FIRST, SOCK_EV_OVERFLOW, SOCK_EV_STREAM, SOCK_MSG_SASL, SOCK_MSG_SLOTS,
    SockCall, SocketEvent,
};

use super::{DbusTracker, Tracked, process::process_info};
use crate::{
    context::nul_terminated,
    diagnosis::systemd_hang::BUS_ABSENT,
    model::Time,
    model::dbus::{CallKind, Message, MessageKind, SocketCall, parse_sasl_slot},
    model::errno,
    model::finding::systemd::SocketKind,
};

/// The `syscall` of the connect observation of a connection first seen at
/// one of its sends or receives (socket-tracepoint path).
pub const FIRST_SEEN: &str = "first_seen";

/// The messages an event of the socket-tracepoint probe carries (None from
/// the syscall probes), and whether bytes of the call went by unseen.
pub fn messages(ev: &SocketEvent) -> (Option<Vec<Message>>, bool) {
    let mut lost = ev.flags & (SOCK_EV_DESYNC | SOCK_EV_OVERFLOW) != 0;
    if ev.flags & SOCK_EV_STREAM == 0 {
        return (None, lost);
    }
    let mut out = Vec::new();
    for m in ev.msgs.iter().take((ev.nmsgs as usize).min(SOCK_MSG_SLOTS)) {
        let bytes = &m.bytes[..usize::from(m.len).min(m.bytes.len())];
        if m.kind == SOCK_MSG_SASL {
            let rest = (ev.ret.max(0) as u64).saturating_sub(u64::from(m.offset));
            let (ms, l) = parse_sasl_slot(bytes, rest);
            out.extend(ms);
            lost |= l;
        } else {
            out.push(Message::parse(m.kind, bytes));
        }
    }
    (Some(out), lost)
}

impl DbusTracker {
    /// One kernel event as observations (`started`: the syscall's entry,
    /// syscall path only).
    pub fn calls(&mut self, ev: &SocketEvent, at: Time, started: Option<Time>) -> Vec<SocketCall> {
        let mut out = Vec::new();
        let sc = SockCall::from_u32(ev.call);
        let call = match sc {
            SockCall::Connect => CallKind::Connect,
            SockCall::Close => CallKind::Close,
            SockCall::ProcessGone => CallKind::ProcessGone,
            c if c.is_send() => CallKind::Send,
            _ => CallKind::Recv,
        };
        let socket = match self.real_paths.get(ev.slot as usize) {
            Some(p) => p.clone(),
            None if sc == SockCall::Connect => nul_terminated(&ev.path),
            None => String::new(),
        };
        let key = (ev.pid, ev.fd);
        let (messages, desync) = messages(ev);
        if messages.is_some() {
            self.first_seen(ev, at, &socket, &mut out);
        }
        let mut process = None;
        match call {
            CallKind::Connect => {
                if ev.ret == 0 || errno::failed_with(ev.ret, errno::EINPROGRESS) {
                    let inode = self.proc.socket_inode(ev.pid, ev.fd);
                    self.conns.insert(key, Tracked::new(socket.clone(), inode));
                }
                process = Some(process_info(&self.proc, ev.pid));
            }
            // The tracker only schedules corroboration (queues, probes); the
            // engine decides. It follows serials as the engine does, coarser.
            CallKind::Send => {
                if let Some(t) = self.conns.get_mut(&key) {
                    let waits = match &messages {
                        Some(ms) if ev.ret > 0 => {
                            for m in ms {
                                if let Some(s) = m.awaited_serial() {
                                    t.calls.insert(s);
                                }
                                t.auth |= m.awaits_answer() && m.awaited_serial().is_none();
                            }
                            ms.iter().any(Message::awaits_answer)
                        }
                        None if ev.ret > 0 => MessageKind::of(ev.head).expects_reply(),
                        _ => false,
                    };
                    if waits || errno::failed_with(ev.ret, errno::EAGAIN) {
                        t.pending_since.get_or_insert(at);
                    }
                }
            }
            CallKind::Recv => {
                if ev.ret > 0
                    && let Some(t) = self.conns.get_mut(&key)
                {
                    match &messages {
                        Some(ms) if !desync => {
                            for m in ms {
                                match m.answers() {
                                    Some(Some(s)) => {
                                        t.calls.remove(&s);
                                    }
                                    Some(None) => t.calls.clear(),
                                    None => {}
                                }
                                t.auth &= !m.answers_sasl();
                            }
                        }
                        _ => {
                            t.calls.clear();
                            t.auth = false;
                        }
                    }
                    if t.calls.is_empty() && !t.auth {
                        t.pending_since = None;
                    }
                } else if ev.ret == 0 {
                    self.conns.remove(&key);
                }
            }
            CallKind::Close => {
                self.conns.remove(&key);
            }
            CallKind::ProcessGone => self.conns.retain(|(pid, _), _| *pid != ev.pid),
        }
        out.push(SocketCall {
            at,
            pid: ev.pid,
            tid: ev.tid,
            comm: nul_terminated(&ev.comm),
            fd: ev.fd,
            call,
            syscall: sc.name().to_owned(),
            ret: ev.ret,
            requested: ev.requested,
            socket,
            started: (call == CallKind::Send).then_some(started).flatten(),
            ktime_ns: Some(ev.header.ts_ns),
            started_ktime_ns: (call == CallKind::Send && ev.start_ns != 0).then_some(ev.start_ns),
            message: (call == CallKind::Send && ev.ret > 0).then(|| MessageKind::of(ev.head)),
            process,
            messages,
            desync,
        });
        out
    }

    /// The connection of a socket-tracepoint event becomes known: at its
    /// first event (or a new socket on a known fd: the kernel saw this
    /// socket for the first time and the fd leads elsewhere now), a connect
    /// observation with who connected.
    fn first_seen(&mut self, ev: &SocketEvent, at: Time, socket: &str, out: &mut Vec<SocketCall>) {
        let key = (ev.pid, ev.fd);
        // A known connection: nothing to read unless the kernel says this
        // socket is new to it (the fd may lead elsewhere now). Every event
        // of a chatty connection passes here: no /proc read for them.
        let known = self.conns.get(&key);
        if known.is_some() && ev.flags & SOCK_EV_FIRST == 0 {
            return;
        }
        let inode = self.proc.socket_inode(ev.pid, ev.fd);
        if known.is_some_and(|t| t.inode == inode) {
            return;
        }
        self.conns
            .insert(key, Tracked::new(socket.to_owned(), inode));
        // A client of systemd's private socket while no bus socket exists:
        // runc (go-systemd) dialed the bus first and got ENOENT, which only
        // a connect hook would see; say what is known (lstat of the
        // configured paths, on /run: no user mount).
        if SocketKind::of(socket) == SocketKind::SystemdPrivate {
            let buses: Vec<&String> = self
                .real_paths
                .iter()
                .filter(|p| SocketKind::of(p) == SocketKind::SystemBus)
                .collect();
            if !buses.is_empty()
                && buses.iter().all(|p| {
                    std::fs::symlink_metadata(p)
                        .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
                })
            {
                out.push(SocketCall {
                    tid: ev.tid,
                    comm: nul_terminated(&ev.comm),
                    ret: -errno::ENOENT,
                    socket: buses[0].clone(),
                    ..SocketCall::bare(at, ev.pid, -1, CallKind::Connect, BUS_ABSENT)
                });
            }
        }
        out.push(SocketCall {
            tid: ev.tid,
            comm: nul_terminated(&ev.comm),
            socket: socket.to_owned(),
            ktime_ns: Some(ev.header.ts_ns),
            process: Some(process_info(&self.proc, ev.pid)),
            ..SocketCall::bare(at, ev.pid, ev.fd, CallKind::Connect, FIRST_SEEN)
        });
    }
}
