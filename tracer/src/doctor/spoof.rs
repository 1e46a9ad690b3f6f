//! `spoof_filter`: what the bridge's own firewall (the nftables `bridge`
//! family) does to the guest's frames on its port, sent from its real MAC and
//! address. Anti-spoofing filters — Proxmox's IP filter (`ipfilter: 1`) and
//! MAC filter (`macfilter: 1`), or any hand-made `ether saddr`/`arp saddr ip`
//! rule — drop a guest whose address or MAC is not the configured one, and
//! they drop its ARP too: a guest that cannot resolve its gateway sends no IP
//! packet at all, so a trace sees nothing. Replaying the guest's ARP for its
//! gateway and its first IP packet against the rule set names the rule anyway.
//!
//! Only the bridge family's prerouting hook is replayed: that is where filters
//! on what a port sends live (Proxmox's `vm-out` → `guest-<vmid>-out`); the IP
//! firewall has its own check (`firewall`).

use std::{net::Ipv4Addr, path::Path};

use super::{arp::parse_mac, Check, Status};
use crate::{
    explain::{
        nft::{self, Culprit, PacketView, Ruleset, L3},
        nwfilter, pve_hint,
    },
    host::Host,
    topology::{self, Topology},
};

/// The guest as it shows itself on its port.
#[derive(Debug, Clone)]
pub struct Guest {
    pub port: String,
    pub ip: Ipv4Addr,
    pub mac: Option<[u8; 6]>,
    /// The address it resolves to reach others (its gateway), when known.
    pub gateway: Option<Ipv4Addr>,
    /// Where its ICMP test packet goes.
    pub dst: Ipv4Addr,
}

impl Guest {
    /// From the host's view of the VM: its port, the MAC the FDB, neighbour
    /// table or configuration knows, and the bridge's address on its subnet
    /// as the gateway (the host routes for it).
    pub fn of(t: &Topology, host: &Host) -> Option<Self> {
        let port = t.ports.first()?.name.clone();
        Some(Self {
            port,
            ip: t.vm_ip4(),
            mac: t.vm_mac.as_deref().and_then(parse_mac),
            gateway: bridge_address(t, host),
            dst: t.dst4(),
        })
    }

    fn arp(&self) -> PacketView {
        PacketView {
            l3: L3::Arp,
            saddr: Some(self.ip.into()),
            daddr: self.gateway.map(Into::into),
            ..self.on_port()
        }
    }

    fn ping(&self) -> PacketView {
        PacketView {
            saddr: Some(self.ip.into()),
            daddr: Some(self.dst.into()),
            proto: 1,
            icmp_type: Some(8),
            // The first packet of a flow: nothing can have accepted it as
            // part of a connection.
            ct_state: Some("new"),
            ..self.on_port()
        }
    }

    fn on_port(&self) -> PacketView {
        PacketView {
            iifname: Some(self.port.clone()),
            ether_saddr: self.mac,
            ..Default::default()
        }
    }

    fn arp_words(&self) -> String {
        match self.gateway {
            Some(gw) => format!("the guest's ARP for its gateway {gw}"),
            None => "the guest's ARP".into(),
        }
    }

    fn source_words(&self) -> String {
        match self.mac {
            Some(m) => format!("{} ({})", self.ip, crate::host::mac_text(&m)),
            None => self.ip.to_string(),
        }
    }
}

/// The check on the host's rule set as it is now; None when no bridge-family
/// chain filters what ports send (nothing to say).
pub fn check(t: &Topology, host: &Host, config_root: &Path) -> Option<Check> {
    let guest = Guest::of(t, host)?;
    let rs = nft::ruleset()?;
    let text = nft::listing().unwrap_or_default();
    judge(&rs, &text, &guest, config_root)
}

/// The verdict of `rs` (listed as `text` by `nft -a list ruleset`) on the
/// guest's ARP and its first IP packet on its port.
pub fn judge(rs: &Ruleset, text: &str, guest: &Guest, config_root: &Path) -> Option<Check> {
    if !rs.has_base_chain("bridge", "prerouting") {
        return None;
    }
    let texts = nft::rule_texts(text);
    let tries = [
        (guest.arp(), guest.arp_words()),
        (
            guest.ping(),
            format!("the guest's packets to {}", guest.dst),
        ),
    ];
    for (view, what) in &tries {
        let Some(mut c) = rs.culprit("prerouting", &["bridge"], view) else {
            continue;
        };
        rs.annotate(&mut c);
        c.text = c.handle.and_then(|h| {
            texts
                .get(&(c.family.clone(), c.table.clone(), c.chain.clone(), h))
                .cloned()
        });
        // Whatever drops the ARP leaves the guest mute; an IP packet's drop is
        // this check's only when the rule looks at who sent it (a policy or a
        // port rule is the trace's and the firewall check's to say).
        if view.l3 == L3::Arp || judges_sender(&c, &guest.port) {
            return Some(failed(&c, view, what, guest, config_root));
        }
    }
    Some(
        Check::new("spoof_filter", Status::Pass, guest.port.clone()).evidence(format!(
            "no rule of the bridge's on {} drops {} or the guest's packets for their \
             sender {}",
            guest.port,
            guest.arp_words(),
            guest.source_words(),
        )),
    )
}

/// The rule matches on the sender's address or MAC (`ip saddr`, `ether
/// saddr`, `arp saddr ip`), or closes one of libvirt's anti-spoofing chains
/// for `port` (whose drop rule matches nothing: the rules before it return
/// for the allowed sender): an anti-spoofing rule.
fn judges_sender(c: &Culprit, port: &str) -> bool {
    c.text.as_deref().is_some_and(|t| t.contains("saddr")) || nwfilter::judges_sender(c, port)
}

fn failed(c: &Culprit, view: &PacketView, what: &str, g: &Guest, root: &Path) -> Check {
    let (status, verb) = match c.certain {
        true => (Status::Fail, "drops"),
        false => (
            Status::Warn,
            "may drop (it has matches pathtrace cannot evaluate)",
        ),
    };
    let consequence = match view.l3 {
        L3::Arp => {
            "; without an answer the guest cannot resolve its gateway and sends no IP packet at all"
        }
        L3::Ipv4 | L3::Ipv6 => "",
    };
    let fix = pve_hint(c, view, what, root)
        .or_else(|| nwfilter::hint(c, view, what, root))
        .unwrap_or_else(|| match crate::explain::fix::delete(c) {
            Some(cmd) => format!("remove or narrow the rule: {cmd}"),
            None => format!(
                "the chain {} {} {} has policy drop: accept the guest's frames on {} before it",
                c.family, c.table, c.chain, g.port
            ),
        });
    Check::new("spoof_filter", status, g.port.clone())
        .evidence(format!(
            "{} {verb} {what} from {} on {}{consequence}",
            c.describe(),
            g.source_words(),
            g.port
        ))
        .fix(fix)
}

/// The host's address on the guest's subnet, on the bridge that carries it.
fn bridge_address(t: &Topology, host: &Host) -> Option<Ipv4Addr> {
    let (net, len) = t.vm_subnet?;
    host.inet_addrs(&t.inbound().name)
        .into_iter()
        .find(|(a, _)| topology::network(*a, len) == net)
        .map(|(a, _)| a)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Proxmox's nftables firewall as its generator wrote it for guest 100
    /// (generated-rulesets/proxmox-firewall, provenance in its README; see crate::testdata).
    fn pve_json() -> &'static str {
        crate::testdata::generated("proxmox-firewall/ruleset-6.12.json")
    }
    fn pve_text() -> &'static str {
        crate::testdata::generated("proxmox-firewall/ruleset-6.12.txt")
    }
    fn pve_fw() -> &'static str {
        crate::testdata::generated("proxmox-firewall/100.fw")
    }

    fn pve() -> Ruleset {
        Ruleset::parse(&serde_json::from_str(pve_json()).unwrap())
    }

    /// net3 of 100.conf: veth100i3, BC:24:11:4D:B0:FE.
    fn net3(ip: &str) -> Guest {
        Guest {
            port: "veth100i3".into(),
            ip: ip.parse().unwrap(),
            mac: parse_mac("bc:24:11:4d:b0:fe"),
            gateway: Some("192.0.2.1".parse().unwrap()),
            dst: "203.0.113.8".parse().unwrap(),
        }
    }

    fn root() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("pt-spoof-{}", std::process::id()));
        let fw = dir.join("etc/pve/firewall");
        std::fs::create_dir_all(&fw).unwrap();
        std::fs::write(fw.join("100.fw"), pve_fw()).unwrap();
        dir
    }

    #[test]
    fn the_ip_filter_dropping_the_guests_arp_is_named() {
        if crate::testdata::missing("proxmox-firewall/ruleset-6.12.json") {
            return;
        }
        let c = judge(&pve(), pve_text(), &net3("192.0.2.11"), &root()).unwrap();
        assert_eq!(c.status, Status::Fail);
        assert_eq!(c.subject, "veth100i3");
        assert!(
            c.evidence.starts_with(
                "bridge proxmox-firewall-guests guest-100-out handle 234: iifname \"veth100i3\" \
                 arp saddr ip != @v4-guest-100/ipfilter-net3 drop \
                 (via vm-out → vm-map-out[veth100i3] → guest-100-out) drops the guest's ARP \
                 for its gateway 192.0.2.1 from 192.0.2.11 (bc:24:11:4d:b0:fe) on veth100i3"
            ),
            "{}",
            c.evidence
        );
        assert!(c.evidence.contains("sends no IP packet"), "{}", c.evidence);
        let fix = c.fix.unwrap();
        assert!(
            fix.contains("IP filter of net3 (veth100i3): ARP from 192.0.2.11 is not in ipfilter-net3 (192.0.2.10)"),
            "{fix}"
        );
        assert!(fix.contains("/etc/pve/firewall/100.fw"), "{fix}");
    }

    #[test]
    fn the_configured_guest_passes_its_own_filter() {
        if crate::testdata::missing("proxmox-firewall/ruleset-6.12.json") {
            return;
        }
        // Its ARP is accepted (`meta protocol arp accept`); its ping meets
        // policy_out REJECT, which is no anti-spoofing rule: the trace says it.
        let c = judge(&pve(), pve_text(), &net3("192.0.2.10"), &root()).unwrap();
        assert_eq!(c.status, Status::Pass, "{}", c.evidence);
        assert_eq!(
            c.evidence,
            "no rule of the bridge's on veth100i3 drops the guest's ARP for its gateway \
             192.0.2.1 or the guest's packets for their sender 192.0.2.10 (bc:24:11:4d:b0:fe)"
        );
    }

    #[test]
    fn a_port_without_firewall_passes() {
        if crate::testdata::missing("proxmox-firewall/ruleset-6.12.json") {
            return;
        }
        let mut g = net3("192.0.2.12");
        g.port = "veth100i2".into();
        let c = judge(&pve(), pve_text(), &g, &root()).unwrap();
        assert_eq!(c.status, Status::Pass, "{}", c.evidence);
        assert!(c.evidence.contains("ARP for its gateway 192.0.2.1"));
    }

    #[test]
    fn no_bridge_firewall_no_check() {
        if crate::testdata::missing("proxmox-firewall/ruleset-6.12.json") {
            return;
        }
        let rs = Ruleset::parse(&serde_json::json!({"nftables": []}));
        assert!(judge(&rs, "", &net3("192.0.2.10"), &root()).is_none());
    }
}
