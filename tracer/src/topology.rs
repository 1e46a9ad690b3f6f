//! Where the guest's packets go on this host: VM IP → VM port (neighbour table +
//! bridge FDB) → any firewall bridges and veth pairs in between (Proxmox's
//! `fwbrNiM` joined to `vmbrN` by `fwlnNiM`/`fwprNpM`) → the bridge that routes →
//! uplink (the route to the destination).
//!
//! Read from the running host with iproute2's JSON output (`ip -j`, `bridge -j`),
//! in the network namespace pathtrace runs in. Nothing here assumes names or
//! addresses: every fact comes from the kernel's own tables.

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    os::unix::fs::MetadataExt,
    process::Command,
};

use anyhow::{anyhow, bail, Context, Result};

use crate::hostconfig::VmNic;
use serde_json::Value;

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
    pub vm_ip: Ipv4Addr,
    pub vm_mac: Option<String>,
    pub dst: Ipv4Addr,
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
    pub gateway: Option<Ipv4Addr>,
    /// The route lookup failed outright (no route to `dst`).
    pub unroutable: bool,
    /// `dst` is an address of this host (the guest talks to the hypervisor itself).
    pub dst_local: bool,
    /// `dst` is on the guest's own bridge (another guest): its packets are bridged,
    /// not routed.
    pub bridged: bool,
    /// The VM LAN as configured on the bridge (or port), e.g. 192.0.2.0/24.
    pub vm_subnet: Option<(Ipv4Addr, u8)>,
    /// IPv4 addresses of the uplink.
    pub uplink_addrs: Vec<Ipv4Addr>,
    /// Inode of the network namespace everything above lives in.
    pub netns_inum: u32,
    /// Every interface of this namespace by index (names drop locations).
    pub names: HashMap<u32, String>,
    /// MTU of every interface by index.
    pub mtus: HashMap<u32, u32>,
    /// The bridge each bridge port belongs to, by the port's index.
    pub masters: HashMap<u32, String>,
}

impl Topology {
    /// Discover the path. `iface` overrides the VM port when given; the
    /// hypervisor's configuration (`nics`) names it when the host's tables cannot
    /// (the guest has not talked yet).
    pub fn discover(
        vm_ip: Ipv4Addr,
        dst: Ipv4Addr,
        iface: Option<&str>,
        nics: &[VmNic],
    ) -> Result<Self> {
        let links = ip_json(&["-d", "link", "show"])?;
        let location = match iface {
            Some(name) => Location::named(name),
            None => locate_vm(vm_ip, &links, nics)?,
        };
        Self::for_ports(vm_ip, dst, &links, location)
    }

    /// The path from the given VM port(s).
    pub fn for_ports(
        vm_ip: Ipv4Addr,
        dst: Ipv4Addr,
        links: &Value,
        location: Location,
    ) -> Result<Self> {
        let Location {
            ports: port_names,
            mac: vm_mac,
            evidence,
        } = location;
        let links = links.clone();
        let names = link_names(&links);
        let mtus = link_mtus(&links);
        let masters = link_masters(&links);
        let ports = port_names
            .iter()
            .map(|n| {
                iface_by_name(&links, n).ok_or_else(|| anyhow!("interface {n} does not exist"))
            })
            .collect::<Result<Vec<_>>>()?;
        let (chain, bridge) = chain_up(&links, &port_names);
        let inbound = bridge.as_ref().unwrap_or(&ports[0]).name.clone();
        let route = route_to(dst, vm_ip, &inbound);
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
            names,
            mtus,
            masters,
        };
        if let Some(r) = route {
            topo.apply_route(&r, &links)?;
        }
        topo.vm_subnet = subnet_of(&inbound, vm_ip)?;
        Ok(topo)
    }

    fn apply_route(&mut self, route: &Value, links: &Value) -> Result<()> {
        self.dst_local = route["type"].as_str() == Some("local");
        self.gateway = route["gateway"].as_str().and_then(|g| g.parse().ok());
        let dev = route["dev"].as_str().unwrap_or_default();
        let inbound = self.inbound().name.clone();
        self.bridged = !self.dst_local && self.bridge.is_some() && dev == inbound;
        if !self.dst_local && dev != inbound && !dev.is_empty() {
            self.uplink = iface_by_name(links, dev);
            self.uplink_addrs = addresses_of(dev)?;
        }
        Ok(())
    }

    /// Where the guest's packets enter the host's IP stack: its bridge, or its port
    /// in routed setups.
    pub fn inbound(&self) -> &Iface {
        self.bridge.as_ref().unwrap_or(&self.ports[0])
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
        names
    }

    pub fn name_of(&self, ifindex: u32) -> Option<&str> {
        self.names.get(&ifindex).map(String::as_str)
    }
}

/// Run `ip -j ARGS` and parse its JSON.
pub(crate) fn ip_json(args: &[&str]) -> Result<Value> {
    run_json("ip", &[&["-j"], args].concat())
}

pub(crate) fn run_json(program: &str, args: &[&str]) -> Result<Value> {
    log::debug!("run: {program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} (install iproute2)"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Ok(Value::Array(Vec::new()));
    }
    serde_json::from_str(&text).with_context(|| format!("parsing {program} {}", args.join(" ")))
}

fn link_masters(links: &Value) -> HashMap<u32, String> {
    as_array(links)
        .iter()
        .filter_map(|l| {
            Some((
                l["ifindex"].as_u64()? as u32,
                l["master"].as_str()?.to_string(),
            ))
        })
        .collect()
}

fn link_mtus(links: &Value) -> HashMap<u32, u32> {
    as_array(links)
        .iter()
        .filter_map(|l| Some((l["ifindex"].as_u64()? as u32, l["mtu"].as_u64()? as u32)))
        .collect()
}

/// STP state of a bridge port (`forwarding`, `blocking`, `disabled`, ...).
pub fn port_state(port: &str) -> Option<String> {
    let v = run_json("bridge", &["-j", "link", "show", "dev", port]).ok()?;
    as_array(&v).first()?["state"].as_str().map(str::to_string)
}

/// Operational state of an interface (`UP`, `DOWN`, `LOWERLAYERDOWN`, ...).
pub fn oper_state(dev: &str) -> Option<String> {
    let v = ip_json(&["link", "show", "dev", dev]).ok()?;
    as_array(&v).first()?["operstate"]
        .as_str()
        .map(str::to_string)
}

pub(crate) fn link_names(links: &Value) -> HashMap<u32, String> {
    as_array(links)
        .iter()
        .filter_map(|l| {
            Some((
                l["ifindex"].as_u64()? as u32,
                l["ifname"].as_str()?.to_string(),
            ))
        })
        .collect()
}

fn iface_by_name(links: &Value, name: &str) -> Option<Iface> {
    as_array(links)
        .iter()
        .find(|l| l["ifname"].as_str() == Some(name))
        .and_then(|l| {
            Some(Iface {
                index: l["ifindex"].as_u64()? as u32,
                name: name.to_string(),
            })
        })
}

pub(crate) fn master_of(links: &Value, name: &str) -> Option<String> {
    as_array(links)
        .iter()
        .find(|l| l["ifname"].as_str() == Some(name))
        .and_then(|l| l["master"].as_str().map(str::to_string))
}

pub(crate) fn is_bridge(links: &Value, name: &str) -> bool {
    as_array(links).iter().any(|l| {
        l["ifname"].as_str() == Some(name) && l["linkinfo"]["info_kind"].as_str() == Some("bridge")
    })
}

pub(crate) fn as_array(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// The bridge whose own subnet holds `vm_ip`, and every port below it: where the
/// VM must be when the host's tables have forgotten it (a port that lost carrier
/// takes the bridge's neighbour entries with it).
pub fn subnet_ports(vm_ip: Ipv4Addr, links: &Value) -> Option<(String, Vec<String>)> {
    let (bridge, _) = locate::subnet_bridge(vm_ip, links)?;
    let ports = leaf_ports(links, &bridge, None, 0);
    Some((bridge, ports))
}

/// The VM's port and MAC: the neighbour entry for the VM IP names the MAC and the
/// L3 interface (a bridge, or the port itself in routed setups); on a bridge the
/// FDB says which port that MAC was learned on, and through veth pairs into
/// firewall bridges, on which port there. If an FDB entry aged out, every port
/// below that bridge is a candidate. None when no neighbour entry knows the IP.
type Found = (Vec<String>, Option<String>);
fn find_vm_ports(vm_ip: Ipv4Addr, links: &Value) -> Result<Option<Found>> {
    let neigh = ip_json(&["neigh", "show", "to", &vm_ip.to_string()])?;
    let entry = as_array(&neigh).iter().find(|n| {
        n["lladdr"].is_string()
            && !n["state"]
                .as_array()
                .is_some_and(|s| s.iter().any(|x| x == "FAILED" || x == "INCOMPLETE"))
    });
    let Some(entry) = entry else {
        return Ok(None);
    };
    let dev = entry["dev"].as_str().unwrap_or_default().to_string();
    let mac = entry["lladdr"].as_str().unwrap_or_default().to_lowercase();
    if !is_bridge(links, &dev) {
        return Ok(Some((vec![dev], Some(mac))));
    }
    let ports = ports_for_mac(links, &dev, &mac)?;
    if ports.is_empty() {
        bail!("VM {vm_ip} ({mac}) is known on bridge {dev}, which has no ports");
    }
    Ok(Some((ports, Some(mac))))
}

/// The port(s) below `bridge` where `mac` lives, descending through veth pairs into
/// lower bridges (firewall bridges). Ask the FDB at each level.
pub(crate) fn ports_for_mac(links: &Value, bridge: &str, mac: &str) -> Result<Vec<String>> {
    let (mut bridge, mut came_by) = (bridge.to_string(), None::<String>);
    for _ in 0..MAX_CHAIN {
        let fdb = run_json("bridge", &["-j", "fdb", "show", "br", &bridge])?;
        let Some(port) = fdb_port(&fdb, mac, came_by.as_deref()) else {
            return Ok(leaf_ports(links, &bridge, came_by.as_deref(), 0));
        };
        match lower_bridge(links, &port, &bridge) {
            Some((peer, lower)) => (bridge, came_by) = (lower, Some(peer)),
            None => return Ok(vec![port]),
        }
    }
    Ok(Vec::new())
}

/// Chains longer than this are not plumbing but a loop or a lab gone wrong.
const MAX_CHAIN: usize = 4;

/// Every port below `bridge` except `except`, with veth links into lower bridges
/// replaced by the ports of those bridges.
pub(crate) fn leaf_ports(
    links: &Value,
    bridge: &str,
    except: Option<&str>,
    depth: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    for port in ports_of(links, bridge) {
        if Some(port.as_str()) == except {
            continue;
        }
        match lower_bridge(links, &port, bridge) {
            Some((peer, lower)) if depth < MAX_CHAIN => {
                out.extend(leaf_ports(links, &lower, Some(&peer), depth + 1))
            }
            _ => out.push(port),
        }
    }
    out
}

/// If `port` (a port of `bridge`) is a veth whose peer is a port of another
/// bridge: (peer, that bridge).
pub(crate) fn lower_bridge(links: &Value, port: &str, bridge: &str) -> Option<(String, String)> {
    let peer = veth_peer(links, port)?;
    let master = master_of(links, &peer)?;
    (master != bridge && is_bridge(links, &master)).then_some((peer, master))
}

fn veth_peer(links: &Value, name: &str) -> Option<String> {
    let l = link(links, name)?;
    if l["linkinfo"]["info_kind"].as_str() != Some("veth") {
        return None;
    }
    l["link"].as_str().map(str::to_string)
}

pub(crate) fn ports_of(links: &Value, bridge: &str) -> Vec<String> {
    as_array(links)
        .iter()
        .filter(|l| l["master"].as_str() == Some(bridge))
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect()
}

pub(crate) fn has_link(links: &Value, name: &str) -> bool {
    link(links, name).is_some()
}

/// The IPv4 address the neighbour table holds for `mac`, if any.
pub fn ip_of_mac(mac: &str) -> Option<Ipv4Addr> {
    let v = ip_json(&["-4", "neigh", "show"]).ok()?;
    as_array(&v)
        .iter()
        .filter(|n| n["lladdr"].as_str().map(str::to_lowercase).as_deref() == Some(mac))
        .find_map(|n| n["dst"].as_str()?.parse().ok())
}

pub(crate) fn link<'a>(links: &'a Value, name: &str) -> Option<&'a Value> {
    as_array(links)
        .iter()
        .find(|l| l["ifname"].as_str() == Some(name))
}

/// From the VM port(s) up to the bridge that routes: each port's bridge, and while
/// that bridge is a firewall bridge — no IPv4 address of its own, and no port but
/// the one we came by and one veth to another bridge — that veth pair and the
/// next bridge. Returns the hops in between and the top bridge.
pub(crate) fn chain_up(links: &Value, ports: &[String]) -> (Vec<ChainHop>, Option<Iface>) {
    let addressed = addressed_devices();
    let mut hops: Vec<ChainHop> = Vec::new();
    let mut top = None;
    for port in ports {
        let (chain, bridge) = chain_of(links, port, &addressed);
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
    links: &Value,
    port: &str,
    addressed: &HashSet<String>,
) -> (Vec<ChainHop>, Option<Iface>) {
    let mut hops = Vec::new();
    let Some(mut bridge) = master_of(links, port) else {
        return (hops, None);
    };
    let mut came_by = port.to_string();
    for _ in 0..MAX_CHAIN {
        if addressed.contains(&bridge) {
            break;
        }
        let others: Vec<String> = ports_of(links, &bridge)
            .into_iter()
            .filter(|p| *p != came_by)
            .collect();
        let [down_end] = others.as_slice() else {
            break;
        };
        let Some((up_end, upper)) = lower_bridge(links, down_end, &bridge) else {
            break;
        };
        for (name, is_bridge) in [(&bridge, true), (down_end, false), (&up_end, false)] {
            if let Some(iface) = iface_by_name(links, name) {
                hops.push(ChainHop { iface, is_bridge });
            }
        }
        came_by = up_end;
        bridge = upper;
    }
    (hops, iface_by_name(links, &bridge))
}

/// Interfaces that carry an IPv4 address (a bridge with one routes for its LAN).
fn addressed_devices() -> HashSet<String> {
    let Ok(v) = ip_json(&["-4", "addr", "show"]) else {
        return HashSet::new();
    };
    as_array(&v)
        .iter()
        .filter(|l| !as_array(&l["addr_info"]).is_empty())
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect()
}

/// The bridge port that learned `mac` (not the bridge's own `self` entries, nor
/// the port we came in by).
fn fdb_port(fdb: &Value, mac: &str, except: Option<&str>) -> Option<String> {
    as_array(fdb)
        .iter()
        .filter(|f| f["ifname"].as_str() != except)
        .filter(|f| f["mac"].as_str().map(str::to_lowercase).as_deref() == Some(mac))
        .filter(|f| {
            !f["flags"]
                .as_array()
                .is_some_and(|fl| fl.iter().any(|x| x == "self"))
        })
        .find_map(|f| f["ifname"].as_str().map(str::to_string))
}

/// The route the host would use to forward the guest's packet to `dst`; falls back
/// to a plain lookup when the forwarding lookup is refused (e.g. forwarding off).
fn route_to(dst: Ipv4Addr, vm_ip: Ipv4Addr, inbound: &str) -> Option<Value> {
    let (d, s) = (dst.to_string(), vm_ip.to_string());
    let attempts: [&[&str]; 2] = [
        &["route", "get", &d, "from", &s, "iif", inbound],
        &["route", "get", &d],
    ];
    attempts.iter().find_map(|args| {
        ip_json(args)
            .ok()
            .and_then(|v| as_array(&v).first().cloned())
            .filter(|r| {
                !matches!(
                    r["type"].as_str(),
                    Some("unreachable" | "prohibit" | "blackhole")
                )
            })
    })
}

fn addresses_of(dev: &str) -> Result<Vec<Ipv4Addr>> {
    Ok(inet_addrs(dev)?.into_iter().map(|(a, _)| a).collect())
}

pub(crate) fn inet_addrs(dev: &str) -> Result<Vec<(Ipv4Addr, u8)>> {
    let v = ip_json(&["-4", "addr", "show", "dev", dev])?;
    Ok(as_array(&v)
        .iter()
        .flat_map(|l| as_array(&l["addr_info"]).to_vec())
        .filter_map(|a| {
            Some((
                a["local"].as_str()?.parse().ok()?,
                a["prefixlen"].as_u64()? as u8,
            ))
        })
        .collect())
}

/// The configured subnet on `dev` that contains `ip`, as (network, prefix length).
fn subnet_of(dev: &str, ip: Ipv4Addr) -> Result<Option<(Ipv4Addr, u8)>> {
    Ok(inet_addrs(dev)?
        .into_iter()
        .map(|(a, len)| (network(a, len), len))
        .find(|(net, len)| network(ip, *len) == *net))
}

pub fn network(ip: Ipv4Addr, len: u8) -> Ipv4Addr {
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - len as u32)
    };
    Ipv4Addr::from(u32::from(ip) & mask)
}

pub(crate) fn current_netns_inum() -> Result<u32> {
    let meta = std::fs::metadata("/proc/self/ns/net").context("reading /proc/self/ns/net")?;
    Ok(meta.ino() as u32)
}

/// Every reader of iproute2 JSON at once, for the property tests.
#[cfg(test)]
pub fn fuzz_entry(v: &Value) {
    let _ = (
        link_names(v),
        link_mtus(v),
        master_of(v, "vmbr0"),
        is_bridge(v, "vmbr0"),
    );
    let _ = (
        iface_by_name(v, "eth0"),
        fdb_port(v, "52:54:00:12:34:56", None),
    );
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
    }

    /// Proxmox with the firewall on: tap105i0 in fwbr105i0, joined to vmbr0 by
    /// fwln105i0/fwpr105p0; a second VM's chain hangs off the same vmbr0.
    fn proxmox_links() -> Value {
        serde_json::from_str(
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
        .unwrap()
    }

    #[test]
    fn follows_the_firewall_bridge_up_to_the_routing_bridge() {
        let links = proxmox_links();
        let addressed = HashSet::from(["vmbr0".to_string()]);
        let (chain, top) = chain_of(&links, "tap105i0", &addressed);
        let names: Vec<&str> = chain.iter().map(|h| h.iface.name.as_str()).collect();
        assert_eq!(names, ["fwbr105i0", "fwln105i0", "fwpr105p0"]);
        assert!(chain[0].is_bridge && !chain[1].is_bridge);
        assert_eq!(top.map(|b| b.name).as_deref(), Some("vmbr0"));
        // Without an address on vmbr0 it still stops there: two VMs hang below it.
        let (chain, top) = chain_of(&links, "tap105i0", &HashSet::new());
        assert_eq!(chain.len(), 3);
        assert_eq!(top.map(|b| b.name).as_deref(), Some("vmbr0"));
        // A tap straight on vmbr0 has no chain.
        let (chain, top) = chain_of(&links, "tap107i0", &addressed);
        assert!(chain.is_empty());
        assert_eq!(top.map(|b| b.name).as_deref(), Some("vmbr0"));
    }

    #[test]
    fn candidate_ports_descend_into_firewall_bridges() {
        let links = proxmox_links();
        let mut ports = leaf_ports(&links, "vmbr0", None, 0);
        ports.sort();
        assert_eq!(ports, ["eth0", "tap105i0", "tap106i0", "tap107i0"]);
        assert_eq!(
            lower_bridge(&links, "fwpr105p0", "vmbr0"),
            Some(("fwln105i0".into(), "fwbr105i0".into()))
        );
        assert_eq!(lower_bridge(&links, "tap107i0", "vmbr0"), None);
    }

    #[test]
    fn reads_links_from_ip_json() {
        let links: Value = serde_json::from_str(
            r#"[{"ifindex":3,"ifname":"vmbr0","linkinfo":{"info_kind":"bridge"}},
                {"ifindex":4,"ifname":"tap100i0","master":"vmbr0","linkinfo":{"info_kind":"tun"}}]"#,
        )
        .unwrap();
        assert_eq!(master_of(&links, "tap100i0").as_deref(), Some("vmbr0"));
        assert!(is_bridge(&links, "vmbr0"));
        assert!(!is_bridge(&links, "tap100i0"));
        assert_eq!(iface_by_name(&links, "vmbr0").map(|i| i.index), Some(3));
        assert_eq!(
            link_names(&links).get(&4).map(String::as_str),
            Some("tap100i0")
        );
    }
}
