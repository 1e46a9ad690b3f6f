//! Trace mode over IPv6: the lab's dual-stack guest pings and resolves over
//! IPv6 (its routed /64 needs no NAT66), and pathtrace follows every hop both
//! ways on each hypervisor layout, as it does for IPv4. Needs root and eBPF
//! (CI runs it as root).

use std::{net::IpAddr, time::Duration};

use pathtrace_tests::{
    lab::{Lab, LabOptions, Layout, PingOpts, INET6_DNS, INET6_HOST},
    tracerun::{fake_guest_bin, trace_while, TraceRun},
};
use serde_json::Value;

/// Guest 0's IPv6 address (lab/mod.rs).
const VM6: &str = "2001:db8:1::100";

fn lab(layout: Layout) -> Lab {
    let mut opts = LabOptions::new(fake_guest_bin());
    opts.layout = layout;
    let mut lab = Lab::up(opts).expect("lab up");
    // One echo first, so the host's neighbour table and the bridge's FDB know
    // the guest (as a running VM's would).
    let one = PingOpts {
        count: 1,
        ..PingOpts::default()
    };
    lab.guest(0).ping(INET6_HOST, one).expect("guest pings");
    lab
}

/// Trace `count` echoes of guest 0 to `dst` (by `--vm-ip`).
fn trace_pings6(lab: &mut Lab, dst: IpAddr, count: u32) -> TraceRun {
    let (to, n) = (dst.to_string(), count.to_string());
    let args = [
        "--vm-ip",
        VM6,
        "--to",
        &to,
        "--count",
        &n,
        "--timeout",
        "10",
        "--json",
    ];
    let run = trace_while(lab, &args, Duration::from_secs(25), |lab| {
        let opts = PingOpts {
            count,
            interval_ms: 200,
            timeout_ms: 1500,
            ..PingOpts::default()
        };
        lab.guest(0).ping(dst, opts)?;
        Ok(())
    })
    .expect("pathtrace runs");
    eprintln!("--- stdout\n{}--- stderr\n{}", run.stdout, run.stderr);
    run
}

/// Trace `count` DNS queries of type `qtype` of guest 0 to the lab's resolver.
fn trace_dns6(lab: &mut Lab, qtype: &'static str, count: u32) -> TraceRun {
    let (to, n) = (INET6_DNS.to_string(), count.to_string());
    let args = [
        "--vm-ip",
        VM6,
        "--to",
        &to,
        "--proto",
        "dns",
        "--count",
        &n,
        "--timeout",
        "10",
        "--json",
    ];
    let run = trace_while(lab, &args, Duration::from_secs(25), |lab| {
        lab.guest(0)
            .dns_type(INET6_DNS, "www.example.com", count, 1500, qtype)?;
        Ok(())
    })
    .expect("pathtrace runs");
    eprintln!("--- stdout\n{}--- stderr\n{}", run.stdout, run.stderr);
    run
}

/// (stage, ifname) of a verdict's observed hops in one direction.
fn hops(v: &Value, dir: &str) -> Vec<(String, String)> {
    v["path"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["direction"] == dir && h["inferred"] != true)
        .map(|h| {
            (
                h["stage"].as_str().unwrap_or("").to_string(),
                h["ifname"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Every verdict replied, with the guest's and the destination's IPv6
/// addresses, and hops on the VM's port, the bridge and the way out both ways.
fn assert_replied_both_ways(run: &TraceRun, lab: &Lab, dst: &str, count: usize) {
    assert_eq!(run.code, 0, "exit 0 when every request got its reply");
    let verdicts = run.verdicts();
    assert_eq!(verdicts.len(), count, "{verdicts:?}");
    let port = lab.layout().port_name("tap100i0");
    let bridge = lab.bridge();
    for v in &verdicts {
        assert_eq!(v["verdict"], "replied", "{v}");
        assert_eq!(
            (v["vm_ip"].as_str(), v["dst"].as_str()),
            (Some(VM6), Some(dst))
        );
        assert_eq!(v["flow"]["src"], VM6, "{v}");
        assert_eq!(v["flow"]["dst"], dst, "{v}");
        for dir in ["request", "reply"] {
            let seen = hops(v, dir);
            let names: Vec<&str> = seen.iter().map(|(_, i)| i.as_str()).collect();
            assert!(names.contains(&port.as_str()), "{dir} on {port}: {seen:?}");
            // Bridged into the LAN, the frame never enters the bridge device:
            // its hops are the bridge's ports.
            let via_bridge =
                v["path"].as_array().unwrap().iter().any(|h| {
                    h["direction"] == dir && (h["ifname"] == bridge || h["bridge"] == bridge)
                });
            assert!(via_bridge, "{dir} through {bridge}: {seen:?}");
            assert!(
                seen.iter().any(|(s, _)| s == "egress"),
                "{dir} leaves or enters by the way out: {seen:?}"
            );
        }
        let req = hops(v, "request");
        assert_eq!(req.first().map(|(s, _)| s.as_str()), Some("tap"), "{req:?}");
        let rep = hops(v, "reply");
        assert_eq!(rep.last().map(|(s, _)| s.as_str()), Some("tap"), "{rep:?}");
    }
    let s = run.summary().expect("summary line");
    assert_eq!(s["replied"].as_u64(), Some(count as u64), "{s}");
}

fn healthy_ping6(layout: Layout) {
    let mut lab = lab(layout);
    // The demo's line: the resolver's address answers echoes too.
    let run = trace_pings6(&mut lab, INET6_DNS.into(), 2);
    assert_replied_both_ways(&run, &lab, &INET6_DNS.to_string(), 2);
    for v in run.verdicts() {
        assert_eq!(v["proto"], "icmp");
        assert!(v["flow"]["icmp_seq"].as_u64().is_some(), "{v}");
        // Routed, not translated: the request leaves with the guest's address.
        let nat = v["path"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| !h["nat"].is_null());
        assert!(nat.is_none(), "no NAT66 in the lab: {v}");
    }
}

#[test]
fn healthy_ping6_plain() {
    healthy_ping6(Layout::Plain);
}

#[test]
fn healthy_ping6_proxmox() {
    healthy_ping6(Layout::Proxmox);
}

#[test]
fn healthy_ping6_libvirt() {
    healthy_ping6(Layout::Libvirt);
}

#[test]
fn healthy_ping6_bridged() {
    healthy_ping6(Layout::Bridged);
}

fn healthy_dns6(layout: Layout, qtype: &'static str) {
    let mut lab = lab(layout);
    let run = trace_dns6(&mut lab, qtype, 2);
    assert_replied_both_ways(&run, &lab, &INET6_DNS.to_string(), 2);
    for v in run.verdicts() {
        assert_eq!(v["proto"], "dns");
        assert!(v["flow"]["dns_id"].as_u64().is_some(), "{v}");
        assert_eq!(v["dns_rcode"], "NOERROR", "{v}");
        assert_eq!(v["flow"]["qname"], "www.example.com", "{v}");
    }
}

#[test]
fn healthy_dns6_aaaa_plain() {
    healthy_dns6(Layout::Plain, "AAAA");
}

#[test]
fn healthy_dns6_a_proxmox() {
    healthy_dns6(Layout::Proxmox, "A");
}

#[test]
fn healthy_dns6_aaaa_libvirt() {
    healthy_dns6(Layout::Libvirt, "AAAA");
}

#[test]
fn healthy_dns6_aaaa_bridged() {
    healthy_dns6(Layout::Bridged, "AAAA");
}

