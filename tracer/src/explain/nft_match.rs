//! Evaluating one nftables match (in `nft -j` form) against the packet a drop
//! is explained for: what the packet holds for the left-hand expression (a
//! header field, meta or conntrack key, or a concatenation of them), compared
//! with the right-hand side (a value, prefix, range, anonymous set, flag list or
//! a named set of the rule's own table).
//!
//! Three answers: yes, no, or "cannot tell" (None) — a field we do not know for
//! this packet. A header the packet does not have (an `ip6` field on IPv4, a
//! `udp` port on ICMP, an `ip` field on ARP) is a certain no whatever the
//! operator: nft adds an implicit protocol check before every payload match.

use std::net::IpAddr;

use serde_json::Value;

use super::nft::{PacketView, RouteBack, L3};

/// A named set's elements, looked up by the match's `@name`.
pub trait Sets {
    fn elements(&self, name: &str) -> Option<&[Value]>;
}

/// What the packet holds for an expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Key {
    Known(Atom),
    /// The header does not exist in this packet: every match on it fails.
    Absent,
    Unknown,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Atom {
    Addr(IpAddr),
    /// A number with the names nft may print for it.
    Num(u64, &'static [(&'static str, u64)]),
    Str(String),
    Concat(Vec<Atom>),
}

const PROTOS: &[(&str, u64)] = &[
    ("icmp", 1),
    ("igmp", 2),
    ("tcp", 6),
    ("udp", 17),
    ("gre", 47),
    ("esp", 50),
    ("ah", 51),
    ("ipv6-icmp", 58),
    ("icmpv6", 58),
    ("sctp", 132),
];

const ICMP_TYPES: &[(&str, u64)] = &[
    ("echo-reply", 0),
    ("destination-unreachable", 3),
    ("source-quench", 4),
    ("redirect", 5),
    ("echo-request", 8),
    ("router-advertisement", 9),
    ("router-solicitation", 10),
    ("time-exceeded", 11),
    ("parameter-problem", 12),
    ("timestamp-request", 13),
    ("timestamp-reply", 14),
    ("info-request", 15),
    ("info-reply", 16),
    ("address-mask-request", 17),
    ("address-mask-reply", 18),
];

/// nft's names for ICMPv6 types.
const ICMPV6_TYPES: &[(&str, u64)] = &[
    ("destination-unreachable", 1),
    ("packet-too-big", 2),
    ("time-exceeded", 3),
    ("parameter-problem", 4),
    ("echo-request", 128),
    ("echo-reply", 129),
    ("mld-listener-query", 130),
    ("mld-listener-report", 131),
    ("mld-listener-done", 132),
    ("mld-listener-reduction", 132),
    ("nd-router-solicit", 133),
    ("nd-router-advert", 134),
    ("nd-neighbor-solicit", 135),
    ("nd-neighbor-advert", 136),
    ("nd-redirect", 137),
    ("router-renumbering", 138),
    ("ind-neighbor-solicit", 141),
    ("ind-neighbor-advert", 142),
    ("mld2-listener-report", 143),
];

/// `ether type` and `meta protocol` values.
const ETHER_TYPES: &[(&str, u64)] = &[
    ("ip", 0x0800),
    ("arp", 0x0806),
    ("ip6", 0x86dd),
    ("vlan", 0x8100),
];

const NO_NAMES: &[(&str, u64)] = &[];

/// Evaluate one `match`: Some(result) when known, None when it cannot be told.
pub fn eval_match(m: &Value, pkt: &PacketView, sets: &dyn Sets) -> Option<bool> {
    let op = m["op"].as_str().unwrap_or("==");
    if let Some(fib) = m["left"].get("fib") {
        let hit = fib_match(fib, &m["right"], pkt)?;
        return match op {
            "==" => Some(hit),
            "!=" => Some(!hit),
            _ => None,
        };
    }
    let atom = match key_of(&m["left"], pkt) {
        Key::Absent => return Some(false),
        Key::Unknown => return None,
        Key::Known(a) => a,
    };
    match op {
        "==" | "in" => matches(&atom, &m["right"], sets),
        "!=" => matches(&atom, &m["right"], sets).map(|r| !r),
        "<" | ">" | "<=" | ">=" => compare(&atom, op, &m["right"]),
        _ => None,
    }
}

/// What the packet holds for a left-hand expression.
pub fn key_of(left: &Value, pkt: &PacketView) -> Key {
    if let Some(p) = left.get("payload") {
        return payload_key(
            p["protocol"].as_str().unwrap_or_default(),
            p["field"].as_str().unwrap_or_default(),
            pkt,
        );
    }
    if let Some(meta) = left.get("meta") {
        return meta_key(meta["key"].as_str().unwrap_or_default(), pkt);
    }
    if let Some(ct) = left.get("ct") {
        return match (ct["key"].as_str(), pkt.ct_state) {
            (Some("state"), Some(s)) => Key::Known(Atom::Str(s.into())),
            _ => Key::Unknown,
        };
    }
    if let Some(parts) = left.get("concat").and_then(Value::as_array) {
        let mut atoms = Vec::new();
        for part in parts {
            match key_of(part, pkt) {
                Key::Known(a) => atoms.push(a),
                other => return other,
            }
        }
        return Key::Known(Atom::Concat(atoms));
    }
    Key::Unknown
}

/// `fib saddr [. iif] oif|oifname` against `missing`/`exists` (nft -j: false
/// and true) or a device name: the kernel looks the source up as a
/// destination; with `iif` only a route back by the device the packet came in
/// by counts. Other lookups (`fib daddr type local`, marks) cannot be told.
fn fib_match(fib: &Value, right: &Value, pkt: &PacketView) -> Option<bool> {
    let flags: Vec<&str> = match &fib["flags"] {
        Value::String(f) => vec![f.as_str()],
        Value::Array(fs) => fs.iter().filter_map(Value::as_str).collect(),
        _ => return None,
    };
    let by_iif = match flags.as_slice() {
        ["saddr"] => false,
        ["saddr", "iif"] | ["iif", "saddr"] => true,
        _ => return None,
    };
    if !matches!(fib["result"].as_str(), Some("oif" | "oifname")) {
        return None;
    }
    let oif = match pkt.route_back.as_ref()? {
        RouteBack::Via(dev) if by_iif && Some(dev) != pkt.iifname.as_ref() => None,
        RouteBack::Via(dev) => Some(dev.as_str()),
        RouteBack::Missing => None,
    };
    match right {
        Value::Bool(exists) => Some(oif.is_some() == *exists),
        Value::String(dev) => Some(oif == Some(dev.as_str())),
        _ => None,
    }
}

fn known<T>(v: Option<T>, f: impl FnOnce(T) -> Atom) -> Key {
    v.map_or(Key::Unknown, |v| Key::Known(f(v)))
}

fn payload_key(proto: &str, field: &str, pkt: &PacketView) -> Key {
    let ipv4 = pkt.l3 == L3::Ipv4;
    let ipv6 = pkt.l3 == L3::Ipv6;
    let l4 = |p: u8, v: Option<u16>| {
        if !l4_ok(proto, p) {
            return Key::Absent;
        }
        known(v, |n| Atom::Num(n.into(), NO_NAMES))
    };
    match (proto, field) {
        ("ip", _) if !ipv4 => Key::Absent,
        ("ip", "saddr") => known(pkt.saddr, Atom::Addr),
        ("ip", "daddr") => known(pkt.daddr, Atom::Addr),
        ("ip", "protocol") => Key::Known(Atom::Num(pkt.proto.into(), PROTOS)),
        ("ip6", _) if !ipv6 => Key::Absent,
        ("ip6", "saddr") => known(pkt.saddr, Atom::Addr),
        ("ip6", "daddr") => known(pkt.daddr, Atom::Addr),
        // The view's protocol is the upper layer's: right for a packet
        // without extension headers, which is what the doctor replays.
        ("ip6", "nexthdr") => Key::Known(Atom::Num(pkt.proto.into(), PROTOS)),
        ("icmpv6", _) if !ipv6 || pkt.proto != 58 => Key::Absent,
        ("icmpv6", "type") => known(pkt.icmp_type, |t| Atom::Num(t.into(), ICMPV6_TYPES)),
        ("icmp", _) if !ipv4 || pkt.proto != 1 => Key::Absent,
        ("icmp", "type") => known(pkt.icmp_type, |t| Atom::Num(t.into(), ICMP_TYPES)),
        ("tcp" | "udp" | "th" | "sctp", "sport") => l4(pkt.proto, pkt.sport),
        ("tcp" | "udp" | "th" | "sctp", "dport") => l4(pkt.proto, pkt.dport),
        ("tcp" | "udp" | "th" | "sctp", _) if !l4_ok(proto, pkt.proto) => Key::Absent,
        ("ether", "type") => Key::Known(Atom::Num(pkt.l3.ether_type(), ETHER_TYPES)),
        ("ether", "saddr") => known(pkt.ether_saddr, |m| Atom::Str(mac(m))),
        ("arp", _) if pkt.l3 != L3::Arp => Key::Absent,
        // For ARP the view's addresses are the sender's and the target's.
        ("arp", "saddr ip") => known(pkt.saddr, Atom::Addr),
        ("arp", "daddr ip") => known(pkt.daddr, Atom::Addr),
        ("arp", "saddr ether") => known(pkt.ether_saddr, |m| Atom::Str(mac(m))),
        _ => Key::Unknown,
    }
}

fn meta_key(key: &str, pkt: &PacketView) -> Key {
    let name = |n: &Option<String>| known(n.clone(), Atom::Str);
    match key {
        "l4proto" if pkt.l3 != L3::Arp => Key::Known(Atom::Num(pkt.proto.into(), PROTOS)),
        "l4proto" => Key::Absent,
        "protocol" => Key::Known(Atom::Num(pkt.l3.ether_type(), ETHER_TYPES)),
        "nfproto" if pkt.l3 == L3::Ipv4 => Key::Known(Atom::Str("ipv4".into())),
        "nfproto" if pkt.l3 == L3::Ipv6 => Key::Known(Atom::Str("ipv6".into())),
        // `iif`/`oif` compare the device's index, which nft -j prints as its
        // name (libvirt writes `iif "virbr0"`).
        "iifname" | "iif" => name(&pkt.iifname),
        "oifname" | "oif" => name(&pkt.oifname),
        "pkttype" => pkttype(pkt),
        _ => Key::Unknown,
    }
}

/// A guest's request to a unicast address is no broadcast or multicast frame;
/// whether it is `host` or `other` depends on MACs we do not follow.
fn pkttype(pkt: &PacketView) -> Key {
    let Some(d) = pkt.daddr.filter(|_| pkt.l3 != L3::Arp) else {
        return Key::Unknown;
    };
    let kind = match d {
        IpAddr::V4(d) if d.is_broadcast() => "broadcast",
        // IPv6 has no broadcast: neighbour solicitations go to multicast.
        d if d.is_multicast() => "multicast",
        _ => "unicast",
    };
    Key::Known(Atom::Str(kind.into()))
}

fn l4_ok(name: &str, proto: u8) -> bool {
    match name {
        "icmp" => proto == 1,
        "tcp" => proto == 6,
        "udp" => proto == 17,
        "sctp" => proto == 132,
        "th" => proto == 6 || proto == 17 || proto == 132,
        _ => false,
    }
}

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Does `atom` equal (or fall in) the right-hand side?
pub fn matches(atom: &Atom, right: &Value, sets: &dyn Sets) -> Option<bool> {
    if let Some(name) = right.as_str().and_then(|s| s.strip_prefix('@')) {
        return any_of(atom, sets.elements(name)?);
    }
    if let Some(items) = right.get("set").and_then(Value::as_array) {
        return any_of(atom, items);
    }
    // `ct state established,related`: a flag list, any of them.
    if let Some(items) = right.as_array() {
        return any_of(atom, items);
    }
    element(atom, right)
}

/// Any element of a set: a certain yes wins, then an unknown, else no.
fn any_of(atom: &Atom, items: &[Value]) -> Option<bool> {
    let mut unknown = false;
    for item in items {
        match element(atom, unwrap_elem(item)) {
            Some(true) => return Some(true),
            Some(false) => {}
            None => unknown = true,
        }
    }
    (!unknown).then_some(false)
}

/// Set elements with options (timeouts, counters) are wrapped as `{"elem":
/// {"val": ...}}`.
pub fn unwrap_elem(v: &Value) -> &Value {
    v.get("elem").and_then(|e| e.get("val")).unwrap_or(v)
}

/// One element: a value, a prefix, a range, or a concatenation of them.
pub fn element(atom: &Atom, v: &Value) -> Option<bool> {
    match atom {
        Atom::Concat(parts) => {
            let items = v.get("concat")?.as_array()?;
            if items.len() != parts.len() {
                return Some(false);
            }
            let mut result = Some(true);
            for (p, item) in parts.iter().zip(items) {
                match element(p, item) {
                    Some(false) => return Some(false),
                    Some(true) => {}
                    None => result = None,
                }
            }
            result
        }
        Atom::Addr(a) => addr_element(*a, v),
        Atom::Num(n, names) => {
            if let Some(r) = v.get("range").and_then(Value::as_array) {
                let lo = number(r.first()?, names)?;
                let hi = number(r.get(1)?, names)?;
                return Some(lo <= *n && *n <= hi);
            }
            number(v, names).map(|x| x == *n)
        }
        Atom::Str(s) => {
            let pat = v.as_str()?;
            Some(match pat.strip_suffix('*') {
                Some(prefix) => s.starts_with(prefix),
                None => s.eq_ignore_ascii_case(pat),
            })
        }
    }
}

fn addr_element(addr: IpAddr, v: &Value) -> Option<bool> {
    // An element of the other family never holds the address.
    let parse = |s: &str| -> Option<Option<IpAddr>> {
        let a = s.parse::<IpAddr>().ok()?;
        Some((a.is_ipv4() == addr.is_ipv4()).then_some(a))
    };
    if let Some(s) = v.as_str() {
        return parse(s).map(|a| a == Some(addr));
    }
    if let Some(p) = v.get("prefix") {
        let Some(net) = parse(p["addr"].as_str()?)? else {
            return Some(false);
        };
        let len = p["len"].as_u64()?.min(128) as u8;
        return Some(in_prefix(addr, net, len));
    }
    if let Some(r) = v.get("range").and_then(Value::as_array) {
        let (Some(lo), Some(hi)) = (parse(r.first()?.as_str()?)?, parse(r.get(1)?.as_str()?)?)
        else {
            return Some(false);
        };
        return Some(lo <= addr && addr <= hi);
    }
    None
}

/// `addr` lies in `net/len` (both of one family).
pub fn in_prefix(addr: IpAddr, net: IpAddr, len: u8) -> bool {
    use crate::topology::network;
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let len = len.min(32);
            network(a, len) == network(n, len)
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => crate::host::in_prefix6(a, n, len),
        _ => false,
    }
}

fn number(v: &Value, names: &[(&str, u64)]) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => names
            .iter()
            .find(|(name, _)| name == s)
            .map(|(_, n)| *n)
            .or_else(|| s.parse().ok())
            .or_else(|| u64::from_str_radix(s.strip_prefix("0x")?, 16).ok()),
        _ => None,
    }
}

fn compare(atom: &Atom, op: &str, right: &Value) -> Option<bool> {
    let Atom::Num(n, names) = atom else {
        return None;
    };
    let r = number(right, names)?;
    Some(match op {
        "<" => *n < r,
        ">" => *n > r,
        "<=" => *n <= r,
        _ => *n >= r,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct NoSets;
    impl Sets for NoSets {
        fn elements(&self, _: &str) -> Option<&[Value]> {
            None
        }
    }

    #[test]
    fn fib_matches_need_the_lookup_they_name() {
        let sets = NoSets;
        let fib = |flags: Value, result: &str, right: Value| json!({"op": "==", "left": {"fib": {"result": result, "flags": flags}}, "right": right});
        let mut pkt = icmp();
        pkt.route_back = Some(RouteBack::Via("eth0".into()));
        // Without `iif` any route back counts; a device name compares with it.
        let m = fib(json!("saddr"), "oif", Value::Bool(false));
        assert_eq!(eval_match(&m, &pkt, &sets), Some(false));
        let m = fib(json!(["saddr"]), "oifname", Value::from("eth0"));
        assert_eq!(eval_match(&m, &pkt, &sets), Some(true));
        let m = fib(json!(["saddr", "iif"]), "oif", Value::Bool(true));
        assert_eq!(eval_match(&m, &pkt, &sets), Some(false));
        // Lookups it cannot answer stay unknown: a local-address test, or no
        // route looked up at all.
        let m = fib(json!(["daddr"]), "type", Value::from("local"));
        assert_eq!(eval_match(&m, &pkt, &sets), None);
        pkt.route_back = None;
        let m = fib(json!(["saddr", "iif"]), "oif", Value::Bool(false));
        assert_eq!(eval_match(&m, &pkt, &sets), None);
    }

    fn icmp() -> PacketView {
        PacketView {
            saddr: Some("192.0.2.10".parse().unwrap()),
            daddr: Some("203.0.113.8".parse().unwrap()),
            proto: 1,
            icmp_type: Some(8),
            iifname: Some("veth100i3".into()),
            ct_state: Some("new"),
            ..Default::default()
        }
    }

    fn m(op: &str, left: Value, right: Value) -> Value {
        json!({"op": op, "left": left, "right": right})
    }

    #[test]
    fn absent_headers_fail_even_when_negated() {
        let p = icmp();
        let ip6 = json!({"payload": {"protocol": "ip6", "field": "saddr"}});
        assert_eq!(
            eval_match(&m("!=", ip6, json!("@x")), &p, &NoSets),
            Some(false)
        );
        let arp = json!({"payload": {"protocol": "arp", "field": "saddr ip"}});
        assert_eq!(
            eval_match(&m("!=", arp, json!("@x")), &p, &NoSets),
            Some(false)
        );
        let udp = json!({"concat": [{"payload": {"protocol": "udp", "field": "sport"}},
                                     {"payload": {"protocol": "udp", "field": "dport"}}]});
        let set = json!({"set": [{"concat": [68, 67]}]});
        assert_eq!(eval_match(&m("==", udp, set), &p, &NoSets), Some(false));
    }

    #[test]
    fn names_sets_and_concatenations() {
        let mut p = icmp();
        let l4 = json!({"meta": {"key": "l4proto"}});
        let set = json!({"set": ["icmp", "ipv6-icmp"]});
        assert_eq!(eval_match(&m("==", l4, set), &p, &NoSets), Some(true));
        let t = json!({"payload": {"protocol": "icmp", "field": "type"}});
        let set = json!({"set": ["destination-unreachable", "source-quench", "time-exceeded"]});
        assert_eq!(eval_match(&m("==", t, set), &p, &NoSets), Some(false));
        let proto = json!({"meta": {"key": "protocol"}});
        assert_eq!(
            eval_match(&m("!=", proto.clone(), json!("arp")), &p, &NoSets),
            Some(true)
        );
        p.l3 = L3::Arp;
        assert_eq!(
            eval_match(&m("==", proto, json!("arp")), &p, &NoSets),
            Some(true)
        );
        p.l3 = L3::Ipv4;
        p.proto = 17;
        p.sport = Some(68);
        p.dport = Some(67);
        let udp = json!({"concat": [{"payload": {"protocol": "udp", "field": "sport"}},
                                     {"payload": {"protocol": "udp", "field": "dport"}}]});
        let set = json!({"set": [{"concat": [68, 67]}, {"concat": [546, 547]}]});
        assert_eq!(eval_match(&m("==", udp, set), &p, &NoSets), Some(true));
    }

    #[test]
    fn addresses_prefixes_ranges_and_ipv6_elements() {
        let a: IpAddr = "192.0.2.10".parse().unwrap();
        assert_eq!(addr_element(a, &json!("192.0.2.10")), Some(true));
        assert_eq!(
            addr_element(a, &json!({"prefix": {"addr": "192.0.2.0", "len": 28}})),
            Some(true)
        );
        assert_eq!(
            addr_element(a, &json!({"range": ["192.0.2.11", "192.0.2.20"]})),
            Some(false)
        );
        assert_eq!(
            addr_element(a, &json!({"prefix": {"addr": "fd80::", "len": 64}})),
            Some(false)
        );
        let p = icmp();
        let pkttype = json!({"meta": {"key": "pkttype"}});
        assert_eq!(
            eval_match(&m("==", pkttype, json!("broadcast")), &p, &NoSets),
            Some(false)
        );
    }
}
