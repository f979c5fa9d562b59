//! Socket-call decoding: one kernel event becomes a [`SocketCall`]
//! observation, and the tracker's view of the connection (pending or not)
//! follows it.
use watchdog_common::{SockCall, SocketEvent};

use super::{DbusTracker, Tracked, process::process_info};
use crate::{
    context::nul_terminated,
    model::Time,
    model::dbus::{CallKind, MessageKind, SocketCall},
    model::errno,
};

impl DbusTracker {
    /// One kernel event as an observation (`started`: the syscall's entry).
    pub fn call(&mut self, ev: &SocketEvent, at: Time, started: Option<Time>) -> SocketCall {
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
        let mut process = None;
        match call {
            CallKind::Connect => {
                if ev.ret == 0 || errno::failed_with(ev.ret, errno::EINPROGRESS) {
                    self.conns.insert(
                        key,
                        Tracked {
                            socket: socket.clone(),
                            pending_since: None,
                        },
                    );
                }
                process = Some(process_info(&self.proc, ev.pid));
            }
            CallKind::Send => {
                if let Some(t) = self.conns.get_mut(&key)
                    && (errno::failed_with(ev.ret, errno::EAGAIN)
                        || (ev.ret > 0 && MessageKind::of(ev.head).expects_reply()))
                {
                    t.pending_since.get_or_insert(at);
                }
            }
            CallKind::Recv => {
                if ev.ret > 0
                    && let Some(t) = self.conns.get_mut(&key)
                {
                    t.pending_since = None;
                } else if ev.ret == 0 {
                    self.conns.remove(&key);
                }
            }
            CallKind::Close => {
                self.conns.remove(&key);
            }
            CallKind::ProcessGone => self.conns.retain(|(pid, _), _| *pid != ev.pid),
        }
        SocketCall {
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
        }
    }
}
