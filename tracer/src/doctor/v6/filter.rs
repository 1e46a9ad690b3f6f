//! The firewall's verdict on the guest's IPv6: ICMPv6 echo and DNS through the
//! forward hook (both ways), and neighbour discovery — which must pass, or
//! nothing works over IPv6 at all — between the guest and the host on the VM
//! side, the host and its router on the uplink, and across a firewall bridge.
//! Replayed against the ip6/inet nft chains and ip6tables-legacy, as the IPv4
//! `firewall` check replays the guest's ping.

use std::net::Ipv6Addr;

use super::{host_addr, ip, Path6};
use crate::{
    doctor::{checks::filter_culprit, ndp::solicited_node, Check, Status},
    explain::nft::{PacketView, L3},
    host::Host,
};

const ICMPV6: u8 = 58;
const UDP: u8 = 17;
const ECHO_REQUEST: u8 = 128;
const ECHO_REPLY: u8 = 129;
const NS: u8 = 135;
const NA: u8 = 136;

/// One packet to replay: at which hook, what it is, and how to say it.
struct Replay {
    hook: &'static str,
    view: PacketView,
    what: String,
    /// A reply to the guest (a policy drop is then fixed with an
    /// established-traffic rule).
    reply: bool,
    ndp: bool,
}

fn packet(saddr: Ipv6Addr, daddr: Ipv6Addr, proto: u8, icmp: Option<u8>) -> PacketView {
    PacketView {
        saddr: ip(saddr),
        daddr: ip(daddr),
        proto,
        icmp_type: icmp,
        l3: L3::Ipv6,
        ..Default::default()
    }
}

fn devs(mut v: PacketView, iif: Option<&str>, oif: Option<&str>, ct: &'static str) -> PacketView {
    v.iifname = iif.map(str::to_string);
    v.oifname = oif.map(str::to_string);
    v.ct_state = Some(ct);
    v
}

fn udp(mut v: PacketView, sport: u16, dport: u16) -> PacketView {
    v.sport = Some(sport);
    v.dport = Some(dport);
    v
}

/// The guest's echo and DNS, and their replies, where the host forwards them
/// (or receives them, for a destination of its own).
fn traffic(p: &Path6) -> Vec<Replay> {
    let vm = p.vm_ip();
    let inb = Some(p.inbound.as_str());
    let (hook, out) = match p.dst_local {
        true => ("input", None),
        false => ("forward", p.uplink.as_deref().or(inb)),
    };
    let mut r = vec![
        Replay {
            hook,
            view: devs(
                packet(vm, p.dst, ICMPV6, Some(ECHO_REQUEST)),
                inb,
                out,
                "new",
            ),
            what: format!("ICMPv6 echo {vm} → {}", p.dst),
            reply: false,
            ndp: false,
        },
        Replay {
            hook,
            view: udp(
                devs(packet(vm, p.dns, UDP, None), inb, out, "new"),
                40000,
                53,
            ),
            what: format!("DNS over IPv6 {vm} → [{}]:53", p.dns),
            reply: false,
            ndp: false,
        },
    ];
    if !p.dst_local {
        r.push(Replay {
            hook,
            view: devs(
                packet(p.dst, vm, ICMPV6, Some(ECHO_REPLY)),
                out,
                inb,
                "established",
            ),
            what: format!("the echo reply {} → {vm}", p.dst),
            reply: true,
            ndp: false,
        });
        r.push(Replay {
            hook,
            view: udp(
                devs(packet(p.dns, vm, UDP, None), out, inb, "established"),
                53,
                40000,
            ),
            what: format!("the DNS answer [{}]:53 → {vm}", p.dns),
            reply: true,
            ndp: false,
        });
    }
    r
}

/// Neighbour discovery between `a` (this host, on `dev`) and `b`: b's
/// solicitation and advertisement coming in, ours going out. NDP is never
/// tracked by conntrack (`ct state untracked`, measured on 6.18).
fn ndp_on(dev: &str, host_ip: Ipv6Addr, peer: Ipv6Addr, who: &str) -> Vec<Replay> {
    let d = Some(dev);
    let mk = |hook, view, what: String| Replay {
        hook,
        view,
        what,
        reply: false,
        ndp: true,
    };
    vec![
        mk(
            "input",
            devs(
                packet(peer, solicited_node(host_ip), ICMPV6, Some(NS)),
                d,
                None,
                "untracked",
            ),
            format!("the neighbour solicitation of {who} {peer} for {host_ip} on {dev}"),
        ),
        mk(
            "input",
            devs(
                packet(peer, host_ip, ICMPV6, Some(NA)),
                d,
                None,
                "untracked",
            ),
            format!("the neighbour advertisement of {who} {peer} to {host_ip} on {dev}"),
        ),
        mk(
            "output",
            devs(
                packet(host_ip, solicited_node(peer), ICMPV6, Some(NS)),
                None,
                d,
                "untracked",
            ),
            format!("this host's neighbour solicitation for {who} {peer} on {dev}"),
        ),
        mk(
            "output",
            devs(
                packet(host_ip, peer, ICMPV6, Some(NA)),
                None,
                d,
                "untracked",
            ),
            format!("this host's neighbour advertisement to {who} {peer} on {dev}"),
        ),
    ]
}

/// Neighbour discovery bridged through a firewall bridge (br_netfilter with
/// bridge-nf-call-ip6tables=1 shows it to the forward hook, with the bridge
/// as both devices).
fn ndp_across(bridge: &str, vm: Ipv6Addr, peer: Ipv6Addr) -> Vec<Replay> {
    let b = Some(bridge);
    [
        (vm, peer, NS, "solicitation"),
        (vm, peer, NA, "advertisement"),
        (peer, vm, NS, "solicitation"),
        (peer, vm, NA, "advertisement"),
    ]
    .into_iter()
    .map(|(s, d, t, word)| {
        let daddr = if t == NS { solicited_node(d) } else { d };
        Replay {
            hook: "forward",
            view: devs(packet(s, daddr, ICMPV6, Some(t)), b, b, "untracked"),
            what: format!("the neighbour {word} {s} → {d} bridged by {bridge}"),
            reply: false,
            ndp: true,
        }
    })
    .collect()
}

pub(super) fn firewall6(p: &Path6, host: &Host) -> Vec<Check> {
    let vm = p.vm_ip();
    let mut replays = Vec::new();
    if !p.bridged {
        replays.extend(traffic(p));
        if let Some(own) = host_addr(host, &p.inbound, false) {
            replays.extend(ndp_on(&p.inbound, own, vm, "the guest"));
        }
        if let (Some(up), Some(gw)) = (p.uplink.as_deref().filter(|_| p.routed()), p.gateway()) {
            let ll = crate::host::is_link_local6(gw);
            if let Some(own) = host_addr(host, up, ll) {
                replays.extend(ndp_on(up, own, gw, "the router"));
            }
        }
    }
    if host
        .sysctl("net/bridge/bridge-nf-call-ip6tables")
        .as_deref()
        == Some("1")
    {
        // Every bridge on the guest's side, firewall bridges included, shows its
        // frames to the IPv6 forward hook.
        let peer = host_addr(host, &p.inbound, false).unwrap_or(p.dst);
        for b in p.l2.iter().filter(|d| host.is_bridge(d)) {
            replays.extend(ndp_across(b, vm, peer));
        }
    }
    let mut out: Vec<Check> = Vec::new();
    let mut seen: Vec<(String, bool, bool)> = Vec::new();
    for r in &replays {
        // One finding per rule and kind of packet: the same rule eats
        // solicitations and advertisements alike, a policy requests and
        // replies with different fixes.
        let Some((rule, c)) = verdict(p, r) else {
            continue;
        };
        let key = (rule, r.reply, r.ndp);
        if !seen.contains(&key) {
            seen.push(key);
            out.push(c);
        }
    }
    if out.is_empty() {
        out.push(
            Check::new("firewall6", Status::Pass, "IPv6 rules (nft ip6/inet, ip6tables-legacy)").evidence(format!(
                "no rule drops the guest's ICMPv6 echo to {} or DNS to [{}]:53 or their replies, nor neighbour discovery on {}{}",
                p.dst,
                p.dns,
                p.inbound,
                p.uplink.as_deref().map(|u| format!(" and {u}")).unwrap_or_default()
            )),
        );
    }
    out
}

/// A failing (or, when unsure, warning) check when a rule or policy drops the
/// replayed packet, with the rule's description.
fn verdict(p: &Path6, r: &Replay) -> Option<(String, Check)> {
    let found = filter_culprit(r.hook, &r.view, r.reply, &p.vm_ip().to_string())?;
    let fix = match r.ndp && found.policy {
        // Let neighbour discovery through rather than the guest's traffic.
        true => ndp_accept(&found.fix),
        false => found.fix,
    };
    let (status, verb) = match found.certain {
        true => (Status::Fail, "drops"),
        false => (
            Status::Warn,
            "may drop (it has matches pathtrace cannot evaluate)",
        ),
    };
    let why = match r.ndp {
        true => ": without neighbour discovery no IPv6 packet reaches its next hop",
        false => "",
    };
    let check = Check::new("firewall6", status, format!("{} hook", r.hook))
        .evidence(format!("{} {verb} {}{why}", found.desc, r.what))
        .fix(fix);
    Some((found.desc, check))
}

/// The allow command for a chain whose policy drops NDP, from the one that
/// would let the guest through (same tool, table and chain).
fn ndp_accept(guest_fix: &str) -> String {
    let words: Vec<&str> = guest_fix.split_whitespace().collect();
    match words.as_slice() {
        ["nft", "insert", "rule", f, t, ch, ..] => format!(
            "nft insert rule {f} {t} {ch} icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} accept"
        ),
        [tool, rest @ ..] => {
            let upto: Vec<&str> = rest.iter().take_while(|w| **w != "-s" && **w != "-d").copied().collect();
            let head = format!("{tool} {}", upto.join(" "));
            format!(
                "{head} -p ipv6-icmp --icmpv6-type neighbour-solicitation -j ACCEPT && {head} -p ipv6-icmp --icmpv6-type neighbour-advertisement -j ACCEPT"
            )
        }
        [] => guest_fix.to_string(),
    }
}
