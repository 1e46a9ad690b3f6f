//! Which nftables rule (or chain policy) dropped a packet at a given hook.
//!
//! The kernel reports only "NETFILTER_DROP at nft_do_chain", so we replay the
//! packet against the host's ruleset (`nft -j list ruleset`): base chains of that
//! hook in priority order, rules in order, following jumps. Matches we can evaluate
//! (addresses, prefixes, sets, protocol, ports, ICMP type, interface names) decide;
//! the others are treated as "may match". The first rule that may match and drops
//! or rejects is the answer; if none, a base chain with policy drop is.

use std::{collections::HashMap, net::Ipv4Addr, process::Command};

use serde_json::Value;

/// The packet as it was at the hook, with what is known about its devices.
#[derive(Debug, Clone, Default)]
pub struct PacketView {
    pub saddr: Option<Ipv4Addr>,
    pub daddr: Option<Ipv4Addr>,
    pub proto: u8,
    pub icmp_type: Option<u8>,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    pub iifname: Option<String>,
    pub oifname: Option<String>,
    /// Conntrack state as the firewall sees it (`new`, `established`), when known.
    pub ct_state: Option<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Culprit {
    pub family: String,
    pub table: String,
    pub chain: String,
    /// None when the chain's policy dropped the packet.
    pub handle: Option<u64>,
    /// The rule as `nft -a list` prints it (without the handle comment).
    pub text: Option<String>,
    pub verdict: String,
    /// Every match before the verdict could be evaluated: this rule (or policy)
    /// certainly decides, rather than possibly.
    pub certain: bool,
    /// The tool that manages the table: its fix is said in that tool's syntax.
    pub manager: Manager,
    /// 1-based position of the rule in its chain (iptables-nft's rule number).
    pub number: Option<usize>,
}

/// Who manages an nftables table. nft itself, or iptables-nft: nft prints "table
/// ... is managed by iptables-nft, do not touch!" for those, and `iptables` is the
/// tool to change them with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Manager {
    #[default]
    Nft,
    IptablesNft,
}

/// The tables iptables-nft creates, each with its built-in chains by hook.
const IPTABLES_TABLES: &[&str] = &["filter", "nat", "mangle", "raw", "security"];

impl Culprit {
    /// `inet filter forward handle 4: ip saddr 192.0.2.100 drop`, or
    /// `inet filter forward policy drop`.
    pub fn describe(&self) -> String {
        let base = format!("{} {} {}", self.family, self.table, self.chain);
        match (self.handle, &self.text) {
            (Some(h), Some(t)) => format!("{base} handle {h}: {t}"),
            (Some(h), None) => format!("{base} handle {h}"),
            _ => format!("{base} policy {}", self.verdict),
        }
    }
}

/// Families whose IPv4 hooks see the guest's routed packets.
const L3_FAMILIES: &[&str] = &["ip", "inet"];

/// Where to look for a drop: the IPv4 `hook` of the ip/inet families, or, for a
/// drop inside the bridge, the bridge family's hooks (in the order a frame meets
/// them) before br_netfilter's IPv4 `hook`.
pub fn find_culprit(hook: &str, in_bridge: bool, pkt: &PacketView) -> Option<Culprit> {
    let json = run(&["-j", "list", "ruleset"])?;
    let ruleset = Ruleset::parse(&serde_json::from_str(&json).ok()?);
    let bridge_hooks = ["prerouting", "input", "forward", "output", "postrouting"];
    let mut culprit = in_bridge
        .then(|| {
            bridge_hooks
                .iter()
                .find_map(|h| ruleset.culprit(h, &["bridge"], pkt))
        })
        .flatten()
        .or_else(|| ruleset.culprit(hook, L3_FAMILIES, pkt))?;
    ruleset.annotate(&mut culprit);
    let text = run(&["-a", "list", "ruleset"]).unwrap_or_default();
    if let Some(h) = culprit.handle {
        culprit.text = rule_texts(&text).remove(&(
            culprit.family.clone(),
            culprit.table.clone(),
            culprit.chain.clone(),
            h,
        ));
    }
    Some(culprit)
}

/// The rule that translates destinations to `to` (a `dnat` statement), described
/// like a culprit.
pub fn find_dnat_rule(to: Ipv4Addr) -> Option<String> {
    let json = run(&["-j", "list", "ruleset"])?;
    let ruleset: Value = serde_json::from_str(&json).ok()?;
    let rule = ruleset["nftables"].as_array()?.iter().find_map(|item| {
        let r = item.get("rule")?;
        let hit = r["expr"].as_array()?.iter().any(|e| {
            e.get("dnat")
                .and_then(|d| d["addr"].as_str())
                .and_then(|a| a.parse::<Ipv4Addr>().ok())
                == Some(to)
        });
        hit.then(|| r.clone())
    })?;
    let (family, table, chain) = (
        str_of(&rule, "family"),
        str_of(&rule, "table"),
        str_of(&rule, "chain"),
    );
    let handle = rule["handle"].as_u64()?;
    let text = run(&["-a", "list", "ruleset"]).and_then(|t| {
        rule_texts(&t).remove(&(family.clone(), table.clone(), chain.clone(), handle))
    });
    let culprit = Culprit {
        family,
        table,
        chain,
        handle: Some(handle),
        text,
        verdict: "dnat".into(),
        certain: true,
        manager: Manager::Nft,
        number: None,
    };
    Some(culprit.describe())
}

/// The source-NAT rule (`masquerade` or `snat`) a packet meets at postrouting,
/// described like a culprit (verdict `masquerade`/`snat`).
pub fn find_snat(pkt: &PacketView) -> Option<Culprit> {
    let json = run(&["-j", "list", "ruleset"])?;
    let ruleset = Ruleset::parse(&serde_json::from_str(&json).ok()?);
    let mut found = ruleset.snat(pkt)?;
    ruleset.annotate(&mut found);
    let text = run(&["-a", "list", "ruleset"]).unwrap_or_default();
    if let Some(h) = found.handle {
        found.text = rule_texts(&text).remove(&(
            found.family.clone(),
            found.table.clone(),
            found.chain.clone(),
            h,
        ));
    }
    Some(found)
}

/// The host's nftables ruleset (None without nft or root).
pub fn ruleset() -> Option<Ruleset> {
    let json = run(&["-j", "list", "ruleset"])?;
    Some(Ruleset::parse(&serde_json::from_str(&json).ok()?))
}

fn run(args: &[&str]) -> Option<String> {
    log::debug!("run: nft {}", args.join(" "));
    let out = Command::new("nft").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[derive(Debug, Default)]
struct Chain {
    family: String,
    table: String,
    name: String,
    hook: Option<String>,
    /// The base chain's type (`filter`, `nat`, `route`).
    kind: Option<String>,
    prio: i64,
    policy: Option<String>,
    rules: Vec<(u64, Vec<Value>)>,
}

#[derive(Debug, Default)]
pub struct Ruleset {
    chains: Vec<Chain>,
}

enum Flow {
    /// The rule set's decision for this chain: a culprit, or accepted.
    Dropped(Culprit),
    Accepted,
    /// Fell off the end of the chain (policy applies for base chains).
    Continue,
}

impl Ruleset {
    pub fn parse(v: &Value) -> Self {
        let mut chains: Vec<Chain> = Vec::new();
        for item in v["nftables"].as_array().into_iter().flatten() {
            if let Some(c) = item.get("chain") {
                chains.push(Chain {
                    family: str_of(c, "family"),
                    table: str_of(c, "table"),
                    name: str_of(c, "name"),
                    hook: c["hook"].as_str().map(str::to_string),
                    kind: c["type"].as_str().map(str::to_string),
                    prio: c["prio"].as_i64().unwrap_or(0),
                    policy: c["policy"].as_str().map(str::to_string),
                    rules: Vec::new(),
                });
            } else if let Some(r) = item.get("rule") {
                let (f, t, ch) = (str_of(r, "family"), str_of(r, "table"), str_of(r, "chain"));
                if let Some(chain) = chains
                    .iter_mut()
                    .find(|c| c.family == f && c.table == t && c.name == ch)
                {
                    let expr = r["expr"].as_array().cloned().unwrap_or_default();
                    chain.rules.push((r["handle"].as_u64().unwrap_or(0), expr));
                }
            }
        }
        Self { chains }
    }

    /// Who manages table `family table`: iptables-nft when a rule in it uses an
    /// xtables match or target (`xt` — what nft's "managed by iptables-nft"
    /// warning looks for), or when it is one of iptables' tables in family
    /// ip/ip6 whose base chains all carry iptables' built-in names for their hooks
    /// (FORWARD at forward, POSTROUTING at postrouting): iptables-nft writes
    /// native expressions where it can, so a table of plain `-s ... -j DROP`
    /// rules has no `xt` in it.
    pub fn manager(&self, family: &str, table: &str) -> Manager {
        let chains: Vec<&Chain> = self
            .chains
            .iter()
            .filter(|c| c.family == family && c.table == table)
            .collect();
        let xt = chains
            .iter()
            .flat_map(|c| &c.rules)
            .flat_map(|(_, exprs)| exprs)
            .any(|e| e.get("xt").is_some());
        let base: Vec<&&Chain> = chains.iter().filter(|c| c.hook.is_some()).collect();
        let builtin = matches!(family, "ip" | "ip6")
            && IPTABLES_TABLES.contains(&table)
            && !base.is_empty()
            && base
                .iter()
                .all(|c| c.hook.as_deref().map(str::to_uppercase).as_deref() == Some(&c.name));
        match xt || builtin {
            true => Manager::IptablesNft,
            false => Manager::Nft,
        }
    }

    /// Fill in who manages the culprit's table and its rule's position.
    pub fn annotate(&self, c: &mut Culprit) {
        c.manager = self.manager(&c.family, &c.table);
        c.number = c.handle.and_then(|h| {
            let chain = self
                .chains
                .iter()
                .find(|x| x.family == c.family && x.table == c.table && x.name == c.chain)?;
            Some(chain.rules.iter().position(|(rh, _)| *rh == h)? + 1)
        });
    }

    /// The postrouting NAT base chains of the IPv4 families, (family, table,
    /// chain, manager) in priority order: where a MASQUERADE rule belongs.
    pub fn nat_chains(&self) -> Vec<(String, String, String, Manager)> {
        let mut base: Vec<&Chain> = self
            .chains
            .iter()
            .filter(|c| c.hook.as_deref() == Some("postrouting"))
            .filter(|c| c.kind.as_deref() == Some("nat"))
            .filter(|c| L3_FAMILIES.contains(&c.family.as_str()))
            .collect();
        base.sort_by_key(|c| c.prio);
        base.into_iter()
            .map(|c| {
                let m = self.manager(&c.family, &c.table);
                (c.family.clone(), c.table.clone(), c.name.clone(), m)
            })
            .collect()
    }

    /// Whether nft itself manages any table here (the host's firewall is nft's).
    pub fn has_native_table(&self) -> bool {
        self.chains
            .iter()
            .any(|c| self.manager(&c.family, &c.table) == Manager::Nft)
    }

    /// The first source-NAT rule of the postrouting nat chains that may apply.
    pub fn snat(&self, pkt: &PacketView) -> Option<Culprit> {
        let mut base: Vec<&Chain> = self
            .chains
            .iter()
            .filter(|c| c.hook.as_deref() == Some("postrouting"))
            .filter(|c| L3_FAMILIES.contains(&c.family.as_str()))
            .collect();
        base.sort_by_key(|c| c.prio);
        base.into_iter().find_map(|c| self.walk_snat(c, pkt, 0))
    }

    fn walk_snat(&self, chain: &Chain, pkt: &PacketView, depth: u32) -> Option<Culprit> {
        for (handle, exprs) in &chain.rules {
            for (e, definite) in statements(exprs, pkt) {
                if let Some(kind) = snat_kind(e) {
                    return Some(Culprit {
                        family: chain.family.clone(),
                        table: chain.table.clone(),
                        chain: chain.name.clone(),
                        handle: Some(*handle),
                        text: None,
                        verdict: kind.into(),
                        certain: definite,
                        manager: Manager::Nft,
                        number: None,
                    });
                }
                if definite && (verdict_of(e).is_some() || e.get("return").is_some()) {
                    return None;
                }
                let found = self
                    .jump_target(chain, e, depth)
                    .and_then(|sub| self.walk_snat(sub, pkt, depth + 1));
                if found.is_some() {
                    return found;
                }
            }
        }
        None
    }

    /// The chain a `jump`/`goto` statement leads to (within the table), unless
    /// the walk is already too deep.
    fn jump_target(&self, chain: &Chain, e: &Value, depth: u32) -> Option<&Chain> {
        let target = e
            .get("jump")
            .or_else(|| e.get("goto"))
            .and_then(|j| j["target"].as_str())?;
        (depth < 8).then_some(())?;
        self.chains
            .iter()
            .find(|c| c.family == chain.family && c.table == chain.table && c.name == target)
    }

    pub fn culprit(&self, hook: &str, families: &[&str], pkt: &PacketView) -> Option<Culprit> {
        let mut base: Vec<&Chain> = self
            .chains
            .iter()
            .filter(|c| c.hook.as_deref() == Some(hook) && families.contains(&c.family.as_str()))
            .collect();
        base.sort_by_key(|c| c.prio);
        let mut unsure = false;
        for chain in base {
            match self.walk(chain, pkt, 0, &mut unsure) {
                Flow::Dropped(c) => return Some(c),
                Flow::Accepted => continue,
                Flow::Continue => {
                    if chain.policy.as_deref() == Some("drop") {
                        return Some(Culprit {
                            family: chain.family.clone(),
                            table: chain.table.clone(),
                            chain: chain.name.clone(),
                            handle: None,
                            text: None,
                            verdict: "drop".into(),
                            certain: !unsure,
                            manager: Manager::Nft,
                            number: None,
                        });
                    }
                }
            }
        }
        None
    }

    /// `unsure` records an accept that may have matched (then a later drop is not
    /// certain).
    fn walk(&self, chain: &Chain, pkt: &PacketView, depth: u32, unsure: &mut bool) -> Flow {
        for (handle, exprs) in &chain.rules {
            for (e, definite) in statements(exprs, pkt) {
                let verdict = verdict_of(e);
                match verdict {
                    Some("accept") if definite => return Flow::Accepted,
                    Some("accept") => *unsure = true,
                    Some(v) => {
                        return Flow::Dropped(Culprit {
                            family: chain.family.clone(),
                            table: chain.table.clone(),
                            chain: chain.name.clone(),
                            handle: Some(*handle),
                            text: None,
                            verdict: v.into(),
                            certain: definite && !*unsure,
                            manager: Manager::Nft,
                            number: None,
                        });
                    }
                    None => {
                        if let Some(sub) = self.jump_target(chain, e, depth) {
                            match self.walk(sub, pkt, depth + 1, unsure) {
                                Flow::Continue if e.get("jump").is_some() => {}
                                Flow::Continue => return Flow::Continue,
                                other => return other,
                            }
                        }
                    }
                }
            }
        }
        Flow::Continue
    }
}

/// A rule's statements (everything but its matches) with whether every match
/// before each could be evaluated; it ends where a match certainly fails.
fn statements<'a>(
    exprs: &'a [Value],
    pkt: &'a PacketView,
) -> impl Iterator<Item = (&'a Value, bool)> + 'a {
    let mut definite = true;
    let mut possible = true;
    exprs
        .iter()
        .filter_map(move |e| {
            if let Some(m) = e.get("match") {
                match eval_match(m, pkt) {
                    Some(true) => {}
                    Some(false) => possible = false,
                    None => definite = false,
                }
                return None; // not a statement: skipped
            }
            // A statement after a failed match ends the rule (None stops the walk).
            Some(possible.then_some((e, definite)))
        })
        .take_while(Option::is_some)
        .flatten()
}

/// The verdict of a statement: native `drop`/`reject`/`accept`, or an iptables-nft
/// target (`xt`) that drops (`DROP`, `REJECT`) or accepts.
fn verdict_of(e: &Value) -> Option<&'static str> {
    if let Some(v) = ["drop", "reject", "accept"]
        .into_iter()
        .find(|v| e.get(*v).is_some())
    {
        return Some(v);
    }
    let xt = e.get("xt")?;
    match (xt["type"].as_str()?, xt["name"].as_str()?) {
        ("target", "DROP") => Some("drop"),
        ("target", "REJECT") => Some("reject"),
        ("target", "ACCEPT") => Some("accept"),
        _ => None,
    }
}

/// `masquerade`/`snat` statements, native or as iptables-nft targets.
fn snat_kind(e: &Value) -> Option<&'static str> {
    if e.get("masquerade").is_some() {
        return Some("masquerade");
    }
    if e.get("snat").is_some() {
        return Some("snat");
    }
    let xt = e.get("xt")?;
    match (xt["type"].as_str()?, xt["name"].as_str()?) {
        ("target", "MASQUERADE") => Some("masquerade"),
        ("target", "SNAT") => Some("snat"),
        _ => None,
    }
}

fn str_of(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_string()
}

/// Evaluate one `match` expression: Some(result) when we know, None when we cannot.
fn eval_match(m: &Value, pkt: &PacketView) -> Option<bool> {
    let op = m["op"].as_str().unwrap_or("==");
    let left = &m["left"];
    let right = &m["right"];
    let result = if let Some(p) = left.get("payload") {
        let field = p["field"].as_str()?;
        let proto = p["protocol"].as_str()?;
        match (proto, field) {
            ("ip", "saddr") => match_addr(pkt.saddr?, right),
            ("ip", "daddr") => match_addr(pkt.daddr?, right),
            ("ip", "protocol") => match_proto(pkt.proto, right),
            ("icmp", "type") if pkt.proto == 1 => match_icmp_type(pkt.icmp_type?, right),
            ("udp" | "tcp" | "th", "dport") if proto_ok(proto, pkt.proto) => {
                match_num(pkt.dport? as u64, right)
            }
            ("udp" | "tcp" | "th", "sport") if proto_ok(proto, pkt.proto) => {
                match_num(pkt.sport? as u64, right)
            }
            // A match on another protocol's header fails for this packet.
            ("icmp" | "udp" | "tcp", _) if !proto_ok(proto, pkt.proto) => Some(false),
            _ => None,
        }
    } else if let Some(meta) = left.get("meta") {
        match meta["key"].as_str()? {
            "l4proto" => match_proto(pkt.proto, right),
            "nfproto" => match_str("ipv4", right),
            "iifname" => match_str(pkt.iifname.as_deref()?, right),
            "oifname" => match_str(pkt.oifname.as_deref()?, right),
            _ => None,
        }
    } else if left["ct"]["key"].as_str() == Some("state") {
        let state = pkt.ct_state?;
        // `ct state established,related` is a bitmask match: any of them.
        match right {
            Value::Array(items) => Some(items.iter().any(|i| i.as_str() == Some(state))),
            _ => match_str(state, right),
        }
    } else {
        None
    }?;
    match op {
        "==" | "in" | "&" => Some(result),
        "!=" => Some(!result),
        _ => None,
    }
}

fn proto_ok(name: &str, proto: u8) -> bool {
    match name {
        "icmp" => proto == 1,
        "tcp" => proto == 6,
        "udp" => proto == 17,
        "th" => proto == 6 || proto == 17,
        _ => false,
    }
}

fn proto_number(v: &Value) -> Option<u8> {
    match v {
        Value::Number(n) => n.as_u64().map(|n| n as u8),
        Value::String(s) => match s.as_str() {
            "icmp" => Some(1),
            "tcp" => Some(6),
            "udp" => Some(17),
            _ => s.parse().ok(),
        },
        _ => None,
    }
}

/// Apply `one` to a scalar right-hand side or to each element of a set.
fn any_of(right: &Value, one: impl Fn(&Value) -> Option<bool>) -> Option<bool> {
    match right.get("set").and_then(Value::as_array) {
        Some(items) => {
            let mut unknown = false;
            for item in items {
                match one(item) {
                    Some(true) => return Some(true),
                    Some(false) => {}
                    None => unknown = true,
                }
            }
            if unknown {
                None
            } else {
                Some(false)
            }
        }
        None => one(right),
    }
}

fn match_proto(proto: u8, right: &Value) -> Option<bool> {
    any_of(right, |v| proto_number(v).map(|p| p == proto))
}

fn match_addr(addr: Ipv4Addr, right: &Value) -> Option<bool> {
    any_of(right, |v| {
        if let Some(s) = v.as_str() {
            return s.parse::<Ipv4Addr>().ok().map(|a| a == addr);
        }
        if let Some(p) = v.get("prefix") {
            let net: Ipv4Addr = p["addr"].as_str()?.parse().ok()?;
            let len = p["len"].as_u64()? as u8;
            return Some(crate::topology::network(addr, len) == crate::topology::network(net, len));
        }
        if let Some(r) = v.get("range").and_then(Value::as_array) {
            let lo: Ipv4Addr = r.first()?.as_str()?.parse().ok()?;
            let hi: Ipv4Addr = r.get(1)?.as_str()?.parse().ok()?;
            return Some(lo <= addr && addr <= hi);
        }
        None
    })
}

fn match_num(n: u64, right: &Value) -> Option<bool> {
    any_of(right, |v| {
        if let Some(x) = v.as_u64() {
            return Some(x == n);
        }
        let r = v.get("range")?.as_array()?;
        Some(r.first()?.as_u64()? <= n && n <= r.get(1)?.as_u64()?)
    })
}

fn match_icmp_type(t: u8, right: &Value) -> Option<bool> {
    any_of(right, |v| {
        let named = match v.as_str()? {
            "echo-reply" => 0,
            "destination-unreachable" => 3,
            "echo-request" => 8,
            "time-exceeded" => 11,
            _ => return None,
        };
        Some(named == t)
    })
}

fn match_str(s: &str, right: &Value) -> Option<bool> {
    any_of(right, |v| {
        let pat = v.as_str()?;
        Some(match pat.strip_suffix('*') {
            Some(prefix) => s.starts_with(prefix),
            None => s == pat,
        })
    })
}

/// (family, table, chain, handle) → rule text, from `nft -a list ruleset`.
pub fn rule_texts(text: &str) -> HashMap<(String, String, String, u64), String> {
    let mut out = HashMap::new();
    let (mut family, mut table, mut chain) = (String::new(), String::new(), String::new());
    for line in text.lines() {
        let l = line.trim();
        let words: Vec<&str> = l.split_whitespace().collect();
        match words.as_slice() {
            ["table", f, t, ..] => {
                family = f.to_string();
                table = t.to_string();
            }
            ["chain", c, ..] => chain = c.to_string(),
            _ => {
                let Some((rule, handle)) = l.rsplit_once("# handle ") else {
                    continue;
                };
                let Ok(h) = handle.trim().parse::<u64>() else {
                    continue;
                };
                out.insert(
                    (family.clone(), table.clone(), chain.clone(), h),
                    strip_counter(rule.trim()),
                );
            }
        }
    }
    out
}

/// Counter values change from run to run; keep the rule text stable.
fn strip_counter(rule: &str) -> String {
    let words: Vec<&str> = rule.split_whitespace().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        if words[i] == "packets" || words[i] == "bytes" {
            i += 2;
            continue;
        }
        out.push(words[i]);
        i += 1;
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
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
}
