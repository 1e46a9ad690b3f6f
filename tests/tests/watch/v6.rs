//! Watch over IPv6: the dual-stack lab's guests ping 2001:db8:ffff::8, two IPv6
//! faults (lab::Fault6) break guest 0's path, and its ICMPv6 drops must show on
//! its port with their stage and reason, its IPv6 address in `vm_ips`, in the
//! Prometheus output too; the other guest stays clean where it is not broken.

use pathtrace_tests::{
    lab::{Fault6, GuestSpec, Lab, LabOptions, PingOpts, V6Setup, INET6_DNS, INET6_HOST},
    tracerun::fake_guest_bin,
    watchrun::{drops, vm, WatchRun},
};
use serde_json::Value;

use super::{find_drop, scrape, total_drops, watched, with_metrics, WAIT};

/// Fault6 breaks guest 0: tap100i0, 2001:db8:1::100.
const BROKEN: &str = "tap100i0";
const BROKEN6: &str = "2001:db8:1::100";
const OTHER: &str = "tap101i0";

fn lab() -> Lab {
    lab_with(V6Setup::Routed)
}

fn lab_with(setup: V6Setup) -> Lab {
    let mut opts = LabOptions::new(fake_guest_bin());
    opts.guests.push(GuestSpec::nth(1));
    opts.v6 = setup;
    Lab::up(opts).unwrap()
}

/// AAAA answers guest `guest` gets for `count` queries over IPv6.
fn dns6(lab: &mut Lab, guest: usize, count: u32) -> u32 {
    lab.guest(guest)
        .dns_type(INET6_DNS, "www.example.com", count, 500, "AAAA")
        .unwrap()
        .answered
}

/// Echo replies guest `guest` gets for `count` ICMPv6 echo requests.
fn ping6(lab: &mut Lab, guest: usize, count: u32) -> u32 {
    let opts = PingOpts {
        count,
        interval_ms: 50,
        timeout_ms: 500,
        ..PingOpts::default()
    };
    lab.guest(guest).ping(INET6_HOST, opts).unwrap().received
}

/// The port's IPv6 address is among its `vm_ips`.
fn has_v6(snapshot: &Value, port: &str, ip: &str) -> bool {
    vm(snapshot, port).is_some_and(|v| {
        v["vm_ips"]
            .as_array()
            .is_some_and(|a| a.iter().any(|i| i == ip))
    })
}

/// Break guest 0's path with `fault`, have it ping `count` times (all lost) and
/// wait until watch counts them at `stage` with `reason`.
fn broken(
    lab: &mut Lab,
    watch: &WatchRun,
    fault: Fault6,
    (stage, reason): (&str, &str),
    count: u32,
) -> (Value, Value) {
    lab.break_path6(fault).unwrap();
    assert_eq!(ping6(lab, 0, count), 0, "{fault:?}: guest 0 gets no reply");
    let matches = |v: &Value| find_drop(v, BROKEN, stage, reason, count.into());
    let snap = watch
        .wait_for(WAIT, |v| matches(v).is_some())
        .unwrap_or_else(|e| panic!("{fault:?}: {e}\n{:#}", watch.latest().unwrap_or_default()));
    let point = matches(&snap).unwrap();
    assert_eq!(point["direction"], "from_vm", "{fault:?}: {point}");
    assert_eq!(point["proto"], "icmp", "{fault:?}: {point}");
    assert_eq!(point["via_conntrack"], false, "{fault:?}: {point}");
    assert_eq!(point["example"]["src"], BROKEN6, "{fault:?}: {point}");
    assert_eq!(point["example"]["dst"], INET6_HOST.to_string(), "{point}");
    assert_eq!(point["example"]["icmp_type"], 128, "echo request: {point}");
    assert!(has_v6(&snap, BROKEN, BROKEN6), "{fault:?}: {snap}");
    lab.repair6(fault).unwrap();
    (snap, point)
}

#[test]
fn ipv6_drops_show_on_the_vm_with_its_ipv6_address() {
    let mut lab = lab();
    let port = 19467;
    let mut watch = with_metrics(&lab, port);
    // Healthy first: both guests reach the internet host over IPv6, and the
    // host's neighbour table learns their IPv6 addresses.
    assert_eq!(ping6(&mut lab, 0, 2), 2, "guest 0 healthy");
    assert_eq!(ping6(&mut lab, 1, 2), 2, "guest 1 healthy");
    let snap = watch
        .wait_for(WAIT, |v| {
            has_v6(v, BROKEN, BROKEN6) && has_v6(v, OTHER, "2001:db8:1::101")
        })
        .unwrap();
    // Dual stack: the IPv4 address stays first.
    assert_eq!(vm(&snap, BROKEN).unwrap()["vm_ips"][0], "192.0.2.100");

    // A forward rule of the inet family drops guest 0's address.
    let (_, d) = broken(
        &mut lab,
        &watch,
        Fault6::NftInetForwardDrop,
        ("forward", "NETFILTER_DROP"),
        5,
    );
    assert!(
        d["location"].as_str().unwrap().starts_with("nft_do_chain"),
        "{d}"
    );
    assert_eq!(ping6(&mut lab, 1, 3), 3, "the other guest is not broken");
    let snap = watch.wait_snapshots(2, WAIT).unwrap();
    assert_eq!(total_drops(&snap, OTHER), 0, "other guest: {snap}");

    // IPv6 forwarding off: ip6_forward drops the echo (measured on 6.18:
    // IP_INADDRERRORS, the routing stage).
    let (snap, d) = broken(
        &mut lab,
        &watch,
        Fault6::ForwardingOff,
        ("routing", "IP_INADDRERRORS"),
        4,
    );
    assert!(
        d["location"].as_str().unwrap().starts_with("ip6_forward"),
        "{d}"
    );
    // The first breakage is still counted.
    assert!(find_drop(&snap, BROKEN, "forward", "NETFILTER_DROP", 5).is_some());
    assert_eq!(ping6(&mut lab, 0, 2), 2, "repaired");

    // The same drop points in the Prometheus output, with the IPv6 address
    // in vm_ip6 and the IPv4 one still in vm_ip.
    let body = scrape(&lab, port);
    for (stage, reason) in [
        ("forward", "NETFILTER_DROP"),
        ("routing", "IP_INADDRERRORS"),
    ] {
        let line = body
            .lines()
            .find(|l| {
                l.starts_with("pathtrace_drops_total{")
                    && l.contains(&format!("port=\"{BROKEN}\""))
                    && l.contains(&format!("stage=\"{stage}\",reason=\"{reason}\""))
            })
            .unwrap_or_else(|| panic!("no {stage} metric for {BROKEN}:\n{body}"));
        assert!(line.contains(&format!("vm_ip6=\"{BROKEN6}\"")), "{line}");
        assert!(line.contains("vm_ip=\"192.0.2.100\""), "{line}");
    }
    let info = body
        .lines()
        .find(|l| l.starts_with("pathtrace_vm_info{") && l.contains(OTHER))
        .unwrap();
    assert!(info.contains("vm_ip6=\"2001:db8:1::101\""), "{info}");
    assert!(drops(&snap, OTHER).iter().all(|d| d["stage"] != "forward"));
    assert_eq!(snap["self"]["events_lost"], 0);
    assert_eq!(watch.stop().unwrap(), 0, "{}", watch.stderr());
}

/// Replies to the guest die in the forward chain: they come from the
/// provider's router (no MAC of the guest's on them), so only their IPv6
/// destination ties them to the guest.
#[test]
fn ipv6_replies_to_the_vm_are_known_by_their_destination() {
    let mut lab = lab();
    let mut watch = WatchRun::start(&lab, &["--interval", "0.5"]).unwrap();
    assert_eq!(dns6(&mut lab, 0, 1), 1, "healthy first");
    watch
        .wait_for(WAIT, |v| has_v6(v, BROKEN, BROKEN6))
        .unwrap();
    lab.break_path6(Fault6::DnsReplyDropped).unwrap();
    assert_eq!(dns6(&mut lab, 0, 3), 0, "the replies are dropped");
    let matches = |v: &Value| find_drop(v, BROKEN, "forward", "NETFILTER_DROP", 3);
    let snap = watch.wait_for(WAIT, |v| matches(v).is_some()).unwrap();
    let d = matches(&snap).unwrap();
    assert_eq!(d["direction"], "to_vm", "{d}");
    assert_eq!(d["proto"], "dns", "{d}");
    assert_eq!(d["via_conntrack"], false, "{d}");
    assert_eq!(d["example"]["src"], INET6_DNS.to_string(), "{d}");
    assert_eq!(d["example"]["dst"], BROKEN6, "{d}");
    assert_eq!(d["example"]["sport"], 53, "{d}");
    assert_eq!(total_drops(&snap, OTHER), 0, "{snap}");
    lab.repair6(Fault6::DnsReplyDropped).unwrap();
    assert_eq!(watch.stop().unwrap(), 0);
}

/// NAT66: the guest's replies are dropped on the uplink after conntrack but
/// before the masquerade is undone (addressed to the host's uplink): only
/// the conntrack entry knows they are the guest's.
#[test]
fn nat66_replies_are_known_through_conntrack() {
    let mut lab = lab_with(V6Setup::Nat66);
    let guest6 = lab.guest(0).spec.v6.unwrap().ip;
    let mut watch = WatchRun::start(&lab, &["--interval", "0.5"]).unwrap();
    assert_eq!(ping6(&mut lab, 0, 2), 2, "healthy first");
    let guest6s = guest6.to_string();
    watch
        .wait_for(WAIT, |v| has_v6(v, BROKEN, &guest6s))
        .unwrap();
    lab.nft(&format!(
        "add table inet pt_watch6\n\
         add chain inet pt_watch6 pre {{ type filter hook prerouting priority -150; policy accept; }}\n\
         add rule inet pt_watch6 pre iifname \"{}\" ct original ip6 saddr {guest6} drop\n",
        lab.uplink_dev()
    ))
    .unwrap();
    assert_eq!(ping6(&mut lab, 0, 4), 0, "the replies are dropped");
    let matches = |v: &Value| find_drop(v, BROKEN, "prerouting", "NETFILTER_DROP", 4);
    let snap = watch.wait_for(WAIT, |v| matches(v).is_some()).unwrap();
    let d = matches(&snap).unwrap();
    assert_eq!(d["direction"], "to_vm", "{d}");
    assert_eq!(d["via_conntrack"], true, "{d}");
    assert_eq!(d["example"]["src"], INET6_HOST.to_string(), "{d}");
    assert_ne!(d["example"]["dst"], guest6s, "NAT not yet undone: {d}");
    assert_eq!(total_drops(&snap, OTHER), 0, "{snap}");
    lab.nft("delete table inet pt_watch6\n").unwrap();
    assert_eq!(watch.stop().unwrap(), 0);
}

/// `--vm-ip` takes an IPv6 address: only that guest is watched.
#[test]
fn narrowed_by_an_ipv6_address() {
    let mut lab = lab();
    assert_eq!(ping6(&mut lab, 1, 2), 2);
    let mut watch =
        WatchRun::start(&lab, &["--interval", "0.5", "--vm-ip", "2001:db8:1::101"]).unwrap();
    let snap = watch.wait_snapshots(2, WAIT).unwrap();
    assert_eq!(watched(&snap), [OTHER], "{snap}");
    assert_eq!(watch.stop().unwrap(), 0);
}
