//! Proxmox VE guests: `/etc/pve/qemu-server/<vmid>.conf` and `/etc/pve/lxc`.

use std::{
    collections::{BTreeMap, HashMap},
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
};

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ProxmoxKind {
    Qemu,
    Lxc,
}

impl ProxmoxKind {
    fn source(self) -> &'static str {
        match self {
            Self::Qemu => "proxmox-qemu",
            Self::Lxc => "proxmox-lxc",
        }
    }

    /// The host device Proxmox creates for netN: `tap{VMID}i{N}` / `veth{VMID}i{N}`.
    fn port_prefix(self) -> &'static str {
        match self {
            Self::Qemu => "tap",
            Self::Lxc => "veth",
        }
    }

    fn name_key(self) -> &'static str {
        match self {
            Self::Qemu => "name",
            Self::Lxc => "hostname",
        }
    }
}

/// The VMs and containers of one Proxmox cluster node's directory
/// (`/etc/pve/nodes/NODE`, whose `qemu-server` and `lxc` hold its guests).
pub fn read_proxmox_node(node_dir: &Path) -> Vec<VmNic> {
    let mut nics = read_proxmox(&node_dir.join("qemu-server"), ProxmoxKind::Qemu);
    nics.extend(read_proxmox(&node_dir.join("lxc"), ProxmoxKind::Lxc));
    nics
}

pub(super) fn read_proxmox(dir: &Path, kind: ProxmoxKind) -> Vec<VmNic> {
    let mut nics = Vec::new();
    for path in files_with_ext(dir, "conf") {
        // Only `{VMID}.conf` is a VM; editors' and tools' leftovers are not.
        let Some(vmid) = file_stem(&path).filter(|s| is_digits(s)) else {
            continue;
        };
        let Some(text) = read_text(&path) else {
            continue;
        };
        nics.extend(proxmox_nics(kind, vmid, &text, &path));
    }
    nics
}

pub(super) fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// The `key: value` lines of the VM's current state. Snapshots (`[name]`) and
/// pending changes (`[PENDING]`) follow as sections and describe other states, so
/// reading stops at the first one.
pub(super) fn proxmox_entries(text: &str) -> Vec<(String, &str)> {
    let mut entries = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            break;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((key, value)) = line.split_once(':') {
            entries.push((key.trim().to_ascii_lowercase(), value.trim()));
        }
    }
    entries
}

/// `net3` with prefix "net" → 3.
pub(super) fn key_index(key: &str, prefix: &str) -> Option<u32> {
    key.strip_prefix(prefix)
        .filter(|n| is_digits(n))
        .and_then(|n| n.parse().ok())
}

/// "virtio=BC:..,bridge=vmbr0 , firewall=1" → [("virtio","BC:.."), ("bridge","vmbr0"), ...];
/// items without `=` (a bare model name) carry nothing we use.
pub(super) fn proxmox_options(value: &str) -> Vec<(String, &str)> {
    value
        .split(',')
        .filter_map(|item| item.split_once('='))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim()))
        .collect()
}

/// Proxmox's boolean format accepts these spellings for true.
pub(super) fn proxmox_bool(v: &str) -> bool {
    matches!(v.to_ascii_lowercase().as_str(), "1" | "yes" | "on" | "true")
}

pub(super) fn proxmox_nics(kind: ProxmoxKind, vmid: &str, text: &str, path: &Path) -> Vec<VmNic> {
    let entries = proxmox_entries(text);
    let vm_name = entries
        .iter()
        .find(|(k, _)| k == kind.name_key())
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty());
    // cloud-init's ipconfigN belongs to netN, and may come before it in the file.
    let cloud_init: HashMap<u32, Ipv4Addr> = entries
        .iter()
        .filter_map(|(k, v)| Some((key_index(k, "ipconfig")?, cloud_init_ip(v)?)))
        .collect();
    let cloud_init6: HashMap<u32, Ipv6Addr> = entries
        .iter()
        .filter_map(|(k, v)| Some((key_index(k, "ipconfig")?, cloud_init_ip6(v)?)))
        .collect();
    // BTreeMap: net10 after net2, and a repeated key keeps its last value.
    let mut nics = BTreeMap::new();
    for (key, value) in &entries {
        let Some(n) = key_index(key, "net") else {
            continue;
        };
        let Some(mut nic) = proxmox_nic(kind, vmid, n, value, path) else {
            continue;
        };
        nic.vm_name.clone_from(&vm_name);
        if let Some(ip) = cloud_init.get(&n) {
            push_unique(&mut nic.ips, *ip);
        }
        if let Some(ip) = cloud_init6.get(&n).filter(|ip| !nic.ips6.contains(ip)) {
            nic.ips6.push(*ip);
        }
        nics.insert(n, nic);
    }
    nics.into_values().collect()
}

/// `ip=192.0.2.5/24,gw=192.0.2.1` → 192.0.2.5; `ip=dhcp` says nothing.
pub(super) fn cloud_init_ip(value: &str) -> Option<Ipv4Addr> {
    proxmox_options(value)
        .into_iter()
        .find(|(k, _)| k == "ip")
        .and_then(|(_, v)| ipv4_of_cidr(v))
}

/// `ip6=2001:db8::5/64,gw6=2001:db8::1` → 2001:db8::5; `ip6=auto` or `dhcp`
/// says nothing.
pub(super) fn cloud_init_ip6(value: &str) -> Option<Ipv6Addr> {
    proxmox_options(value)
        .into_iter()
        .find(|(k, _)| k == "ip6")
        .and_then(|(_, v)| ipv6_of_cidr(v))
}

/// One `netN:` value. qemu: `virtio=MAC,bridge=..,firewall=1,tag=20` (the model is the
/// key of the MAC; also `model=virtio,macaddr=MAC`); lxc: `name=eth0,hwaddr=MAC,ip=..`.
/// A NIC without a MAC is skipped: Proxmox always writes one, so such a line is not its.
pub(super) fn proxmox_nic(
    kind: ProxmoxKind,
    vmid: &str,
    n: u32,
    value: &str,
    path: &Path,
) -> Option<VmNic> {
    let opts = proxmox_options(value);
    let get = |key: &str| opts.iter().find(|(k, _)| k == key).map(|(_, v)| *v);
    let mac = match get("macaddr").or_else(|| get("hwaddr")) {
        Some(v) => normalize_mac(v),
        // Any model name may stand before the MAC, so find the value that is one.
        None => opts.iter().find_map(|(_, v)| normalize_mac(v)),
    }?;
    let mut ips = Vec::new();
    if let Some(ip) = get("ip").and_then(ipv4_of_cidr) {
        ips.push(ip);
    }
    let ips6 = get("ip6").and_then(ipv6_of_cidr).into_iter().collect();
    Some(VmNic {
        source: kind.source(),
        vm_id: vmid.to_string(),
        vm_name: None,
        nic: format!("net{n}"),
        mac,
        port: Some(format!("{}{vmid}i{n}", kind.port_prefix())),
        bridge: get("bridge").filter(|b| !b.is_empty()).map(str::to_string),
        network: None,
        firewall: get("firewall").is_some_and(proxmox_bool),
        vlan: get("tag").and_then(|t| t.parse().ok()),
        ips,
        ips6,
        config: path.to_path_buf(),
    })
}
