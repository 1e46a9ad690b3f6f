//! The `bond` check: a bond on the guests' way out (the bridge's port toward
//! the LAN in bridged mode, or the routed uplink; directly or under a VLAN
//! device) must have a working slave, and in 802.3ad mode an LACP partner.
//! Read from the host model (the bond's and each slave's netlink attributes,
//! what `/proc/net/bonding/<bond>` prints).

use super::{Check, Status};
use crate::{
    host::{
        bond::{slave_problem, slaves_words},
        Host, Link,
    },
    topology::Topology,
};

/// One check per bond on the path; nothing when there is none.
pub fn check(t: &Topology, host: &Host) -> Vec<Check> {
    let mut bonds: Vec<&Link> = Vec::new();
    for name in t.path_names().iter().flat_map(|n| n.split(", ")) {
        if let Some(b) = host.bond_under(name) {
            if !bonds.iter().any(|x| x.index == b.index) {
                bonds.push(b);
            }
        }
    }
    bonds.iter().map(|b| bond_check(t, host, b)).collect()
}

/// What a bond without a working slave means for the guests behind it.
fn what_it_means(t: &Topology, bond: &str) -> String {
    match (&t.lan, &t.bridge) {
        (Some(_), Some(br)) => format!(
            "{bond} has no carrier, so {} has no way to the LAN: every guest behind {} is cut off (the bridge drops their frames)",
            br.name, br.name
        ),
        _ => format!(
            "{bond} has no carrier: nothing routed out of it leaves the host, the guests' traffic included"
        ),
    }
}

fn bond_check(t: &Topology, host: &Host, bond: &Link) -> Check {
    let name = &bond.name;
    let info = bond.bond.clone().unwrap_or_default();
    let mode = match info.mode.is_empty() {
        true => "bond".to_string(),
        false => info.mode.clone(),
    };
    let subject = name.clone();
    let slaves = host.slaves_of(name);
    if slaves.is_empty() {
        return Check::new("bond", Status::Fail, subject)
            .evidence(format!(
                "{name} ({mode}) has no slaves: {}",
                what_it_means(t, name)
            ))
            .fix(format!(
                "enslave the NICs: ip link set <nic> down && ip link set <nic> master {name} (Proxmox: bond-slaves in /etc/network/interfaces, then ifreload -a)"
            ));
    }
    let problems: Vec<(String, String)> = slaves.iter().filter_map(|s| slave_problem(s)).collect();
    let words = slaves_words(host, name);
    if problems.len() == slaves.len() {
        let fixes: Vec<String> = problems.iter().map(|(_, f)| f.clone()).collect();
        return Check::new("bond", Status::Fail, subject)
            .evidence(format!(
                "{name} ({mode}) has no working slave ({words}): {}",
                what_it_means(t, name)
            ))
            .fix(fixes.join("; "));
    }
    if info.lacp_without_partner() {
        return lacp_check(name, &info, &slaves, &words);
    }
    if let Some((what, fix)) = problems.first() {
        let working: Vec<&str> = slaves
            .iter()
            .filter(|s| slave_problem(s).is_none())
            .map(|s| s.name.as_str())
            .collect();
        return Check::new("bond", Status::Warn, subject)
            .evidence(format!(
                "{name} ({mode}) runs on {} alone: {what}; the guests still have their way out, without redundancy",
                working.join(", ")
            ))
            .fix(fix.clone());
    }
    let active = info
        .active_slave
        .and_then(|i| host.name_of(i))
        .map(|a| format!(", active slave {a}"))
        .unwrap_or_default();
    let partner = match (&info.ad_partner_mac, info.ad_aggregator) {
        (Some(mac), Some(agg)) if info.is_lacp() => {
            format!(", LACP partner {mac} on aggregator {agg}")
        }
        _ => String::new(),
    };
    Check::new("bond", Status::Pass, subject)
        .evidence(format!("{name} ({mode}): {words}{active}{partner}"))
}

/// 802.3ad with no partner: the switch ports do not speak LACP.
fn lacp_check(name: &str, info: &crate::host::bond::Bond, slaves: &[&Link], words: &str) -> Check {
    let agg = info.ad_aggregator;
    let in_agg: Vec<&str> = slaves
        .iter()
        .filter(|s| {
            s.bond_slave
                .as_ref()
                .is_some_and(|b| agg.is_some() && b.ad_aggregator == agg)
        })
        .map(|s| s.name.as_str())
        .collect();
    let defaulted: Vec<&str> = slaves
        .iter()
        .filter(|s| s.bond_slave.as_ref().is_some_and(|b| b.partner_defaulted()))
        .map(|s| s.name.as_str())
        .collect();
    let defaulted = match defaulted.is_empty() {
        true => String::new(),
        false => format!(
            "; no LACPDU received on {} (partner state defaulted)",
            defaulted.join(", ")
        ),
    };
    let agg_words = match (agg, in_agg.is_empty()) {
        (Some(a), false) => format!(
            "; its active aggregator {a} holds only {} (each slave aggregates alone)",
            in_agg.join(", ")
        ),
        _ => String::new(),
    };
    Check::new("bond", Status::Fail, name)
        .evidence(format!(
            "{name} (802.3ad, {words}) has no LACP partner: the partner MAC is {} (no LACPDU came back from the switch){defaulted}{agg_words}. The switch ports are not a LAG: the bond sends by one port while the switch may deliver the guests' replies to another, which the bond drops, and a switch that waits for LACP keeps the ports blocked",
            info.ad_partner_mac.as_deref().unwrap_or(crate::host::bond::NO_PARTNER)
        ))
        .fix(format!(
            "configure the switch ports of {} as one LACP (802.3ad) channel, or run {name} without LACP: ip link set {name} type bond mode active-backup (with its slaves released first; Proxmox: bond-mode active-backup in /etc/network/interfaces, then ifreload -a)",
            slaves.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
        ))
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::{
        host::bond::{Bond, BondSlave},
        topology::{Evidence, Location},
    };

    /// bond0 of eno1 and eno2 (flags given), a port of vmbr0.
    fn host(mode: &str, eno1: &[&str], eno2: &[&str], partner: Option<&str>) -> Host {
        let links: Value = json!([
            {"ifindex":2,"ifname":"vmbr0","flags":["UP","LOWER_UP"],"linkinfo":{"info_kind":"bridge"}},
            {"ifindex":3,"ifname":"bond0","master":"vmbr0","flags":["UP","LOWER_UP"],
             "linkinfo":{"info_kind":"bond","info_slave_kind":"bridge","info_slave_data":{"state":"forwarding"}}},
            {"ifindex":4,"ifname":"eno1","master":"bond0","flags":eno1},
            {"ifindex":5,"ifname":"eno2","master":"bond0","flags":eno2},
            {"ifindex":6,"ifname":"tap100i0","master":"vmbr0","flags":["UP","LOWER_UP"],"linkinfo":{"info_kind":"tun"}}
        ]);
        let mut h = Host::from_links(&links);
        for l in &mut h.links {
            match l.name.as_str() {
                "bond0" => {
                    l.bond = Some(Bond {
                        mode: mode.into(),
                        miimon: 100,
                        ad_aggregator: partner.map(|_| 1),
                        ad_partner_mac: partner.map(str::to_string),
                        ..Bond::default()
                    })
                }
                "eno1" | "eno2" => {
                    l.bond_slave = Some(BondSlave {
                        mii: if l.lower_up { "up" } else { "down" }.into(),
                        link_failures: u32::from(!l.lower_up),
                        ad_aggregator: Some(if l.name == "eno1" { 1 } else { 2 }),
                        ..BondSlave::default()
                    })
                }
                _ => {}
            }
        }
        h
    }

    fn topo(h: &Host) -> Topology {
        let location = Location {
            ports: vec!["tap100i0".into()],
            mac: None,
            evidence: Evidence::FirstPacket("first request".into()),
        };
        let (vm, dst) = (
            "192.0.2.100".parse().unwrap(),
            "203.0.113.8".parse().unwrap(),
        );
        Topology::for_ports(h, vm, dst, location).unwrap()
    }

    fn checks(h: &Host) -> Vec<Check> {
        let mut t = topo(h);
        t.lan = Some(crate::topology::bridged::lan_of(
            h,
            "vmbr0",
            "192.0.2.1".parse().unwrap(),
            &["tap100i0".into()],
        ));
        check(&t, h)
    }

    const UP: &[&str] = &["UP", "LOWER_UP"];

    #[test]
    fn every_slave_down_cuts_the_guests_off() {
        let h = host("active-backup", &["UP"], &[], None);
        let c = &checks(&h)[0];
        assert_eq!((c.check.as_str(), c.status), ("bond", Status::Fail));
        assert!(
            c.evidence
                .contains("eno1 no carrier, 1 link failure, eno2 administratively down"),
            "{}",
            c.evidence
        );
        assert!(c.evidence.contains("every guest behind vmbr0 is cut off"));
        let fix = c.fix.as_deref().unwrap();
        assert!(
            fix.contains("ethtool eno1") && fix.contains("ip link set eno2 up"),
            "{fix}"
        );
    }

    #[test]
    fn one_slave_down_is_a_warning() {
        let h = host("active-backup", UP, &["UP"], None);
        let c = &checks(&h)[0];
        assert_eq!(c.status, Status::Warn, "{}", c.evidence);
        assert!(c.evidence.contains("runs on eno1 alone"), "{}", c.evidence);
        let h = host("active-backup", UP, UP, None);
        assert_eq!(checks(&h)[0].status, Status::Pass);
    }

    #[test]
    fn lacp_without_partner_fails_with_both_fixes() {
        let h = host("802.3ad", UP, UP, Some("00:00:00:00:00:00"));
        let c = &checks(&h)[0];
        assert_eq!(c.status, Status::Fail);
        assert!(c.evidence.contains("no LACP partner"), "{}", c.evidence);
        assert!(
            c.evidence.contains("aggregator 1 holds only eno1"),
            "{}",
            c.evidence
        );
        let fix = c.fix.as_deref().unwrap();
        assert!(fix.contains("LACP (802.3ad) channel") && fix.contains("active-backup"));
        let h = host("802.3ad", UP, UP, Some("02:00:00:00:02:01"));
        let c = &checks(&h)[0];
        assert_eq!(c.status, Status::Pass, "{}", c.evidence);
        assert!(c.evidence.contains("LACP partner 02:00:00:00:02:01"));
    }

    /// `ip -d -j link show` of the bridged lab with bond0 (eno1, eno2) under
    /// vmbr0, saved from Debian's 6.12 in the VM runner (target/measure).
    fn saved(case: &str) -> Host {
        let path = format!(
            "{}/src/host/testdata/bond-{case}-6.12.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap();
        Host::from_links(&serde_json::from_str(&text).unwrap())
    }

    #[test]
    fn real_bonds_from_the_kernel() {
        let h = saved("ab-healthy");
        let b = h.link("bond0").and_then(|l| l.bond.clone()).unwrap();
        assert_eq!((b.mode.as_str(), b.miimon), ("active-backup", 100));
        assert_eq!(b.active_slave, h.index_of("eno1"));
        assert!(h.link("bond0").unwrap().port_state.is_some());
        assert!(h.link("eno1").unwrap().port_state.is_none());
        let c = &checks(&h)[0];
        assert_eq!(c.status, Status::Pass, "{}", c.evidence);
        assert!(c.evidence.contains("active slave eno1"), "{}", c.evidence);

        let c = &checks(&saved("ab-one-down"))[0];
        assert_eq!(c.status, Status::Warn, "{}", c.evidence);
        assert!(c
            .evidence
            .contains("runs on eno2 alone: eno1 no carrier, 1 link failure"));

        let c = &checks(&saved("ab-all-down"))[0];
        assert_eq!(c.status, Status::Fail, "{}", c.evidence);
        assert!(
            c.evidence.contains("has no working slave"),
            "{}",
            c.evidence
        );

        let h = saved("lacp-no-partner");
        let eno2 = h.link("eno2").and_then(|l| l.bond_slave.clone()).unwrap();
        assert_eq!(
            (eno2.ad_aggregator, eno2.ad_actor_state),
            (Some(2), Some(69))
        );
        assert!(eno2.partner_defaulted() && !eno2.active);
        let c = &checks(&h)[0];
        assert_eq!(c.status, Status::Fail, "{}", c.evidence);
        assert!(
            c.evidence.contains("partner MAC is 00:00:00:00:00:00"),
            "{}",
            c.evidence
        );
        assert!(
            c.evidence.contains("no LACPDU received on eno1, eno2"),
            "{}",
            c.evidence
        );
        assert!(
            c.evidence.contains("aggregator 1 holds only eno1"),
            "{}",
            c.evidence
        );
    }

    #[test]
    fn no_bond_no_check() {
        let h = Host::from_links(&json!([
            {"ifindex":2,"ifname":"vmbr0","linkinfo":{"info_kind":"bridge"}},
            {"ifindex":6,"ifname":"tap100i0","master":"vmbr0","linkinfo":{"info_kind":"tun"}}
        ]));
        assert!(check(&topo(&h), &h).is_empty());
    }
}
