//! `pathtrace doctor`'s IPv6 checks on the dual-stack lab: healthy in each
//! layout (every IPv6 check passes), then each IPv6 fault found by the right
//! check with the right fixing command; a guest address in the uplink's prefix
//! (proxy NDP) and a SLAAC-shaped one (router advertisements). Faults are
//! planted here with `ip`/`sysctl`/`nft` in the lab's hv namespace. Needs root
//! (CI runs it as root).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use pathtrace_tests::{
    lab::{
        Fault6, GuestSpec, GuestV6, Lab, LabOptions, Layout, PingOpts, V6Setup, INET6_DNS,
        INET6_HOST,
    },
    scenarios::IPV6_CHECKS,
    tracerun::{fake_guest_bin, run_in_hv, TraceRun},
};
use serde_json::Value;

const DEST: &str = "203.0.113.8";
const VM: &str = "192.0.2.100";

fn lab_with(layout: Layout, v6: Option<GuestV6>) -> Lab {
    let mut opts = LabOptions::new(fake_guest_bin());
    opts.layout = layout;
    if v6.is_some() {
        opts.guests[0].v6 = v6;
    }
    let mut lab = Lab::up(opts).expect("lab up");
    // The IPv4 checks of a libvirt host want its resolver running.
    lab.start_host_resolver().expect("host resolver");
    learn(&mut lab);
    lab
}

/// The guest talks over both families, as a running VM does: the host learns
/// its addresses (neighbour entries) and MAC (FDB). Whether its IPv6 ping is
/// answered is the test's business.
fn learn(lab: &mut Lab) -> u32 {
    let once = PingOpts {
        count: 1,
        ..PingOpts::default()
    };
    lab.guest(0)
        .ping(DEST.parse::<Ipv4Addr>().unwrap(), once)
        .expect("guest pings");
    lab.guest(0)
        .ping(INET6_HOST, once)
        .expect("guest pings over IPv6")
        .received
}

/// `doctor` about guest 0, reading the hypervisor configuration under `root`.
fn doctor_args<'a>(root: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "doctor",
        "--vm-ip",
        VM,
        "--to",
        DEST,
        "--json",
        "--config-root",
        root,
    ];
    args.extend_from_slice(extra);
    args
}

fn doctor(lab: &Lab, extra: &[&str]) -> TraceRun {
    let root = lab.config_root();
    run_in_hv(lab, &doctor_args(root.to_str().unwrap(), extra)).expect("doctor runs")
}

fn v6_checks(run: &TraceRun) -> Vec<Value> {
    run.json()
        .into_iter()
        .filter(|v| {
            v["type"] == "check" && IPV6_CHECKS.contains(&v["check"].as_str().unwrap_or_default())
        })
        .collect()
}

/// The one check named `name` that did not pass.
fn failing(run: &TraceRun, name: &str) -> Value {
    let cs = v6_checks(run);
    cs.iter()
        .find(|c| c["check"] == name && c["status"] != "pass")
        .unwrap_or_else(|| panic!("no failing {name} in {cs:#?}"))
        .clone()
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// Healthy: every IPv6 check there is for the layout passes; the gateway is
/// found by the doctor's own neighbour solicitation (its entry flushed).
fn healthy(layout: Layout) {
    let mut lab = lab_with(layout, None);
    assert_eq!(
        learn(&mut lab),
        1,
        "{layout:?}: the guest's IPv6 ping is answered"
    );
    lab.hv("ip -6 neigh flush dev eth0").unwrap();
    let run = doctor(&lab, &[]);
    let cs = v6_checks(&run);
    let names: Vec<&str> = cs.iter().map(|c| text(&c["check"])).collect();
    for want in [
        "mtu6",
        "ip6_forward",
        "accept_ra",
        "route6",
        "gateway6",
        "firewall6",
    ] {
        assert!(
            names.contains(&want),
            "{layout:?}: {want} missing: {names:?}"
        );
    }
    let bad: Vec<&Value> = cs.iter().filter(|c| c["status"] != "pass").collect();
    assert!(bad.is_empty(), "{layout:?} healthy: {bad:#?}");
    assert_eq!(run.code, 0, "{layout:?}: {}", run.stdout);
    let gw = cs.iter().find(|c| c["check"] == "gateway6").unwrap();
    assert!(
        text(&gw["evidence"]).contains("answered a neighbour solicitation"),
        "{gw}"
    );
}

#[test]
fn healthy_plain() {
    healthy(Layout::Plain);
}

#[test]
fn healthy_proxmox() {
    healthy(Layout::Proxmox);
}

#[test]
fn healthy_libvirt() {
    healthy(Layout::Libvirt);
}

/// What doctor must say for an IPv6 fault: the check, its status, the start
/// of its fix.
struct Finding {
    fault: Fault6,
    check: &'static str,
    status: &'static str,
    fix: &'static str,
}

const FINDINGS: &[Finding] = &[
    Finding {
        fault: Fault6::ForwardingOff,
        check: "ip6_forward",
        status: "fail",
        fix: "sysctl -w net.ipv6.conf.all.forwarding=1",
    },
    // Forwarding on per interface, as for IPv4: IPv6 forwards nothing.
    Finding {
        fault: Fault6::ForwardingOnlyPerInterface,
        check: "ip6_forward",
        status: "fail",
        fix: "sysctl -w net.ipv6.conf.all.forwarding=1",
    },
    // Still forwarded; the static guest keeps its route: a warning.
    Finding {
        fault: Fault6::BridgeForwardingOff,
        check: "ip6_forward",
        status: "warn",
        fix: "sysctl -w net.ipv6.conf.vmbr0.forwarding=1",
    },
    Finding {
        fault: Fault6::NoDefaultRoute,
        check: "route6",
        status: "fail",
        fix: "ip -6 route add default via",
    },
    Finding {
        fault: Fault6::UplinkRouterSilent,
        check: "gateway6",
        status: "fail",
        fix: "check that the router 2001:db8:2::1 is up",
    },
    Finding {
        fault: Fault6::Ip6tablesForwardDrop,
        check: "firewall6",
        status: "fail",
        fix: "ip6tables-legacy -t filter -D FORWARD 1",
    },
    Finding {
        fault: Fault6::NftInetForwardDrop,
        check: "firewall6",
        status: "fail",
        fix: "nft delete rule inet",
    },
    Finding {
        fault: Fault6::NftIp6ForwardDrop,
        check: "firewall6",
        status: "fail",
        fix: "nft delete rule ip6",
    },
];

/// Each of v6lab's IPv6 faults that the doctor can see from the host's
/// tables (DnsReplyDropped drops replies from one resolver, which the doctor
/// replays only once `--dns` takes an IPv6 address), found by the right check with its fix (probing actively), and gone
/// once repaired.
#[test]
fn ipv6_faults_are_found_with_their_fix() {
    let mut lab = lab_with(Layout::Plain, None);
    for f in FINDINGS {
        lab.break_path6(f.fault).unwrap();
        let run = doctor(&lab, &[]);
        let c = failing(&run, f.check);
        assert_eq!(c["status"], f.status, "{:?}: {c}", f.fault);
        assert!(text(&c["fix"]).starts_with(f.fix), "{:?}: {c}", f.fault);
        assert_eq!(run.code, i32::from(f.status == "fail"), "{:?}", f.fault);
        lab.repair6(f.fault).unwrap();
        learn(&mut lab);
        let again = v6_checks(&doctor(&lab, &["--passive"]));
        let left: Vec<&Value> = again.iter().filter(|c| c["status"] != "pass").collect();
        assert!(left.is_empty(), "{:?} repaired: {left:#?}", f.fault);
    }
    // Not among the lab's faults: an nft rule dropping neighbour discovery.
    lab.hv("nft add table inet v6test && nft add chain inet v6test input \"{ type filter hook input priority 0; }\" && nft add rule inet v6test input icmpv6 type \"{ nd-neighbor-solicit, nd-neighbor-advert }\" drop").unwrap();
    let c = failing(&doctor(&lab, &["--passive"]), "firewall6");
    assert!(
        text(&c["evidence"]).contains("neighbour solicitation"),
        "{c}"
    );
    assert!(
        text(&c["fix"]).starts_with("nft delete rule inet v6test input handle"),
        "{c}"
    );
    lab.hv("nft delete table inet v6test").unwrap();
    // Nor is a default route from an advertisement that forwarding makes the
    // uplink ignore.
    lab.hv("ip -6 route del default && ip -6 route add default via fe80::1 dev eth0 proto ra")
        .unwrap();
    let c = failing(&doctor(&lab, &["--passive"]), "accept_ra");
    assert_eq!(
        text(&c["fix"]).split(" (").next(),
        Some("sysctl -w net.ipv6.conf.eth0.accept_ra=2"),
        "{c}"
    );
}

/// The provider treats the uplink's prefix as on-link and the guest takes an
/// address from it (v6lab's NDP-proxy setup): healthy, proxy_ndp passes; each
/// way of breaking the proxy fails it with the fix.
#[test]
fn ndp_proxy_setup_and_its_faults() {
    let mut opts = LabOptions::new(fake_guest_bin());
    opts.v6 = V6Setup::NdpProxy;
    let mut lab = Lab::up(opts).expect("lab up");
    lab.start_host_resolver().expect("host resolver");
    assert_eq!(learn(&mut lab), 1, "the NDP-proxy lab works");
    let run = doctor(&lab, &["--passive"]);
    let bad: Vec<Value> = v6_checks(&run)
        .into_iter()
        .filter(|c| c["status"] != "pass")
        .collect();
    assert!(bad.is_empty(), "healthy: {bad:#?}");
    assert!(
        v6_checks(&run).iter().any(|c| c["check"] == "proxy_ndp"),
        "no proxy_ndp check"
    );
    let guest = V6Setup::NdpProxy
        .place(GuestSpec::nth(0).v6.expect("nth has IPv6"))
        .ip;
    for (fault, fix) in [
        (
            Fault6::NdpProxyEntryMissing,
            format!("ip -6 neigh add proxy {guest} dev eth0"),
        ),
        (
            Fault6::ProxyNdpOff,
            "sysctl -w net.ipv6.conf.eth0.proxy_ndp=1".to_string(),
        ),
        (
            Fault6::UplinkForwardingOff,
            "sysctl -w net.ipv6.conf.eth0.forwarding=1".to_string(),
        ),
    ] {
        lab.break_path6(fault).unwrap();
        let c = failing(&doctor(&lab, &["--passive"]), "proxy_ndp");
        assert_eq!(c["fix"], fix, "{fault:?}: {c}");
        lab.repair6(fault).unwrap();
    }
}

/// A SLAAC-shaped guest address (made from its MAC) needs router
/// advertisements on its bridge: none, then dnsmasq's.
#[test]
fn a_slaac_guest_needs_router_advertisements() {
    let (lab, slaac) = slaac_lab();
    let c = failing(&doctor(&lab, &["--passive"]), "ra_service");
    assert!(
        text(&c["evidence"]).contains(&IpAddr::V6(slaac).to_string()),
        "{c}"
    );
    assert!(text(&c["fix"]).contains("enable-ra"), "{c}");
    start_dnsmasq_ra(&lab);
    let run = doctor(&lab, &["--passive"]);
    let c = v6_checks(&run)
        .into_iter()
        .find(|c| c["check"] == "ra_service")
        .unwrap();
    assert_eq!(c["status"], "pass", "{c}");
    assert!(text(&c["evidence"]).contains("dnsmasq"), "{c}");
    // The bridge's own forwarding off now costs this guest its route: its
    // router is learned from the advertisements.
    lab.hv(&format!(
        "sysctl -qw net.ipv6.conf.{}.forwarding=0",
        lab.bridge()
    ))
    .unwrap();
    let c = failing(&doctor(&lab, &["--passive"]), "ip6_forward");
    assert_eq!(c["status"], "fail", "{c}");
    assert!(text(&c["evidence"]).contains("is SLAAC"), "{c}");
}

/// The plain lab with guest 0 at the address SLAAC makes from its MAC
/// (modified EUI-64 in the guests' /64).
fn slaac_lab() -> (Lab, Ipv6Addr) {
    let mac: Vec<u8> = GuestSpec::nth(0)
        .mac
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    let mut octets = [0u8; 16];
    octets[..8].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0]);
    octets[8..].copy_from_slice(&[
        mac[0] ^ 2,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ]);
    let slaac = Ipv6Addr::from(octets);
    let v6 = GuestV6 {
        ip: slaac,
        prefix: 64,
        gateway: "2001:db8:1::1".parse().unwrap(),
    };
    (lab_with(Layout::Plain, Some(v6)), slaac)
}

/// dnsmasq sending router advertisements (only) on the VM bridge, in the hv
/// namespace (killed with it). `--pid-file` without a value: no pid file
/// (dnsmasq unlinks and re-creates it — `--pid-file=/dev/null` replaces
/// /dev/null with a plain file).
fn start_dnsmasq_ra(lab: &Lab) {
    let br = lab.bridge();
    lab.hv(&format!(
        "dnsmasq --conf-file=/dev/null --pid-file --port=0 --bind-interfaces --interface={br} --enable-ra --dhcp-range=::,constructor:{br},ra-only"
    ))
    .unwrap();
}

/// Writes the IPv6 checks' unit-test fixtures (tracer/src/doctor/testdata/v6-*):
/// passive doctor runs over the plain lab, healthy and with each fault, each
/// saving the host model it read and the checks it answered. Run it after
/// changing what the host model holds:
/// `cargo test --release -p pathtrace-tests --test doctor_v6 -- --ignored write_doctor_v6_fixtures`
#[test]
#[ignore = "writes fixtures into the source tree"]
fn write_doctor_v6_fixtures() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tracer/src/doctor/testdata");
    let empty = std::env::temp_dir().join(format!("pathtrace-v6-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let save = |lab: &Lab, name: &str| {
        let path = dir.join(format!("v6-{name}.json"));
        let args = doctor_args(empty.to_str().unwrap(), &["--passive"]);
        let out = lab
            .command_in_hv(&pathtrace_tests::tracerun::pathtrace_bin(), &args)
            .env("PATHTRACE_SAVE_DOCTOR_FIXTURE", &path)
            .output()
            .unwrap();
        assert!(
            path.exists(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "v6-{name}: {}",
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.contains("\"pass\""))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    };
    let lab = lab_with(Layout::Plain, None);
    save(&lab, "healthy");
    let faults: &[(&str, &str, &str)] = &[
        (
            "all-forwarding-off",
            "sysctl -qw net.ipv6.conf.all.forwarding=0",
            "sysctl -qw net.ipv6.conf.all.forwarding=1",
        ),
        (
            "bridge-forwarding-off",
            "sysctl -qw net.ipv6.conf.vmbr0.forwarding=0",
            "sysctl -qw net.ipv6.conf.vmbr0.forwarding=1",
        ),
        (
            "nft-drops-ndp",
            "nft add table inet v6test && nft add chain inet v6test input \"{ type filter hook input priority 0; }\" && nft add rule inet v6test input icmpv6 type \"{ nd-neighbor-solicit, nd-neighbor-advert }\" drop",
            "nft delete table inet v6test",
        ),
        (
            "ip6tables-legacy-forward-drop",
            "ip6tables-legacy -P FORWARD DROP",
            "ip6tables-legacy -P FORWARD ACCEPT",
        ),
        (
            "no-default-route",
            "ip -6 route del default",
            "ip -6 route add default via 2001:db8:2::1",
        ),
        (
            "ra-route-ignored",
            "ip -6 route del default && ip -6 route add default via fe80::1 dev eth0 proto ra",
            "ip -6 route del default && ip -6 route add default via 2001:db8:2::1",
        ),
        // Too small for IPv6: the kernel drops IPv6 from the port and the
        // bridge, and what the host knew of the guest's addresses with it.
        ("mtu-too-small", "ip link set tap100i0 mtu 1200", "true"),
    ];
    for (name, break_it, repair) in faults {
        lab.hv(break_it).unwrap();
        save(&lab, name);
        lab.hv(repair).unwrap();
    }
    drop(lab);
    let addr: Ipv6Addr = "2001:db8:2::100".parse().unwrap();
    let mut lab = lab_with(
        Layout::Plain,
        Some(GuestV6 {
            ip: addr,
            prefix: 128,
            gateway: "2001:db8:1::1".parse().unwrap(),
        }),
    );
    lab.hv(&format!("ip -6 route add {addr}/128 dev vmbr0"))
        .unwrap();
    learn(&mut lab);
    save(&lab, "proxy-ndp-missing");
    lab.hv(&format!(
        "sysctl -qw net.ipv6.conf.eth0.proxy_ndp=1 && ip -6 neigh add proxy {addr} dev eth0"
    ))
    .unwrap();
    save(&lab, "proxy-ndp");
    drop(lab);
    let (lab, _) = slaac_lab();
    save(&lab, "slaac-no-ra");
    start_dnsmasq_ra(&lab);
    save(&lab, "slaac-dnsmasq-ra");
}

/// `--snapshot`/`--diff` see IPv6 configuration: a proxy entry, an IPv6
/// sysctl, an ip6tables-legacy rule and an IPv6 route, each in its own file.
#[test]
fn snapshot_then_diff_shows_ipv6_changes() {
    let lab = lab_with(Layout::Plain, None);
    let dir = std::env::temp_dir().join(format!("ptsnap6-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    let saved = run_in_hv(&lab, &["doctor", "--snapshot", d]).unwrap();
    assert_eq!(saved.code, 0, "{}", saved.stderr);
    let same = run_in_hv(&lab, &["doctor", "--diff", d, "--json"]).unwrap();
    assert_eq!(same.code, 0, "unchanged host: {}", same.stdout);
    lab.hv("ip -6 neigh add proxy 2001:db8:2::100 dev eth0 && \
         sysctl -qw net.ipv6.conf.eth0.accept_ra=2 && \
         ip6tables-legacy -A FORWARD -p ipv6-icmp -j DROP && \
         ip -6 route add 2001:db8:2::100/128 dev vmbr0")
        .unwrap();
    let changed = run_in_hv(&lab, &["doctor", "--diff", d, "--json"]).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(changed.code, 1);
    let files: Vec<String> = changed
        .json()
        .iter()
        .filter(|v| v["type"] == "diff")
        .map(|v| format!("{} {}", v["file"], v["added"]))
        .collect();
    for (file, words) in [
        ("neighbour-proxies.txt", "proxy 2001:db8:2::100"),
        ("sysctls6.txt", "net.ipv6.conf.eth0.accept_ra = 2"),
        ("ip6tables-legacy.txt", "-p ipv6-icmp -j DROP"),
        ("routes6.txt", "2001:db8:2::100"),
    ] {
        assert!(
            files.iter().any(|f| f.contains(file) && f.contains(words)),
            "{file}: {words} in {files:#?}"
        );
    }
}

/// A guest the host has not heard over IPv6 yet: Proxmox's configuration
/// (cloud-init's `ip6=`) names its address, and the IPv6 checks run on it.
#[test]
fn ipv6_address_from_the_proxmox_configuration() {
    let lab = lab_with(Layout::Proxmox, None);
    lab.hv(&format!("ip -6 neigh flush dev {}", lab.bridge()))
        .unwrap();
    let run = doctor(&lab, &["--passive"]);
    let cs = v6_checks(&run);
    let back = cs
        .iter()
        .find(|c| c["subject"] == "IPv6 route to the guest 2001:db8:1::100")
        .unwrap_or_else(|| panic!("no route back to the configured address: {cs:#?}"));
    assert_eq!(back["status"], "pass", "{back}");
    let bad: Vec<&Value> = cs.iter().filter(|c| c["status"] == "fail").collect();
    assert!(bad.is_empty(), "{bad:#?}");
}

/// `doctor --vm-ip IPV6 --to IPV6 --dns IPV6`: the VM found by its IPv6
/// address, the port and bridge checks and the IPv6 ones (none of IPv4's), the
/// summary naming the IPv6 addresses; the resolver given is the one the DNS
/// replay asks, so a rule dropping its replies is found.
#[test]
fn vm_named_by_its_ipv6_address() {
    let mut lab = lab_with(Layout::Plain, None);
    let vm6 = GuestSpec::nth(0).v6.unwrap().ip.to_string();
    let (host6, dns6) = (INET6_HOST.to_string(), INET6_DNS.to_string());
    let root = lab.config_root();
    let args = [
        "doctor",
        "--vm-ip",
        &vm6,
        "--to",
        &host6,
        "--dns",
        &dns6,
        "--json",
        "--config-root",
        root.to_str().unwrap(),
    ];
    let run = run_in_hv(&lab, &args).unwrap();
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let lines = run.json();
    let summary = lines.iter().find(|v| v["type"] == "doctor").unwrap();
    assert_eq!(summary["vm_ip"], vm6.as_str(), "{summary}");
    assert_eq!(summary["dst"], host6.as_str(), "{summary}");
    let names: Vec<&str> = lines
        .iter()
        .filter(|v| v["type"] == "check")
        .map(|v| text(&v["check"]))
        .collect();
    for want in [
        "vm_port",
        "bridge_member",
        "route6",
        "gateway6",
        "firewall6",
    ] {
        assert!(names.contains(&want), "{want}: {names:?}");
    }
    for not in ["ip_forward", "nat", "route", "duplicate_ip"] {
        assert!(!names.contains(&not), "{not}: {names:?}");
    }
    lab.break_path6(Fault6::DnsReplyDropped).unwrap();
    let run = run_in_hv(&lab, &args).unwrap();
    let c = failing(&run, "firewall6");
    assert!(text(&c["evidence"]).contains("DNS answer"), "{c}");
    assert!(text(&c["fix"]).starts_with("nft delete rule"), "{c}");
    lab.repair6(Fault6::DnsReplyDropped).unwrap();
}
