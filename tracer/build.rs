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
    aya_build::build_ebpf([package], Toolchain::Custom("stable"))?;
    version_facts();
    Ok(())
}

/// `pathtrace --version` names the commit and the embedded eBPF object, so a bug
/// report identifies the exact build (the object is what the kernel verified).
fn version_facts() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=PATHTRACE_GIT_COMMIT={commit}");
    // Rebuild when HEAD moves (a commit, a checkout); in a worktree these live in
    // the common and the per-worktree git directories.
    // Only paths that exist: cargo treats a missing one as always changed, which
    // would rebuild pathtrace on every `cargo build`.
    let mut watch = vec!["HEAD".to_string(), "packed-refs".to_string()];
    watch.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for path in watch {
        if let Some(p) = git(&["rev-parse", "--git-path", &path]) {
            let abs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(&p);
            if abs.exists() {
                println!("cargo:rerun-if-changed={}", abs.display());
            }
        }
    }
    let object = std::path::Path::new(&std::env::var("OUT_DIR").unwrap_or_default()).join("tracer");
    let hash = match std::fs::read(&object) {
        Ok(bytes) => {
            use sha2::Digest as _;
            let digest = sha2::Sha256::digest(&bytes);
            digest
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        }
        // AYA_BUILD_SKIP=1 (lint runs): no object is embedded.
        Err(_) => "none (eBPF build skipped)".into(),
    };
    println!("cargo:rustc-env=PATHTRACE_EBPF_SHA256={hash}");
}

fn git(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}
