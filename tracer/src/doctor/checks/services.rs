//! What the guest needs from the host besides a path: a resolver, and an
//! address nobody else answers for.

use std::{net::Ipv4Addr, time::Duration};

use super::*;

/// The guest's resolver: the one given, else one on the VM's bridge (dnsmasq, as
/// libvirt and many hosts run), else the guest uses some outside resolver.
pub(super) fn dns(s: &Subject, t: &Topology) -> Check {
    let on53 = s.host.udp_listeners(53);
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
        !s.host.udp_listeners(67).is_empty() || s.nics.iter().any(|n| n.network.is_some());
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
        dns_topo.dst = r.into();
        dns_topo.dst_local = true;
        if let Some(c) = filter_verdict(
            &dns_topo,
            "input",
            &view(&dns_topo, false, 17, Some(53)),
            false,
            &format!("DNS queries from {} to {r}", t.vm_ip),
        ) {
            return Check {
                check: "dns".into(),
                ..c
            };
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

pub(super) fn host_addresses(host: &Host) -> Vec<Ipv4Addr> {
    host.addrs.iter().filter_map(|a| Some(a.v4()?.0)).collect()
}

/// Only one machine may answer for the VM's address: the host must not hold it,
/// and on the bridge exactly one MAC may answer ARP for it.
pub(super) fn duplicate_ip(t: &Topology, host: &Host, passive: bool) -> Check {
    let subject = t.vm_ip.to_string();
    if host_addresses(host).contains(&t.vm_ip4()) {
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
        t.vm_ip4(),
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
