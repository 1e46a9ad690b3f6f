//! The lab's IPv6 (documentation prefix 2001:db8::/32 only), beside its IPv4;
//! the addresses are listed in mod.rs's header. Static addressing: no router
//! advertisements. Duplicate address detection is off in the lab's namespaces
//! (`accept_dad=0` for all and new interfaces, `nodad` on each address), so an
//! address is usable at once instead of after about 2 s.

use std::net::Ipv6Addr;

use anyhow::{bail, Result};

use super::{netns::in_netns, GuestSpec, GuestV6, Lab, Layout, Uplink, BRIDGED_BR};

/// The internet's hosts on the inet namespace's lo: a pingable host and the
/// DNS responder (which answers AAAA with [`INET6_HOST`]).
pub const INET6_HOST: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 8);
pub const INET6_DNS: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 0x53);
/// The guests' gateway: the VM bridge (routed layouts) or the LAN's router
/// (bridged layout).
pub const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
/// The host's uplink and the provider's router facing it (routed layouts).
pub const UPLINK6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 2);
pub const ISP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);
/// The guests' /64 (routed to the host by the provider).
pub const GUEST_NET6: &str = "2001:db8:1::/64";
/// The bridged layout: the host's own address on vmbr0.
pub const BRIDGED_HOST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
/// [`V6Setup::Nat66`]: the guests' prefix, which nobody routes back (it plays
/// a ULA prefix: fd00::/8 is not a documentation prefix), and their gateway.
pub const NAT66_NET: &str = "2001:db8:99::/64";
const NAT66_GATEWAY: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x99, 0, 0, 0, 0, 1);
/// [`V6Setup::NdpProxy`]: the guests' gateway, a link-local address on the VM
/// bridge (as hosting providers' guides configure it).
pub const NDP_PROXY_GATEWAY: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// The far network ([`Lab::add_remote_network`]): the provider's router far0
/// 2001:db8:3::1/64 ══ wan0 2001:db8:3::2/64, its host on lo.
pub const REMOTE_HOST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xfffe, 0, 0, 0, 0, 0x80);
const FAR_ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 1);
const FAR_WAN6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 2);

/// How the provider delivers the guests' IPv6 (routed layouts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum V6Setup {
    /// The provider routes 2001:db8:1::/64 to the host; guests in it, their
    /// gateway 2001:db8:1::1 on the VM bridge.
    #[default]
    Routed,
    /// Guests in 2001:db8:99::/64 (gateway 2001:db8:99::1 on the VM bridge),
    /// which the provider does not route back: the host masquerades them out
    /// of the uplink (`ip6 nat`).
    Nat66,
    /// The provider treats 2001:db8:2::/64 as on-link on the uplink and
    /// routes nothing: guests take addresses from it behind the VM bridge
    /// (gateway fe80::1 on it), and the host answers the provider's
    /// solicitations for them (`proxy_ndp=1` on the uplink, an
    /// `ip -6 neigh add proxy ADDR dev UPLINK` entry and a /128 route to the
    /// bridge per guest).
    NdpProxy,
}

impl V6Setup {
    /// A guest's address in this setup: its interface id (the low 64 bits)
    /// in the setup's prefix, with the setup's gateway.
    pub fn place(self, g: GuestV6) -> GuestV6 {
        let (net, gateway) = match self {
            V6Setup::Routed => (GATEWAY6, GATEWAY6),
            V6Setup::Nat66 => (NAT66_GATEWAY, NAT66_GATEWAY),
            V6Setup::NdpProxy => (UPLINK6, NDP_PROXY_GATEWAY),
        };
        let low = u128::from(g.ip) & u128::from(u64::MAX);
        let high = u128::from(net) & !u128::from(u64::MAX);
        GuestV6 {
            ip: Ipv6Addr::from(high | low),
            prefix: 64,
            gateway,
        }
    }
}

/// Wait (at most 3 s) until namespace `ns` has no tentative IPv6 address. Even
/// without DAD an address is tentative until the kernel's address work runs,
/// shortly after `ip addr add` returns; binding to it before fails
/// (EADDRNOTAVAIL), as the lab's DNS responder did on a loaded machine.
pub(super) fn wait_addresses_usable(ns: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let tentative = in_netns(ns, "ip -6 addr show tentative")?;
        if tentative.trim().is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            bail!("IPv6 addresses still tentative in {ns} after 3 s: {tentative}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// No duplicate address detection in namespace `ns`, for interfaces made from
/// now on (`default`) and through `all` (the kernel skips DAD when both are 0).
pub(super) fn no_dad(ns: &str) -> Result<()> {
    in_netns(
        ns,
        "sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0",
    )
    .map(drop)
}

impl Lab {
    /// Routed layouts: the guests' gateway on the VM bridge, the uplink `up`
    /// facing the provider's `isp`, the default route via the provider, and
    /// forwarding on (in the hv namespace only). The provider routes the
    /// guests' /64 to the host: no NAT66.
    pub(super) fn build_v6_routed(&self, up: &str, isp: &str) -> Result<()> {
        let br = self.bridge();
        self.hv(&format!(
            "ip -6 addr add {GATEWAY6}/64 dev {br} nodad && \
             ip -6 addr add {UPLINK6}/64 dev {up} nodad && \
             ip -6 route add default via {ISP6} dev {up} && \
             sysctl -qw net.ipv6.conf.all.forwarding=1"
        ))?;
        self.inet(&format!(
            "ip -6 addr add {ISP6}/64 dev {isp} nodad && \
             ip -6 route add {GUEST_NET6} via {UPLINK6} dev {isp}"
        ))?;
        self.inet_hosts6()?;
        self.build_v6_setup(br, up)?;
        self.addresses_usable6()
    }

    /// What [`V6Setup::Nat66`] and [`V6Setup::NdpProxy`] add to the routed host.
    fn build_v6_setup(&self, br: &str, up: &str) -> Result<()> {
        match self.v6_setup {
            V6Setup::Routed => Ok(()),
            V6Setup::Nat66 => {
                self.hv(&format!("ip -6 addr add {NAT66_GATEWAY}/64 dev {br} nodad"))?;
                if self.layout == Layout::Proxmox {
                    // The fwbr pass in its own conntrack zone, as for IPv4 (see build).
                    self.fwbr_conntrack_zone("ip6")?;
                }
                self.masquerade6()
            }
            V6Setup::NdpProxy => self
                .hv(&format!(
                    "ip -6 addr add {NDP_PROXY_GATEWAY}/64 dev {br} nodad && \
                     sysctl -qw net.ipv6.conf.{up}.proxy_ndp=1"
                ))
                .map(drop),
        }
    }

    /// A guest's port is made: in the NDP-proxy setup, the host routes its
    /// address to the VM bridge and answers for it on the uplink.
    pub(super) fn wire_guest6(&self, spec: &GuestSpec) -> Result<()> {
        let Some(v6) = spec.v6 else {
            return Ok(());
        };
        if self.v6_setup != V6Setup::NdpProxy {
            return Ok(());
        }
        self.hv(&format!(
            "ip -6 route replace {ip}/128 dev {br} && \
             ip -6 neigh replace proxy {ip} dev {up}",
            ip = v6.ip,
            br = self.bridge(),
            up = self.uplink_dev()
        ))
        .map(drop)
    }

    /// Bridged layout: the LAN's router `lan_dev` is the guests' gateway and the
    /// host's; the host holds its own address on vmbr0 and forwards nothing.
    pub(super) fn build_v6_bridged(&self, lan_dev: &str) -> Result<()> {
        if self.v6_setup != V6Setup::Routed {
            bail!(
                "the bridged layout has no {:?} setup: the LAN's router owns the prefix",
                self.v6_setup
            );
        }
        self.hv(&format!(
            "ip -6 addr add {BRIDGED_HOST6}/64 dev {BRIDGED_BR} nodad && \
             ip -6 route add default via {GATEWAY6} dev {BRIDGED_BR} && \
             sysctl -qw net.ipv6.conf.all.forwarding=0"
        ))?;
        self.inet(&format!("ip -6 addr add {GATEWAY6}/64 dev {lan_dev} nodad"))?;
        self.inet_hosts6()?;
        self.addresses_usable6()
    }

    fn inet_hosts6(&self) -> Result<()> {
        self.inet(&format!(
            "ip -6 addr add {INET6_HOST}/128 dev lo nodad && ip -6 addr add {INET6_DNS}/128 dev lo nodad"
        ))
        .map(drop)
    }

    /// Every IPv6 address of both namespaces usable (none tentative).
    fn addresses_usable6(&self) -> Result<()> {
        wait_addresses_usable(&self.hv)?;
        wait_addresses_usable(&self.inet)
    }
}

impl Lab {
    /// The provider's side of the uplink (routed layouts): isp0 or isp0.VID.
    pub(super) fn isp_dev(&self) -> String {
        match self.uplink {
            Uplink::Vlan(vid) => format!("isp0.{vid}"),
            _ => "isp0".into(),
        }
    }

    /// The LAN router's device holding the guests' gateway (bridged layout).
    pub(super) fn lan_dev(&self) -> String {
        match self.uplink {
            Uplink::Nic => "lan0".into(),
            Uplink::Bond(_) => "lansw".into(),
            Uplink::Vlan(vid) => format!("lan0.{vid}"),
        }
    }

    /// The far network's IPv6: `far0` in the inet namespace (which forwards
    /// IPv6 from now on) and `wan0` in `far`, [`REMOTE_HOST6`] on far's lo.
    pub(super) fn add_remote_network6(&self, far: &str) -> Result<()> {
        self.inet(&format!(
            "sysctl -qw net.ipv6.conf.all.forwarding=1 && \
             ip -6 addr add {FAR_ROUTER6}/64 dev far0 nodad && \
             ip -6 route add {REMOTE_HOST6}/128 via {FAR_WAN6} dev far0"
        ))?;
        in_netns(
            far,
            &format!(
                "ip -6 addr add {REMOTE_HOST6}/128 dev lo nodad && \
                 ip -6 addr add {FAR_WAN6}/64 dev wan0 nodad && \
                 ip -6 route add default via {FAR_ROUTER6} dev wan0"
            ),
        )?;
        wait_addresses_usable(far)
    }

    /// The far network's link MTU (both ends).
    pub(super) fn set_remote_mtu(&self, mtu: u32) -> Result<()> {
        let Some(far) = &self.far else {
            bail!("no far network: call add_remote_network first");
        };
        self.inet(&format!("ip link set far0 mtu {mtu}"))?;
        in_netns(far, &format!("ip link set wan0 mtu {mtu}")).map(drop)
    }
}
