//! TCP and UDP services (`--proto tcp|udp`): the flow's ports and flags, a
//! connection refused (by a REJECT rule of this host, or by the destination),
//! and the path-MTU black hole (an ICMP "fragmentation needed" — the host's own,
//! or a router's beyond it — eaten by a firewall rule of this host before it
//! reaches the guest).

use tracer_common::{TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN};

use super::*;

const IPPROTO_TCP: u8 = 6;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;

/// The path-MTU black hole, named the same way whichever MTU is the small one.
pub(super) const BLACK_HOLE: &str = "a path-MTU black hole";
/// What a black hole does to the guest's connection.
pub(super) const NEVER_LEARNS: &str = "so the guest never learns to send smaller packets and the connection stalls after the handshake";

/// TCP flags as the contract writes them: `SYN`, `SYN,ACK`, `RST,ACK`.
pub fn flags_text(flags: u8) -> String {
    const NAMES: [(u8, &str); 5] = [
        (TCP_SYN, "SYN"),
        (TCP_RST, "RST"),
        (TCP_FIN, "FIN"),
        (TCP_PSH, "PSH"),
        (TCP_ACK, "ACK"),
    ];
    let set: Vec<&str> = NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    if set.is_empty() {
        "none".into()
    } else {
        set.join(",")
    }
}

/// The `flow` of a TCP/UDP service request.
pub(super) fn service_flow(t: &Trace) -> Flow {
    let p = &t.request;
    let tcp = p.proto == IPPROTO_TCP;
    Flow {
        src: p.src().to_string(),
        dst: p.dst().to_string(),
        sport: Some(p.sport),
        dport: Some(p.dport),
        tcp_flags: tcp.then(|| flags_text(p.tcp_flags)),
        tcp_payload: (tcp && p.payload_len > 0).then_some(p.payload_len),
        reply_tcp_flags: tcp_answer(t).map(|h| flags_text(h.pkt.tcp_flags)),
        ..Flow::default()
    }
}

/// The last TCP segment of the answer seen on the host.
fn tcp_answer(t: &Trace) -> Option<&Hop> {
    t.reply_hops
        .iter()
        .rev()
        .find(|h| h.pkt.proto == IPPROTO_TCP)
}

/// The answer was a TCP reset.
fn reset(t: &Trace) -> bool {
    tcp_answer(t).is_some_and(|h| h.pkt.tcp_flags & TCP_RST != 0)
}

/// Where the ICMP "fragmentation needed" the host sends for a too-big packet
/// of the guest ended.
pub(super) enum FragNeeded {
    /// It reached the guest's port: path-MTU discovery is the guest's to do.
    Delivered,
    /// A rule of this host drops it: (the rule, the fix).
    Eaten(String, String),
    /// Not seen reaching the guest, and no rule found that drops it.
    Unseen,
}

impl Explainer {
    /// A TCP/UDP service flow (rather than ping or DNS).
    pub(super) fn is_service(&self) -> bool {
        matches!(self.proto_word, "tcp" | "udp")
    }

    /// What the generic explanation says, made specific to a service: a
    /// connection refused, by this host or by the destination.
    pub(super) fn refine_service(&self, t: &Trace, v: &mut Verdict) {
        let (dst, port) = (t.request.dst(), t.request.dport);
        match v.verdict {
            Outcome::Replied if reset(t) => {
                v.hint = Some(format!(
                    "the network path works, but {dst} refused the connection to port {port} (TCP reset): nothing listens on that port there, or its own firewall rejects it"
                ));
            }
            Outcome::Dropped if v.direction == Some(Direction::Reply) => {
                if let Some(hint) = self.remote_black_hole(t, v) {
                    v.hint = Some(hint);
                }
            }
            Outcome::Dropped if v.direction == Some(Direction::Request) => {
                let rule = v.rule.clone().unwrap_or_default();
                let rejects = rule.to_lowercase().contains("reset") || reset(t);
                if t.request.proto != IPPROTO_TCP || !rejects || !rule_like(&rule) {
                    return;
                }
                let fix = removal(v)
                    .map(|cmd| format!("; to allow it, remove the rule: {cmd}"))
                    .unwrap_or_default();
                v.hint = Some(format!(
                    "the host's firewall refused the connection: rule \"{rule}\" answers the guest's connection attempt to {dst}:{port} with a TCP reset (the guest sees 'connection refused' at once){fix}"
                ));
            }
            _ => {}
        }
    }

    /// The reply this host dropped is a router's ICMP "fragmentation needed"
    /// for the guest's segment, come in by the uplink: a path-MTU black hole
    /// beyond the host, closed by this host's firewall. The hint naming the
    /// router, the MTU it asks for, the rule and the fixes.
    fn remote_black_hole(&self, t: &Trace, v: &Verdict) -> Option<String> {
        let dropped = &t.drop.as_ref()?.pkt;
        if !is_frag_needed(dropped) {
            return None;
        }
        let uplink = self.topo.uplink.as_ref()?.index;
        let icmp = t
            .reply_hops
            .iter()
            .find(|h| is_frag_needed(&h.pkt) && h.ifindex == uplink && !h.egress)?;
        let rule = v.rule.as_deref().filter(|r| rule_like(r))?;
        let (router, mtu) = (icmp.pkt.src(), icmp.pkt.next_hop_mtu);
        let asks = match mtu {
            0 => "a smaller MTU".to_string(),
            m => format!("MTU {m}"),
        };
        let seg = t.request.ip_len;
        let remove = removal(v)
            .map(|cmd| format!("{cmd}, or "))
            .unwrap_or_default();
        let v6 = self.topo.is_v6();
        let fixes = fix::pass_frag_needed(rule, mtu, v6);
        // IPv6 has no DF bit: no router fragments, each answers Packet Too Big.
        let (df, answer) = match v6 {
            true => ("", "Packet Too Big"),
            false => (" (DF set)", "fragmentation needed"),
        };
        Some(format!(
            "{BLACK_HOLE}: router {router} beyond {up} cannot forward the guest's {seg}-byte segment to {dst}{df} and answers '{answer}' asking for {asks}, but rule \"{rule}\" drops that ICMP on its way through this host, {NEVER_LEARNS}; let it through: {remove}{accept}; or clamp the guest's TCP MSS to the path: {clamp}",
            up = self.uplink_name(),
            dst = t.request.dst(),
            accept = fixes.accept,
            clamp = fixes.clamp,
        ))
    }

    /// The fate of the ICMP "fragmentation needed" the host sends back to the
    /// guest when it cannot forward the guest's packet `d` (DF, too big).
    pub(super) fn frag_needed_fate(&self, t: &Trace) -> FragNeeded {
        let delivered = t
            .reply_hops
            .iter()
            .any(|h| is_frag_needed(&h.pkt) && h.egress && Some(h.ifindex) == t.port_ifindex);
        if delivered {
            return FragNeeded::Delivered;
        }
        // The host sends it from its own stack: OUTPUT, then POSTROUTING, out
        // of the bridge the guest's packet came in by, as an error related to
        // the guest's connection.
        let v6 = self.topo.is_v6();
        let view = nft::PacketView {
            saddr: None,
            daddr: Some(self.topo.vm_ip),
            proto: if v6 { IPPROTO_ICMPV6 } else { 1 },
            icmp_type: Some(if v6 {
                ICMPV6_PKT_TOOBIG
            } else {
                ICMP_DEST_UNREACH
            }),
            oifname: Some(self.topo.inbound().name.clone()),
            ct_state: Some("related"),
            l3: if v6 { nft::L3::Ipv6 } else { nft::L3::Ipv4 },
            ..Default::default()
        };
        for hook in ["output", "postrouting"] {
            if let Some(c) = nft::find_culprit(hook, false, &view) {
                let fix = fix::delete(&c)
                    .unwrap_or_else(|| fix::allow(&c, true, &self.topo.vm_ip.to_string()));
                return FragNeeded::Eaten(c.describe(), fix);
            }
            if let Some(c) = iptables::find_culprit(hook, &view) {
                let fix = fix::legacy(&c, false, &self.vm_net());
                return FragNeeded::Eaten(c.describe(iptables::legacy_tool(&view)), fix);
            }
        }
        FragNeeded::Unseen
    }
}

/// An ICMP "fragmentation needed", or ICMPv6's Packet Too Big.
fn is_frag_needed(p: &PacketInfo) -> bool {
    (p.proto == 1 && p.icmp_type == ICMP_DEST_UNREACH && p.code == ICMP_FRAG_NEEDED)
        || (p.proto == IPPROTO_ICMPV6 && p.icmp_type == ICMPV6_PKT_TOOBIG)
}

const IPPROTO_ICMPV6: u8 = 58;
const ICMPV6_PKT_TOOBIG: u8 = 2;

/// The command of the generic hint that removes the rule it names.
fn removal(v: &Verdict) -> Option<&str> {
    v.hint
        .as_deref()?
        .split_once("remove it: ")
        .map(|(_, cmd)| cmd)
}

/// A rule (not a setting or an MTU) was named.
fn rule_like(rule: &str) -> bool {
    rule.contains("handle") || rule.contains(" rule ") || rule.contains("policy")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_read_as_tcpdump_would() {
        assert_eq!(flags_text(TCP_SYN), "SYN");
        assert_eq!(flags_text(TCP_SYN | TCP_ACK), "SYN,ACK");
        assert_eq!(flags_text(TCP_RST | TCP_ACK), "RST,ACK");
        assert_eq!(flags_text(TCP_PSH | TCP_ACK), "PSH,ACK");
        assert_eq!(flags_text(0), "none");
    }

    #[test]
    fn the_flow_names_ports_flags_and_the_answer() {
        let syn = PacketInfo {
            saddr: tracer_common::addr4([192, 0, 2, 100]),
            daddr: tracer_common::addr4([203, 0, 113, 8]),
            proto: IPPROTO_TCP,
            sport: 40000,
            dport: 8080,
            id: 8080,
            seq: 40000,
            tcp_flags: TCP_SYN,
            ..Default::default()
        };
        let mut t = Trace::new(&syn, 1, 0);
        t.reply_hops.push(Hop {
            stage: Stage::Egress,
            ifindex: 3,
            ts_ns: 1,
            pkt: PacketInfo {
                tcp_flags: TCP_RST | TCP_ACK,
                ..syn
            },
            egress: false,
        });
        let f = service_flow(&t);
        assert_eq!((f.sport, f.dport), (Some(40000), Some(8080)));
        assert_eq!(f.tcp_flags.as_deref(), Some("SYN"));
        assert_eq!(f.reply_tcp_flags.as_deref(), Some("RST,ACK"));
        assert_eq!(f.tcp_payload, None);
        assert!(f.icmp_id.is_none() && f.dns_id.is_none());
        assert!(reset(&t));
    }
}
