use super::*;

use tracer_common::{PacketInfo, DIR_INGRESS, ROLE_REQUEST};

pub(super) const TAP: u32 = 4;
pub(super) const BR: u32 = 3;
pub(super) const UP: u32 = 2;
const NS: u32 = 4026532000;

pub(super) fn ctx() -> PathCtx {
    PathCtx {
        roles: HashMap::from([(TAP, Role::Port), (BR, Role::Bridge), (UP, Role::Uplink)]),
        netns: NS,
        inbound: BR,
        bridged: false,
        lan: false,
        reply_hold_ns: 0,
    }
}

fn pkt(src: [u8; 4], dst: [u8; 4], icmp_type: u8, seq: u16) -> PacketInfo {
    PacketInfo {
        saddr: tracer_common::addr4(src),
        daddr: tracer_common::addr4(dst),
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

pub(super) fn tc(skb: u64, ts: u64, ifindex: u32, dir: u8, role: u8, p: PacketInfo) -> Event {
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

/// A TCP segment of the guest's connection 40000 → 8080, keyed as the kernel
/// keys a service flow: (service port, guest port).
fn seg(src: [u8; 4], dst: [u8; 4], flags: u8, payload: u16) -> PacketInfo {
    let to_service = src == VM || src == WAN;
    let (sport, dport) = if to_service {
        (40000, 8080)
    } else {
        (8080, 40000)
    };
    PacketInfo {
        saddr: tracer_common::addr4(src),
        daddr: tracer_common::addr4(dst),
        proto: 6,
        sport,
        dport,
        id: 8080,
        seq: 40000,
        tcp_flags: flags,
        payload_len: payload,
        ..Default::default()
    }
}

#[test]
fn an_icmp_error_by_a_reused_address_goes_to_the_connection_s_newest_segment() {
    use tracer_common::{FLAG_ICMP_ERROR, TCP_ACK, TCP_PSH, TCP_SYN};
    let mut c = Correlator::new(ctx());
    // SYN out, SYN-ACK back and delivered (skb 0x2000).
    c.on_event(&tc(
        0x1000,
        1_000,
        TAP,
        DIR_INGRESS,
        ROLE_REQUEST,
        seg(VM, DST, TCP_SYN, 0),
    ));
    c.on_event(&tc(
        0x1000,
        1_020,
        UP,
        DIR_EGRESS,
        ROLE_REQUEST,
        seg(WAN, DST, TCP_SYN, 0),
    ));
    let synack = seg(DST, VM, TCP_SYN | TCP_ACK, 0);
    c.on_event(&tc(0x2000, 2_000, UP, DIR_INGRESS, ROLE_REPLY, synack));
    c.on_event(&tc(0x2000, 2_100, TAP, DIR_EGRESS, ROLE_REPLY, synack));
    // The data segment, then the host's fragmentation-needed for it, in the
    // SYN-ACK's freed skb: it belongs to the data segment, not the handshake.
    c.on_event(&tc(
        0x3000,
        3_000,
        TAP,
        DIR_INGRESS,
        ROLE_REQUEST,
        seg(VM, DST, TCP_PSH | TCP_ACK, 1400),
    ));
    let icmp = PacketInfo {
        saddr: tracer_common::addr4([192, 0, 2, 1]),
        daddr: tracer_common::addr4(VM),
        proto: 1,
        icmp_type: 3,
        code: 4,
        id: 8080,
        seq: 40000,
        quoted_proto: 6,
        ..Default::default()
    };
    let mut err = tc(0x2000, 3_050, TAP, DIR_EGRESS, ROLE_REPLY, icmp);
    err.flags = FLAG_ICMP_ERROR;
    c.on_event(&err);
    let done = c.poll(1_000_000_000);
    assert_eq!(done.len(), 2, "{done:?}");
    let data = done
        .iter()
        .find(|f| f.trace.request.payload_len == 1400)
        .unwrap();
    assert_eq!(data.outcome, Outcome::Replied);
    assert_eq!(data.trace.reply_hops.len(), 1);
    assert_eq!(data.trace.reply_hops[0].pkt.icmp_type, 3);
    let syn = done
        .iter()
        .find(|f| f.trace.request.payload_len == 0)
        .unwrap();
    assert_eq!(syn.trace.reply_hops.len(), 2, "the SYN-ACK's hops only");
}
