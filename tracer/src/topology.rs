//! Where the guest's packets go on this host: VM IP → VM port (neighbour table +
//! bridge FDB) → bridge → uplink (the route to the destination).
//!
//! Read from the running host with iproute2's JSON output (`ip -j`, `bridge -j`),
//! in the network namespace pathtrace runs in. Nothing here assumes names or
//! addresses: every fact comes from the kernel's own tables.

use std::{collections::HashMap, net::Ipv4Addr, os::unix::fs::MetadataExt, process::Command};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    pub index: u32,
    pub name: String,
}

/// What a traced interface is to the guest's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Port,
    Bridge,
    Uplink,
}

#[derive(Debug, Clone)]
pub struct Topology {
    pub vm_ip: Ipv4Addr,
    pub vm_mac: Option<String>,
    pub dst: Ipv4Addr,
    /// The VM's port (tap/vnet) on this host. When the bridge has forgotten the
    /// guest's MAC (FDB entry aged out), every port of its bridge is a candidate and
    /// the one its requests arrive on is the port.
    pub ports: Vec<Iface>,
    /// The bridge the port belongs to, if any (routed setups have none).
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
}

impl Topology {
    /// Discover the path. `iface` overrides the VM port when given.
    pub fn discover(vm_ip: Ipv4Addr, dst: Ipv4Addr, iface: Option<&str>) -> Result<Self> {
        let links = ip_json(&["-d", "link", "show"])?;
        let names = link_names(&links);
        let mtus = link_mtus(&links);
        let (port_names, vm_mac) = match iface {
            Some(name) => (vec![name.to_string()], None),
            None => find_vm_ports(vm_ip, &links)?,
        };
        let ports = port_names
            .iter()
            .map(|n| {
                iface_by_name(&links, n).ok_or_else(|| anyhow!("interface {n} does not exist"))
            })
            .collect::<Result<Vec<_>>>()?;
        let bridge = master_of(&links, &ports[0].name).and_then(|m| iface_by_name(&links, &m));
        let inbound = bridge.as_ref().unwrap_or(&ports[0]).name.clone();
        let route = route_to(dst, vm_ip, &inbound);
        let mut topo = Topology {
            vm_ip,
            vm_mac,
            dst,
            ports,
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

    /// The interfaces to attach TC programs to, each with its role.
    pub fn hooks(&self) -> Vec<(Iface, Role)> {
        let mut hooks: Vec<(Iface, Role)> =
            self.ports.iter().map(|p| (p.clone(), Role::Port)).collect();
        if let Some(b) = &self.bridge {
            hooks.push((b.clone(), Role::Bridge));
        }
        if let Some(u) = &self.uplink {
            hooks.push((u.clone(), Role::Uplink));
        }
        hooks
    }

    /// A VM port came back under a new index (VM reboot, migration back).
    pub fn port_recreated(&mut self, port: &Iface) {
        for p in self.ports.iter_mut().filter(|p| p.name == port.name) {
            p.index = port.index;
        }
        self.names.insert(port.index, port.name.clone());
    }

    pub fn role_of(&self, ifindex: u32) -> Option<Role> {
        self.hooks()
            .into_iter()
            .find(|(i, _)| i.index == ifindex)
            .map(|(_, r)| r)
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

fn master_of(links: &Value, name: &str) -> Option<String> {
    as_array(links)
        .iter()
        .find(|l| l["ifname"].as_str() == Some(name))
        .and_then(|l| l["master"].as_str().map(str::to_string))
}

fn is_bridge(links: &Value, name: &str) -> bool {
    as_array(links).iter().any(|l| {
        l["ifname"].as_str() == Some(name) && l["linkinfo"]["info_kind"].as_str() == Some("bridge")
    })
}

pub(crate) fn as_array(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// The VM's port and MAC: the neighbour entry for the VM IP names the MAC and the
/// L3 interface (a bridge, or the port itself in routed setups); on a bridge the
/// FDB says which port that MAC was learned on. If the FDB entry aged out, all the
/// bridge's ports are candidates.
fn find_vm_ports(vm_ip: Ipv4Addr, links: &Value) -> Result<(Vec<String>, Option<String>)> {
    let neigh = ip_json(&["neigh", "show", "to", &vm_ip.to_string()])?;
    let entry = as_array(&neigh).iter().find(|n| {
        n["lladdr"].is_string()
            && !n["state"]
                .as_array()
                .is_some_and(|s| s.iter().any(|x| x == "FAILED" || x == "INCOMPLETE"))
    });
    let Some(entry) = entry else {
        bail!(
            "no VM with IP {vm_ip} on this host: no neighbour entry for it (the guest has not \
             talked to the host recently; have it ping its gateway, or name its port with --iface)"
        );
    };
    let dev = entry["dev"].as_str().unwrap_or_default().to_string();
    let mac = entry["lladdr"].as_str().unwrap_or_default().to_lowercase();
    if !is_bridge(links, &dev) {
        return Ok((vec![dev], Some(mac)));
    }
    let fdb = run_json("bridge", &["-j", "fdb", "show", "br", &dev])?;
    if let Some(port) = fdb_port(&fdb, &mac) {
        return Ok((vec![port], Some(mac)));
    }
    let ports: Vec<String> = as_array(links)
        .iter()
        .filter(|l| l["master"].as_str() == Some(dev.as_str()))
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect();
    if ports.is_empty() {
        bail!("VM {vm_ip} ({mac}) is known on bridge {dev}, which has no ports");
    }
    Ok((ports, Some(mac)))
}

/// The bridge port that learned `mac` (not the bridge's own `self` entries).
fn fdb_port(fdb: &Value, mac: &str) -> Option<String> {
    as_array(fdb)
        .iter()
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

fn inet_addrs(dev: &str) -> Result<Vec<(Ipv4Addr, u8)>> {
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
    let _ = (iface_by_name(v, "eth0"), fdb_port(v, "52:54:00:12:34:56"));
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
