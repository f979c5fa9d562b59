//! `cargo xtask image`: the agent as a static (musl) binary in an image
//! `FROM scratch` (`deploy/Dockerfile`), built with the Docker the tests
//! already use, no registry and no base image needed.
//!
//! The image goes into the Docker daemon that answers (`DOCKER_HOST`, else
//! `/var/run/docker.sock`); without one, and as root, a private dockerd is
//! started for the build (its data in `target/image/dockerd`) and stopped
//! after. Either way the image is also saved as a tarball
//! (`target/image/watchdog-<version>-<arch>.tar`) that `docker load`,
//! `ctr -n k8s.io images import` or `podman load` take on a node.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{cargo, run, setup, show, workspace_root};

/// The static target of the image (aarch64: `aarch64-unknown-linux-musl`,
/// see the README's multi-arch notes).
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// Builds the static agent; returns its path.
pub fn build_static() -> Result<PathBuf> {
    setup::musl_target(MUSL_TARGET)?;
    run(cargo()
        .args(["build", "--release", "--package", "watchdog", "--target"])
        .arg(MUSL_TARGET)
        // ring's C and assembly (rustls): musl-gcc from musl-tools.
        .env("CC_x86_64_unknown_linux_musl", "musl-gcc"))?;
    let bin = workspace_root()
        .join("target")
        .join(MUSL_TARGET)
        .join("release/watchdog");
    if !bin.is_file() {
        bail!("the static build left no binary at {}", bin.display());
    }
    Ok(bin)
}

/// Copies the binary and `deploy/Dockerfile` into a fresh build context.
pub fn context(bin: &Path, dir: &Path) -> Result<()> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    fs::copy(bin, dir.join("watchdog"))
        .with_context(|| format!("copy {} into {}", bin.display(), dir.display()))?;
    fs::copy(
        workspace_root().join("deploy/Dockerfile"),
        dir.join("Dockerfile"),
    )
    .context("copy deploy/Dockerfile")?;
    Ok(())
}

pub fn image(tag: Option<String>) -> Result<()> {
    setup::ensure()?;
    let bin = build_static()?;
    let version = env!("CARGO_PKG_VERSION");
    let tag = tag.unwrap_or_else(|| format!("watchdog:{version}"));
    let out_dir = workspace_root().join("target/image");
    let ctx = out_dir.join("context");
    context(&bin, &ctx)?;
    let daemon = Daemon::find_or_start(&out_dir)?;
    let docker = |args: &[&str]| {
        let mut c = Command::new("docker");
        c.args(["-H", &daemon.host]).args(args);
        // The legacy builder: a `FROM scratch` image needs no BuildKit
        // (buildx may be missing) and no registry.
        c.env("DOCKER_BUILDKIT", "0");
        c
    };
    run(docker(&["build", "--quiet", "-t", &tag]).arg(&ctx))?;
    let tar = out_dir.join(format!("watchdog-{version}-amd64.tar"));
    run(docker(&["save", "-o"]).arg(&tar).arg(&tag))?;
    let size = fs::metadata(&tar).map(|m| m.len()).unwrap_or(0);
    let place = if daemon.private {
        "built by a private dockerd, now stopped".to_string()
    } else {
        format!("in the daemon at {}", daemon.host)
    };
    drop(daemon);
    println!(
        "image {tag} ({place}): {} ({:.1} MiB); load it on a node with `docker load -i` or \
         `ctr -n k8s.io images import`",
        tar.display(),
        size as f64 / (1024.0 * 1024.0)
    );
    Ok(())
}

/// The Docker daemon the image is built with.
struct Daemon {
    host: String,
    private: bool,
    child: Option<Child>,
    /// The private daemon's exec root, removed after it stopped.
    exec_root: Option<PathBuf>,
}

impl Daemon {
    fn answers(host: &str) -> bool {
        Command::new("timeout")
            .args(["10", "docker", "-H", host, "version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn find_or_start(out_dir: &Path) -> Result<Daemon> {
        let host = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
        if Self::answers(&host) {
            return Ok(Daemon {
                host,
                private: false,
                child: None,
                exec_root: None,
            });
        }
        if std::env::var_os("DOCKER_HOST").is_some() {
            bail!("the Docker daemon at DOCKER_HOST={host} does not answer `docker version`");
        }
        eprintln!(
            "xtask: no Docker daemon answers at {host}; starting a private dockerd for the build"
        );
        let exec_root = PathBuf::from(format!("/run/wd-xtask-image-{}", std::process::id()));
        let data_root = out_dir.join("dockerd");
        for d in [&exec_root, &data_root] {
            fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
        }
        let sock = exec_root.join("docker.sock");
        let host = format!("unix://{}", sock.display());
        let log = fs::File::create(out_dir.join("dockerd.log")).context("create dockerd.log")?;
        let mut cmd = Command::new("dockerd");
        cmd.arg("--data-root")
            .arg(&data_root)
            .arg("--exec-root")
            .arg(&exec_root)
            .arg("--pidfile")
            .arg(exec_root.join("dockerd.pid"))
            .args(["-H", &host, "--bridge", "none", "--iptables=false"])
            .args(["--ip6tables=false", "--storage-driver", "vfs"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        eprintln!("xtask: running {}", show(&cmd));
        let child = cmd
            .spawn()
            .context("could not start dockerd (apt-get install docker.io, as root)")?;
        let mut d = Daemon {
            host: host.clone(),
            private: true,
            child: Some(child),
            exec_root: Some(exec_root),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !Self::answers(&host) {
            if let Some(c) = d.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                bail!(
                    "the private dockerd exited with {st}; see {}",
                    out_dir.join("dockerd.log").display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the private dockerd did not answer within 60 s; see {}",
                    out_dir.join("dockerd.log").display()
                );
            }
            thread::sleep(Duration::from_millis(300));
        }
        Ok(d)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SIGTERM to the dockerd this process started, then wait for it.
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut exited = false;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                exited = true;
                break;
            }
            thread::sleep(Duration::from_millis(200));
        }
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(d) = self.exec_root.take() {
            let _ = fs::remove_dir_all(d);
        }
    }
}
