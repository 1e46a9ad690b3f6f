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
    io::{BufRead, BufReader, Read},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use pathtrace_tests::{
    counter::Counter,
    lab::{cleanup_stale_netns, remove_netns},
};
use serde_json::{json, Value};

use crate::{exec, release_bin, root};

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
    fn word(self) -> &'static str {
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

    fn is_deep(self) -> bool {
        matches!(self, Variant::DeepQuietVm | Variant::DeepFlooder)
    }

    fn word(self) -> &'static str {
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

    fn is_pathtrace(self) -> bool {
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
    round: usize,
    pps: f64,
    cpu_ns_per_pkt: f64,
    /// Share of the run's CPU time the hypervisor took away (steal).
    steal: f64,
    rss_mb: Option<f64>,
    attach_s: Option<f64>,
    detach_s: Option<f64>,
    events_lost: Option<u64>,
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

/// The namespaces: a hypervisor with two guests on `vmbr0` and a NAT uplink, and
/// the "internet" with the counting sink. Removed on drop.
struct BenchLab {
    hv: String,
    inet: String,
    guests: Vec<String>,
    sink: Counter,
}

impl BenchLab {
    fn up() -> Result<Self> {
        cleanup_stale_netns(PREFIX);
        let base = format!("{PREFIX}{}", std::process::id());
        let mut lab = Partial {
            names: vec![
                format!("{base}-hv"),
                format!("{base}-inet"),
                format!("{base}-g0"),
                format!("{base}-g1"),
            ],
            done: false,
        };
        for ns in &lab.names {
            sh(&format!("ip netns add {ns} && ip -n {ns} link set lo up"))?;
        }
        let (hv, inet) = (lab.names[0].clone(), lab.names[1].clone());
        sh(&format!(
            "ip -n {hv} link add vmbr0 address 02:00:00:00:02:01 type bridge stp_state 0 forward_delay 0 && \
             ip -n {hv} addr add 192.0.2.1/24 dev vmbr0 && ip -n {hv} link set vmbr0 up && \
             ip -n {hv} link add eth0 type veth peer name isp0 netns {inet} && \
             ip -n {hv} addr add 198.51.100.2/24 dev eth0 && ip -n {hv} link set eth0 up && \
             ip -n {hv} route add default via 198.51.100.1 && \
             ip netns exec {hv} sysctl -qw net.ipv4.ip_forward=1 && \
             ip -n {inet} addr add 198.51.100.1/24 dev isp0 && ip -n {inet} link set isp0 up && \
             ip -n {inet} addr add {DEST}/32 dev lo && \
             echo 'add table ip nat
add chain ip nat postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
add rule ip nat postrouting oifname \"eth0\" ip saddr 192.0.2.0/24 masquerade' | ip netns exec {hv} nft -f -"
        ))?;
        for (i, g) in lab.names[2..].iter().enumerate() {
            sh(&format!(
                "ip -n {hv} link add veth10{i}i0 type veth peer name eth0 netns {g} && \
                 ip -n {hv} link set veth10{i}i0 master vmbr0 && ip -n {hv} link set veth10{i}i0 up && \
                 ip -n {g} addr add 192.0.2.10{i}/24 dev eth0 && ip -n {g} link set eth0 up && \
                 ip -n {g} route add default via 192.0.2.1 && \
                 ip netns exec {g} ping -q -c 1 -W 2 192.0.2.1 >/dev/null"
            ))?;
        }
        let sink = Counter::attach_in_with(
            &Path::new("/run/netns").join(&inet),
            "isp0",
            Counter::attach_xdp_sink,
        )
        .context("attaching the XDP sink")?;
        lab.done = true;
        Ok(Self {
            hv,
            inet,
            guests: lab.names[2..].to_vec(),
            sink,
        })
    }

    /// `program` in the hypervisor namespace, kept off the flood's CPU.
    fn in_hv(&self, program: &str) -> Command {
        let mut c = Command::new("taskset");
        c.args(["-c", &tool_cpus()])
            .arg("nsenter")
            .arg(format!("--net=/run/netns/{}", self.hv))
            .arg(program);
        c
    }

    fn measure(&self, traffic: Traffic, variant: Variant, secs: f64) -> Result<Sample> {
        let mut tool = self.start_tool(traffic, variant)?;
        // Let the tool settle into its steady state before the flood.
        std::thread::sleep(Duration::from_millis(300));
        let (count0, cpu0) = (self.sink.count()?, CpuTimes::now()?);
        // The flood (and with it the forwarding, which runs in its softirq) on the
        // first CPU, tracers on the others: less scheduler noise between runs.
        let out = Command::new("taskset")
            .args(["-c", FLOOD_CPU])
            .arg("nsenter")
            .arg(format!("--net=/run/netns/{}", self.guests[0]))
            .arg(release_bin("fake-guest"))
            .args(["flood", "--proto", traffic.word(), "--dst", DEST])
            .args(["--seconds", &secs.to_string(), "--max", "200000000"])
            .output()
            .context("running the flood")?;
        let (count1, cpu1) = (self.sink.count()?, CpuTimes::now()?);
        let flood: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("flood said: {}", String::from_utf8_lossy(&out.stdout)))?;
        let flood_secs = flood["secs"].as_f64().unwrap_or(secs);
        let packets = count1.saturating_sub(count0);
        let mut sample = Sample {
            pps: packets as f64 / flood_secs,
            cpu_ns_per_pkt: (cpu1.busy_ns.saturating_sub(cpu0.busy_ns)) as f64
                / packets.max(1) as f64,
            steal: cpu1.steal_share_since(&cpu0),
            ..Sample::default()
        };
        if let Some(t) = tool.as_mut() {
            t.stop(variant, &mut sample)?;
        }
        Ok(sample)
    }

    fn start_tool(&self, traffic: Traffic, variant: Variant) -> Result<Option<Tool>> {
        let pathtrace = release_bin("pathtrace");
        let pathtrace = pathtrace.to_str().context("path")?;
        let proto = match traffic {
            Traffic::Udp => "any",
            Traffic::Icmp => "icmp",
        };
        let trace = |vm: &str| -> Vec<String> {
            ["--vm-ip", vm, "--to", DEST, "--proto", proto]
                .iter()
                .map(|s| s.to_string())
                .chain(["--count", "100000000", "--timeout", "600", "--json"].map(String::from))
                .collect()
        };
        let (mut cmd, ready) = match variant {
            Variant::Untraced => return Ok(None),
            Variant::Watch => {
                let mut c = self.in_hv(pathtrace);
                c.args(["watch", "--json", "--interval", "1"]);
                (c, Ready::Stderr("watching"))
            }
            Variant::TraceQuietVm => {
                let mut c = self.in_hv(pathtrace);
                c.args(trace(QUIET));
                (c, Ready::Stderr("following"))
            }
            Variant::TraceFlooder => {
                let mut c = self.in_hv(pathtrace);
                c.args(trace(FLOODER));
                (c, Ready::Stderr("following"))
            }
            Variant::DeepQuietVm | Variant::DeepFlooder => {
                let vm = if variant == Variant::DeepQuietVm {
                    QUIET
                } else {
                    FLOODER
                };
                let mut c = self.in_hv(pathtrace);
                c.args(trace(vm)).arg("--deep");
                (c, Ready::Stderr("following"))
            }
            Variant::Tcpdump => {
                let mut c = self.in_hv("tcpdump");
                c.args(["-i", "vmbr0", "-n", "-s", "128", "-w", "/dev/null"]);
                (c, Ready::Stderr("listening on"))
            }
            Variant::Bpftrace => {
                let mut c = self.in_hv("bpftrace");
                c.args([
                    "-e",
                    "tracepoint:skb:kfree_skb { @[args->reason] = count(); }",
                ]);
                (c, Ready::Stdout("Attaching"))
            }
        };
        Tool::start(&mut cmd, ready).map(Some)
    }
}

impl Drop for BenchLab {
    fn drop(&mut self) {
        for ns in [&self.hv, &self.inet].into_iter().chain(&self.guests) {
            remove_netns(ns);
        }
    }
}

/// Namespaces created so far; removed unless set-up completed.
struct Partial {
    names: Vec<String>,
    done: bool,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.done {
            for ns in &self.names {
                remove_netns(ns);
            }
        }
    }
}

enum Ready {
    Stderr(&'static str),
    Stdout(&'static str),
}

/// A tracer running during one flood.
struct Tool {
    child: Child,
    attach_s: f64,
    /// The last line it printed on stdout (pathtrace's summary or snapshot).
    last_line: Arc<Mutex<String>>,
}

impl Tool {
    fn start(cmd: &mut Command, ready: Ready) -> Result<Self> {
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
        // Drain both pipes so the tool can never block on them.
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if want_out && line.contains(needle) {
                    let _ = tx.send(());
                }
                *keep.lock().unwrap() = line;
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
        })
    }

    fn stop(&mut self, variant: Variant, sample: &mut Sample) -> Result<()> {
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
                bail!("a tracer ignored SIGINT");
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
        }
        Ok(())
    }
}

/// Peak resident memory (VmHWM) of a process, MB.
fn peak_rss_mb(pid: i32) -> Option<f64> {
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
struct CpuTimes {
    /// Everything but idle, iowait and steal.
    busy_ns: u64,
    steal_ns: u64,
    total_ns: u64,
}

impl CpuTimes {
    fn now() -> Result<Self> {
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

    fn steal_share_since(&self, before: &Self) -> f64 {
        let total = self.total_ns.saturating_sub(before.total_ns).max(1);
        self.steal_ns.saturating_sub(before.steal_ns) as f64 / total as f64
    }
}

fn pipeline_events_per_s() -> Result<Option<f64>> {
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

struct Row {
    traffic: Traffic,
    variant: Variant,
    pps: f64,
    ratio: f64,
    cpu_ns_per_pkt: f64,
    steal: f64,
    rss_mb: Option<f64>,
    attach_s: Option<f64>,
    detach_s: Option<f64>,
    events_lost: Option<u64>,
    runs: usize,
}

struct Report {
    rows: Vec<Row>,
    /// Every run, for anyone who wants other statistics.
    runs: Vec<Value>,
    secs: f64,
    reps: usize,
    pipeline: Option<f64>,
    machine: Value,
}

impl Report {
    fn new(
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

    fn markdown(&self) -> String {
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

    fn json(&self) -> Value {
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

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn opt_median(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = values.flatten().collect();
    (!v.is_empty()).then(|| median(v.into_iter()))
}

fn opt_max(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    values.flatten().reduce(f64::max)
}

fn machine() -> Value {
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

fn machine_slug() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{cpus}cpu-linux-{}",
        kernel.trim().split('-').next().unwrap_or("unknown")
    )
}

fn today() -> String {
    let out = Command::new("date").arg("+%Y-%m-%d").output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "undated".into())
}

fn sh(cmd: &str) -> Result<()> {
    exec(Command::new("sh").args(["-c", cmd]))
}
