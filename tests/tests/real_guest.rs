//! The scenarios again with a real Linux guest instead of the fake one: a Debian
//! cloud kernel under QEMU (TCG) with virtio-net on the lab's TAP, QEMU opening
//! the TAP as Proxmox does. The guest's kernel does its own ARP, ICMP and DNS
//! (busybox ping and nslookup); pathtrace must give the verdicts the catalogue
//! (tests/src/scenarios.rs) expects, for every request the guest sent.
//! Needs root, eBPF, and qemu-system-x86 + busybox-static (`cargo xtask setup`);
//! the kernel is fetched once into target/vm-kernels/. 4–15 s per test.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use pathtrace_tests::{
    guest::GuestSpec,
    lab::{Lab, LabOptions, Layout},
    realguest::{guest_kernel, Output, PingStats, RealGuest},
    scenarios::{self, Traffic},
    tracerun::{fake_guest_bin, trace_while, TraceRun},
};

/// Pings per test: more than one, so every request of a real guest is checked.
const PINGS: u32 = 3;

/// What the guest itself saw.
enum Seen {
    Ping(PingStats),
    Dns(Output),
}

/// A lab of `layout` with a real guest booted on tap100i0 (the lab's names for
/// VM 100's NIC) and nothing else plugged.
fn lab_with_guest(name: &str, layout: Layout) -> (Lab, RealGuest) {
    let mut opts = LabOptions::new(fake_guest_bin());
    opts.layout = layout;
    boot_in(name, opts)
}

/// [`lab_with_guest`] with the lab's options given.
fn boot_in(name: &str, mut opts: LabOptions) -> (Lab, RealGuest) {
    let kernel = guest_kernel().expect("guest kernel");
    // The fake guest's binary also serves the lab's DNS; no fake guest is plugged.
    opts.guests.clear();
    let mut lab = Lab::up(opts).expect("lab");
    let spec = lab.add_port(GuestSpec::nth(0)).expect("port for the guest");
    let guest = RealGuest::boot(&lab, spec, &kernel).expect("guest boots");
    eprintln!(
        "{name}: {} booted on {} in {:.1} s",
        kernel.release,
        guest.spec.tap,
        guest.boot_time().as_secs_f64()
    );
    (lab, guest)
}

/// Trace with `args` while the guest sends `traffic` (pings: [`PINGS`] of them);
/// returns pathtrace's run and what the guest saw.
fn trace(
    name: &str,
    lab: &mut Lab,
    guest: &mut RealGuest,
    traffic: Traffic,
    args: &[&str],
) -> (TraceRun, Seen) {
    let mut seen = None;
    let run = trace_while(lab, args, Duration::from_secs(45), |_| {
        seen = Some(match traffic {
            Traffic::Ping { dst, size, ttl } => {
                assert!(
                    size == 56 && ttl == 64,
                    "{name}: busybox ping is sent plain"
                );
                Seen::Ping(guest.ping(dst.parse()?, PINGS)?)
            }
            Traffic::Dns { server, name } => {
                Seen::Dns(guest.nslookup(server.parse::<IpAddr>()?, name)?)
            }
            Traffic::Tcp { .. } | Traffic::Udp { .. } | Traffic::Dhcp | Traffic::Arp { .. } => {
                anyhow::bail!("{name}: the real guest's scenarios are ping and DNS")
            }
        });
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{name}: pathtrace or the guest failed: {e:#}"));
    eprintln!("--- {name}\n{}{}", run.stdout, run.stderr);
    (run, seen.expect("the guest sent"))
}

/// pathtrace's verdicts, one for each of the `count` requests the guest sent.
fn verdicts(name: &str, run: &TraceRun, count: u32) -> Vec<serde_json::Value> {
    let verdicts = run.verdicts();
    assert_eq!(
        verdicts.len(),
        count as usize,
        "{name}: a verdict per request"
    );
    verdicts
}

/// A catalogue scenario on the plain layout, checked like the fake guest's.
fn run(name: &str) {
    let started = Instant::now();
    let sc = scenarios::find(name);
    let (mut lab, mut guest) = lab_with_guest(name, Layout::Plain);
    for cmd in sc.break_hv {
        lab.hv(cmd)
            .unwrap_or_else(|e| panic!("breaking the lab: {e}"));
    }
    // The guest by its address of the traffic's family.
    let vm_ip = match guest.spec.v6 {
        Some(v6) if sc.traffic.is_v6() => v6.ip.to_string(),
        _ => guest.spec.ip.to_string(),
    };
    // nslookup retransmits on its own; the first query is the one checked.
    let (count, dns) = match sc.traffic {
        Traffic::Ping { .. } => (PINGS, false),
        Traffic::Dns { .. } => (1, true),
        Traffic::Tcp { .. } | Traffic::Udp { .. } | Traffic::Dhcp | Traffic::Arp { .. } => {
            panic!("{name}: the real guest's scenarios are ping and DNS")
        }
    };
    let count_arg = count.to_string();
    let mut args = vec!["--vm-ip", &vm_ip, "--to", sc.traffic.dst()];
    args.extend(["--count", &count_arg, "--timeout", "20", "--json"]);
    if dns {
        args.extend(["--proto", "dns"]);
    }
    let traced = Instant::now();
    let (run, seen) = trace(name, &mut lab, &mut guest, sc.traffic, &args);
    let verdicts = verdicts(name, &run, count);
    for v in &verdicts {
        sc.check(v);
    }
    let expected_code = if sc.expect.verdict == "replied" { 0 } else { 1 };
    assert_eq!(run.code, expected_code, "{name}: exit status");
    guest_agrees(name, sc.expect.verdict, seen);
    eprintln!(
        "{name}: trace {:.1} s, whole test {:.1} s",
        traced.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// The guest's own view matches the verdict: its pings or its query answered
/// exactly when pathtrace says replied.
fn guest_agrees(name: &str, verdict: &str, seen: Seen) {
    let replied = verdict == "replied";
    match seen {
        Seen::Ping(s) => {
            assert_eq!(s.transmitted, PINGS, "{name}: pings sent");
            let want = if replied { s.transmitted } else { 0 };
            assert_eq!(s.received, want, "{name}: replies the guest got");
        }
        Seen::Dns(out) => assert_eq!(
            out.rc == 0,
            replied,
            "{name}: nslookup exit {} ({:?})",
            out.rc,
            out.lines
        ),
    }
}

#[test]
fn healthy_ping() {
    run("healthy_ping");
}

/// The real kernel's IPv6 in the lab, no pathtrace: its neighbour discovery
/// resolves the gateway, ICMPv6 echo and an AAAA query over IPv6 are answered.
#[test]
fn real_guest_speaks_ipv6() {
    let name = "real_guest_speaks_ipv6";
    let (_lab, mut guest) = lab_with_guest(name, Layout::Plain);
    let inet6: IpAddr = "2001:db8:ffff::8".parse().unwrap();
    let stats = guest.ping(inet6, PINGS).expect("ping6");
    assert_eq!(stats.received, PINGS, "{name}: {}", guest.console_tail());
    let dns = guest
        .nslookup("2001:db8:ffff::53".parse().unwrap(), "www.example.com")
        .expect("nslookup");
    assert!(
        dns.rc == 0 && dns.lines.iter().any(|l| l.contains("2001:db8:ffff::8")),
        "{name}: {:?}",
        dns.lines
    );
}

#[test]
fn nft_forward_drop() {
    run("nft_forward_drop");
}

#[test]
fn healthy_ping_v6() {
    run("healthy_ping_v6");
}

#[test]
fn healthy_dns_v6() {
    run("healthy_dns_v6");
}

#[test]
fn nft_forward_drop_v6() {
    run("nft_forward_drop_v6");
}

#[test]
fn dns_reply_dropped_v6() {
    run("dns_reply_dropped_v6");
}

#[test]
fn healthy_dns() {
    run("healthy_dns");
}

#[test]
fn dns_reply_dropped() {
    run("dns_reply_dropped");
}

/// Proxmox with the VM firewall on, the VM named by its VMID: QEMU's NIC on
/// tap100i0 in fwbr100i0, whose veth pair joins vmbr0. The guest's ARP for its
/// gateway is answered by vmbr0 (the lab sets arp_ignore=1 on fwbr, as hosts
/// should), so every request crosses tap → fwln → fwpr → vmbr0 → eth0 and every
/// reply comes back the same way.
#[test]
fn proxmox_healthy_ping_by_vmid() {
    let name = "proxmox_healthy_ping_by_vmid";
    let started = Instant::now();
    let (mut lab, mut guest) = lab_with_guest(name, Layout::Proxmox);
    let root = lab.config_root();
    let count = PINGS.to_string();
    let args = [
        "--vm",
        "100",
        "--config-root",
        root.to_str().expect("utf-8 temp dir"),
        "--to",
        "203.0.113.8",
        "--count",
        &count,
        "--timeout",
        "20",
        "--json",
    ];
    let traffic = Traffic::ping("203.0.113.8");
    let (run, seen) = trace(name, &mut lab, &mut guest, traffic, &args);
    assert_eq!(run.code, 0, "{name}: exit status");
    let verdicts = verdicts(name, &run, PINGS);
    for v in &verdicts {
        assert_eq!(v["verdict"], "replied", "{name}: {v}");
        assert_eq!(
            v["vm_ip"],
            guest.spec.ip.to_string(),
            "{name}: VM 100's address"
        );
        let request = hop_names(v, "request");
        let at = |n: &str| request.iter().position(|x| x == n);
        let order = [at("tap100i0"), at("fwln100i0"), at("fwpr100p0"), at("eth0")];
        assert!(
            order.iter().all(Option::is_some) && order.windows(2).all(|w| w[0] < w[1]),
            "{name}: request hops {request:?}"
        );
        let reply = hop_names(v, "reply");
        assert!(
            reply.iter().any(|n| n == "fwln100i0"),
            "{name}: reply hops {reply:?}"
        );
        assert_eq!(
            reply.last().map(String::as_str),
            Some("tap100i0"),
            "{name}: {reply:?}"
        );
    }
    guest_agrees(name, "replied", seen);
    eprintln!(
        "{name}: whole test {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// The devices of a verdict's observed hops in one direction, in order.
fn hop_names(v: &serde_json::Value, direction: &str) -> Vec<String> {
    v["path"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|h| h["direction"] == direction)
        .filter_map(|h| h["ifname"].as_str().map(str::to_string))
        .collect()
}

/// Proxmox as installed: the firewall bridge answers ARP for the host's
/// addresses (arp_ignore=0). The real guest keeps the first answer for its
/// gateway — fwbr100i0's — so its pings are routed from fwbr100i0: a rule in the
/// routed forward hook drops them at `forward` on fwbr100i0, and the verdict
/// carries the firewall_bridge_arp finding with its fix.
#[test]
fn proxmox_guest_routed_from_the_firewall_bridge() {
    let name = "proxmox_guest_routed_from_the_firewall_bridge";
    let mut opts = LabOptions::new(fake_guest_bin());
    opts.layout = Layout::Proxmox;
    opts.fwbr_answers_arp = true;
    let (mut lab, mut guest) = boot_in(name, opts);
    lab.hv("nft add table inet f && \
            nft add chain inet f forward '{ type filter hook forward priority 0; }' && \
            nft add rule inet f forward iifname fwbr100i0 ip saddr 192.0.2.100 drop")
        .expect("the rule");
    let vm_ip = guest.spec.ip.to_string();
    let count = PINGS.to_string();
    let args = [
        "--vm-ip",
        &vm_ip,
        "--to",
        "203.0.113.8",
        "--count",
        &count,
        "--timeout",
        "20",
        "--json",
    ];
    let (run, seen) = trace(
        name,
        &mut lab,
        &mut guest,
        Traffic::ping("203.0.113.8"),
        &args,
    );
    assert_eq!(run.code, 1, "{name}: exit status");
    let verdicts = verdicts(name, &run, PINGS);
    for v in &verdicts {
        assert_eq!(v["verdict"], "dropped", "{name}: {v}");
        assert_eq!(v["stage"], "forward", "{name}: the routed pass: {v}");
        assert_eq!(v["ifname"], "fwbr100i0", "{name}: {v}");
        let anomaly = v["doctor"]
            .as_array()
            .and_then(|d| d.iter().find(|c| c["check"] == "firewall_bridge_arp"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(anomaly["status"], "fail", "{name}: {v}");
    }
    guest_agrees(name, "dropped", seen);
}
