//! `cargo xtask`: set-up, build, demo and tests for pathtrace.
//!
//! Every task is idempotent and quick when there is nothing left to do.

mod bench;
mod deb;
mod demo;
mod setup;
mod vmtest;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Args {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what pathtrace needs (apt packages, rust-src, bpf-linker) and mount
    /// bpffs/tracefs.
    Setup,
    /// Set up, then build target/release/pathtrace (eBPF programs embedded).
    Build,
    /// Set up, build, and show pathtrace on a namespaced demo hypervisor.
    Demo,
    /// rustfmt and clippy (warnings are errors), the eBPF crate for its own target.
    Lint,
    /// Set up, build, and measure pathtrace's overhead on a flooded namespaced
    /// hypervisor (results under bench/results/).
    Bench {
        /// One short iteration of a few variants (keeps the bench working; CI).
        #[arg(long)]
        smoke: bool,
        /// Only this flood (udp, icmp or tcp), e.g. to profile one case.
        #[arg(long)]
        flood: Option<String>,
        /// Rounds of every variant (default 10).
        #[arg(long)]
        rounds: Option<usize>,
        /// Only the per-program BPF profile (results under target/bench-profile/).
        #[arg(long)]
        profile_only: bool,
        /// Run the bench inside Debian's kernel of this series under QEMU (TCG),
        /// as vm-test does: measures `--deep`, which needs kprobes (results
        /// under bench/results/, named `-tcg`).
        #[arg(long, conflicts_with = "smoke")]
        vm: Option<String>,
        /// The half of `--vm` that runs in the VM: no set-up, no build, results
        /// into this directory.
        #[arg(long, hide = true)]
        vm_out: Option<std::path::PathBuf>,
    },
    /// Regenerate docs/troubleshooting.md from the scenario catalogue.
    Docs,
    /// Set up, build, and package pathtrace as a .deb (target/deb/): the binary,
    /// manual pages, completions, monitoring files and pathtrace-watch.service.
    Deb,
    /// Set up, build, lint, and run every test (unit and end-to-end; needs root).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Set up, build, and run end-to-end tests inside another kernel under QEMU
    /// (a Debian cloud kernel, TCG; needs root).
    VmTest {
        /// Kernel series from Debian's archive, e.g. 6.1 or 6.12.
        #[arg(long, default_value = "6.1")]
        kernel: String,
        /// The test binary to run (a file under tests/tests/).
        #[arg(long, default_value = "scenarios")]
        test: String,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 3072)]
        memory: u32,
        /// Time limit for the whole VM run, in seconds.
        #[arg(long, default_value_t = 1800)]
        timeout: u64,
        /// Run this shell command in the VM instead of the tests.
        #[arg(long)]
        exec: Option<String>,
        /// Only the core scenarios (the CI set): healthy ping, nft forward drop,
        /// ip_forward off, MASQUERADE missing, DNS reply dropped, host INPUT drop.
        #[arg(long, conflicts_with_all = ["exec", "filter", "test", "l2_core"])]
        core: bool,
        /// Only the layer-2 core scenarios (CI runs them on 6.12): VLAN-aware
        /// bridge, VLAN devices and bonds, which the CI kernel lacks.
        #[arg(long, conflicts_with_all = ["exec", "filter", "test"])]
        l2_core: bool,
        /// Arguments for the test binary (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        filter: Vec<String>,
    },
}

fn main() {
    let args = Args::parse();
    let result = match args.task {
        Task::Setup => setup::run(),
        Task::Build => setup::run().and_then(|_| build()),
        Task::Demo => setup::run().and_then(|_| build()).and_then(|_| demo::run()),
        Task::Lint => lint(),
        Task::Bench {
            smoke,
            flood,
            rounds,
            profile_only,
            vm,
            vm_out,
        } => {
            let opts = bench::Options {
                smoke,
                flood,
                rounds,
                profile_only,
                out_dir: vm_out.clone(),
            };
            match (vm, vm_out) {
                (_, Some(_)) => bench::run(&opts),
                (Some(kernel), None) => setup::run()
                    .and_then(|_| build())
                    .and_then(|_| bench::vm::run(&kernel, &opts)),
                (None, None) => setup::run()
                    .and_then(|_| build())
                    .and_then(|_| bench::run(&opts)),
            }
        }
        Task::Docs => docs(),
        Task::Deb => setup::run()
            .and_then(|_| build())
            .and_then(|_| deb::build())
            .map(|_| ()),
        Task::Test { args } => setup::run()
            .and_then(|_| build())
            .and_then(|_| lint())
            .and_then(|_| test(&args))
            // A short bench run keeps `cargo xtask bench` working (no timing is
            // asserted; numbers go to target/bench-smoke/). Not for filtered runs.
            .and_then(|_| match args.is_empty() {
                true => bench::run(&bench::Options {
                    smoke: true,
                    flood: None,
                    rounds: None,
                    profile_only: false,
                    out_dir: None,
                }),
                false => Ok(()),
            }),
        Task::VmTest {
            kernel,
            test,
            memory,
            timeout,
            exec,
            core,
            l2_core,
            mut filter,
        } => setup::run().and_then(|_| {
            let set = match (core, l2_core) {
                (true, _) => Some(vmtest::CORE_SCENARIOS),
                (_, true) => Some(vmtest::L2_CORE_SCENARIOS),
                _ => None,
            };
            if let Some(set) = set {
                filter = set.iter().map(|s| s.to_string()).collect();
                filter.push("--exact".into());
            }
            vmtest::run(&vmtest::Options {
                kernel,
                test,
                memory_mib: memory,
                timeout: std::time::Duration::from_secs(timeout),
                filter,
                exec,
                out_dir: None,
            })
        }),
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

pub fn exec(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

pub fn build() -> Result<()> {
    eprintln!("xtask: building pathtrace (release, eBPF embedded)");
    exec(cargo().args(["build", "--release"]))
}

pub fn release_bin(name: &str) -> PathBuf {
    root().join("target/release").join(name)
}

fn docs() -> Result<()> {
    use pathtrace_tests::scenarios::{render_doc, DOC_PATH};
    let path = root().join(DOC_PATH);
    std::fs::create_dir_all(path.parent().context("docs folder")?)?;
    std::fs::write(&path, render_doc())?;
    eprintln!("xtask: wrote {}", path.display());
    Ok(())
}

fn lint() -> Result<()> {
    eprintln!("xtask: rustfmt and clippy");
    exec(cargo().args(["fmt", "--all", "--", "--check"]))?;
    exec(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // The eBPF crate only builds for the BPF target (it has its own panic handler).
    exec(
        cargo()
            .args([
                "clippy",
                "-p",
                "tracer-ebpf",
                "--target",
                "bpfel-unknown-none",
            ])
            .args(["-Z", "build-std=core", "--", "-D", "warnings"])
            .env("RUSTC_BOOTSTRAP", "1"),
    )
}

fn test(extra: &[String]) -> Result<()> {
    // The package test (tests/tests/package.rs) checks the .deb of this build.
    let deb = deb::build()?;
    // End-to-end tests build namespaces and load eBPF: they need root, and CI runs
    // them as root. They find the binaries through these variables.
    let mut cmd = cargo();
    cmd.args(["test", "--release"])
        .env("PATHTRACE_BIN", release_bin("pathtrace"))
        .env("FAKE_GUEST_BIN", release_bin("fake-guest"))
        .env("PATHTRACE_DEB", deb)
        .args(extra)
        // One test at a time: the end-to-end tests check that nothing of
        // pathtrace stays attached, which a parallel run would blur.
        .args(["--", "--test-threads=1"]);
    exec(&mut cmd)
}
