//! The path a verdict shows: the observed hops, the L3 stages implied between
//! them, NAT seen between two hops, and deep mode's function hops.

use super::*;

impl Explainer {
    /// Observed hops plus the L3 stages implied between them.
    pub(super) fn path(&self, t: &Trace) -> Vec<PathHop> {
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
    pub(super) fn merge_functions(
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
            let stage = crate::deep::stage_of(&name)
                .or(before)
                .unwrap_or(Stage::Routing);
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
                    direction: dir,
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

    pub(super) fn push_hops(&self, out: &mut Vec<PathHop>, hops: &[Hop], t0: u64, dir: Direction) {
        let mut prev: Option<&Hop> = None;
        for hop in hops {
            let nat = prev.and_then(|p| nat_between(&p.pkt, &hop.pkt));
            if let Some(p) = prev.filter(|_| self.topo.lan.is_some()) {
                out.extend(self.lan_implied(p, hop, t0, dir));
            } else if let Some(p) = prev {
                for stage in implied(p, hop, dir) {
                    out.push(PathHop {
                        stage,
                        ifname: None,
                        bridge: None,
                        ts_ns: hop.ts_ns.saturating_sub(t0),
                        nat: None,
                        direction: dir,
                        inferred: true,
                        function: None,
                    });
                }
            }
            out.push(PathHop {
                stage: hop.stage,
                ifname: self.name(hop.ifindex),
                bridge: self.topo.masters.get(&hop.ifindex).cloned(),
                ts_ns: hop.ts_ns.saturating_sub(t0),
                nat,
                direction: dir,
                inferred: false,
                function: None,
            });
            prev = Some(hop);
        }
    }
}

/// L3 stages a packet must have crossed between two observed hops.
pub(super) fn implied(a: &Hop, b: &Hop, dir: Direction) -> Vec<Stage> {
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
pub(super) fn nat_between(a: &PacketInfo, b: &PacketInfo) -> Option<Nat> {
    if a.saddr != b.saddr {
        return Some(Nat {
            kind: "snat".into(),
            from: a.src().to_string(),
            to: b.src().to_string(),
        });
    }
    if a.daddr != b.daddr {
        return Some(Nat {
            kind: "dnat".into(),
            from: a.dst().to_string(),
            to: b.dst().to_string(),
        });
    }
    None
}

pub(super) fn flow_of(p: &PacketInfo) -> Flow {
    match p.kind {
        tracer_common::PKT_DHCP => return super::dhcp::flow_of(p),
        tracer_common::PKT_ARP => return super::arp::flow_of(p),
        _ => {}
    }
    // ICMP or ICMPv6: an echo's id and sequence either way.
    let icmp = p.proto == 1 || p.proto == 58;
    Flow {
        src: p.src().to_string(),
        dst: p.dst().to_string(),
        icmp_id: icmp.then_some(p.id),
        icmp_seq: icmp.then_some(p.seq),
        dns_id: (!icmp).then_some(p.id),
        ..Flow::default()
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
                saddr: tracer_common::addr4(s),
                daddr: tracer_common::addr4(d),
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
                kind: "snat".into(),
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
}
