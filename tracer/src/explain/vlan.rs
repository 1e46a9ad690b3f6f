//! A VLAN-aware bridge that dropped the guest's frame for its VLAN: at ingress
//! (the guest's port has no PVID, so its untagged frames belong to no VLAN —
//! the kernel frees them in br_allowed_ingress), or because no port it could
//! leave by is a member of the frame's VLAN (a trunk without the VID, the
//! router's port in another VLAN: the VID's FDB entries went with it, the frame
//! is flooded to no port). Said with the port, the VID, the ports' VLAN
//! membership as the bridge has it now, and the `bridge vlan` command
//! (Proxmox: the NIC's `tag=` or the bridge's `bridge-vids`).

use std::collections::BTreeMap;

use super::*;
use crate::host::{
    vlan::{self, PortVlans},
    Host,
};

impl Explainer {
    /// The VLAN table explains a request drop inside a VLAN-aware bridge.
    pub(super) fn blame_vlan(
        &self,
        t: &Trace,
        d: &Drop,
        function: Option<&str>,
        what: &str,
    ) -> Option<Blame> {
        if d.direction != Direction::Request {
            return None;
        }
        let bridge = self.topo.bridge.as_ref()?.name.clone();
        let now = Host::read().ok()?;
        if !now.link(&bridge)?.vlan_filtering {
            return None;
        }
        let table = vlan::read().ok()?;
        let of = |p: &str| table.get(p).cloned().unwrap_or_default();
        let port = t
            .port_ifindex
            .or(Some(d.ifindex))
            .and_then(|i| self.name(i))?;
        let vlans = of(&port);
        let Some(vid) = vlans.pvid() else {
            return Some(self.no_pvid(&now, &table, &bridge, &port, &vlans, what));
        };
        if function == Some("br_allowed_ingress") {
            return None;
        }
        self.vid_nowhere(&now, &table, &bridge, &port, vid, what)
    }

    /// The guest's port has no PVID: its untagged frames are dropped at ingress.
    fn no_pvid(
        &self,
        now: &Host,
        table: &BTreeMap<String, PortVlans>,
        bridge: &str,
        port: &str,
        vlans: &PortVlans,
        what: &str,
    ) -> Blame {
        // The VLAN the guest should be in: the one the router's port carries
        // untagged, else the bridge's own.
        let pvid_of = |p: &str| table.get(p).and_then(PortVlans::pvid);
        let lan_vid = self
            .router_ports(now, bridge)
            .iter()
            .find_map(|p| pvid_of(p))
            .or_else(|| pvid_of(bridge));
        let vid = lan_vid.map_or("VID".into(), |v| v.to_string());
        Blame {
            stage: Stage::Bridge,
            rule: Some(format!(
                "VLAN: {port} has no PVID on {bridge} (its VLANs: {})",
                vlans.words()
            )),
            hint: format!(
                "{bridge} filters by VLAN and the guest's port {port} has no PVID (its VLANs: {}), so the guest's untagged frames belong to no VLAN and the bridge dropped {what} at ingress; give the port the guest's VLAN: bridge vlan add dev {port} vid {vid} pvid untagged (Proxmox: tag={vid} on the VM's NIC)",
                vlans.words()
            ),
            ifname: Some(port.to_string()),
        }
    }

    /// The frame's VLAN (`vid`, the guest port's PVID) is on no port it could
    /// leave by: the ports toward the LAN's router in bridged mode, else every
    /// other port of the bridge.
    fn vid_nowhere(
        &self,
        now: &Host,
        table: &BTreeMap<String, PortVlans>,
        bridge: &str,
        port: &str,
        vid: u16,
        what: &str,
    ) -> Option<Blame> {
        let toward_router = self.router_ports(now, bridge);
        let out: Vec<String> = match toward_router.is_empty() {
            false => toward_router,
            true => now
                .ports_of(bridge)
                .into_iter()
                .filter(|p| p != port)
                .collect(),
        };
        let members: Vec<(&String, PortVlans)> = out
            .iter()
            .map(|p| (p, table.get(p).cloned().unwrap_or_default()))
            .collect();
        if members.is_empty() || members.iter().any(|(_, v)| v.carries(vid)) {
            return None;
        }
        let listed: Vec<String> = members
            .iter()
            .map(|(p, v)| format!("{p}: {}", v.words()))
            .collect();
        let first = members[0].0.clone();
        let where_to = match &self.topo.lan {
            Some(lan) => format!("{first}, the port toward the LAN's router {},", lan.gateway),
            None => format!("any other port ({})", out.join(", ")),
        };
        Some(Blame {
            stage: Stage::Bridge,
            rule: Some(format!(
                "VLAN {vid} not on {} ({})",
                out.join(", "),
                listed.join("; ")
            )),
            hint: format!(
                "{bridge} filters by VLAN: the guest's frames are in VLAN {vid} (the PVID of {port}), and {where_to} is not a member of VLAN {vid} ({}), so the bridge dropped {what}; add the VLAN to the trunk: bridge vlan add dev {first} vid {vid} (Proxmox: bridge-vids on {bridge} in /etc/network/interfaces), or put the VM's NIC in the VLAN the LAN is on (Proxmox: its tag=)",
                listed.join("; ")
            ),
            ifname: Some(first),
        })
    }
}
