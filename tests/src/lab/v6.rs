//! The lab's IPv6 (documentation prefix 2001:db8::/32 only), beside its IPv4;
//! the addresses are listed in mod.rs's header. Static addressing: no router
//! advertisements. Duplicate address detection is off in the lab's namespaces
//! (`accept_dad=0` for all and new interfaces, `nodad` on each address), so an
//! address is usable at once instead of after about 2 s.

use std::net::Ipv6Addr;

use anyhow::Result;

use super::{netns::in_netns, Lab, BRIDGED_BR};

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
        self.hv(&format!(
            "ip -6 addr add {GATEWAY6}/64 dev {br} nodad && \
             ip -6 addr add {UPLINK6}/64 dev {up} nodad && \
             ip -6 route add default via {ISP6} dev {up} && \
             sysctl -qw net.ipv6.conf.all.forwarding=1",
            br = self.bridge()
        ))?;
        self.inet(&format!(
            "ip -6 addr add {ISP6}/64 dev {isp} nodad && \
             ip -6 route add {GUEST_NET6} via {UPLINK6} dev {isp}"
        ))?;
        self.inet_hosts6()
    }

    /// Bridged layout: the LAN's router `lan_dev` is the guests' gateway and the
    /// host's; the host holds its own address on vmbr0 and forwards nothing.
    pub(super) fn build_v6_bridged(&self, lan_dev: &str) -> Result<()> {
        self.hv(&format!(
            "ip -6 addr add {BRIDGED_HOST6}/64 dev {BRIDGED_BR} nodad && \
             ip -6 route add default via {GATEWAY6} dev {BRIDGED_BR} && \
             sysctl -qw net.ipv6.conf.all.forwarding=0"
        ))?;
        self.inet(&format!("ip -6 addr add {GATEWAY6}/64 dev {lan_dev} nodad"))?;
        self.inet_hosts6()
    }

    fn inet_hosts6(&self) -> Result<()> {
        self.inet(&format!(
            "ip -6 addr add {INET6_HOST}/128 dev lo && ip -6 addr add {INET6_DNS}/128 dev lo"
        ))
        .map(drop)
    }
}
