//! The bench's results: medians per variant and traffic, as a Markdown table
//! and JSON under bench/results/, with the machine they were measured on.

use std::process::Command;

use serde_json::{json, Value};

use super::*;

pub(super) struct Row {
    pub(super) traffic: Traffic,
    pub(super) variant: Variant,
    pub(super) pps: f64,
    pub(super) ratio: f64,
    pub(super) cpu_ns_per_pkt: f64,
    pub(super) steal: f64,
    pub(super) rss_mb: Option<f64>,
    pub(super) attach_s: Option<f64>,
    pub(super) detach_s: Option<f64>,
    pub(super) events_lost: Option<u64>,
    pub(super) runs: usize,
}

pub(super) struct Report {
    pub(super) rows: Vec<Row>,
    /// Every run, for anyone who wants other statistics.
    pub(super) runs: Vec<Value>,
    pub(super) secs: f64,
    pub(super) reps: usize,
    pub(super) pipeline: Option<f64>,
    pub(super) machine: Value,
}

impl Report {
    pub(super) fn new(
        samples: &[(Traffic, Variant, Sample)],
        traffics: &[Traffic],
        variants: &[Variant],
        secs: f64,
        reps: usize,
        pipeline: Option<f64>,
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
            let base = of(Variant::Untraced);
            for &variant in variants {
                let s = of(variant);
                let pps = median(s.iter().map(|s| s.pps));
                rows.push(Row {
                    traffic,
                    variant,
                    pps,
                    // Paired: each run against the untraced run of its own round,
                    // which cancels slow drifts of the machine.
                    ratio: median(s.iter().filter_map(|s| {
                        let b = base.iter().find(|b| b.round == s.round)?;
                        (b.pps > 0.0).then(|| s.pps / b.pps)
                    })),
                    cpu_ns_per_pkt: median(s.iter().map(|s| s.cpu_ns_per_pkt)),
                    steal: median(s.iter().map(|s| s.steal)),
                    rss_mb: opt_max(s.iter().map(|s| s.rss_mb)),
                    attach_s: opt_median(s.iter().map(|s| s.attach_s)),
                    detach_s: opt_median(s.iter().map(|s| s.detach_s)),
                    events_lost: s.iter().filter_map(|s| s.events_lost).max(),
                    runs: s.len(),
                });
            }
        }
        let runs = samples
            .iter()
            .map(|(t, v, s)| {
                json!({"round": s.round, "flood": t.word(), "variant": v.word(),
                       "forwarded_pps": s.pps, "cpu_ns_per_packet": s.cpu_ns_per_pkt,
                       "steal_share": s.steal})
            })
            .collect();
        Self {
            rows,
            runs,
            secs,
            reps,
            pipeline,
            machine: machine(),
        }
    }

    pub(super) fn markdown(&self) -> String {
        let mut out = format!(
            "# pathtrace benchmark\n\n{} · kernel {} · {} CPUs · {} · pathtrace {}\n\n\
             Each flood {} s of 46-byte packets from one guest through bridge, routing, conntrack \
             and MASQUERADE (flood pinned to CPU 0, tracers to the others); {} run(s) per \
             variant, interleaved, each round in another order; medians (\"vs untraced\" is the \
             median of each run's ratio to its round's untraced run). CPU ns/pkt is busy \
             time of all CPUs per forwarded packet; steal is CPU time the hypervisor took.\n\n\
             | flood | variant | forwarded pkt/s | vs untraced | CPU ns/pkt | steal | RSS MB | attach s | detach s | events lost |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            self.machine["cpu"].as_str().unwrap_or("?"),
            self.machine["kernel"].as_str().unwrap_or("?"),
            self.machine["cpus"],
            self.machine["memory"].as_str().unwrap_or("?"),
            self.machine["pathtrace"].as_str().unwrap_or("?"),
            self.secs,
            self.reps,
        );
        let opt =
            |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
        for r in &self.rows {
            out.push_str(&format!(
                "| {} | {} | {:.0} | {:.1}% | {:.0} | {:.1}% | {} | {} | {} | {} |\n",
                r.traffic.word(),
                r.variant.word(),
                r.pps,
                r.ratio * 100.0,
                r.cpu_ns_per_pkt,
                r.steal * 100.0,
                opt(r.rss_mb, 1),
                opt(r.attach_s, 3),
                opt(r.detach_s, 3),
                r.events_lost.map_or("-".to_string(), |v| v.to_string()),
            ));
        }
        if let Some(p) = self.pipeline {
            out.push_str(&format!(
                "\nUser-space pipeline (decode + correlate, one core): {:.1} M events/s.\n",
                p / 1e6
            ));
        }
        out
    }

    pub(super) fn json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                json!({
                    "flood": r.traffic.word(), "variant": r.variant.word(),
                    "forwarded_pps": r.pps, "ratio_to_untraced": r.ratio,
                    "cpu_ns_per_packet": r.cpu_ns_per_pkt, "steal_share": r.steal,
                    "rss_mb": r.rss_mb,
                    "attach_s": r.attach_s, "detach_s": r.detach_s,
                    "events_lost": r.events_lost, "runs": r.runs,
                })
            })
            .collect();
        json!({
            "machine": self.machine, "flood_seconds": self.secs, "repetitions": self.reps,
            "pipeline_events_per_s": self.pipeline, "rows": rows, "runs": self.runs,
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
