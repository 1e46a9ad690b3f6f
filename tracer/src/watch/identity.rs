//! A VM's identity as watch reports it — its MACs, IPv4 and IPv6 addresses, VMID,
//! name and VLAN — kept for as long as its port exists.
//!
//! The host's tables forget a quiet guest: its bridge FDB entry ages out (300 s by
//! default), a port that loses carrier has its entries flushed, a bridge without a
//! forwarding port loses its neighbour entries. Every Prometheus series of a VM
//! carries its identity as labels, so an identity that came and went would restart
//! the VM's counters as new series and make alerts grouped by VM flap. So it is
//! learned from everything that knows it, and then kept:
//!
//! - the bridge FDB, down through firewall bridges, and the neighbour table
//!   (`inventory`, re-read every interval);
//! - the hypervisor's configuration (Proxmox `netN:` MAC and cloud-init
//!   `ipconfigN`, libvirt domain XML, static DHCP hosts and dnsmasq leases), read
//!   at start and again whenever a new port appears;
//! - the source address of the VM's own dropped packets (tied to it by its MAC);
//! - its port's VLAN (`vlan`: the bridge's VLAN table, the VLAN device under the
//!   bridge), else the configuration's tag.
//!
//! The rule: each field (MACs, addresses, VMID, name, VLAN) is fixed at the first moment
//! it is known non-empty and never changes while the port exists (the addresses
//! of each family apart: a dual-stack guest's IPv6 address is often learned after
//! its IPv4 one, when it first speaks IPv6) — same ifindex, or
//! back under the same name within the run (a tap flap, a VM reboot). A field still
//! empty fills once, when something first knows it. A port back under its old name
//! with other MACs or another VMID is another VM and starts afresh.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use tracer_common::{DropKey, PacketInfo, WDIR_FROM_VM, WFLAG_VIA_CT};

use super::inventory::{guest_address, ips_of, parse_mac, Inventory, VmPort};
use crate::hostconfig::{self, ConfigDirs, VmNic};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub macs: Vec<[u8; 6]>,
    /// IPv4 ones first.
    pub ips: Vec<IpAddr>,
    pub vmid: Option<String>,
    pub vm_name: Option<String>,
    pub vlan: Option<u16>,
}

impl Identity {
    /// Fill the fields still empty from `seen`; known ones stay as they are.
    pub fn settle(&mut self, seen: &Identity) {
        if self.macs.is_empty() {
            self.macs.clone_from(&seen.macs);
        }
        for v6 in [false, true] {
            if !self.ips.iter().any(|i| i.is_ipv6() == v6) {
                let more = seen.ips.iter().filter(|i| i.is_ipv6() == v6);
                self.ips.extend(more);
            }
        }
        self.ips.sort();
        if self.vmid.is_none() {
            self.vmid.clone_from(&seen.vmid);
        }
        if self.vm_name.is_none() {
            self.vm_name.clone_from(&seen.vm_name);
        }
        if self.vlan.is_none() {
            self.vlan = seen.vlan;
        }
    }

    /// `seen` is another VM: both know MACs and share none, or both know a VMID
    /// and it differs.
    pub fn contradicts(&self, seen: &Identity) -> bool {
        let other_macs = !self.macs.is_empty()
            && !seen.macs.is_empty()
            && !seen.macs.iter().any(|m| self.macs.contains(m));
        let other_vm = matches!((&self.vmid, &seen.vmid), (Some(a), Some(b)) if a != b);
        other_macs || other_vm
    }

    fn apply_to(&self, port: &mut VmPort) {
        port.macs.clone_from(&self.macs);
        port.ips.clone_from(&self.ips);
        port.vmid.clone_from(&self.vmid);
        port.vm_name.clone_from(&self.vm_name);
        port.vlan = self.vlan;
    }
}

/// What watch remembers of one port name.
#[derive(Debug, Clone)]
struct Known {
    ifindex: u32,
    identity: Identity,
    /// None while the port exists; else the refresh it vanished at.
    gone_at: Option<u64>,
}

/// Ports that vanished are remembered by name for as many as this; beyond, the
/// longest gone is forgotten (hosts with churning veth names, e.g. containers).
const MAX_GONE: usize = 1024;

/// Every port's identity over the run.
pub struct Identities {
    dirs: Option<ConfigDirs>,
    nics: Vec<VmNic>,
    known: HashMap<String, Known>,
    refreshes: u64,
}

impl Identities {
    /// Read the hypervisor's configuration under `dirs` now (and on new ports).
    pub fn new(dirs: ConfigDirs) -> Self {
        Self {
            nics: hostconfig::read_all(&dirs),
            dirs: Some(dirs),
            known: HashMap::new(),
            refreshes: 0,
        }
    }

    /// With fixed configuration (tests).
    #[cfg(test)]
    pub fn with_nics(nics: Vec<VmNic>) -> Self {
        Self {
            dirs: None,
            nics,
            known: HashMap::new(),
            refreshes: 0,
        }
    }

    /// Give every port of a freshly read inventory its identity: what it is known
    /// as, completed by what the tables and the configuration say now.
    pub fn apply(&mut self, inv: &mut Inventory) {
        self.refreshes += 1;
        let new_port = inv.ports.values().any(|p| {
            self.known
                .get(&p.name)
                .is_none_or(|k| k.ifindex != p.ifindex || k.gone_at.is_some())
        });
        if new_port {
            if let Some(dirs) = &self.dirs {
                self.nics = hostconfig::read_all(dirs);
            }
        }
        for port in inv.ports.values_mut() {
            let seen = observe(port, &self.nics, &inv.neigh);
            let known = self.known.entry(port.name.clone()).or_insert(Known {
                ifindex: port.ifindex,
                identity: Identity::default(),
                gone_at: None,
            });
            let came_back = known.ifindex != port.ifindex || known.gone_at.is_some();
            if came_back && known.identity.contradicts(&seen) {
                known.identity = Identity::default();
            }
            known.ifindex = port.ifindex;
            known.gone_at = None;
            let mut seen = seen;
            // A MAC the tables forgot still finds its address in the neighbour table.
            for ip in ips_of(&inv.neigh, &known.identity.macs) {
                if !seen.ips.contains(&ip) {
                    seen.ips.push(ip);
                }
            }
            seen.ips.sort();
            known.identity.settle(&seen);
            known.identity.apply_to(port);
        }
        self.mark_gone(inv);
    }

    fn mark_gone(&mut self, inv: &Inventory) {
        let present: HashSet<&str> = inv.ports.values().map(|p| p.name.as_str()).collect();
        for (name, k) in &mut self.known {
            if k.gone_at.is_none() && !present.contains(name.as_str()) {
                k.gone_at = Some(self.refreshes);
            }
        }
        let gone = self.known.values().filter(|k| k.gone_at.is_some()).count();
        if gone <= MAX_GONE {
            return;
        }
        let mut oldest: Vec<(u64, String)> = self
            .known
            .iter()
            .filter_map(|(name, k)| Some((k.gone_at?, name.clone())))
            .collect();
        oldest.sort();
        for (_, name) in oldest.into_iter().take(gone - MAX_GONE) {
            self.known.remove(&name);
        }
    }

    /// A dropped packet the kernel tied to a VM by its source MAC tells the VM's
    /// address: fill it in when nothing else knew one of its family. Returns
    /// whether it did.
    pub fn learn_from_drop(
        &mut self,
        inv: &mut Inventory,
        key: &DropKey,
        pkt: &PacketInfo,
    ) -> bool {
        if key.dir != WDIR_FROM_VM || key.flags & WFLAG_VIA_CT != 0 {
            return false;
        }
        let src = pkt.src();
        if !guest_address(src) || inv.local_addrs.contains(&src) {
            return false;
        }
        let Some(port) = inv.ports.get_mut(&key.port) else {
            return false;
        };
        let Some(known) = self.known.get_mut(&port.name) else {
            return false;
        };
        if known
            .identity
            .ips
            .iter()
            .any(|i| i.is_ipv6() == src.is_ipv6())
        {
            return false;
        }
        known.identity.settle(&Identity {
            ips: vec![src],
            ..Identity::default()
        });
        known.identity.apply_to(port);
        true
    }
}

/// What is known about `port` now: the tables' MACs and addresses (already on the
/// port), and its NIC in the hypervisor's configuration.
fn observe(port: &VmPort, nics: &[VmNic], neigh: &HashMap<[u8; 6], Vec<IpAddr>>) -> Identity {
    let mut seen = Identity {
        macs: port.macs.clone(),
        ips: port.ips.clone(),
        vlan: port.vlan,
        ..Identity::default()
    };
    let Some(nic) = configured_nic(port, nics) else {
        return seen;
    };
    if let Some(mac) = parse_mac(&nic.mac) {
        if !seen.macs.contains(&mac) {
            seen.macs.push(mac);
        }
    }
    let v4 = nic.ips.iter().map(|i| IpAddr::V4(*i));
    let configured = v4.chain(nic.ips6.iter().map(|i| IpAddr::V6(*i)));
    for ip in configured.chain(ips_of(neigh, &seen.macs)) {
        if guest_address(ip) && !seen.ips.contains(&ip) {
            seen.ips.push(ip);
        }
    }
    seen.ips.sort();
    seen.vmid = Some(nic.vm_id.clone());
    seen.vm_name.clone_from(&nic.vm_name);
    // The host's own VLAN table wins: the configuration may not be applied yet.
    seen.vlan = port.vlan.or(nic.vlan);
    seen
}

/// The configured NIC behind `port`: the one naming it as its device (Proxmox's
/// `tapVMIDiN`, libvirt's `<target dev>`), else the one with a MAC the port has.
/// Only a single match counts: two VMs claiming one MAC name neither.
fn configured_nic<'a>(port: &VmPort, nics: &'a [VmNic]) -> Option<&'a VmNic> {
    let single = |found: Vec<&'a VmNic>| match found.as_slice() {
        [one] => Some(*one),
        _ => None,
    };
    let by_name: Vec<&VmNic> = nics
        .iter()
        .filter(|n| n.port.as_deref() == Some(port.name.as_str()))
        .collect();
    if !by_name.is_empty() {
        return single(by_name);
    }
    single(
        nics.iter()
            .filter(|n| parse_mac(&n.mac).is_some_and(|m| port.macs.contains(&m)))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, path::PathBuf};

    use tracer_common::{CLASS_ICMP, WDIR_TO_VM};

    use super::*;

    const MAC: [u8; 6] = [0xbc, 0x24, 0x11, 0, 1, 5];
    const OTHER_MAC: [u8; 6] = [0xbc, 0x24, 0x11, 0, 9, 9];

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    fn ip6(last: u16) -> IpAddr {
        IpAddr::from([0x2001, 0xdb8, 1, 0, 0, 0, 0, last])
    }

    fn ip4(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(192, 0, 2, last)
    }

    fn port(ifindex: u32, name: &str, macs: &[[u8; 6]], ips: &[IpAddr]) -> VmPort {
        VmPort {
            ifindex,
            name: name.into(),
            bridge: "vmbr0".into(),
            macs: macs.to_vec(),
            ips: ips.to_vec(),
            vmid: None,
            vm_name: None,
            vlan: None,
        }
    }

    /// An inventory as the tables say now, with a neighbour table.
    fn inv(ports: Vec<VmPort>, neigh: &[([u8; 6], IpAddr)]) -> Inventory {
        let mut inv = Inventory::default();
        for p in ports {
            inv.ports.insert(p.ifindex, p);
        }
        for (m, i) in neigh {
            inv.neigh.entry(*m).or_default().push(*i);
        }
        inv
    }

    fn nic(vmid: &str, name: &str, mac: &str, port: &str, ips: &[Ipv4Addr]) -> VmNic {
        VmNic {
            source: "proxmox-qemu",
            vm_id: vmid.into(),
            vm_name: Some(name.into()),
            nic: "net0".into(),
            mac: mac.into(),
            port: Some(port.into()),
            bridge: Some("vmbr0".into()),
            network: None,
            firewall: true,
            vlan: None,
            ips: ips.to_vec(),
            ips6: Vec::new(),
            config: PathBuf::from(format!("/etc/pve/qemu-server/{vmid}.conf")),
        }
    }

    fn drop_key(port: u32, dir: u8, flags: u8) -> DropKey {
        DropKey {
            location: 1,
            port,
            dev: port,
            reason: 6,
            class: CLASS_ICMP,
            dir,
            flags,
            _pad: 0,
        }
    }

    #[test]
    fn fields_fill_once_and_then_stay() {
        let mut id = Identity::default();
        id.settle(&Identity {
            macs: vec![MAC],
            ..Identity::default()
        });
        id.settle(&Identity {
            macs: vec![OTHER_MAC],
            ips: vec![ip(5)],
            ..Identity::default()
        });
        assert_eq!(id.macs, [MAC], "a known field keeps its first value");
        assert_eq!(id.ips, [ip(5)], "an empty field fills");
        id.settle(&Identity::default());
        assert_eq!(
            (id.macs.len(), id.ips.len()),
            (1, 1),
            "forgetting changes nothing"
        );
        id.settle(&Identity {
            ips: vec![ip(5), ip(6)],
            vmid: Some("105".into()),
            ..Identity::default()
        });
        assert_eq!(id.ips, [ip(5)], "no second address once the field is fixed");
        assert_eq!(id.vmid.as_deref(), Some("105"));
    }

    #[test]
    fn another_vm_is_told_by_its_macs_or_vmid() {
        let id = Identity {
            macs: vec![MAC],
            vmid: Some("105".into()),
            ..Identity::default()
        };
        let same = |macs: &[[u8; 6]], vmid: Option<&str>| Identity {
            macs: macs.to_vec(),
            vmid: vmid.map(str::to_string),
            ..Identity::default()
        };
        assert!(
            !id.contradicts(&same(&[], None)),
            "knowing nothing contradicts nothing"
        );
        assert!(!id.contradicts(&same(&[MAC, OTHER_MAC], Some("105"))));
        assert!(id.contradicts(&same(&[OTHER_MAC], None)));
        assert!(id.contradicts(&same(&[MAC], Some("106"))));
    }

    /// The FDB entry ages out, then the neighbour entry goes too: the port keeps
    /// what it was first known as.
    #[test]
    fn survives_the_tables_forgetting_the_guest() {
        let mut ids = Identities::with_nics(Vec::new());
        let mut now = inv(vec![port(7, "tap100i0", &[MAC], &[ip(100)])], &[]);
        ids.apply(&mut now);
        assert_eq!(now.ports[&7].ips, [ip(100)]);
        // FDB aged out, neighbour entry still there: nothing on the port any more.
        let mut later = inv(vec![port(7, "tap100i0", &[], &[])], &[(MAC, ip(100))]);
        ids.apply(&mut later);
        assert_eq!(later.ports[&7].macs, [MAC]);
        assert_eq!(later.ports[&7].ips, [ip(100)]);
        // Everything forgotten.
        let mut empty = inv(vec![port(7, "tap100i0", &[], &[])], &[]);
        ids.apply(&mut empty);
        assert_eq!(empty.ports[&7].macs, [MAC]);
        assert_eq!(empty.ports[&7].ips, [ip(100)]);
    }

    /// A MAC first known alone (bridged guest, no neighbour entry yet) finds its
    /// address later through the neighbour table, even after its FDB entry aged.
    #[test]
    fn a_known_mac_finds_its_address_later() {
        let mut ids = Identities::with_nics(Vec::new());
        let mut first = inv(vec![port(7, "tap100i0", &[MAC], &[])], &[]);
        ids.apply(&mut first);
        assert!(first.ports[&7].ips.is_empty());
        let mut later = inv(vec![port(7, "tap100i0", &[], &[])], &[(MAC, ip(100))]);
        ids.apply(&mut later);
        assert_eq!(later.ports[&7].ips, [ip(100)]);
    }

    #[test]
    fn a_flapped_or_recreated_port_keeps_its_identity() {
        let mut ids = Identities::with_nics(Vec::new());
        let mut first = inv(vec![port(7, "tap100i0", &[MAC], &[ip(100)])], &[]);
        ids.apply(&mut first);
        // Gone for a moment, back under the same name with a new ifindex and
        // nothing in the tables yet.
        ids.apply(&mut inv(vec![], &[]));
        let mut back = inv(vec![port(9, "tap100i0", &[], &[])], &[]);
        ids.apply(&mut back);
        assert_eq!(back.ports[&9].macs, [MAC]);
        assert_eq!(back.ports[&9].ips, [ip(100)]);
        // The name reused by another guest (libvirt reuses vnetN): afresh.
        ids.apply(&mut inv(vec![], &[]));
        let mut other = inv(vec![port(11, "tap100i0", &[OTHER_MAC], &[ip(77)])], &[]);
        ids.apply(&mut other);
        assert_eq!(other.ports[&11].macs, [OTHER_MAC]);
        assert_eq!(other.ports[&11].ips, [ip(77)]);
    }

    #[test]
    fn configuration_names_the_vm_and_its_address() {
        let mut web = nic("105", "web01", "BC:24:11:00:01:05", "tap105i0", &[ip4(5)]);
        // cloud-init's ip6= (a link-local one would name no VM: left out).
        web.ips6 = vec!["2001:db8:1::5".parse().unwrap(), "fe80::5".parse().unwrap()];
        let nics = vec![
            web,
            nic("106", "db01", "bc:24:11:00:09:09", "tap106i0", &[]),
        ];
        let mut ids = Identities::with_nics(nics);
        // Before the guest has sent anything: only the configuration knows it.
        let mut now = inv(
            vec![
                port(10, "tap105i0", &[], &[]),
                port(11, "vnet3", &[OTHER_MAC], &[]),
            ],
            &[(OTHER_MAC, ip(6))],
        );
        ids.apply(&mut now);
        let p = &now.ports[&10];
        assert_eq!(p.macs, [MAC]);
        assert_eq!(p.ips, [ip(5), ip6(5)]);
        assert_eq!(p.vmid.as_deref(), Some("105"));
        assert_eq!(p.vm_name.as_deref(), Some("web01"));
        // No config names vnet3, but its MAC is db01's.
        let q = &now.ports[&11];
        assert_eq!(q.vm_name.as_deref(), Some("db01"));
        assert_eq!(q.ips, [ip(6)]);
    }

    /// The host's VLAN (PVID, VLAN device) first, the configured tag when the
    /// host knows none; then fixed, as every label is while the port exists.
    #[test]
    fn vlan_from_the_host_else_the_configuration_then_fixed() {
        let tagged = |vlan| VmNic {
            vlan,
            ..nic("105", "web01", "bc:24:11:00:01:05", "tap105i0", &[])
        };
        let mut ids = Identities::with_nics(vec![tagged(Some(20))]);
        let mut now = inv(vec![port(10, "tap105i0", &[MAC], &[])], &[]);
        ids.apply(&mut now);
        assert_eq!(now.ports[&10].vlan, Some(20), "the configuration's tag");
        let host_says = || {
            let mut i = inv(vec![port(10, "tap105i0", &[MAC], &[])], &[]);
            i.ports.get_mut(&10).unwrap().vlan = Some(30);
            i
        };
        let mut later = host_says();
        ids.apply(&mut later);
        assert_eq!(later.ports[&10].vlan, Some(20), "fixed once known");

        let mut ids = Identities::with_nics(vec![tagged(Some(20))]);
        let mut first = host_says();
        ids.apply(&mut first);
        assert_eq!(first.ports[&10].vlan, Some(30), "the host wins");
        let mut untagged = Identities::with_nics(vec![tagged(None)]);
        let mut plain = inv(vec![port(10, "tap105i0", &[MAC], &[])], &[]);
        untagged.apply(&mut plain);
        assert_eq!(plain.ports[&10].vlan, None);
    }

    #[test]
    fn one_mac_claimed_by_two_configs_names_neither() {
        let nics = vec![
            nic("105", "web01", "bc:24:11:00:01:05", "tap105i0", &[]),
            nic("205", "clone", "bc:24:11:00:01:05", "tap205i0", &[]),
        ];
        let mut ids = Identities::with_nics(nics);
        let mut now = inv(vec![port(12, "vnet0", &[MAC], &[])], &[]);
        ids.apply(&mut now);
        assert_eq!(now.ports[&12].vmid, None);
    }

    #[test]
    fn the_vms_own_dropped_packets_give_its_address() {
        let mut ids = Identities::with_nics(Vec::new());
        let mut now = inv(vec![port(7, "tap100i0", &[MAC], &[])], &[]);
        now.local_addrs.insert(ip(1));
        ids.apply(&mut now);
        let pkt = |src: IpAddr| {
            let mut p = PacketInfo::default();
            let dst = if src.is_ipv6() {
                ip6(0xffff)
            } else {
                IpAddr::from([203, 0, 113, 8])
            };
            p.set_addrs(src, dst);
            p
        };
        // Not the VM's own source: replies to it, NATed traffic, DHCP, the host.
        assert!(!ids.learn_from_drop(&mut now, &drop_key(7, WDIR_TO_VM, 0), &pkt(ip(100))));
        assert!(!ids.learn_from_drop(
            &mut now,
            &drop_key(7, WDIR_FROM_VM, WFLAG_VIA_CT),
            &pkt(ip(100))
        ));
        let zero = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        assert!(!ids.learn_from_drop(&mut now, &drop_key(7, WDIR_FROM_VM, 0), &pkt(zero)));
        assert!(!ids.learn_from_drop(&mut now, &drop_key(7, WDIR_FROM_VM, 0), &pkt(ip(1))));
        assert!(!ids.learn_from_drop(&mut now, &drop_key(99, WDIR_FROM_VM, 0), &pkt(ip(100))));
        assert!(ids.learn_from_drop(&mut now, &drop_key(7, WDIR_FROM_VM, 0), &pkt(ip(100))));
        assert_eq!(now.ports[&7].ips, [ip(100)]);
        // Fixed from now on, and kept when the tables know nothing.
        assert!(!ids.learn_from_drop(&mut now, &drop_key(7, WDIR_FROM_VM, 0), &pkt(ip(101))));
        let mut later = inv(vec![port(7, "tap100i0", &[], &[])], &[]);
        ids.apply(&mut later);
        assert_eq!(later.ports[&7].ips, [ip(100)]);
        // Its first IPv6 packet gives its IPv6 address, once; link-local never.
        let link_local: IpAddr = "fe80::5054:ff:fe00:100".parse().unwrap();
        let v6 = drop_key(7, WDIR_FROM_VM, 0);
        assert!(!ids.learn_from_drop(&mut later, &v6, &pkt(link_local)));
        assert!(ids.learn_from_drop(&mut later, &v6, &pkt(ip6(0x100))));
        assert!(!ids.learn_from_drop(&mut later, &v6, &pkt(ip6(0x101))));
        assert_eq!(later.ports[&7].ips, [ip(100), ip6(0x100)]);
    }

    /// A dual-stack guest's IPv6 address reaches the neighbour table after its
    /// IPv4 one (it speaks IPv6 later): it joins the identity, the IPv4 one stays.
    #[test]
    fn each_family_fills_once() {
        let mut ids = Identities::with_nics(Vec::new());
        let mut first = inv(vec![port(7, "tap100i0", &[MAC], &[ip(100)])], &[]);
        ids.apply(&mut first);
        let neigh = [(MAC, ip(100)), (MAC, ip6(0x100)), (MAC, ip(99))];
        let mut later = inv(vec![port(7, "tap100i0", &[MAC], &[])], &neigh);
        ids.apply(&mut later);
        assert_eq!(later.ports[&7].ips, [ip(100), ip6(0x100)]);
        let mut more = inv(vec![port(7, "tap100i0", &[MAC], &[])], &[(MAC, ip6(0x200))]);
        ids.apply(&mut more);
        assert_eq!(more.ports[&7].ips, [ip(100), ip6(0x100)]);
    }

    #[test]
    fn vanished_ports_are_remembered_within_bounds() {
        let mut ids = Identities::with_nics(Vec::new());
        for i in 0..(MAX_GONE as u32 + 10) {
            let mut one = inv(vec![port(i + 1, &format!("veth{i}"), &[MAC], &[])], &[]);
            ids.apply(&mut one);
        }
        ids.apply(&mut inv(vec![], &[]));
        assert_eq!(ids.known.len(), MAX_GONE);
        assert!(
            !ids.known.contains_key("veth0"),
            "the longest gone is forgotten"
        );
    }
}
