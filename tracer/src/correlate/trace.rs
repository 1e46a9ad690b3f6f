//! What one request's story is made of: stages, directions, hops, the drop, and
//! how it ended — the types the correlator fills and explain reads.

use tracer_common::PacketInfo;

/// The stage, direction and verdict words are the output contract's own.
pub use pathtrace_json::{Direction, Outcome, Stage};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub proto: u8,
    pub id: u16,
    pub seq: u16,
}

impl FlowKey {
    pub(super) fn of(p: &PacketInfo) -> Self {
        // An ICMP error answering a TCP/UDP flow belongs to that flow.
        let proto = match p.quoted_proto {
            0 => p.proto,
            quoted => quoted,
        };
        Self {
            proto,
            id: p.id,
            seq: p.seq,
        }
    }
}

/// One observed crossing of a hook.
#[derive(Debug, Clone)]
pub struct Hop {
    pub stage: Stage,
    pub ifindex: u32,
    pub ts_ns: u64,
    pub pkt: PacketInfo,
    /// True for the TC egress hook (leaving the interface), false for ingress.
    pub egress: bool,
}

/// Deep mode: a kernel function the packet passed through.
#[derive(Debug, Clone)]
pub struct FuncHop {
    /// The function's address (resolved to its name from kallsyms).
    pub addr: u64,
    pub ifindex: u32,
    pub ts_ns: u64,
    /// The packet as it was in that function.
    pub pkt: PacketInfo,
    pub direction: Direction,
}

/// The kernel freed the packet with a drop reason.
#[derive(Debug, Clone)]
pub struct Drop {
    pub direction: Direction,
    pub reason: u32,
    pub location: u64,
    /// Device the skb was on when freed (0 unknown).
    pub ifindex: u32,
    pub has_dst: bool,
    pub dev_known: bool,
    pub ts_ns: u64,
    pub pkt: PacketInfo,
}

#[derive(Debug, Clone)]
pub struct Trace {
    pub key: FlowKey,
    pub request: PacketInfo,
    pub req_hops: Vec<Hop>,
    pub reply_hops: Vec<Hop>,
    /// Deep mode's function-level hops, both directions, in arrival order.
    pub func_hops: Vec<FuncHop>,
    pub req_skb: u64,
    pub reply_skb: Option<u64>,
    /// The VM port the request came in on (the reply must leave by it).
    pub port_ifindex: Option<u32>,
    /// When the request left through the uplink.
    pub left_ts: Option<u64>,
    /// When the host's own stack consumed the request (it was for the host).
    pub local_ts: Option<u64>,
    /// When the reply was handed to the VM port.
    pub delivered_ts: Option<u64>,
    /// When the reply was freed on the host without reaching the VM port.
    pub reply_lost_ts: Option<u64>,
    /// Where that happened: (kernel text address, device ifindex).
    pub reply_lost_at: Option<(u64, u32)>,
    /// The query name of a DNS request.
    pub qname: Option<String>,
    /// Events were lost while this trace was open: its path may have gaps.
    pub events_missing: bool,
    pub drop: Option<Drop>,
    pub last_ts: u64,
}

impl Trace {
    pub(crate) fn new(pkt: &PacketInfo, skb: u64, ts: u64) -> Self {
        Self {
            key: FlowKey::of(pkt),
            request: *pkt,
            req_hops: Vec::new(),
            reply_hops: Vec::new(),
            func_hops: Vec::new(),
            req_skb: skb,
            reply_skb: None,
            port_ifindex: None,
            left_ts: None,
            local_ts: None,
            delivered_ts: None,
            reply_lost_ts: None,
            reply_lost_at: None,
            qname: None,
            events_missing: false,
            drop: None,
            last_ts: ts,
        }
    }

    pub fn first_ts(&self) -> u64 {
        self.req_hops.first().map_or(self.last_ts, |h| h.ts_ns)
    }
}

/// A trace with its ending decided.
#[derive(Debug, Clone)]
pub struct Finished {
    pub trace: Trace,
    pub outcome: Outcome,
    /// True when the trace ended only because pathtrace stopped (its fate unknown).
    pub timed_out: bool,
}
