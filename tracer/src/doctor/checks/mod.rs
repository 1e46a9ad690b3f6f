//! The doctor's checks, in the order a packet meets what they check: the VM's
//! port and bridges, then routing, NAT and firewall, then DNS and addresses.
//! Each reads the running host (this network namespace) and returns a verdict
//! with evidence and, when something is wrong, the fixing command.

use std::net::IpAddr;

use super::{arp, Check, Status, Subject};
use crate::{
    explain::{fix, iptables, nft},
    host::{firewall, Host},
    hostconfig::VmNic,
    topology::{self, Evidence, Topology},
};

mod links;
mod nat_filter;
mod routing;
mod services;

use links::*;
pub use nat_filter::filter_culprit;
use nat_filter::*;
use routing::*;
use services::*;

pub fn all(s: &Subject, passive: bool) -> Vec<Check> {
    let host = &s.host;
    let topo = match &s.topo {
        Ok(t) => t,
        Err(e) => return vec![port_missing(s, e, host)],
    };
    let mut out = vec![vm_port(s, topo)];
    let membership = membership(s, topo, host);
    let detached = membership.iter().any(|c| c.status == Status::Fail);
    out.extend(membership);
    if detached {
        // Everything after this assumes the port is on its bridge.
        return out;
    }
    out.extend(links_up(s, topo, host));
    out.extend(stp(topo, host));
    out.extend(super::l2::checks(topo, host, passive));
    out.extend(super::bond::check(topo, host));
    out.extend(super::vlan::check(s, topo, host));
    out.extend(super::firewall_bridge::check(topo, host));
    if s.ipv6 {
        // Named by its IPv6 address: IPv4's checks would be about an address
        // the question did not name.
        out.push(mtu(topo));
        out.extend(super::v6::checks(s, topo, passive));
        return out;
    }
    out.extend(super::spoof::check(topo, host, &s.config_root));
    out.push(mtu(topo));
    let routed = topo.uplink.is_some() && !topo.bridged && !topo.dst_local;
    if routed {
        out.push(ip_forward(topo, host));
    }
    out.push(rp_filter(topo, host));
    out.push(route(s, topo));
    if let (Some(IpAddr::V4(gw)), Some(_)) = (topo.gateway, &topo.uplink) {
        out.push(gateway(topo, gw, host, passive));
    }
    if routed {
        out.push(nat(topo, host));
    }
    out.extend(firewall(topo, host));
    out.push(br_netfilter(s, topo));
    out.push(dns(s, topo));
    out.push(duplicate_ip(topo, host, passive));
    out.extend(super::v6::checks(s, topo, passive));
    out
}

/// The checks about state that changes from one moment to the next (links and
/// carrier, bridge membership and port states, neighbour entries), passively
/// (no ARP sent), over `now`: the host as read at the moment they are wanted.
pub fn volatile(s: &Subject, now: &Host) -> Vec<Check> {
    let Ok(topo) = &s.topo else {
        return Vec::new();
    };
    let mut out = membership(s, topo, now);
    out.extend(links_up(s, topo, now));
    out.extend(stp(topo, now));
    out.extend(super::l2::checks(topo, now, true));
    out.extend(super::bond::check(topo, now));
    out.extend(super::firewall_bridge::check(topo, now));
    if let (Some(IpAddr::V4(gw)), Some(_)) = (topo.gateway, &topo.uplink) {
        out.push(gateway(topo, gw, now, true));
    }
    out.extend(super::v6::volatile(s, topo, now));
    out
}

fn vm_port(s: &Subject, t: &Topology) -> Check {
    let ports: Vec<&str> = t.ports.iter().map(|p| p.name.as_str()).collect();
    let mac = t.vm_mac.as_deref().unwrap_or("MAC unknown");
    let mut c = Check::new("vm_port", Status::Pass, ports.join(", ")).evidence(format!(
        "{} ({mac}) found by {}",
        s.vm_label(),
        s.found_by
    ));
    if let Evidence::FirstPacket(why) = &t.evidence {
        // Bridged mode: no table knows the guest; with one candidate that is
        // its port, with several the first request will tell (trace mode).
        c.evidence = format!("{} ({mac}): {why}", s.vm_label());
        if ports.len() > 1 {
            c.status = Status::Warn;
            c.fix = Some(
                "trace it (pathtrace --vm-ip IP --to DEST) while the guest sends: its port is the one its request arrives on; or name it with --iface".into(),
            );
        }
    }
    if let Evidence::Guess(why) = &t.evidence {
        // Said, not silent: every check below is about a port nothing proved is
        // the VM's.
        c.status = Status::Warn;
        c.evidence = format!("{} ({mac}): {why}", s.vm_label());
        c.fix = Some(match ports.as_slice() {
            [one] => format!(
                "make sure {one} is the VM's port (its MAC: bridge fdb show dev {one}; the VM's configuration), then name it: --iface {one}"
            ),
            _ => "let the guest send something (ping its gateway) and run again, or name its port with --iface".into(),
        });
    }
    c
}

/// The VM's port could not be found: say why, and point at the likely cause.
fn port_missing(s: &Subject, why: &str, host: &Host) -> Check {
    let mut c = Check::new("vm_port", Status::Fail, s.vm_label()).evidence(why);
    if let Some(nic) = s
        .nics
        .iter()
        .find(|n| n.port.as_ref().is_some_and(|p| !host.has_link(p)))
    {
        c.evidence = format!(
            "{why}; its configured port {} does not exist: the VM is not running",
            nic.port.as_deref().unwrap_or_default()
        );
        c.fix = Some(start_command(nic));
        return c;
    }
    let orphans = orphan_ports(host);
    if let [port] = orphans.as_slice() {
        let bridge = expected_bridge(s, host, port).unwrap_or_else(|| "BRIDGE".into());
        c.check = "bridge_member".into();
        c.subject = port.clone();
        c.evidence = format!(
            "{port} is a VM port in no bridge, so the host no longer knows where {} is",
            s.vm_label()
        );
        c.fix = Some(format!("ip link set dev {port} master {bridge}"));
    } else if !orphans.is_empty() {
        c.evidence = format!("{why}; ports in no bridge: {}", orphans.join(", "));
    }
    c
}

fn start_command(nic: &VmNic) -> String {
    match nic.source {
        "libvirt" => format!("virsh start {}", nic.vm_id),
        "proxmox-lxc" => format!("pct start {}", nic.vm_id),
        _ => format!("qm start {}", nic.vm_id),
    }
}

/// TAP devices (and veths) that are up for a guest but in no bridge, with no
/// address of their own (a routed port would have one).
fn orphan_ports(host: &Host) -> Vec<String> {
    host.links
        .iter()
        .filter(|l| l.master.is_none() && l.is_kind("tun"))
        .filter(|l| host.inet_addrs(&l.name).is_empty())
        .map(|l| l.name.clone())
        .collect()
}

/// The bridge `port` belongs in: its firewall bridge or configured bridge, the
/// bridge where the host last saw the VM's address, or the one owning its subnet.
fn expected_bridge(s: &Subject, host: &Host, port: &str) -> Option<String> {
    if let Some(nic) = s.nics.iter().find(|n| n.port.as_deref() == Some(port)) {
        let fwbr = format!("fwbr{}", port.trim_start_matches("tap"));
        if nic.firewall && host.has_link(&fwbr) {
            return Some(fwbr);
        }
        if nic.bridge.is_some() {
            return nic.bridge.clone();
        }
    }
    let seen = host
        .neighbours_of(s.vm_ip.into())
        .next()
        .and_then(|n| host.name_of(n.index))
        .filter(|dev| host.is_bridge(dev))
        .map(str::to_string);
    seen.or_else(|| topology::subnet_ports(host, s.vm_ip.into()).map(|(b, _)| b))
}

fn membership(s: &Subject, t: &Topology, host: &Host) -> Vec<Check> {
    let mut out = Vec::new();
    for port in &t.ports {
        let p = &port.name;
        let configured = s.nics.iter().find(|n| n.port.as_deref() == Some(p));
        let Some(master) = host.master_of(p).map(str::to_string) else {
            if routed_port(t, p, host) {
                out.push(
                    Check::new("bridge_member", Status::Pass, p).evidence(format!(
                        "{p} is a routed port (no bridge); {} is reached through it",
                        t.vm_ip
                    )),
                );
                continue;
            }
            let bridge = expected_bridge(s, host, p).unwrap_or_else(|| "BRIDGE".into());
            out.push(
                Check::new("bridge_member", Status::Fail, p)
                    .evidence(format!(
                        "{p} is in no bridge, so the guest's frames go nowhere"
                    ))
                    .fix(format!("ip link set dev {p} master {bridge}")),
            );
            continue;
        };
        let top = t.bridge.as_ref().map_or(master.clone(), |b| b.name.clone());
        let want = configured.and_then(|n| n.bridge.clone());
        match want {
            Some(w) if w != top => out.push(
                Check::new("bridge_member", Status::Fail, p)
                    .evidence(format!(
                        "{p} reaches bridge {top}, but the VM's configuration ({}) says {w}",
                        configured
                            .map(|n| n.config.display().to_string())
                            .unwrap_or_default()
                    ))
                    .fix(format!(
                        "ip link set dev {p} nomaster && ip link set dev {p} master {w}"
                    )),
            ),
            _ => out.push(
                Check::new("bridge_member", Status::Pass, p).evidence(format!(
                    "{p} is a port of {master}; the path: {}",
                    t.path_names().join(" → ")
                )),
            ),
        }
    }
    out
}

/// A bridge-less port that carries the VM's address (routed setups).
fn routed_port(t: &Topology, port: &str, host: &Host) -> bool {
    route_dev(host, t.vm_ip4()).as_deref() == Some(port)
}

#[cfg(test)]
mod tests;
