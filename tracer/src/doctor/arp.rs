//! Who answers ARP for an address on one link: the gateway (is it there?) and the
//! VM's IP (more than one MAC = an address conflict).
//!
//! The neighbour table only says what the kernel last learned, and nothing when
//! it had no reason to ask. Two ARP requests are the least intrusive way to know;
//! `doctor --passive` skips them.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

const ETH_P_ARP: u16 = 0x0806;

/// The MACs (lowercase `aa:bb:..`) that answered "who has `target`" on `ifindex`
/// within `wait`. `sender_ip` 0.0.0.0 makes it an ARP probe (RFC 5227), which no
/// neighbour table learns from.
pub fn who_has(
    ifindex: u32,
    own_mac: [u8; 6],
    sender_ip: Ipv4Addr,
    target: Ipv4Addr,
    wait: Duration,
) -> Result<Vec<String>> {
    let sock = open(ifindex)?;
    let frame = request(own_mac, sender_ip, target);
    let mut answers = BTreeSet::new();
    let deadline = Instant::now() + wait;
    let mut next_send = Instant::now();
    let mut sent = 0;
    while Instant::now() < deadline {
        // Two requests, half the wait apart: one lost frame must not make a
        // present host look absent.
        if sent < 2 && Instant::now() >= next_send {
            send(&sock, ifindex, &frame)?;
            sent += 1;
            next_send = Instant::now() + wait / 2;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if let Some(buf) = recv(&sock, left.min(Duration::from_millis(100)))? {
            if let Some(mac) = reply_from(&buf, target) {
                answers.insert(mac);
            }
        }
    }
    Ok(answers.into_iter().collect())
}

/// Parse `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    parts.try_into().ok()
}

pub fn format_mac(m: &[u8]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn request(own_mac: [u8; 6], sender_ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&own_mac);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]); // Ethernet/IPv4, request
    f.extend_from_slice(&own_mac);
    f.extend_from_slice(&sender_ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

/// The sender MAC of an ARP reply (or a request, as a conflicting host may
/// announce itself) from `target`.
fn reply_from(frame: &[u8], target: Ipv4Addr) -> Option<String> {
    if frame.len() < 42 || frame[12..14] != ETH_P_ARP.to_be_bytes() {
        return None;
    }
    let arp = &frame[14..];
    let op = u16::from_be_bytes([arp[6], arp[7]]);
    (op == 2 && arp[14..18] == target.octets()).then(|| format_mac(&arp[8..14]))
}

fn open(ifindex: u32) -> Result<OwnedFd> {
    let proto = ETH_P_ARP.to_be() as i32;
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        bail!(
            "opening a packet socket: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    bind(&sock, &link_addr(ifindex)).context("binding a packet socket")?;
    Ok(sock)
}

/// bind(2) to `addr`, a `sockaddr_*` of the socket's family.
pub(super) fn bind<A>(sock: &OwnedFd, addr: &A) -> std::io::Result<()> {
    // SAFETY: addr is a valid socket address of the size passed.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (addr as *const A).cast(),
            std::mem::size_of::<A>() as u32,
        )
    };
    match rc < 0 {
        true => Err(std::io::Error::last_os_error()),
        false => Ok(()),
    }
}

/// sendto(2) of `buf` to `addr`, a `sockaddr_*` of the socket's family.
pub(super) fn send_to<A>(sock: &OwnedFd, buf: &[u8], addr: &A) -> std::io::Result<()> {
    // SAFETY: buf and addr are valid for the lengths passed.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            0,
            (addr as *const A).cast(),
            std::mem::size_of::<A>() as u32,
        )
    };
    match n < 0 {
        true => Err(std::io::Error::last_os_error()),
        false => Ok(()),
    }
}

fn link_addr(ifindex: u32) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETH_P_ARP.to_be();
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    addr
}

fn send(sock: &OwnedFd, ifindex: u32, frame: &[u8]) -> Result<()> {
    send_to(sock, frame, &link_addr(ifindex)).context("sending ARP")
}

/// One datagram from `sock` within `wait` (None when nothing came).
pub(super) fn recv(sock: &OwnedFd, wait: Duration) -> Result<Option<Vec<u8>>> {
    let mut pfd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&mut pfd, 1, wait.as_millis() as i32) };
    if ready <= 0 {
        return Ok(None);
    }
    let mut buf = vec![0u8; 1600];
    // SAFETY: buf is valid for its length.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Ok(None);
    }
    buf.truncate(n as usize);
    Ok(Some(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_reply_layout() {
        let me = [2, 0, 0, 0, 1, 1];
        let target = Ipv4Addr::new(192, 0, 2, 100);
        let req = request(me, Ipv4Addr::new(192, 0, 2, 1), target);
        assert_eq!(req.len(), 42);
        assert_eq!(&req[12..14], &[8, 6]);
        assert_eq!(&req[38..42], &target.octets());
        // The guest's answer: op 2, sender = target.
        let mut reply = req.clone();
        reply[21] = 2;
        reply[22..28].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        reply[28..32].copy_from_slice(&target.octets());
        assert_eq!(
            reply_from(&reply, target).as_deref(),
            Some("52:54:00:12:34:56")
        );
        assert_eq!(reply_from(&req, target), None, "a request is no answer");
        assert_eq!(
            parse_mac("52:54:00:12:34:5F"),
            Some([0x52, 0x54, 0, 0x12, 0x34, 0x5f])
        );
        assert_eq!(parse_mac("52:54"), None);
    }
}
