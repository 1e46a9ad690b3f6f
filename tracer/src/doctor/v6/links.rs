//! IPv6 on the guest's interfaces: an MTU of at least 1280 on every one of
//! them (IPv6's minimum; the kernel turns IPv6 off on a device below it), and
//! router advertisements for a guest that configured itself from them.

use super::{slaac_shaped, Path6};
use crate::{
    doctor::{Check, Status},
    host::Host,
};

/// IPv6's minimum link MTU (RFC 8200 §5).
const MIN_MTU: u32 = 1280;

pub(super) fn mtu6(p: &Path6, host: &Host) -> Check {
    let mut devs = p.l2.clone();
    if !devs.contains(&p.inbound) {
        devs.push(p.inbound.clone());
    }
    devs.extend(p.uplink.iter().filter(|_| p.routed()).cloned());
    let mut seen = Vec::new();
    let mut low = Vec::new();
    for d in &devs {
        let link = host.link(d).map(|l| l.mtu);
        // The IPv6 MTU of a device may be set below its link MTU (and RAs may
        // lower it): the smaller one counts.
        let v6 = host
            .sysctl(&format!("net/ipv6/conf/{d}/mtu"))
            .and_then(|m| m.parse::<u32>().ok());
        let Some(mtu) = [link, v6].into_iter().flatten().min() else {
            continue;
        };
        seen.push(format!("{d} {mtu}"));
        if mtu < MIN_MTU {
            low.push((d.clone(), link.unwrap_or(mtu), v6));
        }
    }
    let subject = devs.join(", ");
    if low.is_empty() {
        return Check::new("mtu6", Status::Pass, subject).evidence(format!(
            "every interface of the guest's IPv6 path carries at least {MIN_MTU} bytes ({})",
            seen.join(", ")
        ));
    }
    let fix = low
        .iter()
        .map(|(d, link, _)| match *link < MIN_MTU {
            true => format!("ip link set dev {d} mtu 1500"),
            false => format!("sysctl -w net.ipv6.conf.{d}.mtu={link}"),
        })
        .collect::<Vec<_>>()
        .join(" && ");
    let names: Vec<&str> = low.iter().map(|(d, _, _)| d.as_str()).collect();
    Check::new("mtu6", Status::Fail, subject)
        .evidence(format!(
            "{} below IPv6's minimum of {MIN_MTU} bytes ({}): IPv6 cannot cross {} (the kernel disables IPv6 on a device that small)",
            names.join(", "),
            seen.join(", "),
            if names.len() == 1 { "it" } else { "them" }
        ))
        .fix(fix)
}

/// A SLAAC guest (its address made from its MAC) needs router advertisements
/// on its bridge: radvd or dnsmasq's `enable-ra` for that interface, running in
/// this network namespace.
pub(super) fn ra_service(p: &Path6, host: &Host) -> Option<Check> {
    let mac = p.vm_mac.as_deref()?;
    let ip = p.vm_ips.iter().copied().find(|ip| slaac_shaped(*ip, mac))?;
    let dev = &p.inbound;
    let subject = format!("router advertisements on {dev}");
    let senders: Vec<String> = host
        .daemons
        .iter()
        .filter(|d| advertises_on(d, dev))
        .map(|d| match &d.config {
            Some((path, _)) => format!("{} ({path})", d.name),
            None => d.name.clone(),
        })
        .collect();
    let shape = format!("{ip} is made from the guest's MAC {mac} (SLAAC): the guest keeps it and its default route only while router advertisements come");
    if !senders.is_empty() {
        return Some(
            Check::new("ra_service", Status::Pass, subject)
                .evidence(format!("{shape}; sent on {dev} by {}", senders.join(", "))),
        );
    }
    Some(
        Check::new("ra_service", Status::Fail, subject)
            .evidence(format!(
                "{shape}, but nothing in this host's network namespace advertises on {dev} (no radvd for it, no dnsmasq with enable-ra)"
            ))
            .fix(format!(
                "advertise the guests' prefix on {dev}: radvd with `interface {dev} {{ AdvSendAdvert on; prefix PREFIX::/64 {{}}; }};` in /etc/radvd.conf, or dnsmasq with enable-ra and dhcp-range=::,constructor:{dev},ra-only"
            )),
    )
}

/// Why the guest depends on router advertisements, if it does: its address is
/// made from its MAC (SLAAC), or a daemon advertises on its bridge.
pub(super) fn relies_on_ra(p: &Path6, host: &Host) -> Option<String> {
    let mac = p.vm_mac.as_deref().unwrap_or_default();
    if let Some(ip) = p.vm_ips.iter().find(|ip| slaac_shaped(**ip, mac)) {
        return Some(format!("{ip} is SLAAC, made from its MAC"));
    }
    host.daemons
        .iter()
        .find(|d| advertises_on(d, &p.inbound))
        .map(|d| format!("{} advertises on {}", d.name, p.inbound))
}

/// The daemon sends router advertisements on `dev`: radvd with an `interface
/// DEV` block; dnsmasq with enable-ra serving DEV (or every interface).
fn advertises_on(d: &crate::host::daemons::Daemon, dev: &str) -> bool {
    match d.name.as_str() {
        "radvd" => d.config.as_ref().is_some_and(|(_, text)| {
            text.lines().any(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.first() == Some(&"interface")
                    && w.get(1).map(|n| n.trim_end_matches('{')) == Some(dev)
            })
        }),
        "dnsmasq" => {
            let ra = !d.option("enable-ra", None).is_empty();
            let ifaces = d.option("interface", Some("i"));
            ra && (ifaces.is_empty() || ifaces.iter().any(|i| i == dev))
        }
        _ => false,
    }
}
