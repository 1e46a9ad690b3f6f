//! `skb:kfree_skb` and `skb:consume_skb`: the fate of a followed packet.
//!
//! Both run for every freed skb on the host (consume_skb for nearly every packet),
//! so for untracked packets they do one hash lookup at most (none while nothing
//! is followed or no followed skb shares the address's hint slot, see
//! `maps::tracked`). Each comes
//! twice: as a raw tracepoint (arguments straight from the call site, no record
//! built: the cheap one, used when the kernel's arguments are as expected) and as
//! a classic tracepoint reading the record by tracefs offsets (any kernel).

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use tracer_common::{Config, Event, EventKind, FLAG_DEV_KNOWN, FLAG_HAS_DST};

use crate::maps::{config, emit, tracked, untrack};

/// `void *skbaddr` is the first field of both records (after the common header).
const SKBADDR_OFF: usize = 8;

/// `kfree_skb(skb, location, reason, ...)`.
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn pathtrace_kfree_raw(ctx: RawTracePointContext) -> i32 {
    freed(
        EventKind::Drop,
        ctx.arg::<u64>(0),
        ctx.arg::<u64>(1),
        ctx.arg::<u32>(2),
    );
    0
}

/// `consume_skb(skb, location)`.
#[raw_tracepoint(tracepoint = "consume_skb")]
pub fn pathtrace_consume_raw(ctx: RawTracePointContext) -> i32 {
    freed(EventKind::Consume, ctx.arg::<u64>(0), ctx.arg::<u64>(1), 0);
    0
}

#[tracepoint(category = "skb", name = "kfree_skb")]
pub fn pathtrace_kfree_skb(ctx: TracePointContext) -> u32 {
    let cfg = config();
    if let Ok(skb) = unsafe { ctx.read_at::<u64>(SKBADDR_OFF) } {
        let location = read_field::<u64>(&ctx, cfg.kfree_location_off);
        let reason = read_field::<u32>(&ctx, cfg.kfree_reason_off);
        freed(EventKind::Drop, skb, location, reason);
    }
    0
}

#[tracepoint(category = "skb", name = "consume_skb")]
pub fn pathtrace_consume_skb(ctx: TracePointContext) -> u32 {
    let cfg = config();
    if let Ok(skb) = unsafe { ctx.read_at::<u64>(SKBADDR_OFF) } {
        let location = read_field::<u64>(&ctx, cfg.consume_location_off);
        freed(EventKind::Consume, skb, location, 0);
    }
    0
}

/// A field of a classic tracepoint record; 0 when its offset is unknown (0).
#[inline(always)]
pub fn read_field<T: Default>(ctx: &TracePointContext, off: u32) -> T {
    if off == 0 {
        return T::default();
    }
    unsafe { ctx.read_at::<T>(off as usize) }.unwrap_or_default()
}

#[inline(always)]
fn freed(kind: EventKind, skb: u64, location: u64, reason: u32) {
    let Some(t) = tracked(skb) else {
        return;
    };
    let cfg = config();
    let mut event = Event {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        skb,
        location,
        kind: kind as u8,
        role: t.role,
        flags: t.flags,
        reason,
        pkt: t.pkt,
        ..Event::default()
    };
    read_device(skb, cfg, &mut event);
    untrack(skb);
    emit(&event);
}

/// Where the skb was when freed: its device, that device's netns and whether it had
/// a route. Offsets come from BTF; without them these stay unknown.
#[inline(always)]
pub fn read_device(skb: u64, cfg: &Config, event: &mut Event) {
    if cfg.skb_dev_off == 0 || cfg.dev_ifindex_off == 0 {
        return;
    }
    let refdst = read_u64(skb + cfg.skb_refdst_off as u64);
    if refdst != 0 {
        event.flags |= FLAG_HAS_DST;
    }
    let dev = read_u64(skb + cfg.skb_dev_off as u64);
    if dev == 0 {
        return;
    }
    event.flags |= FLAG_DEV_KNOWN;
    event.ifindex = read_u32(dev + cfg.dev_ifindex_off as u64);
    if cfg.dev_net_off != 0 && cfg.net_inum_off != 0 {
        let net = read_u64(dev + cfg.dev_net_off as u64);
        if net != 0 {
            event.netns = read_u32(net + cfg.net_inum_off as u64);
        }
    }
}

#[inline(always)]
pub fn read_u64(addr: u64) -> u64 {
    unsafe { bpf_probe_read_kernel(addr as *const u64) }.unwrap_or(0)
}

#[inline(always)]
fn read_u32(addr: u64) -> u32 {
    unsafe { bpf_probe_read_kernel(addr as *const u32) }.unwrap_or(0)
}
