//! Types shared by the kernel programs and the `pathtrace` binary.
//!
//! This is the one source of truth for the wire format: every struct here is
//! `#[repr(C)]`, has no implicit padding and its size is checked at compile time,
//! because the kernel side writes the bytes and the user side reads them back.
#![no_std]

// No wire version: `tracer/build.rs` builds the eBPF object from this crate and
// embeds it in the binary, so both sides always come from the same source.

/// Map capacities, declared by the eBPF object and read back by user space
/// (what a full map means in the output).
pub mod capacity {
    /// The trace's ring buffer, in bytes (`--buffer-kb` resizes it at load).
    pub const EVENTS_BYTES: u32 = 1 << 20;
    /// Packets followed at once by their skb address.
    pub const TRACKED: u32 = 4096;
    /// Request ids (ICMP id/seq, DNS id) awaiting their reply.
    pub const REQ_IDS: u32 = 1024;
    /// Slots of the "followed recently" filter, by a hash of id and sequence
    /// (a power of two).
    pub const RECENT: u32 = 4096;
    /// Watch's drop points (VM, stage, reason, location, ...).
    pub const DROPS: u32 = 4096;
    /// Watch's sample ring buffer, in bytes.
    pub const SAMPLES_BYTES: u32 = 1 << 16;
    /// Watch's VM ports, guest addresses and guest MACs.
    pub const VM_PORTS: u32 = 4096;
    pub const VM_ADDRS: u32 = 16384;
    pub const VM_ADDRS6: u32 = 16384;
    pub const VM_MACS: u32 = 16384;
}

/// Names of the maps and programs, so both sides spell them the same way.
pub mod names {
    pub const EVENTS: &str = "EVENTS";
    pub const TRACKED: &str = "TRACKED";
    pub const REQ_IDS: &str = "REQ_IDS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const CONFIG: &str = "CONFIG";
    /// TC on the bridge, the uplink and the hops between: gated on a request
    /// of the guest being in flight (one array lookup while none is).
    pub const TC_INGRESS: &str = "pathtrace_tc_ingress";
    pub const TC_EGRESS: &str = "pathtrace_tc_egress";
    /// TC on the VM's own port: where the guest's requests are first seen and
    /// start being followed (within the `Config::max_follow` budget).
    pub const TC_PORT_INGRESS: &str = "pathtrace_tc_port_ingress";
    pub const TC_PORT_EGRESS: &str = "pathtrace_tc_port_egress";
    pub const STATE: &str = "STATE";
    pub const KFREE_SKB: &str = "pathtrace_kfree_skb";
    pub const CONSUME_SKB: &str = "pathtrace_consume_skb";
    pub const KFREE_RAW: &str = "pathtrace_kfree_raw";
    pub const CONSUME_RAW: &str = "pathtrace_consume_raw";
    /// Deep mode: one kprobe program per position of the `struct sk_buff *`
    /// argument (0..=3), each attached to the functions that take it there.
    pub const DEEP: [&str; 4] = [
        "pathtrace_deep0",
        "pathtrace_deep1",
        "pathtrace_deep2",
        "pathtrace_deep3",
    ];
    // Watch mode.
    pub const WATCH_CONFIG: &str = "WATCH_CONFIG";
    pub const WATCH_DROP: &str = "pathtrace_watch_drop";
    pub const WATCH_RAW: &str = "pathtrace_watch_raw";
    pub const DROPS: &str = "DROPS";
    pub const SAMPLES: &str = "SAMPLES";
    pub const VM_PORTS: &str = "VM_PORTS";
    pub const VM_ADDRS: &str = "VM_ADDRS";
    pub const VM_ADDRS6: &str = "VM_ADDRS6";
    pub const VM_MACS: &str = "VM_MACS";
}

const _: () = assert!(capacity::RECENT.is_power_of_two());

/// Protocol selectors, a bit mask in [`Config::protos`].
pub const PROTO_ICMP: u32 = 1;
pub const PROTO_DNS: u32 = 2;
/// A TCP service (`Config::dst_port`): connection attempts and first data segments.
pub const PROTO_TCP: u32 = 4;
/// A UDP service (`Config::dst_port`): request and response by 5-tuple.
pub const PROTO_UDP: u32 = 8;

/// Bits of [`PacketInfo::tcp_flags`] (as in the TCP header's flags byte).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;
/// DHCP (UDP 67/68), followed by transaction id (`PacketInfo::xid`).
pub const PROTO_DHCP: u32 = 16;
/// ARP who-has for `Config::dst_ip` and its answer (`PacketInfo::kind` ARP).
pub const PROTO_ARP: u32 = 32;

/// `PacketInfo::kind`: what the packet is beyond its IPv4 header fields.
pub const PKT_IP: u8 = 0;
/// An ARP packet: `saddr`/`daddr` are its sender/target protocol addresses,
/// `proto` is 0, `op` its opcode, `id`/`seq` the address asked about.
pub const PKT_ARP: u8 = 1;
/// A DHCP message (BOOTP over UDP 67/68): `xid` its transaction id (also in
/// `id`/`seq`, high/low half, the request key), `op` its message type.
pub const PKT_DHCP: u8 = 2;

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
    /// Deep mode: a kprobe on a kernel function along the path saw the packet
    /// ([`Event::location`] is the function's address; [`Event::pkt`] the packet as
    /// it is there, when its header could be read).
    Func = 5,
    /// `--pcap`: the first bytes of a followed packet at a TC hook (a
    /// [`PacketEvent`], sent right after that hook's [`EventKind::Tc`] event).
    Packet = 6,
}

impl EventKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Tc),
            2 => Some(Self::Drop),
            3 => Some(Self::Consume),
            4 => Some(Self::DnsName),
            5 => Some(Self::Func),
            6 => Some(Self::Packet),
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

/// `PacketInfo::family` and `Config::family`: which IP version the addresses are.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// An address as the wire format holds it: IPv6's 16 bytes, or IPv4's 4 in
/// bytes 0..4 and the rest zero (`family` says which).
pub type Addr = [u8; 16];

/// An IPv4 address (its wire bytes) in an [`Addr`].
#[inline(always)]
pub const fn addr4(b: [u8; 4]) -> Addr {
    let mut a = [0; 16];
    a[0] = b[0];
    a[1] = b[1];
    a[2] = b[2];
    a[3] = b[3];
    a
}

/// The headers of one packet as the kernel programs parsed them. Addresses are kept
/// in network byte order exactly as on the wire; ports and ids in host order.
/// For IPv6, `proto` is the upper-layer protocol after the extension headers,
/// `ttl` the hop limit, `ip_len` the payload length plus the 40-byte header,
/// `icmp_type`/`code` the ICMPv6 ones and `next_hop_mtu` a Packet Too Big's MTU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketInfo {
    /// Read them with [`PacketInfo::src`] and [`PacketInfo::dst`].
    pub saddr: Addr,
    pub daddr: Addr,
    /// IP protocol number (1 ICMP, 17 UDP, 58 ICMPv6).
    pub proto: u8,
    pub ttl: u8,
    /// ICMP type, or 0 for UDP.
    pub icmp_type: u8,
    /// ICMP code; for a DNS response, its RCODE (0 NOERROR, 2 SERVFAIL, 3 NXDOMAIN).
    pub code: u8,
    /// ICMP echo id, or DNS transaction id; for a TCP/UDP service flow the
    /// service's port (the request's destination port, the reply's source port).
    pub id: u16,
    /// ICMP echo sequence, or 0 for DNS; for a TCP/UDP service flow the guest's
    /// port (as the packet has it here: MASQUERADE may change it).
    pub seq: u16,
    pub sport: u16,
    pub dport: u16,
    /// IP total length.
    pub ip_len: u16,
    /// IP flags and fragment offset (DF is 0x4000).
    pub frag: u16,
    /// TCP flags (`TCP_*`), 0 for other protocols.
    pub tcp_flags: u8,
    /// An ICMP error answering a TCP/UDP service flow: the quoted packet's
    /// protocol (the flow's), 0 otherwise.
    pub quoted_proto: u8,
    /// TCP: bytes of payload after the TCP header (0 for a bare SYN/ACK/RST).
    pub payload_len: u16,
    /// An ICMP "fragmentation needed" (type 3 code 4): the next-hop MTU the
    /// sender asks for (RFC 1191), 0 otherwise.
    pub next_hop_mtu: u16,
    pub _pad_flow2: u16,
    /// `PKT_*`.
    pub kind: u8,
    /// ARP opcode (1 request, 2 reply), or the DHCP message type (option 53:
    /// 1 DISCOVER, 2 OFFER, 3 REQUEST, 5 ACK, 6 NAK; 0 not found).
    pub op: u8,
    /// `FAMILY_V4` or `FAMILY_V6` (0, as in a zeroed record: IPv4).
    pub family: u8,
    pub _pad: u8,
    /// DHCP transaction id (0 otherwise).
    pub xid: u32,
}

impl PacketInfo {
    pub fn is_v6(&self) -> bool {
        self.family == FAMILY_V6
    }

    /// The source address, whatever the family.
    pub fn src(&self) -> core::net::IpAddr {
        self.addr(&self.saddr)
    }

    /// The destination address, whatever the family.
    pub fn dst(&self) -> core::net::IpAddr {
        self.addr(&self.daddr)
    }

    fn addr(&self, b: &Addr) -> core::net::IpAddr {
        if self.is_v6() {
            core::net::IpAddr::V6(core::net::Ipv6Addr::from(*b))
        } else {
            core::net::IpAddr::V4(core::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        }
    }

    /// The source as IPv4 (its first four bytes): for what reads IPv4 only.
    pub fn src_v4(&self) -> core::net::Ipv4Addr {
        let b = &self.saddr;
        core::net::Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// The destination as IPv4 (its first four bytes).
    pub fn dst_v4(&self) -> core::net::Ipv4Addr {
        let b = &self.daddr;
        core::net::Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// Both addresses and the family they imply (both must be of one family;
    /// a mixed pair is taken as the source's).
    pub fn set_addrs(&mut self, src: core::net::IpAddr, dst: core::net::IpAddr) {
        self.family = match src {
            core::net::IpAddr::V4(_) => FAMILY_V4,
            core::net::IpAddr::V6(_) => FAMILY_V6,
        };
        self.saddr = addr_bytes(src);
        self.daddr = addr_bytes(dst);
    }

    /// The same packet with these addresses (tests, fixtures).
    pub fn with_addrs(mut self, src: core::net::IpAddr, dst: core::net::IpAddr) -> Self {
        self.set_addrs(src, dst);
        self
    }
}

/// An address in the wire format's 16 bytes.
pub fn addr_bytes(ip: core::net::IpAddr) -> Addr {
    match ip {
        core::net::IpAddr::V4(a) => addr4(a.octets()),
        core::net::IpAddr::V6(a) => a.octets(),
    }
}

/// The family byte of an address.
pub fn family_of(ip: core::net::IpAddr) -> u8 {
    match ip {
        core::net::IpAddr::V4(_) => FAMILY_V4,
        core::net::IpAddr::V6(_) => FAMILY_V6,
    }
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
// The eBPF side masks lengths with DNS_NAME_LEN - 1.
const _: () = assert!(DNS_NAME_LEN.is_power_of_two());

/// A DNS request's question: the common event head (kind [`EventKind::DnsName`])
/// followed by the first bytes of the question section.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NameEvent {
    pub head: Event,
    pub name: [u8; DNS_NAME_LEN],
}

/// Bytes of a followed packet copied for `--pcap` (from its link-layer header):
/// enough for Ethernet, IP, ICMP/UDP headers and a DNS question.
pub const SNAP_LEN: usize = 256;
// The eBPF side masks lengths with SNAP_LEN - 1.
const _: () = assert!(SNAP_LEN.is_power_of_two());

/// A followed packet's first bytes at a TC hook: the hook's event head (kind
/// [`EventKind::Packet`]), how many bytes were copied, the packet's length, and
/// the bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PacketEvent {
    pub head: Event,
    /// Bytes of `data` that hold the packet (at most [`SNAP_LEN`]).
    pub cap_len: u32,
    /// The packet's whole length at the hook (`skb->len`, link layer included).
    pub wire_len: u32,
    pub data: [u8; SNAP_LEN],
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
    /// The guest's address, network order bytes (an [`Addr`]: IPv4 in 0..4).
    pub vm_ip: Addr,
    /// The destination the operator asked about, network order bytes.
    pub dst_ip: Addr,
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
    /// `offsetof(struct sk_buff, head)` (deep mode reads the packet through it).
    pub skb_head_off: u32,
    /// `offsetof(struct sk_buff, network_header)` (a u16 offset from `head`).
    pub skb_nh_off: u32,
    /// `--pcap`: 1 to copy each followed packet's first bytes at every TC hook
    /// ([`PacketEvent`]); 0 (the default) costs nothing more.
    pub capture: u32,
    /// Requests followed at once, at most (from `--count`, small): a request
    /// seen while this many are being followed is counted (`CNT_SKIPPED`), not
    /// followed, so a flooding guest costs about what a quiet one does.
    pub max_follow: u32,
    pub _pad: u32,
    /// `--proto tcp|udp`: the service's port (host order), 0 otherwise.
    pub dst_port: u16,
    /// `FAMILY_V4` or `FAMILY_V6`: what `vm_ip` and `dst_ip` are.
    pub family: u8,
    pub _pad_port: [u8; 5],
}

/// Counters the kernel keeps about itself (index into the per-CPU `COUNTERS` array).
pub const CNT_RINGBUF_FULL: u32 = 0;
pub const CNT_TRACK_FULL: u32 = 1;
/// Watch mode: a drop sample did not fit in the `SAMPLES` ring buffer.
pub const CNT_SAMPLES_LOST: u32 = 2;
/// Watch mode: a new drop point did not fit in the `DROPS` map (its drops uncounted).
pub const CNT_DROPS_MAP_FULL: u32 = 3;
/// Watch mode: drops on this host's namespace that belong to no watched VM.
pub const CNT_UNATTRIBUTED: u32 = 4;
/// Trace mode: a request of the guest not followed because `max_follow` were.
pub const CNT_SKIPPED: u32 = 5;
pub const CNT_MAX: u32 = 8;

// The kernel writes these bytes and user space reads them: sizes must never drift
// silently, and there must be no implicit padding.
const _: () = assert!(core::mem::size_of::<PacketInfo>() == 64);
const _: () = assert!(core::mem::size_of::<Event>() == 104);
const _: () = assert!(core::mem::size_of::<Tracked>() == 80);
const _: () = assert!(core::mem::size_of::<NameEvent>() == 168);
const _: () = assert!(core::mem::size_of::<Config>() == 96);
const _: () = assert!(core::mem::size_of::<PacketEvent>() == 104 + 8 + SNAP_LEN);

pub use watch::*;

/// Watch mode: drop counters aggregated in the kernel, per VM port and drop point.
mod watch {
    /// Traffic classes counted separately (`DropKey::class`). Only as much is parsed
    /// as telling these apart needs.
    pub const CLASS_OTHER: u8 = 0;
    pub const CLASS_ICMP: u8 = 1;
    pub const CLASS_DNS: u8 = 2;
    pub const CLASS_TCP: u8 = 3;
    pub const CLASS_UDP: u8 = 4;
    pub const CLASS_ARP: u8 = 5;
    /// UDP between DHCP's ports (67/68): a guest asking for an address, or the
    /// server's answer (attributed by MAC: the guest may have no address yet).
    pub const CLASS_DHCP: u8 = 6;

    /// Which way the dropped packet was going relative to the VM (`DropKey::dir`).
    pub const WDIR_UNKNOWN: u8 = 0;
    pub const WDIR_FROM_VM: u8 = 1;
    pub const WDIR_TO_VM: u8 = 2;

    /// Bits of `DropKey::flags`.
    /// The skb had a route (`_skb_refdst`) when dropped: past the routing decision.
    pub const WFLAG_HAS_DST: u8 = 1;
    /// Attributed through conntrack (the packet's addresses were NAT-translated).
    pub const WFLAG_VIA_CT: u8 = 2;

    /// One drop point of one VM: the key of the per-CPU `DROPS` hash.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct DropKey {
        /// Kernel text address that dropped the packet.
        pub location: u64,
        /// Interface index of the VM's port.
        pub port: u32,
        /// Interface index of `skb->dev` when dropped (0 unknown).
        pub dev: u32,
        /// `enum skb_drop_reason` value of the running kernel.
        pub reason: u32,
        /// `CLASS_*`.
        pub class: u8,
        /// `WDIR_*`.
        pub dir: u8,
        /// `WFLAG_*`.
        pub flags: u8,
        pub _pad: u8,
    }

    /// Per-CPU counts of one drop point.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default)]
    pub struct DropCount {
        pub packets: u64,
        pub bytes: u64,
        /// `bpf_ktime_get_ns()` of the last drop on this CPU.
        pub last_ns: u64,
        /// When this CPU last sent a sample for this key (rate limit).
        pub sampled_ns: u64,
    }

    /// An example of a drop point, sent when the key is new and then at most once a
    /// second per CPU, so user space can show which flow is hit.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default)]
    pub struct DropSample {
        pub key: DropKey,
        pub ts_ns: u64,
        pub pkt: super::PacketInfo,
    }

    /// Facts for the watch program, written by user space at load time. Offsets come
    /// from BTF and tracefs; 0 means unknown and disables what needs them.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default)]
    pub struct WatchConfig {
        /// Only drops in this network namespace count (the one pathtrace runs in).
        pub netns_inum: u32,
        pub kfree_reason_off: u32,
        pub kfree_location_off: u32,
        pub skb_dev_off: u32,
        pub skb_refdst_off: u32,
        pub skb_len_off: u32,
        pub skb_head_off: u32,
        pub skb_protocol_off: u32,
        pub skb_network_header_off: u32,
        pub skb_mac_header_off: u32,
        /// `offsetof(struct sk_buff, _nfct)`: conntrack entry | ctinfo.
        pub skb_nfct_off: u32,
        /// Offset in `struct nf_conn` of the original tuple's source address.
        pub ct_orig_src_off: u32,
        /// Offset in `struct nf_conn` of the reply tuple's source address.
        pub ct_reply_src_off: u32,
        pub dev_ifindex_off: u32,
        pub dev_net_off: u32,
        pub net_inum_off: u32,
    }

    /// Key of `VM_MACS`: a MAC address in the low six bytes.
    #[inline(always)]
    pub const fn mac_key(mac: [u8; 6]) -> u64 {
        u64::from_le_bytes([mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], 0, 0])
    }

    /// Key of `VM_ADDRS`: an IPv4 address as its wire bytes (the first four
    /// of an [`super::Addr`]).
    #[inline(always)]
    pub const fn addr_key(addr: [u8; 4]) -> u32 {
        u32::from_le_bytes(addr)
    }

    const _: () = assert!(core::mem::size_of::<DropKey>() == 24);
    const _: () = assert!(core::mem::size_of::<DropCount>() == 32);
    const _: () = assert!(core::mem::size_of::<DropSample>() == 96);
    const _: () = assert!(core::mem::size_of::<WatchConfig>() == 64);
}

/// Key of the `REQ_IDS` map: which requests of the guest are being followed, so
/// that replies (possibly after NAT) can be recognised by id. ICMP echoes carry
/// their sequence number too: a ping keeps one id for all its echoes, and only
/// the replies to the echoes being followed are wanted (DNS: `seq` is 0). The
/// family keeps an IPv4 and an IPv6 request with the same id apart (addresses
/// cannot be part of it: NAT rewrites them).
#[inline(always)]
pub const fn req_key(family: u8, proto: u8, id: u16, seq: u16) -> u64 {
    ((family as u64) << 40) | ((proto as u64) << 32) | ((id as u64) << 16) | seq as u64
}

/// Slots of the trace mode's `STATE` array (u64 each): what lets the hooks off
/// the VM's port do nothing while no request of the guest is in flight, and
/// bounds how many are followed at once.
pub mod state {
    /// Followed packets (TRACKED entries): inserts minus removals. LRU evictions
    /// make it drift up, never down, so zero is exact.
    pub const INFLIGHT: u32 = 0;
    /// `bpf_ktime_get_ns()` of the last request that started being followed.
    pub const LAST_REQUEST: u32 = 1;
    /// Requests that started being followed (the kernel counts up).
    pub const STARTED: u32 = 2;
    /// Of those, how many are done (written by user space only): in flight is
    /// `STARTED - FINISHED`.
    pub const FINISHED: u32 = 3;
    /// User space writes here the `LAST_REQUEST` whose trace, and every one
    /// before it, is decided: while the two are equal nothing is in flight and
    /// the hooks off the port return at once ("disarmed"). A new request
    /// changes `LAST_REQUEST` before its packet leaves the port, which re-arms.
    pub const DISARMED: u32 = 4;
    pub const LEN: u32 = 5;
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all of these are `#[repr(C)]`, made only of integers, without padding.
    unsafe impl aya::Pod for PacketInfo {}
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for NameEvent {}
    unsafe impl aya::Pod for PacketEvent {}
    unsafe impl aya::Pod for Tracked {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for DropKey {}
    unsafe impl aya::Pod for DropCount {}
    unsafe impl aya::Pod for DropSample {}
    unsafe impl aya::Pod for WatchConfig {}
}
