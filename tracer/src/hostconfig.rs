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
    collections::{BTreeMap, HashMap, HashSet},
    fs,
    io::Read,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde_json::Value;

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

fn push_unique(ips: &mut Vec<Ipv4Addr>, ip: Ipv4Addr) {
    if !ips.contains(&ip) {
        ips.push(ip);
    }
}

// ---------------------------------------------------------------------------------
// Proxmox VE

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProxmoxKind {
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

fn read_proxmox(dir: &Path, kind: ProxmoxKind) -> Vec<VmNic> {
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

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// The `key: value` lines of the VM's current state. Snapshots (`[name]`) and
/// pending changes (`[PENDING]`) follow as sections and describe other states, so
/// reading stops at the first one.
fn proxmox_entries(text: &str) -> Vec<(String, &str)> {
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
fn key_index(key: &str, prefix: &str) -> Option<u32> {
    key.strip_prefix(prefix)
        .filter(|n| is_digits(n))
        .and_then(|n| n.parse().ok())
}

/// "virtio=BC:..,bridge=vmbr0 , firewall=1" → [("virtio","BC:.."), ("bridge","vmbr0"), ...];
/// items without `=` (a bare model name) carry nothing we use.
fn proxmox_options(value: &str) -> Vec<(String, &str)> {
    value
        .split(',')
        .filter_map(|item| item.split_once('='))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim()))
        .collect()
}

/// Proxmox's boolean format accepts these spellings for true.
fn proxmox_bool(v: &str) -> bool {
    matches!(v.to_ascii_lowercase().as_str(), "1" | "yes" | "on" | "true")
}

fn proxmox_nics(kind: ProxmoxKind, vmid: &str, text: &str, path: &Path) -> Vec<VmNic> {
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
        nics.insert(n, nic);
    }
    nics.into_values().collect()
}

/// `ip=192.0.2.5/24,gw=192.0.2.1` → 192.0.2.5; `ip=dhcp` says nothing.
fn cloud_init_ip(value: &str) -> Option<Ipv4Addr> {
    proxmox_options(value)
        .into_iter()
        .find(|(k, _)| k == "ip")
        .and_then(|(_, v)| ipv4_of_cidr(v))
}

/// One `netN:` value. qemu: `virtio=MAC,bridge=..,firewall=1,tag=20` (the model is the
/// key of the MAC; also `model=virtio,macaddr=MAC`); lxc: `name=eth0,hwaddr=MAC,ip=..`.
/// A NIC without a MAC is skipped: Proxmox always writes one, so such a line is not its.
fn proxmox_nic(kind: ProxmoxKind, vmid: &str, n: u32, value: &str, path: &Path) -> Option<VmNic> {
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
        config: path.to_path_buf(),
    })
}

// ---------------------------------------------------------------------------------
// libvirt

/// What a libvirt network's XML says about the NICs attached to it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Network {
    bridge: Option<String>,
    /// `<dhcp><host mac= ip=>`: (lowercase MAC, address).
    hosts: Vec<(String, Ipv4Addr)>,
}

/// The element `name`: the document's root, or (in libvirt's runtime state files,
/// `<domstatus>` / `<networkstatus>`) a child of the root.
fn state_element<'a, 'i>(
    doc: &'a roxmltree::Document<'i>,
    name: &str,
) -> Option<roxmltree::Node<'a, 'i>> {
    let root = doc.root_element();
    if root.has_tag_name(name) {
        return Some(root);
    }
    child(root, name)
}

fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    node.children().find(|c| c.has_tag_name(name))
}

fn child_attr<'a>(node: roxmltree::Node<'a, '_>, name: &str, attr: &str) -> Option<&'a str> {
    child(node, name)?
        .attribute(attr)
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

fn child_text(node: roxmltree::Node<'_, '_>, name: &str) -> Option<String> {
    let text = child(node, name)?.text()?.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// Network name → what its XML says; a name found in an earlier directory (the
/// running state) wins over the persistent definition.
fn read_networks(dirs: &[PathBuf]) -> HashMap<String, Network> {
    let mut networks = HashMap::new();
    for dir in dirs {
        for path in files_with_ext(dir, "xml") {
            let Some((name, net)) = read_text(&path).and_then(|t| parse_network(&t)) else {
                continue;
            };
            networks.entry(name).or_insert(net);
        }
    }
    networks
}

fn parse_network(text: &str) -> Option<(String, Network)> {
    let doc = roxmltree::Document::parse(text).ok()?;
    let net = state_element(&doc, "network")?;
    let name = child_text(net, "name")?;
    let bridge = child_attr(net, "bridge", "name").map(str::to_string);
    let hosts = net
        .children()
        .filter(|c| c.has_tag_name("ip"))
        .filter_map(|ip| child(ip, "dhcp"))
        .flat_map(|dhcp| dhcp.children().filter(|c| c.has_tag_name("host")))
        .filter_map(|host| {
            // IPv6 hosts and name-only hosts carry no IPv4-to-MAC mapping.
            let mac = normalize_mac(host.attribute("mac")?)?;
            let ip = host.attribute("ip")?.trim().parse().ok()?;
            Some((mac, ip))
        })
        .collect();
    Some((name, Network { bridge, hosts }))
}

/// A running domain has its state file in /run and its definition in /etc: the
/// first directory that has a domain gives all its NICs, since the running state is
/// what exists on the host now (and has the port names).
fn read_domains(dirs: &[PathBuf], networks: &HashMap<String, Network>) -> Vec<VmNic> {
    let mut seen = HashSet::new();
    let mut nics = Vec::new();
    for dir in dirs {
        for path in files_with_ext(dir, "xml") {
            let Some((name, found)) =
                read_text(&path).and_then(|t| parse_domain(&t, &path, networks))
            else {
                continue;
            };
            if seen.insert(name) {
                nics.extend(found);
            }
        }
    }
    nics
}

/// The domain's name and NICs. A domain without interfaces still returns its name,
/// so that its persistent XML does not stand in for its running state.
fn parse_domain(
    text: &str,
    path: &Path,
    networks: &HashMap<String, Network>,
) -> Option<(String, Vec<VmNic>)> {
    let doc = roxmltree::Document::parse(text).ok()?;
    let domain = state_element(&doc, "domain")?;
    let name = child_text(domain, "name")?;
    let nics = child(domain, "devices")
        .into_iter()
        .flat_map(|devices| devices.children().filter(|c| c.has_tag_name("interface")))
        .enumerate()
        .filter_map(|(i, iface)| libvirt_nic(iface, i, &name, path, networks))
        .collect();
    Some((name, nics))
}

/// One `<interface>`. Its index counts every interface, so a NIC without a MAC (which
/// libvirt never writes) does not shift the names of the others.
fn libvirt_nic(
    iface: roxmltree::Node<'_, '_>,
    index: usize,
    domain: &str,
    path: &Path,
    networks: &HashMap<String, Network>,
) -> Option<VmNic> {
    let mac = normalize_mac(child_attr(iface, "mac", "address")?)?;
    let network = match iface.attribute("type") {
        Some("network") => child_attr(iface, "source", "network").map(str::to_string),
        _ => None,
    };
    let net = network.as_ref().and_then(|n| networks.get(n));
    // Running XML names the bridge of a network NIC on <source> too; a stopped
    // domain's network NIC finds it in the network's XML.
    let bridge = child_attr(iface, "source", "bridge")
        .map(str::to_string)
        .or_else(|| net.and_then(|n| n.bridge.clone()));
    let ips = net
        .map(|n| {
            n.hosts
                .iter()
                .filter(|(m, _)| *m == mac)
                .map(|(_, ip)| *ip)
                .collect()
        })
        .unwrap_or_default();
    Some(VmNic {
        source: "libvirt",
        vm_id: domain.to_string(),
        vm_name: Some(domain.to_string()),
        nic: format!("net{index}"),
        mac,
        port: child_attr(iface, "target", "dev").map(str::to_string),
        bridge,
        network,
        firewall: false,
        vlan: libvirt_vlan(iface),
        ips,
        config: path.to_path_buf(),
    })
}

/// `<vlan><tag id='42'/></vlan>`: one tag is the NIC's VLAN; several make a trunk,
/// which has none.
fn libvirt_vlan(iface: roxmltree::Node<'_, '_>) -> Option<u16> {
    let vlan = child(iface, "vlan")?;
    let mut tags = vlan.children().filter(|c| c.has_tag_name("tag"));
    let tag = tags.next()?;
    if tags.next().is_some() {
        return None;
    }
    tag.attribute("id")?.trim().parse().ok()
}

// ---------------------------------------------------------------------------------
// dnsmasq leases

#[derive(Debug, Clone, PartialEq, Eq)]
struct Lease {
    mac: String,
    ip: Ipv4Addr,
}

/// Current leases from libvirt's dnsmasq directory: `*.status` (JSON, written by
/// libvirt's lease helper) and classic `*.leases`.
fn read_leases(dir: &Path, now: u64) -> Vec<Lease> {
    let status = files_with_ext(dir, "status")
        .into_iter()
        .filter_map(|p| read_text(&p))
        .flat_map(|t| parse_status(&t, now));
    let classic = files_with_ext(dir, "leases")
        .into_iter()
        .filter_map(|p| read_text(&p))
        .flat_map(|t| parse_leases(&t, now));
    status.chain(classic).collect()
}

/// dnsmasq removes a lease when it expires, so one still listed past its expiry is
/// stale (the helper did not run); its address may belong to another guest by now.
/// Expiry 0 means the lease never expires.
fn lease_current(expiry: u64, now: u64) -> bool {
    expiry == 0 || expiry > now
}

/// `[{"ip-address": "..", "mac-address": "..", "hostname": "..", "expiry-time": N}]`.
fn parse_status(text: &str, now: u64) -> Vec<Lease> {
    let Ok(Value::Array(entries)) = serde_json::from_str::<Value>(text) else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|e| {
            let mac = normalize_mac(e.get("mac-address")?.as_str()?)?;
            let ip = e.get("ip-address")?.as_str()?.trim().parse().ok()?;
            // A missing or odd expiry is not a reason to drop the address.
            let expiry = e.get("expiry-time").and_then(Value::as_u64).unwrap_or(0);
            lease_current(expiry, now).then_some(Lease { mac, ip })
        })
        .collect()
}

/// `expiry mac ip hostname clientid` lines; IPv6 lines (and the `duid` line) have no
/// MAC in the second field and are skipped by its check.
fn parse_leases(text: &str, now: u64) -> Vec<Lease> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let expiry: u64 = fields.next()?.parse().ok()?;
            let mac = normalize_mac(fields.next()?)?;
            let ip = fields.next()?.parse().ok()?;
            lease_current(expiry, now).then_some(Lease { mac, ip })
        })
        .collect()
}

fn apply_leases(nics: &mut [VmNic], leases: &[Lease]) {
    for nic in nics {
        for lease in leases.iter().filter(|l| l.mac == nic.mac) {
            push_unique(&mut nic.ips, lease.ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use proptest::prelude::*;

    use super::*;

    /// A fresh directory under the system temp dir, removed when dropped (also when
    /// the test fails).
    struct TempRoot(PathBuf);

    impl TempRoot {
        fn new(tag: &str) -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!(
                "pathtrace-hostconfig-{}-{tag}-{n}",
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("create temp dir");
            Self(dir)
        }

        /// Write `text` at the absolute host path `abs`, re-rooted here.
        fn write(&self, abs: &str, text: &str) {
            let path = self.0.join(abs.trim_start_matches('/'));
            fs::create_dir_all(path.parent().expect("has parent")).expect("mkdir");
            fs::write(path, text).expect("write fixture");
        }

        fn dirs(&self) -> ConfigDirs {
            ConfigDirs::under(&self.0)
        }
    }

    impl Drop for TempRoot {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    // A qemu VM: two NICs (one behind the firewall, one tagged), cloud-init for
    // both, a description comment, odd whitespace and an upper-case MAC, and a
    // snapshot whose NICs are not the VM's current ones.
    const QEMU_105: &str = "\
#web server%3A frontend
boot: order=scsi0;net0
cores: 2
ipconfig0: ip=192.0.2.5/24,gw=192.0.2.1
ipconfig1:ip=dhcp
memory: 2048
name: web01
net0: virtio=BC:24:11:AA:BB:CC,bridge=vmbr0,firewall=1
  net1 :  e1000=bc:24:11:00:00:01 , bridge=vmbr1,tag=20
ostype: l26
parent: before-upgrade
scsi0: local-lvm:vm-105-disk-0,size=32G
smbios1: uuid=6f1c0a6e-2d55-4d6a-9a57-0c7d2f1d3a11
vmgenid: 4b1b2c3d-1111-2222-3333-444455556666

[before-upgrade]
ipconfig0: ip=192.0.2.99/24
name: web01
net0: virtio=BC:24:11:AA:BB:CC,bridge=vmbr9
net2: virtio=BC:24:11:DE:AD:00,bridge=vmbr0
snaptime: 1700000000
";

    const LXC_200: &str = "\
arch: amd64
cores: 1
hostname: dns01
memory: 512
net0: name=eth0,bridge=vmbr0,firewall=1,gw=192.0.2.1,hwaddr=BC:24:11:12:34:56,ip=192.0.2.7/24,type=veth
net1: name=eth1,bridge=vmbr1,hwaddr=BC:24:11:12:34:57,ip=dhcp,tag=30,type=veth
ostype: debian
rootfs: local-lvm:vm-200-disk-0,size=8G
unprivileged: 1
";

    // /run/libvirt/qemu/app.xml: the running state wraps the live domain XML.
    const APP_RUNNING: &str = "\
<!--
WARNING: THIS IS AN AUTO-GENERATED FILE. CHANGES TO IT ARE LIKELY TO BE
OVERWRITTEN AND LOST.
-->
<domstatus state='running' reason='booted' pid='4242'>
  <taint flag='high-privileges'/>
  <monitor path='/var/lib/libvirt/qemu/domain-3-app/monitor.sock' type='unix'/>
  <domain type='kvm' id='3'>
    <name>app</name>
    <uuid>0b5e7c1e-8f7a-4c55-9b0e-2f6e8d1c9a01</uuid>
    <memory unit='KiB'>2097152</memory>
    <devices>
      <emulator>/usr/bin/qemu-system-x86_64</emulator>
      <interface type='network'>
        <mac address='52:54:00:6B:3C:01'/>
        <source network='default' portid='a1b2c3d4-0000-1111-2222-333344445555' bridge='virbr0'/>
        <target dev='vnet3'/>
        <model type='virtio'/>
        <alias name='net0'/>
        <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
      </interface>
      <interface type='bridge'>
        <mac address='52:54:00:6b:3c:02'/>
        <source bridge='br0'/>
        <vlan>
          <tag id='42'/>
        </vlan>
        <target dev='vnet4'/>
        <model type='virtio'/>
        <alias name='net1'/>
      </interface>
    </devices>
  </domain>
</domstatus>
";

    // /etc/libvirt/qemu/app.xml: the same domain's definition, no target devs.
    const APP_PERSISTENT: &str = "\
<!--
WARNING: THIS IS AN AUTO-GENERATED FILE. CHANGES TO IT ARE LIKELY TO BE
OVERWRITTEN AND LOST. Changes to this xml configuration should be made using:
  virsh edit app
-->
<domain type='kvm'>
  <name>app</name>
  <uuid>0b5e7c1e-8f7a-4c55-9b0e-2f6e8d1c9a01</uuid>
  <devices>
    <interface type='network'>
      <mac address='52:54:00:6b:3c:01'/>
      <source network='default'/>
      <model type='virtio'/>
    </interface>
    <interface type='bridge'>
      <mac address='52:54:00:6b:3c:02'/>
      <source bridge='br0'/>
      <vlan><tag id='42'/></vlan>
      <model type='virtio'/>
    </interface>
  </devices>
</domain>
";

    // A defined but stopped domain on the default network, and a trunk NIC.
    const DB_PERSISTENT: &str = "\
<domain type='kvm'>
  <name>db</name>
  <devices>
    <interface type='network'>
      <mac address='52:54:00:aa:00:01'/>
      <source network='default'/>
    </interface>
    <interface type='bridge'>
      <mac address='52:54:00:aa:00:02'/>
      <source bridge='br0'/>
      <vlan trunk='yes'><tag id='10'/><tag id='11'/></vlan>
    </interface>
  </devices>
</domain>
";

    const DEFAULT_NETWORK: &str = "\
<network>
  <name>default</name>
  <uuid>9a05da11-e96b-47f3-8253-a3a482e445f5</uuid>
  <forward mode='nat'/>
  <bridge name='virbr0' stp='on' delay='0'/>
  <mac address='52:54:00:0a:cd:21'/>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='192.168.122.2' end='192.168.122.254'/>
      <host mac='52:54:00:AA:00:01' name='db' ip='192.168.122.20'/>
      <host name='nomac' ip='192.168.122.21'/>
    </dhcp>
  </ip>
  <ip family='ipv6' address='fd00::1' prefix='64'>
    <dhcp><host id='0:1:0:1:aa' ip='fd00::20'/></dhcp>
  </ip>
</network>
";

    // One current lease, one that expired long ago (stale), one with no expiry.
    const VIRBR0_STATUS: &str = r#"[
  {
    "ip-address": "192.168.122.45",
    "mac-address": "52:54:00:6b:3c:01",
    "hostname": "app",
    "client-id": "01:52:54:00:6b:3c:01",
    "expiry-time": 4102444800
  },
  {
    "ip-address": "192.168.122.46",
    "mac-address": "52:54:00:6b:3c:02",
    "hostname": "app",
    "expiry-time": 1000000000
  },
  {
    "ip-address": "192.168.122.47",
    "mac-address": "52:54:00:AA:00:01"
  }
]
"#;

    fn host() -> TempRoot {
        let root = TempRoot::new("host");
        root.write("/etc/pve/qemu-server/105.conf", QEMU_105);
        root.write("/etc/pve/lxc/200.conf", LXC_200);
        root.write("/run/libvirt/qemu/app.xml", APP_RUNNING);
        root.write("/etc/libvirt/qemu/app.xml", APP_PERSISTENT);
        root.write("/etc/libvirt/qemu/db.xml", DB_PERSISTENT);
        root.write("/etc/libvirt/qemu/networks/default.xml", DEFAULT_NETWORK);
        root.write("/var/lib/libvirt/dnsmasq/virbr0.status", VIRBR0_STATUS);
        root
    }

    fn one<'a>(nics: &'a [VmNic], vm: &str, nic: &str) -> &'a VmNic {
        let found: Vec<_> = nics
            .iter()
            .filter(|n| n.vm_id == vm && n.nic == nic)
            .collect();
        assert_eq!(found.len(), 1, "{vm}/{nic} in {nics:#?}");
        found[0]
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("test address")
    }

    #[test]
    fn proxmox_qemu_current_nics_only() {
        let root = host();
        let nics = read_all(&root.dirs());
        let qemu: Vec<_> = nics.iter().filter(|n| n.source == "proxmox-qemu").collect();
        assert_eq!(qemu.len(), 2, "the snapshot's net2 is not a NIC: {qemu:#?}");
        let net0 = one(&nics, "105", "net0");
        assert_eq!(
            *net0,
            VmNic {
                source: "proxmox-qemu",
                vm_id: "105".into(),
                vm_name: Some("web01".into()),
                nic: "net0".into(),
                mac: "bc:24:11:aa:bb:cc".into(),
                port: Some("tap105i0".into()),
                bridge: Some("vmbr0".into()),
                network: None,
                firewall: true,
                vlan: None,
                ips: vec![ip("192.0.2.5")],
                config: root.0.join("etc/pve/qemu-server/105.conf"),
            }
        );
        let net1 = one(&nics, "105", "net1");
        assert_eq!(net1.mac, "bc:24:11:00:00:01");
        assert_eq!(net1.port.as_deref(), Some("tap105i1"));
        assert_eq!(net1.bridge.as_deref(), Some("vmbr1"));
        assert_eq!(net1.vlan, Some(20));
        assert!(!net1.firewall);
        assert!(net1.ips.is_empty(), "ip=dhcp is unknown: {:?}", net1.ips);
    }

    #[test]
    fn proxmox_lxc() {
        let root = host();
        let nics = read_all(&root.dirs());
        let net0 = one(&nics, "200", "net0");
        assert_eq!(net0.source, "proxmox-lxc");
        assert_eq!(net0.vm_name.as_deref(), Some("dns01"));
        assert_eq!(net0.mac, "bc:24:11:12:34:56");
        assert_eq!(net0.port.as_deref(), Some("veth200i0"));
        assert_eq!(net0.bridge.as_deref(), Some("vmbr0"));
        assert!(net0.firewall);
        assert_eq!(net0.ips, vec![ip("192.0.2.7")]);
        let net1 = one(&nics, "200", "net1");
        assert_eq!(net1.port.as_deref(), Some("veth200i1"));
        assert_eq!(net1.vlan, Some(30));
        assert!(net1.ips.is_empty());
    }

    #[test]
    fn proxmox_mac_spellings() {
        let path = Path::new("x.conf");
        let nics = proxmox_nics(
            ProxmoxKind::Qemu,
            "7",
            "net0: model=virtio,macaddr=0A-0B-0C-0D-0E-0F,bridge=vmbr0\n\
             net1: vmxnet3=1:2:3:4:5:6\n\
             net2: virtio,bridge=vmbr0\n\
             net10: rtl8139=AA:BB:CC:DD:EE:FF,link_down=1\n\
             netx: virtio=AA:BB:CC:DD:EE:00\n",
            path,
        );
        let got: Vec<_> = nics
            .iter()
            .map(|n| (n.nic.as_str(), n.mac.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("net0", "0a:0b:0c:0d:0e:0f"),
                ("net1", "01:02:03:04:05:06"),
                ("net10", "aa:bb:cc:dd:ee:ff"),
            ],
            "a NIC without a MAC and a non-numeric key are skipped; net10 sorts after net1"
        );
        assert_eq!(nics[2].port.as_deref(), Some("tap7i10"));
    }

    #[test]
    fn libvirt_running_preferred_over_persistent() {
        let root = host();
        let nics = read_all(&root.dirs());
        let app: Vec<_> = nics.iter().filter(|n| n.vm_id == "app").collect();
        assert_eq!(app.len(), 2, "one entry per NIC: {app:#?}");
        let net0 = one(&nics, "app", "net0");
        assert_eq!(
            *net0,
            VmNic {
                source: "libvirt",
                vm_id: "app".into(),
                vm_name: Some("app".into()),
                nic: "net0".into(),
                mac: "52:54:00:6b:3c:01".into(),
                port: Some("vnet3".into()),
                bridge: Some("virbr0".into()),
                network: Some("default".into()),
                firewall: false,
                vlan: None,
                ips: vec![ip("192.168.122.45")],
                config: root.0.join("run/libvirt/qemu/app.xml"),
            }
        );
        let net1 = one(&nics, "app", "net1");
        assert_eq!(net1.port.as_deref(), Some("vnet4"));
        assert_eq!(net1.bridge.as_deref(), Some("br0"));
        assert_eq!(net1.network, None);
        assert_eq!(net1.vlan, Some(42));
        assert!(net1.ips.is_empty(), "its lease expired: {:?}", net1.ips);
    }

    #[test]
    fn libvirt_stopped_domain_uses_network_xml() {
        let root = host();
        let nics = read_all(&root.dirs());
        let net0 = one(&nics, "db", "net0");
        assert_eq!(net0.port, None, "a stopped domain has no port");
        assert_eq!(net0.network.as_deref(), Some("default"));
        assert_eq!(
            net0.bridge.as_deref(),
            Some("virbr0"),
            "from the network XML"
        );
        assert_eq!(
            net0.ips,
            vec![ip("192.168.122.20"), ip("192.168.122.47")],
            "the static DHCP host, then the lease"
        );
        let net1 = one(&nics, "db", "net1");
        assert_eq!(net1.vlan, None, "a trunk has no single VLAN");
    }

    #[test]
    fn running_network_state_wins() {
        let root = host();
        // The running network was started with another bridge than the definition
        // now says (edited since); NICs are on the running one.
        root.write(
            "/run/libvirt/network/default.xml",
            "<networkstatus><class_id bitmap='0-2'/><floor sum='0'/>\
             <network><name>default</name><bridge name='virbr7'/></network></networkstatus>",
        );
        let nics = read_all(&root.dirs());
        assert_eq!(one(&nics, "db", "net0").bridge.as_deref(), Some("virbr7"));
    }

    #[test]
    fn classic_leases_file() {
        let leases = parse_leases(
            "duid 00:01:00:01:2c:aa:bb:cc:52:54:00:00:00:01\n\
             1700000600 52:54:00:AA:00:09 192.168.122.9 vm9 01:52:54:00:aa:00:09\n\
             0 52:54:00:aa:00:08 192.168.122.8 * *\n\
             1700000600 2345 fd00::9 vm9 00:01\n\
             1600000000 52:54:00:aa:00:07 192.168.122.7 old *\n\
             garbage\n",
            1_700_000_000,
        );
        assert_eq!(
            leases,
            [
                Lease {
                    mac: "52:54:00:aa:00:09".into(),
                    ip: ip("192.168.122.9")
                },
                Lease {
                    mac: "52:54:00:aa:00:08".into(),
                    ip: ip("192.168.122.8")
                },
            ]
        );
    }

    #[test]
    fn malformed_files_are_skipped() {
        let root = host();
        root.write(
            "/etc/pve/qemu-server/106.conf",
            "\u{0}\u{1}net0 virtio\n[[[\n",
        );
        root.write(
            "/etc/pve/qemu-server/notes.conf",
            "net0: virtio=AA:BB:CC:DD:EE:01\n",
        );
        root.write(
            "/etc/pve/qemu-server/107.conf.tmp",
            "net0: virtio=AA:BB:CC:DD:EE:02\n",
        );
        root.write(
            "/run/libvirt/qemu/broken.xml",
            "<domstatus><domain><name>broken",
        );
        root.write("/etc/libvirt/qemu/empty.xml", "");
        root.write(
            "/etc/libvirt/qemu/networks/bad.xml",
            "<network><bridge name='x'/></network>",
        );
        root.write("/var/lib/libvirt/dnsmasq/virbr1.status", "{not json");
        root.write(
            "/var/lib/libvirt/dnsmasq/virbr2.status",
            "{\"ip-address\": 5}",
        );
        // A directory named like a config is not one.
        fs::create_dir_all(root.0.join("etc/libvirt/qemu/dir.xml")).expect("mkdir");
        let nics = read_all(&root.dirs());
        let mut vms: Vec<_> = nics.iter().map(|n| n.vm_id.as_str()).collect();
        vms.dedup();
        assert_eq!(vms, ["105", "200", "app", "db"]);
        assert_eq!(nics.len(), 8);
    }

    #[test]
    fn missing_directories_are_empty() {
        let root = TempRoot::new("empty");
        assert!(read_all(&root.dirs()).is_empty());
        assert!(read_all(&ConfigDirs::under(&root.0.join("does/not/exist"))).is_empty());
    }

    #[test]
    fn find_by_id_name_or_mac() {
        let root = host();
        let nics = read_all(&root.dirs());
        let names = |found: Vec<&VmNic>| -> Vec<String> {
            found
                .iter()
                .map(|n| format!("{}/{}", n.vm_id, n.nic))
                .collect()
        };
        assert_eq!(names(find(&nics, "105")), ["105/net0", "105/net1"]);
        assert_eq!(names(find(&nics, "web01")), ["105/net0", "105/net1"]);
        assert_eq!(names(find(&nics, " dns01 ")), ["200/net0", "200/net1"]);
        assert_eq!(names(find(&nics, "app")), ["app/net0", "app/net1"]);
        assert_eq!(names(find(&nics, "BC:24:11:12:34:57")), ["200/net1"]);
        assert!(find(&nics, "Web01").is_empty(), "names are case-sensitive");
        assert!(find(&nics, "").is_empty());
        assert!(find(&nics, "999").is_empty());
    }

    #[test]
    fn by_ip_static_and_leased() {
        let root = host();
        let nics = read_all(&root.dirs());
        let names = |found: Vec<&VmNic>| -> Vec<String> {
            found
                .iter()
                .map(|n| format!("{}/{}", n.vm_id, n.nic))
                .collect()
        };
        assert_eq!(names(by_ip(&nics, ip("192.0.2.5"))), ["105/net0"]);
        assert_eq!(names(by_ip(&nics, ip("192.0.2.7"))), ["200/net0"]);
        assert_eq!(names(by_ip(&nics, ip("192.168.122.45"))), ["app/net0"]);
        assert_eq!(names(by_ip(&nics, ip("192.168.122.20"))), ["db/net0"]);
        assert!(
            by_ip(&nics, ip("192.0.2.99")).is_empty(),
            "snapshot address"
        );
        assert!(
            by_ip(&nics, ip("192.168.122.46")).is_empty(),
            "expired lease"
        );
    }

    #[test]
    fn config_dirs_under_root() {
        let dirs = ConfigDirs::under(Path::new("/srv/copy"));
        assert_eq!(
            dirs.proxmox_qemu,
            Path::new("/srv/copy/etc/pve/qemu-server")
        );
        assert_eq!(
            dirs.libvirt_domains,
            [
                PathBuf::from("/srv/copy/run/libvirt/qemu"),
                PathBuf::from("/srv/copy/etc/libvirt/qemu"),
            ]
        );
        let system = ConfigDirs::under(Path::new("/"));
        assert_eq!(system.proxmox_lxc, Path::new("/etc/pve/lxc"));
        assert_eq!(system.libvirt_leases, Path::new("/var/lib/libvirt/dnsmasq"));
        assert_eq!(
            system.libvirt_networks,
            [
                PathBuf::from("/run/libvirt/network"),
                PathBuf::from("/etc/libvirt/qemu/networks"),
            ]
        );
    }

    #[test]
    fn mac_normalization() {
        assert_eq!(
            normalize_mac(" BC:24:11:aA:0:cc ").as_deref(),
            Some("bc:24:11:aa:00:cc")
        );
        assert_eq!(
            normalize_mac("bc-24-11-aa-bb-cc").as_deref(),
            Some("bc:24:11:aa:bb:cc")
        );
        for bad in [
            "",
            "bc:24:11:aa:bb",
            "bc:24:11:aa:bb:cc:dd",
            "bc:24:11:aa:bb:zz",
            "bc:24:11:aa::cc",
            "bc:24:11:aa:bbb:cc",
        ] {
            assert_eq!(normalize_mac(bad), None, "{bad}");
        }
    }

    proptest! {
        // Arbitrary text must give an answer or nothing, never a panic.
        #[test]
        fn parsers_never_panic(text in "(net[0-9]{0,2}|ipconfig0|name|:|=|,|\\[|#|\n| |virtio|BC:24:11:AA:BB:CC|ip|192.0.2.5/24|.){0,40}") {
            let _ = proxmox_nics(ProxmoxKind::Qemu, "1", &text, Path::new("1.conf"));
            let _ = proxmox_nics(ProxmoxKind::Lxc, "1", &text, Path::new("1.conf"));
            let _ = parse_leases(&text, 0);
            let _ = parse_status(&text, 0);
        }

        #[test]
        fn xml_parsers_never_panic(text in "(<domain>|<domstatus>|<network>|<name>x</name>|<devices>|<interface type='network'>|<mac address='52:54:00:00:00:01'/>|<source network='x' bridge='b'/>|<vlan>|<tag id='70000'/>|</vlan>|</interface>|</devices>|</domain>|<bridge name='b'/>|<ip><dhcp><host mac='52:54:00:00:00:01' ip='1.2.3.4'/></dhcp></ip>|</network>|.){0,30}") {
            let networks: HashMap<String, Network> = parse_network(&text).into_iter().collect();
            let _ = parse_domain(&text, Path::new("x.xml"), &networks);
        }
    }
}
