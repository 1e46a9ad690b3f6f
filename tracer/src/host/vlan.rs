//! A VLAN-aware bridge's per-port VLAN membership — what `bridge vlan show`
//! prints — read over netlink when a verdict needs it (an AF_BRIDGE link dump
//! asking for the VLAN lists, RTEXT_FILTER_BRVLAN). A frame belongs to one VLAN
//! on the bridge: an untagged frame to its ingress port's PVID (none: dropped at
//! ingress), and it leaves only by ports that are members of that VLAN.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use netlink_packet_route::{
    link::{AfSpecBridge, BridgeVlanInfoFlags, LinkAttribute, LinkExtentMask, LinkMessage},
    AddressFamily, RouteNetlinkMessage,
};

use super::netlink::Rtnl;

/// One VLAN a port is a member of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Membership {
    pub vid: u16,
    /// Untagged frames coming in by the port belong to this VLAN.
    pub pvid: bool,
    /// Frames of this VLAN leave the port untagged.
    pub untagged: bool,
}

/// A port's VLANs (the bridge device's own, for the bridge).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortVlans(pub Vec<Membership>);

impl PortVlans {
    pub fn pvid(&self) -> Option<u16> {
        self.0.iter().find(|m| m.pvid).map(|m| m.vid)
    }

    pub fn carries(&self, vid: u16) -> bool {
        self.0.iter().any(|m| m.vid == vid)
    }

    /// "20 PVID untagged, 30 tagged" or "none".
    pub fn words(&self) -> String {
        if self.0.is_empty() {
            return "none".into();
        }
        let each: Vec<String> = self
            .0
            .iter()
            .map(|m| {
                let mut w = m.vid.to_string();
                if m.pvid {
                    w.push_str(" PVID");
                }
                w.push_str(if m.untagged { " untagged" } else { " tagged" });
                w
            })
            .collect();
        each.join(", ")
    }
}

/// Every bridge port's VLANs now, by interface name.
pub fn read() -> Result<BTreeMap<String, PortVlans>> {
    let mut msg = LinkMessage::default();
    msg.header.interface_family = AddressFamily::Bridge;
    msg.attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::Brvlan]));
    let answers = Rtnl::open()?
        .dump(RouteNetlinkMessage::GetLink(msg))
        .context("listing bridge VLANs over netlink")?;
    Ok(answers
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => of_message(l),
            _ => None,
        })
        .collect())
}

/// One port's name and VLAN list; ranges (BRVLAN_COMPRESSED) are expanded.
fn of_message(m: &LinkMessage) -> Option<(String, PortVlans)> {
    let mut name = None;
    let mut infos = Vec::new();
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::AfSpecBridge(spec) => {
                infos.extend(spec.iter().filter_map(|s| match s {
                    AfSpecBridge::VlanInfo(v) => Some((v.flags, v.vid)),
                    _ => None,
                }))
            }
            _ => {}
        }
    }
    Some((name?, expand(&infos)))
}

/// (flags, vid) entries as the kernel sends them, a range as its begin and end.
fn expand(infos: &[(BridgeVlanInfoFlags, u16)]) -> PortVlans {
    let mut out = Vec::new();
    let mut begin = None;
    for &(flags, vid) in infos {
        let member = |vid| Membership {
            vid,
            pvid: flags.contains(BridgeVlanInfoFlags::Pvid),
            untagged: flags.contains(BridgeVlanInfoFlags::Untagged),
        };
        if flags.contains(BridgeVlanInfoFlags::RangeBegin) {
            begin = Some(vid);
        } else if flags.contains(BridgeVlanInfoFlags::RangeEnd) {
            let first = begin.take().unwrap_or(vid);
            out.extend((first..=vid.min(4094)).map(member));
        } else {
            out.push(member(vid));
        }
    }
    PortVlans(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pvid_ranges_and_tags() {
        let pvid_untagged = BridgeVlanInfoFlags::Pvid | BridgeVlanInfoFlags::Untagged;
        let tap = expand(&[(pvid_untagged, 20)]);
        assert_eq!(tap.pvid(), Some(20));
        assert_eq!(tap.words(), "20 PVID untagged");
        let trunk = expand(&[
            (pvid_untagged, 1),
            (BridgeVlanInfoFlags::RangeBegin, 30),
            (BridgeVlanInfoFlags::RangeEnd, 32),
        ]);
        assert_eq!(trunk.pvid(), Some(1));
        assert!(trunk.carries(31) && !trunk.carries(20));
        assert_eq!(trunk.0.len(), 4);
        assert_eq!(
            trunk.words(),
            "1 PVID untagged, 30 tagged, 31 tagged, 32 tagged"
        );
        assert_eq!(expand(&[]).pvid(), None);
        assert_eq!(PortVlans::default().words(), "none");
    }
}
