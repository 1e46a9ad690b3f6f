//! The test side of a fake guest: starts the `fake-guest` process on a TAP device
//! and drives it over its stdin/stdout line protocol.

use std::{
    io::{BufRead, BufReader, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;

/// One guest NIC: its TAP port on the host, address and MAC.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    pub tap: String,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub mac: String,
    /// The guest's IPv6 address besides its IPv4 one (dual stack), if any.
    pub v6: Option<GuestV6>,
}

/// A guest's static IPv6 address and gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestV6 {
    pub ip: Ipv6Addr,
    pub prefix: u8,
    pub gateway: Ipv6Addr,
}

impl GuestSpec {
    /// Guest number `n` on the lab's VM LAN: tap{100+n}i0, 192.0.2.{100+n} and
    /// 2001:db8:1::{100+n} (the same digits, read as hex: 2001:db8:1::100 for
    /// guest 0), gateways 192.0.2.1 and 2001:db8:1::1.
    pub fn nth(n: u8) -> Self {
        let v6: Ipv6Addr = format!("2001:db8:1::{}", 100 + u32::from(n))
            .parse()
            .expect("a valid address");
        Self {
            tap: format!("tap{}i0", 100 + u32::from(n)),
            ip: Ipv4Addr::new(192, 0, 2, 100 + n),
            prefix: 24,
            gateway: Ipv4Addr::new(192, 0, 2, 1),
            v6: Some(GuestV6 {
                ip: v6,
                prefix: 64,
                gateway: Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1),
            }),
            mac: format!(
                "52:54:00:{:02x}:{:02x}:{:02x}",
                std::process::id() as u8,
                n,
                0x56
            ),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct PingOpts {
    pub count: u32,
    pub interval_ms: u64,
    /// How long to wait for replies after the last request.
    pub timeout_ms: u64,
    pub size: usize,
    pub ttl: u8,
    pub df: bool,
}

impl Default for PingOpts {
    fn default() -> Self {
        Self {
            count: 1,
            interval_ms: 200,
            timeout_ms: 1000,
            size: 56,
            ttl: 64,
            df: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct PingResult {
    pub sent: u32,
    pub received: u32,
    pub id: u16,
    pub seqs_replied: Vec<u16>,
    /// ICMPv6 errors quoting the echo requests (IPv6 pings only).
    #[serde(default)]
    pub errors: Vec<IcmpError>,
}

/// An ICMPv6 error the guest received: type (1 unreachable, 2 Packet Too
/// Big, 3 time exceeded, 4 parameter problem), code, the MTU a Packet Too Big
/// names, and its sender.
#[derive(Debug, Clone, Deserialize)]
pub struct IcmpError {
    #[serde(rename = "type")]
    pub kind: u8,
    pub code: u8,
    pub mtu: u32,
    pub from: IpAddr,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DnsResult {
    pub sent: u32,
    pub answered: u32,
    pub ids: Vec<u16>,
    pub rcode: Option<u8>,
    /// The A/AAAA addresses of the last answer.
    #[serde(default)]
    pub addrs: Vec<IpAddr>,
}

/// What the guest saw of a TCP connection attempt (`result`: `synack`,
/// `reset`, `icmp`, `timeout`) and of its data segment (`data`: `ack`, `icmp`,
/// `timeout`, absent when none was sent).
#[derive(Debug, Clone, Deserialize)]
pub struct TcpResult {
    pub sport: u16,
    pub result: String,
    pub icmp: Option<serde_json::Value>,
    #[serde(default)]
    pub data: Option<String>,
    #[serde(default)]
    pub data_icmp: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct UdpResult {
    pub sport: u16,
    pub answered: bool,
}

pub struct Guest {
    pub spec: GuestSpec,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Guest {
    /// Start the guest inside the namespace at `netns` (a /run/netns path); returns
    /// once it has resolved its gateway.
    pub fn start(bin: &Path, netns: &Path, spec: GuestSpec) -> Result<Self> {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", netns.display()))
            .arg(bin)
            .args(["guest", "--tap", &spec.tap])
            .args(["--ip", &format!("{}/{}", spec.ip, spec.prefix)])
            .args(["--gw", &spec.gateway.to_string(), "--mac", &spec.mac]);
        if let Some(v6) = spec.v6 {
            cmd.args(["--ip6", &format!("{}/{}", v6.ip, v6.prefix)])
                .args(["--gw6", &v6.gateway.to_string()]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdin = child.stdin.take().context("guest stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("guest stdout")?);
        let mut guest = Self {
            spec,
            child,
            stdin,
            stdout,
        };
        let ready = guest.read_line()?;
        if ready["ready"] != true {
            bail!("fake guest on {} failed: {ready}", guest.spec.tap);
        }
        Ok(guest)
    }

    fn read_line(&mut self) -> Result<Value> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("fake guest on {} exited", self.spec.tap);
        }
        serde_json::from_str(&line).with_context(|| format!("guest said {line:?}"))
    }

    fn command(&mut self, cmd: &str) -> Result<Value> {
        writeln!(self.stdin, "{cmd}")?;
        self.stdin.flush()?;
        let answer = self.read_line()?;
        if let Some(e) = answer.get("error") {
            bail!("guest command {cmd:?} failed: {e}");
        }
        Ok(answer)
    }

    /// Echo requests to `dst` (IPv4 or IPv6; for IPv6 `ttl` is the hop limit
    /// and `df` means nothing: routers never fragment IPv6).
    pub fn ping(&mut self, dst: impl Into<IpAddr>, o: PingOpts) -> Result<PingResult> {
        let dst = dst.into();
        let cmd = format!(
            "ping {dst} {} {} {} {} {} {}",
            o.count, o.interval_ms, o.timeout_ms, o.size, o.ttl, o.df as u8
        );
        Ok(serde_json::from_value(self.command(&cmd)?)?)
    }

    /// `count` A queries for `name` to `server` (IPv4 or IPv6).
    pub fn dns(
        &mut self,
        server: impl Into<IpAddr>,
        name: &str,
        count: u32,
        timeout_ms: u64,
    ) -> Result<DnsResult> {
        self.dns_type(server, name, count, timeout_ms, "A")
    }

    /// `count` queries of type `qtype` ("A" or "AAAA") for `name` to `server`.
    pub fn dns_type(
        &mut self,
        server: impl Into<IpAddr>,
        name: &str,
        count: u32,
        timeout_ms: u64,
        qtype: &str,
    ) -> Result<DnsResult> {
        let server = server.into();
        let cmd = format!("dns {server} {name} {count} {timeout_ms} {qtype}");
        Ok(serde_json::from_value(self.command(&cmd)?)?)
    }

    /// Forget every ARP and NDP entry (`ip neigh flush all` in the guest): the
    /// next packet to each next hop asks for it again.
    pub fn flush_neighbours(&mut self) -> Result<()> {
        self.command("neigh-flush").map(drop)
    }

    /// One DHCP transaction (DISCOVER, then REQUEST for the offer): the fake
    /// guest's JSON answer (`xid`, `offered`, `server`, `ack`, `nak`).
    pub fn dhcp(&mut self, timeout_ms: u64) -> Result<Value> {
        self.command(&format!("dhcp {timeout_ms}"))
    }

    /// One ARP who-has for `target`: `answered`, and the `mac` of the first answer.
    pub fn arp(&mut self, target: Ipv4Addr, timeout_ms: u64) -> Result<Value> {
        self.command(&format!("arp {target} {timeout_ms}"))
    }
}

impl Guest {
    /// Connect to `dst:port`; with `data` > 0, then send that many bytes in one
    /// segment (DF set).
    pub fn tcp(
        &mut self,
        dst: impl Into<IpAddr>,
        port: u16,
        timeout_ms: u64,
        data: usize,
    ) -> Result<TcpResult> {
        let cmd = format!("tcp {} {port} {timeout_ms} {data}", dst.into());
        Ok(serde_json::from_value(self.command(&cmd)?)?)
    }

    /// `count` connection attempts to `dst:port` back to back; how many were
    /// accepted.
    pub fn syn_burst(&mut self, dst: Ipv4Addr, port: u16, count: u16) -> Result<u64> {
        let v = self.command(&format!("syn {dst} {port} {count}"))?;
        v["accepted"].as_u64().context("accepted")
    }

    /// One datagram to `dst:port`, waiting for the response.
    pub fn udp(&mut self, dst: impl Into<IpAddr>, port: u16, timeout_ms: u64) -> Result<UdpResult> {
        let cmd = format!("udp {} {port} {timeout_ms}", dst.into());
        Ok(serde_json::from_value(self.command(&cmd)?)?)
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
