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

/// Options of [`Containerd::start_with`].
#[derive(Clone, Debug, Default)]
pub struct ContainerdOpts {
    /// Start containerd in the mount namespace of this process (the holder
    /// of a [`crate::systemd::PrivateNs`]): its shims and runc live there.
    pub mount_ns_of: Option<u32>,
    /// runc with the systemd cgroup driver (`SystemdCgroup = true`); pods'
    /// cgroup parent is then a slice of our own, removed at drop.
    pub systemd_cgroup: bool,
}

/// A running private containerd with its CRI plugin.
pub struct Containerd {
    tag: String,
    dir: PathBuf,
    run_dir: PathBuf,
    sock: PathBuf,
    daemon: Option<ChildGuard>,
    opts: ContainerdOpts,
    /// The slice of the pods with the systemd driver.
    slice: String,
}

impl Containerd {
    /// Starts containerd and waits (up to 30 s) until `ctr plugins ls` shows
    /// the CRI plugin `ok`.
    pub fn start() -> Result<Self, String> {
        Self::start_with(ContainerdOpts::default())
    }

    /// [`Containerd::start`] with options.
    pub fn start_with(opts: ContainerdOpts) -> Result<Self, String> {
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
  sandbox_image = "{image}"
  # This sandbox's bounding set lacks CAP_SYS_RESOURCE: no negative
  # oom_score_adj for the sandbox (as in rootless or nested setups).
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    SystemdCgroup = {systemd}
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{dir}/cni/bin"
    conf_dir = "{dir}/cni/conf"
"#,
            image = image_ref(&tag),
            systemd = opts.systemd_cgroup,
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
        let mut cmd = match opts.mount_ns_of {
            Some(pid) => {
                let mut c = Command::new("/usr/bin/nsenter");
                c.args(["-t", &pid.to_string(), "-m", "--", CONTAINERD])
                    .current_dir("/");
                c
            }
            None => Command::new(CONTAINERD),
        };
        cmd.arg("--config")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let daemon =
            ChildGuard::spawn(&mut cmd, &format!("containerd {tag}")).map_err(|e| e.to_string())?;
        let slice = format!("wdt{}c{n}.slice", std::process::id());
        let mut me = Self {
            tag,
            dir,
            run_dir,
            sock,
            daemon: Some(daemon),
            opts,
            slice,
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

    /// Everything containerd logged (its stderr) so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
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

impl Containerd {
    /// Our mounts in the namespace containerd ran in, detached through
    /// `nsenter ... umount -l` (the host cannot reach them).
    fn unmount_in_ns(&self, ns: u32) {
        let text = fs::read_to_string(format!("/proc/{ns}/mountinfo")).unwrap_or_default();
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
            let _ = Command::new("timeout")
                .args([
                    "-s",
                    "KILL",
                    "10",
                    "/usr/bin/nsenter",
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
            // Its children too: the runc of a shim (hung on D-Bus, say).
            for c in crate::systemd::descendants(p as u32) {
                // SAFETY: a descendant of one of our shims.
                unsafe { libc::kill(c as i32, libc::SIGKILL) };
            }
        }
        if let Some(ns) = self.opts.mount_ns_of {
            self.unmount_in_ns(ns);
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
        for problem in crate::systemd::cleanup_slice(&self.tag) {
            eprintln!("warning: cgroup parent {} : {problem}", self.tag);
        }
        if self.opts.systemd_cgroup {
            for problem in crate::systemd::cleanup_slice(&self.slice) {
                eprintln!("warning: slice {} : {problem}", self.slice);
            }
        }
        let _ = fs::remove_dir_all(&self.run_dir);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The image every sandbox and container of these tests runs:
/// busybox-static, `sleep 3600` by default.
pub fn image_ref(tag: &str) -> String {
    format!("localhost/{tag}-pause:1")
}

/// A pod made over CRI the way kubelet makes one: its sandbox (host
/// network: no CNI), then one container, with kubelet's labels.
#[derive(Clone, Debug)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub container: String,
    /// The container's command.
    pub command: Vec<String>,
    /// (host path, container path) bind mounts.
    pub mounts: Vec<(String, String)>,
}

/// Ids of a pod made by [`Containerd::run_pod`].
#[derive(Clone, Debug)]
pub struct Pod {
    pub sandbox_id: String,
    pub container_id: String,
}

impl Containerd {
    /// The cgroup parent of this containerd's pods (cgroupfs layout of
    /// kubelet below a parent of our own, removed at drop).
    pub fn pod_cgroup(&self, uid: &str) -> String {
        if self.opts.systemd_cgroup {
            self.slice.clone()
        } else {
            format!("/{}/kubepods/besteffort/pod{uid}", self.tag)
        }
    }

    /// Live `runc` processes of this containerd's shims (e.g. a `runc
    /// create` hung on D-Bus): their command line names our state directory.
    pub fn runc_pids(&self) -> Vec<u32> {
        let needle = self.run_dir.to_string_lossy().into_owned();
        crate::systemd::all_pids()
            .into_iter()
            .filter(|p| {
                fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.split('\0').next().is_some_and(|a0| a0.ends_with("runc"))
                        && c.contains(&needle)
                })
            })
            .collect()
    }

    /// Imports [`image_ref`] (an OCI layout made here from busybox-static:
    /// no registry) into the `k8s.io` namespace, where CRI looks.
    pub fn import_image(&self) -> Result<String, String> {
        use sha2::{Digest, Sha256};
        let work = self.dir.join("image");
        let rootfs = work.join("rootfs");
        let blobs = work.join("layout/blobs/sha256");
        for d in [&rootfs.join("bin"), &blobs] {
            fs::create_dir_all(d).map_err(|e| format!("create {}: {e}", d.display()))?;
        }
        for d in ["tmp", "proc", "sys", "dev", "etc", "data"] {
            let _ = fs::create_dir_all(rootfs.join(d));
        }
        fs::copy(crate::dockerd::BUSYBOX, rootfs.join("bin/busybox"))
            .map_err(|e| format!("copy busybox: {e}"))?;
        for applet in ["sh", "sleep", "echo", "cat"] {
            let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
        }
        let layer_tar = work.join("layer.tar");
        let st = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&layer_tar)
            .arg(".")
            .status()
            .map_err(|e| format!("tar: {e}"))?;
        if !st.success() {
            return Err(format!("tar of {} failed: {st}", rootfs.display()));
        }
        let put = |bytes: &[u8]| -> Result<(String, usize), String> {
            let hex: String = Sha256::digest(bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            fs::write(blobs.join(&hex), bytes).map_err(|e| format!("write blob: {e}"))?;
            Ok((format!("sha256:{hex}"), bytes.len()))
        };
        let layer = fs::read(&layer_tar).map_err(|e| format!("read layer: {e}"))?;
        let (ld, ls) = put(&layer)?;
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["/bin/sleep", "3600"]},
            "rootfs": {"type": "layers", "diff_ids": [ld]},
        })
        .to_string();
        let (cd, cs) = put(config.as_bytes())?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": ls}],
        })
        .to_string();
        let (md, ms) = put(manifest.as_bytes())?;
        let name = image_ref(&self.tag);
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
                "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": "1"},
            }],
        })
        .to_string();
        fs::write(work.join("layout/index.json"), index).map_err(|e| e.to_string())?;
        fs::write(
            work.join("layout/oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .map_err(|e| e.to_string())?;
        let image_tar = work.join("image.tar");
        let st = Command::new("tar")
            .arg("-C")
            .arg(work.join("layout"))
            .arg("-cf")
            .arg(&image_tar)
            .arg(".")
            .status()
            .map_err(|e| format!("tar: {e}"))?;
        if !st.success() {
            return Err(format!("tar of the image layout failed: {st}"));
        }
        let out = self
            .ctr(
                &[
                    "-n",
                    "k8s.io",
                    "images",
                    "import",
                    &image_tar.to_string_lossy(),
                ],
                60,
            )
            .map_err(|e| format!("ctr images import: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "ctr images import: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(name)
    }

    /// A CRI client on our socket, with a runtime of its own, for one call.
    fn cri<T>(
        &self,
        f: impl AsyncFnOnce(
            k8s_cri::v1::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
        ) -> Result<T, tonic::Status>,
    ) -> Result<T, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let sock = self.sock.clone();
        rt.block_on(async move {
            let channel = tonic::transport::Endpoint::from_static("http://cri.invalid")
                .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                    let sock = sock.clone();
                    async move {
                        tokio::net::UnixStream::connect(sock)
                            .await
                            .map(hyper_util::rt::TokioIo::new)
                    }
                }))
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let client = k8s_cri::v1::runtime_service_client::RuntimeServiceClient::new(channel);
            tokio::time::timeout(Duration::from_secs(60), f(client))
                .await
                .map_err(|_| "no answer within 60 s".to_owned())?
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
        })
    }

    /// Runs the pod's sandbox and starts its container, as kubelet does.
    pub fn run_pod(&self, spec: &PodSpec) -> Result<Pod, String> {
        use k8s_cri::v1::*;
        let image = image_ref(&self.tag);
        let labels: std::collections::HashMap<String, String> = [
            ("io.kubernetes.pod.name", spec.name.as_str()),
            ("io.kubernetes.pod.namespace", spec.namespace.as_str()),
            ("io.kubernetes.pod.uid", spec.uid.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let host_ns = || NamespaceOption {
            network: NamespaceMode::Node as i32,
            pid: NamespaceMode::Container as i32,
            ipc: NamespaceMode::Pod as i32,
            ..Default::default()
        };
        let logs = self.dir.join("pods").join(&spec.uid);
        fs::create_dir_all(&logs).map_err(|e| e.to_string())?;
        let sandbox_config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: spec.name.clone(),
                uid: spec.uid.clone(),
                namespace: spec.namespace.clone(),
                attempt: 0,
            }),
            // Host network: the node's UTS namespace, no hostname of its own.
            log_directory: logs.to_string_lossy().into_owned(),
            labels: labels.clone(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: self.pod_cgroup(&spec.uid),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(host_ns()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut clabels = labels;
        clabels.insert(
            "io.kubernetes.container.name".into(),
            spec.container.clone(),
        );
        let container_config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: spec.container.clone(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
            command: spec.command.clone(),
            log_path: format!("{}.log", spec.container),
            labels: clabels,
            mounts: spec
                .mounts
                .iter()
                .map(|(host, ctr)| Mount {
                    host_path: host.clone(),
                    container_path: ctr.clone(),
                    ..Default::default()
                })
                .collect(),
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(host_ns()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let sandbox_id = self.cri(async |mut c| {
            Ok(c.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(sandbox_config.clone()),
                runtime_handler: String::new(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id)
        })?;
        let container_id = self.cri(async |mut c| {
            let id = c
                .create_container(CreateContainerRequest {
                    pod_sandbox_id: sandbox_id.clone(),
                    config: Some(container_config),
                    sandbox_config: Some(sandbox_config),
                })
                .await?
                .into_inner()
                .container_id;
            c.start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await?;
            Ok(id)
        })?;
        Ok(Pod {
            sandbox_id,
            container_id,
        })
    }

    /// Stops and removes a pod (best effort, bounded).
    pub fn remove_pod(&self, pod: &Pod) {
        use k8s_cri::v1::*;
        let id = pod.sandbox_id.clone();
        let _ = self.cri(async |mut c| {
            c.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await?;
            c.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
                .await?;
            Ok(())
        });
    }
}
