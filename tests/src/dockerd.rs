//! [`Dockerd`]: a private Docker daemon of the test's own (unique data root,
//! exec root, pid file and socket; no bridge, no iptables), with a
//! busybox-static image imported from a rootfs tarball (no registry needed).
//!
//! Every docker CLI call runs under `timeout -s KILL` because a storage hang
//! makes dockerd block in the kernel. `Drop` removes the containers it
//! started, stops dockerd, SIGKILLs what is left of the processes this daemon
//! started (found by our unique exec root on their command line: its
//! containerd and shims), and unmounts what it left under its directories.
//!
//! Drop order matters with a [`crate::fuse::HangingFuse`]: declare the
//! `Dockerd` first so that the FUSE guard drops (and aborts) before it.
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::{ChildGuard, TmpfsMount, skip_unless, skip_unless_root, wait};

pub const DOCKERD: &str = "/usr/sbin/dockerd";
pub const BUSYBOX: &str = "/usr/bin/busybox";
const NSENTER: &str = "/usr/bin/nsenter";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// `docker run` arguments for a container with every capability this
/// sandbox allows: `--privileged` fails here ("unable to apply caps": the
/// bounding set lacks CAP_SYS_RESOURCE), so all but that one, and no
/// seccomp or AppArmor profile.
pub const ALL_CAPS_ARGS: [&str; 8] = [
    "--cap-add",
    "ALL",
    "--cap-drop",
    "SYS_RESOURCE",
    "--security-opt",
    "seccomp=unconfined",
    "--security-opt",
    "apparmor=unconfined",
];

/// Root, dockerd, a docker CLI, busybox-static, `timeout`.
pub fn skip_unless_docker_prereqs() -> bool {
    if !skip_unless_root() {
        return false;
    }
    for (bin, pkg) in [
        (DOCKERD, "docker.io"),
        (BUSYBOX, "busybox-static"),
        ("/usr/bin/timeout", "coreutils"),
    ] {
        if !skip_unless(
            Path::new(bin).exists(),
            &format!("{bin} is missing (apt-get install {pkg})"),
        ) {
            return false;
        }
    }
    skip_unless(
        which_docker().is_some(),
        "no docker CLI on PATH (apt-get install docker.io)",
    )
}

fn which_docker() -> Option<PathBuf> {
    ["/usr/local/bin/docker", "/usr/bin/docker"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Options of [`Dockerd::start_with`] (the default is what [`Dockerd::start`] does).
#[derive(Clone, Debug, Default)]
pub struct DockerdOpts {
    /// Start dockerd in the mount namespace of this process
    /// (`nsenter -t <pid> -m -- dockerd ...`), e.g. the holder of a
    /// [`crate::systemd::PrivateNs`]. Its containerd, shims and runc then live
    /// there too; `Drop` unmounts what it left in that namespace as well.
    pub mount_ns_of: Option<u32>,
    /// Extra dockerd arguments, e.g. `--exec-opt native.cgroupdriver=systemd`.
    pub extra_args: Vec<String>,
    /// Put the data root on a tmpfs of its own (unmounted at drop): for big
    /// images, whose layers take seconds to write and 10-25 s to delete on
    /// this machine's disk (ext4 with online discard). Not with `mount_ns_of`.
    pub tmpfs_data_root: bool,
}

/// A running private dockerd.
pub struct Dockerd {
    tag: String,
    dir: PathBuf,
    data_root: PathBuf,
    exec_root: PathBuf,
    sock: PathBuf,
    docker: PathBuf,
    daemon: Option<ChildGuard>,
    containers: Vec<String>,
    image: Option<String>,
    mount_ns_of: Option<u32>,
    /// Our own cgroup parent (cgroupfs driver): its directories are removed
    /// in every hierarchy at drop, instead of leaving dockerd's `/docker`.
    cgroup_parent: Option<String>,
}

impl Dockerd {
    /// Starts dockerd and waits (up to 30 s) until it answers `docker version`.
    pub fn start() -> Result<Self, String> {
        Self::start_with(&DockerdOpts::default())
    }

    /// [`Dockerd::start`] with options.
    pub fn start_with(opts: &DockerdOpts) -> Result<Self, String> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tag = format!("wd-dd-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(&tag);
        // Short: containerd's socket path must fit in sun_path (108 bytes).
        let exec_root = PathBuf::from("/run").join(&tag);
        let data_root = dir.join("data");
        let sock = exec_root.join("docker.sock");
        for d in [&dir, &data_root, &exec_root] {
            fs::create_dir_all(d).map_err(|e| format!("create {}: {e}", d.display()))?;
        }
        let docker = which_docker().ok_or("no docker CLI found")?;
        let tmpfs = if opts.tmpfs_data_root {
            if opts.mount_ns_of.is_some() {
                return Err("tmpfs_data_root with mount_ns_of is not supported".into());
            }
            Some(TmpfsMount::new(&data_root, "mode=0711")?)
        } else {
            None
        };
        let log = fs::File::create(dir.join("dockerd.log"))
            .map_err(|e| format!("create dockerd.log: {e}"))?;
        let mut cmd = match opts.mount_ns_of {
            Some(pid) => {
                let mut c = Command::new(NSENTER);
                c.args(["-t", &pid.to_string(), "-m", "--", DOCKERD])
                    .current_dir("/");
                c
            }
            None => Command::new(DOCKERD),
        };
        cmd.args([
            "--iptables=false",
            "--ip-forward=false",
            "--ip-masq=false",
            "--bridge=none",
            "--storage-driver=overlay2",
        ])
        .arg("--data-root")
        .arg(&data_root)
        .arg("--exec-root")
        .arg(&exec_root)
        .arg("--pidfile")
        .arg(dir.join("dockerd.pid"))
        .arg("-H")
        .arg(format!("unix://{}", sock.display()))
        .args(&opts.extra_args);
        let cgroup_parent = (!opts
            .extra_args
            .iter()
            .any(|a| a.starts_with("--cgroup-parent")))
        .then(|| tag.clone());
        if let Some(p) = &cgroup_parent {
            cmd.arg("--cgroup-parent").arg(format!("/{p}"));
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        let daemon =
            ChildGuard::spawn(&mut cmd, &format!("dockerd {tag}")).map_err(|e| e.to_string())?;
        // From here on `Drop` unmounts it with the rest under the data root.
        std::mem::forget(tmpfs);
        let mut me = Self {
            tag,
            dir,
            data_root,
            exec_root,
            sock,
            docker,
            daemon: Some(daemon),
            containers: Vec::new(),
            image: None,
            mount_ns_of: opts.mount_ns_of,
            cgroup_parent,
        };
        let answered = wait::until_every(
            "dockerd to answer `docker version`",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                if me.sock.exists()
                    && me
                        .docker(&["version", "--format", "{{.Server.Version}}"], 5)
                        .is_ok_and(|o| o.status.success())
                {
                    return Ok(Ok(()));
                }
                match me.daemon.as_mut().and_then(ChildGuard::try_wait) {
                    Some(s) => Ok(Err(format!("dockerd exited ({s}) at start"))),
                    None => Err("no answer"),
                }
            },
        );
        match answered {
            Ok(Ok(())) => Ok(me),
            Ok(Err(e)) => Err(format!("{e}:\n{}", me.log_tail())),
            Err(e) => Err(format!("{e}:\n{}", me.log_tail())),
        }
    }

    pub fn pid(&self) -> u32 {
        self.daemon.as_ref().map(ChildGuard::pid).unwrap_or(0)
    }

    /// `unix:///run/wd-dd-.../docker.sock`
    /// The cgroup parent of this dockerd's containers (a directory of its
    /// own in every hierarchy, removed with everything below at drop).
    pub fn cgroup_parent(&self) -> Option<&str> {
        self.cgroup_parent.as_deref()
    }

    pub fn host(&self) -> String {
        format!("unix://{}", self.sock.display())
    }

    pub fn exec_root(&self) -> &Path {
        &self.exec_root
    }

    pub fn data_root(&self) -> &Path {
        &self.data_root
    }

    pub fn log_tail(&self) -> String {
        let s = fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Runs `docker -H <ours> args...` under `timeout -s KILL <secs>`.
    pub fn docker(&self, args: &[&str], timeout_secs: u64) -> io::Result<Output> {
        Command::new("timeout")
            .args(["-s", "KILL", &timeout_secs.to_string()])
            .arg(&self.docker)
            .arg("-H")
            .arg(self.host())
            .args(args)
            .stdin(Stdio::null())
            .output()
    }

    /// Like [`Dockerd::docker`] but requires success; returns trimmed stdout.
    pub fn docker_ok(&self, args: &[&str], timeout_secs: u64) -> Result<String, String> {
        let out = self
            .docker(args, timeout_secs)
            .map_err(|e| format!("docker {args:?}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "docker {args:?} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// A busybox-static image (imported once per daemon); returns its name.
    pub fn busybox_image(&mut self) -> Result<String, String> {
        if let Some(i) = &self.image {
            return Ok(i.clone());
        }
        let rootfs = self.dir.join("rootfs");
        let bin = rootfs.join("bin");
        fs::create_dir_all(&bin).map_err(|e| format!("create {}: {e}", bin.display()))?;
        for d in ["tmp", "proc", "sys", "dev", "etc", "data"] {
            let _ = fs::create_dir_all(rootfs.join(d));
        }
        fs::copy(BUSYBOX, bin.join("busybox")).map_err(|e| format!("copy busybox: {e}"))?;
        let list = Command::new(BUSYBOX)
            .arg("--list")
            .output()
            .map_err(|e| format!("busybox --list: {e}"))?;
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            let applet = applet.trim();
            if applet.is_empty() || applet == "busybox" || applet.contains('/') {
                continue;
            }
            let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
        }
        let tar = self.dir.join("rootfs.tar");
        let st = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .map_err(|e| format!("tar: {e}"))?;
        if !st.success() {
            return Err(format!("tar of {} failed: {st}", rootfs.display()));
        }
        let name = format!("{}:busybox", self.tag);
        self.docker_ok(&["import", &tar.to_string_lossy(), &name], 60)?;
        self.image = Some(name.clone());
        Ok(name)
    }

    /// `docker run -d <args...>`; remembers the container for cleanup.
    pub fn run_detached(&mut self, args: &[&str]) -> Result<String, String> {
        let mut full = vec!["run", "-d", "--network", "none"];
        full.extend_from_slice(args);
        let id = self.docker_ok(&full, 60)?;
        self.containers.push(id.clone());
        Ok(id)
    }

    /// Host pid of a container's init (`docker inspect`).
    pub fn container_pid(&self, id: &str) -> Result<u32, String> {
        self.docker_ok(&["inspect", "--format", "{{.State.Pid}}", id], 10)?
            .parse()
            .map_err(|e| format!("container {id} pid: {e}"))
    }

    /// Pids of live processes whose command line mentions our exec root
    /// (our containerd, shims): processes this daemon started.
    fn our_leftovers(&self) -> Vec<i32> {
        let needle = self.exec_root.to_string_lossy().into_owned();
        let me = self.pid() as i32;
        let Ok(rd) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&p| p > 1 && p != me && p != std::process::id() as i32)
            .filter(|p| {
                fs::read(format!("/proc/{p}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                    .unwrap_or(false)
            })
            .flat_map(|p| {
                // Their children too: e.g. the `runc init` of a runc hung on
                // D-Bus (its command line does not name our exec root).
                let mut v = vec![p];
                v.extend(
                    crate::systemd::descendants(p as u32)
                        .into_iter()
                        .map(|c| c as i32)
                        .filter(|&c| c > 1 && c != me),
                );
                v
            })
            .collect()
    }

    fn unmount_leftovers(&self) {
        if let Some(ns) = self.mount_ns_of {
            self.unmount_leftovers_in_ns(ns);
        }
        let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<String> = text
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
            .filter(|p| {
                p.starts_with(&*self.exec_root.to_string_lossy())
                    || p.starts_with(&*self.data_root.to_string_lossy())
            })
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            if let Ok(c) = std::ffi::CString::new(p.clone()) {
                // SAFETY: valid C string; detach never blocks.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

impl Dockerd {
    /// Mounts of ours in the namespace dockerd ran in, detached through
    /// `nsenter ... umount -l` (host-side umount cannot reach them).
    fn unmount_leftovers_in_ns(&self, ns: u32) {
        let text = fs::read_to_string(format!("/proc/{ns}/mountinfo")).unwrap_or_default();
        let mut points: Vec<String> = text
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(crate::unescape_mountinfo))
            .filter(|p| {
                p.starts_with(&*self.exec_root.to_string_lossy())
                    || p.starts_with(&*self.data_root.to_string_lossy())
            })
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("timeout")
                .args([
                    "-s",
                    "KILL",
                    "10",
                    NSENTER,
                    "-t",
                    &ns.to_string(),
                    "-m",
                    "--",
                ])
                .args(["umount", "-l", &p])
                .current_dir("/")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        for id in self.containers.clone() {
            let _ = self.docker(&["rm", "-f", &id], 20);
        }
        if let Some(mut d) = self.daemon.take() {
            let _ = d.signal(libc::SIGTERM);
            if d.wait_timeout(Duration::from_secs(15)).is_none() {
                eprintln!("warning: dockerd {} ignored SIGTERM; killing it", self.tag);
            }
            drop(d);
        }
        // containerd gets SIGKILL from dockerd's death (pdeathsig); shims are
        // detached by design: kill what is left, by pid, only ours.
        let what = format!("the processes of {} to be gone after SIGKILL", self.tag);
        if let Err(e) = wait::until_every(
            &what,
            Duration::from_secs(5),
            Duration::from_millis(50),
            || {
                let left = self.our_leftovers();
                if left.is_empty() {
                    return Ok(());
                }
                for &p in &left {
                    // SAFETY: a process whose command line names our private exec root.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
                Err(left)
            },
        ) {
            eprintln!("warning: {e}");
        }
        self.unmount_leftovers();
        if let Some(p) = &self.cgroup_parent {
            for problem in crate::systemd::cleanup_slice(p) {
                eprintln!("warning: cgroup parent {p} of {}: {problem}", self.tag);
            }
        }
        let _ = fs::remove_dir_all(&self.exec_root);
        // data_root holds overlay directories owned by root: fine to remove
        // now that nothing is mounted below it.
        let _ = fs::remove_dir_all(&self.dir);
    }
}
