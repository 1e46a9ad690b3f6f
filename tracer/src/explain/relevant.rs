//! Which of the doctor's checks can explain a verdict: by the stage the request
//! died at, and by the trace's family. An IPv6 trace's verdicts carry the IPv6
//! checks (`ip6_forward`, `route6`, `gateway6`, ...), never IPv4's
//! (`ip_forward` is `net.ipv4`'s, ARP is IPv4's neighbour discovery), and the
//! other way round; the checks about the guest's port and bridges bear on both.

use crate::correlate::{Direction, Stage};

/// The port and bridge checks a packet of either family meets first.
const L2: &[&str] = &[
    "vm_port",
    "bridge_member",
    "link_up",
    "stp_state",
    "bridge_uplink",
    "vlan",
    "mtu",
];

/// The other checks of both families (bridged mode's router, bonds).
const NEUTRAL: &[&str] = &["lan_gateway", "bond"];

/// IPv4's own: its forwarding sysctl, routes, ARP, NAT, rp_filter, the
/// address checks.
const IPV4: &[&str] = &[
    "duplicate_ip",
    "br_netfilter",
    "spoof_filter",
    "firewall_bridge_arp",
    "ip_forward",
    "rp_filter",
    "route",
    "gateway",
    "nat",
    "firewall",
    "dns",
];

/// IPv6's own (the doctor's IPv6 checks).
const IPV6: &[&str] = &[
    "mtu6",
    "ip6_forward",
    "accept_ra",
    "route6",
    "gateway6",
    "proxy_ndp",
    "firewall6",
    "ra_service",
];

/// The checks that can explain a packet of the given family dying at `stage`
/// (the family's every check when the stage is unknown).
pub fn checks(stage: Option<Stage>, direction: Option<Direction>, v6: bool) -> Vec<&'static str> {
    let own = if v6 { IPV6 } else { IPV4 };
    let Some(stage) = stage else {
        return [L2, NEUTRAL, own].concat();
    };
    match (stage, direction) {
        // The guest's own MAC could not be resolved: its port and bridges.
        (Stage::Neighbor, Some(Direction::Reply)) => vec!["link_up", "stp_state", "bridge_member"],
        (Stage::Tap | Stage::Bridge, _) if v6 => [L2, &["mtu6"]].concat(),
        (Stage::Tap | Stage::Bridge, _) => {
            [L2, &["duplicate_ip", "br_netfilter", "spoof_filter"]].concat()
        }
        _ if v6 => routed6(stage).to_vec(),
        _ => routed4(stage).to_vec(),
    }
}

/// Past the bridge, IPv4.
fn routed4(stage: Stage) -> &'static [&'static str] {
    match stage {
        // A guest routing through a firewall bridge skips the hops and the
        // rules meant for the VM bridge (firewall_bridge_arp).
        Stage::Prerouting | Stage::Routing => {
            &["ip_forward", "rp_filter", "route", "firewall_bridge_arp"]
        }
        Stage::Forward | Stage::Input => &["firewall", "ip_forward", "dns", "firewall_bridge_arp"],
        Stage::Postrouting => &["nat", "firewall", "firewall_bridge_arp"],
        Stage::Neighbor => &["gateway"],
        Stage::Egress => &["mtu", "link_up"],
        Stage::Remote => &["nat", "gateway", "lan_gateway", "route", "firewall", "mtu"],
        Stage::Tap | Stage::Bridge => L2,
    }
}

/// Past the bridge, IPv6: no NAT in the routed setup and no rp_filter;
/// forwarding is `all`'s (ip6_forward), the host's routes may come from router
/// advertisements (accept_ra), a guest in the uplink's prefix needs proxy NDP.
fn routed6(stage: Stage) -> &'static [&'static str] {
    match stage {
        Stage::Prerouting | Stage::Routing => &["ip6_forward", "accept_ra", "route6", "proxy_ndp"],
        Stage::Forward | Stage::Input => &["firewall6", "ip6_forward"],
        Stage::Postrouting => &["firewall6"],
        Stage::Neighbor => &["gateway6", "proxy_ndp"],
        Stage::Egress => &["mtu", "mtu6", "link_up"],
        Stage::Remote => &[
            "gateway6",
            "lan_gateway",
            "route6",
            "firewall6",
            "mtu6",
            "proxy_ndp",
            "ra_service",
        ],
        Stage::Tap | Stage::Bridge => L2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_family_gets_only_its_own_checks() {
        let stages = Stage::ALL.iter().map(|s| Some(*s)).chain([None]);
        for stage in stages {
            for dir in [Some(Direction::Request), Some(Direction::Reply), None] {
                let four = checks(stage, dir, false);
                let six = checks(stage, dir, true);
                assert!(
                    !four.iter().any(|c| IPV6.contains(c)),
                    "{stage:?}: {four:?}"
                );
                assert!(!six.iter().any(|c| IPV4.contains(c)), "{stage:?}: {six:?}");
            }
        }
    }

    #[test]
    fn ipv6_stages_name_their_checks() {
        let at = |stage| checks(Some(stage), Some(Direction::Request), true);
        assert!(at(Stage::Routing).contains(&"ip6_forward"));
        assert!(at(Stage::Routing).contains(&"route6"));
        assert!(at(Stage::Neighbor).contains(&"gateway6"));
        assert!(at(Stage::Forward).contains(&"firewall6"));
        assert!(at(Stage::Egress).contains(&"mtu6"));
    }
}
