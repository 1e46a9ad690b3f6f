//! `firewall_bridge_arp`: a firewall bridge (Proxmox's `fwbrNiM`) has no address,
//! yet Linux answers ARP on it for every address of the host while its effective
//! `arp_ignore` lets it (the weak host model). It is closer to the guest than the
//! VM bridge, so its answer for the gateway address often comes first, and a guest
//! keeps the first answer: its routed traffic then enters the host's IP layer at
//! the firewall bridge, skipping the veth pair and the VM bridge on the way out
//! (the way back still crosses them). Rules written for the VM bridge stop
//! matching, and a drop shows at `fwbrNiM` in the routed forward hook.

use std::net::Ipv4Addr;

use super::{Check, Status};
use crate::{host::Host, topology::Topology};

/// One check per firewall bridge on the VM's path (none without such bridges).
pub fn check(t: &Topology, host: &Host) -> Vec<Check> {
    t.chain
        .iter()
        .filter(|h| h.is_bridge)
        .map(|h| {
            let dev = &h.iface.name;
            let answered = knows(host, dev, t.vm_ip4());
            judge(dev, effective_arp_ignore(host, dev), answered, t)
        })
        .collect()
}

/// The check's verdict from the facts: the bridge's effective `arp_ignore`, and
/// whether it has already talked ARP with the guest (it learns the sender of a
/// request it answers).
fn judge(dev: &str, arp_ignore: u8, answered: bool, t: &Topology) -> Check {
    let top = t.inbound().name.as_str();
    let fix = format!("sysctl -w net.ipv4.conf.{dev}.arp_ignore=1");
    if !answers_for_host(arp_ignore) {
        return Check::new("firewall_bridge_arp", Status::Pass, dev).evidence(format!(
            "{dev} does not answer ARP for the host's addresses (arp_ignore={arp_ignore})"
        ));
    }
    if answered {
        return Check::new("firewall_bridge_arp", Status::Fail, dev)
            .evidence(format!(
                "{dev} answers ARP for the host's addresses (arp_ignore={arp_ignore}) and has answered {}: a guest that took its MAC for its gateway's sends its routed traffic into the host at {dev}, bypassing {} and {top} on the way out",
                t.vm_ip,
                veth_names(t).join("/")
            ))
            .fix(format!(
                "{fix} (persist it in /etc/sysctl.d/); then let the guest re-learn its gateway (ip neigh flush dev <nic> inside the guest, or wait for its ARP entry to expire)"
            ));
    }
    Check::new("firewall_bridge_arp", Status::Pass, dev).evidence(format!(
        "{dev} would answer ARP for the host's addresses (arp_ignore={arp_ignore}) but has not answered {}; if a guest takes its MAC for its gateway's: {fix}",
        t.vm_ip
    ))
}

/// Values of `arp_ignore` under which a device with no address of its own still
/// answers for the host's other addresses: 0 (any local address), 3 (scope
/// global/link) and the reserved 4–7, which the kernel treats as 0.
fn answers_for_host(arp_ignore: u8) -> bool {
    !matches!(arp_ignore, 1 | 2 | 8)
}

/// The kernel uses the larger of `all` and the device's own value.
fn effective_arp_ignore(host: &Host, dev: &str) -> u8 {
    let value = |d: &str| {
        host.sysctl(&format!("net/ipv4/conf/{d}/arp_ignore"))
            .and_then(|v| v.parse::<u8>().ok())
            .unwrap_or(0)
    };
    value("all").max(value(dev))
}

/// The neighbour table of `dev` has an entry for `ip`.
fn knows(host: &Host, dev: &str, ip: Ipv4Addr) -> bool {
    let index = host.index_of(dev);
    host.neighbours_of(ip.into())
        .any(|n| Some(n.index) == index)
}

fn veth_names(t: &Topology) -> Vec<String> {
    t.chain
        .iter()
        .filter(|h| !h.is_bridge)
        .map(|h| h.iface.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_arp_ignore_values_answer_for_other_interfaces() {
        assert!(answers_for_host(0));
        assert!(answers_for_host(3));
        assert!(answers_for_host(5));
        assert!(!answers_for_host(1));
        assert!(!answers_for_host(2));
        assert!(!answers_for_host(8));
    }

    #[test]
    fn a_neighbour_entry_for_the_guest_is_found() {
        let host = Host::from_iproute2(
            &serde_json::json!([{"ifindex": 5, "ifname": "fwbr100i0"}, {"ifindex": 6, "ifname": "vmbr0"}]),
            &serde_json::Value::Null,
            &serde_json::json!([
                {"dst": "192.0.2.100", "dev": "fwbr100i0", "lladdr": "52:54:00:00:00:01", "state": ["STALE"]},
            ]),
            &serde_json::Value::Null,
        );
        assert!(knows(&host, "fwbr100i0", "192.0.2.100".parse().unwrap()));
        assert!(!knows(&host, "fwbr100i0", "192.0.2.101".parse().unwrap()));
        assert!(!knows(&host, "vmbr0", "192.0.2.100".parse().unwrap()));
    }
}
