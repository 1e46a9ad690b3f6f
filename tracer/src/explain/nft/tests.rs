use super::*;

const RULESET: &str = r#"{"nftables":[{"metainfo":{"version":"1.0.6"}},
  {"table":{"family":"inet","name":"filter","handle":1}},
  {"chain":{"family":"inet","table":"filter","name":"forward","handle":1,"type":"filter","hook":"forward","prio":0,"policy":"accept"}},
  {"rule":{"family":"inet","table":"filter","chain":"forward","handle":3,"expr":[
    {"match":{"op":"==","left":{"payload":{"protocol":"ip","field":"saddr"}},"right":"192.0.2.50"}},{"drop":null}]}},
  {"rule":{"family":"inet","table":"filter","chain":"forward","handle":4,"expr":[
    {"match":{"op":"==","left":{"payload":{"protocol":"ip","field":"saddr"}},"right":{"prefix":{"addr":"192.0.2.0","len":24}}}},
    {"match":{"op":"==","left":{"meta":{"key":"l4proto"}},"right":"icmp"}},{"counter":{"packets":3,"bytes":252}},{"drop":null}]}},
  {"table":{"family":"ip","name":"fw","handle":2}},
  {"chain":{"family":"ip","table":"fw","name":"FORWARD","handle":1,"type":"filter","hook":"forward","prio":10,"policy":"drop"}},
  {"rule":{"family":"ip","table":"fw","chain":"FORWARD","handle":2,"expr":[
    {"match":{"op":"==","left":{"meta":{"key":"oifname"}},"right":"eth1"}},{"accept":null}]}}
]}"#;

fn guest_icmp() -> PacketView {
    PacketView {
        saddr: Some("192.0.2.100".parse().unwrap()),
        daddr: Some("203.0.113.8".parse().unwrap()),
        proto: 1,
        icmp_type: Some(8),
        iifname: Some("vmbr0".into()),
        oifname: Some("eth0".into()),
        ..Default::default()
    }
}

#[test]
fn finds_the_matching_drop_rule() {
    let rs = Ruleset::parse(&serde_json::from_str(RULESET).unwrap());
    let c = rs.culprit("forward", L3_FAMILIES, &guest_icmp()).unwrap();
    assert_eq!(
        (c.family.as_str(), c.table.as_str(), c.chain.as_str()),
        ("inet", "filter", "forward")
    );
    assert_eq!(c.handle, Some(4));
}

#[test]
fn falls_through_to_a_policy_drop() {
    let rs = Ruleset::parse(&serde_json::from_str(RULESET).unwrap());
    let mut udp = guest_icmp();
    udp.proto = 17;
    udp.dport = Some(53);
    let c = rs.culprit("forward", L3_FAMILIES, &udp).unwrap();
    assert_eq!(c.describe(), "ip fw FORWARD policy drop");
    // An accept that certainly matches ends that chain's say.
    udp.oifname = Some("eth1".into());
    assert_eq!(rs.culprit("forward", L3_FAMILIES, &udp), None);
    assert_eq!(rs.culprit("input", L3_FAMILIES, &udp), None);
}

#[test]
fn rule_text_without_counters() {
    let text = "table inet filter { # handle 1\n\tchain forward { # handle 1\n\t\ttype filter hook forward priority filter; policy accept;\n\t\tip saddr 192.0.2.0/24 meta l4proto icmp counter packets 3 bytes 252 drop # handle 4\n\t}\n}\n";
    let t = rule_texts(text);
    let key = (
        "inet".to_string(),
        "filter".to_string(),
        "forward".to_string(),
        4,
    );
    assert_eq!(
        t.get(&key).map(String::as_str),
        Some("ip saddr 192.0.2.0/24 meta l4proto icmp counter drop")
    );
}

/// Proxmox VE's nftables firewall (proxmox-firewall) as its generator wrote
/// it for guest 100 of its own test configuration, loaded unchanged on
/// Debian's 6.12 kernel and listed by nft (generated-rulesets/proxmox-firewall/, see crate::testdata).
fn pve_json() -> &'static str {
    crate::testdata::generated("proxmox-firewall/ruleset-6.12.json")
}
fn pve_text() -> &'static str {
    crate::testdata::generated("proxmox-firewall/ruleset-6.12.txt")
}
fn pve_snapshot() -> &'static str {
    crate::testdata::generated("proxmox-firewall/integration_tests__firewall.snap")
}

fn pve() -> Ruleset {
    Ruleset::parse(&serde_json::from_str(pve_json()).unwrap())
}

/// Guest 100's net3 (veth100i3, 192.0.2.10 in 100.conf) pinging out, as the
/// bridge family's prerouting hook sees it: on its port, state not known.
fn pve_guest(saddr: &str) -> PacketView {
    PacketView {
        saddr: Some(saddr.parse().unwrap()),
        daddr: Some("203.0.113.8".parse().unwrap()),
        proto: 1,
        icmp_type: Some(8),
        iifname: Some("veth100i3".into()),
        ether_saddr: Some([0xbc, 0x24, 0x11, 0x4d, 0xb0, 0xfe]),
        ..Default::default()
    }
}

fn with_text(mut c: Culprit) -> Culprit {
    c.take_text_from(pve_text());
    c
}

#[test]
fn proxmox_policy_out_reject_is_found_through_the_verdict_map() {
    if crate::testdata::missing("proxmox-firewall/ruleset-6.12.json") {
        return;
    }
    let c = pve()
        .culprit("prerouting", &["bridge"], &pve_guest("192.0.2.10"))
        .unwrap();
    assert_eq!(
        c.path,
        [
            "vm-out",
            "vm-map-out[veth100i3]",
            "guest-100-out",
            "do-reject"
        ]
    );
    assert_eq!((c.chain.as_str(), c.handle), ("do-reject", Some(51)));
    assert_eq!(c.verdict, "reject");
    assert_eq!(c.reply.as_deref(), Some("ICMP port-unreachable"));
    // guest-100-out's last rule (`jump do-reject`) is its policy_out.
    let policy = c.via.iter().find(|v| v.chain == "guest-100-out").unwrap();
    assert_eq!((policy.handle, policy.unconditional), (255, true));
    // `ct state vmap` with the state unknown may have accepted it.
    assert!(!c.certain);
    assert_eq!(
        with_text(c).describe(),
        "bridge proxmox-firewall-guests do-reject handle 51: meta l4proto { icmp, ipv6-icmp } reject \
         (via vm-out → vm-map-out[veth100i3] → guest-100-out → do-reject)"
    );
    // A first ping is `new`: then nothing before it can have accepted it.
    let mut new = pve_guest("192.0.2.10");
    new.ct_state = Some("new");
    assert!(
        pve()
            .culprit("prerouting", &["bridge"], &new)
            .unwrap()
            .certain
    );
}

#[test]
fn proxmox_ip_filter_drop_names_the_rule_and_set() {
    if crate::testdata::missing("proxmox-firewall/ruleset-6.12.json") {
        return;
    }
    let c = pve()
        .culprit("prerouting", &["bridge"], &pve_guest("192.0.2.11"))
        .unwrap();
    assert_eq!(c.path, ["vm-out", "vm-map-out[veth100i3]", "guest-100-out"]);
    assert_eq!((c.chain.as_str(), c.handle), ("guest-100-out", Some(230)));
    assert_eq!(c.verdict, "drop");
    assert_eq!(
        c.sets,
        [(
            "v4-guest-100/ipfilter-net3".to_string(),
            vec!["192.0.2.10".to_string()]
        )]
    );
    assert_eq!(
        with_text(c).text.as_deref(),
        Some("iifname \"veth100i3\" ip saddr != @v4-guest-100/ipfilter-net3 drop")
    );
}

#[test]
fn proxmox_allows_what_its_config_allows() {
    if crate::testdata::missing("proxmox-firewall/ruleset-6.12.json") {
        return;
    }
    let rs = pve();
    // The reply to the guest: established, accepted in guest-100-in.
    let reply = PacketView {
        saddr: Some("203.0.113.8".parse().unwrap()),
        daddr: Some("192.0.2.10".parse().unwrap()),
        proto: 1,
        icmp_type: Some(0),
        oifname: Some("veth100i3".into()),
        ct_state: Some("established"),
        ..Default::default()
    };
    for hook in BRIDGE_HOOKS {
        assert_eq!(rs.culprit(hook, &["bridge"], &reply), None, "{hook}");
    }
    // DHCP from the guest's own address: allow-dhcp-out (a concatenation).
    let mut dhcp = pve_guest("192.0.2.10");
    (dhcp.proto, dhcp.icmp_type, dhcp.sport, dhcp.dport) = (17, None, Some(68), Some(67));
    assert_eq!(rs.culprit("prerouting", &["bridge"], &dhcp), None);
    // Its ARP (address in its ipfilter set): `meta protocol arp accept`.
    let mut arp = pve_guest("192.0.2.10");
    arp.l3 = L3::Arp;
    arp.daddr = Some("192.0.2.1".parse().unwrap());
    assert_eq!(rs.culprit("prerouting", &["bridge"], &arp), None);
    // The same ARP from an address outside the set: the IP filter's ARP rule.
    arp.saddr = Some("192.0.2.11".parse().unwrap());
    let c = rs.culprit("prerouting", &["bridge"], &arp).unwrap();
    assert_eq!((c.chain.as_str(), c.handle), ("guest-100-out", Some(234)));
    // net2 (veth100i2) has no firewall=1: not in vm-map-out, nothing applies.
    let mut net2 = pve_guest("192.0.2.12");
    net2.iifname = Some("veth100i2".into());
    assert_eq!(rs.culprit("prerouting", &["bridge"], &net2), None);
}

/// The listing is the generator's output as the kernel holds it: every
/// chain the snapshot fills has as many rules in the listing.
#[test]
fn proxmox_listing_holds_the_generated_rules() {
    if crate::testdata::missing("proxmox-firewall/ruleset-6.12.json") {
        return;
    }
    let body = &pve_snapshot()[pve_snapshot().find("{\n").unwrap()..];
    let snap: Value = serde_json::from_str(body).unwrap();
    let mut generated: HashMap<(String, String, String), usize> = HashMap::new();
    for cmd in snap["nftables"].as_array().unwrap() {
        if let Some(r) = cmd.get("add").and_then(|a| a.get("rule")) {
            let key = (str_of(r, "family"), str_of(r, "table"), str_of(r, "chain"));
            *generated.entry(key).or_default() += 1;
        }
    }
    let rs = pve();
    for ((family, table, chain), n) in &generated {
        let listed = rs
            .chains
            .iter()
            .find(|c| &c.family == family && &c.table == table && &c.name == chain)
            .map_or(0, |c| c.rules.len());
        assert_eq!(listed, *n, "{family} {table} {chain}");
    }
    assert!(generated.len() > 10);
}

/// Chains that jump to shared chains many times over end the walk within
/// its budget, unsure, rather than running for ages.
#[test]
fn a_walk_through_a_wide_jump_graph_stays_bounded() {
    let mut items = vec![serde_json::json!({"chain": {"family": "inet", "table": "t",
        "name": "forward", "hook": "forward", "prio": 0, "policy": "drop"}})];
    items.push(serde_json::json!({"rule": {"family": "inet", "table": "t",
        "chain": "forward", "handle": 1, "expr": [{"jump": {"target": "c0"}}]}}));
    for level in 0..16 {
        items.push(serde_json::json!({"chain": {"family": "inet", "table": "t",
            "name": format!("c{level}")}}));
        for n in 0..10 {
            items.push(serde_json::json!({"rule": {"family": "inet", "table": "t",
                "chain": format!("c{level}"), "handle": 100 * level + n,
                "expr": [{"jump": {"target": format!("c{}", level + 1)}}]}}));
        }
    }
    let rs = Ruleset::parse(&serde_json::json!({ "nftables": items }));
    let start = std::time::Instant::now();
    let c = rs.culprit("forward", L3_FAMILIES, &guest_icmp()).unwrap();
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(c.describe(), "inet t forward policy drop");
    assert!(!c.certain);
}

/// `nft -j list ruleset` of a rule set written with nft 1.0.6 in a scratch
/// namespace: NDP dropped, the guests' echo requests accepted, DNS to one
/// server dropped, strict reverse-path filtering.
const RULESET6: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "inet", "name": "filter", "handle": 1}}, {"chain": {"family": "inet", "table": "filter", "name": "forward", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}, {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 3, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}}, "right": {"set": ["nd-neighbor-solicit", "nd-neighbor-advert"]}}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 4, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": {"prefix": {"addr": "2001:db8:1::", "len": 64}}}}, {"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}}, "right": "echo-request"}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 5, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "nexthdr"}}, "right": "udp"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 53}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "daddr"}}, "right": "2001:db8:ffff::53"}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 6, "expr": [{"match": {"op": "==", "left": {"fib": {"result": "oif", "flags": ["saddr", "iif"]}}, "right": false}}, {"drop": null}]}}]}"#;

fn guest6(proto: u8, icmp_type: Option<u8>, dport: Option<u16>) -> PacketView {
    PacketView {
        saddr: Some("2001:db8:1::100".parse().unwrap()),
        daddr: Some("2001:db8:ffff::53".parse().unwrap()),
        proto,
        icmp_type,
        sport: dport.map(|_| 40000),
        dport,
        iifname: Some("vmbr0".into()),
        oifname: Some("eth0".into()),
        l3: L3::Ipv6,
        ..Default::default()
    }
}

#[test]
fn fib_rules_are_told_by_the_route_back() {
    let rs = Ruleset::parse(&serde_json::from_str(RULESET6).unwrap());
    // `fib saddr . iif oif missing drop` (handle 6): a reply from the
    // internet routed back by the uplink it came in by passes it ...
    let mut reply = guest6(58, Some(129), None);
    std::mem::swap(&mut reply.saddr, &mut reply.daddr);
    reply.iifname = Some("eth0".into());
    reply.route_back = Some(RouteBack::Via("eth0".into()));
    assert_eq!(rs.culprit("forward", reply.families(), &reply), None);
    // ... one whose source the host routes elsewhere, or not at all, is
    // certainly dropped by it.
    for back in [RouteBack::Via("vmbr0".into()), RouteBack::Missing] {
        reply.route_back = Some(back);
        let c = rs.culprit("forward", reply.families(), &reply).unwrap();
        assert_eq!((c.handle, c.certain), (Some(6), true));
    }
}

#[test]
fn ipv6_packets_meet_ip6_and_inet_chains() {
    let rs = Ruleset::parse(&serde_json::from_str(RULESET6).unwrap());
    let ns = guest6(58, Some(135), None);
    assert_eq!(ns.families(), L3_FAMILIES6);
    let c = rs.culprit("forward", ns.families(), &ns).unwrap();
    assert_eq!((c.handle, c.certain), (Some(3), true));
    // An echo request from the guests' prefix is accepted before the
    // `fib` rule, which cannot be evaluated.
    let echo = guest6(58, Some(128), None);
    assert_eq!(rs.culprit("forward", echo.families(), &echo), None);
    // DNS to the one server: certainly dropped by handle 5.
    let dns = guest6(17, None, Some(53));
    let c = rs.culprit("forward", dns.families(), &dns).unwrap();
    assert_eq!((c.handle, c.certain), (Some(5), true));
    // The echo reply is no request: only the fib rule may drop it.
    let mut reply = guest6(58, Some(129), None);
    std::mem::swap(&mut reply.saddr, &mut reply.daddr);
    let c = rs.culprit("forward", reply.families(), &reply).unwrap();
    assert_eq!((c.handle, c.certain), (Some(6), false));
    // The same rule set never drops IPv4 by its ip6/icmpv6 matches.
    let mut v4 = guest_icmp();
    v4.icmp_type = Some(8);
    assert_eq!(
        rs.culprit("forward", L3_FAMILIES, &v4).map(|c| c.handle),
        Some(Some(6))
    );
}
