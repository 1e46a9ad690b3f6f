//! Who answers neighbour discovery for an IPv6 address on one link: the
//! gateway (is it there?). The IPv6 counterpart of [`super::arp`].
//!
//! One Neighbor Solicitation (RFC 4861 §4.3) from the host's own address on the
//! link, to the target's solicited-node multicast group, then the Neighbor
//! Advertisements that come back. A raw ICMPv6 socket: the kernel fills in the
//! IPv6 header and the checksum, and hands over a copy of every ICMPv6 message
//! the host receives (the filter keeps advertisements only). `doctor --passive`
//! sends nothing.

use std::{
    collections::BTreeSet,
    net::Ipv6Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::arp::{bind, send_to};

const NEIGHBOR_SOLICIT: u8 = 135;
const NEIGHBOR_ADVERT: u8 = 136;
/// Option 1: source link-layer address; option 2: target link-layer address.
const OPT_SOURCE_LLADDR: u8 = 1;
const OPT_TARGET_LLADDR: u8 = 2;
/// RFC 4861 §7.1.1: a receiver drops NDP messages whose hop limit is not 255.
const NDP_HOPS: libc::c_int = 255;

/// The MACs (lowercase `aa:bb:..`) that advertised `target` on `ifindex` within
/// `wait`, asked from `source` (an address of this host on that link).
pub fn who_has(
    ifindex: u32,
    own_mac: [u8; 6],
    source: Ipv6Addr,
    target: Ipv6Addr,
    wait: Duration,
) -> Result<Vec<String>> {
    let sock = open(ifindex, source)?;
    let msg = solicitation(own_mac, target);
    let mut answers = BTreeSet::new();
    let deadline = Instant::now() + wait;
    let mut next_send = Instant::now();
    let mut sent = 0;
    while Instant::now() < deadline {
        // Two solicitations, half the wait apart, as for ARP: one lost frame
        // must not make a present router look absent.
        if sent < 2 && Instant::now() >= next_send {
            send(&sock, ifindex, &msg, solicited_node(target))?;
            sent += 1;
            next_send = Instant::now() + wait / 2;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if let Some(buf) = super::arp::recv(&sock, left.min(Duration::from_millis(100)))? {
            if let Some(mac) = advertised(&buf, target) {
                answers.insert(mac);
            }
        }
    }
    Ok(answers.into_iter().collect())
}

/// ff02::1:ffXX:XXXX, the group `target` listens on (its low 24 bits).
pub fn solicited_node(target: Ipv6Addr) -> Ipv6Addr {
    let o = target.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// The ICMPv6 message (the kernel computes the checksum on a raw ICMPv6
/// socket).
fn solicitation(own_mac: [u8; 6], target: Ipv6Addr) -> Vec<u8> {
    let mut m = Vec::with_capacity(32);
    m.extend_from_slice(&[NEIGHBOR_SOLICIT, 0, 0, 0, 0, 0, 0, 0]);
    m.extend_from_slice(&target.octets());
    m.extend_from_slice(&[OPT_SOURCE_LLADDR, 1]);
    m.extend_from_slice(&own_mac);
    m
}

/// The advertised MAC of an advertisement for `target` (its target
/// link-layer address option; "answered" even without one).
fn advertised(msg: &[u8], target: Ipv6Addr) -> Option<String> {
    if msg.len() < 24 || msg[0] != NEIGHBOR_ADVERT || msg[8..24] != target.octets() {
        return None;
    }
    let mut opts = &msg[24..];
    while opts.len() >= 8 {
        let len = usize::from(opts[1]) * 8;
        if len == 0 || len > opts.len() {
            break;
        }
        if opts[0] == OPT_TARGET_LLADDR && len >= 8 {
            return Some(super::arp::format_mac(&opts[2..8]));
        }
        opts = &opts[len..];
    }
    Some("(no link-layer address given)".into())
}

fn open(ifindex: u32, source: Ipv6Addr) -> Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET6,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMPV6,
        )
    };
    if fd < 0 {
        bail!(
            "opening an ICMPv6 socket: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let index = ifindex as libc::c_int;
    setsockopt(&sock, libc::IPV6_MULTICAST_HOPS, NDP_HOPS)?;
    setsockopt(&sock, libc::IPV6_UNICAST_HOPS, NDP_HOPS)?;
    setsockopt(&sock, libc::IPV6_MULTICAST_IF, index)?;
    // Our own solicitation must not come back as input.
    setsockopt(&sock, libc::IPV6_MULTICAST_LOOP, 0)?;
    set_filter(&sock)?;
    bind(&sock, &sockaddr(source, ifindex))
        .with_context(|| format!("binding an ICMPv6 socket to {source}"))?;
    Ok(sock)
}

fn setsockopt(sock: &OwnedFd, opt: libc::c_int, value: libc::c_int) -> Result<()> {
    // SAFETY: value is a valid c_int for the length passed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IPV6,
            opt,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    if rc < 0 {
        bail!(
            "setting ICMPv6 socket option {opt}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// ICMP6_FILTER: pass neighbour advertisements only (a bit set blocks a type).
fn set_filter(sock: &OwnedFd) -> Result<()> {
    const ICMP6_FILTER: libc::c_int = 1;
    let mut filter = [u32::MAX; 8];
    let t = usize::from(NEIGHBOR_ADVERT);
    filter[t >> 5] &= !(1u32 << (t & 31));
    // SAFETY: filter is 32 bytes, the size of struct icmp6_filter.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_ICMPV6,
            ICMP6_FILTER,
            filter.as_ptr().cast(),
            std::mem::size_of_val(&filter) as u32,
        )
    };
    if rc < 0 {
        bail!(
            "setting the ICMPv6 filter: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn sockaddr(ip: Ipv6Addr, ifindex: u32) -> libc::sockaddr_in6 {
    // SAFETY: sockaddr_in6 is plain data; all-zero is a valid value.
    let mut a: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    a.sin6_family = libc::AF_INET6 as u16;
    a.sin6_addr.s6_addr = ip.octets();
    // Link-local and multicast addresses mean nothing without their link.
    a.sin6_scope_id = ifindex;
    a
}

fn send(sock: &OwnedFd, ifindex: u32, msg: &[u8], to: Ipv6Addr) -> Result<()> {
    send_to(sock, msg, &sockaddr(to, ifindex)).context("sending a neighbour solicitation")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solicitation_and_advertisement_layout() {
        let target: Ipv6Addr = "fe80::1:2:3".parse().unwrap();
        assert_eq!(
            solicited_node(target),
            "ff02::1:ff02:3".parse::<Ipv6Addr>().unwrap()
        );
        let ns = solicitation([2, 0, 0, 0, 1, 1], target);
        assert_eq!(ns.len(), 32);
        assert_eq!(ns[0], 135);
        assert_eq!(&ns[8..24], &target.octets());
        assert_eq!(&ns[24..26], &[1, 1]);
        // The router's answer: type 136, flags R|S|O, target, its MAC.
        let mut na = vec![136, 0, 0, 0, 0xe0, 0, 0, 0];
        na.extend_from_slice(&target.octets());
        na.extend_from_slice(&[2, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(
            advertised(&na, target).as_deref(),
            Some("52:54:00:12:34:56")
        );
        assert_eq!(advertised(&ns, target), None, "a solicitation is no answer");
        let other: Ipv6Addr = "fe80::9".parse().unwrap();
        assert_eq!(advertised(&na, other), None);
    }
}
