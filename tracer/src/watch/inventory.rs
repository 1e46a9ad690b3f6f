//! Which VMs this host has right now: every VM port on every bridge, with the MACs
//! the bridges learned behind it and the addresses (IPv4 and IPv6, link-local
//! left out) the host's neighbour table maps to those MACs. Re-read whenever the kernel reports a change (`changes`),
//! so VMs that start, stop or migrate are picked up and dropped while watch runs. This is what the tables say *now*;
//! `identity` keeps what they said once, when they forget a quiet guest.
//!
//! A VM port is a bridge port that leads to a guest: a tap (`tun` kind: QEMU's
//! `tapNiM`, libvirt's `vnetN`) or a veth whose peer is not itself a bridge port.
//! Veth pairs joining two bridges (Proxmox's `fwprNpM`/`fwlnNiM` between `fwbrNiM`
//! and `vmbrN`), physical NICs, bonds and VLAN devices are the host's plumbing.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
};

use anyhow::Result;

use crate::host::Host;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPort {
    pub ifindex: u32,
    pub name: String,
    pub bridge: String,
    /// MACs the bridges learned behind this port (the guest's NICs).
    pub macs: Vec<[u8; 6]>,
    /// Addresses the host's neighbour table maps to those MACs, IPv4 ones
    /// first (sorted).
    pub ips: Vec<IpAddr>,
    /// Proxmox VMID or libvirt domain, when the hypervisor's configuration names
    /// this port (filled by `identity`).
    pub vmid: Option<String>,
    /// The VM's name in that configuration.
    pub vm_name: Option<String>,
    /// The VLAN of the guest's untagged frames (`vlan`), as the host or, failing
    /// that, the configuration's tag says (filled by `identity`).
    pub vlan: Option<u16>,
}

#[derive(Debug, Clone, Default)]
pub struct Inventory {
    /// VM ports by ifindex (sorted, so views are stable).
    pub ports: BTreeMap<u32, VmPort>,
    /// Every interface of the namespace, by ifindex.
    pub names: HashMap<u32, String>,
    /// Interface indexes of bridges.
    pub bridges: HashSet<u32>,
    /// Interface indexes of bridge ports that are not VM ports: the plumbing
    /// between bridges (Proxmox's fwln/fwpr), uplinks in bridged mode.
    pub bridge_ports: HashSet<u32>,
    /// The host's own addresses (a drop of a packet to one is at `input`).
    pub local_addrs: HashSet<IpAddr>,
    /// The neighbour table: guest-usable addresses by MAC (usable entries only).
    pub neigh: HashMap<[u8; 6], Vec<IpAddr>>,
}

impl Inventory {
    /// Read the running host: one read of its tables, whatever the number of VMs.
    pub fn discover() -> Result<Self> {
        let host = Host::read()?;
        let mut inv = Self::from_host(&host);
        // Without the VLAN table the configuration's tag is still known.
        let table = super::vlan::table(&host).unwrap_or_default();
        for port in inv.ports.values_mut() {
            port.vlan = super::vlan::of_port(&host, &table, &port.name);
        }
        Ok(inv)
    }

    /// The VMs the host model knows.
    pub fn from_host(host: &Host) -> Self {
        let mut inv = Self {
            names: host
                .links
                .iter()
                .map(|l| (l.index, l.name.clone()))
                .collect(),
            bridges: host
                .links
                .iter()
                .filter(|l| l.is_bridge())
                .map(|l| l.index)
                .collect(),
            local_addrs: host.addrs.iter().map(|a| a.addr).collect(),
            neigh: neighbours(host),
            ..Self::default()
        };
        for port in vm_ports(host) {
            inv.ports.insert(port.ifindex, port);
        }
        learn_macs(&mut inv.ports, host);
        inv.bridge_ports = bridge_ports(host, &inv.bridges)
            .into_iter()
            .filter(|i| !inv.ports.contains_key(i))
            .collect();
        for port in inv.ports.values_mut() {
            port.ips = ips_of(&inv.neigh, &port.macs);
        }
        inv
    }

    /// The same from iproute2's JSON (the tests feed fixtures).
    #[cfg(test)]
    pub fn from_json(
        links: &serde_json::Value,
        fdb: &serde_json::Value,
        neigh: &serde_json::Value,
        addrs: &serde_json::Value,
    ) -> Self {
        Self::from_host(&Host::from_iproute2(links, addrs, neigh, fdb))
    }

    /// Keep only the ports carrying one of `only` (none given: keep all).
    pub fn narrow(&mut self, only: &[IpAddr]) {
        if !only.is_empty() {
            self.ports
                .retain(|_, p| p.ips.iter().any(|ip| only.contains(ip)));
        }
    }
}

/// The addresses the neighbour table maps to any of `macs`, sorted.
pub fn ips_of(neigh: &HashMap<[u8; 6], Vec<IpAddr>>, macs: &[[u8; 6]]) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = macs
        .iter()
        .filter_map(|m| neigh.get(m))
        .flatten()
        .copied()
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// Interfaces enslaved to a bridge.
fn bridge_ports(host: &Host, bridges: &HashSet<u32>) -> HashSet<u32> {
    host.links
        .iter()
        .filter(|l| l.master.is_some_and(|m| bridges.contains(&m)))
        .map(|l| l.index)
        .collect()
}

fn vm_ports(host: &Host) -> Vec<VmPort> {
    let bridge_port = |index: u32| {
        host.link_at(index)
            .and_then(|l| l.master)
            .and_then(|m| host.link_at(m))
            .is_some_and(|b| b.is_bridge())
    };
    host.links
        .iter()
        .filter(|l| bridge_port(l.index))
        .filter(|l| match l.kind.as_deref() {
            Some("tun") => true,
            // A veth whose peer (known only when in this namespace) is a bridge
            // port joins two bridges; one into another namespace is a guest's.
            Some("veth") => !l.peer.is_some_and(bridge_port),
            _ => false,
        })
        .filter_map(|l| {
            Some(VmPort {
                ifindex: l.index,
                name: l.name.clone(),
                bridge: host.name_of(l.master?)?.to_string(),
                macs: Vec::new(),
                ips: Vec::new(),
                vmid: None,
                vm_name: None,
                vlan: None,
            })
        })
        .collect()
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

pub fn format_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// MACs learned behind each port: on the port itself, or on a veth end in an
/// upper bridge that leads down to it. On Proxmox the firewall bridge `fwbrNiM` and
/// `vmbrN` age their entries independently: the guest's MAC learned on `fwprNpM`
/// in `vmbrN` still names the one tap of `fwbrNiM` when `fwbrNiM` has forgotten it.
/// The ports' own addresses (`permanent`), the bridges' `self` entries and the MACs
/// of this host's own devices (a firewall bridge's frames are learned on `fwpr` too)
/// are not the guest's.
fn learn_macs(ports: &mut BTreeMap<u32, VmPort>, host: &Host) {
    let by_name: HashMap<String, u32> = ports
        .values()
        .map(|p| (p.name.clone(), p.ifindex))
        .collect();
    let below = ports_below(host, &by_name);
    let local: HashSet<[u8; 6]> = host
        .links
        .iter()
        .filter_map(|l| l.mac.as_deref().and_then(parse_mac))
        .collect();
    for entry in &host.fdb {
        if entry.permanent || entry.own {
            continue;
        }
        let Some(index) = host
            .name_of(entry.port)
            .and_then(|n| by_name.get(n).or_else(|| below.get(n)))
        else {
            continue;
        };
        let Some(mac) = parse_mac(&entry.mac) else {
            continue;
        };
        // Multicast/broadcast entries are not a guest's NIC.
        if mac[0] & 1 != 0 || local.contains(&mac) {
            continue;
        }
        let port = ports.get_mut(index).expect("index from the same map");
        if !port.macs.contains(&mac) {
            port.macs.push(mac);
        }
    }
}

/// Bridge ports that are a veth into a lower bridge whose only port below (through
/// any further such pairs) is one VM port: that port's index, by the upper end's
/// name. A lower bridge with several ports below cannot say which one a MAC is on.
fn ports_below(host: &Host, vm_ports: &HashMap<String, u32>) -> HashMap<String, u32> {
    let mut below = HashMap::new();
    for l in &host.links {
        let Some(bridge) = l.master.and_then(|m| host.name_of(m)) else {
            continue;
        };
        let Some((peer, lower)) = host.lower_bridge(&l.name, bridge) else {
            continue;
        };
        if let [leaf] = host.leaf_ports(&lower, Some(&peer), 0).as_slice() {
            if let Some(index) = vm_ports.get(leaf) {
                below.insert(l.name.clone(), *index);
            }
        }
    }
    below
}

/// An address a guest's NIC holds and others reach it by: not unspecified
/// (DHCP), broadcast, multicast or loopback, and for IPv6 not link-local (every
/// NIC has one, derived from its MAC: it names no VM a MAC would not, and it
/// is not what anyone alerts on).
pub fn guest_address(ip: IpAddr) -> bool {
    let common = !(ip.is_unspecified() || ip.is_multicast() || ip.is_loopback());
    common
        && match ip {
            IpAddr::V4(v4) => !v4.is_broadcast(),
            IpAddr::V6(v6) => !v6.is_unicast_link_local(),
        }
}

/// Usable neighbour entries: guest addresses (IPv4 and IPv6) by MAC.
fn neighbours(host: &Host) -> HashMap<[u8; 6], Vec<IpAddr>> {
    let mut out: HashMap<[u8; 6], Vec<IpAddr>> = HashMap::new();
    for n in host.neighbours.iter().filter(|n| n.resolved()) {
        let Some(mac) = n.mac.as_deref().and_then(parse_mac) else {
            continue;
        };
        let ip = n.ip;
        if !guest_address(ip) {
            continue;
        }
        let ips = out.entry(mac).or_default();
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::Value;

    fn ip4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::from([a, b, c, d])
    }

    fn json(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    /// A Proxmox host: VM 105 behind a firewall bridge, VM 106 straight on vmbr0,
    /// a physical uplink, and a container on a veth.
    fn proxmox() -> Inventory {
        let links = json(
            r#"[
            {"ifindex":2,"ifname":"eno1","master":"vmbr0"},
            {"ifindex":3,"ifname":"vmbr0","linkinfo":{"info_kind":"bridge"}},
            {"ifindex":10,"ifname":"tap105i0","master":"fwbr105i0","linkinfo":{"info_kind":"tun"}},
            {"ifindex":11,"ifname":"fwbr105i0","linkinfo":{"info_kind":"bridge"}},
            {"ifindex":12,"ifname":"fwpr105p0","master":"vmbr0","link":"fwln105i0","linkinfo":{"info_kind":"veth"}},
            {"ifindex":13,"ifname":"fwln105i0","master":"fwbr105i0","link":"fwpr105p0","linkinfo":{"info_kind":"veth"}},
            {"ifindex":14,"ifname":"tap106i0","master":"vmbr0","linkinfo":{"info_kind":"tun"}},
            {"ifindex":15,"ifname":"veth200i0","master":"vmbr0","link_index":2,"link_netnsid":0,"linkinfo":{"info_kind":"veth"}},
            {"ifindex":16,"ifname":"tap999","linkinfo":{"info_kind":"tun"}},
            {"ifindex":17,"ifname":"bond0.20","master":"vmbr0","linkinfo":{"info_kind":"vlan"}}
            ]"#,
        );
        let fdb = json(
            r#"[
            {"mac":"bc:24:11:00:01:05","ifname":"tap105i0","master":"fwbr105i0","state":""},
            {"mac":"bc:24:11:00:01:05","ifname":"fwpr105p0","master":"vmbr0","state":""},
            {"mac":"aa:aa:aa:aa:aa:aa","ifname":"tap105i0","master":"fwbr105i0","state":"permanent"},
            {"mac":"33:33:00:00:00:01","ifname":"tap106i0","flags":["self"],"state":"permanent"},
            {"mac":"bc:24:11:00:01:06","ifname":"tap106i0","master":"vmbr0"},
            {"mac":"01:00:5e:00:00:01","ifname":"tap106i0","master":"vmbr0"},
            {"mac":"bc:24:11:00:02:00","ifname":"veth200i0","master":"vmbr0"},
            {"mac":"00:11:22:33:44:55","ifname":"eno1","master":"vmbr0"}
            ]"#,
        );
        let neigh = json(
            r#"[
            {"dst":"192.0.2.105","dev":"vmbr0","lladdr":"bc:24:11:00:01:05","state":["REACHABLE"]},
            {"dst":"192.0.2.106","dev":"vmbr0","lladdr":"bc:24:11:00:01:06","state":["STALE"]},
            {"dst":"192.0.2.107","dev":"vmbr0","lladdr":"bc:24:11:00:01:06","state":["FAILED"]},
            {"dst":"192.0.2.254","dev":"vmbr0","lladdr":"00:11:22:33:44:55","state":["REACHABLE"]},
            {"dst":"2001:db8:1::105","dev":"vmbr0","lladdr":"bc:24:11:00:01:05","state":["STALE"]},
            {"dst":"fe80::be24:11ff:fe00:105","dev":"vmbr0","lladdr":"bc:24:11:00:01:05","state":["REACHABLE"]}
            ]"#,
        );
        let addrs =
            json(r#"[{"ifname":"vmbr0","addr_info":[{"local":"192.0.2.1","prefixlen":24}]}]"#);
        Inventory::from_json(&links, &fdb, &neigh, &addrs)
    }

    #[test]
    fn finds_guest_ports_not_plumbing() {
        let inv = proxmox();
        let names: Vec<&str> = inv.ports.values().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["tap105i0", "tap106i0", "veth200i0"]);
        assert_eq!(inv.ports[&10].bridge, "fwbr105i0");
        assert!(inv.bridges.contains(&3) && inv.bridges.contains(&11));
        assert!(inv.local_addrs.contains(&ip4(192, 0, 2, 1)));
    }

    #[test]
    fn maps_guest_macs_to_ips() {
        let inv = proxmox();
        assert_eq!(
            inv.ports[&10].macs,
            [parse_mac("bc:24:11:00:01:05").unwrap()]
        );
        // Its IPv6 address too, IPv4 first; never the link-local one.
        let v6: IpAddr = "2001:db8:1::105".parse().unwrap();
        assert_eq!(inv.ports[&10].ips, [ip4(192, 0, 2, 105), v6]);
        // Multicast and failed entries are ignored.
        assert_eq!(inv.ports[&14].macs.len(), 1);
        assert_eq!(inv.ports[&14].ips, [ip4(192, 0, 2, 106)]);
        assert!(inv.ports[&15].ips.is_empty());
    }

    #[test]
    fn narrows_to_named_vms() {
        let links = json(
            r#"[{"ifindex":3,"ifname":"vmbr0","linkinfo":{"info_kind":"bridge"}},
            {"ifindex":14,"ifname":"tap106i0","master":"vmbr0","linkinfo":{"info_kind":"tun"}},
            {"ifindex":18,"ifname":"tap107i0","master":"vmbr0","linkinfo":{"info_kind":"tun"}}]"#,
        );
        let fdb = json(r#"[{"mac":"bc:24:11:00:01:06","ifname":"tap106i0"}]"#);
        let neigh =
            json(r#"[{"dst":"192.0.2.106","lladdr":"bc:24:11:00:01:06","state":["STALE"]}]"#);
        let mut inv = Inventory::from_json(&links, &fdb, &neigh, &json("[]"));
        inv.narrow(&[]);
        assert_eq!(inv.ports.len(), 2, "no --vm-ip: every port");
        inv.narrow(&[ip4(192, 0, 2, 106)]);
        assert_eq!(inv.ports.keys().copied().collect::<Vec<_>>(), [14]);
    }

    /// The firewall bridge forgot the guest (its FDB entry aged out first), vmbr0
    /// still has it on fwpr105p0: the MAC leads down to the one tap below.
    #[test]
    fn descends_from_the_vm_bridge_into_the_firewall_bridge() {
        let links = json(
            r#"[
            {"ifindex":3,"ifname":"vmbr0","address":"02:00:00:00:01:01","linkinfo":{"info_kind":"bridge"}},
            {"ifindex":10,"ifname":"tap105i0","master":"fwbr105i0","address":"fe:00:00:00:00:10","linkinfo":{"info_kind":"tun"}},
            {"ifindex":11,"ifname":"fwbr105i0","address":"fe:00:00:00:00:11","linkinfo":{"info_kind":"bridge"}},
            {"ifindex":12,"ifname":"fwpr105p0","master":"vmbr0","link":"fwln105i0","address":"fe:00:00:00:00:12","linkinfo":{"info_kind":"veth"}},
            {"ifindex":13,"ifname":"fwln105i0","master":"fwbr105i0","link":"fwpr105p0","address":"fe:00:00:00:00:13","linkinfo":{"info_kind":"veth"}},
            {"ifindex":20,"ifname":"fwbr106i0","linkinfo":{"info_kind":"bridge"}},
            {"ifindex":21,"ifname":"fwpr106p0","master":"vmbr0","link":"fwln106i0","linkinfo":{"info_kind":"veth"}},
            {"ifindex":22,"ifname":"fwln106i0","master":"fwbr106i0","link":"fwpr106p0","linkinfo":{"info_kind":"veth"}},
            {"ifindex":23,"ifname":"tap106i0","master":"fwbr106i0","linkinfo":{"info_kind":"tun"}},
            {"ifindex":24,"ifname":"tap107i0","master":"fwbr106i0","linkinfo":{"info_kind":"tun"}}
            ]"#,
        );
        let fdb = json(
            r#"[
            {"mac":"bc:24:11:00:01:05","ifname":"fwpr105p0","master":"vmbr0","state":""},
            {"mac":"fe:00:00:00:00:11","ifname":"fwpr105p0","master":"vmbr0","state":""},
            {"mac":"bc:24:11:00:01:06","ifname":"fwpr106p0","master":"vmbr0","state":""}
            ]"#,
        );
        let neigh = json(
            r#"[{"dst":"192.0.2.105","dev":"vmbr0","lladdr":"bc:24:11:00:01:05","state":["STALE"]}]"#,
        );
        let inv = Inventory::from_json(&links, &fdb, &neigh, &json("[]"));
        let tap = &inv.ports[&10];
        assert_eq!(tap.macs, [parse_mac("bc:24:11:00:01:05").unwrap()]);
        assert_eq!(tap.ips, [ip4(192, 0, 2, 105)]);
        // Two taps below fwbr106i0: the MAC on fwpr106p0 could be either one's.
        assert!(inv.ports[&23].macs.is_empty() && inv.ports[&24].macs.is_empty());
    }

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(
            parse_mac("52:54:00:AB:cd:01"),
            Some([0x52, 0x54, 0, 0xab, 0xcd, 1])
        );
        assert_eq!(parse_mac("52:54:00:ab:cd"), None);
        assert_eq!(parse_mac("52:54:00:ab:cd:01:02"), None);
        assert_eq!(parse_mac("zz:54:00:ab:cd:01"), None);
        assert_eq!(
            format_mac(&[0x52, 0x54, 0, 0xab, 0xcd, 1]),
            "52:54:00:ab:cd:01"
        );
    }
}
