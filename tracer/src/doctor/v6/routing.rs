//! IPv6 routing checks: forwarding, router advertisements on the uplink, the
//! routes to the destination and back to the guest, the gateway by neighbour
//! solicitation, proxy NDP.

use std::{net::Ipv6Addr, time::Duration};

use super::{host_addr, Path6};
use crate::{
    doctor::{arp, ndp, Check, Status},
    host::{in_prefix6, is_link_local6, Host},
};

fn sysctl6(host: &Host, dev: &str, key: &str) -> Option<String> {
    host.sysctl(&format!("net/ipv6/conf/{dev}/{key}"))
}

/// Forwarding (kernel semantics measured on 6.18): a packet is forwarded when
/// `net.ipv6.conf.all.forwarding` is 1, or (6.17+) the device it arrived on
/// has `force_forwarding` 1. A device's own `forwarding` switches its router
/// behaviour: with 0 on the VM bridge the host answers the guests' neighbour
/// solicitations without the router flag, and a guest that learned the host
/// as its router from an advertisement drops it (RFC 4861 §7.2.5). IPv6
/// disabled on the bridge or the uplink stops it all.
pub(super) fn ip6_forward(p: &Path6, host: &Host) -> Vec<Check> {
    let up = p.uplink.as_deref().unwrap_or_default();
    for dev in [p.inbound.as_str(), up] {
        if sysctl6(host, dev, "disable_ipv6").as_deref() == Some("1") {
            return vec![Check::new(
                "ip6_forward",
                Status::Fail,
                format!("net.ipv6.conf.{dev}.disable_ipv6"),
            )
            .evidence(format!(
                "IPv6 is disabled on {dev} (disable_ipv6=1): it has no IPv6 address and the host routes no IPv6 through it"
            ))
            .fix(format!("sysctl -w net.ipv6.conf.{dev}.disable_ipv6=0"))];
        }
    }
    let on = |dev: &str, key: &str| sysctl6(host, dev, key).as_deref() == Some("1");
    let forced = on(&p.inbound, "force_forwarding") && on(up, "force_forwarding");
    if sysctl6(host, "all", "forwarding").as_deref() == Some("0") && !forced {
        let ra = match p.route.as_ref().and_then(|r| r.proto.as_deref()) {
            Some("ra") => format!(
                " (first sysctl -w net.ipv6.conf.{up}.accept_ra=2: the default route comes from router advertisements, which forwarding would make {up} ignore)"
            ),
            _ => String::new(),
        };
        return vec![Check::new("ip6_forward", Status::Fail, "net.ipv6.conf.all.forwarding")
            .evidence(format!(
                "net.ipv6.conf.all.forwarding=0: the host routes no IPv6, so the guest's packets to {} are dropped (a device's own forwarding=1 does not change that)",
                p.dst
            ))
            .fix(format!(
                "sysctl -w net.ipv6.conf.all.forwarding=1{ra} (and persist it in /etc/sysctl.d/)"
            ))];
    }
    if sysctl6(host, &p.inbound, "forwarding").as_deref() == Some("0") {
        let dev = &p.inbound;
        // Only a default route learned from an advertisement goes with the
        // router flag (RFC 4861 §7.2.5; Linux removes RA routes only): certain
        // harm when the guest lives on advertisements, possible otherwise.
        let (status, who) = match super::links::relies_on_ra(p, host) {
            Some(why) => (Status::Fail, format!("the guest does ({why}), so it drops its default route")),
            None => (Status::Warn, "a guest that learned it as its router from an advertisement drops its default route (one with a static route does not)".to_string()),
        };
        return vec![Check::new(
            "ip6_forward",
            status,
            format!("net.ipv6.conf.{dev}.forwarding"),
        )
        .evidence(format!(
            "forwarding is off on {dev}, the guests' side: the host still forwards (all.forwarding=1), but acts as a host there — it answers the guests' neighbour solicitations without the router flag, and {who}"
        ))
        .fix(format!("sysctl -w net.ipv6.conf.{dev}.forwarding=1"))];
    }
    vec![
        Check::new("ip6_forward", Status::Pass, "net.ipv6.conf.all.forwarding").evidence(format!(
            "net.ipv6.conf.all.forwarding=1; {} acts as a router for the guests",
            p.inbound
        )),
    ]
}

/// With forwarding on, a device ignores router advertisements unless its
/// `accept_ra` is 2: a default route learned from them (`proto ra`) is then
/// never renewed and expires with its lifetime.
pub(super) fn accept_ra(p: &Path6, host: &Host) -> Check {
    let up = p.uplink.as_deref().unwrap_or_default();
    let subject = format!("net.ipv6.conf.{up}.accept_ra");
    let proto = p.route.as_ref().and_then(|r| r.proto.clone());
    let value = sysctl6(host, up, "accept_ra").unwrap_or_else(|| "?".into());
    let forwarding = sysctl6(host, up, "forwarding").as_deref() == Some("1");
    match proto.as_deref() {
        Some("ra") if forwarding && value != "2" => Check::new("accept_ra", Status::Fail, subject)
            .evidence(format!(
                "the route to {} was learned from a router advertisement on {up}, but with forwarding on, {up} ignores advertisements (accept_ra={value}): the route is not renewed and disappears when its lifetime runs out",
                p.dst
            ))
            .fix(format!(
                "sysctl -w net.ipv6.conf.{up}.accept_ra=2 (and persist it; ifupdown: accept_ra 2 in the {up} stanza)"
            )),
        Some("ra") => Check::new("accept_ra", Status::Pass, subject).evidence(format!(
            "the route to {} comes from router advertisements, and {up} accepts them (accept_ra={value}{})",
            p.dst,
            if forwarding { "" } else { ", forwarding off on it" }
        )),
        other => Check::new("accept_ra", Status::Pass, subject).evidence(format!(
            "the route to {} is {} (not from router advertisements): accept_ra={value} does not matter for it",
            p.dst,
            other.map_or("configured".to_string(), |w| format!("proto {w}"))
        )),
    }
}

/// The route to the destination, and the route back to the guest (a routed
/// prefix must point at the VM bridge, or replies leave by the uplink).
pub(super) fn route6(p: &Path6, host: &Host) -> Vec<Check> {
    let subject = format!("IPv6 route to {}", p.dst);
    let to = match &p.route {
        None => Check::new("route6", Status::Fail, subject)
            .evidence(format!(
                "this host has no IPv6 route to {} (check: ip -6 route show default)",
                p.dst
            ))
            .fix(match host_uplink_hint(host) {
                Some(up) => format!("ip -6 route add default via ROUTER dev {up} (the provider's router, often fe80::1), or let {up} learn it from router advertisements: sysctl -w net.ipv6.conf.{up}.accept_ra=2"),
                None => "ip -6 route add default via ROUTER dev UPLINK".into(),
            }),
        Some(_) if p.dst_local => Check::new("route6", Status::Pass, subject)
            .evidence(format!("{} is an address of this host", p.dst)),
        Some(_) if p.bridged => Check::new("route6", Status::Pass, subject).evidence(format!(
            "{} is reached through the VM's own bridge {} (bridged: a router on that LAN routes the guest's IPv6, not this host)",
            p.dst, p.inbound
        )),
        Some(r) => {
            let via = r.next_hop().map(|g| format!(" via {g}")).unwrap_or_default();
            let proto = r
                .proto
                .as_deref()
                .map(|w| format!(" proto {w}"))
                .unwrap_or_default();
            Check::new("route6", Status::Pass, subject).evidence(format!(
                "{}{via} dev {}{proto}",
                p.dst,
                p.uplink.as_deref().unwrap_or("?")
            ))
        }
    };
    let mut out = vec![to];
    if !p.bridged {
        out.extend(p.vm_ips.iter().map(|vm| route_back(p, *vm, host)));
    }
    out
}

/// Some device with a global IPv6 address other than the VM side: where a
/// default route would go.
fn host_uplink_hint(host: &Host) -> Option<String> {
    host.links
        .iter()
        .filter(|l| l.name != "lo" && !l.is_bridge() && l.master.is_none())
        .find(|l| {
            host.inet6_addrs(&l.name)
                .iter()
                .any(|a| a.v6().is_some_and(|(ip, _)| !is_link_local6(ip)))
        })
        .map(|l| l.name.clone())
}

fn route_back(p: &Path6, vm: Ipv6Addr, host: &Host) -> Check {
    let subject = format!("IPv6 route to the guest {vm}");
    let back = host.route_get6(vm, None);
    let dev = back
        .as_ref()
        .and_then(|r| host.route_dev(r))
        .map(str::to_string);
    // The guest on-link on the VM side yet routed elsewhere: a more specific
    // route (a stale /128 of a moved guest) wins; adding one would clash.
    let on_link = host
        .inet6_addrs(&p.inbound)
        .iter()
        .filter_map(|a| a.v6())
        .any(|(net, len)| in_prefix6(vm, net, len));
    let fix = match host.route_for(vm.into()).filter(|_| on_link) {
        Some(r) => format!(
            "remove the route that takes the guest's address elsewhere: ip -6 route del {}",
            host.route_spec(r)
        ),
        None => format!(
            "give {} the guests' prefix (ip -6 addr add PREFIX::1/64 dev {}) or route the guest to it: ip -6 route add {vm}/128 dev {}",
            p.inbound, p.inbound, p.inbound
        ),
    };
    match dev {
        Some(d) if d == p.inbound || p.l2.contains(&d) => {
            Check::new("route6", Status::Pass, subject)
                .evidence(format!("replies to {vm} leave by {d}, the VM's side"))
        }
        Some(d) => Check::new("route6", Status::Fail, subject)
            .evidence(format!(
                "the route to {vm} leaves by {d}, not by {}: replies to the guest go the wrong way (check: ip -6 route get {vm})",
                p.inbound
            ))
            .fix(fix),
        None => Check::new("route6", Status::Fail, subject)
            .evidence(format!(
                "this host has no IPv6 route to the guest's address {vm}: replies to it are dropped"
            ))
            .fix(fix),
    }
}

/// The next hop must answer neighbour solicitations, or every routed packet
/// dies in the neighbour layer (NEIGH_FAILED).
pub(super) fn gateway6(p: &Path6, gw: Ipv6Addr, host: &Host, passive: bool) -> Check {
    let up = p.uplink.clone().unwrap_or_default();
    let up_index = host.index_of(&up);
    let state: Vec<String> = host
        .neighbours_of(gw.into())
        .filter(|n| Some(n.index) == up_index && !n.proxy)
        .map(|n| n.state.clone())
        .collect();
    let subject = format!("{gw} on {up}");
    let seen = if state.is_empty() {
        "none".to_string()
    } else {
        state.join(",")
    };
    if state
        .iter()
        .any(|s| matches!(s.as_str(), "REACHABLE" | "PERMANENT" | "NOARP"))
    {
        return Check::new("gateway6", Status::Pass, subject)
            .evidence(format!("neighbour entry {seen}"));
    }
    let fail = Check::new("gateway6", Status::Fail, &subject).fix(format!(
        "check that the router {gw} is up and on the same link/VLAN as {up} (ip -6 route show default; ip -6 neigh show dev {up})"
    ));
    if !passive {
        let own_mac = host
            .link(&up)
            .and_then(|l| l.mac.as_deref())
            .and_then(arp::parse_mac);
        let src = host_addr(host, &up, is_link_local6(gw));
        if let (Some(mac), Some(src), Some(index)) = (own_mac, src, up_index) {
            return match ndp::who_has(index, mac, src, gw, Duration::from_millis(1000)) {
                Ok(macs) if !macs.is_empty() => Check::new("gateway6", Status::Pass, subject)
                    .evidence(format!(
                        "{gw} answered a neighbour solicitation from {}",
                        macs.join(", ")
                    )),
                Ok(_) => fail.evidence(format!(
                    "{gw} did not answer a neighbour solicitation from {src} on {up} within 1 s (neighbour state: {seen}): routed IPv6 packets die at the neighbour stage"
                )),
                Err(e) => Check::new("gateway6", Status::Warn, subject)
                    .evidence(format!("could not probe: {e:#}")),
            };
        }
    }
    match state.iter().any(|s| s == "FAILED" || s == "INCOMPLETE") {
        true => fail.evidence(format!("neighbour entry for {gw} is {seen}")),
        false => Check::new("gateway6", Status::Warn, subject).evidence(format!(
            "not resolved recently (neighbour state: {seen}; --passive sends no neighbour solicitation)"
        )),
    }
}

/// A guest whose address lies in the uplink's on-link prefix is, to the
/// provider's router, a neighbour on the uplink: the host must answer its
/// neighbour solicitations for it. The kernel does (ndisc_recv_ns) when the
/// uplink forwards, proxy_ndp is on (the uplink's or `all`) and a proxy entry
/// names the address; or a daemon (ndppd) answers.
pub(super) fn proxy_ndp(p: &Path6, host: &Host) -> Vec<Check> {
    p.vm_ips
        .iter()
        .filter_map(|vm| proxy_ndp_for(p, *vm, host))
        .collect()
}

fn proxy_ndp_for(p: &Path6, vm: Ipv6Addr, host: &Host) -> Option<Check> {
    let up = p.uplink.as_deref().filter(|_| p.routed())?;
    proxy_ndp_on(host, vm, up)
}

/// The `proxy_ndp` check for guest `vm` behind uplink `up` (None when `vm`
/// is not in `up`'s on-link prefix): shared with trace verdicts.
pub fn proxy_ndp_on(host: &Host, vm: Ipv6Addr, up: &str) -> Option<Check> {
    let prefix = host
        .inet6_addrs(up)
        .iter()
        .filter_map(|a| a.v6())
        .find(|(ip, len)| !is_link_local6(*ip) && in_prefix6(vm, *ip, *len))?;
    let subject = format!("proxy NDP for {vm} on {up}");
    let up_index = host.index_of(up);
    let entry = host
        .neighbours_of(vm.into())
        .any(|n| n.proxy && Some(n.index) == up_index);
    let on = |dev: &str, key: &str| sysctl6(host, dev, key).as_deref() == Some("1");
    let enabled = on(up, "proxy_ndp") || on("all", "proxy_ndp");
    let forwarding = on(up, "forwarding");
    let net = u128::from(prefix.0)
        & (u128::MAX
            .checked_shl(128 - u32::from(prefix.1))
            .unwrap_or(0));
    let onlink = format!(
        "{vm} lies in {up}'s on-link prefix {}/{}: the router on {up} asks for it by neighbour solicitation",
        Ipv6Addr::from(net),
        prefix.1
    );
    if entry && enabled && forwarding {
        return Some(
            Check::new("proxy_ndp", Status::Pass, subject).evidence(format!(
                "{onlink}, and this host answers for it (proxy_ndp on, proxy entry on {up})"
            )),
        );
    }
    if host.daemons.iter().any(|d| d.name == "ndppd") {
        return Some(
            Check::new("proxy_ndp", Status::Pass, subject).evidence(format!(
                "{onlink}; ndppd runs and answers for the guests (its configuration is not read)"
            )),
        );
    }
    let mut missing = Vec::new();
    let mut fix = Vec::new();
    if !enabled {
        missing.push(format!("proxy_ndp is off on {up}"));
        fix.push(format!("sysctl -w net.ipv6.conf.{up}.proxy_ndp=1"));
    }
    if !entry {
        missing.push(format!("no proxy entry for {vm} (ip -6 neigh show proxy)"));
        fix.push(format!("ip -6 neigh add proxy {vm} dev {up}"));
    }
    if !forwarding {
        missing.push(format!(
            "forwarding is off on {up} (the kernel proxies only on a forwarding device)"
        ));
        fix.push(format!("sysctl -w net.ipv6.conf.{up}.forwarding=1"));
    }
    Some(
        Check::new("proxy_ndp", Status::Fail, subject)
            .evidence(format!(
                "{onlink}, but nobody answers for it: {}. The router never learns where the guest is, and replies to it are dropped there",
                missing.join("; ")
            ))
            .fix(fix.join(" && ")),
    )
}
