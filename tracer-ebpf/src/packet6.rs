//! IPv6: the header, the extension headers before ICMPv6/UDP/TCP, and ICMPv6's
//! own numbers. Reached only while an IPv6 trace runs (`Config::family`).

use aya_ebpf::{helpers::bpf_probe_read_kernel, programs::TcContext};
use tracer_common::{PacketInfo, FAMILY_V6, PROTO_TCP};

use crate::packet::{
    be16, fill_dns, fill_tcp, is_dns, L4Head, DNS_HEAD_LEN, ETH_HLEN, IPPROTO_TCP, IPPROTO_UDP,
};

pub const IPPROTO_ICMPV6: u8 = 58;
pub const ICMPV6_DEST_UNREACH: u8 = 1;
pub const ICMPV6_PKT_TOOBIG: u8 = 2;
pub const ICMPV6_TIME_EXCEED: u8 = 3;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;

/// Extension headers that may precede the upper-layer header (RFC 8200 4.1).
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_DEST: u8 = 60;
/// Extension headers walked at most: a hop-by-hop, a destination options, a
/// routing and a fragment header cover what hosts send (and the verifier sees a
/// small bounded loop).
const MAX_EXT: usize = 4;
const IPV6_HLEN: usize = 40;

/// The IPv6 header, as on the wire.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6Hdr {
    ver_tc_flow: [u8; 4],
    payload_len: [u8; 2],
    next_hdr: u8,
    hop_limit: u8,
    saddr: [u8; 16],
    daddr: [u8; 16],
}

#[inline(always)]
fn is_ext(nh: u8) -> bool {
    nh == NEXTHDR_HOP || nh == NEXTHDR_ROUTING || nh == NEXTHDR_FRAGMENT || nh == NEXTHDR_DEST
}

#[inline(always)]
fn l4_known(nh: u8) -> bool {
    nh == IPPROTO_ICMPV6 || nh == IPPROTO_UDP || nh == IPPROTO_TCP
}

/// The fields of an IPv6 header pathtrace reports; `proto` is the upper layer's.
#[inline(always)]
fn ip6_info(ip: &Ipv6Hdr, proto: u8) -> PacketInfo {
    PacketInfo {
        saddr: ip.saddr,
        daddr: ip.daddr,
        family: FAMILY_V6,
        proto,
        ttl: ip.hop_limit,
        ip_len: be16(ip.payload_len).saturating_add(IPV6_HLEN as u16),
        ..PacketInfo::default()
    }
}

/// ICMPv6 type/code/id/seq (echo), or UDP/TCP ports, from the first 8 bytes
/// of the upper-layer header.
#[inline(always)]
fn fill_l4_6(info: &mut PacketInfo, l4: &L4Head) {
    let b = l4.b;
    if info.proto == IPPROTO_ICMPV6 {
        info.icmp_type = b[0];
        info.code = b[1];
        info.id = be16([b[4], b[5]]);
        info.seq = be16([b[6], b[7]]);
        if b[0] == ICMPV6_PKT_TOOBIG {
            let mtu = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
            info.next_hop_mtu = if mtu > 0xffff { 0xffff } else { mtu as u16 };
        }
    } else {
        info.sport = be16([b[0], b[1]]);
        info.dport = be16([b[2], b[3]]);
    }
}

/// Bytes the IPv6 fast path reads: Ethernet, the IPv6 header and the first 8
/// bytes of ICMPv6/UDP/TCP.
const DIRECT6_LEN: usize = ETH_HLEN + IPV6_HLEN + 8;

/// The common IPv6 case (no VLAN tag, no extension header, headers in the
/// linear data) read straight from the packet, like `packet::parse_direct`.
/// `Some(result)` is final; `None` takes the careful path.
#[inline(always)]
pub fn parse_direct6(data: usize, end: usize, info: &mut PacketInfo) -> Option<Option<usize>> {
    if data + DIRECT6_LEN > end {
        return None;
    }
    // SAFETY: within the verifier-checked bound above; byte-array structs.
    let ip = unsafe { &*((data + ETH_HLEN) as *const Ipv6Hdr) };
    if ip.ver_tc_flow[0] >> 4 != 6 {
        return Some(None);
    }
    let nh = ip.next_hdr;
    if is_ext(nh) {
        return None;
    }
    if !l4_known(nh) || (nh == IPPROTO_TCP && crate::maps::config().protos & PROTO_TCP == 0) {
        return Some(None);
    }
    let l4_off = ETH_HLEN + IPV6_HLEN;
    let l4 = unsafe { &*((data + l4_off) as *const L4Head) };
    *info = ip6_info(ip, nh);
    fill_l4_6(info, l4);
    if nh == IPPROTO_TCP {
        if data + l4_off + 14 > end {
            return None;
        }
        let b = unsafe { *((data + l4_off + 12) as *const [u8; 2]) };
        fill_tcp(info, IPV6_HLEN as u16, b);
    }
    if is_dns(info) {
        if data + DIRECT6_LEN + DNS_HEAD_LEN > end {
            return None;
        }
        // SAFETY: within the bound just checked.
        fill_dns(info, unsafe {
            *((data + DIRECT6_LEN) as *const [u8; DNS_HEAD_LEN])
        });
    }
    Some(Some(l4_off))
}

/// The IPv6 packet at `ip_off`: its header, the extension headers walked to
/// the upper layer, and that layer's first bytes. Returns the upper-layer
/// header's offset too (an ICMPv6 error's quoted packet follows it).
// Not inlined: a BPF subprogram with a stack frame of its own, beside
// `classify`'s rather than on top of it (the TC programs' frames and theirs
// share 512 bytes).
#[inline(never)]
pub fn parse_ip6_at(ctx: &TcContext, ip_off: usize, info: &mut PacketInfo) -> Option<usize> {
    let ip: Ipv6Hdr = ctx.load(ip_off).ok()?;
    if ip.ver_tc_flow[0] >> 4 != 6 {
        return None;
    }
    let mut nh = ip.next_hdr;
    let mut off = ip_off + IPV6_HLEN;
    for _ in 0..MAX_EXT {
        if !is_ext(nh) {
            break;
        }
        // Every extension header starts with (next header, length); a
        // fragment header is 8 bytes, the others (length + 1) * 8.
        let h: [u8; 4] = ctx.load(off).ok()?;
        if nh == NEXTHDR_FRAGMENT {
            // Only the first fragment carries the upper-layer header.
            if be16([h[2], h[3]]) & 0xfff8 != 0 {
                return None;
            }
            off += 8;
        } else {
            off += (h[1] as usize + 1) * 8;
        }
        nh = h[0];
    }
    if !l4_known(nh) {
        return None;
    }
    *info = ip6_info(&ip, nh);
    let l4: L4Head = ctx.load(off).ok()?;
    fill_l4_6(info, &l4);
    if nh == IPPROTO_TCP {
        if let Ok(b) = ctx.load::<[u8; 2]>(off + 12) {
            fill_tcp(info, (off - ip_off) as u16, b);
        }
    }
    if is_dns(info) {
        fill_dns(info, ctx.load(off + 8).ok()?);
    }
    Some(off)
}

/// The IPv6 packet an ICMPv6 error quotes, at `ip_off`: its addresses and
/// ICMPv6 echo id/seq or UDP/TCP ports. The guest's own request, so no
/// extension header is expected (one makes it "not ours"); read in a few small
/// loads, as this runs inside `classify`'s stack frame.
#[inline(always)]
pub fn parse_quoted6(ctx: &TcContext, ip_off: usize, info: &mut PacketInfo) -> Option<()> {
    let nh: u8 = ctx.load(ip_off + 6).ok()?;
    if !l4_known(nh) {
        return None;
    }
    info.family = FAMILY_V6;
    info.proto = nh;
    info.saddr = ctx.load(ip_off + 8).ok()?;
    info.daddr = ctx.load(ip_off + 24).ok()?;
    let l4: L4Head = ctx.load(ip_off + IPV6_HLEN).ok()?;
    fill_l4_6(info, &l4);
    Some(())
}

/// Addresses, upper-layer protocol and ICMPv6 type/code or ports of the IPv6
/// packet at kernel address `ip` (deep mode's kprobes), as `read_ipv4` does:
/// the id and sequence stay the followed request's.
#[inline(always)]
pub fn read_ipv6(ip: u64, pkt: &mut PacketInfo) {
    let Ok(h) = (unsafe { bpf_probe_read_kernel(ip as *const Ipv6Hdr) }) else {
        return;
    };
    let mut nh = h.next_hdr;
    let mut off = ip + IPV6_HLEN as u64;
    for _ in 0..MAX_EXT {
        if !is_ext(nh) {
            break;
        }
        let Ok(e) = (unsafe { bpf_probe_read_kernel(off as *const [u8; 2]) }) else {
            return;
        };
        off += if nh == NEXTHDR_FRAGMENT {
            8
        } else {
            (e[1] as u64 + 1) * 8
        };
        nh = e[0];
    }
    let info = ip6_info(&h, nh);
    pkt.saddr = info.saddr;
    pkt.daddr = info.daddr;
    pkt.family = FAMILY_V6;
    pkt.proto = nh;
    pkt.ttl = info.ttl;
    pkt.ip_len = info.ip_len;
    let b = unsafe { bpf_probe_read_kernel(off as *const [u8; 4]) }.unwrap_or([0; 4]);
    if nh == IPPROTO_ICMPV6 {
        pkt.icmp_type = b[0];
        pkt.code = b[1];
    } else if l4_known(nh) {
        pkt.sport = be16([b[0], b[1]]);
        pkt.dport = be16([b[2], b[3]]);
    }
}
