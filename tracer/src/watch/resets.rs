//! TCP resets the host sends for a VM: a REJECT `with tcp reset` rule (nft
//! `reject with tcp reset`, iptables `-j REJECT --reject-with tcp-reset`) drops
//! the guest's segment (a drop point like any other, NETFILTER_DROP) and
//! answers it with a reset, one per dropped segment. Which rule drops at a
//! drop point is found as trace mode finds it: the drop point's example packet
//! replayed against the rule sets at the drop's hook, once per drop point.

use std::{cell::RefCell, collections::HashMap};

use tracer_common::{PacketInfo, TCP_SYN};

use crate::explain::{iptables, nft};

/// What a replay is keyed by: the hook, the example's addresses and ports.
type Key = (
    &'static str,
    tracer_common::Addr,
    tracer_common::Addr,
    u16,
    u16,
);

/// The REJECT-with-reset rules found so far, by drop point's example.
#[derive(Default)]
pub struct Resets {
    known: RefCell<HashMap<Key, Option<String>>>,
}

impl Resets {
    /// The rule that drops the guest's TCP segment `pkt` at `hook` (entering
    /// by `iif`), when it answers with a TCP reset.
    pub fn rule(&self, hook: &'static str, pkt: &PacketInfo, iif: &str) -> Option<String> {
        let key = (hook, pkt.saddr, pkt.daddr, pkt.sport, pkt.dport);
        self.known
            .borrow_mut()
            .entry(key)
            .or_insert_with(|| replay(hook, pkt, iif))
            .clone()
    }
}

fn replay(hook: &str, pkt: &PacketInfo, iif: &str) -> Option<String> {
    let view = nft::PacketView {
        saddr: Some(pkt.src()),
        daddr: Some(pkt.dst()),
        proto: 6,
        sport: Some(pkt.sport),
        dport: Some(pkt.dport),
        iifname: Some(iif.to_string()),
        // What a reject answers: a connection attempt, the usual case.
        ct_state: Some(if pkt.tcp_flags & TCP_SYN != 0 || pkt.tcp_flags == 0 {
            "new"
        } else {
            "established"
        }),
        ..Default::default()
    };
    if let Some(c) = nft::find_culprit(hook, false, &view) {
        let said = c.reply.as_deref().or(c.text.as_deref());
        let reset = c.verdict == "reject" && said.is_some_and(is_reset);
        return reset.then(|| c.describe());
    }
    let c = iptables::find_culprit(hook, &view)?;
    let reset = c.target == "REJECT" && c.text.as_deref().is_some_and(|t| t.contains("tcp-reset"));
    reset.then(|| c.describe("iptables-legacy"))
}

/// What nft says a reject sends (`a TCP reset`).
fn is_reset(reply: &str) -> bool {
    reply.to_lowercase().contains("reset")
}
