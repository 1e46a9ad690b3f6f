//! Which port is the VM's, and how sure that is: the host's tables (neighbour
//! entry + bridge FDB), the hypervisor's configuration, or — when neither knows
//! the VM — nobody. Then pathtrace must not pick a port itself (a mistyped IP
//! would trace another VM whose port happens to be down): it names the ports that
//! could be it and the `--iface` to trace one.

use std::net::IpAddr;

use anyhow::{anyhow, Result};

use super::{find_vm_ports, net_of};
use crate::{host::Host, hostconfig::VmNic};

/// How the VM's port was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evidence {
    /// The neighbour table and the bridge FDB name exactly one port.
    Tables,
    /// The operator named it with `--iface`.
    Iface,
    /// The hypervisor's configuration names it (`source path`) and the host's
    /// tables do not say otherwise.
    Config(String),
    /// Nothing names one port: the ports are candidates, for this reason.
    Guess(String),
    /// Bridged mode: the host never talks to the guest, so no table knows it;
    /// the port its first request arrives on is the VM's (why: said here).
    FirstPacket(String),
}

impl Evidence {
    /// For the doctor's `vm_port` evidence: "found by ...".
    pub fn found_by(&self) -> String {
        match self {
            Evidence::Tables => "neighbour table and bridge FDB".into(),
            Evidence::Iface => "--iface".into(),
            Evidence::Config(c) => c.clone(),
            Evidence::Guess(why) => format!("guess: {why}"),
            Evidence::FirstPacket(why) => format!("its first request: {why}"),
        }
    }

    /// What the banner must add when the port is not known from the host's own
    /// tables or the operator: the operator reads the verdicts with it in mind.
    pub fn caveat(&self, vm_ip: IpAddr, ports: &[String]) -> Option<String> {
        match self {
            Evidence::Tables | Evidence::Iface => None,
            Evidence::Config(c) => Some(format!(
                "port {} is named by {c}; the host's tables do not know {vm_ip} on it now",
                ports.join(", ")
            )),
            Evidence::Guess(why) => Some(format!("port guessed: {why}")),
            Evidence::FirstPacket(why) => Some(why.clone()),
        }
    }
}

/// The VM's port(s) and MAC, and how they were found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub ports: Vec<String>,
    pub mac: Option<String>,
    pub evidence: Evidence,
}

impl Location {
    /// The port the operator named.
    pub fn named(port: &str) -> Self {
        Location {
            ports: vec![port.to_string()],
            mac: None,
            evidence: Evidence::Iface,
        }
    }
}

/// The VM's port(s) and MAC: from the host's tables when they name one port; else
/// from the VM's configuration (`nics`: this VM's NICs), if its device exists; else
/// every port of the bridge the neighbour entry is on (a guess, said as such).
/// When nothing knows the VM: an error naming the candidate ports.
pub fn locate_vm(host: &Host, vm_ip: IpAddr, nics: &[VmNic]) -> Result<Location> {
    let configured = nics
        .iter()
        .find(|n| n.port.as_ref().is_some_and(|p| host.has_link(p)));
    let found = find_vm_ports(host, vm_ip)?;
    match (found, configured) {
        (Some((ports, mac)), _) if ports.len() == 1 => Ok(Location {
            ports,
            mac,
            evidence: Evidence::Tables,
        }),
        (found, Some(nic)) => Ok(Location {
            ports: vec![nic.port.clone().unwrap_or_default()],
            mac: found.and_then(|(_, m)| m).or(Some(nic.mac.clone())),
            evidence: Evidence::Config(format!(
                "{} configuration {}",
                nic.source,
                nic.config.display()
            )),
        }),
        (Some((ports, mac)), None) => {
            let why = format!(
                "its bridge has forgotten on which port {vm_ip} ({}) is (FDB entry aged out): watching all {} ports below it ({}); the one its requests arrive on is the VM's",
                mac.as_deref().unwrap_or("MAC unknown"),
                ports.len(),
                ports.join(", ")
            );
            Ok(Location {
                ports,
                mac,
                evidence: Evidence::Guess(why),
            })
        }
        (None, None) => Err(anyhow!(unknown_vm(host, vm_ip, nics))),
    }
}

/// The ports below the bridge that owns a VM's subnet, each with why it cannot
/// pass frames now (None: it can).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidates {
    pub bridge: String,
    pub subnet: (IpAddr, u8),
    pub ports: Vec<(String, Option<String>)>,
}

impl Candidates {
    /// Ports that cannot pass frames, with why ("disabled", "down", ...): a port
    /// like that makes a VM vanish from the host's tables (the bridge loses
    /// carrier and flushes its neighbours), so it is where to look first.
    pub fn blocked(&self) -> Vec<(&str, &str)> {
        self.ports
            .iter()
            .filter_map(|(p, why)| Some((p.as_str(), why.as_deref()?)))
            .collect()
    }

    /// "vmbr0 (192.0.2.0/24)".
    pub fn bridge_label(&self) -> String {
        format!("{} ({}/{})", self.bridge, self.subnet.0, self.subnet.1)
    }
}

/// The candidates for a VM the host's tables do not know: the ports below the
/// bridge whose own subnet holds `vm_ip`.
pub fn candidates(host: &Host, vm_ip: IpAddr) -> Option<Candidates> {
    let (bridge, subnet) = subnet_bridge(host, vm_ip)?;
    let ports = host
        .leaf_ports(&bridge, None, 0)
        .into_iter()
        .map(|p| {
            let why = blocked_because(host, &p);
            (p, why)
        })
        .collect();
    Some(Candidates {
        bridge,
        subnet,
        ports,
    })
}

/// The bridge with an address whose subnet holds `vm_ip`, and that subnet.
pub fn subnet_bridge(host: &Host, vm_ip: IpAddr) -> Option<(String, (IpAddr, u8))> {
    host.addrs.iter().find_map(|a| {
        let link = host.link_at(a.index).filter(|l| l.is_bridge())?;
        let (local, len) = (a.addr, a.prefix);
        // Of the guest's family; never a link-local IPv6 /64, which every
        // bridge has and which says nothing about where the guest lives.
        let link_local = matches!(local, IpAddr::V6(a) if crate::host::is_link_local6(a));
        let usable = local.is_ipv6() == vm_ip.is_ipv6() && !link_local;
        (usable && net_of(local, len) == net_of(vm_ip, len))
            .then(|| (link.name.clone(), (net_of(local, len), len)))
    })
}

/// Why `port` cannot pass frames now — administratively down, no carrier, or a
/// bridge port state other than forwarding — or None when it can.
fn blocked_because(host: &Host, port: &str) -> Option<String> {
    let link = host.link(port);
    if !link.is_some_and(|l| l.up) {
        return Some("down".into());
    }
    if !link.is_some_and(|l| l.lower_up) {
        return Some("no carrier".into());
    }
    link?
        .port_state
        .map(|s| s.word())
        .filter(|s| s != "forwarding")
}

/// The one line an operator gets for a VM nothing on this host knows: what was
/// looked at, the ports that could be it, and how to trace one.
fn unknown_vm(host: &Host, vm_ip: IpAddr, nics: &[VmNic]) -> String {
    let config = match nics.iter().find_map(|n| Some((n, n.port.as_deref()?))) {
        Some((n, port)) => format!(
            "{} configuration {} names port {port}, which does not exist: is the VM running?",
            n.source,
            n.config.display()
        ),
        None => "no Proxmox/libvirt configuration".into(),
    };
    let head = format!(
        "no VM with IP {vm_ip} is known (no neighbour entry, no bridge FDB entry, {config})"
    );
    let Some(c) = candidates(host, vm_ip) else {
        return format!(
            "{head}; no bridge on this host owns its subnet: check the IP, or name the VM's port with --iface PORT"
        );
    };
    describe_candidates(&head, &c)
}

/// `head`, then the candidate ports of `c` with the `--iface` to trace each.
pub fn describe_candidates(head: &str, c: &Candidates) -> String {
    let blocked = c.blocked();
    if blocked.is_empty() {
        return format!(
            "{head}; every port on {} passes frames, so a VM there would be known: check the IP, let the guest send something (ping its gateway), or name its port with --iface PORT",
            c.bridge_label()
        );
    }
    let listed: Vec<String> = blocked
        .iter()
        .map(|(p, why)| format!("{p} ({why})"))
        .collect();
    let ifaces: Vec<String> = blocked
        .iter()
        .map(|(p, _)| format!("--iface {p}"))
        .collect();
    format!(
        "{head}; ports on {} that cannot pass frames now: {}; trace one with {}",
        c.bridge_label(),
        listed.join(", "),
        ifaces.join(" or ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates(ports: &[(&str, Option<&str>)]) -> Candidates {
        Candidates {
            bridge: "vmbr0".into(),
            subnet: (IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 0)), 24),
            ports: ports
                .iter()
                .map(|(p, w)| (p.to_string(), w.map(str::to_string)))
                .collect(),
        }
    }

    #[test]
    fn names_blocked_ports_with_the_iface_to_use() {
        let c = candidates(&[("tap100i0", Some("disabled")), ("tap101i0", None)]);
        let line = describe_candidates("no VM with IP 192.0.2.77 is known (...)", &c);
        assert_eq!(
            line,
            "no VM with IP 192.0.2.77 is known (...); ports on vmbr0 (192.0.2.0/24) that cannot pass frames now: tap100i0 (disabled); trace one with --iface tap100i0"
        );
        let c = candidates(&[("tap100i0", Some("down")), ("tap102i0", Some("no carrier"))]);
        let line = describe_candidates("x", &c);
        assert!(
            line.ends_with("--iface tap100i0 or --iface tap102i0"),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn healthy_ports_are_no_candidates() {
        let c = candidates(&[("tap100i0", None)]);
        assert!(c.blocked().is_empty());
        let line = describe_candidates("x", &c);
        assert!(
            line.contains("every port on vmbr0 (192.0.2.0/24) passes frames"),
            "{line}"
        );
    }

    #[test]
    fn why_a_port_cannot_pass_frames() {
        let host = Host::from_links(
            &serde_json::from_str(
                r#"[{"ifindex":1,"ifname":"a","flags":["BROADCAST","UP","LOWER_UP"],"linkinfo":{"info_slave_data":{"state":"forwarding"}}},
                {"ifindex":2,"ifname":"b","flags":["BROADCAST","UP"]},
                {"ifindex":3,"ifname":"c","flags":["BROADCAST"]},
                {"ifindex":4,"ifname":"d","flags":["UP","LOWER_UP"],"linkinfo":{"info_slave_data":{"state":"disabled"}}}]"#,
            )
            .unwrap(),
        );
        let why = |p| blocked_because(&host, p);
        assert_eq!(why("a"), None);
        assert_eq!(why("b").as_deref(), Some("no carrier"));
        assert_eq!(why("c").as_deref(), Some("down"));
        assert_eq!(why("d").as_deref(), Some("disabled"));
    }

    #[test]
    fn only_guesses_carry_a_caveat() {
        let ports = ["tap100i0".to_string()];
        let ip = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 100));
        assert_eq!(Evidence::Tables.caveat(ip, &ports), None);
        assert_eq!(Evidence::Iface.caveat(ip, &ports), None);
        let c = Evidence::Config("proxmox-qemu configuration /etc/pve/qemu-server/100.conf".into())
            .caveat(ip, &ports)
            .unwrap();
        assert!(c.contains("tap100i0") && c.contains("100.conf"), "{c}");
        assert!(Evidence::Guess("why".into())
            .caveat(ip, &ports)
            .unwrap()
            .contains("guessed"));
    }
}
