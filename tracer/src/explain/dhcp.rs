//! `--proto dhcp`: what the guest's DHCP exchange says, in DHCP's own terms —
//! the transaction, the messages seen, and why a server did not answer.

use pathtrace_json::{Flow, Outcome, Stage};
use tracer_common::PacketInfo;

use super::Explainer;
use crate::{correlate::Trace, output::Verdict};

/// The port servers listen on.
const SERVER_PORT: u16 = 67;
const NAK: u8 = 6;

/// A DHCP message type's name (RFC 2132 option 53).
pub fn message_name(op: u8) -> String {
    match op {
        1 => "DISCOVER",
        2 => "OFFER",
        3 => "REQUEST",
        4 => "DECLINE",
        5 => "ACK",
        6 => "NAK",
        7 => "RELEASE",
        8 => "INFORM",
        _ => return format!("type {op}"),
    }
    .into()
}

/// The message types of one transaction as they crossed the host, in order
/// (a REQUEST that follows its OFFER quickly joins the same trace).
fn messages(t: &Trace) -> Vec<String> {
    let mut hops: Vec<(u64, u8)> = std::iter::once((0, t.request.op))
        .chain(
            t.req_hops
                .iter()
                .chain(&t.reply_hops)
                .map(|h| (h.ts_ns, h.pkt.op)),
        )
        .collect();
    hops.sort_by_key(|(ts, _)| *ts);
    let mut seen: Vec<String> = Vec::new();
    for (_, op) in hops {
        let name = message_name(op);
        if seen.last() != Some(&name) {
            seen.push(name);
        }
    }
    seen
}

pub(super) fn flow_of(p: &PacketInfo) -> Flow {
    Flow {
        src: p.src().to_string(),
        dst: p.dst().to_string(),
        dhcp_xid: Some(p.xid),
        ..Flow::default()
    }
}

/// The kernel's UDP receive path freed it: no socket took it (`__udp4_lib_rcv`,
/// `__udp4_lib_mcast_deliver`, ... — the function names vary by kernel).
fn freed_by_udp(location: Option<&str>) -> bool {
    location.is_some_and(|l| l.starts_with("__udp4_lib") || l.starts_with("udp"))
}

/// Read when the verdict is made: a server may have started or stopped since
/// the host model was read.
fn servers_here() -> Vec<std::net::Ipv4Addr> {
    crate::host::udp_sockets()
        .into_iter()
        .filter(|&(_, port)| port == SERVER_PORT)
        .map(|(addr, _)| addr)
        .collect()
}

impl Explainer {
    /// Add the DHCP view to a verdict made the generic way.
    pub(super) fn dhcp(&self, t: &Trace, v: &mut Verdict) {
        v.flow.dhcp_messages = messages(t);
        let mac = self
            .topo
            .vm_mac
            .clone()
            .or_else(|| self.learned_mac())
            .unwrap_or_else(|| "the guest's MAC".into());
        match v.verdict {
            Outcome::Replied if t.reply_hops.last().is_some_and(|h| h.pkt.op == NAK) => {
                v.hint = Some(format!(
                    "the DHCP server {} refused the guest's request (NAK): the address it asked for is not one the server gives {mac} (a lease from another network, or a changed static entry); the guest should start over with DISCOVER",
                    t.reply_hops
                        .last()
                        .map_or_else(String::new, |h| h.pkt.src().to_string())
                ));
            }
            // The server is this host's unless the guest's bridge leads to a
            // LAN (bridged mode). A "left" seen here can be a stale tracking
            // entry: UDP sockets free what they take without a consume event.
            Outcome::NoReply if self.topo.lan.is_none() => self.dhcp_unanswered(&mac, v),
            // Freed by UDP itself (no socket wanted it), not by a rule.
            Outcome::Dropped if v.rule.is_none() && freed_by_udp(v.location.as_deref()) => {
                self.dhcp_unanswered(&mac, v)
            }
            _ => {}
        }
    }

    /// The MAC the bridge learned on the VM's port (named with --iface, the
    /// guest's address unknown): the one its DHCP messages came from.
    fn learned_mac(&self) -> Option<String> {
        let port = self.topo.ports.first()?.index;
        let host = crate::host::Host::read().ok()?;
        let learned = host
            .fdb
            .iter()
            .find(|e| e.port == port && !e.own && !e.permanent)?;
        Some(learned.mac.clone())
    }

    /// The host received the guest's message and nothing answered it.
    fn dhcp_unanswered(&self, mac: &str, v: &mut Verdict) {
        let bridge = self
            .topo
            .bridge
            .as_ref()
            .map_or_else(|| "the guest's bridge".into(), |b| b.name.clone());
        v.stage = Some(Stage::Input);
        v.ifname = self.topo.bridge.as_ref().map(|b| b.name.clone());
        if v.verdict == Outcome::Dropped {
            // Where it was freed: the host's own UDP, past the bridge.
            if let Some(last) = v.path.last_mut() {
                last.stage = Stage::Input;
            }
        }
        let servers = servers_here();
        if servers.is_empty() {
            v.rule = Some(format!("nothing listens on udp/{SERVER_PORT} on this host"));
            v.hint = Some(format!(
                "the guest's DHCP request reached {bridge} but no DHCP server runs on this host (no socket on udp/{SERVER_PORT}): start the one that serves {bridge} (libvirt: `virsh net-start NETWORK`; Proxmox SDN: `systemctl restart dnsmasq@ZONE`; else dnsmasq with --interface={bridge} --dhcp-range=...), or, if the server is elsewhere, relay to it"
            ));
            return;
        }
        let on = servers
            .iter()
            .map(|a| format!("{a}:{SERVER_PORT}"))
            .collect::<Vec<_>>()
            .join(", ");
        v.rule = Some(format!(
            "the DHCP server on this host ({on}) sent no offer for {mac}"
        ));
        v.hint = Some(format!(
            "a DHCP server listens on this host ({on}) and the guest's request reached it, but it did not answer {mac}: its configuration does not serve this MAC on {bridge} (no dhcp-range for {bridge}'s subnet, the range exhausted, or only static hosts — libvirt `<host mac=...>` entries / dnsmasq dhcp-host — that do not include {mac}); check the server's log"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_frees_are_recognised() {
        assert!(freed_by_udp(Some("__udp4_lib_rcv+0xbbf")));
        assert!(!freed_by_udp(Some("nft_do_chain+0x3e8")));
        assert!(!freed_by_udp(None));
    }

    #[test]
    fn message_names() {
        assert_eq!(message_name(1), "DISCOVER");
        assert_eq!(message_name(6), "NAK");
        assert_eq!(message_name(42), "type 42");
    }
}
