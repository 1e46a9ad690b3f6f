//! Property tests: every decoder of untrusted input (kernel records, tracefs and
//! kallsyms text, iproute2/nft/iptables output, DNS bytes) must return an answer or
//! nothing for any input, never panic. Bounded by proptest's case count, so they
//! run in CI on every test run.

use std::collections::HashMap;

use proptest::prelude::*;
use serde_json::{Map, Value};
use tracer_common::{Event, PacketInfo};

use crate::{
    correlate::{Correlator, PathCtx},
    explain::{iptables, nft},
    kernel::{kallsyms::Symbols, tracefs},
    topology::Role,
};

/// Words that the parsers look for, so random JSON reaches deep code paths.
const KEYS: &[&str] = &[
    "nftables",
    "chain",
    "rule",
    "table",
    "family",
    "name",
    "hook",
    "prio",
    "policy",
    "expr",
    "match",
    "op",
    "left",
    "right",
    "payload",
    "meta",
    "key",
    "protocol",
    "field",
    "set",
    "prefix",
    "addr",
    "len",
    "range",
    "drop",
    "accept",
    "reject",
    "jump",
    "goto",
    "target",
    "xt",
    "type",
    "handle",
    "dnat", // iproute2 JSON below
    "ifindex",
    "ifname",
    "master",
    "link",
    "linkinfo",
    "info_kind",
    "mac",
    "state",
    "flags",
    "dst",
    "lladdr",
    "addr_info",
    "local",
];

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::from),
        prop::sample::select(KEYS).prop_map(Value::from),
        prop::sample::select(
            &[
                "192.0.2.100",
                "ip",
                "inet",
                "forward",
                "==",
                "!=",
                "in",
                "eth0",
                "vmbr0",
                "tap100i0",
                "bridge",
                "tun",
                "veth",
                "permanent",
                "self",
                "52:54:00:00:00:01"
            ][..]
        )
        .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..6).prop_map(|kv| {
                Value::Object(
                    kv.into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect::<Map<_, _>>(),
                )
            }),
        ]
    })
}

fn view() -> impl Strategy<Value = nft::PacketView> {
    (
        any::<[u8; 4]>(),
        any::<[u8; 4]>(),
        any::<u8>(),
        any::<Option<u16>>(),
    )
        .prop_map(|(s, d, p, port)| nft::PacketView {
            saddr: Some(s.into()),
            daddr: Some(d.into()),
            proto: p,
            icmp_type: Some(8),
            sport: port,
            dport: port,
            iifname: Some("vmbr0".into()),
            oifname: Some("eth0".into()),
            ct_state: None,
            ..Default::default()
        })
}

fn event() -> impl Strategy<Value = Event> {
    (
        any::<[u8; 8]>(),
        0u64..16,
        any::<u64>(),
        0u8..6,
        0u8..3,
        0u8..4,
        0u32..6,
        any::<u32>(),
    )
        .prop_map(|(b, skb, ts, kind, dir, role, ifindex, netns)| Event {
            ts_ns: ts % 10_000_000_000,
            skb,
            kind,
            dir,
            role,
            flags: b[0],
            ifindex,
            reason: u32::from(b[1]),
            netns: netns % 3,
            pkt: PacketInfo {
                saddr: tracer_common::addr4([192, 0, 2, b[2] % 3]),
                daddr: tracer_common::addr4([203, 0, 113, b[3] % 3]),
                proto: [1, 17][usize::from(b[4] % 2)],
                icmp_type: b[5] % 12,
                id: u16::from(b[6] % 4),
                seq: u16::from(b[7] % 4),
                ..PacketInfo::default()
            },
            ..Event::default()
        })
}

proptest! {
    #[test]
    fn dns_names_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..80)) {
        let _ = crate::dns::qname(&bytes);
    }

    #[test]
    fn tracefs_formats_never_panic(text in "(field:[a-z *]{0,20} [a-z]{1,8};\toffset:[0-9]{0,4};\t?\n?){0,6}", field in "[a-z]{1,8}") {
        let _ = tracefs::parse_field_offset(&text, &field);
    }

    #[test]
    fn kallsyms_never_panics(text in "([0-9a-f]{0,16} [tTdDwW] [a-z_]{0,10}\n){0,8}", addr in any::<u64>()) {
        let _ = Symbols::parse(&text).resolve(addr);
    }

    #[test]
    fn iptables_save_never_panics(lines in prop::collection::vec("(-A|:|\\*|!|-s|-j|-p|--dport|-i|-o| |[A-Z]{1,7}|[0-9./:+]{1,12}){0,10}", 0..12), v in view()) {
        let rules = iptables::Rules::parse(&lines.join("\n"));
        for hook in ["prerouting", "forward", "input", "postrouting"] {
            let _ = rules.culprit(hook, &v);
        }
    }

    #[test]
    fn nft_json_never_panics(doc in json(), v in view()) {
        let rs = nft::Ruleset::parse(&doc);
        let _ = rs.culprit("forward", &["ip", "inet", "bridge"], &v);
        let _ = nft::rule_texts(&doc.to_string());
    }

    #[test]
    fn host_model_from_json_never_panics(doc in json()) {
        let host = crate::host::Host::from_iproute2(&doc, &doc, &doc, &doc);
        let _ = (host.master_of("vmbr0"), host.is_bridge("vmbr0"), host.leaf_ports("vmbr0", None, 0));
        let _ = host.fdb_port("vmbr0", "52:54:00:12:34:56", None);
    }

    #[test]
    fn btf_reader_never_panics(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8), cut in any::<prop::sample::Index>()) {
        let mut data = crate::kernel::btf::tests::sample();
        for (at, byte) in flips {
            let i = at.index(data.len());
            data[i] = byte;
        }
        data.truncate(cut.index(data.len() + 1).max(1));
        if let Ok(btf) = crate::kernel::btf::KernelBtf::parse(data) {
            let _ = btf.member_offset("s", &["b"]);
            let _ = btf.drop_reasons();
            let _ = btf.offsets();
        }
    }

    #[test]
    fn watch_inventory_never_panics(links in json(), fdb in json(), neigh in json(), addrs in json()) {
        let inv = crate::watch::inventory::Inventory::from_json(&links, &fdb, &neigh, &addrs);
        for p in inv.ports.values() {
            prop_assert!(inv.names.contains_key(&p.ifindex));
        }
    }

    #[test]
    fn watch_report_never_panics(
        keys in prop::collection::vec((0u32..4, 0u32..6, any::<u32>(), any::<u64>(), any::<u8>(), any::<u8>(), any::<u8>(), any::<u64>()), 0..20),
        elapsed in 0.0f64..10.0,
    ) {
        crate::watch::report::fuzz_entry(&keys, elapsed);
    }

    #[test]
    fn correlation_never_panics(events in prop::collection::vec(event(), 0..60), now in any::<u64>(), lan in any::<bool>()) {
        let ctx = PathCtx {
            roles: HashMap::from([(1, Role::Port), (2, Role::Bridge), (3, Role::Uplink), (4, Role::Port)]),
            netns: 1,
            inbound: 2,
            bridged: lan,
            lan,
            reply_hold_ns: 0,
        };
        let mut c = Correlator::new(ctx);
        for ev in &events {
            c.on_event(ev);
        }
        let _ = c.poll(now);
        for f in c.flush(u64::MAX) {
            prop_assert!(f.trace.req_hops.len() + f.trace.reply_hops.len() <= events.len());
        }
    }
}
