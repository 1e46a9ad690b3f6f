//! Bridged mode: the guest's bridge also holds the host's way to the LAN (a
//! physical NIC, a bond, a VLAN device), the guest's gateway is a router on that
//! LAN, and the host routes none of the guest's traffic. The guest's frames leave
//! the host by a bridge port, not by a route; the host never talks to the guest,
//! so it has no neighbour entry for it.
//!
//! Everything is read from the host model: the host's own route to the
//! destination (through a gateway on the guest's bridge: the LAN has its own
//! router), the host's neighbour entry for that router (its MAC) and the
//! bridge's FDB (the port that MAC was learned on).

use std::net::IpAddr;

use super::{iface_by_name, locate::subnet_bridge, route_to, Evidence, Iface, Location};
use crate::host::{
    bond::{slave_problem, slaves_words},
    Host, Link, RouteKind,
};

/// The guest's way out in bridged mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lan {
    /// The router beyond the bridge's LAN port (the host's next hop to the
    /// destination, on the guest's bridge).
    pub gateway: IpAddr,
    /// Its MAC, from the host's neighbour table, when the host knows it.
    pub gateway_mac: Option<String>,
    /// The bridge port(s) frames to the router leave by: the port the FDB
    /// learned the router's MAC on, else every port of the bridge that is not
    /// the VM's (watched; the one the request leaves by shows itself).
    pub ports: Vec<Iface>,
    /// The FDB named the port (else the ports are all candidates).
    pub by_fdb: bool,
}

impl Lan {
    /// "eno1", or "eno1, eno2" when the FDB did not say which.
    pub fn port_names(&self) -> String {
        let names: Vec<&str> = self.ports.iter().map(|p| p.name.as_str()).collect();
        names.join(", ")
    }

    /// The ports toward the router in `host` (read again for a verdict): the
    /// FDB's port for the router's MAC there, else the ones watched.
    pub fn router_ports(&self, host: &Host, bridge: &str) -> Vec<String> {
        let learned = self
            .gateway_mac
            .as_deref()
            .and_then(|m| host.fdb_port(bridge, m, None));
        match learned {
            Some(p) => vec![p],
            None => self.ports.iter().map(|p| p.name.clone()).collect(),
        }
    }
}

/// Bridged mode for a path whose route to the destination leaves by `bridge`
/// itself through `gateway`: the LAN port(s) of that bridge, excluding the VM's
/// own `vm_ports`.
pub fn lan_of(host: &Host, bridge: &str, gateway: IpAddr, vm_ports: &[String]) -> Lan {
    let gateway_mac = neighbour_mac(host, gateway, bridge);
    let learned = gateway_mac
        .as_deref()
        .and_then(|mac| host.fdb_port(bridge, mac, None))
        .filter(|p| !vm_ports.contains(p));
    let (names, by_fdb) = match learned {
        Some(p) => (vec![p], true),
        None => (
            host.leaf_ports(bridge, None, 0)
                .into_iter()
                .filter(|p| !vm_ports.contains(p))
                .collect(),
            false,
        ),
    };
    Lan {
        gateway,
        gateway_mac,
        ports: names
            .iter()
            .filter_map(|n| iface_by_name(host, n))
            .collect(),
        by_fdb,
    }
}

/// The VM's port when nothing on the host knows the VM, in bridged mode: the
/// bridge owning the VM's subnet carries the host's own route to `dst` through
/// a router on it, so the guest uses that router and the host never learns
/// the guest's address. Every port of that bridge but the one toward the
/// router is a candidate; the one its first request arrives on is the VM's.
/// None when the VM's subnet is not bridged to a LAN router.
pub fn first_packet_location(host: &Host, vm_ip: IpAddr, dst: IpAddr) -> Option<Location> {
    let (bridge, _) = subnet_bridge(host, vm_ip)?;
    let gateway = lan_gateway(host, dst, vm_ip, &bridge)?;
    let lan = lan_of(host, &bridge, gateway, &[]);
    // Without the FDB nothing tells the router's port from a guest's: every
    // port is watched as the VM's, and the request shows which is which.
    let lan_ports: Vec<&str> = match lan.by_fdb {
        true => lan.ports.iter().map(|p| p.name.as_str()).collect(),
        false => Vec::new(),
    };
    let mut ports: Vec<String> = host
        .leaf_ports(&bridge, None, 0)
        .into_iter()
        .filter(|p| !lan_ports.contains(&p.as_str()))
        .collect();
    if ports.is_empty() {
        return None;
    }
    // Ports with carrier first: the guest's request can only arrive on one.
    ports.sort_by_key(|p| !host.link(p).is_some_and(|l| l.lower_up));
    let toward = match lan_ports.as_slice() {
        [] => String::new(),
        names => format!(" but {} (toward the router)", names.join(", ")),
    };
    let why = format!(
        "the host has no neighbour entry for {vm_ip}: {bridge} bridges it to the LAN's router {gateway}, so this host never talks to it; watching every port of {bridge}{toward} ({}): the one its first request arrives on is the VM's",
        ports.join(", ")
    );
    Some(Location {
        ports,
        mac: None,
        evidence: Evidence::FirstPacket(why),
    })
}

/// The router on `bridge` the host's own route to `dst` goes through, if the
/// route leaves by `bridge` (the host's way to the LAN is the guests' bridge).
pub fn lan_gateway(host: &Host, dst: IpAddr, vm_ip: IpAddr, bridge: &str) -> Option<IpAddr> {
    let route = route_to(host, dst, vm_ip, bridge)?;
    if route.kind == RouteKind::Local || host.route_dev(&route) != Some(bridge) {
        return None;
    }
    route.next_hop()
}

/// The MAC the host's neighbour table holds for `ip` on `dev`, unless the entry
/// failed.
pub fn neighbour_mac(host: &Host, ip: IpAddr, dev: &str) -> Option<String> {
    let index = host.index_of(dev)?;
    host.neighbours_of(ip)
        .filter(|n| n.index == index && n.resolved())
        .find_map(|n| n.mac.clone())
}

/// Why a bridge port cannot pass frames now; None when it can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortProblem {
    AdminDown,
    NoCarrier,
    /// A VLAN device (`eno1.20`) administratively down: VLAN `vid` on `lower`.
    VlanDown {
        vid: u16,
        lower: String,
    },
    /// A VLAN device whose lower device (the NIC or bond it tags onto) is down.
    LowerDown {
        lower: String,
        why: String,
    },
    /// A bond without carrier: none of its slaves works. `slaves` in words
    /// ("eno1 no carrier, eno2 administratively down"), `fix` per slave.
    BondDown {
        slaves: String,
        fix: String,
    },
    /// Not forwarding: disabled, blocking, listening, learning.
    State(String),
}

impl PortProblem {
    pub fn words(&self) -> String {
        match self {
            PortProblem::AdminDown => "down (administratively)".into(),
            PortProblem::NoCarrier => "down (no carrier)".into(),
            PortProblem::VlanDown { vid, lower } => {
                format!("down (administratively; the VLAN {vid} device on {lower})")
            }
            PortProblem::LowerDown { lower, why } => {
                format!("down: the device it tags onto, {lower}, is {why}")
            }
            PortProblem::BondDown { slaves, .. } => {
                format!("down (no carrier): none of the bond's slaves works ({slaves})")
            }
            PortProblem::State(s) => format!("not forwarding (STP state {s})"),
        }
    }

    pub fn rule_words(&self) -> String {
        match self {
            PortProblem::AdminDown | PortProblem::VlanDown { .. } => "admin down".into(),
            PortProblem::NoCarrier => "no carrier".into(),
            PortProblem::LowerDown { lower, .. } => format!("lower device {lower} down"),
            PortProblem::BondDown { .. } => "no carrier, every slave down".into(),
            PortProblem::State(s) => format!("state {s}"),
        }
    }

    /// The fix, in the terms of how `bridge` runs STP.
    pub fn fix(&self, port: &str, bridge: Option<&Link>) -> String {
        let name = bridge.map_or("the bridge", |b| b.name.as_str());
        let stp_on = bridge.is_some_and(|b| b.stp);
        // Kept in hundredths of a second, as iproute2 prints it.
        let delay_s = bridge.and_then(|b| b.forward_delay).map(|d| d / 100);
        match self {
            PortProblem::AdminDown => format!("bring it up: ip link set {port} up"),
            PortProblem::NoCarrier => format!(
                "check {port}'s cable, the switch port and the link partner (ip link show {port}; ethtool {port})"
            ),
            PortProblem::VlanDown { .. } => format!(
                "bring it up: ip link set {port} up (Proxmox: its `auto {port}` / `iface {port}` stanza in /etc/network/interfaces, then ifreload -a)"
            ),
            PortProblem::LowerDown { lower, why } if why.contains("administratively") => {
                format!("bring up {lower}: ip link set {lower} up (then {port} follows)")
            }
            PortProblem::LowerDown { lower, .. } => format!(
                "check {lower}'s cable, the switch port and the link partner (ethtool {lower}); {port} follows it"
            ),
            PortProblem::BondDown { fix, .. } => fix.clone(),
            PortProblem::State(s) if stp_on && (s == "listening" || s == "learning") => format!(
                "STP holds a port that just came up in listening then learning for its forward delay ({} s) each: wait, or where {name} closes no loop turn STP off (ip link set {name} type bridge stp_state 0; Proxmox: bridge-stp off) or lower the delay (ip link set {name} type bridge forward_delay 400)",
                delay_s.map_or("?".into(), |d| d.to_string())
            ),
            PortProblem::State(_) if stp_on => format!(
                "STP blocks {port}: {name} reaches the same LAN another way (a loop through another port or NIC); find it: bridge -d link show; the switch's STP view"
            ),
            PortProblem::State(_) => format!(
                "STP is off on {name}, so the state was set by hand: bridge link set dev {port} state 3"
            ),
        }
    }
}

/// What keeps `port` from passing frames in `host`.
pub fn port_problem(host: &Host, port: &str) -> Option<PortProblem> {
    let link = host.link(port)?;
    let vlan_lower = link
        .peer
        .filter(|_| link.is_kind("vlan"))
        .and_then(|i| host.link_at(i));
    // A VLAN device follows its lower device: the kernel sets it down when
    // the lower goes down (and up again after), so that one is the cause.
    if let Some(lower) = vlan_lower.filter(|l| !l.up || !l.lower_up) {
        return Some(lower_down(host, lower));
    }
    if !link.up {
        return Some(match (link.vlan_id, vlan_lower) {
            (Some(vid), Some(lower)) => PortProblem::VlanDown {
                vid,
                lower: lower.name.clone(),
            },
            _ => PortProblem::AdminDown,
        });
    }
    if !link.lower_up {
        return Some(down_below(host, link));
    }
    link.port_state
        .map(|s| s.word())
        .filter(|s| s != "forwarding")
        .map(PortProblem::State)
}

/// A VLAN device's lower device that is down: administratively, a bond
/// without a working slave, or without carrier.
fn lower_down(host: &Host, lower: &Link) -> PortProblem {
    let why = match lower.up {
        false => "down (administratively)".to_string(),
        true => match host.bond_under(&lower.name) {
            Some(_) => format!(
                "a bond without a working slave ({})",
                slaves_words(host, &lower.name)
            ),
            None => "down (no carrier)".to_string(),
        },
    };
    PortProblem::LowerDown {
        lower: lower.name.clone(),
        why,
    }
}

/// A port that is up without carrier: a bond none of whose slaves works, or a
/// NIC without link.
fn down_below(host: &Host, link: &Link) -> PortProblem {
    if link.is_bond() {
        let fixes: Vec<String> = host
            .slaves_of(&link.name)
            .iter()
            .filter_map(|s| slave_problem(s).map(|(_, f)| f))
            .collect();
        let fix = match fixes.is_empty() {
            true => format!(
                "give {} a slave: ip link set <nic> master {} (Proxmox: bond-slaves in /etc/network/interfaces)",
                link.name, link.name
            ),
            false => fixes.join("; "),
        };
        return PortProblem::BondDown {
            slaves: slaves_words(host, &link.name),
            fix,
        };
    }
    PortProblem::NoCarrier
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    /// vmbr0 (STP on, forward delay 30 s) with eno1 (no carrier), eno2 (down),
    /// eno3 (blocking) and a TAP; vmbr1 without STP.
    fn host() -> Host {
        let links: Value = json!([
            {"ifindex":2,"ifname":"vmbr0","flags":["UP","LOWER_UP"],
             "linkinfo":{"info_kind":"bridge","info_data":{"stp_state":1,"forward_delay":3000}}},
            {"ifindex":3,"ifname":"vmbr1","flags":["UP","LOWER_UP"],
             "linkinfo":{"info_kind":"bridge","info_data":{"stp_state":0,"forward_delay":0}}},
            {"ifindex":4,"ifname":"eno1","master":"vmbr0","flags":["UP"],
             "linkinfo":{"info_slave_data":{"state":"disabled"}}},
            {"ifindex":5,"ifname":"eno2","master":"vmbr0","flags":[],
             "linkinfo":{"info_slave_data":{"state":"disabled"}}},
            {"ifindex":6,"ifname":"eno3","master":"vmbr0","flags":["UP","LOWER_UP"],
             "linkinfo":{"info_slave_data":{"state":"blocking"}}},
            {"ifindex":7,"ifname":"tap100i0","master":"vmbr0","flags":["UP","LOWER_UP"],
             "linkinfo":{"info_kind":"tun","info_slave_data":{"state":"forwarding"}}}
        ]);
        Host::from_iproute2(&links, &json!([]), &json!([]), &json!([]))
    }

    #[test]
    fn port_problems_from_the_host() {
        let h = host();
        assert_eq!(port_problem(&h, "eno1"), Some(PortProblem::NoCarrier));
        assert_eq!(port_problem(&h, "eno2"), Some(PortProblem::AdminDown));
        assert_eq!(
            port_problem(&h, "eno3"),
            Some(PortProblem::State("blocking".into()))
        );
        assert_eq!(port_problem(&h, "tap100i0"), None);
        assert_eq!(PortProblem::NoCarrier.words(), "down (no carrier)");
        assert!(PortProblem::AdminDown
            .fix("eno2", h.link("vmbr0"))
            .contains("ip link set eno2 up"));
    }

    /// vmbr0 on eno1.20 (VLAN 20 on eno1), flags given.
    fn vlan_host(eno1: &[&str], vlan: &[&str]) -> Host {
        let links: Value = json!([
            {"ifindex":2,"ifname":"vmbr0","flags":["UP","LOWER_UP"],"linkinfo":{"info_kind":"bridge"}},
            {"ifindex":3,"ifname":"eno1","flags":eno1},
            {"ifindex":4,"ifname":"eno1.20","link":"eno1","master":"vmbr0","flags":vlan,
             "linkinfo":{"info_kind":"vlan","info_data":{"id":20}}}
        ]);
        Host::from_links(&links)
    }

    #[test]
    fn vlan_devices_and_their_lower_device() {
        let up = ["UP", "LOWER_UP"];
        let p = port_problem(&vlan_host(&up, &[]), "eno1.20").unwrap();
        assert_eq!(
            p.words(),
            "down (administratively; the VLAN 20 device on eno1)"
        );
        assert!(p.fix("eno1.20", None).contains("ifreload -a"));
        // The kernel sets a VLAN device down with its lower device: the
        // lower one is the cause.
        let p = port_problem(&vlan_host(&[], &[]), "eno1.20").unwrap();
        assert_eq!(
            p.words(),
            "down: the device it tags onto, eno1, is down (administratively)"
        );
        assert!(p.fix("eno1.20", None).contains("ip link set eno1 up"));
        let p = port_problem(&vlan_host(&["UP"], &["UP"]), "eno1.20").unwrap();
        assert_eq!(p.rule_words(), "lower device eno1 down");
        assert!(p.fix("eno1.20", None).contains("ethtool eno1"));
        assert_eq!(port_problem(&vlan_host(&up, &up), "eno1.20"), None);
    }

    #[test]
    fn stp_fixes_follow_the_bridge() {
        let h = host();
        let listening = PortProblem::State("listening".into());
        let fix = listening.fix("eno1", h.link("vmbr0"));
        assert!(
            fix.contains("forward delay (30 s)") && fix.contains("stp_state 0"),
            "{fix}"
        );
        let fix = listening.fix("eno1", h.link("vmbr1"));
        assert!(fix.contains("bridge link set dev eno1 state 3"), "{fix}");
        let blocking = PortProblem::State("blocking".into());
        assert!(blocking.fix("eno3", h.link("vmbr0")).contains("loop"));
    }

    #[test]
    fn lan_ports_are_named_for_people() {
        let eno1 = Iface {
            index: 2,
            name: "eno1".into(),
        };
        let lan = Lan {
            gateway: IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)),
            gateway_mac: None,
            ports: vec![eno1.clone()],
            by_fdb: true,
        };
        assert_eq!(lan.port_names(), "eno1");
        let two = Lan {
            ports: vec![
                eno1,
                Iface {
                    index: 3,
                    name: "eno2".into(),
                },
            ],
            by_fdb: false,
            ..lan
        };
        assert_eq!(two.port_names(), "eno1, eno2");
        assert_eq!(two.router_ports(&host(), "vmbr0"), ["eno1", "eno2"]);
    }
}
