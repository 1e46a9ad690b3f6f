//! Command line (the output contract: docs/json.md): `pathtrace trace` (the default:
//! `pathtrace --vm-ip IP --to DEST ...`), `pathtrace watch` (the incident/production
//! mode), `pathtrace doctor` and `pathtrace report`.

use std::{
    ffi::OsString,
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use clap::{Parser, Subcommand, ValueEnum};

/// Version, the commit it was built from and the embedded eBPF object's hash
/// (build.rs): what a bug report needs to name the exact build.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("PATHTRACE_GIT_COMMIT"),
    ", eBPF object sha256 ",
    env!("PATHTRACE_EBPF_SHA256"),
    ")"
);

/// `pathtrace [-v]... COMMAND ...`.
#[derive(Debug, Parser)]
#[command(
    name = "pathtrace",
    version = VERSION,
    propagate_version = true,
    about = "Follow a KVM guest's packets through this hypervisor and say where they die",
    after_help = "Without a command, `pathtrace --vm-ip IP --to DEST ...` is `pathtrace trace ...`.\nExit status: 0 success, 1 a problem was found, 2 usage or environment error.\nThe JSON output of every command is documented in /usr/share/doc/pathtrace/json.md (docs/json.md)."
)]
pub struct Top {
    /// Say on stderr what pathtrace runs and how long it takes (-v), with the
    /// eBPF loader's messages (-vv) and everything (-vvv); RUST_LOG=LEVEL or
    /// TARGET=LEVEL,... does the same. stdout is unchanged.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Follow a guest's ping/DNS/DHCP/ARP requests and their replies hop by hop (the default).
    Trace(Cli),
    /// Live drop points of every VM on this host; Prometheus exporter.
    Watch(WatchCli),
    /// Check, without tracing, everything a VM's traffic needs on this host.
    Doctor(DoctorCli),
    /// One bundle for a ticket: doctor, a snapshot, a short trace with its
    /// pcapng, a few seconds of watch, versions and kernel facts.
    Report(ReportCli),
    /// Write the manual pages and shell completions into DIR (for packaging).
    #[command(hide = true)]
    GenerateAssets {
        #[arg(value_name = "DIR")]
        dir: std::path::PathBuf,
    },
}

/// Subcommand names (and what clap answers itself) that are not trace options.
const COMMANDS: &[&str] = &[
    "trace",
    "watch",
    "doctor",
    "report",
    "generate-assets",
    "help",
    "-h",
    "--help",
    "-V",
    "--version",
];

/// `pathtrace --vm-ip ...` keeps meaning `pathtrace trace --vm-ip ...`: insert
/// `trace` before the first argument that is not a verbosity flag, unless it names
/// a command (or asks for help or the version).
pub fn with_default_command(mut args: Vec<OsString>) -> Vec<OsString> {
    let verbosity = |a: &OsString| {
        a.to_str().is_some_and(|a| {
            a == "--verbose"
                || (a.len() > 1 && a.starts_with('-') && a[1..].bytes().all(|b| b == b'v'))
        })
    };
    let at = 1 + args.iter().skip(1).take_while(|a| verbosity(a)).count();
    let named = args
        .get(at)
        .and_then(|a| a.to_str())
        .is_some_and(|a| COMMANDS.contains(&a));
    if !named {
        args.insert(at.min(args.len()), OsString::from("trace"));
    }
    args
}

/// `pathtrace trace`: follow the guest's requests.
#[derive(Debug, Clone, Parser)]
#[command(
    about = "Follow a KVM guest's ping, DNS, DHCP or ARP packets through this hypervisor and say where they die",
    after_help = "Run it while the guest pings (or resolves) the destination; it needs root (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON).\nExit status: 0 every request got its reply, 1 a drop or missing reply was found, 2 usage or environment error.\n\nLive drop points of every VM on this host: pathtrace watch --help"
)]
pub struct Cli {
    /// The guest's address, IPv4 or IPv6.
    #[arg(long = "vm-ip", value_name = "IP", required_unless_present_any = ["vm", "iface"])]
    pub vm_ip_arg: Option<IpAddr>,
    /// The VM by Proxmox VMID, VM or libvirt domain name, or MAC (its address and
    /// port are read from the hypervisor's configuration), instead of --vm-ip.
    #[arg(long, value_name = "ID|NAME|MAC")]
    pub vm: Option<String>,
    /// The guest's address: --vm-ip, or the one --vm resolves to.
    #[arg(skip = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub vm_ip: IpAddr,
    /// The destination the guest is trying to reach (IPv4 or IPv6, of the
    /// guest's family); DEST:PORT ([DEST]:PORT for IPv6) is short for
    /// `--to DEST --port PORT` (and means `--proto tcp` unless `--proto udp`).
    /// `--proto arp`: the address asked for (default: the guest's gateway);
    /// `--proto dhcp`: not needed.
    #[arg(long = "to", value_name = "DEST[:PORT]", value_parser = dest_arg)]
    pub to_arg: Option<Dest>,
    /// The destination's address (from --to).
    #[arg(skip = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub to: IpAddr,
    /// Which of the guest's packets to follow: ping, DNS, or a TCP/UDP service
    /// on --port.
    #[arg(long, value_enum)]
    pub proto: Option<Proto>,
    /// The service's port, for --proto tcp|udp.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// Stop after this many requests have a verdict.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100_000_000))]
    pub count: u32,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub timeout: u64,
    /// The VM's port (tap/vnet), when it cannot be found from the VM IP.
    #[arg(long, value_name = "DEV")]
    pub iface: Option<String>,
    /// One JSON object per line on stdout.
    #[arg(long)]
    pub json: bool,
    /// Kernel→user event buffer in KiB (a power of two, at least 4). Raise it on
    /// very busy hosts if the summary reports lost events.
    #[arg(long, value_name = "KIB", default_value_t = 1024, value_parser = ring_kib)]
    pub buffer_kb: u32,
    /// The running kernel's BTF (struct layouts, drop-reason names).
    #[arg(long, value_name = "PATH", default_value = crate::kernel::btf::VMLINUX_BTF)]
    pub kernel_btf: std::path::PathBuf,
    /// Read hypervisor configuration (Proxmox /etc/pve, libvirt) under this root
    /// instead of /.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub config_root: std::path::PathBuf,
    /// Also follow the packet through kernel functions (bridge forwarding,
    /// ip_forward, netfilter, NAT, neighbour output, queueing) with kprobes: needs
    /// a kernel with kprobes, costs more per followed packet.
    #[arg(long)]
    pub deep: bool,
    /// Write every followed packet at every hop where it was seen to FILE as
    /// pcapng (first 256 bytes; one interface per hop device; the verdict as a
    /// comment on the packet where it was decided). Open it with Wireshark/tshark.
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Proto {
    Icmp,
    Dns,
    Any,
    /// A TCP service: connection attempts and their first data segments.
    Tcp,
    /// A UDP service: requests and responses by 5-tuple.
    Udp,
    /// DISCOVER/OFFER and REQUEST/ACK by transaction id (the guest may have no
    /// address yet: --vm or --iface name it).
    Dhcp,
    /// The guest's who-has for --to (default: its gateway) and the answer.
    Arp,
}

/// `--to DEST[:PORT]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dest {
    pub ip: IpAddr,
    pub port: Option<u16>,
}

/// `ADDRESS`, `IPV4:PORT` or `[IPV6]:PORT`.
fn dest_arg(s: &str) -> Result<Dest, String> {
    if let Ok(ip) = s.parse() {
        return Ok(Dest { ip, port: None });
    }
    let bad = || format!("{s:?} is not an IP address, IPV4:PORT or [IPV6]:PORT");
    let at = s.parse::<SocketAddr>().map_err(|_| bad())?;
    if at.port() == 0 {
        return Err(bad());
    }
    Ok(Dest {
        ip: at.ip(),
        port: Some(at.port()),
    })
}

impl Cli {
    /// Settle what the options say together: the destination, the protocol
    /// (a port alone means TCP) and its port. A contradiction is a usage error.
    pub fn settle(&mut self) -> anyhow::Result<()> {
        // DHCP and ARP may have no --to (dhcparp::resolve fills it in).
        self.to = self
            .to_arg
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |d| d.ip);
        let v6 = |ip: Option<IpAddr>| ip.map(|a| a.is_ipv6());
        let (vm6, to6) = (v6(self.vm_ip_arg), v6(self.to_arg.map(|d| d.ip)));
        if let (Some(a), Some(b)) = (vm6, to6) {
            if a != b {
                anyhow::bail!("--vm-ip and --to must be of one family (both IPv4 or both IPv6)");
            }
        }
        let port = match (self.to_arg.and_then(|d| d.port), self.port) {
            (Some(a), Some(b)) if a != b => {
                anyhow::bail!("--to gives port {a} but --port {b}")
            }
            (a, b) => a.or(b),
        };
        self.port = port;
        let proto = self.proto.unwrap_or(match port {
            Some(_) => Proto::Tcp,
            None => Proto::Icmp,
        });
        self.proto = Some(proto);
        if matches!(proto, Proto::Dhcp | Proto::Arp) && (vm6 == Some(true) || to6 == Some(true)) {
            anyhow::bail!(
                "--proto {} is IPv4's (DHCPv6 and neighbour discovery are not traced)",
                proto.word()
            );
        }
        // Measured on 6.18: with TCP or UDP services over IPv6 the port
        // program's verification runs past the kernel's million instructions
        // (the extension-header walk multiplies the states classify sees).
        if matches!(proto, Proto::Tcp | Proto::Udp) && (vm6 == Some(true) || to6 == Some(true)) {
            anyhow::bail!(
                "--proto {} is not traced over IPv6 yet (the kernel's verifier refuses the program); trace the guest's IPv4 address, or ICMPv6 and DNS over IPv6",
                proto.word()
            );
        }
        match (proto.has_port(), port) {
            (true, None) => anyhow::bail!(
                "--proto {} needs the service's port: --port N or --to DEST:PORT",
                proto.word()
            ),
            (false, Some(p)) => anyhow::bail!(
                "port {p} given, but --proto {} has none (use --proto tcp or udp)",
                proto.word()
            ),
            _ => Ok(()),
        }
    }

    /// The protocol to follow (after [`Cli::settle`]).
    pub fn proto(&self) -> Proto {
        self.proto.unwrap_or(Proto::Icmp)
    }
}

impl Proto {
    pub fn mask(self) -> u32 {
        match self {
            Proto::Icmp => tracer_common::PROTO_ICMP,
            Proto::Dns => tracer_common::PROTO_DNS,
            Proto::Any => tracer_common::PROTO_ICMP | tracer_common::PROTO_DNS,
            Proto::Tcp => tracer_common::PROTO_TCP,
            Proto::Udp => tracer_common::PROTO_UDP,
            Proto::Dhcp => tracer_common::PROTO_DHCP,
            Proto::Arp => tracer_common::PROTO_ARP,
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            Proto::Icmp => "icmp",
            Proto::Dns => "dns",
            Proto::Any => "any",
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Dhcp => "dhcp",
            Proto::Arp => "arp",
        }
    }

    /// A service on a port (TCP/UDP), rather than ping or DNS.
    pub fn has_port(self) -> bool {
        matches!(self, Proto::Tcp | Proto::Udp)
    }
}

/// `pathtrace watch`: live per-VM drop points.
#[derive(Debug, Parser)]
#[command(
    about = "Live drop points of every VM on this host (or of the VMs named with --vm-ip)",
    after_help = "Keys in the live view: q quit, s change sort (rate/total/VM), / filter by text, Esc clear the filter.\nWith --json, one snapshot object per interval on stdout. Exit status 0 on a clean stop, 2 on a usage or environment error."
)]
pub struct WatchCli {
    /// Only these VMs, by an IPv4 or IPv6 address (repeatable). Default: every
    /// VM port on every bridge.
    #[arg(long = "vm-ip", value_name = "IP")]
    pub vm_ips: Vec<IpAddr>,
    /// One JSON snapshot per interval on stdout instead of the live view.
    #[arg(long)]
    pub json: bool,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics. A bare PORT binds to
    /// 127.0.0.1; give an address (e.g. 0.0.0.0:9464) to expose it further.
    #[arg(long, value_name = "ADDR:PORT", value_parser = listen_addr)]
    pub prometheus: Option<SocketAddr>,
    /// Seconds between snapshots.
    #[arg(long, value_name = "SECS", default_value_t = 1.0, value_parser = interval_secs)]
    pub interval: f64,
    /// Stop after this many seconds (default: run until stopped).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub duration: Option<u64>,
    /// The running kernel's BTF (struct layouts, drop-reason names).
    #[arg(long, value_name = "PATH", default_value = crate::kernel::btf::VMLINUX_BTF)]
    pub kernel_btf: std::path::PathBuf,
    /// Read hypervisor configuration (Proxmox /etc/pve, libvirt) under this root
    /// instead of / (names VMs: vmid, vm_name).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub config_root: std::path::PathBuf,
}

/// `pathtrace doctor`: static checks of everything a VM's traffic needs on this host.
#[derive(Debug, Parser)]
#[command(
    about = "Check, without tracing, everything on this host that a VM's traffic needs: its port and bridges, forwarding, routing, NAT, firewall, neighbours, DNS",
    after_help = "Each check says pass, warn or fail, with its evidence and the command that fixes it.\nExit status: 0 nothing failed, 1 a check failed (with --diff: something changed), 2 usage or environment error.",
    group(clap::ArgGroup::new("subject").args(["vm_ip", "vm", "snapshot", "diff"]).required(true))
)]
pub struct DoctorCli {
    /// The guest's address, IPv4 or IPv6 (an IPv6 one: the IPv6 checks, with
    /// the port and bridge checks).
    #[arg(long, value_name = "IP")]
    pub vm_ip: Option<IpAddr>,
    /// The VM by Proxmox VMID, VM or libvirt domain name, or MAC (read from the
    /// hypervisor's configuration: works before the guest has sent anything).
    #[arg(long, value_name = "ID|NAME|MAC")]
    pub vm: Option<String>,
    /// The destination the guest should reach (default: the internet, by the
    /// default route; only route lookups are made for it, nothing is sent).
    #[arg(long = "to", value_name = "DEST")]
    pub to: Option<IpAddr>,
    /// The resolver the guest uses, when it is not this host's own.
    #[arg(long, value_name = "IP")]
    pub dns: Option<IpAddr>,
    /// The VM's port (tap/vnet), when it cannot be found otherwise.
    #[arg(long, value_name = "DEV")]
    pub iface: Option<String>,
    /// One JSON object per line on stdout.
    #[arg(long)]
    pub json: bool,
    /// Send nothing: skip the ARP probes (gateway reachable, duplicate VM IP).
    #[arg(long)]
    pub passive: bool,
    /// Save routes, rules, rulesets, bridge state and sysctls into DIR, to compare
    /// later with --diff DIR.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["diff", "vm_ip", "vm"])]
    pub snapshot: Option<std::path::PathBuf>,
    /// Show what changed since `--snapshot DIR`.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["vm_ip", "vm"])]
    pub diff: Option<std::path::PathBuf>,
    /// Read hypervisor configuration (Proxmox /etc/pve, libvirt) under this root
    /// instead of / (e.g. a copy of another host's /etc).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub config_root: std::path::PathBuf,
}

/// `pathtrace report`: everything about a VM's path in one .tar.gz.
#[derive(Debug, Parser)]
#[command(
    about = "Collect doctor (JSON and text), a snapshot, a short trace with its pcapng, a few seconds of watch, versions and kernel facts into one .tar.gz",
    after_help = "Run it while the guest pings DEST (for the trace part). The bundle's manifest.json lists every part with its arguments, exit status and time.\nExit status: 0 the bundle was written (whatever it found), 2 usage or environment error.",
    group(clap::ArgGroup::new("subject").args(["vm_ip", "vm"]).required(true))
)]
pub struct ReportCli {
    /// The guest's IPv4 address.
    #[arg(long, value_name = "IP")]
    pub vm_ip: Option<Ipv4Addr>,
    /// The VM by Proxmox VMID, VM or libvirt domain name, or MAC.
    #[arg(long, value_name = "ID|NAME|MAC")]
    pub vm: Option<String>,
    /// The destination the guest is trying to reach (without it, no trace part).
    #[arg(long = "to", value_name = "DEST")]
    pub to: Option<Ipv4Addr>,
    /// The bundle to write (.tar.gz).
    #[arg(short, long, value_name = "FILE.tar.gz")]
    pub output: std::path::PathBuf,
    /// Replace public IPv4 addresses and MACs, consistently, everywhere in the
    /// bundle (packets included).
    #[arg(long)]
    pub redact: bool,
    /// Requests to trace.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub count: u32,
    /// Seconds the trace part waits for them.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub trace_secs: u64,
    /// Seconds of watch.
    #[arg(long, value_name = "SECS", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub watch_secs: u64,
    /// Read hypervisor configuration (Proxmox /etc/pve, libvirt) under this root
    /// instead of /.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub config_root: std::path::PathBuf,
}

/// `PORT` (localhost) or `ADDR:PORT`.
pub fn listen_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if let Some(port) = s.strip_prefix(':') {
        let port = port.parse::<u16>().map_err(|e| format!("{e}"))?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    s.parse()
        .map_err(|_| "expected PORT or ADDR:PORT, e.g. 9464 or 127.0.0.1:9464".to_string())
}

fn interval_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if !(0.1..=3600.0).contains(&v) {
        return Err("must be between 0.1 and 3600".into());
    }
    Ok(v)
}

fn ring_kib(s: &str) -> Result<u32, String> {
    let v: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if v < 4 || !v.is_power_of_two() || v > 1 << 20 {
        return Err("must be a power of two between 4 and 1048576".into());
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_binds_to_localhost_unless_told() {
        assert_eq!(listen_addr("9464").unwrap().to_string(), "127.0.0.1:9464");
        assert_eq!(listen_addr(":9464").unwrap().to_string(), "127.0.0.1:9464");
        assert_eq!(
            listen_addr("0.0.0.0:9464").unwrap().to_string(),
            "0.0.0.0:9464"
        );
        assert!(listen_addr("localhost").is_err());
    }

    fn top(args: &[&str]) -> Result<Top, clap::Error> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        Top::try_parse_from(with_default_command(args))
    }

    #[test]
    fn trace_is_the_default_command() {
        let t = top(&["pathtrace", "--vm-ip", "192.0.2.100", "--to", "203.0.113.8"]).unwrap();
        assert!(matches!(t.command, Command::Trace(ref c) if c.count == 3));
        let t = top(&["pathtrace", "-vv", "--vm", "101", "--to", "203.0.113.8"]).unwrap();
        assert_eq!(t.verbose, 2);
        assert!(matches!(t.command, Command::Trace(_)));
        let t = top(&["pathtrace", "-v", "watch", "--json"]).unwrap();
        assert!(matches!(t.command, Command::Watch(ref w) if w.json));
        let t = top(&["pathtrace", "doctor", "--vm-ip", "192.0.2.100", "-v"]).unwrap();
        assert_eq!(t.verbose, 1);
        // No arguments: trace's usage error, as before subcommands.
        assert!(top(&["pathtrace"]).is_err());
        let help = top(&["pathtrace", "--help"]).unwrap_err().to_string();
        for cmd in ["trace", "watch", "doctor", "report"] {
            assert!(help.contains(&format!("  {cmd} ")), "{help}");
        }
        let version = top(&["pathtrace", "--version"]).unwrap_err().to_string();
        assert!(
            version.contains("commit") && version.contains("sha256"),
            "{version}"
        );
    }

    #[test]
    fn a_service_port_comes_with_tcp_or_udp() {
        let cli = |args: &[&str]| {
            let mut v = vec!["pathtrace", "--vm-ip", "192.0.2.100"];
            v.extend(args);
            match top(&v).unwrap().command {
                Command::Trace(mut c) => c.settle().map(|_| c),
                _ => unreachable!(),
            }
        };
        let c = cli(&["--to", "203.0.113.8:443"]).unwrap();
        assert_eq!(
            (c.to, c.port, c.proto()),
            ("203.0.113.8".parse().unwrap(), Some(443), Proto::Tcp)
        );
        let c = cli(&["--to", "203.0.113.8", "--proto", "udp", "--port", "123"]).unwrap();
        assert_eq!((c.port, c.proto()), (Some(123), Proto::Udp));
        assert_eq!(cli(&["--to", "203.0.113.8"]).unwrap().proto(), Proto::Icmp);
        assert!(cli(&["--to", "203.0.113.8", "--proto", "tcp"]).is_err());
        assert!(cli(&["--to", "203.0.113.8:80", "--proto", "icmp"]).is_err());
        assert!(cli(&["--to", "203.0.113.8:80", "--port", "81"]).is_err());
        assert!(top(&[
            "pathtrace",
            "--vm-ip",
            "192.0.2.100",
            "--to",
            "203.0.113.8:x"
        ])
        .is_err());
    }

    #[test]
    fn ipv6_addresses_and_bracketed_ports() {
        let cli = |args: &[&str]| match top(args).unwrap().command {
            Command::Trace(mut c) => c.settle().map(|_| c),
            _ => unreachable!(),
        };
        let c = cli(&[
            "p",
            "--vm-ip",
            "2001:db8:1::100",
            "--to",
            "2001:db8:ffff::53",
        ])
        .unwrap();
        assert_eq!(c.to, "2001:db8:ffff::53".parse::<IpAddr>().unwrap());
        assert_eq!((c.port, c.proto()), (None, Proto::Icmp));
        let d = dest_arg("[2001:db8::1]:53").unwrap();
        assert_eq!((d.ip.to_string(), d.port), ("2001:db8::1".into(), Some(53)));
        // TCP and UDP services over IPv6: refused, saying why.
        for proto in ["tcp", "udp"] {
            let args = [
                "p",
                "--vm-ip",
                "2001:db8:1::100",
                "--to",
                "[2001:db8::1]:80",
                "--proto",
                proto,
            ];
            let err = cli(&args).unwrap_err().to_string();
            assert!(err.contains("not traced over IPv6"), "{err}");
        }
        // One family per trace; DHCP and ARP are IPv4's.
        assert!(cli(&["p", "--vm-ip", "2001:db8:1::100", "--to", "203.0.113.8"]).is_err());
        assert!(cli(&[
            "p",
            "--vm-ip",
            "2001:db8:1::100",
            "--proto",
            "arp",
            "--to",
            "2001:db8:1::1"
        ])
        .is_err());
        // An unbracketed IPv6 address with a port is ambiguous: refused.
        assert!(top(&[
            "p",
            "--vm-ip",
            "2001:db8:1::100",
            "--to",
            "2001:db8::1:53:x"
        ])
        .is_err());
    }

    #[test]
    fn watch_takes_several_vms() {
        let w = WatchCli::try_parse_from([
            "pathtrace watch",
            "--vm-ip",
            "192.0.2.100",
            "--vm-ip",
            "2001:db8:1::101",
            "--json",
        ])
        .unwrap();
        assert_eq!(w.vm_ips.len(), 2);
        assert!(w.vm_ips[1].is_ipv6());
        assert!(w.json);
        assert!(WatchCli::try_parse_from(["pathtrace watch", "--interval", "0"]).is_err());
    }

    #[test]
    fn doctor_needs_a_subject() {
        let d = |args: &[&str]| {
            DoctorCli::try_parse_from(
                std::iter::once("pathtrace doctor").chain(args.iter().copied()),
            )
        };
        assert!(d(&[]).is_err());
        assert!(d(&["--vm-ip", "192.0.2.100"]).is_ok());
        assert!(d(&["--vm", "105", "--to", "203.0.113.8"]).is_ok());
        assert!(d(&["--snapshot", "/tmp/x"]).is_ok());
        assert!(d(&["--snapshot", "/tmp/x", "--vm-ip", "192.0.2.100"]).is_err());
    }
}
