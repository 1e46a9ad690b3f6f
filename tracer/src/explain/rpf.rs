//! A reverse-path filter written as an nft `fib` rule (`fib saddr . iif oif
//! missing drop`: firewalld's IPv6_rpfilter, the usual IPv6 stand-in for
//! IPv4's rp_filter sysctl) that dropped the guest's packet: the fault is the
//! route back to the source, so the hint names that route and how to fix it,
//! not only the rule.

use super::nft::{Culprit, PacketView, RouteBack};
use crate::host::Host;

/// The hint for a drop by `c`, when it is a `fib saddr` rule and the replay's
/// view of the packet (`pkt`) knows where the host routes the source back to.
pub(super) fn hint(c: &Culprit, pkt: &PacketView, what: &str) -> Option<String> {
    if !c.text.as_deref()?.contains("fib saddr") {
        return None;
    }
    let src = pkt.saddr?;
    let iif = pkt.iifname.as_deref()?;
    let ip = if src.is_ipv6() { "ip -6" } else { "ip" };
    let rule = format!(
        "nftables rule \"{}\" in {} {} {} is a reverse-path filter",
        c.text.as_deref().unwrap_or("?"),
        c.family,
        c.table,
        c.chain
    );
    let host = Host::read().ok();
    let route = host
        .as_ref()
        .and_then(|h| Some(h.route_spec(h.route_for(src)?)));
    Some(match pkt.route_back.as_ref()? {
        RouteBack::Via(dev) if dev != iif => format!(
            "{rule}: it drops {what} because this host routes {src} back by {dev}{}, not by {iif} it came in by ({ip} route get {src}); correct the route to the guest{} — or let {iif} through before that rule",
            route.as_ref().map(|r| format!(" (route {r})")).unwrap_or_default(),
            route
                .as_ref()
                .map(|r| format!(": {ip} route del {r}"))
                .unwrap_or_default(),
        ),
        RouteBack::Via(_) => return None,
        RouteBack::Missing => format!(
            "{rule}: it drops {what} because this host has no route back to {src} ({ip} route get {src}); add one by {iif}: {ip} route add {src} dev {iif}"
        ),
    })
}
