//! The forwarding and filtering sysctls of this network namespace, as lines.

use std::fs;
use std::path::Path;

use anyhow::Result;

use super::*;

/// Per-interface sysctls that decide whether and how packets are forwarded.
pub(super) const CONF_KEYS: &[&str] = &["rp_filter", "forwarding", "proxy_arp", "arp_ignore"];

/// Per-interface IPv6 sysctls: forwarding (and 6.17's force_forwarding),
/// router advertisements, proxy NDP, IPv6 on or off, its MTU.
pub(super) const CONF6_KEYS: &[&str] = &[
    "forwarding",
    "force_forwarding",
    "accept_ra",
    "proxy_ndp",
    "disable_ipv6",
    "mtu",
];

/// `net.ipv6.conf.DEV.KEY = value` lines under `root` (/proc/sys/net).
pub(super) fn read_sysctls6(root: &Path) -> String {
    let paths = dir_names(&root.join("ipv6/conf"))
        .into_iter()
        .flat_map(|dev| {
            CONF6_KEYS
                .iter()
                .map(move |k| vec!["ipv6".into(), "conf".into(), dev.clone(), k.to_string()])
        })
        .collect();
    sysctl_lines(root, paths)
}

/// `net.x.y = value` lines for the forwarding sysctls under `root`
/// (/proc/sys/net). Unreadable files are skipped; /proc/sys/net/bridge only
/// exists while br_netfilter is loaded.
pub(super) fn read_sysctls(root: &Path) -> String {
    let mut paths = vec![vec!["ipv4".to_string(), "ip_forward".to_string()]];
    for dev in dir_names(&root.join("ipv4/conf")) {
        for key in CONF_KEYS {
            paths.push(vec![
                "ipv4".into(),
                "conf".into(),
                dev.clone(),
                key.to_string(),
            ]);
        }
    }
    for name in dir_names(&root.join("bridge")) {
        paths.push(vec!["bridge".into(), name]);
    }
    sysctl_lines(root, paths)
}

/// `net.a.b.c = value` for each readable path (its components) under `root`.
fn sysctl_lines(root: &Path, paths: Vec<Vec<String>>) -> String {
    let mut lines = String::new();
    for parts in paths {
        let Ok(value) = fs::read_to_string(root.join(parts.join("/"))) else {
            continue;
        };
        // sysctl(8) spells a dot inside a component (eth0.100) as a slash.
        let name: Vec<String> = parts.iter().map(|p| p.replace('.', "/")).collect();
        let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
        lines.push_str(&format!("net.{} = {value}\n", name.join(".")));
    }
    lines
}

pub(super) fn dir_names(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn normalise_sysctls(text: &str) -> Result<String> {
    Ok(sorted(
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
    ))
}
