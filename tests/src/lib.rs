//! Shared fixtures for the privileged tests and the benchmark harness.
//!
//! Everything here starts real processes and creates real kernel objects, so
//! every fixture is an RAII guard whose `Drop` cleans up, also while a test is
//! panicking, and never panics itself:
//!
//! - [`PidsCgroup`]: a uniquely named cgroup in the pids hierarchy (v1 or v2).
//! - [`ChildGuard`]: a child in its own process group, SIGKILLed as a group.
//! - [`Agent`]: the `watchdog` binary with its JSON-lines stdout collected.
//! - [`ForkWorkload`] (from [`fork_until_eagain`]): a python process that forks
//!   until the kernel refuses with `EAGAIN`.
//!
//! - [`fuse::HangingFuse`]: a FUSE mount whose daemon never answers chosen requests.
//! - [`dockerd::Dockerd`]: a private dockerd with a busybox image.
//! - [`redis::RedisServer`]: a redis-server of our own on a loopback port
//!   (the real-workload benchmark).
//! - [`systemd`]: runc with the systemd cgroup driver, our own dbus-daemon and
//!   a fake systemd with fault modes, in a private mount namespace.
//! - [`systemd_real`]: a real systemd 252 as PID 1 of a container of our own
//!   dockerd (Debian bookworm rootfs, cached), with clients under runtime names.
//!
//! Safety rules (the machine is shared): only processes this crate started are
//! ever signalled, never by name and never PID 1; cgroups get unique names.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

pub mod bench;
pub mod containerd;
pub mod dockerd;
pub mod frozen;
pub mod fuse;
pub mod journal;
pub mod names;
pub mod redis;
pub mod systemd;
pub mod systemd_real;
pub mod wait;

/// The system python: the pyenv shim on PATH forks, which breaks inside a
/// pids cgroup at its limit.
pub const PYTHON: &str = "/usr/bin/python3";
/// Used to run a workload under another uid with a ulimit (root is exempt from
/// RLIMIT_NPROC).
pub const SETPRIV: &str = "/usr/bin/setpriv";
/// Conventional unprivileged uid/gid for the RLIMIT_NPROC tests.
pub const NOBODY: u32 = 65534;

// ---------------------------------------------------------------------------
// Skipping (never silently)
// ---------------------------------------------------------------------------

/// True when a missing prerequisite must fail the test instead of skipping it:
/// env `CI` set (non-empty) or `WATCHDOG_REQUIRE_KERNEL_TESTS=1`.
pub fn kernel_tests_required() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
        || std::env::var("WATCHDOG_REQUIRE_KERNEL_TESTS").is_ok_and(|v| v == "1")
}

/// Returns `true` when `ok`. Otherwise prints exactly why the test is skipped
/// and returns `false`, or panics when skipping is forbidden
/// ([`kernel_tests_required`]).
///
/// ```no_run
/// # use watchdog_tests::*;
/// if !skip_unless(is_root(), "needs root") { return; }
/// ```
pub fn skip_unless(ok: bool, why: &str) -> bool {
    if ok {
        return true;
    }
    if kernel_tests_required() {
        panic!(
            "kernel test prerequisite missing: {why} \
             (skipping is forbidden because CI or WATCHDOG_REQUIRE_KERNEL_TESTS=1 is set)"
        );
    }
    eprintln!("SKIPPED: {why} (set WATCHDOG_REQUIRE_KERNEL_TESTS=1 to make this a failure)");
    false
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn skip_unless_root() -> bool {
    skip_unless(is_root(), "not running as root (euid != 0)")
}

/// Root, a pids cgroup hierarchy we can create cgroups in, and /usr/bin/python3.
pub fn skip_unless_pid_exhaustion_prereqs() -> bool {
    if !skip_unless_root() {
        return false;
    }
    if let Err(e) = pids_hierarchy() {
        return skip_unless(false, &format!("no usable pids cgroup hierarchy: {e}"));
    }
    skip_unless(
        Path::new(PYTHON).exists(),
        &format!("{PYTHON} is missing (needed for the fork workload)"),
    )
}

/// [`skip_unless_pid_exhaustion_prereqs`] plus setpriv for the uid switch.
pub fn skip_unless_rlimit_prereqs() -> bool {
    skip_unless_pid_exhaustion_prereqs()
        && skip_unless(
            Path::new(SETPRIV).exists(),
            &format!("{SETPRIV} is missing (util-linux; needed to switch to uid {NOBODY})"),
        )
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The JSON records among the lines of a command's output (`--json`).
pub fn json_records(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

/// Unpacks a bundle with `tar` (as a user would) into `into`; its manifest.
pub fn unpack_bundle(bundle: &Path, into: &Path) -> Value {
    std::fs::create_dir_all(into).expect("create the unpack directory");
    let st = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(bundle)
        .arg("-C")
        .arg(into)
        .status()
        .expect("run tar");
    assert!(st.success(), "tar -xzf {}", bundle.display());
    serde_json::from_str(
        &std::fs::read_to_string(into.join("manifest.json")).expect("manifest.json in the bundle"),
    )
    .expect("manifest.json is JSON")
}

/// The cargo workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The capabilities the Helm chart gives the agent instead of a privileged
/// container (`charts/watchdog/values.yaml`, `securityContext.capabilities`):
/// the chart test checks the rendered DaemonSet adds exactly these, and the
/// image test runs the image with only these.
pub const CHART_CAPABILITIES: [&str; 4] = ["BPF", "PERFMON", "SYS_ADMIN", "SYS_PTRACE"];

/// The static (musl) agent of the image and the debug-pod test:
/// `$WATCHDOG_STATIC_BIN` (`cargo xtask test` builds it with `--target
/// x86_64-unknown-linux-musl`), when that file exists.
pub fn static_agent_bin() -> Option<PathBuf> {
    std::env::var_os("WATCHDOG_STATIC_BIN")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
}

/// Why [`static_agent_bin`] is `None`, for a skip message.
pub const NO_STATIC_AGENT: &str = "WATCHDOG_STATIC_BIN does not name the static agent \
     (cargo xtask test builds it: cargo build --release --target x86_64-unknown-linux-musl -p watchdog)";

/// Where the agent binary is: `$WATCHDOG_BIN`, else next to the running
/// executable if that is in a `release/` directory (the bench), else
/// `$CARGO_TARGET_DIR/release/watchdog`, else `<workspace>/target/release/watchdog`.
/// A debug build is never picked silently.
/// Panics with a clear message if the file does not exist.
pub fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("WATCHDOG_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "WATCHDOG_BIN={} does not exist; build it with \
             `cargo build --release -p watchdog`",
            p.display()
        );
        return p;
    }
    let mut candidates = Vec::new();
    // The bench runs from target/release/: the agent is its sibling.
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
        && dir.file_name().is_some_and(|n| n == "release")
    {
        candidates.push(dir.join("watchdog"));
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR").filter(|p| !p.is_empty()) {
        candidates.push(PathBuf::from(t).join("release/watchdog"));
    }
    let default = workspace_root().join("target/release/watchdog");
    candidates.push(default.clone());
    for c in &candidates {
        if c.is_file() {
            return c.clone();
        }
    }
    panic!(
        "agent binary not found: WATCHDOG_BIN is not set and {} does not exist \
         (build it with `cargo build --release -p watchdog`, or set WATCHDOG_BIN)",
        default.display()
    );
}

fn send_signal(pid: i32, sig: i32) -> io::Result<()> {
    // Refuse the dangerous values outright: 0 = our own group, -1 = everything,
    // 1/-1 = init.
    if pid == 0 || pid == 1 || pid == -1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to signal pid {pid}"),
        ));
    }
    // SAFETY: plain syscall; the callers only pass processes they started.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `CLOCK_REALTIME` in ns since the Unix epoch, as a `SystemTime` gives it.
pub fn unix_ns(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Signed difference `later - earlier_ns` in seconds (negative if the event
/// was received "before" the timestamp, i.e. clock trouble).
pub fn secs_since_unix_ns(later: SystemTime, earlier_ns: u128) -> f64 {
    (unix_ns(later) as f64 - earlier_ns as f64) / 1e9
}

/// `sysconf(_SC_CLK_TCK)`.
pub fn clk_tck() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// `VmRSS` of a process in KiB.
pub fn proc_rss_kib(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// `utime + stime` of a process in clock ticks (from /proc/<pid>/stat).
pub fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parens: fields start after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Number of tasks (threads included) whose real uid is `uid`, counted from
/// /proc/*/task/*/status: what RLIMIT_NPROC is checked against.
pub fn count_tasks_of_uid(uid: u32) -> usize {
    let mut n = 0;
    let Ok(procs) = fs::read_dir("/proc") else {
        return 0;
    };
    for p in procs.flatten() {
        if !p
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let Ok(tasks) = fs::read_dir(p.path().join("task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let Ok(status) = fs::read_to_string(t.path().join("status")) else {
                continue;
            };
            let real = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u32>().ok());
            if real == Some(uid) {
                n += 1;
            }
        }
    }
    n
}

// ---------------------------------------------------------------------------
// ChildGuard
// ---------------------------------------------------------------------------

/// A tmpfs of the test's own mounted on `at` (created when missing, and
/// then removed again), unmounted (detached, never blocks) on drop.
pub struct TmpfsMount {
    at: PathBuf,
    created: bool,
}

impl TmpfsMount {
    /// `options`: the tmpfs mount data, e.g. `mode=0711` or `size=64k`.
    pub fn new(at: &Path, options: &str) -> Result<Self, String> {
        let created = !at.exists();
        if created {
            std::fs::create_dir_all(at).map_err(|e| format!("create {}: {e}", at.display()))?;
        }
        let c = |s: &str| std::ffi::CString::new(s).map_err(|e| e.to_string());
        let target = c(&at.to_string_lossy())?;
        let (src, fstype, data) = (c("tmpfs")?, c("tmpfs")?, c(options)?);
        // SAFETY: valid C strings; a directory of ours.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                data.as_ptr().cast(),
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if created {
                let _ = std::fs::remove_dir(at);
            }
            return Err(format!("mount tmpfs on {}: {e}", at.display()));
        }
        Ok(Self {
            at: at.to_path_buf(),
            created,
        })
    }

    pub fn path(&self) -> &Path {
        &self.at
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        if let Ok(c) = std::ffi::CString::new(self.at.to_string_lossy().into_owned()) {
            // SAFETY: valid C string; detach never blocks.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        if self.created {
            let _ = std::fs::remove_dir(&self.at);
        }
    }
}

/// A child process spawned in its own process group (`process_group(0)`, so
/// its pgid is its pid) with `PR_SET_PDEATHSIG = SIGKILL` (so it also dies if
/// the spawning thread dies without unwinding). `Drop` SIGKILLs the whole
/// group and reaps the child.
///
/// Only for processes the test spawned itself.
pub struct ChildGuard {
    child: Child,
    pgid: i32,
    status: Option<ExitStatus>,
    label: String,
}

impl ChildGuard {
    /// Spawns `cmd` in a new process group. `label` names it in messages.
    pub fn spawn(cmd: &mut Command, label: &str) -> io::Result<Self> {
        cmd.process_group(0);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            io::Error::new(e.kind(), format!("could not start {label} ({cmd:?}): {e}"))
        })?;
        let pgid = child.id() as i32;
        Ok(Self {
            child,
            pgid,
            status: None,
            label: label.to_string(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// Exit status if the child has exited (reaps it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits up to `timeout` for the child to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let what = format!("{} to exit", self.label);
        wait::until(&what, timeout, || self.try_wait().ok_or("running")).ok()
    }

    /// Sends `sig` to the child itself (not the group). No-op once reaped.
    pub fn signal(&mut self, sig: i32) -> io::Result<()> {
        if self.try_wait().is_some() {
            return Ok(());
        }
        // Not reaped yet: the pid cannot have been reused.
        send_signal(self.pgid, sig)
    }

    /// Whether any live (non-zombie) process is still in our process group *and* our session
    /// (the check that makes signalling the group safe after the leader was
    /// reaped and its pid could in theory have been reused).
    fn group_alive(&self) -> bool {
        // SAFETY: getsid(0) has no preconditions.
        let our_sid = unsafe { libc::getsid(0) };
        let Ok(procs) = fs::read_dir("/proc") else {
            return false;
        };
        procs.flatten().any(|p| {
            let Ok(stat) = fs::read_to_string(p.path().join("stat")) else {
                return false;
            };
            let Some(close) = stat.rfind(')') else {
                return false;
            };
            let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            // f[0]=state f[1]=ppid f[2]=pgrp f[3]=session. Zombies are dead
            // already; orphans are reaped by init, in its own time.
            !matches!(f.first(), Some(&"Z") | Some(&"X"))
                && f.get(2).and_then(|v| v.parse::<i32>().ok()) == Some(self.pgid)
                && f.get(3).and_then(|v| v.parse::<i32>().ok()) == Some(our_sid)
        })
    }

    /// SIGKILLs the whole process group and reaps the child (bounded).
    pub fn kill_group(&mut self) {
        if self.try_wait().is_none() || self.group_alive() {
            let _ = send_signal(-self.pgid, libc::SIGKILL);
        }
        if self.status.is_none() {
            self.wait_timeout(Duration::from_secs(5));
        }
        // Members orphaned by the leader are reaped by init: wait until they
        // are really gone, so a test's cleanup is complete when this returns.
        let what = format!("process group {} of {} to be gone", self.pgid, self.label);
        if let Err(e) = wait::until(&what, Duration::from_secs(5), || {
            if !self.group_alive() {
                return Ok(());
            }
            let _ = send_signal(-self.pgid, libc::SIGKILL);
            Err("members alive after SIGKILL")
        }) {
            eprintln!("warning: {e}");
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill_group();
        if self.status.is_none() {
            eprintln!(
                "warning: {} (pid {}) did not exit after SIGKILL",
                self.label, self.pgid
            );
        }
    }
}

// ---------------------------------------------------------------------------
// PidsCgroup
// ---------------------------------------------------------------------------

/// The pids controller's hierarchy as mounted here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PidsHierarchy {
    /// Where the hierarchy is mounted, e.g. `/sys/fs/cgroup/pids`.
    pub mount_point: PathBuf,
    /// The mount's root inside the hierarchy (mountinfo field 4), usually `/`.
    pub root: String,
    /// cgroup v2 (unified) rather than a v1 `pids` hierarchy.
    pub v2: bool,
}

/// Undoes mountinfo's octal escapes (`\040` for space, ...).
pub(crate) fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Finds the pids hierarchy from /proc/self/mountinfo: a `cgroup` (v1) mount
/// whose super options include `pids`, else a `cgroup2` mount whose
/// `cgroup.controllers` lists `pids`. Mounts of the hierarchy's root are
/// preferred over bind mounts of a sub-tree.
pub fn pids_hierarchy() -> Result<PidsHierarchy, String> {
    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    parse_pids_hierarchy(&info, |p| {
        fs::read_to_string(p.join("cgroup.controllers")).ok()
    })
}

/// [`pids_hierarchy`] on given mountinfo text; `controllers` reads a cgroup2
/// mount's `cgroup.controllers`.
pub fn parse_pids_hierarchy(
    mountinfo: &str,
    controllers: impl Fn(&Path) -> Option<String>,
) -> Result<PidsHierarchy, String> {
    let mut v1 = Vec::new();
    let mut v2 = Vec::new();
    for line in mountinfo.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 5 || post.len() < 3 {
            continue;
        }
        let h = PidsHierarchy {
            mount_point: PathBuf::from(unescape_mountinfo(pre[4])),
            root: unescape_mountinfo(pre[3]),
            v2: post[0] == "cgroup2",
        };
        match post[0] {
            "cgroup" if post[2].split(',').any(|o| o == "pids") => v1.push(h),
            "cgroup2"
                if controllers(&h.mount_point)
                    .is_some_and(|c| c.split_whitespace().any(|c| c == "pids")) =>
            {
                v2.push(h)
            }
            _ => {}
        }
    }
    for list in [v1, v2] {
        if let Some(h) = list.iter().find(|h| h.root == "/").or(list.first()) {
            return Ok(h.clone());
        }
    }
    Err(
        "no cgroup v1 mount with the pids controller and no cgroup2 mount whose \
         cgroup.controllers lists pids in /proc/self/mountinfo"
            .to_string(),
    )
}

static CGROUP_COUNTER: AtomicU64 = AtomicU64::new(0);
const CGROUP_PREFIX: &str = "watchdog-test-";

/// A uniquely named cgroup (`watchdog-test-<pid>-<n>`) in the pids hierarchy
/// with `pids.max` set. `Drop` SIGKILLs every process in it (all of them were
/// put there by the test), waits until it is empty and removes it.
pub struct PidsCgroup {
    hierarchy: PidsHierarchy,
    name: String,
    fs_path: PathBuf,
    /// Parent directories this fixture made (deepest first), removed after
    /// the cgroup itself.
    parents: Vec<PathBuf>,
}

impl PidsCgroup {
    /// Creates the cgroup; panics with the reason if it cannot.
    pub fn new(max: u64) -> Self {
        Self::try_new(max).unwrap_or_else(|e| panic!("cannot create a pids cgroup: {e}"))
    }

    pub fn try_new(max: u64) -> Result<Self, String> {
        let hierarchy = pids_hierarchy()?;
        sweep_stale(&hierarchy.mount_point);
        if hierarchy.v2 {
            enable_pids_v2(&hierarchy.mount_point)?;
        }
        let me = std::process::id();
        loop {
            let n = CGROUP_COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = format!("{CGROUP_PREFIX}{me}-{n}");
            let fs_path = hierarchy.mount_point.join(&name);
            match fs::create_dir(&fs_path) {
                Ok(()) => {
                    let cg = Self {
                        hierarchy,
                        name,
                        fs_path,
                        parents: Vec::new(),
                    };
                    cg.set_max(max)?;
                    return Ok(cg);
                }
                // A leftover of an earlier process with our pid: take the next.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 10_000 => continue,
                Err(e) => return Err(format!("mkdir {}: {e}", fs_path.display())),
            }
        }
    }

    /// A container's cgroup laid out as kubelet's cgroupfs driver does,
    /// below a uniquely named directory of this test:
    /// `watchdog-test-<pid>-<n>/kubepods/burstable/pod<uid>/<container>`,
    /// with `pids.max` on the container. Panics with the reason if it
    /// cannot.
    pub fn new_pod(max: u64) -> Self {
        let top =
            Self::try_new(1 << 20).unwrap_or_else(|e| panic!("cannot create a pids cgroup: {e}"));
        let uid = format!("{:08x}-test-pod", std::process::id());
        let rel = format!("kubepods/burstable/pod{uid}/ctr0");
        let mut parents = Vec::new();
        let mut dir = top.fs_path.clone();
        for part in rel.split('/') {
            dir = dir.join(part);
            if top.hierarchy.v2 {
                enable_pids_v2(dir.parent().expect("has a parent"))
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
            parents.push(dir.clone());
        }
        // The leaf is the cgroup; its parents and the top go after it.
        parents.pop();
        parents.reverse();
        parents.push(top.fs_path.clone());
        let cg = Self {
            hierarchy: top.hierarchy.clone(),
            name: format!("{}/{rel}", top.name),
            fs_path: dir,
            parents,
        };
        // `top` is owned by `cg` now (its directory is removed last).
        std::mem::forget(top);
        cg.set_max(max).unwrap_or_else(|e| panic!("{e}"));
        cg
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn hierarchy(&self) -> &PidsHierarchy {
        &self.hierarchy
    }

    /// The path as the agent reports it: relative to the hierarchy's root,
    /// with a leading slash, e.g. `/watchdog-test-123-0`.
    pub fn path_in_hierarchy(&self) -> String {
        let root = self.hierarchy.root.trim_end_matches('/');
        format!("{root}/{}", self.name)
    }

    /// The directory, e.g. `/sys/fs/cgroup/pids/watchdog-test-123-0`.
    pub fn fs_path(&self) -> &Path {
        &self.fs_path
    }

    /// The `cgroup.procs` file (write a pid to it to move that process here).
    pub fn procs_file(&self) -> PathBuf {
        self.fs_path.join("cgroup.procs")
    }

    pub fn set_max(&self, max: u64) -> Result<(), String> {
        let f = self.fs_path.join("pids.max");
        fs::write(&f, max.to_string()).map_err(|e| format!("write {max} to {}: {e}", f.display()))
    }

    /// Moves process `pid` (one the test started) into this cgroup.
    pub fn add_pid(&self, pid: u32) {
        let f = self.procs_file();
        fs::write(&f, pid.to_string())
            .unwrap_or_else(|e| panic!("cannot add pid {pid} to {}: {e}", f.display()));
    }

    /// Pids in `cgroup.procs`.
    pub fn procs(&self) -> Vec<u32> {
        read_pids(&self.procs_file())
    }

    /// `pids.current`.
    pub fn current(&self) -> Option<u64> {
        fs::read_to_string(self.fs_path.join("pids.current"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The `max` count of `pids.events` (forks refused by this cgroup).
    pub fn events_max(&self) -> Option<u64> {
        let s = fs::read_to_string(self.fs_path.join("pids.events")).ok()?;
        s.lines()
            .find_map(|l| l.strip_prefix("max "))
            .and_then(|v| v.trim().parse().ok())
    }

    fn cleanup(&self) -> Result<(), String> {
        let me = std::process::id();
        let started = Instant::now();
        let budget = Duration::from_secs(10);
        let what = format!("{} to have no processes", self.fs_path.display());
        wait::until(&what, budget, || {
            let pids = self.procs();
            if pids.is_empty() {
                return Ok(());
            }
            for &pid in &pids {
                if pid == me {
                    // Never kill ourselves: move back to the hierarchy's root.
                    let _ = fs::write(
                        self.hierarchy.mount_point.join("cgroup.procs"),
                        pid.to_string(),
                    );
                } else if pid > 1 {
                    let _ = send_signal(pid as i32, libc::SIGKILL);
                }
            }
            Err(pids)
        })?;
        // rmdir can briefly fail with EBUSY while exiting tasks are released.
        let what = format!("rmdir {}", self.fs_path.display());
        wait::until(
            &what,
            budget.saturating_sub(started.elapsed()),
            || match fs::remove_dir(&self.fs_path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            },
        )?;
        for dir in &self.parents {
            match fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("rmdir {}: {e}", dir.display())),
            }
        }
        Ok(())
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        if let Err(e) = self.cleanup() {
            eprintln!("warning: could not clean up cgroup: {e}");
        }
    }
}

fn read_pids(f: &Path) -> Vec<u32> {
    fs::read_to_string(f)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Removes empty `watchdog-test-<pid>-<n>` cgroups left behind by processes
/// that no longer exist (e.g. a bench killed by SIGKILL). rmdir only succeeds
/// on an empty cgroup, so nothing is ever killed here.
fn sweep_stale(mount_point: &Path) {
    let Ok(dir) = fs::read_dir(mount_point) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(CGROUP_PREFIX) else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('-') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir(e.path());
        }
    }
}

/// On cgroup v2 the pids controller must be enabled in the parent's
/// `cgroup.subtree_control` for children to get `pids.max`.
fn enable_pids_v2(parent: &Path) -> Result<(), String> {
    let f = parent.join("cgroup.subtree_control");
    let cur = fs::read_to_string(&f).map_err(|e| format!("read {}: {e}", f.display()))?;
    if cur.split_whitespace().any(|c| c == "pids") {
        return Ok(());
    }
    fs::write(&f, "+pids").map_err(|e| format!("enable +pids in {}: {e}", f.display()))
}

// ---------------------------------------------------------------------------
// Agent
// ---------------------------------------------------------------------------

/// One stdout line of the agent, parsed.
#[derive(Clone, Debug)]
pub struct Record {
    pub value: Value,
    /// When the line was read (monotonic).
    pub at: Instant,
    /// When the line was read (wall clock, to compare with CLOCK_REALTIME
    /// timestamps of other processes).
    pub wall: SystemTime,
}

#[derive(Default)]
struct Shared {
    records: Vec<Record>,
    /// Lines that were not valid JSON (a contract violation).
    bad_lines: Vec<String>,
    stderr: Vec<u8>,
    stdout_eof: bool,
    stderr_eof: bool,
}

type SharedState = Arc<(Mutex<Shared>, Condvar)>;

/// The agent binary running as our child, with its stdout parsed as JSON
/// lines in a background thread and its stderr collected.
pub struct Agent {
    child: Option<ChildGuard>,
    shared: SharedState,
    args: Vec<String>,
    started: Instant,
    /// The `--record` file [`Agent::start_recorded`] chose (removed on drop).
    own_recording: Option<PathBuf>,
}

impl Agent {
    /// Starts [`agent_bin`] with `args` (e.g. `["trace", "--json"]`) and waits
    /// up to 20 s for its `{"type":"ready"}` record. Panics with the agent's
    /// stderr if it does not come.
    pub fn start<S: AsRef<OsStr>>(args: &[S]) -> Self {
        Self::start_with(&agent_bin(), args, Duration::from_secs(20))
    }

    /// [`Agent::start`] with `--record` to a file of its own (removed when
    /// the agent is dropped): what [`Agent::wait_for_poll_after`] reads.
    pub fn start_recorded<S: AsRef<OsStr>>(args: &[S]) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "wd-agent-{}-{}.jsonl",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let mut args: Vec<&OsStr> = args.iter().map(AsRef::as_ref).collect();
        args.extend([OsStr::new("--record"), path.as_os_str()]);
        let mut agent = Self::start(&args);
        agent.own_recording = Some(path);
        agent
    }

    /// [`Agent::start`] with an explicit binary and ready timeout.
    pub fn start_with<S: AsRef<OsStr>>(bin: &Path, args: &[S], ready_timeout: Duration) -> Self {
        Self::try_start_with(bin, args, ready_timeout).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Agent::start_with`] but returns the failure (with the agent's
    /// stderr) instead of panicking.
    pub fn try_start_with<S: AsRef<OsStr>>(
        bin: &Path,
        args: &[S],
        ready_timeout: Duration,
    ) -> Result<Self, String> {
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let args: Vec<String> = args
            .iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        let label = format!("agent `{} {}`", bin.display(), args.join(" "));
        let mut child = ChildGuard::spawn(&mut cmd, &label).map_err(|e| e.to_string())?;
        let shared: SharedState = Arc::default();
        let stdout = child.take_stdout().expect("stdout is piped");
        let stderr = child.child_mut().stderr.take().expect("stderr is piped");
        spawn_stdout_reader(stdout, shared.clone());
        spawn_stderr_reader(stderr, shared.clone());
        let mut agent = Self {
            child: Some(child),
            shared,
            args,
            started: Instant::now(),
            own_recording: None,
        };
        if agent
            .wait_for(|v| v["type"] == "ready", ready_timeout)
            .is_none()
        {
            let exited = lock(&agent.shared.0).stdout_eof;
            if let Some(mut c) = agent.child.take() {
                c.kill_group();
            }
            agent.wait_eof(Duration::from_secs(1));
            let why = if exited { "exited" } else { "timed out" };
            return Err(format!(
                "{label} {why} without a {{\"type\":\"ready\"}} record within {ready_timeout:?}\n{}",
                agent.report()
            ));
        }
        Ok(agent)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(ChildGuard::pid).unwrap_or(0)
    }

    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Time since the agent was spawned.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The first record (in arrival order, including records that arrived
    /// before this call) for which `pred` is true, waiting up to `timeout`.
    /// `None` on timeout or if the agent's stdout closed without a match.
    pub fn wait_for(
        &self,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Option<(Value, Instant)> {
        self.wait_for_record(pred, timeout).map(|r| (r.value, r.at))
    }

    /// Like [`Agent::wait_for`] but returns the whole [`Record`].
    pub fn wait_for_record(
        &self,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Option<Record> {
        let mut seen = 0;
        wait::on_condvar(&self.shared, timeout, |g| {
            if let Some(r) = g.records[seen..].iter().find(|r| pred(&r.value)) {
                return Some(Some(r.clone()));
            }
            seen = g.records.len();
            // Its stdout closed: no match will ever come.
            g.stdout_eof.then_some(None)
        })
        .flatten()
    }

    /// The barrier for absence checks: waits (up to `timeout`, panicking
    /// with the agent's report) until the agent has finished a poll that
    /// began after `since`, and the poll after it. The first one handed every
    /// kernel event submitted before `since` to the engine and sampled the
    /// limits after it; the second began after the first one's records were
    /// written to stdout. Needs `--record` (see [`Agent::recording`]).
    pub fn wait_for_poll_after(&self, since: SystemTime, timeout: Duration) {
        let recording = self
            .recording()
            .unwrap_or_else(|| panic!("a poll barrier needs `--record`: {:?}", self.args));
        let what = "two agent polls (ticks in its recording) after the point in question";
        if let Err(e) = wait::until(what, timeout, || {
            let ticks = wait::ticks_after(&recording, since);
            if ticks.len() >= 2 { Ok(()) } else { Err(ticks) }
        }) {
            panic!("{e}\n{}", self.report());
        }
    }

    /// The file given with `--record`, if any.
    pub fn recording(&self) -> Option<PathBuf> {
        self.args
            .iter()
            .position(|a| a == "--record")
            .and_then(|i| self.args.get(i + 1))
            .map(PathBuf::from)
    }

    /// All records so far.
    pub fn records(&self) -> Vec<Value> {
        lock(&self.shared.0)
            .records
            .iter()
            .map(|r| r.value.clone())
            .collect()
    }

    pub fn full_records(&self) -> Vec<Record> {
        lock(&self.shared.0).records.clone()
    }

    /// stdout lines that were not JSON.
    pub fn bad_lines(&self) -> Vec<String> {
        lock(&self.shared.0).bad_lines.clone()
    }

    /// The agent's stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&lock(&self.shared.0).stderr).into_owned()
    }

    /// A human-readable dump: stderr, non-JSON lines and the last records.
    pub fn report(&self) -> String {
        report_of(&self.args, &self.shared)
    }

    /// Whether the agent process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().is_none())
    }

    /// SIGINT, wait up to 10 s (then SIGKILL), return every record; the last
    /// should be the `{"type":"summary"}`.
    pub fn stop(self) -> Vec<Value> {
        self.stop_full()
            .records
            .iter()
            .map(|r| r.value.clone())
            .collect()
    }

    /// Like [`Agent::stop`] with the exit status and stderr.
    pub fn stop_full(mut self) -> AgentRun {
        let mut child = self
            .child
            .take()
            .expect("agent child present until stopped");
        let mut killed = false;
        if child.try_wait().is_none() {
            let _ = child.signal(libc::SIGINT);
        }
        let status = match child.wait_timeout(Duration::from_secs(10)) {
            Some(s) => Some(s),
            None => {
                killed = true;
                child.kill_group();
                child.try_wait()
            }
        };
        // Children of the agent (if any) must not outlive it either.
        child.kill_group();
        drop(child);
        self.wait_eof(Duration::from_secs(3));
        let g = lock(&self.shared.0);
        AgentRun {
            records: g.records.clone(),
            bad_lines: g.bad_lines.clone(),
            stderr: String::from_utf8_lossy(&g.stderr).into_owned(),
            status,
            killed,
            args: self.args.clone(),
        }
    }

    fn wait_eof(&self, timeout: Duration) {
        wait::on_condvar(&self.shared, timeout, |g| {
            (g.stdout_eof && g.stderr_eof).then_some(())
        });
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill_group();
            drop(child);
            if thread::panicking() {
                self.wait_eof(Duration::from_secs(1));
                eprintln!("{}", self.report());
            }
        }
        if let Some(p) = self.own_recording.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// What [`Agent::stop_full`] returns. Prints the agent's stderr when dropped
/// during a panic (a failing assertion on it).
pub struct AgentRun {
    pub records: Vec<Record>,
    pub bad_lines: Vec<String>,
    pub stderr: String,
    /// `None` if it could not be reaped.
    pub status: Option<ExitStatus>,
    /// Had to be SIGKILLed because SIGINT did not stop it within 10 s.
    pub killed: bool,
    pub args: Vec<String>,
}

impl AgentRun {
    pub fn values(&self) -> Vec<Value> {
        self.records.iter().map(|r| r.value.clone()).collect()
    }

    /// The last record if it is `{"type":"summary"}`.
    pub fn summary(&self) -> Option<&Value> {
        self.records
            .last()
            .map(|r| &r.value)
            .filter(|v| v["type"] == "summary")
    }

    pub fn of_type(&self, t: &str) -> Vec<&Value> {
        self.records
            .iter()
            .map(|r| &r.value)
            .filter(|v| v["type"] == t)
            .collect()
    }

    pub fn report(&self) -> String {
        format_report(&self.args, &self.stderr, &self.bad_lines, &self.records)
    }
}

impl Drop for AgentRun {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.report());
        }
    }
}

fn report_of(args: &[String], shared: &SharedState) -> String {
    let g = lock(&shared.0);
    format_report(
        args,
        &String::from_utf8_lossy(&g.stderr),
        &g.bad_lines,
        &g.records,
    )
}

fn format_report(args: &[String], stderr: &str, bad: &[String], records: &[Record]) -> String {
    let mut s = format!("----- agent `{}` -----\n", args.join(" "));
    s += &format!(
        "stderr ({} bytes):\n{}\n",
        stderr.len(),
        tail(stderr, 20_000)
    );
    if !bad.is_empty() {
        s += &format!("non-JSON stdout lines ({}):\n", bad.len());
        for l in bad.iter().take(20) {
            s += &format!("  {l}\n");
        }
    }
    let skip = records.len().saturating_sub(30);
    s += &format!(
        "records ({}, last {}):\n",
        records.len(),
        records.len() - skip
    );
    for r in &records[skip..] {
        s += &format!("  {}\n", r.value);
    }
    s += "-----";
    s
}

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut i = s.len() - max;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

fn spawn_stdout_reader(stdout: ChildStdout, shared: SharedState) {
    thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let at = Instant::now();
            let wall = SystemTime::now();
            let line = String::from_utf8_lossy(&buf);
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (m, cv) = &*shared;
            let mut g = lock(m);
            match serde_json::from_str::<Value>(line) {
                Ok(value) => g.records.push(Record { value, at, wall }),
                Err(_) => g.bad_lines.push(line.to_string()),
            }
            cv.notify_all();
        }
        let (m, cv) = &*shared;
        lock(m).stdout_eof = true;
        cv.notify_all();
    });
}

fn spawn_stderr_reader(mut stderr: impl Read + Send + 'static, shared: SharedState) {
    thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match stderr.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut g = lock(&shared.0);
                    // Bounded: keep the last 4 MiB.
                    if g.stderr.len() > 4 << 20 {
                        g.stderr.drain(..1 << 20);
                    }
                    g.stderr.extend_from_slice(&buf[..n]);
                }
            }
        }
        let (m, cv) = &*shared;
        lock(m).stderr_eof = true;
        cv.notify_all();
    });
}

// ---------------------------------------------------------------------------
// Fork workload
// ---------------------------------------------------------------------------

/// The python program of [`fork_until_eagain`]. argv: failures wanted, time
/// limit in seconds, pause after each successful fork in seconds (optional).
/// Prints `EAGAIN <unix ns before> <unix ns after>` at the first `EAGAIN`
/// (CLOCK_REALTIME just before the `fork()` call that failed, and once python
/// had the exception: the failure happened in between), `DONE failures=N
/// forked=N` at the end (also on SIGTERM: it kills and reaps its children
/// first, so none is left to init); exit status 0 if EAGAIN was seen, 2 if not, 3 on another error.
pub const FORK_UNTIL_EAGAIN_PY: &str = r#"
import ctypes, os, signal, sys, time
stop = False
def on_term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
want = int(sys.argv[1])
limit = float(sys.argv[2])
interval = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
libc = ctypes.CDLL(None, use_errno=True)
me = os.getpid()
print("START", me, flush=True)
kids = []
first = None
fails = 0
code = 0
deadline = time.monotonic() + limit
while not stop and fails < want and time.monotonic() < deadline:
    before = time.time_ns()
    try:
        pid = os.fork()
    except BlockingIOError:
        if first is None:
            first = before
            print("EAGAIN", before, time.time_ns(), flush=True)
        fails += 1
        time.sleep(0.002)
        continue
    except OSError as e:
        print("ERROR", e.errno, e, flush=True)
        code = 3
        break
    if pid == 0:
        try:
            libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL
            if os.getppid() == me:
                time.sleep(limit + 30)
        finally:
            os._exit(0)
    kids.append(pid)
    if interval > 0:
        time.sleep(interval)
for k in kids:
    try:
        os.kill(k, 9)
    except OSError:
        pass
for k in kids:
    try:
        os.waitpid(k, 0)
    except OSError:
        pass
print("DONE", "failures=%d" % fails, "forked=%d" % len(kids), flush=True)
sys.exit(code if code else (0 if first is not None else 2))
"#;

/// Options for [`fork_until_eagain`].
#[derive(Clone, Debug)]
pub struct ForkOpts {
    /// Stop after this many EAGAIN failures.
    pub failures: u32,
    /// Stop after this long even without EAGAIN.
    pub time_limit: Duration,
    /// Pause after each successful fork (default 0: fill the limit at once).
    pub fork_interval: Duration,
    /// Start already inside this cgroup (its `cgroup.procs` file), before
    /// python runs: `sh -c 'echo $$ > procs; exec python3 ...'`.
    pub cgroup_procs: Option<PathBuf>,
    /// Run as this uid/gid (via `setpriv --reuid --regid --clear-groups`)
    /// with RLIMIT_NPROC (`ulimit -u`) set to `nproc`: `(uid, nproc)`.
    pub as_user: Option<(u32, u64)>,
}

impl Default for ForkOpts {
    fn default() -> Self {
        Self {
            failures: 10,
            time_limit: Duration::from_secs(20),
            fork_interval: Duration::ZERO,
            cgroup_procs: None,
            as_user: None,
        }
    }
}

impl ForkOpts {
    pub fn in_cgroup(mut self, cg: &PidsCgroup) -> Self {
        self.cgroup_procs = Some(cg.procs_file());
        self
    }

    pub fn as_user(mut self, uid: u32, nproc: u64) -> Self {
        self.as_user = Some((uid, nproc));
        self
    }

    pub fn failures(mut self, n: u32) -> Self {
        self.failures = n;
        self
    }

    pub fn time_limit(mut self, d: Duration) -> Self {
        self.time_limit = d;
        self
    }

    /// Pause this long after each successful fork (a slowly filling limit).
    pub fn fork_interval(mut self, d: Duration) -> Self {
        self.fork_interval = d;
        self
    }
}

/// Single-quotes a string for sh.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Output of the workload: (stdout lines not yet consumed by
/// `wait_first_eagain`, every line, stdout closed).
type WorkloadLines = Arc<(Mutex<(VecDeque<String>, Vec<String>, bool)>, Condvar)>;

/// The running python fork workload. `Drop` kills its process group.
pub struct ForkWorkload {
    child: ChildGuard,
    lines: WorkloadLines,
}

/// The end of a [`ForkWorkload`].
#[derive(Clone, Debug)]
pub struct ForkOutcome {
    /// CLOCK_REALTIME ns just before the fork() that first failed with EAGAIN.
    pub first_eagain_ns: Option<u128>,
    pub failures: u32,
    pub forked: u32,
    pub status: Option<ExitStatus>,
    pub output: Vec<String>,
}

/// Starts `/usr/bin/python3` forking sleeping children until it has seen
/// `opts.failures` EAGAIN failures or `opts.time_limit` passes (see
/// [`FORK_UNTIL_EAGAIN_PY`]). The python process's pid is [`ForkWorkload::pid`]
/// (the `sh`/`setpriv` wrappers exec into it).
pub fn fork_until_eagain(opts: &ForkOpts) -> ForkWorkload {
    let py = format!(
        "exec {PYTHON} -c {} {} {} {}",
        sh_quote(FORK_UNTIL_EAGAIN_PY),
        opts.failures,
        opts.time_limit.as_secs_f64(),
        opts.fork_interval.as_secs_f64()
    );
    let mut script = String::new();
    if let Some(procs) = &opts.cgroup_procs {
        script += &format!(
            "echo $$ > {} || exit 97; ",
            sh_quote(&procs.to_string_lossy())
        );
    }
    script += &py;
    let mut cmd = match opts.as_user {
        Some((uid, _)) => {
            let mut c = Command::new(SETPRIV);
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .arg("--clear-groups")
                .args(["/bin/sh", "-c", &script]);
            c
        }
        None => {
            let mut c = Command::new("/bin/sh");
            c.args(["-c", &script]);
            c
        }
    };
    if let Some((_, nproc)) = opts.as_user {
        // `ulimit -u` (dash has no -u): set RLIMIT_NPROC before setpriv runs;
        // rlimits survive the uid switch and exec. Root itself is exempt.
        let lim = libc::rlimit {
            rlim_cur: nproc as libc::rlim_t,
            rlim_max: nproc as libc::rlim_t,
        };
        // SAFETY: setrlimit is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NPROC, &lim) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd.current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child =
        ChildGuard::spawn(&mut cmd, "fork_until_eagain").unwrap_or_else(|e| panic!("{e}"));
    let stdout = child.take_stdout().expect("piped");
    let stderr = child.child_mut().stderr.take().expect("piped");
    let lines: WorkloadLines = Arc::default();
    let l2 = lines.clone();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let mut g = lock(&l2.0);
            g.0.push_back(line.clone());
            g.1.push(line);
            l2.1.notify_all();
        }
        lock(&l2.0).2 = true;
        l2.1.notify_all();
    });
    let l3 = lines.clone();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            lock(&l3.0).1.push(format!("stderr: {line}"));
        }
    });
    ForkWorkload { child, lines }
}

fn parse_eagain(line: &str) -> Option<u128> {
    let mut it = line.split_whitespace();
    (it.next()? == "EAGAIN").then_some(())?;
    it.next()?.parse().ok()
}

impl Drop for ForkWorkload {
    fn drop(&mut self) {
        self.stop_gracefully();
        // Then the ChildGuard SIGKILLs whatever is left of the group.
    }
}

impl ForkWorkload {
    /// SIGTERM to python (not the group): it kills and reaps its children
    /// itself, so that none becomes an orphan zombie waiting for init.
    fn stop_gracefully(&mut self) {
        if self.child.try_wait().is_none() {
            let _ = self.child.signal(libc::SIGTERM);
            self.child.wait_timeout(Duration::from_secs(3));
        }
    }

    /// The python process's pid.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Waits up to `timeout` for the first EAGAIN; the CLOCK_REALTIME ns just
    /// before the fork() call that failed (so latencies measured from it are
    /// upper bounds, by the few microseconds the failing fork took).
    pub fn wait_first_eagain(&self, timeout: Duration) -> Option<u128> {
        wait::on_condvar(&self.lines, timeout, |g| {
            while let Some(l) = g.0.pop_front() {
                if let Some(ns) = parse_eagain(&l) {
                    return Some(Some(ns));
                }
            }
            // Its output ended: no EAGAIN will come.
            g.2.then_some(None)
        })
        .flatten()
    }

    /// Everything it printed so far (stderr lines prefixed `stderr: `).
    pub fn output(&self) -> Vec<String> {
        lock(&self.lines.0).1.clone()
    }

    /// Waits up to `timeout` for it to exit (then kills it) and parses its output.
    pub fn finish(mut self, timeout: Duration) -> ForkOutcome {
        let mut status = self.child.wait_timeout(timeout);
        if status.is_none() {
            self.stop_gracefully();
            self.child.kill_group();
            status = self.child.try_wait();
        }
        // Let the reader drain the pipe.
        wait::on_condvar(&self.lines, Duration::from_secs(2), |g| g.2.then_some(()));
        let output = self.output();
        let mut out = ForkOutcome {
            first_eagain_ns: None,
            failures: 0,
            forked: 0,
            status,
            output,
        };
        for l in &out.output {
            if out.first_eagain_ns.is_none() {
                out.first_eagain_ns = parse_eagain(l);
            }
            if let Some(rest) = l.strip_prefix("DONE ") {
                for kv in rest.split_whitespace() {
                    match kv.split_once('=') {
                        Some(("failures", v)) => out.failures = v.parse().unwrap_or(0),
                        Some(("forked", v)) => out.forked = v.parse().unwrap_or(0),
                        _ => {}
                    }
                }
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------
// Unit tests of the parsers (no privileges needed)
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_v1_pids() {
        let h = parse_pids_hierarchy(HYBRID, |_| Some("hugetlb".into())).unwrap();
        assert_eq!(h.mount_point, PathBuf::from("/sys/fs/cgroup/pids"));
        assert_eq!(h.root, "/");
        assert!(!h.v2);
    }

    #[test]
    fn finds_v2_pids() {
        let info =
            "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        let h = parse_pids_hierarchy(info, |_| Some("cpuset cpu io memory pids".into())).unwrap();
        assert_eq!(h.mount_point, PathBuf::from("/sys/fs/cgroup"));
        assert!(h.v2);
        assert!(parse_pids_hierarchy(info, |_| Some("cpu memory".into())).is_err());
    }

    #[test]
    fn prefers_root_mount_and_unescapes() {
        let info = "\
1 0 0:1 /sub /mnt/a rw - cgroup cgroup rw,pids,cpu
2 0 0:1 / /mnt/with\\040space rw - cgroup cgroup rw,pids,cpu
";
        let h = parse_pids_hierarchy(info, |_| None).unwrap();
        assert_eq!(h.mount_point, PathBuf::from("/mnt/with space"));
    }

    #[test]
    fn parses_eagain_line() {
        assert_eq!(
            parse_eagain("EAGAIN 1700000000123456789 1700000000123556789"),
            Some(1_700_000_000_123_456_789)
        );
        assert_eq!(parse_eagain("DONE failures=3"), None);
    }

    #[test]
    fn sh_quoting() {
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
    }
}
