//! DHCP and ARP, for `--proto dhcp` and `--proto arp`: the parsing and the
//! "is this the traced flow" tests. Only reached when the operator asked for
//! one of them (a compare of the read-only config otherwise).

use aya_ebpf::programs::TcContext;
use tracer_common::{addr4, PacketInfo, FAMILY_V4, PKT_ARP, PKT_DHCP};

pub const DHCP_SERVER_PORT: u16 = 67;
pub const DHCP_CLIENT_PORT: u16 = 68;
const ETH_P_ARP: u16 = 0x0806;
pub const ARP_REQUEST: u8 = 1;
pub const ARP_REPLY: u8 = 2;
/// BOOTP `op`: a client's message (the DHCP message type says which).
const BOOTREQUEST: u8 = 1;
/// The options start after the fixed BOOTP header (236 bytes) and the magic cookie.
const DHCP_OPTIONS: usize = 240;
/// Option 53, DHCP message type.
const OPT_MSG_TYPE: u8 = 53;
/// Options looked at before giving up on the message type: clients and servers
/// put it first or nearly so.
const MAX_OPTIONS: usize = 8;

/// A UDP packet between DHCP's ports (either way; relays use 67 both ends).
#[inline(always)]
pub fn is_dhcp_ports(sport: u16, dport: u16) -> bool {
    (sport == DHCP_CLIENT_PORT || sport == DHCP_SERVER_PORT)
        && (dport == DHCP_CLIENT_PORT || dport == DHCP_SERVER_PORT)
}

/// Fill `info` with the DHCP message's transaction id and type; the UDP header
/// is at `l4_off`. The xid is also the request key (`id`/`seq`).
#[inline(always)]
pub fn fill_dhcp(ctx: &TcContext, info: &mut PacketInfo, l4_off: usize) -> Option<()> {
    let head: [u8; 8] = ctx.load(l4_off + 8).ok()?;
    let xid = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    info.kind = PKT_DHCP;
    info.xid = xid;
    info.id = (xid >> 16) as u16;
    info.seq = xid as u16;
    info.op = message_type(ctx, l4_off + 8 + DHCP_OPTIONS);
    // Which side sent it, for the filter: a client's message or a server's.
    info.code = head[0];
    Some(())
}

/// The DHCP message type from the options at `off` (0 when not among the first
/// few options).
#[inline(always)]
fn message_type(ctx: &TcContext, mut off: usize) -> u8 {
    for _ in 0..MAX_OPTIONS {
        let Ok(opt) = ctx.load::<[u8; 3]>(off) else {
            return 0;
        };
        match opt[0] {
            0 => off += 1,
            255 => return 0,
            OPT_MSG_TYPE => return opt[2],
            _ => off += 2 + opt[1] as usize,
        }
    }
    0
}

/// A client's message (DISCOVER, REQUEST, ...), by BOOTP op (kept in `code`).
#[inline(always)]
pub fn is_client_message(pkt: &PacketInfo) -> bool {
    pkt.kind == PKT_DHCP && pkt.code == BOOTREQUEST
}

/// An ARP packet (untagged Ethernet): sender/target protocol addresses in
/// `saddr`/`daddr`, the opcode in `op`, and the address asked about (the
/// target of a request, the sender of a reply) as the request key.
#[inline(always)]
pub fn parse_arp(ctx: &TcContext, info: &mut PacketInfo) -> Option<usize> {
    let ethertype = u16::from_be(ctx.load::<u16>(12).ok()?);
    if ethertype != ETH_P_ARP {
        return None;
    }
    // htype(2) ptype(2) hlen plen op(2) sha(6) spa(4) tha(6) tpa(4)
    let a: [u8; 28] = ctx.load(14).ok()?;
    if a[2..4] != [0x08, 0x00] || a[4] != 6 || a[5] != 4 {
        return None;
    }
    let op = a[7];
    let spa = [a[14], a[15], a[16], a[17]];
    let tpa = [a[24], a[25], a[26], a[27]];
    let asked = if op == ARP_REPLY { spa } else { tpa };
    *info = PacketInfo {
        saddr: addr4(spa),
        daddr: addr4(tpa),
        family: FAMILY_V4,
        kind: PKT_ARP,
        op,
        id: u16::from_be_bytes([asked[0], asked[1]]),
        seq: u16::from_be_bytes([asked[2], asked[3]]),
        ..PacketInfo::default()
    };
    Some(14)
}
