//! Drops in neighbour resolution: the host could not learn the MAC of the next
//! hop (the gateway, for a request) or of the guest (for its reply), and freed
//! the packet it had queued meanwhile. Why, from the host's state at the moment
//! of the verdict (read fresh: ports change state while a trace runs).

use super::{Blame, Explainer};
use crate::{
    correlate::{Direction, Drop, Stage},
    host::Host,
    topology,
};

impl Explainer {
    pub(super) fn blame_neighbour(
        &self,
        d: &Drop,
        stage: Stage,
        what: &str,
        reason: &str,
    ) -> Blame {
        if d.direction == Direction::Reply {
            return self.blame_guest_unresolved(d, stage, what, reason);
        }
        let dev = self.name(d.ifindex).unwrap_or_else(|| self.uplink_name());
        let hop = self
            .topo
            .gateway
            .map_or(self.topo.dst.to_string(), |g| g.to_string());
        Blame {
            stage,
            rule: Some(format!("neighbour {hop} on {dev}: unresolved")),
            hint: format!(
                "the next hop {hop} did not answer {} on {dev}, so the host could not send {what} ({reason}); check the next hop and the route: ip neigh show dev {dev}; ip route get {}",
                self.resolution_word(),
                self.topo.dst
            ),
            ifname: None,
        }
    }

    /// The reply reached the VM bridge, but the guest's own MAC could not be
    /// resolved there: nothing answered the host's ARP for the guest.
    fn blame_guest_unresolved(&self, d: &Drop, stage: Stage, what: &str, reason: &str) -> Blame {
        let dev = self
            .name(d.ifindex)
            .unwrap_or_else(|| self.topo.inbound().name.clone());
        let vm = self.topo.vm_ip;
        let word = self.resolution_word();
        let cause = self.why_guest_unresolved(&dev).unwrap_or_else(|| {
            format!(
                "the guest did not answer, though the host sees nothing in the way; check that it still has the address {vm} and that its firewall lets {word} through: ip neigh show {vm} dev {dev}; bridge link show"
            )
        });
        // QUEUE_PURGE: the entry the packet waited on was deleted (flushed when
        // the bridge lost carrier, or by hand) before resolution ended.
        let how = match reason {
            "QUEUE_PURGE" => "its neighbour entry, which the packet waited on, was flushed",
            _ if self.topo.is_v6() => "its neighbour solicitations got no answer",
            _ => "its ARP requests got no answer",
        };
        Blame {
            stage,
            rule: Some(format!("neighbour {vm} on {dev}: unresolved")),
            hint: format!(
                "the host could not resolve the guest {vm}'s MAC on {dev} ({how}) and dropped {what} ({reason}), because {cause}"
            ),
            ifname: Some(dev),
        }
    }

    /// The first thing on the way from `dev` down to the guest's port that keeps
    /// the host's ARP request from reaching the guest (or its answer from coming
    /// back), in words with the fixing command; None when the host sees nothing.
    fn why_guest_unresolved(&self, dev: &str) -> Option<String> {
        let mut below: Vec<String> = self
            .topo
            .chain
            .iter()
            .rev()
            .filter(|h| !h.is_bridge)
            .map(|h| h.iface.name.clone())
            .collect();
        below.extend(self.topo.ports.iter().map(|p| p.name.clone()));
        for port in &below {
            if let Some(state) =
                topology::oper_state_now(port).filter(|s| s != "UP" && s != "UNKNOWN")
            {
                return Some(format!(
                    "{port} on the way to the guest is {state} (the VM stopped, or its NIC is unplugged); bring it up: ip link set {port} up, or start the VM"
                ));
            }
            if let Some(state) = topology::port_state_now(port).filter(|s| s != "forwarding") {
                return Some(format!(
                    "bridge port {port} on the way to the guest is {state}, so it passes no frames (the ARP request never reaches the guest); if STP is not meant to block it: bridge link set dev {port} state 3"
                ));
            }
        }
        let mac = self.topo.vm_mac.as_deref()?.to_lowercase();
        // The FDB as it is now, at the verdict (netlink: nothing is spawned).
        let now = Host::read().ok()?;
        let mut ours: Vec<&str> = vec![dev];
        ours.extend(
            self.topo
                .chain
                .iter()
                .filter(|h| h.is_bridge)
                .map(|h| h.iface.name.as_str()),
        );
        if let Some((port, bridge)) = learned_elsewhere(&now, &mac, &ours) {
            return Some(format!(
                "the guest's MAC {mac} was learned on {port} of bridge {bridge}, not below {dev}: the guest is on another bridge (check the VM's NIC configuration)"
            ));
        }
        None
    }
}

/// A port of another bridge than those on the guest's path (`ours`) where
/// `mac` was learned: (port, its bridge).
fn learned_elsewhere(host: &Host, mac: &str, ours: &[&str]) -> Option<(String, String)> {
    host.fdb
        .iter()
        .filter(|f| !f.own && f.mac == mac)
        .filter_map(|f| Some((host.name_of(f.port)?, host.name_of(f.bridge?)?)))
        .find(|(_, bridge)| !ours.contains(bridge))
        .map(|(port, bridge)| (port.to_string(), bridge.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mac_learned_on_another_bridge_is_found() {
        let links = serde_json::json!([
            {"ifindex": 1, "ifname": "vmbr0"}, {"ifindex": 2, "ifname": "vmbr1"},
            {"ifindex": 3, "ifname": "fwpr100p0"}, {"ifindex": 4, "ifname": "tap100i0"}
        ]);
        let fdb = serde_json::json!([
            {"mac": "52:54:00:aa:bb:cc", "ifname": "fwpr100p0", "master": "vmbr0"},
            {"mac": "52:54:00:AA:BB:CC", "ifname": "tap100i0", "master": "vmbr1"},
            {"mac": "52:54:00:aa:bb:cc", "ifname": "vmbr1", "flags": ["self"]}
        ]);
        let host = Host::from_iproute2(
            &links,
            &serde_json::Value::Null,
            &serde_json::Value::Null,
            &fdb,
        );
        assert_eq!(
            learned_elsewhere(&host, "52:54:00:aa:bb:cc", &["vmbr0", "fwbr100i0"]),
            Some(("tap100i0".into(), "vmbr1".into()))
        );
        assert_eq!(
            learned_elsewhere(&host, "52:54:00:aa:bb:cc", &["vmbr0", "vmbr1"]),
            None
        );
    }
}
