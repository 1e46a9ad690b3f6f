//! Header parsing: for the TC programs only as much as the flow filter needs; for
//! the tracepoint and kprobe programs, an IP header at a kernel address. IPv6's
//! own parts are in `packet6`; what both share (the L4 head, TCP, DNS) is here.

use crate::dhcparp::{fill_dhcp, is_dhcp_ports};
use aya_ebpf::{helpers::bpf_probe_read_kernel, programs::TcContext};
use tracer_common::{
    addr4, PacketInfo, CLASS_DHCP, CLASS_DNS, CLASS_ICMP, CLASS_OTHER, CLASS_TCP, CLASS_UDP,
    FAMILY_V4, FAMILY_V6, PROTO_TCP,
};

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const ICMP_ECHOREPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
/// Code of ICMP_DEST_UNREACH: fragmentation needed and DF set.
const ICMP_FRAG_NEEDED: u8 = 4;
pub const ICMP_ECHO: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const DNS_PORT: u16 = 53;

/// The fixed part of an IPv4 header, as on the wire.
#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv4Hdr {
    ver_ihl: u8,
    tos: u8,
    tot_len: [u8; 2],
    id: [u8; 2],
    frag: [u8; 2],
    ttl: u8,
    proto: u8,
    check: [u8; 2],
    saddr: [u8; 4],
    daddr: [u8; 4],
}

/// The first 8 bytes after the IP header: ICMP type/code/csum/id/seq, or the UDP
/// header. A DNS transaction id follows a UDP header, loaded separately.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct L4Head {
    pub b: [u8; 8],
}

#[inline(always)]
pub fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// Offset of the IP header in the frame and its ethertype, skipping up to two
/// VLAN tags; None when the frame is neither IPv4 nor IPv6.
#[inline(always)]
fn ip_offset(ctx: &TcContext) -> Option<(usize, u16)> {
    let mut off = 12;
    let mut proto = u16::from_be(ctx.load::<u16>(off).ok()?);
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        off += 4;
        proto = u16::from_be(ctx.load::<u16>(off).ok()?);
        if proto == ETH_P_8021Q {
            off += 4;
            proto = u16::from_be(ctx.load::<u16>(off).ok()?);
        }
    }
    if proto != ETH_P_IP && proto != ETH_P_IPV6 {
        return None;
    }
    Some((off + 2, proto))
}

/// Parse the IPv4 + ICMP/UDP headers of the packet. Also returns the offset of the
/// L4 header so an ICMP error's quoted packet can be read. The headers are
/// written into `info` (in place: copies of it cost the BPF stack).
#[inline(always)]
pub fn parse(ctx: &TcContext, info: &mut PacketInfo) -> Option<usize> {
    if let Some(done) = parse_direct(ctx, info) {
        return done;
    }
    // Devices without an Ethernet header (e.g. tun in L3 mode) are out of scope here.
    let (ip_off, ethertype) = ip_offset(ctx)?;
    if ethertype == ETH_P_IPV6 {
        if crate::maps::config().family != FAMILY_V6 {
            return None;
        }
        return crate::packet6::parse_ip6_at(ctx, ip_off, info);
    }
    parse_ip_at(ctx, ip_off, info)
}

/// The packet an ICMP error quotes (after its 8-byte header at `l4_off`), of
/// the error's own family.
#[inline(always)]
pub fn parse_quoted(
    ctx: &TcContext,
    err: &PacketInfo,
    l4_off: usize,
    inner: &mut PacketInfo,
) -> Option<()> {
    let at = l4_off + 8;
    if err.family == FAMILY_V6 {
        crate::packet6::parse_quoted6(ctx, at, inner)?;
    } else {
        parse_ip_at(ctx, at, inner)?;
    }
    Some(())
}

/// Bytes the fast path reads: Ethernet, an IPv4 header without options, and the
/// first 8 bytes of ICMP/UDP.
const DIRECT_LEN: usize = ETH_HLEN + 20 + 8;

/// The common case read straight from the packet, without a helper call: every
/// packet of the host crosses the bridge and uplink programs, so this is the hot
/// path. `Some(result)` is final; `None` means "take the careful path" (headers
/// not in the linear data, VLAN tags, IP options).
#[inline(always)]
fn parse_direct(ctx: &TcContext, info: &mut PacketInfo) -> Option<Option<usize>> {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + DIRECT_LEN > end {
        return None;
    }
    // SAFETY: the verifier-checked bound above covers these bytes; the header
    // structs are byte arrays (alignment 1).
    let ethertype = u16::from_be_bytes(unsafe { *((data + 12) as *const [u8; 2]) });
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        return None;
    }
    if ethertype != ETH_P_IP {
        // IPv6 only costs anything while an IPv6 trace runs: IPv4 packets never
        // reach this branch, and an IPv4 trace leaves IPv6 packets alone.
        if ethertype == ETH_P_IPV6 && crate::maps::config().family == FAMILY_V6 {
            return crate::packet6::parse_direct6(data, end, info);
        }
        return Some(None);
    }
    let ip = unsafe { &*((data + ETH_HLEN) as *const Ipv4Hdr) };
    if ip.ver_ihl != 0x45 {
        // IP options move the L4 header: the careful path; not IPv4: done.
        return if ip.ver_ihl >> 4 == 4 {
            None
        } else {
            Some(None)
        };
    }
    if ip.proto != IPPROTO_ICMP && ip.proto != IPPROTO_UDP && ip.proto != IPPROTO_TCP {
        return Some(None);
    }
    // Only a traced TCP service looks into TCP: every other trace is done with
    // it here, as it always was.
    if ip.proto == IPPROTO_TCP && crate::maps::config().protos & PROTO_TCP == 0 {
        return Some(None);
    }
    let l4 = unsafe { &*((data + ETH_HLEN + 20) as *const L4Head) };
    *info = ip_info(ip);
    fill_l4(info, l4);
    if ip.proto == IPPROTO_TCP {
        // Data offset and flags lie past the first 8 bytes.
        if data + ETH_HLEN + 20 + 14 > end {
            return None;
        }
        let b = unsafe { *((data + ETH_HLEN + 20 + 12) as *const [u8; 2]) };
        fill_tcp(info, 20, b);
    }
    if is_dns(info) {
        // The DNS id and RCODE follow the UDP header. Read them here too when the
        // linear data holds them: a flood to or from port 53 crosses every hook,
        // and the careful path costs it four helper calls a packet.
        if data + DIRECT_LEN + DNS_HEAD_LEN > end {
            return None;
        }
        // SAFETY: within the bound just checked.
        fill_dns(info, unsafe {
            *((data + DIRECT_LEN) as *const [u8; DNS_HEAD_LEN])
        });
    }
    if info.proto == IPPROTO_UDP && is_dhcp_ports(info.sport, info.dport) {
        return None; // so is the DHCP xid
    }
    Some(Some(ETH_HLEN + 20))
}

/// The fields of an IPv4 header pathtrace reports.
#[inline(always)]
fn ip_info(ip: &Ipv4Hdr) -> PacketInfo {
    PacketInfo {
        saddr: addr4(ip.saddr),
        daddr: addr4(ip.daddr),
        family: FAMILY_V4,
        proto: ip.proto,
        ttl: ip.ttl,
        ip_len: be16(ip.tot_len),
        frag: be16(ip.frag),
        ..PacketInfo::default()
    }
}

/// ICMP type/code/id/seq, or UDP ports, from the first 8 bytes after the IP header.
#[inline(always)]
fn fill_l4(info: &mut PacketInfo, l4: &L4Head) {
    let b = l4.b;
    if info.proto == IPPROTO_ICMP {
        info.icmp_type = b[0];
        info.code = b[1];
        info.id = be16([b[4], b[5]]);
        info.seq = be16([b[6], b[7]]);
        // Kept apart: an ICMP error answering a service flow has its id/seq
        // replaced by the quoted flow's ports.
        if b[0] == ICMP_DEST_UNREACH && b[1] == ICMP_FRAG_NEEDED {
            info.next_hop_mtu = info.seq;
        }
    } else {
        info.sport = be16([b[0], b[1]]);
        info.dport = be16([b[2], b[3]]);
    }
}

/// TCP flags and payload length from the TCP header's bytes 12 and 13 (data
/// offset, flags); `ihl` is the IP header's length.
#[inline(always)]
pub fn fill_tcp(info: &mut PacketInfo, ihl: u16, b: [u8; 2]) {
    info.tcp_flags = b[1];
    let hdrs = ihl + u16::from(b[0] >> 4) * 4;
    info.payload_len = info.ip_len.saturating_sub(hdrs);
}

/// Offset of the question section of the DNS message in a UDP packet at `l4_off`.
#[inline(always)]
pub const fn dns_question_offset(l4_off: usize) -> usize {
    l4_off + 8 + 12
}

#[inline(always)]
pub fn parse_ip_at(ctx: &TcContext, ip_off: usize, info: &mut PacketInfo) -> Option<usize> {
    let ip: Ipv4Hdr = ctx.load(ip_off).ok()?;
    let l4_known = ip.proto == IPPROTO_ICMP || ip.proto == IPPROTO_UDP || ip.proto == IPPROTO_TCP;
    if ip.ver_ihl >> 4 != 4 || !l4_known {
        return None;
    }
    let ihl = ((ip.ver_ihl & 0x0f) as usize) * 4;
    if ihl < 20 {
        return None;
    }
    let l4_off = ip_off + ihl;
    *info = ip_info(&ip);
    let l4: L4Head = ctx.load(l4_off).ok()?;
    fill_l4(info, &l4);
    if info.proto == IPPROTO_TCP {
        // Absent from the 8 bytes an ICMP error may quote: then left 0.
        if let Ok(b) = ctx.load::<[u8; 2]>(l4_off + 12) {
            fill_tcp(info, ihl as u16, b);
        }
    }
    if is_dns(info) {
        fill_dns(info, ctx.load(l4_off + 8).ok()?);
    }
    if info.proto == IPPROTO_UDP && is_dhcp_ports(info.sport, info.dport) {
        fill_dhcp(ctx, info, l4_off)?;
    }
    Some(l4_off)
}

/// The DNS header's bytes pathtrace reads: the id and the flags.
pub const DNS_HEAD_LEN: usize = 4;

#[inline(always)]
pub fn is_dns(info: &PacketInfo) -> bool {
    info.proto == IPPROTO_UDP && (info.sport == DNS_PORT || info.dport == DNS_PORT)
}

/// DNS header: id, then flags whose low 4 bits are the RCODE (of a response).
#[inline(always)]
pub fn fill_dns(info: &mut PacketInfo, head: [u8; DNS_HEAD_LEN]) {
    info.id = u16::from_be_bytes([head[0], head[1]]);
    if info.sport == DNS_PORT {
        info.code = head[3] & 0x0f;
    }
}

/// The IP packet at kernel address `ip`, whichever its version (deep mode's
/// kprobes: the header as it is at that function).
#[inline(always)]
pub fn read_ip(ip: u64, pkt: &mut PacketInfo) {
    let Ok(first) = (unsafe { bpf_probe_read_kernel(ip as *const u8) }) else {
        return;
    };
    if first >> 4 == 6 {
        crate::packet6::read_ipv6(ip, pkt);
    } else {
        read_ipv4(ip, pkt);
    }
}

/// Addresses, protocol and (for UDP/TCP) ports of the IPv4 packet at kernel
/// address `ip` (outside TC, where the packet is not directly readable); its
/// `CLASS_*`.
#[inline(always)]
pub fn read_ipv4(ip: u64, pkt: &mut PacketInfo) -> u8 {
    let Ok(h) = (unsafe { bpf_probe_read_kernel(ip as *const [u8; 20]) }) else {
        return CLASS_OTHER;
    };
    if h[0] >> 4 != 4 {
        return CLASS_OTHER;
    }
    pkt.saddr = addr4([h[12], h[13], h[14], h[15]]);
    pkt.daddr = addr4([h[16], h[17], h[18], h[19]]);
    pkt.family = FAMILY_V4;
    pkt.proto = h[9];
    pkt.ttl = h[8];
    pkt.ip_len = u16::from_be_bytes([h[2], h[3]]);
    pkt.frag = u16::from_be_bytes([h[6], h[7]]);
    let l4 = ip + ((h[0] & 0x0f) as u64) * 4;
    let b = unsafe { bpf_probe_read_kernel(l4 as *const [u8; 4]) }.unwrap_or([0; 4]);
    match pkt.proto {
        1 => {
            pkt.icmp_type = b[0];
            pkt.code = b[1];
        }
        6 | 17 => {
            pkt.sport = u16::from_be_bytes([b[0], b[1]]);
            pkt.dport = u16::from_be_bytes([b[2], b[3]]);
        }
        _ => {}
    }
    class_of(pkt)
}

/// The `CLASS_*` of a packet `read_ipv4`/`read_ipv6` filled in (watch mode
/// counts drops per class).
#[inline(always)]
pub fn class_of(pkt: &PacketInfo) -> u8 {
    match pkt.proto {
        IPPROTO_ICMP | crate::packet6::IPPROTO_ICMPV6 => CLASS_ICMP,
        IPPROTO_TCP => CLASS_TCP,
        IPPROTO_UDP => {
            if pkt.sport == DNS_PORT || pkt.dport == DNS_PORT {
                CLASS_DNS
            } else if is_dhcp_ports(pkt.sport, pkt.dport) {
                CLASS_DHCP
            } else {
                CLASS_UDP
            }
        }
        _ => CLASS_OTHER,
    }
}
