//! The public output: JSON lines (a stable contract: docs/json.md) and the text
//! view a person reads. Fields may be added, never renamed or removed.

mod check;

use std::io::Write;

pub use check::print_checks;
pub use pathtrace_json::{Check, Direction, Flow, Nat, Outcome, PathHop, Status, Summary, Verdict};

pub struct Printer {
    pub json: bool,
}

impl Printer {
    pub fn verdict(&self, v: &Verdict) {
        let mut out = std::io::stdout().lock();
        if self.json {
            let _ = writeln!(out, "{}", serde_json::to_string(v).unwrap_or_default());
        } else {
            let _ = write!(out, "{}", render_text(v));
        }
        let _ = out.flush();
    }

    /// Doctor checks: JSON lines (`"type":"check"`) or the doctor's text lines.
    pub fn checks(&self, checks: &[Check]) {
        if self.json {
            for c in checks {
                println!("{}", serde_json::to_string(c).unwrap_or_default());
            }
        } else {
            print_checks(checks);
        }
    }

    pub fn summary(&self, s: &Summary) {
        let mut out = std::io::stdout().lock();
        if self.json {
            let _ = writeln!(out, "{}", serde_json::to_string(s).unwrap_or_default());
        } else {
            let _ = writeln!(
                out,
                "{} probe(s): {} replied, {} dropped, {} no reply{}{}",
                s.probes,
                s.replied,
                s.dropped,
                s.no_reply,
                if s.skipped_requests > 0 {
                    format!(
                        " ({} more requests not followed: the guest sent faster than pathtrace follows)",
                        s.skipped_requests
                    )
                } else {
                    String::new()
                },
                if s.events_lost > 0 {
                    format!(" ({} events lost: paths may be incomplete)", s.events_lost)
                } else {
                    String::new()
                }
            );
        }
        let _ = out.flush();
    }

    /// A line for the person watching, never part of the JSON stream.
    pub fn status(&self, msg: &str) {
        eprintln!("{msg}");
    }
}

fn flow_label(v: &Verdict) -> String {
    let f = &v.flow;
    match (f.icmp_id, f.icmp_seq, f.dns_id) {
        (Some(id), Some(seq), _) => format!("icmp {} → {} id {id} seq {seq}", f.src, f.dst),
        (_, _, Some(id)) => format!(
            "dns {} → {} id {id}{}",
            f.src,
            f.dst,
            f.qname
                .as_ref()
                .map(|q| format!(" {q}"))
                .unwrap_or_default()
        ),
        _ => match (f.dhcp_xid, &f.arp_target) {
            (Some(xid), _) => format!(
                "dhcp {} → {} xid {xid:#010x} {}",
                f.src,
                f.dst,
                f.dhcp_messages.join("/")
            ),
            (_, Some(target)) => format!("arp who-has {target} ({})", f.arp_ops.join("/")),
            _ => format!("{} {} → {}", v.proto, f.src, f.dst),
        },
    }
}

/// Split "explanation: command" at the command, when the hint ends in one.
fn split_command(hint: &str) -> Option<(&str, &str)> {
    const TOOLS: &[&str] = &["nft ", "iptables", "sysctl ", "ip ", "bridge ", "arping "];
    hint.match_indices(": ")
        .map(|(i, _)| (&hint[..i], &hint[i + 2..]))
        .find(|(_, rest)| TOOLS.iter().any(|t| rest.starts_with(t)))
}

/// Whether doctor's `fix` changes what the hint's command changes (then one of
/// them is enough: the hint's, built for the packet that died and in the syntax
/// of the tool that manages that table).
fn same_change(hint_cmd: Option<&str>, fix: &str) -> bool {
    let cmd = split_command(fix).map_or(fix, |(_, c)| c);
    hint_cmd.is_some_and(|h| change_target(h) == change_target(cmd))
}

/// What a fixing command changes: the firewall table (`-t` of iptables, the
/// table an nft command names), the sysctl keys it sets, the link or bridge port
/// it sets; else the command itself. nft and iptables commands on one table
/// (the same rule, or the same policy opened in two ways) are one change.
fn change_target(cmd: &str) -> String {
    let words: Vec<&str> = cmd
        .split_whitespace()
        .map(|w| w.trim_end_matches(';'))
        .collect();
    const FAMILIES: &[&str] = &["ip", "ip6", "inet", "arp", "bridge", "netdev"];
    match words.as_slice() {
        ["nft", _verb, _object, family, table, ..] if FAMILIES.contains(family) => {
            format!("table {table}")
        }
        ["nft", _verb, _object, table, ..] => format!("table {table}"),
        [tool, rest @ ..] if tool.starts_with("iptables") || tool.starts_with("ip6tables") => {
            let table = rest
                .iter()
                .skip_while(|w| **w != "-t")
                .nth(1)
                .unwrap_or(&"filter");
            format!("table {table}")
        }
        ["sysctl", rest @ ..] => {
            let mut keys: Vec<&str> = rest
                .iter()
                .filter(|w| !w.starts_with('-'))
                .map_while(|w| w.split_once('=').map(|(k, _)| k))
                .collect();
            keys.sort_unstable();
            format!("sysctl {}", keys.join(" "))
        }
        ["ip", "link", "set", "dev", dev, ..] | ["ip", "link", "set", dev, ..] => {
            format!("link {dev}")
        }
        ["bridge", "link", "set", "dev", dev, ..] => format!("port {dev}"),
        _ => cmd.trim().to_string(),
    }
}

/// Words of `text` after `prefix`, wrapped to 80 columns under the first word.
fn wrap(prefix: &str, text: &str) -> String {
    const WIDTH: usize = 80;
    let indent = " ".repeat(prefix.chars().count());
    let mut out = String::new();
    let mut line = prefix.to_string();
    let mut empty = true;
    for word in text.split_whitespace() {
        let len = line.chars().count() + 1 + word.chars().count();
        if !empty && len > WIDTH {
            out.push_str(line.trim_end());
            out.push('\n');
            line = indent.clone();
        } else if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    out.push_str(&line);
    out.push('\n');
    out
}

/// The path as a compact drawing that fits 80 columns, then the verdict and hint.
pub fn render_text(v: &Verdict) -> String {
    let mut s = format!("{}\n", flow_label(v));
    let mut last_dir = None;
    let mut inferred: Vec<&str> = Vec::new();
    for hop in &v.path {
        if hop.inferred {
            inferred.push(hop.stage.as_str());
            continue;
        }
        if !inferred.is_empty() {
            // Stages implied between two observed hops, on one line.
            s.push_str(&format!("  ·               {}\n", inferred.join(" · ")));
            inferred.clear();
        }
        let arrow = match hop.direction {
            Direction::Reply => "←",
            Direction::Request => "→",
        };
        if Some(hop.direction) != last_dir {
            s.push_str(&format!("  {}\n", hop.direction));
            last_dir = Some(hop.direction);
        }
        let nat = hop
            .nat
            .as_ref()
            .map(|n| format!("  {} {} → {}", n.kind, n.from, n.to))
            .unwrap_or_default();
        let function = hop
            .function
            .as_ref()
            .map(|f| format!("  {f}()"))
            .unwrap_or_default();
        let line = format!(
            "  {arrow} {:>9.3} ms  {:<11} {:<12}{nat}{function}",
            hop.ts_ns as f64 / 1e6,
            hop.stage.as_str(),
            hop.ifname.as_deref().unwrap_or("-"),
        );
        s.push_str(line.trim_end());
        s.push('\n');
    }
    let word = v.verdict.as_str().to_uppercase().replace('_', " ");
    let mut line = format!("  {word}");
    if let Some(rtt) = v.rtt_ns {
        line.push_str(&format!(" in {:.3} ms", rtt as f64 / 1e6));
    }
    if let Some(rcode) = &v.dns_rcode {
        line.push_str(&format!(" ({rcode})"));
    }
    if let Some(st) = v.stage {
        match v.direction {
            Some(d) => line.push_str(&format!(" — {d} at {st}")),
            None => line.push_str(&format!(" — at {st}")),
        }
        if let Some(i) = &v.ifname {
            line.push_str(&format!(" ({i})"));
        }
    }
    if let Some(r) = &v.reason {
        line.push_str(&format!(": {r}"));
    }
    if let Some(l) = &v.location {
        line.push_str(&format!(" at {l}"));
    }
    s.push_str(&line);
    s.push('\n');
    if v.events_missing {
        s.push_str(
            "  (events were lost while this request was traced: the path may be incomplete)\n",
        );
    }
    if let Some(rule) = &v.rule {
        s.push_str(&wrap("  rule: ", rule));
    }
    // One fix per verdict: a finding whose fix changes what the hint's command
    // changes keeps its evidence line but not a second (or contradicting) fix.
    let hint_cmd = v.hint.as_deref().and_then(split_command).map(|(_, c)| c);
    for c in &v.doctor {
        s.push_str(&wrap("  doctor: ", &format!("{}: {}", c.check, c.evidence)));
        let fix = c.fix.as_deref().filter(|f| !same_change(hint_cmd, f));
        if let Some(f) = fix {
            s.push_str(&format!("    fix: {f}\n"));
        }
    }
    if let Some(h) = &v.hint {
        // The fixing command on a line of its own, whole, ready to copy.
        match split_command(h) {
            Some((why, cmd)) => {
                s.push_str(&wrap("  hint: ", why));
                s.push_str(&format!("  fix:  {cmd}\n"));
            }
            None => s.push_str(&wrap("  hint: ", h)),
        }
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::Stage;

    #[test]
    fn wraps_to_80_columns_under_the_label() {
        let hint = "nftables rule \"ip saddr 192.0.2.100 drop\" in inet filter forward drops the guest's request; remove it: nft delete rule inet filter forward handle 2";
        let text = wrap("  hint: ", hint);
        assert!(text.lines().all(|l| l.chars().count() <= 80), "{text}");
        assert!(text.lines().skip(1).all(|l| l.starts_with("        ")));
        assert_eq!(
            text.split_whitespace().collect::<Vec<_>>().join(" "),
            format!("hint: {hint}")
        );
    }

    fn finding(check: &'static str, fix: &str) -> Check {
        Check::new(check, Status::Fail, "s")
            .evidence("evidence")
            .fix(fix)
    }

    #[test]
    fn dhcp_and_arp_flows_are_labelled_in_their_terms() {
        let mut v = verdict("", vec![]);
        v.flow = Flow {
            src: "0.0.0.0".into(),
            dst: "255.255.255.255".into(),
            dhcp_xid: Some(0xdead_beef),
            dhcp_messages: vec!["DISCOVER".into(), "OFFER".into()],
            ..Flow::default()
        };
        assert_eq!(
            flow_label(&v),
            "dhcp 0.0.0.0 → 255.255.255.255 xid 0xdeadbeef DISCOVER/OFFER"
        );
        v.flow = Flow {
            arp_target: Some("192.0.2.1".into()),
            arp_ops: vec!["request".into()],
            ..Flow::default()
        };
        assert_eq!(flow_label(&v), "arp who-has 192.0.2.1 (request)");
    }

    fn verdict(hint: &str, doctor: Vec<Check>) -> Verdict {
        Verdict {
            kind: "verdict".into(),
            vm_ip: "192.0.2.100".into(),
            dst: "203.0.113.8".into(),
            proto: "icmp".into(),
            flow: Flow {
                src: "192.0.2.100".into(),
                dst: "203.0.113.8".into(),
                icmp_id: Some(1),
                icmp_seq: Some(1),
                dns_id: None,
                qname: None,
                ..Default::default()
            },
            verdict: Outcome::NoReply,
            direction: None,
            stage: Some(Stage::Remote),
            ifname: Some("eth0".into()),
            reason: None,
            location: None,
            rule: None,
            hint: Some(hint.into()),
            path: Vec::new(),
            rtt_ns: None,
            dns_rcode: None,
            events_missing: false,
            incomplete: false,
            doctor,
        }
    }

    fn fix_lines(text: &str) -> Vec<&str> {
        text.lines()
            .map(str::trim)
            .filter(|l| l.starts_with("fix:"))
            .collect()
    }

    #[test]
    fn one_fix_when_doctor_and_hint_say_the_same() {
        let cmd = "nft delete rule inet f forward handle 4";
        let v = verdict(
            &format!("nftables rule \"ip saddr 192.0.2.100 drop\" in inet f forward drops the guest's request; remove it: {cmd}"),
            vec![finding("firewall", cmd)],
        );
        let text = render_text(&v);
        assert_eq!(fix_lines(&text), [format!("fix:  {cmd}")], "{text}");
        assert!(text.contains("doctor: firewall: evidence"), "{text}");
    }

    #[test]
    fn one_fix_when_doctor_and_hint_contradict() {
        // The MASQUERADE case: an iptables command in the hint, an nft one from
        // the doctor, both for the nat table: the hint's is printed.
        let v = verdict(
            "no MASQUERADE/SNAT rule translated it; add one: iptables -t nat -A POSTROUTING -s 192.0.2.0/24 -o eth0 -j MASQUERADE",
            vec![finding(
                "nat",
                "nft add table ip nat; nft add chain ip nat postrouting '{ type nat hook postrouting priority srcnat; }'; nft add rule ip nat postrouting ip saddr 192.0.2.0/24 oifname \"eth0\" masquerade",
            )],
        );
        let text = render_text(&v);
        assert_eq!(
            fix_lines(&text),
            ["fix:  iptables -t nat -A POSTROUTING -s 192.0.2.0/24 -o eth0 -j MASQUERADE"],
            "{text}"
        );
        // Two ways to open one policy; two orders of one pair of sysctls.
        assert!(same_change(
            Some(
                "iptables-legacy -t filter -I FORWARD -s 192.0.2.0/24 -j ACCEPT (and replies: ...)"
            ),
            "iptables-legacy -t filter -I FORWARD -s 192.0.2.100 -j ACCEPT"
        ));
        assert!(same_change(
            Some("sysctl -w net.ipv4.conf.vmbr0.rp_filter=2 net.ipv4.conf.all.rp_filter=2"),
            "correct the route, or use loose mode: sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.vmbr0.rp_filter=2"
        ));
        assert!(same_change(
            Some("iptables -D FORWARD 2"),
            "nft delete rule ip filter FORWARD handle 3"
        ));
    }

    #[test]
    fn other_fixes_stay() {
        // A fix for something else than the hint's command is not a duplicate.
        let v = verdict(
            "no MASQUERADE/SNAT rule translated it; add one: iptables -t nat -A POSTROUTING -s 192.0.2.0/24 -o eth0 -j MASQUERADE",
            vec![
                finding("nat", "give the firewall bridges their own conntrack zone: iptables -t raw -I PREROUTING -i fwbr+ -j CT --zone 1"),
                finding("link_up", "ip link set dev tap100i0 up"),
                finding("gateway", "check the gateway 198.51.100.1"),
            ],
        );
        assert_eq!(fix_lines(&render_text(&v)).len(), 4);
        assert!(!same_change(
            Some("ip link set dev tap100i0 up"),
            "ip link set dev tap101i0 up"
        ));
        assert!(!same_change(
            Some("sysctl -w net.ipv4.ip_forward=1"),
            "sysctl -w net.ipv4.conf.vmbr0.forwarding=1"
        ));
        assert!(!same_change(None, "ip link set dev tap100i0 up"));
    }

    #[test]
    fn commands_are_split_off_whole() {
        let (why, cmd) =
            split_command("forwarding is off; turn it on: sysctl -w a=1 (persist it)").unwrap();
        assert_eq!(why, "forwarding is off; turn it on");
        assert_eq!(cmd, "sysctl -w a=1 (persist it)");
        assert_eq!(split_command("nothing to run: really"), None);
    }
}
