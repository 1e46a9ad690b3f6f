//! Turn the kernel's counters into what every view shows: per VM, its drop points
//! with stage, reason, location, totals and rates. Pure logic, no I/O.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use serde::Serialize;
use tracer_common::{
    DropKey, PacketInfo, CLASS_ARP, CLASS_DHCP, CLASS_DNS, CLASS_ICMP, CLASS_TCP, CLASS_UDP,
    WDIR_FROM_VM, WDIR_TO_VM, WFLAG_HAS_DST,
};

use super::inventory::{Inventory, VmPort};
use crate::{
    correlate::Direction,
    explain::stage::{drop_stage, DropFacts},
    topology::Role,
};

/// Counts of one drop point, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub packets: u64,
    pub bytes: u64,
}

/// Kernel-side facts that turn numbers into names.
pub trait Names {
    fn reason(&self, value: u32) -> Option<String>;
    fn location(&self, addr: u64) -> Option<String>;
    /// The rule dropping the guest's TCP segment `pkt` at `hook` (entering by
    /// `iif`), when it is a REJECT that answers with a TCP reset.
    fn tcp_reset_rule(&self, _hook: &'static str, _pkt: &PacketInfo, _iif: &str) -> Option<String> {
        None
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Example {
    pub src: String,
    pub dst: String,
    pub proto: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DropPoint {
    /// One of the contract's stage words.
    pub stage: &'static str,
    pub reason: Option<String>,
    pub location: Option<String>,
    /// The device the packet was on when dropped.
    pub ifname: Option<String>,
    /// `from_vm`, `to_vm`, or null when the packet could not say.
    pub direction: Option<&'static str>,
    /// icmp, dns, tcp, udp, arp or other.
    pub proto: &'static str,
    /// Packets dropped here since watch started.
    pub total: u64,
    pub bytes: u64,
    /// Packets per second over the last interval.
    pub per_s: f64,
    /// Attributed through the conntrack entry (the packet was NAT-translated).
    pub via_conntrack: bool,
    /// A recent packet dropped here.
    pub example: Option<Example>,
    /// The rule here is a REJECT `with tcp reset`: the host answered each
    /// packet dropped here with a TCP reset to the guest (as many as `total`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_resets_sent: Option<u64>,
    /// That rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reset_rule: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VmReport {
    pub port: String,
    pub ifindex: u32,
    pub bridge: String,
    pub vm_ips: Vec<String>,
    pub macs: Vec<String>,
    /// Proxmox VMID or libvirt domain, when the hypervisor's configuration names it.
    pub vmid: Option<String>,
    /// The VM's name in that configuration.
    pub vm_name: Option<String>,
    /// The VLAN of the guest's untagged frames, when known (the port's PVID on a
    /// VLAN-aware bridge, the VLAN device under its bridge, the configured tag).
    pub vlan: Option<u16>,
    pub drops_total: u64,
    pub drops_per_s: f64,
    /// Busiest first.
    pub drops: Vec<DropPoint>,
}

/// pathtrace's own health: what it runs and what it could not count.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SelfStats {
    pub programs_attached: usize,
    pub vm_ports: usize,
    /// Drop samples that did not fit in the ring buffer (counts are unaffected).
    pub events_lost: u64,
    /// Drops not counted because the drop-point map was full.
    pub map_full: u64,
    pub map_entries: usize,
    pub map_capacity: u32,
    /// Drops in this namespace that belonged to no watched VM.
    pub unattributed_drops: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Snapshot {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Unix time, seconds.
    pub ts: f64,
    pub interval_s: f64,
    pub vms: Vec<VmReport>,
    #[serde(rename = "self")]
    pub self_stats: SelfStats,
}

/// Remembers the previous counts (for rates) and the latest example of each point.
#[derive(Default)]
pub struct Reporter {
    previous: HashMap<DropKey, Totals>,
    examples: HashMap<DropKey, PacketInfo>,
}

impl Reporter {
    pub fn sample(&mut self, key: DropKey, pkt: PacketInfo) {
        self.examples.insert(key, pkt);
    }

    /// Forget a port that went away.
    pub fn forget_port(&mut self, ifindex: u32) {
        self.previous.retain(|k, _| k.port != ifindex);
        self.examples.retain(|k, _| k.port != ifindex);
    }

    /// Build the per-VM report from the current counters; `elapsed` seconds since
    /// the previous call give the rates.
    pub fn report(
        &mut self,
        counts: &HashMap<DropKey, Totals>,
        inv: &Inventory,
        names: &dyn Names,
        elapsed: f64,
    ) -> Vec<VmReport> {
        let mut vms: Vec<VmReport> = inv.ports.values().map(empty_report).collect();
        for (key, totals) in counts {
            let Some(vm) = vms.iter_mut().find(|v| v.ifindex == key.port) else {
                continue;
            };
            let before = self.previous.get(key).map_or(0, |t| t.packets);
            let per_s = if elapsed > 0.0 {
                round2(totals.packets.saturating_sub(before) as f64 / elapsed)
            } else {
                0.0
            };
            let port = &inv.ports[&key.port];
            let point = describe(key, totals, per_s, self.examples.get(key), port, inv, names);
            vm.drops_total = vm.drops_total.saturating_add(point.total);
            vm.drops_per_s = round2(vm.drops_per_s + point.per_s);
            vm.drops.push(point);
        }
        for vm in &mut vms {
            vm.drops.sort_by(|a, b| {
                b.per_s
                    .total_cmp(&a.per_s)
                    .then(b.total.cmp(&a.total))
                    .then(a.stage.cmp(b.stage))
            });
        }
        self.previous = counts.clone();
        vms
    }
}

/// Two decimals are all a rate needs on screen and in JSON.
fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn empty_report(p: &VmPort) -> VmReport {
    VmReport {
        port: p.name.clone(),
        ifindex: p.ifindex,
        bridge: p.bridge.clone(),
        vm_ips: p.ips.iter().map(IpAddr::to_string).collect(),
        macs: p.macs.iter().map(super::inventory::format_mac).collect(),
        vmid: p.vmid.clone(),
        vm_name: p.vm_name.clone(),
        vlan: p.vlan,
        drops_total: 0,
        drops_per_s: 0.0,
        drops: Vec::new(),
    }
}

fn describe(
    key: &DropKey,
    totals: &Totals,
    per_s: f64,
    example: Option<&PacketInfo>,
    port: &VmPort,
    inv: &Inventory,
    names: &dyn Names,
) -> DropPoint {
    let reason = names.reason(key.reason);
    let location = names.location(key.location);
    let function = location
        .as_deref()
        .map(|l| l.split('+').next().unwrap_or(l));
    let direction = match key.dir {
        WDIR_FROM_VM => Some(Direction::Request),
        WDIR_TO_VM => Some(Direction::Reply),
        _ => None,
    };
    let dev_role = if key.dev == 0 {
        None
    } else if inv.ports.contains_key(&key.dev) {
        Some(Role::Port)
    } else if inv.bridges.contains(&key.dev) {
        Some(Role::Bridge)
    } else if inv.bridge_ports.contains(&key.dev) {
        // A netfilter drop with the skb on a bridge port is br_netfilter's
        // bridged pass (routed packets are on the bridge device itself).
        Some(Role::Hop)
    } else {
        Some(Role::Uplink)
    };
    // The limited broadcast (a DHCP DISCOVER's) is delivered to the host too.
    let dst_local = example.is_some_and(|p| {
        let dst = p.dst();
        inv.local_addrs.contains(&dst) || matches!(dst, IpAddr::V4(v4) if v4.is_broadcast())
    });
    let facts = DropFacts {
        reason: reason.as_deref(),
        function,
        direction,
        has_dst: key.flags & WFLAG_HAS_DST != 0,
        dev_known: key.dev != 0,
        dev_role,
        dev_is_bridge: inv.bridges.contains(&key.dev),
        dst_local,
        // Both ends on the VM's own bridge: bridged, never routed.
        bridged: example.is_some_and(|p| same_lan(p, port, inv)),
    };
    let stage = drop_stage(&facts);
    let reset_rule = match (key.class, key.dir, reason.as_deref(), example) {
        (CLASS_TCP, WDIR_FROM_VM, Some("NETFILTER_DROP"), Some(p)) => {
            names.tcp_reset_rule(hook_of(stage), p, &port.bridge)
        }
        _ => None,
    };
    DropPoint {
        stage: stage.as_str(),
        reason,
        location,
        ifname: inv.names.get(&key.dev).cloned(),
        direction: match key.dir {
            WDIR_FROM_VM => Some("from_vm"),
            WDIR_TO_VM => Some("to_vm"),
            _ => None,
        },
        proto: class_word(key.class),
        total: totals.packets,
        bytes: totals.bytes,
        per_s,
        via_conntrack: key.flags & tracer_common::WFLAG_VIA_CT != 0,
        example: example.map(|p| example_of(key.class, p)),
        tcp_resets_sent: reset_rule.is_some().then_some(totals.packets),
        reset_rule,
    }
}

/// The netfilter hook a guest's packet dropped at `stage` met (as trace mode
/// replays it).
fn hook_of(stage: crate::correlate::Stage) -> &'static str {
    use crate::correlate::Stage;
    match stage {
        Stage::Prerouting | Stage::Bridge => "prerouting",
        Stage::Input => "input",
        Stage::Postrouting => "postrouting",
        _ => "forward",
    }
}

/// Source and destination are both guests on the same bridge as this port.
fn same_lan(p: &PacketInfo, port: &VmPort, inv: &Inventory) -> bool {
    let on_bridge: HashSet<IpAddr> = inv
        .ports
        .values()
        .filter(|q| q.bridge == port.bridge)
        .flat_map(|q| q.ips.iter().copied())
        .collect();
    on_bridge.contains(&p.src()) && on_bridge.contains(&p.dst())
}

pub fn class_word(class: u8) -> &'static str {
    match class {
        CLASS_ICMP => "icmp",
        CLASS_DNS => "dns",
        CLASS_TCP => "tcp",
        CLASS_UDP => "udp",
        CLASS_ARP => "arp",
        CLASS_DHCP => "dhcp",
        _ => "other",
    }
}

fn example_of(class: u8, p: &PacketInfo) -> Example {
    let ports = matches!(class, CLASS_TCP | CLASS_UDP | CLASS_DNS | CLASS_DHCP);
    Example {
        src: p.src().to_string(),
        dst: p.dst().to_string(),
        proto: class_word(class),
        sport: ports.then_some(p.sport),
        dport: ports.then_some(p.dport),
        icmp_type: (class == CLASS_ICMP).then_some(p.icmp_type),
    }
}

/// A random drop point for the property tests: (port, dev, reason, location,
/// class, dir, flags, packets).
#[cfg(test)]
pub type FuzzKey = (u32, u32, u32, u64, u8, u8, u8, u64);

/// Random drop points against a small inventory, for the property tests.
#[cfg(test)]
pub fn fuzz_entry(keys: &[FuzzKey], elapsed: f64) {
    struct NoNames;
    impl Names for NoNames {
        fn reason(&self, v: u32) -> Option<String> {
            v.is_multiple_of(2).then(|| "NETFILTER_DROP".to_string())
        }
        fn location(&self, a: u64) -> Option<String> {
            a.is_multiple_of(3).then(|| format!("f{a}+0x1"))
        }
    }
    let mut inv = Inventory::default();
    for i in 1..3 {
        inv.ports.insert(
            i,
            VmPort {
                ifindex: i,
                name: format!("tap{i}"),
                bridge: "br".into(),
                macs: vec![],
                ips: vec![IpAddr::from([192, 0, 2, i as u8])],
                vmid: None,
                vm_name: None,
                vlan: None,
            },
        );
    }
    inv.bridges.insert(3);
    let mut r = Reporter::default();
    let mut counts = HashMap::new();
    for &(port, dev, reason, location, class, dir, flags, packets) in keys {
        let key = DropKey {
            location,
            port,
            dev,
            reason,
            class,
            dir,
            flags,
            _pad: 0,
        };
        r.sample(
            key,
            PacketInfo {
                saddr: tracer_common::addr4([192, 0, 2, (packets % 4) as u8]),
                ..Default::default()
            },
        );
        counts.insert(
            key,
            Totals {
                packets,
                bytes: packets,
            },
        );
    }
    let a = r.report(&counts, &inv, &NoNames, elapsed);
    let b = r.report(&HashMap::new(), &inv, &NoNames, elapsed);
    assert_eq!(a.len(), b.len());
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::WFLAG_VIA_CT;

    struct FakeNames;
    impl Names for FakeNames {
        fn reason(&self, v: u32) -> Option<String> {
            Some(
                if v == 6 {
                    "NETFILTER_DROP"
                } else {
                    "NOT_SPECIFIED"
                }
                .into(),
            )
        }
        fn location(&self, addr: u64) -> Option<String> {
            Some(
                if addr == 0x1000 {
                    "nft_do_chain+0x3e8"
                } else {
                    "br_handle_frame+0x10"
                }
                .into(),
            )
        }
    }

    fn inventory() -> Inventory {
        let mut inv = Inventory::default();
        for (i, name, ip) in [(7, "tap100i0", 100), (8, "tap101i0", 101)] {
            inv.ports.insert(
                i,
                VmPort {
                    ifindex: i,
                    name: name.into(),
                    bridge: "vmbr0".into(),
                    macs: vec![[0x52, 0x54, 0, 0, 0, ip]],
                    ips: vec![IpAddr::from([192, 0, 2, ip])],
                    vmid: None,
                    vm_name: None,
                    vlan: None,
                },
            );
        }
        inv.bridges.insert(3);
        inv.names.insert(3, "vmbr0".into());
        inv.names.insert(4, "eth0".into());
        inv.local_addrs.insert(IpAddr::from([192, 0, 2, 1]));
        inv
    }

    fn key(port: u32, dev: u32, reason: u32, location: u64, flags: u8) -> DropKey {
        DropKey {
            location,
            port,
            dev,
            reason,
            class: CLASS_ICMP,
            dir: WDIR_FROM_VM,
            flags,
            _pad: 0,
        }
    }

    #[test]
    fn attributes_counts_rates_and_stages() {
        let inv = inventory();
        let mut r = Reporter::default();
        let fwd = key(8, 3, 6, 0x1000, WFLAG_HAS_DST);
        let pre = key(8, 3, 6, 0x1000, 0);
        let mut counts = HashMap::from([(
            fwd,
            Totals {
                packets: 4,
                bytes: 336,
            },
        )]);
        let vms = r.report(&counts, &inv, &FakeNames, 1.0);
        assert!(vms[0].drops.is_empty(), "healthy VM has no drops");
        assert_eq!(vms[1].drops[0].stage, "forward");
        assert_eq!(vms[1].drops[0].reason.as_deref(), Some("NETFILTER_DROP"));
        assert_eq!(vms[1].drops[0].ifname.as_deref(), Some("vmbr0"));
        assert_eq!(vms[1].drops[0].per_s, 4.0);
        counts.insert(
            fwd,
            Totals {
                packets: 10,
                bytes: 840,
            },
        );
        counts.insert(
            pre,
            Totals {
                packets: 1,
                bytes: 84,
            },
        );
        let vms = r.report(&counts, &inv, &FakeNames, 2.0);
        let d = &vms[1].drops;
        assert_eq!((d[0].stage, d[0].total, d[0].per_s), ("forward", 10, 3.0));
        assert_eq!(d[1].stage, "prerouting", "no route yet at a netfilter drop");
        assert_eq!(vms[1].drops_total, 11);
    }

    /// An IPv6 drop: its example in RFC 5952 form, the host's own IPv6
    /// address making it an input drop, guests' IPv6 addresses a bridged one.
    #[test]
    fn ipv6_examples_and_stages() {
        let mut inv = inventory();
        let host6: IpAddr = "2001:db8:1::1".parse().unwrap();
        inv.local_addrs.insert(host6);
        for (i, last) in [(7, 0x100), (8, 0x101)] {
            let v6 = IpAddr::from([0x2001, 0xdb8, 1, 0, 0, 0, 0, last]);
            inv.ports.get_mut(&i).unwrap().ips.push(v6);
        }
        let echo = |dst: &str| {
            let mut p = PacketInfo {
                proto: 58,
                icmp_type: 128,
                ..Default::default()
            };
            p.set_addrs("2001:db8:1::100".parse().unwrap(), dst.parse().unwrap());
            p
        };
        let mut r = Reporter::default();
        let to_host = key(7, 3, 6, 0x1000, WFLAG_HAS_DST);
        let to_guest = key(7, 3, 6, 0x2000, 0);
        r.sample(to_host, echo("2001:db8:1::1"));
        r.sample(to_guest, echo("2001:db8:1::101"));
        let one = Totals {
            packets: 1,
            bytes: 104,
        };
        let counts = HashMap::from([(to_host, one), (to_guest, one)]);
        let vms = r.report(&counts, &inv, &FakeNames, 1.0);
        assert_eq!(vms[0].vm_ips, ["192.0.2.100", "2001:db8:1::100"]);
        let by_dst = |dst: &str| {
            vms[0]
                .drops
                .iter()
                .find(|d| d.example.as_ref().unwrap().dst == dst)
                .unwrap()
        };
        let host = by_dst("2001:db8:1::1");
        assert_eq!(host.stage, "input");
        let ex = host.example.as_ref().unwrap();
        assert_eq!(
            (ex.src.as_str(), ex.icmp_type),
            ("2001:db8:1::100", Some(128))
        );
        assert_eq!(by_dst("2001:db8:1::101").stage, "bridge", "guest to guest");
    }

    #[test]
    fn input_and_nat_and_examples() {
        let inv = inventory();
        let mut r = Reporter::default();
        let k = key(7, 3, 6, 0x1000, WFLAG_HAS_DST | WFLAG_VIA_CT);
        r.sample(
            k,
            PacketInfo {
                saddr: tracer_common::addr4([192, 0, 2, 100]),
                daddr: tracer_common::addr4([192, 0, 2, 1]),
                proto: 1,
                icmp_type: 8,
                ..Default::default()
            },
        );
        let counts = HashMap::from([(
            k,
            Totals {
                packets: 1,
                bytes: 84,
            },
        )]);
        let vms = r.report(&counts, &inv, &FakeNames, 1.0);
        let p = &vms[0].drops[0];
        assert_eq!(p.stage, "input");
        assert!(p.via_conntrack);
        let ex = p.example.as_ref().unwrap();
        assert_eq!((ex.dst.as_str(), ex.icmp_type), ("192.0.2.1", Some(8)));
        r.forget_port(7);
        assert!(r.examples.is_empty());
    }

    #[test]
    fn drops_of_unknown_ports_are_not_shown() {
        let inv = inventory();
        let counts = HashMap::from([(
            key(99, 3, 6, 0x1000, 0),
            Totals {
                packets: 1,
                bytes: 1,
            },
        )]);
        let vms = Reporter::default().report(&counts, &inv, &FakeNames, 1.0);
        assert!(vms.iter().all(|v| v.drops.is_empty()));
    }
}
