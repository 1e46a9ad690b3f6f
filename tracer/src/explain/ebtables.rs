//! The bridge family's xtables matches, as ebtables-nft writes them.
//!
//! ebtables-nft stores what nft has no native expression for as an `xt`
//! match (`ebt_ip`, `ebt_arp`), which `nft -j` prints by name only: `{"xt":
//! {"type": "match", "name": "arp"}}`. libvirt's nwfilter rules are made of
//! them (`-p IPv4 --ip-src 192.0.2.100 -j RETURN`, `-p ARP --arp-ip-src ...`).
//! `ebtables-nft-save` prints every rule in full, in the order of its nft
//! chain, so rule N of a chain there is rule N of the nft chain (ebtables-nft
//! keeps a user chain's policy as one more nft rule after its own rules).
//! This module reads those options and evaluates the ones for `ip` and `arp`
//! against the replayed packet; anything else stays "cannot tell".

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
};

use super::nft::{PacketView, L3};

/// `ebtables-nft-save`'s rules by (table, chain), in order.
pub fn parse_save(save: &str) -> HashMap<(String, String), Vec<String>> {
    let mut out: HashMap<(String, String), Vec<String>> = HashMap::new();
    let mut table = String::new();
    for line in save.lines().map(str::trim) {
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_string();
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let chain = rest.split_whitespace().next().unwrap_or_default();
            out.entry((table.clone(), chain.to_string()))
                .or_default()
                .push(line.to_string());
        }
    }
    out
}

/// Does the ebtables rule `line` satisfy its match `name` for `pkt`? None when
/// an option of that match cannot be evaluated (or the match is not `ip` or
/// `arp`).
pub fn eval_match(name: &str, line: &str, pkt: &PacketView) -> Option<bool> {
    let prefix = match name {
        "ip" => "--ip-",
        "arp" => "--arp-",
        _ => return None,
    };
    let wanted = match name {
        "ip" => L3::Ipv4,
        _ => L3::Arp,
    };
    // Like the kernel's ebt_ip/ebt_arp: a frame of another protocol never matches.
    if pkt.l3 != wanted {
        return Some(false);
    }
    let mut result = Some(true);
    for (opt, negated, value) in options(line).filter(|(o, ..)| o.starts_with(prefix)) {
        match eval_option(opt, value, pkt).map(|m| m != negated) {
            Some(false) => return Some(false),
            Some(true) => {}
            None => result = None,
        }
    }
    result
}

/// `(--option, negated, value)` of an ebtables rule; both `! --opt v` and
/// `--opt ! v` negate.
fn options(line: &str) -> impl Iterator<Item = (&str, bool, &str)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        if w.starts_with("--") {
            let before = i > 0 && words[i - 1] == "!";
            let after = words.get(i + 1) == Some(&"!");
            let value = words.get(i + 1 + usize::from(after)).copied().unwrap_or("");
            out.push((w, before || after, value));
        }
        i += 1;
    }
    out.into_iter()
}

fn eval_option(opt: &str, value: &str, pkt: &PacketView) -> Option<bool> {
    match opt {
        // For ARP the view's addresses are the sender's and the target's; a
        // guest's own ARP carries its frame's source MAC as sender.
        "--ip-src" | "--ip-source" | "--arp-ip-src" => addr_in(v4(pkt.saddr?)?, value),
        "--ip-dst" | "--ip-destination" | "--arp-ip-dst" => addr_in(v4(pkt.daddr?)?, value),
        "--arp-mac-src" => Some(mac_eq(pkt.ether_saddr?, value)?),
        "--ip-proto" | "--ip-protocol" => Some(proto(value)? == pkt.proto),
        "--ip-sport" | "--ip-source-port" => port_in(pkt.sport?, value),
        "--ip-dport" | "--ip-destination-port" => port_in(pkt.dport?, value),
        _ => None,
    }
}

/// The ip and arp matches test IPv4 addresses only.
fn v4(a: IpAddr) -> Option<Ipv4Addr> {
    match a {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    }
}

/// `192.0.2.100`, `192.0.2.0/24` or `192.0.2.0/255.255.255.0`.
fn addr_in(addr: Ipv4Addr, value: &str) -> Option<bool> {
    let (net, mask) = value.split_once('/').unwrap_or((value, "32"));
    let net: Ipv4Addr = net.parse().ok()?;
    let mask = match mask.parse::<u32>() {
        Ok(len) if len <= 32 => u32::MAX.checked_shl(32 - len).unwrap_or(0),
        _ => match mask.parse::<IpAddr>().ok()? {
            IpAddr::V4(m) => u32::from(m),
            IpAddr::V6(_) => return None,
        },
    };
    Some(u32::from(addr) & mask == u32::from(net) & mask)
}

fn mac_eq(mac: [u8; 6], value: &str) -> Option<bool> {
    // A mask (`MAC/MASK`) is rare in generated rules: cannot tell.
    if value.contains('/') {
        return None;
    }
    let want = super::firewall::parse_mac(value)?;
    Some(want == mac)
}

fn proto(value: &str) -> Option<u8> {
    match value.to_ascii_lowercase().as_str() {
        "icmp" => Some(1),
        "tcp" => Some(6),
        "udp" => Some(17),
        n => n.parse().ok(),
    }
}

/// `80` or `1024:65535`.
fn port_in(port: u16, value: &str) -> Option<bool> {
    let (lo, hi) = value.split_once(':').unwrap_or((value, value));
    let lo: u16 = if lo.is_empty() { 0 } else { lo.parse().ok()? };
    let hi: u16 = if hi.is_empty() {
        u16::MAX
    } else {
        hi.parse().ok()?
    };
    Some(lo <= port && port <= hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What ebtables-nft-save printed for rules libvirt 9.0 wrote for
    /// clean-traffic on vnet0 (IP 192.0.2.100, MAC 52:54:00:aa:00:56).
    const SAVE: &str = "*nat\n:PREROUTING ACCEPT\n\
        -A PREROUTING -i vnet0 -j libvirt-I-vnet0\n\
        -A I-vnet0-arp-ip -p ARP --arp-ip-src 192.0.2.100 -j RETURN\n\
        -A I-vnet0-arp-ip -j DROP\n\
        -A I-vnet0-arp-mac -p ARP --arp-mac-src 52:54:00:aa:00:56 -j RETURN\n\
        -A I-vnet0-ipv4-ip -p IPv4 --ip-src 0.0.0.0 --ip-proto udp -j RETURN\n\
        -A I-vnet0-ipv4-ip -p IPv4 --ip-src 192.0.2.100 -j RETURN\n\
        -A I-vnet0-ipv4-ip -j DROP\n";

    fn rule(chain: &str, n: usize) -> String {
        parse_save(SAVE)[&("nat".to_string(), chain.to_string())][n].clone()
    }

    fn from(ip: &str, l3: L3) -> PacketView {
        PacketView {
            saddr: Some(ip.parse().unwrap()),
            daddr: Some("192.0.2.1".parse().unwrap()),
            proto: if l3 == L3::Ipv4 { 1 } else { 0 },
            l3,
            ether_saddr: Some([0x52, 0x54, 0, 0xaa, 0, 0x56]),
            ..Default::default()
        }
    }

    #[test]
    fn rules_in_chain_order() {
        let rules = parse_save(SAVE);
        assert_eq!(rules[&("nat".into(), "I-vnet0-ipv4-ip".into())].len(), 3);
        assert_eq!(rule("I-vnet0-arp-ip", 1), "-A I-vnet0-arp-ip -j DROP");
    }

    #[test]
    fn ip_source_and_protocol() {
        let own = rule("I-vnet0-ipv4-ip", 1);
        assert_eq!(
            eval_match("ip", &own, &from("192.0.2.100", L3::Ipv4)),
            Some(true)
        );
        assert_eq!(
            eval_match("ip", &own, &from("192.0.2.101", L3::Ipv4)),
            Some(false)
        );
        // DHCP from 0.0.0.0 must be UDP: a ping from there is no DHCP.
        let dhcp = rule("I-vnet0-ipv4-ip", 0);
        assert_eq!(
            eval_match("ip", &dhcp, &from("0.0.0.0", L3::Ipv4)),
            Some(false)
        );
        // An ARP frame never matches the ip match.
        assert_eq!(
            eval_match("ip", &own, &from("192.0.2.100", L3::Arp)),
            Some(false)
        );
    }

    #[test]
    fn arp_sender_address_and_mac() {
        let ip = rule("I-vnet0-arp-ip", 0);
        assert_eq!(
            eval_match("arp", &ip, &from("192.0.2.100", L3::Arp)),
            Some(true)
        );
        assert_eq!(
            eval_match("arp", &ip, &from("192.0.2.101", L3::Arp)),
            Some(false)
        );
        let mac = rule("I-vnet0-arp-mac", 0);
        let mut other = from("192.0.2.100", L3::Arp);
        assert_eq!(eval_match("arp", &mac, &other), Some(true));
        other.ether_saddr = Some([0x52, 0x54, 0, 0, 0, 0xaa]);
        assert_eq!(eval_match("arp", &mac, &other), Some(false));
        other.ether_saddr = None;
        assert_eq!(eval_match("arp", &mac, &other), None);
    }

    /// The walk: libvirt's no-ip-spoofing chain in `nft -j` form, whose
    /// `xt match ip` nft does not spell out.
    fn walked(save: Option<&str>, ip: &str) -> Option<super::super::nft::Culprit> {
        let rule = |chain: &str, handle: u64, expr: serde_json::Value| {
            serde_json::json!({"rule": {"family": "bridge", "table": "nat", "chain": chain,
                                        "handle": handle, "expr": expr}})
        };
        let ether_ip = serde_json::json!({"match": {"op": "==", "left": {"payload":
            {"protocol": "ether", "field": "type"}}, "right": "ip"}});
        let doc = serde_json::json!({"nftables": [
            {"chain": {"family": "bridge", "table": "nat", "name": "PREROUTING",
                       "type": "filter", "hook": "prerouting", "prio": -300, "policy": "accept"}},
            {"chain": {"family": "bridge", "table": "nat", "name": "I-vnet0-ipv4-ip"}},
            rule("PREROUTING", 81, serde_json::json!([ether_ip, {"jump": {"target": "I-vnet0-ipv4-ip"}}])),
            rule("I-vnet0-ipv4-ip", 52, serde_json::json!([ether_ip, {"xt": {"type": "match", "name": "ip"}},
                                                            {"return": null}])),
            rule("I-vnet0-ipv4-ip", 62, serde_json::json!([ether_ip, {"xt": {"type": "match", "name": "ip"}},
                                                            {"return": null}])),
            rule("I-vnet0-ipv4-ip", 70, serde_json::json!([{"drop": null}])),
        ]});
        let rs = super::super::nft::Ruleset::parse(&doc).with_ebtables(save);
        rs.culprit("prerouting", &["bridge"], &from(ip, L3::Ipv4))
    }

    #[test]
    fn the_walk_evaluates_ebtables_matches_and_doubts_unknown_ones() {
        let c = walked(Some(SAVE), "192.0.2.101").unwrap();
        assert_eq!((c.handle, c.certain), (Some(70), true));
        assert_eq!(walked(Some(SAVE), "192.0.2.100"), None);
        // Without ebtables' text the matches cannot be told: the drop may
        // happen, it is not certain (nor is a return that may not).
        let c = walked(None, "192.0.2.100").unwrap();
        assert_eq!((c.handle, c.certain), (Some(70), false));
    }

    #[test]
    fn negation_masks_and_unknown_options() {
        let p = from("192.0.2.101", L3::Ipv4);
        assert_eq!(
            eval_match("ip", "-p IPv4 --ip-src ! 192.0.2.100 -j DROP", &p),
            Some(true)
        );
        assert_eq!(
            eval_match("ip", "-p IPv4 ! --ip-src 192.0.2.0/24 -j DROP", &p),
            Some(false)
        );
        assert_eq!(
            eval_match("ip", "-p IPv4 --ip-dst 192.0.2.0/255.255.255.0 -j DROP", &p),
            Some(true)
        );
        assert_eq!(eval_match("ip", "-p IPv4 --ip-tos 0x10 -j DROP", &p), None);
        assert_eq!(eval_match("among", "--among-src x -j DROP", &p), None);
    }
}
