//! Bridged mode's checks (the guest's gateway is a router on the LAN beyond a
//! port of its bridge; see topology::bridged): the bridge's port toward that
//! router — member, carrier, STP state — and the router answering ARP through
//! the bridge. Nothing here runs for routed layouts.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use super::{arp, Check, Status};
use crate::{
    host::Host,
    topology::{
        bridged::{neighbour_mac, port_problem, Lan, PortProblem},
        network, Evidence, Iface, Topology,
    },
};

/// `bridge_uplink` and `lan_gateway` for a bridged-mode path over `host`;
/// nothing otherwise. `passive`: send no ARP (the router's neighbour entry is
/// all there is).
pub fn checks(t: &Topology, host: &Host, passive: bool) -> Vec<Check> {
    let (Some(lan), Some(bridge)) = (&t.lan, &t.bridge) else {
        return Vec::new();
    };
    vec![
        bridge_uplink(t, lan, &bridge.name, host),
        lan_gateway(lan, bridge, host, passive),
    ]
}

/// The bridge's port toward the LAN's router: the one the FDB learned the
/// router's MAC on, else every port that is no VM's TAP. It must be a member,
/// up with carrier and forwarding.
fn bridge_uplink(t: &Topology, lan: &Lan, bridge: &str, host: &Host) -> Check {
    let gw = lan.gateway;
    let learned = lan
        .gateway_mac
        .as_deref()
        .and_then(|m| host.fdb_port(bridge, m, None));
    // Not the VM's port when the host's tables or the operator named it (in
    // bridged mode's first-packet watch every port is only a candidate).
    let first_packet = matches!(t.evidence, Evidence::FirstPacket(_));
    let vm_ports: Vec<&str> = t.ports.iter().map(|p| p.name.as_str()).collect();
    let ports: Vec<String> = match &learned {
        Some(p) => vec![p.clone()],
        None => host
            .ports_of(bridge)
            .into_iter()
            .filter(|p| !host.link(p).is_some_and(|l| l.is_kind("tun")))
            .filter(|p| first_packet || !vm_ports.contains(&p.as_str()))
            .collect(),
    };
    let subject = match ports.is_empty() {
        true => format!("{bridge} → ?"),
        false => format!("{bridge} → {}", ports.join(", ")),
    };
    if ports.is_empty() {
        return Check::new("bridge_uplink", Status::Fail, subject)
            .evidence(format!(
                "{bridge} has no port but the VMs', so its guests reach nothing beyond this host (their gateway {gw} is on the LAN)"
            ))
            .fix(format!(
                "add the physical NIC (or bond) to the bridge: ip link set <nic> master {bridge}"
            ));
    }
    let broken: Vec<(String, PortProblem)> = ports
        .iter()
        .filter_map(|p| Some((p.clone(), port_problem(host, p)?)))
        .collect();
    let how = match &learned {
        Some(p) => format!(
            "{p} is {bridge}'s port toward the LAN's router {gw} (the FDB learned its MAC {} there)",
            lan.gateway_mac.as_deref().unwrap_or("?")
        ),
        None => format!(
            "{bridge} has not learned the router {gw}'s MAC on any port now; its ports besides the VMs': {}",
            ports.join(", ")
        ),
    };
    // With the FDB's port known, that one port decides; without it, the way
    // out is broken only when no candidate passes frames.
    let all_broken = broken.len() == ports.len();
    match broken.first() {
        Some((p, why)) if learned.is_some() || all_broken => {
            Check::new("bridge_uplink", Status::Fail, subject)
                .evidence(format!(
                    "{how}; {p} is {}: the guests' frames cannot leave by it",
                    why.words()
                ))
                .fix(why.fix(p, host.link(bridge)))
        }
        _ if learned.is_none() => Check::new("bridge_uplink", Status::Warn, subject).evidence(
            format!("{how}; none of them says it leads to the router (the router has not sent a frame lately, or the host does not know its MAC)"),
        ),
        _ => Check::new("bridge_uplink", Status::Pass, subject)
            .evidence(format!("{how}; up, with carrier, forwarding")),
    }
}

/// The router answering ARP through the bridge: the host's neighbour entry,
/// and unless passive an ARP request sent on the bridge (it reaches the LAN by
/// the bridge's ports, as the guests' do); the answer's MAC must be learned on
/// a port that is no guest's TAP.
fn lan_gateway(lan: &Lan, bridge: &Iface, host: &Host, passive: bool) -> Check {
    let (gw, br) = (lan.gateway, bridge.name.as_str());
    let subject = format!("{gw} via {br}");
    let state = host
        .neighbours_of(gw)
        .find(|n| Some(n.index) == host.index_of(br))
        .map_or("none".to_string(), |n| n.state.clone());
    let fix = format!(
        "check the router {gw} and the LAN behind {br}'s physical port (its switch port, VLAN, cabling): ip neigh show dev {br}; bridge fdb show br {br}"
    );
    // An ARP probe: IPv4 routers only.
    if let (false, IpAddr::V4(gw4)) = (passive, gw) {
        if let Some(answer) = probe(gw4, bridge, host) {
            return match answer {
                Ok(macs) if macs.is_empty() => Check::new("lan_gateway", Status::Fail, subject)
                    .evidence(format!(
                        "{gw} did not answer ARP through {br} within 1 s (neighbour state: {state}): the guests' gateway is unreachable, their traffic dies at the LAN"
                    ))
                    .fix(fix),
                Ok(macs) => answered(gw, br, &macs, &fix),
                Err(e) => Check::new("lan_gateway", Status::Warn, subject)
                    .evidence(format!("could not probe: {e:#}")),
            };
        }
    }
    match (neighbour_mac(host, gw, br), state.as_str()) {
        (Some(mac), _) => {
            let port = host
                .fdb_port(br, &mac, None)
                .map(|p| format!(", learned on {p}"))
                .unwrap_or_default();
            Check::new("lan_gateway", Status::Pass, subject).evidence(format!(
                "the host's neighbour entry for {gw} on {br}: {mac} {state}{port}"
            ))
        }
        (None, "FAILED" | "INCOMPLETE") => Check::new("lan_gateway", Status::Fail, subject)
            .evidence(format!(
                "{gw} did not answer the host's own ARP on {br} (neighbour state {state})"
            ))
            .fix(fix),
        _ => Check::new("lan_gateway", Status::Warn, subject).evidence(format!(
            "not resolved recently (neighbour state: {state}; --passive sends no ARP)"
        )),
    }
}

/// "who has `gw`" sent on the bridge from its own MAC and address; None when
/// the bridge has no MAC or address on the router's subnet to ask from.
fn probe(gw: Ipv4Addr, bridge: &Iface, host: &Host) -> Option<anyhow::Result<Vec<String>>> {
    let own_mac = host
        .link(&bridge.name)
        .and_then(|l| l.mac.as_deref())
        .and_then(arp::parse_mac)?;
    let (src, _) = host
        .inet_addrs(&bridge.name)
        .into_iter()
        .find(|(a, len)| network(*a, *len) == network(gw, *len))?;
    Some(arp::who_has(
        bridge.index,
        own_mac,
        src,
        gw,
        Duration::from_millis(1000),
    ))
}

/// The router answered: from which MACs, learned on which ports (read now:
/// the answer itself taught the bridge). An answer learned on a guest's TAP
/// means a guest claims the router's address.
fn answered(gw: IpAddr, br: &str, macs: &[String], fix: &str) -> Check {
    let subject = format!("{gw} via {br}");
    let now = Host::read().ok();
    let mut seen = Vec::new();
    let mut guest_ports = Vec::new();
    for m in macs {
        let port = now.as_ref().and_then(|h| h.fdb_port(br, m, None));
        let tap = port.as_deref().is_some_and(|p| {
            now.as_ref()
                .and_then(|h| h.link(p))
                .is_some_and(|l| l.is_kind("tun"))
        });
        if tap {
            guest_ports.push(port.clone().unwrap_or_default());
        }
        seen.push(match port {
            Some(p) => format!("{m} on {p}"),
            None => m.clone(),
        });
    }
    let evidence = format!("{gw} answered ARP through {br} from {}", seen.join(", "));
    if guest_ports.is_empty() {
        return Check::new("lan_gateway", Status::Pass, subject).evidence(evidence);
    }
    Check::new("lan_gateway", Status::Fail, subject)
        .evidence(format!(
            "{evidence}: a guest behind {} answers for the router's address, so guests may send their traffic to it",
            guest_ports.join(", ")
        ))
        .fix(format!(
            "find the guest on {} and remove {gw} from it; {fix}",
            guest_ports.join(", ")
        ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::topology::Location;

    /// A bridged host: vmbr0 192.0.2.2/24 with tap100i0 and eno1 (the router
    /// 192.0.2.1's MAC learned there), default route via the router.
    fn host(eno1_flags: &[&str], eno1_state: &str) -> Host {
        let links = json!([
            {"ifindex":2,"ifname":"vmbr0","flags":["UP","LOWER_UP"],"address":"02:00:00:00:01:02",
             "linkinfo":{"info_kind":"bridge","info_data":{"stp_state":0}}},
            {"ifindex":3,"ifname":"eno1","master":"vmbr0","flags":eno1_flags,
             "linkinfo":{"info_kind":"veth","info_slave_data":{"state":eno1_state}}},
            {"ifindex":4,"ifname":"tap100i0","master":"vmbr0","flags":["UP","LOWER_UP"],
             "linkinfo":{"info_kind":"tun","info_slave_data":{"state":"forwarding"}}}
        ]);
        let addrs = json!([{"ifname":"vmbr0","addr_info":[{"local":"192.0.2.2","prefixlen":24}]}]);
        let neigh = json!([{"dst":"192.0.2.1","dev":"vmbr0","lladdr":"02:00:00:00:02:01","state":["REACHABLE"]}]);
        let fdb = json!([{"mac":"02:00:00:00:02:01","ifname":"eno1","master":"vmbr0","state":""}]);
        Host::from_iproute2(&links, &addrs, &neigh, &fdb)
    }

    fn topo(h: &Host) -> Topology {
        let location = Location {
            ports: vec!["tap100i0".into()],
            mac: None,
            evidence: Evidence::FirstPacket("first request".into()),
        };
        let mut t = Topology::for_ports(
            h,
            Ipv4Addr::new(192, 0, 2, 100).into(),
            Ipv4Addr::new(203, 0, 113, 8).into(),
            location,
        )
        .unwrap();
        t.lan = Some(crate::topology::bridged::lan_of(
            h,
            "vmbr0",
            Ipv4Addr::new(192, 0, 2, 1).into(),
            &["tap100i0".into()],
        ));
        t
    }

    #[test]
    fn healthy_uplink_and_router() {
        let h = host(&["UP", "LOWER_UP"], "forwarding");
        let c = checks(&topo(&h), &h, true);
        assert_eq!(c[0].check, "bridge_uplink");
        assert_eq!(c[0].status, Status::Pass, "{}", c[0].evidence);
        assert!(c[0]
            .evidence
            .contains("eno1 is vmbr0's port toward the LAN's router 192.0.2.1"));
        assert_eq!(c[1].check, "lan_gateway");
        assert_eq!(c[1].status, Status::Pass, "{}", c[1].evidence);
        assert!(
            c[1].evidence.contains("learned on eno1"),
            "{}",
            c[1].evidence
        );
    }

    #[test]
    fn uplink_without_carrier_or_forwarding_fails_with_its_fix() {
        let h = host(&["UP"], "disabled");
        let c = &checks(&topo(&h), &h, true)[0];
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.evidence.contains("eno1 is down (no carrier)"),
            "{}",
            c.evidence
        );
        assert!(c.fix.as_deref().unwrap().contains("cable"));
        let h = host(&["UP", "LOWER_UP"], "disabled");
        let c = &checks(&topo(&h), &h, true)[0];
        assert!(c.evidence.contains("STP state disabled"), "{}", c.evidence);
        assert!(c
            .fix
            .as_deref()
            .unwrap()
            .contains("bridge link set dev eno1 state 3"));
    }
}
