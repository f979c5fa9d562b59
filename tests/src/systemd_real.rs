//! A real systemd 252 (Debian 12's) as PID 1 of a container of our own
//! dockerd, as kind nodes run it, with clients under runtime names inside.
//!
//! - [`ensure_rootfs`]: a Debian bookworm minbase rootfs tarball with
//!   systemd, systemd-sysv, dbus, runc and busybox-static
//!   (`debootstrap --variant=minbase --include=...`), cached in
//!   [`ROOTFS_TAR`] and built once: again only when it is missing or its
//!   recipe ([`recipe`], kept next to it in [`ROOTFS_RECIPE`]) changed.
//!   Building holds an exclusive `flock` on [`ROOTFS_LOCK`], so concurrent
//!   test processes build it once; the tarball and its recipe are replaced by
//!   `rename`, so a reader never sees half a file. The build directory is
//!   unmounted (debootstrap mounts /proc and /sys in it) and removed, also
//!   when the build fails.
//! - [`RealSystemd`]: a private [`Dockerd`] (its data root on a tmpfs), the
//!   tarball imported into it,
//!   and a container running `/lib/systemd/systemd` with the flags of
//!   `../shared/ENVIRONMENT.md` (`--cap-add ALL --cap-drop SYS_RESOURCE`,
//!   seccomp/apparmor unconfined, private cgroupns, tmpfs on /run, /run/lock
//!   and /tmp), up once `systemctl is-system-running` says `running` or
//!   `degraded`. Then [`PREPARE_SH`] runs inside it: the clients under
//!   runtime names (see [`Client`]) and a busybox bundle for runc.
//!   [`RealSystemd::stop_systemd`] / [`RealSystemd::cont_systemd`] SIGSTOP /
//!   SIGCONT the container's PID 1 (its host pid from `docker inspect`, the
//!   process of our own container). `Drop` thaws the container's cgroups
//!   (a runc killed while it had one frozen leaves tasks that ignore
//!   SIGKILL), kills the clients still waiting and SIGCONTs systemd, then the
//!   [`Dockerd`] guard removes the container, stops dockerd, kills what is
//!   left of its processes and removes its cgroup subtree (children first:
//!   systemd made its own slices below the container's cgroup).
//!
//! What the clients do while systemd is stopped (measured, systemd 252,
//! runc 1.1.5):
//!
//! - [`Client::SystemdRun`], `/usr/local/bin/crun` (comm `crun`), a copy of
//!   `systemd-run`: `crun --scope true` as root connects to
//!   `/run/systemd/private` (the listen backlog accepts), writes `\0AUTH
//!   EXTERNAL 30\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n` (48 bytes, one write) and
//!   waits for `OK` in `ppoll` (`poll_schedule_timeout`).
//! - [`Client::Busctl`], `/usr/local/bin/containerd` (comm `containerd`), a
//!   copy of `busctl`: `containerd --system call org.freedesktop.systemd1
//!   ... GetUnit s dbus.service` through the bus: dbus-daemon answers the
//!   authentication and `Hello` (and sends `NameAcquired`), forwards the call
//!   to the stopped systemd, and the client waits in `ppoll` for a reply.
//! - [`Client::Runc`], `runc --systemd-cgroup run -b /opt/wdt-bundle ID`
//!   (comm `runc`, the container's own runc): through the bus (godbus)
//!   `StartTransientUnit` of `runc-ID.scope` gets no reply; runc's threads
//!   sleep in futex/epoll, its `runc init` child waits on its pipe.
//!
//! All three return once systemd gets SIGCONT.
use std::fs;
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::dockerd::{ALL_CAPS_ARGS, Dockerd, DockerdOpts, skip_unless_docker_prereqs};
use crate::systemd::{descendants, pid_alive, proc_state};
use crate::{ChildGuard, send_signal, skip_unless, wait};

/// Where the rootfs tarball is kept across test runs.
pub const CACHE_DIR: &str = "/var/cache/watchdog-tests";
pub const ROOTFS_TAR: &str = "/var/cache/watchdog-tests/systemd252-rootfs.tar";
/// The [`recipe`] the tarball was built from.
pub const ROOTFS_RECIPE: &str = "/var/cache/watchdog-tests/systemd252-rootfs.recipe";
/// Held (`flock`, exclusive) while the tarball is checked or built.
pub const ROOTFS_LOCK: &str = "/var/cache/watchdog-tests/systemd252-rootfs.lock";
pub const DEBOOTSTRAP: &str = "/usr/sbin/debootstrap";
pub const SUITE: &str = "bookworm";
/// The packages on top of minbase: systemd as PID 1 with its dbus-daemon,
/// runc for the systemd cgroup driver, busybox-static for runc's bundle.
pub const INCLUDE: &str = "systemd,systemd-sysv,dbus,runc,busybox-static";
/// Bump when the build changes in a way the include list does not show.
const RECIPE_VERSION: u32 = 1;
/// A build that takes longer than this is killed (it takes 35-75 s here).
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);

/// Where the bundle for [`Client::Runc`] is inside the container.
pub const BUNDLE: &str = "/opt/wdt-bundle";

/// Run inside the container once systemd is up: the clients under runtime
/// names, the cgroup views made writable, runc's bundle.
pub const PREPARE_SH: &str = r#"set -e
install -m 0755 /usr/bin/systemd-run /usr/local/bin/crun
install -m 0755 /usr/bin/busctl /usr/local/bin/containerd
# runc asks systemd for the scope, then also writes to every cgroup v1
# hierarchy itself; docker mounts them read-only. These are the container's
# own views (private cgroupns): below its cgroup, which our dockerd removes.
grep ' - cgroup ' /proc/self/mountinfo | cut -d' ' -f5 | while read -r m; do
  mount -o remount,bind,rw "$m" || echo "warning: $m stays read-only" >&2
done
mkdir -p /opt/wdt-bundle/rootfs/bin /opt/wdt-bundle/rootfs/proc /opt/wdt-bundle/rootfs/sys /opt/wdt-bundle/rootfs/dev
cp /bin/busybox /opt/wdt-bundle/rootfs/bin/busybox
ln -sf busybox /opt/wdt-bundle/rootfs/bin/true
cd /opt/wdt-bundle
runc spec
sed -i 's/"terminal": true/"terminal": false/; s/^\(\s*\)"sh"$/\1"true"/' config.json
grep -q '"terminal": false' config.json
grep -q '^\s*"true"$' config.json
echo prepared
"#;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// What the cached tarball must have been built from.
pub fn recipe() -> String {
    format!("debootstrap --variant=minbase --include={INCLUDE} {SUITE} (recipe {RECIPE_VERSION})\n")
}

/// The Debian mirror for [`SUITE`]: `$WATCHDOG_DEBIAN_MIRROR`, else the first
/// `deb` source for it in /etc/apt/sources.list.d/*.sources (deb822),
/// *.list or /etc/apt/sources.list.
pub fn debian_mirror() -> Result<String, String> {
    if let Some(m) = std::env::var_os("WATCHDOG_DEBIAN_MIRROR").filter(|m| !m.is_empty()) {
        return Ok(m.to_string_lossy().into_owned());
    }
    let mut files: Vec<PathBuf> = fs::read_dir("/etc/apt/sources.list.d")
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files.push(PathBuf::from("/etc/apt/sources.list"));
    for f in &files {
        let Ok(text) = fs::read_to_string(f) else {
            continue;
        };
        let found = match f.extension().and_then(|e| e.to_str()) {
            Some("sources") => mirror_in_deb822(&text, SUITE),
            Some("list") => mirror_in_one_line(&text, SUITE),
            _ => None,
        };
        if let Some(m) = found {
            return Ok(m);
        }
    }
    Err(format!(
        "no `deb` source for {SUITE} in /etc/apt/sources.list.d/*.sources, *.list or \
         /etc/apt/sources.list (or set WATCHDOG_DEBIAN_MIRROR)"
    ))
}

/// The first URI of an enabled deb822 stanza of type `deb` for `suite`.
pub fn mirror_in_deb822(text: &str, suite: &str) -> Option<String> {
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_owned())
            })
        };
        let has = |name: &str, want: &str| {
            field(name).is_some_and(|v| v.split_whitespace().any(|w| w == want))
        };
        if field("Enabled").is_some_and(|v| v.eq_ignore_ascii_case("no")) {
            continue;
        }
        if has("Types", "deb")
            && has("Suites", suite)
            && let Some(uri) =
                field("URIs").and_then(|v| v.split_whitespace().next().map(str::to_owned))
        {
            return Some(uri);
        }
    }
    None
}

/// The URI of the first `deb [options] URI suite ...` line for `suite`.
pub fn mirror_in_one_line(text: &str, suite: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let l = l.split('#').next()?.trim();
        let rest = l.strip_prefix("deb ")?.trim_start();
        // Options: `[arch=amd64 signed-by=...]`.
        let rest = match rest.strip_prefix('[') {
            Some(r) => r.split_once(']')?.1.trim_start(),
            None => rest,
        };
        let mut w = rest.split_whitespace();
        let (uri, s) = (w.next()?, w.next()?);
        (s == suite).then(|| uri.to_owned())
    })
}

/// Why there is no rootfs tarball.
#[derive(Debug)]
pub enum RootfsError {
    /// A prerequisite is missing (no debootstrap, no mirror): a skip, or a
    /// failure under `WATCHDOG_REQUIRE_KERNEL_TESTS=1`.
    Missing(String),
    /// The build itself failed.
    Failed(String),
}

/// The cached rootfs tarball, built if missing or stale (see the module doc).
pub fn ensure_rootfs() -> Result<PathBuf, RootfsError> {
    use RootfsError::*;
    fs::create_dir_all(CACHE_DIR).map_err(|e| Failed(format!("create {CACHE_DIR}: {e}")))?;
    let _lock = FileLock::exclusive(
        Path::new(ROOTFS_LOCK),
        BUILD_TIMEOUT + Duration::from_secs(60),
    )
    .map_err(Failed)?;
    let want = recipe();
    let fresh = Path::new(ROOTFS_TAR).is_file()
        && fs::read_to_string(ROOTFS_RECIPE).is_ok_and(|r| r == want);
    if fresh {
        return Ok(PathBuf::from(ROOTFS_TAR));
    }
    if !Path::new(DEBOOTSTRAP).exists() {
        return Err(Missing(format!(
            "{DEBOOTSTRAP} is missing (apt-get install debootstrap, or `cargo xtask setup`) \
             and {ROOTFS_TAR} is missing or stale"
        )));
    }
    let mirror = debian_mirror().map_err(Missing)?;
    // We hold the lock: any build directory here is a leftover of a build
    // that was killed.
    if let Ok(rd) = fs::read_dir(CACHE_DIR) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("build-") && e.path().is_dir() {
                drop(BuildDir(e.path()));
            }
        }
    }
    let started = Instant::now();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = BuildDir(Path::new(CACHE_DIR).join(format!("build-{}-{n}", std::process::id())));
    let root = dir.0.join("root");
    let log_path = dir.0.join("debootstrap.out");
    fs::create_dir_all(&dir.0).map_err(|e| Failed(format!("create {}: {e}", dir.0.display())))?;
    let log = fs::File::create(&log_path).map_err(|e| Failed(format!("create log: {e}")))?;
    let log2 = log.try_clone().map_err(|e| Failed(e.to_string()))?;
    eprintln!("building {ROOTFS_TAR}: debootstrap {SUITE} from {mirror} (about a minute)");
    let mut cmd = Command::new(DEBOOTSTRAP);
    cmd.arg("--variant=minbase")
        .arg(format!("--include={INCLUDE}"))
        .arg(SUITE)
        .arg(&root)
        .arg(&mirror)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    let mut child =
        ChildGuard::spawn(&mut cmd, "debootstrap").map_err(|e| Failed(e.to_string()))?;
    let status = child.wait_timeout(BUILD_TIMEOUT);
    drop(child); // kills its group if it is still running
    let tail = || {
        let mut s = tail_lines(&fs::read_to_string(&log_path).unwrap_or_default(), 20);
        s += &tail_lines(
            &fs::read_to_string(root.join("debootstrap/debootstrap.log")).unwrap_or_default(),
            20,
        );
        s
    };
    match status {
        Some(s) if s.success() => {}
        Some(s) => return Err(Failed(format!("debootstrap failed ({s}):\n{}", tail()))),
        None => {
            return Err(Failed(format!(
                "debootstrap did not finish within {BUILD_TIMEOUT:?}:\n{}",
                tail()
            )));
        }
    }
    // It unmounts /proc and /sys itself on success; make sure.
    dir.unmount_below();
    if !mounts_below(&dir.0).is_empty() {
        return Err(Failed(format!(
            "mounts left below {}: {:?}",
            dir.0.display(),
            mounts_below(&dir.0)
        )));
    }
    for f in [
        "usr/sbin/runc",
        "lib/systemd/systemd",
        "usr/bin/systemd-run",
        "usr/bin/busctl",
        "bin/busybox",
    ] {
        if !root.join(f).exists() {
            return Err(Failed(format!("the rootfs has no /{f}:\n{}", tail())));
        }
    }
    let tmp = PathBuf::from(format!("{ROOTFS_TAR}.tmp-{}-{n}", std::process::id()));
    let st = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["--numeric-owner", "-cf"])
        .arg(&tmp)
        .arg(".")
        .status()
        .map_err(|e| Failed(format!("tar: {e}")));
    match st {
        Ok(s) if s.success() => {}
        other => {
            let _ = fs::remove_file(&tmp);
            return Err(Failed(format!(
                "tar of {} failed: {other:?}",
                root.display()
            )));
        }
    }
    let recipe_tmp = PathBuf::from(format!("{ROOTFS_RECIPE}.tmp-{}-{n}", std::process::id()));
    let installed = fs::rename(&tmp, ROOTFS_TAR)
        .and_then(|()| fs::write(&recipe_tmp, &want))
        .and_then(|()| fs::rename(&recipe_tmp, ROOTFS_RECIPE));
    let _ = fs::remove_file(&tmp);
    let _ = fs::remove_file(&recipe_tmp);
    installed.map_err(|e| Failed(format!("install {ROOTFS_TAR}: {e}")))?;
    eprintln!("built {ROOTFS_TAR} in {:?}", started.elapsed());
    Ok(PathBuf::from(ROOTFS_TAR))
}

fn tail_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let mut out = lines[lines.len().saturating_sub(n)..].join("\n");
    out.push('\n');
    out
}

/// Mount points at or below `dir` (this mount namespace), deepest first.
fn mounts_below(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    let mut points: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(crate::unescape_mountinfo))
        .filter(|p| p == &prefix || p.starts_with(&format!("{prefix}/")))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points
}

/// A debootstrap target: `Drop` detaches every mount below it, then removes
/// it, never while something is still mounted there (a bind mount of /dev
/// or /proc would lose files of the host).
struct BuildDir(PathBuf);

impl BuildDir {
    fn unmount_below(&self) {
        for p in mounts_below(&self.0) {
            if let Ok(c) = std::ffi::CString::new(p) {
                // SAFETY: a valid C string; MNT_DETACH does not block.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

impl Drop for BuildDir {
    fn drop(&mut self) {
        self.unmount_below();
        let left = mounts_below(&self.0);
        if left.is_empty() {
            let _ = fs::remove_dir_all(&self.0);
        } else {
            eprintln!(
                "warning: not removing {}: still mounted there: {left:?}",
                self.0.display()
            );
        }
    }
}

/// An exclusive `flock` on a file, released on drop.
struct FileLock(fs::File);

impl FileLock {
    fn exclusive(path: &Path, timeout: Duration) -> Result<Self, String> {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| format!("open {}: {e}", path.display()))?;
        let what = format!(
            "an exclusive lock on {} (another test process builds the rootfs)",
            path.display()
        );
        wait::until_every(&what, timeout, Duration::from_millis(200), || {
            // SAFETY: a valid fd of ours.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error().to_string())
            }
        })?;
        Ok(Self(f))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: a valid fd of ours.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// Root, a private dockerd's prerequisites and the rootfs tarball (built if
/// needed). `None` after printing why the test is skipped; panics when the
/// build fails, or when skipping is forbidden.
pub fn skip_unless_real_systemd_prereqs() -> Option<PathBuf> {
    if !skip_unless_docker_prereqs() {
        return None;
    }
    match ensure_rootfs() {
        Ok(p) => Some(p),
        Err(RootfsError::Missing(why)) => {
            skip_unless(false, &why);
            None
        }
        Err(RootfsError::Failed(why)) => panic!("cannot build the systemd 252 rootfs: {why}"),
    }
}

// ---------------------------------------------------------------------------
// The container
// ---------------------------------------------------------------------------

/// The clients prepared inside the container, under runtime names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    /// `/usr/local/bin/crun`, a copy of `systemd-run`: `crun --scope true`
    /// on `/run/systemd/private` (sd-bus).
    SystemdRun,
    /// `/usr/local/bin/containerd`, a copy of `busctl`: `GetUnit` of
    /// systemd1 through the system bus (sd-bus).
    Busctl,
    /// The container's `runc --systemd-cgroup run` of [`BUNDLE`] (godbus,
    /// through the bus: `StartTransientUnit`).
    Runc,
}

impl Client {
    /// The comm the kernel gives it (the first 15 bytes of the exec'd name).
    pub fn comm(self) -> &'static str {
        match self {
            Self::SystemdRun => "crun",
            Self::Busctl => "containerd",
            Self::Runc => "runc",
        }
    }

    /// The socket it talks to systemd on, as the agent names it.
    pub fn socket(self) -> &'static str {
        match self {
            Self::SystemdRun => "/run/systemd/private",
            Self::Busctl | Self::Runc => "/run/dbus/system_bus_socket",
        }
    }

    /// Its command line; `n` makes names unique (units, container ids).
    pub fn argv(self, n: u64) -> Vec<String> {
        match self {
            Self::SystemdRun => vec![
                "crun".into(),
                "--scope".into(),
                format!("--unit=wdt-real-{n}.scope"),
                "true".into(),
            ],
            Self::Busctl => [
                "containerd",
                "--system",
                "call",
                "org.freedesktop.systemd1",
                "/org/freedesktop/systemd1",
                "org.freedesktop.systemd1.Manager",
                "GetUnit",
                "s",
                "dbus.service",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            Self::Runc => vec![
                "runc".into(),
                "--systemd-cgroup".into(),
                "run".into(),
                "-b".into(),
                BUNDLE.into(),
                format!("wdt-real-{n}"),
            ],
        }
    }

    /// Whether a process's command line is this client's (not, for runc,
    /// its `runc init` child).
    fn matches_cmdline(self, cmdline: &str) -> bool {
        match self {
            Self::SystemdRun => cmdline.contains("--scope"),
            Self::Busctl => cmdline.contains("GetUnit"),
            Self::Runc => cmdline.contains("--systemd-cgroup"),
        }
    }
}

/// The running container with systemd as its PID 1 (see the module doc).
pub struct RealSystemd {
    id: String,
    systemd_pid: u32,
    pid_ns: String,
    stopped: bool,
    /// Dropped last: removes the container and everything below it.
    dockerd: Dockerd,
}

impl RealSystemd {
    /// Starts our dockerd, imports `rootfs_tar`, runs systemd and waits (up
    /// to 60 s) until it is up, then prepares the clients.
    pub fn start(rootfs_tar: &Path) -> Result<Self, String> {
        let t0 = Instant::now();
        // The 250 MB image on a tmpfs: seconds faster to import and to remove.
        let mut dockerd = Dockerd::start_with(&DockerdOpts {
            tmpfs_data_root: true,
            ..DockerdOpts::default()
        })?;
        let image = format!(
            "wd-systemd252:{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        dockerd.docker_ok(&["import", &rootfs_tar.to_string_lossy(), &image], 120)?;
        let t_import = t0.elapsed();
        let mut args = ALL_CAPS_ARGS.to_vec();
        args.extend_from_slice(&[
            "--cgroupns",
            "private",
            "-e",
            "container=docker",
            "--tmpfs",
            "/run",
            "--tmpfs",
            "/run/lock",
            "--tmpfs",
            "/tmp",
            &image,
            "/lib/systemd/systemd",
        ]);
        let id = dockerd.run_detached(&args)?;
        let systemd_pid = dockerd.container_pid(&id)?;
        let comm = fs::read_to_string(format!("/proc/{systemd_pid}/comm")).unwrap_or_default();
        if comm.trim() != "systemd" {
            return Err(format!(
                "the container's PID 1 (host pid {systemd_pid}) is {comm:?}, not systemd"
            ));
        }
        let pid_ns = fs::read_link(format!("/proc/{systemd_pid}/ns/pid"))
            .map_err(|e| format!("pid namespace of {systemd_pid}: {e}"))?
            .to_string_lossy()
            .into_owned();
        let me = Self {
            id,
            systemd_pid,
            pid_ns,
            stopped: false,
            dockerd,
        };
        let up = wait::until_every(
            "`systemctl is-system-running` in the container to say running or degraded",
            Duration::from_secs(60),
            Duration::from_millis(200),
            || {
                let out = me.exec(&["systemctl", "is-system-running"], 10);
                let state = match &out {
                    Ok(o) => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
                    Err(e) => e.to_string(),
                };
                match state.as_str() {
                    "running" | "degraded" => Ok(state),
                    _ if !pid_alive(systemd_pid) => Ok(format!("dead: {state}")),
                    _ => Err(state),
                }
            },
        )
        .map_err(|e| format!("{e}\n{}", me.logs()))?;
        if up.starts_with("dead") {
            return Err(format!(
                "systemd exited while booting ({up}):\n{}",
                me.logs()
            ));
        }
        let t_up = t0.elapsed();
        let prepared = me.exec_ok(&["sh", "-c", PREPARE_SH], 30)?;
        if !prepared.contains("prepared") {
            return Err(format!("prepare script: {prepared}"));
        }
        eprintln!(
            "systemd 252 up as host pid {systemd_pid} ({up}) in container {}: \
             dockerd + import {t_import:?}, up after {t_up:?}, prepared after {:?}",
            &me.id[..12],
            t0.elapsed()
        );
        Ok(me)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The host pid of the container's systemd (its PID 1).
    pub fn systemd_pid(&self) -> u32 {
        self.systemd_pid
    }

    pub fn dockerd(&self) -> &Dockerd {
        &self.dockerd
    }

    /// `docker exec <id> args...` under `timeout -s KILL`.
    pub fn exec(&self, args: &[&str], timeout_secs: u64) -> io::Result<std::process::Output> {
        let mut full = vec!["exec", self.id.as_str()];
        full.extend_from_slice(args);
        self.dockerd.docker(&full, timeout_secs)
    }

    /// [`RealSystemd::exec`] that must succeed; stdout and stderr.
    pub fn exec_ok(&self, args: &[&str], timeout_secs: u64) -> Result<String, String> {
        let out = self
            .exec(args, timeout_secs)
            .map_err(|e| format!("docker exec {args:?}: {e}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!(
                "docker exec {args:?} failed ({}): {text}",
                out.status
            ))
        }
    }

    /// The container's log (systemd's console) and dockerd's.
    pub fn logs(&self) -> String {
        let ctr = self
            .dockerd
            .docker(&["logs", "--tail", "40", &self.id], 10)
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_default();
        format!(
            "container log:\n{ctr}\ndockerd log:\n{}",
            self.dockerd.log_tail()
        )
    }

    /// SIGSTOP the container's systemd (our own container's PID 1) and wait
    /// until it is stopped.
    pub fn stop_systemd(&mut self) -> Result<(), String> {
        self.check_systemd()?;
        self.stopped = true;
        send_signal(self.systemd_pid as i32, libc::SIGSTOP)
            .map_err(|e| format!("SIGSTOP systemd: {e}"))?;
        wait::until(
            "the container's systemd to be stopped",
            Duration::from_secs(5),
            || match proc_state(self.systemd_pid) {
                Some('T') => Ok(()),
                s => Err(s),
            },
        )?;
        Ok(())
    }

    /// SIGCONT it and wait until it runs again.
    pub fn cont_systemd(&mut self) -> Result<(), String> {
        self.check_systemd()?;
        send_signal(self.systemd_pid as i32, libc::SIGCONT)
            .map_err(|e| format!("SIGCONT systemd: {e}"))?;
        self.stopped = false;
        wait::until(
            "the container's systemd to run again",
            Duration::from_secs(5),
            || match proc_state(self.systemd_pid) {
                Some('T') => Err('T'),
                _ => Ok(()),
            },
        )?;
        Ok(())
    }

    /// The pid is still our container's systemd (not reused).
    fn check_systemd(&self) -> Result<(), String> {
        let comm =
            fs::read_to_string(format!("/proc/{}/comm", self.systemd_pid)).unwrap_or_default();
        let ns = fs::read_link(format!("/proc/{}/ns/pid", self.systemd_pid))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        if comm.trim() == "systemd" && ns == self.pid_ns {
            Ok(())
        } else {
            Err(format!(
                "host pid {} is no longer the container's systemd ({comm:?}, {ns})",
                self.systemd_pid
            ))
        }
    }

    /// Host pids of the live processes in the container's pid namespace.
    pub fn processes(&self) -> Vec<u32> {
        let Ok(rd) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|p| {
                fs::read_link(format!("/proc/{p}/ns/pid"))
                    .is_ok_and(|l| l.to_string_lossy() == self.pid_ns)
            })
            .filter(|&p| pid_alive(p))
            .collect()
    }

    /// Runs `client` to completion with systemd answering; its output.
    pub fn run_client(&self, client: Client) -> Result<String, String> {
        let argv = client.argv(COUNTER.fetch_add(1, Ordering::Relaxed));
        let mut args = vec!["timeout", "-s", "KILL", "20"];
        args.extend(argv.iter().map(String::as_str));
        self.exec_ok(&args, 30)
    }

    /// Starts `client` with `docker exec` (ours, under `timeout -s KILL`;
    /// inside, under `timeout -s KILL` too) and waits (up to 10 s) until
    /// it runs in the container; does not wait for it to finish.
    pub fn spawn_client(&self, client: Client) -> Result<RunningClient, String> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let out =
            std::env::temp_dir().join(format!("wd-real-client-{}-{n}.out", std::process::id()));
        let f = fs::File::create(&out).map_err(|e| format!("create {}: {e}", out.display()))?;
        let f2 = f.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new("timeout");
        cmd.args([
            "-s",
            "KILL",
            "90",
            &which_docker(),
            "-H",
            &self.dockerd.host(),
            "exec",
        ])
        .arg(&self.id)
        .args(["timeout", "-s", "KILL", "80"])
        .args(client.argv(n))
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(f)
        .stderr(f2);
        let guard = ChildGuard::spawn(&mut cmd, &format!("docker exec {client:?}"))
            .map_err(|e| e.to_string())?;
        let mut rc = RunningClient {
            client,
            guard,
            out,
            host_pid: 0,
            appeared: Instant::now(),
        };
        let what = format!("{client:?} ({}) to run in the container", client.comm());
        let pid = wait::until(&what, Duration::from_secs(10), || {
            if let Some(s) = rc.guard.try_wait() {
                return Ok(Err(format!("docker exec ended ({s}): {}", rc.output())));
            }
            let found = self.processes().into_iter().find(|&p| {
                let comm = fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
                comm.trim() == client.comm() && client.matches_cmdline(&cmdline(p))
            });
            found.map(Ok).ok_or("not yet")
        })??;
        rc.host_pid = pid;
        rc.appeared = Instant::now();
        Ok(rc)
    }
}

impl Drop for RealSystemd {
    fn drop(&mut self) {
        // A runc killed while it had the container's cgroup frozen leaves
        // it frozen, and frozen tasks ignore SIGKILL: thaw everything below
        // our dockerd's cgroup parent (named like its exec root).
        let parent = self
            .dockerd
            .exec_root()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        if let Some(p) = &parent {
            crate::systemd::thaw_slice(p);
        }
        if self.stopped && self.check_systemd().is_ok() {
            // Clients still waiting die first, so that none goes on (and
            // freezes a cgroup) once systemd answers: every process of our
            // container's pid namespace but its PID 1.
            for p in self.processes() {
                if p != self.systemd_pid {
                    let _ = send_signal(p as i32, libc::SIGKILL);
                }
            }
            // Never leave it stopped.
            let _ = send_signal(self.systemd_pid as i32, libc::SIGCONT);
        }
        if let Some(p) = &parent {
            crate::systemd::thaw_slice(p);
        }
        // Then `self.dockerd` drops: the container, dockerd, their
        // processes, mounts and cgroup subtree.
    }
}

fn which_docker() -> String {
    ["/usr/local/bin/docker", "/usr/bin/docker"]
        .iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or(&"docker")
        .to_string()
}

/// `/proc/<pid>/cmdline` with spaces between the arguments.
pub fn cmdline(pid: u32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            String::from_utf8_lossy(&c)
                .trim_end_matches('\0')
                .replace('\0', " ")
        })
        .unwrap_or_default()
}

/// Where a process sleeps: state, wchan and `/proc/<pid>/syscall` (number
/// and first arguments), e.g. `S poll_schedule_timeout.constprop.0 271 ...`.
pub fn blocked_in(pid: u32) -> String {
    let state = proc_state(pid)
        .map(String::from)
        .unwrap_or_else(|| "gone".into());
    let wchan = fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
    let sys = fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
    let sys: Vec<&str> = sys.split_whitespace().take(3).collect();
    format!("{state} {wchan} syscall {}", sys.join(" "))
}

/// A client started by [`RealSystemd::spawn_client`]. `Drop` kills our
/// `docker exec`; the process in the container goes with the container.
pub struct RunningClient {
    client: Client,
    guard: ChildGuard,
    out: PathBuf,
    host_pid: u32,
    appeared: Instant,
}

impl RunningClient {
    pub fn client(&self) -> Client {
        self.client
    }

    /// Its host pid (what the agent reports).
    pub fn pid(&self) -> u32 {
        self.host_pid
    }

    /// When it was first seen running: before it sent its request.
    pub fn appeared(&self) -> Instant {
        self.appeared
    }

    /// What it and `docker exec` printed so far.
    pub fn output(&self) -> String {
        fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Where it sleeps now ([`blocked_in`]), with its threads' for a
    /// multi-threaded client (runc).
    pub fn blocked_in(&self) -> String {
        let mut s = blocked_in(self.host_pid);
        let tasks: Vec<u32> = fs::read_dir(format!("/proc/{}/task", self.host_pid))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        if tasks.len() > 1 {
            let wchans: Vec<String> = tasks
                .iter()
                .map(|t| {
                    fs::read_to_string(format!("/proc/{}/task/{t}/wchan", self.host_pid))
                        .unwrap_or_default()
                })
                .collect();
            s += &format!(" (threads: {})", wchans.join(","));
        }
        let kids: Vec<String> = descendants(self.host_pid)
            .into_iter()
            .map(|k| {
                format!(
                    "{k} {} {}",
                    fs::read_to_string(format!("/proc/{k}/comm"))
                        .unwrap_or_default()
                        .trim(),
                    blocked_in(k)
                )
            })
            .collect();
        if !kids.is_empty() {
            s += &format!(" [children: {}]", kids.join("; "));
        }
        s
    }

    /// Whether the client process still runs (in the container).
    pub fn running(&self) -> bool {
        pid_alive(self.host_pid)
    }

    /// Waits up to `timeout` for `docker exec` to return; its status (the
    /// client's exit status).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.guard.wait_timeout(timeout)
    }
}

impl Drop for RunningClient {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_from_deb822() {
        let text = "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\n\
                    URIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n\
                    Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
                    Types: deb\nURIs: http://deb.debian.org/debian-security\n\
                    Suites: bookworm-security\nComponents: main\n";
        assert_eq!(
            mirror_in_deb822(text, "bookworm").as_deref(),
            Some("http://deb.debian.org/debian")
        );
        assert_eq!(mirror_in_deb822(text, "trixie"), None);
        let disabled = "Enabled: no\nTypes: deb\nURIs: http://x/debian\nSuites: bookworm\n";
        assert_eq!(mirror_in_deb822(disabled, "bookworm"), None);
        let src = "Types: deb-src\nURIs: http://x/debian\nSuites: bookworm\n";
        assert_eq!(mirror_in_deb822(src, "bookworm"), None);
    }

    #[test]
    fn mirror_from_one_line_format() {
        let text = "# deb http://old/debian bookworm main\n\
                    deb-src http://src/debian bookworm main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://m/debian bookworm main contrib\n";
        assert_eq!(
            mirror_in_one_line(text, "bookworm").as_deref(),
            Some("http://m/debian")
        );
        assert_eq!(
            mirror_in_one_line("deb http://a/debian bookworm-updates main\n", "bookworm"),
            None
        );
    }

    #[test]
    fn clients_have_runtime_comms() {
        for c in [Client::SystemdRun, Client::Busctl, Client::Runc] {
            let argv = c.argv(7);
            // comm = the first 15 bytes of the exec'd file's name.
            assert_eq!(&argv[0][..argv[0].len().min(15)], c.comm());
            assert!(c.matches_cmdline(&argv.join(" ")), "{c:?}");
        }
        assert!(!Client::Runc.matches_cmdline("runc init"));
        assert!(recipe().contains(INCLUDE));
    }
}
