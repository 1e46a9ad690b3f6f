//! Types shared by the kernel programs and the `pathtrace` binary.
//!
//! This is the one source of truth for the wire format: every struct here is
//! `#[repr(C)]`, has no implicit padding and its size is checked at compile time,
//! because the kernel side writes the bytes and the user side reads them back.
#![no_std]

/// Bumped whenever a layout below changes; user space refuses a mismatching object.
pub const WIRE_VERSION: u32 = 2;

/// Names of the maps and programs, so both sides spell them the same way.
pub mod names {
    pub const EVENTS: &str = "EVENTS";
    pub const TRACKED: &str = "TRACKED";
    pub const REQ_IDS: &str = "REQ_IDS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const CONFIG: &str = "CONFIG";
    pub const TC_INGRESS: &str = "pathtrace_tc_ingress";
    pub const TC_EGRESS: &str = "pathtrace_tc_egress";
    pub const KFREE_SKB: &str = "pathtrace_kfree_skb";
    pub const CONSUME_SKB: &str = "pathtrace_consume_skb";
}

/// Protocol selectors, a bit mask in [`Config::protos`].
pub const PROTO_ICMP: u32 = 1;
pub const PROTO_DNS: u32 = 2;

/// What a hook saw. Values are stable: they travel in [`Event::kind`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A TC classifier saw the packet on an interface (direction in [`Event::dir`]).
    Tc = 1,
    /// `skb:kfree_skb`: the kernel dropped the packet.
    Drop = 2,
    /// `skb:consume_skb`: the kernel freed the packet after normal processing.
    Consume = 3,
    /// The question of a DNS request, sent once when the request is first seen
    /// (a [`NameEvent`]).
    DnsName = 4,
}

impl EventKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Tc),
            2 => Some(Self::Drop),
            3 => Some(Self::Consume),
            4 => Some(Self::DnsName),
            _ => None,
        }
    }
}

/// Direction of a TC event.
pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

/// Which way a tracked packet travels: the guest's request or the answer to it.
pub const ROLE_REQUEST: u8 = 1;
pub const ROLE_REPLY: u8 = 2;

/// Bits of [`Event::flags`].
/// The skb had a route attached (`skb->_skb_refdst != 0`) when it was freed.
pub const FLAG_HAS_DST: u8 = 1;
/// The device/netns fields were read from the skb (offsets were known).
pub const FLAG_DEV_KNOWN: u8 = 2;
/// The reply is an ICMP error (e.g. time exceeded) quoting the guest's request.
pub const FLAG_ICMP_ERROR: u8 = 4;

/// The headers of one packet as the kernel programs parsed them. Addresses are kept
/// in network byte order exactly as on the wire; ports and ids in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketInfo {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    /// IP protocol number (1 ICMP, 17 UDP).
    pub proto: u8,
    pub ttl: u8,
    /// ICMP type, or 0 for UDP.
    pub icmp_type: u8,
    /// ICMP code; for a DNS response, its RCODE (0 NOERROR, 2 SERVFAIL, 3 NXDOMAIN).
    pub code: u8,
    /// ICMP echo id, or DNS transaction id.
    pub id: u16,
    /// ICMP echo sequence, or 0 for DNS.
    pub seq: u16,
    pub sport: u16,
    pub dport: u16,
    /// IP total length.
    pub ip_len: u16,
    /// IP flags and fragment offset (DF is 0x4000).
    pub frag: u16,
}

/// One record in the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Event {
    /// `bpf_ktime_get_ns()` when the hook ran.
    pub ts_ns: u64,
    /// Kernel address of the `struct sk_buff`: the key that follows one packet.
    pub skb: u64,
    /// Drop/consume location (kernel text address), 0 for TC events.
    pub location: u64,
    /// [`EventKind`] as u8.
    pub kind: u8,
    /// [`DIR_INGRESS`] or [`DIR_EGRESS`] for TC events.
    pub dir: u8,
    /// [`ROLE_REQUEST`] or [`ROLE_REPLY`].
    pub role: u8,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// Interface index: the TC hook's interface, or `skb->dev` at a free.
    pub ifindex: u32,
    /// `enum skb_drop_reason` value of the running kernel (Drop only).
    pub reason: u32,
    /// Inode number of the network namespace of `skb->dev`, 0 when unknown.
    pub netns: u32,
    /// The packet as seen at this hook (TC) or when it was first tracked (frees).
    pub pkt: PacketInfo,
}

/// Bytes of a DNS question carried by a [`NameEvent`] (wire format labels).
pub const DNS_NAME_LEN: usize = 64;

/// A DNS request's question: the common event head (kind [`EventKind::DnsName`])
/// followed by the first bytes of the question section.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NameEvent {
    pub head: Event,
    pub name: [u8; DNS_NAME_LEN],
}

/// Per-packet tracking state kept in the kernel, keyed by skb address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Tracked {
    pub pkt: PacketInfo,
    pub role: u8,
    pub flags: u8,
    pub _pad: [u8; 6],
    pub first_ts: u64,
}

/// Filter and kernel facts handed to the programs at load time (a read-only global).
/// Offsets come from the running kernel's BTF and tracefs formats; 0 means unknown.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// The guest's IPv4 address, network order bytes.
    pub vm_ip: [u8; 4],
    /// The destination the operator asked about, network order bytes.
    pub dst_ip: [u8; 4],
    /// `PROTO_*` bits to follow.
    pub protos: u32,
    /// Offset of `skb_drop_reason reason` in the `skb:kfree_skb` record.
    pub kfree_reason_off: u32,
    /// Offset of `void *location` in the `skb:kfree_skb` record.
    pub kfree_location_off: u32,
    /// Offset of `void *location` in the `skb:consume_skb` record.
    pub consume_location_off: u32,
    /// `offsetof(struct sk_buff, dev)`.
    pub skb_dev_off: u32,
    /// `offsetof(struct sk_buff, _skb_refdst)`.
    pub skb_refdst_off: u32,
    /// `offsetof(struct net_device, ifindex)`.
    pub dev_ifindex_off: u32,
    /// `offsetof(struct net_device, nd_net)` (a `possible_net_t`, first member `net`).
    pub dev_net_off: u32,
    /// `offsetof(struct net, ns) + offsetof(struct ns_common, inum)`.
    pub net_inum_off: u32,
    pub _pad: u32,
}

/// Counters the kernel keeps about itself (index into the per-CPU `COUNTERS` array).
pub const CNT_RINGBUF_FULL: u32 = 0;
pub const CNT_TRACK_FULL: u32 = 1;
pub const CNT_MAX: u32 = 4;

// The kernel writes these bytes and user space reads them: sizes must never drift
// silently, and there must be no implicit padding.
const _: () = assert!(core::mem::size_of::<PacketInfo>() == 24);
const _: () = assert!(core::mem::size_of::<Event>() == 64);
const _: () = assert!(core::mem::size_of::<Tracked>() == 40);
const _: () = assert!(core::mem::size_of::<NameEvent>() == 128);
const _: () = assert!(core::mem::size_of::<Config>() == 48);

/// Key of the `REQ_IDS` map: which request ids of the guest are being followed, so
/// that replies (possibly after NAT) can be recognised by id.
#[inline(always)]
pub const fn req_key(proto: u8, id: u16) -> u32 {
    ((proto as u32) << 16) | id as u32
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all of these are `#[repr(C)]`, made only of integers, without padding.
    unsafe impl aya::Pod for PacketInfo {}
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for NameEvent {}
    unsafe impl aya::Pod for Tracked {}
    unsafe impl aya::Pod for Config {}
}
