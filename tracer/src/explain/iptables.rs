//! Which legacy iptables rule (or chain policy) dropped a packet at a hook.
//!
//! Legacy iptables (still the default on many hypervisors) drops through
//! `nf_hook_slow`, and the kernel says nothing about the rule. We replay the packet
//! against `iptables-legacy-save` (`ip6tables-legacy-save` for IPv6): the hook's
//! built-in chains in table priority order, rules in order, following jumps.
//! Matches we understand decide; others "may match". (iptables-nft and
//! ip6tables-nft rules live in the nftables ruleset: see `nft`.)

use std::net::{IpAddr, Ipv4Addr};

use super::nft::{PacketView, L3};

/// A rule or policy found responsible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Culprit {
    pub table: String,
    pub chain: String,
    /// 1-based position in the chain; None for the chain policy.
    pub number: Option<usize>,
    /// The rule as iptables-save prints it (`-A FORWARD ... -j DROP`).
    pub text: Option<String>,
    pub target: String,
    /// Every match before it could be evaluated: this certainly decides.
    pub certain: bool,
}

impl Culprit {
    pub fn describe(&self, tool: &str) -> String {
        match (self.number, &self.text) {
            (Some(n), Some(t)) => format!("{tool} {} {} rule {n}: {t}", self.table, self.chain),
            _ => format!(
                "{tool} {} {} policy {}",
                self.table, self.chain, self.target
            ),
        }
    }
}

#[derive(Debug, Default)]
struct Chain {
    table: String,
    name: String,
    policy: Option<String>,
    rules: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Rules {
    chains: Vec<Chain>,
}

/// Tables in the order their hooks run (raw, mangle, nat, filter, security).
const TABLE_ORDER: &[&str] = &["raw", "mangle", "nat", "filter", "security"];

pub fn find_culprit(hook: &str, pkt: &PacketView) -> Option<Culprit> {
    legacy_rules(pkt.l3)?.culprit(hook, pkt)
}

/// The legacy nat POSTROUTING rule (MASQUERADE/SNAT) a packet meets, if any.
pub fn find_snat(pkt: &PacketView) -> Option<Culprit> {
    let rules = legacy_rules(pkt.l3)?;
    let chain = rules.chain("nat", "POSTROUTING")?;
    rules.walk_snat(chain, pkt, 0)
}

/// The legacy tables of the packet's family as read once for this run (see
/// `host::firewall`).
fn legacy_rules(l3: L3) -> Option<Rules> {
    let fw = crate::host::firewall::rules();
    let save = match l3 {
        L3::Ipv6 => fw.legacy6.as_deref()?,
        _ => fw.legacy.as_deref()?,
    };
    Some(Rules::parse(save))
}

/// The tool that prints the legacy rules of the packet's family, for people.
pub fn legacy_tool(pkt: &PacketView) -> &'static str {
    match pkt.l3 {
        L3::Ipv6 => "ip6tables-legacy",
        _ => "iptables-legacy",
    }
}

/// The legacy nat rule that translates destinations to `to`.
pub fn find_dnat_rule(to: Ipv4Addr) -> Option<String> {
    let save = crate::host::firewall::rules().legacy_table("nat")?;
    let rules = Rules::parse(&save);
    rules.chains.iter().find_map(|c| {
        let n = c.rules.iter().position(|r| {
            r.split_whitespace()
                .skip_while(|w| *w != "--to-destination")
                .nth(1)
                .is_some_and(|d| d.split(':').next() == Some(&to.to_string()))
        })?;
        Some(format!(
            "iptables-legacy nat {} rule {}: {}",
            c.name,
            n + 1,
            c.rules[n]
        ))
    })
}

enum Flow {
    Dropped(Culprit),
    Accepted,
    Continue,
}

impl Rules {
    pub fn parse(save: &str) -> Self {
        let mut chains: Vec<Chain> = Vec::new();
        let mut table = String::new();
        for line in save.lines().map(str::trim) {
            if let Some(t) = line.strip_prefix('*') {
                table = t.to_string();
            } else if let Some(decl) = line.strip_prefix(':') {
                let mut w = decl.split_whitespace();
                let name = w.next().unwrap_or_default().to_string();
                let policy = w.next().filter(|p| *p != "-").map(str::to_string);
                chains.push(Chain {
                    table: table.clone(),
                    name,
                    policy,
                    rules: Vec::new(),
                });
            } else if let Some(rest) = line.strip_prefix("-A ") {
                let name = rest.split_whitespace().next().unwrap_or_default();
                if let Some(c) = chains
                    .iter_mut()
                    .find(|c| c.table == table && c.name == name)
                {
                    c.rules.push(line.to_string());
                }
            }
        }
        Self { chains }
    }

    pub fn culprit(&self, hook: &str, pkt: &PacketView) -> Option<Culprit> {
        let builtin = hook.to_uppercase();
        let mut unsure = false;
        for table in TABLE_ORDER {
            let Some(chain) = self.chain(table, &builtin) else {
                continue;
            };
            match self.walk(chain, pkt, 0, &mut unsure) {
                Flow::Dropped(c) => return Some(c),
                Flow::Accepted => continue,
                Flow::Continue if chain.policy.as_deref() == Some("DROP") => {
                    return Some(Culprit {
                        table: chain.table.clone(),
                        chain: chain.name.clone(),
                        number: None,
                        text: None,
                        target: "DROP".into(),
                        certain: !unsure,
                    });
                }
                Flow::Continue => {}
            }
        }
        None
    }

    fn chain(&self, table: &str, name: &str) -> Option<&Chain> {
        self.chains
            .iter()
            .find(|c| c.table == table && c.name == name)
    }

    /// `unsure` records an ACCEPT that may have matched (a later drop is then
    /// possible, not certain).
    fn walk(&self, chain: &Chain, pkt: &PacketView, depth: u32, unsure: &mut bool) -> Flow {
        for (i, rule) in chain.rules.iter().enumerate() {
            let parsed = parse_rule(rule);
            let (possible, definite) = parsed.matches(pkt);
            if !possible {
                continue;
            }
            match parsed.target.as_str() {
                "ACCEPT" if definite => return Flow::Accepted,
                "ACCEPT" => *unsure = true,
                "DROP" | "REJECT" => {
                    return Flow::Dropped(Culprit {
                        table: chain.table.clone(),
                        chain: chain.name.clone(),
                        number: Some(i + 1),
                        text: Some(rule.clone()),
                        target: parsed.target.clone(),
                        certain: definite && !*unsure,
                    });
                }
                "RETURN" if definite => return Flow::Continue,
                t if depth < 8 => {
                    if let Some(sub) = self.chain(&chain.table, t) {
                        match self.walk(sub, pkt, depth + 1, unsure) {
                            Flow::Continue => {}
                            other => return other,
                        }
                    }
                }
                _ => {}
            }
        }
        Flow::Continue
    }
}

impl Rules {
    fn walk_snat(&self, chain: &Chain, pkt: &PacketView, depth: u32) -> Option<Culprit> {
        for (i, rule) in chain.rules.iter().enumerate() {
            let parsed = parse_rule(rule);
            let (possible, definite) = parsed.matches(pkt);
            if !possible {
                continue;
            }
            match parsed.target.as_str() {
                "MASQUERADE" | "SNAT" => {
                    return Some(Culprit {
                        table: chain.table.clone(),
                        chain: chain.name.clone(),
                        number: Some(i + 1),
                        text: Some(rule.clone()),
                        target: parsed.target.clone(),
                        certain: definite,
                    })
                }
                "ACCEPT" | "RETURN" if definite => return None,
                t if depth < 8 => {
                    let found = self
                        .chain(&chain.table, t)
                        .and_then(|sub| self.walk_snat(sub, pkt, depth + 1));
                    if found.is_some() {
                        return found;
                    }
                }
                _ => {}
            }
        }
        None
    }
}

/// A rule's matches (what we can evaluate) and target.
#[derive(Debug, Default)]
struct Rule {
    /// (option, value, negated)
    matches: Vec<(String, String, bool)>,
    target: String,
}

fn parse_rule(line: &str) -> Rule {
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut rule = Rule::default();
    let mut negate = false;
    let mut i = 2; // skip "-A CHAIN"
    while i < words.len() {
        let w = words[i];
        match w {
            "!" => {
                negate = true;
                i += 1;
                continue;
            }
            "-j" | "-g" | "--jump" | "--goto" => {
                rule.target = words.get(i + 1).unwrap_or(&"").to_string();
                i += 2;
            }
            "-m" | "--match" => i += 2,
            _ if w.starts_with('-') => {
                let value = words
                    .get(i + 1)
                    .filter(|v| !v.starts_with('-') || **v == "-");
                rule.matches
                    .push((w.to_string(), value.unwrap_or(&"").to_string(), negate));
                i += if value.is_some() { 2 } else { 1 };
            }
            _ => i += 1,
        }
        negate = false;
    }
    rule
}

impl Rule {
    /// (may match, certainly matches)
    fn matches(&self, pkt: &PacketView) -> (bool, bool) {
        let mut definite = true;
        for (opt, value, negated) in &self.matches {
            match eval(opt, value, pkt) {
                Some(r) if r != *negated => {}
                Some(_) => return (false, false),
                None => definite = false,
            }
        }
        (true, definite)
    }
}

fn eval(opt: &str, value: &str, pkt: &PacketView) -> Option<bool> {
    match opt {
        "-s" | "--source" => addr_in(pkt.saddr?, value),
        "-d" | "--destination" => addr_in(pkt.daddr?, value),
        "-p" | "--protocol" => Some(match value {
            "icmp" => pkt.proto == 1,
            "tcp" => pkt.proto == 6,
            "udp" => pkt.proto == 17,
            "ipv6-icmp" | "icmpv6" | "icmp6" => pkt.proto == 58,
            "all" => true,
            n => n.parse::<u8>().ok()? == pkt.proto,
        }),
        "-i" | "--in-interface" => iface_is(pkt.iifname.as_deref()?, value),
        "-o" | "--out-interface" => iface_is(pkt.oifname.as_deref()?, value),
        "--dport" | "--destination-port" => port_in(pkt.dport?, value),
        "--sport" | "--source-port" => port_in(pkt.sport?, value),
        "--icmp-type" if pkt.proto == 1 => {
            let t = pkt.icmp_type?;
            Some(match value {
                "8" | "echo-request" => t == 8,
                "0" | "echo-reply" => t == 0,
                _ => return None,
            })
        }
        "--icmpv6-type" if pkt.proto == 58 => icmpv6_type_is(pkt.icmp_type?, value),
        "--icmp-type" | "--icmpv6-type" => Some(false),
        "--ctstate" | "--state" => {
            let state = pkt.ct_state?.to_uppercase();
            Some(value.split(',').any(|s| s == state))
        }
        // Counters, comments, logging options and the like never decide a match.
        "-c" | "--comment" | "--log-prefix" | "--reject-with" => Some(true),
        _ => None,
    }
}

/// ip6tables-save prints ICMPv6 types as numbers (`--icmpv6-type 135`, a
/// code after a slash); a rule written by hand may name them.
fn icmpv6_type_is(t: u8, value: &str) -> Option<bool> {
    let (ty, code) = match value.split_once('/') {
        Some((ty, code)) => (ty, Some(code)),
        None => (value, None),
    };
    let want = match ty {
        "echo-request" => 128,
        "echo-reply" => 129,
        "router-solicitation" => 133,
        "router-advertisement" => 134,
        "neighbour-solicitation" | "neighbor-solicitation" => 135,
        "neighbour-advertisement" | "neighbor-advertisement" => 136,
        "packet-too-big" => 2,
        n => n.parse::<u8>().ok()?,
    };
    match (t == want, code) {
        (false, _) => Some(false),
        (true, None) => Some(true),
        // A code is not evaluated (the view has none).
        (true, Some(_)) => None,
    }
}

fn addr_in(addr: IpAddr, value: &str) -> Option<bool> {
    let full = if addr.is_ipv4() { "32" } else { "128" };
    let (net, len) = value.split_once('/').unwrap_or((value, full));
    let net: IpAddr = net.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    Some(super::nft_match::in_prefix(addr, net, len))
}

fn iface_is(name: &str, pattern: &str) -> Option<bool> {
    Some(match pattern.strip_suffix('+') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    })
}

fn port_in(port: u16, value: &str) -> Option<bool> {
    match value.split_once(':') {
        Some((lo, hi)) => {
            let lo = if lo.is_empty() { 0 } else { lo.parse().ok()? };
            let hi = if hi.is_empty() {
                u16::MAX
            } else {
                hi.parse().ok()?
            };
            Some(lo <= port && port <= hi)
        }
        None => Some(value.parse::<u16>().ok()? == port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVE: &str = "# Generated by iptables-save\n*filter\n:INPUT ACCEPT [0:0]\n\
:FORWARD DROP [3:252]\n:OUTPUT ACCEPT [0:0]\n:GUESTS - [0:0]\n\
-A FORWARD -i vmbr0 -j GUESTS\n\
-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
-A GUESTS -s 192.0.2.50/32 -j DROP\n\
-A GUESTS -s 192.0.2.0/24 -p udp -m udp --dport 53 -j REJECT --reject-with icmp-port-unreachable\n\
-A GUESTS -s 192.0.2.0/24 ! -o eth1 -p icmp -j ACCEPT\nCOMMIT\n";

    fn view(proto: u8, dport: Option<u16>, oif: &str) -> PacketView {
        PacketView {
            saddr: Some("192.0.2.100".parse().unwrap()),
            daddr: Some("203.0.113.8".parse().unwrap()),
            proto,
            icmp_type: (proto == 1).then_some(8),
            sport: dport.map(|_| 40000),
            dport,
            iifname: Some("vmbr0".into()),
            oifname: Some(oif.into()),
            ct_state: None,
            ..Default::default()
        }
    }

    #[test]
    fn follows_jumps_to_the_rejecting_rule() {
        let r = Rules::parse(SAVE);
        let c = r.culprit("forward", &view(17, Some(53), "eth0")).unwrap();
        assert_eq!(c.chain, "GUESTS");
        assert_eq!(c.number, Some(2));
        assert_eq!(c.target, "REJECT");
        assert!(c
            .describe("iptables-legacy")
            .starts_with("iptables-legacy filter GUESTS rule 2: -A GUESTS -s 192.0.2.0/24"));
    }

    #[test]
    fn accepted_then_policy() {
        let r = Rules::parse(SAVE);
        // icmp out of eth0 is accepted by the last GUESTS rule: no culprit.
        assert_eq!(r.culprit("forward", &view(1, None, "eth0")), None);
        // Out of eth1 the negated match fails; the ctstate rule may match (unknown)
        // but does not accept for sure, so the FORWARD policy is to blame.
        let c = r.culprit("forward", &view(1, None, "eth1")).unwrap();
        assert_eq!(
            c.describe("iptables-legacy"),
            "iptables-legacy filter FORWARD policy DROP"
        );
    }

    #[test]
    fn port_ranges_and_wildcards() {
        assert_eq!(port_in(53, "50:60"), Some(true));
        assert_eq!(port_in(53, ":52"), Some(false));
        assert_eq!(iface_is("tap100i0", "tap+"), Some(true));
        assert_eq!(
            addr_in("192.0.2.100".parse().unwrap(), "192.0.2.0/25"),
            Some(true)
        );
        assert_eq!(
            addr_in("2001:db8:1::100".parse().unwrap(), "2001:db8:1::/64"),
            Some(true)
        );
        assert_eq!(
            addr_in("2001:db8:1::100".parse().unwrap(), "192.0.2.0/24"),
            Some(false)
        );
    }
}

#[cfg(test)]
mod tests6 {
    use super::*;

    /// `ip6tables-legacy-save` (v1.8.9) of rules written in a scratch namespace.
    const SAVE6: &str = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n\
-A INPUT -s 2001:db8:1::/64 -i vmbr0 -p udp -m udp --dport 53 -j REJECT --reject-with icmp6-port-unreachable\n\
-A FORWARD -p ipv6-icmp -m icmp6 --icmpv6-type 135 -j DROP\n\
-A FORWARD -p ipv6-icmp -m icmp6 --icmpv6-type 128 -j ACCEPT\nCOMMIT\n";

    fn view6(icmp_type: Option<u8>, dport: Option<u16>) -> PacketView {
        PacketView {
            saddr: Some("2001:db8:1::100".parse().unwrap()),
            daddr: Some("2001:db8:1::1".parse().unwrap()),
            proto: if icmp_type.is_some() { 58 } else { 17 },
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
    fn icmpv6_types_protocols_and_prefixes() {
        let r = Rules::parse(SAVE6);
        let c = r.culprit("forward", &view6(Some(135), None)).unwrap();
        assert_eq!((c.number, c.certain), (Some(1), true));
        assert_eq!(r.culprit("forward", &view6(Some(128), None)), None);
        let c = r.culprit("forward", &view6(Some(129), None)).unwrap();
        assert_eq!(
            c.describe("ip6tables-legacy"),
            "ip6tables-legacy filter FORWARD policy DROP"
        );
        let c = r.culprit("input", &view6(None, Some(53))).unwrap();
        assert_eq!((c.number, c.target.as_str()), (Some(1), "REJECT"));
        assert_eq!(icmpv6_type_is(135, "neighbour-solicitation"), Some(true));
        assert_eq!(icmpv6_type_is(136, "135/0"), Some(false));
        assert_eq!(icmpv6_type_is(135, "135/0"), None);
    }
}
