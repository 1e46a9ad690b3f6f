//! Where the guest's packets go on this host: VM IP → VM port (neighbour table +
//! bridge FDB) → any firewall bridges and veth pairs in between (Proxmox's
//! `fwbrNiM` joined to `vmbrN` by `fwlnNiM`/`fwprNpM`) → the bridge that routes →
//! uplink (the route to the destination).
//!
//! Read from the host model ([`crate::host::Host`]: the kernel's own tables, in
//! the network namespace pathtrace runs in). Nothing here assumes names or
//! addresses: every fact comes from those tables. Addresses are of either
//! family: an IPv6 guest is found by the host's NDP entries as an IPv4 one by
//! its ARP entries.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::MetadataExt,
};

use anyhow::{anyhow, bail, Context, Result};

use crate::{
    host::{self, Host, Route, RouteKind, MAX_CHAIN},
    hostconfig::VmNic,
};

pub mod bridged;
pub mod down;
mod guest_route;
mod locate;
pub use locate::{candidates, describe_candidates, locate_vm, Evidence, Location};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    pub index: u32,
    pub name: String,
}

/// What a traced interface is to the guest's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Port,
    /// Plumbing between the VM port and the bridge that routes: a firewall bridge
    /// or a veth end joining two bridges. Its stage is `bridge`.
    Hop,
    Bridge,
    Uplink,
}

/// One interface between the VM port and the bridge that routes, in path order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHop {
    pub iface: Iface,
    /// A bridge (no TC program: only frames for the host itself cross its hooks);
    /// otherwise a veth end, watched with TC.
    pub is_bridge: bool,
}

#[derive(Debug, Clone)]
pub struct Topology {
    pub vm_ip: IpAddr,
    pub vm_mac: Option<String>,
    pub dst: IpAddr,
    /// How the port was found: known, named, configured, or guessed (then the
    /// operator is told so).
    pub evidence: Evidence,
    /// The VM's port (tap/vnet) on this host. When the bridge has forgotten the
    /// guest's MAC (FDB entry aged out), every port of its bridge is a candidate and
    /// the one its requests arrive on is the port.
    pub ports: Vec<Iface>,
    /// Interfaces between the port(s) and `bridge`, in path order (firewall
    /// bridges, veth pairs); empty on a plain bridge.
    pub chain: Vec<ChainHop>,
    /// The bridge that carries the guest's traffic into the host's IP stack (the
    /// top of the chain), if any (routed setups have none).
    pub bridge: Option<Iface>,
    /// The interface the route to `dst` leaves by; None when `dst` is local or
    /// unroutable, or reached through the guest's own bridge.
    pub uplink: Option<Iface>,
    /// The next hop of the route to `dst` (for IPv6 often the router's
    /// link-local address).
    pub gateway: Option<IpAddr>,
    /// The route lookup failed outright (no route to `dst`).
    pub unroutable: bool,
    /// `dst` is an address of this host (the guest talks to the hypervisor itself).
    pub dst_local: bool,
    /// `dst` is on the guest's own bridge (another guest): its packets are bridged,
    /// not routed.
    pub bridged: bool,
    /// The VM LAN as configured on the bridge (or port), e.g. 192.0.2.0/24
    /// (of the guest's family).
    pub vm_subnet: Option<(IpAddr, u8)>,
    /// Addresses of the uplink, of the guest's family.
    pub uplink_addrs: Vec<IpAddr>,
    /// Inode of the network namespace everything above lives in.
    pub netns_inum: u32,
    /// Every interface of this namespace by index (names drop locations).
    pub names: HashMap<u32, String>,
    /// MTU of every interface by index.
    pub mtus: HashMap<u32, u32>,
    /// The bridge each bridge port belongs to, by the port's index.
    pub masters: HashMap<u32, String>,
    /// Bridged mode: the guest's frames to `dst` leave by a port of its bridge
    /// toward a router on the LAN; the host routes none of them.
    pub lan: Option<bridged::Lan>,
    /// The devices under the path's way out, which the frames really leave by:
    /// a bond's slaves, a VLAN device's lower device (not a bridge), each with
    /// the device above it by name. Watched like the uplink.
    pub lowers: Vec<(Iface, String)>,
}

impl Topology {
    /// Discover the path. `iface` overrides the VM port when given; the
    /// hypervisor's configuration (`nics`) names it when the host's tables cannot
    /// (the guest has not talked yet).
    pub fn discover(
        host: &Host,
        vm_ip: IpAddr,
        dst: IpAddr,
        iface: Option<&str>,
        nics: &[VmNic],
    ) -> Result<Self> {
        let location = match iface {
            Some(name) => Location::named(name),
            // Bridged mode: the host never talks to the guest, so only its
            // first request can say which port is the VM's.
            // Routed/proxy-NDP: a host route to the bridge names where it lives.
            None => locate_vm(host, vm_ip, nics).or_else(|e| {
                bridged::first_packet_location(host, vm_ip, dst)
                    .or_else(|| guest_route::host_route_location(host, vm_ip))
                    .ok_or(e)
            })?,
        };
        Self::for_ports(host, vm_ip, dst, location)
    }

    /// The path from the given VM port(s).
    pub fn for_ports(host: &Host, vm_ip: IpAddr, dst: IpAddr, location: Location) -> Result<Self> {
        let Location {
            ports: port_names,
            mac: vm_mac,
            evidence,
        } = location;
        let ports = port_names
            .iter()
            .map(|n| iface_by_name(host, n).ok_or_else(|| anyhow!("interface {n} does not exist")))
            .collect::<Result<Vec<_>>>()?;
        let (chain, bridge) = chain_up(host, &port_names);
        let inbound = bridge.as_ref().unwrap_or(&ports[0]).name.clone();
        let route = route_to(host, dst, vm_ip, &inbound);
        let mut topo = Topology {
            evidence,
            vm_ip,
            vm_mac,
            dst,
            ports,
            chain,
            bridge,
            uplink: None,
            gateway: None,
            unroutable: route.is_none(),
            dst_local: false,
            bridged: false,
            vm_subnet: None,
            uplink_addrs: Vec::new(),
            netns_inum: current_netns_inum()?,
            names: host
                .links
                .iter()
                .map(|l| (l.index, l.name.clone()))
                .collect(),
            mtus: host.links.iter().map(|l| (l.index, l.mtu)).collect(),
            masters: host
                .links
                .iter()
                .filter_map(|l| Some((l.index, host.name_of(l.master?)?.to_string())))
                .collect(),
            lan: None,
            lowers: Vec::new(),
        };
        if let Some(r) = route {
            topo.apply_route(host, &r);
        }
        if let (true, Some(gw), Some(b)) = (topo.bridged, topo.gateway, &topo.bridge) {
            topo.lan = Some(bridged::lan_of(host, &b.name, gw, &port_names));
        }
        topo.lowers = lowers_of(host, &topo.ways_out());
        topo.vm_subnet = subnet_of(host, &inbound, vm_ip);
        Ok(topo)
    }

    fn apply_route(&mut self, host: &Host, route: &Route) {
        self.dst_local = route.kind == RouteKind::Local;
        self.gateway = route.next_hop();
        let dev = host.route_dev(route).unwrap_or_default();
        let inbound = self.inbound().name.clone();
        self.bridged = !self.dst_local && self.bridge.is_some() && dev == inbound;
        if !self.dst_local && dev != inbound && !dev.is_empty() {
            self.uplink = iface_by_name(host, dev);
            self.uplink_addrs = addrs_of(host, dev, self.vm_ip)
                .into_iter()
                .map(|(a, _)| a)
                .collect();
        }
    }

    /// The guest's IPv4 address (unspecified for an IPv6 guest): for what
    /// knows IPv4 only (the doctor's IPv4 checks).
    pub fn vm_ip4(&self) -> Ipv4Addr {
        v4_or_unspecified(self.vm_ip)
    }

    /// The destination as IPv4 (unspecified for an IPv6 one).
    pub fn dst4(&self) -> Ipv4Addr {
        v4_or_unspecified(self.dst)
    }

    pub fn is_v6(&self) -> bool {
        self.vm_ip.is_ipv6()
    }

    /// Where the guest's packets enter the host's IP stack: its bridge, or its port
    /// in routed setups.
    pub fn inbound(&self) -> &Iface {
        self.bridge.as_ref().unwrap_or(&self.ports[0])
    }

    /// The devices the guest's traffic leaves the host by: the uplink, or in
    /// bridged mode the bridge's port(s) toward the LAN.
    fn ways_out(&self) -> Vec<Iface> {
        let lan = self.lan.iter().flat_map(|l| l.ports.iter().cloned());
        self.uplink.iter().cloned().chain(lan).collect()
    }

    /// The device above `ifindex` when it is a bond slave or a VLAN device's
    /// lower device on the way out (`bond0` for `eno1`).
    pub fn upper_of(&self, ifindex: u32) -> Option<&str> {
        self.lowers
            .iter()
            .find(|(l, _)| l.index == ifindex)
            .map(|(_, u)| u.as_str())
    }

    /// The interfaces to attach TC programs to, each with its role, in path order.
    pub fn hooks(&self) -> Vec<(Iface, Role)> {
        let mut hooks: Vec<(Iface, Role)> =
            self.ports.iter().map(|p| (p.clone(), Role::Port)).collect();
        for h in self.chain.iter().filter(|h| !h.is_bridge) {
            hooks.push((h.iface.clone(), Role::Hop));
        }
        if let Some(b) = &self.bridge {
            hooks.push((b.clone(), Role::Bridge));
        }
        if let Some(u) = &self.uplink {
            hooks.push((u.clone(), Role::Uplink));
        }
        // Bridged mode: the bridge port(s) toward the LAN's router.
        for p in self.lan.iter().flat_map(|l| &l.ports) {
            hooks.push((p.clone(), Role::Uplink));
        }
        // Below them: the slave a bond sends by, the NIC under a VLAN device.
        for (l, _) in &self.lowers {
            hooks.push((l.clone(), Role::Uplink));
        }
        hooks
    }

    /// A VM port (or its firewall plumbing) came back under a new index (VM
    /// reboot, migration back).
    pub fn port_recreated(&mut self, port: &Iface) {
        let chain = self.chain.iter_mut().map(|h| &mut h.iface);
        for p in self
            .ports
            .iter_mut()
            .chain(chain)
            .filter(|p| p.name == port.name)
        {
            if let Some(m) = self.masters.get(&p.index).cloned() {
                self.masters.insert(port.index, m);
            }
            p.index = port.index;
        }
        self.names.insert(port.index, port.name.clone());
    }

    /// Every interface on the path with its role: the hooks plus the firewall
    /// bridges (drops happen there even though no TC program runs on them).
    pub fn roles(&self) -> HashMap<u32, Role> {
        let bridges = self.chain.iter().filter(|h| h.is_bridge);
        let mut roles: HashMap<u32, Role> = bridges.map(|h| (h.iface.index, Role::Hop)).collect();
        roles.extend(self.hooks().into_iter().map(|(i, r)| (i.index, r)));
        roles
    }

    /// The firewall bridge (a bridge of the chain, below the one that routes)
    /// that `ifindex` is a port of.
    pub fn firewall_bridge_of(&self, ifindex: u32) -> Option<String> {
        let master = self.masters.get(&ifindex)?;
        self.chain
            .iter()
            .any(|h| h.is_bridge && &h.iface.name == master)
            .then(|| master.clone())
    }

    /// `ifindex` is a bridge device on the path (the VM bridge or a firewall
    /// bridge), not a port of one.
    pub fn is_bridge_dev(&self, ifindex: u32) -> bool {
        self.bridge.as_ref().is_some_and(|b| b.index == ifindex)
            || self
                .chain
                .iter()
                .any(|h| h.is_bridge && h.iface.index == ifindex)
    }

    pub fn role_of(&self, ifindex: u32) -> Option<Role> {
        self.roles().get(&ifindex).copied()
    }

    /// Names of the path's interfaces from the VM port to the uplink, for people.
    pub fn path_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.ports.iter().map(|p| p.name.clone()).collect();
        names.extend(self.chain.iter().map(|h| h.iface.name.clone()));
        names.extend(self.bridge.iter().map(|b| b.name.clone()));
        names.extend(self.uplink.iter().map(|u| u.name.clone()));
        names.extend(
            self.lan
                .iter()
                .map(|l| l.port_names())
                .filter(|n| !n.is_empty()),
        );
        names
    }

    pub fn name_of(&self, ifindex: u32) -> Option<&str> {
        self.names.get(&ifindex).map(String::as_str)
    }
}

/// STP state of a bridge port (`forwarding`, `blocking`, `disabled`, ...) as it
/// is now: read fresh, for a verdict.
pub fn port_state_now(port: &str) -> Option<String> {
    host::link_now(port)?.port_state.map(|s| s.word())
}

/// Operational state of an interface (`UP`, `DOWN`, `LOWERLAYERDOWN`, ...) as it
/// is now: read fresh, for a verdict.
pub fn oper_state_now(dev: &str) -> Option<String> {
    Some(host::link_now(dev)?.operstate)
}

/// The bond slaves and VLAN lower devices under `outs` (a VLAN device on a
/// bond: the bond and its slaves), each with the device above it. A bridge
/// under a VLAN device (`vmbr0.20`) is not followed: it is a path of its own.
fn lowers_of(host: &Host, outs: &[Iface]) -> Vec<(Iface, String)> {
    let mut out: Vec<(Iface, String)> = Vec::new();
    let mut todo: Vec<String> = outs.iter().map(|i| i.name.clone()).collect();
    while let Some(name) = todo.pop() {
        let Some(link) = host.link(&name) else {
            continue;
        };
        let below: Vec<&host::Link> = match () {
            _ if link.is_bond() => host.slaves_of(&name),
            _ if link.is_kind("vlan") => link
                .peer
                .and_then(|i| host.link_at(i))
                .filter(|l| !l.is_bridge())
                .into_iter()
                .collect(),
            _ => Vec::new(),
        };
        for l in below {
            if out.len() < 8 && !out.iter().any(|(i, _)| i.index == l.index) {
                out.push((
                    Iface {
                        index: l.index,
                        name: l.name.clone(),
                    },
                    name.clone(),
                ));
                todo.push(l.name.clone());
            }
        }
    }
    out
}

fn iface_by_name(host: &Host, name: &str) -> Option<Iface> {
    Some(Iface {
        index: host.index_of(name)?,
        name: name.to_string(),
    })
}

/// The bridge whose own subnet holds `vm_ip`, and every port below it: where the
/// VM must be when the host's tables have forgotten it (a port that lost carrier
/// takes the bridge's neighbour entries with it).
pub fn subnet_ports(host: &Host, vm_ip: IpAddr) -> Option<(String, Vec<String>)> {
    let (bridge, _) = locate::subnet_bridge(host, vm_ip)?;
    let ports = host.leaf_ports(&bridge, None, 0);
    Some((bridge, ports))
}

/// The VM's port and MAC: the neighbour entry for the VM IP names the MAC and the
/// L3 interface (a bridge, or the port itself in routed setups); on a bridge the
/// FDB says which port that MAC was learned on, and through veth pairs into
/// firewall bridges, on which port there. If an FDB entry aged out, every port
/// below that bridge is a candidate. None when no neighbour entry knows the IP.
type Found = (Vec<String>, Option<String>);
fn find_vm_ports(host: &Host, vm_ip: IpAddr) -> Result<Option<Found>> {
    let Some(entry) = host.neighbours_of(vm_ip).find(|n| n.resolved()) else {
        return Ok(None);
    };
    let dev = host.name_of(entry.index).unwrap_or_default().to_string();
    let mac = entry.mac.clone().unwrap_or_default();
    if !host.is_bridge(&dev) {
        return Ok(Some((vec![dev], Some(mac))));
    }
    let ports = ports_for_mac(host, &dev, &mac);
    if ports.is_empty() {
        bail!("VM {vm_ip} ({mac}) is known on bridge {dev}, which has no ports");
    }
    Ok(Some((ports, Some(mac))))
}

/// The port(s) below `bridge` where `mac` lives, descending through veth pairs into
/// lower bridges (firewall bridges). Ask the FDB at each level.
pub(crate) fn ports_for_mac(host: &Host, bridge: &str, mac: &str) -> Vec<String> {
    let (mut bridge, mut came_by) = (bridge.to_string(), None::<String>);
    for _ in 0..MAX_CHAIN {
        let Some(port) = host.fdb_port(&bridge, mac, came_by.as_deref()) else {
            return host.leaf_ports(&bridge, came_by.as_deref(), 0);
        };
        match host.lower_bridge(&port, &bridge) {
            Some((peer, lower)) => (bridge, came_by) = (lower, Some(peer)),
            None => return vec![port],
        }
    }
    Vec::new()
}

/// From the VM port(s) up to the bridge that routes: each port's bridge, and while
/// that bridge is a firewall bridge — no IPv4 address of its own, and no port but
/// the one we came by and one veth to another bridge — that veth pair and the
/// next bridge. Returns the hops in between and the top bridge.
pub(crate) fn chain_up(host: &Host, ports: &[String]) -> (Vec<ChainHop>, Option<Iface>) {
    let addressed = host.addressed_devices();
    let mut hops: Vec<ChainHop> = Vec::new();
    let mut top = None;
    for port in ports {
        let (chain, bridge) = chain_of(host, port, &addressed);
        for h in chain {
            if !hops.contains(&h) {
                hops.push(h);
            }
        }
        top = top.or(bridge);
    }
    (hops, top)
}

fn chain_of(
    host: &Host,
    port: &str,
    addressed: &HashSet<String>,
) -> (Vec<ChainHop>, Option<Iface>) {
    let mut hops = Vec::new();
    let Some(mut bridge) = host.master_of(port).map(str::to_string) else {
        return (hops, None);
    };
    let mut came_by = port.to_string();
    for _ in 0..MAX_CHAIN {
        if addressed.contains(&bridge) {
            break;
        }
        let others: Vec<String> = host
            .ports_of(&bridge)
            .into_iter()
            .filter(|p| *p != came_by)
            .collect();
        let [down_end] = others.as_slice() else {
            break;
        };
        let Some((up_end, upper)) = host.lower_bridge(down_end, &bridge) else {
            break;
        };
        for (name, is_bridge) in [(&bridge, true), (down_end, false), (&up_end, false)] {
            if let Some(iface) = iface_by_name(host, name) {
                hops.push(ChainHop { iface, is_bridge });
            }
        }
        came_by = up_end;
        bridge = upper;
    }
    (hops, iface_by_name(host, &bridge))
}

/// The route the host would use to forward the guest's packet to `dst`; falls back
/// to a plain lookup when the forwarding lookup is refused (e.g. forwarding off).
fn route_to(host: &Host, dst: IpAddr, vm_ip: IpAddr, inbound: &str) -> Option<Route> {
    [Some((vm_ip, inbound)), None].into_iter().find_map(|from| {
        host.route_lookup(dst, from)
            .filter(|r| r.kind != RouteKind::Refused)
    })
}

/// The addresses of `dev` of `like`'s family, with their prefix lengths.
fn addrs_of(host: &Host, dev: &str, like: IpAddr) -> Vec<(IpAddr, u8)> {
    let Some(index) = host.index_of(dev) else {
        return Vec::new();
    };
    host.addrs
        .iter()
        .filter(|a| a.index == index && a.addr.is_ipv6() == like.is_ipv6())
        .map(|a| (a.addr, a.prefix))
        .collect()
}

/// The configured subnet on `dev` that contains `ip`, as (network, prefix length).
fn subnet_of(host: &Host, dev: &str, ip: IpAddr) -> Option<(IpAddr, u8)> {
    addrs_of(host, dev, ip)
        .into_iter()
        .map(|(a, len)| (net_of(a, len), len))
        .find(|(net, len)| net_of(ip, *len) == *net)
}

pub fn network(ip: Ipv4Addr, len: u8) -> Ipv4Addr {
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - len.min(32) as u32)
    };
    Ipv4Addr::from(u32::from(ip) & mask)
}

/// The network of `ip`/`len`, of either family.
pub fn net_of(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => IpAddr::V4(network(a, len)),
        IpAddr::V6(a) => {
            let mask = match len {
                0 => 0,
                n => u128::MAX << (128 - u32::from(n.min(128))),
            };
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

fn v4_or_unspecified(ip: IpAddr) -> Ipv4Addr {
    match ip {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
    }
}

pub(crate) fn current_netns_inum() -> Result<u32> {
    let meta = std::fs::metadata("/proc/self/ns/net").context("reading /proc/self/ns/net")?;
    Ok(meta.ino() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_masks() {
        let ip: Ipv4Addr = "192.0.2.100".parse().unwrap();
        assert_eq!(network(ip, 24), Ipv4Addr::new(192, 0, 2, 0));
        assert_eq!(network(ip, 0), Ipv4Addr::new(0, 0, 0, 0));
        assert_eq!(network(ip, 32), ip);
        let ip6: IpAddr = "2001:db8:1::100".parse().unwrap();
        assert_eq!(net_of(ip6, 64), "2001:db8:1::".parse::<IpAddr>().unwrap());
        assert_eq!(net_of(ip6, 0), "::".parse::<IpAddr>().unwrap());
        assert_eq!(net_of(ip6, 128), ip6);
    }

    /// Proxmox with the firewall on: tap105i0 in fwbr105i0, joined to vmbr0 by
    /// fwln105i0/fwpr105p0; a second VM's chain hangs off the same vmbr0.
    fn proxmox_links() -> Host {
        Host::from_links(&serde_json::from_str(
            r#"[{"ifindex":2,"ifname":"eth0","master":"vmbr0","linkinfo":{"info_kind":"veth"}},
                {"ifindex":3,"ifname":"vmbr0","linkinfo":{"info_kind":"bridge"}},
                {"ifindex":10,"ifname":"tap105i0","master":"fwbr105i0","linkinfo":{"info_kind":"tun"}},
                {"ifindex":11,"ifname":"fwbr105i0","linkinfo":{"info_kind":"bridge"}},
                {"ifindex":12,"ifname":"fwpr105p0","master":"vmbr0","link":"fwln105i0","linkinfo":{"info_kind":"veth"}},
                {"ifindex":13,"ifname":"fwln105i0","master":"fwbr105i0","link":"fwpr105p0","linkinfo":{"info_kind":"veth"}},
                {"ifindex":20,"ifname":"tap106i0","master":"fwbr106i0","linkinfo":{"info_kind":"tun"}},
                {"ifindex":21,"ifname":"fwbr106i0","linkinfo":{"info_kind":"bridge"}},
                {"ifindex":22,"ifname":"fwpr106p0","master":"vmbr0","link":"fwln106i0","linkinfo":{"info_kind":"veth"}},
                {"ifindex":23,"ifname":"fwln106i0","master":"fwbr106i0","link":"fwpr106p0","linkinfo":{"info_kind":"veth"}},
                {"ifindex":30,"ifname":"tap107i0","master":"vmbr0","linkinfo":{"info_kind":"tun"}}]"#,
        )
        .unwrap())
    }

    #[test]
    fn follows_the_firewall_bridge_up_to_the_routing_bridge() {
        let host = proxmox_links();
        let addressed = HashSet::from(["vmbr0".to_string()]);
        let (chain, top) = chain_of(&host, "tap105i0", &addressed);
        let names: Vec<&str> = chain.iter().map(|h| h.iface.name.as_str()).collect();
        assert_eq!(names, ["fwbr105i0", "fwln105i0", "fwpr105p0"]);
        assert!(chain[0].is_bridge && !chain[1].is_bridge);
        assert_eq!(top.map(|b| b.name).as_deref(), Some("vmbr0"));
        // Without an address on vmbr0 it still stops there: two VMs hang below it.
        let (chain, top) = chain_of(&host, "tap105i0", &HashSet::new());
        assert_eq!(chain.len(), 3);
        assert_eq!(top.map(|b| b.name).as_deref(), Some("vmbr0"));
        // A tap straight on vmbr0 has no chain.
        let (chain, top) = chain_of(&host, "tap107i0", &addressed);
        assert!(chain.is_empty());
        assert_eq!(top.map(|b| b.name).as_deref(), Some("vmbr0"));
    }

    #[test]
    fn candidate_ports_descend_into_firewall_bridges() {
        let host = proxmox_links();
        let mut ports = host.leaf_ports("vmbr0", None, 0);
        ports.sort();
        assert_eq!(ports, ["eth0", "tap105i0", "tap106i0", "tap107i0"]);
        assert_eq!(
            host.lower_bridge("fwpr105p0", "vmbr0"),
            Some(("fwln105i0".into(), "fwbr105i0".into()))
        );
        assert_eq!(host.lower_bridge("tap107i0", "vmbr0"), None);
    }

    /// vmbr0's port bond0.20, a VLAN device on bond0 of eno1 and eno2; and
    /// vmbr1.30, a VLAN device on the bridge vmbr1.
    #[test]
    fn watches_below_bonds_and_vlan_devices_but_not_bridges() {
        let host = Host::from_links(
            &serde_json::from_str(
                r#"[{"ifindex":2,"ifname":"vmbr0","linkinfo":{"info_kind":"bridge"}},
                {"ifindex":3,"ifname":"bond0","linkinfo":{"info_kind":"bond"}},
                {"ifindex":4,"ifname":"eno1","master":"bond0"},
                {"ifindex":5,"ifname":"eno2","master":"bond0"},
                {"ifindex":6,"ifname":"bond0.20","link":"bond0","master":"vmbr0","linkinfo":{"info_kind":"vlan"}},
                {"ifindex":7,"ifname":"vmbr1","linkinfo":{"info_kind":"bridge"}},
                {"ifindex":8,"ifname":"vmbr1.30","link":"vmbr1","linkinfo":{"info_kind":"vlan"}}]"#,
            )
            .unwrap(),
        );
        let out = |n: &str| iface_by_name(&host, n).unwrap();
        let lowers = lowers_of(&host, &[out("bond0.20")]);
        let names: Vec<(&str, &str)> = lowers
            .iter()
            .map(|(l, u)| (l.name.as_str(), u.as_str()))
            .collect();
        assert_eq!(
            names,
            [("bond0", "bond0.20"), ("eno1", "bond0"), ("eno2", "bond0")]
        );
        assert!(lowers_of(&host, &[out("vmbr1.30")]).is_empty());
    }

    /// An IPv6 guest is found by the host's NDP entry and the bridge's FDB, as
    /// an IPv4 one by ARP; its subnet is the bridge's global /64, never the
    /// link-local one every bridge has.
    #[test]
    fn finds_an_ipv6_guest_by_its_neighbour_entry() {
        use serde_json::json;
        let links = json!([
            {"ifindex":3,"ifname":"vmbr0","linkinfo":{"info_kind":"bridge"}},
            {"ifindex":4,"ifname":"tap100i0","master":"vmbr0","linkinfo":{"info_kind":"tun"}},
            {"ifindex":5,"ifname":"tap101i0","master":"vmbr0","linkinfo":{"info_kind":"tun"}}
        ]);
        let addrs = json!([{"ifname":"vmbr0","addr_info":[
            {"local":"fe80::1","prefixlen":64},
            {"local":"192.0.2.1","prefixlen":24},
            {"local":"2001:db8:1::1","prefixlen":64}]}]);
        let neigh = json!([
            {"dst":"2001:db8:1::100","dev":"vmbr0","lladdr":"52:54:00:00:01:00","state":["REACHABLE"]},
            {"dst":"192.0.2.101","dev":"vmbr0","lladdr":"52:54:00:00:01:01","state":["REACHABLE"]}
        ]);
        let fdb = json!([
            {"mac":"52:54:00:00:01:00","ifname":"tap100i0","master":"vmbr0","state":""},
            {"mac":"52:54:00:00:01:01","ifname":"tap101i0","master":"vmbr0","state":""}
        ]);
        let host = Host::from_iproute2(&links, &addrs, &neigh, &fdb);
        let vm: IpAddr = "2001:db8:1::100".parse().unwrap();
        let found = find_vm_ports(&host, vm).unwrap().unwrap();
        assert_eq!(
            found,
            (
                vec!["tap100i0".to_string()],
                Some("52:54:00:00:01:00".into())
            )
        );
        let (bridge, subnet) = locate::subnet_bridge(&host, vm).unwrap();
        assert_eq!(bridge, "vmbr0");
        assert_eq!(subnet, ("2001:db8:1::".parse().unwrap(), 64));
        assert_eq!(
            subnet_of(&host, "vmbr0", vm),
            Some(("2001:db8:1::".parse().unwrap(), 64))
        );
        // An address the host knows nothing of, in no bridge's subnet.
        assert!(locate::subnet_bridge(&host, "2001:db8:9::1".parse().unwrap()).is_none());
    }

    #[test]
    fn reads_links_from_ip_json() {
        let host = Host::from_links(
            &serde_json::from_str(
                r#"[{"ifindex":3,"ifname":"vmbr0","linkinfo":{"info_kind":"bridge"}},
                {"ifindex":4,"ifname":"tap100i0","master":"vmbr0","linkinfo":{"info_kind":"tun"}}]"#,
            )
            .unwrap(),
        );
        assert_eq!(host.master_of("tap100i0"), Some("vmbr0"));
        assert!(host.is_bridge("vmbr0"));
        assert!(!host.is_bridge("tap100i0"));
        assert_eq!(iface_by_name(&host, "vmbr0").map(|i| i.index), Some(3));
        assert_eq!(host.name_of(4), Some("tap100i0"));
    }
}
