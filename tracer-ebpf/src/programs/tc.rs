//! TC classifiers on the VM port, its bridge and the uplink (both directions).
//!
//! They recognise the guest's requests and the replies to them, start following
//! those packets by skb address (so the tracepoints can report their fate), and
//! report each crossing with the headers as they are at that point (NAT visible).
//! They never change the packet and always let it continue.
//!
//! Two kinds: the VM's own port (`pathtrace_tc_port_*`) sees only the guest's
//! traffic and is where a request starts being followed, within a budget of
//! requests at once; the hooks off the port (bridge, uplink, the hops between)
//! see every packet of the host and return after one array lookup while no
//! request of the guest is in flight (`maps::armed`): every request crosses the
//! port first, and arms them before its packet moves on.

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes},
    macros::classifier,
    programs::TcContext,
};
use tracer_common::{
    req_key, Addr, Config, Event, EventKind, NameEvent, PacketEvent, PacketInfo, CNT_RINGBUF_FULL,
    CNT_SKIPPED, DIR_EGRESS, DIR_INGRESS, DNS_NAME_LEN, FLAG_ICMP_ERROR, PKT_ARP, PKT_DHCP,
    PROTO_ARP, PROTO_DHCP, PROTO_DNS, PROTO_ICMP, ROLE_REPLY, ROLE_REQUEST, SNAP_LEN,
};

use super::flow;
use crate::{
    dhcparp::{is_client_message, parse_arp, ARP_REPLY, ARP_REQUEST},
    icmp::{self, is_icmp},
    maps::{
        armed, as_number, budget_left, config, count, following, maybe_followed, maybe_tracked,
        note_followed, note_request, request_recent, requests_seen, same_addr, take_slot, track,
        tracked, untrack, EVENTS, REQ_IDS,
    },
    packet::{dns_question_offset, parse, parse_quoted, DNS_PORT, IPPROTO_ICMP, IPPROTO_UDP},
    packet6::IPPROTO_ICMPV6,
};

#[classifier]
pub fn pathtrace_tc_port_ingress(ctx: TcContext) -> i32 {
    observe(&ctx, DIR_INGRESS, true);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn pathtrace_tc_port_egress(ctx: TcContext) -> i32 {
    observe(&ctx, DIR_EGRESS, true);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn pathtrace_tc_ingress(ctx: TcContext) -> i32 {
    if armed() {
        observe(&ctx, DIR_INGRESS, false);
    }
    TC_ACT_UNSPEC
}

#[classifier]
pub fn pathtrace_tc_egress(ctx: TcContext) -> i32 {
    if armed() {
        observe(&ctx, DIR_EGRESS, false);
    }
    TC_ACT_UNSPEC
}

/// `port`: this hook is on the VM's own port. A request of the guest starts
/// being followed only where it enters the host, the port's ingress; elsewhere
/// it is only followed further.
#[inline(always)]
fn observe(ctx: &TcContext, dir: u8, port: bool) {
    let starts = port && dir == DIR_INGRESS;
    let mut pkt = PacketInfo::default();
    let Some(l4_off) = parse(ctx, &mut pkt).or_else(|| parse_arp_if_asked(ctx, &mut pkt)) else {
        return;
    };
    if flow::wanted(pkt.proto, config()) {
        flow::key(&mut pkt, config());
    }
    // While armed, every packet of the host crossing the bridge and the uplink
    // comes here: most must cost no more than the header parse above, a few
    // compares and array loads, no hash lookup.
    // The context pointer is the kernel's skb address, the same value the
    // skb:* tracepoints report as `skbaddr`.
    let skb_ptr = ctx.skb.skb as u64;
    if !may_concern_flow(&pkt, starts, skb_ptr) {
        return;
    }
    // As a number, so it can be hashed (`maps::as_number`).
    let skb = as_number(skb_ptr);
    // The clock is read only for a packet that is followed: a flood's packets
    // that pass the filter above (skipped requests, an id like a followed one's)
    // never pay for it.
    let Some((role, flags, new, now)) = classify(ctx, &mut pkt, l4_off, starts) else {
        return;
    };
    // Written in place in the ring buffer, not built on the stack (the TC
    // programs and `classify` share 512 bytes of it).
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(CNT_RINGBUF_FULL);
        return;
    };
    // SAFETY: the entry is ours until submitted; every field is written here.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    event.ts_ns = now;
    event.skb = skb;
    event.location = 0;
    event.kind = EventKind::Tc as u8;
    event.dir = dir;
    event.role = role;
    event.flags = flags;
    event.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    event.reason = 0;
    event.netns = 0;
    event.pkt = pkt;
    // The events below come after this one in the ring (reserved later), even
    // though this one is submitted last.
    if new && role == ROLE_REQUEST && pkt.proto == IPPROTO_UDP && pkt.dport == DNS_PORT {
        emit_dns_name(ctx, event, l4_off);
    }
    // Only with --pcap: followed packets are few, so the copy stays cheap, and
    // without it this is one compare of a read-only global.
    if config().capture != 0 {
        emit_packet(ctx, event);
    }
    entry.submit(crate::maps::wakeup_flags());
}

/// `--pcap`: the followed packet's first bytes as they are at this hook.
#[inline(always)]
fn emit_packet(ctx: &TcContext, head: &Event) {
    let Some(mut entry) = EVENTS.reserve::<PacketEvent>(0) else {
        count(CNT_RINGBUF_FULL);
        return;
    };
    // SAFETY: the entry is ours until submitted; every field is written below.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.head = *head;
    ev.head.kind = EventKind::Packet as u8;
    let len = ctx.len() as usize;
    ev.wire_len = len as u32;
    ev.cap_len = 0;
    if len > 0 {
        // Bounded into 1..=SNAP_LEN where the helper is called (the verifier
        // needs to see it), as in `load_upto`.
        let n = ((len.min(SNAP_LEN) - 1) & (SNAP_LEN - 1)) + 1;
        // SAFETY: `data` holds SNAP_LEN bytes and `n` is at most that.
        let rc = unsafe {
            bpf_skb_load_bytes(
                ctx.skb.skb as *const _,
                0,
                ev.data.as_mut_ptr().cast(),
                n as u32,
            )
        };
        if rc == 0 {
            ev.cap_len = n as u32;
        }
    }
    entry.submit(crate::maps::wakeup_flags());
}

/// Could this packet be one of the traced flow's, at any hook? Requests keep the
/// destination (NAT rewrites only the source), replies come from it, ICMP errors
/// quote a request; DNS is rare enough to look at all of it (a DNAT may change the
/// resolver's address). Only inlined array loads and compares: no clock, no hash.
#[inline(always)]
fn may_concern_flow(pkt: &PacketInfo, starts: bool, skb_ptr: u64) -> bool {
    let cfg = config();
    // One trace follows one family: the other's packets are never its own
    // (ARP and DHCP are IPv4's).
    if pkt.family != cfg.family {
        return false;
    }
    match pkt.proto {
        // An ICMP error may answer a TCP/UDP service flow.
        IPPROTO_ICMP | IPPROTO_ICMPV6
            if flow::any_wanted(cfg) && icmp::kind(pkt) == icmp::ERROR =>
        {
            true
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 if cfg.protos & PROTO_ICMP != 0 => match icmp::kind(pkt) {
            // The guest's echo starts being followed where it enters; anywhere
            // else an echo is ours only as a followed packet seen again (maybe
            // after NAT), which its skb's hint slot tells at once.
            icmp::ECHO => {
                same_addr(&pkt.daddr, &cfg.dst_ip)
                    && ((starts && same_addr(&pkt.saddr, &cfg.vm_ip))
                        || maybe_tracked(as_number(skb_ptr)))
            }
            // Replies are only looked for once a request was seen, and only
            // those to a followed echo: a reply to one of a flood's skipped echoes
            // costs two array loads here.
            icmp::REPLY => {
                same_addr(&pkt.saddr, &cfg.dst_ip)
                    && requests_seen()
                    && maybe_followed(pkt.id, pkt.seq)
            }
            icmp::ERROR => true,
            _ => false,
        },
        // Any address: a DNAT may change the resolver's. A query of the guest
        // where it enters, else only a followed one (its skb, as for echoes: a
        // flood of queries may all carry the id of a followed one); a response
        // with a followed query's id.
        IPPROTO_UDP if cfg.protos & PROTO_DNS != 0 => {
            (pkt.dport == DNS_PORT
                && ((starts && same_addr(&pkt.saddr, &cfg.vm_ip))
                    || maybe_tracked(as_number(skb_ptr))))
                || (pkt.sport == DNS_PORT && maybe_followed(pkt.id, 0))
        }
        p if flow::wanted(p, cfg) => flow::concerns(pkt, starts, cfg),
        // Any address too: the guest may have none yet, and the server answers
        // to the offered one or to broadcast. A client's message where it
        // enters; otherwise only a followed transaction's.
        IPPROTO_UDP if cfg.protos & PROTO_DHCP != 0 && pkt.kind == PKT_DHCP => {
            (starts && is_client_message(pkt)) || maybe_followed(pkt.id, pkt.seq)
        }
        0 if cfg.protos & PROTO_ARP != 0 && pkt.kind == PKT_ARP => match pkt.op {
            ARP_REQUEST => same_addr(&pkt.daddr, &cfg.dst_ip) && (starts || following()),
            ARP_REPLY => same_addr(&pkt.saddr, &cfg.dst_ip) && requests_seen(),
            _ => false,
        },
        _ => false,
    }
}

/// The guest's own request to the destination, as it enters the host.
#[inline(always)]
fn is_guest_request(pkt: &PacketInfo, cfg: &Config) -> bool {
    match pkt.kind {
        // The guest may have no address yet: any client message on its port.
        PKT_DHCP => return is_client_message(pkt),
        PKT_ARP => return pkt.op == ARP_REQUEST && same_addr(&pkt.daddr, &cfg.dst_ip),
        _ => {}
    }
    let what = match pkt.proto {
        IPPROTO_ICMP | IPPROTO_ICMPV6 => icmp::kind(pkt) == icmp::ECHO,
        IPPROTO_UDP if cfg.protos & PROTO_DNS != 0 => pkt.dport == DNS_PORT,
        p if flow::wanted(p, cfg) => return flow::is_new_request(pkt, cfg),
        _ => false,
    };
    what && same_addr(&pkt.saddr, &cfg.vm_ip) && same_addr(&pkt.daddr, &cfg.dst_ip)
}

/// The DNS question of a new request, once, so the verdict can name the query.
#[inline(always)]
fn emit_dns_name(ctx: &TcContext, head: &Event, l4_off: usize) {
    let Some(mut entry) = EVENTS.reserve::<NameEvent>(0) else {
        count(CNT_RINGBUF_FULL);
        return;
    };
    // SAFETY: the entry is ours until submitted; every byte is written below.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.head = *head;
    ev.head.kind = EventKind::DnsName as u8;
    ev.name = [0; DNS_NAME_LEN];
    // As many bytes of the question as the packet has, up to the buffer: a
    // fixed-size load of a short query would fail (or cut the name short).
    let off = dns_question_offset(l4_off);
    load_upto(ctx, off, &mut ev.name);
    entry.submit(crate::maps::wakeup_flags());
}

/// Copy the packet's bytes from `off` into `dst`, as many as it has (at most
/// `DNS_NAME_LEN`). The length is masked into 1..=DNS_NAME_LEN where the helper
/// is called, so the verifier sees it bounded and never zero.
#[inline(always)]
fn load_upto(ctx: &TcContext, off: usize, dst: &mut [u8; DNS_NAME_LEN]) {
    let have = (ctx.len() as usize).saturating_sub(off);
    if have == 0 {
        return;
    }
    let len = ((have.min(DNS_NAME_LEN) - 1) & (DNS_NAME_LEN - 1)) + 1;
    // SAFETY: `dst` holds DNS_NAME_LEN bytes and `len` is at most that.
    unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            off as u32,
            dst.as_mut_ptr().cast(),
            len as u32,
        );
    }
}

/// Decide whether this packet belongs to the traced flow; start tracking it if so.
/// Returns (role, flags, newly tracked, the time it was seen).
///
/// Not inlined: a BPF subprogram with its own stack frame (the tracking entry,
/// an ICMP error's quoted packet), apart from the parse's and the event's;
/// reached only by packets that may be the flow's.
#[inline(never)]
fn classify(
    ctx: &TcContext,
    pkt: &mut PacketInfo,
    l4_off: usize,
    starts: bool,
) -> Option<(u8, u8, bool, u64)> {
    let skb = as_number(ctx.skb.skb as u64);
    let cfg = config();
    // A flood of the guest's requests with the budget spent: counted, and no
    // lookup at all.
    if starts && is_guest_request(pkt, cfg) && !budget_left(cfg.max_follow) {
        count(CNT_SKIPPED);
        return None;
    }
    if let Some(t) = tracked(skb) {
        // Same skb seen again (a later hook). Addresses may have been rewritten by
        // NAT, but the protocol and the id survive; anything else means the address
        // was reused by an unrelated packet after a free we did not see.
        if t.flags & FLAG_ICMP_ERROR != 0 && pkt.icmp_type == t.pkt.icmp_type {
            // Report the quoted request's id/seq, as at the first hook.
            pkt.id = t.pkt.id;
            pkt.seq = t.pkt.seq;
            pkt.quoted_proto = t.pkt.quoted_proto;
            return Some((t.role, t.flags, false, clock()));
        }
        if same_packet(&t.pkt, pkt) {
            if flow::wanted(pkt.proto, cfg) {
                // The flow's key as first seen: MASQUERADE may have changed
                // the guest's port (`sport`/`dport` show it as it is here).
                pkt.seq = t.pkt.seq;
            }
            return Some((t.role, t.flags, false, clock()));
        }
        untrack(skb);
    }
    let want_icmp = cfg.protos & PROTO_ICMP != 0;
    let want_dns = cfg.protos & PROTO_DNS != 0;
    let (role, flags) = if pkt.kind == PKT_DHCP && cfg.protos & PROTO_DHCP != 0 {
        classify_dhcp(pkt)?
    } else if pkt.kind == PKT_ARP && cfg.protos & PROTO_ARP != 0 {
        classify_arp(pkt, &cfg.dst_ip)?
    } else if is_icmp(pkt.proto) && want_icmp {
        classify_icmp(ctx, pkt, l4_off, &cfg.vm_ip, &cfg.dst_ip)?
    } else if pkt.proto == IPPROTO_UDP && want_dns {
        classify_dns(pkt, &cfg.vm_ip, &cfg.dst_ip)?
    } else if is_icmp(pkt.proto) && flow::any_wanted(cfg) {
        flow::classify_error(ctx, pkt, l4_off, cfg)?
    } else if flow::wanted(pkt.proto, cfg) {
        flow::classify(pkt, cfg)?
    } else {
        return None;
    };
    let now = clock();
    // A broadcast DHCP message is flooded as clones (new skbs) by every bridge
    // on its way (a Proxmox firewall bridge, then vmbr0): a clone of a followed
    // transaction is the same request, followed on.
    let flooded_copy = role == ROLE_REQUEST
        && !starts
        && pkt.kind == PKT_DHCP
        && is_known_request(pkt.proto, pkt.id, pkt.seq);
    if role == ROLE_REQUEST && !flooded_copy {
        // A request not yet followed: only its port's ingress starts following
        // it (a later hook seeing it untracked means it was skipped there, or
        // came before pathtrace), and only within the budget; a skipped one is
        // counted.
        if !starts {
            return None;
        }
        if !take_slot(cfg.max_follow) {
            count(CNT_SKIPPED);
            return None;
        }
        let _ = REQ_IDS.insert(req_key(pkt.family, pkt.proto, pkt.id, pkt.seq), now, 0);
        note_followed(pkt.id, pkt.seq, now);
        note_request(now);
    }
    track(skb, pkt, role, flags, now);
    Some((role, flags, true, now))
}

/// The time of a followed packet's event.
#[inline(always)]
fn clock() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

/// Is this the followed packet seen again, or another packet the kernel put at a
/// freed one's address? Some frees pass no tracepoint (a deferred free recycled
/// through the per-CPU skb cache), so the address of a request that reached a
/// local server can come straight back as its answer: same protocol and id, so
/// the direction (echo vs echo reply, to or from port 53) tells them apart. NAT
/// rewrites neither.
#[inline(always)]
fn same_packet(was: &PacketInfo, now: &PacketInfo) -> bool {
    was.proto == now.proto
        && was.id == now.id
        && was.icmp_type == now.icmp_type
        && (was.dport == DNS_PORT) == (now.dport == DNS_PORT)
        // TCP/UDP: NAT rewrites one port of a packet (the request's source, the
        // reply's destination), never both; a request and its answer differ
        // in both.
        && (was.sport == now.sport || was.dport == now.dport)
        // DHCP's messages of one transaction share the xid, an ARP request
        // and its answer the address: their type tells them apart.
        && was.op == now.op
}

/// One of the guest's requests has this id. Without a recent request there is
/// nothing to answer, and no lookup is done.
#[inline(always)]
fn is_known_request(proto: u8, id: u16, seq: u16) -> bool {
    let family = config().family;
    request_recent() && unsafe { REQ_IDS.get(req_key(family, proto, id, seq)).is_some() }
}

#[inline(always)]
fn classify_icmp(
    ctx: &TcContext,
    pkt: &mut PacketInfo,
    l4_off: usize,
    vm: &Addr,
    dst: &Addr,
) -> Option<(u8, u8)> {
    match icmp::kind(pkt) {
        icmp::ECHO if same_addr(&pkt.saddr, vm) && same_addr(&pkt.daddr, dst) => {
            Some((ROLE_REQUEST, 0))
        }
        icmp::REPLY
            if same_addr(&pkt.saddr, dst) && is_known_request(pkt.proto, pkt.id, pkt.seq) =>
        {
            Some((ROLE_REPLY, 0))
        }
        icmp::ERROR => {
            // An error quoting one of the guest's requests (its IP header follows the
            // 8-byte ICMP header) is the answer to that request.
            let mut inner = PacketInfo::default();
            parse_quoted(ctx, pkt, l4_off, &mut inner)?;
            let ours = icmp::kind(&inner) == icmp::ECHO
                && same_addr(&inner.daddr, dst)
                && is_known_request(inner.proto, inner.id, inner.seq);
            if !ours {
                return None;
            }
            // Key the error by the request it answers.
            pkt.id = inner.id;
            pkt.seq = inner.seq;
            Some((ROLE_REPLY, FLAG_ICMP_ERROR))
        }
        _ => None,
    }
}

#[inline(always)]
fn classify_dns(pkt: &PacketInfo, vm: &Addr, dst: &Addr) -> Option<(u8, u8)> {
    if pkt.dport == DNS_PORT && same_addr(&pkt.saddr, vm) && same_addr(&pkt.daddr, dst) {
        return Some((ROLE_REQUEST, 0));
    }
    if pkt.sport == DNS_PORT
        && same_addr(&pkt.saddr, dst)
        && is_known_request(IPPROTO_UDP, pkt.id, 0)
    {
        return Some((ROLE_REPLY, 0));
    }
    None
}

/// `--proto arp`, ahead of everything else only when asked: ARP is not IPv4.
#[inline(always)]
fn parse_arp_if_asked(ctx: &TcContext, info: &mut PacketInfo) -> Option<usize> {
    if config().protos & PROTO_ARP == 0 {
        return None;
    }
    parse_arp(ctx, info)
}

/// A client's message is a request (only its port's ingress starts following
/// it); a server's answers one when its transaction id is being followed.
#[inline(always)]
fn classify_dhcp(pkt: &PacketInfo) -> Option<(u8, u8)> {
    if is_client_message(pkt) {
        return Some((ROLE_REQUEST, 0));
    }
    is_known_request(pkt.proto, pkt.id, pkt.seq).then_some((ROLE_REPLY, 0))
}

/// A who-has for the destination is a request; the answer for it (keyed by
/// the address asked about) a reply.
#[inline(always)]
fn classify_arp(pkt: &PacketInfo, dst: &Addr) -> Option<(u8, u8)> {
    match pkt.op {
        ARP_REQUEST if same_addr(&pkt.daddr, dst) => Some((ROLE_REQUEST, 0)),
        ARP_REPLY if same_addr(&pkt.saddr, dst) && is_known_request(pkt.proto, pkt.id, pkt.seq) => {
            Some((ROLE_REPLY, 0))
        }
        _ => None,
    }
}
