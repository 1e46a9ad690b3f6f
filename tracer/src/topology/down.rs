//! A device that went down takes its routes with it (IPv4 deletes every route
//! through a device set down), so "no route" is often "the uplink is down":
//! a VLAN sub-interface not brought up (Proxmox's `vmbr0.20` holding the
//! host's address), a bond without a working slave. The addresses stay: a
//! down device that still holds one is where the routes were.

use super::bridged::{port_problem, PortProblem};
use crate::host::Host;

/// A down device that holds an IPv4 address: its name, why it is down, and
/// the address ("198.51.100.2/24").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoneWith {
    pub dev: String,
    pub problem: PortProblem,
    pub addr: String,
}

impl GoneWith {
    /// "eth0.20 is down (...) and holds 198.51.100.2/24: the routes through it
    /// went down with it".
    pub fn words(&self) -> String {
        format!(
            "{} is {} and holds {}: the routes through it went down with it",
            self.dev,
            self.problem.words(),
            self.addr
        )
    }

    pub fn fix(&self) -> String {
        format!(
            "{}; then restore the routes through it (the default route: ip route add default via GATEWAY dev {}; Proxmox's ifreload -a does both)",
            self.problem.fix(&self.dev, None),
            self.dev
        )
    }
}

/// The devices of `host` that hold an IPv4 address and cannot pass frames
/// (loopback aside), first one first.
pub fn routes_gone(host: &Host) -> Option<GoneWith> {
    host.links
        .iter()
        .filter(|l| l.name != "lo" && (!l.up || !l.lower_up))
        .find_map(|l| {
            let (a, len) = host.inet_addrs(&l.name).into_iter().next()?;
            Some(GoneWith {
                dev: l.name.clone(),
                problem: port_problem(host, &l.name)?,
                addr: format!("{a}/{len}"),
            })
        })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_down_vlan_device_took_its_routes() {
        let links = json!([
            {"ifindex":1,"ifname":"lo","flags":["UP","LOOPBACK"]},
            {"ifindex":2,"ifname":"eth0","flags":["UP","LOWER_UP"],"linkinfo":{"info_kind":"veth"}},
            {"ifindex":3,"ifname":"eth0.20","link":"eth0","flags":[],
             "linkinfo":{"info_kind":"vlan","info_data":{"id":20}}}
        ]);
        let addrs =
            json!([{"ifname":"eth0.20","addr_info":[{"local":"198.51.100.2","prefixlen":24}]}]);
        let h = Host::from_iproute2(&links, &addrs, &json!([]), &json!([]));
        let g = routes_gone(&h).unwrap();
        assert_eq!(g.dev, "eth0.20");
        assert_eq!(
            g.words(),
            "eth0.20 is down (administratively; the VLAN 20 device on eth0) and holds 198.51.100.2/24: the routes through it went down with it"
        );
        assert!(g.fix().contains("ip link set eth0.20 up"), "{}", g.fix());
        assert!(g.fix().contains("ifreload -a"));
    }
}
