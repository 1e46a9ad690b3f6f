//! A fake KVM guest on a real TAP device, and a tiny DNS responder for the lab.
//!
//! `fake-guest guest --tap TAP --ip IP/LEN --gw GW --mac MAC [--ip6 IP/LEN --gw6 GW]`
//! holds the TAP open (so its bridge port has carrier, as with a running VM),
//! answers ARP, neighbour solicitation (v6.rs) and ping, and on stdin commands
//! sends ICMP echo requests or DNS queries, answering each command with one JSON
//! line on stdout:
//!   ping DST COUNT INTERVAL_MS TIMEOUT_MS SIZE TTL DF   (DST IPv4 or IPv6; TTL is
//!                          the hop limit and DF is ignored for IPv6; ICMPv6 errors
//!                          quoting the echo requests are listed in `errors`)
//!   dns SERVER NAME COUNT TIMEOUT_MS [A|AAAA]   (SERVER IPv4 or IPv6)
//!   neigh-flush            (forget every ARP and NDP entry, as `ip neigh flush all`)
//!   tcp DST PORT TIMEOUT_MS DATA     (connect; then DATA bytes in one DF segment)
//!   udp DST PORT TIMEOUT_MS          (one datagram, wait for the response)
//!   syn DST PORT COUNT               (COUNT connection attempts back to back)
//!   dhcp TIMEOUT_MS        (DISCOVER, and REQUEST for what is offered; one xid)
//!   arp TARGET TIMEOUT_MS  (one who-has; the first answer is kept, as Linux does)
//!   quit
//!
//! `fake-guest dns-server --listen IP:PORT` (IPv4 or IPv6) answers A queries with
//! 203.0.113.80 and AAAA queries with 2001:db8:ffff::8, names ending in `.invalid` with NXDOMAIN, and names starting with `slow.` after
//! a second; it stops after an hour at most.
//!
//! `fake-guest services --tcp IP:PORT --udp IP:PORT` (in the internet namespace)
//! accepts TCP connections and echoes UDP datagrams (`pathtrace_tests::tcp`).
//!
//! `fake-guest flood --proto udp|icmp|tcp --dst IP [--port P] --seconds S --max N`
//! (run inside a guest's namespace, for the benchmark) sends small packets (UDP to
//! port P, 9 unless given; TCP: connection attempts, a SYN from a new port each,
//! to port P) as fast as the kernel takes them, in batches, for S seconds or N
//! packets, whichever comes first, and prints `{"sent":N,"secs":F}`.

mod v6;

use std::{
    io::BufRead,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use pathtrace_tests::{
    dhcp,
    packet::{self, Frame, IpOpts, Mac, BROADCAST},
    tcp::{self, Segment},
};
use serde_json::json;
use v6::V6;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("guest") => Guest::start(&args[1..]).and_then(|g| g.serve()),
        Some("dns-server") => dns_server(&args[1..]),
        Some("flood") => flood(&args[1..]),
        Some("services") => (|| {
            let a = &args[1..];
            tcp::serve(flag(a, "--tcp")?.parse()?, flag(a, "--udp")?.parse()?)
        })(),
        _ => Err(anyhow::anyhow!(
            "usage: fake-guest guest|dns-server|flood ..."
        )),
    };
    if let Err(e) = result {
        println!("{}", json!({"ready": false, "error": format!("{e:#}")}));
        std::process::exit(1);
    }
}

fn flag<'a>(args: &'a [String], name: &str) -> Result<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
        .with_context(|| format!("missing {name}"))
}

fn parse_mac(s: &str) -> Result<Mac> {
    let bytes: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()?;
    bytes.try_into().map_err(|_| anyhow::anyhow!("bad MAC {s}"))
}

/// Random enough for ids and ports: the low bits of the clock mixed with the pid.
fn random_u16() -> u16 {
    let n = Instant::now().elapsed().as_nanos() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
        ^ (u64::from(std::process::id()) << 16);
    (n ^ (n >> 16) ^ (n >> 32)) as u16 | 1
}

struct Guest {
    tap: OwnedFd,
    mac: Mac,
    ip: Ipv4Addr,
    prefix: u8,
    gw: Ipv4Addr,
    /// ARP cache: on-link neighbours (the gateway among them).
    neighbours: Vec<(Ipv4Addr, Mac)>,
    ip_id: u16,
    /// The IPv6 side, when the guest has an IPv6 address too.
    v6: Option<V6>,
}

/// What a received frame meant to the command being run.
enum Seen {
    EchoReply {
        id: u16,
        seq: u16,
    },
    Dns {
        id: u16,
        rcode: u8,
        addrs: Vec<IpAddr>,
    },
    Tcp(Segment),
    Udp {
        sport: u16,
        dport: u16,
    },
    /// An ICMP error (type, code, the MTU a "fragmentation needed" names)
    /// quoting one of our TCP/UDP packets (its protocol and source port).
    Dhcp(dhcp::Reply),
    ArpReply {
        ip: Ipv4Addr,
        mac: Mac,
    },
    IcmpError {
        kind: u8,
        code: u8,
        mtu: u16,
        proto: u8,
        sport: u16,
    },
    /// An ICMPv6 error from `from` quoting one of our packets: its protocol,
    /// and its echo identifier or source port.
    Icmp6Error {
        kind: u8,
        code: u8,
        mtu: u32,
        from: Ipv6Addr,
        proto: u8,
        id: u16,
    },
    Nothing,
}

impl Guest {
    fn start(args: &[String]) -> Result<Self> {
        let tap = open_tap(flag(args, "--tap")?)?;
        let (ip, len) = flag(args, "--ip")?.split_once('/').context("--ip IP/LEN")?;
        let mac = parse_mac(flag(args, "--mac")?)?;
        let mut g = Guest {
            tap,
            mac,
            ip: ip.parse()?,
            prefix: len.parse()?,
            gw: flag(args, "--gw")?.parse()?,
            neighbours: Vec::new(),
            ip_id: 1,
            v6: V6::from_args(args, mac)?,
        };
        // Announce ourselves, then resolve the gateway: the first frames after the
        // tap gets carrier may be dropped while the bridge port is not forwarding.
        g.send(&packet::arp(1, g.mac, g.ip, BROADCAST, g.ip))?;
        g.resolve(g.gw, Duration::from_secs(5))
            .with_context(|| format!("gateway {} did not answer ARP within 5 s", g.gw))?;
        let ip6 = g.v6.as_ref().map(|v| (v.ip, v.gw));
        if let Some((_, gw6)) = ip6 {
            g.resolve6(gw6, Duration::from_secs(5)).with_context(|| {
                format!("gateway {gw6} did not answer neighbour solicitation within 5 s")
            })?;
        }
        let mac = g
            .mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        println!(
            "{}",
            json!({"ready": true, "mac": mac, "ip": g.ip.to_string(),
                   "ip6": ip6.map(|(a, _)| a.to_string())})
        );
        Ok(g)
    }

    fn neighbour(&self, ip: Ipv4Addr) -> Option<Mac> {
        self.neighbours
            .iter()
            .find(|(i, _)| *i == ip)
            .map(|(_, m)| *m)
    }

    /// ARP for `ip` (retrying every 200 ms) until it answers or `limit` passes. Only
    /// an answer to our own request counts, so the peer has learned us too.
    fn resolve(&mut self, ip: Ipv4Addr, limit: Duration) -> Result<Mac> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(mac) = self.neighbour(ip) {
                return Ok(mac);
            }
            self.send(&packet::arp(1, self.mac, self.ip, BROADCAST, ip))?;
            self.pump_until(Instant::now() + Duration::from_millis(200), |_| false)?;
        }
        self.neighbour(ip).context("no ARP answer")
    }

    /// The MAC to send to for `dst`: itself when on our subnet, else the gateway.
    fn next_hop_mac(&mut self, dst: Ipv4Addr) -> Result<Mac> {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0);
        let on_link = u32::from(dst) & mask == u32::from(self.ip) & mask;
        let hop = if on_link { dst } else { self.gw };
        self.resolve(hop, Duration::from_secs(3))
            .with_context(|| format!("{hop} did not answer ARP"))
    }

    fn serve(mut self) -> Result<()> {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        loop {
            match rx.try_recv() {
                Ok(line) => {
                    let words: Vec<&str> = line.split_whitespace().collect();
                    let answer = match words.first().copied() {
                        Some("quit") => return Ok(()),
                        Some("ping") => self.ping(&words[1..]),
                        Some("dns") => self.dns(&words[1..]),
                        Some("tcp") => self.tcp(&words[1..]),
                        Some("udp") => self.udp(&words[1..]),
                        Some("syn") => self.syn_burst(&words[1..]),
                        Some("dhcp") => self.dhcp(&words[1..]),
                        Some("arp") => self.arp(&words[1..]),
                        Some("neigh-flush") => Ok(self.forget_neighbours()),
                        _ => Err(anyhow::anyhow!("unknown command {line:?}")),
                    };
                    let out = answer.unwrap_or_else(|e| json!({"error": format!("{e:#}")}));
                    println!("{out}");
                }
                Err(mpsc::TryRecvError::Disconnected) => return Ok(()),
                Err(mpsc::TryRecvError::Empty) => {
                    // Keep answering ARP and ping between commands.
                    self.pump_until(Instant::now() + Duration::from_millis(50), |_| false)?;
                }
            }
        }
    }

    fn ping(&mut self, w: &[&str]) -> Result<serde_json::Value> {
        let num = |i: usize| -> Result<u64> {
            w.get(i)
                .context("ping DST COUNT INTERVAL_MS TIMEOUT_MS SIZE TTL DF")?
                .parse()
                .context("number")
        };
        let dst: IpAddr = w.first().context("ping DST ...")?.parse()?;
        let (count, interval, timeout) = (num(1)? as u16, num(2)?, num(3)?);
        let (size, ttl, df) = (num(4)? as usize, num(5)? as u8, num(6)? != 0);
        let id = random_u16();
        let (mut replied, mut errors) = (Vec::new(), Vec::new());
        for seq in 1..=count {
            let data = vec![0x61; size];
            match dst {
                IpAddr::V4(dst) => {
                    let payload = packet::icmp_echo(8, id, seq, &data);
                    let opts = IpOpts {
                        ttl,
                        df,
                        id: self.ip_id,
                    };
                    self.send_ip(dst, 1, opts, &payload)?;
                }
                IpAddr::V6(dst) => self.send_echo6(dst, (id, seq), ttl, &data)?,
            }
            let until = Instant::now()
                + Duration::from_millis(if seq == count { timeout } else { interval });
            self.pump_until(until, |s| {
                match s {
                    Seen::EchoReply { id: rid, seq: rseq }
                        if *rid == id && !replied.contains(rseq) =>
                    {
                        replied.push(*rseq)
                    }
                    Seen::Icmp6Error {
                        kind,
                        code,
                        mtu,
                        from,
                        proto: 58,
                        id: q,
                    } if *q == id => errors.push(json!({
                        "type": kind, "code": code, "mtu": mtu, "from": from.to_string()
                    })),
                    _ => {}
                }
                seq == count && replied.len() == count as usize
            })?;
        }
        Ok(json!({"sent": count, "received": replied.len(), "id": id,
                  "seqs_replied": replied, "errors": errors}))
    }

    fn dns(&mut self, w: &[&str]) -> Result<serde_json::Value> {
        let server: IpAddr = w
            .first()
            .context("dns SERVER NAME COUNT TIMEOUT_MS [A|AAAA]")?
            .parse()?;
        let name = *w.get(1).context("dns SERVER NAME ...")?;
        let count: u16 = w.get(2).unwrap_or(&"1").parse()?;
        let timeout: u64 = w.get(3).unwrap_or(&"1000").parse()?;
        let qtype = match w.get(4).copied().unwrap_or("A") {
            "A" => packet::DNS_A,
            "AAAA" => packet::DNS_AAAA,
            other => bail!("unknown query type {other} (A or AAAA)"),
        };
        let (mut ids, mut answered, mut rcode) = (Vec::new(), 0, None);
        let mut addrs: Vec<String> = Vec::new();
        for _ in 0..count {
            let id = random_u16();
            ids.push(id);
            let sport = 20000 + random_u16() % 30000;
            let q = packet::dns_query_type(id, name, qtype);
            match server {
                IpAddr::V4(server) => {
                    let udp = packet::udp((self.ip, sport), (server, 53), &q);
                    let opts = IpOpts {
                        id: self.ip_id,
                        ..IpOpts::default()
                    };
                    self.send_ip(server, 17, opts, &udp)?;
                }
                IpAddr::V6(server) => self.send_udp6(server, (sport, 53), &q)?,
            }
            let mut got = false;
            self.pump_until(Instant::now() + Duration::from_millis(timeout), |s| {
                if let Seen::Dns {
                    id: rid,
                    rcode: rc,
                    addrs: a,
                } = s
                {
                    if *rid == id {
                        got = true;
                        rcode = Some(*rc);
                        addrs = a.iter().map(IpAddr::to_string).collect();
                    }
                }
                got
            })?;
            answered += usize::from(got);
        }
        Ok(
            json!({"sent": count, "answered": answered, "ids": ids, "rcode": rcode,
                  "addrs": addrs}),
        )
    }

    /// Open a TCP connection to DST:PORT (SYN; an answer within TIMEOUT_MS);
    /// when it is accepted and DATA > 0, complete the handshake and send DATA
    /// bytes in one segment with DF, waiting for its ACK; then reset it.
    fn tcp(&mut self, w: &[&str]) -> Result<serde_json::Value> {
        let usage = "tcp DST PORT TIMEOUT_MS DATA";
        let dst: IpAddr = w.first().context(usage)?.parse()?;
        let num = |i: usize| -> Result<u64> { Ok(w.get(i).context(usage)?.parse()?) };
        let (port, timeout, data) = (num(1)? as u16, num(2)?, num(3)? as usize);
        let sport = 20000 + random_u16() % 30000;
        let isn = u32::from(random_u16()) << 16;
        let mut seg = Segment {
            sport,
            dport: port,
            seq: isn,
            ack: 0,
            flags: tcp::SYN,
        };
        self.send_tcp(dst, &seg, &[])?;
        let answer = self.await_tcp(sport, port, timeout, |_| true)?;
        let (result, icmp) = describe_tcp(&answer);
        let mut out = json!({"sport": sport, "result": result, "icmp": icmp});
        let Some(Seen::Tcp(synack)) = answer else {
            return Ok(out);
        };
        if synack.flags & (tcp::SYN | tcp::ACK) != tcp::SYN | tcp::ACK {
            return Ok(out);
        }
        seg = Segment {
            seq: isn + 1,
            ack: synack.seq.wrapping_add(1),
            flags: tcp::ACK,
            ..seg
        };
        self.send_tcp(dst, &seg, &[])?;
        if data > 0 {
            seg.flags = tcp::PSH | tcp::ACK;
            self.send_tcp(dst, &seg, &vec![0x61; data])?;
            let end = seg.seq.wrapping_add(data as u32);
            let acked = self.await_tcp(
                sport,
                port,
                timeout,
                |s| !matches!(s, Seen::Tcp(a) if a.ack != end && a.flags & tcp::RST == 0),
            )?;
            let (result, icmp) = describe_tcp(&acked);
            out["data"] = json!(result);
            out["data_icmp"] = json!(icmp);
            seg.seq = end;
        }
        seg.flags = tcp::RST | tcp::ACK;
        self.send_tcp(dst, &seg, &[])?;
        Ok(out)
    }

    /// COUNT connection attempts from consecutive ports as fast as they can be
    /// written (a busy guest opening connections), then a reset for each one
    /// accepted within half a second.
    fn syn_burst(&mut self, w: &[&str]) -> Result<serde_json::Value> {
        let usage = "syn DST PORT COUNT";
        let dst: IpAddr = w.first().context(usage)?.parse()?;
        let port: u16 = w.get(1).context(usage)?.parse()?;
        let count: u16 = w.get(2).context(usage)?.parse()?;
        if count > 10_000 {
            bail!("at most 10000 attempts");
        }
        let base = 20000 + random_u16() % 20000;
        for i in 0..count {
            let seg = Segment {
                sport: base + i,
                dport: port,
                seq: 1,
                ack: 0,
                flags: tcp::SYN,
            };
            self.send_tcp(dst, &seg, &[])?;
        }
        let mut accepted = Vec::new();
        self.pump_until(Instant::now() + Duration::from_millis(500), |s| {
            if let Seen::Tcp(t) = s {
                let ours = t.sport == port && (base..base + count).contains(&t.dport);
                if ours && t.flags & tcp::SYN != 0 {
                    accepted.push((t.dport, t.seq));
                }
            }
            accepted.len() == usize::from(count)
        })?;
        for &(sport, seq) in &accepted {
            let seg = Segment {
                sport,
                dport: port,
                seq: 2,
                ack: seq.wrapping_add(1),
                flags: tcp::RST | tcp::ACK,
            };
            self.send_tcp(dst, &seg, &[])?;
        }
        Ok(json!({"sent": count, "accepted": accepted.len()}))
    }

    fn send_tcp(&mut self, dst: IpAddr, seg: &Segment, data: &[u8]) -> Result<()> {
        let dst = match dst {
            IpAddr::V4(dst) => dst,
            IpAddr::V6(dst) => {
                return self.send_ip6(dst, 6, 64, |src| {
                    tcp::segment(src.into(), dst.into(), seg, data)
                })
            }
        };
        let t = tcp::segment(self.ip.into(), dst.into(), seg, data);
        let opts = IpOpts {
            id: self.ip_id,
            ..IpOpts::default()
        };
        self.send_ip(dst, 6, opts, &t)
    }

    /// The first segment from PORT to our SPORT that `wanted` accepts, or an
    /// ICMP error quoting our segment, within TIMEOUT_MS.
    fn await_tcp(
        &mut self,
        sport: u16,
        port: u16,
        timeout: u64,
        wanted: impl Fn(&Seen) -> bool,
    ) -> Result<Option<Seen>> {
        let mut got = None;
        self.pump_until(Instant::now() + Duration::from_millis(timeout), |s| {
            let ours = match s {
                Seen::Tcp(t) => t.sport == port && t.dport == sport && wanted(s),
                Seen::IcmpError {
                    proto: 6, sport: q, ..
                }
                | Seen::Icmp6Error {
                    proto: 6, id: q, ..
                } => *q == sport,
                _ => false,
            };
            if ours {
                got = Some(clone_seen(s));
            }
            ours
        })?;
        Ok(got)
    }

    /// One datagram from a random port to DST:PORT; was it answered?
    fn udp(&mut self, w: &[&str]) -> Result<serde_json::Value> {
        let usage = "udp DST PORT TIMEOUT_MS";
        let dst: IpAddr = w.first().context(usage)?.parse()?;
        let port: u16 = w.get(1).context(usage)?.parse()?;
        let timeout: u64 = w.get(2).context(usage)?.parse()?;
        let sport = 20000 + random_u16() % 30000;
        match dst {
            IpAddr::V4(dst) => {
                let u = packet::udp((self.ip, sport), (dst, port), b"pathtrace");
                let opts = IpOpts {
                    id: self.ip_id,
                    ..IpOpts::default()
                };
                self.send_ip(dst, 17, opts, &u)?;
            }
            IpAddr::V6(dst) => self.send_udp6(dst, (sport, port), b"pathtrace")?,
        }
        let mut answered = false;
        self.pump_until(Instant::now() + Duration::from_millis(timeout), |s| {
            answered = matches!(s, Seen::Udp { sport: a, dport: b } if *a == port && *b == sport);
            answered
        })?;
        Ok(json!({"sport": sport, "answered": answered}))
    }

    /// One DHCP transaction as a client without an address does it: DISCOVER
    /// broadcast, then REQUEST (broadcast, same xid) for the first offer.
    fn dhcp(&mut self, w: &[&str]) -> Result<serde_json::Value> {
        let timeout: u64 = w.first().context("dhcp TIMEOUT_MS")?.parse()?;
        let xid = (u32::from(random_u16()) << 16) | u32::from(random_u16());
        let offer = self.dhcp_exchange(dhcp::DISCOVER, xid, None, timeout)?;
        let mut answer = None;
        if let Some(o) = offer {
            let req = (Some(o.yiaddr), o.server);
            answer = self.dhcp_exchange(dhcp::REQUEST, xid, Some(req), timeout)?;
        }
        Ok(json!({
            "xid": xid,
            "offered": offer.map(|o| o.yiaddr.to_string()),
            "server": offer.and_then(|o| o.server).map(|s| s.to_string()),
            "ack": answer.is_some_and(|a| a.kind == dhcp::ACK),
            "nak": answer.is_some_and(|a| a.kind == dhcp::NAK),
        }))
    }

    /// Send one client message and wait for the server's answer to it.
    fn dhcp_exchange(
        &mut self,
        kind: u8,
        xid: u32,
        request: Option<(Option<Ipv4Addr>, Option<Ipv4Addr>)>,
        timeout: u64,
    ) -> Result<Option<dhcp::Reply>> {
        let (requested, server) = request.unwrap_or((None, None));
        let msg = dhcp::client_message(kind, xid, self.mac, requested, server);
        let any = Ipv4Addr::UNSPECIFIED;
        let udp = packet::udp((any, 68), (Ipv4Addr::BROADCAST, 67), &msg);
        let opts = IpOpts {
            id: self.ip_id,
            ..IpOpts::default()
        };
        self.ip_id = self.ip_id.wrapping_add(1);
        let frame = packet::ipv4(
            (self.mac, BROADCAST),
            any,
            Ipv4Addr::BROADCAST,
            17,
            opts,
            &udp,
        );
        self.send(&frame)?;
        let mut got = None;
        self.pump_until(Instant::now() + Duration::from_millis(timeout), |s| {
            if let Seen::Dhcp(r) = s {
                if r.xid == xid && got.is_none() {
                    got = Some(*r);
                }
            }
            got.is_some()
        })?;
        Ok(got)
    }

    /// Forget every neighbour, ARP and NDP (as `ip neigh flush all` in a guest,
    /// or entries that went stale and are probed again): the next packet to
    /// each next hop asks for it anew.
    fn forget_neighbours(&mut self) -> serde_json::Value {
        let n = self.neighbours.len();
        self.neighbours.clear();
        if let Some(v6) = self.v6.as_mut() {
            v6.forget_neighbours();
        }
        json!({"flushed_arp": n})
    }

    /// One who-has for TARGET; the first answer is the one kept.
    fn arp(&mut self, w: &[&str]) -> Result<serde_json::Value> {
        let target: Ipv4Addr = w.first().context("arp TARGET TIMEOUT_MS")?.parse()?;
        let timeout: u64 = w.get(1).unwrap_or(&"1000").parse()?;
        self.send(&packet::arp(1, self.mac, self.ip, BROADCAST, target))?;
        let mut first = None;
        self.pump_until(Instant::now() + Duration::from_millis(timeout), |s| {
            if let Seen::ArpReply { ip, mac } = s {
                if *ip == target && first.is_none() {
                    first = Some(*mac);
                }
            }
            first.is_some()
        })?;
        let mac = first.map(|m| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        });
        Ok(json!({"target": target.to_string(), "answered": first.is_some(), "mac": mac}))
    }

    fn send_ip(&mut self, dst: Ipv4Addr, proto: u8, opts: IpOpts, payload: &[u8]) -> Result<()> {
        self.ip_id = self.ip_id.wrapping_add(1);
        let mac = self.next_hop_mac(dst)?;
        self.send(&packet::ipv4(
            (self.mac, mac),
            self.ip,
            dst,
            proto,
            opts,
            payload,
        ))
    }

    fn send(&self, frame: &[u8]) -> Result<()> {
        let n = unsafe { libc::write(self.tap.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            // No carrier yet or queue full: the kernel's business, like a real NIC.
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EIO) && e.raw_os_error() != Some(libc::EAGAIN) {
                return Err(e).context("writing to the tap");
            }
        }
        Ok(())
    }

    /// Read and handle frames until `until`, or until `done` says so.
    fn pump_until(&mut self, until: Instant, mut done: impl FnMut(&Seen) -> bool) -> Result<()> {
        let mut buf = vec![0u8; 65536];
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            let mut pfd = libc::pollfd {
                fd: self.tap.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let rc = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
            if rc <= 0 {
                continue;
            }
            let n = unsafe { libc::read(self.tap.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                continue;
            }
            let seen = self.handle(&buf[..n as usize])?;
            if done(&seen) {
                return Ok(());
            }
        }
    }

    fn handle(&mut self, frame: &[u8]) -> Result<Seen> {
        match packet::parse(frame) {
            Frame::Arp {
                op,
                sender_mac,
                sender_ip,
                target_ip,
            } => {
                if op == 2 && target_ip == self.ip && self.neighbour(sender_ip).is_none() {
                    self.neighbours.push((sender_ip, sender_mac));
                }
                if op == 2 && target_ip == self.ip {
                    return Ok(Seen::ArpReply {
                        ip: sender_ip,
                        mac: sender_mac,
                    });
                }
                if op == 1 && target_ip == self.ip {
                    self.send(&packet::arp(2, self.mac, self.ip, sender_mac, sender_ip))?;
                }
                Ok(Seen::Nothing)
            }
            // A DHCP server answers to the address it offers (or broadcast),
            // not to ours.
            Frame::Ipv4 {
                proto: 17, payload, ..
            } if payload.len() > 8 && payload[0..4] == [0, 67, 0, 68] => {
                Ok(dhcp::parse(&payload[8..]).map_or(Seen::Nothing, Seen::Dhcp))
            }
            Frame::Ipv4 {
                src_mac,
                src,
                dst,
                proto,
                payload,
                ..
            } if dst == self.ip => self.handle_ip(src_mac, src, proto, &payload),
            Frame::Ipv6 {
                src_mac,
                src,
                dst,
                proto,
                hop_limit,
                payload,
                ..
            } if self.v6.is_some() => {
                self.handle_v6(src_mac, (src, dst), (proto, hop_limit), &payload)
            }
            _ => Ok(Seen::Nothing),
        }
    }

    fn handle_ip(&mut self, src_mac: Mac, src: Ipv4Addr, proto: u8, p: &[u8]) -> Result<Seen> {
        match proto {
            1 if p.len() >= 8 => {
                let (id, seq) = (
                    u16::from_be_bytes([p[4], p[5]]),
                    u16::from_be_bytes([p[6], p[7]]),
                );
                match p[0] {
                    0 => return Ok(Seen::EchoReply { id, seq }),
                    8 => {
                        let reply = packet::icmp_echo(0, id, seq, &p[8..]);
                        let opts = IpOpts {
                            id: self.ip_id,
                            ..IpOpts::default()
                        };
                        let frame =
                            packet::ipv4((self.mac, src_mac), self.ip, src, 1, opts, &reply);
                        self.send(&frame)?;
                    }
                    3 | 11 if p.len() >= 8 + 20 + 4 => {
                        let inner = &p[8..];
                        let ihl = usize::from(inner[0] & 0x0f) * 4;
                        if inner.len() >= ihl + 4 {
                            return Ok(Seen::IcmpError {
                                kind: p[0],
                                code: p[1],
                                mtu: u16::from_be_bytes([p[6], p[7]]),
                                proto: inner[9],
                                sport: u16::from_be_bytes([inner[ihl], inner[ihl + 1]]),
                            });
                        }
                    }
                    _ => {}
                }
                Ok(Seen::Nothing)
            }
            _ => Ok(transport(proto, p)),
        }
    }
}

/// A TCP segment, a DNS answer or another UDP datagram sent to us (either
/// family).
fn transport(proto: u8, p: &[u8]) -> Seen {
    match proto {
        6 => tcp::parse(p).map_or(Seen::Nothing, Seen::Tcp),
        17 if p.len() >= 12 && u16::from_be_bytes([p[0], p[1]]) == 53 => Seen::Dns {
            id: u16::from_be_bytes([p[8], p[9]]),
            rcode: p[11] & 0x0f,
            addrs: packet::dns_addresses(&p[8..]),
        },
        17 if p.len() >= 8 => Seen::Udp {
            sport: u16::from_be_bytes([p[0], p[1]]),
            dport: u16::from_be_bytes([p[2], p[3]]),
        },
        _ => Seen::Nothing,
    }
}

/// What came back for a TCP segment: `synack`, `reset`, `ack`, `icmp`, `timeout`,
/// and for an ICMP error its type, code and MTU.
fn describe_tcp(seen: &Option<Seen>) -> (&'static str, serde_json::Value) {
    match seen {
        Some(Seen::Tcp(t)) if t.flags & tcp::RST != 0 => ("reset", json!(null)),
        Some(Seen::Tcp(t)) if t.flags & tcp::SYN != 0 => ("synack", json!(null)),
        Some(Seen::Tcp(_)) => ("ack", json!(null)),
        Some(Seen::IcmpError {
            kind, code, mtu, ..
        }) => ("icmp", json!({"type": kind, "code": code, "mtu": mtu})),
        Some(Seen::Icmp6Error {
            kind, code, mtu, ..
        }) => ("icmp", json!({"type": kind, "code": code, "mtu": mtu})),
        _ => ("timeout", json!(null)),
    }
}

fn clone_seen(s: &Seen) -> Seen {
    match s {
        Seen::Tcp(t) => Seen::Tcp(*t),
        Seen::IcmpError {
            kind,
            code,
            mtu,
            proto,
            sport,
        } => Seen::IcmpError {
            kind: *kind,
            code: *code,
            mtu: *mtu,
            proto: *proto,
            sport: *sport,
        },
        Seen::Icmp6Error {
            kind,
            code,
            mtu,
            from,
            proto,
            id,
        } => Seen::Icmp6Error {
            kind: *kind,
            code: *code,
            mtu: *mtu,
            from: *from,
            proto: *proto,
            id: *id,
        },
        _ => Seen::Nothing,
    }
}

/// Attach to the (persistent) TAP device `name` as its queue: this is what QEMU
/// does, and it gives the bridge port carrier.
fn open_tap(name: &str) -> Result<OwnedFd> {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    const IFF_TAP: libc::c_short = 0x0002;
    const IFF_NO_PI: libc::c_short = 0x1000;
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("opening /dev/net/tun");
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut ifr = [0u8; 40];
    let bytes = name.as_bytes();
    if bytes.len() >= 16 {
        bail!("interface name {name} too long");
    }
    ifr[..bytes.len()].copy_from_slice(bytes);
    ifr[16..18].copy_from_slice(&(IFF_TAP | IFF_NO_PI).to_ne_bytes());
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, ifr.as_mut_ptr()) } < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("TUNSETIFF {name}"));
    }
    Ok(fd)
}

fn dns_server(args: &[String]) -> Result<()> {
    let listen: SocketAddr = flag(args, "--listen")?.parse()?;
    let sock = UdpSocket::bind(listen).with_context(|| format!("binding {listen}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    println!("{}", json!({"ready": true, "listen": listen.to_string()}));
    let end = Instant::now() + Duration::from_secs(3600);
    let mut buf = [0u8; 512];
    while Instant::now() < end {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let query = &buf[..n];
        let addr = match packet::dns_qname(query) {
            Some(name) if name.ends_with(".invalid") => None,
            Some(name) => {
                if name.starts_with("slow.") {
                    // Lets a test change the path while the answer is on its way
                    // (well inside the 2 s pathtrace waits for a reply).
                    std::thread::sleep(Duration::from_millis(1000));
                }
                Some(match packet::dns_qtype(query) {
                    Some(packet::DNS_AAAA) => {
                        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 8))
                    }
                    _ => IpAddr::V4(Ipv4Addr::new(203, 0, 113, 80)),
                })
            }
            None => continue,
        };
        if let Some(answer) = packet::dns_answer(query, addr) {
            let _ = sock.send_to(&answer, from);
        }
    }
    Ok(())
}

/// Packets per sendmmsg(2) call.
const FLOOD_BATCH: usize = 64;

fn flood(args: &[String]) -> Result<()> {
    let dst: Ipv4Addr = flag(args, "--dst")?.parse()?;
    let secs: f64 = flag(args, "--seconds")?.parse()?;
    let max: u64 = flag(args, "--max")?.parse()?;
    if !(0.0..=120.0).contains(&secs) {
        bail!("--seconds must be at most 120");
    }
    let (icmp, tcp) = match flag(args, "--proto")? {
        "udp" => (false, false),
        "icmp" => (true, false),
        "tcp" => (false, true),
        other => bail!("unknown --proto {other}"),
    };
    let port: u16 = match args.iter().position(|a| a == "--port") {
        Some(_) => flag(args, "--port")?.parse()?,
        None => 9,
    };
    if tcp {
        return syn_flood(dst, port, secs, max);
    }
    let sock = flood_socket(icmp)?;
    // 18-byte UDP payload or an 8-byte ICMP echo header + 10 bytes: 46-byte IP
    // packets, the smallest Ethernet frames.
    let mut payloads: Vec<[u8; 18]> = vec![[0u8; 18]; FLOOD_BATCH];
    let id = std::process::id() as u16;
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    addr.sin_family = libc::AF_INET as libc::sa_family_t;
    addr.sin_port = if icmp { 0 } else { port.to_be() };
    addr.sin_addr.s_addr = u32::from(dst).to_be();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let (mut sent, mut seq) = (0u64, 0u16);
    while sent < max && Instant::now() < end {
        if icmp {
            for p in payloads.iter_mut() {
                seq = seq.wrapping_add(1);
                let echo = packet::icmp_echo(8, id, seq, &[0u8; 10]);
                p.copy_from_slice(&echo[..18]);
            }
        }
        let mut bufs: Vec<&mut [u8]> = payloads.iter_mut().map(|p| &mut p[..]).collect();
        sent += send_batch(
            &sock,
            &mut addr,
            &mut bufs,
            (max - sent).min(FLOOD_BATCH as u64),
        );
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{}", json!({"sent": sent, "secs": secs}));
    Ok(())
}

/// The TCP flood: a SYN from a new source port each (a guest opening
/// connections as fast as it can), through a raw socket, in batches.
fn syn_flood(dst: Ipv4Addr, port: u16, secs: f64, max: u64) -> Result<()> {
    let src = local_addr_towards(dst)?;
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_TCP,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("opening the raw TCP socket");
    }
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // The answers (SYN-ACK, RST) are the guest kernel's business, not read here.
    unsafe { libc::shutdown(sock.as_raw_fd(), libc::SHUT_RD) };
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    addr.sin_family = libc::AF_INET as libc::sa_family_t;
    addr.sin_addr.s_addr = u32::from(dst).to_be();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let (mut sent, mut sport) = (0u64, 1024u16);
    while sent < max && Instant::now() < end {
        let mut segs: Vec<Vec<u8>> = (0..FLOOD_BATCH)
            .map(|_| {
                sport = sport.checked_add(1).unwrap_or(1024);
                let seg = Segment {
                    sport,
                    dport: port,
                    seq: 1,
                    ack: 0,
                    flags: tcp::SYN,
                };
                tcp::segment(src.into(), dst.into(), &seg, &[])
            })
            .collect();
        let mut bufs: Vec<&mut [u8]> = segs.iter_mut().map(|p| &mut p[..]).collect();
        sent += send_batch(
            &sock,
            &mut addr,
            &mut bufs,
            (max - sent).min(FLOOD_BATCH as u64),
        );
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{}", json!({"sent": sent, "secs": secs}));
    Ok(())
}

/// Send up to `want` of `bufs` to `addr` in one sendmmsg(2); how many went.
fn send_batch(
    sock: &OwnedFd,
    addr: &mut libc::sockaddr_in,
    bufs: &mut [&mut [u8]],
    want: u64,
) -> u64 {
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|p| libc::iovec {
            iov_base: p.as_mut_ptr().cast(),
            iov_len: p.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_name = (addr as *mut libc::sockaddr_in).cast();
            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let want = want.min(msgs.len() as u64) as u32;
    // SAFETY: every header points at live buffers above.
    let n = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), want, 0) };
    if n > 0 {
        n as u64
    } else {
        // A full queue (ENOBUFS) just means "faster than the path": try again.
        std::thread::yield_now();
        0
    }
}

/// The address this namespace sends from towards `dst` (the TCP checksum
/// covers it): what a connected UDP socket is bound to.
fn local_addr_towards(dst: Ipv4Addr) -> Result<Ipv4Addr> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.connect((dst, 9))?;
    match s.local_addr()? {
        std::net::SocketAddr::V4(a) => Ok(*a.ip()),
        other => bail!("unexpected local address {other}"),
    }
}

/// A UDP socket, or a raw ICMP socket that never queues what comes back (the
/// echo replies would only fill its buffer and be dropped).
fn flood_socket(icmp: bool) -> Result<OwnedFd> {
    let (kind, proto) = if icmp {
        (libc::SOCK_RAW, libc::IPPROTO_ICMP)
    } else {
        (libc::SOCK_DGRAM, libc::IPPROTO_UDP)
    };
    let fd = unsafe { libc::socket(libc::AF_INET, kind | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("opening the flood socket");
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if icmp {
        const SOL_RAW: libc::c_int = 255;
        const ICMP_FILTER: libc::c_int = 1;
        let all: u32 = u32::MAX;
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                SOL_RAW,
                ICMP_FILTER,
                (&all as *const u32).cast(),
                4,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("ICMP_FILTER");
        }
    } else {
        // Nothing is read from it either.
        unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RD) };
    }
    Ok(fd)
}
