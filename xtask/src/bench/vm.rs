//! `cargo xtask bench --vm 6.12`: the bench inside Debian's kernel of a series,
//! booted as `vm-test` boots it (QEMU TCG, the host's root read-only over
//! virtiofs). The development kernel has no kprobes, so `--deep` is measured
//! only here. The VM runs this same xtask binary with `--vm-out` (no set-up,
//! no build) and writes its results into a host directory shared writable;
//! they land under bench/results/ with `-tcg` in their name, with the host's
//! load average around the run (TCG shares the host's CPUs with whatever else
//! runs there).

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::{load_average, unused_stem, Options};
use crate::{root, vmtest};

/// The whole VM run's time limit: ten rounds of three floods under TCG take
/// hours; fewer rounds or one flood much less.
const VM_LIMIT: Duration = Duration::from_secs(4 * 3600);
/// Guest memory: the bench's lab and pathtrace's maps, as vm-test gives.
const VM_MEMORY_MIB: u32 = 3072;

pub fn run(kernel: &str, opts: &Options) -> Result<()> {
    let out = root().join(format!("target/vm-test/bench-out-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    let load_before = load_average();
    let started = Instant::now();
    let res = vmtest::run(&vmtest::Options {
        kernel: kernel.to_string(),
        test: "scenarios".into(),
        memory_mib: VM_MEMORY_MIB,
        timeout: VM_LIMIT,
        filter: Vec::new(),
        exec: Some(inner_command(opts)?),
        out_dir: Some(out.clone()),
    });
    let host = json!({
        "runner": format!("cargo xtask bench --vm {kernel}: QEMU TCG, 2 vCPUs, {VM_MEMORY_MIB} MiB"),
        "wall_s": started.elapsed().as_secs(),
        "load_average": [load_before, load_average()],
    });
    let copied = res.and_then(|_| keep_results(&out, opts, &host));
    let _ = std::fs::remove_dir_all(&out);
    for path in copied? {
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(())
}

/// This binary's bench, run in the VM with the same choices.
fn inner_command(opts: &Options) -> Result<String> {
    let exe = std::env::current_exe().context("finding the xtask binary")?;
    let mut cmd = format!("{} bench --vm-out {}", exe.display(), vmtest::VM_OUT);
    if let Some(r) = opts.rounds {
        cmd.push_str(&format!(" --rounds {r}"));
    }
    if let Some(f) = &opts.flood {
        cmd.push_str(&format!(" --flood '{}'", f.replace('\'', "")));
    }
    if opts.profile_only {
        cmd.push_str(" --profile-only");
    }
    Ok(cmd)
}

/// The VM's `.md`/`.json` into the results directory, named `-tcg`, with what
/// the host saw around the run.
fn keep_results(out: &Path, opts: &Options, host: &Value) -> Result<Vec<PathBuf>> {
    let dir = match opts.profile_only {
        true => root().join("target/bench-profile"),
        false => root().join("bench/results"),
    };
    std::fs::create_dir_all(&dir)?;
    let mut written = Vec::new();
    for entry in std::fs::read_dir(out)?.flatten() {
        let path = entry.path();
        let (Some(stem), Some("md")) = (
            path.file_stem().and_then(|s| s.to_str()),
            path.extension().and_then(|e| e.to_str()),
        ) else {
            continue;
        };
        let name = unused_stem(&dir, &format!("{stem}-tcg"));
        let md = std::fs::read_to_string(&path)?;
        let note = format!(
            "\n{}: wall time {} s; the host's load average before and after: {} / {}.\n",
            host["runner"].as_str().unwrap_or_default(),
            host["wall_s"],
            host["load_average"][0].as_str().unwrap_or_default(),
            host["load_average"][1].as_str().unwrap_or_default(),
        );
        std::fs::write(dir.join(format!("{name}.md")), md + &note)?;
        written.push(dir.join(format!("{name}.md")));
        let json_path = out.join(format!("{stem}.json"));
        if let Ok(text) = std::fs::read_to_string(&json_path) {
            let mut v: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", json_path.display()))?;
            v["host"] = host.clone();
            std::fs::write(
                dir.join(format!("{name}.json")),
                serde_json::to_string_pretty(&v)?,
            )?;
            written.push(dir.join(format!("{name}.json")));
        }
    }
    anyhow::ensure!(!written.is_empty(), "the VM wrote no results");
    Ok(written)
}
