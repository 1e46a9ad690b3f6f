//! From a finished trace to the operator's answer: where it died, the kernel's
//! reason, the rule or setting responsible, and the command that fixes it.

mod arp;
mod blame;
mod bond;
mod bridge;
pub mod dhcp;
mod ebtables;
mod firewall;
pub mod fix;
pub mod iptables;
mod libvirt;
mod nat66;
mod neighbour;
pub mod nft;
mod nft_match;
pub mod nwfilter;
mod path;
mod pve_firewall;
mod relevant;
mod rpf;
mod service;
pub mod stage;
mod vlan;

/// Proxmox's nftables firewall in its own terms, for the doctor's checks too.
pub use pve_firewall::hint as pve_hint;

use std::{collections::HashMap, net::IpAddr};

use tracer_common::PacketInfo;

/// A sysctl of the network namespace we run in (`/proc/sys/net` is per-netns).
use crate::kernel::sysctl as read_sysctl;
use crate::{
    correlate::{Direction, Drop, Finished, Hop, Outcome, Stage, Trace},
    kernel::kallsyms::Symbols,
    output::{Check, Flow, Nat, PathHop, Verdict},
    topology::{Role, Topology},
};
use stage::{drop_stage, DropFacts};

pub struct Explainer {
    pub topo: Topology,
    /// Doctor checks, to attach where they explain a verdict (as they hold then).
    pub findings: Box<dyn Findings>,
    pub reasons: HashMap<u32, String>,
    pub symbols: Symbols,
    pub proto_word: &'static str,
    /// Where the hypervisor's configuration is (`--config-root`, `/` normally):
    /// generated firewalls are fixed in their own files.
    pub config_root: std::path::PathBuf,
}

/// The doctor's findings as they hold at the moment of asking (the doctor
/// provides them; explain only attaches them to verdicts).
pub trait Findings {
    /// The failed or warning checks among `names` (all checks when None).
    fn current(&self, names: Option<&[&str]>) -> Vec<Check>;
    /// Every check.
    fn all_now(&self) -> Vec<Check>;
    /// The doctor's `proxy_ndp` check for guest `vm` behind `uplink`, as it
    /// holds now (None: `vm` is not in the uplink's on-link prefix).
    fn proxy_ndp(&self, vm: std::net::Ipv6Addr, uplink: &str) -> Option<Check>;
}

/// What we say about one drop: stage, responsible rule/setting, and the fix.
struct Blame {
    stage: Stage,
    rule: Option<String>,
    hint: String,
    /// Where to point the operator, when not the device the skb was on.
    ifname: Option<String>,
}

impl Explainer {
    pub fn verdict(&self, f: &Finished) -> Verdict {
        let t = &f.trace;
        let mut v = Verdict {
            kind: "verdict".into(),
            vm_ip: self.topo.vm_ip.to_string(),
            dst: self.topo.dst.to_string(),
            proto: self.proto_word.into(),
            flow: match self.is_service() {
                true => service::service_flow(t),
                false => Flow {
                    qname: t.qname.clone(),
                    ..path::flow_of(&t.request)
                },
            },
            verdict: f.outcome,
            direction: None,
            stage: None,
            ifname: None,
            reason: None,
            location: None,
            rule: None,
            hint: None,
            path: self.path(t),
            rtt_ns: None,
            dns_rcode: None,
            events_missing: t.events_missing,
            incomplete: f.timed_out,
            doctor: Vec::new(),
        };
        match f.outcome {
            Outcome::Replied => self.replied(t, &mut v),
            Outcome::Dropped => self.dropped(t, &mut v),
            Outcome::NoReply => self.no_reply(t, f.timed_out, &mut v),
        }
        if self.is_service() {
            self.refine_service(t, &mut v);
        }
        match t.request.kind {
            tracer_common::PKT_DHCP => self.dhcp(t, &mut v),
            tracer_common::PKT_ARP => self.arp(t, &mut v),
            _ => {}
        }
        if f.outcome != Outcome::Replied {
            // Findings the verdict attached itself (proxy_ndp) stay first.
            let attached = std::mem::take(&mut v.doctor);
            let names = relevant::checks(v.stage, v.direction, self.topo.vm_ip.is_ipv6());
            let rest = self.findings.current(Some(&names));
            v.doctor = attached
                .into_iter()
                .chain(rest.into_iter().filter(|c| c.check != "proxy_ndp"))
                .collect();
        }
        v
    }

    fn name(&self, ifindex: u32) -> Option<String> {
        self.topo.name_of(ifindex).map(str::to_string)
    }

    fn replied(&self, t: &Trace, v: &mut Verdict) {
        v.ifname = t.port_ifindex.and_then(|i| self.name(i));
        v.rtt_ns = t.delivered_ts.map(|d| d.saturating_sub(t.first_ts()));
        if t.request.proto == 17 && !self.is_service() && t.request.kind == tracer_common::PKT_IP {
            let rcode = t.reply_hops.last().map_or(0, |h| h.pkt.code);
            v.dns_rcode = Some(crate::dns::rcode_name(rcode));
            if rcode != 0 {
                v.hint = Some(format!(
                    "the network path works: the resolver {} answered {} for {}; the problem is the name or the resolver's own configuration",
                    self.topo.dst,
                    crate::dns::rcode_name(rcode),
                    t.qname.as_deref().unwrap_or("the query")
                ));
            }
        }
        if let Some(h) = t
            .reply_hops
            .iter()
            .map(|h| &h.pkt)
            .find(|p| is_icmp_error(p))
        {
            v.hint = Some(icmp_error_hint(h));
        }
    }

    fn dropped(&self, t: &Trace, v: &mut Verdict) {
        let Some(d) = &t.drop else {
            self.reply_lost(t, v);
            return;
        };
        let reason = self.reasons.get(&d.reason).cloned();
        let location = self.symbols.resolve(d.location);
        let function = location
            .as_deref()
            .map(|l| l.split('+').next().unwrap_or(l));
        let facts = DropFacts {
            reason: reason.as_deref(),
            function,
            direction: Some(d.direction),
            has_dst: d.has_dst,
            dev_known: d.dev_known,
            dev_role: self.topo.role_of(d.ifindex),
            dev_is_bridge: self.topo.is_bridge_dev(d.ifindex),
            dst_local: self.topo.dst_local,
            bridged: self.topo.bridged,
        };
        let blame = self.blame(t, d, &facts);
        v.direction = Some(d.direction);
        v.stage = Some(blame.stage);
        v.ifname = blame.ifname.clone().or_else(|| {
            // Inside a firewall bridge, name the bridge: the operator's rules and
            // `bridge` commands refer to it, not to the veth or tap it was on.
            let fw = (blame.stage == Stage::Bridge)
                .then(|| self.topo.firewall_bridge_of(d.ifindex))
                .flatten();
            fw.or_else(|| self.name(d.ifindex))
        });
        v.reason = reason;
        v.location = location;
        v.rule = blame.rule;
        v.hint = Some(blame.hint);
        v.path.push(PathHop {
            stage: blame.stage,
            ifname: v.ifname.clone(),
            bridge: None,
            ts_ns: d.ts_ns.saturating_sub(t.first_ts()),
            nat: None,
            direction: d.direction,
            inferred: false,
            function: None,
        });
    }

    fn no_reply(&self, t: &Trace, timed_out: bool, v: &mut Verdict) {
        v.direction = None;
        if let Some(out) = t.req_hops.iter().rev().find(|h| {
            self.topo.role_of(h.ifindex) == Some(Role::Uplink)
                || (self.topo.lan.is_some() && h.stage == Stage::Egress && h.egress)
        }) {
            self.left_host(t, out, v);
        } else if t.local_ts.is_some() {
            v.stage = Some(Stage::Input);
            v.ifname = self.topo.bridge.as_ref().map(|b| b.name.clone());
            v.hint = Some(format!(
                "the host itself received the request for {} but sent no reply (check `sysctl {}` and the OUTPUT chain)",
                self.topo.dst,
                match self.topo.is_v6() {
                    true => "net.ipv6.icmp.echo_ignore_all",
                    false => "net.ipv4.icmp_echo_ignore_all",
                }
            ));
        } else {
            let last = t.req_hops.last();
            v.stage = last.map(|h| h.stage);
            v.ifname = last.and_then(|h| self.name(h.ifindex));
            v.hint = Some(format!(
                "the request was last seen at {} and no drop was reported{}",
                v.stage.map_or("?", Stage::as_str),
                if timed_out {
                    " before tracing stopped"
                } else {
                    ""
                }
            ));
        }
    }

    /// The reply was freed on the host without a drop reason, or vanished, before
    /// reaching the guest's port.
    fn reply_lost(&self, t: &Trace, v: &mut Verdict) {
        v.direction = Some(Direction::Reply);
        if let Some(b) = self.blame_port_down(t, "the reply to the guest") {
            v.stage = Some(b.stage);
            v.ifname = b.ifname;
            v.rule = b.rule;
            v.hint = Some(b.hint);
            return;
        }
        let last = t.reply_hops.last();
        v.stage = Some(last.map_or(Stage::Forward, |h| h.stage));
        v.ifname = last.and_then(|h| self.name(h.ifindex));
        if let Some((location, _)) = t.reply_lost_at {
            v.location = self.symbols.resolve(location);
        }
        v.hint = Some(format!(
            "the reply came back to the host but never reached {}: it was last seen at {}{}",
            t.port_ifindex
                .and_then(|i| self.name(i))
                .unwrap_or_else(|| "the guest's port".into()),
            v.stage.map_or("?", Stage::as_str),
            v.location
                .as_ref()
                .map(|l| format!(" and freed in {l}"))
                .unwrap_or_default()
        ));
    }

    /// The request left through the uplink and nothing came back.
    fn left_host(&self, t: &Trace, out: &Hop, v: &mut Verdict) {
        if self.topo.lan.is_some() {
            // Bridged into the LAN: no NAT, no route of this host's involved.
            return self.lan_no_reply(t, out, v);
        }
        v.stage = Some(Stage::Remote);
        v.ifname = self.name(out.ifindex);
        v.hint = Some(self.remote_hint(out));
        // The guest is a neighbour on the uplink nobody answers for: the
        // doctor's finding says why, as IPv4 verdicts carry theirs.
        if let Some(c) = self.unanswered_ndp(out.pkt.src()) {
            v.rule = Some(c.subject.clone());
            v.doctor.push(c);
        }
        let nat66_certain = self
            .untranslated6(out.pkt.src(), &self.uplink_name())
            .is_some_and(|u| u.certain);
        if self.missing_snat(out) || nat66_certain {
            v.rule = Some(format!(
                "no SNAT/MASQUERADE for {} on {}",
                self.vm_net(),
                self.uplink_name()
            ));
        }
        let (asked, sent_to) = (t.request.dst_v4(), out.pkt.dst_v4());
        if asked != sent_to {
            // DNAT sent it elsewhere: that target did not answer.
            v.rule = nft::find_dnat_rule(sent_to)
                .or_else(|| iptables::find_dnat_rule(sent_to))
                .or_else(|| Some(format!("dnat {asked} → {sent_to}")));
            v.hint = Some(format!(
                "the guest's request to {asked} was redirected (DNAT) to {sent_to}, which did not answer within {} s: check that {sent_to} is the right, live server, or fix the DNAT rule",
                crate::correlate::REPLY_WAIT_NS / 1_000_000_000
            ));
        }
    }

    /// How this family resolves neighbours, for people.
    fn resolution_word(&self) -> &'static str {
        match self.topo.is_v6() {
            true => "neighbour solicitations (NDP)",
            false => "ARP",
        }
    }

    fn uplink_name(&self) -> String {
        self.topo
            .uplink
            .as_ref()
            .map_or("the uplink".into(), |u| u.name.clone())
    }

    fn vm_net(&self) -> String {
        match self.topo.vm_subnet {
            Some((net, len)) => format!("{net}/{len}"),
            None if self.topo.is_v6() => format!("{}/128", self.topo.vm_ip),
            None => format!("{}/32", self.topo.vm_ip),
        }
    }

    /// The request left with the guest's own address although that address is not
    /// one of the uplink's: nothing translated it, so replies cannot find their way.
    /// IPv4 only: an IPv6 guest routed with its own (global) address needs
    /// no translation.
    fn missing_snat(&self, out: &Hop) -> bool {
        let src = out.pkt.src();
        !self.topo.is_v6() && src == self.topo.vm_ip && !self.topo.uplink_addrs.contains(&src)
    }

    fn remote_hint(&self, out: &Hop) -> String {
        let (uplink, src) = (self.uplink_name(), out.pkt.src());
        if self.missing_snat(out) {
            return format!(
                "the request left {uplink} with the guest's own source {src}: no MASQUERADE/SNAT \
                 rule translated it, so the reply cannot come back; add one: {}",
                fix::add_masquerade(&self.vm_net(), &uplink)
            );
        }
        if let Some(u) = self.untranslated6(src, &uplink) {
            return self.nat66_hint(&u, &uplink, src);
        }
        if let Some(c) = self.unanswered_ndp(src) {
            return format!(
                "the request left {uplink} as {src} → {} and nothing came back: {} (fix: {})",
                out.pkt.dst(),
                c.evidence,
                c.fix.as_deref().unwrap_or("-")
            );
        }
        format!(
            "the request left {uplink} as {src} → {} and nothing came back within {} s: the \
             problem is beyond this host (upstream router, the destination, or its firewall)",
            out.pkt.dst(),
            crate::correlate::REPLY_WAIT_NS / 1_000_000_000
        )
    }

    /// An IPv6 guest source that left untranslated, off the uplink's link.
    fn nat66_hint(&self, u: &nat66::Untranslated, uplink: &str, src: IpAddr) -> String {
        let (prefix, fix) = (&u.prefix, nat66::add_masquerade6(&u.prefix, uplink));
        if u.certain {
            return format!(
                "the request left {uplink} with the guest's own unique-local source {src}, which no one beyond this host routes back: no ip6 nat masquerade/snat rule translated it (NAT66), so the reply cannot come back; add one: {fix}"
            );
        }
        format!(
            "the request left {uplink} with the guest's own source {src} and nothing came back: no ip6 nat masquerade/snat rule translated it and {prefix} is not on {uplink}'s link, so replies reach this host only if the provider routes {prefix} to it; if it does not (a prefix of the host's own choosing), add NAT66: {fix}, or have the provider route {prefix} to this host"
        )
    }
}

/// What the ICMP error the guest got instead of its reply says. A router's
/// "too big" (IPv6 Packet Too Big, IPv4 fragmentation needed) names the
/// path's MTU: the guest must send smaller packets.
fn icmp_error_hint(h: &PacketInfo) -> String {
    let too_big = match (h.proto, h.icmp_type, h.code) {
        (58, 2, _) => Some("Packet Too Big"),
        (1, 3, 4) => Some("fragmentation needed"),
        _ => None,
    };
    let mtu = h.next_hop_mtu;
    match too_big {
        Some(what) if mtu > 0 => format!(
            "{what}, MTU {mtu} from {}: the path beyond this host carries at most {mtu} bytes; the guest must lower its packet size/MTU (ip link set dev IFACE mtu {mtu} in the guest, or smaller pings)",
            h.src()
        ),
        Some(what) => format!(
            "{what} from {}: the path beyond this host carries smaller packets than the guest sends; the guest must lower its packet size/MTU",
            h.src()
        ),
        None => format!(
            "the guest got an {} error (type {}, code {}) from {} instead of an echo reply",
            if h.proto == 58 { "ICMPv6" } else { "ICMP" },
            h.icmp_type,
            h.code,
            h.src()
        ),
    }
}

/// An ICMP destination unreachable or time exceeded, or their ICMPv6
/// counterparts (and Packet Too Big).
fn is_icmp_error(p: &PacketInfo) -> bool {
    match p.proto {
        1 => p.icmp_type == 3 || p.icmp_type == 11,
        58 => matches!(p.icmp_type, 1..=3),
        _ => false,
    }
}
