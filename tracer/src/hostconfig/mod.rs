//! The VMs' NICs as the hypervisor's own configuration describes them: Proxmox VE
//! (`/etc/pve/qemu-server`, `/etc/pve/lxc`) and libvirt (domain and network XML,
//! dnsmasq lease files).
//!
//! The kernel's tables (see `topology`) only learn a guest's MAC and address once
//! it has sent something; the configuration knows the port name, bridge and MAC
//! before the guest boots, and lets the operator name a VM by id or name.
//!
//! This runs on arbitrary hosts: a missing directory is simply empty, and a file
//! that cannot be read or parsed is skipped. Nothing here returns an error.

use std::{
    fs,
    io::Read,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

mod leases;
mod libvirt;
mod proxmox;

use leases::*;
use libvirt::*;
pub use proxmox::read_proxmox_node;
use proxmox::*;

/// One NIC of one VM as the host's hypervisor configuration describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmNic {
    /// "proxmox-qemu" | "proxmox-lxc" | "libvirt"
    pub source: &'static str,
    /// Proxmox VMID ("105") or libvirt domain name.
    pub vm_id: String,
    /// Proxmox `name:` (qemu) / `hostname:` (lxc); libvirt `<name>`.
    pub vm_name: Option<String>,
    /// Proxmox "netN"; libvirt: the `<interface>`'s index in document order ("net0", "net1", ...).
    pub nic: String,
    /// Lowercase, colon-separated.
    pub mac: String,
    /// The host-side device while the VM runs: Proxmox qemu `tap{VMID}i{N}`, lxc
    /// `veth{VMID}i{N}`; libvirt `<target dev=...>`, known only once it has run
    /// (libvirt names `vnetN` at start and drops them from the persistent XML).
    pub port: Option<String>,
    /// vmbr0 / virbr0 / libvirt `<source bridge>`, or for `<source network='x'>` the
    /// network's bridge as its XML names it, if found.
    pub bridge: Option<String>,
    /// libvirt network name when `type='network'`.
    pub network: Option<String>,
    /// Proxmox `firewall=1`: the port then sits in `fwbr{VMID}i{N}`, not in `bridge`.
    pub firewall: bool,
    /// Proxmox `tag=`, libvirt `<vlan><tag id=>` (only when exactly one tag: a trunk has no single VLAN).
    pub vlan: Option<u16>,
    /// Statically known addresses: Proxmox qemu `ipconfigN` (cloud-init), lxc `ip=`;
    /// libvirt network `<dhcp><host>`; current dnsmasq leases.
    pub ips: Vec<Ipv4Addr>,
    /// Statically known IPv6 addresses: Proxmox qemu `ipconfigN` `ip6=`
    /// (cloud-init), lxc `ip6=` (not `auto`/`dhcp`: those say nothing).
    pub ips6: Vec<Ipv6Addr>,
    /// The file this NIC was read from, so a report can say where a claim came from.
    pub config: PathBuf,
}

#[derive(Debug, Clone)]
pub struct ConfigDirs {
    /// /etc/pve/qemu-server
    pub proxmox_qemu: PathBuf,
    /// /etc/pve/lxc
    pub proxmox_lxc: PathBuf,
    /// /run/libvirt/qemu (running: has target dev), then /etc/libvirt/qemu (persistent).
    /// Earlier directories win for a domain found in several.
    pub libvirt_domains: Vec<PathBuf>,
    /// /run/libvirt/network, /etc/libvirt/qemu/networks; earlier ones win likewise.
    pub libvirt_networks: Vec<PathBuf>,
    /// /var/lib/libvirt/dnsmasq (`*.status` JSON lease files, and `*.leases`).
    pub libvirt_leases: PathBuf,
}

impl ConfigDirs {
    /// The system paths re-rooted under `root`: for tests, and for an operator
    /// pointing at a copy of another host's /etc.
    pub fn under(root: &Path) -> Self {
        let p = |abs: &str| root.join(abs.trim_start_matches('/'));
        Self {
            proxmox_qemu: p("/etc/pve/qemu-server"),
            proxmox_lxc: p("/etc/pve/lxc"),
            libvirt_domains: vec![p("/run/libvirt/qemu"), p("/etc/libvirt/qemu")],
            libvirt_networks: vec![p("/run/libvirt/network"), p("/etc/libvirt/qemu/networks")],
            libvirt_leases: p("/var/lib/libvirt/dnsmasq"),
        }
    }
}

/// Every NIC of every VM found; missing directories are simply empty; unreadable or
/// malformed files are skipped (never an error, never a panic: this runs on arbitrary hosts).
pub fn read_all(dirs: &ConfigDirs) -> Vec<VmNic> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut nics = Vec::new();
    nics.extend(read_proxmox(&dirs.proxmox_qemu, ProxmoxKind::Qemu));
    nics.extend(read_proxmox(&dirs.proxmox_lxc, ProxmoxKind::Lxc));
    let networks = read_networks(&dirs.libvirt_networks);
    nics.extend(read_domains(&dirs.libvirt_domains, &networks));
    let leases = read_leases(&dirs.libvirt_leases, now);
    apply_leases(&mut nics, &leases);
    nics
}

/// NICs of the VM named by `query`: a Proxmox VMID or a VM/domain name (exact,
/// case-sensitive) gives all of that VM's NICs; a MAC address (any case) gives the
/// one NIC that has it.
pub fn find<'a>(nics: &'a [VmNic], query: &str) -> Vec<&'a VmNic> {
    let query = query.trim();
    if query.is_empty() {
        return Vec::new();
    }
    let mac = normalize_mac(query);
    nics.iter()
        .filter(|n| {
            n.vm_id == query
                || n.vm_name.as_deref() == Some(query)
                || mac.as_deref() == Some(n.mac.as_str())
        })
        .collect()
}

/// NICs that carry `ip`, statically or by lease. (A lease's MAC is matched to its NIC
/// when reading, so a leased address is already in `ips`; to look up by MAC, use `find`.)
pub fn by_ip(nics: &[VmNic], ip: Ipv4Addr) -> Vec<&VmNic> {
    nics.iter().filter(|n| n.ips.contains(&ip)).collect()
}

// ---------------------------------------------------------------------------------
// Files

/// Configs are small; anything bigger than this is not one, and is skipped rather
/// than read into memory.
const MAX_FILE: u64 = 16 << 20;

/// The regular files (symlinks followed: /etc/pve/qemu-server is one) in `dir` named
/// `*.{ext}`, sorted so that the output does not depend on directory order.
fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .filter(|p| fs::metadata(p).is_ok_and(|m| m.is_file()))
        .collect();
    files.sort();
    files
}

/// The file's text, or None when it cannot be read or is too big. Invalid UTF-8 (a
/// Proxmox description can hold anything) is replaced, not a reason to skip the VM.
fn read_text(path: &Path) -> Option<String> {
    let file = fs::File::open(path).ok()?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE + 1).read_to_end(&mut bytes).ok()?;
    if bytes.len() as u64 > MAX_FILE {
        return None;
    }
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

fn file_stem(path: &Path) -> Option<&str> {
    path.file_stem()?.to_str()
}

// ---------------------------------------------------------------------------------
// Values

/// "BC:24:11:AA:BB:CC", "bc-24-11-aa-bb-cc" → "bc:24:11:aa:bb:cc".
fn normalize_mac(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.trim().split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut out = String::with_capacity(17);
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() || part.len() > 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        if i > 0 {
            out.push(':');
        }
        if part.len() == 1 {
            out.push('0');
        }
        out.push_str(&part.to_ascii_lowercase());
    }
    Some(out)
}

/// "192.0.2.5/24" or "192.0.2.5" → the address; "dhcp", "manual", IPv6 → None.
fn ipv4_of_cidr(s: &str) -> Option<Ipv4Addr> {
    let addr = s.trim().split('/').next()?;
    addr.trim().parse().ok()
}

/// `2001:db8::5/64` → 2001:db8::5; `auto`, `dhcp`, `manual` → None.
fn ipv6_of_cidr(s: &str) -> Option<Ipv6Addr> {
    let addr = s.trim().split('/').next()?;
    addr.trim().parse().ok()
}

fn push_unique(ips: &mut Vec<Ipv4Addr>, ip: Ipv4Addr) {
    if !ips.contains(&ip) {
        ips.push(ip);
    }
}

#[cfg(test)]
mod tests;
