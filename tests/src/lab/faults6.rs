//! IPv6 faults planted on purpose, the way real hosts break, and their exact
//! repair (beside faults.rs's IPv4 ones). Those about a guest act on guest 0.
//!
//! Measured on 6.18 (tests/tests/lab_v6.rs keeps it true): the per-interface
//! `net.ipv6.conf.IF.forwarding` does NOT gate forwarding (only `all` does, and
//! `force_forwarding` on 6.17+); `vmbr0.forwarding=0` alone leaves the guests'
//! traffic forwarded. What breaks is the IPv4 habit the other way round:
//! `all.forwarding=0` with forwarding "on" per interface.

use anyhow::{bail, Context, Result};

use super::v6::{V6Setup, NAT66_NET};
use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault6 {
    /// net.ipv6.conf.all.forwarding=0 (which turns every interface's off too).
    ForwardingOff,
    /// all.forwarding=0, but forwarding=1 on the VM bridge and the uplink, as
    /// one sets it for IPv4: IPv6 forwards nothing.
    ForwardingOnlyPerInterface,
    /// net.ipv6.conf.BRIDGE.forwarding=0 only. The kernel still forwards
    /// (measured): it breaks nothing for statically configured guests; the
    /// host's advertisements on the bridge lose their Router flag.
    BridgeForwardingOff,
    /// net.ipv6.conf.UPLINK.forwarding=0 only: forwarding goes on, but the
    /// kernel answers proxied solicitations only on an interface that
    /// forwards, so [`V6Setup::NdpProxy`] breaks (the replies never come;
    /// the provider's router forgot the answer it had).
    UplinkForwardingOff,
    /// The host's IPv6 default route is gone (routed layouts).
    NoDefaultRoute,
    /// The guests' gateway address is gone from where it lived (an interfaces
    /// file reloaded without its inet6 stanza): the VM bridge (routed layouts)
    /// or the LAN router (bridged). Nobody answers the guest's solicitation;
    /// guest 0 forgets its neighbours, as a stale entry is probed again.
    GatewayAddressGone,
    /// The provider's router lost 2001:db8:2::1: it no longer answers the
    /// host's solicitation; the host's neighbour entries on the uplink are
    /// flushed (routed layouts).
    UplinkRouterSilent,
    /// ip6tables-legacy: a FORWARD rule drops guest 0's address.
    Ip6tablesForwardDrop,
    /// nftables `inet` family: a forward rule drops guest 0's address.
    NftInetForwardDrop,
    /// nftables `ip6` family: a forward rule drops guest 0's address.
    NftIp6ForwardDrop,
    /// The host's input chain drops ICMPv6 echo requests (the guest pings the
    /// host's own address).
    HostInputEchoDrop,
    /// The host's uplink (and the provider's side) at MTU 1400: the host sends
    /// Packet Too Big for larger packets (routed layouts).
    UplinkMtuStep,
    /// The far network's link at MTU 1400 (`add_remote_network` first): the
    /// provider's router sends Packet Too Big.
    RemoteMtuStep,
    /// A forward rule drops DNS replies from 2001:db8:ffff::53.
    DnsReplyDropped,
    /// [`V6Setup::NdpProxy`]: the proxy entry for guest 0 is gone from the
    /// uplink (and the provider's router forgot the answer it had).
    NdpProxyEntryMissing,
    /// [`V6Setup::NdpProxy`]: net.ipv6.conf.UPLINK.proxy_ndp=0 (and the
    /// provider's router forgot the answer it had).
    ProxyNdpOff,
    /// [`V6Setup::Nat66`]: the IPv6 masquerade is gone.
    NoNat66,
}

/// Tables the nft faults own: each fault adds one and its repair deletes it.
const T_FORWARD: &str = "inet v6_forward";
const T_IP6: &str = "ip6 filter";
const T_INPUT: &str = "inet v6_input";
const T_DNS: &str = "inet v6_dns";

impl Lab {
    pub fn break_path6(&mut self, fault: Fault6) -> Result<()> {
        let (br, up) = (self.bridge(), self.uplink_dev());
        match fault {
            Fault6::ForwardingOff => self.set_all_forwarding(false),
            Fault6::ForwardingOnlyPerInterface => {
                self.set_all_forwarding(false)?;
                self.hv(&format!(
                    "sysctl -qw net.ipv6.conf.{br}.forwarding=1 net.ipv6.conf.{up}.forwarding=1"
                ))
                .map(drop)
            }
            Fault6::BridgeForwardingOff => {
                self.routed_only(fault)?;
                self.set_if_forwarding(br, false)
            }
            Fault6::UplinkForwardingOff => {
                self.routed_only(fault)?;
                self.set_if_forwarding(&up, false)?;
                let ip = self.guest6()?;
                self.forget_on_isp(ip)
            }
            Fault6::NoDefaultRoute => {
                self.routed_only(fault)?;
                self.hv(&format!("ip -6 route del default via {ISP6} dev {up}"))
                    .map(drop)
            }
            Fault6::GatewayAddressGone => {
                let (gw, prefix) = self.gateway6();
                self.gateway6_holder(&format!("ip -6 addr del {gw}/{prefix} dev"))?;
                self.guest(0).flush_neighbours()
            }
            Fault6::UplinkRouterSilent => {
                self.routed_only(fault)?;
                let isp = self.isp_dev();
                self.inet(&format!("ip -6 addr del {ISP6}/64 dev {isp}"))?;
                self.hv(&format!("ip -6 neigh flush dev {up}")).map(drop)
            }
            Fault6::Ip6tablesForwardDrop => {
                let ip = self.guest6()?;
                // -w: the xtables lock is machine-wide, other labs may hold it.
                self.hv(&format!("ip6tables-legacy -w -I FORWARD -s {ip} -j DROP"))
                    .map(drop)
            }
            Fault6::NftInetForwardDrop => {
                let ip = self.guest6()?;
                self.nft_hook_rule(T_FORWARD, "forward", &format!("ip6 saddr {ip} drop"))
            }
            Fault6::NftIp6ForwardDrop => {
                let ip = self.guest6()?;
                self.nft_hook_rule(T_IP6, "forward", &format!("ip6 saddr {ip} drop"))
            }
            Fault6::HostInputEchoDrop => {
                self.nft_hook_rule(T_INPUT, "input", "icmpv6 type echo-request drop")
            }
            Fault6::UplinkMtuStep => {
                self.routed_only(fault)?;
                self.set_uplink_mtu(1400)
            }
            Fault6::RemoteMtuStep => self.set_remote_mtu(1400),
            Fault6::DnsReplyDropped => self.nft_hook_rule(
                T_DNS,
                "forward",
                &format!("ip6 saddr {INET6_DNS} udp sport 53 drop"),
            ),
            Fault6::NdpProxyEntryMissing => {
                self.setup_only(fault, V6Setup::NdpProxy)?;
                let ip = self.guest6()?;
                self.hv(&format!("ip -6 neigh del proxy {ip} dev {up}"))?;
                self.forget_on_isp(ip)
            }
            Fault6::ProxyNdpOff => {
                self.setup_only(fault, V6Setup::NdpProxy)?;
                let ip = self.guest6()?;
                self.hv(&format!("sysctl -qw net.ipv6.conf.{up}.proxy_ndp=0"))?;
                self.forget_on_isp(ip)
            }
            Fault6::NoNat66 => {
                self.setup_only(fault, V6Setup::Nat66)?;
                self.nft("delete table ip6 nat\n")
            }
        }
    }

    pub fn repair6(&mut self, fault: Fault6) -> Result<()> {
        let up = self.uplink_dev();
        match fault {
            // Writing `all` sets every interface's value too, as before the break.
            Fault6::ForwardingOff | Fault6::ForwardingOnlyPerInterface => {
                self.set_all_forwarding(true)
            }
            Fault6::BridgeForwardingOff => {
                let br = self.bridge();
                self.set_if_forwarding(br, true)
            }
            Fault6::UplinkForwardingOff => self.set_if_forwarding(&up, true),
            Fault6::NoDefaultRoute => self
                .hv(&format!("ip -6 route add default via {ISP6} dev {up}"))
                .map(drop),
            Fault6::GatewayAddressGone => {
                let (gw, prefix) = self.gateway6();
                self.gateway6_holder(&format!("ip -6 addr add {gw}/{prefix} nodad dev"))
            }
            Fault6::UplinkRouterSilent => {
                let isp = self.isp_dev();
                self.inet(&format!("ip -6 addr add {ISP6}/64 dev {isp} nodad"))?;
                // Forget the FAILED entry rather than wait for it to age.
                self.hv(&format!("ip -6 neigh flush dev {up}")).map(drop)
            }
            Fault6::Ip6tablesForwardDrop => {
                let ip = self.guest6()?;
                self.hv(&format!("ip6tables-legacy -w -D FORWARD -s {ip} -j DROP"))
                    .map(drop)
            }
            Fault6::NftInetForwardDrop => self.nft(&format!("delete table {T_FORWARD}\n")),
            Fault6::NftIp6ForwardDrop => self.nft(&format!("delete table {T_IP6}\n")),
            Fault6::HostInputEchoDrop => self.nft(&format!("delete table {T_INPUT}\n")),
            Fault6::UplinkMtuStep => self.set_uplink_mtu(1500),
            Fault6::RemoteMtuStep => self.set_remote_mtu(1500),
            Fault6::DnsReplyDropped => self.nft(&format!("delete table {T_DNS}\n")),
            Fault6::NdpProxyEntryMissing => {
                let ip = self.guest6()?;
                self.hv(&format!("ip -6 neigh add proxy {ip} dev {up}"))
                    .map(drop)
            }
            Fault6::ProxyNdpOff => self
                .hv(&format!("sysctl -qw net.ipv6.conf.{up}.proxy_ndp=1"))
                .map(drop),
            Fault6::NoNat66 => self.masquerade6(),
        }
    }

    fn routed_only(&self, fault: Fault6) -> Result<()> {
        if self.layout == Layout::Bridged {
            bail!("{fault:?}: the bridged host routes nothing for its guests");
        }
        Ok(())
    }

    fn setup_only(&self, fault: Fault6, setup: V6Setup) -> Result<()> {
        if self.v6_setup != setup {
            bail!("{fault:?} needs a lab built with V6Setup::{setup:?}");
        }
        Ok(())
    }

    /// Guest 0's IPv6 address.
    fn guest6(&self) -> Result<std::net::Ipv6Addr> {
        Ok(self
            .first_guest()?
            .v6
            .context("guest 0 has no IPv6 address")?
            .ip)
    }

    fn set_all_forwarding(&self, on: bool) -> Result<()> {
        self.hv(&format!(
            "sysctl -qw net.ipv6.conf.all.forwarding={}",
            u8::from(on)
        ))
        .map(drop)
    }

    /// Forwarding on one interface; repaired to on, as the routed layouts have
    /// it on every interface (through `all`).
    fn set_if_forwarding(&self, dev: &str, on: bool) -> Result<()> {
        self.hv(&format!(
            "sysctl -qw net.ipv6.conf.{dev}.forwarding={}",
            u8::from(on)
        ))
        .map(drop)
    }

    /// The guests' gateway address and prefix length in this lab's setup.
    fn gateway6(&self) -> (std::net::Ipv6Addr, u8) {
        let g = self
            .v6_setup
            .place(GuestSpec::nth(0).v6.expect("nth has IPv6"));
        let prefix = if g.gateway.is_unicast_link_local() {
            64
        } else {
            g.prefix
        };
        (g.gateway, prefix)
    }

    /// Run `cmd DEV` where the guests' gateway address lives: the VM bridge, or
    /// the LAN router's device (bridged layout).
    fn gateway6_holder(&self, cmd: &str) -> Result<()> {
        match self.layout {
            Layout::Bridged => self.inet(&format!("{cmd} {}", self.lan_dev())),
            _ => self.hv(&format!("{cmd} {}", self.bridge())),
        }
        .map(drop)
    }

    /// A table of its own with one base chain on `hook` holding `rule`.
    fn nft_hook_rule(&self, table: &str, hook: &str, rule: &str) -> Result<()> {
        self.nft(&format!(
            "add table {table}\n\
             add chain {table} {hook} {{ type filter hook {hook} priority filter; policy accept; }}\n\
             add rule {table} {hook} {rule}\n"
        ))
    }

    fn set_uplink_mtu(&self, mtu: u32) -> Result<()> {
        self.hv(&format!("ip link set {} mtu {mtu}", self.uplink_dev()))?;
        self.inet(&format!("ip link set {} mtu {mtu}", self.isp_dev()))
            .map(drop)
    }

    /// The provider's router forgets `ip` (its entry would age out the same way).
    fn forget_on_isp(&self, ip: std::net::Ipv6Addr) -> Result<()> {
        self.inet(&format!(
            "ip -6 neigh del {ip} dev {} 2>/dev/null; true",
            self.isp_dev()
        ))
        .map(drop)
    }

    /// NAT66 for the guests' prefix out of the uplink ([`V6Setup::Nat66`]).
    pub(super) fn masquerade6(&self) -> Result<()> {
        self.nft(&format!(
            "add table ip6 nat\n\
             add chain ip6 nat postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
             add rule ip6 nat postrouting oifname \"{}\" ip6 saddr {NAT66_NET} masquerade\n",
            self.uplink_dev()
        ))
    }
}
