//! Which nftables rule (or chain policy) dropped a packet at a given hook.
//!
//! The kernel reports only "NETFILTER_DROP at nft_do_chain", so we replay the
//! packet against the host's ruleset (`nft -j list ruleset`): base chains of that
//! hook in priority order, rules in order, with nft's own semantics for `jump`
//! (come back), `goto` (do not), `return` and verdict maps (`iifname vmap
//! @vm-map-out`, `ct state vmap { ... }`), as rule-set generators (Proxmox's
//! proxmox-firewall, libvirt, Docker) write them. Matches we can evaluate
//! (addresses, prefixes, ranges, anonymous and named sets, concatenations,
//! protocols, ports, ICMP type, interface names, conntrack state) decide; the
//! others are treated as "may match" and the walk goes on. The first rule that may
//! match and drops or rejects is the answer, with the chains that led to it; if
//! none, a base chain with policy drop is.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
};

use serde_json::Value;

use super::nft_match::{element, eval_match, key_of, unwrap_elem, Key, Sets};

mod walk;
use walk::*;

/// The packet as it was at the hook, with what is known about its devices.
#[derive(Debug, Clone, Default)]
pub struct PacketView {
    /// Of the family `l3` says (IPv4 for IPv4 and ARP, IPv6 for IPv6).
    pub saddr: Option<IpAddr>,
    pub daddr: Option<IpAddr>,
    /// The upper-layer protocol (for IPv6 the last next header: 58 ICMPv6).
    pub proto: u8,
    /// The ICMP type, or the ICMPv6 type for IPv6.
    pub icmp_type: Option<u8>,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    pub iifname: Option<String>,
    pub oifname: Option<String>,
    /// Conntrack state as the firewall sees it (`new`, `established`), when known.
    pub ct_state: Option<&'static str>,
    /// What the frame carries (IPv4 or IPv6 for a traced packet; ARP for the
    /// guest's address resolution, with `saddr`/`daddr` its sender and target
    /// address).
    pub l3: L3,
    /// The sender's MAC (the guest's, for its requests), when known.
    pub ether_saddr: Option<[u8; 6]>,
    /// Where the host routes the source back to, for reverse-path filters
    /// (`fib saddr . iif oif missing drop`); None when not looked up.
    pub route_back: Option<RouteBack>,
}

/// The host's route back to a packet's source, as `fib saddr` finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteBack {
    /// It leaves by this device.
    Via(String),
    /// None at all (or an unreachable, prohibit or blackhole route).
    Missing,
}

/// The frame's network protocol, for `meta protocol`/`ether type` and for which
/// headers exist.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum L3 {
    #[default]
    Ipv4,
    Arp,
    Ipv6,
}

impl L3 {
    pub fn ether_type(self) -> u64 {
        match self {
            L3::Ipv4 => 0x0800,
            L3::Arp => 0x0806,
            L3::Ipv6 => 0x86dd,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
    /// The hook of the base chain the walk started in.
    pub hook: String,
    /// Chains walked from that base chain to `chain`, with the verdict maps
    /// followed (`vm-out`, `vm-map-out[veth100i3]`, `guest-100-out`, `do-reject`).
    pub path: Vec<String>,
    /// The rules that led from one chain to the next.
    pub via: Vec<Via>,
    /// What a `reject` sends back (`ICMP port-unreachable`, `a TCP reset`).
    pub reply: Option<String>,
    /// The rule has no match: it applies to whatever reaches it (a generated
    /// chain's closing policy rule, for instance).
    pub unconditional: bool,
    /// The named sets the rule looks in, with their elements as nft prints them.
    pub sets: Vec<(String, Vec<String>)>,
}

/// A rule that sent the walk on to another chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    pub chain: String,
    pub handle: u64,
    pub unconditional: bool,
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
    /// Its rule's text from `listing` (`nft -a list ruleset`), when it names a
    /// rule (a chain's policy has no text).
    pub fn take_text_from(&mut self, listing: &str) {
        if let Some(h) = self.handle {
            let key = (
                self.family.clone(),
                self.table.clone(),
                self.chain.clone(),
                h,
            );
            self.text = rule_texts(listing).remove(&key);
        }
    }

    /// `inet filter forward handle 4: ip saddr 192.0.2.100 drop`, or
    /// `inet filter forward policy drop`; a rule reached through other chains
    /// ends with the way there: `(via vm-out → vm-map-out[tap100i0] → guest-100-out)`.
    pub fn describe(&self) -> String {
        let base = format!("{} {} {}", self.family, self.table, self.chain);
        let rule = match (self.handle, &self.text) {
            (Some(h), Some(t)) => format!("{base} handle {h}: {t}"),
            (Some(h), None) => format!("{base} handle {h}"),
            _ => format!("{base} policy {}", self.verdict),
        };
        match self.path.len() {
            0 | 1 => rule,
            _ => format!("{rule} (via {})", self.path_text()),
        }
    }

    /// `vm-out → vm-map-out[veth100i3] → guest-100-out → do-reject`.
    pub fn path_text(&self) -> String {
        self.path.join(" → ")
    }
}

/// Families whose IPv4 hooks see the guest's routed packets.
pub const L3_FAMILIES: &[&str] = &["ip", "inet"];
/// Families whose IPv6 hooks see them.
pub const L3_FAMILIES6: &[&str] = &["ip6", "inet"];

impl PacketView {
    /// The nft families whose IP hooks see this packet.
    pub fn families(&self) -> &'static [&'static str] {
        match self.l3 {
            L3::Ipv6 => L3_FAMILIES6,
            _ => L3_FAMILIES,
        }
    }
}
/// The bridge family's hooks, in the order a frame meets them.
pub const BRIDGE_HOOKS: &[&str] = &["prerouting", "input", "forward", "output", "postrouting"];

/// One place to replay the packet: the base chains of `hook` in `families`, with
/// the packet as those chains see it (a bridge-family chain sees the bridge's
/// ports as devices, br_netfilter's IP pass the bridge).
pub struct Point<'a> {
    pub families: &'a [&'a str],
    pub hook: &'a str,
    pub view: &'a PacketView,
}

/// Where to look for a drop: the IPv4 `hook` of the ip/inet families, or, for a
/// drop inside the bridge, the bridge family's hooks (in the order a frame meets
/// them) before br_netfilter's IPv4 `hook`.
pub fn find_culprit(hook: &str, in_bridge: bool, pkt: &PacketView) -> Option<Culprit> {
    let mut points: Vec<Point> = Vec::new();
    if in_bridge {
        points.extend(BRIDGE_HOOKS.iter().map(|h| Point {
            families: &["bridge"],
            hook: h,
            view: pkt,
        }));
    }
    points.push(Point {
        families: pkt.families(),
        hook,
        view: pkt,
    });
    find_culprit_at(&points)
}

/// The first culprit found at `points`, tried in order, with its rule text.
pub fn find_culprit_at(points: &[Point]) -> Option<Culprit> {
    let ruleset = ruleset()?;
    let mut culprit = points
        .iter()
        .find_map(|p| ruleset.culprit(p.hook, p.families, p.view))?;
    ruleset.annotate(&mut culprit);
    culprit.take_text_from(&run(&["-a", "list", "ruleset"]).unwrap_or_default());
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
        path: vec![chain.clone()],
        family,
        table,
        chain,
        handle: Some(handle),
        text,
        verdict: "dnat".into(),
        certain: true,
        manager: Manager::Nft,
        number: None,
        hook: String::new(),
        via: Vec::new(),
        reply: None,
        unconditional: false,
        sets: Vec::new(),
    };
    Some(culprit.describe())
}

/// The source-NAT rule (`masquerade` or `snat`) a packet meets at postrouting,
/// described like a culprit (verdict `masquerade`/`snat`).
pub fn find_snat(pkt: &PacketView) -> Option<Culprit> {
    let ruleset = ruleset()?;
    let mut found = ruleset.snat(pkt)?;
    ruleset.annotate(&mut found);
    found.take_text_from(&run(&["-a", "list", "ruleset"]).unwrap_or_default());
    Some(found)
}

/// The host's nftables ruleset (None without nft or root), with ebtables-nft's
/// text of its bridge-family rules.
pub fn ruleset() -> Option<Ruleset> {
    let json = run(&["-j", "list", "ruleset"])?;
    let ebtables = crate::host::firewall::rules().ebtables.as_deref();
    Some(Ruleset::parse(&serde_json::from_str(&json).ok()?).with_ebtables(ebtables))
}

/// The host's rule set as `nft -a list ruleset` prints it (rule texts by handle).
pub fn listing() -> Option<String> {
    run(&["-a", "list", "ruleset"])
}

/// `nft ARGS` as read once for this run (see `host::firewall`).
fn run(args: &[&str]) -> Option<String> {
    crate::host::firewall::rules().nft(args).map(str::to_string)
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
    /// Elements of named sets and maps by (family, table, name); a map's
    /// elements are `[key, value]` pairs.
    sets: HashMap<(String, String, String), Vec<Value>>,
    /// The bridge family's rules as ebtables-nft prints them, by (table,
    /// chain, handle): what their `xt` matches test (see [`Ruleset::with_ebtables`]).
    ebtables: HashMap<(String, String, u64), String>,
}

/// The named sets of one table, for `@name` references in its rules.
struct TableSets<'a> {
    rs: &'a Ruleset,
    family: &'a str,
    table: &'a str,
}

impl Sets for TableSets<'_> {
    fn elements(&self, name: &str) -> Option<&[Value]> {
        self.rs
            .sets
            .get(&(self.family.into(), self.table.into(), name.into()))
            .map(Vec::as_slice)
    }
}

impl Ruleset {
    pub fn parse(v: &Value) -> Self {
        let mut rs = Ruleset::default();
        for item in v["nftables"].as_array().into_iter().flatten() {
            if let Some(c) = item.get("chain") {
                rs.chains.push(Chain {
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
                if let Some(chain) = rs
                    .chains
                    .iter_mut()
                    .find(|c| c.family == f && c.table == t && c.name == ch)
                {
                    let expr = r["expr"].as_array().cloned().unwrap_or_default();
                    chain.rules.push((r["handle"].as_u64().unwrap_or(0), expr));
                }
            } else if let Some(s) = item.get("set").or_else(|| item.get("map")) {
                let key = (str_of(s, "family"), str_of(s, "table"), str_of(s, "name"));
                let elems = s["elem"].as_array().cloned().unwrap_or_default();
                rs.sets.insert(key, elems);
            }
        }
        rs
    }

    /// Attach `ebtables-nft-save`'s text of the bridge family's tables, so the
    /// walk can evaluate their `xt` matches (rule N of a chain there is rule N
    /// of the nft chain).
    pub fn with_ebtables(mut self, save: Option<&str>) -> Self {
        let Some(save) = save else {
            return self;
        };
        let rules = super::ebtables::parse_save(save);
        for c in self.chains.iter().filter(|c| c.family == "bridge") {
            let Some(lines) = rules.get(&(c.table.clone(), c.name.clone())) else {
                continue;
            };
            for ((handle, _), line) in c.rules.iter().zip(lines) {
                self.ebtables
                    .insert((c.table.clone(), c.name.clone(), *handle), line.clone());
            }
        }
        self
    }

    /// An `xt` match of rule `handle` in `chain`: evaluated from ebtables-nft's
    /// text of the rule where it is known, else "cannot tell" (nft does not
    /// show what the match tests).
    fn xt_match(&self, chain: &Chain, handle: u64, xt: &Value, pkt: &PacketView) -> Option<bool> {
        let line = self
            .ebtables
            .get(&(chain.table.clone(), chain.name.clone(), handle))
            .filter(|_| chain.family == "bridge")?;
        super::ebtables::eval_match(xt["name"].as_str()?, line, pkt)
    }

    fn sets_of<'a>(&'a self, chain: &'a Chain) -> TableSets<'a> {
        TableSets {
            rs: self,
            family: &chain.family,
            table: &chain.table,
        }
    }

    fn chain(&self, of: &Chain, name: &str) -> Option<&Chain> {
        self.chains
            .iter()
            .find(|c| c.family == of.family && c.table == of.table && c.name == name)
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

    /// Whether a base chain of `family` hooks `hook`.
    pub fn has_base_chain(&self, family: &str, hook: &str) -> bool {
        self.chains
            .iter()
            .any(|c| c.family == family && c.hook.as_deref() == Some(hook))
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
            .filter(|c| pkt.families().contains(&c.family.as_str()))
            .collect();
        base.sort_by_key(|c| c.prio);
        base.into_iter().find_map(|c| self.walk_snat(c, pkt, 0))
    }

    fn walk_snat(&self, chain: &Chain, pkt: &PacketView, depth: usize) -> Option<Culprit> {
        let sets = self.sets_of(chain);
        for (handle, exprs) in &chain.rules {
            for (e, definite) in statements(exprs, pkt, &sets) {
                if let Some(kind) = snat_kind(e) {
                    return Some(Culprit {
                        certain: definite,
                        verdict: kind.into(),
                        ..culprit_at(chain, Some(*handle), "postrouting")
                    });
                }
                let verdict = verdict_of(e);
                if definite && !matches!(verdict, None | Some(Verdict::Jump(_) | Verdict::Goto(_)))
                {
                    return None;
                }
                let found = match verdict {
                    Some(Verdict::Jump(t) | Verdict::Goto(t)) if depth < MAX_DEPTH => self
                        .chain(chain, &t)
                        .and_then(|sub| self.walk_snat(sub, pkt, depth + 1)),
                    _ => None,
                };
                if found.is_some() {
                    return found;
                }
            }
        }
        None
    }

    pub fn culprit(&self, hook: &str, families: &[&str], pkt: &PacketView) -> Option<Culprit> {
        let mut base: Vec<&Chain> = self
            .chains
            .iter()
            .filter(|c| c.hook.as_deref() == Some(hook) && families.contains(&c.family.as_str()))
            .collect();
        base.sort_by_key(|c| c.prio);
        let mut walk = Walk {
            rs: self,
            pkt,
            hook,
            unsure: false,
            path: Vec::new(),
            via: Vec::new(),
            budget: WALK_BUDGET,
        };
        for chain in base {
            walk.path = vec![chain.name.clone()];
            walk.via.clear();
            match walk.chain(chain, 0) {
                Flow::Dropped(c) => return Some(*c),
                Flow::Accepted => continue,
                Flow::Return if chain.policy.as_deref() == Some("drop") => {
                    return Some(Culprit {
                        verdict: "drop".into(),
                        certain: !walk.unsure,
                        path: walk.path.clone(),
                        ..culprit_at(chain, None, hook)
                    });
                }
                Flow::Return => {}
            }
        }
        None
    }
}

/// A culprit in `chain` with nothing yet known about how it was reached.
fn culprit_at(chain: &Chain, handle: Option<u64>, hook: &str) -> Culprit {
    Culprit {
        family: chain.family.clone(),
        table: chain.table.clone(),
        chain: chain.name.clone(),
        handle,
        text: None,
        verdict: String::new(),
        certain: true,
        hook: hook.into(),
        path: vec![chain.name.clone()],
        via: Vec::new(),
        reply: None,
        manager: Manager::Nft,
        number: None,
        unconditional: false,
        sets: Vec::new(),
    }
}

/// A rule without any match.
fn unconditional(exprs: &[Value]) -> bool {
    !exprs.iter().any(|e| e.get("match").is_some())
}

/// The named sets (`@name`) a rule's matches look in, with their elements.
fn sets_used(exprs: &[Value], sets: &TableSets) -> Vec<(String, Vec<String>)> {
    exprs
        .iter()
        .filter_map(|e| e.get("match")?["right"].as_str()?.strip_prefix('@'))
        .map(|name| {
            let elems = sets.elements(name).unwrap_or_default();
            (name.to_string(), elems.iter().map(key_text).collect())
        })
        .collect()
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
mod tests;
