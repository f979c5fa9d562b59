//! Builds `watchdog-ebpf` for the bpf target (nightly, `-Z build-std=core`,
//! linked by bpf-linker) and leaves the object in OUT_DIR, where
//! `probes::loader` embeds it. `cargo xtask setup` installs what this needs.
use anyhow::{Context as _, anyhow};
use cargo_metadata::{MetadataCommand, Package};

/// The git revision of the checkout (`unknown` outside one), for
/// `--version`; rebuilt when HEAD moves.
fn git_rev(root: &std::path::Path) -> String {
    let git = root.join(".git");
    let head = git.join("HEAD");
    println!("cargo:rerun-if-changed={}", head.display());
    if let Ok(h) = std::fs::read_to_string(&head)
        && let Some(r) = h.trim().strip_prefix("ref: ")
    {
        println!("cargo:rerun-if-changed={}", git.join(r).display());
    }
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn main() -> anyhow::Result<()> {
    let manifest = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest.parent().unwrap_or(&manifest);
    println!("cargo:rustc-env=WATCHDOG_GIT_REV={}", git_rev(workspace));
    println!(
        "cargo:rustc-env=WATCHDOG_TARGET={}",
        std::env::var("TARGET").unwrap_or_default()
    );
    let metadata = MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf: &Package = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "watchdog-ebpf")
        .ok_or_else(|| anyhow!("watchdog-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("watchdog-ebpf manifest has no parent directory"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the eBPF programs failed; run `cargo xtask setup` (needs the nightly toolchain with rust-src and bpf-linker built for LLVM 22)")
}
