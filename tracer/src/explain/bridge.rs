//! Bridged mode in operator words: the guest's frames leave the host by a port
//! of its bridge toward the LAN's router (see topology::bridged), so what can go
//! wrong is the bridge having no port to send a frame to, the port toward the
//! router not forwarding, or the router beyond it not answering. Everything
//! said is read from the host (over netlink) when the verdict is made: the
//! ports' carrier and STP state, the FDB, the host's neighbour entry for the
//! router.

use super::*;
use crate::{
    host::Host,
    topology::bridged::{neighbour_mac, port_problem, PortProblem},
};

impl Explainer {
    /// The bridge's ports as they are now, for a bridge-stage request drop:
    /// when the bridge had no port to send the frame to (NO_TX_TARGET), or in
    /// bridged mode the port toward the router does not pass frames, say which
    /// port and why. None when every way out passes frames.
    pub(super) fn blame_bridge_egress(&self, t: &Trace, d: &Drop, what: &str) -> Option<Blame> {
        if d.direction != Direction::Request {
            return None;
        }
        let bridge = self.topo.bridge.as_ref()?.name.clone();
        let now = Host::read().ok()?;
        let came_in = t
            .port_ifindex
            .or(Some(d.ifindex))
            .and_then(|i| self.name(i));
        let out_ports: Vec<String> = now
            .ports_of(&bridge)
            .into_iter()
            .filter(|p| Some(p) != came_in.as_ref())
            .collect();
        let toward_router = self.router_ports(&now, &bridge);
        let no_target = self.reasons.get(&d.reason).map(String::as_str) == Some("NO_TX_TARGET");
        if !no_target && self.topo.lan.is_none() {
            return None;
        }
        // Flooded to no port: NO_TX_TARGET (6.14+; before, the same frame is
        // freed NOT_SPECIFIED), or in bridged mode nothing says which port
        // leads to the router (a port losing carrier or STP state takes its FDB
        // entries with it). Then every other port is a suspect; otherwise the
        // bridge had the router's port from its FDB, and that port is.
        let flooded = no_target || toward_router.is_empty();
        let suspects: Vec<&String> = match flooded {
            true => out_ports.iter().collect(),
            false => out_ports
                .iter()
                .filter(|p| toward_router.contains(p))
                .collect(),
        };
        let mut broken: Vec<(String, PortProblem)> = suspects
            .iter()
            .filter_map(|p| Some((p.to_string(), port_problem(&now, p)?)))
            .collect();
        // The port toward the router first: that is the one the operator needs.
        broken.sort_by_key(|(p, _)| !toward_router.contains(p));
        let Some((port, problem)) = broken.first().cloned() else {
            return no_target.then(|| no_target_at_all(&bridge, what, &out_ports));
        };
        let router = self.router_words(&toward_router, &port);
        let others: Vec<String> = broken[1..]
            .iter()
            .map(|(p, why)| format!("{p} {}", why.words()))
            .collect();
        let also = match others.is_empty() {
            true => String::new(),
            false => format!(" (and {})", others.join(", ")),
        };
        let fix = problem.fix(&port, now.link(&bridge));
        let (rule, hint) = match &problem {
            PortProblem::State(state) if !flooded => (
                format!("bridge port {port} state {state}"),
                format!(
                    "{bridge} does not forward to {port}{router}: the port is in STP state {state}, so the bridge dropped {what}{also}; {fix}"
                ),
            ),
            _ => (
                format!(
                    "bridge {bridge}: no port to send to ({port} {})",
                    problem.rule_words()
                ),
                format!(
                    "{bridge} has no port to send it to: {port} is {}{also}{router}, so the bridge dropped {what}; {fix}",
                    problem.words(),
                ),
            ),
        };
        Some(Blame {
            stage: Stage::Bridge,
            rule: Some(rule),
            hint,
            ifname: Some(port),
        })
    }

    /// The ports of `bridge` toward the LAN's router in `now` (bridged mode).
    pub(super) fn router_ports(&self, now: &Host, bridge: &str) -> Vec<String> {
        match &self.topo.lan {
            Some(lan) => lan.router_ports(now, bridge),
            None => Vec::new(),
        }
    }

    /// ", the port toward the LAN's router 192.0.2.1", when `port` is that.
    fn router_words(&self, toward_router: &[String], port: &str) -> String {
        match &self.topo.lan {
            Some(lan) if toward_router.iter().any(|p| p == port) => {
                format!(", the port toward the LAN's router {}", lan.gateway)
            }
            _ => String::new(),
        }
    }

    /// Bridged mode: the request left by a bridge port into the LAN and no
    /// reply came back. What the host can tell about the router: whether it
    /// answers ARP (the host's neighbour entry) and where the bridge learned
    /// its MAC.
    pub(super) fn lan_no_reply(&self, t: &Trace, out: &Hop, v: &mut Verdict) {
        let Some(lan) = &self.topo.lan else {
            return;
        };
        let dev = self
            .name(out.ifindex)
            .unwrap_or_else(|| "a bridge port".into());
        // Left by a bond's slave (or the NIC under a VLAN device): the bridge
        // port is the device above it.
        let (port, by) = match self.topo.upper_of(out.ifindex) {
            Some(up) => (up.to_string(), format!("{up} ({dev})")),
            None => (dev.clone(), dev),
        };
        let bridge = self
            .topo
            .bridge
            .as_ref()
            .map_or("the bridge".into(), |b| b.name.clone());
        let gw = lan.gateway;
        v.stage = Some(Stage::Remote);
        v.ifname = Some(port.clone());
        v.rule = Some(format!("bridged to the LAN by {by}; router {gw}"));
        let facts = match Host::read() {
            Ok(now) => router_facts(&now, &bridge, gw, &port),
            Err(e) => format!("(the host's tables could not be read: {e:#})"),
        };
        v.hint = Some(format!(
            "the request left {bridge} by {by} into the LAN as {} → {} (bridged: this host routes none of the guest's traffic, its gateway is a router on the LAN) and nothing came back within {} s. What this host can tell about the router {gw} (its own next hop to {}): {facts}. The problem is beyond this host: the router (its filters, its route back to {}, its ARP for the guest), or the destination",
            t.request.src(),
            out.pkt.dst(),
            crate::correlate::REPLY_WAIT_NS / 1_000_000_000,
            self.topo.dst,
            self.vm_net(),
        ));
    }

    /// Bridged mode's path: between the VM's port and the port toward the LAN
    /// the frame crosses the bridge (no IP stage: the host does not route it).
    pub(super) fn lan_implied(&self, a: &Hop, b: &Hop, t0: u64, dir: Direction) -> Vec<PathHop> {
        let crosses = a.ifindex != b.ifindex && !a.egress && b.egress;
        match (&self.topo.bridge, crosses) {
            (Some(br), true) => vec![PathHop {
                stage: Stage::Bridge,
                ifname: Some(br.name.clone()),
                bridge: None,
                ts_ns: b.ts_ns.saturating_sub(t0),
                nat: None,
                direction: dir,
                inferred: true,
                function: None,
            }],
            _ => Vec::new(),
        }
    }
}

/// NO_TX_TARGET although every other port passes frames: the bridge has no
/// other port at all, or none it may flood to.
fn no_target_at_all(bridge: &str, what: &str, out_ports: &[String]) -> Blame {
    let hint = match out_ports {
        [] => format!(
            "{bridge} has no port but the guest's, so it has nowhere to send {what}: add the physical NIC (or bond) to the bridge: ip link set <nic> master {bridge}"
        ),
        ports => format!(
            "{bridge} found no port to send {what} to: no FDB entry for its destination MAC and no port it may flood to among {} (check flooding: bridge -d link show; bridge fdb show br {bridge})",
            ports.join(", ")
        ),
    };
    Blame {
        stage: Stage::Bridge,
        rule: Some(format!("bridge {bridge}: no port to send to")),
        hint,
        ifname: Some(bridge.to_string()),
    }
}

/// The host's view of the router `gw` on `bridge`, in words: its neighbour
/// entry (ARP answered or not) and the port its MAC was learned on (another
/// port than the request left by is said).
fn router_facts(now: &Host, bridge: &str, gw: IpAddr, left_by: &str) -> String {
    let index = now.index_of(bridge);
    let entry = now.neighbours_of(gw).find(|n| Some(n.index) == index);
    let mut facts = vec![match entry {
        Some(n) if !n.resolved() => format!(
            "it did not answer the host's own ARP on {bridge} (neighbour entry {})",
            n.state
        ),
        Some(n) => format!(
            "it answers ARP (the host's neighbour entry: {}, {})",
            n.mac.as_deref().unwrap_or("?"),
            n.state
        ),
        None => format!("the host has no neighbour entry for it on {bridge}"),
    }];
    if let Some(mac) = neighbour_mac(now, gw, bridge) {
        facts.push(match now.fdb_port(bridge, &mac, None) {
            Some(p) if p == left_by => format!("{bridge} learned its MAC on {p}"),
            Some(p) => format!(
                "{bridge} learned its MAC on {p}, not on {left_by} the request left by: something behind {p} uses the router's MAC, or the LAN loops"
            ),
            None => format!(
                "{bridge} has no FDB entry for {mac}: no frame from the router reached the bridge lately"
            ),
        });
    }
    facts.join("; ")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn host(fdb_port: &str, state: &str) -> Host {
        let links = json!([
            {"ifindex":2,"ifname":"vmbr0","linkinfo":{"info_kind":"bridge"}},
            {"ifindex":3,"ifname":"eno1","master":"vmbr0"},
            {"ifindex":4,"ifname":"tap101i0","master":"vmbr0","linkinfo":{"info_kind":"tun"}}
        ]);
        let neigh =
            json!([{"dst":"192.0.2.1","dev":"vmbr0","lladdr":"02:00:00:00:02:01","state":[state]}]);
        let fdb =
            json!([{"mac":"02:00:00:00:02:01","ifname":fdb_port,"master":"vmbr0","state":""}]);
        Host::from_iproute2(&links, &json!([]), &neigh, &fdb)
    }

    #[test]
    fn what_the_host_knows_of_the_router() {
        let gw = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
        let f = router_facts(&host("eno1", "REACHABLE"), "vmbr0", gw, "eno1");
        assert!(f.contains("it answers ARP"), "{f}");
        assert!(f.contains("vmbr0 learned its MAC on eno1"), "{f}");
        let f = router_facts(&host("tap101i0", "STALE"), "vmbr0", gw, "eno1");
        assert!(
            f.contains("learned its MAC on tap101i0, not on eno1"),
            "{f}"
        );
        let f = router_facts(&host("eno1", "FAILED"), "vmbr0", gw, "eno1");
        assert!(f.contains("did not answer the host's own ARP"), "{f}");
    }

    #[test]
    fn no_other_port_at_all() {
        let b = no_target_at_all("vmbr0", "the guest's request", &[]);
        assert!(
            b.hint.contains("ip link set <nic> master vmbr0"),
            "{}",
            b.hint
        );
        let b = no_target_at_all("vmbr0", "the guest's request", &["tap101i0".into()]);
        assert!(b.hint.contains("no port it may flood to among tap101i0"));
    }
}
