//! The command that fixes a firewall or NAT finding, in the syntax of the tool
//! that manages the table: `nft` for nftables' own tables, `iptables` for the
//! tables iptables-nft manages (nft warns not to touch those), `iptables-legacy`
//! for legacy tables. Trace hints and doctor checks both build their commands
//! here, so one finding gets one command wherever it is said.

use super::{
    iptables,
    nft::{self, Culprit, Manager},
};

/// Remove the rule `c` (it has a handle).
pub fn delete(c: &Culprit) -> Option<String> {
    let h = c.handle?;
    Some(match (c.manager, c.number) {
        (Manager::IptablesNft, Some(n)) => format!(
            "{}{} -D {} {n}",
            iptables_nft(&c.family),
            table_arg(&c.table),
            c.chain
        ),
        _ => format!(
            "nft delete rule {} {} {} handle {h}",
            c.family, c.table, c.chain
        ),
    })
}

/// Let the guest's packets (`reply`: the replies to it) through chain `c`, whose
/// policy drops them; `guest` is the guest's address or subnet.
pub fn allow(c: &Culprit, reply: bool, guest: &str) -> String {
    let (f, t, ch) = (&c.family, &c.table, &c.chain);
    let ip = if is_v6(guest) { "ip6" } else { "ip" };
    match (c.manager, reply) {
        (Manager::IptablesNft, false) => format!(
            "{}{} -I {ch} -s {guest} -j ACCEPT",
            iptables_nft(f),
            table_arg(t)
        ),
        (Manager::IptablesNft, true) => format!(
            "{}{} -I {ch} -d {guest} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
            iptables_nft(f),
            table_arg(t)
        ),
        (Manager::Nft, false) => format!("nft insert rule {f} {t} {ch} {ip} saddr {guest} accept"),
        (Manager::Nft, true) => {
            format!("nft insert rule {f} {t} {ch} ct state established,related accept")
        }
    }
}

/// Two ways out of a path-MTU black hole whose ICMP a forward rule eats.
pub struct PassFragNeeded {
    /// Accept the ICMP ahead of the rule.
    pub accept: String,
    /// Clamp the MSS of the connections the host forwards, so no segment needs
    /// the ICMP at all.
    pub clamp: String,
}

/// The commands for a black hole beyond the host: `rule` as the verdict names
/// it (nftables `FAMILY TABLE CHAIN handle N: ...`, or `iptables-legacy TABLE
/// CHAIN rule N: ...`), `mtu` the one the router asks for (0 unknown). The MSS
/// is set to fit that MTU: `rt mtu` clamps to this host's own route MTU only,
/// which a smaller MTU beyond it does not lower.
pub fn pass_frag_needed(rule: &str, mtu: u16, v6: bool) -> PassFragNeeded {
    // An IP header (20 bytes for IPv4, 40 for IPv6) and a TCP header without options.
    let headers = if v6 { 60 } else { 40 };
    let mss = match mtu {
        0 => "rt mtu".to_string(),
        m => m.saturating_sub(headers).to_string(),
    };
    // The ICMP message that carries the MTU: ICMPv6 Packet Too Big for IPv6.
    let (icmp_nft, icmp_legacy) = match v6 {
        true => (
            "icmpv6 type packet-too-big",
            "-p icmpv6 --icmpv6-type packet-too-big",
        ),
        false => (
            "icmp type destination-unreachable",
            "-p icmp --icmp-type fragmentation-needed",
        ),
    };
    let words: Vec<&str> = rule.split_whitespace().take(3).collect();
    match words.as_slice() {
        [tool @ ("iptables-legacy" | "ip6tables-legacy"), table, chain] => PassFragNeeded {
            accept: format!("{tool} -t {table} -I {chain} {icmp_legacy} -j ACCEPT"),
            clamp: format!(
                "{tool} -t mangle -A FORWARD -p tcp --tcp-flags SYN,RST SYN -j TCPMSS {}",
                match mtu {
                    0 => "--clamp-mss-to-pmtu".to_string(),
                    _ => format!("--set-mss {mss}"),
                }
            ),
        },
        [family, table, chain] => PassFragNeeded {
            accept: format!(
                "nft insert rule {family} {table} {chain} {icmp_nft} accept (or ct state related accept)"
            ),
            clamp: format!(
                "nft add rule {family} {table} {chain} tcp flags syn tcp option maxseg size set {mss}"
            ),
        },
        _ => PassFragNeeded {
            accept: format!("accept {icmp_nft} (ct state related) before that rule"),
            clamp: format!("nft add rule inet filter forward tcp flags syn tcp option maxseg size set {mss}"),
        },
    }
}

/// Remove legacy iptables rule `c`, or (policy) let the guest's packets through.
pub fn legacy(c: &iptables::Culprit, reply: bool, guest: &str) -> String {
    let tool = if is_v6(guest) {
        "ip6tables-legacy"
    } else {
        "iptables-legacy"
    };
    let (t, ch) = (&c.table, &c.chain);
    match (c.number, reply) {
        (Some(n), _) => format!("{tool} -t {t} -D {ch} {n}"),
        (None, false) => format!("{tool} -t {t} -I {ch} -s {guest} -j ACCEPT"),
        (None, true) => format!(
            "{tool} -t {t} -I {ch} -d {guest} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"
        ),
    }
}

/// Add source NAT for the guests' subnet `lan` leaving by `uplink`, with the tool
/// that manages NAT on this host.
pub fn add_masquerade(lan: &str, uplink: &str) -> String {
    let ruleset = nft::ruleset();
    let legacy_nat = legacy_nat_in_use();
    masquerade_for(
        &nat_manager(ruleset.as_ref(), legacy_nat),
        lan,
        uplink,
        crate::host::firewall::rules().iptables_nft,
    )
}

/// Who manages NAT here, and where a rule belongs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NatTool {
    /// An nft-managed postrouting NAT chain (family, table, chain).
    NftChain(String, String, String),
    /// iptables-nft's nat table, or: nothing manages NAT yet (then `iptables`,
    /// whichever backend it is here, is the common tool).
    Iptables,
    IptablesLegacy,
    /// nft manages the firewall, but has no NAT chain: create one.
    NftNew,
}

/// A postrouting NAT chain in nftables decides (nft's own, or iptables-nft's);
/// else legacy iptables if its nat table has rules; else nft if it manages the
/// rest of the firewall; else iptables.
fn nat_manager(ruleset: Option<&nft::Ruleset>, legacy_nat: bool) -> NatTool {
    let chains = ruleset.map(|r| r.nat_chains()).unwrap_or_default();
    if let Some((f, t, c, m)) = chains.into_iter().next() {
        return match m {
            Manager::Nft => NatTool::NftChain(f, t, c),
            Manager::IptablesNft => NatTool::Iptables,
        };
    }
    if legacy_nat {
        return NatTool::IptablesLegacy;
    }
    match ruleset.is_some_and(|r| r.has_native_table()) {
        true => NatTool::NftNew,
        false => NatTool::Iptables,
    }
}

fn masquerade_for(tool: &NatTool, lan: &str, up: &str, iptables_nft: bool) -> String {
    let ipt = |bin: &str| format!("{bin} -t nat -A POSTROUTING -s {lan} -o {up} -j MASQUERADE");
    match tool {
        NatTool::NftChain(f, t, c) => {
            format!("nft add rule {f} {t} {c} ip saddr {lan} oifname \"{up}\" masquerade")
        }
        NatTool::Iptables if iptables_nft => ipt("iptables"),
        // `iptables` is legacy here: name the backend that manages the table.
        NatTool::Iptables => ipt("iptables-nft"),
        NatTool::IptablesLegacy => ipt("iptables-legacy"),
        NatTool::NftNew => format!(
            "nft add table ip nat; nft add chain ip nat postrouting '{{ type nat hook postrouting priority srcnat; }}'; nft add rule ip nat postrouting ip saddr {lan} oifname \"{up}\" masquerade"
        ),
    }
}

/// `iptables-legacy-save -t nat` has rules: legacy iptables does NAT here.
fn legacy_nat_in_use() -> bool {
    crate::host::firewall::rules()
        .legacy_table("nat")
        .is_some_and(|t| t.contains("\n-A "))
}

/// An IPv6 address or prefix (the guest's), by its colons.
fn is_v6(guest: &str) -> bool {
    guest.contains(':')
}

/// The command for iptables-nft in `family`: `iptables` when that is the
/// nf_tables variant on this host (Debian's default), else `iptables-nft`.
fn iptables_nft(family: &str) -> String {
    let base = if family == "ip6" {
        "ip6tables"
    } else {
        "iptables"
    };
    match crate::host::firewall::rules().iptables_nft {
        true => base.to_string(),
        false => format!("{base}-nft"),
    }
}

/// iptables' `-t TABLE`, left out for the default table.
fn table_arg(table: &str) -> String {
    match table {
        "filter" => String::new(),
        t => format!(" -t {t}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn a_black_hole_beyond_is_passed_in_the_rules_own_chain_and_tool() {
        let f = pass_frag_needed(
            "inet f forward handle 2: icmp type destination-unreachable drop",
            1280,
            false,
        );
        assert!(f.accept.starts_with(
            "nft insert rule inet f forward icmp type destination-unreachable accept"
        ));
        assert_eq!(
            f.clamp,
            "nft add rule inet f forward tcp flags syn tcp option maxseg size set 1240"
        );
        let f = pass_frag_needed(
            "iptables-legacy filter FORWARD rule 1: -p icmp -j DROP",
            0,
            false,
        );
        assert_eq!(
            f.accept,
            "iptables-legacy -t filter -I FORWARD -p icmp --icmp-type fragmentation-needed -j ACCEPT"
        );
        assert!(f.clamp.ends_with("-j TCPMSS --clamp-mss-to-pmtu"));
    }

    #[test]
    fn an_ipv6_black_hole_is_passed_as_packet_too_big() {
        let f = pass_frag_needed("inet f forward handle 2: icmpv6 drop", 1280, true);
        assert!(f
            .accept
            .starts_with("nft insert rule inet f forward icmpv6 type packet-too-big accept"));
        // 40 bytes of IPv6 header and 20 of TCP.
        assert!(f.clamp.ends_with("maxseg size set 1220"), "{}", f.clamp);
        let f = pass_frag_needed("ip6tables-legacy filter FORWARD policy DROP", 0, true);
        assert_eq!(
            f.accept,
            "ip6tables-legacy -t filter -I FORWARD -p icmpv6 --icmpv6-type packet-too-big -j ACCEPT"
        );
    }

    /// `nft -j list ruleset` after `iptables-nft -A FORWARD -s 192.0.2.100 -j
    /// REJECT; iptables-nft -A FORWARD -s 192.0.2.101 -j DROP; iptables-nft -t nat
    /// -A POSTROUTING -s 192.0.2.0/24 -o eth0 -j MASQUERADE` (nftables 1.0.6,
    /// iptables 1.8.9), plus a table of nft's own.
    const MIXED: &str = r#"{"nftables":[{"metainfo":{"version":"1.0.6"}},
      {"table":{"family":"ip","name":"filter","handle":1}},
      {"chain":{"family":"ip","table":"filter","name":"FORWARD","handle":1,"type":"filter","hook":"forward","prio":0,"policy":"accept"}},
      {"rule":{"family":"ip","table":"filter","chain":"FORWARD","handle":2,"expr":[
        {"match":{"op":"==","left":{"payload":{"protocol":"ip","field":"saddr"}},"right":"192.0.2.100"}},
        {"counter":{"packets":0,"bytes":0}},{"xt":{"type":"target","name":"REJECT"}}]}},
      {"rule":{"family":"ip","table":"filter","chain":"FORWARD","handle":3,"expr":[
        {"match":{"op":"==","left":{"payload":{"protocol":"ip","field":"saddr"}},"right":"192.0.2.101"}},
        {"counter":{"packets":0,"bytes":0}},{"drop":null}]}},
      {"table":{"family":"ip","name":"nat","handle":2}},
      {"chain":{"family":"ip","table":"nat","name":"POSTROUTING","handle":1,"type":"nat","hook":"postrouting","prio":100,"policy":"accept"}},
      {"rule":{"family":"ip","table":"nat","chain":"POSTROUTING","handle":2,"expr":[
        {"match":{"op":"==","left":{"meta":{"key":"oifname"}},"right":"eth0"}},
        {"xt":{"type":"target","name":"MASQUERADE"}}]}},
      {"table":{"family":"inet","name":"f","handle":3}},
      {"chain":{"family":"inet","table":"f","name":"forward","handle":1,"type":"filter","hook":"forward","prio":0,"policy":"accept"}},
      {"rule":{"family":"inet","table":"f","chain":"forward","handle":4,"expr":[
        {"match":{"op":"==","left":{"payload":{"protocol":"ip","field":"saddr"}},"right":"192.0.2.102"}},{"drop":null}]}}
    ]}"#;

    fn ruleset(json: &str) -> nft::Ruleset {
        nft::Ruleset::parse(&serde_json::from_str::<Value>(json).unwrap())
    }

    fn culprit(
        rs: &nft::Ruleset,
        family: &str,
        table: &str,
        chain: &str,
        handle: Option<u64>,
    ) -> Culprit {
        let mut c = Culprit {
            family: family.into(),
            table: table.into(),
            chain: chain.into(),
            handle,
            text: None,
            verdict: "drop".into(),
            certain: true,
            manager: Manager::Nft,
            number: None,
            ..Default::default()
        };
        rs.annotate(&mut c);
        c
    }

    #[test]
    fn iptables_nft_tables_are_told_apart_from_nfts_own() {
        let rs = ruleset(MIXED);
        assert_eq!(rs.manager("ip", "filter"), Manager::IptablesNft);
        assert_eq!(rs.manager("ip", "nat"), Manager::IptablesNft);
        assert_eq!(rs.manager("inet", "f"), Manager::Nft);
        // iptables' names alone, with no xt expression, still mark it: iptables-nft
        // writes `-s X -j DROP` as native expressions.
        let plain = r#"{"nftables":[
          {"chain":{"family":"ip","table":"filter","name":"FORWARD","type":"filter","hook":"forward","prio":0,"policy":"accept"}},
          {"rule":{"family":"ip","table":"filter","chain":"FORWARD","handle":3,"expr":[{"drop":null}]}}]}"#;
        assert_eq!(ruleset(plain).manager("ip", "filter"), Manager::IptablesNft);
        // nft's own table that happens to be called filter, with nft-style chains.
        let own = r#"{"nftables":[
          {"chain":{"family":"ip","table":"filter","name":"forward","type":"filter","hook":"forward","prio":0,"policy":"accept"}}]}"#;
        assert_eq!(ruleset(own).manager("ip", "filter"), Manager::Nft);
        let inet = r#"{"nftables":[
          {"chain":{"family":"inet","table":"filter","name":"FORWARD","type":"filter","hook":"forward","prio":0,"policy":"accept"}}]}"#;
        assert_eq!(ruleset(inet).manager("inet", "filter"), Manager::Nft);
    }

    #[test]
    fn a_rule_is_deleted_with_the_tool_that_manages_its_table() {
        let rs = ruleset(MIXED);
        let ipt = culprit(&rs, "ip", "filter", "FORWARD", Some(3));
        assert_eq!(ipt.number, Some(2));
        let cmd = delete(&ipt).unwrap();
        let bin = if crate::host::firewall::rules().iptables_nft {
            "iptables"
        } else {
            "iptables-nft"
        };
        assert_eq!(cmd, format!("{bin} -D FORWARD 2"));
        let own = culprit(&rs, "inet", "f", "forward", Some(4));
        assert_eq!(
            delete(&own).unwrap(),
            "nft delete rule inet f forward handle 4"
        );
        assert_eq!(delete(&culprit(&rs, "inet", "f", "forward", None)), None);
    }

    #[test]
    fn a_policy_is_opened_with_the_tool_that_manages_its_table() {
        let rs = ruleset(MIXED);
        let bin = if crate::host::firewall::rules().iptables_nft {
            "iptables"
        } else {
            "iptables-nft"
        };
        let ipt = culprit(&rs, "ip", "filter", "FORWARD", None);
        assert_eq!(
            allow(&ipt, false, "192.0.2.0/24"),
            format!("{bin} -I FORWARD -s 192.0.2.0/24 -j ACCEPT")
        );
        assert!(allow(&ipt, true, "192.0.2.100").contains("-d 192.0.2.100 -m conntrack"));
        let own = culprit(&rs, "inet", "f", "forward", None);
        assert_eq!(
            allow(&own, false, "192.0.2.100"),
            "nft insert rule inet f forward ip saddr 192.0.2.100 accept"
        );
    }

    #[test]
    fn masquerade_goes_where_nat_is_managed() {
        let lan = "192.0.2.0/24";
        let tool = |json: Option<&str>, legacy| {
            let rs = json.map(ruleset);
            nat_manager(rs.as_ref(), legacy)
        };
        assert_eq!(tool(Some(MIXED), false), NatTool::Iptables);
        let own_nat = r#"{"nftables":[
          {"chain":{"family":"ip","table":"nat","name":"postrouting","type":"nat","hook":"postrouting","prio":100,"policy":"accept"}}]}"#;
        let t = tool(Some(own_nat), true);
        assert_eq!(
            masquerade_for(&t, lan, "eth0", true),
            "nft add rule ip nat postrouting ip saddr 192.0.2.0/24 oifname \"eth0\" masquerade"
        );
        let no_nat = r#"{"nftables":[
          {"chain":{"family":"inet","table":"f","name":"forward","type":"filter","hook":"forward","prio":0}}]}"#;
        assert_eq!(tool(Some(no_nat), true), NatTool::IptablesLegacy);
        assert_eq!(tool(Some(no_nat), false), NatTool::NftNew);
        assert_eq!(tool(Some(r#"{"nftables":[]}"#), false), NatTool::Iptables);
        assert_eq!(tool(None, false), NatTool::Iptables);
        assert_eq!(
            masquerade_for(&NatTool::Iptables, lan, "eth0", true),
            "iptables -t nat -A POSTROUTING -s 192.0.2.0/24 -o eth0 -j MASQUERADE"
        );
        assert!(masquerade_for(&NatTool::Iptables, lan, "eth0", false).starts_with("iptables-nft "));
        assert!(masquerade_for(&NatTool::NftNew, lan, "eth0", true)
            .starts_with("nft add table ip nat;"));
    }
}
