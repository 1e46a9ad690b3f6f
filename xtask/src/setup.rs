//! Install and mount what pathtrace and its tests need. Each step checks first, so
//! a second run takes well under a second.

use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};

use crate::exec;

/// Debian packages: iproute2 (ip, bridge, tc), firewalls for rule attribution and
/// the lab, ping for demos, bpftool for inspection, util-linux for nsenter, tmux
/// for the live-view test, strace to count the processes pathtrace spawns, and for test VMs (the real-guest test and `vm-test`):
/// QEMU, busybox for their initramfs, kmod (depmod on an unpacked kernel, the
/// guest's modprobe) and xz for compressed modules; for `cargo xtask deb` and its
/// test: dpkg-dev (dpkg-shlibdeps), binutils (strip), lintian, man-db, systemd
/// (systemd-analyze verify); tshark reads the `--pcap` files in the tests.
const PACKAGES: &[&str] = &[
    "iproute2",
    "nftables",
    "iptables",
    "iputils-ping",
    "bpftool",
    "tcpdump",
    "util-linux",
    "procps",
    "tmux",
    "strace",
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "xz-utils",
    "dpkg-dev",
    "binutils",
    "lintian",
    "man-db",
    "systemd",
    "tshark",
    // The lab's DHCP server on the VM bridge (as libvirt and Proxmox SDN run it).
    "dnsmasq-base",
];

/// bpf-linker release that builds against the installed toolchain's LLVM.
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> Result<()> {
    if unsafe { libc_geteuid() } != 0 {
        bail!("setup needs root (it installs packages and mounts bpffs/tracefs)");
    }
    apt_packages()?;
    rust_src()?;
    bpf_linker()?;
    mount_if_missing("/sys/kernel/tracing", "tracefs", Some("events"))?;
    mount_if_missing("/sys/fs/bpf", "bpf", None)?;
    Ok(())
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn apt_packages() -> Result<()> {
    install_missing(PACKAGES)
}

/// `apt-get install` those of `packages` that are not installed yet.
pub fn install_missing(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            let out = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output();
            !out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    exec(Command::new("apt-get").args(["update", "-qq"]))?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn sysroot() -> Result<String> {
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()?;
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

fn rust_src() -> Result<()> {
    let src = Path::new(&sysroot()?).join("lib/rustlib/src/rust/library/core");
    if src.exists() {
        return Ok(());
    }
    eprintln!("xtask: adding rust-src (needed to build core for the BPF target)");
    exec(Command::new("rustup").args(["component", "add", "rust-src"]))
}

fn bpf_linker() -> Result<()> {
    let installed = Command::new("bpf-linker").arg("--version").output();
    if installed.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)) {
        return Ok(());
    }
    // Link bpf-linker against the LLVM that ships inside the Rust toolchain, so no
    // system LLVM is needed. Its library name carries the LLVM and Rust versions.
    let sysroot = sysroot()?;
    let lib = std::fs::read_dir(Path::new(&sysroot).join("lib"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|n| n.starts_with("libLLVM-") && n.ends_with(".so"))
        .context("no libLLVM-*.so in the Rust toolchain")?;
    let name = lib
        .trim_start_matches("lib")
        .trim_end_matches(".so")
        .to_string();
    let major = name
        .trim_start_matches("LLVM-")
        .split('-')
        .next()
        .context("LLVM version in library name")?
        .to_string();
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against {name} (a few minutes, once)"
    );
    let rustflags = format!(
        "-C link-arg=-L{sysroot}/lib -C link-arg=-l{name} -C link-arg=-Wl,-rpath,{sysroot}/lib"
    );
    exec(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{major},no-llvm-linking"))
            .env("RUSTFLAGS", rustflags),
    )
}

fn mount_if_missing(dir: &str, fstype: &str, probe: Option<&str>) -> Result<()> {
    let mounted = match probe {
        Some(p) => Path::new(dir).join(p).exists(),
        None => std::fs::read_to_string("/proc/self/mountinfo")?
            .lines()
            .any(|l| l.split_whitespace().nth(4) == Some(dir)),
    };
    if mounted {
        return Ok(());
    }
    exec(Command::new("mount").args(["-t", fstype, fstype, dir]))
}
