//! `--pcap FILE`: every followed packet at every hop where it was seen, as
//! pcapng — one interface block per hop device (its name, and its network
//! namespace in the description), a packet comment naming the request and the
//! hop on each packet, and the verdict (stage, reason, rule) on the packet where
//! its request's fate was decided: the last place the dying packet was seen.
//!
//! The kernel copies the first `SNAP_LEN` bytes of a followed packet at each TC
//! hook only when `--pcap` is given (`Config::capture`), so plain tracing costs
//! nothing more.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    path::Path,
    time::Duration,
};

use anyhow::{Context, Result};
use pcap_file::{
    pcapng::{
        blocks::{
            enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
            section_header::{SectionHeaderBlock, SectionHeaderOption},
        },
        PcapNgWriter,
    },
    DataLink, Endianness,
};
use tracer_common::{PacketEvent, DIR_INGRESS, ROLE_REPLY, ROLE_REQUEST, SNAP_LEN};

use crate::output::{Direction, Outcome, Verdict};

/// At most this many packets are kept (about 30 MB): a trace of a flood is
/// watch's job; past it, packets are counted, not kept.
const MAX_PACKETS: usize = 100_000;

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;

/// Which request (and which way) a packet belongs to: protocol, id, ICMP seq.
type FlowKey = (u8, u8, u16, u16);

fn key(role: u8, proto: u8, id: u16, seq: u16) -> FlowKey {
    // ICMPv6 is ICMP here: a verdict names an echo by id and sequence alone.
    let proto = if proto == IPPROTO_ICMPV6 {
        IPPROTO_ICMP
    } else {
        proto
    };
    // A DNS exchange is one id; the seq field means nothing there.
    let seq = if proto == IPPROTO_UDP { 0 } else { seq };
    (role, proto, id, seq)
}

struct Captured {
    ts_ns: u64,
    ifindex: u32,
    ingress: bool,
    flow: FlowKey,
    wire_len: u32,
    data: Vec<u8>,
}

/// A hop device as the capture names it.
pub struct Device {
    pub ifindex: u32,
    pub name: String,
    /// The network namespace it lives in, e.g. `net:[4026531840]`.
    pub netns: String,
}

#[derive(Default)]
pub struct Capture {
    packets: Vec<Captured>,
    /// Packets not kept (over [`MAX_PACKETS`]).
    pub dropped: usize,
    verdicts: HashMap<FlowKey, String>,
}

impl Capture {
    pub fn on_packet(&mut self, ev: &PacketEvent) {
        if self.packets.len() >= MAX_PACKETS {
            self.dropped += 1;
            return;
        }
        let h = &ev.head;
        let len = (ev.cap_len as usize).min(SNAP_LEN);
        self.packets.push(Captured {
            ts_ns: h.ts_ns,
            ifindex: h.ifindex,
            ingress: h.dir == DIR_INGRESS,
            flow: key(h.role, h.pkt.proto, h.pkt.id, h.pkt.seq),
            wire_len: ev.wire_len,
            data: ev.data[..len].to_vec(),
        });
    }

    /// Remember a verdict; it becomes the comment of the last packet seen of the
    /// request (or reply) whose fate it tells.
    pub fn on_verdict(&mut self, v: &Verdict) {
        let (proto, id, seq) = match (v.flow.icmp_id, v.flow.dns_id) {
            (Some(id), _) => (IPPROTO_ICMP, id, v.flow.icmp_seq.unwrap_or(0)),
            (None, Some(id)) => (IPPROTO_UDP, id, 0),
            // A TCP/UDP service flow, keyed (service port, guest port).
            (None, None) => match (v.flow.dport, v.flow.sport, v.proto.as_str()) {
                (Some(dport), Some(sport), "tcp") => (6, dport, sport),
                (Some(dport), Some(sport), _) => (IPPROTO_UDP, dport, sport),
                _ => return,
            },
        };
        let role = match (v.verdict, v.direction) {
            (Outcome::Replied, _) | (_, Some(Direction::Reply)) => ROLE_REPLY,
            _ => ROLE_REQUEST,
        };
        self.verdicts
            .insert(key(role, proto, id, seq), verdict_comment(v));
    }

    /// Write the pcapng file; returns the number of packets written.
    pub fn write(&self, path: &Path, devices: &[Device], boot_to_unix_ns: i128) -> Result<usize> {
        let file = std::fs::File::create(path)
            .with_context(|| format!("creating --pcap file {}", path.display()))?;
        let section = SectionHeaderBlock {
            endianness: Endianness::native(),
            options: vec![SectionHeaderOption::UserApplication(Cow::Owned(format!(
                "pathtrace {}",
                crate::cli::VERSION
            )))],
            ..Default::default()
        };
        let mut w = PcapNgWriter::with_section_header(std::io::BufWriter::new(file), section)
            .context("writing the pcapng header")?;
        let blocks = interface_blocks(devices, &self.packets);
        for (_, idb) in blocks.values() {
            w.write_pcapng_block(idb.clone())
                .context("writing an interface block")?;
        }
        let last = self.last_of_each_flow();
        let mut order: Vec<usize> = (0..self.packets.len()).collect();
        order.sort_by_key(|&i| self.packets[i].ts_ns);
        for i in order {
            let p = &self.packets[i];
            let Some((iface, _)) = blocks.get(&p.ifindex) else {
                continue;
            };
            let name = devices
                .iter()
                .find(|d| d.ifindex == p.ifindex)
                .map_or_else(|| format!("ifindex {}", p.ifindex), |d| d.name.clone());
            let mut comment = hop_comment(p, &name);
            if last.get(&p.flow) == Some(&i) {
                if let Some(v) = self.verdicts.get(&p.flow) {
                    comment = format!("{comment}\n{v}");
                }
            }
            let ts = (i128::from(p.ts_ns) + boot_to_unix_ns).max(0) as u64;
            w.write_pcapng_block(EnhancedPacketBlock {
                interface_id: *iface,
                timestamp: Duration::from_nanos(ts),
                original_len: p.wire_len,
                data: Cow::Borrowed(&p.data),
                options: vec![
                    EnhancedPacketOption::Comment(Cow::Owned(comment)),
                    // epb_flags: inbound (1) or outbound (2).
                    EnhancedPacketOption::Flags(if p.ingress { 1 } else { 2 }),
                ],
            })
            .context("writing a packet")?;
        }
        Ok(self.packets.len())
    }

    /// Index of the last packet (in time) of each flow and direction.
    fn last_of_each_flow(&self) -> HashMap<FlowKey, usize> {
        let mut last: HashMap<FlowKey, usize> = HashMap::new();
        for (i, p) in self.packets.iter().enumerate() {
            let e = last.entry(p.flow).or_insert(i);
            if self.packets[*e].ts_ns <= p.ts_ns {
                *e = i;
            }
        }
        last
    }
}

/// One block per device a packet was seen on, numbered in ifindex order.
fn interface_blocks(
    devices: &[Device],
    packets: &[Captured],
) -> BTreeMap<u32, (u32, InterfaceDescriptionBlock<'static>)> {
    let mut seen: Vec<u32> = packets.iter().map(|p| p.ifindex).collect();
    seen.sort_unstable();
    seen.dedup();
    seen.into_iter()
        .enumerate()
        .map(|(n, ifindex)| {
            let dev = devices.iter().find(|d| d.ifindex == ifindex);
            let name = dev.map_or_else(|| format!("ifindex{ifindex}"), |d| d.name.clone());
            let netns = dev.map_or_else(String::new, |d| d.netns.clone());
            let idb = InterfaceDescriptionBlock {
                // TC hands over frames with their Ethernet header.
                linktype: DataLink::ETHERNET,
                snaplen: SNAP_LEN as u32,
                options: vec![
                    InterfaceDescriptionOption::IfName(Cow::Owned(name.clone())),
                    InterfaceDescriptionOption::IfDescription(Cow::Owned(format!(
                        "{name} ifindex {ifindex} netns {netns}"
                    ))),
                    // Timestamps in nanoseconds (what the writer stores).
                    InterfaceDescriptionOption::IfTsResol(9),
                ],
            };
            (ifindex, (n as u32, idb))
        })
        .collect()
}

fn hop_comment(p: &Captured, device: &str) -> String {
    let (role, proto, id, seq) = p.flow;
    let which = if role == ROLE_REPLY {
        "reply"
    } else {
        "request"
    };
    let what = match proto {
        IPPROTO_ICMP => format!("icmp id {id} seq {seq}"),
        _ => format!("dns id {id}"),
    };
    let way = if p.ingress { "ingress" } else { "egress" };
    format!("pathtrace: {which} {what} at {device} ({way})")
}

/// The verdict in one or two lines, as the text output says it.
fn verdict_comment(v: &Verdict) -> String {
    let mut s = format!(
        "pathtrace verdict: {}",
        v.verdict.as_str().to_uppercase().replace('_', " ")
    );
    if let (Some(dir), Some(stage)) = (v.direction, v.stage) {
        s.push_str(&format!(" — {dir} at {stage}"));
        if let Some(ifname) = &v.ifname {
            s.push_str(&format!(" ({ifname})"));
        }
    }
    if let Some(reason) = &v.reason {
        s.push_str(&format!(": {reason}"));
        if let Some(loc) = &v.location {
            s.push_str(&format!(" at {loc}"));
        }
    }
    if let Some(rule) = &v.rule {
        s.push_str(&format!("\nrule: {rule}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use tracer_common::{Event, PacketInfo};

    use super::*;
    use crate::{correlate::Stage, output::Flow};

    fn packet(ts: u64, ifindex: u32, role: u8, seq: u16) -> PacketEvent {
        let mut data = [0u8; SNAP_LEN];
        data[12] = 0x08; // an Ethernet header saying IPv4
        PacketEvent {
            head: Event {
                ts_ns: ts,
                ifindex,
                role,
                pkt: PacketInfo {
                    proto: IPPROTO_ICMP,
                    id: 7,
                    seq,
                    ..PacketInfo::default()
                },
                ..Event::default()
            },
            cap_len: 98,
            wire_len: 98,
            data,
        }
    }

    #[test]
    fn verdict_goes_on_the_last_packet_of_its_request() {
        let mut c = Capture::default();
        c.on_packet(&packet(10, 3, ROLE_REQUEST, 1));
        c.on_packet(&packet(20, 4, ROLE_REQUEST, 1));
        c.on_packet(&packet(30, 3, ROLE_REQUEST, 2));
        let v = Verdict {
            kind: "verdict".into(),
            vm_ip: "192.0.2.100".into(),
            dst: "203.0.113.8".into(),
            proto: "icmp".into(),
            flow: Flow {
                src: "192.0.2.100".into(),
                dst: "203.0.113.8".into(),
                icmp_id: Some(7),
                icmp_seq: Some(1),
                dns_id: None,
                qname: None,
                ..Default::default()
            },
            verdict: Outcome::Dropped,
            direction: Some(Direction::Request),
            stage: Some(Stage::Forward),
            ifname: Some("vmbr0".into()),
            reason: Some("NETFILTER_DROP".into()),
            location: Some("nft_do_chain+0x3e8".into()),
            rule: Some("inet filter forward handle 2: ip saddr 192.0.2.100 drop".into()),
            hint: None,
            path: vec![],
            rtt_ns: None,
            dns_rcode: None,
            events_missing: false,
            incomplete: false,
            doctor: vec![],
        };
        c.on_verdict(&v);
        let last = c.last_of_each_flow();
        assert_eq!(last[&key(ROLE_REQUEST, IPPROTO_ICMP, 7, 1)], 1);
        assert_eq!(
            c.verdicts[&key(ROLE_REQUEST, IPPROTO_ICMP, 7, 1)],
            "pathtrace verdict: DROPPED — request at forward (vmbr0): NETFILTER_DROP at nft_do_chain+0x3e8\nrule: inet filter forward handle 2: ip saddr 192.0.2.100 drop"
        );
        let dir = std::env::temp_dir().join(format!("pathtrace-pcap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("t.pcapng");
        let devices = [Device {
            ifindex: 3,
            name: "tap100i0".into(),
            netns: "net:[1]".into(),
        }];
        assert_eq!(c.write(&file, &devices, 1_000).unwrap(), 3);
        let bytes = std::fs::read(&file).unwrap();
        // Section header block type, and both devices' blocks (one unnamed).
        assert_eq!(&bytes[..4], &0x0A0D_0D0Au32.to_le_bytes());
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("tap100i0") && text.contains("ifindex4"));
        assert!(text.contains("rule: inet filter forward handle 2"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
