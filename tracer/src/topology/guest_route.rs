//! Routed and proxy-NDP hosts route each guest address to the VM bridge
//! (`ip -6 route add 2001:db8:2::100/128 dev vmbr0`): such a host route says
//! which bridge the guest is behind even when no neighbour entry knows it yet
//! (the guest has not talked, or nothing ever answered it). The port is then
//! the one its first request arrives on, as in bridged mode.

use std::net::IpAddr;

use super::{Evidence, Location};
use crate::host::Host;

/// The ports below the bridge a host route for exactly `vm_ip` leaves by,
/// with carrier first. None without such a route (or when it goes via a
/// router, or not to a bridge).
pub fn host_route_location(host: &Host, vm_ip: IpAddr) -> Option<Location> {
    let full = if vm_ip.is_ipv6() { 128 } else { 32 };
    let entry = host.routes.iter().find(|r| {
        r.dst == vm_ip
            && r.prefix == full
            && r.route.gateway.is_none()
            && r.route.gateway6.is_none()
    })?;
    let bridge = host.name_of(entry.route.oif?)?.to_string();
    if !host.is_bridge(&bridge) {
        return None;
    }
    let mut ports = host.leaf_ports(&bridge, None, 0);
    if ports.is_empty() {
        return None;
    }
    ports.sort_by_key(|p| !host.link(p).is_some_and(|l| l.lower_up));
    let why = format!(
        "the host has no neighbour entry for {vm_ip} but routes it to {bridge} (host route {vm_ip}/{full} dev {bridge}); watching every port of {bridge} ({}): the one its first request arrives on is the VM's",
        ports.join(", ")
    );
    Some(Location {
        ports,
        mac: None,
        evidence: Evidence::FirstPacket(why),
    })
}
