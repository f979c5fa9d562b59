//! Overhead of the D-Bus/systemd socket tracking (run as root).
//!
//! By default (Linux 6.3+) the tracking rides on the `sock_send_length` and
//! `sock_recv_length` tracepoints: a send or receive of an unwatched process
//! returns after one array lookup, a watched process's socket is checked once
//! against the followed paths (the answer cached per socket), and only calls
//! on a followed connection emit a ring-buffer event. The fallback for older
//! kernels (`--dbus-requests syscalls`) attaches `raw_tp/sys_enter` and
//! `sys_exit` programs: every syscall of every task pays the tracing slow path.
//!
//! Workloads, each in a fresh child process (a copy of this binary with the
//! hidden `--run-workload KIND N IO [PATH]`), timed inside the child, N round
//! trips pinned to CPU 0 (every round trip is two context switches or more;
//! unpinned, the time depends on where the scheduler puts them):
//! - `pair`: 64-byte messages to a forked echo process over a unix stream
//!   socketpair;
//! - `conn`: the same over a connection to a unix listener at a temp path;
//! - `dbus`: real D-Bus: a dbus-daemon ([`BusDaemon`], started by the bench
//!   itself so that it is unwatched, as a real bus or systemd is, and pinned
//!   to CPU 0) on a followed path, and back-to-back
//!   `org.freedesktop.DBus.Peer.Ping` calls of its driver, each sent with
//!   one `sendmsg`, its reply read godbus-like (reads of up to 4 KiB): every
//!   message of the client is parsed by the tracking and every call is a
//!   followed request (the realistic worst case; the echo of `conn` answers
//!   faster than any D-Bus server, and its 64-byte messages are not D-Bus,
//!   so each of its calls takes the desync path).
//!
//! `pair` and `conn` run as `sockbench` (unwatched) and as `runc` (a symlink
//! to the copy: the kernel names the task after the exec'd path, so it is
//! watched and its echo child too), on an untracked path; then `conn` and
//! `dbus` run as `runc` on paths the agent follows (`--systemd-socket`):
//! every send and receive of the client is an event. I/O is
//! sendmsg/recvmsg or read/write (`--io rw`).
//!
//! Conditions, alternated in rounds with the order rotated each round:
//! - `baseline`: no agent;
//! - `floor`: `watchdog trace --json --no-pleg --fork-probe off
//!   --no-dbus-probe --no-systemd` (the storage probes only);
//! - `empty`: `watchdog bench-floor --sock` (empty programs on the two socket
//!   tracepoints and nothing else: the kernel's cost of dispatching to any
//!   program there, the floor of `tracking`'s own work);
//! - `tracking`: the same without `--no-systemd`, with the default socket
//!   paths plus the bench's two followed paths (the default path: the socket
//!   tracepoints);
//! - `syscalls`: `tracking` with `--dbus-requests syscalls` (the raw-syscall
//!   fallback for kernels without the socket tracepoints).
//!
//! Prints a table, then one final line of JSON with every number.
//! Everything started here is an RAII guard: cleaned up on panic, and on
//! SIGINT/SIGTERM (checked between runs, then unwound).

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use watchdog_tests::{bench::*, *};

/// The agent's default `--systemd-socket` paths (kept in the tracking
/// condition, so that only the bench's path is added).
const DEFAULT_SOCKETS: [&str; 3] = [
    "/run/systemd/private",
    "/run/dbus/system_bus_socket",
    "/var/run/dbus/system_bus_socket",
];
const MSG_LEN: usize = 64;
const UNWATCHED_NAME: &str = "sockbench";
const WATCHED_NAME: &str = "runc";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Condition {
    Baseline,
    Floor,
    /// Empty programs on the two socket tracepoints, nothing else.
    Empty,
    Tracking,
    Syscalls,
}

impl Condition {
    const ALL: [Condition; 5] = [
        Condition::Baseline,
        Condition::Floor,
        Condition::Empty,
        Condition::Tracking,
        Condition::Syscalls,
    ];

    fn name(self) -> &'static str {
        match self {
            Condition::Baseline => "baseline",
            Condition::Floor => "floor",
            Condition::Empty => "empty",
            Condition::Tracking => "tracking",
            Condition::Syscalls => "syscalls",
        }
    }

    fn args(self, tracked: &[PathBuf]) -> Vec<String> {
        let mut a: Vec<String> = [
            "trace",
            "--json",
            "--no-pleg",
            "--fork-probe",
            "off",
            "--no-dbus-probe",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        match self {
            Condition::Baseline => return Vec::new(),
            Condition::Empty => return vec!["bench-floor".into(), "--sock".into()],
            Condition::Floor => a.push("--no-systemd".into()),
            Condition::Tracking | Condition::Syscalls => {
                if self == Condition::Syscalls {
                    a.push("--dbus-requests".into());
                    a.push("syscalls".into());
                }
                let mut paths: Vec<String> =
                    DEFAULT_SOCKETS.iter().map(|s| s.to_string()).collect();
                paths.extend(tracked.iter().map(|p| p.display().to_string()));
                a.push("--systemd-socket".into());
                a.push(paths.join(","));
            }
        }
        a
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Io {
    /// sendmsg/recvmsg with one iovec.
    Msg,
    /// write/read.
    Rw,
}

impl Io {
    fn name(self) -> &'static str {
        match self {
            Io::Msg => "msg",
            Io::Rw => "rw",
        }
    }
}

/// The workloads whose every call is an event in the tracking conditions.
fn tracked_workloads() -> u64 {
    WORKLOADS.iter().filter(|w| w.tracked_path).count() as u64
}

/// One workload as run in every condition.
struct Workload {
    label: &'static str,
    /// `pair`, `conn` or `dbus`.
    kind: &'static str,
    watched: bool,
    /// Connects to the path the tracking condition follows.
    tracked_path: bool,
}

/// The tracked one last: an agent busy with its events must not slow the
/// others down.
const WORKLOADS: [Workload; 6] = [
    Workload {
        label: "sockbench pair",
        kind: "pair",
        watched: false,
        tracked_path: false,
    },
    Workload {
        label: "sockbench conn",
        kind: "conn",
        watched: false,
        tracked_path: false,
    },
    Workload {
        label: "runc pair",
        kind: "pair",
        watched: true,
        tracked_path: false,
    },
    Workload {
        label: "runc conn",
        kind: "conn",
        watched: true,
        tracked_path: false,
    },
    Workload {
        label: "runc conn tracked",
        kind: "conn",
        watched: true,
        tracked_path: true,
    },
    Workload {
        label: "runc dbus tracked",
        kind: "dbus",
        watched: true,
        tracked_path: true,
    },
];

struct Opts {
    rounds: usize,
    round_trips: u64,
    io: Io,
    bin: PathBuf,
}

const USAGE: &str = "\
usage: dbus-bench [--rounds N] [--round-trips N] [--io msg|rw] [--quick] [--bin PATH]
  --rounds N        rounds of baseline/floor/tracking, order rotated (default 5)
  --round-trips N   64-byte round trips per run (default 150000)
  --io msg|rw       sendmsg/recvmsg (default, as D-Bus clients do) or write/read
  --quick           1 round, 20000 round trips (smoke run)
  --bin PATH        agent binary (default: $WATCHDOG_BIN, else target/release/watchdog)";

fn parse_args() -> Opts {
    let mut o = Opts {
        rounds: 5,
        round_trips: 150_000,
        io: Io::Msg,
        bin: PathBuf::new(),
    };
    let mut bin = None;
    let mut args = BenchArgs::new("dbus-bench", USAGE);
    while let Some(a) = args.next_flag() {
        match a.as_str() {
            "--rounds" => o.rounds = args.number("--rounds").max(1) as usize,
            "--round-trips" => o.round_trips = args.number("--round-trips").max(1),
            "--io" => {
                o.io = match args.value("--io", "msg or rw").as_str() {
                    "msg" => Io::Msg,
                    "rw" => Io::Rw,
                    _ => args.exit("--io needs msg or rw"),
                }
            }
            "--quick" => {
                o.rounds = 1;
                o.round_trips = 20_000;
            }
            "--bin" => bin = Some(PathBuf::from(args.value("--bin", "a path"))),
            "-h" | "--help" => args.help(),
            other => args.exit(&format!("unknown argument {other:?}")),
        }
    }
    o.bin = match bin {
        Some(b) => b,
        None => agent_bin(),
    };
    o
}

fn usage_exit(msg: &str) -> ! {
    BenchArgs::new("dbus-bench", USAGE).exit(msg)
}

// ---------------------------------------------------------------------------
// Workloads (in the child)
// ---------------------------------------------------------------------------

/// The hidden `--run-workload KIND N IO [PATH]` mode: run the loop, print its
/// ns and the task's comm (the kernel's name for it, which decides whether
/// it is watched).
fn run_workload_mode(args: &[String]) -> ! {
    let kind = args.first().map(String::as_str).unwrap_or("");
    let n: u64 = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    let io = match args.get(2).map(String::as_str) {
        Some("rw") => Io::Rw,
        _ => Io::Msg,
    };
    pin_to_cpu0();
    let d = match kind {
        "pair" => pair(n, io),
        "conn" => conn(
            n,
            io,
            Path::new(
                args.get(3)
                    .unwrap_or_else(|| usage_exit("conn needs a path")),
            ),
        ),
        "dbus" => dbus(
            n,
            io,
            Path::new(
                args.get(3)
                    .unwrap_or_else(|| usage_exit("dbus needs a path")),
            ),
        ),
        other => usage_exit(&format!("unknown workload {other:?}")),
    };
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
    println!("{} {}", d.as_nanos(), comm.trim());
    std::process::exit(0);
}

fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t with one bit set; the fork()ed echo process
    // inherits the mask.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Sends all of `buf` on `fd`.
fn send_all(fd: i32, buf: &[u8], io: Io) -> bool {
    let mut off = 0;
    while off < buf.len() {
        let rest = &buf[off..];
        // SAFETY: a valid buffer and fd of our own; the msghdr points at it.
        let r = unsafe {
            match io {
                Io::Rw => libc::write(fd, rest.as_ptr().cast(), rest.len()),
                Io::Msg => {
                    let mut iov = libc::iovec {
                        iov_base: rest.as_ptr() as *mut libc::c_void,
                        iov_len: rest.len(),
                    };
                    let mut msg: libc::msghdr = std::mem::zeroed();
                    msg.msg_iov = &mut iov;
                    msg.msg_iovlen = 1;
                    libc::sendmsg(fd, &msg, 0)
                }
            }
        };
        if r <= 0 {
            return false;
        }
        off += r as usize;
    }
    true
}

/// Fills `buf` from `fd`; false on EOF or error.
fn recv_all(fd: i32, buf: &mut [u8], io: Io) -> bool {
    let mut off = 0;
    while off < buf.len() {
        match recv_some(fd, &mut buf[off..], io) {
            0 => return false,
            n => off += n,
        }
    }
    true
}

/// Forks the echo process: it runs `serve` (given the fd it should use) and
/// `_exit`s. Returns its pid.
fn fork_echo(serve: impl FnOnce() -> i32) -> i32 {
    // SAFETY: we are single-threaded (the workload child), so the forked copy
    // may run ordinary code before it `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let fd = serve();
        // SAFETY: fds of this process; _exit skips the parent's atexit work.
        unsafe {
            libc::close(fd);
            libc::_exit(0)
        }
    }
    pid
}

fn echo(fd: i32, n: u64, io: Io) {
    let mut buf = [0u8; MSG_LEN];
    for _ in 0..n {
        if !recv_all(fd, &mut buf, io) || !send_all(fd, &buf, io) {
            break;
        }
    }
}

/// The timed client side: N round trips.
fn client(fd: i32, n: u64, io: Io) -> Duration {
    let mut buf = [7u8; MSG_LEN];
    let t = Instant::now();
    for i in 0..n {
        assert!(send_all(fd, &buf, io), "send #{i} failed");
        assert!(recv_all(fd, &mut buf, io), "receive #{i} failed");
    }
    t.elapsed()
}

fn reap(pid: i32) {
    let mut status = 0;
    // SAFETY: our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
}

fn pair(n: u64, io: Io) -> Duration {
    let mut sv = [0i32; 2];
    // SAFETY: a valid array of two fds.
    let r = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, sv.as_mut_ptr()) };
    assert_eq!(r, 0, "socketpair: {}", std::io::Error::last_os_error());
    let pid = fork_echo(|| {
        // SAFETY: our fd.
        unsafe { libc::close(sv[0]) };
        echo(sv[1], n, io);
        sv[1]
    });
    // SAFETY: our fd.
    unsafe { libc::close(sv[1]) };
    let d = client(sv[0], n, io);
    // SAFETY: our fd.
    unsafe { libc::close(sv[0]) };
    reap(pid);
    d
}

fn sockaddr_un(path: &Path) -> (libc::sockaddr_un, libc::socklen_t) {
    // SAFETY: sockaddr_un is plain data.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let b = path.as_os_str().as_encoded_bytes();
    assert!(b.len() < a.sun_path.len(), "socket path too long");
    for (d, s) in a.sun_path.iter_mut().zip(b) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + b.len() + 1;
    (a, len as libc::socklen_t)
}

fn unix_socket() -> i32 {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    fd
}

fn conn(n: u64, io: Io, path: &Path) -> Duration {
    let (addr, len) = sockaddr_un(path);
    let cpath = CString::new(path.as_os_str().as_encoded_bytes()).expect("path without NUL");
    let l = unix_socket();
    // SAFETY: our fd, a valid sockaddr_un of `len` bytes, a valid C string.
    unsafe {
        libc::unlink(cpath.as_ptr());
        assert_eq!(
            libc::bind(l, (&raw const addr).cast(), len),
            0,
            "bind {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        assert_eq!(libc::listen(l, 4), 0);
    }
    let pid = fork_echo(|| {
        // SAFETY: the listening fd we inherited.
        let a = unsafe { libc::accept4(l, std::ptr::null_mut(), std::ptr::null_mut(), 0) };
        assert!(a >= 0, "accept: {}", std::io::Error::last_os_error());
        echo(a, n, io);
        a
    });
    let c = unix_socket();
    // SAFETY: our fds, a valid sockaddr_un of `len` bytes, a valid C string.
    unsafe {
        libc::close(l);
        assert_eq!(
            libc::connect(c, (&raw const addr).cast(), len),
            0,
            "connect {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        libc::unlink(cpath.as_ptr());
    }
    let d = client(c, n, io);
    // SAFETY: our fd.
    unsafe { libc::close(c) };
    reap(pid);
    d
}

/// A D-Bus method call (no body) as a little-endian message: the fixed
/// header with `serial`, then the PATH, INTERFACE, MEMBER and DESTINATION
/// fields.
fn dbus_call(serial: u32, path: &str, interface: &str, member: &str, dest: &str) -> Vec<u8> {
    let mut m = vec![b'l', 1, 0, 1];
    m.extend_from_slice(&0u32.to_le_bytes());
    m.extend_from_slice(&serial.to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes()); // the fields' length, below
    for (code, sig, value) in [
        (1u8, b'o', path),
        (2, b's', interface),
        (3, b's', member),
        (6, b's', dest),
    ] {
        while m.len() % 8 != 0 {
            m.push(0);
        }
        m.extend_from_slice(&[code, 1, sig, 0]);
        m.extend_from_slice(&(value.len() as u32).to_le_bytes());
        m.extend_from_slice(value.as_bytes());
        m.push(0);
    }
    let fields = (m.len() - 16) as u32;
    m[12..16].copy_from_slice(&fields.to_le_bytes());
    while m.len() % 8 != 0 {
        m.push(0);
    }
    m
}

/// Reads until a METHOD_RETURN or ERROR is in `buf` (godbus-like: reads of
/// up to 4 KiB, whatever the socket has; signals in between are skipped).
/// Returns whether it was a METHOD_RETURN.
fn dbus_reply(fd: i32, buf: &mut Vec<u8>, io: Io) -> bool {
    let mut chunk = [0u8; 4096];
    loop {
        while buf.len() >= 16 {
            let u = |i: usize| u32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
            assert_eq!(buf[0], b'l', "the bus answers little-endian");
            let len = 16 + (u(12) as usize).next_multiple_of(8) + u(4) as usize;
            if buf.len() < len {
                break;
            }
            let kind = buf[1];
            buf.drain(..len);
            if kind == 2 || kind == 3 {
                return kind == 2;
            }
        }
        let n = recv_some(fd, &mut chunk, io);
        assert!(n > 0, "the bus closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One read of whatever `fd` has (at most `buf.len()` bytes); 0 on EOF or
/// error.
fn recv_some(fd: i32, buf: &mut [u8], io: Io) -> usize {
    // SAFETY: a valid buffer and fd of our own; the msghdr points at it.
    let r = unsafe {
        match io {
            Io::Rw => libc::read(fd, buf.as_mut_ptr().cast(), buf.len()),
            Io::Msg => {
                let mut iov = libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: buf.len(),
                };
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = &mut iov;
                msg.msg_iovlen = 1;
                libc::recvmsg(fd, &mut msg, 0)
            }
        }
    };
    r.max(0) as usize
}

/// The `dbus` workload (in the child): N `Peer.Ping` calls of the bus
/// driver of the [`BusDaemon`] listening at `path`, each waiting for its
/// reply: a real D-Bus round trip on a followed connection, every message
/// parsed by the tracking.
fn dbus(n: u64, io: Io, path: &Path) -> Duration {
    let (addr, len) = sockaddr_un(path);
    let c = unix_socket();
    // SAFETY: our fd, a valid sockaddr_un of `len` bytes.
    let r = unsafe { libc::connect(c, (&raw const addr).cast(), len) };
    assert_eq!(
        r,
        0,
        "connect {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    // SASL as our uid, then Hello.
    // SAFETY: plain syscall.
    let uid = unsafe { libc::getuid() };
    let hex: String = uid
        .to_string()
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(send_all(
        c,
        format!("\0AUTH EXTERNAL {hex}\r\n").as_bytes(),
        io
    ));
    let mut chunk = [0u8; 512];
    let got = recv_some(c, &mut chunk, io);
    assert!(
        chunk[..got].starts_with(b"OK "),
        "the bus said {:?}",
        String::from_utf8_lossy(&chunk[..got])
    );
    assert!(send_all(c, b"BEGIN\r\n", io));
    let bus = "org.freedesktop.DBus";
    let mut buf = Vec::new();
    assert!(send_all(
        c,
        &dbus_call(1, "/org/freedesktop/DBus", bus, "Hello", bus),
        io
    ));
    assert!(dbus_reply(c, &mut buf, io), "Hello failed");
    let mut call = dbus_call(
        2,
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus.Peer",
        "Ping",
        bus,
    );
    let t = Instant::now();
    for i in 0..n {
        let serial = (i + 2) as u32;
        call[8..12].copy_from_slice(&serial.to_le_bytes());
        assert!(send_all(c, &call, io), "send #{i} failed");
        assert!(dbus_reply(c, &mut buf, io), "Ping #{i} got an error");
    }
    let d = t.elapsed();
    // SAFETY: our fd.
    unsafe { libc::close(c) };
    d
}

/// The `dbus` workload's bus: a dbus-daemon started by the bench itself
/// (so unwatched, as a real bus or systemd is: a child of the `runc`-named
/// workload would be watched), pinned to CPU 0 like the echo processes,
/// listening at a followed path. Stopped and reaped on drop (also when a
/// run fails); it dies with the bench (PR_SET_PDEATHSIG).
struct BusDaemon {
    child: std::process::Child,
    conf: PathBuf,
}

impl BusDaemon {
    fn start(dir: &Path, path: &Path) -> Self {
        let conf = dir.join("dbus.conf");
        let _ = std::fs::remove_file(path);
        std::fs::write(
            &conf,
            format!(
                "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\"
 \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">
<busconfig><type>custom</type><listen>unix:path={}</listen><auth>EXTERNAL</auth>
<policy context=\"default\"><allow user=\"*\"/><allow send_destination=\"*\" eavesdrop=\"true\"/><allow receive_sender=\"*\"/><allow own=\"*\"/></policy></busconfig>\n",
                path.display()
            ),
        )
        .expect("write the bus config");
        let mut cmd = std::process::Command::new("dbus-daemon");
        cmd.arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", "--print-address"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            // (It says it may not raise its fd limit: harmless here.)
            .stderr(std::process::Stdio::null());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(0, &mut set);
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("start dbus-daemon");
        let stdout = child.stdout.take().expect("piped");
        let guard = Self { child, conf };
        // The address line: it listens.
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        assert!(line.contains("unix:"), "dbus-daemon printed {line:?}");
        guard
    }
}

impl Drop for BusDaemon {
    fn drop(&mut self) {
        // SAFETY: the daemon we started, still unreaped (so its pid is ours).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.conf);
    }
}

// ---------------------------------------------------------------------------
// Running them (in the bench)
// ---------------------------------------------------------------------------

/// The bench's temp directory: the workload binary under both names and the
/// listeners' paths. Removed on drop.
struct BenchDir {
    dir: PathBuf,
}

impl BenchDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("wd-dbench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the bench's temp dir");
        let d = Self { dir };
        // A copy, so that a concurrent rebuild of target/release cannot swap
        // the workload binary in the middle of the runs.
        let me = std::env::current_exe().expect("own executable");
        std::fs::copy(&me, d.exe(false)).expect("copy the workload binary");
        std::os::unix::fs::symlink(UNWATCHED_NAME, d.exe(true)).expect("symlink runc");
        d
    }

    /// What to exec: the kernel names the task after the path's last
    /// component (a symlink's own name).
    fn exe(&self, watched: bool) -> PathBuf {
        self.dir.join(if watched {
            WATCHED_NAME
        } else {
            UNWATCHED_NAME
        })
    }

    /// The path the tracking condition follows.
    fn tracked(&self) -> PathBuf {
        self.dir.join("bus.sock")
    }

    fn untracked(&self) -> PathBuf {
        self.dir.join("other.sock")
    }

    /// The `dbus` workload's bus (followed by the tracking condition).
    fn bus(&self) -> PathBuf {
        self.dir.join("dbus.sock")
    }
}

impl Drop for BenchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs one workload in a fresh child and returns the time its loop took.
fn workload_in_child(d: &BenchDir, w: &Workload, n: u64, io: Io) -> Duration {
    let mut cmd = std::process::Command::new(d.exe(w.watched));
    cmd.args(["--run-workload", w.kind, &n.to_string(), io.name()]);
    if w.kind == "conn" {
        cmd.arg(if w.tracked_path {
            d.tracked()
        } else {
            d.untracked()
        });
    } else if w.kind == "dbus" {
        cmd.arg(d.bus());
    }
    let _bus = (w.kind == "dbus").then(|| BusDaemon::start(&d.dir, &d.bus()));
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped());
    let mut child = ChildGuard::spawn(&mut cmd, w.label).unwrap_or_else(|e| panic!("{e}"));
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.take_stdout().expect("piped"), &mut out)
        .expect("read workload output");
    let status = child.wait_timeout(Duration::from_secs(120));
    assert!(
        status.is_some_and(|s| s.success()),
        "{} workload failed: {status:?} {out:?}",
        w.label
    );
    let mut f = out.split_whitespace();
    let ns: u64 = f
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{} workload printed {out:?}", w.label));
    let comm = f.next().unwrap_or("");
    let want = if w.watched {
        WATCHED_NAME
    } else {
        UNWATCHED_NAME
    };
    assert_eq!(comm, want, "the {} workload ran as {comm:?}", w.label);
    Duration::from_nanos(ns)
}

#[derive(Default)]
struct CondRuns {
    /// Per workload: seconds per run.
    secs: Vec<Vec<f64>>,
    /// Per workload: agent CPU seconds during each run.
    agent_cpu: Vec<Vec<f64>>,
    rss_kib: Vec<u64>,
    summaries: Vec<Value>,
    errors: Vec<String>,
    notes: Vec<String>,
}

fn run_condition(o: &Opts, d: &BenchDir, cond: Condition, runs: &mut CondRuns) {
    check_interrupted();
    let agent = match cond {
        Condition::Baseline => None,
        _ => match Agent::try_start_with(
            &o.bin,
            &cond.args(&[d.tracked(), d.bus()]),
            Duration::from_secs(30),
        ) {
            Ok(a) => Some(a),
            Err(e) => {
                eprintln!("  {}: agent did not start: {e}", cond.name());
                runs.errors.push(first_line(&e));
                return;
            }
        },
    };
    // Let the agent finish its start-up work before measuring.
    std::thread::sleep(Duration::from_millis(300));
    let pid = agent.as_ref().map(Agent::pid);
    let mut line = format!("  {:<9}", cond.name());
    for (i, w) in WORKLOADS.iter().enumerate() {
        check_interrupted();
        let cpu0 = pid.and_then(cpu_s);
        let t = workload_in_child(d, w, o.round_trips, o.io);
        if let (Some(a), Some(b)) = (cpu0, pid.and_then(cpu_s)) {
            runs.agent_cpu[i].push(b - a);
        }
        runs.secs[i].push(t.as_secs_f64());
        line += &format!(
            " {}: {:.2} us",
            w.label,
            t.as_secs_f64() * 1e6 / o.round_trips as f64
        );
    }
    eprintln!("{line}");
    let Some(agent) = agent else {
        return;
    };
    if let Some(rss) = proc_rss_kib(agent.pid()) {
        runs.rss_kib.push(rss);
    }
    // Let it read what is left in the ring buffer.
    std::thread::sleep(Duration::from_millis(200));
    let run = agent.stop_full();
    let name = cond.name();
    if run.killed || !run.status.is_some_and(|s| s.success()) {
        let e = format!(
            "{name}: agent did not exit cleanly on SIGINT (status {:?}, killed {})",
            run.status, run.killed
        );
        eprintln!("  {e}\n{}", run.report());
        runs.errors.push(e);
    }
    match run.summary() {
        _ if cond == Condition::Empty => {}
        Some(s) => {
            let events = s["events"].as_u64().unwrap_or(0);
            // The tracked clients' sends and receives, 2 per round trip.
            let want = 2 * o.round_trips * tracked_workloads();
            if matches!(cond, Condition::Tracking | Condition::Syscalls) && events < want {
                let e = format!(
                    "{name}: {events} events, fewer than the tracked workloads' {want} \
                     sends and receives (drops {})",
                    s["drops"]
                );
                eprintln!("  {e}");
                // The default must keep every event; the fallback's full-size
                // records can fill the ring under this flood (counted drops,
                // reported, not a failure of the bench).
                if cond == Condition::Tracking {
                    runs.errors.push(e);
                } else {
                    runs.notes.push(e);
                }
            }
            runs.summaries.push(s.clone());
        }
        None => runs
            .errors
            .push(format!("{name}: no summary record at the end")),
    }
    let noise = run.of_type("finding").len() + run.of_type("warning").len();
    if noise > 0 {
        // The workloads never block: another user of this machine may have.
        eprintln!("  note: {noise} findings/warnings during the runs");
        runs.notes
            .push(format!("{name}: {noise} findings/warnings during the runs"));
    }
}

// ---------------------------------------------------------------------------
// Statistics and report
// ---------------------------------------------------------------------------

fn u64s(v: &[Value], f: impl Fn(&Value) -> &Value) -> Vec<u64> {
    v.iter().filter_map(|s| f(s).as_u64()).collect()
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().is_some_and(|a| a == "--run-workload") {
        run_workload_mode(&argv[1..]);
    }
    install_signal_handlers();
    if !is_root() {
        eprintln!("dbus-bench: must run as root (it loads eBPF programs)");
        std::process::exit(2);
    }
    let o = parse_args();
    eprintln!(
        "dbus-bench: agent {}, {} round trips of {MSG_LEN} B per run, io {}",
        o.bin.display(),
        o.round_trips,
        o.io.name()
    );
    if !Path::new(&o.bin).is_file() {
        eprintln!("dbus-bench: {} does not exist", o.bin.display());
        std::process::exit(2);
    }
    let d = BenchDir::new();
    let mut runs: Vec<(Condition, CondRuns)> = Condition::ALL
        .iter()
        .map(|c| {
            (
                *c,
                CondRuns {
                    secs: vec![Vec::new(); WORKLOADS.len()],
                    agent_cpu: vec![Vec::new(); WORKLOADS.len()],
                    ..CondRuns::default()
                },
            )
        })
        .collect();
    // Warm up caches and the CPU frequency; not measured.
    for w in &WORKLOADS {
        workload_in_child(&d, w, o.round_trips / 10, o.io);
    }
    for round in 0..o.rounds {
        let order = round_order(&Condition::ALL, round, o.rounds, Condition::name);
        for cond in order {
            let r = &mut runs
                .iter_mut()
                .find(|(c, _)| *c == cond)
                .expect("all conditions")
                .1;
            run_condition(&o, &d, cond, r);
        }
    }

    // ----- report -----
    let get = |cond: Condition| {
        &runs
            .iter()
            .find(|(c, _)| *c == cond)
            .expect("all conditions")
            .1
    };
    let n = o.round_trips as f64;
    println!();
    println!(
        "{:<18} {:<9} {:>9} {:>9} {:>10} {:>10} {:>9} {:>10}",
        "workload", "condition", "median", "min", "per trip", "x baseline", "x floor", "agent CPU"
    );
    let mut wl_json = Vec::new();
    for (i, w) in WORKLOADS.iter().enumerate() {
        let base = median(&get(Condition::Baseline).secs[i]);
        let floor = median(&get(Condition::Floor).secs[i]);
        let mut obj = serde_json::Map::new();
        obj.insert("workload".into(), json!(w.label));
        obj.insert("kind".into(), json!(w.kind));
        obj.insert("watched".into(), json!(w.watched));
        obj.insert("tracked_path".into(), json!(w.tracked_path));
        for cond in Condition::ALL {
            let r = get(cond);
            let v = &r.secs[i];
            if v.is_empty() {
                println!("{:<18} {:<9} {:>9}", w.label, cond.name(), "n/a");
                continue;
            }
            let m = median(v);
            let cpu = &r.agent_cpu[i];
            let cpu_txt = if cpu.is_empty() {
                "-".to_string()
            } else {
                format!("{:.3} s", median(cpu))
            };
            println!(
                "{:<18} {:<9} {:>7.3} s {:>7.3} s {:>7.2} us {:>9.3}x {:>8.3}x {:>10}",
                w.label,
                cond.name(),
                m,
                min(v),
                m * 1e6 / n,
                m / base,
                m / floor,
                cpu_txt
            );
            obj.insert(
                cond.name().into(),
                json!({
                    "median_s": num(m),
                    "min_s": num(min(v)),
                    "per_round_trip_ns_median": num(m * 1e9 / n),
                    "ratio_baseline": num(m / base),
                    "ratio_floor": num(m / floor),
                    "agent_cpu_s_median": num(median(cpu)),
                    "runs_s": v.iter().map(|x| num(*x)).collect::<Vec<_>>(),
                }),
            );
        }
        wl_json.push(Value::Object(obj));
    }
    println!();
    let mut agents = serde_json::Map::new();
    for cond in [Condition::Floor, Condition::Tracking, Condition::Syscalls] {
        let r = get(cond);
        let args = cond.args(&[d.tracked(), d.bus()]).join(" ");
        let events = u64s(&r.summaries, |s| &s["events"]);
        let kdrops = u64s(&r.summaries, |s| &s["drops"]["kernel"]);
        let udrops = u64s(&r.summaries, |s| &s["drops"]["userspace"]);
        println!(
            "agent `{args}`: events per session {events:?}, kernel drops {kdrops:?}, \
             userspace drops {udrops:?}, VmRSS max {} KiB",
            r.rss_kib.iter().max().copied().unwrap_or(0)
        );
        agents.insert(
            cond.name().into(),
            json!({
                "args": cond.args(&[d.tracked(), d.bus()]),
                "rss_kib_max": r.rss_kib.iter().max(),
                "events": events,
                "drops_kernel": kdrops,
                "drops_userspace": udrops,
                "summaries": r.summaries,
            }),
        );
    }
    println!(
        "(the {} tracked workloads' clients make {} sends and receives per run each: that many \
         events are expected per tracking session, plus their connects and closes)",
        tracked_workloads(),
        2 * o.round_trips
    );
    let errors: Vec<String> = runs.iter().flat_map(|(_, r)| r.errors.clone()).collect();
    for e in &errors {
        println!("problem: {e}");
    }
    let notes: Vec<String> = runs.iter().flat_map(|(_, r)| r.notes.clone()).collect();
    for n in &notes {
        println!("note: {n}");
    }
    let out = json!({
        "type": "dbus_bench",
        "agent": o.bin.display().to_string(),
        "rounds": o.rounds,
        "round_trips": o.round_trips,
        "msg_bytes": MSG_LEN,
        "io": o.io.name(),
        "workloads": wl_json,
        "agents": agents,
        "errors": errors,
        "notes": notes,
    });
    println!("{out}");
    drop(d);
    if !errors.is_empty() {
        std::process::exit(1);
    }
}
