//! Turn per-hook events into one story per request: the request's hops, the reply's
//! hops (found by skb address, or by protocol id after NAT), and how it ended.
//!
//! Pure logic, no I/O: fed decoded events and the current monotonic time, it hands
//! back finished traces. Unit-tested without a kernel.

use std::collections::HashMap;

use tracer_common::{Event, EventKind, DIR_EGRESS, FLAG_DEV_KNOWN, FLAG_HAS_DST, ROLE_REPLY};

use crate::topology::Role;

mod dhcp;
mod trace;

pub use trace::*;

/// How long after the request left the host we wait for a reply before saying
/// "no reply". Internet round trips are well under this. Also the least we wait
/// for a reply last seen on the host (see [`PathCtx::reply_hold_ns`]).
pub const REPLY_WAIT_NS: u64 = 2_000_000_000;
/// How long after the reply reached the VM port we wait for a late drop report
/// (e.g. the tap's queue is full) before saying "replied".
pub const SETTLE_NS: u64 = 50_000_000;

/// The interfaces the programs watch, by role.
#[derive(Debug, Clone, Default)]
pub struct PathCtx {
    pub roles: HashMap<u32, Role>,
    pub netns: u32,
    /// Where the guest's packets enter the host's IP stack (bridge, or the port).
    pub inbound: u32,
    /// The destination is another guest on the same bridge.
    pub bridged: bool,
    /// Bridged mode (a LAN router beyond a port of the guest's bridge): the
    /// request leaves the host by a bridge port and the reply comes in by one;
    /// among watched VM-port candidates, any port but the VM's is that port.
    pub lan: bool,
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
    /// See [`Correlator::newest_request`].
    newest_request: u64,
}

impl Correlator {
    pub fn new(ctx: PathCtx) -> Self {
        Self {
            ctx,
            lossy_until: 0,
            traces: Vec::new(),
            by_skb: HashMap::new(),
            by_key: HashMap::new(),
            newest_request: 0,
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
        let mut hop = Hop {
            stage: self.stage_of(ev.ifindex),
            ifindex: ev.ifindex,
            ts_ns: ev.ts_ns,
            pkt: ev.pkt,
            egress: ev.dir == DIR_EGRESS,
        };
        let role = self.lan_role(ev, &mut hop);
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
            // A retransmission with the same id (DNS retries) is a new request:
            // it comes in by the VM's port again. Leaving by a port is the same
            // request (a flooded copy has another skb).
            Some(i)
                if self.traces[i].req_skb == ev.skb || role != Some(Role::Port) || hop.egress =>
            {
                i
            }
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
    /// The role of the device an event is on. In bridged mode, when every port
    /// of the bridge is watched as the VM's (nothing said which leads to the
    /// LAN), a port other than the one the request came in by is the way out:
    /// the request leaving by it, or the reply coming in by it, is at `egress`.
    fn lan_role(&self, ev: &Event, hop: &mut Hop) -> Option<Role> {
        let role = self.ctx.roles.get(&ev.ifindex).copied();
        if !self.ctx.lan || role != Some(Role::Port) {
            return role;
        }
        let port = self.find(ev).and_then(|i| self.traces[i].port_ifindex);
        let leaving = ev.role != ROLE_REPLY && hop.egress;
        let entering = ev.role == ROLE_REPLY && !hop.egress;
        if port.is_some_and(|p| p != ev.ifindex) && (leaving || entering) {
            hop.stage = Stage::Egress;
            return Some(Role::Uplink);
        }
        role
    }

    /// trace, and any whose first event predates `now`, may be missing hops.
    pub fn mark_lossy(&mut self, now: u64) {
        self.lossy_until = now;
        for t in &mut self.traces {
            t.events_missing = true;
        }
    }

    fn start(&mut self, ev: &Event) -> usize {
        let i = self.traces.len();
        self.newest_request = self.newest_request.max(ev.ts_ns);
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
    ///
    /// The packets of one TCP connection share a key (its ports): a trace
    /// whose reply was already delivered takes no new hop by address, which
    /// the kernel has then reused for a later packet of the same connection
    /// (an ICMP error answering the next segment, say); that goes to the
    /// newest trace of the key.
    fn find(&self, ev: &Event) -> Option<usize> {
        let key = FlowKey::of(&ev.pkt);
        let same = |i: &usize| self.traces.get(*i).is_some_and(|t| t.key == key);
        let by_key = self.by_key.get(&key).filter(|i| same(i)).copied();
        match self.by_skb.get(&ev.skb).filter(|i| same(i)).copied() {
            Some(i)
                if ev.kind == EventKind::Tc as u8
                    && by_key.is_some_and(|k| k != i)
                    && self.traces[i].delivered_ts.is_some() =>
            {
                by_key
            }
            Some(i) => Some(i),
            None => by_key,
        }
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
        if self.beyond_host(ev, &self.traces[i])
            || dhcp::local_copy_elsewhere(&self.traces[i], ev, &self.ctx)
        {
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
        if self.beyond_host(ev, &self.traces[i])
            || dhcp::local_copy_elsewhere(&self.traces[i], ev, &self.ctx)
        {
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

    /// Traces not decided yet.
    pub fn open(&self) -> usize {
        self.traces.len()
    }

    /// When the newest request seen started (kernel time; 0 before any).
    pub fn newest_request(&self) -> u64 {
        self.newest_request
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
    after(dhcp::handed_over(t), dhcp::request_wait(t)).then_some(Outcome::NoReply)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_v6;
