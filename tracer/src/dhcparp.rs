//! `--proto dhcp|arp`: who the guest is when it may have no address yet, and
//! what it asks about when `--to` is not given.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{bail, Result};

use crate::{
    cli::{Cli, Proto},
    doctor,
    host::Host,
    hostconfig::{self, VmNic},
};

/// Where a guest's DHCP DISCOVER and REQUEST go before it has an address.
pub const BROADCAST: Ipv4Addr = Ipv4Addr::BROADCAST;

/// The guest's address and NICs, and the destination, from the command line and
/// the host. DHCP needs no address (the guest is asking for one) and no `--to`;
/// ARP asks by default for the guest's gateway (the bridge's address).
pub fn resolve(cli: &mut Cli, host: &Host, all: &[VmNic]) -> Result<Vec<VmNic>> {
    let proto = cli.proto();
    let l2 = matches!(proto, Proto::Dhcp | Proto::Arp);
    if !l2 && cli.to_arg.is_none() {
        bail!("--proto {} needs --to DEST", proto.word());
    }
    if !l2 && cli.vm_ip_arg.is_none() && cli.vm.is_none() {
        bail!("give --vm-ip IP or --vm ID|NAME|MAC");
    }
    let resolved = match (cli.vm_ip_arg, cli.vm.as_deref()) {
        (None, None) => Ok((Ipv4Addr::UNSPECIFIED.into(), Vec::new())),
        (Some(IpAddr::V6(ip)), vm) => Ok((IpAddr::V6(ip), configured(all, vm))),
        (None, Some(vm)) if cli.to_arg.is_some_and(|d| d.ip.is_ipv6()) => {
            resolve_vm6(host, all, vm)
        }
        (ip, vm) => {
            let ip = ip.map(|ip| match ip {
                IpAddr::V4(a) => a,
                IpAddr::V6(_) => unreachable!("IPv6 handled above"),
            });
            doctor::resolve_vm(host, ip, vm, all, &cli.config_root).map(|(ip, n)| (ip.into(), n))
        }
    };
    let (ip, nics) = match resolved {
        Ok(found) => found,
        // A VM without an address yet is what DHCP is about: its port and MAC
        // come from its configuration.
        Err(e) => {
            let nics = configured(all, cli.vm.as_deref());
            if !l2 || nics.is_empty() {
                return Err(e);
            }
            (Ipv4Addr::UNSPECIFIED.into(), nics)
        }
    };
    cli.vm_ip = ip;
    let ip4 = match ip {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
    };
    cli.to = match (proto, cli.to_arg) {
        (_, Some(to)) => to.ip,
        (Proto::Dhcp, None) => BROADCAST.into(),
        _ => gateway_of(host, &nics, ip4).map(IpAddr::V4).ok_or_else(|| {
            anyhow::anyhow!("no gateway known for this guest (its bridge has no IPv4 address): give --to ADDR, the address it asks for")
        })?,
    };
    Ok(nics)
}

/// `--vm` with an IPv6 `--to`: the VM's global IPv6 address as the host's
/// neighbour table knows it for the VM's MAC (configurations name IPv4 only).
fn resolve_vm6(host: &Host, all: &[VmNic], vm: &str) -> Result<(IpAddr, Vec<VmNic>)> {
    let nics = configured(all, Some(vm));
    if nics.is_empty() {
        bail!("no VM \"{vm}\" in this host's Proxmox or libvirt configuration (by VMID, name or MAC); give its --vm-ip instead");
    }
    let ip = nics
        .iter()
        .find_map(|n| host.ip6s_of_mac(&n.mac.to_lowercase()).first().copied());
    match ip {
        Some(ip) => Ok((IpAddr::V6(ip), nics)),
        None => bail!(
            "no IPv6 address of VM \"{vm}\" is known (no neighbour entry for its MAC {}): give --vm-ip",
            nics[0].mac
        ),
    }
}

fn configured(all: &[VmNic], vm: Option<&str>) -> Vec<VmNic> {
    vm.map(|q| hostconfig::find(all, q).into_iter().cloned().collect())
        .unwrap_or_default()
}

/// The guest's gateway as this host sees it: the address of its bridge on the
/// guest's subnet (or the bridge's first address when the guest has none yet).
pub fn gateway_of(host: &Host, nics: &[VmNic], vm_ip: Ipv4Addr) -> Option<Ipv4Addr> {
    let bridges = nics.iter().filter_map(|n| n.bridge.clone());
    let by_subnet = host
        .addrs
        .iter()
        .filter_map(|a| Some((a.index, a.v4()?)))
        .find(|(_, (addr, len))| {
            !vm_ip.is_unspecified() && same_subnet(*addr, vm_ip, *len) && *addr != vm_ip
        })
        .map(|(_, (addr, _))| addr);
    by_subnet.or_else(|| {
        bridges
            .flat_map(|b| host.inet_addrs(&b))
            .map(|(a, _)| a)
            .next()
    })
}

/// The first address of the bridge the guest's port is on (after the topology
/// is known): what a guest with no address yet would ask, or be answered from.
pub fn bridge_address(host: &Host, bridge: Option<&str>) -> Option<Ipv4Addr> {
    host.inet_addrs(bridge?).first().map(|(a, _)| *a)
}

fn same_subnet(a: Ipv4Addr, b: Ipv4Addr, len: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(a) & mask == u32::from(b) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets() {
        let a: Ipv4Addr = "192.0.2.1".parse().unwrap();
        assert!(same_subnet(a, "192.0.2.100".parse().unwrap(), 24));
        assert!(!same_subnet(a, "198.51.100.1".parse().unwrap(), 24));
        assert!(same_subnet(a, "203.0.113.1".parse().unwrap(), 0));
    }
}
