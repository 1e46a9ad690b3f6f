use super::*;
use proptest::prelude::*;

// Samples below are real output of iproute2 6.1, nft 1.0.6 and iptables
// 1.8.9 in a throwaway namespace, cut down.

const LINKS: &str = r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"mtu":65536,"qdisc":"noqueue","operstate":"UNKNOWN","linkmode":"DEFAULT","group":"default","txqlen":1000,"link_type":"loopback","address":"00:00:00:00:00:00","promiscuity":0,"allmulti":0},{"ifindex":4,"link":"v1","ifname":"v0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1500,"master":"br0","operstate":"UP","txqlen":1000,"address":"b2:3a:df:c4:88:77","promiscuity":1,"allmulti":1,"linkinfo":{"info_kind":"veth","info_slave_kind":"bridge","info_slave_data":{"state":"listening","priority":32,"cost":2,"hold_timer":0.00,"message_age_timer":0.00,"forward_delay_timer":7.28,"bridge_id":"8000.b2:3a:df:c4:88:77"}},"stats64":{"rx":{"bytes":100,"packets":2}}},{"ifindex":5,"ifname":"br0","flags":["NO-CARRIER","BROADCAST","MULTICAST","UP"],"mtu":1500,"operstate":"DOWN","txqlen":1000,"linkinfo":{"info_kind":"bridge","info_data":{"forward_delay":1500,"stp_state":1,"hello_timer":0.99,"gc_timer":292.38,"mcast_last_member_cnt":2,"vlan_filtering":0}}}]"#;

const ADDRS: &str = r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"mtu":65536,"operstate":"UNKNOWN","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host","label":"lo","valid_life_time":4294967295,"preferred_life_time":4294967295}]},{"ifindex":5,"ifname":"br0","mtu":1500,"addr_info":[{"family":"inet","local":"10.9.0.1","prefixlen":24,"scope":"global","label":"br0","valid_life_time":4294967295,"preferred_life_time":4294967295},{"family":"inet6","local":"2001:db8::1c2d:3e4f","prefixlen":64,"scope":"global","temporary":true,"dynamic":true,"valid_life_time":600,"preferred_life_time":300},{"family":"inet6","local":"fd00::1","prefixlen":64,"scope":"global","nodad":true,"valid_life_time":4294967295,"preferred_life_time":4294967295}]},{"ifindex":6,"ifname":"tap0","addr_info":[]}]"#;

const ROUTES: &str = r#"[{"dst":"10.8.0.0/16","gateway":"10.9.0.2","dev":"br0","table":"100","flags":["linkdown"]},{"dst":"10.9.0.0/24","dev":"br0","protocol":"kernel","scope":"link","prefsrc":"10.9.0.1","flags":["linkdown"]},{"type":"local","dst":"10.9.0.1","dev":"br0","table":"local","protocol":"kernel","scope":"host","prefsrc":"10.9.0.1","flags":[]},{"dst":"2001:db8:1::/64","dev":"br0","protocol":"ra","metric":1024,"expires":1795,"flags":[],"pref":"medium"}]"#;

const RULES: &str = r#"[{"priority":0,"src":"all","table":"local"},{"priority":32765,"src":"10.9.0.0","srclen":24,"table":"100"},{"priority":32766,"src":"all","table":"main"},{"priority":32767,"src":"all","table":"default"}]"#;

const NEIGH: &str = r#"[{"dst":"10.9.0.6","dev":"br0","lladdr":"52:54:00:12:34:57","used":367,"confirmed":367,"updated":333,"probes":0,"state":["STALE"]},{"dst":"10.9.0.5","dev":"br0","lladdr":"52:54:00:12:34:56","used":367,"confirmed":367,"updated":367,"probes":0,"state":["PERMANENT"]},{"dst":"10.9.0.2","dev":"br0","used":367,"confirmed":427,"updated":364,"probes":6,"state":["FAILED"]}]"#;

const PORTS: &str = r#"[{"ifindex":4,"link":"v1","ifname":"v0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1500,"master":"br0","state":"listening","priority":32,"cost":2,"hairpin":false,"learning":true,"flood":true}]"#;

const FDB: &str = r#"[{"mac":"33:33:00:00:00:01","ifname":"v1","flags":["self"],"state":"permanent"},{"mac":"b6:28:c3:b7:b8:6b","ifname":"v0","used":339,"updated":12,"flags":[],"master":"br0","state":""},{"mac":"52:54:00:aa:bb:cc","ifname":"v0","vlan":10,"flags":[],"master":"br0","state":"static"}]"#;

const VLANS: &str = r#"[{"ifname":"v0","vlans":[{"vlan":1,"flags":["PVID","Egress Untagged"]},{"vlan":10},{"vlan":20,"vlanEnd":30}]},{"ifname":"br0","vlans":[{"vlan":1,"flags":["PVID","Egress Untagged"]}]}]"#;

const NFT: &str = "\
table inet filt {
\tset blk {
\t\ttype ipv4_addr
\t\tflags timeout
\t\telements = { 10.1.1.2, 10.1.1.1 timeout 1h expires 58m24s624ms }
\t}

\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\tip saddr @blk counter packets 12 bytes 1008 drop
\t\ttcp dport 22 counter packets 0 bytes 0 accept comment \"ssh {admin}\"
\t}
}
table ip nat2 {
\tcounter c1 {
\t\tpackets 3 bytes 180
\t}

\tquota q1 {
\t\tover 10 mbytes used 512 kbytes
\t}

\tset many {
\t\ttype ipv4_addr
\t\tflags interval
\t\telements = { 1.1.1.1, 2.2.2.2,
\t\t\t     10.0.0.0/8, 100.64.0.0/10 }
\t}

\tset dyn {
\t\ttype ipv4_addr
\t\tsize 65535
\t\tflags dynamic,timeout
\t\ttimeout 5m
\t\telements = { 10.9.0.7 expires 4m59s counter packets 1 bytes 84 }
\t}

\tchain pre {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tupdate @dyn { ip saddr counter }
\t\ttcp dport vmap { 22 : accept,
\t\t\t\t 80 : drop }
\t\tip daddr 1.2.3.4 quota 5 mbytes used 1 mbytes last used 3s40ms accept
\t}
}
table ip filter {
\tcomment \"iptables-nft\"
\tchain INPUT {
\t\ttype filter hook input priority filter; policy accept;
\t\t# Warning: managed by iptables-nft, do not touch!
\t\ttcp dport 80 counter packets 0 bytes 0 drop
\t}
}
";

const IPT: &str = "\
# Generated by iptables-save v1.8.9 on Thu Nov 26 12:13:00 2026
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
[2:124] -A POSTROUTING -s 10.9.0.0/24 -j MASQUERADE
COMMIT
# Completed on Thu Nov 26 12:13:00 2026
# Generated by iptables-save v1.8.9 on Thu Nov 26 12:13:00 2026
*filter
:INPUT ACCEPT [1:112]
:FORWARD DROP [0:0]
:guests - [0:0]
-A FORWARD -i br0 -j guests
-A FORWARD -o br0 -m comment --comment \"return  path\" -c 7 420 -j ACCEPT
-A guests -s 10.9.0.5/32 -j ACCEPT
COMMIT
# Completed on Thu Nov 26 12:13:00 2026
";

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

/// A directory under the system temp dir, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path =
            std::env::temp_dir().join(format!("pathtrace-snapshot-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn links_drop_counters_timers_and_indexes_but_keep_state() {
    let out = normalise_links(LINKS).unwrap();
    assert_eq!(lines(&out)[0].split(':').next(), Some("br0"), "{out}");
    for gone in [
        "ifindex",
        "promiscuity",
        "allmulti",
        "_timer",
        "stats64",
        "packets",
    ] {
        assert!(!out.contains(gone), "{gone} left in:\n{out}");
    }
    for kept in [
        "\"operstate\":\"UP\"",
        "\"state\":\"listening\"",
        "\"txqlen\":1000",
        "mcast_last_member_cnt",
        "\"stp_state\":1",
    ] {
        assert!(out.contains(kept), "{kept} missing in:\n{out}");
    }
    assert_eq!(lines(&out).len(), 3);
    assert!(lines(&out).windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn addresses_are_one_line_each_without_lifetimes() {
    let out = normalise_addresses(ADDRS).unwrap();
    assert_eq!(
        lines(&out),
        [
            r#"br0 10.9.0.1/24: {"family":"inet","label":"br0","scope":"global"}"#,
            r#"br0 fd00::1/64: {"family":"inet6","nodad":true,"scope":"global"}"#,
            r#"lo 127.0.0.1/8: {"family":"inet","label":"lo","scope":"host"}"#,
        ]
    );
}

#[test]
fn routes_name_their_table() {
    let out = normalise_routes(ROUTES).unwrap();
    assert_eq!(
        lines(&out),
        [
            r#"table 100 10.8.0.0/16: {"dev":"br0","flags":["linkdown"],"gateway":"10.9.0.2"}"#,
            r#"table local 10.9.0.1: {"dev":"br0","flags":[],"prefsrc":"10.9.0.1","protocol":"kernel","scope":"host","type":"local"}"#,
            r#"table main 10.9.0.0/24: {"dev":"br0","flags":["linkdown"],"prefsrc":"10.9.0.1","protocol":"kernel","scope":"link"}"#,
            r#"table main 2001:db8:1::/64: {"dev":"br0","flags":[],"metric":1024,"pref":"medium","protocol":"ra"}"#,
        ]
    );
}

#[test]
fn rules_are_labelled_by_priority() {
    let out = normalise_rules(RULES).unwrap();
    assert!(
        out.contains("priority 32765: {\"src\":\"10.9.0.0\",\"srclen\":24,\"table\":\"100\"}\n"),
        "{out}"
    );
    assert_eq!(lines(&out).len(), 4);
}

#[test]
fn neighbours_keep_only_configured_state() {
    let out = normalise_neighbours(NEIGH).unwrap();
    assert_eq!(
        lines(&out),
        [
            r#"10.9.0.5 dev br0: {"lladdr":"52:54:00:12:34:56","state":["PERMANENT"]}"#,
            r#"10.9.0.6 dev br0: {"lladdr":"52:54:00:12:34:57"}"#,
        ]
    );
}

#[test]
fn bridge_ports_fdb_and_vlans() {
    let ports = normalise_bridge_ports(PORTS).unwrap();
    assert!(
        ports.starts_with("v0: {") && ports.contains("\"state\":\"listening\""),
        "{ports}"
    );
    assert!(!ports.contains("ifindex"));

    let fdb = normalise_fdb(FDB).unwrap();
    assert_eq!(
        lines(&fdb),
        [
            r#"33:33:00:00:00:01 dev v1: {"flags":["self"],"state":"permanent"}"#,
            r#"52:54:00:aa:bb:cc dev v0 vlan 10: {"flags":[],"master":"br0","state":"static"}"#,
            r#"b6:28:c3:b7:b8:6b dev v0: {"flags":[],"master":"br0","state":""}"#,
        ]
    );

    let vlans = normalise_vlans(VLANS).unwrap();
    assert_eq!(
        lines(&vlans),
        [
            r#"br0 vlan 1: {"flags":["PVID","Egress Untagged"]}"#,
            // Plain string order: "10" sorts before "1: ".
            "v0 vlan 10",
            r#"v0 vlan 1: {"flags":["PVID","Egress Untagged"]}"#,
            "v0 vlan 20-30",
        ]
    );
}

#[test]
fn json_sources_accept_empty_output_and_reject_garbage() {
    assert_eq!(normalise_links("").unwrap(), "");
    assert_eq!(normalise_vlans("[]\n").unwrap(), "");
    assert!(normalise_routes("Error: no JSON").is_err());
    assert!(normalise_rules("{\"priority\":0}").is_err());
}

#[test]
fn nft_lines_carry_table_and_chain_without_counters() {
    let out = normalise_nft(NFT).unwrap();
    let expected = [
        "table inet filt",
        "table inet filt chain input",
        "table inet filt chain input: type filter hook input priority filter; policy accept;",
        "table inet filt chain input: ip saddr @blk counter drop",
        "table inet filt chain input: tcp dport 22 counter accept comment \"ssh {admin}\"",
        "table inet filt set blk",
        "table inet filt set blk: type ipv4_addr",
        "table inet filt set blk: flags timeout",
        "table inet filt set blk element: 10.1.1.1 timeout 1h",
        "table inet filt set blk element: 10.1.1.2",
        "table ip filter",
        "table ip filter: comment \"iptables-nft\"",
        "table ip filter chain INPUT",
        "table ip filter chain INPUT: type filter hook input priority filter; policy accept;",
        "table ip filter chain INPUT: tcp dport 80 counter drop",
        "table ip nat2",
        "table ip nat2 chain pre",
        "table ip nat2 chain pre: type nat hook prerouting priority dstnat; policy accept;",
        "table ip nat2 chain pre: update @dyn { ip saddr counter }",
        "table ip nat2 chain pre: tcp dport vmap { 22 : accept, 80 : drop }",
        "table ip nat2 chain pre: ip daddr 1.2.3.4 quota 5 mbytes last accept",
        "table ip nat2 counter c1",
        "table ip nat2 quota q1",
        "table ip nat2 quota q1: over 10 mbytes",
        "table ip nat2 set dyn",
        "table ip nat2 set dyn: type ipv4_addr",
        "table ip nat2 set dyn: size 65535",
        "table ip nat2 set dyn: flags dynamic,timeout",
        "table ip nat2 set dyn: timeout 5m",
        "table ip nat2 set many",
        "table ip nat2 set many: type ipv4_addr",
        "table ip nat2 set many: flags interval",
        "table ip nat2 set many element: 1.1.1.1",
        "table ip nat2 set many element: 10.0.0.0/8",
        "table ip nat2 set many element: 100.64.0.0/10",
        "table ip nat2 set many element: 2.2.2.2",
    ];
    assert_eq!(lines(&out), expected, "\n{out}");
}

#[test]
fn nft_traffic_changes_nothing() {
    let busy = NFT
        .replace("packets 12 bytes 1008", "packets 99012 bytes 81008")
        .replace("expires 58m24s624ms", "expires 2m1s")
        .replace("used 512 kbytes", "used 9 mbytes")
        .replace("10.9.0.7 expires 4m59s", "10.9.0.8 expires 1s");
    assert_eq!(normalise_nft(&busy).unwrap(), normalise_nft(NFT).unwrap());
}

#[test]
fn nft_rejects_rules_outside_tables() {
    assert!(normalise_nft("drop\n").is_err());
    assert_eq!(normalise_nft("").unwrap(), "");
}

#[test]
fn iptables_lines_carry_table_without_counters() {
    let out = normalise_iptables(IPT).unwrap();
    assert_eq!(
        lines(&out),
        [
            "*filter :FORWARD DROP",
            "*filter -A FORWARD -i br0 -j guests",
            "*filter -A FORWARD -o br0 -m comment --comment \"return  path\" -j ACCEPT",
            "*filter :INPUT ACCEPT",
            "*filter :guests -",
            "*filter -A guests -s 10.9.0.5/32 -j ACCEPT",
            "*nat :POSTROUTING ACCEPT",
            "*nat -A POSTROUTING -s 10.9.0.0/24 -j MASQUERADE",
            "*nat :PREROUTING ACCEPT",
        ]
    );
    assert_eq!(normalise_iptables("").unwrap(), "");
    assert!(normalise_iptables("-A INPUT -j DROP\n").is_err());
}

#[test]
fn sysctls_are_read_per_interface_and_named_like_sysctl() {
    let root = TempDir::new("sysctl");
    let write = |p: &str, v: &str| {
        let path = root.0.join(p);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, v).unwrap();
    };
    write("ipv4/ip_forward", "1\n");
    write("ipv4/conf/eth0.100/rp_filter", "2\n");
    write("ipv4/conf/eth0.100/forwarding", "1\n");
    write("ipv4/conf/all/proxy_arp", "0\n");
    write("ipv4/conf/all/log_martians", "1\n");
    write("bridge/bridge-nf-call-iptables", "0\n");
    let out = normalise_sysctls(&read_sysctls(&root.0)).unwrap();
    assert_eq!(
        lines(&out),
        [
            "net.bridge.bridge-nf-call-iptables = 0",
            "net.ipv4.conf.all.proxy_arp = 0",
            "net.ipv4.conf.eth0/100.forwarding = 1",
            "net.ipv4.conf.eth0/100.rp_filter = 2",
            "net.ipv4.ip_forward = 1",
        ]
    );
}

#[test]
fn diff_texts_shows_additions_removals_and_moves() {
    let old = "a\nb\nc\n";
    assert_eq!(diff_texts(old, old), (vec![], vec![]));
    assert_eq!(diff_texts(old, "a\nb\nx\nc\n"), (vec!["x".into()], vec![]));
    assert_eq!(diff_texts(old, "a\nc\n"), (vec![], vec!["b".into()]));
    // A rule moved above another changes what matches first.
    let (added, removed) = diff_texts(old, "b\na\nc\n");
    assert_eq!((added.len(), removed.len()), (1, 1));
    assert_eq!(added, removed);
    // A duplicated rule is a change too.
    assert_eq!(diff_texts(old, "a\nb\nb\nc\n"), (vec!["b".into()], vec![]));
    assert_eq!(diff_texts("", "a\n"), (vec!["a".into()], vec![]));
}

#[test]
fn diff_texts_lists_lines_in_file_order() {
    let (added, removed) = diff_texts("1\n2\n3\n4\n5\n", "0\n1\n3\n5\n6\n");
    assert_eq!(added, ["0", "6"]);
    assert_eq!(removed, ["2", "4"]);
}

#[test]
fn many_edits_fall_back_to_multiset_comparison() {
    let a: Vec<&str> = vec!["x", "y", "z", "y"];
    let b: Vec<&str> = vec!["y", "q", "x"];
    assert!(myers(&a, &b, 1).is_none());
    let (ka, kb) = multiset_common(&a, &b);
    assert_eq!(ka, [true, true, false, false]);
    assert_eq!(kb, [true, false, true]);
}

/// Length of a longest common subsequence, by the textbook table.
fn lcs_len(a: &[&str], b: &[&str]) -> usize {
    let mut t = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in 0..a.len() {
        for j in 0..b.len() {
            t[i + 1][j + 1] = if a[i] == b[j] {
                t[i][j] + 1
            } else {
                t[i][j + 1].max(t[i + 1][j])
            };
        }
    }
    t[a.len()][b.len()]
}

proptest! {
    #[test]
    fn myers_keeps_a_longest_common_subsequence(
        a in prop::collection::vec("[abc]", 0..12),
        b in prop::collection::vec("[abc]", 0..12),
    ) {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let b: Vec<&str> = b.iter().map(String::as_str).collect();
        let (ka, kb) = myers(&a, &b, usize::MAX).unwrap();
        let common_a: Vec<&str> = a.iter().zip(&ka).filter(|(_, k)| **k).map(|(l, _)| *l).collect();
        let common_b: Vec<&str> = b.iter().zip(&kb).filter(|(_, k)| **k).map(|(l, _)| *l).collect();
        prop_assert_eq!(&common_a, &common_b);
        prop_assert_eq!(common_a.len(), lcs_len(&a, &b));
    }

    #[test]
    fn diff_texts_counts_match_the_lcs(
        a in prop::collection::vec("[abc]", 0..12),
        b in prop::collection::vec("[abc]", 0..12),
    ) {
        let (added, removed) = diff_texts(&a.join("\n"), &b.join("\n"));
        let (ar, br): (Vec<&str>, Vec<&str>) = (
            a.iter().map(String::as_str).collect(),
            b.iter().map(String::as_str).collect(),
        );
        let common = lcs_len(&ar, &br);
        prop_assert_eq!(added.len(), b.len() - common);
        prop_assert_eq!(removed.len(), a.len() - common);
    }
}

fn host() -> Host {
    Host {
        hostname: "hv1".into(),
        kernel_release: "6.18.0".into(),
        netns_inode: 4026531840,
    }
}

fn captured(routes: &str, legacy: Option<&str>) -> Vec<(String, Option<String>)> {
    vec![
        ("routes.txt".into(), Some(routes.into())),
        ("iptables-legacy.txt".into(), legacy.map(String::from)),
        (
            "sysctls.txt".into(),
            Some("net.ipv4.ip_forward = 1\n".into()),
        ),
    ]
}

#[test]
fn save_then_diff_round_trip() {
    let dir = TempDir::new("roundtrip");
    let before = captured("table main default: {}\ntable main 10.0.0.0/8: {}\n", None);
    let written = save_with(&dir.0, &before, &host()).unwrap();
    assert_eq!(written, ["routes.txt", "sysctls.txt"]);
    let marker = read_marker(&dir.0).unwrap();
    assert_eq!(marker.absent, ["iptables-legacy.txt"]);
    assert_eq!(marker.host, host());
    assert!(marker.time_utc.ends_with('Z'));

    assert!(diff_with(&dir.0, &before, &host()).unwrap().is_empty());

    let after = captured(
        "table main default: {}\ntable main 10.1.0.0/16: {}\n",
        Some(""),
    );
    let diffs = diff_with(&dir.0, &after, &host()).unwrap();
    assert_eq!(diffs.len(), 1, "{diffs:?}");
    assert_eq!(diffs[0].file, "routes.txt");
    assert!(diffs[0].what.starts_with("routes"));
    assert_eq!(diffs[0].added, ["table main 10.1.0.0/16: {}"]);
    assert_eq!(diffs[0].removed, ["table main 10.0.0.0/8: {}"]);
    assert_eq!(diffs[0].note, None);
}

#[test]
fn diff_notes_sources_unavailable_on_one_side() {
    let dir = TempDir::new("absent");
    save_with(
        &dir.0,
        &captured("r\n", Some("*filter :INPUT ACCEPT\n")),
        &host(),
    )
    .unwrap();
    let diffs = diff_with(&dir.0, &captured("r\n", None), &host()).unwrap();
    assert_eq!(diffs.len(), 1);
    assert_eq!(diffs[0].removed, ["*filter :INPUT ACCEPT"]);
    assert!(diffs[0]
        .note
        .as_deref()
        .unwrap()
        .contains("unavailable now"));

    // Saving again without it removes the old file, so it is not compared.
    save_with(&dir.0, &captured("r\n", None), &host()).unwrap();
    assert!(!dir.0.join("iptables-legacy.txt").exists());
    let diffs = diff_with(
        &dir.0,
        &captured("r\n", Some("*filter :INPUT ACCEPT\n")),
        &host(),
    )
    .unwrap();
    assert_eq!(diffs[0].added, ["*filter :INPUT ACCEPT"]);
    assert!(diffs[0]
        .note
        .as_deref()
        .unwrap()
        .contains("not in the snapshot"));
}

#[test]
fn diff_reports_another_host_or_namespace_first() {
    let dir = TempDir::new("host");
    save_with(&dir.0, &captured("r\n", None), &host()).unwrap();
    let other = Host {
        netns_inode: 4026532999,
        ..host()
    };
    let diffs = diff_with(&dir.0, &captured("r\n", None), &other).unwrap();
    assert_eq!(diffs.len(), 1);
    assert_eq!(diffs[0].file, MARKER);
    assert_eq!(diffs[0].added, ["network namespace inode = 4026532999"]);
    assert_eq!(diffs[0].removed, ["network namespace inode = 4026531840"]);
}

#[test]
fn save_refuses_a_foreign_non_empty_directory() {
    let dir = TempDir::new("foreign");
    fs::create_dir_all(&dir.0).unwrap();
    fs::write(dir.0.join("notes.txt"), "mine").unwrap();
    let err = save_with(&dir.0, &captured("r\n", None), &host()).unwrap_err();
    assert!(format!("{err:#}").contains(MARKER), "{err:#}");
    assert_eq!(fs::read_to_string(dir.0.join("notes.txt")).unwrap(), "mine");
    assert!(!dir.0.join("routes.txt").exists());

    // An empty directory is fine.
    let empty = TempDir::new("empty");
    fs::create_dir_all(&empty.0).unwrap();
    assert!(save_with(&empty.0, &captured("r\n", None), &host()).is_ok());
}

#[test]
fn diff_needs_the_marker() {
    let dir = TempDir::new("nomarker");
    fs::create_dir_all(&dir.0).unwrap();
    let err = diff_with(&dir.0, &captured("r\n", None), &host()).unwrap_err();
    assert!(
        format!("{err:#}").contains("not a pathtrace snapshot"),
        "{err:#}"
    );
}

#[test]
fn save_writes_only_our_file_names() {
    let dir = TempDir::new("names");
    let bad = vec![("../escape.txt".to_string(), Some("x\n".to_string()))];
    assert!(save_with(&dir.0, &bad, &host()).is_err());
    assert!(!dir.0.parent().unwrap().join("escape.txt").exists());
}

#[test]
fn sources_have_distinct_files() {
    let mut files: Vec<&str> = SOURCES.iter().map(|s| s.file).collect();
    files.sort();
    files.dedup();
    assert_eq!(files.len(), SOURCES.len());
    assert!(!files.contains(&MARKER));
}

#[test]
fn utc_times() {
    assert_eq!(utc_rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(utc_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(utc_rfc3339(1_764_159_180), "2025-11-26T12:13:00Z");
}
