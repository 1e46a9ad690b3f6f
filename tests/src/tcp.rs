//! Just enough TCP for the fake guest to open a connection, send a segment and
//! close it from its own userspace "stack" on the TAP device, plus the lab's
//! services in the internet namespace (real sockets) that answer it.

use std::{
    io::Read,
    net::{IpAddr, SocketAddr, TcpListener, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::{packet::checksum, packet6::pseudo_checksum};

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// The fields of a TCP segment the fake guest reads or chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
}

/// A TCP segment (20-byte header, no options) with its checksum over the
/// pseudo-header of the addresses' family.
pub fn segment(src: IpAddr, dst: IpAddr, s: &Segment, data: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(20 + data.len());
    t.extend_from_slice(&s.sport.to_be_bytes());
    t.extend_from_slice(&s.dport.to_be_bytes());
    t.extend_from_slice(&s.seq.to_be_bytes());
    t.extend_from_slice(&s.ack.to_be_bytes());
    t.extend_from_slice(&[5 << 4, s.flags]);
    t.extend_from_slice(&64240u16.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]);
    t.extend_from_slice(data);
    let c = match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let mut pseudo = Vec::with_capacity(12 + t.len());
            pseudo.extend_from_slice(&src.octets());
            pseudo.extend_from_slice(&dst.octets());
            pseudo.extend_from_slice(&[0, 6]);
            pseudo.extend_from_slice(&(t.len() as u16).to_be_bytes());
            pseudo.extend_from_slice(&t);
            checksum(&pseudo)
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => pseudo_checksum(src, dst, 6, &t),
        _ => panic!("a TCP segment from {src} to {dst}: the families differ"),
    };
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

/// The header of a TCP segment (the IP payload), if it has one.
pub fn parse(p: &[u8]) -> Option<Segment> {
    if p.len() < 20 {
        return None;
    }
    let u32_at = |i: usize| u32::from_be_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
    Some(Segment {
        sport: u16::from_be_bytes([p[0], p[1]]),
        dport: u16::from_be_bytes([p[2], p[3]]),
        seq: u32_at(4),
        ack: u32_at(8),
        flags: p[13],
    })
}

/// `fake-guest services --tcp IP:PORT --udp IP:PORT`: a TCP service that accepts
/// connections and reads what comes (a thread each, closed after 10 s), and a
/// UDP service that echoes every datagram; it stops after an hour at most.
pub fn serve(tcp: SocketAddr, udp: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(tcp).with_context(|| format!("binding tcp {tcp}"))?;
    let sock = UdpSocket::bind(udp).with_context(|| format!("binding udp {udp}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    println!(
        "{}",
        serde_json::json!({"ready": true, "tcp": tcp.to_string(), "udp": udp.to_string()})
    );
    std::thread::spawn(move || {
        for conn in listener.incoming().take(10_000) {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                let mut buf = [0u8; 4096];
                while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    let end = Instant::now() + Duration::from_secs(3600);
    let mut buf = [0u8; 2048];
    while Instant::now() < end {
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn a_segment_checksums_and_reads_back() {
        let (s, d) = (Ipv4Addr::new(192, 0, 2, 100), Ipv4Addr::new(203, 0, 113, 8));
        let seg = Segment {
            sport: 40000,
            dport: 8080,
            seq: 7,
            ack: 0,
            flags: SYN,
        };
        let t = segment(s.into(), d.into(), &seg, b"x");
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&s.octets());
        pseudo.extend_from_slice(&d.octets());
        pseudo.extend_from_slice(&[0, 6]);
        pseudo.extend_from_slice(&(t.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(&t);
        assert_eq!(checksum(&pseudo), 0);
        assert_eq!(parse(&t), Some(seg));
        assert_eq!(parse(&t[..19]), None);
        // Over IPv6 the checksum covers IPv6's pseudo-header.
        let (s6, d6): (Ipv6Addr, Ipv6Addr) = (
            "2001:db8:1::100".parse().unwrap(),
            "2001:db8:ffff::8".parse().unwrap(),
        );
        let t6 = segment(s6.into(), d6.into(), &seg, b"x");
        assert_eq!(pseudo_checksum(s6, d6, 6, &t6), 0);
    }
}
