//! The lab's IPv6, in each hypervisor layout: the dual-stack guest reaches
//! 2001:db8:ffff::8 with ICMPv6 echo and resolves over IPv6 (AAAA and A) through
//! 2001:db8:ffff::53, the neighbour discovery it does is the real kernel's; each
//! IPv6 fault (lab::Fault6) really stops the guest's traffic and its repair
//! brings it back. No pathtrace here. Needs root (CI runs it as root).

use std::{
    net::{IpAddr, Ipv6Addr},
    path::PathBuf,
    time::Instant,
};

use pathtrace_tests::lab::{
    Fault6, Lab, LabOptions, Layout, PingOpts, PingResult, V6Setup, BRIDGED_HOST6, GATEWAY6,
    INET6_DNS, INET6_HOST, ISP6, NDP_PROXY_GATEWAY, REMOTE_HOST6,
};
use pathtrace_tests::packet6::link_local;

fn parse_mac(s: &str) -> [u8; 6] {
    let b: Vec<u8> = s
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).unwrap())
        .collect();
    b.try_into().unwrap()
}

/// `FAKE_GUEST_BIN` as the other end-to-end tests, else the binary cargo built
/// for this very test run.
fn fake_guest_bin() -> PathBuf {
    std::env::var_os("FAKE_GUEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_fake-guest")))
}

fn lab(layout: Layout) -> Lab {
    let mut opts = LabOptions::new(fake_guest_bin());
    opts.layout = layout;
    Lab::up(opts).expect("lab comes up")
}

/// Replies to 3 echo requests of `size` bytes from guest 0 to `dst`.
fn replies6(lab: &mut Lab, size: usize, timeout_ms: u64) -> u32 {
    let opts = PingOpts {
        count: 3,
        interval_ms: 50,
        timeout_ms,
        size,
        ..PingOpts::default()
    };
    lab.guest(0)
        .ping(INET6_HOST, opts)
        .expect("guest pings")
        .received
}

/// The addresses, routes and sysctls mod.rs's header promises.
fn check_setup(lab: &Lab) {
    let layout = lab.layout();
    let br = lab.bridge();
    let (hv_addr, gw_holder) = match layout {
        Layout::Bridged => ("2001:db8:1::2/64", lab.inet("ip -6 addr show dev lan0")),
        _ => (
            "2001:db8:1::1/64",
            lab.hv(&format!("ip -6 addr show dev {br}")),
        ),
    };
    let on_bridge = lab.hv(&format!("ip -6 addr show dev {br}")).unwrap();
    assert!(on_bridge.contains(hv_addr), "{layout:?}: {on_bridge}");
    assert!(gw_holder.unwrap().contains("2001:db8:1::1/64"));
    for (ns, v) in [
        (
            "hv",
            lab.hv("sysctl -n net.ipv6.conf.all.forwarding net.ipv6.conf.default.accept_dad"),
        ),
        (
            "inet",
            lab.inet("sysctl -n net.ipv6.conf.all.forwarding net.ipv6.conf.default.accept_dad"),
        ),
    ] {
        let v: Vec<String> = v.unwrap().split_whitespace().map(String::from).collect();
        let forwarding = if ns == "hv" && layout != Layout::Bridged {
            "1"
        } else {
            "0"
        };
        assert_eq!(
            v,
            [forwarding, "0"],
            "{layout:?}: {ns} forwarding, accept_dad"
        );
    }
    let tentative = lab.hv("ip -6 addr show tentative").unwrap();
    assert!(
        tentative.trim().is_empty(),
        "{layout:?}: waiting for DAD: {tentative}"
    );
    let routes = lab.hv("ip -6 route show default").unwrap();
    let via = if layout == Layout::Bridged {
        "via 2001:db8:1::1"
    } else {
        "via 2001:db8:2::1"
    };
    assert!(routes.contains(via), "{layout:?}: {routes}");
    if layout != Layout::Bridged {
        let back = lab.inet("ip -6 route show 2001:db8:1::/64").unwrap();
        assert!(back.contains("via 2001:db8:2::2"), "{layout:?}: {back}");
    }
}

fn healthy(layout: Layout) {
    let t0 = Instant::now();
    let mut lab = lab(layout);
    check_setup(&lab);
    assert_eq!(
        replies6(&mut lab, 56, 1000),
        3,
        "{layout:?}: ping {INET6_HOST}"
    );
    assert_eq!(
        replies6(&mut lab, 1452, 1000),
        3,
        "{layout:?}: 1500-byte IPv6 path"
    );

    let aaaa = lab
        .guest(0)
        .dns_type(INET6_DNS, "www.example.com", 2, 1000, "AAAA")
        .expect("dns");
    assert_eq!(
        (aaaa.answered, aaaa.rcode),
        (2, Some(0)),
        "{layout:?}: AAAA"
    );
    assert_eq!(aaaa.addrs, [IpAddr::V6(INET6_HOST)], "{layout:?}");
    let a = lab
        .guest(0)
        .dns(INET6_DNS, "www.example.com", 1, 1000)
        .expect("dns");
    assert_eq!(a.answered, 1, "{layout:?}: A over IPv6");
    assert_eq!(a.addrs, [IpAddr::from([203, 0, 113, 80])], "{layout:?}");

    // The gateway learned the guest from its solicitation (or its own), and
    // the guest's IPv4 keeps working beside it.
    let gw_side = match layout {
        Layout::Bridged => lab.inet("ip -6 neigh show"),
        _ => lab.hv("ip -6 neigh show"),
    }
    .unwrap();
    let guest6 = lab.guest_spec(0).v6.expect("dual stack").ip;
    assert!(
        gw_side.contains(&guest6.to_string()),
        "{layout:?}: {guest6} not among {GATEWAY6}'s neighbours:\n{gw_side}"
    );
    let v4 = lab
        .guest(0)
        .ping(std::net::Ipv4Addr::new(203, 0, 113, 8), PingOpts::default())
        .unwrap();
    assert_eq!(v4.received, 1, "{layout:?}: IPv4 beside IPv6");

    // The host reaches the guest: the kernel solicits the guest's global and
    // link-local (EUI-64 of its MAC) addresses, the guest answers both and
    // the echo requests.
    let mac = lab.guest_spec(0).mac.clone();
    let ll = link_local(parse_mac(&mac));
    let dev = match layout {
        Layout::Bridged => "vmbr0",
        _ => lab.bridge(),
    };
    lab.hv(&format!(
        "ping -6 -c 1 -W 2 {guest6} >/dev/null && ping -6 -c 1 -W 2 {ll}%{dev} >/dev/null"
    ))
    .unwrap_or_else(|e| panic!("{layout:?}: the host pings the guest: {e:#}"));

    // ICMPv6 errors come back to the guest and are reported.
    let hop1 = PingOpts {
        ttl: 1,
        ..PingOpts::default()
    };
    let errors = |r: PingResult| r.errors.iter().map(|e| e.kind).collect::<Vec<_>>();
    let r = lab.guest(0).ping(INET6_HOST, hop1).unwrap();
    // Bridged: the router holds the destination itself, nothing is forwarded.
    let want: &[u8] = if layout == Layout::Bridged { &[] } else { &[3] };
    assert_eq!(errors(r), want, "{layout:?}: time exceeded from the host");
    let nowhere: Ipv6Addr = "2001:db8:ffff::99".parse().unwrap();
    let r = lab.guest(0).ping(nowhere, PingOpts::default()).unwrap();
    assert_eq!(errors(r), [1], "{layout:?}: unreachable {nowhere}");
    eprintln!("{layout:?}: {:.1} s", t0.elapsed().as_secs_f64());
}

#[test]
fn plain_guest_reaches_the_internet_over_ipv6() {
    healthy(Layout::Plain);
}

#[test]
fn proxmox_guest_reaches_the_internet_over_ipv6() {
    healthy(Layout::Proxmox);
}

#[test]
fn libvirt_guest_reaches_the_internet_over_ipv6() {
    healthy(Layout::Libvirt);
}

#[test]
fn bridged_guest_reaches_the_internet_over_ipv6() {
    healthy(Layout::Bridged);
}

/// Guest 0's echo requests to `dst`: 3 of `size` bytes, `timeout_ms` after
/// the last; an error when the guest could not even resolve its next hop.
fn ping6(lab: &mut Lab, dst: Ipv6Addr, size: usize, timeout_ms: u64) -> anyhow::Result<PingResult> {
    let opts = PingOpts {
        count: 3,
        interval_ms: 50,
        timeout_ms,
        size,
        ..PingOpts::default()
    };
    lab.guest(0).ping(dst, opts)
}

fn assert_works(lab: &mut Lab, dst: Ipv6Addr, what: &str) {
    let r = ping6(lab, dst, 56, 2000).unwrap_or_else(|e| panic!("{what}: {e:#}"));
    assert!(
        r.received >= 2,
        "{:?} {what}: {dst} answered {} of 3",
        lab.layout(),
        r.received
    );
}

fn assert_fails(lab: &mut Lab, dst: Ipv6Addr, what: &str) {
    match ping6(lab, dst, 56, 500) {
        Ok(r) => assert_eq!(r.received, 0, "{:?} {what}: {dst} answered", lab.layout()),
        // The next hop did not answer neighbour solicitation: nothing was sent.
        Err(e) => assert!(
            format!("{e:#}").contains("neighbour solicitation"),
            "{what}: {e:#}"
        ),
    }
}

fn aaaa_answered(lab: &mut Lab) -> u32 {
    lab.guest(0)
        .dns_type(INET6_DNS, "www.example.com", 1, 1000, "AAAA")
        .expect("dns")
        .answered
}

/// What a fault may touch, in both namespaces: addresses, routes, proxy
/// entries, link MTUs, IPv6 sysctls, nft and ip6tables rules (line by line).
fn snapshot(lab: &Lab) -> String {
    let state = "ip -6 -o addr show | sed 's/\\\\.*//'; ip -6 route show; \
                 ip -6 neigh show proxy; ip -o link show | awk '{print $2, $5}'; \
                 sysctl net.ipv6.conf 2>/dev/null | grep -E 'ipv6.conf.*(forwarding|proxy_ndp|disable_ipv6) '; \
                 nft list ruleset; ip6tables-legacy -w -S";
    // Sorted: a table made again comes after the others, the same rule set.
    let sorted = |text: String| {
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        lines.sort();
        lines.join("\n")
    };
    format!(
        "{}\n--- inet\n{}",
        sorted(lab.hv(state).unwrap()),
        sorted(lab.inet(state).unwrap())
    )
}

/// Break, see the guest's ping to `dst` fail, repair, see it work again and
/// the host and its provider exactly as before.
fn break_and_repair(lab: &mut Lab, fault: Fault6, dst: Ipv6Addr) {
    assert_works(lab, dst, &format!("before {fault:?}"));
    let before = snapshot(lab);
    lab.break_path6(fault)
        .unwrap_or_else(|e| panic!("{fault:?}: {e:#}"));
    assert_fails(lab, dst, &format!("{fault:?}"));
    lab.repair6(fault)
        .unwrap_or_else(|e| panic!("repair {fault:?}: {e:#}"));
    assert_eq!(snapshot(lab), before, "{fault:?}: repair is not exact");
    assert_works(lab, dst, &format!("after {fault:?}"));
}

/// The faults that stop a routed guest's traffic to the internet.
const ROUTED_BREAKS: [Fault6; 9] = [
    Fault6::ForwardingOff,
    Fault6::ForwardingOnlyPerInterface,
    Fault6::NoDefaultRoute,
    Fault6::GatewayAddressGone,
    Fault6::UplinkRouterSilent,
    Fault6::Ip6tablesForwardDrop,
    Fault6::NftInetForwardDrop,
    Fault6::NftIp6ForwardDrop,
    Fault6::DnsReplyDropped,
];

fn routed_faults(layout: Layout) {
    let t0 = Instant::now();
    let mut lab = lab(layout);
    for fault in ROUTED_BREAKS {
        if fault == Fault6::DnsReplyDropped {
            assert_eq!(aaaa_answered(&mut lab), 1, "{layout:?}: before {fault:?}");
            let before = snapshot(&lab);
            lab.break_path6(fault).unwrap();
            assert_eq!(aaaa_answered(&mut lab), 0, "{layout:?}: {fault:?}");
            assert_works(&mut lab, INET6_HOST, "DnsReplyDropped, ping");
            lab.repair6(fault).unwrap();
            assert_eq!(snapshot(&lab), before, "{fault:?}: repair is not exact");
            assert_eq!(aaaa_answered(&mut lab), 1, "{layout:?}: after {fault:?}");
            continue;
        }
        break_and_repair(&mut lab, fault, INET6_HOST);
    }
    // Measured: per-interface forwarding does not gate IPv6 forwarding.
    for fault in [Fault6::BridgeForwardingOff, Fault6::UplinkForwardingOff] {
        let before = snapshot(&lab);
        lab.break_path6(fault).unwrap();
        lab.guest(0).flush_neighbours().unwrap();
        assert_works(&mut lab, INET6_HOST, &format!("{fault:?} (still forwards)"));
        lab.repair6(fault).unwrap();
        assert_eq!(snapshot(&lab), before, "{fault:?}: repair is not exact");
    }

    break_and_repair(&mut lab, Fault6::HostInputEchoDrop, GATEWAY6);
    assert_works(
        &mut lab,
        INET6_HOST,
        "HostInputEchoDrop spares forwarded echo",
    );

    // The host's own Packet Too Big on a smaller uplink.
    assert_eq!(ping6(&mut lab, INET6_HOST, 1452, 1000).unwrap().received, 3);
    let before = snapshot(&lab);
    lab.break_path6(Fault6::UplinkMtuStep).unwrap();
    let r = ping6(&mut lab, INET6_HOST, 1452, 1000).unwrap();
    assert_eq!(r.received, 0, "{layout:?}: UplinkMtuStep");
    assert!(
        r.errors.iter().any(|e| e.kind == 2 && e.mtu == 1400),
        "{layout:?}: Packet Too Big 1400 expected: {:?}",
        r.errors
    );
    assert_works(&mut lab, INET6_HOST, "UplinkMtuStep, small packets");
    lab.repair6(Fault6::UplinkMtuStep).unwrap();
    assert_eq!(snapshot(&lab), before, "UplinkMtuStep: repair is not exact");
    assert_eq!(ping6(&mut lab, INET6_HOST, 1452, 1000).unwrap().received, 3);

    // The provider's router's Packet Too Big toward the far network.
    lab.add_remote_network(1500).unwrap();
    assert_eq!(
        ping6(&mut lab, REMOTE_HOST6, 1452, 1000).unwrap().received,
        3
    );
    let before = snapshot(&lab);
    lab.break_path6(Fault6::RemoteMtuStep).unwrap();
    let r = ping6(&mut lab, REMOTE_HOST6, 1452, 1000).unwrap();
    assert_eq!(r.received, 0, "{layout:?}: RemoteMtuStep");
    let ptb = r
        .errors
        .iter()
        .find(|e| e.kind == 2)
        .unwrap_or_else(|| panic!("{layout:?}: no Packet Too Big: {:?}", r.errors));
    assert_eq!((ptb.mtu, ptb.from), (1400, IpAddr::V6(ISP6)), "{layout:?}");
    lab.repair6(Fault6::RemoteMtuStep).unwrap();
    assert_eq!(snapshot(&lab), before, "RemoteMtuStep: repair is not exact");
    assert_eq!(
        ping6(&mut lab, REMOTE_HOST6, 1452, 1000).unwrap().received,
        3
    );
    eprintln!("{layout:?} faults: {:.1} s", t0.elapsed().as_secs_f64());
}

#[test]
fn plain_ipv6_faults_break_and_repair() {
    routed_faults(Layout::Plain);
}

#[test]
fn proxmox_ipv6_faults_break_and_repair() {
    routed_faults(Layout::Proxmox);
}

#[test]
fn libvirt_ipv6_faults_break_and_repair() {
    routed_faults(Layout::Libvirt);
}

#[test]
fn bridged_ipv6_faults_break_and_repair() {
    let mut lab = lab(Layout::Bridged);
    break_and_repair(&mut lab, Fault6::GatewayAddressGone, INET6_HOST);
    break_and_repair(&mut lab, Fault6::HostInputEchoDrop, BRIDGED_HOST6);
    // br_netfilter: bridged IPv6 crosses the forward hook too.
    break_and_repair(&mut lab, Fault6::NftInetForwardDrop, INET6_HOST);
    for f in [
        Fault6::NoDefaultRoute,
        Fault6::UplinkMtuStep,
        Fault6::NoNat66,
    ] {
        assert!(
            lab.break_path6(f).is_err(),
            "{f:?} has no meaning when bridged"
        );
    }
}

/// A guest in a prefix nobody routes back: NAT66 makes it work.
#[test]
fn nat66_guest_needs_its_masquerade() {
    for layout in [Layout::Plain, Layout::Proxmox] {
        let mut opts = LabOptions::new(fake_guest_bin());
        opts.layout = layout;
        opts.v6 = V6Setup::Nat66;
        let mut lab = Lab::up(opts).expect("lab");
        let ip = lab.guest_spec(0).v6.unwrap().ip;
        assert_eq!(ip.to_string(), "2001:db8:99::100");
        assert!(lab
            .inet("ip -6 route show 2001:db8:99::/64")
            .unwrap()
            .trim()
            .is_empty());
        break_and_repair(&mut lab, Fault6::NoNat66, INET6_HOST);
        assert_eq!(aaaa_answered(&mut lab), 1, "{layout:?}: DNS through NAT66");
    }
}

/// A guest in the uplink's on-link /64: the host answers the provider's
/// solicitations for it.
#[test]
fn ndp_proxy_guest_needs_proxy_ndp_and_its_entry() {
    let mut opts = LabOptions::new(fake_guest_bin());
    opts.v6 = V6Setup::NdpProxy;
    let mut lab = Lab::up(opts).expect("lab");
    let g = lab.guest_spec(0).v6.unwrap();
    assert_eq!(
        (g.ip.to_string().as_str(), g.gateway),
        ("2001:db8:2::100", NDP_PROXY_GATEWAY)
    );
    let proxies = lab.hv("ip -6 neigh show proxy").unwrap();
    assert!(proxies.contains("2001:db8:2::100 dev eth0"), "{proxies}");
    for fault in [
        Fault6::NdpProxyEntryMissing,
        Fault6::ProxyNdpOff,
        Fault6::UplinkForwardingOff,
    ] {
        break_and_repair(&mut lab, fault, INET6_HOST);
    }
    assert!(
        lab.break_path6(Fault6::NoNat66).is_err(),
        "needs the Nat66 setup"
    );
}
