//! Deep mode (`--deep`): kprobes on kernel functions along the path (bridge
//! forwarding, IP receive/forward/output, netfilter, NAT, neighbour output,
//! queueing) give a followed packet function-level hops. Loaded only when asked,
//! and only where the kernel has kprobes (the development kernel has none).
//!
//! The `struct sk_buff *` argument sits at a different position per function (and
//! per kernel): user space reads it from BTF and attaches each function to the
//! program for that position.

use aya_ebpf::{
    helpers::{bpf_get_func_ip, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::kprobe,
    programs::ProbeContext,
    EbpfContext,
};
use tracer_common::{Event, EventKind};

use super::frees::{read_device, read_u64};
use crate::maps::{config, emit, tracked};

/// `skb->network_header` when no network header was set.
const HEADER_UNSET: u16 = 0xffff;

#[kprobe]
pub fn pathtrace_deep0(ctx: ProbeContext) -> u32 {
    hop(&ctx, ctx.arg::<u64>(0))
}

#[kprobe]
pub fn pathtrace_deep1(ctx: ProbeContext) -> u32 {
    hop(&ctx, ctx.arg::<u64>(1))
}

#[kprobe]
pub fn pathtrace_deep2(ctx: ProbeContext) -> u32 {
    hop(&ctx, ctx.arg::<u64>(2))
}

#[kprobe]
pub fn pathtrace_deep3(ctx: ProbeContext) -> u32 {
    hop(&ctx, ctx.arg::<u64>(3))
}

/// One function-level hop of a followed packet: which function, where the skb
/// was, and the packet as it is at this point (NAT rewrites it on the way).
#[inline(always)]
fn hop(ctx: &ProbeContext, skb: Option<u64>) -> u32 {
    let Some(skb) = skb else {
        return 0;
    };
    let Some(t) = tracked(skb) else {
        return 0;
    };
    let cfg = config();
    let mut event = Event {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        skb,
        // SAFETY: the kprobe's own context.
        location: unsafe { bpf_get_func_ip(ctx.as_ptr()) },
        kind: EventKind::Func as u8,
        role: t.role,
        flags: t.flags,
        pkt: t.pkt,
        ..Event::default()
    };
    read_device(skb, cfg, &mut event);
    if cfg.skb_head_off != 0 && cfg.skb_nh_off != 0 {
        let head = read_u64(skb + cfg.skb_head_off as u64);
        let nh = unsafe { bpf_probe_read_kernel((skb + cfg.skb_nh_off as u64) as *const u16) }
            .unwrap_or(HEADER_UNSET);
        if head != 0 && nh != HEADER_UNSET {
            crate::packet::read_ip(head + nh as u64, &mut event.pkt);
        }
    }
    emit(&event);
    0
}
