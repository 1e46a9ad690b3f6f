//! A measured tool (pathtrace, tcpdump, bpftrace) started alongside the flood:
//! when it is ready, what it costs in CPU and memory.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::*;

pub(super) enum Ready {
    Stderr(&'static str),
    Stdout(&'static str),
}

/// A tracer running during one flood.
pub(super) struct Tool {
    pub(super) child: Child,
    pub(super) attach_s: f64,
    /// The last line it printed on stdout (pathtrace's summary or snapshot).
    pub(super) last_line: Arc<Mutex<String>>,
    /// Every line on stdout with when it came (a verdict's time, for latency).
    pub(super) lines: std::sync::mpsc::Receiver<(Instant, String)>,
}

impl Tool {
    pub(super) fn start(cmd: &mut Command, ready: Ready) -> Result<Self> {
        let started = Instant::now();
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        let out = child.stdout.take().context("stdout")?;
        let err = child.stderr.take().context("stderr")?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let last_line = Arc::new(Mutex::new(String::new()));
        let want_out = matches!(ready, Ready::Stdout(_));
        let needle = match ready {
            Ready::Stderr(s) | Ready::Stdout(s) => s,
        };
        let keep = last_line.clone();
        let tx = ready_tx.clone();
        let (lines_tx, lines) = std::sync::mpsc::channel();
        // Drain both pipes so the tool can never block on them.
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let at = Instant::now();
                if want_out && line.contains(needle) {
                    let _ = tx.send(());
                }
                *keep.lock().unwrap() = line.clone();
                let _ = lines_tx.send((at, line));
            }
        });
        std::thread::spawn(move || {
            let mut err = BufReader::new(err);
            let mut line = String::new();
            while err.read_line(&mut line).unwrap_or(0) > 0 {
                if !want_out && line.contains(needle) {
                    let _ = ready_tx.send(());
                }
                line.clear();
            }
            let _ = err.read_to_string(&mut line);
        });
        if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} did not become ready");
        }
        Ok(Self {
            child,
            attach_s: started.elapsed().as_secs_f64(),
            last_line,
            lines,
        })
    }

    pub(super) fn stop(&mut self, variant: Variant, sample: &mut Sample) -> Result<()> {
        let pid = self.child.id() as i32;
        if variant.is_pathtrace() {
            sample.rss_mb = peak_rss_mb(pid);
            sample.attach_s = Some(self.attach_s);
        }
        let t = Instant::now();
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid, libc::SIGINT) };
        loop {
            if self.child.try_wait()?.is_some() {
                break;
            }
            if t.elapsed() > Duration::from_secs(20) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                // pathtrace must detach promptly; a peer (bpftrace printing its
                // maps on a loaded machine) may take longer: its run still counts.
                if variant.is_pathtrace() {
                    bail!("pathtrace ignored SIGINT for 20 s");
                }
                eprintln!("bench: {} took over 20 s to stop; killed", variant.word());
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if variant.is_pathtrace() {
            sample.detach_s = Some(t.elapsed().as_secs_f64());
            // Let the reader thread take the last line.
            std::thread::sleep(Duration::from_millis(50));
            let last: Value =
                serde_json::from_str(&self.last_line.lock().unwrap()).unwrap_or(Value::Null);
            sample.events_lost = last["events_lost"]
                .as_u64()
                .or_else(|| last["self"]["events_lost"].as_u64());
            sample.verdicts = last["probes"].as_u64();
            sample.skipped = last["skipped_requests"].as_u64();
        }
        Ok(())
    }
}

/// CPU time (user + system) a process used so far, seconds.
pub(super) fn process_cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) closing with ')'.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after ')'.
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(ticks / hz)
}

/// Peak resident memory (VmHWM) of a process, MB.
pub(super) fn peak_rss_mb(pid: i32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// CPU time of the whole machine so far (/proc/stat, all CPUs), ns.
pub(super) struct CpuTimes {
    /// Everything but idle, iowait and steal.
    pub(super) busy_ns: u64,
    pub(super) steal_ns: u64,
    pub(super) total_ns: u64,
}

impl CpuTimes {
    pub(super) fn now() -> Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let cpu = stat.lines().next().context("/proc/stat is empty")?;
        let v: Vec<u64> = cpu
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        if v.len() < 8 {
            bail!("unexpected /proc/stat: {cpu}");
        }
        // user nice system idle iowait irq softirq steal
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        let ns = |j: u64| j * 1_000_000_000 / hz;
        let total: u64 = v.iter().take(8).sum();
        Ok(Self {
            busy_ns: ns(total - v[3] - v[4] - v[7]),
            steal_ns: ns(v[7]),
            total_ns: ns(total),
        })
    }

    pub(super) fn steal_share_since(&self, before: &Self) -> f64 {
        let total = self.total_ns.saturating_sub(before.total_ns).max(1);
        self.steal_ns.saturating_sub(before.steal_ns) as f64 / total as f64
    }
}

pub(super) fn pipeline_events_per_s() -> Result<Option<f64>> {
    eprintln!("bench: user-space event pipeline (decode + correlate, one core)");
    let out = crate::cargo()
        .args(["test", "--release", "-p", "tracer", "--bin", "pathtrace"])
        .args(["pipeline_throughput", "--", "--ignored", "--nocapture"])
        .stderr(Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("pipeline: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok()))
}
