//! Maps and the read-only configuration shared by every program.

use aya_ebpf::{
    helpers::bpf_ktime_get_coarse_ns,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    Global,
};
use tracer_common::{
    capacity,
    state::{DISARMED, FINISHED, INFLIGHT, LAST_REQUEST, STARTED},
    Config, DropCount, DropKey, Event, PacketInfo, Tracked, WatchConfig, CNT_MAX,
};

/// Filter and kernel offsets, written by user space at load time.
#[unsafe(no_mangle)]
pub static CONFIG: Global<Config> = Global::new(Config {
    vm_ip: [0; 16],
    dst_ip: [0; 16],
    protos: 0,
    kfree_reason_off: 0,
    kfree_location_off: 0,
    consume_location_off: 0,
    skb_dev_off: 0,
    skb_refdst_off: 0,
    dev_ifindex_off: 0,
    dev_net_off: 0,
    net_inum_off: 0,
    skb_head_off: 0,
    skb_nh_off: 0,
    capture: 0,
    max_follow: 0,
    _pad: 0,
    dst_port: 0,
    family: 0,
    _pad_port: [0; 5],
});

/// Events for user space. Sized by user space at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(capacity::EVENTS_BYTES, 0);

/// Packets being followed, keyed by skb address. LRU so a missed free can never
/// fill the map: the oldest entry makes room.
#[map]
pub static TRACKED: LruHashMap<u64, Tracked> = LruHashMap::with_max_entries(capacity::TRACKED, 0);

/// Global facts that let the hooks skip map lookups while nothing is being
/// followed (the common case when the traced VM is quiet and others are busy),
/// and bound how much is followed (see `tracer_common::state`). An array: the
/// verifier inlines its lookups (a bounds check and an add, no helper call).
#[map]
pub static STATE: Array<u64> = Array::with_max_entries(tracer_common::state::LEN, 0);
/// How long after the last request replies to it are still looked for.
const REPLY_WINDOW_NS: u64 = 30_000_000_000;

/// Requests being followed (`req_key(family, proto, id, seq)`), so replies are known by
/// id even after NAT rewrote their addresses. Value: time first seen.
#[map]
pub static REQ_IDS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(capacity::REQ_IDS, 0);

/// When a request with this hash of its id and sequence (`recent_slot`) last
/// started being followed. A first test, one inlined array load, before any hash
/// lookup for an echo, echo reply or DNS message off the VM's port: a flood's
/// packets (different sequence numbers, or long after) pass it only by a rare
/// collision, and then cost the lookup they would have cost anyway.
#[map]
pub static RECENT: Array<u64> = Array::with_max_entries(capacity::RECENT, 0);

#[inline(always)]
fn recent_slot(id: u16, seq: u16) -> u32 {
    ((id ^ seq) as u32) & (capacity::RECENT - 1)
}

/// A request with this id and sequence started being followed.
#[inline(always)]
pub fn note_followed(id: u16, seq: u16, now: u64) {
    if let Some(ptr) = RECENT.get_ptr_mut(recent_slot(id, seq)) {
        // SAFETY: a plain store; a racing CPU writes a similar time.
        unsafe { *ptr = now };
    }
}

/// A request with this id and sequence may be being followed: one started
/// within the reply window. Never false for one that is.
#[inline(always)]
pub fn maybe_followed(id: u16, seq: u16) -> bool {
    let at = RECENT.get(recent_slot(id, seq)).copied().unwrap_or(0);
    at != 0 && within_reply_window(at)
}

/// `at` (a `bpf_ktime_get_ns` time) lies within the reply window of now. Asked
/// for a flood's packets at every hook, so it reads the coarse clock (a stored
/// value, no clock read; the fine one costs tens of ns in a VM). The coarse clock
/// lags by up to a tick: a time a little ahead of it is recent too.
#[inline(always)]
fn within_reply_window(at: u64) -> bool {
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    (now.wrapping_sub(at) as i64) < REPLY_WINDOW_NS as i64
}

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

/// Watch mode: addresses of `struct net` learnt from drops (0 until seen): the
/// watched namespace's and the last other one's, so a drop elsewhere is told
/// apart by a compare (see `watch::in_watched_netns`).
#[map]
pub static WATCH_NET: Array<u64> = Array::with_max_entries(2, 0);

/// Watch mode: drop counters per (VM port, drop point), per CPU so drops on
/// different CPUs never contend. User space sums and reads them.
#[map]
pub static DROPS: PerCpuHashMap<DropKey, DropCount> =
    PerCpuHashMap::with_max_entries(capacity::DROPS, 0);

/// Watch mode: rare examples of drops (new drop point, then rate-limited).
#[map]
pub static SAMPLES: RingBuf = RingBuf::with_byte_size(capacity::SAMPLES_BYTES, 0);

/// Watch mode: the VM ports being watched (ifindex → 1), kept current by user space.
#[map]
pub static VM_PORTS: HashMap<u32, u8> = HashMap::with_max_entries(capacity::VM_PORTS, 0);

/// Watch mode: VM IPv4 addresses (`addr_key`) → their port's ifindex.
#[map]
pub static VM_ADDRS: HashMap<u32, u32> = HashMap::with_max_entries(capacity::VM_ADDRS, 0);

/// Watch mode: VM IPv6 addresses (their 16 wire bytes) → their port's ifindex.
/// A map of its own rather than one 16-byte key for both families: an IPv4
/// drop (most drops) keeps hashing a 4-byte key and never builds a wider one.
#[map]
pub static VM_ADDRS6: HashMap<[u8; 16], u32> = HashMap::with_max_entries(capacity::VM_ADDRS6, 0);

/// Watch mode: VM MAC addresses (`mac_key`) → their port's ifindex.
#[map]
pub static VM_MACS: HashMap<u64, u32> = HashMap::with_max_entries(capacity::VM_MACS, 0);

/// The configuration, read in place. `Global::load` copies all of it (a
/// volatile read) at every call, onto a stack of 512 bytes; here only the
/// pointer is laundered through a volatile read, so the compiler cannot fold
/// the fields to their zero initial values, and each field read is one load
/// from the frozen global.
#[inline(always)]
pub fn config() -> &'static Config {
    let at = &CONFIG as *const Global<Config> as *const Config;
    // SAFETY: `Global` is `repr(transparent)` over the value, which the loader
    // initialises and never changes while the programs run.
    unsafe { &*core::ptr::read_volatile(&at) }
}

/// Two addresses of the wire format are equal. Written out word by word: the
/// BPF target has no `memcmp`, and an IPv4 address usually differs in the
/// first word already. Both sides are fields of 4-aligned structs.
#[inline(always)]
pub fn same_addr(a: &tracer_common::Addr, b: &tracer_common::Addr) -> bool {
    let w = |x: &tracer_common::Addr, i: usize| {
        u32::from_ne_bytes([x[i], x[i + 1], x[i + 2], x[i + 3]])
    };
    w(a, 0) == w(b, 0) && w(a, 4) == w(b, 4) && w(a, 8) == w(b, 8) && w(a, 12) == w(b, 12)
}

#[inline(always)]
pub fn count(index: u32) {
    if let Some(ptr) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *ptr += 1 };
    }
}

/// When to wake the reader: a wakeup per event costs the kernel an irq_work each,
/// which under a flood of followed packets is most of the cost. Events queue
/// silently (user space also drains every tick) and the reader is woken once
/// enough has piled up to matter.
#[inline(always)]
pub fn wakeup_flags() -> u64 {
    use aya_ebpf::bindings::{
        BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE,
    };
    let size = EVENTS.query(BPF_RB_RING_SIZE as u64);
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= size / WAKE_AT_FRACTION {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Wake the reader once the ring is this fraction (1/N) full.
const WAKE_AT_FRACTION: u64 = 16;

/// Send an event, counting (never silently losing) a full ring buffer.
#[inline(always)]
pub fn emit(event: &Event) {
    if EVENTS.output::<Event>(event, wakeup_flags()).is_err() {
        count(tracer_common::CNT_RINGBUF_FULL);
    }
}

#[inline(always)]
fn state_add(index: u32, delta: u64) {
    if let Some(ptr) = STATE.get_ptr_mut(index) {
        atomic_add(ptr, delta);
    }
}

/// `*ptr += delta` atomically: a u64 slot of an array map, shared by all CPUs.
#[inline(always)]
fn atomic_add(ptr: *mut u64, delta: u64) {
    // SAFETY: `ptr` is a map value the verifier checked; the BPF atomic add
    // (core's atomics are not available for the BPF target).
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({p} + 0) += {d}",
            p = in(reg) ptr,
            d = in(reg) delta,
        )
    };
}

/// How many followed packets' skb addresses fall in each slot (`hint_slot`):
/// while anything is followed, the free tracepoints (every freed skb of the
/// host) and the hooks off the port ask for a packet's tracking entry, and an
/// inlined array load answers "not followed" for nearly all of them before the
/// hash lookup (an LRU lookup: hashing, a bucket walk, a reference bit).
/// A count is raised on every insert and lowered on every removal that found
/// its entry, so it is never below the slot's real entries (an entry the LRU
/// evicts, or an insert replacing one, leaves it too high: one lookup more).
#[map]
pub static TRACKED_HINT: Array<u64> = Array::with_max_entries(TRACKED_HINT_SLOTS, 0);
/// A power of two, well above the packets followed at once.
const TRACKED_HINT_SLOTS: u32 = 4096;

/// skbs come from a slab: the low bits are alignment, the next ones vary.
#[inline(always)]
fn hint_slot(skb: u64) -> u32 {
    ((skb >> 8) ^ (skb >> 20)) as u32 & (TRACKED_HINT_SLOTS - 1)
}

/// One slot per CPU through which a TC program turns its context pointer (the
/// skb's address, the tracking key) into a plain number: the verifier forbids
/// arithmetic such as `hint_slot` on a pointer, but a value read back from a map
/// is a number (storing a pointer there is allowed to root, like the key).
#[map]
static SCRATCH: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// `ptr` as a number (0 if the scratch slot were missing, which it never is).
#[inline(always)]
pub fn as_number(ptr: u64) -> u64 {
    let Some(slot) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's own slot; volatile so the compiler keeps the round trip.
    unsafe {
        core::ptr::write_volatile(slot, ptr);
        core::ptr::read_volatile(slot)
    }
}

#[inline(always)]
fn hint_add(skb: u64, delta: u64) {
    if let Some(ptr) = TRACKED_HINT.get_ptr_mut(hint_slot(skb)) {
        atomic_add(ptr, delta);
    }
}

/// Where a tracking entry is put together before it is inserted: a map value
/// may be the value of an insert, and this one costs no stack (see `track`).
#[map]
static TRACK_SCRATCH: PerCpuArray<Tracked> = PerCpuArray::with_max_entries(1, 0);

/// Start following a packet.
#[inline(always)]
pub fn track(skb: u64, pkt: &PacketInfo, role: u8, flags: u8, now: u64) {
    let Some(slot) = TRACK_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's own slot, written whole before it is read.
    let entry: &Tracked = unsafe {
        (*slot).pkt = *pkt;
        (*slot).role = role;
        (*slot).flags = flags;
        (*slot)._pad = [0; 6];
        (*slot).first_ts = now;
        &*slot
    };
    // By reference: the value is copied from the map slot, not the stack.
    if TRACKED.insert(skb, entry, 0).is_err() {
        count(tracer_common::CNT_TRACK_FULL);
    } else {
        hint_add(skb, 1);
        state_add(INFLIGHT, 1);
    }
}

/// Stop following a packet.
#[inline(always)]
pub fn untrack(skb: u64) {
    if TRACKED.remove(skb).is_ok() {
        hint_add(skb, u64::MAX); // wrapping: minus one
        state_add(INFLIGHT, u64::MAX);
    }
}

/// Some packet is being followed right now.
#[inline(always)]
pub fn following() -> bool {
    STATE.get(INFLIGHT).copied().unwrap_or(1) != 0
}

/// The guest sent a request since tracing started.
#[inline(always)]
pub fn requests_seen() -> bool {
    STATE.get(LAST_REQUEST).copied().unwrap_or(1) != 0
}

/// `skb` may be followed: something is, in its hint slot. Never false for
/// one that is; two inlined array loads.
#[inline(always)]
pub fn maybe_tracked(skb: u64) -> bool {
    following() && TRACKED_HINT.get(hint_slot(skb)).copied().unwrap_or(1) != 0
}

/// The tracking entry of `skb`, without a lookup while nothing is followed or
/// no followed packet shares its hint slot. In place in the map (a copy would
/// cost 80 bytes of BPF stack).
#[inline(always)]
pub fn tracked(skb: u64) -> Option<&'static Tracked> {
    if !maybe_tracked(skb) {
        return None;
    }
    unsafe { TRACKED.get(skb) }
}

#[inline(always)]
fn state(index: u32) -> u64 {
    STATE.get(index).copied().unwrap_or(0)
}

/// A request of the guest is in flight: the hooks off the VM's port have work.
/// Two inlined array loads; see `tracer_common::state::DISARMED`.
#[inline(always)]
pub fn armed() -> bool {
    state(LAST_REQUEST) != state(DISARMED)
}

/// Fewer than `max` requests are being followed (0: no bound).
#[inline(always)]
pub fn budget_left(max: u32) -> bool {
    max == 0 || state(STARTED).wrapping_sub(state(FINISHED)) < max as u64
}

/// Start following one more request if fewer than `max` are (0: no bound).
/// Two CPUs racing for the last slot may both take it: the bound is exact up to
/// requests arriving in the same instant on different CPUs.
#[inline(always)]
pub fn take_slot(max: u32) -> bool {
    if !budget_left(max) {
        return false;
    }
    state_add(STARTED, 1);
    true
}

#[inline(always)]
pub fn note_request(now: u64) {
    if let Some(ptr) = STATE.get_ptr_mut(LAST_REQUEST) {
        // SAFETY: a plain store; a racing CPU writes a similar time.
        unsafe { *ptr = now };
    }
}

/// A request was seen recently enough for a reply to it to arrive now.
#[inline(always)]
pub fn request_recent() -> bool {
    let last = STATE.get(LAST_REQUEST).copied().unwrap_or(0);
    last != 0 && within_reply_window(last)
}
