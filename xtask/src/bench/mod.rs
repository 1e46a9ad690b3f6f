//! `cargo xtask bench`: what pathtrace costs a busy hypervisor, measured.
//!
//! A namespaced hypervisor whose guests are fast traffic sources (veth ports on
//! `vmbr0`, a kernel stack each) forwards bounded floods of small UDP and ICMP
//! packets through routing, conntrack and MASQUERADE to an uplink namespace, where
//! an XDP program counts what arrived (and drops the UDP before the kernel spends
//! anything on it; pings are answered, so their replies cross the host too).
//! Variants run interleaved, several times each, so noise hits them alike:
//! untraced; `pathtrace watch`; `pathtrace` tracing a quiet VM while another
//! floods; tracing the flooding VM itself; and as peers `tcpdump -w` on the bridge
//! and a bpftrace `skb:kfree_skb` one-liner. Reported: median forwarded packets/s
//! and its ratio to untraced, busy CPU per packet, and for pathtrace its resident
//! memory, attach and detach times and events lost; plus the user-space event
//! pipeline's events/s on one core.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::{exec, release_bin, root};

mod lab;
mod report;
mod tool;

use lab::*;
use report::*;
use tool::*;

const PREFIX: &str = "ptbench";
const DEST: &str = "203.0.113.8";
const FLOODER: &str = "192.0.2.100";
const QUIET: &str = "192.0.2.101";
/// The CPU the flood runs on.
const FLOOD_CPU: &str = "0";

/// The CPUs for tracers: all but the flood's (all of them on a 1-CPU machine).
fn tool_cpus() -> String {
    match std::thread::available_parallelism().map_or(1, |n| n.get()) {
        1 => "0".into(),
        n => format!("1-{}", n - 1),
    }
}

pub struct Options {
    /// One short iteration of a few variants, to keep the bench working (CI).
    pub smoke: bool,
    /// Only this flood ("udp" or "icmp").
    pub flood: Option<String>,
    /// Rounds of every variant.
    pub rounds: Option<usize>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Traffic {
    Udp,
    Icmp,
}

impl Traffic {
    pub(super) fn word(self) -> &'static str {
        match self {
            Traffic::Udp => "udp",
            Traffic::Icmp => "icmp",
        }
    }
}

/// Present when the kernel has kprobes (needed by `--deep`).
const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    Untraced,
    Watch,
    TraceQuietVm,
    TraceFlooder,
    /// `--deep` (kprobes): only where the kernel has kprobes.
    DeepQuietVm,
    DeepFlooder,
    Tcpdump,
    Bpftrace,
}

impl Variant {
    const ALL: [Variant; 8] = [
        Variant::Untraced,
        Variant::Watch,
        Variant::TraceQuietVm,
        Variant::TraceFlooder,
        Variant::DeepQuietVm,
        Variant::DeepFlooder,
        Variant::Tcpdump,
        Variant::Bpftrace,
    ];

    pub(super) fn is_deep(self) -> bool {
        matches!(self, Variant::DeepQuietVm | Variant::DeepFlooder)
    }

    pub(super) fn word(self) -> &'static str {
        match self {
            Variant::Untraced => "untraced",
            Variant::Watch => "pathtrace watch",
            Variant::TraceQuietVm => "pathtrace, quiet VM traced",
            Variant::TraceFlooder => "pathtrace, flooding VM traced",
            Variant::DeepQuietVm => "pathtrace --deep, quiet VM traced",
            Variant::DeepFlooder => "pathtrace --deep, flooding VM traced",
            Variant::Tcpdump => "tcpdump -w on the bridge",
            Variant::Bpftrace => "bpftrace kfree_skb one-liner",
        }
    }

    pub(super) fn is_pathtrace(self) -> bool {
        matches!(
            self,
            Variant::Watch
                | Variant::TraceQuietVm
                | Variant::TraceFlooder
                | Variant::DeepQuietVm
                | Variant::DeepFlooder
        )
    }
}

/// One flood under one variant.
#[derive(Debug, Clone, Default)]
struct Sample {
    /// Which round it was in (ratios pair a run with its round's untraced run).
    pub(super) round: usize,
    pub(super) pps: f64,
    pub(super) cpu_ns_per_pkt: f64,
    /// Share of the run's CPU time the hypervisor took away (steal).
    pub(super) steal: f64,
    pub(super) rss_mb: Option<f64>,
    pub(super) attach_s: Option<f64>,
    pub(super) detach_s: Option<f64>,
    pub(super) events_lost: Option<u64>,
}

pub fn run(opts: &Options) -> Result<()> {
    let bpftrace = !opts.smoke && ensure_bpftrace();
    let (secs, reps, traffics, variants): (f64, usize, Vec<Traffic>, Vec<Variant>) = if opts.smoke {
        (
            1.0,
            1,
            vec![Traffic::Udp],
            vec![Variant::Untraced, Variant::Watch, Variant::TraceQuietVm],
        )
    } else {
        (
            10.0,
            5,
            vec![Traffic::Udp, Traffic::Icmp],
            Variant::ALL.to_vec(),
        )
    };
    let reps = opts.rounds.unwrap_or(reps).max(1);
    let traffics: Vec<Traffic> = traffics
        .into_iter()
        .filter(|t| opts.flood.as_deref().is_none_or(|f| f == t.word()))
        .collect();
    if traffics.is_empty() {
        bail!("--flood is udp or icmp");
    }
    let variants: Vec<Variant> = variants
        .into_iter()
        .filter(|v| *v != Variant::Bpftrace || bpftrace)
        // Deep mode needs kprobes; a kernel without them (like the development
        // kernel) measures the rest.
        .filter(|v| !v.is_deep() || Path::new(KPROBE_PMU).exists())
        .collect();
    let lab = BenchLab::up()?;
    let mut samples: Vec<(Traffic, Variant, Sample)> = Vec::new();
    for rep in 0..reps {
        for &traffic in &traffics {
            // A different variant goes first each round, so none is always the one
            // right after a change of flood.
            let mut order = variants.clone();
            let turn = rep % order.len().max(1);
            order.rotate_left(turn);
            for &variant in &order {
                eprintln!(
                    "bench: run {}/{reps}, {} flood, {}",
                    rep + 1,
                    traffic.word(),
                    variant.word()
                );
                let s = lab
                    .measure(traffic, variant, secs)
                    .with_context(|| format!("{} / {}", traffic.word(), variant.word()))?;
                eprintln!(
                    "bench:   {:.0} packets/s, {:.0} ns CPU per packet",
                    s.pps, s.cpu_ns_per_pkt
                );
                samples.push((traffic, variant, Sample { round: rep, ..s }));
            }
        }
    }
    drop(lab);
    let pipeline = pipeline_events_per_s()?;
    let report = Report::new(&samples, &traffics, &variants, secs, reps, pipeline);
    let table = report.markdown();
    println!("{table}");
    let dir = if opts.smoke {
        root().join("target/bench-smoke")
    } else {
        root().join("bench/results")
    };
    std::fs::create_dir_all(&dir)?;
    let stem = format!("{}-{}", machine_slug(), today());
    std::fs::write(dir.join(format!("{stem}.md")), &table)?;
    std::fs::write(
        dir.join(format!("{stem}.json")),
        serde_json::to_string_pretty(&report.json())?,
    )?;
    eprintln!("bench: wrote {}/{stem}.{{md,json}}", dir.display());
    Ok(())
}

/// bpftrace is a peer to compare with, not a dependency: install it if we can.
fn ensure_bpftrace() -> bool {
    let have = || {
        Command::new("bpftrace")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if have() {
        return true;
    }
    eprintln!("bench: installing bpftrace (a peer to compare with)");
    let _ = Command::new("apt-get")
        .args(["install", "-y", "-qq", "bpftrace"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status();
    let ok = have();
    if !ok {
        eprintln!("bench: bpftrace unavailable; its row is left out");
    }
    ok
}

fn sh(cmd: &str) -> Result<()> {
    exec(Command::new("sh").args(["-c", cmd]))
}
