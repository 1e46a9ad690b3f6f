//! Builds the eBPF programs (tracer-ebpf) for the BPF target and lets `main.rs`
//! embed the object, so `cargo build --release` yields one self-contained binary.
//! `AYA_BUILD_SKIP=1` skips this for lint-only runs.
use anyhow::{anyhow, Context as _};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "tracer-ebpf")
        .ok_or_else(|| anyhow!("tracer-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    let package = aya_build::Package {
        name: ebpf.name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    // Stable toolchain + RUSTC_BOOTSTRAP (set in .cargo/config.toml) instead of a
    // nightly: one toolchain to install, pinned by the machine image.
    aya_build::build_ebpf([package], Toolchain::Custom("stable"))
}
