//! libvirt guests: domain XML (live state first, then the definition) and
//! network XML.

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use super::*;

/// What a libvirt network's XML says about the NICs attached to it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Network {
    bridge: Option<String>,
    /// `<dhcp><host mac= ip=>`: (lowercase MAC, address).
    hosts: Vec<(String, Ipv4Addr)>,
}

/// The element `name`: the document's root, or (in libvirt's runtime state files,
/// `<domstatus>` / `<networkstatus>`) a child of the root.
pub(super) fn state_element<'a, 'i>(
    doc: &'a roxmltree::Document<'i>,
    name: &str,
) -> Option<roxmltree::Node<'a, 'i>> {
    let root = doc.root_element();
    if root.has_tag_name(name) {
        return Some(root);
    }
    child(root, name)
}

pub(super) fn child<'a, 'i>(
    node: roxmltree::Node<'a, 'i>,
    name: &str,
) -> Option<roxmltree::Node<'a, 'i>> {
    node.children().find(|c| c.has_tag_name(name))
}

pub(super) fn child_attr<'a>(
    node: roxmltree::Node<'a, '_>,
    name: &str,
    attr: &str,
) -> Option<&'a str> {
    child(node, name)?
        .attribute(attr)
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

pub(super) fn child_text(node: roxmltree::Node<'_, '_>, name: &str) -> Option<String> {
    let text = child(node, name)?.text()?.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// Network name → what its XML says; a name found in an earlier directory (the
/// running state) wins over the persistent definition.
pub(super) fn read_networks(dirs: &[PathBuf]) -> HashMap<String, Network> {
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

pub(super) fn parse_network(text: &str) -> Option<(String, Network)> {
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
pub(super) fn read_domains(dirs: &[PathBuf], networks: &HashMap<String, Network>) -> Vec<VmNic> {
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
pub(super) fn parse_domain(
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
pub(super) fn libvirt_nic(
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
        // libvirt's IPv6 DHCP hosts are keyed by DUID or name, not by MAC.
        ips6: Vec::new(),
        config: path.to_path_buf(),
    })
}

/// `<vlan><tag id='42'/></vlan>`: one tag is the NIC's VLAN; several make a trunk,
/// which has none.
pub(super) fn libvirt_vlan(iface: roxmltree::Node<'_, '_>) -> Option<u16> {
    let vlan = child(iface, "vlan")?;
    let mut tags = vlan.children().filter(|c| c.has_tag_name("tag"));
    let tag = tags.next()?;
    if tags.next().is_some() {
        return None;
    }
    tag.attribute("id")?.trim().parse().ok()
}
