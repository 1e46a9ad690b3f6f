//! The bench's results: per variant and flood, the median of the paired ratios
//! with their spread, as a Markdown table and JSON under bench/results/, with
//! the machine they were measured on and how busy it was.

use std::process::Command;

use serde_json::{json, Value};

use super::*;

pub(super) struct Row {
    pub(super) traffic: Traffic,
    pub(super) variant: Variant,
    pub(super) pps: f64,
    /// Median, quartiles and extremes of the per-run ratios (None for untraced).
    pub(super) ratio: Option<Spread>,
    pub(super) cpu_ns_per_pkt: f64,
    pub(super) steal: f64,
    pub(super) rss_mb: Option<f64>,
    pub(super) attach_s: Option<f64>,
    pub(super) detach_s: Option<f64>,
    pub(super) events_lost: Option<u64>,
    pub(super) verdicts: Option<u64>,
    pub(super) skipped: Option<u64>,
    pub(super) tool_cpu: Option<f64>,
    pub(super) runs: usize,
}

/// A sample's median and spread.
#[derive(Debug, Clone, Copy)]
pub(super) struct Spread {
    pub(super) median: f64,
    pub(super) p25: f64,
    pub(super) p75: f64,
    pub(super) min: f64,
    pub(super) max: f64,
}

impl Spread {
    pub(super) fn of(values: impl Iterator<Item = f64>) -> Option<Self> {
        let mut v: Vec<f64> = values.collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Some(Self {
            median: median(v.iter().copied()),
            p25: at(0.25),
            p75: at(0.75),
            min: v[0],
            max: v[v.len() - 1],
        })
    }

    fn json(&self) -> Value {
        json!({"median": self.median, "p25": self.p25, "p75": self.p75,
               "min": self.min, "max": self.max})
    }
}

/// How the run was made.
pub(super) struct Setup {
    pub(super) secs: f64,
    pub(super) reps: usize,
    /// Load averages before and after (`/proc/loadavg`).
    pub(super) load: [String; 2],
}

pub(super) struct Report {
    pub(super) rows: Vec<Row>,
    /// Every run, for anyone who wants other statistics.
    pub(super) runs: Vec<Value>,
    pub(super) setup: Setup,
    pub(super) pipeline: Option<f64>,
    pub(super) latencies: Vec<Latency>,
    /// The profile pass: one flood per variant with BPF run-time statistics.
    pub(super) profiles: Vec<(Traffic, Variant, Sample)>,
    pub(super) machine: Value,
}

impl Report {
    pub(super) fn new(
        samples: &[(Traffic, Variant, Sample)],
        traffics: &[Traffic],
        variants: &[Variant],
        setup: Setup,
        pipeline: Option<f64>,
        latencies: Vec<Latency>,
        profiles: Vec<(Traffic, Variant, Sample)>,
    ) -> Self {
        let mut rows = Vec::new();
        for &traffic in traffics {
            let of = |v: Variant| -> Vec<&Sample> {
                samples
                    .iter()
                    .filter(|(t, w, _)| *t == traffic && *w == v)
                    .map(|(_, _, s)| s)
                    .collect()
            };
            for variant in std::iter::once(Variant::Untraced).chain(variants.iter().copied()) {
                let s = of(variant);
                rows.push(Row {
                    traffic,
                    variant,
                    pps: median(s.iter().map(|s| s.pps)),
                    ratio: Spread::of(s.iter().filter_map(|s| s.ratio)),
                    cpu_ns_per_pkt: median(s.iter().map(|s| s.cpu_ns_per_pkt)),
                    steal: median(s.iter().map(|s| s.steal)),
                    rss_mb: opt_max(s.iter().map(|s| s.rss_mb)),
                    attach_s: opt_median(s.iter().map(|s| s.attach_s)),
                    detach_s: opt_median(s.iter().map(|s| s.detach_s)),
                    events_lost: s.iter().filter_map(|s| s.events_lost).max(),
                    verdicts: s.iter().filter_map(|s| s.verdicts).max(),
                    skipped: s.iter().filter_map(|s| s.skipped).max(),
                    tool_cpu: opt_median(s.iter().map(|s| s.tool_cpu)),
                    runs: s.len(),
                });
            }
        }
        let runs = samples
            .iter()
            .map(|(t, v, s)| {
                json!({"round": s.round, "flood": t.word(), "variant": v.word(),
                       "forwarded_pps": s.pps, "ratio_to_untraced": s.ratio,
                       "cpu_ns_per_packet": s.cpu_ns_per_pkt, "steal_share": s.steal,
                       "rss_mb": s.rss_mb, "attach_s": s.attach_s, "detach_s": s.detach_s,
                       "verdicts": s.verdicts, "skipped_requests": s.skipped,
                       "tool_cpu_share": s.tool_cpu})
            })
            .collect();
        Self {
            rows,
            runs,
            setup,
            pipeline,
            latencies,
            profiles,
            machine: machine(),
        }
    }

    pub(super) fn markdown(&self) -> String {
        let mut out = format!(
            "# pathtrace benchmark\n\n{} · kernel {} · {} CPUs · {} · pathtrace {}\n\n\
             Load average (1/5/15 min) before: {}; after: {}.\n\n\
             Each flood {} s of 46-byte packets from one guest through bridge, routing, conntrack \
             and MASQUERADE to the traced destination, in the traced protocol (UDP to port 53 \
             while DNS and ICMP are traced; ICMP echo while ICMP is); flood pinned to CPU 0, \
             tools to the others. {} paired round(s): every traced run sits between two \
             untraced runs and its ratio is to their mean; \"vs untraced\" is the median of \
             those ratios, with quartiles and extremes. The quiet VM pings once a second while \
             traced. CPU ns/pkt is busy time of all CPUs per forwarded packet; steal is CPU \
             time the hypervisor took; tool CPU is the tool's own process (user space and its \
             system calls) as a share of one CPU. Verdicts and \"not followed\" are the most \
             in one run.\n\n\
             | flood | variant | forwarded pkt/s | vs untraced | p25–p75 | min–max | CPU ns/pkt | steal | tool CPU | RSS MB | attach s | detach s | events lost | verdicts | not followed |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            self.machine["cpu"].as_str().unwrap_or("?"),
            self.machine["kernel"].as_str().unwrap_or("?"),
            self.machine["cpus"],
            self.machine["memory"].as_str().unwrap_or("?"),
            self.machine["pathtrace"].as_str().unwrap_or("?"),
            self.setup.load[0],
            self.setup.load[1],
            self.setup.secs,
            self.setup.reps,
        );
        let opt =
            |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
        let int = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        let pct = |v: f64| format!("{:.1}%", v * 100.0);
        // A profile-only run has no paired rounds: no rows to show.
        for r in self.rows.iter().filter(|r| r.runs > 0) {
            let (ratio, iqr, range) = match r.ratio {
                Some(s) => (
                    pct(s.median),
                    format!("{}–{}", pct(s.p25), pct(s.p75)),
                    format!("{}–{}", pct(s.min), pct(s.max)),
                ),
                None => ("100%".into(), "-".into(), "-".into()),
            };
            out.push_str(&format!(
                "| {} | {} | {:.0} | {ratio} | {iqr} | {range} | {:.0} | {:.1}% | {} | {} | {} | {} | {} | {} | {} |\n",
                r.traffic.word(),
                r.variant.word(),
                r.pps,
                r.cpu_ns_per_pkt,
                r.steal * 100.0,
                r.tool_cpu.map_or("-".to_string(), pct),
                opt(r.rss_mb, 1),
                opt(r.attach_s, 3),
                opt(r.detach_s, 3),
                int(r.events_lost),
                int(r.verdicts),
                int(r.skipped),
            ));
        }
        out.push_str(&self.profile_markdown());
        out.push_str(&self.latency_markdown());
        if let Some(p) = self.pipeline {
            out.push_str(&format!(
                "\nUser-space pipeline (decode + correlate, one core): {:.1} M events/s.\n",
                p / 1e6
            ));
        }
        out
    }

    /// Each BPF program's cost in the profile pass.
    fn profile_markdown(&self) -> String {
        if self.profiles.is_empty() {
            return String::new();
        }
        let mut out = String::from(
            "\nPer-program profile (one more flood per variant, with the kernel's BPF run-time \
             statistics on — `bpf(BPF_ENABLE_STATS)` held by the bench, not the sysctl; not \
             during the paired rounds above, since they cost every program two clock reads a \
             run). ns/run is `run_time_ns / run_cnt` of `bpf_prog_info`; runs/pkt per packet \
             forwarded to the sink; ns/pkt their product, the program's share of the CPU ns/pkt \
             above. ns/run includes the statistics' own clock reads around each run: compare \
             with the empty program's row (the floor variant), which does nothing. A program \
             attached at several hooks is one program (one row):\n\n\
             | flood | variant | program (hooks) | forwarded pkt/s | ns/run | runs/pkt | ns/pkt |\n\
             |---|---|---|---:|---:|---:|---:|\n",
        );
        for (traffic, variant, s) in &self.profiles {
            for p in &s.profile {
                out.push_str(&format!(
                    "| {} | {} | {} | {:.0} | {:.0} | {:.3} | {:.1} |\n",
                    traffic.word(),
                    variant.word(),
                    p.label,
                    s.pps,
                    p.ns_per_run,
                    p.runs_per_pkt,
                    p.ns_per_run * p.runs_per_pkt,
                ));
            }
        }
        out
    }

    /// Request → verdict, per outcome.
    fn latency_markdown(&self) -> String {
        let mut out = String::from(
            "\nFrom a guest's ping to its verdict (no flood; from starting `ping` in the \
             guest to the verdict line, so a few ms of process start are included):\n\n\
             | verdict | pings | median s | max s |\n|---|---:|---:|---:|\n",
        );
        for (word, s) in self.latency_spreads() {
            out.push_str(&format!(
                "| {word} | {} | {:.3} | {:.3} |\n",
                self.latencies.iter().filter(|l| l.verdict == word).count(),
                s.median,
                s.max
            ));
        }
        out
    }

    fn latency_spreads(&self) -> Vec<(&'static str, Spread)> {
        ["replied", "dropped", "no_reply"]
            .into_iter()
            .filter_map(|w| {
                let s = Spread::of(
                    self.latencies
                        .iter()
                        .filter(|l| l.verdict == w)
                        .map(|l| l.secs),
                )?;
                Some((w, s))
            })
            .collect()
    }

    pub(super) fn json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                json!({
                    "flood": r.traffic.word(), "variant": r.variant.word(),
                    "forwarded_pps": r.pps,
                    "ratio_to_untraced": r.ratio.map(|s| s.median),
                    "ratio_spread": r.ratio.map(|s| s.json()),
                    "cpu_ns_per_packet": r.cpu_ns_per_pkt, "steal_share": r.steal,
                    "rss_mb": r.rss_mb,
                    "attach_s": r.attach_s, "detach_s": r.detach_s,
                    "events_lost": r.events_lost, "verdicts": r.verdicts,
                    "skipped_requests": r.skipped, "tool_cpu_share": r.tool_cpu,
                    "runs": r.runs,
                })
            })
            .collect();
        let latency: serde_json::Map<String, Value> = self
            .latency_spreads()
            .into_iter()
            .map(|(w, s)| (w.to_string(), s.json()))
            .collect();
        let profile: Vec<Value> = self
            .profiles
            .iter()
            .flat_map(|(t, v, s)| {
                s.profile.iter().map(move |p| {
                    json!({"flood": t.word(), "variant": v.word(), "program": p.label,
                           "forwarded_pps": s.pps, "ns_per_run": p.ns_per_run,
                           "runs_per_packet": p.runs_per_pkt})
                })
            })
            .collect();
        json!({
            "machine": self.machine, "profile": profile, "flood_seconds": self.setup.secs,
            "rounds": self.setup.reps, "load_average": self.setup.load,
            "pipeline_events_per_s": self.pipeline, "rows": rows, "runs": self.runs,
            "verdict_latency_s": latency,
        })
    }
}

pub(super) fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub(super) fn opt_median(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = values.flatten().collect();
    (!v.is_empty()).then(|| median(v.into_iter()))
}

pub(super) fn opt_max(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    values.flatten().reduce(f64::max)
}

pub(super) fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_kb: f64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let rev = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(root())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    json!({
        "cpu": cpu,
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "memory": format!("{:.0} GB", mem_kb / 1024.0 / 1024.0),
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "pathtrace": rev,
    })
}

pub(super) fn machine_slug() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{cpus}cpu-linux-{}",
        kernel.trim().split('-').next().unwrap_or("unknown")
    )
}

pub(super) fn today() -> String {
    let out = Command::new("date").arg("+%Y-%m-%d").output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "undated".into())
}
