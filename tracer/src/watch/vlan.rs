//! The VLAN a VM port's frames belong to, for watch's `vlan` field and label.
//!
//! The running host says it first: on a VLAN-aware bridge (`vlan_filtering 1`,
//! Proxmox's `bridge-vlan-aware yes`) the guest's untagged frames take its
//! port's PVID; on a bridge that sits on a VLAN device (Proxmox's non-VLAN-aware
//! layout, `vmbr0vN` on `eno1.N`) they leave tagged with that device's VID.
//! Behind Proxmox's firewall bridge the tap's own bridge knows no VLAN: the
//! VM bridge above it does, on the veth end `fwprNpM`. The configuration's tag
//! (Proxmox `tag=`, libvirt `<vlan><tag>`) is the fallback (`identity`).

use std::collections::{BTreeMap, HashSet};

use anyhow::Result;

use crate::host::{
    vlan::{self, PortVlans},
    Host,
};

/// Firewall bridges stacked deeper than this are not a layout anyone runs.
const MAX_CLIMB: usize = 4;

/// Every bridge port's VLANs, read only when a bridge filters by VLAN (one
/// netlink dump; a host without VLAN-aware bridges pays nothing).
pub fn table(host: &Host) -> Result<BTreeMap<String, PortVlans>> {
    match host.live && host.links.iter().any(|l| l.vlan_filtering) {
        true => vlan::read(),
        false => Ok(BTreeMap::new()),
    }
}

/// The VLAN of `port`'s untagged frames, climbing from its bridge through
/// firewall bridges to the first bridge that has one; None when untagged or
/// when the host cannot tell (no PVID, a bridge on several VLAN devices).
pub fn of_port(host: &Host, table: &BTreeMap<String, PortVlans>, port: &str) -> Option<u16> {
    let mut port = port.to_string();
    for _ in 0..MAX_CLIMB {
        let bridge = host.master_of(&port)?.to_string();
        if host.link(&bridge)?.vlan_filtering {
            return table.get(&port)?.pvid();
        }
        if let Some(vid) = vlan_device_vid(host, &bridge) {
            return Some(vid);
        }
        port = port_above(host, &bridge, &port)?;
    }
    None
}

/// The VID of the VLAN device(s) among `bridge`'s ports, when there is one VID.
fn vlan_device_vid(host: &Host, bridge: &str) -> Option<u16> {
    let vids: HashSet<u16> = host
        .ports_of(bridge)
        .iter()
        .filter_map(|p| host.link(p))
        .filter(|l| l.is_kind("vlan"))
        .filter_map(|l| l.vlan_id)
        .collect();
    match vids.len() {
        1 => vids.into_iter().next(),
        _ => None,
    }
}

/// The one port of `bridge` (other than `from`) that is a veth into another
/// bridge: that veth's far end, a port of the bridge above (`fwln` → `fwpr`).
fn port_above(host: &Host, bridge: &str, from: &str) -> Option<String> {
    let ups: Vec<String> = host
        .ports_of(bridge)
        .iter()
        .filter(|p| p.as_str() != from)
        .filter_map(|p| host.lower_bridge(p, bridge))
        .map(|(peer, _)| peer)
        .collect();
    match ups.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::vlan::Membership;
    use serde_json::{json, Value};

    fn host(links: Value) -> Host {
        Host::from_iproute2(&links, &json!([]), &json!([]), &json!([]))
    }

    fn access(vid: u16) -> PortVlans {
        PortVlans(vec![Membership {
            vid,
            pvid: true,
            untagged: true,
        }])
    }

    /// Proxmox, VLAN-aware vmbr0: VM 100 straight on it (tag=20), VM 101 behind
    /// its firewall bridge (the tag on fwpr101p0), VM 102 without a PVID.
    #[test]
    fn pvid_on_a_vlan_aware_bridge_also_behind_the_firewall_bridge() {
        let h = host(json!([
            {"ifindex":2,"ifname":"eno1","master":"vmbr0"},
            {"ifindex":3,"ifname":"vmbr0","linkinfo":{"info_kind":"bridge","info_data":{"vlan_filtering":1}}},
            {"ifindex":10,"ifname":"tap100i0","master":"vmbr0","linkinfo":{"info_kind":"tun"}},
            {"ifindex":11,"ifname":"tap101i0","master":"fwbr101i0","linkinfo":{"info_kind":"tun"}},
            {"ifindex":12,"ifname":"fwbr101i0","linkinfo":{"info_kind":"bridge","info_data":{"vlan_filtering":0}}},
            {"ifindex":13,"ifname":"fwpr101p0","master":"vmbr0","link":"fwln101i0","linkinfo":{"info_kind":"veth"}},
            {"ifindex":14,"ifname":"fwln101i0","master":"fwbr101i0","link":"fwpr101p0","linkinfo":{"info_kind":"veth"}},
            {"ifindex":15,"ifname":"tap102i0","master":"vmbr0","linkinfo":{"info_kind":"tun"}}
        ]));
        let table = BTreeMap::from([
            ("tap100i0".to_string(), access(20)),
            ("fwpr101p0".to_string(), access(30)),
            ("tap102i0".to_string(), PortVlans::default()),
        ]);
        assert_eq!(of_port(&h, &table, "tap100i0"), Some(20));
        assert_eq!(of_port(&h, &table, "tap101i0"), Some(30));
        assert_eq!(of_port(&h, &table, "tap102i0"), None, "no PVID: no VLAN");
        // The table could not be read: the host cannot tell.
        assert_eq!(of_port(&h, &BTreeMap::new(), "tap100i0"), None);
    }

    /// Proxmox's non-VLAN-aware layout: vmbr0v20 on eno1.20 (a VLAN device,
    /// here on a bond), vmbr0 untagged on eno1, and a bridge on two VLAN
    /// devices of different VIDs (no single answer).
    #[test]
    fn the_vid_of_the_vlan_device_a_plain_bridge_sits_on() {
        let h = host(json!([
            {"ifindex":2,"ifname":"bond0","master":"vmbr0","linkinfo":{"info_kind":"bond"}},
            {"ifindex":3,"ifname":"vmbr0","linkinfo":{"info_kind":"bridge"}},
            {"ifindex":4,"ifname":"bond0.20","master":"vmbr0v20","link":"bond0","linkinfo":{"info_kind":"vlan","info_data":{"protocol":"802.1Q","id":20}}},
            {"ifindex":5,"ifname":"vmbr0v20","linkinfo":{"info_kind":"bridge"}},
            {"ifindex":10,"ifname":"tap100i0","master":"vmbr0v20","linkinfo":{"info_kind":"tun"}},
            {"ifindex":11,"ifname":"tap101i0","master":"fwbr101i0","linkinfo":{"info_kind":"tun"}},
            {"ifindex":12,"ifname":"fwbr101i0","linkinfo":{"info_kind":"bridge"}},
            {"ifindex":13,"ifname":"fwpr101p0","master":"vmbr0v20","link":"fwln101i0","linkinfo":{"info_kind":"veth"}},
            {"ifindex":14,"ifname":"fwln101i0","master":"fwbr101i0","link":"fwpr101p0","linkinfo":{"info_kind":"veth"}},
            {"ifindex":15,"ifname":"tap102i0","master":"vmbr0","linkinfo":{"info_kind":"tun"}},
            {"ifindex":16,"ifname":"eno1.30","master":"br2","linkinfo":{"info_kind":"vlan","info_data":{"id":30}}},
            {"ifindex":17,"ifname":"eno1.40","master":"br2","linkinfo":{"info_kind":"vlan","info_data":{"id":40}}},
            {"ifindex":18,"ifname":"br2","linkinfo":{"info_kind":"bridge"}},
            {"ifindex":19,"ifname":"tap103i0","master":"br2","linkinfo":{"info_kind":"tun"}}
        ]));
        let none = BTreeMap::new();
        assert_eq!(of_port(&h, &none, "tap100i0"), Some(20));
        assert_eq!(of_port(&h, &none, "tap101i0"), Some(20), "above fwbr101i0");
        assert_eq!(of_port(&h, &none, "tap102i0"), None, "untagged");
        assert_eq!(of_port(&h, &none, "tap103i0"), None, "two VIDs");
    }

    /// A firewall bridge with two veths up (no single bridge above) and a port
    /// in no bridge name nothing.
    #[test]
    fn no_guess_when_the_climb_is_ambiguous() {
        let h = host(json!([
            {"ifindex":3,"ifname":"vmbr0v20","linkinfo":{"info_kind":"bridge"}},
            {"ifindex":4,"ifname":"eno1.20","master":"vmbr0v20","linkinfo":{"info_kind":"vlan","info_data":{"id":20}}},
            {"ifindex":10,"ifname":"tap100i0","master":"fwbr100i0","linkinfo":{"info_kind":"tun"}},
            {"ifindex":11,"ifname":"fwbr100i0","linkinfo":{"info_kind":"bridge"}},
            {"ifindex":12,"ifname":"a","master":"vmbr0v20","link":"b","linkinfo":{"info_kind":"veth"}},
            {"ifindex":13,"ifname":"b","master":"fwbr100i0","link":"a","linkinfo":{"info_kind":"veth"}},
            {"ifindex":14,"ifname":"c","master":"vmbr0v20","link":"d","linkinfo":{"info_kind":"veth"}},
            {"ifindex":15,"ifname":"d","master":"fwbr100i0","link":"c","linkinfo":{"info_kind":"veth"}},
            {"ifindex":16,"ifname":"tap999","linkinfo":{"info_kind":"tun"}}
        ]));
        assert_eq!(of_port(&h, &BTreeMap::new(), "tap100i0"), None);
        assert_eq!(of_port(&h, &BTreeMap::new(), "tap999"), None);
    }
}
