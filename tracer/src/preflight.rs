//! Checks and fixes before anything is loaded: privileges, bpffs and tracefs.
//! Each failure is one clear sentence saying what to do.

use std::path::Path;

use anyhow::{bail, Result};

use crate::kernel::{
    facts::{self, Mode},
    tracefs::TRACEFS,
};

const BPFFS: &str = "/sys/fs/bpf";

/// Before `modes` load anything: privileges, the filesystems, and the kernel
/// facts those modes cannot do without (see `kernel::facts`).
pub fn check(modes: &[Mode]) -> Result<()> {
    if unsafe { libc::geteuid() } != 0 && !has_caps() {
        bail!("pathtrace needs root (or at least CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN; see Safety in the README) to load eBPF programs");
    }
    mounts()?;
    essentials(modes)
}

/// Watch attaches only a tracepoint program (no TC): CAP_BPF and CAP_PERFMON load
/// and attach it, so its service runs without CAP_NET_ADMIN.
pub fn check_watch() -> Result<()> {
    if unsafe { libc::geteuid() } != 0 && !effective_caps(&[39, 38]) {
        bail!("pathtrace watch needs root (or at least CAP_BPF and CAP_PERFMON; see Safety in the README) to load its eBPF program");
    }
    mounts()?;
    essentials(&[Mode::Watch])
}

fn mounts() -> Result<()> {
    ensure_mounted(TRACEFS, "tracefs", "events")?;
    ensure_mounted(BPFFS, "bpf", "")?;
    Ok(())
}

/// The kernel facts `modes` cannot do without (see `kernel::facts`).
fn essentials(modes: &[Mode]) -> Result<()> {
    if let Some(why) = modes.iter().find_map(|m| facts::missing_essential(*m)) {
        bail!("{why}");
    }
    Ok(())
}

/// `pathtrace doctor` loads nothing, but reading the firewall rule sets needs
/// CAP_NET_ADMIN and its ARP probes CAP_NET_RAW: without them it would report
/// "no rule drops this" for rules it could not see.
pub fn check_doctor() -> Result<()> {
    if unsafe { libc::geteuid() } != 0 && !effective_caps(&[12, 13]) {
        bail!("pathtrace doctor needs root (or CAP_NET_ADMIN and CAP_NET_RAW) to read the firewall rule sets and probe ARP");
    }
    Ok(())
}

/// CAP_BPF (39), CAP_PERFMON (38) and CAP_NET_ADMIN (12) in the effective set.
fn has_caps() -> bool {
    effective_caps(&[39, 38, 12])
}

fn effective_caps(caps: &[u32]) -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    caps.iter().all(|c| eff & (1 << c) != 0)
}

/// Mount a pseudo filesystem when it is missing (fresh machines have neither).
/// `probe` is an entry that exists once it is mounted.
fn ensure_mounted(dir: &str, fstype: &str, probe: &str) -> Result<()> {
    if !probe.is_empty() && Path::new(dir).join(probe).exists() {
        return Ok(());
    }
    if probe.is_empty() && is_mountpoint(dir) {
        return Ok(());
    }
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL in constant");
    let (src, target, ty) = (c(fstype), c(dir), c(fstype));
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            ty.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!(
            "{fstype} is not mounted at {dir} and mounting it failed ({}); mount it: mount -t {fstype} {fstype} {dir}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn is_mountpoint(dir: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.lines().any(|l| l.split_whitespace().nth(4) == Some(dir)))
        .unwrap_or(false)
}
