//! One packet's walk through the rule set: chains in order, nft's own semantics
//! for jump, goto, return and verdict maps, and the statements a rule holds.

use super::*;

/// How a chain ended for the packet.
pub(super) enum Flow {
    Dropped(Box<Culprit>),
    Accepted,
    /// Fell off the end or hit `return` (a base chain's policy applies then).
    Return,
}

/// What a verdict statement (or the entry a verdict map picked) does.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Verdict {
    Accept,
    /// `drop` or `reject`, with what a reject sends back.
    Drop(&'static str, Option<String>),
    Return,
    Continue,
    Jump(String),
    Goto(String),
}

/// A statement as the walk sees it.
pub(super) enum Stmt {
    /// Counters, logs, limits, marks, NAT: nothing that ends the walk.
    NoOp,
    /// A verdict, and the verdict map entry it came from (`vm-map-out[tap100i0]`).
    Verdict(Verdict, Option<String>),
    /// A verdict map whose key we cannot tell for this packet.
    Unknown,
}

/// Where a rule left the walk.
pub(super) enum Step {
    NextStmt,
    NextRule,
    Done(Flow),
}

/// nft refuses jumps deeper than this.
pub(super) const MAX_DEPTH: usize = 16;

/// One packet's walk through a rule set: the chains entered so far (for the
/// answer) and whether an earlier accept or return may have ended it already.
pub(super) struct Walk<'a> {
    pub(super) rs: &'a Ruleset,
    pub(super) pkt: &'a PacketView,
    pub(super) hook: &'a str,
    pub(super) unsure: bool,
    pub(super) path: Vec<String>,
    pub(super) via: Vec<Via>,
    /// Rules still to be looked at: nft refuses loops, but a rule set whose
    /// chains jump to shared chains many times over could still make the walk
    /// long; past the budget it stops, unsure.
    pub(super) budget: usize,
}

/// Rules one replay looks at, at most (a generated rule set of a few thousand
/// rules needs a small fraction of it).
pub(super) const WALK_BUDGET: usize = 200_000;

/// The rule a statement belongs to, as far as the walk needs it.
pub(super) struct RuleAt<'a> {
    pub(super) chain: &'a Chain,
    pub(super) handle: u64,
    pub(super) exprs: &'a [Value],
    /// Every match before the statement could be evaluated.
    pub(super) definite: bool,
}

impl Walk<'_> {
    pub(super) fn chain(&mut self, chain: &Chain, depth: usize) -> Flow {
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
    pub(super) fn rule(
        &mut self,
        chain: &Chain,
        handle: u64,
        exprs: &[Value],
        depth: usize,
    ) -> Option<Flow> {
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
            // An xtables match (iptables-nft, ebtables-nft) is a match too, not
            // a statement that always passes.
            if let Some(xt) = e.get("xt").filter(|x| x["type"] == "match") {
                match self.rs.xt_match(chain, handle, xt, self.pkt) {
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

    pub(super) fn statement(&self, e: &Value, sets: &TableSets) -> Stmt {
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
    pub(super) fn vmap(&self, m: &Value, sets: &TableSets) -> Stmt {
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

    pub(super) fn apply(
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
pub(super) fn key_text(k: &Value) -> String {
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
pub(super) fn statements<'a>(
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
pub(super) fn verdict_of(e: &Value) -> Option<Verdict> {
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
pub(super) fn reject_reply(r: &Value) -> String {
    match (r["type"].as_str(), r["expr"].as_str()) {
        (Some("tcp reset"), _) => "a TCP reset".into(),
        (Some(_), Some(code)) => format!("ICMP {code}"),
        _ => "ICMP port-unreachable".into(),
    }
}
