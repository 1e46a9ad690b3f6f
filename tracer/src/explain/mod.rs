//! From a finished trace to the operator's answer: where it died, the kernel's
//! reason, the rule or setting responsible, and the command that fixes it.

pub mod fix;
pub mod iptables;
mod neighbour;
pub mod nft;
mod nft_match;
mod pve_firewall;
pub mod stage;

use std::{collections::HashMap, net::Ipv4Addr};

use tracer_common::PacketInfo;

use crate::{
    correlate::{Direction, Drop, Finished, Hop, Outcome, Stage, Trace},
    kernel::kallsyms::Symbols,
    output::{Check, Flow, Nat, PathHop, Verdict},
    topology::{Role, Topology},
};
use stage::{drop_stage, DropFacts};

pub struct Explainer {
    pub topo: Topology,
    /// Doctor checks, to attach where they explain a verdict (as they hold then).
    pub findings: Box<dyn Findings>,
    pub reasons: HashMap<u32, String>,
    pub symbols: Symbols,
    pub proto_word: &'static str,
    /// Where the hypervisor's configuration is (`--config-root`, `/` normally):
    /// generated firewalls are fixed in their own files.
    pub config_root: std::path::PathBuf,
}

/// The doctor's findings as they hold at the moment of asking (the doctor
/// provides them; explain only attaches them to verdicts).
pub trait Findings {
    /// The failed or warning checks among `names` (all checks when None).
    fn current(&self, names: Option<&[&str]>) -> Vec<Check>;
    /// Every check.
    fn all_now(&self) -> Vec<Check>;
}

/// What we say about one drop: stage, responsible rule/setting, and the fix.
struct Blame {
    stage: Stage,
    rule: Option<String>,
    hint: String,
    /// Where to point the operator, when not the device the skb was on.
    ifname: Option<String>,
}

fn ip(b: [u8; 4]) -> Ipv4Addr {
    Ipv4Addr::from(b)
}

impl Explainer {
    pub fn verdict(&self, f: &Finished) -> Verdict {
        let t = &f.trace;
        let mut v = Verdict {
            kind: "verdict",
            vm_ip: self.topo.vm_ip.to_string(),
            dst: self.topo.dst.to_string(),
            proto: self.proto_word,
            flow: Flow {
                qname: t.qname.clone(),
                ..flow_of(&t.request)
            },
            verdict: match f.outcome {
                Outcome::Replied => "replied",
                Outcome::Dropped => "dropped",
                Outcome::NoReply => "no_reply",
            },
            direction: None,
            stage: None,
            ifname: None,
            reason: None,
            location: None,
            rule: None,
            hint: None,
            path: self.path(t),
            rtt_ns: None,
            dns_rcode: None,
            events_missing: t.events_missing,
            incomplete: f.timed_out,
            doctor: Vec::new(),
        };
        match f.outcome {
            Outcome::Replied => self.replied(t, &mut v),
            Outcome::Dropped => self.dropped(t, &mut v),
            Outcome::NoReply => self.no_reply(t, f.timed_out, &mut v),
        }
        if f.outcome != Outcome::Replied {
            v.doctor = self.findings.current(relevant(v.stage, v.direction));
        }
        v
    }

    fn name(&self, ifindex: u32) -> Option<String> {
        self.topo.name_of(ifindex).map(str::to_string)
    }

    fn replied(&self, t: &Trace, v: &mut Verdict) {
        v.ifname = t.port_ifindex.and_then(|i| self.name(i));
        v.rtt_ns = t.delivered_ts.map(|d| d.saturating_sub(t.first_ts()));
        if t.request.proto == 17 {
            let rcode = t.reply_hops.last().map_or(0, |h| h.pkt.code);
            v.dns_rcode = Some(crate::dns::rcode_name(rcode));
            if rcode != 0 {
                v.hint = Some(format!(
                    "the network path works: the resolver {} answered {} for {}; the problem is the name or the resolver's own configuration",
                    self.topo.dst,
                    crate::dns::rcode_name(rcode),
                    t.qname.as_deref().unwrap_or("the query")
                ));
            }
        }
        if t.reply_hops
            .iter()
            .any(|h| h.pkt.icmp_type == 3 || h.pkt.icmp_type == 11)
        {
            let h = &t.reply_hops[0].pkt;
            v.hint = Some(format!(
                "the guest got an ICMP error (type {}, code {}) from {} instead of an echo reply",
                h.icmp_type,
                h.code,
                ip(h.saddr)
            ));
        }
    }

    fn dropped(&self, t: &Trace, v: &mut Verdict) {
        let Some(d) = &t.drop else {
            self.reply_lost(t, v);
            return;
        };
        let reason = self.reasons.get(&d.reason).cloned();
        let location = self.symbols.resolve(d.location);
        let function = location
            .as_deref()
            .map(|l| l.split('+').next().unwrap_or(l));
        let facts = DropFacts {
            reason: reason.as_deref(),
            function,
            direction: Some(d.direction),
            has_dst: d.has_dst,
            dev_known: d.dev_known,
            dev_role: self.topo.role_of(d.ifindex),
            dev_is_bridge: self.topo.is_bridge_dev(d.ifindex),
            dst_local: self.topo.dst_local,
            bridged: self.topo.bridged,
        };
        let blame = self.blame(t, d, &facts);
        v.direction = Some(d.direction.as_str());
        v.stage = Some(blame.stage.as_str());
        v.ifname = blame.ifname.clone().or_else(|| {
            // Inside a firewall bridge, name the bridge: the operator's rules and
            // `bridge` commands refer to it, not to the veth or tap it was on.
            let fw = (blame.stage == Stage::Bridge)
                .then(|| self.topo.firewall_bridge_of(d.ifindex))
                .flatten();
            fw.or_else(|| self.name(d.ifindex))
        });
        v.reason = reason;
        v.location = location;
        v.rule = blame.rule;
        v.hint = Some(blame.hint);
        v.path.push(PathHop {
            stage: blame.stage.as_str(),
            ifname: v.ifname.clone(),
            bridge: None,
            ts_ns: d.ts_ns.saturating_sub(t.first_ts()),
            nat: None,
            direction: d.direction.as_str(),
            inferred: false,
            function: None,
        });
    }

    fn no_reply(&self, t: &Trace, timed_out: bool, v: &mut Verdict) {
        v.direction = None;
        if let Some(out) = t
            .req_hops
            .iter()
            .rev()
            .find(|h| self.topo.role_of(h.ifindex) == Some(Role::Uplink))
        {
            self.left_host(t, out, v);
        } else if t.local_ts.is_some() {
            v.stage = Some(Stage::Input.as_str());
            v.ifname = self.topo.bridge.as_ref().map(|b| b.name.clone());
            v.hint = Some(format!(
                "the host itself received the request for {} but sent no reply (check `sysctl net.ipv4.icmp_echo_ignore_all` and the OUTPUT chain)",
                self.topo.dst
            ));
        } else {
            let last = t.req_hops.last();
            v.stage = last.map(|h| h.stage.as_str());
            v.ifname = last.and_then(|h| self.name(h.ifindex));
            v.hint = Some(format!(
                "the request was last seen at {} and no drop was reported{}",
                v.stage.unwrap_or("?"),
                if timed_out {
                    " before tracing stopped"
                } else {
                    ""
                }
            ));
        }
    }

    /// The reply was freed on the host without a drop reason, or vanished, before
    /// reaching the guest's port.
    fn reply_lost(&self, t: &Trace, v: &mut Verdict) {
        v.direction = Some(Direction::Reply.as_str());
        if let Some(b) = self.blame_port_down(t, "the reply to the guest") {
            v.stage = Some(b.stage.as_str());
            v.ifname = b.ifname;
            v.rule = b.rule;
            v.hint = Some(b.hint);
            return;
        }
        let last = t.reply_hops.last();
        v.stage = Some(last.map_or(Stage::Forward, |h| h.stage).as_str());
        v.ifname = last.and_then(|h| self.name(h.ifindex));
        if let Some((location, _)) = t.reply_lost_at {
            v.location = self.symbols.resolve(location);
        }
        v.hint = Some(format!(
            "the reply came back to the host but never reached {}: it was last seen at {}{}",
            t.port_ifindex
                .and_then(|i| self.name(i))
                .unwrap_or_else(|| "the guest's port".into()),
            v.stage.unwrap_or("?"),
            v.location
                .as_ref()
                .map(|l| format!(" and freed in {l}"))
                .unwrap_or_default()
        ));
    }

    /// The request left through the uplink and nothing came back.
    fn left_host(&self, t: &Trace, out: &Hop, v: &mut Verdict) {
        v.stage = Some(Stage::Remote.as_str());
        v.ifname = self.name(out.ifindex);
        v.hint = Some(self.remote_hint(out));
        if self.missing_snat(out) {
            v.rule = Some(format!(
                "no SNAT/MASQUERADE for {} on {}",
                self.vm_net(),
                self.uplink_name()
            ));
        }
        let (asked, sent_to) = (ip(t.request.daddr), ip(out.pkt.daddr));
        if asked != sent_to {
            // DNAT sent it elsewhere: that target did not answer.
            v.rule = nft::find_dnat_rule(sent_to)
                .or_else(|| iptables::find_dnat_rule(sent_to))
                .or_else(|| Some(format!("dnat {asked} → {sent_to}")));
            v.hint = Some(format!(
                "the guest's request to {asked} was redirected (DNAT) to {sent_to}, which did not answer within {} s: check that {sent_to} is the right, live server, or fix the DNAT rule",
                crate::correlate::REPLY_WAIT_NS / 1_000_000_000
            ));
        }
    }

    fn uplink_name(&self) -> String {
        self.topo
            .uplink
            .as_ref()
            .map_or("the uplink".into(), |u| u.name.clone())
    }

    fn vm_net(&self) -> String {
        match self.topo.vm_subnet {
            Some((net, len)) => format!("{net}/{len}"),
            None => format!("{}/32", self.topo.vm_ip),
        }
    }

    /// The request left with the guest's own address although that address is not
    /// one of the uplink's: nothing translated it, so replies cannot find their way.
    fn missing_snat(&self, out: &Hop) -> bool {
        let src = ip(out.pkt.saddr);
        src == self.topo.vm_ip && !self.topo.uplink_addrs.contains(&src)
    }

    fn remote_hint(&self, out: &Hop) -> String {
        let (uplink, src) = (self.uplink_name(), ip(out.pkt.saddr));
        if self.missing_snat(out) {
            return format!(
                "the request left {uplink} with the guest's own source {src}: no MASQUERADE/SNAT \
                 rule translated it, so the reply cannot come back; add one: {}",
                fix::add_masquerade(&self.vm_net(), &uplink)
            );
        }
        format!(
            "the request left {uplink} as {src} → {} and nothing came back within {} s: the \
             problem is beyond this host (upstream router, the destination, or its firewall)",
            ip(out.pkt.daddr),
            crate::correlate::REPLY_WAIT_NS / 1_000_000_000
        )
    }

    fn blame(&self, t: &Trace, d: &Drop, facts: &DropFacts) -> Blame {
        let stage = drop_stage(facts);
        let what = match d.direction {
            Direction::Request => "the guest's request",
            Direction::Reply => "the reply to the guest",
        };
        let reason = facts.reason.unwrap_or("unknown reason");
        let generic = || Blame {
            stage,
            rule: None,
            hint: format!(
                "the kernel dropped {what} at {} ({reason}{})",
                stage.as_str(),
                facts
                    .function
                    .map(|f| format!(" in {f}"))
                    .unwrap_or_default()
            ),
            ifname: None,
        };
        match reason {
            "NETFILTER_DROP" => self.blame_netfilter(t, d, facts, stage, what),
            "IP_INADDRERRORS" | "IP_INNOROUTES" | "IP_OUTNOROUTES" => {
                self.blame_routing(stage, what, reason)
            }
            "IP_RPFILTER" => self.blame_rp_filter(d, stage, what),
            "PKT_TOO_BIG" => self.blame_mtu(d, stage, what),
            "IP_INHDR" if stage == Stage::Forward => Blame {
                stage,
                rule: Some(format!("IP TTL {} set by the guest", d.pkt.ttl)),
                hint: format!(
                    "{what} arrived with TTL {} and expires at this host, which routes it (one hop); the guest gets ICMP time exceeded — expected for traceroute, otherwise fix the guest's TTL (sysctl net.ipv4.ip_default_ttl=64 inside the guest)",
                    d.pkt.ttl
                ),
                ifname: None,
            },
            r if r.starts_with("NEIGH_") || stage == Stage::Neighbor => {
                self.blame_neighbour(d, stage, what, r)
            }
            // A reply the bridge cannot hand to a guest whose port is down.
            _ if stage == Stage::Tap || (stage == Stage::Bridge && d.direction == Direction::Reply) => self
                .blame_port_down(t, what)
                .or_else(|| self.blame_bridge_port(d, stage, what))
                .unwrap_or_else(generic),
            _ if stage == Stage::Bridge => self.blame_bridge_port(d, stage, what).unwrap_or_else(generic),
            _ => generic(),
        }
    }

    fn blame_rp_filter(&self, d: &Drop, stage: Stage, what: &str) -> Blame {
        let iif = self.inbound_name(d.direction);
        let value = read_sysctl(&format!("net/ipv4/conf/{iif}/rp_filter"));
        let all = read_sysctl("net/ipv4/conf/all/rp_filter");
        Blame {
            stage,
            rule: Some(format!(
                "sysctl net.ipv4.conf.{iif}.rp_filter={} (all={})",
                value.as_deref().unwrap_or("?"),
                all.as_deref().unwrap_or("?")
            )),
            hint: format!(
                "reverse-path filtering on {iif} rejects {what} (its source is not routed back via {iif}); use loose mode: sysctl -w net.ipv4.conf.{iif}.rp_filter=2 net.ipv4.conf.all.rp_filter=2"
            ),
            ifname: None,
        }
    }

    /// A DF packet larger than the uplink's MTU: name both MTUs.
    fn blame_mtu(&self, d: &Drop, stage: Stage, what: &str) -> Blame {
        let mtu_of =
            |i: &crate::topology::Iface| self.topo.mtus.get(&i.index).copied().unwrap_or(0);
        let inbound = self.topo.inbound();
        let (in_mtu, up) = (mtu_of(inbound), self.uplink_name());
        let up_mtu = self.topo.uplink.as_ref().map_or(0, mtu_of);
        let df = if d.pkt.frag & 0x4000 != 0 {
            " with DF set"
        } else {
            ""
        };
        Blame {
            stage,
            rule: Some(format!("MTU {up} {up_mtu} < {} bytes ({} MTU {in_mtu})", d.pkt.ip_len, inbound.name)),
            hint: format!(
                "{what} is {} bytes{df}, more than {up}'s MTU {up_mtu} (the guest's side, {}, has MTU {in_mtu}); the host answered 'fragmentation needed' — make the MTUs agree: ip link set {up} mtu {in_mtu}, or lower the guest's MTU to {up_mtu}",
                d.pkt.ip_len, inbound.name
            ),
            ifname: Some(up),
        }
    }

    /// Dropped by the bridge: a port not forwarding (STP, or set by hand).
    fn blame_bridge_port(&self, d: &Drop, stage: Stage, what: &str) -> Option<Blame> {
        let port = self.name(d.ifindex)?;
        let state = crate::topology::port_state_now(&port)?;
        if state == "forwarding" {
            return None;
        }
        let bridge = self
            .topo
            .bridge
            .as_ref()
            .map_or("the bridge".into(), |b| b.name.clone());
        Some(Blame {
            stage,
            rule: Some(format!("bridge port {port} state {state}")),
            hint: format!(
                "{bridge} does not forward through port {port}, which is in STP state {state}, so it drops {what}; if STP is not needed turn it off (ip link set {bridge} type bridge stp_state 0), else find the loop; set by hand: bridge link set dev {port} state 3"
            ),
            ifname: Some(port),
        })
    }

    /// The VM port is down: nothing reaches the guest.
    fn blame_port_down(&self, t: &Trace, what: &str) -> Option<Blame> {
        let port = self.name(t.port_ifindex?)?;
        let state = crate::topology::oper_state_now(&port)?;
        if state == "UP" || state == "UNKNOWN" {
            return None;
        }
        Some(Blame {
            stage: Stage::Tap,
            rule: Some(format!("link {port} state {state}")),
            hint: format!(
                "the guest's port {port} is {state}, so {what} cannot be delivered; bring it up (ip link set {port} up) or check that the VM is running"
            ),
            ifname: Some(port),
        })
    }

    /// The interface a packet of this direction enters the host's IP stack by.
    fn inbound_name(&self, dir: Direction) -> String {
        match dir {
            Direction::Request => self.topo.inbound().name.clone(),
            Direction::Reply => self.uplink_name(),
        }
    }

    fn blame_routing(&self, stage: Stage, what: &str, reason: &str) -> Blame {
        let iif = self.inbound_name(Direction::Request);
        let global = read_sysctl("net/ipv4/ip_forward");
        let per_if = read_sysctl(&format!("net/ipv4/conf/{iif}/forwarding"));
        let (rule, hint) = if global.as_deref() == Some("0") {
            (
                "sysctl net.ipv4.ip_forward=0".to_string(),
                format!(
                    "IP forwarding is off on this host, so it drops {what} instead of routing it; turn it on: sysctl -w net.ipv4.ip_forward=1 (and persist it in /etc/sysctl.d/)"
                ),
            )
        } else if per_if.as_deref() == Some("0") {
            (
                format!("sysctl net.ipv4.conf.{iif}.forwarding=0"),
                format!(
                    "forwarding is off on {iif}, so the host drops {what}; turn it on: sysctl -w net.ipv4.conf.{iif}.forwarding=1"
                ),
            )
        } else {
            let dst = self.topo.dst;
            (
                format!("no route to {dst}"),
                format!(
                    "the host has no route for {what} to {dst} ({reason}); add one (e.g. a default route: ip route add default via GATEWAY dev UPLINK), then check: ip route get {dst} from {} iif {iif}",
                    self.topo.vm_ip
                ),
            )
        };
        Blame {
            stage,
            rule: Some(rule),
            hint,
            ifname: None,
        }
    }

    fn blame_netfilter(
        &self,
        t: &Trace,
        d: &Drop,
        facts: &DropFacts,
        stage: Stage,
        what: &str,
    ) -> Blame {
        let hook = match stage {
            // br_netfilter runs the IP hooks for bridged frames: PREROUTING before
            // the bridge attaches its fake route, FORWARD after.
            Stage::Bridge if !d.has_dst => "prerouting",
            Stage::Prerouting => "prerouting",
            Stage::Input => "input",
            Stage::Postrouting => "postrouting",
            _ => "forward",
        };
        let view = self.packet_view(t, d, stage);
        let [ingress, egress] = self.bridge_views(t, d, &view);
        let points = replay_points(stage, d.direction, hook, &view, &ingress, &egress);
        // nf_tables drops inside nft_do_chain; legacy iptables through nf_hook_slow.
        let nft_first = facts.function == Some("nft_do_chain");
        let found = if nft_first {
            self.nft_blame(&points, d, what)
                .or_else(|| self.legacy_blame(hook, &view, what))
        } else {
            self.legacy_blame(hook, &view, what)
                .or_else(|| self.nft_blame(&points, d, what))
        };
        let (rule, mut hint) = found.unwrap_or_else(|| {
            (
                None,
                format!(
                    "a firewall rule in the {hook} hook drops {what}, but no matching nftables or iptables rule was found; list the rule sets with counters: nft list ruleset; iptables-legacy -L -v -n"
                ),
            )
        });
        // An IP-family rule sees bridged frames only through br_netfilter.
        let bridge_family = rule.as_deref().is_some_and(|r| r.starts_with("bridge "));
        // The kernel does not say which family's hook dropped it: the rule that
        // matches does. A bridge-family chain is the bridge's own firewall.
        let stage = if bridge_family { Stage::Bridge } else { stage };
        if self.topo.bridged && !bridge_family {
            let b = &self.topo.inbound().name;
            hint.push_str(&format!(
                ". This traffic is bridged between guests on {b}; it meets the IP firewall only because net.bridge.bridge-nf-call-iptables={} (br_netfilter): allow it, e.g. iptables -I FORWARD -m physdev --physdev-is-bridged -j ACCEPT, or stop filtering bridged traffic: sysctl -w net.bridge.bridge-nf-call-iptables=0",
                read_sysctl("net/bridge/bridge-nf-call-iptables").as_deref().unwrap_or("1")
            ));
        }
        Blame {
            stage,
            rule,
            hint,
            ifname: None,
        }
    }

    fn nft_blame(
        &self,
        points: &[nft::Point],
        d: &Drop,
        what: &str,
    ) -> Option<(Option<String>, String)> {
        let c = nft::find_culprit_at(points)?;
        // A generated rule set is fixed where it is generated from.
        let pkt = points.first().map(|p| p.view)?;
        if let Some(hint) = pve_firewall::hint(&c, pkt, what, &self.config_root) {
            return Some((Some(c.describe()), hint));
        }
        let (fam, table, chain) = (&c.family, &c.table, &c.chain);
        let hint = match fix::delete(&c) {
            Some(cmd) => format!(
                "nftables rule \"{}\" in {fam} {table} {chain}{} drops {what}; remove it: {cmd}",
                c.text.as_deref().unwrap_or("?"),
                match c.manager {
                    nft::Manager::IptablesNft => " (managed by iptables-nft)",
                    nft::Manager::Nft => "",
                },
            ),
            None => format!(
                "chain {fam} {table} {chain} has policy drop and no rule accepts {what}; allow it: {}",
                fix::allow(&c, d.direction == Direction::Reply, &self.topo.vm_ip.to_string())
            ),
        };
        Some((Some(c.describe()), hint + &walk_note(&c)))
    }

    fn legacy_blame(
        &self,
        hook: &str,
        view: &nft::PacketView,
        what: &str,
    ) -> Option<(Option<String>, String)> {
        let c = iptables::find_culprit(hook, view)?;
        let tool = "iptables-legacy";
        let cmd = fix::legacy(&c, false, &self.vm_net());
        let hint = match c.number {
            Some(n) => format!(
                "{tool} rule {n} of the {} chain ({} table) {}s {what}; remove it: {cmd}",
                c.chain,
                c.table,
                c.target.to_lowercase(),
            ),
            None => format!(
                "the {} chain ({} table) has policy DROP and no rule accepts {what}; allow the guest's traffic: {cmd} (and replies: -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT)",
                c.chain, c.table,
            ),
        };
        Some((Some(c.describe(tool)), hint))
    }

    /// The packet as the firewall saw it at `stage`.
    fn packet_view(&self, t: &Trace, d: &Drop, stage: Stage) -> nft::PacketView {
        let mut pkt: PacketInfo = d.pkt;
        // br_netfilter hands the IP hooks the bridge as both devices: inside a
        // firewall bridge, that is the firewall bridge.
        let firewall_bridge = (stage == Stage::Bridge)
            .then(|| self.topo.firewall_bridge_of(d.ifindex))
            .flatten();
        let (iif, oif) = match d.direction {
            _ if firewall_bridge.is_some() => {
                (firewall_bridge.clone().unwrap_or_default(), firewall_bridge)
            }
            Direction::Request => (
                self.routed_in_at(d, stage)
                    .unwrap_or_else(|| self.inbound_name(Direction::Request)),
                match self.topo.bridged {
                    true => Some(self.inbound_name(Direction::Request)),
                    false => self.topo.uplink.as_ref().map(|u| u.name.clone()),
                },
            ),
            Direction::Reply => (
                self.uplink_name(),
                Some(self.inbound_name(Direction::Request)),
            ),
        };
        if d.direction == Direction::Reply {
            // After PREROUTING, conntrack has turned the reply back to the guest.
            pkt = t.reply_hops.last().map_or(pkt, |h| h.pkt);
            if stage != Stage::Prerouting {
                pkt.daddr = self.topo.vm_ip.octets();
            }
        } else {
            pkt.saddr = t.request.saddr;
        }
        let l4 = pkt.proto == 17;
        nft::PacketView {
            saddr: Some(ip(pkt.saddr)),
            daddr: Some(ip(pkt.daddr)),
            proto: pkt.proto,
            icmp_type: (pkt.proto == 1).then_some(pkt.icmp_type),
            sport: l4.then_some(pkt.sport),
            dport: l4.then_some(pkt.dport),
            iifname: Some(iif),
            oifname: if stage == Stage::Prerouting || stage == Stage::Input {
                None
            } else {
                oif
            },
            // A reply belongs to the request's connection; a request may be the
            // first of its flow or a repeat (ping reuses its id): unknown.
            ct_state: (d.direction == Direction::Reply).then_some("established"),
            ..Default::default()
        }
    }

    /// The packet as the bridge family's hooks see it, whose devices are the
    /// bridge's ports, not the bridge: [ingress, egress]. In prerouting and input
    /// the skb is on the port the frame came in by (input: on the bridge device,
    /// having come from the VM's port, for the guest's request); in forward,
    /// output and postrouting on the port it leaves by, and the guest's request
    /// came in by the VM's port when that port is on the same bridge. What the
    /// skb does not show stays unknown.
    fn bridge_views(&self, t: &Trace, d: &Drop, view: &nft::PacketView) -> [nft::PacketView; 2] {
        let skb_port = (!self.topo.is_bridge_dev(d.ifindex))
            .then(|| self.name(d.ifindex))
            .flatten();
        let vm_port = t.port_ifindex;
        let request = d.direction == Direction::Request;
        let same_bridge = vm_port.is_some_and(|p| {
            let master = |i| self.topo.masters.get(&i);
            master(p).is_some() && master(p) == master(d.ifindex)
        });
        let ingress_iif = skb_port
            .clone()
            .or_else(|| vm_port.filter(|_| request).and_then(|i| self.name(i)));
        let egress_iif = vm_port
            .filter(|_| request && same_bridge)
            .and_then(|i| self.name(i));
        let guest_mac = request
            .then(|| self.topo.vm_mac.as_deref().and_then(parse_mac))
            .flatten();
        let with = |iifname, oifname| nft::PacketView {
            iifname,
            oifname,
            ether_saddr: guest_mac,
            ..view.clone()
        };
        [with(ingress_iif, None), with(egress_iif, skb_port)]
    }

    /// A firewall bridge the request entered the IP layer at, when it was routed
    /// from there (the guest took that bridge's MAC for its gateway's) rather than
    /// from the bridge that should route it: the input device of the IP hooks.
    fn routed_in_at(&self, d: &Drop, stage: Stage) -> Option<String> {
        let input_hook = matches!(stage, Stage::Prerouting | Stage::Forward | Stage::Input);
        let fw_bridge = self
            .topo
            .chain
            .iter()
            .any(|h| h.is_bridge && h.iface.index == d.ifindex);
        (input_hook && fw_bridge)
            .then(|| self.name(d.ifindex))
            .flatten()
    }

    /// Observed hops plus the L3 stages implied between them.
    fn path(&self, t: &Trace) -> Vec<PathHop> {
        let t0 = t.first_ts();
        let mut out = Vec::new();
        for (hops, dir) in [
            (&t.req_hops, Direction::Request),
            (&t.reply_hops, Direction::Reply),
        ] {
            let start = out.len();
            self.push_hops(&mut out, hops, t0, dir);
            self.merge_functions(&mut out, start, t, t0, dir);
        }
        out
    }

    /// Deep mode: put each function-level hop of `dir` among the observed ones by
    /// time; a stage a function shows is no longer merely inferred.
    fn merge_functions(
        &self,
        out: &mut Vec<PathHop>,
        start: usize,
        t: &Trace,
        t0: u64,
        dir: Direction,
    ) {
        let mut shown = Vec::new();
        for f in t.func_hops.iter().filter(|f| f.direction == dir) {
            let Some(name) = self.symbols.resolve(f.addr) else {
                continue;
            };
            let name = name.split('+').next().unwrap_or(&name).to_string();
            let ts = f.ts_ns.saturating_sub(t0);
            let at = out[start..]
                .iter()
                .position(|h| h.ts_ns > ts)
                .map_or(out.len(), |p| start + p);
            let before = out[start..at].last().map(|h| h.stage);
            let stage = crate::deep::stage_of(&name).or(before).unwrap_or("routing");
            shown.push(stage);
            let prev_pkt = t
                .func_hops
                .iter()
                .take_while(|g| g.ts_ns < f.ts_ns)
                .filter(|g| g.direction == dir)
                .last();
            out.insert(
                at,
                PathHop {
                    stage,
                    ifname: self.name(f.ifindex),
                    bridge: None,
                    ts_ns: ts,
                    nat: prev_pkt.and_then(|p| nat_between(&p.pkt, &f.pkt)),
                    direction: dir.as_str(),
                    inferred: false,
                    function: Some(name),
                },
            );
        }
        let mut i = start;
        while i < out.len() {
            if out[i].inferred && shown.contains(&out[i].stage) {
                out.remove(i);
            } else {
                i += 1;
            }
        }
    }

    fn push_hops(&self, out: &mut Vec<PathHop>, hops: &[Hop], t0: u64, dir: Direction) {
        let mut prev: Option<&Hop> = None;
        for hop in hops {
            let nat = prev.and_then(|p| nat_between(&p.pkt, &hop.pkt));
            if let Some(p) = prev {
                for stage in implied(p, hop, dir) {
                    out.push(PathHop {
                        stage: stage.as_str(),
                        ifname: None,
                        bridge: None,
                        ts_ns: hop.ts_ns.saturating_sub(t0),
                        nat: None,
                        direction: dir.as_str(),
                        inferred: true,
                        function: None,
                    });
                }
            }
            out.push(PathHop {
                stage: hop.stage.as_str(),
                ifname: self.name(hop.ifindex),
                bridge: self.topo.masters.get(&hop.ifindex).cloned(),
                ts_ns: hop.ts_ns.saturating_sub(t0),
                nat,
                direction: dir.as_str(),
                inferred: false,
                function: None,
            });
            prev = Some(hop);
        }
    }
}

/// Where a netfilter drop at `stage` can have happened, in the order to replay:
/// inside the bridge, the bridge family's hooks (the side the skb is on first:
/// a request meets prerouting on its way in, a reply postrouting on its way out)
/// and then br_netfilter's pass of the IP `hook`; at IP prerouting, also the
/// bridge family's input hook, which runs with the skb on the bridge device
/// before any route too (br_pass_frame_up); elsewhere the IP `hook`.
fn replay_points<'a>(
    stage: Stage,
    dir: Direction,
    hook: &'a str,
    view: &'a nft::PacketView,
    ingress: &'a nft::PacketView,
    egress: &'a nft::PacketView,
) -> Vec<nft::Point<'a>> {
    let bridge = |h: &'a str| nft::Point {
        families: &["bridge"],
        hook: h,
        view: match h {
            "prerouting" | "input" => ingress,
            _ => egress,
        },
    };
    let ip = nft::Point {
        families: nft::L3_FAMILIES,
        hook,
        view,
    };
    match stage {
        Stage::Bridge => {
            let hooks: &[&str] = match dir {
                Direction::Request => nft::BRIDGE_HOOKS,
                Direction::Reply => &["forward", "output", "postrouting", "prerouting", "input"],
            };
            let mut points: Vec<_> = hooks.iter().map(|h| bridge(h)).collect();
            points.push(ip);
            points
        }
        Stage::Prerouting => vec![ip, bridge("input")],
        _ => vec![ip],
    }
}

/// How the walk reached a rule in another chain, and what a reject sends back:
/// appended to the hint.
fn walk_note(c: &nft::Culprit) -> String {
    let mut note = String::new();
    let family = if c.family == "bridge" {
        "bridge-family "
    } else {
        ""
    };
    if c.path.len() > 1 {
        note.push_str(&format!(
            " (reached in the {family}{} hook by {})",
            c.hook,
            c.path_text()
        ));
    } else if c.family == "bridge" {
        note.push_str(&format!(" (in the bridge-family {} hook)", c.hook));
    }
    for (set, elems) in &c.sets {
        const SHOWN: usize = 8;
        let more = elems.len().saturating_sub(SHOWN);
        let mut listed = elems
            .iter()
            .take(SHOWN)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if more > 0 {
            listed.push_str(&format!(" and {more} more"));
        }
        match listed.is_empty() {
            true => note.push_str(&format!("; set @{set} is empty")),
            false => note.push_str(&format!("; set @{set} holds {listed}")),
        }
    }
    if let Some(reply) = &c.reply {
        note.push_str(&format!("; the guest is sent {reply}"));
    }
    note
}

/// `52:54:00:12:34:56` → bytes.
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// L3 stages a packet must have crossed between two observed hops.
fn implied(a: &Hop, b: &Hop, dir: Direction) -> Vec<Stage> {
    let l3_entry = matches!(a.stage, Stage::Bridge | Stage::Tap) && !a.egress;
    match dir {
        Direction::Request if l3_entry && b.stage == Stage::Egress => {
            vec![
                Stage::Prerouting,
                Stage::Routing,
                Stage::Forward,
                Stage::Postrouting,
            ]
        }
        Direction::Request if l3_entry && b.stage == Stage::Input => {
            vec![Stage::Prerouting, Stage::Routing]
        }
        Direction::Reply if a.stage == Stage::Egress && !a.egress && b.stage != Stage::Egress => {
            vec![
                Stage::Prerouting,
                Stage::Routing,
                Stage::Forward,
                Stage::Postrouting,
            ]
        }
        _ => Vec::new(),
    }
}

/// Address translation between two sightings of the same packet.
fn nat_between(a: &PacketInfo, b: &PacketInfo) -> Option<Nat> {
    if a.saddr != b.saddr {
        return Some(Nat {
            kind: "snat",
            from: ip(a.saddr).to_string(),
            to: ip(b.saddr).to_string(),
        });
    }
    if a.daddr != b.daddr {
        return Some(Nat {
            kind: "dnat",
            from: ip(a.daddr).to_string(),
            to: ip(b.daddr).to_string(),
        });
    }
    None
}

fn flow_of(p: &PacketInfo) -> Flow {
    let icmp = p.proto == 1;
    Flow {
        src: ip(p.saddr).to_string(),
        dst: ip(p.daddr).to_string(),
        icmp_id: icmp.then_some(p.id),
        icmp_seq: icmp.then_some(p.seq),
        dns_id: (!icmp).then_some(p.id),
        qname: None,
    }
}

/// A sysctl of the network namespace we run in (`/proc/sys/net` is per-netns).
use crate::kernel::sysctl as read_sysctl;

/// The doctor checks that can explain a packet dying at `stage` (all of them
/// when the stage is unknown).
fn relevant(stage: Option<&str>, direction: Option<&str>) -> Option<&'static [&'static str]> {
    stage?;
    Some(match (stage, direction) {
        // The guest's own MAC could not be resolved: its port and bridges.
        (Some("neighbor"), Some("reply")) => &["link_up", "stp_state", "bridge_member"],
        _ => relevant_to_stage(stage),
    })
}

fn relevant_to_stage(stage: Option<&str>) -> &'static [&'static str] {
    match stage {
        Some("tap" | "bridge") => &[
            "vm_port",
            "bridge_member",
            "link_up",
            "stp_state",
            "mtu",
            "duplicate_ip",
            "br_netfilter",
        ],
        // A guest routing through a firewall bridge skips the hops and the
        // rules meant for the VM bridge (firewall_bridge_arp).
        Some("prerouting" | "routing") => {
            &["ip_forward", "rp_filter", "route", "firewall_bridge_arp"]
        }
        Some("forward" | "input") => &["firewall", "ip_forward", "dns", "firewall_bridge_arp"],
        Some("postrouting") => &["nat", "firewall", "firewall_bridge_arp"],
        Some("neighbor") => &["gateway"],
        Some("egress") => &["mtu", "link_up"],
        Some("remote") => &["nat", "gateway", "route", "firewall", "mtu"],
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(stage: Stage, egress: bool, s: [u8; 4], d: [u8; 4]) -> Hop {
        Hop {
            stage,
            ifindex: 0,
            ts_ns: 0,
            pkt: PacketInfo {
                saddr: s,
                daddr: d,
                proto: 1,
                ..Default::default()
            },
            egress,
        }
    }

    #[test]
    fn forward_path_implies_l3_stages() {
        let vm = [192, 0, 2, 100];
        let dst = [203, 0, 113, 8];
        let br = hop(Stage::Bridge, false, vm, dst);
        let up = hop(Stage::Egress, true, [198, 51, 100, 2], dst);
        assert_eq!(
            implied(&br, &up, Direction::Request),
            vec![
                Stage::Prerouting,
                Stage::Routing,
                Stage::Forward,
                Stage::Postrouting
            ]
        );
        assert_eq!(
            nat_between(&br.pkt, &up.pkt),
            Some(Nat {
                kind: "snat",
                from: "192.0.2.100".into(),
                to: "198.51.100.2".into()
            })
        );
        let tap = hop(Stage::Tap, false, vm, dst);
        assert!(implied(&tap, &br, Direction::Request).is_empty());
    }

    #[test]
    fn flow_fields_follow_protocol() {
        let icmp = PacketInfo {
            proto: 1,
            id: 7,
            seq: 3,
            ..Default::default()
        };
        let f = flow_of(&icmp);
        assert_eq!((f.icmp_id, f.icmp_seq, f.dns_id), (Some(7), Some(3), None));
        let dns = PacketInfo {
            proto: 17,
            id: 99,
            ..Default::default()
        };
        let f = flow_of(&dns);
        assert_eq!((f.icmp_id, f.dns_id), (None, Some(99)));
    }

    /// Inside the bridge: the bridge family's hooks, each with the view of its
    /// side (ingress for prerouting/input, egress after), then br_netfilter's IP
    /// hook; at IP prerouting the bridge's input hook too.
    #[test]
    fn replay_points_by_stage() {
        let ip = nft::PacketView::default();
        let ingress = nft::PacketView {
            iifname: Some("tap100i0".into()),
            ..Default::default()
        };
        let egress = nft::PacketView {
            oifname: Some("tap101i0".into()),
            ..Default::default()
        };
        let names = |pts: &[nft::Point]| {
            pts.iter()
                .map(|p| {
                    let side = p.view.iifname.clone().or(p.view.oifname.clone());
                    format!("{}:{}:{}", p.families[0], p.hook, side.unwrap_or_default())
                })
                .collect::<Vec<_>>()
        };
        let req = replay_points(
            Stage::Bridge,
            Direction::Request,
            "prerouting",
            &ip,
            &ingress,
            &egress,
        );
        assert_eq!(
            names(&req),
            [
                "bridge:prerouting:tap100i0",
                "bridge:input:tap100i0",
                "bridge:forward:tap101i0",
                "bridge:output:tap101i0",
                "bridge:postrouting:tap101i0",
                "ip:prerouting:"
            ]
        );
        let reply = replay_points(
            Stage::Bridge,
            Direction::Reply,
            "forward",
            &ip,
            &ingress,
            &egress,
        );
        assert_eq!(names(&reply)[0], "bridge:forward:tap101i0");
        let pre = replay_points(
            Stage::Prerouting,
            Direction::Request,
            "prerouting",
            &ip,
            &ingress,
            &egress,
        );
        assert_eq!(names(&pre), ["ip:prerouting:", "bridge:input:tap100i0"]);
        let fwd = replay_points(
            Stage::Forward,
            Direction::Request,
            "forward",
            &ip,
            &ingress,
            &egress,
        );
        assert_eq!(names(&fwd), ["ip:forward:"]);
    }
}
