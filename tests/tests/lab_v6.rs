//! The lab's IPv6, in each hypervisor layout: the dual-stack guest reaches
//! 2001:db8:ffff::8 with ICMPv6 echo and resolves over IPv6 (AAAA and A) through
//! 2001:db8:ffff::53, the neighbour discovery it does is the real kernel's. No
//! pathtrace here. Needs root (CI runs it as root).

use std::{net::IpAddr, path::PathBuf, time::Instant};

use pathtrace_tests::lab::{Lab, LabOptions, Layout, PingOpts, GATEWAY6, INET6_DNS, INET6_HOST};

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
