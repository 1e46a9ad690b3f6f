//! An IPv6 request that left the uplink with the guest's own source and got
//! no answer: IPv6 needs no translation when the provider routes the guests'
//! prefix to this host, so the host names what it can tell — the source was
//! not translated (no ip6 nat masquerade/snat covered it) and is not in the
//! uplink's on-link prefix (that case is proxy NDP's) — and what it cannot:
//! whether the provider routes the prefix here. A unique-local source
//! (fc00::/7) is never routed on the internet: there NAT66 is certainly missing.

use std::net::{IpAddr, Ipv6Addr};

use super::Explainer;
use crate::host::{in_prefix6, is_link_local6, Host};

/// What the host can tell about an untranslated IPv6 source.
pub(super) struct Untranslated {
    pub prefix: String,
    /// A unique-local source: nobody beyond this host routes it back.
    pub certain: bool,
}

impl Explainer {
    /// The guest's source left `up` untranslated and off the uplink's link.
    pub(super) fn untranslated6(&self, src: IpAddr, up: &str) -> Option<Untranslated> {
        let IpAddr::V6(src) = src else {
            return None;
        };
        if IpAddr::V6(src) != self.topo.vm_ip || self.topo.uplink_addrs.contains(&src.into()) {
            return None;
        }
        let host = Host::read().ok()?;
        let onlink = host
            .inet6_addrs(up)
            .iter()
            .filter_map(|a| a.v6())
            .any(|(ip, len)| !is_link_local6(ip) && in_prefix6(src, ip, len));
        if onlink {
            return None;
        }
        Some(Untranslated {
            prefix: self.vm_net(),
            certain: is_unique_local(src),
        })
    }

    /// The guest's own source `src` lies in the uplink's on-link prefix and
    /// the host does not answer the provider's solicitations for it: the
    /// doctor's failed `proxy_ndp` check.
    pub(super) fn unanswered_ndp(&self, src: IpAddr) -> Option<crate::output::Check> {
        let IpAddr::V6(vm) = src else {
            return None;
        };
        if src != self.topo.vm_ip {
            return None;
        }
        let up = self.topo.uplink.as_ref()?;
        self.findings
            .proxy_ndp(vm, &up.name)
            .filter(|c| c.status == crate::output::Status::Fail)
    }
}

fn is_unique_local(ip: Ipv6Addr) -> bool {
    ip.octets()[0] & 0xfe == 0xfc
}

/// Masquerade `prefix` leaving by `up` (creating the ip6 nat table and chain
/// when missing: `add` of an existing one is a no-op).
pub(super) fn add_masquerade6(prefix: &str, up: &str) -> String {
    format!(
        "nft add table ip6 nat; nft add chain ip6 nat postrouting '{{ type nat hook postrouting priority srcnat; }}'; nft add rule ip6 nat postrouting oifname \"{up}\" ip6 saddr {prefix} masquerade"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_fc00_7_is_unique_local() {
        assert!(is_unique_local("fd12::1".parse().unwrap()));
        assert!(is_unique_local("fc00::1".parse().unwrap()));
        assert!(!is_unique_local("2001:db8:99::100".parse().unwrap()));
        assert!(!is_unique_local("fe80::1".parse().unwrap()));
    }
}
