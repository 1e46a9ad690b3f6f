//! The sysctls pathtrace reads, and the local UDP sockets, taken with the host
//! (this network namespace's: /proc/sys/net and /proc/net belong to the reader's
//! namespace).

use std::{collections::BTreeMap, net::Ipv4Addr};

use super::Host;

/// Global settings.
const GLOBAL: &[&str] = &[
    "net/ipv4/ip_forward",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
];
/// Per interface (and `all`, `default`) under net/ipv4/conf.
const CONF: &[&str] = &["forwarding", "rp_filter", "arp_ignore", "proxy_arp"];
/// Per interface (and `all`, `default`) under net/ipv6/conf. `force_forwarding`
/// exists from 6.17 on (absent: not read).
const CONF6: &[&str] = &[
    "forwarding",
    "force_forwarding",
    "accept_ra",
    "proxy_ndp",
    "disable_ipv6",
    "mtu",
];

pub fn read(host: &Host) -> BTreeMap<String, String> {
    let devices = ["all", "default"]
        .into_iter()
        .chain(host.links.iter().map(|l| l.name.as_str()));
    let per_device: Vec<String> = devices
        .flat_map(|d| {
            let v4 = CONF.iter().map(move |k| format!("net/ipv4/conf/{d}/{k}"));
            v4.chain(CONF6.iter().map(move |k| format!("net/ipv6/conf/{d}/{k}")))
        })
        .collect();
    GLOBAL
        .iter()
        .map(|p| p.to_string())
        .chain(per_device)
        .filter_map(|p| Some((p.clone(), crate::kernel::sysctl(&p)?)))
        .collect()
}

/// Local UDP sockets (address, port) from /proc/net/udp.
pub fn udp_sockets() -> Vec<(Ipv4Addr, u16)> {
    parse_udp(&std::fs::read_to_string("/proc/net/udp").unwrap_or_default())
}

/// The `local_address` column of /proc/net/udp: hex address (host byte order)
/// and port.
pub fn parse_udp(table: &str) -> Vec<(Ipv4Addr, u16)> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|local| {
            let (addr, p) = local.split_once(':')?;
            let p = u16::from_str_radix(p, 16).ok()?;
            let a = u32::from_str_radix(addr, 16).ok()?;
            // The kernel prints the address in host (little-endian) order.
            Some((Ipv4Addr::from(a.swap_bytes()), p))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_udp_sockets() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
          12: 010200C0:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0000000000000000 0\n\
          13: 00000000:0043 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0000000000000000 0\n";
        assert_eq!(
            parse_udp(table),
            [
                (Ipv4Addr::new(192, 0, 2, 1), 53),
                (Ipv4Addr::UNSPECIFIED, 67)
            ]
        );
    }
}
