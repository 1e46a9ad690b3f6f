//! `--proto arp`: the guest's who-has and its answer; an unanswered one said
//! in terms of what the bridge really has.

use std::net::Ipv4Addr;

use pathtrace_json::{Flow, Outcome, Stage};
use tracer_common::PacketInfo;

use super::Explainer;
use crate::{correlate::Trace, output::Verdict};

const ARP_REPLY: u8 = 2;

fn op_name(op: u8) -> String {
    match op {
        1 => "request".into(),
        ARP_REPLY => "reply".into(),
        _ => format!("op {op}"),
    }
}

pub(super) fn flow_of(p: &PacketInfo) -> Flow {
    Flow {
        src: p.src().to_string(),
        dst: p.dst().to_string(),
        arp_target: Some(p.dst().to_string()),
        ..Flow::default()
    }
}

/// The addresses of `dev` as "A/LEN" words, for people.
fn addresses(host: &crate::host::Host, dev: &str) -> Vec<String> {
    host.inet_addrs(dev)
        .into_iter()
        .map(|(a, l)| format!("{a}/{l}"))
        .collect()
}

impl Explainer {
    /// Add the ARP view to a verdict made the generic way.
    pub(super) fn arp(&self, t: &Trace, v: &mut Verdict) {
        let mut ops = vec![op_name(t.request.op)];
        if let Some(h) = t.reply_hops.first() {
            ops.push(op_name(h.pkt.op));
        }
        v.flow.arp_ops = ops;
        if v.verdict == Outcome::NoReply && t.local_ts.is_some() {
            self.arp_unanswered(t.request.dst_v4(), v);
        }
    }

    /// The host's ARP took the who-has and sent no answer.
    fn arp_unanswered(&self, target: Ipv4Addr, v: &mut Verdict) {
        let Some(bridge) = self.topo.bridge.as_ref().map(|b| b.name.clone()) else {
            return self.arp_routed(target, v);
        };
        let host = crate::host::Host::read().ok();
        let has = host
            .as_ref()
            .map(|h| addresses(h, &bridge))
            .unwrap_or_default();
        let local = host.as_ref().is_some_and(|h| {
            h.addrs
                .iter()
                .filter_map(|a| a.v4())
                .any(|(a, _)| a == target)
        });
        v.stage = Some(Stage::Bridge);
        v.ifname = Some(bridge.clone());
        if local {
            let ignore = crate::kernel::sysctl(&format!("net/ipv4/conf/{bridge}/arp_ignore"))
                .unwrap_or_default();
            v.rule = Some(format!(
                "{target} is this host's but {bridge} did not answer for it"
            ));
            v.hint = Some(format!(
                "the guest's who-has for {target} reached {bridge}, and {target} is an address of this host, but no answer was sent: an arptables / nft `arp` rule or the ARP settings of {bridge} (arp_ignore={ignore}) keep the host from answering on it"
            ));
            return;
        }
        let has_words = if has.is_empty() {
            "no IPv4 address".to_string()
        } else {
            has.join(", ")
        };
        v.rule = Some(format!(
            "no address {target} on {bridge} (it has {has_words})"
        ));
        let gateway = host
            .as_ref()
            .and_then(|h| h.inet_addrs(&bridge).first().map(|(a, _)| *a));
        let fix = gateway
            .map(|g| format!(": set the guest's gateway to {g}"))
            .unwrap_or_default();
        v.hint = Some(format!(
            "the guest asks who has {target}, and nothing on {bridge} has it ({bridge} has {has_words}): the guest's gateway (or the address it looks for) is wrong{fix}, or add {target} to {bridge} if that is the intended gateway"
        ));
    }

    /// A routed setup (the port itself is the guest's link): the host answers
    /// for addresses beyond it only with proxy ARP.
    fn arp_routed(&self, target: Ipv4Addr, v: &mut Verdict) {
        let port = self.topo.inbound().name.clone();
        let proxy = crate::kernel::sysctl(&format!("net/ipv4/conf/{port}/proxy_arp"));
        v.stage = Some(Stage::Tap);
        v.ifname = Some(port.clone());
        if proxy.as_deref() != Some("1") {
            v.rule = Some(format!("net.ipv4.conf.{port}.proxy_arp = 0"));
            v.hint = Some(format!(
                "the guest asks who has {target} on {port}, which has no such address; in a routed setup the host answers for the gateway with proxy ARP: sysctl -w net.ipv4.conf.{port}.proxy_arp=1"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arp_flow() {
        let p = PacketInfo {
            saddr: tracer_common::addr4([192, 0, 2, 100]),
            daddr: tracer_common::addr4([192, 0, 2, 254]),
            kind: tracer_common::PKT_ARP,
            op: 1,
            ..PacketInfo::default()
        };
        let f = flow_of(&p);
        assert_eq!(f.arp_target.as_deref(), Some("192.0.2.254"));
        assert_eq!(op_name(2), "reply");
    }
}
