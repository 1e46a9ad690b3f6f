//! Just enough Ethernet/ARP/IPv4/ICMP/UDP/DNS to play a guest on a TAP device
//! (IPv6 in packet6.rs).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::packet6;

pub type Mac = [u8; 6];
pub const BROADCAST: Mac = [0xff; 6];
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;

/// The Internet checksum (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

pub(crate) fn eth(dst: Mac, src: Mac, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An ARP request (op 1) or reply (op 2) inside an Ethernet frame.
pub fn arp(op: u16, src_mac: Mac, src_ip: Ipv4Addr, dst_mac: Mac, dst_ip: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&src_mac);
    a.extend_from_slice(&src_ip.octets());
    a.extend_from_slice(if op == 1 { &[0; 6] } else { &dst_mac });
    a.extend_from_slice(&dst_ip.octets());
    let eth_dst = if op == 1 { BROADCAST } else { dst_mac };
    eth(eth_dst, src_mac, ETH_P_ARP, &a)
}

/// Fields of the IPv4 header the guest chooses.
#[derive(Debug, Clone, Copy)]
pub struct IpOpts {
    pub ttl: u8,
    pub df: bool,
    pub id: u16,
}

impl Default for IpOpts {
    fn default() -> Self {
        Self {
            ttl: 64,
            df: true,
            id: 1,
        }
    }
}

/// An IPv4 packet in an Ethernet frame.
pub fn ipv4(
    macs: (Mac, Mac),
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    opts: IpOpts,
    payload: &[u8],
) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&opts.id.to_be_bytes());
    h.extend_from_slice(&(if opts.df { 0x4000u16 } else { 0 }).to_be_bytes());
    h.extend_from_slice(&[opts.ttl, proto, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    eth(macs.1, macs.0, ETH_P_IP, &h)
}

/// An ICMP echo request (type 8) or reply (type 0).
pub fn icmp_echo(kind: u8, id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut m = vec![kind, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(data);
    let c = checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// A UDP datagram with its checksum over the IPv4 pseudo-header.
pub fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), data: &[u8]) -> Vec<u8> {
    let len = (8 + data.len()) as u16;
    let mut u = Vec::with_capacity(len as usize);
    u.extend_from_slice(&src.1.to_be_bytes());
    u.extend_from_slice(&dst.1.to_be_bytes());
    u.extend_from_slice(&len.to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(data);
    let mut pseudo = Vec::with_capacity(12 + u.len());
    pseudo.extend_from_slice(&src.0.octets());
    pseudo.extend_from_slice(&dst.0.octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&len.to_be_bytes());
    pseudo.extend_from_slice(&u);
    let c = match checksum(&pseudo) {
        0 => 0xffff,
        c => c,
    };
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

/// DNS record types the lab asks for.
pub const DNS_A: u16 = 1;
pub const DNS_AAAA: u16 = 28;

/// A standard recursive query for `name`, type A.
pub fn dns_query(id: u16, name: &str) -> Vec<u8> {
    dns_query_type(id, name, DNS_A)
}

/// A standard recursive query for `name` of record type `qtype`.
pub fn dns_query_type(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        q.push(label.len().min(63) as u8);
        q.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    q
}

/// The query name of a DNS message (no compression in questions).
pub fn dns_qname(msg: &[u8]) -> Option<String> {
    let mut labels = Vec::new();
    let mut i = 12;
    loop {
        let len = *msg.get(i)? as usize;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(msg.get(i + 1..i + 1 + len)?).into_owned());
        i += 1 + len;
    }
    Some(labels.join("."))
}

/// The record type a query asks for.
pub fn dns_qtype(msg: &[u8]) -> Option<u16> {
    let name = dns_qname(msg)?;
    let at = 12 + if name.is_empty() { 1 } else { name.len() + 2 };
    Some(u16::from_be_bytes(msg.get(at..at + 2)?.try_into().ok()?))
}

/// An answer to `query`: one A (IPv4 `addr`) or AAAA (IPv6 `addr`) record, or
/// NXDOMAIN when `addr` is None.
pub fn dns_answer(query: &[u8], addr: Option<IpAddr>) -> Option<Vec<u8>> {
    let name = dns_qname(query)?;
    // Encoded name: a length byte per label plus the root byte; then type + class.
    let encoded = if name.is_empty() { 1 } else { name.len() + 2 };
    let question = query.get(12..12 + encoded + 4)?;
    let mut r = Vec::new();
    r.extend_from_slice(&query[0..2]);
    let rcode = if addr.is_some() { 0 } else { 3 };
    r.extend_from_slice(&[
        0x81,
        0x80 | rcode,
        0,
        1,
        0,
        addr.is_some() as u8,
        0,
        0,
        0,
        0,
    ]);
    r.extend_from_slice(question);
    match addr {
        Some(IpAddr::V4(a)) => {
            r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
            r.extend_from_slice(&a.octets());
        }
        Some(IpAddr::V6(a)) => {
            r.extend_from_slice(&[0xc0, 0x0c, 0, 28, 0, 1, 0, 0, 0, 60, 0, 16]);
            r.extend_from_slice(&a.octets());
        }
        None => {}
    }
    Some(r)
}

/// The A and AAAA addresses in a DNS response's answer section.
pub fn dns_addresses(msg: &[u8]) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let (Some(qd), Some(an)) = (msg.get(4..6), msg.get(6..8)) else {
        return out;
    };
    let (qd, an) = (
        u16::from_be_bytes([qd[0], qd[1]]),
        u16::from_be_bytes([an[0], an[1]]),
    );
    let mut at = 12;
    for _ in 0..qd {
        let Some(end) = skip_name(msg, at) else {
            return out;
        };
        at = end + 4;
    }
    for _ in 0..an {
        let Some(end) = skip_name(msg, at) else {
            return out;
        };
        let Some(rr) = msg.get(end..end + 10) else {
            return out;
        };
        let kind = u16::from_be_bytes([rr[0], rr[1]]);
        let len = usize::from(u16::from_be_bytes([rr[8], rr[9]]));
        let Some(data) = msg.get(end + 10..end + 10 + len) else {
            return out;
        };
        match (kind, len) {
            (DNS_A, 4) => out.push(IpAddr::V4(ip_at(data, 0))),
            (DNS_AAAA, 16) => {
                let b: [u8; 16] = data.try_into().unwrap_or_default();
                out.push(IpAddr::V6(Ipv6Addr::from(b)));
            }
            _ => {}
        }
        at = end + 10 + len;
    }
    out
}

/// The offset after a (possibly compressed) name starting at `at`.
fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *msg.get(at)?;
        match len {
            0 => return Some(at + 1),
            l if l & 0xc0 == 0xc0 => return Some(at + 2),
            l => at += 1 + usize::from(l),
        }
    }
}

/// What the guest cares about in a received frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Arp {
        op: u16,
        sender_mac: Mac,
        sender_ip: Ipv4Addr,
        target_ip: Ipv4Addr,
    },
    Ipv4 {
        src_mac: Mac,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: u8,
        ttl: u8,
        payload: Vec<u8>,
    },
    /// `proto` is the upper-layer protocol after any extension headers,
    /// `payload` its message.
    Ipv6 {
        src_mac: Mac,
        dst_mac: Mac,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        proto: u8,
        hop_limit: u8,
        payload: Vec<u8>,
    },
    Other,
}

pub fn parse(f: &[u8]) -> Frame {
    if f.len() < 14 {
        return Frame::Other;
    }
    let src_mac: Mac = f[6..12].try_into().unwrap_or_default();
    let body = &f[14..];
    match u16::from_be_bytes([f[12], f[13]]) {
        ETH_P_ARP if body.len() >= 28 => Frame::Arp {
            op: u16::from_be_bytes([body[6], body[7]]),
            sender_mac: body[8..14].try_into().unwrap_or_default(),
            sender_ip: ip_at(body, 14),
            target_ip: ip_at(body, 24),
        },
        ETH_P_IP if body.len() >= 20 && body[0] >> 4 == 4 => {
            let ihl = usize::from(body[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([body[2], body[3]])).min(body.len());
            if ihl < 20 || total < ihl {
                return Frame::Other;
            }
            Frame::Ipv4 {
                src_mac,
                src: ip_at(body, 12),
                dst: ip_at(body, 16),
                proto: body[9],
                ttl: body[8],
                payload: body[ihl..total].to_vec(),
            }
        }
        packet6::ETH_P_IPV6 if body.len() >= 40 && body[0] >> 4 == 6 => {
            let total = (40 + usize::from(u16::from_be_bytes([body[4], body[5]]))).min(body.len());
            let Some((proto, at)) = packet6::upper_layer(&body[..total]) else {
                return Frame::Other;
            };
            let addr = |i: usize| {
                Ipv6Addr::from(<[u8; 16]>::try_from(&body[i..i + 16]).unwrap_or_default())
            };
            Frame::Ipv6 {
                src_mac,
                dst_mac: f[0..6].try_into().unwrap_or_default(),
                src: addr(8),
                dst: addr(24),
                proto,
                hop_limit: body[7],
                payload: body[at..total].to_vec(),
            }
        }
        _ => Frame::Other,
    }
}

fn ip_at(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC_A: Mac = [0x52, 0x54, 0, 1, 2, 3];
    const MAC_B: Mac = [0x52, 0x54, 0, 4, 5, 6];

    #[test]
    fn checksum_of_a_known_header() {
        // Example header from RFC 1071 discussions: checksum field zeroed.
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&h), 0xb861);
    }

    #[test]
    fn ipv4_icmp_roundtrip() {
        let src = Ipv4Addr::new(192, 0, 2, 100);
        let dst = Ipv4Addr::new(203, 0, 113, 8);
        let icmp = icmp_echo(8, 7, 3, &[0xaa; 56]);
        assert_eq!(checksum(&icmp), 0, "a valid ICMP checksum sums to zero");
        let f = ipv4((MAC_A, MAC_B), src, dst, 1, IpOpts::default(), &icmp);
        assert_eq!(checksum(&f[14..34]), 0, "valid IP header checksum");
        match parse(&f) {
            Frame::Ipv4 {
                src: s,
                dst: d,
                proto,
                ttl,
                payload,
                src_mac,
            } => {
                assert_eq!((s, d, proto, ttl, src_mac), (src, dst, 1, 64, MAC_A));
                assert_eq!(payload, icmp);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn arp_request_roundtrip() {
        let f = arp(
            1,
            MAC_A,
            Ipv4Addr::new(192, 0, 2, 100),
            BROADCAST,
            Ipv4Addr::new(192, 0, 2, 1),
        );
        assert_eq!(&f[0..6], &BROADCAST);
        assert_eq!(
            parse(&f),
            Frame::Arp {
                op: 1,
                sender_mac: MAC_A,
                sender_ip: Ipv4Addr::new(192, 0, 2, 100),
                target_ip: Ipv4Addr::new(192, 0, 2, 1),
            }
        );
    }

    #[test]
    fn udp_checksum_verifies() {
        let (s, d) = (
            Ipv4Addr::new(192, 0, 2, 100),
            Ipv4Addr::new(203, 0, 113, 53),
        );
        let u = udp((s, 40000), (d, 53), &dns_query(0x1234, "example.com"));
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&s.octets());
        pseudo.extend_from_slice(&d.octets());
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&(u.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(&u);
        assert_eq!(checksum(&pseudo), 0);
    }

    #[test]
    fn dns_query_and_answers() {
        let q = dns_query(0xbeef, "example.com");
        assert_eq!(dns_qname(&q).as_deref(), Some("example.com"));
        let a = dns_answer(&q, Some(Ipv4Addr::new(203, 0, 113, 80).into())).unwrap();
        assert_eq!(&a[0..2], &[0xbe, 0xef]);
        assert_eq!(a[3] & 0x0f, 0, "NOERROR");
        assert_eq!(&a[a.len() - 4..], &[203, 0, 113, 80]);
        assert_eq!(dns_addresses(&a), [IpAddr::from([203, 0, 113, 80])]);
        assert_eq!(dns_qtype(&q), Some(DNS_A));
        let nx = dns_answer(&dns_query(1, "nothing.invalid"), None).unwrap();
        assert_eq!(nx[3] & 0x0f, 3, "NXDOMAIN");
        assert!(dns_addresses(&nx).is_empty());
        let q6 = dns_query_type(7, "www.example.com", DNS_AAAA);
        assert_eq!(dns_qtype(&q6), Some(DNS_AAAA));
        let v6: Ipv6Addr = "2001:db8:ffff::8".parse().unwrap();
        let a6 = dns_answer(&q6, Some(v6.into())).unwrap();
        assert_eq!(dns_addresses(&a6), [IpAddr::V6(v6)]);
        assert_eq!(dns_qname(&[0; 5]), None, "truncated");
    }

    proptest::proptest! {
        #[test]
        fn decoders_never_panic(frame in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120)) {
            let _ = parse(&frame);
            let _ = dns_qname(&frame);
            let _ = dns_answer(&frame, Some(Ipv4Addr::new(203, 0, 113, 80).into()));
            let _ = dns_answer(&frame, None);
            let _ = dns_addresses(&frame);
            let _ = dns_qtype(&frame);
        }
    }

    #[test]
    fn parse_never_panics_on_short_or_odd_frames() {
        for len in 0..60 {
            let f = vec![0x08; len];
            let _ = parse(&f);
        }
        let mut f = vec![0u8; 40];
        f[12] = 0x08;
        f[14] = 0x4f; // ihl 60 > frame
        assert_eq!(parse(&f), Frame::Other);
    }
}
