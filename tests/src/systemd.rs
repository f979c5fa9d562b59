//! systemd/D-Bus hang fixtures: real runc with the systemd cgroup driver
//! (`runc --systemd-cgroup`), a real `dbus-daemon` of our own and a fake
//! systemd manager ([`FAKE_SYSTEMD_PY`], `tests/fixtures/fake_systemd.py`) with
//! switchable fault modes, all inside a private mount namespace so nothing
//! global (`/run/systemd/system`, `/run/dbus/system_bus_socket`) is touched.
//!
//! - [`PrivateNs`]: a holder process in its own mount namespace with tmpfs on
//!   `/run/systemd` (plus `/run/systemd/system`, which makes runc accept the
//!   systemd driver) and on `/run/dbus`. [`PrivateNs::command`] runs a program
//!   inside it (`nsenter -t <holder> -m -- program`).
//! - [`DbusDaemon`]: our own system-type `dbus-daemon` listening on
//!   `/run/dbus/system_bus_socket` inside the namespace; [`DbusDaemon::stop`] /
//!   [`DbusDaemon::cont`] SIGSTOP/SIGCONT it (its own pid only).
//! - [`FakeSystemd`]: the fake `org.freedesktop.systemd1`, either on that bus
//!   ([`Transport::Bus`]) or on systemd's private socket `/run/systemd/private`
//!   ([`Transport::Private`], peer to peer; runc falls back to it when the
//!   system bus socket cannot be connected).
//! - [`RuncContainer`]: a busybox-static OCI bundle started with
//!   `runc --root <ours> --systemd-cgroup run -d` in the namespace, with a
//!   unique slice (`cgroupsPath = "wdt<pid>n<n>.slice:wdt:<id>"`).
//!
//! The three faults (what runc 1.1.5 does, from strace):
//!
//! - dbus-daemon SIGSTOPped: `connect("/var/run/dbus/system_bus_socket") = 0`
//!   (the listen backlog accepts), `sendmsg("\0", SCM_CREDENTIALS)`,
//!   `write("AUTH\r\n") = 6`, `read() = -EAGAIN`, then the goroutine parks in
//!   the netpoller (`epoll_pwait(-1)`); every thread sleeps in futex/epoll.
//! - never-reply: both connections authenticate and Hello; AddMatch is
//!   answered; `write(<sysconn>, StartTransientUnit, ~550) = 550` and the call
//!   waits for its reply with no timeout (go-systemd passes context.TODO).
//! - private socket + stop-reading with [`RuncOpts::big_description`]:
//!   `connect("/var/run/dbus/system_bus_socket") = -ENOENT`,
//!   `connect("/run/systemd/private") = 0`, AUTH, no Hello, then
//!   `write(fd, 300600) = 219264`, sometimes one more partial write
//!   (`= 36544`), then `write(rest) = -EAGAIN`, parked in the netpoller.
//!
//! godbus authenticates with `sendmsg("\0", SCM_CREDENTIALS)`, `AUTH` ->
//! `REJECTED EXTERNAL`, `AUTH EXTERNAL` -> `DATA`, `DATA` -> `OK <guid>`,
//! `NEGOTIATE_UNIX_FD` -> `AGREE_UNIX_FD`, `BEGIN`. Its sockets are
//! O_NONBLOCK: a hung runc never sits in a blocking read/write; all its
//! threads sleep in futex or `epoll_pwait(-1)`.
//!
//! Each of them resolves: [`DbusDaemon::cont`], [`FakeSystemd::answer`]
//! (SIGUSR1: held calls are answered, stalled connections read again).
//!
//! Cleanup (every guard, also on panic): processes by pid only (ours: the
//! guards' own children, the children of our runc, the processes in our
//! unique slice's cgroups, the init pid runc recorded in our own `--root`),
//! then every cgroup directory under our slice in every hierarchy, then our
//! temporary directories. Mounts exist only inside the private namespace and
//! vanish with its last process.
use std::ffi::OsStr;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::dockerd::{Dockerd, DockerdOpts};
use crate::{ChildGuard, PYTHON, lock, send_signal, skip_unless, skip_unless_root, wait};

pub const RUNC: &str = "/usr/sbin/runc";
pub const DBUS_DAEMON: &str = "/usr/bin/dbus-daemon";
pub const NSENTER: &str = "/usr/bin/nsenter";
pub const UNSHARE: &str = "/usr/bin/unshare";
pub const STRACE: &str = "/usr/bin/strace";
pub const BUSYBOX: &str = crate::dockerd::BUSYBOX;

/// Inside a [`PrivateNs`]: the system bus socket of our [`DbusDaemon`] (runc
/// connects to `/var/run/dbus/system_bus_socket`, `/var/run` -> `/run`).
pub const SYSTEM_BUS_SOCKET: &str = "/run/dbus/system_bus_socket";
/// Inside a [`PrivateNs`]: systemd's private socket ([`Transport::Private`]).
pub const SYSTEMD_PRIVATE_SOCKET: &str = "/run/systemd/private";

/// The fake systemd manager (`tests/fixtures/fake_systemd.py`), embedded so
/// that the fixtures do not depend on the source tree at run time.
pub const FAKE_SYSTEMD_PY: &str = include_str!("../fixtures/fake_systemd.py");

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// Root, runc, dbus-daemon, nsenter/unshare, busybox-static, python3.
pub fn skip_unless_systemd_prereqs() -> bool {
    if !skip_unless_root() {
        return false;
    }
    for (bin, pkg) in [
        (RUNC, "runc"),
        (DBUS_DAEMON, "dbus"),
        (NSENTER, "util-linux"),
        (UNSHARE, "util-linux"),
        (BUSYBOX, "busybox-static"),
        (PYTHON, "python3"),
        ("/usr/bin/timeout", "coreutils"),
    ] {
        if !skip_unless(
            Path::new(bin).exists(),
            &format!("{bin} is missing (apt-get install {pkg})"),
        ) {
            return false;
        }
    }
    true
}

/// Joins the halves of syscalls that `strace -f` split because another
/// thread made a call meanwhile: `PID TIME name(args <unfinished ...>` and,
/// later, `PID TIME <... name resumed>rest`.
pub fn join_strace_lines(text: &str) -> String {
    let mut pending: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let pid = line.split_whitespace().next().unwrap_or("").to_owned();
        if let Some(head) = line.strip_suffix(" <unfinished ...>") {
            pending.insert(pid, head.to_owned());
            continue;
        }
        if let Some(i) = line.find("<... ")
            && let Some(j) = line[i..].find(" resumed>")
            && let Some(head) = pending.remove(&pid)
        {
            out.push_str(&head);
            out.push_str(&line[i + j + " resumed>".len()..]);
            out.push('\n');
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    for head in pending.into_values() {
        out.push_str(&head);
        out.push('\n');
    }
    out
}

/// Whether `pid` exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    proc_state(pid).is_some_and(|s| s != 'Z' && s != 'X')
}

/// The state letter of /proc/<pid>/stat (`R`, `S`, `D`, `T`, `t`, `Z`...).
pub fn proc_state(pid: u32) -> Option<char> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 1..]
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

fn proc_ppid(pid: u32) -> Option<u32> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Field 22 of /proc/<pid>/stat (start time in clock ticks since boot).
fn proc_start_ticks(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 1..]
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

pub fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Live descendants of `root` (not including it), by ppid.
pub fn descendants(root: u32) -> Vec<u32> {
    let table: Vec<(u32, u32)> = all_pids()
        .into_iter()
        .filter_map(|p| Some((p, proc_ppid(p)?)))
        .collect();
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(c, pp) in &table {
            if pp == p && !out.contains(&c) && pid_alive(c) {
                out.push(c);
                frontier.push(c);
            }
        }
    }
    out
}

/// SIGKILLs `pids` (processes the caller knows are its own; never 0/1/self)
/// and waits up to `timeout` until none is alive. Returns the survivors.
fn kill_and_wait(pids: &[u32], timeout: Duration) -> Vec<u32> {
    let me = std::process::id();
    let pids: Vec<u32> = pids.iter().copied().filter(|&p| p > 1 && p != me).collect();
    wait::until("SIGKILLed processes to be gone", timeout, || {
        let alive: Vec<u32> = pids.iter().copied().filter(|&p| pid_alive(p)).collect();
        if alive.is_empty() {
            return Ok(());
        }
        for &p in &alive {
            let _ = send_signal(p as i32, libc::SIGKILL);
        }
        Err(alive)
    })
    .err()
    .map(|_| pids.iter().copied().filter(|&p| pid_alive(p)).collect())
    .unwrap_or_default()
}

/// Reads lines from `r` into `log` (bounded to the last 1 MiB); sends the
/// first line equal to `ready` (if any) through the channel.
fn spawn_line_reader(
    r: impl Read + Send + 'static,
    log: Arc<Mutex<String>>,
    ready: Option<(&'static str, mpsc::Sender<()>)>,
) {
    thread::spawn(move || {
        let mut ready = ready;
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if let Some((want, tx)) = &ready
                && line.trim() == *want
            {
                let _ = tx.send(());
                ready = None;
            }
            let mut g = lock(&log);
            if g.len() > 1 << 20 {
                let cut = g.len() - (512 << 10);
                let cut = (cut..g.len()).find(|&i| g.is_char_boundary(i)).unwrap_or(0);
                g.drain(..cut);
            }
            g.push_str(&line);
            g.push('\n');
        }
    });
}

// ---------------------------------------------------------------------------
// PrivateNs
// ---------------------------------------------------------------------------

/// A holder process (`unshare -m --propagation private sh -c '...; exec sleep
/// infinity'`) whose mount namespace has tmpfs on `/run/systemd` (with
/// `/run/systemd/system`) and on `/run/dbus`. Everything else (`/tmp`, `/run`,
/// `/sys/fs/cgroup`, `/proc`) is the host's. `Drop` SIGKILLs the holder; the
/// namespace and its mounts vanish with the last process in it, so drop the
/// processes started in it first (declare the `PrivateNs` first).
pub struct PrivateNs {
    holder: ChildGuard,
    tag: String,
}

impl PrivateNs {
    pub fn start() -> Result<Self, String> {
        let tag = unique("wdt-ns");
        // The tmpfs sources carry the tag: visible in the namespace's mountinfo.
        let script = format!(
            "set -e; \
             mount -t tmpfs -o mode=755,size=16m {tag} /run/systemd; \
             mkdir /run/systemd/system; \
             mkdir -p /run/dbus; \
             mount -t tmpfs -o mode=755,size=16m {tag} /run/dbus; \
             echo READY; exec sleep infinity"
        );
        let mut cmd = Command::new(UNSHARE);
        cmd.args(["-m", "--propagation", "private", "/bin/sh", "-c", &script])
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut holder = ChildGuard::spawn(&mut cmd, &format!("namespace holder {tag}"))
            .map_err(|e| e.to_string())?;
        let stdout = holder.take_stdout().expect("piped");
        let stderr = holder.child_mut().stderr.take().expect("piped");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        spawn_line_reader(stdout, log.clone(), Some(("READY", tx)));
        spawn_line_reader(stderr, log.clone(), None);
        let me = Self { holder, tag };
        if rx.recv_timeout(Duration::from_secs(10)).is_err() {
            return Err(format!(
                "mount namespace holder did not get ready: {}",
                lock(&log)
            ));
        }
        Ok(me)
    }

    pub fn holder_pid(&self) -> u32 {
        self.holder.pid()
    }

    /// Unique tag (the tmpfs source name of the namespace's mounts).
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// `nsenter -t <holder> -m -- <program>`: runs `program` in the namespace
    /// (nsenter execs it: the spawned pid is the program's). The working
    /// directory in the namespace is `/` (pass absolute paths; nsenter's
    /// `--wd` leaves Go programs with an unreachable cwd).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new(NSENTER);
        c.args(self.launcher_args()).arg(program).current_dir("/");
        c
    }

    /// The arguments for `nsenter` before the program (`-t <pid> -m --`),
    /// for launchers that build their own command line.
    pub fn launcher_args(&self) -> Vec<String> {
        vec![
            "-t".into(),
            self.holder_pid().to_string(),
            "-m".into(),
            "--".into(),
        ]
    }

    /// Host-side path of `path_in_ns` as the namespace sees it
    /// (`/proc/<holder>/root/<path>`).
    pub fn host_path(&self, path_in_ns: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.holder_pid()))
            .join(path_in_ns.trim_start_matches('/'))
    }

    /// The namespace's mountinfo lines mentioning our tag (for checks).
    pub fn our_mounts(&self) -> Vec<String> {
        fs::read_to_string(format!("/proc/{}/mountinfo", self.holder_pid()))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&self.tag))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for PrivateNs {
    fn drop(&mut self) {
        self.holder.kill_group();
    }
}

// ---------------------------------------------------------------------------
// DbusDaemon
// ---------------------------------------------------------------------------

const DBUS_CONFIG: &str = r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=/run/dbus/system_bus_socket</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="signal"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
  </policy>
  <!-- A hung test must stay hung (and resume on SIGCONT) rather than turn
       into a NoReply error or a dropped connection after 25/30 s. -->
  <limit name="reply_timeout">86400000</limit>
  <limit name="auth_timeout">86400000</limit>
</busconfig>
"#;

/// Our own system-type dbus-daemon in a [`PrivateNs`], listening on
/// [`SYSTEM_BUS_SOCKET`] there. No service activation, everything allowed.
/// `Drop` SIGKILLs it (also when stopped) and removes its socket and config.
pub struct DbusDaemon {
    child: ChildGuard,
    dir: PathBuf,
    address: String,
    socket_host_path: PathBuf,
    stopped: bool,
    log: Arc<Mutex<String>>,
}

impl DbusDaemon {
    /// Starts it and waits (up to 10 s) until it prints its address.
    pub fn start(ns: &PrivateNs) -> Result<Self, String> {
        let tag = unique("wdt-dbus");
        let dir = std::env::temp_dir().join(&tag);
        fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let conf = dir.join("system.conf");
        fs::write(&conf, DBUS_CONFIG).map_err(|e| format!("write {}: {e}", conf.display()))?;
        let mut cmd = ns.command(DBUS_DAEMON);
        cmd.arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", "--nopidfile", "--nosyslog", "--print-address"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = match ChildGuard::spawn(&mut cmd, &format!("dbus-daemon {tag}")) {
            Ok(c) => c,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(e.to_string());
            }
        };
        let stdout = child.take_stdout().expect("piped");
        let stderr = child.child_mut().stderr.take().expect("piped");
        let log = Arc::new(Mutex::new(String::new()));
        spawn_line_reader(stderr, log.clone(), None);
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line.trim().to_owned());
        });
        let mut me = Self {
            child,
            dir,
            address: String::new(),
            socket_host_path: ns.host_path(SYSTEM_BUS_SOCKET),
            stopped: false,
            log,
        };
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(a) if a.starts_with("unix:") => me.address = a,
            other => {
                return Err(format!(
                    "dbus-daemon did not print its address ({other:?}): {}",
                    me.log()
                ));
            }
        }
        Ok(me)
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// What it printed (`unix:path=/run/dbus/system_bus_socket,guid=...`).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The socket path inside the namespace ([`SYSTEM_BUS_SOCKET`]).
    pub fn socket_path(&self) -> &'static str {
        SYSTEM_BUS_SOCKET
    }

    /// Its stderr so far.
    pub fn log(&self) -> String {
        lock(&self.log).clone()
    }

    /// SIGSTOP (our daemon's pid only): clients block after `write("AUTH")`.
    pub fn stop(&mut self) -> io::Result<()> {
        self.child.signal(libc::SIGSTOP)?;
        self.stopped = true;
        // SIGSTOP is asynchronous: wait until the kernel reports it stopped.
        let pid = self.pid();
        wait::until_every(
            "dbus-daemon to be stopped (state T)",
            Duration::from_secs(2),
            Duration::from_millis(2),
            || match proc_state(pid) {
                Some('T') => Ok(()),
                other => Err(other),
            },
        )
        .map_err(|e| io::Error::new(io::ErrorKind::TimedOut, e.to_string()))
    }

    /// SIGCONT.
    pub fn cont(&mut self) -> io::Result<()> {
        self.child.signal(libc::SIGCONT)?;
        self.stopped = false;
        Ok(())
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }
}

impl Drop for DbusDaemon {
    fn drop(&mut self) {
        // SIGKILL works on a stopped process; the guard kills and reaps.
        self.child.kill_group();
        // The socket lives in the namespace's tmpfs: remove it while the
        // namespace is still there (harmless if it is gone already).
        let _ = fs::remove_file(&self.socket_host_path);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------
// FakeSystemd
// ---------------------------------------------------------------------------

/// How the fake systemd is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// As `org.freedesktop.systemd1` on our [`DbusDaemon`] (start that first).
    Bus,
    /// Listening on [`SYSTEMD_PRIVATE_SOCKET`] (peer to peer). runc uses it
    /// only when the system bus cannot be connected: no [`DbusDaemon`].
    Private,
}

/// Fault mode of the fake systemd (see `fixtures/fake_systemd.py`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FakeMode {
    Answer,
    /// StartTransientUnit is never answered (everything else is).
    NeverReply,
    /// A connection is not read any more once a message announces a body
    /// larger than 64 KiB or a StartTransientUnit call arrives. Meant for
    /// [`Transport::Private`] (on the bus, dbus-daemon would buffer it).
    StopReading,
}

impl FakeMode {
    pub fn as_arg(self) -> &'static str {
        match self {
            FakeMode::Answer => "answer",
            FakeMode::NeverReply => "never-reply",
            FakeMode::StopReading => "stop-reading",
        }
    }
}

/// fake_systemd.py run in `ns` with `args` from its own directory under a
/// unique tag; its stdout and stderr go to one log. Waits up to 10 s for the
/// stdout line `ready`; on failure the directory is removed and the error
/// holds the log.
fn spawn_fake_systemd_py(
    ns: &PrivateNs,
    prefix: &str,
    label: &str,
    args: &[&str],
    stdin: Stdio,
    ready: &'static str,
) -> Result<(ChildGuard, PathBuf, Arc<Mutex<String>>), String> {
    let tag = unique(prefix);
    let dir = std::env::temp_dir().join(&tag);
    fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let script = dir.join("fake_systemd.py");
    if let Err(e) = fs::write(&script, FAKE_SYSTEMD_PY) {
        let _ = fs::remove_dir_all(&dir);
        return Err(format!("write {}: {e}", script.display()));
    }
    let mut cmd = ns.command(PYTHON);
    cmd.arg(&script)
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match ChildGuard::spawn(&mut cmd, &format!("{label} {tag}")) {
        Ok(c) => c,
        Err(e) => {
            let _ = fs::remove_dir_all(&dir);
            return Err(e.to_string());
        }
    };
    let stdout = child.take_stdout().expect("piped");
    let stderr = child.child_mut().stderr.take().expect("piped");
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel();
    spawn_line_reader(stdout, log.clone(), Some((ready, tx)));
    spawn_line_reader(stderr, log.clone(), None);
    if rx.recv_timeout(Duration::from_secs(10)).is_err() {
        drop(child);
        let _ = fs::remove_dir_all(&dir);
        return Err(format!("{label} did not print {ready}:\n{}", lock(&log)));
    }
    Ok((child, dir, log))
}

/// The fake systemd manager in a [`PrivateNs`]. `Drop`: SIGTERM, then the
/// guard's SIGKILL; removes the private socket and the script.
pub struct FakeSystemd {
    child: ChildGuard,
    dir: PathBuf,
    transport: Transport,
    mode: FakeMode,
    socket_host_path: Option<PathBuf>,
    log: Arc<Mutex<String>>,
}

impl FakeSystemd {
    /// Starts it and waits (up to 10 s) for `READY` (name owned on the bus,
    /// or listening on the private socket).
    pub fn start(ns: &PrivateNs, transport: Transport, mode: FakeMode) -> Result<Self, String> {
        let (flag, path, socket_host_path) = match transport {
            Transport::Bus => ("--bus", SYSTEM_BUS_SOCKET, None),
            Transport::Private => (
                "--private",
                SYSTEMD_PRIVATE_SOCKET,
                Some(ns.host_path(SYSTEMD_PRIVATE_SOCKET)),
            ),
        };
        let (child, dir, log) = spawn_fake_systemd_py(
            ns,
            "wdt-fakesd",
            "fake systemd",
            &[flag, path, "--mode", mode.as_arg()],
            Stdio::null(),
            "READY",
        )
        .inspect_err(|_| {
            if let Some(p) = &socket_host_path {
                let _ = fs::remove_file(p);
            }
        })?;
        Ok(Self {
            child,
            dir,
            transport,
            mode,
            socket_host_path,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    pub fn mode(&self) -> FakeMode {
        self.mode
    }

    /// Its stdout and stderr so far (one line per call).
    pub fn log(&self) -> String {
        lock(&self.log).clone()
    }

    /// Waits up to `timeout` for `needle` to appear in [`FakeSystemd::log`].
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        wait::for_log(&self.log, needle, timeout)
    }

    /// SIGUSR1: switch to answering; held StartTransientUnit calls are
    /// answered now (reply + JobRemoved) and stalled connections are read
    /// again, so a hung runc continues.
    pub fn answer(&mut self) -> io::Result<()> {
        self.child.signal(libc::SIGUSR1)?;
        self.mode = FakeMode::Answer;
        Ok(())
    }

    /// SIGUSR2: back to the mode it was started in (for new calls).
    pub fn refault(&mut self) -> io::Result<()> {
        self.child.signal(libc::SIGUSR2)
    }
}

/// A long-lived D-Bus client in a [`PrivateNs`] under a runtime's name, as
/// kubelet, CRI-O or containerd keep one connection to systemd for life
/// (fake_systemd.py's client mode). `Drop`: SIGKILL by PID, script removed.
pub struct SystemdClient {
    child: ChildGuard,
    dir: PathBuf,
    stdin: std::process::ChildStdin,
    log: Arc<Mutex<String>>,
}

impl SystemdClient {
    /// Starts it as `comm`, connected to the bus or the private socket, and
    /// waits (up to 10 s) until it is connected (authenticated, Hello done).
    pub fn start(ns: &PrivateNs, transport: Transport, comm: &str) -> Result<Self, String> {
        let (flag, path) = match transport {
            Transport::Bus => ("--client-of-bus", SYSTEM_BUS_SOCKET),
            Transport::Private => ("--client-of-private", SYSTEMD_PRIVATE_SOCKET),
        };
        let (mut child, dir, log) = spawn_fake_systemd_py(
            ns,
            "wdt-sdclient",
            "systemd client",
            &[flag, path, "--comm", comm],
            Stdio::piped(),
            "CONNECTED",
        )?;
        let stdin = child.child_mut().stdin.take().expect("piped");
        Ok(Self {
            child,
            dir,
            stdin,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Sends StartTransientUnit(`unit`) on its connection.
    pub fn start_unit(&mut self, unit: &str) -> io::Result<()> {
        use std::io::Write;
        writeln!(self.stdin, "start {unit}")?;
        self.stdin.flush()
    }

    pub fn log(&self) -> String {
        lock(&self.log).clone()
    }

    /// Waits up to `timeout` for `needle` in [`SystemdClient::log`].
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        wait::for_log(&self.log, needle, timeout)
    }
}

impl Drop for SystemdClient {
    fn drop(&mut self) {
        self.child.kill_group();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Drop for FakeSystemd {
    fn drop(&mut self) {
        if self.child.try_wait().is_none() {
            let _ = self.child.signal(libc::SIGTERM);
            self.child.wait_timeout(Duration::from_secs(2));
        }
        self.child.kill_group();
        if let Some(p) = &self.socket_host_path {
            let _ = fs::remove_file(p);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------
// RuncContainer
// ---------------------------------------------------------------------------

/// Options of [`RuncContainer::start`].
#[derive(Clone, Debug)]
pub struct RuncOpts {
    /// The container's process (default `sleep 1000`).
    pub args: Vec<String>,
    /// `runc create` instead of `runc run -d`.
    pub create_only: bool,
    /// Adds the annotation `org.systemd.property.Description` with a quoted
    /// string of this many bytes: runc sends it in StartTransientUnit, so the
    /// message outgrows the socket buffer (300_000 -> a 300_576-byte message).
    pub big_description: Option<usize>,
    /// Run runc under `strace -f -tt -e trace=network,read,write,close,...`
    /// writing to [`RuncContainer::strace_file`]. Note: strace then follows
    /// the container process too; [`RuncContainer::runc_pid`] is still runc.
    pub strace: bool,
}

impl Default for RuncOpts {
    fn default() -> Self {
        Self {
            args: vec!["sleep".into(), "1000".into()],
            create_only: false,
            big_description: None,
            strace: false,
        }
    }
}

/// A container started with real runc and the systemd cgroup driver in a
/// [`PrivateNs`]. [`RuncContainer::start`] returns at once: runc may be
/// hanging on D-Bus, that is the point. `Drop`: SIGKILL our runc (its
/// process group and its children), the container's processes (the pids in
/// our slice's cgroups and the init pid in our runc root's state.json,
/// checked against its start time), then removes the cgroup directories under
/// our slice in every hierarchy, the runc root and the bundle.
pub struct RuncContainer {
    dir: PathBuf,
    bundle: PathBuf,
    root: PathBuf,
    id: String,
    slice: String,
    cgroups_path: String,
    runc: Option<ChildGuard>,
    runc_pid: u32,
    strace_file: Option<PathBuf>,
    ns_launcher: Vec<String>,
    started: Instant,
    exit: Option<ExitStatus>,
}

/// Every mounted cgroup hierarchy (v1 and v2) from /proc/self/mountinfo.
pub fn cgroup_mounts() -> Vec<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let fstype = post.split(' ').next()?;
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            Some(PathBuf::from(crate::unescape_mountinfo(
                pre.split(' ').nth(4)?,
            )))
        })
        .collect()
}

/// Every directory at or below `<hierarchy>/<slice>` in every hierarchy,
/// deepest first.
fn slice_dirs(slice: &str) -> Vec<PathBuf> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = fs::read_dir(d) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                }
            }
        }
        out.push(d.to_path_buf());
    }
    let mut out = Vec::new();
    for m in cgroup_mounts() {
        let top = m.join(slice);
        if top.is_dir() {
            walk(&top, &mut out);
        }
    }
    out
}

/// Thaws every cgroup under `slice` (a unique slice of the test's own) in
/// every hierarchy: a frozen task ignores SIGKILL until thawed, and runc
/// freezes a container's cgroup while it sets it up, so a runc killed at
/// that moment leaves it frozen (v1 `freezer.state`, v2 `cgroup.freeze`).
pub fn thaw_slice(slice: &str) {
    for d in slice_dirs(slice) {
        for (file, value) in [("freezer.state", "THAWED"), ("cgroup.freeze", "0")] {
            // Never create: only an existing control file is written.
            if let Ok(mut f) = fs::OpenOptions::new().write(true).open(d.join(file)) {
                let _ = io::Write::write_all(&mut f, value.as_bytes());
            }
        }
    }
}

/// Kills every process in the cgroups under `slice` (a unique slice of the
/// test's own) in every hierarchy and removes the directories, deepest first
/// (rmdir may briefly say EBUSY). Returns what could not be cleaned.
pub fn cleanup_slice(slice: &str) -> Vec<String> {
    let mut problems = Vec::new();
    thaw_slice(slice);
    let mut pids: Vec<u32> = slice_dirs(slice)
        .iter()
        .flat_map(|d| crate::read_pids(&d.join("cgroup.procs")))
        .collect();
    pids.sort_unstable();
    pids.dedup();
    let left = kill_and_wait(&pids, Duration::from_secs(5));
    if !left.is_empty() {
        problems.push(format!("cgroup processes outlived SIGKILL: {left:?}"));
    }
    let started = Instant::now();
    let budget = Duration::from_secs(5);
    for d in slice_dirs(slice) {
        let what = format!("rmdir {}", d.display());
        let removed =
            wait::until(
                &what,
                budget.saturating_sub(started.elapsed()),
                || match fs::remove_dir(&d) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                    Err(e) => {
                        thaw_slice(slice);
                        let _ = kill_and_wait(
                            &crate::read_pids(&d.join("cgroup.procs")),
                            Duration::from_millis(200),
                        );
                        Err(e)
                    }
                },
            );
        if let Err(e) = removed {
            problems.push(e.to_string());
        }
    }
    problems
}

fn write_rootfs(rootfs: &Path) -> Result<(), String> {
    let bin = rootfs.join("bin");
    fs::create_dir_all(&bin).map_err(|e| format!("create {}: {e}", bin.display()))?;
    for d in ["proc", "sys", "dev", "tmp", "etc"] {
        fs::create_dir_all(rootfs.join(d)).map_err(|e| format!("create {d}: {e}"))?;
    }
    fs::copy(BUSYBOX, bin.join("busybox")).map_err(|e| format!("copy {BUSYBOX}: {e}"))?;
    for applet in ["sh", "sleep", "true", "cat", "ls", "echo"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet))
            .map_err(|e| format!("symlink {applet}: {e}"))?;
    }
    Ok(())
}

impl RuncContainer {
    /// Writes the bundle and spawns `runc --root <ours> --systemd-cgroup run
    /// -d -b <bundle> <id>` (or `create`) in `ns`; does not wait for it.
    pub fn start(ns: &PrivateNs, opts: &RuncOpts) -> Result<Self, String> {
        let tag = unique("wdt-runc");
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        // No dashes in the slice: systemd would expand `a-b.slice` to
        // `a.slice/a-b.slice`; runc does the same expansion.
        let slice = format!("wdt{}n{n}.slice", std::process::id());
        let id = tag.clone();
        let cgroups_path = format!("{slice}:wdt:{id}");
        let dir = std::env::temp_dir().join(&tag);
        let bundle = dir.join("bundle");
        let root = dir.join("runc-root");
        let mut me = Self {
            dir: dir.clone(),
            bundle: bundle.clone(),
            root: root.clone(),
            id,
            slice,
            cgroups_path,
            runc: None,
            runc_pid: 0,
            strace_file: None,
            ns_launcher: ns.launcher_args(),
            started: Instant::now(),
            exit: None,
        };
        // From here on, Drop cleans up whatever was made.
        fs::create_dir_all(&root).map_err(|e| format!("create {}: {e}", root.display()))?;
        write_rootfs(&bundle.join("rootfs"))?;
        let out = Command::new(RUNC)
            .args(["spec", "--bundle"])
            .arg(&bundle)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("runc spec: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "runc spec failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let cfg_path = bundle.join("config.json");
        let mut cfg: Value = serde_json::from_slice(
            &fs::read(&cfg_path).map_err(|e| format!("read config.json: {e}"))?,
        )
        .map_err(|e| format!("parse config.json: {e}"))?;
        cfg["process"]["terminal"] = json!(false);
        cfg["process"]["args"] = json!(opts.args);
        cfg["linux"]["cgroupsPath"] = json!(me.cgroups_path);
        cfg["hostname"] = json!("wdt");
        if let Some(size) = opts.big_description {
            cfg["annotations"] = json!({
                "org.systemd.property.Description": format!("'{}'", "x".repeat(size)),
            });
        }
        fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).expect("json"))
            .map_err(|e| format!("write config.json: {e}"))?;

        let mut cmd = Command::new(NSENTER);
        cmd.args(&me.ns_launcher).current_dir("/");
        if opts.strace {
            let f = dir.join("strace.txt");
            cmd.arg(STRACE)
                .args(["-f", "-tt", "-s", "64", "-o"])
                .arg(&f)
                .args([
                    "-e",
                    "trace=network,read,write,close,connect,epoll_pwait,epoll_wait,futex",
                ]);
            me.strace_file = Some(f);
        }
        cmd.arg(RUNC)
            .arg("--root")
            .arg(&root)
            .arg("--systemd-cgroup");
        if opts.create_only {
            cmd.arg("create");
        } else {
            cmd.args(["run", "-d"]);
        }
        cmd.arg("-b").arg(&bundle).arg(&me.id);
        let log = fs::File::create(dir.join("runc.log")).map_err(|e| format!("runc.log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("runc.log: {e}"))?;
        // Deterministic bus address: the default /var/run/dbus/system_bus_socket.
        cmd.env_remove("DBUS_SYSTEM_BUS_ADDRESS")
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        me.started = Instant::now();
        let child =
            ChildGuard::spawn(&mut cmd, &format!("runc {}", me.id)).map_err(|e| e.to_string())?;
        me.runc_pid = child.pid();
        me.runc = Some(child);
        if opts.strace {
            // strace forks runc: find it (by comm, among strace's children).
            let tracer = me.runc_pid;
            let found = wait::until_every(
                "runc to start under strace",
                Duration::from_secs(5),
                Duration::from_millis(2),
                || {
                    let children = descendants(tracer);
                    children
                        .iter()
                        .copied()
                        .find(|&p| {
                            fs::read_to_string(format!("/proc/{p}/comm"))
                                .is_ok_and(|c| c.trim() == "runc")
                                && proc_ppid(p) == Some(tracer)
                        })
                        .ok_or(children)
                },
            );
            match found {
                Ok(p) => me.runc_pid = p,
                Err(e) => return Err(format!("{e}: {}", me.output())),
            }
        }
        Ok(me)
    }

    /// Pid of the runc process that talks D-Bus (`runc run`/`create`).
    pub fn runc_pid(&self) -> u32 {
        self.runc_pid
    }

    /// The container id (`wdt-runc-<pid>-<n>`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `wdt<pid>n<n>.slice`
    pub fn slice(&self) -> &str {
        &self.slice
    }

    /// `wdt-<id>.scope`: the unit runc asks systemd for.
    pub fn unit(&self) -> String {
        format!("wdt-{}.scope", self.id)
    }

    /// `<slice>:wdt:<id>` as written to config.json.
    pub fn cgroups_path(&self) -> &str {
        &self.cgroups_path
    }

    pub fn bundle(&self) -> &Path {
        &self.bundle
    }

    /// runc's `--root` (state.json lives in `<root>/<id>/`).
    pub fn runc_root(&self) -> &Path {
        &self.root
    }

    pub fn strace_file(&self) -> Option<&Path> {
        self.strace_file.as_deref()
    }

    /// The strace output so far (empty without [`RuncOpts::strace`]).
    /// The strace output, with calls that strace split across threads
    /// (`<unfinished ...>` ... `<... name resumed>`) joined into one line.
    pub fn strace_text(&self) -> String {
        self.strace_file
            .as_ref()
            .and_then(|f| fs::read_to_string(f).ok())
            .map(|t| join_strace_lines(&t))
            .unwrap_or_default()
    }

    /// runc's stdout and stderr so far.
    pub fn output(&self) -> String {
        fs::read_to_string(self.dir.join("runc.log")).unwrap_or_default()
    }

    /// When runc was spawned.
    pub fn started_at(&self) -> Instant {
        self.started
    }

    /// Whether the runc process is still running (not exited, not a zombie).
    pub fn runc_running(&mut self) -> bool {
        if self.strace_file.is_none() {
            return self.runc.as_mut().is_some_and(|c| c.try_wait().is_none());
        }
        pid_alive(self.runc_pid)
    }

    /// Waits up to `timeout` for runc to exit. Without strace: its status.
    /// Under strace (which outlives runc while it traces the container):
    /// `Some(status)` of strace if it exited, else a synthesized success once
    /// runc itself is gone (check [`RuncContainer::output`] for errors).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait::until("runc to exit", timeout, || {
            if self.strace_file.is_none() {
                if let Some(c) = self.runc.as_mut()
                    && let Some(s) = c.try_wait()
                {
                    self.exit = Some(s);
                    return Ok(s);
                }
            } else if !pid_alive(self.runc_pid) {
                use std::os::unix::process::ExitStatusExt;
                return Ok(ExitStatus::from_raw(0));
            }
            Err("running")
        })
        .ok()
    }

    fn runc_cmd(&self, timeout_secs: u64, args: &[&str]) -> Command {
        let mut c = Command::new("/usr/bin/timeout");
        c.args(["-s", "KILL", &timeout_secs.to_string(), NSENTER])
            .args(&self.ns_launcher)
            .arg(RUNC)
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .current_dir("/")
            .env_remove("DBUS_SYSTEM_BUS_ADDRESS")
            .stdin(Stdio::null());
        c
    }

    /// `runc state <id>` (JSON), if runc knows the container.
    pub fn state(&self) -> Option<Value> {
        let out = self.runc_cmd(10, &["state", &self.id]).output().ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Host pid of the container's init from our runc root's state.json
    /// (checked against its recorded start time).
    pub fn container_pid(&self) -> Option<u32> {
        let s = fs::read(self.root.join(&self.id).join("state.json")).ok()?;
        let v: Value = serde_json::from_slice(&s).ok()?;
        let pid = v["init_process_pid"].as_u64()? as u32;
        let start = v["init_process_start"].as_u64()?;
        (proc_start_ticks(pid) == Some(start) && pid_alive(pid)).then_some(pid)
    }

    /// `runc delete -f <id>` (through the fake systemd: StopUnit) under
    /// `timeout -s KILL`. Drop cleans up without it as well.
    pub fn delete(&self, timeout_secs: u64) -> Result<(), String> {
        let out = self
            .runc_cmd(timeout_secs, &["delete", "-f", &self.id])
            .output()
            .map_err(|e| format!("runc delete: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "runc delete -f {} failed ({}): {}",
                self.id,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Every existing cgroup directory under our slice, in every hierarchy
    /// (deepest first).
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        slice_dirs(&self.slice)
    }

    /// Pids in the `cgroup.procs` of our slice's cgroups.
    pub fn cgroup_pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .cgroup_dirs()
            .iter()
            .flat_map(|d| crate::read_pids(&d.join("cgroup.procs")))
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    fn cleanup(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        // 1. Our runc (and strace) and all their children: runc init's final
        //    stage is a child of runc (CLONE_PARENT) in its own session.
        let mut ours: Vec<u32> = Vec::new();
        if let Some(g) = self.runc.as_mut()
            && g.try_wait().is_none()
        {
            ours.push(g.pid());
            ours.extend(descendants(g.pid()));
        }
        if self.runc_pid != 0 && pid_alive(self.runc_pid) {
            ours.extend(descendants(self.runc_pid));
        }
        // 2. The container's processes.
        if let Some(p) = self.container_pid() {
            ours.push(p);
        }
        ours.extend(self.cgroup_pids());
        ours.sort_unstable();
        ours.dedup();
        let left = kill_and_wait(&ours, Duration::from_secs(5));
        if !left.is_empty() {
            problems.push(format!("processes outlived SIGKILL: {left:?}"));
        }
        if let Some(mut g) = self.runc.take() {
            g.kill_group();
        }
        // 3. Processes that were on their way into the cgroups, then the
        //    cgroup directories.
        problems.extend(cleanup_slice(&self.slice));
        // 4. Files.
        if let Err(e) = fs::remove_dir_all(&self.dir)
            && e.kind() != io::ErrorKind::NotFound
        {
            problems.push(format!("remove {}: {e}", self.dir.display()));
        }
        problems
    }
}

impl Drop for RuncContainer {
    fn drop(&mut self) {
        for p in self.cleanup() {
            eprintln!("warning: cleanup of runc container {}: {p}", self.id);
        }
    }
}

// ---------------------------------------------------------------------------
// SystemdDockerd
// ---------------------------------------------------------------------------

/// A private [`Dockerd`] started inside a [`PrivateNs`] with
/// `--exec-opt native.cgroupdriver=systemd --cgroup-parent <unique slice>`:
/// its runc talks to whatever systemd the namespace offers (start a
/// [`DbusDaemon`] + [`FakeSystemd`] first). `Drop`: SIGKILLs the runc
/// processes of this daemon first (a runc hung on D-Bus would otherwise keep
/// `docker rm`/dockerd's shutdown waiting), drops the [`Dockerd`] (which kills
/// what is left of its processes), then cleans the slice's cgroups.
pub struct SystemdDockerd {
    dockerd: Option<Dockerd>,
    slice: String,
}

impl SystemdDockerd {
    pub fn start(ns: &PrivateNs) -> Result<Self, String> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let slice = format!("wdt{}d{n}.slice", std::process::id());
        let opts = DockerdOpts {
            mount_ns_of: Some(ns.holder_pid()),
            extra_args: vec![
                "--exec-opt".into(),
                "native.cgroupdriver=systemd".into(),
                "--cgroup-parent".into(),
                slice.clone(),
            ],
            ..DockerdOpts::default()
        };
        let dockerd = Dockerd::start_with(&opts);
        let problems = cleanup_slice(&slice);
        if !problems.is_empty() && dockerd.is_err() {
            eprintln!("warning: cleanup of {slice}: {problems:?}");
        }
        Ok(Self {
            dockerd: Some(dockerd?),
            slice,
        })
    }

    pub fn dockerd(&self) -> &Dockerd {
        self.dockerd.as_ref().expect("present until drop")
    }

    pub fn dockerd_mut(&mut self) -> &mut Dockerd {
        self.dockerd.as_mut().expect("present until drop")
    }

    /// The `--cgroup-parent` slice (`wdt<pid>d<n>.slice`).
    pub fn slice(&self) -> &str {
        &self.slice
    }

    /// Existing cgroup directories under the slice, every hierarchy.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        slice_dirs(&self.slice)
    }

    /// Live `runc` processes of this daemon (their command line names our
    /// private exec root): e.g. a `runc create` hung on D-Bus.
    pub fn runc_pids(&self) -> Vec<u32> {
        let needle = self.dockerd().exec_root().to_string_lossy().into_owned();
        all_pids()
            .into_iter()
            .filter(|&p| pid_alive(p))
            .filter(|p| {
                fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.split('\0').next().is_some_and(|a0| a0.ends_with("runc"))
                        && c.contains(&needle)
                })
            })
            .collect()
    }
}

impl Drop for SystemdDockerd {
    fn drop(&mut self) {
        if self.dockerd.is_some() {
            let mut pids = self.runc_pids();
            for p in pids.clone() {
                pids.extend(descendants(p));
            }
            kill_and_wait(&pids, Duration::from_secs(5));
        }
        drop(self.dockerd.take());
        for p in cleanup_slice(&self.slice) {
            eprintln!("warning: cleanup of {}: {p}", self.slice);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn split_strace_calls_are_joined() {
        let t = "9813  15:41:46.074827 connect(7, {sa_family=AF_UNIX, sun_path=\"/var/run/dbus/system_bus_socket\"}, 34 <unfinished ...>\n\
                 9812  15:41:46.074900 futex(0x1, FUTEX_WAKE, 1) = 0\n\
                 9813  15:41:46.075000 <... connect resumed>) = 0\n";
        let j = super::join_strace_lines(t);
        assert!(
            j.contains("sun_path=\"/var/run/dbus/system_bus_socket\"}, 34) = 0\n"),
            "{j}"
        );
        assert!(j.contains("futex(0x1"));
        assert_eq!(j.lines().count(), 2);
    }
}
