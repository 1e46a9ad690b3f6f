//! The correlator with IPv6 events: ICMPv6 echoes and their replies (or an
//! ICMPv6 error quoting the request) are one request's story as for IPv4, and
//! an IPv4 echo with the same id and sequence is another request's.

use std::net::IpAddr;

use super::*;

use tracer_common::{PacketInfo, DIR_INGRESS, FLAG_ICMP_ERROR, ROLE_REQUEST};

use super::tests::{ctx, tc, BR, TAP, UP};

const VM: &str = "2001:db8:1::100";
const DST: &str = "2001:db8:ffff::53";
const ROUTER: &str = "2001:db8:2::1";

fn icmp6(src: &str, dst: &str, icmp_type: u8, seq: u16) -> PacketInfo {
    PacketInfo {
        proto: 58,
        icmp_type,
        id: 7,
        seq,
        ..Default::default()
    }
    .with_addrs(src.parse().unwrap(), dst.parse().unwrap())
}

/// The guest's echo request `seq` crossing its port, the bridge and the uplink
/// (routed: no translation).
fn request_out(c: &mut Correlator, seq: u16, t0: u64) {
    let req = icmp6(VM, DST, 128, seq);
    let skb = 0x1000 + u64::from(seq);
    c.on_event(&tc(skb, t0, TAP, DIR_INGRESS, ROLE_REQUEST, req));
    c.on_event(&tc(skb, t0 + 10, BR, DIR_INGRESS, ROLE_REQUEST, req));
    c.on_event(&tc(skb, t0 + 20, UP, DIR_EGRESS, ROLE_REQUEST, req));
}

/// A reply `p` (a new skb) coming back from the uplink to the guest's port.
fn reply_in(c: &mut Correlator, p: PacketInfo, flags: u8, t0: u64) {
    for (i, (ifindex, dir)) in [(UP, DIR_INGRESS), (BR, DIR_EGRESS), (TAP, DIR_EGRESS)]
        .into_iter()
        .enumerate()
    {
        let mut e = tc(0x2000, t0 + 100 * i as u64, ifindex, dir, ROLE_REPLY, p);
        e.flags = flags;
        c.on_event(&e);
    }
}

#[test]
fn an_icmpv6_echo_and_its_reply_are_one_request() {
    let mut c = Correlator::new(ctx());
    request_out(&mut c, 1, 1_000);
    reply_in(&mut c, icmp6(DST, VM, 129, 1), 0, 2_000);
    let done = c.poll(2_200 + SETTLE_NS);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].outcome, Outcome::Replied);
    let t = &done[0].trace;
    assert_eq!((t.req_hops.len(), t.reply_hops.len()), (3, 3));
    assert_eq!(t.request.src(), VM.parse::<IpAddr>().unwrap());
    assert_eq!(t.request.dst(), DST.parse::<IpAddr>().unwrap());
}

#[test]
fn an_icmpv6_error_quoting_the_request_answers_it() {
    let mut c = Correlator::new(ctx());
    request_out(&mut c, 2, 1_000);
    // Time exceeded from a router, keyed (by the kernel side) as the request.
    reply_in(&mut c, icmp6(ROUTER, VM, 3, 2), FLAG_ICMP_ERROR, 2_000);
    let done = c.poll(2_200 + SETTLE_NS);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].outcome, Outcome::Replied);
    assert_eq!(done[0].trace.reply_hops[0].pkt.icmp_type, 3);
}

#[test]
fn an_ipv4_echo_with_the_same_id_is_not_answered_by_an_icmpv6_reply() {
    let mut c = Correlator::new(ctx());
    let v4 = PacketInfo {
        proto: 1,
        icmp_type: 8,
        id: 7,
        seq: 3,
        ..Default::default()
    }
    .with_addrs(
        "192.0.2.100".parse().unwrap(),
        "203.0.113.8".parse().unwrap(),
    );
    c.on_event(&tc(0x30, 1_000, TAP, DIR_INGRESS, ROLE_REQUEST, v4));
    c.on_event(&tc(0x30, 1_010, BR, DIR_INGRESS, ROLE_REQUEST, v4));
    c.on_event(&tc(0x30, 1_020, UP, DIR_EGRESS, ROLE_REQUEST, v4));
    reply_in(&mut c, icmp6(DST, VM, 129, 3), 0, 2_000);
    let done = c.poll(2_200 + REPLY_WAIT_NS + SETTLE_NS);
    let outcomes: Vec<Outcome> = done.iter().map(|f| f.outcome).collect();
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert_eq!(outcomes[0], Outcome::NoReply);
}
