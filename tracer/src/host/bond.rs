//! Bonds as the kernel describes them over netlink: the bond's own settings
//! (IFLA_INFO_DATA: mode, active slave, MII monitor, the 802.3ad aggregator's
//! partner) and each slave's view (IFLA_INFO_SLAVE_DATA: active or backup, MII
//! status, link failures, its 802.3ad aggregator and LACP port states) — what
//! `/proc/net/bonding/<bond>` prints, typed.

use serde::{Deserialize, Serialize};

use netlink_packet_route::link::{
    BondAdInfo, BondMode, BondPortState, InfoBond, InfoBondPort, LacpState, MiiStatus,
};

use super::{link::mac_text, Host, Link};

/// A bond device's settings and state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bond {
    /// The kernel's word: `active-backup`, `802.3ad`, `balance-rr`, ...
    pub mode: String,
    /// The slave carrying traffic now (active-backup, tlb, alb), by index.
    pub active_slave: Option<u32>,
    /// MII link monitoring interval in ms (0: link failures go unnoticed
    /// unless ARP monitoring runs).
    pub miimon: u32,
    /// 802.3ad: the active aggregator's id and its partner's system MAC
    /// (all zeros: no LACP partner answered).
    pub ad_aggregator: Option<u16>,
    pub ad_partner_mac: Option<String>,
}

/// A bond slave's state as its bond sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BondSlave {
    /// The bond uses it (`active`) or holds it in reserve (`backup`).
    pub active: bool,
    /// MII status: `up`, `down`, `going down`, `going back`.
    pub mii: String,
    pub link_failures: u32,
    /// 802.3ad: the aggregator the slave is in.
    pub ad_aggregator: Option<u16>,
    /// 802.3ad: LACP port state bits (IEEE 802.1AX: activity, timeout,
    /// aggregation, sync, collecting, distributing, defaulted, expired) of this
    /// end (actor) and of what the partner last said.
    pub ad_actor_state: Option<u8>,
    pub ad_partner_state: Option<u8>,
}

/// The zero MAC the kernel reports for an aggregator no partner answered.
pub const NO_PARTNER: &str = "00:00:00:00:00:00";

impl Bond {
    pub fn from_info(attrs: &[InfoBond]) -> Self {
        let mut b = Bond::default();
        for a in attrs {
            match a {
                InfoBond::Mode(m) => b.mode = mode_word(*m),
                InfoBond::ActivePort(i) if *i != 0 => b.active_slave = Some(*i),
                InfoBond::MiiMon(ms) => b.miimon = *ms,
                InfoBond::AdInfo(infos) => {
                    for i in infos {
                        match i {
                            BondAdInfo::Aggregator(id) => b.ad_aggregator = Some(*id),
                            BondAdInfo::PartnerMac(mac) => b.ad_partner_mac = Some(mac_text(mac)),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        b
    }

    pub fn is_lacp(&self) -> bool {
        self.mode == "802.3ad"
    }

    /// 802.3ad and no partner answered LACP for the active aggregator (the
    /// switch ports are not configured as a LAG).
    pub fn lacp_without_partner(&self) -> bool {
        self.is_lacp()
            && self
                .ad_partner_mac
                .as_deref()
                .is_none_or(|m| m == NO_PARTNER)
    }
}

impl BondSlave {
    pub fn from_info(attrs: &[InfoBondPort]) -> Self {
        let mut s = BondSlave::default();
        for a in attrs {
            match a {
                InfoBondPort::BondPortState(st) => s.active = *st == BondPortState::Active,
                InfoBondPort::MiiStatus(m) => s.mii = mii_word(*m),
                InfoBondPort::LinkFailureCount(n) => s.link_failures = *n,
                InfoBondPort::AdAggregatorId(id) => s.ad_aggregator = Some(*id),
                InfoBondPort::AdActorOperPortState(st) => s.ad_actor_state = Some(st.bits()),
                InfoBondPort::AdPartnerOperPortState(st) => s.ad_partner_state = Some(st.bits()),
                _ => {}
            }
        }
        s
    }

    pub fn mii_up(&self) -> bool {
        self.mii == "up"
    }

    /// The partner's LACP state is the default the actor assumed (no LACPDU
    /// received on this slave).
    pub fn partner_defaulted(&self) -> bool {
        self.ad_actor_state
            .is_some_and(|s| LacpState::from_bits_retain(s).contains(LacpState::DEFAULTED))
    }
}

/// A slave's problem in words and its fix; None when it carries traffic.
pub fn slave_problem(s: &Link) -> Option<(String, String)> {
    let n = &s.name;
    let failures = s
        .bond_slave
        .as_ref()
        .map(|b| b.link_failures)
        .filter(|f| *f > 0)
        .map(|f| format!(", {f} link failure{}", if f == 1 { "" } else { "s" }))
        .unwrap_or_default();
    if !s.up {
        return Some((
            format!("{n} administratively down"),
            format!("ip link set {n} up"),
        ));
    }
    if !s.lower_up {
        return Some((
            format!("{n} no carrier{failures}"),
            format!("check {n}'s cable and switch port (ethtool {n})"),
        ));
    }
    if s.bond_slave.as_ref().is_some_and(|b| !b.mii_up()) {
        let mii = s.bond_slave.as_ref().map_or("", |b| b.mii.as_str());
        return Some((
            format!("{n} MII {mii}{failures}"),
            format!("check {n}'s link (ethtool {n}); the bond's miimon sees it {mii}"),
        ));
    }
    None
}

/// The slaves of `bond` in words: "eno1 no carrier, eno2 administratively
/// down"; "no slaves" when it has none.
pub fn slaves_words(host: &Host, bond: &str) -> String {
    let slaves = host.slaves_of(bond);
    if slaves.is_empty() {
        return "no slaves".into();
    }
    slaves
        .iter()
        .map(|s| match slave_problem(s) {
            Some((words, _)) => words,
            None => format!("{} up", s.name),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn mode_word(m: BondMode) -> String {
    match m {
        BondMode::Other(n) => format!("mode {n}"),
        m => m.to_string(),
    }
}

/// iproute2's words for the MII status.
fn mii_word(m: MiiStatus) -> String {
    match m {
        MiiStatus::Up => "up".into(),
        MiiStatus::Down => "down".into(),
        MiiStatus::GoingDown => "going down".into(),
        MiiStatus::GoingBack => "going back".into(),
        MiiStatus::Other(n) => format!("state {n}"),
        _ => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_bond_and_its_slaves() {
        let b = Bond::from_info(&[
            InfoBond::Mode(BondMode::Ieee8023Ad),
            InfoBond::MiiMon(100),
            InfoBond::ActivePort(0),
            InfoBond::AdInfo(vec![
                BondAdInfo::Aggregator(1),
                BondAdInfo::NumPorts(1),
                BondAdInfo::PartnerMac([0; 6]),
            ]),
        ]);
        assert_eq!(b.mode, "802.3ad");
        assert_eq!(
            (b.miimon, b.active_slave, b.ad_aggregator),
            (100, None, Some(1))
        );
        assert!(b.lacp_without_partner());
        let b = Bond::from_info(&[
            InfoBond::Mode(BondMode::ActiveBackup),
            InfoBond::ActivePort(7),
        ]);
        assert_eq!(
            (b.mode.as_str(), b.active_slave),
            ("active-backup", Some(7))
        );
        assert!(!b.lacp_without_partner());

        let s = BondSlave::from_info(&[
            InfoBondPort::BondPortState(BondPortState::Backup),
            InfoBondPort::MiiStatus(MiiStatus::Down),
            InfoBondPort::LinkFailureCount(2),
            InfoBondPort::AdAggregatorId(2),
            InfoBondPort::AdActorOperPortState(
                LacpState::LACP_ACTIVITY | LacpState::AGGREGATION | LacpState::DEFAULTED,
            ),
        ]);
        assert!(!s.active && !s.mii_up());
        assert_eq!((s.mii.as_str(), s.link_failures), ("down", 2));
        assert_eq!(s.ad_aggregator, Some(2));
        assert!(s.partner_defaulted());
    }
}
