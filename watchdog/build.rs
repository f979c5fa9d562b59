//! Builds `watchdog-ebpf` for the bpf target (nightly, `-Z build-std=core`,
//! linked by bpf-linker) and leaves the object in OUT_DIR, where
//! `probes::loader` embeds it. `cargo xtask setup` installs what this needs.
use anyhow::{Context as _, anyhow};
use cargo_metadata::{MetadataCommand, Package};

fn main() -> anyhow::Result<()> {
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
