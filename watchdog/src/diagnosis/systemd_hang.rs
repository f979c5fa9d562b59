//! systemd hangs: runtime processes (runc with the systemd cgroup driver,
//! containerd, dockerd, kubelet) waiting on D-Bus for systemd. Pure: fed the
//! calls on their connections to systemd's private socket and to the system
//! bus ([`SocketCall`]), the socket queues ([`SocketQueues`]) and the agent's
//! own probes ([`BusProbe`]).
//!
//! A connection waits while a request it sent has no answer. With the
//! messages the socket-tracepoint probe walks, requests are followed by
//! serial: a method call waits until the METHOD_RETURN or ERROR naming its
//! serial is read (signals and other replies end nothing), and the SASL
//! exchange waits until the server's OK/REJECTED/ERROR/AGREE_UNIX_FD line.
//! Without messages (syscall probes, older recordings) it waits when it
//! sent bytes and has read nothing since (Go's non-blocking sockets: the
//! request went out, reads return EAGAIN, the threads park in epoll). Its
//! write side is stalled when a send came back
//! partial or EAGAIN (the peer stopped reading and the socket buffer is
//! full). One finding per socket path: active when a connection to it has
//! waited past the threshold, updated while it lasts, resolved when no
//! connection waits any more (a reply came, or the waiting processes are
//! gone).
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::{Book, Detector, Urgency};
use crate::model::{
    Observation, Time,
    dbus::{
        self, BusProbe, CallKind, ConnQueue, Message, ProbeOutcome, ProbeTarget, ProcessInfo,
        SocketCall, SocketQueues,
    },
    errno,
    finding::{
        Cause, Confidence, Detail, Evidence, Finding, FindingId, FindingStatus, ProcRef, Remedy,
        RemedyAction, Report,
        systemd::{SocketKind, Stuck, SystemdDetail, Waiting},
    },
    settings::EngineConfig,
};

const MAX_WAITING: usize = 20;
/// The `syscall` of a failed connect the tracker infers (no connect hook on
/// the socket-tracepoint path): a client on systemd's private socket while
/// the bus socket does not exist (runc tries the bus first).
pub const BUS_ABSENT: &str = "bus_socket_absent";
const MAX_EVIDENCE: usize = 10;
/// Waiting runtime invocations put on the remedy ladder (one rung each).
const MAX_KILLS: usize = 3;

/// A runc/crun process running one of its subcommands (`create`, `run`,
/// `delete`...), as its command line showed: the OCI runtime CLI that
/// containerd, a shim or dockerd started, not a daemon.
fn is_oci_runtime_call(w: &Waiting) -> bool {
    matches!(w.comm.as_str(), "runc" | "crun") && w.action.is_some()
}

#[derive(Clone, Debug)]
struct Conn {
    comm: String,
    socket: String,
    process: Option<ProcessInfo>,
    /// First send since the last reply.
    pending_since: Option<Time>,
    pending_bytes: u64,
    /// First partial or EAGAIN send since the last complete one.
    stalled_since: Option<Time>,
    unsent: u64,
    /// The last receive of any bytes, and its kernel time when known.
    last_recv: Option<Time>,
    last_recv_ns: Option<u64>,
    /// The last send did not complete: the next one continues its message,
    /// which expects a reply or not.
    continuing: Option<bool>,
    /// Calls with messages (socket-tracepoint path): the method calls
    /// waiting for their reply, by serial, since when they were sent.
    calls: BTreeMap<u32, Time>,
    /// The SASL line sent that the server has not answered yet.
    auth_since: Option<Time>,
    /// Replies read to serials not (yet) pending: Go reads on another thread
    /// and can read a reply before the send's own event comes in.
    early_replies: VecDeque<u32>,
}

/// Early replies kept per connection.
const EARLY_REPLIES: usize = 16;

impl Conn {
    fn new(c: &SocketCall) -> Self {
        Self {
            comm: c.comm.clone(),
            socket: c.socket.clone(),
            process: c.process.clone(),
            pending_since: None,
            pending_bytes: 0,
            stalled_since: None,
            unsent: 0,
            last_recv: None,
            last_recv_ns: None,
            continuing: None,
            calls: BTreeMap::new(),
            auth_since: None,
            early_replies: VecDeque::new(),
        }
    }

    /// A send whose messages the probe walked: each method call that
    /// expects a reply and each SASL line the server answers starts a wait
    /// of its own.
    fn sent(&mut self, c: &SocketCall, msgs: &[Message]) {
        if c.ret > 0 {
            let mut waits = false;
            for m in msgs {
                if let Some(serial) = m.awaited_serial() {
                    if let Some(i) = self.early_replies.iter().position(|s| *s == serial) {
                        self.early_replies.remove(i);
                    } else {
                        self.calls.entry(serial).or_insert(c.at);
                        waits = true;
                    }
                }
                if let Message::Sasl { lines } = m
                    && lines.iter().any(|l| dbus::sasl_client_waits(l))
                {
                    self.auth_since.get_or_insert(c.at);
                    waits = true;
                }
            }
            if waits || self.pending_since.is_some() {
                self.pending_bytes += c.ret as u64;
            }
            if (c.ret as u64) < c.requested {
                self.stalled_since.get_or_insert(c.at);
                self.unsent = c.requested - c.ret as u64;
            } else {
                self.stalled_since = None;
                self.unsent = 0;
            }
        } else if errno::failed_with(c.ret, errno::EAGAIN) {
            // Something it cannot even send: it waits whatever it is.
            self.stalled_since.get_or_insert(c.at);
            self.unsent = c.requested;
        }
        self.update_pending();
    }

    /// A read whose messages the probe walked: a METHOD_RETURN or ERROR
    /// ends the call whose serial it names; signals and other replies end
    /// nothing; a server's SASL answer ends the authentication wait. Bytes
    /// the probe could not follow answer everything (as without messages).
    fn read(&mut self, c: &SocketCall, msgs: &[Message]) {
        if c.desync {
            self.calls.clear();
            self.auth_since = None;
        }
        for m in msgs {
            match m.answers() {
                Some(Some(serial)) if self.calls.remove(&serial).is_none() => {
                    if self.early_replies.len() >= EARLY_REPLIES {
                        self.early_replies.pop_front();
                    }
                    self.early_replies.push_back(serial);
                }
                // A reply whose REPLY_SERIAL was not copied: it may answer
                // any of them.
                Some(None) => self.calls.clear(),
                // Answered (removed in the guard), or not a reply.
                Some(Some(_)) | None => {}
            }
            if m.answers_sasl() {
                self.auth_since = None;
            }
        }
        self.update_pending();
    }

    /// The connection waits since its oldest unanswered request, or since
    /// its writes stall.
    fn update_pending(&mut self) {
        self.pending_since = self
            .calls
            .values()
            .copied()
            .chain(self.auth_since)
            .chain(self.stalled_since)
            .min();
        if self.pending_since.is_none() {
            self.pending_bytes = 0;
        }
    }
}

/// A probe result older than this does not keep a probe streak current
/// (the agent probes every 5 s while it probes at all).
const PROBES_CURRENT_MS: u64 = 12_000;

/// How a finding from the agent's probes alone starts its summary.
const UNANSWERED_PREFIX: &str = "the agent's D-Bus probes got no answer for";

/// A connection with its (pid, fd).
type ConnRef<'a> = ((u32, i32), &'a Conn);

pub struct SystemdHang {
    cfg: EngineConfig,
    conns: BTreeMap<(u32, i32), Conn>,
    queues: Option<SocketQueues>,
    /// Latest probe per (socket, target).
    probes: BTreeMap<(String, ProbeTarget), BusProbe>,
    /// Failed connects to a followed socket per process (time, socket,
    /// errno), for evidence (runc falls back from the bus to the private
    /// socket).
    refused: BTreeMap<u32, Vec<(Time, String, i64, bool)>>,
    /// Replies read on each socket with an active finding since it started.
    replies: BTreeMap<String, u64>,
    /// Since when the agent's own probes of (socket, target) time out, in a
    /// row (an answer or a refused connection clears it). Where requests are
    /// not followed (no socket tracepoints, `--dbus-requests off`) this alone
    /// shows a bus or systemd that stopped answering.
    unanswered: BTreeMap<(String, ProbeTarget), Time>,
}

impl Detector for SystemdHang {
    fn observe(&mut self, obs: &Observation, _book: &mut Book) -> Vec<Report> {
        match obs {
            Observation::SocketCall(c) => self.call(c),
            Observation::SocketQueues(q) => self.queues = Some(q.clone()),
            Observation::BusProbe(p) => {
                let key = (p.socket.clone(), p.target);
                match p.outcome {
                    // Unanswered since the probe started.
                    ProbeOutcome::Timeout { ms } => {
                        self.unanswered
                            .entry(key.clone())
                            .or_insert(Time::from_millis(p.at.0.saturating_sub(ms)));
                    }
                    _ => {
                        self.unanswered.remove(&key);
                    }
                }
                self.probes.insert(key, p.clone());
            }
            _ => {}
        }
        Vec::new()
    }

    fn tick(&mut self, now: Time, book: &mut Book) -> Vec<Report> {
        SystemdHang::tick(self, now, book)
    }
}

impl SystemdHang {
    pub fn new(cfg: &EngineConfig) -> Self {
        Self {
            cfg: cfg.clone(),
            conns: BTreeMap::new(),
            queues: None,
            probes: BTreeMap::new(),
            refused: BTreeMap::new(),
            replies: BTreeMap::new(),
            unanswered: BTreeMap::new(),
        }
    }

    fn call(&mut self, c: &SocketCall) {
        let key = (c.pid, c.fd);
        match c.call {
            CallKind::Connect => {
                if c.ret == 0 || errno::failed_with(c.ret, errno::EINPROGRESS) {
                    self.conns.insert(key, Conn::new(c));
                } else {
                    if self.refused.len() >= 256 && !self.refused.contains_key(&c.pid) {
                        self.refused.pop_first();
                    }
                    let v = self.refused.entry(c.pid).or_default();
                    if v.len() < 4 {
                        v.push((c.at, c.socket.clone(), c.ret, c.syscall == BUS_ABSENT));
                    }
                }
            }
            CallKind::Send => {
                let Some(conn) = self.conns.get_mut(&key) else {
                    return;
                };
                if let Some(msgs) = &c.messages {
                    conn.sent(c, msgs);
                    return;
                }
                // Recordings without the message kind: every send is a request.
                let expects = conn.continuing.unwrap_or_else(|| {
                    c.message
                        .is_none_or(crate::model::dbus::MessageKind::expects_reply)
                });
                if c.ret > 0 {
                    // A reply read after this send started answers it (Go
                    // reads replies on another thread, which can finish
                    // first). In kernel nanoseconds when both are known: the
                    // previous reply is often read in the same millisecond
                    // as the next request starts, and answers nothing.
                    let answered = match (conn.last_recv_ns, c.started_ktime_ns) {
                        (Some(r), Some(s)) => r >= s,
                        _ => conn
                            .last_recv
                            .is_some_and(|r| r >= c.started.unwrap_or(c.at)),
                    };
                    if expects && !answered {
                        conn.pending_since.get_or_insert(c.at);
                        conn.pending_bytes += c.ret as u64;
                    }
                    if (c.ret as u64) < c.requested {
                        conn.stalled_since.get_or_insert(c.at);
                        conn.unsent = c.requested - c.ret as u64;
                        conn.continuing = Some(expects);
                    } else {
                        conn.stalled_since = None;
                        conn.unsent = 0;
                        conn.continuing = None;
                    }
                } else if errno::failed_with(c.ret, errno::EAGAIN) {
                    // Something it cannot even send: it waits whatever it is.
                    conn.pending_since.get_or_insert(c.at);
                    conn.stalled_since.get_or_insert(c.at);
                    conn.unsent = c.requested;
                    conn.continuing = Some(expects);
                }
            }
            CallKind::Recv => {
                if c.ret > 0 {
                    // The server talks: an earlier probe timeout on this
                    // socket says nothing any more.
                    self.unanswered.retain(|(s, _), _| *s != c.socket);
                }
                let Some(conn) = self.conns.get_mut(&key) else {
                    return;
                };
                if c.ret > 0 {
                    match &c.messages {
                        Some(msgs) => conn.read(c, msgs),
                        None => {
                            conn.pending_since = None;
                            conn.pending_bytes = 0;
                        }
                    }
                    conn.last_recv = Some(c.at);
                    conn.last_recv_ns = c.ktime_ns;
                    if let Some(n) = self.replies.get_mut(&conn.socket) {
                        *n += 1;
                    }
                } else if c.ret == 0 {
                    // The server closed the connection: nothing to wait for.
                    self.conns.remove(&key);
                }
            }
            CallKind::Close => {
                self.conns.remove(&key);
            }
            CallKind::ProcessGone => {
                self.conns.retain(|(pid, _), _| *pid != c.pid);
                self.refused.remove(&c.pid);
            }
        }
    }

    fn tick(&mut self, now: Time, book: &mut Book) -> Vec<Report> {
        let threshold = self.cfg.systemd.threshold_ms;
        let mut groups: BTreeMap<String, Vec<ConnRef<'_>>> = BTreeMap::new();
        for (k, c) in &self.conns {
            if let Some(since) = c.pending_since
                && now.millis_since(since) >= threshold
            {
                groups.entry(c.socket.clone()).or_default().push((*k, c));
            }
        }
        // Sockets whose server has not answered the agent's own probes for
        // the threshold, with no waiting request to show for it (requests
        // not followed on this kernel, or none in flight).
        let mut unanswered: BTreeMap<String, Time> = BTreeMap::new();
        for (key, since) in &self.unanswered {
            let socket = &key.0;
            // Only while the probes go on (they stop when nothing waits on
            // the request paths): a stale streak says nothing.
            let current = self
                .probes
                .get(key)
                .is_some_and(|p| now.millis_since(p.at) <= PROBES_CURRENT_MS);
            if current && now.millis_since(*since) >= threshold && !groups.contains_key(socket) {
                let e = unanswered.entry(socket.clone()).or_insert(*since);
                *e = (*e).min(*since);
            }
        }
        for socket in unanswered.keys() {
            groups.entry(socket.clone()).or_default();
        }
        let mut out = Vec::new();
        for (socket, conns) in &groups {
            let id = FindingId::new(Cause::SystemdHang, socket.as_str());
            let since = conns
                .iter()
                .filter_map(|(_, c)| c.pending_since)
                .min()
                .or_else(|| unanswered.get(socket).copied())
                .unwrap_or(now);
            let (mut detail, confidence) = self.detail(now, socket, conns, since);
            if conns.is_empty() {
                detail.stuck_detail = Self::unanswered_detail(&detail);
            }
            // An update goes out when the summary or the confidence changed.
            let (evidence, urgency) = match book.get(&id) {
                None => {
                    self.replies.insert(socket.clone(), 0);
                    (self.evidence(now, socket, conns, &detail), Urgency::Now)
                }
                Some(f) if f.summary != Self::summary(&detail) || f.confidence != confidence => {
                    (f.evidence.clone(), Urgency::WhenDue)
                }
                Some(f) => (f.evidence.clone(), Urgency::Never),
            };
            let finding = Self::finding(id, since, now, evidence, detail, confidence);
            out.extend(
                book.upsert(finding, urgency)
                    .map(|f| Report::Finding(Box::new(f))),
            );
        }
        for id in book.ids(Cause::SystemdHang) {
            if groups.contains_key(&id.key) {
                continue;
            }
            let socket = &id.key;
            let replies = self.replies.remove(socket).unwrap_or(0);
            let probed = book
                .get(&id)
                .is_some_and(|f| f.summary.starts_with(UNANSWERED_PREFIX));
            let why = if probed {
                format!("the server on {socket} answers the agent's probes again")
            } else if replies > 0 {
                format!("replies flow again on {socket} ({replies} read)")
            } else {
                format!("no process waits on {socket} any more (closed or exited without a reply)")
            };
            let closing = Evidence {
                at: now,
                what: why.clone(),
            };
            let resolved = book.resolve(&id, now, Some(closing), |_, d| {
                format!("systemd hang on {socket} is over after {d:.1} s: {why}")
            });
            out.extend(resolved.map(|f| Report::Finding(Box::new(f))));
        }
        out
    }

    /// The queue of a connection, from a sock_diag sweep taken while its
    /// current request waited (older ones describe something else).
    fn queue_of(&self, pid: u32, fd: i32, since: Time) -> Option<&ConnQueue> {
        self.queues
            .as_ref()
            .filter(|q| q.at >= since)?
            .conns
            .iter()
            .find(|q| q.pid == pid && q.fd == fd)
    }

    fn detail(
        &self,
        now: Time,
        socket: &str,
        conns: &[ConnRef<'_>],
        since: Time,
    ) -> (SystemdDetail, Confidence) {
        let kind = SocketKind::of(socket);
        let mut waiting: Vec<Waiting> = conns
            .iter()
            .map(|((pid, fd), c)| Waiting {
                comm: c.comm.clone(),
                pid: *pid,
                fd: *fd,
                waiting_s: c.pending_since.map(|t| now.secs_since(t)).unwrap_or(0.0),
                bytes_sent: c.pending_bytes,
                bytes_unsent: c.unsent,
                write_stalled: c.stalled_since.is_some(),
                container: c.process.as_ref().and_then(|p| p.container.clone()),
                action: c.process.as_ref().and_then(|p| p.action.clone()),
                pod: c.process.as_ref().and_then(|p| p.pod.clone()),
                cmdline: c.process.as_ref().map(|p| p.cmdline.clone()),
                start: c.process.as_ref().and_then(|p| p.start),
            })
            .collect();
        waiting.sort_by(|a, b| b.waiting_s.total_cmp(&a.waiting_s).then(a.pid.cmp(&b.pid)));
        let waiting_total = waiting.len();
        let containers: Vec<String> = waiting
            .iter()
            .filter_map(|w| w.container.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let queues: Vec<&ConnQueue> = conns
            .iter()
            .filter_map(|((pid, fd), c)| self.queue_of(*pid, *fd, c.pending_since.unwrap_or(now)))
            .collect();
        let unread: u64 = queues.iter().filter_map(|q| q.unread_by_peer).sum();
        let not_accepted = queues.iter().any(|q| q.peer_not_accepted);
        let server = queues.iter().find_map(|q| q.peer.clone());
        let listener = self
            .queues
            .as_ref()
            .filter(|q| q.at >= since)
            .and_then(|q| q.listeners.iter().find(|l| l.socket == socket).cloned());
        let stalled = waiting.iter().any(|w| w.write_stalled);
        let probes: Vec<BusProbe> = self
            .probes
            .values()
            .filter(|p| p.socket == socket && p.at >= since)
            .cloned()
            .collect();
        let probe = |target: ProbeTarget| probes.iter().find(|p| p.target == target);
        let systemd_probe = probe(ProbeTarget::Systemd);
        let bus_probe = probe(ProbeTarget::Bus);
        let timed_out = |p: Option<&BusProbe>| {
            matches!(p.map(|p| &p.outcome), Some(ProbeOutcome::Timeout { .. }))
        };
        let answered = |p: Option<&BusProbe>| {
            matches!(p.map(|p| &p.outcome), Some(ProbeOutcome::Answered { .. }))
        };
        let server_name = server
            .as_ref()
            .map(|h| format!("{}[{}]", h.comm, h.pid))
            .unwrap_or_else(|| match kind {
                SocketKind::SystemBus => "the bus daemon".into(),
                SocketKind::SystemdPrivate => "systemd".into(),
            });
        let not_reading = if kind == SocketKind::SystemBus {
            Stuck::BusNotReading
        } else {
            Stuck::SystemdNotReading
        };
        let (stuck, why, certain) = if stalled {
            (
                not_reading,
                format!(
                    "{server_name} stopped reading: sends come back partial or EAGAIN (the socket buffer is full){}",
                    if unread > 0 {
                        format!(", {unread} bytes unread in its queue")
                    } else {
                        String::new()
                    }
                ),
                true,
            )
        } else if not_accepted || listener.as_ref().is_some_and(|l| l.pending > 0) {
            (
                not_reading,
                format!(
                    "{server_name} does not accept connections: {} waiting in the listen queue of {socket}",
                    listener.as_ref().map(|l| l.pending).unwrap_or(1)
                ),
                true,
            )
        } else if unread > 0 {
            (
                not_reading,
                format!(
                    "{server_name} has not read the request: {unread} bytes unread in its queue"
                ),
                true,
            )
        } else if kind == SocketKind::SystemBus && timed_out(bus_probe) {
            (
                Stuck::BusNotReading,
                "the bus daemon does not answer the agent's GetId either".into(),
                true,
            )
        } else {
            let probe_words = match (systemd_probe.map(|p| &p.outcome), kind) {
                (Some(ProbeOutcome::Timeout { ms }), _) => {
                    format!(
                        "; systemd does not answer the agent's Ping either (no reply in {ms} ms)"
                    )
                }
                (Some(ProbeOutcome::Answered { ms }), _) => format!(
                    "; systemd answers the agent's Ping ({ms} ms) but not this request (a call that never completes)"
                ),
                _ => String::new(),
            };
            let bus_words = if kind == SocketKind::SystemBus && answered(bus_probe) {
                "; the bus itself answers"
            } else {
                ""
            };
            (
                Stuck::SystemdNotReplying,
                format!(
                    "the request was read{} and no reply came{probe_words}{bus_words}",
                    if queues.is_empty() {
                        " (queues unknown)"
                    } else {
                        " (nothing left unread)"
                    }
                ),
                !queues.is_empty() || systemd_probe.is_some(),
            )
        };
        // Per waiting connection: what the server has not read (sock_diag),
        // or, when its end is not visible, what was sent without a reply;
        // plus what the client could not even send.
        let bytes_queued = waiting
            .iter()
            .map(|w| {
                self.queue_of(w.pid, w.fd, since)
                    .and_then(|q| q.unread_by_peer)
                    .unwrap_or(w.bytes_sent)
                    + w.bytes_unsent
            })
            .sum();
        waiting.truncate(MAX_WAITING);
        (
            SystemdDetail {
                socket: socket.to_owned(),
                socket_kind: kind,
                stuck,
                stuck_detail: why,
                since,
                waiting_s: now.secs_since(since),
                waiting,
                waiting_total,
                containers,
                bytes_queued,
                server,
                listener,
                probes,
            },
            if certain {
                Confidence::Certain
            } else {
                Confidence::Likely
            },
        )
    }

    fn evidence(
        &self,
        now: Time,
        socket: &str,
        conns: &[ConnRef<'_>],
        d: &SystemdDetail,
    ) -> Vec<Evidence> {
        let mut ev = Vec::new();
        for ((pid, _), c) in conns.iter().take(4) {
            for (at, other, ret, inferred) in self.refused.get(pid).into_iter().flatten() {
                ev.push(Evidence {
                    at: *at,
                    what: if *inferred {
                        format!(
                            "{other} does not exist ({}): {}[{pid}] uses {socket}",
                            errno::name(*ret),
                            c.comm
                        )
                    } else {
                        format!(
                            "{}[{pid}] could not connect to {other}: {}{}",
                            c.comm,
                            errno::name(*ret),
                            if other != socket {
                                format!(" (then used {socket})")
                            } else {
                                String::new()
                            }
                        )
                    },
                });
            }
        }
        for ((pid, fd), c) in conns.iter().take(4) {
            let Some(since) = c.pending_since else {
                continue;
            };
            ev.push(Evidence {
                at: since,
                what: format!(
                    "{}[{pid}] fd {fd} sent {} bytes to {socket} and read nothing back{}",
                    c.comm,
                    c.pending_bytes,
                    c.stalled_since
                        .map(|t| format!(
                            "; its writes stall (partial/EAGAIN, {} bytes unsent) since {}",
                            c.unsent,
                            t.rfc3339()
                        ))
                        .unwrap_or_default()
                ),
            });
        }
        ev.push(Evidence {
            at: now,
            what: format!("{}: {}", d.stuck.name(), d.stuck_detail),
        });
        for p in &d.probes {
            ev.push(Evidence {
                at: p.at,
                what: format!(
                    "probe of {} on {}: {}",
                    p.target.bus_name(),
                    p.socket,
                    match &p.outcome {
                        ProbeOutcome::Answered { ms } => format!("answered in {ms} ms"),
                        ProbeOutcome::Timeout { ms } => format!("no answer in {ms} ms"),
                        ProbeOutcome::Failed { error } => format!("failed: {error}"),
                    }
                ),
            });
        }
        ev.truncate(MAX_EVIDENCE);
        ev
    }

    /// What the probes alone say (no waiting request is known).
    fn unanswered_detail(d: &SystemdDetail) -> String {
        let what: Vec<String> = d
            .probes
            .iter()
            .filter_map(|p| match p.outcome {
                ProbeOutcome::Timeout { ms } => Some(format!(
                    "{} does not answer the agent's {} (no reply in {ms} ms)",
                    match p.target {
                        ProbeTarget::Bus => "the bus daemon",
                        ProbeTarget::Systemd => "systemd",
                    },
                    match p.target {
                        ProbeTarget::Bus => "GetId",
                        ProbeTarget::Systemd => "Ping",
                    }
                )),
                _ => None,
            })
            .collect();
        format!(
            "{} for {:.0} s; no runtime request is followed to name who waits (the socket \
             tracepoints need Linux 6.3+, or --dbus-requests is off)",
            if what.is_empty() {
                "the agent's probes get no answer".to_owned()
            } else {
                what.join("; ")
            },
            d.waiting_s
        )
    }

    fn summary(d: &SystemdDetail) -> String {
        if d.waiting.is_empty() {
            let side = match d.stuck {
                Stuck::BusNotReading => "the bus daemon is not answering",
                Stuck::SystemdNotReading | Stuck::SystemdNotReplying => "systemd is not answering",
            };
            return format!(
                "{UNANSWERED_PREFIX} {:.0} s on {}: {side}",
                d.waiting_s, d.socket
            );
        }
        let who = d
            .waiting
            .first()
            .map(|w| {
                format!(
                    "{}[{}]{}",
                    w.comm,
                    w.pid,
                    w.container
                        .as_deref()
                        .map(|c| format!(
                            " ({} container {})",
                            w.action.as_deref().unwrap_or("handling"),
                            c.chars().take(12).collect::<String>()
                        ))
                        .unwrap_or_default()
                )
            })
            .unwrap_or_default();
        let more = if d.waiting_total > 1 {
            format!(" and {} more", d.waiting_total - 1)
        } else {
            String::new()
        };
        let side = match d.stuck {
            Stuck::BusNotReading => "the bus is not reading",
            Stuck::SystemdNotReading => "systemd is not reading",
            Stuck::SystemdNotReplying => "systemd is not replying",
        };
        format!(
            "{who}{more} waiting {:.0} s for systemd on {}: {side}",
            d.waiting_s, d.socket
        )
    }

    /// Re-execute systemd; then, when that did not help (or is not
    /// allowed), kill the waiting OCI runtime invocations (runc/crun running
    /// one of its subcommands: short-lived, their caller retries), each on
    /// a rung of its own. Daemons that wait (kubelet, containerd, dockerd)
    /// are never on the ladder. A client is named only with its start time.
    fn remedy(d: &SystemdDetail) -> Remedy {
        let mut actions = Vec::new();
        if d.stuck != Stuck::BusNotReading {
            actions.push(RemedyAction::ReexecSystemd {
                socket: d.socket.clone(),
                client: d.waiting.iter().find_map(|w| {
                    Some(ProcRef {
                        pid: w.pid,
                        start: w.start?,
                    })
                }),
            });
        }
        actions.extend(
            d.waiting
                .iter()
                .filter(|w| is_oci_runtime_call(w))
                .filter_map(|w| {
                    Some(RemedyAction::KillProcess {
                        pid: w.pid,
                        comm: w.comm.clone(),
                        start: w.start?,
                    })
                })
                .take(MAX_KILLS),
        );
        Remedy::new(Self::remedy_text(d), actions)
    }

    fn remedy_text(d: &SystemdDetail) -> String {
        match d.stuck {
            Stuck::BusNotReading => format!(
                "The system bus daemon{} is not serving {}: check whether it is stopped or \
                 overloaded (its /proc status and stack), and restart it; runtimes then \
                 reconnect. If systemd itself does not answer afterwards, re-execute systemd \
                 (below).",
                d.server
                    .as_ref()
                    .map(|h| format!(" ({}[{}])", h.comm, h.pid))
                    .unwrap_or_default(),
                d.socket
            ),
            Stuck::SystemdNotReading | Stuck::SystemdNotReplying => format!(
                "systemd is not serving D-Bus (on {}); restarting dbus-daemon does not help. \
                 Re-execute systemd: `systemctl daemon-reexec` needs D-Bus and may hang too, \
                 `kill -TERM 1` makes systemd (PID 1) re-execute itself without D-Bus. The \
                 known case is the sd-bus cookie overflow fixed in systemd PR #11818 (v242): \
                 upgrade systemd. Waiting runc processes then finish or time out, and \
                 kubelet's PLEG recovers.",
                d.socket
            ),
        }
    }

    fn finding(
        id: FindingId,
        first_seen: Time,
        now: Time,
        evidence: Vec<Evidence>,
        detail: SystemdDetail,
        confidence: Confidence,
    ) -> Finding {
        Finding {
            cause: Cause::SystemdHang,
            status: FindingStatus::Active,
            id,
            summary: Self::summary(&detail),
            confidence,
            first_seen,
            last_seen: now,
            resolved_at: None,
            duration_s: None,
            evidence,
            timeline: Vec::new(),
            concurrent: Vec::new(),
            pleg: None,
            remedy: Self::remedy(&detail),
            detail: Detail::Systemd(detail),
        }
    }
}

#[cfg(test)]
#[path = "systemd_hang_tests.rs"]
mod tests;
