//! Drops at a bond's slave: a frame that came in by a slave the bond does not
//! take frames from (802.3ad: a slave outside the active aggregator, as when
//! no LACP partner answered and each slave aggregates alone; active-backup: the
//! backup slave) is freed by the kernel's receive path (UNHANDLED_PROTO in
//! `__netif_receive_skb_core`, the bond having passed it on "exact match"
//! only). Said from the bond's state read over netlink when the verdict is made.

use super::*;
use crate::host::{bond::Bond, Host, Link};

impl Explainer {
    /// `d` was freed on a slave of a bond on the way out; None when that
    /// slave is one the bond takes frames from (then the drop is not the
    /// bond's doing).
    pub(super) fn blame_bond_slave(&self, d: &Drop, stage: Stage, what: &str) -> Option<Blame> {
        let bond_name = self.topo.upper_of(d.ifindex)?;
        let now = Host::read().ok()?;
        let bond = now.link(bond_name).filter(|l| l.is_bond())?;
        let info = bond.bond.clone().unwrap_or_default();
        let slave = now.link_at(d.ifindex)?;
        let (rule, why) = refused_by(&now, bond, &info, slave)?;
        let name = &slave.name;
        Some(Blame {
            stage,
            rule: Some(rule),
            hint: format!(
                "{what} came in by {name}, and {bond_name} ({}) does not take frames from it: {why}, so the kernel freed it",
                info.mode
            ),
            ifname: Some(name.clone()),
        })
    }
}

/// Why `bond` takes no frames from `slave`, with its fix; None when it does.
fn refused_by(host: &Host, bond: &Link, info: &Bond, slave: &Link) -> Option<(String, String)> {
    let b = &bond.name;
    let s = &slave.name;
    let state = slave.bond_slave.clone().unwrap_or_default();
    if info.is_lacp() {
        let agg = info.ad_aggregator;
        if agg.is_none() || state.ad_aggregator == agg {
            return None;
        }
        let partner = match info.lacp_without_partner() {
            true => "; the bond has no LACP partner (partner MAC 00:00:00:00:00:00), so each slave aggregates alone and only one carries traffic, while the switch, speaking no LACP (a static LAG, or plain ports), sends to every port".to_string(),
            false => String::new(),
        };
        let others: Vec<String> = host
            .slaves_of(b)
            .iter()
            .filter(|l| {
                l.bond_slave
                    .as_ref()
                    .is_some_and(|x| x.ad_aggregator == agg)
            })
            .map(|l| l.name.clone())
            .collect();
        return Some((
            format!(
                "bond {b}: {s} not in the active aggregator {} (802.3ad{})",
                agg.unwrap_or_default(),
                match info.lacp_without_partner() {
                    true => ", no LACP partner",
                    false => "",
                }
            ),
            format!(
                "{s} is in aggregator {}, the bond uses aggregator {} ({}){partner}; fix: configure the switch ports as one LACP (802.3ad) channel, or run {b} as bond-mode active-backup",
                state.ad_aggregator.map_or("?".into(), |a| a.to_string()),
                agg.unwrap_or_default(),
                others.join(", ")
            ),
        ));
    }
    if info.mode == "active-backup" && !state.active {
        let active = info
            .active_slave
            .and_then(|i| host.name_of(i))
            .unwrap_or("none");
        return Some((
            format!("bond {b}: {s} is a backup slave (active: {active})"),
            format!(
                "{s} is {b}'s backup slave and the active one is {active}; the switch sends the guests' frames to the backup port (it learned their MACs there, or treats both ports as one LAG): configure its ports as independent access ports, or check fail_over_mac"
            ),
        ));
    }
    None
}
