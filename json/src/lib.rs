//! pathtrace's public JSON lines as typed structs — the contract of
//! docs/json.md. pathtrace writes them; its tests (and anyone scripting against
//! pathtrace) read them back with serde. Fields are only ever added; a reader
//! ignores fields it does not know.

use serde::{Deserialize, Serialize};

/// Where a packet's fate was decided: the fixed stage words of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Tap,
    Bridge,
    Prerouting,
    Routing,
    Input,
    Forward,
    Postrouting,
    Neighbor,
    Egress,
    Remote,
}

impl Stage {
    pub const ALL: [Stage; 10] = [
        Stage::Tap,
        Stage::Bridge,
        Stage::Prerouting,
        Stage::Routing,
        Stage::Input,
        Stage::Forward,
        Stage::Postrouting,
        Stage::Neighbor,
        Stage::Egress,
        Stage::Remote,
    ];

    /// The stage a contract word names.
    pub fn from_word(word: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.as_str() == word)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Tap => "tap",
            Stage::Bridge => "bridge",
            Stage::Prerouting => "prerouting",
            Stage::Routing => "routing",
            Stage::Input => "input",
            Stage::Forward => "forward",
            Stage::Postrouting => "postrouting",
            Stage::Neighbor => "neighbor",
            Stage::Egress => "egress",
            Stage::Remote => "remote",
        }
    }
}

/// The words print as they are written in JSON.
macro_rules! display_as_word {
    ($($t:ty),*) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
display_as_word!(Stage, Direction, Outcome);

/// Which packet of a traced request: the guest's request or the reply to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Request,
    Reply,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Request => "request",
            Direction::Reply => "reply",
        }
    }
}

/// How a traced request ended: the `verdict` words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The reply reached the guest's port.
    Replied,
    /// Freed on this host (the request, or its reply).
    Dropped,
    /// Left the host; nothing came back.
    NoReply,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Replied => "replied",
            Outcome::Dropped => "dropped",
            Outcome::NoReply => "no_reply",
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Flow {
    pub src: String,
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_id: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_seq: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_id: Option<u16>,
    /// The DNS query name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qname: Option<String>,
    /// TCP/UDP service flows (`proto` `tcp`, `udp`): the guest's port and the
    /// service's, as the guest sent them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sport: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
    /// TCP: the flags of the guest's segment (`SYN`, `ACK,PSH`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<String>,
    /// TCP: bytes of payload in the guest's segment (a data segment; absent
    /// for a bare SYN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_payload: Option<u16>,
    /// TCP: the flags of the answer last seen on the host (`SYN,ACK`, `RST,ACK`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_tcp_flags: Option<String>,
    /// `--proto dhcp`: the transaction id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp_xid: Option<u32>,
    /// `--proto dhcp`: the message types seen, request first (`DISCOVER`,
    /// `OFFER`, `REQUEST`, `ACK`, `NAK`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dhcp_messages: Vec<String>,
    /// `--proto arp`: the address asked about (who-has).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arp_target: Option<String>,
    /// `--proto arp`: the operations seen, request first (`request`, `reply`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arp_ops: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Nat {
    #[serde(rename = "type")]
    pub kind: String,
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PathHop {
    pub stage: Stage,
    pub ifname: Option<String>,
    /// The bridge `ifname` is a port of (e.g. a Proxmox firewall bridge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// Nanoseconds since the request was first seen.
    pub ts_ns: u64,
    pub nat: Option<Nat>,
    pub direction: Direction,
    /// Not observed by a probe but implied by the hops around it (e.g. FORWARD
    /// between the bridge and the uplink).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inferred: bool,
    /// Deep mode: the kernel function this hop was seen in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    #[serde(rename = "type")]
    pub kind: String,
    pub vm_ip: String,
    pub dst: String,
    pub proto: String,
    pub flow: Flow,
    pub verdict: Outcome,
    pub direction: Option<Direction>,
    pub stage: Option<Stage>,
    pub ifname: Option<String>,
    pub reason: Option<String>,
    pub location: Option<String>,
    pub rule: Option<String>,
    pub hint: Option<String>,
    pub path: Vec<PathHop>,
    /// Round trip from the VM port and back, for replied requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ns: Option<u64>,
    /// RCODE of the DNS response that reached the guest (`NOERROR`, `NXDOMAIN`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_rcode: Option<String>,
    /// Events were lost while this request was traced: the path may have gaps.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub events_missing: bool,
    /// The verdict was decided because tracing stopped, not by an observed end.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub incomplete: bool,
    /// `pathtrace doctor` findings (fail/warn) that bear on where this request
    /// died, each with its evidence and fix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub doctor: Vec<Check>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    #[serde(rename = "type")]
    pub kind: String,
    pub probes: usize,
    pub replied: usize,
    pub dropped: usize,
    pub no_reply: usize,
    /// Events the kernel could not hand over (ring buffer full); verdicts may be
    /// built from incomplete paths when this is not 0.
    pub events_lost: u64,
    pub programs_attached: usize,
    /// Requests of the guest seen but not followed because `max_follow` others
    /// were being followed at that moment (a flooding guest): counted, never
    /// silently left out.
    #[serde(default)]
    pub skipped_requests: u64,
    /// Optional probes the kernel refused, with what is unknown without them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_probes: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    pub fn word(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One check's result: a JSON line `{"type":"check",...}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    #[serde(rename = "type")]
    pub kind: String,
    /// Stable name of the check (`ip_forward`, `nat`, ...).
    pub check: String,
    pub status: Status,
    /// What was checked (an interface, a sysctl, a rule set).
    pub subject: String,
    /// What was found, in words an operator can verify.
    pub evidence: String,
    /// The command (or step) that fixes it; null when nothing needs fixing.
    pub fix: Option<String>,
}

impl Check {
    pub fn new(check: &str, status: Status, subject: impl Into<String>) -> Self {
        Self {
            kind: "check".into(),
            check: check.into(),
            status,
            subject: subject.into(),
            evidence: String::new(),
            fix: None,
        }
    }

    pub fn evidence(mut self, e: impl Into<String>) -> Self {
        self.evidence = e.into();
        self
    }

    pub fn fix(mut self, f: impl Into<String>) -> Self {
        self.fix = Some(f.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_the_contract_s() {
        let s = |v: &dyn erased_json| v.json();
        assert_eq!(s(&Stage::Neighbor), "\"neighbor\"");
        assert_eq!(s(&Stage::Postrouting), "\"postrouting\"");
        assert_eq!(s(&Direction::Reply), "\"reply\"");
        assert_eq!(s(&Outcome::NoReply), "\"no_reply\"");
        assert_eq!(s(&Status::Warn), "\"warn\"");
    }

    #[test]
    fn a_verdict_line_reads_back() {
        let line = r#"{"type":"verdict","vm_ip":"192.0.2.100","dst":"203.0.113.8","proto":"icmp",
            "flow":{"src":"192.0.2.100","dst":"203.0.113.8","icmp_id":7,"icmp_seq":1},
            "verdict":"dropped","direction":"reply","stage":"neighbor","ifname":"vmbr0",
            "reason":"NEIGH_FAILED","location":null,"rule":null,"hint":null,
            "path":[{"stage":"tap","ifname":"tap100i0","ts_ns":0,"nat":null,"direction":"request"}],
            "a_field_from_the_future":1}"#;
        let v: Verdict = serde_json::from_str(line).unwrap();
        assert_eq!(v.verdict, Outcome::Dropped);
        assert_eq!(v.direction, Some(Direction::Reply));
        assert_eq!(v.stage, Some(Stage::Neighbor));
        assert_eq!(v.path[0].stage, Stage::Tap);
        assert!(v.doctor.is_empty() && !v.incomplete);
    }

    #[allow(non_camel_case_types)]
    trait erased_json {
        fn json(&self) -> String;
    }

    impl<T: Serialize> erased_json for T {
        fn json(&self) -> String {
            serde_json::to_string(self).unwrap()
        }
    }
}
