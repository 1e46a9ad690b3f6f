//! The doctor's IPv6 checks, run when the VM has IPv6: its route and gateway
//! (by neighbour solicitation), forwarding, router advertisements on the
//! uplink, the firewall's verdict on ICMPv6 echo, neighbour discovery and DNS,
//! proxy NDP for a routed setup, MTU and router advertisements for SLAAC
//! guests. IPv6 breaks differently from IPv4: no NAT, forwarding decided by
//! `all` (the devices' own `forwarding` switches router behaviour), neighbour
//! discovery instead of ARP, router advertisements ignored once forwarding is
//! on. The VM is the one the IPv4 checks located (its port, bridge and MAC);
//! its IPv6 addresses are those given, or those the host learned for its MAC.

use std::net::{IpAddr, Ipv6Addr};

use super::{Check, Status, Subject};
use crate::{
    host::{is_link_local6, Host, Route, RouteKind},
    topology::Topology,
};

mod filter;
mod links;
mod routing;
pub use routing::proxy_ndp_on;

/// Stands for "the internet" when no IPv6 destination is given (a public
/// resolver's address, as 8.8.8.8 for IPv4): only looked up, never sent to.
pub const INTERNET6: Ipv6Addr = Ipv6Addr::new(0x2001, 0x4860, 0x4860, 0, 0, 0, 0, 0x8888);

/// The guest's IPv6 path through this host.
pub struct Path6 {
    /// The guest's global addresses; the first is the one checked.
    pub vm_ips: Vec<Ipv6Addr>,
    pub vm_mac: Option<String>,
    pub dst: Ipv6Addr,
    /// The resolver to replay DNS to (the destination when none is given).
    pub dns: Ipv6Addr,
    /// The device the guest's packets enter the host's IP stack by (its
    /// bridge, or a routed port).
    pub inbound: String,
    /// Every interface from the VM's port to `inbound`.
    pub l2: Vec<String>,
    /// The host's route to `dst`; None: no route.
    pub route: Option<Route>,
    /// The device that route leaves by (None when local or unroutable).
    pub uplink: Option<String>,
    /// `dst` is an address of this host.
    pub dst_local: bool,
    /// `dst` is reached through the VM's own bridge: the host routes none of
    /// the guest's IPv6 (bridged mode: a router on the LAN does).
    pub bridged: bool,
}

impl Path6 {
    /// The guest's first address (the checks run only when it has one).
    pub fn vm_ip(&self) -> Ipv6Addr {
        self.vm_ips
            .first()
            .copied()
            .unwrap_or(Ipv6Addr::UNSPECIFIED)
    }

    /// The next hop of the route to `dst`.
    pub fn gateway(&self) -> Option<Ipv6Addr> {
        self.route.as_ref()?.gateway6
    }

    /// The host forwards the guest's IPv6 (neither bridged nor to itself).
    pub fn routed(&self) -> bool {
        self.uplink.is_some() && !self.bridged && !self.dst_local
    }

    /// Work out the path, with the guest's IPv6 addresses given, configured or
    /// learned by the host for its MAC (none: the guest has no IPv6 the host
    /// knows of).
    pub fn of(s: &Subject, t: &Topology, given: &[Ipv6Addr]) -> Path6 {
        let host = &s.host;
        let mut vm_ips: Vec<Ipv6Addr> = given.to_vec();
        // The hypervisor's configuration of this port's NIC (cloud-init's
        // ip6=), then what the host learned for its MAC.
        let ports: Vec<&str> = t.ports.iter().map(|p| p.name.as_str()).collect();
        let configured = s
            .nics
            .iter()
            .filter(|n| {
                t.vm_mac.as_deref() == Some(n.mac.as_str())
                    || n.port.as_deref().is_some_and(|p| ports.contains(&p))
            })
            .flat_map(|n| n.ips6.iter().copied());
        let learned = t.vm_mac.iter().flat_map(|mac| host.ip6s_of_mac(mac));
        for ip in configured.chain(learned) {
            if !vm_ips.contains(&ip) {
                vm_ips.push(ip);
            }
        }
        let dst = s.dst6.unwrap_or(INTERNET6);
        let inbound = t.inbound().name.clone();
        let route = host
            .route_get6(dst, None)
            .filter(|r| r.kind != RouteKind::Refused);
        let dst_local = route.as_ref().is_some_and(|r| r.kind == RouteKind::Local);
        let out = route
            .as_ref()
            .and_then(|r| host.route_dev(r))
            .map(str::to_string);
        let bridged = t.lan.is_some() || out.as_deref() == Some(inbound.as_str());
        let mut l2: Vec<String> = t.ports.iter().map(|p| p.name.clone()).collect();
        l2.extend(t.chain.iter().map(|h| h.iface.name.clone()));
        l2.extend(t.bridge.iter().map(|b| b.name.clone()));
        Path6 {
            vm_ips,
            vm_mac: t.vm_mac.clone(),
            dst,
            dns: s.dns6.unwrap_or(dst),
            inbound,
            l2,
            uplink: out.filter(|_| !dst_local),
            route,
            dst_local,
            bridged,
        }
    }
}

/// The IPv6 checks, in the order a packet meets what they check.
pub fn checks(s: &Subject, t: &Topology, passive: bool) -> Vec<Check> {
    let host = &s.host;
    let p = Path6::of(s, t, &s.vm_ip6);
    let mtu = links::mtu6(&p, host);
    if p.vm_ips.is_empty() {
        // No address known: an interface too small for IPv6 has taken the
        // host's addresses (and what it learned of the guest's) with it. Said
        // only when the host routes IPv6 at all.
        let routes6 = host.sysctl("net/ipv6/conf/all/forwarding").as_deref() == Some("1");
        return match (routes6, mtu.status) {
            (true, Status::Fail) => vec![mtu],
            _ => Vec::new(),
        };
    }
    let mut out = vec![mtu];
    if p.routed() {
        out.extend(routing::ip6_forward(&p, host));
        out.push(routing::accept_ra(&p, host));
    }
    out.extend(routing::route6(&p, host));
    if let (Some(gw), true) = (p.gateway(), p.routed()) {
        out.push(routing::gateway6(&p, gw, host, passive));
    }
    out.extend(routing::proxy_ndp(&p, host));
    out.extend(filter::firewall6(&p, host));
    out.extend(links::ra_service(&p, host));
    out
}

/// The volatile IPv6 check (the gateway's neighbour entry), passively, over
/// `now`.
pub fn volatile(s: &Subject, t: &Topology, now: &Host) -> Vec<Check> {
    let p = Path6::of(s, t, &s.vm_ip6);
    match (p.gateway(), p.routed() && !p.vm_ips.is_empty()) {
        (Some(gw), true) => vec![routing::gateway6(&p, gw, now, true)],
        _ => Vec::new(),
    }
}

/// A usable global address of this host on `dev` (else its link-local one):
/// the source a solicitation or a replayed packet of the host has there.
pub fn host_addr(host: &Host, dev: &str, link_local: bool) -> Option<Ipv6Addr> {
    let addrs = host.inet6_addrs(dev);
    let pick = |ll: bool| {
        addrs
            .iter()
            .filter(|a| a.usable())
            .filter_map(|a| a.v6())
            .map(|(ip, _)| ip)
            .find(|ip| is_link_local6(*ip) == ll)
    };
    pick(link_local).or_else(|| pick(!link_local))
}

/// The guest's address is made from its MAC (modified EUI-64, RFC 4291
/// appendix A): it configured itself by SLAAC from a router advertisement.
pub fn slaac_shaped(ip: Ipv6Addr, mac: &str) -> bool {
    let Some(m) = super::arp::parse_mac(mac) else {
        return false;
    };
    let o = ip.octets();
    o[8..16] == [m[0] ^ 0x02, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]]
}

/// An address as a packet of either family, for the rule replay.
fn ip(a: Ipv6Addr) -> Option<IpAddr> {
    Some(IpAddr::V6(a))
}

#[cfg(test)]
mod tests;
