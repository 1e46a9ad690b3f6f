//! The `vlan` check: on a VLAN-aware bridge (`vlan_filtering 1`), the VM's port
//! must have a PVID (its untagged frames belong to no VLAN otherwise), the one
//! its configuration asks for (Proxmox `tag=`, libvirt `<vlan><tag>`), and in
//! bridged mode the port toward the LAN's router must carry that VLAN. The
//! VLAN table is read over netlink from the running host (a saved host has
//! none: then the check says so and passes nothing).

use std::collections::BTreeMap;

use super::{Check, Status, Subject};
use crate::{
    host::{
        vlan::{self, PortVlans},
        Host,
    },
    topology::{Evidence, Topology},
};

/// Nothing when the VM's bridge does not filter by VLAN.
pub fn check(s: &Subject, t: &Topology, host: &Host) -> Vec<Check> {
    let Some(bridge) = &t.bridge else {
        return Vec::new();
    };
    if !host.link(&bridge.name).is_some_and(|l| l.vlan_filtering) {
        return Vec::new();
    }
    let table = match host.live.then(vlan::read) {
        Some(Ok(table)) => table,
        Some(Err(e)) => {
            return vec![
                Check::new("vlan", Status::Warn, &bridge.name).evidence(format!(
                    "{} filters by VLAN; its VLAN table could not be read: {e:#}",
                    bridge.name
                )),
            ]
        }
        None => return Vec::new(),
    };
    // In bridged mode's first-packet watch every port of the bridge is a
    // candidate: the VM's are its TAPs, the rest lead to the LAN.
    let tap = |p: &str| host.link(p).is_some_and(|l| l.is_kind("tun"));
    let first_packet = matches!(t.evidence, Evidence::FirstPacket(_));
    let vm_ports: Vec<&str> = t
        .ports
        .iter()
        .map(|p| p.name.as_str())
        .filter(|p| !first_packet || tap(p))
        .collect();
    let toward_router: Vec<String> = match &t.lan {
        Some(lan) => {
            let known = lan.router_ports(host, &bridge.name);
            match known.is_empty() {
                false => known,
                true => host
                    .ports_of(&bridge.name)
                    .into_iter()
                    .filter(|p| !tap(p) && !vm_ports.contains(&p.as_str()))
                    .collect(),
            }
        }
        None => Vec::new(),
    };
    vm_ports
        .iter()
        .map(|p| port_check(s, &toward_router, &table, &bridge.name, p))
        .collect()
}

fn port_check(
    s: &Subject,
    toward_router: &[String],
    table: &BTreeMap<String, PortVlans>,
    bridge: &str,
    port: &str,
) -> Check {
    let of = |p: &str| table.get(p).cloned().unwrap_or_default();
    let vlans = of(port);
    let want = s
        .nics
        .iter()
        .find(|n| n.port.as_deref() == Some(port))
        .and_then(|n| n.vlan.map(|v| (v, n.config.display().to_string())));
    let lan_vid = toward_router.iter().find_map(|p| of(p).pvid());
    let subject = format!("{port} on {bridge}");
    let Some(pvid) = vlans.pvid() else {
        let vid = want
            .as_ref()
            .map(|(v, _)| *v)
            .or(lan_vid)
            .map_or("VID".into(), |v| v.to_string());
        return Check::new("vlan", Status::Fail, subject)
            .evidence(format!(
                "{bridge} filters by VLAN and {port} has no PVID (its VLANs: {}): the guest's untagged frames are dropped at ingress",
                vlans.words()
            ))
            .fix(format!(
                "bridge vlan add dev {port} vid {vid} pvid untagged (Proxmox: tag={vid} on the VM's NIC)"
            ));
    };
    if let Some((tag, config)) = want.filter(|(v, _)| *v != pvid) {
        return Check::new("vlan", Status::Fail, subject)
            .evidence(format!(
                "{port}'s PVID is {pvid}, but the VM's configuration ({config}) asks for VLAN {tag}"
            ))
            .fix(format!(
                "bridge vlan add dev {port} vid {tag} pvid untagged && bridge vlan del dev {port} vid {pvid} (or restart the VM's NIC so the hypervisor applies tag={tag})"
            ));
    }
    let lacking: Vec<String> = toward_router
        .iter()
        .filter(|p| !of(p).carries(pvid))
        .map(|p| format!("{p} ({})", of(p).words()))
        .collect();
    if !toward_router.is_empty() && lacking.len() == toward_router.len() {
        let first = &toward_router[0];
        return Check::new("vlan", Status::Fail, subject)
            .evidence(format!(
                "the guest is in VLAN {pvid} (the PVID of {port}), but the port toward the LAN's router does not carry it: {}",
                lacking.join(", ")
            ))
            .fix(format!(
                "bridge vlan add dev {first} vid {pvid} (Proxmox: bridge-vids on {bridge} in /etc/network/interfaces)"
            ));
    }
    Check::new("vlan", Status::Pass, subject).evidence(format!(
        "{port} is in VLAN {pvid} (PVID){}",
        match toward_router.is_empty() {
            true => String::new(),
            false => format!(
                ", which {} carries toward the LAN's router",
                toward_router.join(", ")
            ),
        }
    ))
}
