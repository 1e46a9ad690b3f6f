//! Routing checks: forwarding, reverse-path filtering, the route to the
//! destination and its gateway's neighbour entry.

use std::{net::Ipv4Addr, time::Duration};

use super::*;

pub(super) fn ip_forward(t: &Topology, host: &Host) -> Check {
    let global = host.sysctl("net/ipv4/ip_forward");
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
        if host
            .sysctl(&format!("net/ipv4/conf/{dev}/forwarding"))
            .as_deref()
            == Some("0")
        {
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
pub(super) fn rp_value(host: &Host, dev: &str) -> u8 {
    let v = |d: &str| {
        host.sysctl(&format!("net/ipv4/conf/{d}/rp_filter"))
            .and_then(|s| s.parse::<u8>().ok())
            .unwrap_or(0)
    };
    v("all").max(v(dev))
}

/// The device the host's route to `ip` leaves by.
pub(super) fn route_dev(host: &Host, ip: Ipv4Addr) -> Option<String> {
    let r = host.route_get(ip, None)?;
    host.route_dev(&r).map(str::to_string)
}

/// Reverse-path filtering: a packet from `src` arriving on `dev` passes strict
/// mode only if the route back to `src` leaves by `dev`.
pub(super) fn rp_filter(t: &Topology, host: &Host) -> Check {
    let mut arrivals = vec![(t.inbound().name.clone(), t.vm_ip4())];
    if let Some(up) = &t.uplink {
        arrivals.push((up.name.clone(), t.dst4()));
    }
    let mut seen = Vec::new();
    for (dev, src) in arrivals {
        let mode = rp_value(host, &dev);
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

pub(super) fn route(s: &Subject, t: &Topology) -> Check {
    let subject = format!("route to {}", s.dst);
    if t.unroutable {
        // The uplink went down and took its routes with it.
        if let Some(gone) = topology::down::routes_gone(&s.host) {
            return Check::new("route", Status::Fail, subject)
                .evidence(format!(
                    "this host has no route to {}: {}",
                    s.dst,
                    gone.words()
                ))
                .fix(gone.fix());
        }
        return Check::new("route", Status::Fail, subject)
            .evidence(format!("this host has no route to {}", s.dst))
            .fix("add one, e.g. a default route: ip route add default via GATEWAY dev UPLINK");
    }
    let how = if t.dst_local {
        format!("{} is an address of this host", s.dst)
    } else if let (Some(lan), Some(br)) = (&t.lan, &t.bridge) {
        format!(
            "{} is reached through the LAN's router {} on {} (bridged: this host routes none of the guest's traffic)",
            s.dst, lan.gateway, br.name
        )
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
pub(super) fn gateway(t: &Topology, gw: Ipv4Addr, host: &Host, passive: bool) -> Check {
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
            .iter()
            .find_map(|a| match a {
                std::net::IpAddr::V4(a) => Some(*a),
                std::net::IpAddr::V6(_) => None,
            })
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
