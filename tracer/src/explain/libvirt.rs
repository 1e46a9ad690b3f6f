//! libvirt's virtual networks in their own terms.
//!
//! A libvirt network with `<forward mode='nat'/>` (the `default` network on
//! virbr0) gets its rules from libvirt itself, rewritten whenever the network
//! starts: an nft edit does not last, so the fix is said in the network's
//! definition (`virsh net-edit`) or the guest. The nftables backend (libvirt
//! 10.4 and later) writes them to the table `libvirt_network` of the `ip` and
//! `ip6` families, the forward hook's base chain jumping to
//! - `guest_output`: `ip saddr <network> iif <bridge> accept`, then `iif
//!   <bridge> reject` — only the network's own addresses may leave its bridge;
//! - `guest_input`: `oif <bridge> ip daddr <network> ct state
//!   related,established accept`, then `oif <bridge> reject` — only replies
//!   come in (NAT: no connection from outside reaches a guest);
//! - `guest_cross`: guests of one bridge talk to each other;
//! - `guest_nat` (postrouting): masquerade of the network to anywhere else.

use super::nft::{Culprit, PacketView};

const TABLE: &str = "libvirt_network";

/// The hint for a culprit in libvirt's network rules, or None when the rule
/// set is not libvirt's. `subnet` is the guest's network as its bridge has it.
pub fn hint(
    c: &Culprit,
    pkt: &PacketView,
    what: &str,
    subnet: Option<(std::net::IpAddr, u8)>,
) -> Option<String> {
    if c.table != TABLE || !matches!(c.family.as_str(), "ip" | "ip6") {
        return None;
    }
    let bridge = match c.chain.as_str() {
        "guest_output" => pkt.iifname.clone(),
        _ => pkt.oifname.clone(),
    }
    .unwrap_or_else(|| "its bridge".into());
    let net = subnet
        .map(|(a, l)| format!("{a}/{l}"))
        .unwrap_or_else(|| "the network's own range".into());
    let network = format!(
        "libvirt's NAT network on {bridge} (virsh net-list; its XML has <bridge name='{bridge}'/>)"
    );
    let text = match c.chain.as_str() {
        "guest_output" => {
            let addr = pkt.saddr.map_or_else(|| "?".into(), |a| a.to_string());
            format!(
                "{network} lets only its own addresses ({net}) leave the bridge, and {what} \
                 comes from {addr}: guest_output rejects it{reply}; give the guest an address \
                 in {net} (the network's DHCP hands them out), or widen the network's <ip> in \
                 virsh net-edit NAME",
                reply = reply(c),
            )
        }
        "guest_input" => format!(
            "{network} lets in only replies to connections its guests opened (ct state \
             related,established to {net}): guest_input rejects {what}{reply}; a connection \
             from outside needs a port forward to the guest (a DNAT rule of your own, e.g. in a \
             libvirt network hook) or a network with <forward mode='route'/> or 'open' \
             (virsh net-edit NAME)",
            reply = reply(c),
        ),
        chain => format!(
            "{network}: its chain {chain} {verdict}s {what}{reply}; change the network's \
             definition (virsh net-edit NAME)",
            verdict = c.verdict,
            reply = reply(c),
        ),
    };
    Some(format!(
        "{text}. libvirt writes table {fam} {TABLE} itself whenever the network starts: an nft \
         edit is undone",
        fam = c.family,
    ))
}

fn reply(c: &Culprit) -> String {
    c.reply
        .as_ref()
        .map(|r| format!(" (the sender gets {r})"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explain::nft::{Ruleset, L3_FAMILIES};

    /// libvirt's own expected output for its default NAT network (virbr0,
    /// 192.168.122.0/24), loaded unchanged and listed by nft (see
    /// generated-rulesets/libvirt/README.md).
    fn json() -> &'static str {
        crate::testdata::generated("libvirt/ruleset-6.18.json")
    }
    fn text() -> &'static str {
        crate::testdata::generated("libvirt/ruleset-6.18.txt")
    }
    const NET: Option<(std::net::IpAddr, u8)> = Some((
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 168, 122, 0)),
        24,
    ));

    fn rs() -> Ruleset {
        Ruleset::parse(&serde_json::from_str(json()).unwrap())
    }

    /// Replayed at the forward hook: no traffic is sent anywhere, the
    /// addresses are the fixture's own.
    fn forwarded(saddr: &str, daddr: &str, iif: &str, oif: &str) -> PacketView {
        PacketView {
            saddr: Some(saddr.parse().unwrap()),
            daddr: Some(daddr.parse().unwrap()),
            proto: 1,
            icmp_type: Some(8),
            iifname: Some(iif.into()),
            oifname: Some(oif.into()),
            ct_state: Some("new"),
            ..Default::default()
        }
    }

    fn with_text(mut c: Culprit) -> Culprit {
        c.take_text_from(text());
        c
    }

    #[test]
    fn a_guest_of_the_network_goes_out() {
        if crate::testdata::missing("libvirt") {
            return;
        }
        let out = forwarded("192.168.122.50", "203.0.113.8", "virbr0", "eth0");
        assert_eq!(rs().culprit("forward", L3_FAMILIES, &out), None);
        // Its reply comes back in: related,established.
        let mut back = forwarded("203.0.113.8", "192.168.122.50", "eth0", "virbr0");
        (back.icmp_type, back.ct_state) = (Some(0), Some("established"));
        assert_eq!(rs().culprit("forward", L3_FAMILIES, &back), None);
    }

    #[test]
    fn an_address_outside_the_network_is_rejected_on_its_way_out() {
        if crate::testdata::missing("libvirt") {
            return;
        }
        let pkt = forwarded("198.51.100.50", "203.0.113.8", "virbr0", "eth0");
        let c = with_text(rs().culprit("forward", L3_FAMILIES, &pkt).unwrap());
        assert_eq!(c.path, ["forward", "guest_output"]);
        assert_eq!(c.handle, Some(9));
        assert!(c.certain);
        assert_eq!(
            c.describe(),
            "ip libvirt_network guest_output handle 9: iif \"virbr0\" counter reject \
             (via forward → guest_output)"
        );
        let h = hint(&c, &pkt, "the guest's request", NET).unwrap();
        assert!(
            h.starts_with(
                "libvirt's NAT network on virbr0 (virsh net-list; its XML has <bridge \
                 name='virbr0'/>) lets only its own addresses (192.168.122.0/24) leave the \
                 bridge, and the guest's request comes from 198.51.100.50: guest_output rejects it"
            ),
            "{h}"
        );
        assert!(h.contains("virsh net-edit NAME"), "{h}");
        assert!(h.ends_with("an nft edit is undone"), "{h}");
    }

    #[test]
    fn a_connection_from_outside_is_rejected_on_its_way_in() {
        if crate::testdata::missing("libvirt") {
            return;
        }
        let pkt = forwarded("203.0.113.8", "192.168.122.50", "eth0", "virbr0");
        let c = rs().culprit("forward", L3_FAMILIES, &pkt).unwrap();
        assert_eq!(c.path, ["forward", "guest_input"]);
        assert_eq!(c.handle, Some(10));
        let h = hint(&c, &pkt, "the request", NET).unwrap();
        assert!(
            h.contains("lets in only replies to connections its guests opened"),
            "{h}"
        );
        assert!(h.contains("<forward mode='route'/>"), "{h}");
    }

    #[test]
    fn other_tables_are_not_libvirts() {
        if crate::testdata::missing("libvirt") {
            return;
        }
        let pkt = forwarded("198.51.100.50", "203.0.113.8", "virbr0", "eth0");
        let mut c = rs().culprit("forward", L3_FAMILIES, &pkt).unwrap();
        c.table = "filter".into();
        assert_eq!(hint(&c, &pkt, "x", NET), None);
    }
}
