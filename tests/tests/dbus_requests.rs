//! D-Bus request tracking, probe level: the socket-tracepoint programs
//! (`dbus_sock_send`/`dbus_sock_recv`) attached by the agent, fed by a real
//! unix-socket client under a runtime's name (python3 exec'd through a
//! symlink named `containerd`, so the exec probe watches it) talking to a
//! server of the test's own on a followed path. The recording must hold the
//! messages the kernel walked (SASL lines, calls and replies by serial,
//! several messages in one read, a message in two iovecs), the drop counters
//! must be exported, and a call whose reply never comes (a signal comes
//! instead) must give a `systemd_hang` finding that its reply resolves.
//! And the fallback: `--dbus-requests syscalls` still detects a hang.
//!
//! Run: `cargo test --release -p watchdog-tests --test dbus_requests -- --test-threads=1`
use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::{UnixListener, UnixStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use watchdog_tests::{Agent, ChildGuard, agent_bin, skip_unless, skip_unless_root, systemd::*};

const PYTHON: &str = "/usr/bin/python3";

/// The client: one SASL write as sd-bus does it, then calls and reads as
/// the server (the test) drives them. Prints a line per step.
const CLIENT_PY: &str = r#"
import socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])

def pad8(b):
    return b + b"\0" * ((8 - len(b) % 8) % 8)

def member(name):
    n = name.encode()
    return pad8(struct.pack("<BBcBI", 3, 1, b"s", 0, len(n)) + n + b"\0")

def call(serial, flags=0, body=b""):
    fields = member("Ping")
    hdr = struct.pack("<cBBBIII", b"l", 1, flags, 1, len(body), serial, len(fields))
    return hdr + fields, body

def read_exact(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            sys.exit("eof")
        b += c
    return b

def step(name):
    print(name, flush=True)
    line = sys.stdin.readline().split()
    return int(line[0]) if line else 0

# sd-bus: credential byte, AUTH, NEGOTIATE_UNIX_FD and BEGIN in one write.
s.sendall(b"\0AUTH EXTERNAL 30\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n")
n = step("AUTH_SENT")
read_exact(n)
# A call in two iovecs (header and fields, then the body).
s.sendmsg(list(call(5, body=b"\1\0\0\0\2\0\0\0")))
n = step("CALL5_SENT")
read_exact(n)
# Two messages in one write: a no-reply call and a call.
a, b = call(6, flags=1)
c, d = call(7)
s.sendall(a + b + c + d)
n = step("CALL67_SENT")
read_exact(n)
# A call whose reply does not come (a signal does), then does.
s.sendall(b"".join(call(8)))
n = step("CALL8_SENT")
read_exact(n)
n = step("SIGNAL_READ")
read_exact(n)
step("REPLY8_READ")
"#;

fn header(ty: u8, flags: u8, serial: u32, fields: &[u8], body: &[u8]) -> Vec<u8> {
    let mut m = vec![b'l', ty, flags, 1];
    m.extend((body.len() as u32).to_le_bytes());
    m.extend(serial.to_le_bytes());
    m.extend((fields.len() as u32).to_le_bytes());
    m.extend(fields);
    while m.len() % 8 != 0 {
        m.push(0);
    }
    m.extend(body);
    m
}

fn reply(serial: u32, to: u32) -> Vec<u8> {
    let mut f = vec![5, 1, b'u', 0];
    f.extend(to.to_le_bytes());
    header(2, 1, serial, &f, &[])
}

fn signal(serial: u32) -> Vec<u8> {
    header(4, 1, serial, &[], &[])
}

/// One whole message (header, padded fields, body) from the stream.
fn read_message(s: &mut UnixStream) -> (u8, u32) {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).unwrap();
    let u = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]) as usize;
    let mut rest = vec![0u8; u(12).next_multiple_of(8) + u(4)];
    s.read_exact(&mut rest).unwrap();
    (h[1], u(8) as u32)
}

/// The client process and its line protocol.
struct Client {
    child: ChildGuard,
    out: BufReader<std::process::ChildStdout>,
    stdin: std::process::ChildStdin,
    dir: PathBuf,
}

impl Client {
    fn start(dir: &Path, socket: &Path) -> Self {
        let exe = dir.join("containerd");
        std::os::unix::fs::symlink(PYTHON, &exe).unwrap();
        let script = dir.join("client.py");
        std::fs::write(&script, CLIENT_PY).unwrap();
        let mut cmd = Command::new(&exe);
        cmd.arg(&script)
            .arg(socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = ChildGuard::spawn(&mut cmd, "containerd-named client").unwrap();
        let out = BufReader::new(child.take_stdout().unwrap());
        let stdin = child.child_mut().stdin.take().unwrap();
        Self {
            child,
            out,
            stdin,
            dir: dir.to_owned(),
        }
    }

    /// Waits for the client's line `want`, then tells it how many bytes to read.
    fn step(&mut self, want: &str, then_read: usize) {
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), want, "client out of step");
        writeln!(self.stdin, "{then_read}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn pid(&self) -> u32 {
        self.child.pid()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sock_tracepoints() -> bool {
    std::fs::read("/sys/kernel/btf/vmlinux")
        .is_ok_and(|b| b.windows(26).any(|w| w == b"btf_trace_sock_send_length"))
}

fn socket_calls(records: &[Value], pid: u32) -> Vec<Value> {
    records
        .iter()
        .filter(|v| v["observe"]["kind"] == "socket_call" && v["observe"]["pid"] == pid)
        .map(|v| v["observe"].clone())
        .collect()
}

fn messages_of(calls: &[Value], call: &str) -> Vec<Value> {
    calls
        .iter()
        .filter(|c| c["call"] == call)
        .flat_map(|c| c["messages"].as_array().cloned().unwrap_or_default())
        .collect()
}

#[test]
fn socket_tracepoints_follow_requests_by_serial() {
    if !skip_unless_root()
        || !skip_unless(Path::new(PYTHON).exists(), "/usr/bin/python3 is missing")
        || !skip_unless(
            sock_tracepoints(),
            "this kernel has no btf_trace_sock_send_length (Linux < 6.3)",
        )
    {
        return;
    }
    let dir = std::env::temp_dir().join(format!("wd-dbusreq-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("bus.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let agent = Agent::start_recorded(&[
        "trace",
        "--json",
        "--no-pleg",
        "--fork-probe",
        "off",
        "--poll-interval",
        "250ms",
        "--systemd-threshold",
        "1s",
        "--no-dbus-probe",
        "--systemd-socket",
        socket.to_str().unwrap(),
    ]);
    let ready = agent
        .records()
        .into_iter()
        .find(|v| v["type"] == "ready")
        .unwrap();
    assert_eq!(
        ready["probe_paths"][0]["path"], "socket_tracepoints",
        "{ready}"
    );
    let probes = ready["probes"].as_array().unwrap();
    for name in ["dbus_sock_send", "dbus_sock_recv"] {
        assert!(
            probes
                .iter()
                .any(|p| p["name"] == name && p["status"] == "attached"),
            "{name} not attached: {ready}"
        );
    }
    assert!(
        !probes
            .iter()
            .any(|p| p["name"].as_str().unwrap_or("").starts_with("dbus_sys")),
        "the syscall programs are not loaded by default: {ready}"
    );

    let mut client = Client::start(&dir, &socket);
    let (mut s, _) = listener.accept().unwrap();
    let mut auth = [0u8; 45];
    s.read_exact(&mut auth).unwrap();
    // OK, AGREE_UNIX_FD and a first message in one write (one read).
    let mut answer = b"OK 0123456789abcdef0123456789abcdef\r\nAGREE_UNIX_FD\r\n".to_vec();
    answer.extend(signal(1));
    s.write_all(&answer).unwrap();
    client.step("AUTH_SENT", answer.len());
    assert_eq!(read_message(&mut s), (1, 5));
    // A signal, then the reply to 5, in one read.
    let mut r = signal(2);
    r.extend(reply(3, 5));
    s.write_all(&r).unwrap();
    client.step("CALL5_SENT", r.len());
    assert_eq!(read_message(&mut s), (1, 6));
    assert_eq!(read_message(&mut s), (1, 7));
    let r7 = reply(4, 7);
    s.write_all(&r7).unwrap();
    client.step("CALL67_SENT", r7.len());
    assert_eq!(read_message(&mut s), (1, 8));
    let hang = Instant::now();
    // Only a signal: call 8 keeps waiting.
    let sig = signal(5);
    s.write_all(&sig).unwrap();
    client.step("CALL8_SENT", sig.len());
    let f = agent
        .wait_for(
            |v| v["type"] == "finding" && v["cause"] == "systemd_hang" && v["status"] == "active",
            Duration::from_secs(6),
        )
        .unwrap_or_else(|| panic!("no finding for call 8: {}", agent.report()))
        .0;
    eprintln!("finding after {:?}: {}", hang.elapsed(), f["summary"]);
    assert_eq!(f["waiting"][0]["pid"], client.pid(), "{f}");
    let r8 = reply(6, 8);
    s.write_all(&r8).unwrap();
    client.step("SIGNAL_READ", r8.len());
    client.step("REPLY8_READ", 0);
    let resolved = agent.wait_for(
        |v| v["type"] == "finding" && v["cause"] == "systemd_hang" && v["status"] == "resolved",
        Duration::from_secs(5),
    );
    let pid = client.pid();
    drop(client);
    let records: Vec<Value> = std::fs::read_to_string(agent.recording().unwrap())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let run = agent.stop();
    let calls = socket_calls(&records, pid);
    let dump = || {
        calls
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        resolved.is_some(),
        "the reply to 8 did not resolve it:\n{}",
        dump()
    );
    // The connection became known at its first call.
    assert!(
        calls
            .iter()
            .any(|c| c["call"] == "connect" && c["syscall"] == "first_seen"),
        "{}",
        dump()
    );
    let sent = messages_of(&calls, "send");
    let read = messages_of(&calls, "recv");
    assert!(
        sent.iter().any(|m| m["type"] == "sasl"
            && m["lines"].to_string().contains("AUTH EXTERNAL 30")
            && m["lines"].to_string().contains("BEGIN")),
        "sd-bus's auth write: {}",
        dump()
    );
    assert!(
        read.iter()
            .any(|m| m["type"] == "sasl" && m["lines"].to_string().contains("AGREE_UNIX_FD")),
        "{}",
        dump()
    );
    for serial in [5, 6, 7, 8] {
        assert!(
            sent.iter()
                .any(|m| m["type"] == "call" && m["serial"] == serial),
            "call {serial} not walked: {}",
            dump()
        );
    }
    assert!(
        sent.iter()
            .any(|m| m["serial"] == 6 && m["no_reply"] == true && m["member"] == "Ping")
    );
    for (serial, to) in [(3, 5), (4, 7), (6, 8)] {
        assert!(
            read.iter()
                .any(|m| m["type"] == "return" && m["serial"] == serial && m["reply_to"] == to),
            "reply {serial} to {to} not walked: {}",
            dump()
        );
    }
    // The signal after the auth answer, in the same read.
    assert!(
        read.iter()
            .any(|m| m["type"] == "signal" && m["serial"] == 1),
        "{}",
        dump()
    );
    assert!(
        !calls.iter().any(|c| c["desync"] == true),
        "every byte followed: {}",
        dump()
    );
    // Drop counters exist and are zero here.
    let summary = run.iter().find(|v| v["type"] == "summary").unwrap();
    let storage = &summary["drops"]["storage"];
    for k in ["dbus_socks", "dbus_reads", "sock_conns"] {
        assert_eq!(storage[k], 0, "{k}: {summary}");
    }
    assert_eq!(summary["drops"]["kernel"], 0, "{summary}");
    drop(listener);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The fallback path, asked for: the raw syscall programs still see
/// systemd never replying to runc's StartTransientUnit.
#[test]
fn syscall_fallback_still_detects_a_hang() {
    if !skip_unless_systemd_prereqs() {
        return;
    }
    let ns = PrivateNs::start().unwrap();
    let _bus = DbusDaemon::start(&ns).unwrap();
    let mut fake = FakeSystemd::start(&ns, Transport::Bus, FakeMode::NeverReply).unwrap();
    let mut args = ns.launcher_args();
    args.extend([
        agent_bin().display().to_string(),
        "trace".into(),
        "--json".into(),
        "--no-pleg".into(),
        "--fork-probe".into(),
        "off".into(),
        "--poll-interval".into(),
        "250ms".into(),
        "--systemd-threshold".into(),
        "3s".into(),
        "--dbus-requests".into(),
        "syscalls".into(),
    ]);
    let agent = Agent::start_with(Path::new(NSENTER), &args, Duration::from_secs(30));
    let ready = agent
        .records()
        .into_iter()
        .find(|v| v["type"] == "ready")
        .unwrap();
    assert_eq!(ready["probe_paths"][0]["path"], "syscalls", "{ready}");
    let mut c = RuncContainer::start(&ns, &RuncOpts::default()).unwrap();
    assert!(fake.wait_log("holding StartTransientUnit", Duration::from_secs(10)));
    let held = Instant::now();
    let (f, at) = agent
        .wait_for(
            |v| v["type"] == "finding" && v["cause"] == "systemd_hang" && v["status"] == "active",
            Duration::from_secs(8),
        )
        .unwrap_or_else(|| panic!("no finding: {}", agent.report()));
    eprintln!("finding after {:?}", at.duration_since(held));
    assert_eq!(f["stuck"], "systemd_not_replying", "{f}");
    assert_eq!(f["waiting"][0]["pid"], c.runc_pid() as u64, "{f}");
    fake.answer().unwrap();
    assert!(
        c.wait_exit(Duration::from_secs(10)).is_some(),
        "{}",
        c.output()
    );
    assert!(
        agent
            .wait_for(
                |v| v["type"] == "finding" && v["status"] == "resolved",
                Duration::from_secs(5)
            )
            .is_some(),
        "not resolved: {}",
        agent.report()
    );
}
