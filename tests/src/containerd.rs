//! [`Containerd`]: a private containerd (Debian's 1.6, CRI plugin on) of the
//! test's own: its own root, state, gRPC and ttrpc sockets and a CNI
//! directory with no network (the CRI plugin still serves without one).
//!
//! `Drop` resumes it if the test stopped it, stops it, kills what is left of
//! the processes naming our state directory (shims), unmounts what it left
//! under its directories and removes them.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::{ChildGuard, skip_unless, skip_unless_root, wait};

pub const CONTAINERD: &str = "/usr/bin/containerd";
pub const CTR: &str = "/usr/bin/ctr";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Root, containerd and ctr, `timeout`.
pub fn skip_unless_containerd_prereqs() -> bool {
    if !skip_unless_root() {
        return false;
    }
    for bin in [CONTAINERD, CTR, "/usr/bin/timeout"] {
        if !skip_unless(
            Path::new(bin).exists(),
            &format!("{bin} is missing (apt-get install containerd)"),
        ) {
            return false;
        }
    }
    true
}

/// A running private containerd with its CRI plugin.
pub struct Containerd {
    tag: String,
    dir: PathBuf,
    run_dir: PathBuf,
    sock: PathBuf,
    daemon: Option<ChildGuard>,
}

impl Containerd {
    /// Starts containerd and waits (up to 30 s) until `ctr plugins ls` shows
    /// the CRI plugin `ok`.
    pub fn start() -> Result<Self, String> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tag = format!("wd-ctd-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(&tag);
        // Short: the sockets must fit in sun_path (108 bytes).
        let run_dir = PathBuf::from("/run").join(&tag);
        let sock = run_dir.join("containerd.sock");
        for d in [&dir, &run_dir, &dir.join("cni/bin"), &dir.join("cni/conf")] {
            fs::create_dir_all(d).map_err(|e| format!("create {}: {e}", d.display()))?;
        }
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = "{run}/debug.sock"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{dir}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/{tag}-pause:1"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{dir}/cni/bin"
    conf_dir = "{dir}/cni/conf"
"#,
            root = dir.join("root").display(),
            state = run_dir.join("state").display(),
            sock = sock.display(),
            run = run_dir.display(),
            dir = dir.display(),
        );
        let cfg_path = dir.join("config.toml");
        fs::write(&cfg_path, config).map_err(|e| format!("write config: {e}"))?;
        let log = fs::File::create(dir.join("containerd.log"))
            .map_err(|e| format!("create containerd.log: {e}"))?;
        let mut cmd = Command::new(CONTAINERD);
        cmd.arg("--config")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let daemon =
            ChildGuard::spawn(&mut cmd, &format!("containerd {tag}")).map_err(|e| e.to_string())?;
        let mut me = Self {
            tag,
            dir,
            run_dir,
            sock,
            daemon: Some(daemon),
        };
        let ready = wait::until_every(
            "containerd's CRI plugin to be ok",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                if me.sock.exists()
                    && me.ctr(&["plugins", "ls"], 5).is_ok_and(|o| {
                        String::from_utf8_lossy(&o.stdout).lines().any(|l| {
                            l.contains("io.containerd.grpc.v1")
                                && l.contains(" cri ")
                                && l.trim_end().ends_with("ok")
                        })
                    })
                {
                    return Ok(Ok(()));
                }
                match me.daemon.as_mut().and_then(ChildGuard::try_wait) {
                    Some(s) => Ok(Err(format!("containerd exited ({s}) at start"))),
                    None => Err("not yet"),
                }
            },
        );
        match ready {
            Ok(Ok(())) => Ok(me),
            Ok(Err(e)) => Err(format!("{e}:\n{}", me.log_tail())),
            Err(e) => Err(format!("{e}:\n{}", me.log_tail())),
        }
    }

    pub fn pid(&self) -> u32 {
        self.daemon.as_ref().map(ChildGuard::pid).unwrap_or(0)
    }

    /// `unix:///run/wd-ctd-.../containerd.sock`
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.sock.display())
    }

    /// Stops (`SIGSTOP`) or resumes (`SIGCONT`) our own containerd.
    pub fn signal(&mut self, sig: i32) -> Result<(), String> {
        self.daemon
            .as_mut()
            .ok_or("containerd is not running")?
            .signal(sig)
            .map_err(|e| format!("signal {sig} to containerd: {e}"))
    }

    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `ctr --address SOCK ARGS` under `timeout -s KILL`.
    pub fn ctr(&self, args: &[&str], timeout_secs: u64) -> std::io::Result<Output> {
        Command::new("timeout")
            .args(["-s", "KILL", &timeout_secs.to_string(), CTR, "--address"])
            .arg(&self.sock)
            .args(args)
            .stdin(Stdio::null())
            .output()
    }

    /// Processes other than the daemon whose command line names our
    /// directories (shims).
    fn our_leftovers(&self) -> Vec<i32> {
        let needles = [
            self.run_dir.to_string_lossy().into_owned(),
            self.dir.to_string_lossy().into_owned(),
        ];
        let me = self.pid() as i32;
        let Ok(rd) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&p| p > 1 && p != me && p != std::process::id() as i32)
            .filter(|p| {
                fs::read(format!("/proc/{p}/cmdline"))
                    .map(|c| {
                        let c = String::from_utf8_lossy(&c);
                        needles.iter().any(|n| c.contains(n.as_str()))
                    })
                    .unwrap_or(false)
            })
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.signal(libc::SIGCONT);
            let _ = d.signal(libc::SIGTERM);
            if d.wait_timeout(Duration::from_secs(15)).is_none() {
                eprintln!(
                    "warning: containerd {} ignored SIGTERM; killing it",
                    self.tag
                );
            }
            drop(d);
        }
        for p in self.our_leftovers() {
            // SAFETY: a process whose command line names our private directories.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<String> = text
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(crate::unescape_mountinfo))
            .filter(|p| {
                p.starts_with(&*self.run_dir.to_string_lossy())
                    || p.starts_with(&*self.dir.to_string_lossy())
            })
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            if let Ok(c) = std::ffi::CString::new(p) {
                // SAFETY: valid C string; detach never blocks.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        let _ = fs::remove_dir_all(&self.run_dir);
        let _ = fs::remove_dir_all(&self.dir);
    }
}
