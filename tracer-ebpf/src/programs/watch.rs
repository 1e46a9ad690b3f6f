//! Watch mode: count every drop that concerns a watched VM, in the kernel.
//!
//! Only `skb:kfree_skb` is used, so packets that are not dropped cost nothing at
//! all: no program runs for them. A drop is attributed to a VM port by, in order,
//! the packet's IP addresses (IPv4 or IPv6), the conntrack entry's original
//! addresses (traffic after SNAT/MASQUERADE or DNAT, NAT66 too), its Ethernet
//! addresses, and finally the device it was dropped on. IPv4 is tested first and
//! costs what it did before IPv6 was counted: its own 4-byte-key map. Counts go to a per-CPU hash; a sample crosses to user space only
//! for a new drop point and then at most once a second per CPU.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use tracer_common::{
    addr_key, mac_key, Addr, DropCount, DropKey, DropSample, PacketInfo, WatchConfig, CLASS_ARP,
    CLASS_OTHER, CNT_DROPS_MAP_FULL, CNT_SAMPLES_LOST, CNT_UNATTRIBUTED, FAMILY_V6, WDIR_FROM_VM,
    WDIR_TO_VM, WDIR_UNKNOWN, WFLAG_HAS_DST, WFLAG_VIA_CT,
};

use super::frees::read_field;
use crate::maps::{
    count, DROPS, SAMPLES, VM_ADDRS, VM_ADDRS6, VM_MACS, VM_PORTS, WATCH_CONFIG, WATCH_NET,
};

const SKBADDR_OFF: usize = 8;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = crate::packet::ETH_P_IPV6;
/// `skb->network_header`/`mac_header` value meaning "not set".
const HEADER_UNSET: u16 = 0xffff;
/// Low bits of `skb->_nfct` carry `enum ip_conntrack_info`.
const NFCT_INFO_MASK: u64 = 7;
/// `IP_CT_IS_REPLY` and above: the packet travels in the connection's reply direction.
const IP_CT_ESTABLISHED_REPLY: u64 = 3;
const SAMPLE_EVERY_NS: u64 = 1_000_000_000;
const EEXIST: i32 = -17;

/// `kfree_skb(skb, location, reason, ...)` as a raw tracepoint: the cheap way in.
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn pathtrace_watch_raw(ctx: RawTracePointContext) -> i32 {
    let _ = on_drop(ctx.arg::<u64>(0), ctx.arg::<u64>(1), ctx.arg::<u32>(2));
    0
}

/// The same from the classic tracepoint's record, for kernels where the raw
/// arguments differ.
#[tracepoint(category = "skb", name = "kfree_skb")]
pub fn pathtrace_watch_drop(ctx: TracePointContext) -> u32 {
    let cfg = WATCH_CONFIG.load();
    if let Ok(skb) = unsafe { ctx.read_at::<u64>(SKBADDR_OFF) } {
        let location = read_field::<u64>(&ctx, cfg.kfree_location_off);
        let reason = read_field::<u32>(&ctx, cfg.kfree_reason_off);
        let _ = on_drop(skb, location, reason);
    }
    0
}

#[inline(always)]
fn on_drop(skb: u64, location: u64, reason: u32) -> Option<()> {
    let cfg = WATCH_CONFIG.load();
    let dev = read::<u64>(skb + cfg.skb_dev_off as u64);
    let mut ifindex = 0;
    if dev != 0 {
        // Drops in other namespaces (containers, other labs, the far side of a
        // veth) are not this host's path; rejected first, before anything else
        // is read: on a busy host they can be most drops.
        if cfg.netns_inum != 0 && cfg.dev_net_off != 0 && !in_watched_netns(dev, &cfg) {
            return None;
        }
        ifindex = read::<u32>(dev + cfg.dev_ifindex_off as u64);
    }
    let head = read::<u64>(skb + cfg.skb_head_off as u64);
    let l3proto = u16::from_be(read::<u16>(skb + cfg.skb_protocol_off as u64));
    let mut pkt = PacketInfo::default();
    let mut class = CLASS_OTHER;
    let mut found = None;
    if l3proto == ETH_P_IP && head != 0 {
        let nh = read::<u16>(skb + cfg.skb_network_header_off as u64);
        if nh != HEADER_UNSET {
            class = crate::packet::read_ipv4(head + nh as u64, &mut pkt);
            found = by_addr(&pkt).or_else(|| by_conntrack(skb, &cfg));
        }
    } else if l3proto == ETH_P_IPV6 && head != 0 {
        let nh = read::<u16>(skb + cfg.skb_network_header_off as u64);
        if nh != HEADER_UNSET {
            crate::packet6::read_ipv6(head + nh as u64, &mut pkt);
            if pkt.family == FAMILY_V6 {
                class = crate::packet::class_of(&pkt);
                found = by_addr6(&pkt).or_else(|| by_conntrack6(skb, &cfg));
            }
        }
    } else if l3proto == ETH_P_ARP {
        class = CLASS_ARP;
    }
    if found.is_none() && head != 0 {
        found = by_mac(skb, head, &cfg);
    }
    if found.is_none() && ifindex != 0 && unsafe { VM_PORTS.get(ifindex) }.is_some() {
        found = Some((ifindex, WDIR_UNKNOWN, 0));
    }
    let Some((port, dir, via)) = found else {
        count(CNT_UNATTRIBUTED);
        return None;
    };
    let mut flags = via;
    if read::<u64>(skb + cfg.skb_refdst_off as u64) != 0 {
        flags |= WFLAG_HAS_DST;
    }
    let key = DropKey {
        location,
        port,
        dev: ifindex,
        reason,
        class,
        dir,
        flags,
        _pad: 0,
    };
    let len = read::<u32>(skb + cfg.skb_len_off as u64) as u64;
    record(&key, len, &pkt);
    Some(())
}

/// The device `dev` lives in the watched namespace. Namespaces are told apart by
/// the address of their `struct net` once seen: ours (alive while we watch it)
/// and the last other one a drop came from (a flood's drops come from one place),
/// so such a drop costs two reads (device → net) and a compare, not three reads.
/// An address cached as "other" can never be ours: ours existed before it.
#[inline(always)]
fn in_watched_netns(dev: u64, cfg: &WatchConfig) -> bool {
    let net = read::<u64>(dev + cfg.dev_net_off as u64);
    if net == 0 {
        return true;
    }
    let known = |slot| WATCH_NET.get(slot).copied().unwrap_or(0);
    if net == known(NET_OURS) {
        return true;
    }
    if net == known(NET_OTHER) {
        return false;
    }
    let ours = read::<u32>(net + cfg.net_inum_off as u64) == cfg.netns_inum;
    if let Some(slot) = WATCH_NET.get_ptr_mut(if ours { NET_OURS } else { NET_OTHER }) {
        // SAFETY: a plain store; a racing CPU stores an equally valid address.
        unsafe { *slot = net };
    }
    ours
}

/// `WATCH_NET` slots.
const NET_OURS: u32 = 0;
const NET_OTHER: u32 = 1;

/// Count the drop; send a sample when the point is new or its last sample on this
/// CPU is older than a second.
#[inline(always)]
fn record(key: &DropKey, len: u64, pkt: &PacketInfo) {
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(v) = DROPS.get_ptr_mut(key) {
        // SAFETY: this CPU's own copy of the value.
        let v = unsafe { &mut *v };
        v.packets += 1;
        v.bytes += len;
        v.last_ns = now;
        if now.wrapping_sub(v.sampled_ns) >= SAMPLE_EVERY_NS {
            v.sampled_ns = now;
            sample(key, now, pkt);
        }
        return;
    }
    let first = DropCount {
        packets: 1,
        bytes: len,
        last_ns: now,
        sampled_ns: now,
    };
    match DROPS.insert(key, first, aya_ebpf::bindings::BPF_NOEXIST as u64) {
        Ok(()) => sample(key, now, pkt),
        // Another CPU created it a moment ago: count on our copy.
        Err(EEXIST) => {
            if let Some(v) = DROPS.get_ptr_mut(key) {
                let v = unsafe { &mut *v };
                v.packets += 1;
                v.bytes += len;
                v.last_ns = now;
            }
        }
        Err(_) => count(CNT_DROPS_MAP_FULL),
    }
}

#[inline(always)]
fn sample(key: &DropKey, now: u64, pkt: &PacketInfo) {
    let s = DropSample {
        key: *key,
        ts_ns: now,
        pkt: *pkt,
    };
    // User space drains samples on its own tick; it never waits for a wakeup.
    let flags = aya_ebpf::bindings::BPF_RB_NO_WAKEUP as u64;
    if SAMPLES.output::<DropSample>(&s, flags).is_err() {
        count(CNT_SAMPLES_LOST);
    }
}

#[inline(always)]
fn vm_port_of_addr(addr: [u8; 4]) -> Option<u32> {
    unsafe { VM_ADDRS.get(addr_key(addr)) }.copied()
}

/// The first four bytes of an address: all of an IPv4 one.
#[inline(always)]
fn v4(a: &tracer_common::Addr) -> [u8; 4] {
    [a[0], a[1], a[2], a[3]]
}

#[inline(always)]
fn by_addr(pkt: &PacketInfo) -> Option<(u32, u8, u8)> {
    if let Some(port) = vm_port_of_addr(v4(&pkt.saddr)) {
        return Some((port, WDIR_FROM_VM, 0));
    }
    vm_port_of_addr(v4(&pkt.daddr)).map(|port| (port, WDIR_TO_VM, 0))
}

#[inline(always)]
fn vm_port_of_addr6(addr: &Addr) -> Option<u32> {
    unsafe { VM_ADDRS6.get(addr) }.copied()
}

#[inline(always)]
fn by_addr6(pkt: &PacketInfo) -> Option<(u32, u8, u8)> {
    if let Some(port) = vm_port_of_addr6(&pkt.saddr) {
        return Some((port, WDIR_FROM_VM, 0));
    }
    vm_port_of_addr6(&pkt.daddr).map(|port| (port, WDIR_TO_VM, 0))
}

/// After NAT the packet's addresses are the host's; the conntrack entry still
/// holds the VM's: the original source (VM opened it, e.g. MASQUERADE) or the
/// reply source (the VM is behind a DNAT).
#[inline(always)]
fn by_conntrack(skb: u64, cfg: &WatchConfig) -> Option<(u32, u8, u8)> {
    let (ct, reply_dir) = conntrack_of(skb, cfg)?;
    let orig_src = read::<[u8; 4]>(ct + cfg.ct_orig_src_off as u64);
    if let Some(port) = vm_port_of_addr(orig_src) {
        return Some(via_ct(port, reply_dir, true));
    }
    let reply_src = read::<[u8; 4]>(ct + cfg.ct_reply_src_off as u64);
    let port = vm_port_of_addr(reply_src)?;
    Some(via_ct(port, reply_dir, false))
}

/// The same for IPv6 (NAT66): the tuple's address is a `union nf_inet_addr`
/// at the same offset, all 16 bytes of it used.
#[inline(always)]
fn by_conntrack6(skb: u64, cfg: &WatchConfig) -> Option<(u32, u8, u8)> {
    let (ct, reply_dir) = conntrack_of(skb, cfg)?;
    let orig_src = read::<Addr>(ct + cfg.ct_orig_src_off as u64);
    if let Some(port) = vm_port_of_addr6(&orig_src) {
        return Some(via_ct(port, reply_dir, true));
    }
    let reply_src = read::<Addr>(ct + cfg.ct_reply_src_off as u64);
    let port = vm_port_of_addr6(&reply_src)?;
    Some(via_ct(port, reply_dir, false))
}

/// The skb's conntrack entry and whether the packet travels in its reply
/// direction.
#[inline(always)]
fn conntrack_of(skb: u64, cfg: &WatchConfig) -> Option<(u64, bool)> {
    if cfg.skb_nfct_off == 0 || cfg.ct_orig_src_off == 0 {
        return None;
    }
    let nfct = read::<u64>(skb + cfg.skb_nfct_off as u64);
    let ct = nfct & !NFCT_INFO_MASK;
    if ct == 0 {
        return None;
    }
    Some((ct, (nfct & NFCT_INFO_MASK) >= IP_CT_ESTABLISHED_REPLY))
}

/// The VM opened the connection (`vm_opened`: it is the original source) or
/// sits behind a DNAT (the reply source); the packet's way follows from that
/// and the direction it travels in.
#[inline(always)]
fn via_ct(port: u32, reply_dir: bool, vm_opened: bool) -> (u32, u8, u8) {
    let dir = if reply_dir == vm_opened {
        WDIR_TO_VM
    } else {
        WDIR_FROM_VM
    };
    (port, dir, WFLAG_VIA_CT)
}

/// Bridged frames: the VM's MAC as source or destination.
#[inline(always)]
fn by_mac(skb: u64, head: u64, cfg: &WatchConfig) -> Option<(u32, u8, u8)> {
    let mh = read::<u16>(skb + cfg.skb_mac_header_off as u64);
    if mh == HEADER_UNSET {
        return None;
    }
    let eth = read::<[u8; 12]>(head + mh as u64);
    let dst = [eth[0], eth[1], eth[2], eth[3], eth[4], eth[5]];
    let src = [eth[6], eth[7], eth[8], eth[9], eth[10], eth[11]];
    if let Some(port) = unsafe { VM_MACS.get(mac_key(src)) } {
        return Some((*port, WDIR_FROM_VM, 0));
    }
    let port = unsafe { VM_MACS.get(mac_key(dst)) }?;
    Some((*port, WDIR_TO_VM, 0))
}

#[inline(always)]
fn read<T: Default>(addr: u64) -> T {
    unsafe { bpf_probe_read_kernel(addr as *const T) }.unwrap_or_default()
}
