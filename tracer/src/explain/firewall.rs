//! Blame for netfilter drops: replay the packet, as it was at the hook that
//! dropped it, against the nftables and iptables rule sets, and name the rule.

use super::*;

impl Explainer {
    pub(super) fn blame_netfilter(
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
        // The host's tables (or the VM's configuration) may know the guest by
        // a MAC it no longer sends from: then no bridge rule drops the frame as
        // replayed, yet the kernel dropped it. Replay without assuming the MAC:
        // a rule on the sender's MAC that may drop it is the answer.
        let found = found.or_else(|| {
            if stage != Stage::Bridge || ingress.ether_saddr.is_none() {
                return None;
            }
            let [ingress, egress] = [&ingress, &egress].map(|v| nft::PacketView {
                ether_saddr: None,
                ..v.clone()
            });
            let points = replay_points(stage, d.direction, hook, &view, &ingress, &egress);
            self.nft_blame(&points, d, what)
        });
        let (rule, mut hint) = found.unwrap_or_else(|| {
            (
                None,
                format!(
                    "a firewall rule in the {hook} hook drops {what}, but no matching nftables or iptables rule was found; list the rule sets with counters: nft list ruleset; {} -L -v -n",
                    iptables::legacy_tool(&view)
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

    pub(super) fn nft_blame(
        &self,
        points: &[nft::Point],
        d: &Drop,
        what: &str,
    ) -> Option<(Option<String>, String)> {
        let c = nft::find_culprit_at(points)?;
        // A generated rule set is fixed where it is generated from.
        let pkt = points.first().map(|p| p.view)?;
        // A reverse-path filter's fault is the route back, said with the
        // packet as the rule's own family saw it.
        let ip_view = points
            .iter()
            .find(|p| p.families.contains(&c.family.as_str()))
            .map_or(pkt, |p| p.view);
        if let Some(hint) = rpf::hint(&c, ip_view, what) {
            return Some((Some(c.describe()), hint));
        }
        if let Some(hint) = pve_firewall::hint(&c, pkt, what, &self.config_root)
            .or_else(|| libvirt::hint(&c, pkt, what, self.topo.vm_subnet))
            .or_else(|| nwfilter::hint(&c, pkt, what, &self.config_root))
        {
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

    pub(super) fn legacy_blame(
        &self,
        hook: &str,
        view: &nft::PacketView,
        what: &str,
    ) -> Option<(Option<String>, String)> {
        let c = iptables::find_culprit(hook, view)?;
        // ip6tables-legacy for an IPv6 packet (its own rule set).
        let tool = iptables::legacy_tool(view);
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
    pub(super) fn packet_view(&self, t: &Trace, d: &Drop, stage: Stage) -> nft::PacketView {
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
                pkt.daddr = tracer_common::addr_bytes(self.topo.vm_ip);
            }
        } else {
            pkt.saddr = t.request.saddr;
        }
        let l4 = pkt.proto == 17 || pkt.proto == 6;
        let input_side = matches!(
            stage,
            Stage::Bridge | Stage::Prerouting | Stage::Forward | Stage::Input
        );
        nft::PacketView {
            route_back: input_side.then(|| self.route_back(pkt.src())).flatten(),
            saddr: Some(pkt.src()),
            daddr: Some(pkt.dst()),
            proto: pkt.proto,
            icmp_type: (pkt.proto == 1 || pkt.proto == 58).then_some(pkt.icmp_type),
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
            ct_state: match (d.direction, pkt.proto) {
                (Direction::Reply, _) => Some("established"),
                // A TCP SYN opens a connection; any other segment is of one.
                (Direction::Request, 6) if pkt.tcp_flags & tracer_common::TCP_SYN != 0 => {
                    Some("new")
                }
                (Direction::Request, 6) => Some("established"),
                _ => None,
            },
            // ARP (`--proto arp`): `saddr`/`daddr` are its sender and target.
            l3: if pkt.kind == tracer_common::PKT_ARP {
                nft::L3::Arp
            } else if pkt.is_v6() {
                nft::L3::Ipv6
            } else {
                nft::L3::Ipv4
            },
            ..Default::default()
        }
    }

    /// Where the host routes `src` back to now, as a reverse-path filter's
    /// `fib saddr` lookup finds it (None: the device is not known by name).
    fn route_back(&self, src: IpAddr) -> Option<nft::RouteBack> {
        match crate::host::route_now(src) {
            Some(r) if r.kind != crate::host::RouteKind::Refused => {
                r.oif.and_then(|i| self.name(i)).map(nft::RouteBack::Via)
            }
            _ => Some(nft::RouteBack::Missing),
        }
    }

    /// The packet as the bridge family's hooks see it, whose devices are the
    /// bridge's ports, not the bridge: [ingress, egress]. In prerouting and input
    /// the skb is on the port the frame came in by (input: on the bridge device,
    /// having come from the VM's port, for the guest's request); in forward,
    /// output and postrouting on the port it leaves by, and the guest's request
    /// came in by the VM's port when that port is on the same bridge. What the
    /// skb does not show stays unknown.
    pub(super) fn bridge_views(
        &self,
        t: &Trace,
        d: &Drop,
        view: &nft::PacketView,
    ) -> [nft::PacketView; 2] {
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
    pub(super) fn routed_in_at(&self, d: &Drop, stage: Stage) -> Option<String> {
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
}

/// Where a netfilter drop at `stage` can have happened, in the order to replay:
/// inside the bridge, the bridge family's hooks (the side the skb is on first:
/// a request meets prerouting on its way in, a reply postrouting on its way out)
/// and then br_netfilter's pass of the IP `hook`; at IP prerouting, also the
/// bridge family's input hook, which runs with the skb on the bridge device
/// before any route too (br_pass_frame_up); elsewhere the IP `hook`.
pub(super) fn replay_points<'a>(
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
        families: view.families(),
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
pub(super) fn walk_note(c: &nft::Culprit) -> String {
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
pub(super) fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
