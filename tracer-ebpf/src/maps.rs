//! Maps and the read-only configuration shared by every program.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    Global,
};
use tracer_common::{Config, DropCount, DropKey, Event, Tracked, WatchConfig, CNT_MAX};

/// Filter and kernel offsets, written by user space at load time.
#[unsafe(no_mangle)]
pub static CONFIG: Global<Config> = Global::new(Config {
    vm_ip: [0; 4],
    dst_ip: [0; 4],
    protos: 0,
    kfree_reason_off: 0,
    kfree_location_off: 0,
    consume_location_off: 0,
    skb_dev_off: 0,
    skb_refdst_off: 0,
    dev_ifindex_off: 0,
    dev_net_off: 0,
    net_inum_off: 0,
    _pad: 0,
});

/// Events for user space. Sized by user space at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Packets being followed, keyed by skb address. LRU so a missed free can never
/// fill the map: the oldest entry makes room.
#[map]
pub static TRACKED: LruHashMap<u64, Tracked> = LruHashMap::with_max_entries(4096, 0);

/// Request ids (`req_key(proto, id)`) of the guest's flow, so replies are known by id
/// even after NAT rewrote their addresses. Value: time first seen.
#[map]
pub static REQ_IDS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(1024, 0);

/// Self-monitoring counters (`CNT_*`), per CPU so the hot path never contends.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(CNT_MAX, 0);

/// Watch mode's kernel facts, written by user space at load time.
#[unsafe(no_mangle)]
pub static WATCH_CONFIG: Global<WatchConfig> = Global::new(WatchConfig {
    netns_inum: 0,
    kfree_reason_off: 0,
    kfree_location_off: 0,
    skb_dev_off: 0,
    skb_refdst_off: 0,
    skb_len_off: 0,
    skb_head_off: 0,
    skb_protocol_off: 0,
    skb_network_header_off: 0,
    skb_mac_header_off: 0,
    skb_nfct_off: 0,
    ct_orig_src_off: 0,
    ct_reply_src_off: 0,
    dev_ifindex_off: 0,
    dev_net_off: 0,
    net_inum_off: 0,
});

/// Watch mode: drop counters per (VM port, drop point), per CPU so drops on
/// different CPUs never contend. User space sums and reads them.
#[map]
pub static DROPS: PerCpuHashMap<DropKey, DropCount> = PerCpuHashMap::with_max_entries(4096, 0);

/// Watch mode: rare examples of drops (new drop point, then rate-limited).
#[map]
pub static SAMPLES: RingBuf = RingBuf::with_byte_size(1 << 16, 0);

/// Watch mode: the VM ports being watched (ifindex → 1), kept current by user space.
#[map]
pub static VM_PORTS: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

/// Watch mode: VM IPv4 addresses (`addr_key`) → their port's ifindex.
#[map]
pub static VM_ADDRS: HashMap<u32, u32> = HashMap::with_max_entries(16384, 0);

/// Watch mode: VM MAC addresses (`mac_key`) → their port's ifindex.
#[map]
pub static VM_MACS: HashMap<u64, u32> = HashMap::with_max_entries(16384, 0);

#[inline(always)]
pub fn config() -> Config {
    CONFIG.load()
}

#[inline(always)]
pub fn count(index: u32) {
    if let Some(ptr) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *ptr += 1 };
    }
}

/// Send an event, counting (never silently losing) a full ring buffer.
#[inline(always)]
pub fn emit(event: &Event) {
    if EVENTS.output::<Event>(event, 0).is_err() {
        count(tracer_common::CNT_RINGBUF_FULL);
    }
}

#[inline(always)]
pub fn track(skb: u64, entry: &Tracked) {
    if TRACKED.insert(skb, entry, 0).is_err() {
        count(tracer_common::CNT_TRACK_FULL);
    }
}
