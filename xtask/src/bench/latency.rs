//! What a user waits for, without a flood: from a guest's ping to pathtrace's
//! verdict on it, for each outcome. The time runs from just before the bench
//! starts `ping` in the guest's namespace (so it includes starting ping: an
//! upper bound by a few milliseconds) to the verdict line on pathtrace's stdout.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::*;

/// An address behind the uplink that nobody answers: the ping leaves the host
/// and nothing comes back.
const SILENT: &str = "203.0.113.9";

/// One request and its verdict.
#[derive(Debug, Clone)]
pub(super) struct Latency {
    /// The verdict word pathtrace gave (`replied`, `dropped`, `no_reply`).
    pub(super) verdict: String,
    pub(super) secs: f64,
}

impl BenchLab {
    /// Replied and dropped pings to the destination, then (not in the smoke run)
    /// pings nobody answers.
    pub(super) fn latencies(&self, smoke: bool) -> Result<Vec<Latency>> {
        let each = if smoke { 1 } else { 5 };
        let mut out = Vec::new();
        let mut tool = self.trace_quiet(DEST)?;
        out.extend(self.pings(&tool, each, "replied")?);
        {
            let _rule = DropRule::add(&self.hv)?;
            out.extend(self.pings(&tool, each, "dropped")?);
        }
        tool.stop(Variant::TraceQuietVm, &mut Sample::default())?;
        if !smoke {
            let mut tool = self.trace_quiet(SILENT)?;
            out.extend(self.pings(&tool, 2, "no_reply")?);
            tool.stop(Variant::TraceQuietVm, &mut Sample::default())?;
        }
        Ok(out)
    }

    fn trace_quiet(&self, to: &str) -> Result<Tool> {
        let pathtrace = release_bin("pathtrace");
        let mut c = self.in_hv(pathtrace.to_str().context("path")?);
        c.args(["--vm-ip", QUIET, "--to", to, "--proto", "icmp"])
            .args(["--count", "100", "--timeout", "120", "--json"]);
        Tool::start(&mut c, Ready::Stderr("following"))
    }

    /// `n` pings from the quiet guest, one at a time, each waited for until its
    /// verdict; every verdict must be `want`.
    fn pings(&self, tool: &Tool, n: usize, want: &str) -> Result<Vec<Latency>> {
        let mut out = Vec::new();
        for _ in 0..n {
            eprintln!("bench: latency, one ping expected {want}");
            let to = if want == "no_reply" { SILENT } else { DEST };
            let sent = Instant::now();
            let mut ping = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", self.guest_ns(QUIET)))
                .args(["ping", "-q", "-c", "1", "-W", "1", to])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting ping")?;
            let verdict = next_verdict(tool, Duration::from_secs(10));
            let _ = ping.wait();
            let (at, v) = verdict?;
            let word = v["verdict"].as_str().unwrap_or("?").to_string();
            if word != want {
                bail!("latency: expected a {want} verdict, got {v}");
            }
            out.push(Latency {
                verdict: word,
                secs: at.duration_since(sent).as_secs_f64(),
            });
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(out)
    }
}

/// The next verdict line on the tool's stdout, with when it came.
fn next_verdict(tool: &Tool, wait: Duration) -> Result<(Instant, Value)> {
    let end = Instant::now() + wait;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let (at, line) = tool
            .lines
            .recv_timeout(left)
            .context("no verdict in time")?;
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if v["type"] == "verdict" {
            return Ok((at, v));
        }
    }
}

/// An nft rule in the hypervisor namespace dropping the quiet guest's echo
/// requests in the forward hook; removed on drop.
struct DropRule {
    hv: String,
}

const DROP_TABLE: &str = "ptbench_drop";

impl DropRule {
    fn add(hv: &str) -> Result<Self> {
        sh(&format!(
            "echo 'add table ip {DROP_TABLE}
add chain ip {DROP_TABLE} guestdrop {{ type filter hook forward priority 0; policy accept; }}
add rule ip {DROP_TABLE} guestdrop ip saddr {QUIET} icmp type echo-request drop' | ip netns exec {hv} nft -f -"
        ))?;
        Ok(Self { hv: hv.to_string() })
    }
}

impl Drop for DropRule {
    fn drop(&mut self) {
        let _ = sh(&format!(
            "ip netns exec {} nft delete table ip {DROP_TABLE}",
            self.hv
        ));
    }
}
