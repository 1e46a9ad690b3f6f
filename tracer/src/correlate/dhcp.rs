//! DHCP's own timing: a server may wait before it offers (dnsmasq pings the
//! address it is about to offer for up to 3 s; ISC dhcpd 1 s), so its silence
//! means "no answer" only later than for a ping or a DNS query.

use tracer_common::{Event, FLAG_DEV_KNOWN, PKT_DHCP, ROLE_REPLY};

use super::{PathCtx, Stage, Trace, REPLY_WAIT_NS};

/// How long a DHCP request may go unanswered before pathtrace says so.
pub const DHCP_REPLY_WAIT_NS: u64 = 5_000_000_000;

/// When the request was handed to what should answer it: it left, or the host
/// took it. A DHCP server's socket takes it without a `consume_skb` event
/// (`skb_consume_udp` frees it quietly), so for DHCP reaching the bridge's own
/// stack (the broadcast's local copy) counts too.
pub fn handed_over(t: &Trace) -> Option<u64> {
    let sent = t.left_ts.or(t.local_ts);
    if t.request.kind != PKT_DHCP {
        return sent;
    }
    sent.or_else(|| {
        t.req_hops
            .iter()
            .find(|h| h.stage == Stage::Bridge && !h.egress)
            .map(|h| h.ts_ns)
    })
}

/// A free of a DHCP request that is not the end of it: a broadcast is handed
/// up the stack of every bridge it crosses (a Proxmox firewall bridge has no
/// server) while its clones go on, so only a free on the bridge that carries
/// the guest into the host (where the host's server is) counts — and none in
/// bridged mode, where the server is beyond the bridge.
pub fn local_copy_elsewhere(t: &Trace, ev: &Event, ctx: &PathCtx) -> bool {
    let request = ev.role != ROLE_REPLY;
    let elsewhere = ev.flags & FLAG_DEV_KNOWN != 0 && ev.ifindex != ctx.inbound;
    t.request.kind == PKT_DHCP && request && (ctx.lan || elsewhere)
}

/// How long after the request left (or was taken by the host) its answer may
/// still come.
pub fn request_wait(t: &Trace) -> u64 {
    if t.request.kind == PKT_DHCP {
        DHCP_REPLY_WAIT_NS
    } else {
        REPLY_WAIT_NS
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tracer_common::{
        Event, EventKind, PacketInfo, DIR_EGRESS, DIR_INGRESS, FLAG_DEV_KNOWN, ROLE_REPLY,
        ROLE_REQUEST,
    };

    use super::*;
    use crate::{
        correlate::{Correlator, Outcome, PathCtx},
        topology::Role,
    };

    const TAP: u32 = 4;
    const BR: u32 = 3;
    const SEC: u64 = 1_000_000_000;

    fn msg(op: u8, src: [u8; 4], dst: [u8; 4]) -> PacketInfo {
        let xid: u32 = 0xdead_beef;
        PacketInfo {
            saddr: tracer_common::addr4(src),
            daddr: tracer_common::addr4(dst),
            proto: 17,
            kind: PKT_DHCP,
            op,
            xid,
            id: (xid >> 16) as u16,
            seq: xid as u16,
            ..PacketInfo::default()
        }
    }

    /// One event of the DISCOVER (skb 1) or the OFFER (skb 2) on `ifindex`.
    fn ev(kind: EventKind, ts: u64, ifindex: u32, dir: u8, p: PacketInfo) -> Event {
        let reply = p.op == 2;
        Event {
            ts_ns: ts,
            skb: if reply { 2 } else { 1 },
            kind: kind as u8,
            dir,
            role: if reply { ROLE_REPLY } else { ROLE_REQUEST },
            ifindex,
            flags: FLAG_DEV_KNOWN,
            pkt: p,
            ..Event::default()
        }
    }

    /// A correlator that saw a DISCOVER enter by the port at 1 s and reach the
    /// bridge's own stack just after.
    fn discover_taken() -> Correlator {
        let mut c = Correlator::new(PathCtx {
            roles: HashMap::from([(TAP, Role::Port), (BR, Role::Bridge)]),
            inbound: BR,
            ..PathCtx::default()
        });
        let discover = msg(1, [0; 4], [255; 4]);
        c.on_event(&ev(EventKind::Tc, SEC, TAP, DIR_INGRESS, discover));
        c.on_event(&ev(EventKind::Tc, SEC + 10, BR, DIR_INGRESS, discover));
        c
    }

    /// A DISCOVER taken by the host's server and offered 3 s later (dnsmasq's
    /// ping check) is answered, not "no reply" at the usual 2 s.
    #[test]
    fn a_slow_offer_is_still_an_answer() {
        let mut c = discover_taken();
        let offer = msg(2, [192, 0, 2, 1], [192, 0, 2, 150]);
        assert!(c.poll(SEC + 3 * SEC).is_empty(), "still waiting at 3 s");
        c.on_event(&ev(EventKind::Tc, 4 * SEC, BR, DIR_EGRESS, offer));
        c.on_event(&ev(EventKind::Tc, 4 * SEC + 10, TAP, DIR_EGRESS, offer));
        let done = c.poll(5 * SEC);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].outcome, Outcome::Replied);
    }

    /// Taken by the server's socket (no consume event, only the bridge hop) and
    /// never answered.
    #[test]
    fn an_unanswered_request_is_decided_after_the_dhcp_wait() {
        let mut c = discover_taken();
        assert!(c.poll(SEC + DHCP_REPLY_WAIT_NS).is_empty());
        let done = c.poll(SEC + 10 + DHCP_REPLY_WAIT_NS);
        assert_eq!(done[0].outcome, Outcome::NoReply);
    }

    /// The broadcast's local copy freed by a firewall bridge's own UDP (no
    /// server there) is not the request's end; a free on the VM bridge is.
    #[test]
    fn a_free_at_another_bridge_is_only_a_local_copy() {
        const FWBR: u32 = 7;
        let mut c = discover_taken();
        let discover = msg(1, [0; 4], [255; 4]);
        c.on_event(&ev(EventKind::Drop, SEC + 20, FWBR, 0, discover));
        assert!(c.poll(SEC + 30).is_empty(), "not decided by the copy");
        c.on_event(&ev(EventKind::Drop, SEC + 40, BR, 0, discover));
        let done = c.poll(SEC + 50);
        assert_eq!(done[0].outcome, Outcome::Dropped);
    }
}
