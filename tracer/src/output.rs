//! The public output: JSON lines (a stable contract: docs/json.md) and the text
//! view a person reads. Fields may be added, never renamed or removed.

use crate::doctor::Check;
use std::io::Write;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Flow {
    pub src: String,
    pub dst: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_id: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_seq: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_id: Option<u16>,
    /// The DNS query name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qname: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Nat {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PathHop {
    pub stage: &'static str,
    pub ifname: Option<String>,
    /// The bridge `ifname` is a port of (e.g. a Proxmox firewall bridge).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// Nanoseconds since the request was first seen.
    pub ts_ns: u64,
    pub nat: Option<Nat>,
    pub direction: &'static str,
    /// Not observed by a probe but implied by the hops around it (e.g. FORWARD
    /// between the bridge and the uplink).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub inferred: bool,
    /// Deep mode: the kernel function this hop was seen in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub vm_ip: String,
    pub dst: String,
    pub proto: &'static str,
    pub flow: Flow,
    pub verdict: &'static str,
    pub direction: Option<&'static str>,
    pub stage: Option<&'static str>,
    pub ifname: Option<String>,
    pub reason: Option<String>,
    pub location: Option<String>,
    pub rule: Option<String>,
    pub hint: Option<String>,
    pub path: Vec<PathHop>,
    /// Round trip from the VM port and back, for replied requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_ns: Option<u64>,
    /// RCODE of the DNS response that reached the guest (`NOERROR`, `NXDOMAIN`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_rcode: Option<String>,
    /// Events were lost while this request was traced: the path may have gaps.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub events_missing: bool,
    /// The verdict was decided because tracing stopped, not by an observed end.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub incomplete: bool,
    /// `pathtrace doctor` findings (fail/warn) that bear on where this request
    /// died, each with its evidence and fix.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub doctor: Vec<Check>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub probes: usize,
    pub replied: usize,
    pub dropped: usize,
    pub no_reply: usize,
    /// Events the kernel could not hand over (ring buffer full); verdicts may be
    /// built from incomplete paths when this is not 0.
    pub events_lost: u64,
    pub programs_attached: usize,
    /// Optional probes the kernel refused, with what is unknown without them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped_probes: Vec<String>,
}

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
            crate::doctor::print_checks(checks);
        }
    }

    pub fn summary(&self, s: &Summary) {
        let mut out = std::io::stdout().lock();
        if self.json {
            let _ = writeln!(out, "{}", serde_json::to_string(s).unwrap_or_default());
        } else {
            let _ = writeln!(
                out,
                "{} probe(s): {} replied, {} dropped, {} no reply{}",
                s.probes,
                s.replied,
                s.dropped,
                s.no_reply,
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
        _ => format!("{} {} → {}", v.proto, f.src, f.dst),
    }
}

/// Split "explanation: command" at the command, when the hint ends in one.
fn split_command(hint: &str) -> Option<(&str, &str)> {
    const TOOLS: &[&str] = &["nft ", "iptables", "sysctl ", "ip ", "bridge ", "arping "];
    hint.match_indices(": ")
        .map(|(i, _)| (&hint[..i], &hint[i + 2..]))
        .find(|(_, rest)| TOOLS.iter().any(|t| rest.starts_with(t)))
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
    let mut last_dir = "";
    let mut inferred: Vec<&str> = Vec::new();
    for hop in &v.path {
        if hop.inferred {
            inferred.push(hop.stage);
            continue;
        }
        if !inferred.is_empty() {
            // Stages implied between two observed hops, on one line.
            s.push_str(&format!("  ·               {}\n", inferred.join(" · ")));
            inferred.clear();
        }
        let arrow = if hop.direction == "reply" {
            "←"
        } else {
            "→"
        };
        if hop.direction != last_dir {
            s.push_str(&format!("  {}\n", hop.direction));
            last_dir = hop.direction;
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
            hop.stage,
            hop.ifname.as_deref().unwrap_or("-"),
        );
        s.push_str(line.trim_end());
        s.push('\n');
    }
    let word = v.verdict.to_uppercase().replace('_', " ");
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
    for c in &v.doctor {
        s.push_str(&wrap("  doctor: ", &format!("{}: {}", c.check, c.evidence)));
        if let Some(f) = &c.fix {
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

    #[test]
    fn commands_are_split_off_whole() {
        let (why, cmd) =
            split_command("forwarding is off; turn it on: sysctl -w a=1 (persist it)").unwrap();
        assert_eq!(why, "forwarding is off; turn it on");
        assert_eq!(cmd, "sysctl -w a=1 (persist it)");
        assert_eq!(split_command("nothing to run: really"), None);
    }
}
