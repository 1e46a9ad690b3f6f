//! Trace mode over IPv6: the lab's dual-stack guest pings and resolves over
//! IPv6 (its routed /64 needs no NAT66), and pathtrace follows every hop both
//! ways on each hypervisor layout, as it does for IPv4. Needs root and eBPF
//! (CI runs it as root).

use std::{net::IpAddr, time::Duration};

use pathtrace_tests::{
    lab::{Lab, LabOptions, Layout, PingOpts, INET6_DNS, INET6_HOST},
    tracerun::{fake_guest_bin, observed_hops as hops, trace_while, TraceRun},
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

/// The one verdict of a single traced echo that a forward rule drops.
fn forward_drop6(lab: &mut Lab) -> Value {
    let run = trace_pings6(lab, INET6_HOST.into(), 1);
    assert_eq!(run.code, 1, "exit 1 when a request died");
    let verdicts = run.verdicts();
    assert_eq!(verdicts.len(), 1, "{verdicts:?}");
    let v = verdicts[0].clone();
    assert_eq!(
        (v["verdict"].as_str(), v["direction"].as_str()),
        (Some("dropped"), Some("request")),
        "{v}"
    );
    assert_eq!(v["stage"], "forward", "{v}");
    assert_eq!(v["reason"], "NETFILTER_DROP", "{v}");
    assert_eq!(v["flow"]["src"], VM6, "{v}");
    v
}

/// An nft rule of an `inet` table dropping the guest's ICMPv6 echo in forward
/// is named with its family, table, chain and handle, and removed by handle.
#[test]
fn nft_inet_forward_drop6_names_the_rule() {
    let mut lab = lab(Layout::Plain);
    lab.hv(&format!(
        "nft add table inet pt6 && \
         nft add chain inet pt6 guard '{{ type filter hook forward priority 0; }}' && \
         nft add rule inet pt6 guard ip6 saddr {VM6} icmpv6 type echo-request drop"
    ))
    .unwrap();
    let v = forward_drop6(&mut lab);
    let rule = v["rule"].as_str().expect("rule named");
    assert!(rule.starts_with("inet pt6 guard handle "), "{rule}");
    assert!(rule.contains(&format!("ip6 saddr {VM6}")), "{rule}");
    let hint = v["hint"].as_str().unwrap();
    assert!(
        hint.contains("nft delete rule inet pt6 guard handle"),
        "{hint}"
    );
    assert!(
        !hint.contains("ipv4") && !hint.contains("iptables"),
        "{hint}"
    );
}

/// ip6tables-legacy's FORWARD DROP: the rule by number, removed with
/// ip6tables-legacy (not iptables).
#[test]
fn ip6tables_legacy_forward_drop6_names_the_rule() {
    let mut lab = lab(Layout::Plain);
    lab.hv(&format!(
        "ip6tables-legacy -A FORWARD -s {VM6} -p ipv6-icmp --icmpv6-type echo-request -j DROP"
    ))
    .unwrap();
    let v = forward_drop6(&mut lab);
    let rule = v["rule"].as_str().expect("rule named");
    assert!(
        rule.starts_with("ip6tables-legacy filter FORWARD rule 1"),
        "{rule}"
    );
    let hint = v["hint"].as_str().unwrap();
    assert!(
        hint.ends_with("ip6tables-legacy -t filter -D FORWARD 1"),
        "{hint}"
    );
    // The lab's own tables go with the namespace; this one is legacy's.
    lab.hv("ip6tables-legacy -F FORWARD").unwrap();
}

/// ip6tables-nft's FORWARD DROP lives in nft's `ip6 filter` table, which nft
/// warns not to touch: removed by rule number with ip6tables.
#[test]
fn ip6tables_nft_forward_drop6_is_fixed_with_ip6tables() {
    let mut lab = lab(Layout::Plain);
    lab.hv(&format!("ip6tables-nft -A FORWARD -s {VM6} -j DROP"))
        .unwrap();
    let v = forward_drop6(&mut lab);
    let rule = v["rule"].as_str().expect("rule named");
    assert!(rule.starts_with("ip6 filter FORWARD handle "), "{rule}");
    let hint = v["hint"].as_str().unwrap();
    assert!(hint.contains("managed by iptables-nft"), "{hint}");
    assert!(
        hint.ends_with(" -D FORWARD 1") && hint.contains("ip6tables"),
        "{hint}"
    );
}

/// One echo of guest 0 to the internet host with these options, traced.
fn trace_one_ping6(lab: &mut Lab, opts: PingOpts) -> TraceRun {
    let to = INET6_HOST.to_string();
    let args = [
        "--vm-ip",
        VM6,
        "--to",
        &to,
        "--count",
        "1",
        "--timeout",
        "10",
        "--json",
    ];
    let run = trace_while(lab, &args, Duration::from_secs(25), |lab| {
        lab.guest(0).ping(INET6_HOST, opts)?;
        Ok(())
    })
    .expect("pathtrace runs");
    eprintln!("--- stdout\n{}--- stderr\n{}", run.stdout, run.stderr);
    run
}

/// The hop limit expires at the host (a router hop): the drop in forward, with
/// IPv6's words, and the ICMPv6 time exceeded the host sends back followed to
/// the guest's port as the answer to that request.
#[test]
fn hop_limit_one_expires_in_forward_and_the_error_reaches_the_guest() {
    let mut lab = lab(Layout::Plain);
    let opts = PingOpts {
        ttl: 1,
        timeout_ms: 1500,
        ..PingOpts::default()
    };
    let run = trace_one_ping6(&mut lab, opts);
    let v = run.verdicts().first().cloned().expect("a verdict");
    assert_eq!(
        (
            v["verdict"].as_str(),
            v["stage"].as_str(),
            v["reason"].as_str()
        ),
        (Some("dropped"), Some("forward"), Some("IP_INHDR")),
        "{v}"
    );
    let rule = v["rule"].as_str().unwrap();
    assert!(rule.starts_with("IPv6 hop limit 1"), "{rule}");
    let hint = v["hint"].as_str().unwrap();
    assert!(
        hint.contains("net.ipv6.conf.all.hop_limit") && !hint.contains("ipv4"),
        "{hint}"
    );
    let rep = hops(&v, "reply");
    assert_eq!(rep.last().map(|(s, _)| s.as_str()), Some("tap"), "{rep:?}");
}

/// An uplink MTU below the guest's packet: the host drops it (PKT_TOO_BIG) and
/// answers ICMPv6 Packet Too Big, which the trace follows to the guest's port.
#[test]
fn uplink_mtu_step_is_a_packet_too_big_that_reaches_the_guest() {
    let mut lab = lab(Layout::Plain);
    lab.hv("ip link set eth0 mtu 1280").unwrap();
    let opts = PingOpts {
        size: 1400,
        timeout_ms: 1500,
        ..PingOpts::default()
    };
    let run = trace_one_ping6(&mut lab, opts);
    let v = run.verdicts().first().cloned().expect("a verdict");
    assert_eq!(
        (v["verdict"].as_str(), v["reason"].as_str()),
        (Some("dropped"), Some("PKT_TOO_BIG")),
        "{v}"
    );
    let rule = v["rule"].as_str().unwrap();
    assert!(rule.starts_with("MTU eth0 1280"), "{rule}");
    let hint = v["hint"].as_str().unwrap();
    assert!(hint.contains("'Packet Too Big'"), "{hint}");
    assert!(hint.contains("reached the guest's port"), "{hint}");
    assert!(!hint.contains("DF"), "no DF in IPv6: {hint}");
}
