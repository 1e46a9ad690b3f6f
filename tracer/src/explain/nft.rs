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

use std::{collections::HashMap, net::Ipv4Addr};

use serde_json::Value;

use super::nft_match::{element, eval_match, key_of, unwrap_elem, Key, Sets};

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
    /// What the frame carries (IPv4 for every traced packet; ARP for the guest's
    /// address resolution, with `saddr`/`daddr` its sender and target address).
    pub l3: L3,
    /// The sender's MAC (the guest's, for its requests), when known.
    pub ether_saddr: Option<[u8; 6]>,
}

/// The frame's network protocol, for `meta protocol`/`ether type` and for which
/// headers exist.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum L3 {
    #[default]
    Ipv4,
    Arp,
}

impl L3 {
    pub fn ether_type(self) -> u64 {
        match self {
            L3::Ipv4 => 0x0800,
            L3::Arp => 0x0806,
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
        families: L3_FAMILIES,
        hook,
        view: pkt,
    });
    find_culprit_at(&points)
}

/// The first culprit found at `points`, tried in order, with its rule text.
pub fn find_culprit_at(points: &[Point]) -> Option<Culprit> {
    let json = run(&["-j", "list", "ruleset"])?;
    let ruleset = Ruleset::parse(&serde_json::from_str(&json).ok()?);
    let mut culprit = points
        .iter()
        .find_map(|p| ruleset.culprit(p.hook, p.families, p.view))?;
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

/// How a chain ended for the packet.
enum Flow {
    Dropped(Box<Culprit>),
    Accepted,
    /// Fell off the end or hit `return` (a base chain's policy applies then).
    Return,
}

/// What a verdict statement (or the entry a verdict map picked) does.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    Accept,
    /// `drop` or `reject`, with what a reject sends back.
    Drop(&'static str, Option<String>),
    Return,
    Continue,
    Jump(String),
    Goto(String),
}

/// A statement as the walk sees it.
enum Stmt {
    /// Counters, logs, limits, marks, NAT: nothing that ends the walk.
    NoOp,
    /// A verdict, and the verdict map entry it came from (`vm-map-out[tap100i0]`).
    Verdict(Verdict, Option<String>),
    /// A verdict map whose key we cannot tell for this packet.
    Unknown,
}

/// Where a rule left the walk.
enum Step {
    NextStmt,
    NextRule,
    Done(Flow),
}

/// nft refuses jumps deeper than this.
const MAX_DEPTH: usize = 16;

/// One packet's walk through a rule set: the chains entered so far (for the
/// answer) and whether an earlier accept or return may have ended it already.
struct Walk<'a> {
    rs: &'a Ruleset,
    pkt: &'a PacketView,
    hook: &'a str,
    unsure: bool,
    path: Vec<String>,
    via: Vec<Via>,
    /// Rules still to be looked at: nft refuses loops, but a rule set whose
    /// chains jump to shared chains many times over could still make the walk
    /// long; past the budget it stops, unsure.
    budget: usize,
}

/// Rules one replay looks at, at most (a generated rule set of a few thousand
/// rules needs a small fraction of it).
const WALK_BUDGET: usize = 200_000;

/// The rule a statement belongs to, as far as the walk needs it.
struct RuleAt<'a> {
    chain: &'a Chain,
    handle: u64,
    exprs: &'a [Value],
    /// Every match before the statement could be evaluated.
    definite: bool,
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

impl Walk<'_> {
    fn chain(&mut self, chain: &Chain, depth: usize) -> Flow {
        for (handle, exprs) in &chain.rules {
            if self.budget == 0 {
                self.unsure = true;
                return Flow::Return;
            }
            self.budget -= 1;
            if let Some(flow) = self.rule(chain, *handle, exprs, depth) {
                return flow;
            }
        }
        Flow::Return
    }

    /// One rule: matches in order (a certain miss ends it), statements as they
    /// come. Some(flow) when the rule ended the chain.
    fn rule(&mut self, chain: &Chain, handle: u64, exprs: &[Value], depth: usize) -> Option<Flow> {
        let sets = self.rs.sets_of(chain);
        let mut definite = true;
        for e in exprs {
            if let Some(m) = e.get("match") {
                match eval_match(m, self.pkt, &sets) {
                    Some(true) => {}
                    Some(false) => return None,
                    None => definite = false,
                }
                continue;
            }
            let (verdict, entry) = match self.statement(e, &sets) {
                Stmt::NoOp => continue,
                // A verdict map may have sent the packet elsewhere.
                Stmt::Unknown => {
                    self.unsure = true;
                    continue;
                }
                Stmt::Verdict(v, entry) => (v, entry),
            };
            let at = RuleAt {
                chain,
                handle,
                exprs,
                definite,
            };
            match self.apply(&at, verdict, entry, depth) {
                Step::NextStmt => {}
                Step::NextRule => return None,
                Step::Done(flow) => return Some(flow),
            }
        }
        None
    }

    fn statement(&self, e: &Value, sets: &TableSets) -> Stmt {
        if let Some(v) = verdict_of(e) {
            return Stmt::Verdict(v, None);
        }
        match e.get("vmap") {
            Some(m) => self.vmap(m, sets),
            None => Stmt::NoOp,
        }
    }

    /// `KEY vmap @map` / `KEY vmap { k : verdict, ... }`: the entry for this
    /// packet's key.
    fn vmap(&self, m: &Value, sets: &TableSets) -> Stmt {
        let atom = match key_of(&m["key"], self.pkt) {
            Key::Known(a) => a,
            Key::Absent => return Stmt::NoOp,
            Key::Unknown => return Stmt::Unknown,
        };
        let data = &m["data"];
        let (entries, map) = match data.as_str().and_then(|s| s.strip_prefix('@')) {
            Some(name) => match sets.elements(name) {
                Some(e) => (e, Some(name)),
                None => return Stmt::Unknown,
            },
            None => match data.get("set").and_then(Value::as_array) {
                Some(e) => (e.as_slice(), None),
                None => return Stmt::Unknown,
            },
        };
        let mut unknown = false;
        for entry in entries {
            let Some([k, v]) = unwrap_elem(entry).as_array().map(Vec::as_slice) else {
                continue;
            };
            match element(&atom, unwrap_elem(k)) {
                Some(true) => {
                    let Some(verdict) = verdict_of(v) else {
                        return Stmt::Unknown;
                    };
                    let entry = map.map(|n| format!("{n}[{}]", key_text(k)));
                    return Stmt::Verdict(verdict, entry);
                }
                Some(false) => {}
                None => unknown = true,
            }
        }
        if unknown {
            Stmt::Unknown
        } else {
            Stmt::NoOp
        }
    }

    fn apply(
        &mut self,
        at: &RuleAt,
        verdict: Verdict,
        entry: Option<String>,
        depth: usize,
    ) -> Step {
        let (chain, handle, definite) = (at.chain, at.handle, at.definite);
        // A verdict behind a match we could not evaluate may not have happened:
        // the walk goes on, but what it finds later is no longer certain.
        let maybe = |w: &mut Self| {
            w.unsure = true;
            Step::NextRule
        };
        match verdict {
            Verdict::Accept if definite => Step::Done(Flow::Accepted),
            Verdict::Return if definite => Step::Done(Flow::Return),
            Verdict::Accept | Verdict::Return => maybe(self),
            Verdict::Continue => Step::NextRule,
            Verdict::Drop(kind, reply) => Step::Done(Flow::Dropped(Box::new(Culprit {
                verdict: kind.into(),
                certain: definite && !self.unsure,
                path: self.path.clone(),
                via: self.via.clone(),
                reply,
                unconditional: unconditional(at.exprs),
                sets: sets_used(at.exprs, &self.rs.sets_of(chain)),
                ..culprit_at(chain, Some(handle), self.hook)
            }))),
            Verdict::Jump(ref target) | Verdict::Goto(ref target) => {
                let Some(sub) = self.rs.chain(chain, target).filter(|_| depth < MAX_DEPTH) else {
                    return maybe(self);
                };
                if !definite {
                    self.unsure = true;
                }
                let mark = self.path.len();
                self.path.extend(entry);
                self.path.push(sub.name.clone());
                self.via.push(Via {
                    chain: chain.name.clone(),
                    handle,
                    unconditional: unconditional(at.exprs),
                });
                let flow = self.chain(sub, depth + 1);
                self.path.truncate(mark);
                self.via.pop();
                match (flow, &verdict) {
                    (Flow::Dropped(c), _) => Step::Done(Flow::Dropped(c)),
                    (Flow::Accepted, _) if definite => Step::Done(Flow::Accepted),
                    (Flow::Return, Verdict::Jump(_)) => Step::NextStmt,
                    (Flow::Return, _) if definite => Step::Done(Flow::Return),
                    _ => Step::NextRule,
                }
            }
        }
    }
}

/// A verdict map key as nft prints it (`tap100i0`, `192.0.2.0/24`, `a . b`).
fn key_text(k: &Value) -> String {
    let k = unwrap_elem(k);
    if let Some(parts) = k.get("concat").and_then(Value::as_array) {
        return parts.iter().map(key_text).collect::<Vec<_>>().join(" . ");
    }
    if let Some(p) = k.get("prefix") {
        return format!("{}/{}", p["addr"].as_str().unwrap_or("?"), p["len"]);
    }
    if let Some([lo, hi]) = k.get("range").and_then(Value::as_array).map(Vec::as_slice) {
        return format!("{}-{}", key_text(lo), key_text(hi));
    }
    match k {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A rule's statements (everything but its matches) with whether every match
/// before each could be evaluated; it ends where a match certainly fails.
fn statements<'a>(
    exprs: &'a [Value],
    pkt: &'a PacketView,
    sets: &'a TableSets<'a>,
) -> impl Iterator<Item = (&'a Value, bool)> + 'a {
    let mut definite = true;
    let mut possible = true;
    exprs
        .iter()
        .filter_map(move |e| {
            if let Some(m) = e.get("match") {
                match eval_match(m, pkt, sets) {
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

/// The verdict of a statement: native `accept`/`drop`/`reject`/`return`/
/// `continue`/`jump`/`goto`, or an iptables-nft target (`xt`) that drops
/// (`DROP`, `REJECT`) or accepts.
fn verdict_of(e: &Value) -> Option<Verdict> {
    let target = |k: &str| {
        e.get(k)
            .and_then(|j| j["target"].as_str())
            .map(str::to_string)
    };
    if let Some(t) = target("jump") {
        return Some(Verdict::Jump(t));
    }
    if let Some(t) = target("goto") {
        return Some(Verdict::Goto(t));
    }
    if let Some(r) = e.get("reject") {
        return Some(Verdict::Drop("reject", Some(reject_reply(r))));
    }
    for (key, v) in [
        ("accept", Verdict::Accept),
        ("drop", Verdict::Drop("drop", None)),
        ("return", Verdict::Return),
        ("continue", Verdict::Continue),
    ] {
        if e.get(key).is_some() {
            return Some(v);
        }
    }
    let xt = e.get("xt")?;
    match (xt["type"].as_str()?, xt["name"].as_str()?) {
        ("target", "DROP") => Some(Verdict::Drop("drop", None)),
        ("target", "REJECT") => Some(Verdict::Drop("reject", None)),
        ("target", "ACCEPT") => Some(Verdict::Accept),
        ("target", "RETURN") => Some(Verdict::Return),
        _ => None,
    }
}

/// What a `reject` sends: `reject` alone answers ICMP port-unreachable (IPv4).
fn reject_reply(r: &Value) -> String {
    match (r["type"].as_str(), r["expr"].as_str()) {
        (Some("tcp reset"), _) => "a TCP reset".into(),
        (Some(_), Some(code)) => format!("ICMP {code}"),
        _ => "ICMP port-unreachable".into(),
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

    /// Proxmox VE's nftables firewall (proxmox-firewall) as its generator wrote
    /// it for guest 100 of its own test configuration, loaded unchanged on
    /// Debian's 6.12 kernel and listed by nft (see testdata/proxmox-firewall/).
    const PVE_JSON: &str = include_str!("testdata/proxmox-firewall/ruleset-6.12.json");
    const PVE_TEXT: &str = include_str!("testdata/proxmox-firewall/ruleset-6.12.txt");
    const PVE_SNAPSHOT: &str =
        include_str!("testdata/proxmox-firewall/integration_tests__firewall.snap");

    fn pve() -> Ruleset {
        Ruleset::parse(&serde_json::from_str(PVE_JSON).unwrap())
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
        let key = (
            c.family.clone(),
            c.table.clone(),
            c.chain.clone(),
            c.handle.unwrap(),
        );
        c.text = rule_texts(PVE_TEXT).remove(&key);
        c
    }

    #[test]
    fn proxmox_policy_out_reject_is_found_through_the_verdict_map() {
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
        let body = &PVE_SNAPSHOT[PVE_SNAPSHOT.find("{\n").unwrap()..];
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
}
