//! TCP and UDP services (`--proto tcp|udp --port N`): the guest's connection
//! attempts (SYN), the first data segments of a followed connection, UDP
//! requests, and what answers them (SYN-ACK, RST, the server's segments, a UDP
//! response, an ICMP error quoting them), matched by 5-tuple.
//!
//! The flow's key in `id`/`seq` is (service port, guest port): the service
//! port survives MASQUERADE, and so does the guest's port unless it clashes
//! with another connection's (then the reply is recognised from where conntrack
//! has turned it back to the guest's port, the bridge on).

use aya_ebpf::programs::TcContext;
use tracer_common::{
    req_key, Config, PacketInfo, FLAG_ICMP_ERROR, PROTO_TCP, PROTO_UDP, ROLE_REPLY, ROLE_REQUEST,
    TCP_ACK, TCP_SYN,
};

use crate::{
    maps::{config, following, maybe_followed, request_recent, requests_seen, same_addr, REQ_IDS},
    packet::{parse_quoted, IPPROTO_TCP, IPPROTO_UDP},
};

/// `--proto tcp|udp` asks for this IP protocol.
#[inline(always)]
pub fn wanted(proto: u8, cfg: &Config) -> bool {
    (proto == IPPROTO_TCP && cfg.protos & PROTO_TCP != 0)
        || (proto == IPPROTO_UDP && cfg.protos & PROTO_UDP != 0)
}

/// Any service flow at all is traced (ICMP errors may answer one).
#[inline(always)]
pub fn any_wanted(cfg: &Config) -> bool {
    cfg.protos & (PROTO_TCP | PROTO_UDP) != 0
}

/// Put the flow's key into `id`/`seq`: (service port, guest port), whichever
/// way the packet travels.
#[inline(always)]
pub fn key(pkt: &mut PacketInfo, cfg: &Config) {
    if pkt.dport == cfg.dst_port {
        pkt.id = pkt.dport;
        pkt.seq = pkt.sport;
    } else if pkt.sport == cfg.dst_port {
        pkt.id = pkt.sport;
        pkt.seq = pkt.dport;
    }
}

/// Could this keyed TCP/UDP packet be the flow's, at any hook? Towards the
/// service: where the guest's packet enters, or while something is followed
/// (the skb lookup that follows decides; NAT may have changed the guest's
/// port). From the service: only to a guest port followed recently.
#[inline(always)]
pub fn concerns(pkt: &PacketInfo, starts: bool, cfg: &Config) -> bool {
    if pkt.dport == cfg.dst_port && same_addr(&pkt.daddr, &cfg.dst_ip) {
        (starts && same_addr(&pkt.saddr, &cfg.vm_ip)) || following()
    } else if pkt.sport == cfg.dst_port && same_addr(&pkt.saddr, &cfg.dst_ip) {
        requests_seen() && maybe_followed(pkt.id, pkt.seq)
    } else {
        false
    }
}

/// A new connection attempt or UDP request of the guest to the service: what
/// the follow budget is spent on (data segments only follow a followed
/// connection).
#[inline(always)]
pub fn is_new_request(pkt: &PacketInfo, cfg: &Config) -> bool {
    let opens = match pkt.proto {
        IPPROTO_TCP => pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
        _ => true,
    };
    opens
        && same_addr(&pkt.saddr, &cfg.vm_ip)
        && same_addr(&pkt.daddr, &cfg.dst_ip)
        && pkt.dport == cfg.dst_port
}

#[inline(always)]
fn known(proto: u8, id: u16, seq: u16) -> bool {
    let family = config().family;
    request_recent() && unsafe { REQ_IDS.get(req_key(family, proto, id, seq)).is_some() }
}

/// Request or reply of the traced service flow, as (role, flags).
#[inline(always)]
pub fn classify(pkt: &PacketInfo, cfg: &Config) -> Option<(u8, u8)> {
    if is_new_request(pkt, cfg) {
        return Some((ROLE_REQUEST, 0));
    }
    let (proto, id, seq) = (pkt.proto, pkt.id, pkt.seq);
    let to_service = same_addr(&pkt.saddr, &cfg.vm_ip)
        && same_addr(&pkt.daddr, &cfg.dst_ip)
        && pkt.dport == cfg.dst_port;
    // A data segment of a followed connection: the path-MTU black hole shows
    // on these, not on the handshake.
    if to_service && proto == IPPROTO_TCP && pkt.payload_len > 0 && known(proto, id, seq) {
        return Some((ROLE_REQUEST, 0));
    }
    let from_service = same_addr(&pkt.saddr, &cfg.dst_ip) && pkt.sport == cfg.dst_port;
    if from_service && known(proto, id, seq) {
        return Some((ROLE_REPLY, 0));
    }
    None
}

/// An ICMP error (fragmentation needed, port unreachable, ...) quoting one of
/// the guest's followed TCP/UDP packets answers it: keyed as that flow.
#[inline(always)]
pub fn classify_error(
    ctx: &TcContext,
    pkt: &mut PacketInfo,
    l4_off: usize,
    cfg: &Config,
) -> Option<(u8, u8)> {
    let mut inner = PacketInfo::default();
    parse_quoted(ctx, pkt, l4_off, &mut inner)?;
    let ours = wanted(inner.proto, cfg)
        && same_addr(&inner.daddr, &cfg.dst_ip)
        && inner.dport == cfg.dst_port
        && known(inner.proto, inner.dport, inner.sport);
    if !ours {
        return None;
    }
    pkt.id = inner.dport;
    pkt.seq = inner.sport;
    pkt.quoted_proto = inner.proto;
    Some((ROLE_REPLY, FLAG_ICMP_ERROR))
}
