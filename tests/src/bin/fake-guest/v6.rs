//! The guest's IPv6 side, as a Linux guest with a static address and gateway
//! (router advertisements ignored): it answers Neighbor Solicitations for its
//! address and its link-local one, resolves next hops by solicitation to their
//! solicited-node group keeping the FIRST advertisement (Linux creates the entry
//! from the answer to its own solicitation and ignores later unsolicited ones
//! that do not override), answers echo requests, and sends echo, UDP and TCP.

use std::{
    net::Ipv6Addr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use pathtrace_tests::{
    packet::Mac,
    packet6::{self, Ndp, ECHO_REPLY, ECHO_REQUEST, ICMPV6, UDP},
};

use super::{flag, Guest, Seen};

pub(super) struct V6 {
    pub(super) ip: Ipv6Addr,
    prefix: u8,
    pub(super) gw: Ipv6Addr,
    /// fe80:: derived from the MAC, as Linux derives it.
    link_local: Ipv6Addr,
    /// Neighbour cache; the first advertisement for an address is kept.
    neighbours: Vec<(Ipv6Addr, Mac)>,
}

impl V6 {
    /// From `--ip6 IP/LEN --gw6 GW`; None when the guest has no IPv6 address.
    pub(super) fn from_args(args: &[String], mac: Mac) -> Result<Option<Self>> {
        if !args.iter().any(|a| a == "--ip6") {
            return Ok(None);
        }
        let (ip, len) = flag(args, "--ip6")?
            .split_once('/')
            .context("--ip6 IP/LEN")?;
        Ok(Some(Self {
            ip: ip.parse().context("--ip6")?,
            prefix: len.parse().context("--ip6 prefix length")?,
            gw: flag(args, "--gw6")?.parse().context("--gw6")?,
            link_local: packet6::link_local(mac),
            neighbours: Vec::new(),
        }))
    }

    fn owns(&self, a: Ipv6Addr) -> bool {
        a == self.ip || a == self.link_local
    }

    fn neighbour(&self, a: Ipv6Addr) -> Option<Mac> {
        self.neighbours
            .iter()
            .find(|(i, _)| *i == a)
            .map(|(_, m)| *m)
    }

    /// The source address Linux picks towards `dst`: the link-local one for
    /// link-local destinations, else the global one.
    fn source_for(&self, dst: Ipv6Addr) -> Ipv6Addr {
        if dst.is_unicast_link_local() {
            self.link_local
        } else {
            self.ip
        }
    }

    pub(super) fn forget_neighbours(&mut self) {
        self.neighbours.clear();
    }
}

impl Guest {
    fn v6(&self) -> Result<&V6> {
        self.v6
            .as_ref()
            .context("this guest has no IPv6 address (--ip6)")
    }

    /// Solicit `target` (every 200 ms) until it advertises or `limit` passes.
    pub(super) fn resolve6(&mut self, target: Ipv6Addr, limit: Duration) -> Result<Mac> {
        let deadline = Instant::now() + limit;
        loop {
            let v6 = self.v6()?;
            if let Some(mac) = v6.neighbour(target) {
                return Ok(mac);
            }
            if Instant::now() >= deadline {
                anyhow::bail!("no Neighbor Advertisement for {target}");
            }
            let ns = packet6::neighbor_solicitation(self.mac, v6.source_for(target), target);
            self.send(&ns)?;
            self.pump_until(Instant::now() + Duration::from_millis(200), |_| false)?;
        }
    }

    /// The MAC to send to for `dst`: itself when on-link, else the gateway's.
    fn next_hop6(&mut self, dst: Ipv6Addr) -> Result<Mac> {
        let v6 = self.v6()?;
        let on_link = dst.is_unicast_link_local() || packet6::in_prefix(dst, v6.ip, v6.prefix);
        let hop = if on_link { dst } else { v6.gw };
        self.resolve6(hop, Duration::from_secs(3))
            .with_context(|| format!("{hop} did not answer neighbour solicitation"))
    }

    /// An upper-layer message built for its source address, sent to `dst`.
    pub(super) fn send_ip6(
        &mut self,
        dst: Ipv6Addr,
        proto: u8,
        hop_limit: u8,
        msg: impl FnOnce(Ipv6Addr) -> Vec<u8>,
    ) -> Result<()> {
        let src = self.v6()?.source_for(dst);
        let mac = self.next_hop6(dst)?;
        let frame = packet6::ipv6((self.mac, mac), src, dst, proto, hop_limit, &msg(src));
        self.send(&frame)
    }

    pub(super) fn send_echo6(
        &mut self,
        dst: Ipv6Addr,
        (id, seq): (u16, u16),
        hop_limit: u8,
        data: &[u8],
    ) -> Result<()> {
        self.send_ip6(dst, ICMPV6, hop_limit, |src| {
            packet6::echo(src, dst, ECHO_REQUEST, id, seq, data)
        })
    }

    pub(super) fn send_udp6(
        &mut self,
        dst: Ipv6Addr,
        (sport, dport): (u16, u16),
        data: &[u8],
    ) -> Result<()> {
        self.send_ip6(dst, UDP, 64, |src| {
            packet6::udp((src, sport), (dst, dport), data)
        })
    }

    /// A received IPv6 packet (upper-layer `proto`, its message `p`).
    pub(super) fn handle_v6(
        &mut self,
        src_mac: Mac,
        (src, dst): (Ipv6Addr, Ipv6Addr),
        (proto, hop_limit): (u8, u8),
        p: &[u8],
    ) -> Result<Seen> {
        if proto == ICMPV6 {
            if let Some(ndp) = packet6::parse_ndp(hop_limit, p) {
                return self.handle_ndp(src_mac, src, dst, ndp);
            }
        }
        if !self.v6()?.owns(dst) {
            return Ok(Seen::Nothing);
        }
        match proto {
            ICMPV6 if p.len() >= 8 => self.handle_icmp6(src_mac, (src, dst), p),
            _ => Ok(super::transport(proto, p)),
        }
    }

    /// Answer solicitations for our addresses; learn the first advertisement
    /// sent to us for an address we do not know yet.
    fn handle_ndp(&mut self, src_mac: Mac, src: Ipv6Addr, dst: Ipv6Addr, n: Ndp) -> Result<Seen> {
        let v6 = self.v6.as_mut().context("no IPv6")?;
        if n.kind == packet6::NEIGHBOR_ADVERTISEMENT {
            if v6.owns(dst) && v6.neighbour(n.target).is_none() {
                v6.neighbours.push((n.target, n.lladdr.unwrap_or(src_mac)));
            }
            return Ok(Seen::Nothing);
        }
        if !v6.owns(n.target) {
            return Ok(Seen::Nothing);
        }
        // A duplicate address detection probe (from ::) is answered to all nodes.
        let (to, to_mac, flags) = if src.is_unspecified() {
            let all = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
            (all, packet6::multicast_mac(all), packet6::NA_OVERRIDE)
        } else {
            let flags = packet6::NA_SOLICITED | packet6::NA_OVERRIDE;
            (src, n.lladdr.unwrap_or(src_mac), flags)
        };
        let na = packet6::neighbor_advertisement((self.mac, to_mac), n.target, to, flags);
        self.send(&na)?;
        Ok(Seen::Nothing)
    }

    fn handle_icmp6(
        &mut self,
        src_mac: Mac,
        (src, dst): (Ipv6Addr, Ipv6Addr),
        p: &[u8],
    ) -> Result<Seen> {
        let (id, seq) = (
            u16::from_be_bytes([p[4], p[5]]),
            u16::from_be_bytes([p[6], p[7]]),
        );
        match p[0] {
            ECHO_REPLY => Ok(Seen::EchoReply { id, seq }),
            ECHO_REQUEST => {
                let reply = packet6::echo(dst, src, ECHO_REPLY, id, seq, &p[8..]);
                self.send(&packet6::ipv6(
                    (self.mac, src_mac),
                    dst,
                    src,
                    ICMPV6,
                    64,
                    &reply,
                ))?;
                Ok(Seen::Nothing)
            }
            packet6::DEST_UNREACHABLE
            | packet6::PACKET_TOO_BIG
            | packet6::TIME_EXCEEDED
            | packet6::PARAM_PROBLEM => Ok(quoted(src, p).unwrap_or(Seen::Nothing)),
            _ => Ok(Seen::Nothing),
        }
    }
}

/// An ICMPv6 error from `from` and what it quotes of ours: the protocol and the
/// echo identifier or source port.
fn quoted(from: Ipv6Addr, p: &[u8]) -> Option<Seen> {
    let inner = p.get(8..)?;
    let (proto, at) = packet6::upper_layer(inner)?;
    let head = inner.get(at..at + 6)?;
    let id = match proto {
        ICMPV6 => u16::from_be_bytes([head[4], head[5]]),
        _ => u16::from_be_bytes([head[0], head[1]]),
    };
    Some(Seen::Icmp6Error {
        kind: p[0],
        code: p[1],
        mtu: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
        from,
        proto,
        id,
    })
}
