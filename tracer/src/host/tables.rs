//! Addresses, neighbours, the bridges' FDB and route lookups as the kernel
//! gives them (RTM_NEWADDR, RTM_NEWNEIGH, RTM_NEWROUTE), typed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_route::{
    address::{AddressAttribute, AddressFlags, AddressMessage},
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
    },
    route::{
        RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType, RouteVia,
    },
    AddressFamily,
};

use serde::{Deserialize, Serialize};

use super::link::mac_text;

/// An address configured on an interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    pub index: u32,
    pub addr: IpAddr,
    pub prefix: u8,
    /// The states iproute2 prints that make an IPv6 address unusable or
    /// on its way out: `tentative` (duplicate address detection still
    /// running), `dadfailed` (another node has it), `deprecated`,
    /// `optimistic`; empty for a usable address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
}

/// The address flags worth telling an operator about, by iproute2's words.
const ADDR_FLAGS: &[(AddressFlags, &str)] = &[
    (AddressFlags::Tentative, "tentative"),
    (AddressFlags::Dadfailed, "dadfailed"),
    (AddressFlags::Deprecated, "deprecated"),
    (AddressFlags::Optimistic, "optimistic"),
];

impl Address {
    pub fn from_message(m: &AddressMessage) -> Option<Self> {
        // IFA_LOCAL is the interface's own address (IFA_ADDRESS the peer's on
        // point-to-point links); iproute2's `local` is the same choice.
        let local = m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        let address = m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        // IFA_FLAGS carries all 32 bits; the header's byte the low 8 (older
        // kernels send only that).
        let flags = m
            .attributes
            .iter()
            .find_map(|a| match a {
                AddressAttribute::Flags(f) => Some(*f),
                _ => None,
            })
            .unwrap_or_else(|| AddressFlags::from_bits_retain(u32::from(m.header.flags.bits())));
        Some(Address {
            index: m.header.index,
            addr: local.or(address)?,
            prefix: m.header.prefix_len,
            flags: ADDR_FLAGS
                .iter()
                .filter(|(f, _)| flags.contains(*f))
                .map(|(_, w)| w.to_string())
                .collect(),
        })
    }

    pub fn v6(&self) -> Option<(Ipv6Addr, u8)> {
        match self.addr {
            IpAddr::V6(a) => Some((a, self.prefix)),
            IpAddr::V4(_) => None,
        }
    }

    /// Usable as a source: not tentative, not failed duplicate address
    /// detection.
    pub fn usable(&self) -> bool {
        !self
            .flags
            .iter()
            .any(|f| f == "tentative" || f == "dadfailed")
    }

    pub fn v4(&self) -> Option<(Ipv4Addr, u8)> {
        match self.addr {
            IpAddr::V4(a) => Some((a, self.prefix)),
            IpAddr::V6(_) => None,
        }
    }
}

/// A neighbour (ARP/NDP) entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Neighbour {
    pub index: u32,
    pub ip: IpAddr,
    /// Lower-case MAC; None while unresolved.
    pub mac: Option<String>,
    /// iproute2's word: `REACHABLE`, `STALE`, `FAILED`, `INCOMPLETE`, ...
    pub state: String,
    /// A proxy entry (`ip -6 neigh add proxy ADDR dev DEV`): this host answers
    /// neighbour solicitations for `ip` on the device (with `proxy_ndp=1`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub proxy: bool,
    /// The neighbour said it is a router (NDP's IsRouter flag).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub router: bool,
}

impl Neighbour {
    pub fn from_message(m: &NeighbourMessage) -> Option<Self> {
        let ip = m.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
            _ => None,
        })?;
        Some(Neighbour {
            index: m.header.ifindex,
            ip,
            mac: lladdr(m),
            state: neigh_word(m.header.state),
            proxy: m.header.flags.contains(NeighbourFlags::Proxy),
            router: m.header.flags.contains(NeighbourFlags::Router),
        })
    }

    /// The entry holds a usable answer (not FAILED or INCOMPLETE).
    pub fn resolved(&self) -> bool {
        self.mac.is_some() && !matches!(self.state.as_str(), "FAILED" | "INCOMPLETE")
    }
}

/// A bridge forwarding-database entry: `mac` was learned (or set) on port
/// `port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdbEntry {
    /// The port (or, for its own addresses, the bridge).
    pub port: u32,
    /// The bridge whose FDB holds it (NDA_MASTER).
    pub bridge: Option<u32>,
    pub mac: String,
    pub vlan: Option<u16>,
    /// The device's own address list (`self`), not the bridge's learned table.
    pub own: bool,
    /// `permanent` (the bridge's own addresses, or static entries).
    pub permanent: bool,
}

impl FdbEntry {
    pub fn from_message(m: &NeighbourMessage) -> Option<Self> {
        if m.header.family != AddressFamily::Bridge {
            return None;
        }
        let mut bridge = None;
        let mut vlan = None;
        for a in &m.attributes {
            match a {
                NeighbourAttribute::Controller(b) => bridge = Some(*b),
                NeighbourAttribute::Vlan(v) => vlan = Some(*v),
                _ => {}
            }
        }
        Some(FdbEntry {
            port: m.header.ifindex,
            bridge,
            mac: lladdr(m)?,
            vlan,
            own: m.header.flags.contains(NeighbourFlags::Own),
            permanent: m.header.state == NeighbourState::Permanent,
        })
    }
}

fn lladdr(m: &NeighbourMessage) -> Option<String> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(mac) if mac.len() == 6 => Some(mac_text(mac)),
        _ => None,
    })
}

fn neigh_word(s: NeighbourState) -> String {
    match s {
        NeighbourState::Incomplete => "INCOMPLETE".into(),
        NeighbourState::Reachable => "REACHABLE".into(),
        NeighbourState::Stale => "STALE".into(),
        NeighbourState::Delay => "DELAY".into(),
        NeighbourState::Probe => "PROBE".into(),
        NeighbourState::Failed => "FAILED".into(),
        NeighbourState::Noarp => "NOARP".into(),
        NeighbourState::Permanent => "PERMANENT".into(),
        NeighbourState::None => "NONE".into(),
        NeighbourState::Other(n) => format!("0x{n:x}"),
        _ => "UNKNOWN".into(),
    }
}

/// What `ip route get` answers: how the kernel would route one packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub kind: RouteKind,
    /// The device it leaves by, by index.
    pub oif: Option<u32>,
    /// An IPv4 next hop.
    pub gateway: Option<Ipv4Addr>,
    pub prefsrc: Option<Ipv4Addr>,
    /// An IPv6 next hop (usually the router's link-local address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<Ipv6Addr>,
    /// The IPv6 source address the kernel would pick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefsrc6: Option<Ipv6Addr>,
    /// Who installed it, in iproute2's words (`kernel`, `boot`, `static`,
    /// `ra` — learned from a router advertisement —, `dhcp`, ...); None when
    /// unspecified (a lookup's answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    Unicast,
    /// To an address of this host.
    Local,
    Broadcast,
    /// unreachable, prohibit, blackhole: the packet is refused.
    Refused,
    Other,
}

/// One route of the main table (IPv4 or IPv6), as saved with the host (a saved
/// host answers route lookups from these).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteEntry {
    pub dst: IpAddr,
    pub prefix: u8,
    pub metric: u32,
    pub route: Route,
}

impl RouteEntry {
    /// A route of the main table (None for other tables and families).
    pub fn from_message(m: &RouteMessage) -> Option<Self> {
        let main = m.header.table == RouteHeader::RT_TABLE_MAIN
            || m.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Table(t) if *t == u32::from(RouteHeader::RT_TABLE_MAIN)));
        let mut dst = match m.header.address_family {
            AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            _ => return None,
        };
        if !main {
            return None;
        }
        let mut metric = 0;
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = IpAddr::V4(*d),
                RouteAttribute::Destination(RouteAddress::Inet6(d)) => dst = IpAddr::V6(*d),
                RouteAttribute::Priority(p) => metric = *p,
                _ => {}
            }
        }
        Some(RouteEntry {
            dst,
            prefix: m.header.destination_prefix_length,
            metric,
            route: Route::from_message(m),
        })
    }

    fn covers(&self, ip: IpAddr) -> bool {
        match (self.dst, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = match self.prefix {
                    0 => 0,
                    n => u32::MAX << (32 - u32::from(n.min(32))),
                };
                u32::from(ip) & mask == u32::from(net) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => in_prefix6(ip, net, self.prefix),
            _ => false,
        }
    }
}

/// `ip` lies in `net/len`.
pub fn in_prefix6(ip: Ipv6Addr, net: Ipv6Addr, len: u8) -> bool {
    let mask = match len {
        0 => 0,
        n => u128::MAX << (128 - u32::from(n.min(128))),
    };
    u128::from(ip) & mask == u128::from(net) & mask
}

/// The longest-prefix match in `routes` (lowest metric among equals): how a
/// saved host answers `ip route get` (its main table; policy rules are not
/// saved).
pub fn longest_match(routes: &[RouteEntry], ip: IpAddr) -> Option<&RouteEntry> {
    routes
        .iter()
        .filter(|r| r.covers(ip))
        .min_by_key(|r| (std::cmp::Reverse(r.prefix), r.metric))
}

impl Route {
    /// The next hop, whichever the family.
    pub fn next_hop(&self) -> Option<IpAddr> {
        self.gateway
            .map(IpAddr::V4)
            .or(self.gateway6.map(IpAddr::V6))
    }

    pub fn from_message(m: &RouteMessage) -> Self {
        let mut r = Route {
            kind: match m.header.kind {
                RouteType::Unicast => RouteKind::Unicast,
                RouteType::Local => RouteKind::Local,
                RouteType::Broadcast => RouteKind::Broadcast,
                RouteType::Unreachable | RouteType::Prohibit | RouteType::BlackHole => {
                    RouteKind::Refused
                }
                _ => RouteKind::Other,
            },
            oif: None,
            gateway: None,
            prefsrc: None,
            gateway6: None,
            prefsrc6: None,
            proto: proto_word(m.header.protocol),
        };
        for a in &m.attributes {
            match a {
                RouteAttribute::Oif(i) => r.oif = Some(*i),
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => r.gateway = Some(*g),
                RouteAttribute::Gateway(RouteAddress::Inet6(g)) => r.gateway6 = Some(*g),
                // An IPv4 route through an IPv6 next hop (RFC 5549) names it by RTA_VIA.
                RouteAttribute::Via(RouteVia::Inet6(g)) => r.gateway6 = Some(*g),
                RouteAttribute::PrefSource(RouteAddress::Inet(s)) => r.prefsrc = Some(*s),
                RouteAttribute::PrefSource(RouteAddress::Inet6(s)) => r.prefsrc6 = Some(*s),
                _ => {}
            }
        }
        r
    }
}

/// iproute2's word for who installed a route (`ip route` prints `proto ra`).
fn proto_word(p: RouteProtocol) -> Option<String> {
    Some(
        match p {
            RouteProtocol::Unspec => return None,
            RouteProtocol::IcmpRedirect => "redirect",
            RouteProtocol::Kernel => "kernel",
            RouteProtocol::Boot => "boot",
            RouteProtocol::Static => "static",
            RouteProtocol::Ra => "ra",
            RouteProtocol::Dhcp => "dhcp",
            other => return Some(u8::from(other).to_string()),
        }
        .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(dst: &str, prefix: u8, metric: u32, proto: &str) -> RouteEntry {
        RouteEntry {
            dst: dst.parse().unwrap(),
            prefix,
            metric,
            route: Route {
                kind: RouteKind::Unicast,
                oif: Some(3),
                gateway: None,
                prefsrc: None,
                gateway6: None,
                prefsrc6: None,
                proto: Some(proto.into()),
            },
        }
    }

    /// The longest prefix of the destination's family wins; a saved host of
    /// both families answers each from its own routes.
    #[test]
    fn longest_match_keeps_the_families_apart() {
        let routes = [
            entry("0.0.0.0", 0, 0, "static"),
            entry("::", 0, 1024, "ra"),
            entry("2001:db8:1::", 64, 256, "kernel"),
            entry("2001:db8::", 32, 100, "static"),
        ];
        let at = |ip: &str| longest_match(&routes, ip.parse().unwrap()).map(|r| r.dst.to_string());
        assert_eq!(at("2001:db8:1::100").as_deref(), Some("2001:db8:1::"));
        assert_eq!(at("2001:db8:2::1").as_deref(), Some("2001:db8::"));
        assert_eq!(at("2001:4860::8888").as_deref(), Some("::"));
        assert_eq!(at("203.0.113.8").as_deref(), Some("0.0.0.0"));
        assert!(in_prefix6(
            "fe80::1".parse().unwrap(),
            "fe80::".parse().unwrap(),
            10
        ));
    }
}
