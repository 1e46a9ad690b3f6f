//! Turn per-hook events into one story per request: the request's hops, the reply's
//! hops (found by skb address, or by protocol id after NAT), and how it ended.
//!
//! Pure logic, no I/O: fed decoded events and the current monotonic time, it hands
//! back finished traces. Unit-tested without a kernel.

use std::collections::HashMap;

use tracer_common::{
    Event, EventKind, PacketInfo, DIR_EGRESS, FLAG_DEV_KNOWN, FLAG_HAS_DST, ROLE_REPLY,
};

use crate::topology::Role;

/// How long after the request left the host we wait for a reply before saying
/// "no reply". Internet round trips are well under this. Also the least we wait
/// for a reply last seen on the host (see [`PathCtx::reply_hold_ns`]).
pub const REPLY_WAIT_NS: u64 = 2_000_000_000;
/// How long after the reply reached the VM port we wait for a late drop report
/// (e.g. the tap's queue is full) before saying "replied".
pub const SETTLE_NS: u64 = 50_000_000;

/// The fixed stage words of the output contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub proto: u8,
    pub id: u16,
    pub seq: u16,
}

impl FlowKey {
    fn of(p: &PacketInfo) -> Self {
        Self {
            proto: p.proto,
            id: p.id,
            seq: p.seq,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Replied,
    Dropped,
    NoReply,
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
    fn new(pkt: &PacketInfo, skb: u64, ts: u64) -> Self {
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

/// The interfaces the programs watch, by role.
#[derive(Debug, Clone, Default)]
pub struct PathCtx {
    pub roles: HashMap<u32, Role>,
    pub netns: u32,
    /// Where the guest's packets enter the host's IP stack (bridge, or the port).
    pub inbound: u32,
    /// The destination is another guest on the same bridge.
    pub bridged: bool,
    /// How long the kernel may hold a reply on its way to the guest before it
    /// either delivers or frees it: resolving the guest's address on the VM bridge
    /// (the neighbour queue) is the longest wait. A reply is not declared lost
    /// while it may still be queued there.
    pub reply_hold_ns: u64,
}

pub struct Correlator {
    ctx: PathCtx,
    /// Traces starting before this time may have lost events (see `mark_lossy`).
    lossy_until: u64,
    traces: Vec<Trace>,
    by_skb: HashMap<u64, usize>,
    by_key: HashMap<FlowKey, usize>,
}

impl Correlator {
    pub fn new(ctx: PathCtx) -> Self {
        Self {
            ctx,
            lossy_until: 0,
            traces: Vec::new(),
            by_skb: HashMap::new(),
            by_key: HashMap::new(),
        }
    }

    pub fn on_event(&mut self, ev: &Event) {
        match EventKind::from_u8(ev.kind) {
            Some(EventKind::Tc) => self.on_tc(ev),
            Some(EventKind::Drop) => self.on_drop(ev),
            Some(EventKind::Consume) => self.on_consume(ev),
            Some(EventKind::Func) => self.on_func(ev),
            // Names come through `on_name`, with their bytes; packet bytes go to
            // the --pcap capture (their hook's Tc event is handled above).
            Some(EventKind::DnsName) | Some(EventKind::Packet) | None => {}
        }
    }

    /// A watched interface got a new index (a VM port recreated).
    pub fn set_role(&mut self, ifindex: u32, role: Role) {
        self.ctx.roles.insert(ifindex, role);
    }

    /// The question of a DNS request (sent right after its first TC event).
    pub fn on_name(&mut self, ev: &Event, qname: String) {
        if let Some(i) = self.find(ev) {
            self.traces[i].qname = Some(qname);
        }
    }

    fn stage_of(&self, ifindex: u32) -> Stage {
        match self.ctx.roles.get(&ifindex) {
            Some(Role::Port) => Stage::Tap,
            Some(Role::Bridge | Role::Hop) => Stage::Bridge,
            Some(Role::Uplink) | None => Stage::Egress,
        }
    }

    /// A function-level hop: only for a packet already followed (by its skb; NAT
    /// may have changed its addresses since).
    fn on_func(&mut self, ev: &Event) {
        let Some(&i) = self.by_skb.get(&ev.skb) else {
            return;
        };
        let t = &mut self.traces[i];
        t.func_hops.push(FuncHop {
            addr: ev.location,
            ifindex: ev.ifindex,
            ts_ns: ev.ts_ns,
            pkt: ev.pkt,
            direction: if ev.role == ROLE_REPLY {
                Direction::Reply
            } else {
                Direction::Request
            },
        });
        t.last_ts = t.last_ts.max(ev.ts_ns);
    }

    fn on_tc(&mut self, ev: &Event) {
        let hop = Hop {
            stage: self.stage_of(ev.ifindex),
            ifindex: ev.ifindex,
            ts_ns: ev.ts_ns,
            pkt: ev.pkt,
            egress: ev.dir == DIR_EGRESS,
        };
        let role = self.ctx.roles.get(&ev.ifindex).copied();
        if ev.role == ROLE_REPLY {
            let Some(i) = self.find(ev) else {
                return; // a reply to a request we never saw
            };
            let t = &mut self.traces[i];
            t.reply_skb = Some(ev.skb);
            if role == Some(Role::Port) && hop.egress {
                if t.port_ifindex.is_some_and(|p| p != ev.ifindex) {
                    return; // flooded to another port of the bridge: not the guest
                }
                t.delivered_ts = Some(ev.ts_ns);
            }
            t.last_ts = ev.ts_ns;
            t.reply_hops.push(hop);
            self.by_skb.insert(ev.skb, i);
            return;
        }
        let i = match self.find(ev) {
            // A retransmission with the same id (DNS retries) is a new request.
            Some(i) if self.traces[i].req_skb == ev.skb || role != Some(Role::Port) => i,
            _ => self.start(ev),
        };
        let t = &mut self.traces[i];
        if role == Some(Role::Port) && !hop.egress && t.port_ifindex.is_none() {
            t.port_ifindex = Some(ev.ifindex);
        }
        if role == Some(Role::Uplink) && hop.egress {
            t.left_ts = Some(ev.ts_ns);
        }
        t.last_ts = ev.ts_ns;
        t.req_hops.push(hop);
    }

    /// The kernel dropped events (ring buffer full) just before `now`: every open
    /// trace, and any whose first event predates `now`, may be missing hops.
    pub fn mark_lossy(&mut self, now: u64) {
        self.lossy_until = now;
        for t in &mut self.traces {
            t.events_missing = true;
        }
    }

    fn start(&mut self, ev: &Event) -> usize {
        let i = self.traces.len();
        let mut t = Trace::new(&ev.pkt, ev.skb, ev.ts_ns);
        t.events_missing = ev.ts_ns <= self.lossy_until;
        self.traces.push(t);
        self.by_skb.insert(ev.skb, i);
        self.by_key.insert(FlowKey::of(&ev.pkt), i);
        i
    }

    /// The trace an event belongs to: by skb address first (exact), else by the
    /// protocol key (ids survive NAT).
    /// Skb addresses are reused quickly, so an address match counts only when the
    /// protocol key agrees too.
    fn find(&self, ev: &Event) -> Option<usize> {
        let key = FlowKey::of(&ev.pkt);
        let same = |i: &usize| self.traces.get(*i).is_some_and(|t| t.key == key);
        self.by_skb
            .get(&ev.skb)
            .filter(|i| same(i))
            .or_else(|| self.by_key.get(&key).filter(|i| same(i)))
            .copied()
    }

    fn is_elsewhere(&self, ev: &Event) -> bool {
        ev.netns != 0 && self.ctx.netns != 0 && ev.netns != self.ctx.netns
    }

    /// Events after the packet left this host's namespace (into the guest, or on
    /// to the next hop) are someone else's business.
    fn beyond_host(&self, ev: &Event, t: &Trace) -> bool {
        let gone = if ev.role == ROLE_REPLY {
            t.delivered_ts
        } else {
            t.left_ts
        };
        self.is_elsewhere(ev) || gone.is_some()
    }

    fn on_drop(&mut self, ev: &Event) {
        let Some(i) = self.find(ev) else {
            return;
        };
        if self.beyond_host(ev, &self.traces[i]) {
            return;
        }
        let direction = if ev.role == ROLE_REPLY {
            Direction::Reply
        } else {
            Direction::Request
        };
        let t = &mut self.traces[i];
        if t.drop.is_none() {
            t.drop = Some(Drop {
                direction,
                reason: ev.reason,
                location: ev.location,
                ifindex: ev.ifindex,
                has_dst: ev.flags & FLAG_HAS_DST != 0,
                dev_known: ev.flags & FLAG_DEV_KNOWN != 0,
                ts_ns: ev.ts_ns,
                pkt: ev.pkt,
            });
        }
        t.last_ts = ev.ts_ns;
    }

    fn on_consume(&mut self, ev: &Event) {
        let Some(i) = self.find(ev) else {
            return;
        };
        if self.beyond_host(ev, &self.traces[i]) {
            return;
        }
        let (inbound, bridged) = (self.ctx.inbound, self.ctx.bridged);
        let t = &mut self.traces[i];
        if ev.role == ROLE_REPLY {
            t.reply_lost_ts = Some(ev.ts_ns);
            t.reply_lost_at = Some((ev.location, ev.ifindex));
        } else if t.req_skb == ev.skb && ev.flags & FLAG_DEV_KNOWN != 0 && ev.ifindex != inbound {
            // Freed after leaving by another device (e.g. delivered to another
            // guest's port by the bridge): it left.
            t.left_ts = Some(ev.ts_ns);
            t.req_hops.push(Hop {
                stage: if bridged {
                    Stage::Bridge
                } else {
                    Stage::Egress
                },
                ifindex: ev.ifindex,
                ts_ns: ev.ts_ns,
                pkt: ev.pkt,
                egress: true,
            });
        } else if t.req_skb == ev.skb {
            t.local_ts = Some(ev.ts_ns);
            t.req_hops.push(Hop {
                stage: Stage::Input,
                ifindex: ev.ifindex,
                ts_ns: ev.ts_ns,
                pkt: ev.pkt,
                egress: false,
            });
        }
        t.last_ts = ev.ts_ns;
    }

    /// Traces whose ending is decided by `now` (monotonic ns, same clock as events).
    pub fn poll(&mut self, now: u64) -> Vec<Finished> {
        let hold = self.reply_wait();
        self.take(|t| decide(t, now, hold).map(|o| (o, false)))
    }

    /// Everything still open when tracing stops at `now`: what is decided by then
    /// is final; the rest ends only because tracing stopped (its packet may still
    /// be alive in the kernel) and says so (`timed_out`), with the outcome it
    /// would have had if nothing more happened.
    pub fn flush(&mut self, now: u64) -> Vec<Finished> {
        let hold = self.reply_wait();
        self.take(|t| match decide(t, now, hold) {
            Some(o) => Some((o, false)),
            None => Some((decide(t, u64::MAX, hold).unwrap_or(Outcome::NoReply), true)),
        })
    }

    /// How long a reply last seen on the host may still be on its way.
    fn reply_wait(&self) -> u64 {
        REPLY_WAIT_NS.max(self.ctx.reply_hold_ns)
    }

    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.traces.len()
    }

    fn take(&mut self, mut f: impl FnMut(&Trace) -> Option<(Outcome, bool)>) -> Vec<Finished> {
        let mut done = Vec::new();
        let mut keep = Vec::new();
        for t in self.traces.drain(..) {
            match f(&t) {
                Some((outcome, timed_out)) => done.push(Finished {
                    trace: t,
                    outcome,
                    timed_out,
                }),
                None => keep.push(t),
            }
        }
        self.traces = keep;
        self.reindex();
        done.sort_by_key(|f| f.trace.first_ts());
        done
    }

    fn reindex(&mut self) {
        self.by_skb.clear();
        self.by_key.clear();
        for (i, t) in self.traces.iter().enumerate() {
            self.by_skb.insert(t.req_skb, i);
            if let Some(s) = t.reply_skb {
                self.by_skb.insert(s, i);
            }
            self.by_key.insert(t.key, i);
        }
    }
}

/// The ending of a trace at time `now`, or None while it may still change.
/// `reply_wait`: how long a reply seen on the host but not yet delivered may still
/// be alive in the kernel (e.g. queued while the guest's MAC is resolved).
fn decide(t: &Trace, now: u64, reply_wait: u64) -> Option<Outcome> {
    let after = |ts: Option<u64>, wait: u64| ts.is_some_and(|ts| now.saturating_sub(ts) >= wait);
    if t.drop.is_some() {
        return Some(Outcome::Dropped);
    }
    if t.delivered_ts.is_some() {
        return after(t.delivered_ts, SETTLE_NS).then_some(Outcome::Replied);
    }
    if t.reply_lost_ts.is_some() {
        return Some(Outcome::Dropped);
    }
    if !t.reply_hops.is_empty() {
        // The reply came back but has not reached the VM yet: the kernel frees it
        // (and tells us why) or delivers it within `reply_wait`.
        return after(Some(t.last_ts), reply_wait).then_some(Outcome::Dropped);
    }
    let sent = t.left_ts.or(t.local_ts);
    after(sent, REPLY_WAIT_NS).then_some(Outcome::NoReply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::{DIR_INGRESS, ROLE_REQUEST};

    const TAP: u32 = 4;
    const BR: u32 = 3;
    const UP: u32 = 2;
    const NS: u32 = 4026532000;

    fn ctx() -> PathCtx {
        PathCtx {
            roles: HashMap::from([(TAP, Role::Port), (BR, Role::Bridge), (UP, Role::Uplink)]),
            netns: NS,
            inbound: BR,
            bridged: false,
            reply_hold_ns: 0,
        }
    }

    fn pkt(src: [u8; 4], dst: [u8; 4], icmp_type: u8, seq: u16) -> PacketInfo {
        PacketInfo {
            saddr: src,
            daddr: dst,
            proto: 1,
            icmp_type,
            id: 7,
            seq,
            ..Default::default()
        }
    }

    const VM: [u8; 4] = [192, 0, 2, 100];
    const WAN: [u8; 4] = [198, 51, 100, 2];
    const DST: [u8; 4] = [203, 0, 113, 8];

    fn tc(skb: u64, ts: u64, ifindex: u32, dir: u8, role: u8, p: PacketInfo) -> Event {
        Event {
            ts_ns: ts,
            skb,
            kind: EventKind::Tc as u8,
            dir,
            role,
            ifindex,
            pkt: p,
            ..Default::default()
        }
    }

    fn free(kind: EventKind, skb: u64, ts: u64, role: u8, p: PacketInfo, netns: u32) -> Event {
        Event {
            ts_ns: ts,
            skb,
            kind: kind as u8,
            role,
            reason: 12,
            netns,
            ifindex: BR,
            flags: FLAG_DEV_KNOWN | FLAG_HAS_DST,
            pkt: p,
            ..Default::default()
        }
    }

    fn request_out(c: &mut Correlator, seq: u16, t0: u64) {
        let req = pkt(VM, DST, 8, seq);
        c.on_event(&tc(
            0x1000 + seq as u64,
            t0,
            TAP,
            DIR_INGRESS,
            ROLE_REQUEST,
            req,
        ));
        c.on_event(&tc(
            0x1000 + seq as u64,
            t0 + 10,
            BR,
            DIR_INGRESS,
            ROLE_REQUEST,
            req,
        ));
        let natted = pkt(WAN, DST, 8, seq);
        c.on_event(&tc(
            0x1000 + seq as u64,
            t0 + 20,
            UP,
            DIR_EGRESS,
            ROLE_REQUEST,
            natted,
        ));
    }

    #[test]
    fn healthy_ping_is_replied_after_settling() {
        let mut c = Correlator::new(ctx());
        request_out(&mut c, 1, 1_000);
        // The request is consumed in the remote namespace: not ours, ignored.
        c.on_event(&free(
            EventKind::Consume,
            0x1001,
            1_100,
            ROLE_REQUEST,
            pkt(WAN, DST, 8, 1),
            99,
        ));
        // Reply: a new skb, found by id/seq after NAT.
        c.on_event(&tc(
            0x2000,
            2_000,
            UP,
            DIR_INGRESS,
            ROLE_REPLY,
            pkt(DST, WAN, 0, 1),
        ));
        c.on_event(&tc(
            0x2000,
            2_100,
            BR,
            DIR_EGRESS,
            ROLE_REPLY,
            pkt(DST, VM, 0, 1),
        ));
        c.on_event(&tc(
            0x2000,
            2_200,
            TAP,
            DIR_EGRESS,
            ROLE_REPLY,
            pkt(DST, VM, 0, 1),
        ));
        assert!(c.poll(2_300).is_empty(), "waits for a late drop");
        let done = c.poll(2_200 + SETTLE_NS);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].outcome, Outcome::Replied);
        assert_eq!(done[0].trace.req_hops.len(), 3);
        assert_eq!(done[0].trace.reply_hops.len(), 3);
        assert!(done[0].trace.local_ts.is_none());
    }

    #[test]
    fn drop_before_leaving_is_a_request_drop() {
        let mut c = Correlator::new(ctx());
        let req = pkt(VM, DST, 8, 3);
        c.on_event(&tc(0x10, 5, TAP, DIR_INGRESS, ROLE_REQUEST, req));
        c.on_event(&tc(0x10, 6, BR, DIR_INGRESS, ROLE_REQUEST, req));
        c.on_event(&free(EventKind::Drop, 0x10, 7, ROLE_REQUEST, req, NS));
        let done = c.poll(8);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].outcome, Outcome::Dropped);
        let d = done[0].trace.drop.as_ref().unwrap();
        assert_eq!(d.direction, Direction::Request);
        assert_eq!(d.reason, 12);
        assert!(d.has_dst);
    }

    #[test]
    fn no_reply_after_leaving_waits_reply_window() {
        let mut c = Correlator::new(ctx());
        request_out(&mut c, 2, 0);
        assert!(c.poll(REPLY_WAIT_NS).is_empty());
        let done = c.poll(20 + REPLY_WAIT_NS);
        assert_eq!(done[0].outcome, Outcome::NoReply);
        // A drop in another namespace after leaving does not count as ours.
        let mut c = Correlator::new(ctx());
        request_out(&mut c, 2, 0);
        c.on_event(&free(
            EventKind::Drop,
            0x1002,
            30,
            ROLE_REQUEST,
            pkt(WAN, DST, 8, 2),
            99,
        ));
        assert!(c.poll(40).is_empty());
    }

    #[test]
    fn unknown_replies_and_unrelated_frees_are_ignored() {
        let mut c = Correlator::new(ctx());
        c.on_event(&tc(
            0x99,
            1,
            UP,
            DIR_INGRESS,
            ROLE_REPLY,
            pkt(DST, WAN, 0, 9),
        ));
        c.on_event(&free(
            EventKind::Drop,
            0x98,
            2,
            ROLE_REQUEST,
            pkt(VM, DST, 8, 9),
            NS,
        ));
        assert_eq!(c.open(), 0);
        assert!(c.flush(3).is_empty());
    }

    #[test]
    fn reply_dropped_on_the_way_back() {
        let mut c = Correlator::new(ctx());
        request_out(&mut c, 4, 0);
        c.on_event(&tc(
            0x2004,
            100,
            UP,
            DIR_INGRESS,
            ROLE_REPLY,
            pkt(DST, WAN, 0, 4),
        ));
        c.on_event(&free(
            EventKind::Drop,
            0x2004,
            110,
            ROLE_REPLY,
            pkt(DST, WAN, 0, 4),
            NS,
        ));
        let done = c.poll(120);
        assert_eq!(done[0].outcome, Outcome::Dropped);
        assert_eq!(
            done[0].trace.drop.as_ref().unwrap().direction,
            Direction::Reply
        );
    }

    #[test]
    fn frees_inside_the_guest_after_delivery_are_ignored() {
        let mut c = Correlator::new(ctx());
        request_out(&mut c, 8, 0);
        c.on_event(&tc(
            0x2008,
            100,
            UP,
            DIR_INGRESS,
            ROLE_REPLY,
            pkt(DST, WAN, 0, 8),
        ));
        c.on_event(&tc(
            0x2008,
            110,
            TAP,
            DIR_EGRESS,
            ROLE_REPLY,
            pkt(DST, VM, 0, 8),
        ));
        // The guest's own stack drops its copy (e.g. no ping socket): not ours.
        c.on_event(&free(
            EventKind::Drop,
            0x2008,
            120,
            ROLE_REPLY,
            pkt(DST, VM, 0, 8),
            0,
        ));
        c.on_event(&free(
            EventKind::Consume,
            0x2008,
            130,
            ROLE_REPLY,
            pkt(DST, VM, 0, 8),
            77,
        ));
        let done = c.poll(110 + SETTLE_NS);
        assert_eq!(done[0].outcome, Outcome::Replied);
    }

    #[test]
    fn reused_skb_address_starts_a_new_trace() {
        let mut c = Correlator::new(ctx());
        request_out(&mut c, 1, 0);
        // seq 2 arrives in the very skb that carried seq 1 (freed elsewhere meanwhile).
        let req2 = pkt(VM, DST, 8, 2);
        c.on_event(&tc(0x1001, 500, TAP, DIR_INGRESS, ROLE_REQUEST, req2));
        assert_eq!(c.open(), 2);
        assert_eq!(c.traces[0].req_hops.len(), 3);
        assert_eq!(c.traces[1].req_hops.len(), 1);
    }

    #[test]
    fn lost_events_mark_open_and_earlier_traces() {
        let mut c = Correlator::new(ctx());
        request_out(&mut c, 1, 100);
        c.mark_lossy(1_000);
        // A trace whose first surviving event predates the loss report.
        c.on_event(&tc(
            0x77,
            900,
            BR,
            DIR_INGRESS,
            ROLE_REQUEST,
            pkt(VM, DST, 8, 2),
        ));
        c.on_event(&tc(
            0x78,
            2_000,
            TAP,
            DIR_INGRESS,
            ROLE_REQUEST,
            pkt(VM, DST, 8, 3),
        ));
        let flags: Vec<bool> = c.traces.iter().map(|t| t.events_missing).collect();
        assert_eq!(flags, vec![true, true, false]);
    }

    #[test]
    fn request_to_the_host_itself_is_local() {
        let mut c = Correlator::new(ctx());
        let req = pkt(VM, [192, 0, 2, 1], 8, 5);
        c.on_event(&tc(0x50, 1, TAP, DIR_INGRESS, ROLE_REQUEST, req));
        c.on_event(&free(EventKind::Consume, 0x50, 2, ROLE_REQUEST, req, NS));
        let t = &c.traces[0];
        assert_eq!(t.local_ts, Some(2));
        assert_eq!(t.req_hops.last().unwrap().stage, Stage::Input);
    }

    #[test]
    fn flush_marks_in_flight_traces_timed_out() {
        let mut c = Correlator::new(ctx());
        c.on_event(&tc(
            0x60,
            1,
            TAP,
            DIR_INGRESS,
            ROLE_REQUEST,
            pkt(VM, DST, 8, 6),
        ));
        let done = c.flush(2);
        assert_eq!(done.len(), 1);
        assert!(done[0].timed_out);
        assert_eq!(done[0].outcome, Outcome::NoReply);
    }
}
