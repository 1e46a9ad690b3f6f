//! ICMP and ICMPv6 told apart once: what a message is to a trace (an echo, its
//! reply, an error quoting a packet), whichever the family.

use tracer_common::PacketInfo;

use crate::{
    packet::{ICMP_DEST_UNREACH, ICMP_ECHO, ICMP_ECHOREPLY, ICMP_TIME_EXCEEDED, IPPROTO_ICMP},
    packet6::{
        ICMPV6_DEST_UNREACH, ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST, ICMPV6_PKT_TOOBIG,
        ICMPV6_TIME_EXCEED, IPPROTO_ICMPV6,
    },
};

pub const OTHER: u8 = 0;
pub const ECHO: u8 = 1;
pub const REPLY: u8 = 2;
/// Destination unreachable, time exceeded (and IPv6's Packet Too Big): they
/// quote the packet they answer.
pub const ERROR: u8 = 3;

#[inline(always)]
pub fn is_icmp(proto: u8) -> bool {
    proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6
}

/// `ECHO`, `REPLY`, `ERROR` or `OTHER` (not ICMP at all, or NDP, MLD, ...).
#[inline(always)]
pub fn kind(pkt: &PacketInfo) -> u8 {
    match (pkt.proto, pkt.icmp_type) {
        (IPPROTO_ICMP, ICMP_ECHO) | (IPPROTO_ICMPV6, ICMPV6_ECHO_REQUEST) => ECHO,
        (IPPROTO_ICMP, ICMP_ECHOREPLY) | (IPPROTO_ICMPV6, ICMPV6_ECHO_REPLY) => REPLY,
        (IPPROTO_ICMP, ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED)
        | (IPPROTO_ICMPV6, ICMPV6_DEST_UNREACH | ICMPV6_PKT_TOOBIG | ICMPV6_TIME_EXCEED) => ERROR,
        _ => OTHER,
    }
}
