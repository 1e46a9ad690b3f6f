//! `skb:kfree_skb` and `skb:consume_skb`: the fate of a followed packet.
//!
//! Both run for every freed skb on the host, so the first thing they do is one
//! hash lookup; untracked packets cost nothing more.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::tracepoint,
    programs::TracePointContext,
};
use tracer_common::{Config, Event, EventKind, FLAG_DEV_KNOWN, FLAG_HAS_DST};

use crate::maps::{config, emit, TRACKED};

/// `void *skbaddr` is the first field of both records (after the common header).
const SKBADDR_OFF: usize = 8;

#[tracepoint(category = "skb", name = "kfree_skb")]
pub fn pathtrace_kfree_skb(ctx: TracePointContext) -> u32 {
    let cfg = config();
    freed(
        &ctx,
        EventKind::Drop,
        &cfg,
        cfg.kfree_location_off,
        cfg.kfree_reason_off,
    );
    0
}

#[tracepoint(category = "skb", name = "consume_skb")]
pub fn pathtrace_consume_skb(ctx: TracePointContext) -> u32 {
    let cfg = config();
    freed(&ctx, EventKind::Consume, &cfg, cfg.consume_location_off, 0);
    0
}

#[inline(always)]
fn freed(ctx: &TracePointContext, kind: EventKind, cfg: &Config, loc_off: u32, reason_off: u32) {
    let Ok(skb) = (unsafe { ctx.read_at::<u64>(SKBADDR_OFF) }) else {
        return;
    };
    let Some(t) = (unsafe { TRACKED.get(skb) }) else {
        return;
    };
    let mut event = Event {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        skb,
        kind: kind as u8,
        role: t.role,
        flags: t.flags,
        pkt: t.pkt,
        ..Event::default()
    };
    if loc_off != 0 {
        event.location = unsafe { ctx.read_at::<u64>(loc_off as usize) }.unwrap_or(0);
    }
    if reason_off != 0 {
        event.reason = unsafe { ctx.read_at::<u32>(reason_off as usize) }.unwrap_or(0);
    }
    read_device(skb, cfg, &mut event);
    let _ = TRACKED.remove(skb);
    emit(&event);
}

/// Where the skb was when freed: its device, that device's netns and whether it had
/// a route. Offsets come from BTF; without them these stay unknown.
#[inline(always)]
fn read_device(skb: u64, cfg: &Config, event: &mut Event) {
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
fn read_u64(addr: u64) -> u64 {
    unsafe { bpf_probe_read_kernel(addr as *const u64) }.unwrap_or(0)
}

#[inline(always)]
fn read_u32(addr: u64) -> u32 {
    unsafe { bpf_probe_read_kernel(addr as *const u32) }.unwrap_or(0)
}
