//! Per-program profile: what each of pathtrace's BPF programs costs per run and
//! how often it runs per forwarded packet, from the kernel's own run-time
//! statistics (`run_cnt`, `run_time_ns` of `bpf_prog_info`).
//!
//! The statistics are switched on with `bpf(BPF_ENABLE_STATS)`, which counts only
//! while its file descriptor is open — never the `kernel.bpf_stats_enabled`
//! sysctl, which would outlive the bench and is the host's. They cost every BPF
//! program on the host two clock reads per run, so they are on only during the
//! bench's profile pass, not while the paired rounds measure throughput.
//!
//! A tool's programs are found through its file descriptors: every prog and link
//! fd it holds names its program id in `/proc/PID/fdinfo`, and a link fd also
//! says where it is attached (a tcx device and direction, a raw tracepoint).
//! Other pathtrace processes on the machine are never mixed in.

use std::{
    collections::BTreeMap,
    os::fd::{FromRawFd, OwnedFd},
};

use anyhow::{bail, Result};

const BPF_PROG_GET_FD_BY_ID: u32 = 13;
const BPF_OBJ_GET_INFO_BY_FD: u32 = 15;
const BPF_ENABLE_STATS: u32 = 32;
const BPF_STATS_RUN_TIME: u32 = 0;

/// Offsets in `struct bpf_prog_info` (uapi, stable: fields are only appended).
const INFO_NAME: usize = 64;
const INFO_RUN_TIME_NS: usize = 192;
const INFO_RUN_CNT: usize = 200;
const INFO_LEN: usize = 256;

fn bpf(cmd: u32, attr: &mut [u8; 128]) -> Result<i64> {
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        bail!("bpf({cmd}): {}", std::io::Error::last_os_error());
    }
    Ok(rc)
}

/// BPF run-time statistics, counted while this is alive.
pub(super) struct RunTimeStats(#[allow(dead_code)] OwnedFd);

impl RunTimeStats {
    pub(super) fn enable() -> Result<Self> {
        let mut attr = [0u8; 128];
        attr[..4].copy_from_slice(&BPF_STATS_RUN_TIME.to_le_bytes());
        let fd = bpf(BPF_ENABLE_STATS, &mut attr)?;
        // SAFETY: a new fd the kernel just handed us.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }
}

/// One program's counters at one moment.
#[derive(Debug, Clone, Default)]
pub(super) struct ProgCounters {
    /// What it is and where it runs, e.g. "TC off-port egress (eth0, vmbr0)".
    pub(super) label: String,
    pub(super) run_cnt: u64,
    pub(super) run_time_ns: u64,
}

/// One program over one flood.
#[derive(Debug, Clone)]
pub(super) struct ProgProfile {
    pub(super) label: String,
    pub(super) ns_per_run: f64,
    pub(super) runs_per_pkt: f64,
}

/// The programs process `pid` holds whose names start with `prefix`, by id.
/// `ifname` names a device index (the hypervisor namespace's).
pub(super) fn snapshot(
    pid: u32,
    prefix: &str,
    ifname: &dyn Fn(u32) -> String,
) -> BTreeMap<u32, ProgCounters> {
    let mut hooks: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return BTreeMap::new();
    };
    for entry in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let Some(id) = field(&text, "prog_id:").and_then(|v| v.parse().ok()) else {
            continue;
        };
        let at = hooks.entry(id).or_default();
        if let Some(hook) = link_hook(&text, ifname) {
            at.push(hook);
        }
    }
    hooks
        .into_iter()
        .filter_map(|(id, mut at)| {
            let (name, run_time_ns, run_cnt) = prog_info(id).ok()?;
            if !name.starts_with(prefix) {
                return None;
            }
            at.sort();
            at.dedup();
            Some((
                id,
                ProgCounters {
                    label: format!("{} ({})", kind(&name), at.join(", ")),
                    run_cnt,
                    run_time_ns,
                },
            ))
        })
        .collect()
}

/// Per program, from two snapshots around a flood of `packets` forwarded
/// packets; programs that never ran are left out.
pub(super) fn between(
    before: &BTreeMap<u32, ProgCounters>,
    after: &BTreeMap<u32, ProgCounters>,
    packets: u64,
) -> Vec<ProgProfile> {
    after
        .iter()
        .filter_map(|(id, a)| {
            let b = before.get(id).cloned().unwrap_or_default();
            let runs = a.run_cnt.saturating_sub(b.run_cnt);
            (runs > 0).then(|| ProgProfile {
                label: a.label.clone(),
                ns_per_run: a.run_time_ns.saturating_sub(b.run_time_ns) as f64 / runs as f64,
                runs_per_pkt: runs as f64 / packets.max(1) as f64,
            })
        })
        .collect()
}

/// A readable kind for a program's (kernel-truncated, 15-byte) name.
fn kind(name: &str) -> &'static str {
    match name {
        n if n.starts_with("pathtrace_tc_po") => "TC VM port",
        n if n.starts_with("pathtrace_tc_in") => "TC off-port ingress",
        n if n.starts_with("pathtrace_tc_eg") => "TC off-port egress",
        n if n.starts_with("pathtrace_kfree") => "skb:kfree_skb",
        n if n.starts_with("pathtrace_consu") => "skb:consume_skb",
        n if n.starts_with("pathtrace_watch") => "watch skb:kfree_skb",
        n if n.starts_with("pathtrace_deep") => "deep kprobe",
        n if n.starts_with("pt_bench_pass") => "empty TC program",
        _ => "other",
    }
}

/// Where a link fd attaches its program: "vmbr0 egress", "kfree_skb".
fn link_hook(fdinfo: &str, ifname: &dyn Fn(u32) -> String) -> Option<String> {
    if let Some(tp) = field(fdinfo, "tp_name:") {
        return Some(tp.to_string());
    }
    let ifindex: u32 = field(fdinfo, "ifindex:")?.parse().ok()?;
    // "attach_type:\t46 (tcx_ingress)" on 6.18; the number alone on older kernels.
    let dir = match field(fdinfo, "attach_type:")? {
        t if t.contains("ingress") || t.starts_with("46") => "ingress",
        t if t.contains("egress") || t.starts_with("47") => "egress",
        _ => "?",
    };
    Some(format!("{} {dir}", ifname(ifindex)))
}

fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim())
}

/// (name, run_time_ns, run_cnt) of program `id`.
fn prog_info(id: u32) -> Result<(String, u64, u64)> {
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&id.to_le_bytes());
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)?;
    // SAFETY: a new fd the kernel just handed us; closed on drop.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut info = [0u8; INFO_LEN];
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&(std::os::fd::AsRawFd::as_raw_fd(&fd) as u32).to_le_bytes());
    attr[4..8].copy_from_slice(&(INFO_LEN as u32).to_le_bytes());
    attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_le_bytes());
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let name = &info[INFO_NAME..INFO_NAME + 16];
    let name = String::from_utf8_lossy(&name[..name.iter().position(|&b| b == 0).unwrap_or(16)]);
    let u64_at = |at: usize| u64::from_le_bytes(info[at..at + 8].try_into().unwrap());
    Ok((
        name.into_owned(),
        u64_at(INFO_RUN_TIME_NS),
        u64_at(INFO_RUN_CNT),
    ))
}
