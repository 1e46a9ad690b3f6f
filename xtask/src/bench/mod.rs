//! `cargo xtask bench`: what pathtrace costs a busy hypervisor, measured.
//!
//! A namespaced hypervisor whose guests are fast traffic sources (veth ports on
//! `vmbr0`, a kernel stack each) forwards bounded floods of small UDP and ICMP
//! packets, and of TCP connection attempts (SYNs), through routing, conntrack
//! and MASQUERADE to an uplink namespace, where an XDP program counts what
//! arrived (and drops the UDP before the kernel spends anything on it; pings
//! are answered, and SYNs refused, so their replies cross the host too). The
//! floods go to the destination the traced flow goes to, in its protocol (UDP to
//! port 53 while DNS is traced, ICMP echo while pings are, SYNs to port 8080
//! while that port's TCP is traced): the dearest case.
//!
//! Paired rounds: every traced run sits between two untraced runs of the same
//! flood, and its ratio is to their mean (which cancels the machine's drift);
//! each round takes the variants in another order. Variants: `pathtrace watch`;
//! `pathtrace` tracing a quiet VM (which pings once a second) while another
//! floods; tracing the flooding VM itself; and as peers `tcpdump -w` on the bridge
//! and a bpftrace `skb:kfree_skb` one-liner; and programs that do nothing at the
//! bridge's and uplink's TC hooks, the floor of any hook there. Reported: the median of the per-run
//! ratios with their spread, forwarded packets/s, busy CPU per packet, and for
//! pathtrace its resident memory, attach and detach times, events lost and
//! requests not followed; then, without a flood, what a user waits for: from a
//! guest's request to its verdict, for each outcome (replied, dropped,
//! no_reply); plus the user-space event pipeline's events/s on one core.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::{exec, release_bin, root};

mod lab;
mod latency;
mod profile;
mod report;
mod tool;
pub mod vm;

use lab::*;
use latency::*;
use profile::*;
use report::*;
use tool::*;

const PREFIX: &str = "ptbench";
const DEST: &str = "203.0.113.8";
const FLOODER: &str = "192.0.2.100";
const QUIET: &str = "192.0.2.101";
/// The port the TCP flood opens connections to, and the traced one.
const TCP_PORT: &str = "8080";
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
    /// Only the per-program profile pass (no paired rounds, no latencies).
    pub profile_only: bool,
    /// Results here instead of bench/results/ (the run inside `--vm`, whose
    /// checkout is read-only).
    pub out_dir: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Traffic {
    /// UDP to port 53 of the traced destination (DNS is traced too).
    Udp,
    /// ICMP echo to the traced destination.
    Icmp,
    /// TCP connection attempts (a SYN from a new port each) to a port of the
    /// traced destination, while pathtrace follows that port's TCP.
    Tcp,
}

impl Traffic {
    pub(super) fn word(self) -> &'static str {
        match self {
            Traffic::Udp => "udp",
            Traffic::Icmp => "icmp",
            Traffic::Tcp => "tcp",
        }
    }

    /// The flood's own arguments beyond its protocol.
    pub(super) fn flood_args(self) -> &'static [&'static str] {
        match self {
            Traffic::Udp => &["--port", "53"],
            Traffic::Icmp => &[],
            Traffic::Tcp => &["--port", TCP_PORT],
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
    /// Programs that do nothing at the bridge's and the uplink's TC hooks (both
    /// directions): what having hooks there at all costs — the floor under
    /// tracing a quiet VM, whose programs there return at once while nothing
    /// is in flight.
    PassHooks,
}

impl Variant {
    const ALL: [Variant; 9] = [
        Variant::Untraced,
        Variant::Watch,
        Variant::TraceQuietVm,
        Variant::TraceFlooder,
        Variant::DeepQuietVm,
        Variant::DeepFlooder,
        Variant::Tcpdump,
        Variant::Bpftrace,
        Variant::PassHooks,
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
            Variant::PassHooks => "empty TC programs at bridge and uplink (floor)",
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
    /// Which round it was in.
    pub(super) round: usize,
    /// A traced run's rate over the mean of the untraced runs right before and
    /// after it.
    pub(super) ratio: Option<f64>,
    /// pathtrace trace: verdicts printed and requests not followed.
    pub(super) verdicts: Option<u64>,
    pub(super) skipped: Option<u64>,
    /// The tool's own CPU time during the flood, as a share of one CPU.
    pub(super) tool_cpu: Option<f64>,
    pub(super) pps: f64,
    pub(super) cpu_ns_per_pkt: f64,
    /// Share of the run's CPU time the hypervisor took away (steal).
    pub(super) steal: f64,
    pub(super) rss_mb: Option<f64>,
    pub(super) attach_s: Option<f64>,
    pub(super) detach_s: Option<f64>,
    pub(super) events_lost: Option<u64>,
    /// With a profile: each BPF program's cost over the flood.
    pub(super) profile: Vec<ProgProfile>,
}

pub fn run(opts: &Options) -> Result<()> {
    // Not in the VM (`--vm`): bpftrace's start-up (an LLVM compile) takes over
    // its 30-s readiness limit under TCG at times, and a peer there tells nothing
    // the host's run does not.
    let bpftrace = !opts.smoke && opts.out_dir.is_none() && ensure_bpftrace();
    let (secs, reps, traffics, variants): (f64, usize, Vec<Traffic>, Vec<Variant>) = if opts.smoke {
        (
            1.0,
            1,
            vec![Traffic::Udp],
            vec![Variant::Watch, Variant::TraceQuietVm],
        )
    } else {
        (
            ROUND_SECS,
            ROUNDS,
            vec![Traffic::Udp, Traffic::Icmp, Traffic::Tcp],
            Variant::ALL[1..].to_vec(),
        )
    };
    let reps = opts.rounds.unwrap_or(reps).max(1);
    let traffics: Vec<Traffic> = traffics
        .into_iter()
        .filter(|t| opts.flood.as_deref().is_none_or(|f| f == t.word()))
        .collect();
    if traffics.is_empty() {
        bail!("--flood is udp, icmp or tcp");
    }
    let variants: Vec<Variant> = variants
        .into_iter()
        .filter(|v| *v != Variant::Bpftrace || bpftrace)
        // Deep mode needs kprobes; a kernel without them (like the development
        // kernel) measures the rest.
        .filter(|v| !v.is_deep() || Path::new(KPROBE_PMU).exists())
        .collect();
    let load_before = load_average();
    let lab = BenchLab::up()?;
    let mut samples: Vec<(Traffic, Variant, Sample)> = Vec::new();
    let rounds = if opts.profile_only { 0 } else { reps };
    for rep in 0..rounds {
        for &traffic in &traffics {
            // A different variant goes first each round, so none is always the one
            // right after a change of flood.
            let mut order = variants.clone();
            let turn = rep % order.len().max(1);
            order.rotate_left(turn);
            samples.extend(paired_round(&lab, traffic, &order, secs, rep, reps)?);
        }
    }
    let profiles = profile_pass(&lab, &traffics, &variants, secs)?;
    let latencies = if opts.profile_only {
        Vec::new()
    } else {
        lab.latencies(opts.smoke)?
    };
    drop(lab);
    let load_after = load_average();
    // The pipeline is user space alone, measured by building a test with cargo:
    // not in the VM (no cargo, a read-only checkout; the host's figure holds).
    let pipeline = if opts.profile_only || opts.out_dir.is_some() {
        None
    } else {
        pipeline_events_per_s()?
    };
    let report = Report::new(
        &samples,
        &traffics,
        &variants,
        Setup {
            secs,
            reps,
            load: [load_before, load_after],
        },
        pipeline,
        latencies,
        profiles,
    );
    let table = report.markdown();
    println!("{table}");
    let dir = if let Some(dir) = &opts.out_dir {
        dir.clone()
    } else if opts.smoke {
        root().join("target/bench-smoke")
    } else if opts.profile_only {
        root().join("target/bench-profile")
    } else {
        root().join("bench/results")
    };
    std::fs::create_dir_all(&dir)?;
    let stem = unused_stem(&dir, &format!("{}-{}", machine_slug(), today()));
    std::fs::write(dir.join(format!("{stem}.md")), &table)?;
    std::fs::write(
        dir.join(format!("{stem}.json")),
        serde_json::to_string_pretty(&report.json())?,
    )?;
    eprintln!("bench: wrote {}/{stem}.{{md,json}}", dir.display());
    Ok(())
}

/// `base`, or `base-2`, `base-3`, ...: a second run on the same day keeps the
/// first one's results (committed runs are named by machine and date).
pub(crate) fn unused_stem(dir: &std::path::Path, base: &str) -> String {
    (1..)
        .map(|n| match n {
            1 => base.to_string(),
            n => format!("{base}-{n}"),
        })
        .find(|stem| !dir.join(format!("{stem}.md")).exists())
        .expect("an unused name")
}

/// Rounds and seconds per run of a full bench: ten paired rounds of two floods
/// and five variants is 2 × (5 + 6) runs a round, about 20 minutes in all.
const ROUNDS: usize = 10;
const ROUND_SECS: f64 = 4.0;

/// One flood of each pathtrace variant and the empty hooks with the kernel's
/// BPF run-time statistics on (and only then: they cost every program two clock
/// reads a run, which the paired rounds must not pay).
fn profile_pass(
    lab: &BenchLab,
    traffics: &[Traffic],
    variants: &[Variant],
    secs: f64,
) -> Result<Vec<(Traffic, Variant, Sample)>> {
    let _stats = RunTimeStats::enable().context("enabling BPF run-time statistics")?;
    let mut out = Vec::new();
    for &traffic in traffics {
        for &variant in variants
            .iter()
            .filter(|v| v.is_pathtrace() || **v == Variant::PassHooks)
        {
            eprintln!(
                "bench: profile, {} flood, {}",
                traffic.word(),
                variant.word()
            );
            let s = lab.measure(traffic, variant, secs, true)?;
            out.push((traffic, variant, s));
        }
    }
    Ok(out)
}

/// One round of one flood: untraced, then each variant followed by untraced
/// again, so every traced run has an untraced one on each side.
fn paired_round(
    lab: &BenchLab,
    traffic: Traffic,
    order: &[Variant],
    secs: f64,
    rep: usize,
    reps: usize,
) -> Result<Vec<(Traffic, Variant, Sample)>> {
    let run = |variant: Variant| -> Result<Sample> {
        eprintln!(
            "bench: round {}/{reps}, {} flood, {}",
            rep + 1,
            traffic.word(),
            variant.word()
        );
        let s = lab
            .measure(traffic, variant, secs, false)
            .with_context(|| format!("{} / {}", traffic.word(), variant.word()))?;
        eprintln!(
            "bench:   {:.0} packets/s, {:.0} ns CPU per packet",
            s.pps, s.cpu_ns_per_pkt
        );
        Ok(Sample { round: rep, ..s })
    };
    let mut out = Vec::new();
    let mut before = run(Variant::Untraced)?;
    out.push((traffic, Variant::Untraced, before.clone()));
    for &variant in order {
        let mut traced = run(variant)?;
        let after = run(Variant::Untraced)?;
        let base = (before.pps + after.pps) / 2.0;
        traced.ratio = (base > 0.0).then(|| traced.pps / base);
        out.push((traffic, variant, traced));
        out.push((traffic, Variant::Untraced, after.clone()));
        before = after;
    }
    Ok(out)
}

/// The 1-, 5- and 15-minute load averages: the machine is shared, and numbers
/// taken while others build are noisy.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
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
