//! Network interfaces as the kernel describes them (RTM_NEWLINK): what
//! `ip -d link show` prints, typed.

use serde::{Deserialize, Serialize};

use netlink_packet_route::link::{
    BridgePortState, InfoBridge, InfoBridgePort, InfoData, InfoPortData, InfoVlan, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage, State,
};

use super::bond::{Bond, BondSlave};

/// One interface of this network namespace.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `bridge`, `veth`, `tun`, `vlan`, `bond`, ... (None: a plain device).
    pub kind: Option<String>,
    /// The bridge (or bond) this interface is a port of, by index.
    pub master: Option<u32>,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// Carrier (IFF_LOWER_UP): a TAP while a VM holds it, a veth while its peer
    /// is up.
    pub lower_up: bool,
    /// RFC 2863 operational state as iproute2 prints it: `UP`, `DOWN`,
    /// `LOWERLAYERDOWN`, `UNKNOWN`, ...
    pub operstate: String,
    pub mtu: u32,
    /// Hardware address, lower-case `aa:bb:cc:dd:ee:ff`.
    pub mac: Option<String>,
    /// IFLA_LINK: a veth's peer or a VLAN's lower device, by index, when it is in
    /// this namespace.
    pub peer: Option<u32>,
    /// A bridge port's STP state.
    pub port_state: Option<PortState>,
    /// A bridge runs STP.
    pub stp: bool,
    /// A bridge's STP forward delay, in hundredths of a second (as iproute2
    /// prints it).
    #[serde(default)]
    pub forward_delay: Option<u32>,
    /// A bridge filters by VLAN (`vlan_filtering 1`).
    #[serde(default)]
    pub vlan_filtering: bool,
    /// A VLAN device's id.
    pub vlan_id: Option<u16>,
    /// A bond's mode and state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bond: Option<Bond>,
    /// A bond slave's state as its bond sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bond_slave: Option<BondSlave>,
}

impl Link {
    pub fn is_bridge(&self) -> bool {
        self.kind.as_deref() == Some("bridge")
    }

    pub fn is_kind(&self, kind: &str) -> bool {
        self.kind.as_deref() == Some(kind)
    }

    pub fn is_bond(&self) -> bool {
        self.is_kind("bond")
    }

    pub fn from_message(m: &LinkMessage) -> Option<Self> {
        let flags = m.header.flags;
        let mut link = Link {
            index: m.header.index,
            up: flags.contains(LinkFlags::Up),
            lower_up: flags.contains(LinkFlags::LowerUp),
            ..Link::default()
        };
        let mut netns_peer = false;
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Mtu(v) => link.mtu = *v,
                LinkAttribute::Controller(i) => link.master = Some(*i),
                LinkAttribute::Link(i) => link.peer = Some(*i),
                LinkAttribute::LinkNetNsId(_) => netns_peer = true,
                LinkAttribute::OperState(s) => link.operstate = oper_word(s),
                LinkAttribute::Address(mac) if mac.len() == 6 => link.mac = Some(mac_text(mac)),
                LinkAttribute::LinkInfo(infos) => link.read_info(infos),
                _ => {}
            }
        }
        // A peer in another namespace has an index that means nothing here.
        if netns_peer {
            link.peer = None;
        }
        (!link.name.is_empty()).then_some(link)
    }

    fn read_info(&mut self, infos: &[LinkInfo]) {
        for i in infos {
            match i {
                LinkInfo::Kind(k) => self.kind = Some(k.to_string()),
                LinkInfo::Data(InfoData::Bridge(attrs)) => {
                    self.stp = attrs
                        .iter()
                        .any(|a| matches!(a, InfoBridge::StpState(s) if u32::from(*s) != 0));
                    for a in attrs {
                        match a {
                            InfoBridge::ForwardDelay(d) => self.forward_delay = Some(*d),
                            InfoBridge::VlanFiltering(v) => self.vlan_filtering = *v,
                            _ => {}
                        }
                    }
                }
                LinkInfo::Data(InfoData::Vlan(attrs)) => {
                    self.vlan_id = attrs.iter().find_map(|a| match a {
                        InfoVlan::Id(id) => Some(*id),
                        _ => None,
                    });
                }
                LinkInfo::Data(InfoData::Bond(attrs)) => self.bond = Some(Bond::from_info(attrs)),
                LinkInfo::PortData(InfoPortData::BondPort(attrs)) => {
                    self.bond_slave = Some(BondSlave::from_info(attrs))
                }
                LinkInfo::PortData(InfoPortData::BridgePort(attrs)) => {
                    self.port_state = attrs.iter().find_map(|a| match a {
                        InfoBridgePort::State(s) => Some(PortState::from(*s)),
                        _ => None,
                    });
                }
                _ => {}
            }
        }
    }
}

/// A bridge port's STP state, with iproute2's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortState {
    Disabled,
    Listening,
    Learning,
    Forwarding,
    Blocking,
    Other(u8),
}

impl PortState {
    pub fn word(self) -> String {
        match self {
            PortState::Disabled => "disabled".into(),
            PortState::Listening => "listening".into(),
            PortState::Learning => "learning".into(),
            PortState::Forwarding => "forwarding".into(),
            PortState::Blocking => "blocking".into(),
            PortState::Other(n) => format!("state {n}"),
        }
    }
}

impl From<BridgePortState> for PortState {
    fn from(s: BridgePortState) -> Self {
        match s {
            BridgePortState::Disabled => PortState::Disabled,
            BridgePortState::Listening => PortState::Listening,
            BridgePortState::Learning => PortState::Learning,
            BridgePortState::Forwarding => PortState::Forwarding,
            BridgePortState::Blocking => PortState::Blocking,
            BridgePortState::Other(n) => PortState::Other(n),
            _ => PortState::Other(u8::MAX),
        }
    }
}

/// iproute2's word for an operational state.
fn oper_word(s: &State) -> String {
    match s {
        State::Up => "UP",
        State::Down => "DOWN",
        State::LowerLayerDown => "LOWERLAYERDOWN",
        State::Dormant => "DORMANT",
        State::NotPresent => "NOTPRESENT",
        State::Testing => "TESTING",
        _ => "UNKNOWN",
    }
    .to_string()
}

pub fn mac_text(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
