//! Blame for drops outside the firewall: routing, reverse-path filtering, MTU,
//! a bridge port that does not forward, a guest port that is down.

use super::*;
use crate::host::Host;

impl Explainer {
    pub(super) fn blame(&self, t: &Trace, d: &Drop, facts: &DropFacts) -> Blame {
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
            "PKT_TOO_BIG" => self.blame_mtu(t, d, stage, what),
            "IP_INHDR" if stage == Stage::Forward && d.pkt.is_v6() => Blame {
                stage,
                rule: Some(format!("IPv6 hop limit {} set by the guest", d.pkt.ttl)),
                hint: format!(
                    "{what} arrived with hop limit {} and expires at this host, which routes it (one hop); the guest gets ICMPv6 time exceeded — expected for traceroute, otherwise fix the guest's hop limit (sysctl net.ipv6.conf.all.hop_limit=64 inside the guest)",
                    d.pkt.ttl
                ),
                ifname: None,
            },
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
            // The port it came in by, its VLAN, then the ports it could leave by.
            _ if stage == Stage::Bridge => self
                .blame_bridge_port(d, stage, what)
                .or_else(|| self.blame_vlan(t, d, facts.function, what))
                .or_else(|| self.blame_bridge_egress(t, d, what))
                .unwrap_or_else(generic),
            // Freed on a bond's slave the bond takes no frames from.
            _ if self.topo.upper_of(d.ifindex).is_some() => self
                .blame_bond_slave(d, stage, what)
                .unwrap_or_else(generic),
            _ => generic(),
        }
    }

    pub(super) fn blame_rp_filter(&self, d: &Drop, stage: Stage, what: &str) -> Blame {
        let iif = self.inbound_name(d.direction);
        if self.topo.is_v6() {
            // IPv6 has no rp_filter sysctl: a firewall rule does it.
            return Blame {
                stage,
                rule: Some(format!("reverse-path filter on {iif}")),
                hint: format!(
                    "reverse-path filtering on {iif} rejects {what} (its source is not routed back via {iif}): an nft `fib saddr . iif oif missing drop` or ip6tables `rpfilter` rule; add the route back to the source, or exempt it"
                ),
                ifname: None,
            };
        }
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
    pub(super) fn blame_mtu(&self, t: &Trace, d: &Drop, stage: Stage, what: &str) -> Blame {
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
        let mtus = format!(
            "MTU {up} {up_mtu} < {} bytes ({} MTU {in_mtu})",
            d.pkt.ip_len, inbound.name
        );
        let fate = self.frag_needed_fate(t);
        let (answer, icmp) = match self.topo.is_v6() {
            true => ("Packet Too Big", "ICMPv6 Packet-Too-Big"),
            false => ("fragmentation needed", "ICMP fragmentation-needed"),
        };
        let delivered = match (&fate, t.port_ifindex.and_then(|p| self.name(p))) {
            (service::FragNeeded::Delivered, Some(port)) => format!(
                "; that ICMP reached the guest's port {port}, so a guest doing path-MTU discovery adapts — if its connections still stall, the guest's own firewall drops ICMP"
            ),
            _ => String::new(),
        };
        if let service::FragNeeded::Eaten(rule, fix) = fate {
            return Blame {
                stage,
                rule: Some(format!("{mtus}; {icmp} dropped by {rule}")),
                hint: format!(
                    "{}: {what} is {} bytes{df}, more than {up}'s MTU {up_mtu} (the guest's side, {}, has MTU {in_mtu}); the host answers '{answer}', but rule \"{rule}\" drops that ICMP before it reaches the guest, {}; let it through: {fix} (or make the MTUs agree: ip link set {up} mtu {in_mtu})",
                    service::BLACK_HOLE,
                    d.pkt.ip_len,
                    inbound.name,
                    service::NEVER_LEARNS
                ),
                ifname: Some(up),
            };
        }
        Blame {
            stage,
            rule: Some(mtus),
            hint: format!(
                "{what} is {} bytes{df}, more than {up}'s MTU {up_mtu} (the guest's side, {}, has MTU {in_mtu}); the host answered '{answer}'{delivered} — make the MTUs agree: ip link set {up} mtu {in_mtu}, or lower the guest's MTU to {up_mtu}",
                d.pkt.ip_len, inbound.name
            ),
            ifname: Some(up),
        }
    }

    /// Dropped by the bridge: a port not forwarding (STP, or set by hand).
    pub(super) fn blame_bridge_port(&self, d: &Drop, stage: Stage, what: &str) -> Option<Blame> {
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
    pub(super) fn blame_port_down(&self, t: &Trace, what: &str) -> Option<Blame> {
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
    pub(super) fn inbound_name(&self, dir: Direction) -> String {
        match dir {
            Direction::Request => self.topo.inbound().name.clone(),
            Direction::Reply => self.uplink_name(),
        }
    }

    pub(super) fn blame_routing(&self, stage: Stage, what: &str, reason: &str) -> Blame {
        let iif = self.inbound_name(Direction::Request);
        let v6 = self.topo.is_v6();
        let global = match v6 {
            // IPv6 forwarding is decided by `all` (a device's own setting
            // only makes it behave as a host toward its link).
            true => read_sysctl("net/ipv6/conf/all/forwarding"),
            false => read_sysctl("net/ipv4/ip_forward"),
        };
        let per_if = match v6 {
            true => None,
            false => read_sysctl(&format!("net/ipv4/conf/{iif}/forwarding")),
        };
        let (rule, hint) = if v6 && global.as_deref() == Some("0") {
            (
                "sysctl net.ipv6.conf.all.forwarding=0".to_string(),
                format!(
                    "IPv6 forwarding is off on this host, so it drops {what} instead of routing it; turn it on: sysctl -w net.ipv6.conf.all.forwarding=1 (and persist it in /etc/sysctl.d/; with forwarding on, an uplink that takes its default route from router advertisements needs accept_ra=2)"
                ),
            )
        } else if global.as_deref() == Some("0") {
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
        } else if let Some(gone) = Host::read()
            .ok()
            .as_ref()
            .and_then(crate::topology::down::routes_gone)
        {
            let dst = self.topo.dst;
            (
                format!(
                    "no route to {dst} ({} {})",
                    gone.dev,
                    gone.problem.rule_words()
                ),
                format!(
                    "the host has no route for {what} to {dst} ({reason}): {}; {}",
                    gone.words(),
                    gone.fix()
                ),
            )
        } else {
            let dst = self.topo.dst;
            let ip = if v6 { "ip -6" } else { "ip" };
            (
                format!("no route to {dst}"),
                format!(
                    "the host has no route for {what} to {dst} ({reason}); add one (e.g. a default route: {ip} route add default via GATEWAY dev UPLINK), then check: {ip} route get {dst} from {} iif {iif}",
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
}
