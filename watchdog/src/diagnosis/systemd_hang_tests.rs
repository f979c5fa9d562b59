use super::*;
use crate::diagnosis::Harness;
use crate::model::dbus::{
    CallKind, ConnQueue, Holder, ListenerQueue, Message, MessageKind, ProbeTarget, SocketQueues,
};

const T0: Time = Time(1_785_000_000_000);
const BUS: &str = "/var/run/dbus/system_bus_socket";
const PRIVATE: &str = "/run/systemd/private";

fn at(ms: u64) -> Time {
    T0.plus_millis(ms)
}

fn call(ms: u64, pid: u32, call: CallKind, ret: i64, requested: u64, socket: &str) -> Observation {
    Observation::SocketCall(SocketCall {
        at: at(ms),
        pid,
        tid: pid,
        comm: "runc".into(),
        fd: 7,
        call,
        syscall: "write".into(),
        ret,
        requested,
        socket: socket.into(),
        started: None,
        ktime_ns: None,
        started_ktime_ns: None,
        message: None,
        messages: None,
        desync: false,
        process: (call == CallKind::Connect).then(|| ProcessInfo {
            cmdline: "runc --systemd-cgroup create --bundle /run/b c1".into(),
            container: Some("c1".into()),
            action: Some("create".into()),
            pod: Some("default/web-0".into()),
            start: Some(u64::from(pid) * 10),
        }),
    })
}

fn engine() -> Harness<SystemdHang> {
    Harness::new(SystemdHang::new(&EngineConfig::default()))
}

fn feed(d: &mut Harness<SystemdHang>, obs: &[Observation]) {
    for o in obs {
        assert!(d.observe(o).is_empty());
    }
}

fn findings(r: Vec<Report>) -> Vec<Finding> {
    r.into_iter()
        .filter_map(|r| match r {
            Report::Finding(f) => Some(*f),
            _ => None,
        })
        .collect()
}

fn detail(f: &Finding) -> &SystemdDetail {
    match &f.detail {
        Detail::Systemd(d) => d,
        other => panic!("not a systemd detail: {other:?}"),
    }
}

#[test]
fn a_request_without_reply_past_the_threshold_is_a_hang_and_resolves_on_reply() {
    let mut d = engine();
    feed(
        &mut d,
        &[
            call(0, 42, CallKind::Connect, 0, 0, BUS),
            call(1, 42, CallKind::Send, 128, 128, BUS),
            call(2, 42, CallKind::Recv, 61, 4096, BUS),
            call(10, 42, CallKind::Send, 576, 576, BUS),
            call(11, 42, CallKind::Recv, -11, 4096, BUS),
        ],
    );
    assert!(
        findings(d.tick(at(4_000))).is_empty(),
        "below the threshold"
    );
    let f = findings(d.tick(at(5_010)));
    assert_eq!(f.len(), 1);
    let f = &f[0];
    assert_eq!(f.status, FindingStatus::Active);
    assert_eq!(f.id.to_string(), format!("systemd_hang:{BUS}"));
    assert_eq!(f.confidence, Confidence::Likely, "no queue or probe yet");
    let dt = detail(f);
    assert_eq!(dt.stuck, Stuck::SystemdNotReplying);
    assert_eq!(dt.socket_kind, SocketKind::SystemBus);
    assert_eq!(dt.since, at(10));
    assert_eq!(dt.waiting[0].pid, 42);
    assert_eq!(dt.waiting[0].bytes_sent, 576);
    assert_eq!(dt.containers, vec!["c1".to_owned()]);
    assert_eq!(dt.waiting[0].pod.as_deref(), Some("default/web-0"));
    assert_eq!(dt.bytes_queued, 576);
    assert!(
        f.summary.contains("runc[42] (create container c1)"),
        "{}",
        f.summary
    );
    assert!(f.remedy.text.contains("kill -TERM 1"));
    // The ladder: re-execute the systemd that runc[42] waits on, then kill
    // that runc (pid and start time: never a later process with its pid).
    assert_eq!(
        f.remedy.actions,
        vec![
            RemedyAction::ReexecSystemd {
                socket: BUS.into(),
                client: Some(ProcRef {
                    pid: 42,
                    start: 420
                }),
            },
            RemedyAction::KillProcess {
                pid: 42,
                comm: "runc".into(),
                start: 420
            },
        ]
    );
    // Reply: resolves.
    feed(&mut d, &[call(6_000, 42, CallKind::Recv, 200, 4096, BUS)]);
    let r = findings(d.tick(at(6_100)));
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].status, FindingStatus::Resolved);
    assert!(
        r[0].summary.contains("replies flow again"),
        "{}",
        r[0].summary
    );
    assert!(d.active().is_empty());
}

#[test]
fn answered_requests_and_idle_connections_give_nothing() {
    let mut d = engine();
    feed(
        &mut d,
        &[
            call(0, 42, CallKind::Connect, 0, 0, BUS),
            call(1, 42, CallKind::Send, 128, 128, BUS),
            call(3, 42, CallKind::Recv, 64, 4096, BUS),
            call(4, 42, CallKind::Recv, -11, 4096, BUS),
        ],
    );
    assert!(findings(d.tick(at(60_000))).is_empty());
    // Sends on a connection the agent never saw open are ignored.
    feed(&mut d, &[call(61_000, 43, CallKind::Send, 10, 10, BUS)]);
    assert!(findings(d.tick(at(90_000))).is_empty());
}

#[test]
fn partial_write_then_eagain_on_the_private_socket_is_systemd_not_reading() {
    let mut d = engine();
    feed(
        &mut d,
        &[
            call(0, 7, CallKind::Connect, -2, 0, BUS),
            call(1, 7, CallKind::Connect, 0, 0, PRIVATE),
            call(2, 7, CallKind::Send, 219_264, 300_600, PRIVATE),
            call(3, 7, CallKind::Send, -11, 81_336, PRIVATE),
            Observation::SocketQueues(SocketQueues {
                at: at(2_500),
                conns: vec![ConnQueue {
                    pid: 7,
                    fd: 7,
                    inode: 100,
                    unread_by_peer: Some(150_000),
                    send_queue: 200_000,
                    unread_here: 0,
                    peer_inode: Some(101),
                    peer: Some(Holder {
                        pid: 1,
                        comm: "systemd".into(),
                    }),
                    peer_not_accepted: false,
                }],
                listeners: vec![],
            }),
        ],
    );
    let f = findings(d.tick(at(5_100)));
    assert_eq!(f.len(), 1);
    let dt = detail(&f[0]);
    assert_eq!(f[0].confidence, Confidence::Certain);
    assert_eq!(dt.stuck, Stuck::SystemdNotReading);
    assert_eq!(dt.socket_kind, SocketKind::SystemdPrivate);
    assert!(dt.waiting[0].write_stalled);
    assert_eq!(dt.waiting[0].bytes_unsent, 81_336);
    assert_eq!(dt.bytes_queued, 150_000 + 81_336);
    assert_eq!(dt.server.as_ref().map(|h| h.pid), Some(1));
    assert!(
        dt.stuck_detail.contains("systemd[1] stopped reading"),
        "{}",
        dt.stuck_detail
    );
    let ev: Vec<&str> = f[0].evidence.iter().map(|e| e.what.as_str()).collect();
    assert!(
        ev.iter().any(|e| e.contains("could not connect to /var/run/dbus/system_bus_socket: ENOENT (then used /run/systemd/private)")),
        "{ev:?}"
    );
    // The process exits without a reply: resolved, and says so.
    feed(&mut d, &[call(6_000, 7, CallKind::ProcessGone, 0, 0, "")]);
    let r = findings(d.tick(at(6_100)));
    assert_eq!(r[0].status, FindingStatus::Resolved);
    assert!(
        r[0].summary.contains("no process waits"),
        "{}",
        r[0].summary
    );
}

#[test]
fn a_connection_the_bus_never_accepted_is_the_bus_not_reading() {
    let mut d = engine();
    feed(
        &mut d,
        &[
            call(0, 9, CallKind::Connect, 0, 0, BUS),
            call(1, 9, CallKind::Send, 1, 1, BUS),
            call(2, 9, CallKind::Send, 6, 6, BUS),
            Observation::SocketQueues(SocketQueues {
                at: at(3_000),
                conns: vec![ConnQueue {
                    pid: 9,
                    fd: 7,
                    inode: 100,
                    unread_by_peer: None,
                    send_queue: 1_536,
                    unread_here: 0,
                    peer_inode: Some(101),
                    peer: None,
                    peer_not_accepted: true,
                }],
                listeners: vec![ListenerQueue {
                    socket: BUS.into(),
                    inode: 5,
                    pending: 1,
                    backlog: 4096,
                    holder: Some(Holder {
                        pid: 77,
                        comm: "dbus-daemon".into(),
                    }),
                }],
            }),
        ],
    );
    let f = findings(d.tick(at(5_100)));
    let dt = detail(&f[0]);
    assert_eq!(dt.stuck, Stuck::BusNotReading);
    assert_eq!(dt.bytes_queued, 7);
    assert!(
        dt.stuck_detail.contains("does not accept connections"),
        "{}",
        dt.stuck_detail
    );
    assert!(f[0].remedy.text.contains("bus daemon"));
}

#[test]
fn probes_tell_a_silent_systemd_from_a_stuck_call() {
    let run = |outcome: ProbeOutcome| {
        let mut d = engine();
        feed(
            &mut d,
            &[
                call(0, 9, CallKind::Connect, 0, 0, BUS),
                call(1, 9, CallKind::Send, 500, 500, BUS),
                Observation::BusProbe(BusProbe {
                    at: at(3_000),
                    socket: BUS.into(),
                    target: ProbeTarget::Systemd,
                    outcome,
                }),
            ],
        );
        let f = findings(d.tick(at(5_100)));
        (f[0].confidence, detail(&f[0]).stuck_detail.clone())
    };
    let (c, s) = run(ProbeOutcome::Timeout { ms: 2000 });
    assert_eq!(c, Confidence::Certain);
    assert!(s.contains("does not answer the agent's Ping"), "{s}");
    let (_, s) = run(ProbeOutcome::Answered { ms: 1 });
    assert!(
        s.contains("answers the agent's Ping (1 ms) but not this request"),
        "{s}"
    );
}

#[test]
fn updates_are_rate_limited_and_one_finding_per_socket() {
    let mut d = engine();
    feed(
        &mut d,
        &[
            call(0, 1, CallKind::Connect, 0, 0, BUS),
            call(1, 1, CallKind::Send, 10, 10, BUS),
            call(2, 2, CallKind::Connect, 0, 0, PRIVATE),
            call(3, 2, CallKind::Send, 10, 10, PRIVATE),
        ],
    );
    let f = findings(d.tick(at(5_100)));
    assert_eq!(f.len(), 2, "one per socket");
    feed(
        &mut d,
        &[
            call(5_200, 3, CallKind::Connect, 0, 0, BUS),
            call(5_300, 3, CallKind::Send, 10, 10, BUS),
        ],
    );
    // A second waiting process changes the summary, but updates wait for
    // update_every_ms after the last report (at 5.1 s).
    assert!(findings(d.tick(at(9_000))).is_empty());
    let u: Vec<Finding> = findings(d.tick(at(10_500)))
        .into_iter()
        .filter(|f| f.id.key.ends_with(BUS))
        .collect();
    assert_eq!(u.len(), 1);
    assert_eq!(u[0].status, FindingStatus::Update);
    assert_eq!(detail(&u[0]).waiting_total, 2);
}

fn send(ms: u64, started_ms: u64, head: [u8; 4], ret: i64, requested: u64) -> Observation {
    let Observation::SocketCall(mut c) = call(ms, 42, CallKind::Send, ret, requested, BUS) else {
        unreachable!()
    };
    c.started = Some(at(started_ms));
    c.message = Some(MessageKind::of(head));
    Observation::SocketCall(c)
}

#[test]
fn signals_replies_and_no_reply_calls_are_not_requests() {
    let mut d = engine();
    feed(
        &mut d,
        &[
            call(0, 42, CallKind::Connect, 0, 0, BUS),
            send(1, 1, [0, 0, 0, 0], 1, 1),        // credentials byte
            send(2, 2, *b"BEGI", 7, 7),            // end of SASL
            send(3, 3, [b'l', 4, 0, 1], 100, 100), // signal
            send(4, 4, [b'l', 1, 1, 1], 100, 100), // call, NO_REPLY_EXPECTED
            send(5, 5, [b'l', 2, 0, 1], 100, 100), // method return
        ],
    );
    assert!(findings(d.tick(at(60_000))).is_empty());
    // A method call is.
    feed(&mut d, &[send(61_000, 61_000, [b'l', 1, 0, 1], 300, 300)]);
    assert_eq!(findings(d.tick(at(66_500))).len(), 1);
}

#[test]
fn a_reply_read_before_the_send_returned_answers_it() {
    let mut d = engine();
    feed(
        &mut d,
        &[
            call(0, 42, CallKind::Connect, 0, 0, BUS),
            // The reader thread got the reply (at 12) before the sending
            // thread's write (started at 10) returned (at 13).
            call(12, 42, CallKind::Recv, 80, 4096, BUS),
            send(13, 10, [b'l', 1, 0, 1], 300, 300),
        ],
    );
    assert!(findings(d.tick(at(30_000))).is_empty());
}

/// `call` with kernel times: exit at `ns` and, for sends, entry at `started_ns`.
fn timed(mut o: Observation, ns: u64, started_ns: Option<u64>) -> Observation {
    let Observation::SocketCall(c) = &mut o else {
        unreachable!()
    };
    c.ktime_ns = Some(ns);
    c.started_ktime_ns = started_ns;
    o
}

#[test]
fn the_previous_reply_read_in_the_same_millisecond_does_not_answer_the_next_request() {
    // As recorded when runc's StartTransientUnit went unanswered: the reply
    // to the call before was read at ...326.4 ms, the next call's write
    // started at ...326.9 ms; both are "326" in milliseconds.
    let ms = 326;
    let ns = |us: u64| 1_000_000_000 + us * 1_000;
    let mut d = engine();
    feed(
        &mut d,
        &[
            call(0, 42, CallKind::Connect, 0, 0, BUS),
            timed(
                send(ms, ms, [b'l', 1, 0, 1], 128, 128),
                ns(326_100),
                Some(ns(326_050)),
            ),
            timed(
                call(ms, 42, CallKind::Recv, 144, 4096, BUS),
                ns(326_400),
                None,
            ),
            timed(
                call(ms, 42, CallKind::Recv, -11, 16, BUS),
                ns(326_500),
                None,
            ),
            timed(
                send(ms + 1, ms, [b'l', 1, 0, 1], 576, 576),
                ns(327_100),
                Some(ns(326_900)),
            ),
        ],
    );
    let f = findings(d.tick(at(ms + 5_010)));
    assert_eq!(f.len(), 1, "the second call waits");
    assert_eq!(detail(&f[0]).waiting[0].bytes_sent, 576);
    // Whereas a reply read after the write started (another thread) answers it.
    let mut d = engine();
    feed(
        &mut d,
        &[
            call(0, 42, CallKind::Connect, 0, 0, BUS),
            timed(
                call(ms, 42, CallKind::Recv, 80, 4096, BUS),
                ns(326_950),
                None,
            ),
            timed(
                send(ms + 1, ms, [b'l', 1, 0, 1], 576, 576),
                ns(327_100),
                Some(ns(326_900)),
            ),
        ],
    );
    assert!(findings(d.tick(at(ms + 5_010))).is_empty());
}

#[test]
fn the_rest_of_a_partial_call_keeps_waiting_and_auth_lines_wait_too() {
    let mut d = engine();
    feed(
        &mut d,
        &[
            call(0, 42, CallKind::Connect, 0, 0, BUS),
            send(1, 1, *b"AUTH", 6, 6),
            call(2, 42, CallKind::Recv, 20, 4096, BUS),
            send(3, 3, [b'l', 1, 0, 1], 1000, 4000),
            send(4, 4, *b"zzzz", -11, 3000), // the rest: EAGAIN
        ],
    );
    let f = findings(d.tick(at(5_100)));
    assert_eq!(f.len(), 1);
    assert!(detail(&f[0]).waiting[0].write_stalled);
    assert_eq!(MessageKind::of(*b"AUTH"), MessageKind::Auth);
    assert_eq!(MessageKind::of(*b"NEGO"), MessageKind::Auth);
    assert_eq!(MessageKind::of(*b"zzzz"), MessageKind::Other);
    assert_eq!(MessageKind::of([b'B', 1, 0, 1]), MessageKind::MethodCall);
}

#[test]
fn stale_probes_do_not_describe_a_new_hang() {
    let mut d = engine();
    feed(
        &mut d,
        &[
            Observation::BusProbe(BusProbe {
                at: at(0),
                socket: BUS.into(),
                target: ProbeTarget::Bus,
                outcome: ProbeOutcome::Timeout { ms: 2000 },
            }),
            call(100_000, 9, CallKind::Connect, 0, 0, BUS),
            call(100_001, 9, CallKind::Send, 500, 500, BUS),
        ],
    );
    let f = findings(d.tick(at(105_100)));
    let dt = detail(&f[0]);
    assert!(dt.probes.is_empty());
    assert_eq!(dt.stuck, Stuck::SystemdNotReplying);
    assert_eq!(f[0].confidence, Confidence::Likely);
}

/// A call of the socket-tracepoint probe: with the messages it starts.
fn msgs(ms: u64, call_kind: CallKind, ret: i64, messages: Vec<Message>) -> Observation {
    let Observation::SocketCall(mut c) = call(ms, 42, call_kind, ret, ret.max(0) as u64, PRIVATE)
    else {
        unreachable!()
    };
    c.messages = Some(messages);
    Observation::SocketCall(c)
}

fn method_call(serial: u32) -> Message {
    Message::Call {
        serial,
        no_reply: false,
        member: Some("StartTransientUnit".into()),
    }
}

fn reply(serial: u32, reply_to: u32) -> Message {
    Message::Return {
        serial,
        reply_to: Some(reply_to),
    }
}

fn sasl(text: &[u8]) -> Message {
    Message::parse_sasl(text)
}

#[test]
fn a_call_waits_for_the_reply_naming_its_serial() {
    let mut d = engine();
    feed(
        &mut d,
        &[
            call(0, 42, CallKind::Connect, 0, 0, PRIVATE),
            msgs(10, CallKind::Send, 200, vec![method_call(7)]),
            // A signal and a reply to another call, read right after: the
            // call still waits (busctl's case: today's "any bytes" ended it).
            msgs(
                20,
                CallKind::Recv,
                300,
                vec![Message::Signal { serial: 90 }, reply(91, 3)],
            ),
        ],
    );
    let f = findings(d.tick(at(5_100)));
    assert_eq!(f.len(), 1, "the call to serial 7 has no reply");
    assert_eq!(detail(&f[0]).since, at(10));
    assert_eq!(detail(&f[0]).waiting[0].bytes_sent, 200);
    // The reply naming serial 7 ends it.
    feed(
        &mut d,
        &[msgs(6_000, CallKind::Recv, 40, vec![reply(92, 7)])],
    );
    let r = findings(d.tick(at(6_100)));
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].status, FindingStatus::Resolved);
}

#[test]
fn no_reply_calls_signals_and_early_replies_do_not_wait() {
    let mut d = engine();
    feed(
        &mut d,
        &[
            call(0, 42, CallKind::Connect, 0, 0, PRIVATE),
            msgs(
                10,
                CallKind::Send,
                64,
                vec![
                    Message::Call {
                        serial: 4,
                        no_reply: true,
                        member: None,
                    },
                    Message::Signal { serial: 5 },
                ],
            ),
            // Go reads the reply on another thread before the send's event.
            msgs(20, CallKind::Recv, 40, vec![reply(50, 6)]),
            msgs(21, CallKind::Send, 64, vec![method_call(6)]),
        ],
    );
    assert!(findings(d.tick(at(60_000))).is_empty());
}

#[test]
fn sd_bus_auth_in_one_write_waits_for_ok() {
    let mut d = engine();
    feed(
        &mut d,
        &[
            call(0, 42, CallKind::Connect, 0, 0, PRIVATE),
            // sd-bus: credential byte, AUTH, NEGOTIATE_UNIX_FD and BEGIN in
            // one 48-byte write; the last line (BEGIN) expects nothing, the
            // write as a whole does.
            msgs(
                10,
                CallKind::Send,
                48,
                vec![sasl(
                    b"\0AUTH EXTERNAL 30\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n",
                )],
            ),
        ],
    );
    let f = findings(d.tick(at(5_100)));
    assert_eq!(f.len(), 1, "the authentication waits for OK");
    // The server's OK (with AGREE_UNIX_FD and a first message in the
    // same read) ends it.
    feed(
        &mut d,
        &[msgs(
            6_000,
            CallKind::Recv,
            100,
            vec![
                sasl(b"OK 1234abcd\r\nAGREE_UNIX_FD\r\n"),
                Message::Signal { serial: 1 },
            ],
        )],
    );
    let r = findings(d.tick(at(6_100)));
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].status, FindingStatus::Resolved);
    // The credential byte and BEGIN alone wait for nothing.
    let mut d = engine();
    feed(
        &mut d,
        &[
            call(0, 42, CallKind::Connect, 0, 0, PRIVATE),
            msgs(10, CallKind::Send, 1, vec![sasl(b"\0")]),
            msgs(20, CallKind::Send, 7, vec![sasl(b"BEGIN\r\n")]),
        ],
    );
    assert!(findings(d.tick(at(60_000))).is_empty());
}

#[test]
fn a_read_the_probe_could_not_follow_answers_everything() {
    let mut d = engine();
    let Observation::SocketCall(mut lost) = msgs(20, CallKind::Recv, 4096, vec![]) else {
        unreachable!()
    };
    lost.desync = true;
    feed(
        &mut d,
        &[
            call(0, 42, CallKind::Connect, 0, 0, PRIVATE),
            msgs(
                10,
                CallKind::Send,
                200,
                vec![method_call(7), method_call(8)],
            ),
            Observation::SocketCall(lost),
        ],
    );
    assert!(findings(d.tick(at(60_000))).is_empty(), "no false positive");
    // A reply whose REPLY_SERIAL was not copied, too.
    let mut d = engine();
    feed(
        &mut d,
        &[
            call(0, 42, CallKind::Connect, 0, 0, PRIVATE),
            msgs(10, CallKind::Send, 200, vec![method_call(7)]),
            msgs(
                20,
                CallKind::Recv,
                500,
                vec![Message::Return {
                    serial: 9,
                    reply_to: None,
                }],
            ),
        ],
    );
    assert!(findings(d.tick(at(60_000))).is_empty());
}

#[test]
fn a_partial_write_then_eagain_with_messages_is_systemd_not_reading() {
    let mut d = engine();
    let Observation::SocketCall(mut partial) =
        msgs(2, CallKind::Send, 219_264, vec![method_call(3)])
    else {
        unreachable!()
    };
    partial.requested = 300_600;
    let Observation::SocketCall(mut eagain) = msgs(3, CallKind::Send, -11, vec![]) else {
        unreachable!()
    };
    eagain.requested = 81_336;
    feed(
        &mut d,
        &[
            call(0, 42, CallKind::Connect, 0, 0, PRIVATE),
            Observation::SocketCall(partial),
            Observation::SocketCall(eagain),
        ],
    );
    let f = findings(d.tick(at(5_100)));
    assert_eq!(f.len(), 1);
    let dt = detail(&f[0]);
    assert_eq!(dt.stuck, Stuck::SystemdNotReading);
    assert!(dt.waiting[0].write_stalled);
    assert_eq!(dt.waiting[0].bytes_sent, 219_264);
    assert_eq!(dt.waiting[0].bytes_unsent, 81_336);
}

#[test]
fn unanswered_probes_alone_are_a_hang_while_they_go_on() {
    let probe = |ms: u64, outcome: ProbeOutcome| {
        Observation::BusProbe(BusProbe {
            at: at(ms),
            socket: PRIVATE.into(),
            target: ProbeTarget::Systemd,
            outcome,
        })
    };
    let timeout = || ProbeOutcome::Timeout { ms: 2_000 };
    let mut d = engine();
    // No request is followed; the probe started at 0 gets no answer.
    feed(&mut d, &[probe(2_000, timeout())]);
    assert!(
        findings(d.tick(at(4_000))).is_empty(),
        "below the threshold"
    );
    feed(&mut d, &[probe(7_000, timeout())]);
    let f = findings(d.tick(at(7_100)));
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].status, FindingStatus::Active);
    assert!(
        f[0].summary.starts_with(UNANSWERED_PREFIX),
        "{}",
        f[0].summary
    );
    assert!(
        f[0].summary.contains("systemd is not answering"),
        "{}",
        f[0].summary
    );
    let det = detail(&f[0]);
    assert!(det.waiting.is_empty());
    assert!(
        det.stuck_detail
            .contains("systemd does not answer the agent's Ping"),
        "{}",
        det.stuck_detail
    );
    // An answer ends it.
    feed(&mut d, &[probe(12_000, ProbeOutcome::Answered { ms: 1 })]);
    let r = findings(d.tick(at(12_100)));
    assert_eq!(r[0].status, FindingStatus::Resolved);
    assert!(
        r[0].summary.contains("answers the agent's probes again"),
        "{}",
        r[0].summary
    );
    // A refused connection (no systemd here) is no evidence.
    let mut d = engine();
    let refused = || ProbeOutcome::Failed {
        error: "No such file or directory".into(),
    };
    feed(&mut d, &[probe(2_000, refused()), probe(7_000, refused())]);
    assert!(findings(d.tick(at(7_100))).is_empty());
}

#[test]
fn a_stale_probe_streak_is_no_hang() {
    // Probes run while a request waits; when it is answered they stop, and
    // their last timeout must not become a finding later.
    let mut d = engine();
    feed(
        &mut d,
        &[Observation::BusProbe(BusProbe {
            at: at(2_000),
            socket: BUS.into(),
            target: ProbeTarget::Bus,
            outcome: ProbeOutcome::Timeout { ms: 2_000 },
        })],
    );
    assert!(findings(d.tick(at(30_000))).is_empty());
}

#[test]
fn a_reply_read_ends_a_probe_streak() {
    // The bus was stopped while a request waited (its probes timed out);
    // it reads again and the reply comes: no probe-only finding follows.
    let mut d = engine();
    feed(
        &mut d,
        &[
            call(0, 9, CallKind::Connect, 0, 0, BUS),
            call(1, 9, CallKind::Send, 500, 500, BUS),
            Observation::BusProbe(BusProbe {
                at: at(4_000),
                socket: BUS.into(),
                target: ProbeTarget::Bus,
                outcome: ProbeOutcome::Timeout { ms: 2_000 },
            }),
        ],
    );
    assert_eq!(findings(d.tick(at(5_100))).len(), 1);
    feed(&mut d, &[call(6_000, 9, CallKind::Recv, 40, 4096, BUS)]);
    let r = findings(d.tick(at(8_100)));
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].status, FindingStatus::Resolved);
    assert!(findings(d.tick(at(9_100))).is_empty());
}
