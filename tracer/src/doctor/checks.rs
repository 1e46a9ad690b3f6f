//! The doctor's checks, in the order a packet meets what they check: the VM's
//! port and bridges, then routing, NAT and firewall, then DNS and addresses.
//! Each reads the running host (this network namespace) and returns a verdict
//! with evidence and, when something is wrong, the fixing command.

use std::{collections::HashMap, net::Ipv4Addr, time::Duration};

use super::{arp, Check, Status, Subject};
use crate::{
    explain::{fix, iptables, nft},
    host::{firewall, Host},
    hostconfig::VmNic,
    kernel::sysctl,
    topology::{self, Evidence, Topology},
};

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
    out.extend(super::firewall_bridge::check(topo, host));
    out.push(mtu(topo));
    let routed = topo.uplink.is_some() && !topo.bridged && !topo.dst_local;
    if routed {
        out.push(ip_forward(topo));
    }
    out.push(rp_filter(topo, host));
    out.push(route(s, topo));
    if let (Some(gw), Some(_)) = (topo.gateway, &topo.uplink) {
        out.push(gateway(topo, gw, host, passive));
    }
    if routed {
        out.push(nat(topo));
    }
    out.extend(firewall(topo));
    out.push(br_netfilter(s, topo));
    out.push(dns(s, topo));
    out.push(duplicate_ip(topo, host, passive));
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
    out.extend(super::firewall_bridge::check(topo, now));
    if let (Some(gw), Some(_)) = (topo.gateway, &topo.uplink) {
        out.push(gateway(topo, gw, now, true));
    }
    out
}

fn vm_port(s: &Subject, t: &Topology) -> Check {
    let ports: Vec<&str> = t.ports.iter().map(|p| p.name.as_str()).collect();
    let mac = t.vm_mac.as_deref().unwrap_or("MAC unknown");
    let mut c = Check::new("vm_port", Status::Pass, ports.join(", "))
        .evidence(format!("{} ({mac}) found by {}", s.vm_ip, s.found_by));
    if let Evidence::Guess(why) = &t.evidence {
        // Said, not silent: every check below is about a port nothing proved is
        // the VM's.
        c.status = Status::Warn;
        c.evidence = format!("{} ({mac}): {why}", s.vm_ip);
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
    let mut c = Check::new("vm_port", Status::Fail, s.vm_ip.to_string()).evidence(why);
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
        c.check = "bridge_member";
        c.subject = port.clone();
        c.evidence = format!(
            "{port} is a VM port in no bridge, so the host no longer knows where {} is",
            s.vm_ip
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
    seen.or_else(|| topology::subnet_ports(host, s.vm_ip).map(|(b, _)| b))
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
    route_dev(host, t.vm_ip).as_deref() == Some(port)
}

/// Every interface on the path administratively up, and the VM-facing ones with
/// carrier (a TAP has carrier while a VM holds it).
fn links_up(s: &Subject, t: &Topology, host: &Host) -> Vec<Check> {
    let mut out = Vec::new();
    for name in t.path_names() {
        let link = host.link(&name);
        let bridge = host.is_bridge(&name);
        if !link.is_some_and(|l| l.up) {
            out.push(
                Check::new("link_up", Status::Fail, &name)
                    .evidence(format!("{name} is administratively down"))
                    .fix(format!("ip link set dev {name} up")),
            );
        } else if !bridge && !link.is_some_and(|l| l.lower_up) {
            let is_port = t.ports.iter().any(|p| p.name == name);
            let fix = match s
                .nics
                .iter()
                .find(|n| n.port.as_deref() == Some(name.as_str()))
            {
                Some(nic) if is_port => start_command(nic),
                _ if is_port => "start the VM (no process holds its TAP device)".to_string(),
                _ => format!("bring up the other end of {name} (ip -d link show {name})"),
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
fn stp(t: &Topology, host: &Host) -> Vec<Check> {
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
fn mtu(t: &Topology) -> Check {
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

fn ip_forward(t: &Topology) -> Check {
    let global = sysctl("net/ipv4/ip_forward");
    if global.as_deref() == Some("0") {
        return Check::new("ip_forward", Status::Fail, "net.ipv4.ip_forward")
            .evidence("net.ipv4.ip_forward=0: the host routes nothing, so the guest's packets to other networks are dropped")
            .fix("sysctl -w net.ipv4.ip_forward=1 (and persist it in /etc/sysctl.d/)");
    }
    let devs = [
        Some(t.inbound().name.clone()),
        t.uplink.as_ref().map(|u| u.name.clone()),
    ];
    for dev in devs.into_iter().flatten() {
        if sysctl(&format!("net/ipv4/conf/{dev}/forwarding")).as_deref() == Some("0") {
            return Check::new(
                "ip_forward",
                Status::Fail,
                format!("net.ipv4.conf.{dev}.forwarding"),
            )
            .evidence(format!("forwarding is off on {dev}"))
            .fix(format!("sysctl -w net.ipv4.conf.{dev}.forwarding=1"));
        }
    }
    Check::new("ip_forward", Status::Pass, "net.ipv4.ip_forward")
        .evidence("net.ipv4.ip_forward=1 and forwarding on the path's interfaces")
}

/// Effective rp_filter of `dev`: the larger of `all` and the device's own.
fn rp_value(dev: &str) -> u8 {
    let v = |d: &str| {
        sysctl(&format!("net/ipv4/conf/{d}/rp_filter"))
            .and_then(|s| s.parse::<u8>().ok())
            .unwrap_or(0)
    };
    v("all").max(v(dev))
}

/// The device the host's route to `ip` leaves by.
fn route_dev(host: &Host, ip: Ipv4Addr) -> Option<String> {
    let r = host.route_get(ip, None)?;
    host.route_dev(&r).map(str::to_string)
}

/// Reverse-path filtering: a packet from `src` arriving on `dev` passes strict
/// mode only if the route back to `src` leaves by `dev`.
fn rp_filter(t: &Topology, host: &Host) -> Check {
    let mut arrivals = vec![(t.inbound().name.clone(), t.vm_ip)];
    if let Some(up) = &t.uplink {
        arrivals.push((up.name.clone(), t.dst));
    }
    let mut seen = Vec::new();
    for (dev, src) in arrivals {
        let mode = rp_value(&dev);
        let back = route_dev(host, src);
        seen.push(format!("{dev} rp_filter={mode}"));
        let bad = match mode {
            1 => back.as_deref() != Some(dev.as_str()),
            2 => back.is_none(),
            _ => false,
        };
        if bad {
            let via = back.map_or("no route".to_string(), |b| {
                format!("the route leaves by {b}")
            });
            return Check::new("rp_filter", Status::Fail, format!("net.ipv4.conf.{dev}.rp_filter"))
                .evidence(format!(
                    "rp_filter={mode} on {dev} drops packets from {src} arriving there: the route back to {src} does not ({via}); check: ip route get {src}"
                ))
                .fix(format!(
                    "correct the route to {src} (it should leave by {dev}), or use loose mode: sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.{dev}.rp_filter=2"
                ));
        }
    }
    Check::new("rp_filter", Status::Pass, "net.ipv4.conf.*.rp_filter")
        .evidence(format!("{}; routes back agree", seen.join(", ")))
}

fn route(s: &Subject, t: &Topology) -> Check {
    let subject = format!("route to {}", s.dst);
    if t.unroutable {
        return Check::new("route", Status::Fail, subject)
            .evidence(format!("this host has no route to {}", s.dst))
            .fix("add one, e.g. a default route: ip route add default via GATEWAY dev UPLINK");
    }
    let how = if t.dst_local {
        format!("{} is an address of this host", s.dst)
    } else if t.bridged {
        format!("{} is on the VM's own bridge {}", s.dst, t.inbound().name)
    } else {
        let via = t.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
        let dev = t.uplink.as_ref().map(|u| u.name.as_str()).unwrap_or("?");
        format!("{}{via} dev {dev}", s.dst)
    };
    Check::new("route", Status::Pass, subject).evidence(how)
}

/// The next hop must answer ARP, or every routed packet dies in the neighbour
/// layer (NEIGH_FAILED).
fn gateway(t: &Topology, gw: Ipv4Addr, host: &Host, passive: bool) -> Check {
    let up = t
        .uplink
        .as_ref()
        .map(|u| u.name.clone())
        .unwrap_or_default();
    let up_index = host.index_of(&up);
    let state: Vec<String> = host
        .neighbours_of(gw.into())
        .find(|n| Some(n.index) == up_index)
        .map(|n| vec![n.state.clone()])
        .unwrap_or_default();
    let subject = format!("{gw} on {up}");
    let good = state
        .iter()
        .any(|s| matches!(s.as_str(), "REACHABLE" | "PERMANENT" | "NOARP"));
    if good {
        return Check::new("gateway", Status::Pass, subject)
            .evidence(format!("neighbour entry {}", state.join(",")));
    }
    let fail = Check::new("gateway", Status::Fail, &subject).fix(format!(
        "check that {gw} is up and on the same link/VLAN as {up} (ip route show default; ip neigh show dev {up})"
    ));
    if !passive {
        let own_mac = host
            .link(&up)
            .and_then(|l| l.mac.as_deref())
            .and_then(arp::parse_mac);
        let src = t
            .uplink_addrs
            .first()
            .copied()
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        let index = t.uplink.as_ref().map_or(0, |u| u.index);
        if let Some(mac) = own_mac {
            return match arp::who_has(index, mac, src, gw, Duration::from_millis(1000)) {
                Ok(macs) if !macs.is_empty() => Check::new("gateway", Status::Pass, subject)
                    .evidence(format!("{gw} answered ARP from {}", macs.join(", "))),
                Ok(_) => fail.evidence(format!(
                    "{gw} did not answer ARP on {up} within 1 s (neighbour state: {}): routed packets die at the neighbour stage",
                    if state.is_empty() { "none".into() } else { state.join(",") }
                )),
                Err(e) => Check::new("gateway", Status::Warn, subject)
                    .evidence(format!("could not probe: {e:#}")),
            };
        }
    }
    match state.iter().any(|s| s == "FAILED" || s == "INCOMPLETE") {
        true => fail.evidence(format!("neighbour entry for {gw} is {}", state.join(","))),
        false => Check::new("gateway", Status::Warn, subject).evidence(format!(
            "not resolved recently (neighbour state: {}; --passive sends no ARP)",
            if state.is_empty() {
                "none".into()
            } else {
                state.join(",")
            }
        )),
    }
}

/// Addresses that the internet does not route back: they need source NAT on
/// the way out (RFC 1918, shared CGN space, link-local, documentation and
/// benchmarking ranges).
pub fn needs_nat(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_private()
        || ip.is_link_local()
        || ip.is_documentation()
        || (o[0] == 100 && (64..128).contains(&o[1]))
        || (o[0] == 198 && (o[1] == 18 || o[1] == 19))
}

fn view(t: &Topology, reply: bool, proto: u8, dport: Option<u16>) -> nft::PacketView {
    let inbound = t.inbound().name.clone();
    let uplink = t.uplink.as_ref().map(|u| u.name.clone());
    let (saddr, daddr, iif, oif) = if reply {
        (t.dst, t.vm_ip, uplink.clone(), Some(inbound))
    } else {
        let oif = if t.bridged {
            Some(inbound.clone())
        } else {
            uplink
        };
        (t.vm_ip, t.dst, Some(inbound), oif)
    };
    let icmp_type = (proto == 1).then_some(if reply { 0 } else { 8 });
    nft::PacketView {
        saddr: Some(saddr),
        daddr: Some(daddr),
        proto,
        icmp_type,
        sport: dport.map(|p| if reply { p } else { 40000 }),
        dport: dport.map(|p| if reply { 40000 } else { p }),
        iifname: iif,
        oifname: if t.dst_local { None } else { oif },
        ct_state: Some(if reply { "established" } else { "new" }),
        ..Default::default()
    }
}

fn nat(t: &Topology) -> Check {
    let up = t
        .uplink
        .as_ref()
        .map(|u| u.name.clone())
        .unwrap_or_default();
    let pkt = view(t, false, 1, None);
    let subject = format!("{} → {} out of {up}", t.vm_ip, t.dst);
    let found = nft::find_snat(&pkt)
        .map(|c| (c.describe(), c.certain))
        .or_else(|| iptables::find_snat(&pkt).map(|c| (c.describe("iptables-legacy"), c.certain)));
    let lan = t
        .vm_subnet
        .map(|(n, l)| format!("{n}/{l}"))
        .unwrap_or_else(|| t.vm_ip.to_string());
    let on_uplink_lan = t.uplink_addrs.iter().any(|a| {
        t.vm_subnet
            .is_some_and(|(_, l)| topology::network(*a, l) == topology::network(t.vm_ip, l))
    });
    let behind_fwbr = t.chain.iter().any(|h| h.is_bridge);
    let br_nf = sysctl("net/bridge/bridge-nf-call-iptables").as_deref() == Some("1");
    match found {
        Some((rule, _)) if behind_fwbr && br_nf && !conntrack_zones_split() => {
            Check::new("nat", Status::Fail, subject)
                .evidence(format!(
                    "{rule} exists, but the VM sits behind a firewall bridge with br_netfilter on: conntrack confirms the bridged pass through it without NAT, so the routed pass reuses that entry and the packet leaves untranslated (the Proxmox firewall + masquerading pitfall)"
                ))
                .fix("give the firewall bridges their own conntrack zone: iptables -t raw -I PREROUTING -i fwbr+ -j CT --zone 1   (nft: table ip raw, chain prerouting at priority raw: iifname \"fwbr*\" ct zone set 1)")
        }
        Some((rule, true)) => Check::new("nat", Status::Pass, subject)
            .evidence(format!("source NAT by {rule}")),
        Some((rule, false)) => Check::new("nat", Status::Warn, subject).evidence(format!(
            "{rule} may translate it (it has matches pathtrace cannot evaluate)"
        )),
        None if needs_nat(t.vm_ip) && !on_uplink_lan => Check::new("nat", Status::Fail, subject)
            .evidence(format!(
                "no MASQUERADE/SNAT rule (nftables or iptables-legacy) applies, and {} is not routable on the internet: replies can never come back",
                t.vm_ip
            ))
            .fix(fix::add_masquerade(&lan, &up)),
        None => Check::new("nat", Status::Pass, subject).evidence(format!(
            "no source NAT; {} is a routable address, so the upstream must route it back to this host",
            t.vm_ip
        )),
    }
}

/// A rule puts (firewall-)bridged traffic into its own conntrack zone, in
/// nftables (`ct zone set`) or iptables-legacy's raw table (`-j CT --zone`).
fn conntrack_zones_split() -> bool {
    let rules = firewall::rules();
    rules
        .nft_text
        .as_deref()
        .is_some_and(|t| t.contains("ct zone set"))
        || rules
            .legacy_table("raw")
            .is_some_and(|t| t.contains("--zone"))
}

/// The firewall's verdict on the guest's ping and its reply (FORWARD, or INPUT
/// for the host itself), by replaying them against nftables and iptables-legacy.
fn firewall(t: &Topology) -> Vec<Check> {
    if t.bridged && sysctl("net/bridge/bridge-nf-call-iptables").as_deref() != Some("1") {
        return Vec::new(); // bridged frames never meet the IP firewall
    }
    let hook = if t.dst_local { "input" } else { "forward" };
    let dirs: &[bool] = if t.dst_local {
        &[false]
    } else {
        &[false, true]
    };
    let mut out = Vec::new();
    for &reply in dirs {
        let pkt = view(t, reply, 1, None);
        let what = match reply {
            false => format!("ICMP {} → {}", t.vm_ip, t.dst),
            true => format!("the reply {} → {}", t.dst, t.vm_ip),
        };
        if let Some(c) = filter_verdict(t, hook, &pkt, reply, &what) {
            out.push(c);
        }
    }
    if out.is_empty() {
        out.push(
            Check::new("firewall", Status::Pass, format!("{hook} hook"))
                .evidence(format!(
                    "no nftables or iptables-legacy rule in {hook} drops the guest's ping to {} or its reply",
                    t.dst
                )),
        );
    }
    out
}

/// A failing (or, when unsure, warning) check if a rule or policy at `hook`
/// drops `pkt`.
fn filter_verdict(
    t: &Topology,
    hook: &str,
    pkt: &nft::PacketView,
    reply: bool,
    what: &str,
) -> Option<Check> {
    let guest = t.vm_ip.to_string();
    let (desc, certain, fix) = if let Some(c) = nft::find_culprit(hook, false, pkt) {
        let cmd = fix::delete(&c).unwrap_or_else(|| fix::allow(&c, reply, &guest));
        (c.describe(), c.certain, cmd)
    } else if let Some(c) = iptables::find_culprit(hook, pkt) {
        let cmd = fix::legacy(&c, reply, &guest);
        (c.describe("iptables-legacy"), c.certain, cmd)
    } else {
        return None;
    };
    let (status, verb) = match certain {
        true => (Status::Fail, "drops"),
        false => (
            Status::Warn,
            "may drop (it has matches pathtrace cannot evaluate)",
        ),
    };
    Some(
        Check::new("firewall", status, format!("{hook} hook"))
            .evidence(format!("{desc} {verb} {what}"))
            .fix(fix),
    )
}

fn br_netfilter(s: &Subject, t: &Topology) -> Check {
    let value = sysctl("net/bridge/bridge-nf-call-iptables");
    let subject = "net.bridge.bridge-nf-call-iptables";
    let firewalled = s.nics.iter().any(|n| n.firewall);
    match value.as_deref() {
        None if firewalled => Check::new("br_netfilter", Status::Warn, subject)
            .evidence("br_netfilter is not loaded, so the VM's firewall bridge filters nothing (the Proxmox firewall is on for this VM)")
            .fix("modprobe br_netfilter && sysctl -w net.bridge.bridge-nf-call-iptables=1"),
        Some("0") if firewalled => Check::new("br_netfilter", Status::Warn, subject)
            .evidence("=0, so the VM's firewall bridge filters nothing (the Proxmox firewall is on for this VM)")
            .fix("sysctl -w net.bridge.bridge-nf-call-iptables=1"),
        None => Check::new("br_netfilter", Status::Pass, subject)
            .evidence("br_netfilter not loaded: bridged frames skip the IP firewall"),
        Some(v) => Check::new("br_netfilter", Status::Pass, subject).evidence(format!(
            "={v}: frames bridged on {} {} the IP firewall (FORWARD)",
            t.inbound().name,
            if v == "1" { "also traverse" } else { "skip" }
        )),
    }
}

/// Local UDP sockets bound to port `port`, from /proc/net/udp (this namespace's).
pub fn udp_listeners(table: &str, port: u16) -> Vec<Ipv4Addr> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|local| {
            let (addr, p) = local.split_once(':')?;
            let p = u16::from_str_radix(p, 16).ok()?;
            let a = u32::from_str_radix(addr, 16).ok()?;
            // The kernel prints the address in host (little-endian) order.
            (p == port).then(|| Ipv4Addr::from(a.swap_bytes()))
        })
        .collect()
}

/// The guest's resolver: the one given, else one on the VM's bridge (dnsmasq, as
/// libvirt and many hosts run), else the guest uses some outside resolver.
fn dns(s: &Subject, t: &Topology) -> Check {
    let table = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    let on53 = udp_listeners(&table, 53);
    let listens = |ip: Ipv4Addr| on53.iter().any(|a| *a == ip || a.is_unspecified());
    let bridge_ip = t
        .vm_subnet
        .and_then(|(net, len)| {
            s.host
                .inet_addrs(&t.inbound().name)
                .into_iter()
                .find(|(a, _)| topology::network(*a, len) == net)
        })
        .map(|(a, _)| a);
    let local = host_addresses(&s.host);
    let resolver = s.dns.or(bridge_ip.filter(|ip| listens(*ip)));
    let dhcp_here =
        !udp_listeners(&table, 67).is_empty() || s.nics.iter().any(|n| n.network.is_some());
    let Some(r) = resolver else {
        return match (bridge_ip, dhcp_here) {
            (Some(b), true) => Check::new("dns", Status::Fail, format!("{b}:53"))
                .evidence(format!("a DHCP server on this host (dnsmasq or a libvirt network) gives guests {b} as their resolver, but nothing listens on {b}:53"))
                .fix(match s.nics.iter().find_map(|n| n.network.clone()) {
                    Some(net) => format!("virsh net-destroy {net} && virsh net-start {net} (restarts its dnsmasq)"),
                    None => "restart the DHCP/DNS server (e.g. systemctl restart dnsmasq)".into(),
                }),
            _ => Check::new("dns", Status::Pass, "resolver").evidence(
                "no resolver on this host: the guest uses an outside one (see its /etc/resolv.conf); check it with --dns IP, or trace it: pathtrace --vm-ip IP --to RESOLVER --proto dns",
            ),
        };
    };
    let subject = format!("{r}:53");
    if local.contains(&r) {
        if !listens(r) {
            return Check::new("dns", Status::Fail, subject)
                .evidence(format!("nothing listens on {r}:53 on this host"))
                .fix("start the resolver (dnsmasq, unbound, systemd-resolved) on that address, or give the guest another one");
        }
        let mut dns_topo = t.clone();
        dns_topo.dst = r;
        dns_topo.dst_local = true;
        if let Some(c) = filter_verdict(
            &dns_topo,
            "input",
            &view(&dns_topo, false, 17, Some(53)),
            false,
            &format!("DNS queries from {} to {r}", t.vm_ip),
        ) {
            return Check { check: "dns", ..c };
        }
        return Check::new("dns", Status::Pass, subject).evidence(format!(
            "a resolver listens on {r}:53 and the INPUT firewall lets the guest's queries in"
        ));
    }
    match route_dev(&s.host, r) {
        Some(dev) => Check::new("dns", Status::Pass, subject).evidence(format!(
            "resolver {r} is outside this host, reached via {dev}; follow the guest's queries with: pathtrace --vm-ip {} --to {r} --proto dns",
            t.vm_ip
        )),
        None => Check::new("dns", Status::Fail, subject)
            .evidence(format!("this host has no route to the resolver {r}"))
            .fix("add a route (or a default route) towards it"),
    }
}

fn host_addresses(host: &Host) -> Vec<Ipv4Addr> {
    host.addrs.iter().filter_map(|a| Some(a.v4()?.0)).collect()
}

/// Only one machine may answer for the VM's address: the host must not hold it,
/// and on the bridge exactly one MAC may answer ARP for it.
fn duplicate_ip(t: &Topology, host: &Host, passive: bool) -> Check {
    let subject = t.vm_ip.to_string();
    if host_addresses(host).contains(&t.vm_ip) {
        return Check::new("duplicate_ip", Status::Fail, subject)
            .evidence(format!("this host itself has the address {}", t.vm_ip))
            .fix(format!(
                "remove it from the host: ip addr del {}/PREFIX dev DEV (see ip -4 addr)",
                t.vm_ip
            ));
    }
    let Some(bridge) = &t.bridge else {
        return Check::new("duplicate_ip", Status::Pass, subject)
            .evidence("routed port: no shared LAN");
    };
    if passive {
        return Check::new("duplicate_ip", Status::Pass, subject)
            .evidence("the host does not hold the address (ARP probe skipped: --passive)");
    }
    let own_mac = host
        .link(&bridge.name)
        .and_then(|l| l.mac.as_deref())
        .and_then(arp::parse_mac);
    let Some(own_mac) = own_mac else {
        return Check::new("duplicate_ip", Status::Warn, subject)
            .evidence("bridge MAC unknown; not probed");
    };
    let sender = t
        .vm_subnet
        .and_then(|(net, len)| {
            host.inet_addrs(&bridge.name)
                .into_iter()
                .find(|(a, _)| topology::network(*a, len) == net)
        })
        .map_or(Ipv4Addr::UNSPECIFIED, |(a, _)| a);
    let answers = match arp::who_has(
        bridge.index,
        own_mac,
        sender,
        t.vm_ip,
        Duration::from_millis(600),
    ) {
        Ok(a) => a,
        Err(e) => {
            return Check::new("duplicate_ip", Status::Warn, subject)
                .evidence(format!("could not probe: {e:#}"))
        }
    };
    let named: Vec<String> = answers
        .iter()
        .map(
            |m| match topology::ports_for_mac(host, &bridge.name, m).as_slice() {
                [p] => format!("{m} (port {p})"),
                _ => m.clone(),
            },
        )
        .collect();
    match answers.len() {
        0 => Check::new("duplicate_ip", Status::Warn, subject).evidence(format!(
            "nobody answered ARP for {} on {}: the guest is down, filters ARP, or uses another address",
            t.vm_ip, bridge.name
        )),
        1 => Check::new("duplicate_ip", Status::Pass, subject)
            .evidence(format!("only {} answers ARP for it", named[0])),
        _ => Check::new("duplicate_ip", Status::Fail, subject)
            .evidence(format!(
                "{} machines answer ARP for {} on {}: {} — replies reach whichever the host learned last",
                answers.len(),
                t.vm_ip,
                bridge.name,
                named.join(", ")
            ))
            .fix(format!(
                "give all but one of them another address (find the VMs by MAC: {})",
                answers.join(", ")
            )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_addresses_need_nat() {
        for ip in [
            "192.168.1.5",
            "10.0.0.1",
            "100.64.0.1",
            "192.0.2.100",
            "172.16.3.3",
        ] {
            assert!(needs_nat(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "100.128.0.1", "193.0.2.1"] {
            assert!(!needs_nat(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn reads_udp_listeners() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
          12: 010200C0:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0000000000000000 0\n\
          13: 00000000:0043 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0000000000000000 0\n";
        assert_eq!(udp_listeners(table, 53), [Ipv4Addr::new(192, 0, 2, 1)]);
        assert_eq!(udp_listeners(table, 67), [Ipv4Addr::UNSPECIFIED]);
        assert!(udp_listeners(table, 5353).is_empty());
    }
}
