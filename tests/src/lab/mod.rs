//! A KVM hypervisor in network namespaces, for the demo and the tests.
//!
//!   guest (fake-guest on tap100i0) ── vmbr0 192.0.2.1/24 ┐ hv namespace,
//!                                     eth0 198.51.100.2 ─┘ MASQUERADE out of eth0
//!                                           │ veth
//!   inet namespace: isp0 198.51.100.1, hosts 203.0.113.8 and .53 (DNS) on lo,
//!                   no route back to 192.0.2.0/24 (so NAT is required)
//!   optionally a far network behind it over a smaller-MTU link (remote.rs)
//!
//! The VM side comes in three layouts ([`Layout`]):
//!   Plain:    tap100i0 ── vmbr0
//!   Proxmox:  tap100i0 ── fwbr100i0 ── fwln100i0 ═veth═ fwpr100p0 ── vmbr0
//!             (the firewall bridge per NIC of Proxmox VE with `firewall=1`), plus
//!             `etc/pve/qemu-server/100.conf` under [`Lab::config_root`]
//!   Libvirt:  vnet0 ── virbr0 (libvirt's NAT network "default"), plus
//!             `run/libvirt/qemu/guest0.xml` and `run/libvirt/network/default.xml`
//!   Bridged:  tap100i0 ── vmbr0 192.0.2.2/24 ── eno1 ═veth═ lan0 192.0.2.1 in the
//!             inet namespace, the LAN's router (hosts 203.0.113.8/.53 on its lo):
//!             Proxmox's default, the host routes none of the guest's traffic
//!             (ip_forward=0, no eth0, no NAT; the host's own default route is via
//!             the router on vmbr0); its port toward the LAN may be a bond of
//!             eno1 and eno2 or a VLAN device eno1.N instead ([`Uplink`])
//!
//! IPv6 (v6.rs), dual stack beside the IPv4 above, documentation prefix only:
//!   guest n:  2001:db8:1::(100+n)/64 (2001:db8:1::100 for guest 0), gateway
//!             2001:db8:1::1 on the VM bridge (vmbr0 / virbr0)
//!   uplink:   eth0 2001:db8:2::2/64, default via the provider's router isp0
//!             2001:db8:2::1/64; the inet namespace routes 2001:db8:1::/64 via
//!             2001:db8:2::2 (a routed /64, as hosting providers do: no NAT66);
//!             net.ipv6.conf.all.forwarding=1 in the hv namespace only
//!   internet: 2001:db8:ffff::8 and 2001:db8:ffff::53 on the inet namespace's lo;
//!             the DNS responder also listens on [2001:db8:ffff::53]:53 and
//!             answers AAAA with 2001:db8:ffff::8 (A with 203.0.113.80)
//!   Bridged:  the LAN router lan0 2001:db8:1::1/64 is the gateway, the host
//!             holds 2001:db8:1::2/64 on vmbr0, forwarding off
//!   No router advertisements (static addressing) and no duplicate address
//!   detection (accept_dad=0, nodad) anywhere in the lab.
//!
//! Only RFC 5737 and RFC 3849 addresses; nothing outside the lab's own
//! namespaces is changed.
//! Everything is removed on drop, and `up` first removes leftovers of killed runs.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{bail, Context, Result};

pub use crate::guest::{DnsResult, Guest, GuestSpec, GuestV6, IcmpError, PingOpts, PingResult};

mod config;
mod dhcp;
mod faults;
mod faults6;
mod netns;
mod nwfilter;
mod remote;
mod v6;

pub use faults::Fault;
pub use faults6::Fault6;
pub use netns::{cleanup_stale_netns, remove_netns};
use netns::{in_netns, sh, spawn_in};
pub use nwfilter::{libvirt_missing, Filterref};
pub use remote::REMOTE_HOST;
pub use v6::{
    V6Setup, BRIDGED_HOST6, GATEWAY6, INET6_DNS, INET6_HOST, ISP6, NAT66_NET, NDP_PROXY_GATEWAY,
    REMOTE_HOST6, UPLINK6,
};

const PREFIX: &str = "ptlab";
/// Config directories are `{temp}/ptlab-{pid}-{n}`.
const CONFIG_PREFIX: &str = "ptlab-";
static NEXT: AtomicU32 = AtomicU32::new(0);

/// The internet's TCP service (accepts connections) and UDP service (echoes);
/// nothing listens on the TCP port one above.
pub const SERVICE_TCP: &str = "203.0.113.8:8080";
pub const SERVICE_UDP: &str = "203.0.113.8:5001";

/// The VM number of the planted duplicate-IP guest (tap199i0 / vnet99).
const DUPLICATE_VMID: u32 = 199;

/// [`Layout::Bridged`]: the VM bridge and its "physical" port toward the LAN.
const BRIDGED_BR: &str = "vmbr0";
pub const BRIDGED_UPLINK: &str = "eno1";

/// How the hypervisor wires its guests to the VM bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// vmbr0 with the TAPs (tap{VMID}i0) as its ports.
    #[default]
    Plain,
    /// Proxmox VE with the firewall on: vmbr0; each TAP on its own fwbr{VMID}i0,
    /// joined to vmbr0 by the veth pair fwpr{VMID}p0 (on vmbr0) / fwln{VMID}i0.
    Proxmox,
    /// libvirt's NAT network "default": virbr0 with the ports vnet{n}.
    Libvirt,
    /// Bridged mode: vmbr0 bridges the TAPs and the "physical" port eno1 (a veth
    /// into the LAN, the inet namespace, whose router 192.0.2.1 is the guests'
    /// gateway); the host routes nothing for them.
    Bridged,
}

impl Layout {
    pub const ALL: [Layout; 3] = [Layout::Plain, Layout::Proxmox, Layout::Libvirt];

    /// The VM bridge, the one holding 192.0.2.1.
    pub fn bridge(self) -> &'static str {
        match self {
            Layout::Plain | Layout::Proxmox | Layout::Bridged => "vmbr0",
            Layout::Libvirt => "virbr0",
        }
    }

    /// This layout's name for a TAP: `tap{V}i0` and `vnet{V-100}` are the same NIC
    /// of VM `V` (guest `V-100`); other names are kept.
    pub fn port_name(self, tap: &str) -> String {
        match (self, parse_port(tap)) {
            (Layout::Libvirt, Some((vmid, 0))) if vmid >= 100 => format!("vnet{}", vmid - 100),
            (Layout::Plain | Layout::Proxmox | Layout::Bridged, Some((vmid, net))) => {
                format!("tap{vmid}i{net}")
            }
            _ => tap.to_string(),
        }
    }
}

/// (VMID, NIC number) of `tap{V}i{N}` or `vnet{n}` (VMID 100+n, NIC 0).
fn parse_port(tap: &str) -> Option<(u32, u32)> {
    if let Some(n) = tap.strip_prefix("vnet") {
        return n.parse::<u32>().ok().map(|n| (100 + n, 0));
    }
    let (vmid, net) = tap.strip_prefix("tap")?.split_once('i')?;
    Some((vmid.parse().ok()?, net.parse().ok()?))
}

/// Proxmox's firewall chain for `tap{V}i{N}`: fwbr{V}i{N}, fwpr{V}p{N}, fwln{V}i{N}.
struct FwChain {
    fwbr: String,
    fwpr: String,
    fwln: String,
}

fn fw_chain(tap: &str) -> Result<FwChain> {
    let (vmid, net) = parse_port(tap)
        .filter(|_| tap.starts_with("tap"))
        .with_context(|| format!("Proxmox ports are named tap{{VMID}}i{{N}}, not {tap}"))?;
    Ok(FwChain {
        fwbr: format!("fwbr{vmid}i{net}"),
        fwpr: format!("fwpr{vmid}p{net}"),
        fwln: format!("fwln{vmid}i{net}"),
    })
}

/// [`Layout::Bridged`]: what vmbr0's port toward the LAN is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Uplink {
    /// eno1, a veth into the LAN (the router's lan0).
    #[default]
    Nic,
    /// bond0 in this mode (`active-backup`, `802.3ad`; MII monitor 100 ms) of
    /// eno1 and eno2, veths into the LAN's switch (the bridge lansw holding
    /// the router's address, ports lan1 and lan2). The switch speaks no LACP:
    /// an 802.3ad bond finds no partner. Kernels without bonding refuse it.
    Bond(&'static str),
    /// eno1.VID, a VLAN device on eno1 (Proxmox's non-VLAN-aware layout:
    /// the bridge on `eno1.N`); the router is on lan0.VID. Kernels without
    /// 802.1Q VLAN devices refuse it.
    Vlan(u16),
}

impl Uplink {
    /// vmbr0's port toward the LAN.
    pub fn port(self) -> String {
        match self {
            Uplink::Nic => BRIDGED_UPLINK.into(),
            Uplink::Bond(_) => "bond0".into(),
            Uplink::Vlan(vid) => format!("{BRIDGED_UPLINK}.{vid}"),
        }
    }
}

pub struct LabOptions {
    pub guest_bin: PathBuf,
    pub guests: Vec<GuestSpec>,
    pub layout: Layout,
    /// Proxmox: leave the firewall bridges answering ARP for the host's
    /// addresses (the kernel's default, arp_ignore=0), so a guest may take a
    /// firewall bridge's MAC for its gateway's. Off: arp_ignore=1 on them.
    pub fwbr_answers_arp: bool,
    /// Bridged layout only: vmbr0 VLAN-aware (`vlan_filtering 1`, Proxmox's
    /// `bridge-vlan-aware yes`), every guest's TAP in this VLAN as its PVID,
    /// untagged (Proxmox's `tag=N`), and eno1 an access port of it toward the
    /// router (the host's own address on vmbr0 too). Kernels without bridge
    /// VLAN filtering refuse it: [`Lab::up`] fails saying so.
    pub vlan: Option<u16>,
    /// Bridged layout: vmbr0's port toward the LAN. Routed layouts:
    /// [`Uplink::Vlan`] puts the host's uplink address on eth0.VID.
    pub uplink: Uplink,
    /// How the provider delivers the guests' IPv6 (routed layouts); a guest's
    /// IPv6 address takes the setup's prefix (see [`V6Setup::place`]).
    pub v6: V6Setup,
}

impl LabOptions {
    /// One guest, 192.0.2.100 on tap100i0 (vnet0 with libvirt), plain layout.
    pub fn new(guest_bin: PathBuf) -> Self {
        Self {
            guest_bin,
            guests: vec![GuestSpec::nth(0)],
            layout: Layout::Plain,
            fwbr_answers_arp: false,
            vlan: None,
            uplink: Uplink::Nic,
            v6: V6Setup::Routed,
        }
    }
}

pub struct Lab {
    hv: String,
    inet: String,
    /// The network beyond the inet router ([`Lab::add_remote_network`]).
    far: Option<String>,
    layout: Layout,
    fwbr_answers_arp: bool,
    vlan: Option<u16>,
    uplink: Uplink,
    v6_setup: V6Setup,
    config_root: PathBuf,
    guest_bin: PathBuf,
    guests: Vec<Guest>,
    /// Ports made by [`Lab::add_port`], for guests the lab does not run.
    bare_ports: Vec<GuestSpec>,
    /// The guest planted by [`Fault::DuplicateIp`].
    duplicate: Option<Guest>,
    resolver: Option<Child>,
    /// rp_filter of all and of the bridge before [`Fault::RpFilterStrict`].
    saved_rp_filter: Option<(String, String)>,
    helpers: Vec<Child>,
    /// libvirt nwfilters instantiated on ports ([`Lab::libvirt_nwfilter`]).
    filterrefs: Vec<Filterref>,
}

impl Lab {
    /// [`Lab::up`], or None with the reason printed where the kernel lacks what
    /// the options ask for (bridge VLAN filtering, bonding, 802.1Q devices: the
    /// development kernel); any other failure panics.
    pub fn up_unless_unsupported(opts: LabOptions) -> Option<Self> {
        match Self::up(opts) {
            Ok(lab) => Some(lab),
            Err(e) if format!("{e:#}").contains("this kernel has no") => {
                eprintln!("skipped: {e:#}");
                None
            }
            Err(e) => panic!("lab up: {e:#}"),
        }
    }

    pub fn up(opts: LabOptions) -> Result<Self> {
        Self::cleanup_stale();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let base = format!("{PREFIX}{pid}x{n}");
        let mut lab = Lab {
            hv: format!("{base}-hv"),
            inet: format!("{base}-inet"),
            far: None,
            layout: opts.layout,
            fwbr_answers_arp: opts.fwbr_answers_arp,
            vlan: opts.vlan,
            uplink: opts.uplink,
            v6_setup: opts.v6,
            config_root: std::env::temp_dir().join(format!("{CONFIG_PREFIX}{pid}-{n}")),
            guest_bin: opts.guest_bin,
            guests: Vec::new(),
            bare_ports: Vec::new(),
            duplicate: None,
            resolver: None,
            saved_rp_filter: None,
            helpers: Vec::new(),
            filterrefs: Vec::new(),
        };
        // From here on, Drop removes whatever was created, even if a step fails.
        std::fs::create_dir_all(&lab.config_root)
            .with_context(|| format!("creating {}", lab.config_root.display()))?;
        lab.build()?;
        let inet = lab.inet.clone();
        let dns = lab.spawn_dns_server(&inet, "203.0.113.53:53")?;
        lab.helpers.push(dns);
        let dns6 = lab.spawn_dns_server(&inet, &format!("[{INET6_DNS}]:53"))?;
        lab.helpers.push(dns6);
        let services = lab.spawn_ready(
            &inet,
            &["services", "--tcp", SERVICE_TCP, "--udp", SERVICE_UDP],
            "the lab's TCP/UDP services",
        )?;
        lab.helpers.push(services);
        for spec in opts.guests {
            lab.add_guest(spec)?;
        }
        Ok(lab)
    }

    fn build(&mut self) -> Result<()> {
        let (hv, inet) = (self.hv.clone(), self.inet.clone());
        sh(&format!("ip netns add {hv} && ip netns add {inet}"))?;
        v6::no_dad(&hv)?;
        v6::no_dad(&inet)?;
        self.hv("ip link set lo up")?;
        self.inet("ip link set lo up")?;
        if self.layout == Layout::Bridged {
            return self.build_bridged();
        }
        self.hv(&format!(
            // A fixed MAC, as libvirt and Proxmox give their bridges: otherwise the
            // bridge takes its lowest port's MAC, and every new port with a lower
            // one changes it and flushes the host's neighbour table.
            "ip link add {br} address 02:00:00:00:01:01 type bridge stp_state 0 forward_delay 0 && \
             ip addr add 192.0.2.1/24 dev {br} && ip link set {br} up",
            br = self.bridge()
        ))?;
        sh(&format!(
            "ip link add eth0 netns {hv} type veth peer name isp0 netns {inet}"
        ))?;
        let (up, isp) = self.routed_uplink()?;
        self.hv(&format!(
            "ip addr add 198.51.100.2/24 dev {up} && ip link set {up} up && \
             ip route add default via 198.51.100.1 && sysctl -qw net.ipv4.ip_forward=1"
        ))?;
        self.inet(&format!(
            "ip addr add 198.51.100.1/24 dev {isp} && ip link set {isp} up && \
             ip addr add 203.0.113.8/32 dev lo && ip addr add 203.0.113.53/32 dev lo"
        ))?;
        self.build_v6_routed(&up, &isp)?;
        self.masquerade()?;
        if self.layout == Layout::Proxmox {
            // With br_netfilter, the bridged pass through fwbr creates and confirms
            // the connection without NAT; the routed pass from vmbr0 then finds it
            // and MASQUERADE never applies. Proxmox's admin guide (Masquerading)
            // says to put the fwbr pass in its own conntrack zone:
            // `iptables -t raw -I PREROUTING -i fwbr+ -j CT --zone 1`; here in nft.
            self.fwbr_conntrack_zone("ip")?;
        }
        self.write_configs()
    }

    /// Proxmox: the firewall bridges' pass in conntrack zone 1, for `family`
    /// (`ip`, or `ip6` where NAT66 applies).
    fn fwbr_conntrack_zone(&self, family: &str) -> Result<()> {
        self.nft(&format!(
            "add table {family} pve_conntrack\n\
             add chain {family} pve_conntrack prerouting {{ type filter hook prerouting priority raw; policy accept; }}\n\
             add rule {family} pve_conntrack prerouting iifname \"fwbr*\" ct zone set 1\n"
        ))
    }

    /// [`Layout::Bridged`]: vmbr0 holds the host's own address and bridges the
    /// guests to eno1, the LAN; the router 192.0.2.1 (the inet namespace) is
    /// everyone's gateway. The host pings it once, as a real host talks to its
    /// gateway: it knows the router's MAC, and vmbr0 learned it on eno1.
    fn build_bridged(&mut self) -> Result<()> {
        self.hv(&format!(
            "ip link add {BRIDGED_BR} address 02:00:00:00:01:02 type bridge stp_state 0 forward_delay 0 && \
             ip addr add 192.0.2.2/24 dev {BRIDGED_BR} && ip link set {BRIDGED_BR} up"
        ))?;
        let lan_dev = self.bridged_uplink()?;
        let port = self.uplink.port();
        self.hv(&format!(
            "ip link set {port} master {BRIDGED_BR} && ip link set {port} up && \
             ip route add default via 192.0.2.1 dev {BRIDGED_BR} && sysctl -qw net.ipv4.ip_forward=0"
        ))?;
        if let Some(vid) = self.vlan {
            self.hv(&format!(
                "ip link set {BRIDGED_BR} type bridge vlan_filtering 1"
            ))
            .context("this kernel has no bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING)")?;
            self.hv(&format!(
                "bridge vlan add dev {BRIDGED_BR} vid {vid} pvid untagged self && \
                 bridge vlan del dev {BRIDGED_BR} vid 1 self"
            ))?;
            self.vlan_access_port(&port, vid)?;
        }
        self.inet(&format!(
            "ip link set {lan_dev} address 02:00:00:00:02:01 && \
             ip addr add 192.0.2.1/24 dev {lan_dev} && ip link set {lan_dev} up && \
             ip addr add 203.0.113.8/32 dev lo && ip addr add 203.0.113.53/32 dev lo"
        ))?;
        self.build_v6_bridged(&lan_dev)?;
        // A bond needs its MII monitor (and 802.3ad its aggregator selection)
        // before it passes frames: one reply within 10 s.
        self.hv("ping -q -c 1 -w 10 192.0.2.1 >/dev/null")?;
        Ok(())
    }

    /// The wires between vmbr0's port toward the LAN (see [`Uplink`]) and the
    /// LAN, up to the router's device, which is returned (down, no address).
    fn bridged_uplink(&self) -> Result<String> {
        let (hv, inet) = (&self.hv, &self.inet);
        let veth = |nic: &str, lan: &str| {
            sh(&format!(
                "ip link add {nic} netns {hv} type veth peer name {lan} netns {inet}"
            ))
        };
        match self.uplink {
            Uplink::Nic => {
                veth(BRIDGED_UPLINK, "lan0")?;
                Ok("lan0".into())
            }
            Uplink::Bond(mode) => {
                self.hv(&format!(
                    "ip link add bond0 type bond mode {mode} miimon 100"
                ))
                .context("this kernel has no bonding (CONFIG_BONDING)")?;
                veth(BRIDGED_UPLINK, "lan1")?;
                veth("eno2", "lan2")?;
                self.hv(&format!(
                    "ip link set {BRIDGED_UPLINK} master bond0 && ip link set eno2 master bond0 && \
                     ip link set {BRIDGED_UPLINK} up && ip link set eno2 up"
                ))?;
                // The LAN's switch: both bond slaves' peers in one bridge with
                // the router's address; no LACP on its ports.
                self.inet(
                    "ip link add lansw type bridge stp_state 0 forward_delay 0 && \
                     ip link set lan1 master lansw && ip link set lan2 master lansw && \
                     ip link set lan1 up && ip link set lan2 up",
                )?;
                Ok("lansw".into())
            }
            Uplink::Vlan(vid) => {
                veth(BRIDGED_UPLINK, "lan0")?;
                self.hv(&format!(
                    "ip link add link {BRIDGED_UPLINK} name {BRIDGED_UPLINK}.{vid} type vlan id {vid}"
                ))
                .context("this kernel has no 802.1Q VLAN devices (CONFIG_VLAN_8021Q)")?;
                self.hv(&format!("ip link set {BRIDGED_UPLINK} up"))?;
                self.inet(&format!(
                    "ip link add link lan0 name lan0.{vid} type vlan id {vid} && ip link set lan0 up"
                ))?;
                Ok(format!("lan0.{vid}"))
            }
        }
    }

    /// The routed layouts' uplink: eth0, or with [`Uplink::Vlan`] the VLAN
    /// device eth0.VID on it (the host's address on a VLAN sub-interface, as
    /// Proxmox's `vmbr0.N`), and the ISP's side facing it. Both down.
    fn routed_uplink(&self) -> Result<(String, String)> {
        match self.uplink {
            Uplink::Vlan(vid) => {
                self.hv(&format!(
                    "ip link add link eth0 name eth0.{vid} type vlan id {vid}"
                ))
                .context("this kernel has no 802.1Q VLAN devices (CONFIG_VLAN_8021Q)")?;
                self.hv("ip link set eth0 up")?;
                self.inet(&format!(
                    "ip link add link isp0 name isp0.{vid} type vlan id {vid} && ip link set isp0 up"
                ))?;
                Ok((format!("eth0.{vid}"), format!("isp0.{vid}")))
            }
            Uplink::Nic => Ok(("eth0".into(), "isp0".into())),
            Uplink::Bond(_) => bail!("a bonded uplink is only built for the bridged layout"),
        }
    }

    /// The routed layouts' uplink device (the MASQUERADE rule's oifname).
    pub fn uplink_dev(&self) -> String {
        match self.uplink {
            Uplink::Vlan(vid) => format!("eth0.{vid}"),
            _ => "eth0".into(),
        }
    }

    /// `port` carries VLAN `vid` untagged as its PVID, and nothing else.
    fn vlan_access_port(&self, port: &str, vid: u16) -> Result<()> {
        self.hv(&format!(
            "bridge vlan add dev {port} vid {vid} pvid untagged && bridge vlan del dev {port} vid 1"
        ))
        .map(drop)
    }

    fn masquerade(&self) -> Result<()> {
        self.nft(&format!(
            "add table ip nat\n\
             add chain ip nat postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
             add rule ip nat postrouting oifname \"{}\" ip saddr 192.0.2.0/24 masquerade\n",
            self.uplink_dev()
        ))
    }

    /// A resolver on the hypervisor itself (192.0.2.1:53), as dnsmasq on a bridge.
    /// Does nothing when it already runs.
    pub fn start_host_resolver(&mut self) -> Result<()> {
        if self.resolver.is_some() {
            return Ok(());
        }
        let hv = self.hv.clone();
        self.resolver = Some(self.spawn_dns_server(&hv, "192.0.2.1:53")?);
        Ok(())
    }

    /// Stop the host resolver (dnsmasq dies); does nothing when none runs.
    pub fn stop_host_resolver(&mut self) {
        if let Some(mut c) = self.resolver.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn spawn_dns_server(&self, ns: &str, listen: &str) -> Result<Child> {
        self.spawn_ready(
            ns,
            &["dns-server", "--listen", listen],
            "the lab's DNS responder",
        )
    }

    /// Run the fake-guest binary with `args` in namespace `ns` and wait for its
    /// `{"ready":true}` line.
    fn spawn_ready(&self, ns: &str, args: &[&str], what: &str) -> Result<Child> {
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg(&self.guest_bin)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        let mut line = String::new();
        let read = child.stdout.take().context("dns stdout").and_then(|out| {
            std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line)
                .with_context(|| format!("reading {what}"))
        });
        if let Err(e) = read.and_then(|_| {
            if line.contains("\"ready\":true") {
                Ok(())
            } else {
                bail!("{what} failed: {line}")
            }
        }) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        Ok(child)
    }

    /// Add a guest: a persistent TAP port (named for the layout, see
    /// [`Layout::port_name`]) on the VM bridge, held open by a fake guest.
    pub fn add_guest(&mut self, spec: GuestSpec) -> Result<()> {
        let guest = self.plug(spec)?;
        self.guests.push(guest);
        self.write_configs()
    }

    /// A port for a guest that is not a fake guest (QEMU opens the TAP itself, as
    /// on a real hypervisor): the persistent TAP wired as the layout wires it, with
    /// no process holding it yet. Returns the spec with the port named for the
    /// layout. The port goes with the lab.
    pub fn add_port(&mut self, spec: GuestSpec) -> Result<GuestSpec> {
        let spec = self.create_port(spec)?;
        self.bare_ports.push(spec.clone());
        self.write_configs()?;
        Ok(spec)
    }

    fn plug(&self, spec: GuestSpec) -> Result<Guest> {
        let spec = self.create_port(spec)?;
        Guest::start(&self.guest_bin, &self.hv_netns_path(), spec)
    }

    fn create_port(&self, mut spec: GuestSpec) -> Result<GuestSpec> {
        spec.tap = self.layout.port_name(&spec.tap);
        spec.v6 = spec.v6.map(|v6| self.v6_setup.place(v6));
        let t = &spec.tap;
        match self.layout {
            Layout::Plain | Layout::Libvirt | Layout::Bridged => {
                self.hv(&format!(
                    "ip tuntap add dev {t} mode tap && ip link set {t} master {br} && ip link set {t} up",
                    br = self.bridge()
                ))?;
                if let Some(vid) = self.vlan {
                    self.vlan_access_port(t, vid)?;
                }
            }
            Layout::Proxmox => {
                let FwChain { fwbr, fwpr, fwln } = fw_chain(t)?;
                let arp_ignore = if self.fwbr_answers_arp { 0 } else { 1 };
                // arp_ignore=1 on fwbr: it has no address, but Linux answers ARP for
                // any local address on any interface, so fwbr would answer the
                // guest's ARP for its gateway 192.0.2.1 before vmbr0 does; the guest
                // keeps the first answer (Linux guests too, within their 1 s
                // locktime) and its traffic is then routed from fwbr, bypassing the
                // fwln/fwpr pair and vmbr0.
                self.hv(&format!(
                    "ip link add {fwbr} type bridge stp_state 0 forward_delay 0 && \
                     sysctl -qw net.ipv4.conf.{fwbr}.arp_ignore={arp_ignore} && \
                     ip link set {fwbr} up && \
                     ip link add {fwpr} type veth peer name {fwln} && \
                     ip link set {fwpr} master {br} && ip link set {fwln} master {fwbr} && \
                     ip link set {fwpr} up && ip link set {fwln} up && \
                     ip tuntap add dev {t} mode tap && ip link set {t} master {fwbr} && \
                     ip link set {t} up",
                    br = self.bridge()
                ))?;
            }
        };
        self.wire_guest6(&spec)?;
        Ok(spec)
    }

    /// Remove a port and what the layout built around it; best effort.
    fn unplug(&self, tap: &str) -> Result<()> {
        let mut cmd = format!("ip link del {tap}");
        if self.layout == Layout::Proxmox {
            let FwChain { fwbr, fwln, .. } = fw_chain(tap)?;
            // Deleting fwln deletes its peer fwpr too.
            write!(cmd, "; ip link del {fwln}; ip link del {fwbr}")?;
        }
        self.hv(&format!("{{ {cmd}; }} 2>/dev/null; true"))
            .map(drop)
    }

    /// Like a VM reboot: guest `i` goes away with its port, and both come back
    /// (the port under a new interface index).
    pub fn recreate_port(&mut self, i: usize) -> Result<()> {
        let spec = self.guests[i].spec.clone();
        drop(self.guests.remove(i));
        self.unplug(&spec.tap)?;
        let guest = self.plug(spec)?;
        self.guests.insert(i, guest);
        self.write_configs()
    }

    /// Like a VM's process exiting while its persistent TAP stays (or a TAP made
    /// before its VM starts): guest `i` goes away, its port stays, without
    /// carrier. Returns what [`Lab::start_guest`] needs to bring it back.
    pub fn stop_guest(&mut self, i: usize) -> GuestSpec {
        let guest = self.guests.remove(i);
        let spec = guest.spec.clone();
        drop(guest);
        spec
    }

    /// A VM starting on its existing port (see [`Lab::stop_guest`]): it takes the
    /// TAP (carrier comes up) and resolves its gateway. It becomes the last guest.
    pub fn start_guest(&mut self, spec: GuestSpec) -> Result<()> {
        let guest = Guest::start(&self.guest_bin, &self.hv_netns_path(), spec)?;
        self.guests.push(guest);
        Ok(())
    }

    /// Like a VM shut down: guest `i` goes away with its port (and, Proxmox too, its
    /// config: the lab's config files describe the running guests).
    pub fn remove_guest(&mut self, i: usize) -> Result<()> {
        let guest = self.guests.remove(i);
        let tap = guest.spec.tap.clone();
        drop(guest);
        self.hv(&format!("ip link del {tap}"))?;
        if self.layout == Layout::Proxmox {
            self.unplug(&tap)?;
        }
        self.write_configs()
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The VM bridge (vmbr0 or virbr0), the one holding 192.0.2.1.
    pub fn bridge(&self) -> &'static str {
        self.layout.bridge()
    }

    /// Guest `i`'s TAP device (tap100i0, vnet0, ...).
    pub fn port(&self, i: usize) -> &str {
        &self.guests[i].spec.tap
    }

    /// Guest `i`'s NIC as plugged (its `tap` named for the layout).
    pub fn guest_spec(&self, i: usize) -> &GuestSpec {
        &self.guests[i].spec
    }

    /// The bridge guest `i`'s TAP is a port of: the VM bridge, or its fwbr.
    pub fn port_bridge(&self, i: usize) -> String {
        self.tap_master(self.port(i))
    }

    fn tap_master(&self, tap: &str) -> String {
        match (self.layout, fw_chain(tap)) {
            (Layout::Proxmox, Ok(chain)) => chain.fwbr,
            _ => self.bridge().to_string(),
        }
    }

    /// A temporary directory standing for the hypervisor's `/`, holding its config
    /// files (`etc/pve/...` or `run/libvirt/...`); removed on drop.
    pub fn config_root(&self) -> PathBuf {
        self.config_root.clone()
    }

    pub fn hv_ns(&self) -> &str {
        &self.hv
    }

    pub fn inet_ns(&self) -> &str {
        &self.inet
    }

    pub fn hv_netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.hv)
    }

    pub fn guest(&mut self, i: usize) -> &mut Guest {
        &mut self.guests[i]
    }

    /// Run a shell command in the hypervisor namespace; its stdout, or an error
    /// carrying its stderr.
    pub fn hv(&self, cmd: &str) -> Result<String> {
        in_netns(&self.hv, cmd)
    }

    pub fn inet(&self, cmd: &str) -> Result<String> {
        in_netns(&self.inet, cmd)
    }

    /// Load an nft script in the hypervisor namespace (`nft -f -`).
    pub fn nft(&self, script: &str) -> Result<()> {
        self.nft_with(&["-f", "-"], script)
    }

    /// Load an nft JSON batch (`nft -j -f -`), as rule-set generators such as
    /// Proxmox's proxmox-firewall emit them.
    pub fn nft_json(&self, batch: &str) -> Result<()> {
        // `nft -j -f -` opens /dev/stdin by name, which a minimal /dev (the VM
        // runner's) lacks: hand it a file in the lab's own directory.
        let file = self.config_root.join("nft-batch.json");
        write_file(&file, batch)?;
        let file = file.display().to_string();
        self.nft_with(&["-j", "-f", &file], "")
    }

    fn nft_with(&self, args: &[&str], script: &str) -> Result<()> {
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.hv))
            .arg("nft")
            .args(args)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        // nft may stop reading at its first error: its own message says more
        // than the broken pipe.
        let written = std::io::Write::write_all(
            child.stdin.as_mut().context("nft stdin")?,
            script.as_bytes(),
        );
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "nft {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(written?)
    }

    /// `program args...` to be run inside the hypervisor namespace.
    pub fn command_in_hv(&self, program: &Path, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.hv_netns_path().display()))
            .arg(program)
            .args(args);
        c
    }

    /// Unrelated drops on the hypervisor while a trace runs: datagrams from the
    /// internet side to a closed port of the host (dropped, NO_SOCKET) and the host
    /// itself pinging the traced destination. Bounded in count and time; stops when
    /// the handle drops.
    pub fn noise(&mut self, duration: Duration) -> Result<NoiseHandle> {
        let secs = duration.as_secs().max(1);
        let udp = spawn_in(
            &self.inet,
            &format!(
                "end=$(( $(date +%s) + {secs} )); i=0; \
                 while [ $i -lt 2000 ] && [ $(date +%s) -lt $end ]; do \
                 echo x > /dev/udp/198.51.100.2/9; i=$((i+1)); sleep 0.01; done"
            ),
        )?;
        let ping = spawn_in(
            &self.hv,
            &format!(
                "ping -q -c {} -i 0.2 -w {secs} 203.0.113.8 >/dev/null",
                secs * 5
            ),
        )?;
        Ok(NoiseHandle {
            children: vec![udp, ping],
        })
    }

    /// Remove labs whose creating process is gone (a killed test run): their
    /// namespaces and config directories.
    pub fn cleanup_stale() {
        cleanup_stale_netns(PREFIX);
        cleanup_stale_config_dirs();
    }
}

/// `guest{n}` for VM 100+n.
fn guest_name(vmid: u32) -> String {
    match vmid.checked_sub(100) {
        Some(n) => format!("guest{n}"),
        None => format!("vm{vmid}"),
    }
}

fn recreate_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Remove `{temp}/ptlab-{pid}-{n}` directories whose creating process is gone.
fn cleanup_stale_config_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(CONFIG_PREFIX) else {
            continue;
        };
        let Some((pid, n)) = rest.split_once('-') else {
            continue;
        };
        if pid.parse::<u32>().is_err() || n.parse::<u32>().is_err() {
            continue;
        }
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.guests.clear();
        self.duplicate = None;
        self.stop_host_resolver();
        for c in &mut self.helpers {
            let _ = c.kill();
            let _ = c.wait();
        }
        remove_netns(&self.hv);
        remove_netns(&self.inet);
        if let Some(far) = &self.far {
            remove_netns(far);
        }
        let _ = std::fs::remove_dir_all(&self.config_root);
    }
}

pub struct NoiseHandle {
    children: Vec<Child>,
}

impl Drop for NoiseHandle {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
