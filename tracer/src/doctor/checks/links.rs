//! Layer-2 checks along the path: every interface up with carrier, every bridge
//! port forwarding, one MTU.

use std::collections::HashMap;

use super::*;

/// Every interface on the path administratively up, and the VM-facing ones with
/// carrier (a TAP has carrier while a VM holds it).
pub(super) fn links_up(s: &Subject, t: &Topology, host: &Host) -> Vec<Check> {
    let mut out = Vec::new();
    for name in t.path_names() {
        let link = host.link(&name);
        let bridge = host.is_bridge(&name);
        if !link.is_some_and(|l| l.up) {
            out.push(
                Check::new("link_up", Status::Fail, &name)
                    .evidence(format!("{name} is administratively down"))
                    .fix(match link.and_then(|l| l.vlan_id) {
                        // Proxmox brings VLAN devices up from its ifupdown
                        // configuration.
                        Some(vid) => format!(
                            "ip link set dev {name} up (VLAN {vid}; Proxmox: its stanza in /etc/network/interfaces, then ifreload -a)"
                        ),
                        None => format!("ip link set dev {name} up"),
                    }),
            );
        } else if !bridge && !link.is_some_and(|l| l.lower_up) {
            // A VM's TAP has carrier while the VM runs; other ports (a bridge's
            // physical NIC watched as a candidate in bridged mode) do not.
            let kind = link.and_then(|l| l.kind.as_deref()).unwrap_or_default();
            let is_port = t.ports.iter().any(|p| p.name == name) && kind == "tun";
            let fix = match s
                .nics
                .iter()
                .find(|n| n.port.as_deref() == Some(name.as_str()))
            {
                Some(nic) if is_port => start_command(nic),
                _ if is_port => "start the VM (no process holds its TAP device)".to_string(),
                _ if kind == "veth" => {
                    format!("bring up the other end of {name} (ip -d link show {name})")
                }
                // A bond without a working slave, a VLAN device whose NIC is
                // down: the fix is below it.
                _ if kind == "bond" || kind == "vlan" => {
                    match topology::bridged::port_problem(host, &name) {
                        Some(p) => format!("{name} is {}: {}", p.words(), p.fix(&name, None)),
                        None => format!("ip -d link show {name}"),
                    }
                }
                _ => format!(
                    "check {name}'s cable, the switch port and the link partner (ethtool {name})"
                ),
            };
            out.push(
                Check::new("link_up", Status::Fail, &name)
                    .evidence(format!("{name} is up but has no carrier"))
                    .fix(fix),
            );
        }
    }
    if out.is_empty() {
        out.push(
            Check::new("link_up", Status::Pass, t.path_names().join(", "))
                .evidence("every interface on the path is up with carrier"),
        );
    }
    out
}

/// Bridge ports on the path must be in STP state `forwarding`.
pub(super) fn stp(t: &Topology, host: &Host) -> Vec<Check> {
    let state_of = |name: &str| host.link(name)?.port_state.map(|s| s.word());
    let mut ports: Vec<String> = t.ports.iter().map(|p| p.name.clone()).collect();
    ports.extend(
        t.chain
            .iter()
            .filter(|h| !h.is_bridge)
            .map(|h| h.iface.name.clone()),
    );
    let mut out = Vec::new();
    // A port without carrier is `disabled`: link_up already says why.
    for p in ports
        .iter()
        .filter(|p| host.link(p).is_some_and(|l| l.lower_up))
    {
        let Some(state) = state_of(p) else { continue };
        if state == "forwarding" {
            continue;
        }
        let bridge = host.master_of(p).unwrap_or_default().to_string();
        let stp_on = host.link(&bridge).is_some_and(|l| l.stp);
        let fix = if stp_on {
            format!("STP holds {p} in {state} (a loop, or still learning): see bridge -d link show dev {p}; if there is no loop: ip link set dev {bridge} type bridge stp_state 0")
        } else {
            format!("bridge link set dev {p} state 3")
        };
        out.push(
            Check::new("stp_state", Status::Fail, p)
                .evidence(format!(
                    "port {p} of {bridge} is {state}, not forwarding: it passes no frames"
                ))
                .fix(fix),
        );
    }
    if out.is_empty() {
        out.push(
            Check::new("stp_state", Status::Pass, ports.join(", "))
                .evidence("every bridge port on the path is forwarding"),
        );
    }
    out
}

/// One MTU along the layer-2 chain (a bridge drops frames too big for the port it
/// forwards to); an uplink smaller than the VM LAN needs fragmentation or PMTU.
pub(super) fn mtu(t: &Topology) -> Check {
    let index: HashMap<&str, u32> = t.names.iter().map(|(i, n)| (n.as_str(), *i)).collect();
    let mtu_of = |n: &str| index.get(n).and_then(|i| t.mtus.get(i)).copied();
    let mut l2: Vec<String> = t.ports.iter().map(|p| p.name.clone()).collect();
    l2.extend(t.chain.iter().map(|h| h.iface.name.clone()));
    l2.extend(t.bridge.iter().map(|b| b.name.clone()));
    let sizes: Vec<(String, u32)> = l2
        .iter()
        .filter_map(|n| Some((n.clone(), mtu_of(n)?)))
        .collect();
    let listing = sizes
        .iter()
        .map(|(n, m)| format!("{n} {m}"))
        .collect::<Vec<_>>()
        .join(", ");
    let port_mtu = sizes.first().map_or(1500, |(_, m)| *m);
    let low: Vec<&(String, u32)> = sizes.iter().filter(|(_, m)| *m < port_mtu).collect();
    if !low.is_empty() {
        let fix = low
            .iter()
            .map(|(n, _)| format!("ip link set dev {n} mtu {port_mtu}"))
            .collect::<Vec<_>>()
            .join(" && ");
        return Check::new("mtu", Status::Fail, l2.join(", "))
            .evidence(format!(
                "MTU differs along the VM's layer-2 path ({listing}): frames the guest may send are dropped where it shrinks"
            ))
            .fix(fix);
    }
    let lan = sizes.last().map_or(port_mtu, |(_, m)| *m);
    if let Some(up) = &t.uplink {
        let up_mtu = mtu_of(&up.name).unwrap_or(lan);
        if up_mtu < lan && !t.bridged && !t.dst_local {
            return Check::new("mtu", Status::Warn, format!("{}, {}", t.inbound().name, up.name))
                .evidence(format!(
                    "uplink {} has MTU {up_mtu}, the VM LAN {lan}: the guest's full-size packets need fragmentation, and those with DF set get 'fragmentation needed' back (PMTU discovery must work)",
                    up.name
                ))
                .fix(format!(
                    "set the guest's MTU to {up_mtu} (or ip link set dev {} mtu {up_mtu} and the ports), or clamp TCP MSS: nft add rule inet filter forward tcp flags syn tcp option maxseg size set rt mtu",
                    t.inbound().name
                ));
        }
    }
    Check::new("mtu", Status::Pass, l2.join(", ")).evidence(format!("consistent: {listing}"))
}
