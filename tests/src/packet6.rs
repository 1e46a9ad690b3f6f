//! Just enough IPv6, ICMPv6 and neighbour discovery to play a guest on a TAP
//! device, beside packet.rs's IPv4. Checksums cover the IPv6 pseudo-header
//! (RFC 8200 8.1): the kernel drops ICMPv6 and UDP with a wrong one.

use std::net::Ipv6Addr;

use crate::packet::{checksum, eth, Mac};

pub const ETH_P_IPV6: u16 = 0x86dd;
/// Upper-layer protocol numbers.
pub const ICMPV6: u8 = 58;
pub const UDP: u8 = 17;
/// ICMPv6 types.
pub const DEST_UNREACHABLE: u8 = 1;
pub const PACKET_TOO_BIG: u8 = 2;
pub const TIME_EXCEEDED: u8 = 3;
pub const PARAM_PROBLEM: u8 = 4;
pub const ECHO_REQUEST: u8 = 128;
pub const ECHO_REPLY: u8 = 129;
pub const NEIGHBOR_SOLICITATION: u8 = 135;
pub const NEIGHBOR_ADVERTISEMENT: u8 = 136;
/// Neighbour discovery must arrive with hop limit 255 (RFC 4861 7.1.1), or
/// the receiver ignores it.
pub const NDP_HOP_LIMIT: u8 = 255;

/// Neighbor Advertisement flags (RFC 4861 4.4).
pub const NA_ROUTER: u8 = 0x80;
pub const NA_SOLICITED: u8 = 0x40;
pub const NA_OVERRIDE: u8 = 0x20;

/// The checksum of an upper-layer message over the IPv6 pseudo-header.
pub fn pseudo_checksum(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, msg: &[u8]) -> u16 {
    let mut p = Vec::with_capacity(40 + msg.len());
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, proto]);
    p.extend_from_slice(msg);
    checksum(&p)
}

/// An IPv6 packet (no extension headers) in an Ethernet frame.
pub fn ipv6(
    macs: (Mac, Mac),
    src: Ipv6Addr,
    dst: Ipv6Addr,
    proto: u8,
    hop_limit: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut h = Vec::with_capacity(40 + payload.len());
    h.extend_from_slice(&[0x60, 0, 0, 0]);
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[proto, hop_limit]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(payload);
    eth(macs.1, macs.0, ETH_P_IPV6, &h)
}

/// An ICMPv6 message: type, code, then `body` (everything after the checksum).
pub fn icmpv6(src: Ipv6Addr, dst: Ipv6Addr, kind: u8, code: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind, code, 0, 0];
    m.extend_from_slice(body);
    let c = pseudo_checksum(src, dst, ICMPV6, &m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// An ICMPv6 echo request (128) or reply (129).
pub fn echo(src: Ipv6Addr, dst: Ipv6Addr, kind: u8, id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + data.len());
    b.extend_from_slice(&id.to_be_bytes());
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(data);
    icmpv6(src, dst, kind, 0, &b)
}

/// A UDP datagram over IPv6; its checksum is mandatory (0 is sent as 0xffff).
pub fn udp(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), data: &[u8]) -> Vec<u8> {
    let len = (8 + data.len()) as u16;
    let mut u = Vec::with_capacity(usize::from(len));
    u.extend_from_slice(&src.1.to_be_bytes());
    u.extend_from_slice(&dst.1.to_be_bytes());
    u.extend_from_slice(&len.to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(data);
    let c = match pseudo_checksum(src.0, dst.0, UDP, &u) {
        0 => 0xffff,
        c => c,
    };
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

/// The solicited-node multicast address of `addr`: ff02::1:ffXX:XXXX.
pub fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    let mut s = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 0).octets();
    s[13..].copy_from_slice(&o[13..]);
    Ipv6Addr::from(s)
}

/// The Ethernet address of an IPv6 multicast group: 33:33 and its last 32 bits.
pub fn multicast_mac(group: Ipv6Addr) -> Mac {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// The link-local address Linux derives from a MAC (EUI-64, RFC 4291 appendix A).
pub fn link_local(mac: Mac) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a[0..2].copy_from_slice(&[0xfe, 0x80]);
    a[8..11].copy_from_slice(&[mac[0] ^ 0x02, mac[1], mac[2]]);
    a[11..13].copy_from_slice(&[0xff, 0xfe]);
    a[13..16].copy_from_slice(&mac[3..6]);
    Ipv6Addr::from(a)
}

/// A Neighbor Solicitation for `target` from `src`, to its solicited-node group,
/// carrying our link-layer address (source link-layer address option).
pub fn neighbor_solicitation(mac: Mac, src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let group = solicited_node(target);
    let mut b = vec![0u8; 4];
    b.extend_from_slice(&target.octets());
    b.extend_from_slice(&[1, 1]);
    b.extend_from_slice(&mac);
    let m = icmpv6(src, group, NEIGHBOR_SOLICITATION, 0, &b);
    ipv6(
        (mac, multicast_mac(group)),
        src,
        group,
        ICMPV6,
        NDP_HOP_LIMIT,
        &m,
    )
}

/// A Neighbor Advertisement that `target` is at `mac`, sent from `target` to
/// `dst` (at `dst_mac`), with the target link-layer address option.
pub fn neighbor_advertisement(
    (mac, dst_mac): (Mac, Mac),
    target: Ipv6Addr,
    dst: Ipv6Addr,
    flags: u8,
) -> Vec<u8> {
    let mut b = vec![flags, 0, 0, 0];
    b.extend_from_slice(&target.octets());
    b.extend_from_slice(&[2, 1]);
    b.extend_from_slice(&mac);
    let m = icmpv6(target, dst, NEIGHBOR_ADVERTISEMENT, 0, &b);
    ipv6((mac, dst_mac), target, dst, ICMPV6, NDP_HOP_LIMIT, &m)
}

/// A Neighbor Solicitation or Advertisement as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ndp {
    pub kind: u8,
    /// NA flags (router, solicited, override); 0 for NS.
    pub flags: u8,
    pub target: Ipv6Addr,
    /// The source (NS) or target (NA) link-layer address option.
    pub lladdr: Option<Mac>,
}

/// An NS or NA in an ICMPv6 message, when it is one and arrived with hop limit
/// 255 (anything else is not neighbour discovery, RFC 4861 7.1).
pub fn parse_ndp(hop_limit: u8, icmp: &[u8]) -> Option<Ndp> {
    let kind = *icmp.first()?;
    if hop_limit != NDP_HOP_LIMIT
        || !matches!(kind, NEIGHBOR_SOLICITATION | NEIGHBOR_ADVERTISEMENT)
        || icmp.len() < 24
    {
        return None;
    }
    let target: [u8; 16] = icmp[8..24].try_into().ok()?;
    let mut lladdr = None;
    let mut opts = &icmp[24..];
    while opts.len() >= 8 {
        let len = usize::from(opts[1]) * 8;
        if len == 0 || len > opts.len() {
            break;
        }
        if matches!(opts[0], 1 | 2) {
            lladdr = opts[2..8].try_into().ok();
        }
        opts = &opts[len..];
    }
    Some(Ndp {
        kind,
        flags: if kind == NEIGHBOR_ADVERTISEMENT {
            icmp[4]
        } else {
            0
        },
        target: Ipv6Addr::from(target),
        lladdr,
    })
}

/// The upper-layer protocol and its offset in `ip` (an IPv6 packet), past the
/// hop-by-hop, routing, destination options and fragment headers; None when
/// the chain runs off the packet or the packet is a later fragment.
pub fn upper_layer(ip: &[u8]) -> Option<(u8, usize)> {
    let (mut next, mut at) = (*ip.get(6)?, 40);
    loop {
        match next {
            0 | 43 | 60 => {
                let h = ip.get(at..at + 2)?;
                next = h[0];
                at += (usize::from(h[1]) + 1) * 8;
            }
            44 => {
                let h = ip.get(at..at + 8)?;
                if u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0 {
                    return None;
                }
                next = h[0];
                at += 8;
            }
            _ => return (at <= ip.len()).then_some((next, at)),
        }
    }
}

/// Does `a` lie in `net`/`len`?
pub fn in_prefix(a: Ipv6Addr, net: Ipv6Addr, len: u8) -> bool {
    let mask = u128::MAX
        .checked_shl(128 - u32::from(len.min(128)))
        .unwrap_or(0);
    u128::from(a) & mask == u128::from(net) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    fn addr(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn derived_addresses() {
        assert_eq!(link_local(MAC), addr("fe80::5054:ff:fe12:3456"));
        let sn = solicited_node(addr("2001:db8:1::100"));
        assert_eq!(sn, addr("ff02::1:ff00:100"));
        assert_eq!(multicast_mac(sn), [0x33, 0x33, 0xff, 0x00, 0x01, 0x00]);
        assert!(in_prefix(addr("2001:db8:1::100"), addr("2001:db8:1::"), 64));
        assert!(!in_prefix(
            addr("2001:db8:ffff::8"),
            addr("2001:db8:1::"),
            64
        ));
    }

    #[test]
    fn icmpv6_and_udp_checksums_verify() {
        let (s, d) = (addr("2001:db8:1::100"), addr("2001:db8:ffff::8"));
        let e = echo(s, d, ECHO_REQUEST, 7, 1, &[0x61; 56]);
        assert_eq!(pseudo_checksum(s, d, ICMPV6, &e), 0);
        let u = udp((s, 40000), (d, 53), b"query");
        assert_eq!(pseudo_checksum(s, d, UDP, &u), 0);
    }

    /// The pseudo-header sum worked out by hand (RFC 8200 8.1 layout), not
    /// with the code under test.
    #[test]
    fn echo_checksum_matches_a_captured_one() {
        let (s, d) = (addr("fe80::1"), addr("fe80::2"));
        let e = echo(s, d, ECHO_REQUEST, 0x0001, 0x0001, b"");
        // Addresses fe80::1 + fe80::2, length 8, next header 0x3a, then the
        // message's words: 0x8000 (type 128, code 0), id 1, seq 1.
        let sum: u32 = 0xfe80 * 2 + 1 + 2 + 8 + 0x3a + 0x8000 + 1 + 1;
        let folded = (sum & 0xffff) + (sum >> 16);
        assert_eq!(u16::from_be_bytes([e[2], e[3]]), !(folded as u16));
    }

    #[test]
    fn ns_and_na_roundtrip() {
        let (me, gw) = (addr("2001:db8:1::100"), addr("2001:db8:1::1"));
        let ns = neighbor_solicitation(MAC, me, gw);
        assert_eq!(&ns[0..6], &multicast_mac(solicited_node(gw)));
        let ip = &ns[14..];
        assert_eq!((ip[6], ip[7]), (ICMPV6, NDP_HOP_LIMIT));
        let (proto, at) = upper_layer(ip).unwrap();
        assert_eq!((proto, at), (ICMPV6, 40));
        assert_eq!(
            pseudo_checksum(me, solicited_node(gw), ICMPV6, &ip[40..]),
            0
        );
        let n = parse_ndp(255, &ip[40..]).unwrap();
        assert_eq!((n.kind, n.target, n.lladdr), (135, gw, Some(MAC)));
        assert_eq!(parse_ndp(64, &ip[40..]), None, "hop limit must be 255");

        let flags = NA_SOLICITED | NA_OVERRIDE;
        let na = neighbor_advertisement((MAC, [2; 6]), me, gw, flags);
        let n = parse_ndp(255, &na[14 + 40..]).unwrap();
        assert_eq!((n.kind, n.flags, n.target), (136, flags, me));
        assert_eq!(pseudo_checksum(me, gw, ICMPV6, &na[14 + 40..]), 0);
    }

    #[test]
    fn extension_headers_are_walked() {
        // Hop-by-hop (router alert, as MLD carries) then ICMPv6.
        let mut ip = vec![0x60, 0, 0, 0, 0, 16, 0, 1];
        ip.extend_from_slice(&[0; 32]);
        ip.extend_from_slice(&[ICMPV6, 0, 5, 2, 0, 0, 1, 0]);
        ip.extend_from_slice(&[143, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(upper_layer(&ip), Some((ICMPV6, 48)));
        // A later fragment has no upper-layer header.
        let mut frag = vec![0x60, 0, 0, 0, 0, 8, 44, 64];
        frag.extend_from_slice(&[0; 32]);
        frag.extend_from_slice(&[UDP, 0, 0, 8, 0, 0, 0, 1]);
        assert_eq!(upper_layer(&frag), None);
        assert_eq!(upper_layer(&ip[..44]), None, "truncated chain");
    }

    proptest::proptest! {
        #[test]
        fn decoders_never_panic(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120)) {
            let _ = upper_layer(&b);
            let _ = parse_ndp(255, &b);
        }
    }
}
