//! Addresses, neighbours, the bridges' FDB and route lookups as the kernel
//! gives them (RTM_NEWADDR, RTM_NEWNEIGH, RTM_NEWROUTE), typed.

use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage},
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
    },
    route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType},
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
}

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
        Some(Address {
            index: m.header.index,
            addr: local.or(address)?,
            prefix: m.header.prefix_len,
        })
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
    pub gateway: Option<Ipv4Addr>,
    pub prefsrc: Option<Ipv4Addr>,
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

/// One IPv4 route of the main table, as saved with the host (a saved host
/// answers route lookups from these).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteEntry {
    pub dst: Ipv4Addr,
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
        if m.header.address_family != AddressFamily::Inet || !main {
            return None;
        }
        let mut dst = Ipv4Addr::UNSPECIFIED;
        let mut metric = 0;
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
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

    fn covers(&self, ip: Ipv4Addr) -> bool {
        let mask = match self.prefix {
            0 => 0,
            n => u32::MAX << (32 - u32::from(n.min(32))),
        };
        u32::from(ip) & mask == u32::from(self.dst) & mask
    }
}

/// The longest-prefix match in `routes` (lowest metric among equals): how a
/// saved host answers `ip route get` (its main table; policy rules are not
/// saved).
pub fn longest_match(routes: &[RouteEntry], ip: Ipv4Addr) -> Option<&RouteEntry> {
    routes
        .iter()
        .filter(|r| r.covers(ip))
        .min_by_key(|r| (std::cmp::Reverse(r.prefix), r.metric))
}

impl Route {
    pub fn from_message(m: &RouteMessage) -> Self {
        let v4 = |a: &RouteAddress| match a {
            RouteAddress::Inet(ip) => Some(*ip),
            _ => None,
        };
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
        };
        for a in &m.attributes {
            match a {
                RouteAttribute::Oif(i) => r.oif = Some(*i),
                RouteAttribute::Gateway(g) => r.gateway = v4(g),
                RouteAttribute::PrefSource(s) => r.prefsrc = v4(s),
                _ => {}
            }
        }
        r
    }
}
