//! The bench's namespaces: a hypervisor whose guests flood through NAT to an
//! uplink namespace that counts what arrived.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context, Result};
use pathtrace_tests::{
    counter::{Counter, PassHooks},
    lab::{cleanup_stale_netns, remove_netns},
};
use serde_json::Value;

use super::*;

/// The namespaces: a hypervisor with two guests on `vmbr0` and a NAT uplink, and
/// the "internet" with the counting sink. Removed on drop.
pub(super) struct BenchLab {
    pub(super) hv: String,
    pub(super) inet: String,
    pub(super) guests: Vec<String>,
    pub(super) sink: Counter,
}

impl BenchLab {
    pub(super) fn up() -> Result<Self> {
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
    pub(super) fn in_hv(&self, program: &str) -> Command {
        let mut c = Command::new("taskset");
        c.args(["-c", &tool_cpus()])
            .arg("nsenter")
            .arg(format!("--net=/run/netns/{}", self.hv))
            .arg(program);
        c
    }

    /// One flood under `variant`; with `profile`, also what each of the
    /// variant's BPF programs cost (run-time statistics must be on).
    pub(super) fn measure(
        &self,
        traffic: Traffic,
        variant: Variant,
        secs: f64,
        profile: bool,
    ) -> Result<Sample> {
        let mut tool = self.start_tool(traffic, variant)?;
        let hooks = (variant == Variant::PassHooks)
            .then(|| self.pass_hooks())
            .transpose()?;
        // Let the tool settle into its steady state before the flood.
        std::thread::sleep(Duration::from_millis(300));
        // The traced quiet VM is not silent: it pings once a second, as someone
        // tracing it would, so the hooks off its port are armed now and then.
        let mut pinger = (variant == Variant::TraceQuietVm)
            .then(|| self.quiet_pings(secs))
            .transpose()?;
        let tool_cpu = || tool.as_ref().and_then(|t| process_cpu_s(t.child.id()));
        let tool_cpu0 = tool_cpu();
        // Whose programs to profile: the tool's, or the bench's own empty hooks.
        let profiled = match (&tool, variant) {
            (Some(t), _) if variant.is_pathtrace() => Some((t.child.id(), "pathtrace")),
            (_, Variant::PassHooks) => Some((std::process::id(), "pt_bench_pass")),
            _ => None,
        }
        .filter(|_| profile);
        let names = self.ifnames();
        let ifname = |i: u32| names.get(&i).cloned().unwrap_or_else(|| i.to_string());
        let progs0 = profiled.map(|(pid, prefix)| snapshot(pid, prefix, &ifname));
        let (count0, cpu0) = (self.sink.count()?, CpuTimes::now()?);
        // The flood (and with it the forwarding, which runs in its softirq) on the
        // first CPU, tracers on the others: less scheduler noise between runs.
        let out = Command::new("taskset")
            .args(["-c", FLOOD_CPU])
            .arg("nsenter")
            .arg(format!("--net=/run/netns/{}", self.guests[0]))
            .arg(release_bin("fake-guest"))
            .args(["flood", "--proto", traffic.word(), "--dst", DEST])
            .args(traffic.flood_args())
            .args(["--seconds", &secs.to_string(), "--max", "200000000"])
            .output()
            .context("running the flood")?;
        let (count1, cpu1) = (self.sink.count()?, CpuTimes::now()?);
        let progs1 = profiled.map(|(pid, prefix)| snapshot(pid, prefix, &ifname));
        let tool_cpu1 = tool_cpu();
        if let Some(p) = pinger.as_mut() {
            let _ = p.kill();
            let _ = p.wait();
        }
        let flood: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("flood said: {}", String::from_utf8_lossy(&out.stdout)))?;
        let flood_secs = flood["secs"].as_f64().unwrap_or(secs);
        let packets = count1.saturating_sub(count0);
        let mut sample = Sample {
            pps: packets as f64 / flood_secs,
            cpu_ns_per_pkt: (cpu1.busy_ns.saturating_sub(cpu0.busy_ns)) as f64
                / packets.max(1) as f64,
            steal: cpu1.steal_share_since(&cpu0),
            tool_cpu: tool_cpu0.zip(tool_cpu1).map(|(a, b)| (b - a) / flood_secs),
            profile: progs0
                .zip(progs1)
                .map(|(a, b)| between(&a, &b, packets))
                .unwrap_or_default(),
            ..Sample::default()
        };
        if let Some(t) = tool.as_mut() {
            t.stop(variant, &mut sample)?;
        }
        drop(hooks);
        Ok(sample)
    }

    /// The hypervisor namespace's devices by index.
    fn ifnames(&self) -> std::collections::BTreeMap<u32, String> {
        let out = Command::new("ip")
            .args(["-n", &self.hv, "-o", "link", "show"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        // "7: vmbr0: <BROADCAST,...", "9: veth100i0@if2: <...".
        out.lines()
            .filter_map(|l| {
                let mut f = l.split(": ");
                let index = f.next()?.trim().parse().ok()?;
                let name = f.next()?.split('@').next()?.to_string();
                Some((index, name))
            })
            .collect()
    }

    /// The quiet guest pinging the destination once a second for about `secs`
    /// (bounded in count and time by ping itself).
    fn quiet_pings(&self, secs: f64) -> Result<std::process::Child> {
        let n = (secs.ceil() as u64 + 1).to_string();
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.guests[1]))
            .args(["ping", "-q", "-i", "1", "-c", &n, "-w", &n, DEST])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting the quiet guest's pings")
    }

    /// Do-nothing TC programs on both directions of the bridge and the uplink.
    fn pass_hooks(&self) -> Result<Vec<PassHooks>> {
        let ns = Path::new("/run/netns").join(&self.hv);
        ["vmbr0", "eth0"]
            .iter()
            .map(|dev| {
                PassHooks::attach_in(&ns, dev).with_context(|| format!("empty hooks on {dev}"))
            })
            .collect()
    }

    /// A guest's namespace, by its address.
    pub(super) fn guest_ns(&self, ip: &str) -> &str {
        if ip == FLOODER {
            &self.guests[0]
        } else {
            &self.guests[1]
        }
    }

    pub(super) fn start_tool(&self, traffic: Traffic, variant: Variant) -> Result<Option<Tool>> {
        let pathtrace = release_bin("pathtrace");
        let pathtrace = pathtrace.to_str().context("path")?;
        let proto: &[&str] = match traffic {
            Traffic::Udp => &["--proto", "any"],
            Traffic::Icmp => &["--proto", "icmp"],
            Traffic::Tcp => &["--proto", "tcp", "--port", TCP_PORT],
        };
        let trace = |vm: &str| -> Vec<String> {
            ["--vm-ip", vm, "--to", DEST]
                .iter()
                .chain(proto)
                .map(|s| s.to_string())
                .chain(["--count", "100000000", "--timeout", "600", "--json"].map(String::from))
                .collect()
        };
        let (mut cmd, ready) = match variant {
            Variant::Untraced | Variant::PassHooks => return Ok(None),
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
pub(super) struct Partial {
    pub(super) names: Vec<String>,
    pub(super) done: bool,
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
