//! `pathtrace doctor`'s IPv6 checks on a small dual-stack hypervisor in
//! network namespaces: healthy, then each fault found by the right check with
//! the right fixing command. The guest is a namespace with the kernel's own
//! IPv6 stack (neighbour discovery, echo), behind a veth port on vmbr0; the
//! "internet" routes the guests' /64 to the host (a routed prefix, no NAT66).
//! Documentation addresses only. Needs root (CI runs it as root).
//!
//!   guest: eth0 192.0.2.100/24, 2001:db8:1::100/64 (MAC 52:54:00:12:34:56)
//!     ═veth═ vport100 ── vmbr0 192.0.2.1/24, 2001:db8:1::1/64 ┐ hv
//!                        eth0 198.51.100.2/24, 2001:db8:2::2/64 ┘ MASQUERADE (IPv4)
//!     ═veth═ isp0 198.51.100.1/24, 2001:db8:2::1/64; 2001:db8:ffff::53 on lo: inet

use std::{
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use pathtrace_tests::{lab::remove_netns, tracerun::pathtrace_bin};
use serde_json::Value;

const VM4: &str = "192.0.2.100";
const VM6: &str = "2001:db8:1::100";
const DEST4: &str = "203.0.113.8";
const MAC: &str = "52:54:00:12:34:56";
static NEXT: AtomicU32 = AtomicU32::new(0);

/// The three namespaces, removed on drop.
struct V6Lab {
    guest: String,
    hv: String,
    inet: String,
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().expect("sh");
    assert!(
        out.status.success(),
        "`{cmd}`: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl V6Lab {
    fn up() -> V6Lab {
        pathtrace_tests::lab::cleanup_stale_netns("pt6d");
        let n = format!(
            "pt6d{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let lab = V6Lab {
            guest: format!("{n}g"),
            hv: format!("{n}h"),
            inet: format!("{n}i"),
        };
        for ns in [&lab.guest, &lab.hv, &lab.inet] {
            sh(&format!("ip netns add {ns} && ip -n {ns} link set lo up"));
        }
        let (g, h, i) = (&lab.guest, &lab.hv, &lab.inet);
        sh(&format!(
            "ip -n {h} link add vmbr0 type bridge stp_state 0 forward_delay 0 && \
             ip link add eth0 netns {g} address {MAC} type veth peer name vport100 netns {h} && \
             ip -n {h} link set vport100 master vmbr0 && \
             ip link add eth0 netns {h} type veth peer name isp0 netns {i} && \
             for l in vmbr0 vport100 eth0; do ip -n {h} link set $l up; done && \
             ip -n {g} link set eth0 up && ip -n {i} link set isp0 up && \
             ip -n {h} addr add 192.0.2.1/24 dev vmbr0 && \
             ip -n {h} addr add 2001:db8:1::1/64 dev vmbr0 nodad && \
             ip -n {h} addr add 198.51.100.2/24 dev eth0 && \
             ip -n {h} addr add 2001:db8:2::2/64 dev eth0 nodad && \
             ip -n {i} addr add 198.51.100.1/24 dev isp0 && \
             ip -n {i} addr add 2001:db8:2::1/64 dev isp0 nodad && \
             ip -n {i} addr add {DEST4}/32 dev lo && \
             ip -n {i} addr add 2001:db8:ffff::53/128 dev lo && \
             ip -n {g} addr add {VM4}/24 dev eth0 && \
             ip -n {g} addr add {VM6}/64 dev eth0 nodad && \
             ip -n {g} route add default via 192.0.2.1 && \
             ip -n {g} -6 route add default via 2001:db8:1::1 && \
             ip -n {h} route add default via 198.51.100.1 && \
             ip -n {h} -6 route add default via 2001:db8:2::1 && \
             ip -n {i} -6 route add 2001:db8:1::/64 via 2001:db8:2::2 && \
             ip netns exec {h} sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 && \
             ip netns exec {h} iptables-legacy -t nat -A POSTROUTING -s 192.0.2.0/24 -o eth0 -j MASQUERADE"
        ));
        lab.learn();
        lab
    }

    /// The guest talks over both families, as any running VM does: the host
    /// learns its addresses (neighbour entries) and its MAC (FDB).
    fn learn(&self) {
        let g = &self.guest;
        for _ in 0..20 {
            let ok = Command::new("sh")
                .args([
                    "-c",
                    &format!(
                        "ip netns exec {g} ping -c1 -W1 {DEST4} && ip netns exec {g} ping -6 -c1 -W1 2001:db8:ffff::53"
                    ),
                ])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        panic!("the guest cannot reach the internet over both families");
    }

    /// The guest takes an address of the uplink's prefix (routed to it by a
    /// host route on vmbr0) and talks from it, so the host learns it.
    fn guest_in_uplink_prefix(&self) {
        let g = &self.guest;
        sh(&format!(
            "ip -n {g} addr add 2001:db8:2::100/128 dev eth0 nodad"
        ));
        self.hv("ip -6 route add 2001:db8:2::100/128 dev vmbr0");
        sh(&format!(
            "ip netns exec {g} ping -6 -c1 -W1 -I 2001:db8:2::100 2001:db8:1::1"
        ));
    }

    fn hv(&self, cmd: &str) -> String {
        sh(&format!("ip netns exec {} sh -c '{cmd}'", self.hv))
    }

    fn doctor(&self, extra: &[&str]) -> Output {
        self.doctor_env(extra, None)
    }

    fn doctor_env(&self, extra: &[&str], save: Option<&std::path::Path>) -> Output {
        let empty = std::env::temp_dir().join(format!("pathtrace-v6-empty-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.hv])
            .arg(pathtrace_bin())
            .args([
                "doctor",
                "--vm-ip",
                VM4,
                "--to",
                DEST4,
                "--json",
                "--config-root",
            ])
            .arg(&empty)
            .args(extra);
        if let Some(path) = save {
            cmd.env("PATHTRACE_SAVE_DOCTOR_FIXTURE", path);
        }
        cmd.output().expect("doctor runs")
    }
}

impl Drop for V6Lab {
    fn drop(&mut self) {
        for ns in [&self.guest, &self.hv, &self.inet] {
            remove_netns(ns);
        }
    }
}

fn checks(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "check")
        .collect()
}

fn v6_checks(out: &Output) -> Vec<Value> {
    const V6: &[&str] = &[
        "mtu6",
        "ip6_forward",
        "accept_ra",
        "route6",
        "gateway6",
        "proxy_ndp",
        "firewall6",
        "ra_service",
    ];
    checks(out)
        .into_iter()
        .filter(|c| V6.contains(&c["check"].as_str().unwrap_or_default()))
        .collect()
}

/// The one check named `name` that did not pass.
fn failing<'a>(cs: &'a [Value], name: &str) -> &'a Value {
    cs.iter()
        .find(|c| c["check"] == name && c["status"] != "pass")
        .unwrap_or_else(|| panic!("no failing {name} in {cs:#?}"))
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

#[test]
fn healthy_dual_stack_passes_every_ipv6_check_then_each_fault_is_found() {
    let lab = V6Lab::up();
    // Healthy, probing actively: with the router's entry flushed, the router
    // answers the doctor's own neighbour solicitation.
    lab.hv("ip -6 neigh flush dev eth0");
    let out = lab.doctor(&[]);
    let cs = v6_checks(&out);
    let names: Vec<&str> = cs.iter().map(|c| text(&c["check"])).collect();
    for want in [
        "mtu6",
        "ip6_forward",
        "accept_ra",
        "route6",
        "gateway6",
        "firewall6",
    ] {
        assert!(names.contains(&want), "{want} missing: {names:?}");
    }
    let bad: Vec<&Value> = cs.iter().filter(|c| c["status"] != "pass").collect();
    assert!(bad.is_empty(), "healthy: {bad:#?}");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gw = cs.iter().find(|c| c["check"] == "gateway6").unwrap();
    assert!(
        text(&gw["evidence"]).contains("answered a neighbour solicitation"),
        "{gw}"
    );

    // Forwarding off for the whole host.
    lab.hv("sysctl -qw net.ipv6.conf.all.forwarding=0");
    let out = lab.doctor(&["--passive"]);
    let c = failing(&v6_checks(&out), "ip6_forward").clone();
    assert_eq!(c["status"], "fail", "{c}");
    assert!(
        text(&c["fix"]).starts_with("sysctl -w net.ipv6.conf.all.forwarding=1"),
        "{c}"
    );
    assert_eq!(out.status.code(), Some(1));
    lab.hv("sysctl -qw net.ipv6.conf.all.forwarding=1");

    // Forwarding off on the VM bridge alone: still forwarded, but the host
    // stops being the guests' router there.
    lab.hv("sysctl -qw net.ipv6.conf.vmbr0.forwarding=0");
    let c = failing(&v6_checks(&lab.doctor(&["--passive"])), "ip6_forward").clone();
    assert_eq!(c["subject"], "net.ipv6.conf.vmbr0.forwarding", "{c}");
    assert_eq!(
        c["fix"], "sysctl -w net.ipv6.conf.vmbr0.forwarding=1",
        "{c}"
    );
    lab.hv("sysctl -qw net.ipv6.conf.vmbr0.forwarding=1");

    // An nft inet rule dropping neighbour discovery.
    lab.hv("nft add table inet filter && nft add chain inet filter input \"{ type filter hook input priority 0; }\" && nft add rule inet filter input icmpv6 type \"{ nd-neighbor-solicit, nd-neighbor-advert }\" drop");
    let c = failing(&v6_checks(&lab.doctor(&["--passive"])), "firewall6").clone();
    assert_eq!(c["status"], "fail", "{c}");
    assert!(
        text(&c["evidence"]).contains("neighbour solicitation"),
        "{c}"
    );
    assert!(
        text(&c["fix"]).starts_with("nft delete rule inet filter input handle"),
        "{c}"
    );
    lab.hv("nft delete table inet filter");

    // No IPv6 default route.
    lab.hv("ip -6 route del default");
    let c = failing(&v6_checks(&lab.doctor(&["--passive"])), "route6").clone();
    assert_eq!(c["status"], "fail", "{c}");
    assert!(text(&c["evidence"]).contains("no IPv6 route"), "{c}");
    assert!(
        text(&c["fix"]).contains("ip -6 route add default via"),
        "{c}"
    );

    // A default route from a router advertisement, through a router that is not
    // there, while forwarding makes the uplink ignore advertisements.
    lab.hv("ip -6 route add default via fe80::1 dev eth0 proto ra");
    let cs = v6_checks(&lab.doctor(&[]));
    let c = failing(&cs, "accept_ra");
    assert_eq!(
        c["fix"].as_str().unwrap().split(" (").next(),
        Some("sysctl -w net.ipv6.conf.eth0.accept_ra=2"),
        "{c}"
    );
    let c = failing(&cs, "gateway6");
    assert!(
        text(&c["evidence"]).contains("did not answer a neighbour solicitation"),
        "{c}"
    );
    lab.hv("ip -6 route del default && ip -6 route add default via 2001:db8:2::1");
}

/// A guest address in the uplink's own prefix (the provider routes nothing to
/// the host: it asks for the guest on the uplink) needs proxy NDP.
#[test]
fn a_guest_in_the_uplinks_prefix_needs_proxy_ndp() {
    let lab = V6Lab::up();
    lab.guest_in_uplink_prefix();
    let c = failing(&v6_checks(&lab.doctor(&["--passive"])), "proxy_ndp").clone();
    assert_eq!(
        c["fix"],
        "sysctl -w net.ipv6.conf.eth0.proxy_ndp=1 && ip -6 neigh add proxy 2001:db8:2::100 dev eth0",
        "{c}"
    );
    lab.hv("sysctl -qw net.ipv6.conf.eth0.proxy_ndp=1 && ip -6 neigh add proxy 2001:db8:2::100 dev eth0");
    let cs = v6_checks(&lab.doctor(&["--passive"]));
    let c = cs.iter().find(|c| c["check"] == "proxy_ndp").unwrap();
    assert_eq!(c["status"], "pass", "{c}");
    // The provider's router now reaches the guest through the host.
    sh(&format!(
        "ip netns exec {} ping -6 -c1 -W2 2001:db8:2::100",
        lab.inet
    ));
}

/// Writes the IPv6 checks' unit-test fixtures (tracer/src/doctor/testdata/v6-*):
/// passive doctor runs over this lab, healthy and with each fault, each saving
/// the host model it read and the checks it answered. Run it after changing
/// what the host model holds:
/// `cargo test --release -p pathtrace-tests --test doctor_v6 -- --ignored write_doctor_v6_fixtures`
#[test]
#[ignore = "writes fixtures into the source tree"]
fn write_doctor_v6_fixtures() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tracer/src/doctor/testdata");
    let save = |lab: &V6Lab, name: &str| {
        let path = dir.join(format!("v6-{name}.json"));
        let out = lab.doctor_env(&["--passive"], Some(&path));
        assert!(
            path.exists(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bad: Vec<String> = v6_checks(&out)
            .iter()
            .filter(|c| c["status"] != "pass")
            .map(|c| format!("{} {}", c["status"], c["check"]))
            .collect();
        eprintln!("v6-{name}: {bad:?}");
    };
    let lab = V6Lab::up();
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
            "nft add table inet filter && nft add chain inet filter input \"{ type filter hook input priority 0; }\" && nft add rule inet filter input icmpv6 type \"{ nd-neighbor-solicit, nd-neighbor-advert }\" drop",
            "nft delete table inet filter",
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
    ];
    for (name, break_it, repair) in faults {
        lab.hv(break_it);
        save(&lab, name);
        lab.hv(repair);
    }
    // A guest address in the uplink's prefix: proxy NDP missing, then set up.
    lab.guest_in_uplink_prefix();
    save(&lab, "proxy-ndp-missing");
    lab.hv("sysctl -qw net.ipv6.conf.eth0.proxy_ndp=1 && ip -6 neigh add proxy 2001:db8:2::100 dev eth0");
    save(&lab, "proxy-ndp");
    drop(lab);

    // A SLAAC-shaped guest address: no router advertisements, then dnsmasq's.
    let lab = V6Lab::up();
    let slaac = "2001:db8:1::5054:ff:fe12:3456";
    sh(&format!(
        "ip -n {} addr add {slaac}/64 dev eth0 nodad",
        lab.guest
    ));
    sh(&format!(
        "ip netns exec {} ping -6 -c1 -W1 -I {slaac} 2001:db8:1::1",
        lab.guest
    ));
    save(&lab, "slaac-no-ra");
    lab.hv("dnsmasq --conf-file=/dev/null --port=0 --bind-interfaces --interface=vmbr0 --enable-ra --dhcp-range=::,constructor:vmbr0,ra-only --pid-file=/dev/null");
    save(&lab, "slaac-dnsmasq-ra");
    // An interface too small for IPv6 (the kernel drops IPv6 from the bridge,
    // and what the host knew of the guest's addresses with it).
    lab.hv("ip link set vport100 mtu 1200");
    save(&lab, "mtu-too-small");
}
