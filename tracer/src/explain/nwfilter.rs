//! libvirt's network filters (nwfilter) in their own terms.
//!
//! A domain whose `<interface>` has `<filterref filter='clean-traffic'>` gets,
//! when it starts, a filter binding for its port (vnet0): libvirt writes the
//! filter's ebtables rules for that port — with ebtables-nft, the `bridge nat`
//! table — from the filter's definition and the NIC's parameters: `MAC` (the
//! NIC's `<mac address>`) and `IP` (`<parameter name='IP' value=.../>`, one
//! per address; without it libvirt learns the guest's address from its
//! traffic). Its chains are named for the port: `libvirt-I-vnet0` (what the
//! port sends, jumped to from PREROUTING) and `libvirt-O-vnet0` (what it
//! receives), and one per protocol below them, `I-vnet0-mac` (no-mac-spoofing),
//! `I-vnet0-ipv4-ip` (no-ip-spoofing), `I-vnet0-arp-mac`, `I-vnet0-arp-ip`
//! (no-arp-spoofing); the root chain drops what no filter accepted
//! (no-other-l2-traffic). The parameters are in libvirt's state file for the
//! binding (`/run/libvirt/nwfilter-binding/vnet0.xml`), else in the domain's
//! XML. An ebtables edit does not last: libvirt writes the chains again on
//! every start of the domain or of libvirtd, so the fix is said in the
//! domain's definition or the guest.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use super::nft::{Culprit, PacketView, L3};

/// What libvirt instantiated on a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The domain owning the port.
    pub owner: String,
    pub filter: String,
    /// The `MAC` parameter (the NIC's MAC).
    pub mac: Option<String>,
    /// The `IP` parameters; empty when libvirt learns the address.
    pub ips: Vec<Ipv4Addr>,
    /// The file it was read from.
    pub source: PathBuf,
}

/// The port and the part of the filter a chain of libvirt's belongs to:
/// `libvirt-I-vnet0` → ("vnet0", ""), `I-vnet0-ipv4-ip` → ("vnet0", "ipv4-ip").
/// `port` is the device the packet was on, which the chain's name must carry.
fn chain_part<'a>(chain: &'a str, port: &str) -> Option<&'a str> {
    if chain == format!("libvirt-I-{port}") {
        return Some("");
    }
    chain.strip_prefix(&format!("I-{port}-"))
}

/// The hint for a culprit in libvirt's nwfilter chains for what a guest's port
/// sends, or None when the rule is not libvirt's.
pub fn hint(c: &Culprit, pkt: &PacketView, what: &str, config_root: &Path) -> Option<String> {
    if c.family != "bridge" {
        return None;
    }
    let port = pkt.iifname.as_deref()?;
    let part = chain_part(&c.chain, port)?;
    let b = binding(config_root, port);
    let filter = b.as_ref().map_or("a network filter", |b| b.filter.as_str());
    let owner = b.as_ref().map_or("NAME", |b| b.owner.as_str());
    let head = match &b {
        Some(b) => format!(
            "libvirt's nwfilter {filter} on {port} (domain {owner}; {})",
            b.source.display()
        ),
        None => format!("libvirt's nwfilter on {port} (virsh nwfilter-binding-list)"),
    };
    let restart = format!("then restart the domain (virsh shutdown {owner}; virsh start {owner})");
    let body = match part {
        "mac" | "arp-mac" => {
            let allowed = b.as_ref().and_then(|b| b.mac.clone());
            let allowed = allowed.as_deref().unwrap_or("the NIC's MAC");
            let sent = pkt.ether_saddr.map(|m| crate::host::mac_text(&m));
            // Unknown: the frame did not pass as coming from the MAC the host
            // knows the guest by.
            let sent_words = sent.as_deref().unwrap_or("another MAC");
            let field = if part == "mac" {
                "frames"
            } else {
                "ARP sender MAC"
            };
            format!(
                "{head} lets {port} send only from MAC {allowed} (no-mac-spoofing: the NIC's \
                 <mac address='{allowed}'/>), and {what} comes from {sent_words}: {chain} drops \
                 its {field}. The guest changed its MAC: set it back in the guest (ip link set \
                 dev eth0 address {allowed}), or give the NIC the MAC it uses (virsh edit \
                 {owner}: <mac address='{new}'/>), {restart}",
                chain = c.chain,
                new = sent.as_deref().unwrap_or("..."),
            )
        }
        "ipv4-ip" | "arp-ip" => {
            let addr = pkt.saddr.map_or_else(|| "?".into(), |a| a.to_string());
            let (kind, carrier) = match pkt.l3 {
                L3::Ipv4 => ("IPv4", "no-ip-spoofing"),
                L3::Arp => ("ARP", "no-arp-ip-spoofing"),
                L3::Ipv6 => ("IPv6", "no-ipv6-spoofing"),
            };
            let ips = b.as_ref().map(|b| b.ips.clone()).unwrap_or_default();
            let (allowed, configured) = match (ips.as_slice(), &b) {
                ([], Some(_)) => (
                    "the address libvirt learned from its first DHCP or ARP (no IP parameter)"
                        .to_string(),
                    "the address it had".to_string(),
                ),
                ([], None) => ("the filter's IP parameter".into(), "its own address".into()),
                (ips, _) => {
                    let list = ips.iter().map(Ipv4Addr::to_string).collect::<Vec<_>>();
                    (
                        format!("{}, its IP parameter", list.join(", ")),
                        list.join(" or "),
                    )
                }
            };
            format!(
                "{head} lets {port} send {kind} only from {allowed} ({carrier}), and {what} \
                 comes from {addr}: {chain} drops it. Make the guest send from {configured}, \
                 or allow {addr} in the NIC's filter (virsh edit {owner}: <filterref \
                 filter='{filter}'><parameter name='IP' value='{addr}'/></filterref>, one \
                 parameter per address), {restart}",
                chain = c.chain,
            )
        }
        "" => format!(
            "{head} lets {port} send only what its rules accept (no-other-l2-traffic: IPv4, \
             ARP and RARP for clean-traffic), and {what} is none of it: libvirt-I-{port} drops \
             it. Change the NIC's filter (virsh edit {owner}: <filterref filter=.../>) or the \
             filter itself (virsh nwfilter-edit {filter}), {restart}"
        ),
        other => format!(
            "{head}: its chain {chain} ({other}) drops {what}. Change the NIC's filter (virsh \
             edit {owner}) or the filter itself (virsh nwfilter-edit {filter}), {restart}",
            chain = c.chain,
        ),
    };
    Some(format!(
        "{body}. libvirt writes these ebtables rules (table bridge {}) whenever it instantiates \
         the filter: an ebtables or nft edit is undone",
        c.table
    ))
}

/// The anti-spoofing chains of a binding: the culprit judges who sent the frame.
pub fn judges_sender(c: &Culprit, port: &str) -> bool {
    c.family == "bridge"
        && matches!(
            chain_part(&c.chain, port),
            Some("mac" | "ipv4-ip" | "arp-mac" | "arp-ip")
        )
}

/// What libvirt instantiated on `port`: its binding's state file, else the
/// running (then the persistent) domain XML whose NIC has that target device.
pub fn binding(root: &Path, port: &str) -> Option<Binding> {
    let state = root.join(format!("run/libvirt/nwfilter-binding/{port}.xml"));
    if let Some(b) = read(&state).and_then(|t| parse_binding(&t, &state)) {
        return Some(b);
    }
    ["run/libvirt/qemu", "etc/libvirt/qemu"]
        .iter()
        .flat_map(|d| xml_files(&root.join(d)))
        .find_map(|p| parse_domain_nic(&read(&p)?, port, &p))
}

/// libvirt's `<filterbindingstatus><filterbinding>` (or a bare `<filterbinding>`).
fn parse_binding(text: &str, path: &Path) -> Option<Binding> {
    let doc = roxmltree::Document::parse(text).ok()?;
    let root = doc.root_element();
    let fb = match root.has_tag_name("filterbinding") {
        true => root,
        false => child(root, "filterbinding")?,
    };
    let owner = child(child(fb, "owner")?, "name")?
        .text()?
        .trim()
        .to_string();
    let mac = child(fb, "mac").and_then(|m| m.attribute("address"));
    from_filterref(child(fb, "filterref")?, owner, mac, path)
}

/// The `<filterref>` of the domain's `<interface>` whose `<target dev>` is `port`.
fn parse_domain_nic(text: &str, port: &str, path: &Path) -> Option<Binding> {
    let doc = roxmltree::Document::parse(text).ok()?;
    let root = doc.root_element();
    let domain = match root.has_tag_name("domain") {
        true => root,
        false => child(root, "domain")?,
    };
    let owner = child(domain, "name")?.text()?.trim().to_string();
    let iface = child(domain, "devices")?.children().find(|i| {
        i.has_tag_name("interface")
            && child(*i, "target").and_then(|t| t.attribute("dev")) == Some(port)
    })?;
    let mac = child(iface, "mac").and_then(|m| m.attribute("address"));
    from_filterref(child(iface, "filterref")?, owner, mac, path)
}

fn from_filterref(
    fr: roxmltree::Node,
    owner: String,
    mac: Option<&str>,
    path: &Path,
) -> Option<Binding> {
    let params: Vec<(&str, &str)> = fr
        .children()
        .filter(|p| p.has_tag_name("parameter"))
        .filter_map(|p| Some((p.attribute("name")?, p.attribute("value")?)))
        .collect();
    let param_mac = params.iter().find(|(n, _)| *n == "MAC").map(|(_, v)| *v);
    Some(Binding {
        owner,
        filter: fr.attribute("filter")?.to_string(),
        mac: param_mac.or(mac).map(str::to_lowercase),
        ips: params
            .iter()
            .filter(|(n, _)| *n == "IP")
            .filter_map(|(_, v)| v.trim().parse().ok())
            .collect(),
        source: path.to_path_buf(),
    })
}

fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    node.children().find(|c| c.has_tag_name(name))
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn xml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "xml"))
        .collect();
    files.sort();
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of libvirt's state file for a binding (virNWFilterBindingObj),
    /// as libvirt 9.0 wrote it in the lab for clean-traffic on vnet0.
    const STATE: &str = "<!--\nWARNING: THIS IS AN AUTO-GENERATED FILE.\n-->\n\n\
        <filterbindingstatus>\n  <filterbinding>\n    <owner>\n      <name>guest0</name>\n      \
        <uuid>0000585a-0000-4000-8000-000000000064</uuid>\n    </owner>\n    \
        <portdev name='vnet0'/>\n    <mac address='52:54:00:aa:00:56'/>\n    \
        <filterref filter='clean-traffic'>\n      <parameter name='IP' value='192.0.2.100'/>\n      \
        <parameter name='MAC' value='52:54:00:aa:00:56'/>\n    </filterref>\n  \
        </filterbinding>\n</filterbindingstatus>\n";

    /// Written once: tests run in parallel and read it.
    fn root() -> PathBuf {
        static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
        ROOT.get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("pt-nwfilter-{}", std::process::id()));
            let state = dir.join("run/libvirt/nwfilter-binding");
            std::fs::create_dir_all(&state).unwrap();
            std::fs::write(state.join("vnet0.xml"), STATE).unwrap();
            dir
        })
        .clone()
    }

    fn culprit(chain: &str) -> Culprit {
        Culprit {
            family: "bridge".into(),
            table: "nat".into(),
            chain: chain.into(),
            handle: Some(70),
            verdict: "drop".into(),
            ..Default::default()
        }
    }

    fn sent(ip: &str) -> PacketView {
        PacketView {
            saddr: Some(ip.parse().unwrap()),
            iifname: Some("vnet0".into()),
            ether_saddr: Some([0x52, 0x54, 0, 0xaa, 0, 0x56]),
            ..Default::default()
        }
    }

    #[test]
    fn chains_of_a_port() {
        assert_eq!(chain_part("libvirt-I-vnet0", "vnet0"), Some(""));
        assert_eq!(chain_part("I-vnet0-ipv4-ip", "vnet0"), Some("ipv4-ip"));
        assert_eq!(chain_part("I-vnet10-mac", "vnet1"), None);
        assert_eq!(chain_part("O-vnet0-ipv4", "vnet0"), None);
        assert!(judges_sender(&culprit("I-vnet0-arp-ip"), "vnet0"));
        assert!(!judges_sender(&culprit("libvirt-I-vnet0"), "vnet0"));
    }

    #[test]
    fn the_binding_state_gives_owner_filter_and_parameters() {
        let b = binding(&root(), "vnet0").unwrap();
        assert_eq!(b.owner, "guest0");
        assert_eq!(b.filter, "clean-traffic");
        assert_eq!(b.mac.as_deref(), Some("52:54:00:aa:00:56"));
        assert_eq!(b.ips, ["192.0.2.100".parse::<Ipv4Addr>().unwrap()]);
        assert_eq!(binding(&root(), "vnet1"), None);
    }

    /// Without libvirt's state file, the running domain's XML: the NIC whose
    /// target is the port, its MAC and its `<filterref>`.
    #[test]
    fn the_domain_xml_stands_in_for_the_binding() {
        let dir = std::env::temp_dir().join(format!("pt-nwfilter-dom-{}", std::process::id()));
        let qemu = dir.join("run/libvirt/qemu");
        std::fs::create_dir_all(&qemu).unwrap();
        let xml = "<domstatus><domain type='kvm'><name>web</name><devices>\
            <interface type='network'><mac address='52:54:00:AA:00:01'/><target dev='vnet1'/>\
            </interface><interface type='network'><mac address='52:54:00:AA:00:02'/>\
            <target dev='vnet2'/><filterref filter='clean-traffic'>\
            <parameter name='IP' value='192.0.2.7'/><parameter name='IP' value='192.0.2.8'/>\
            </filterref></interface></devices></domain></domstatus>";
        std::fs::write(qemu.join("web.xml"), xml).unwrap();
        let b = binding(&dir, "vnet2").unwrap();
        assert_eq!(
            (b.owner.as_str(), b.filter.as_str()),
            ("web", "clean-traffic")
        );
        assert_eq!(b.mac.as_deref(), Some("52:54:00:aa:00:02"));
        assert_eq!(b.ips.len(), 2);
        assert_eq!(b.source, qemu.join("web.xml"));
        // A NIC without a filter has no binding.
        assert_eq!(binding(&dir, "vnet1"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_spoofed_source_is_told_against_the_ip_parameter() {
        let h = hint(
            &culprit("I-vnet0-ipv4-ip"),
            &sent("192.0.2.101"),
            "the request",
            &root(),
        )
        .unwrap();
        assert!(
            h.starts_with("libvirt's nwfilter clean-traffic on vnet0 (domain guest0; "),
            "{h}"
        );
        assert!(
            h.contains(
                "lets vnet0 send IPv4 only from 192.0.2.100, its IP parameter (no-ip-spoofing), \
                 and the request comes from 192.0.2.101: I-vnet0-ipv4-ip drops it. Make the \
                 guest send from 192.0.2.100"
            ),
            "{h}"
        );
        assert!(
            h.contains("<parameter name='IP' value='192.0.2.101'/>"),
            "{h}"
        );
        // Not libvirt's: another family, another port's chain.
        let mut other = culprit("I-vnet0-ipv4-ip");
        other.family = "ip".into();
        assert_eq!(hint(&other, &sent("192.0.2.101"), "x", &root()), None);
        let mut elsewhere = sent("192.0.2.101");
        elsewhere.iifname = Some("vnet1".into());
        assert_eq!(
            hint(&culprit("I-vnet0-ipv4-ip"), &elsewhere, "x", &root()),
            None
        );
    }

    #[test]
    fn a_changed_mac_is_told_against_the_nics_mac() {
        let mut p = sent("192.0.2.100");
        p.ether_saddr = Some([0x52, 0x54, 0, 0, 0, 0xbb]);
        let h = hint(&culprit("I-vnet0-mac"), &p, "the request", &root()).unwrap();
        assert!(
            h.contains(
                "lets vnet0 send only from MAC 52:54:00:aa:00:56 (no-mac-spoofing: the NIC's \
                 <mac address='52:54:00:aa:00:56'/>), and the request comes from \
                 52:54:00:00:00:bb: I-vnet0-mac drops its frames"
            ),
            "{h}"
        );
        assert!(h.ends_with("an ebtables or nft edit is undone"), "{h}");
    }
}
