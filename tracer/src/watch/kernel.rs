//! Watch mode's side of the kernel: load and attach the drop counter, keep its
//! VM maps in step with the inventory, and read its counters and samples.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use anyhow::{Context, Result};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuHashMap, RingBuf};
use tracer_common::{
    addr_key, mac_key, names, DropCount, DropKey, DropSample, PacketInfo, WatchConfig,
    CNT_DROPS_MAP_FULL, CNT_SAMPLES_LOST, CNT_UNATTRIBUTED,
};

use super::{inventory::Inventory, report::Totals};
use crate::{
    kernel::{btf::KernelBtf, tracefs},
    probes::{record, Probes},
    topology::current_netns_inum,
};

/// Capacity of the `DROPS` map, as declared in the eBPF object.
pub const DROPS_CAPACITY: u32 = tracer_common::capacity::DROPS;

pub struct WatchKernel {
    probes: Probes,
    drops: PerCpuHashMap<MapData, DropKey, DropCount>,
    samples: RingBuf<MapData>,
    ports: BpfHashMap<MapData, u32, u8>,
    addrs: BpfHashMap<MapData, u32, u32>,
    addrs6: BpfHashMap<MapData, [u8; 16], u32>,
    macs: BpfHashMap<MapData, u64, u32>,
    /// What we put in the four maps above, to remove exactly what went away.
    installed: Installed,
}

#[derive(Default, PartialEq)]
struct Installed {
    ports: HashSet<u32>,
    addrs: HashMap<u32, u32>,
    addrs6: HashMap<[u8; 16], u32>,
    macs: HashMap<u64, u32>,
}

impl WatchKernel {
    pub fn start(btf: &KernelBtf) -> Result<Self> {
        let config = config(btf)?;
        let mut probes = Probes::load_watch(config)?;
        let drops = PerCpuHashMap::try_from(probes.take_map(names::DROPS)?)?;
        let samples = RingBuf::try_from(probes.take_map(names::SAMPLES)?)?;
        let ports = BpfHashMap::try_from(probes.take_map(names::VM_PORTS)?)?;
        let addrs = BpfHashMap::try_from(probes.take_map(names::VM_ADDRS)?)?;
        let addrs6 = BpfHashMap::try_from(probes.take_map(names::VM_ADDRS6)?)?;
        let macs = BpfHashMap::try_from(probes.take_map(names::VM_MACS)?)?;
        Ok(Self {
            probes,
            drops,
            samples,
            ports,
            addrs,
            addrs6,
            macs,
            installed: Installed::default(),
        })
    }

    pub fn programs_attached(&self) -> usize {
        self.probes.attached
    }

    /// Make the kernel's VM maps match the inventory.
    pub fn sync(&mut self, inv: &Inventory) -> Result<()> {
        let mut want = Installed::default();
        for p in inv.ports.values() {
            want.ports.insert(p.ifindex);
            for ip in &p.ips {
                match ip {
                    IpAddr::V4(v4) => want.addrs.insert(addr_key(v4.octets()), p.ifindex),
                    IpAddr::V6(v6) => want.addrs6.insert(v6.octets(), p.ifindex),
                };
            }
            for mac in &p.macs {
                want.macs.insert(mac_key(*mac), p.ifindex);
            }
        }
        if want == self.installed {
            return Ok(());
        }
        // Add first, then remove: a VM moving between ports is never unwatched.
        for i in want.ports.difference(&self.installed.ports) {
            self.ports.insert(i, 1, 0).context("updating VM_PORTS")?;
        }
        add(
            &mut self.addrs,
            &self.installed.addrs,
            &want.addrs,
            "VM_ADDRS",
        )?;
        add(
            &mut self.addrs6,
            &self.installed.addrs6,
            &want.addrs6,
            "VM_ADDRS6",
        )?;
        add(&mut self.macs, &self.installed.macs, &want.macs, "VM_MACS")?;
        for i in self.installed.ports.difference(&want.ports) {
            let _ = self.ports.remove(i);
        }
        remove(&mut self.addrs, &self.installed.addrs, &want.addrs);
        remove(&mut self.addrs6, &self.installed.addrs6, &want.addrs6);
        remove(&mut self.macs, &self.installed.macs, &want.macs);
        self.installed = want;
        Ok(())
    }

    /// Every drop point's totals, summed over CPUs.
    pub fn counts(&self) -> HashMap<DropKey, Totals> {
        let mut out = HashMap::new();
        for (key, per_cpu) in self.drops.iter().flatten() {
            let t = per_cpu.iter().fold(Totals::default(), |t, c| Totals {
                packets: t.packets.saturating_add(c.packets),
                bytes: t.bytes.saturating_add(c.bytes),
            });
            out.insert(key, t);
        }
        out
    }

    /// Remove the counters of a port that went away, so the map never fills with
    /// the dead.
    pub fn forget_port(&mut self, ifindex: u32) {
        let keys: Vec<DropKey> = self
            .drops
            .keys()
            .flatten()
            .filter(|k| k.port == ifindex)
            .collect();
        for k in keys {
            let _ = self.drops.remove(&k);
        }
    }

    /// Samples sent since the last call.
    pub fn samples(&mut self) -> Vec<(DropKey, PacketInfo)> {
        let mut out = Vec::new();
        while let Some(item) = self.samples.next() {
            if let Some(s) = record::<DropSample>(&item) {
                out.push((s.key, s.pkt));
            }
        }
        out
    }

    /// (samples lost, drops lost to a full map, drops of no watched VM).
    pub fn self_counters(&self) -> (u64, u64, u64) {
        (
            self.probes.counter(CNT_SAMPLES_LOST),
            self.probes.counter(CNT_DROPS_MAP_FULL),
            self.probes.counter(CNT_UNATTRIBUTED),
        )
    }
}

/// Put into `map` the entries of `want` it lacks or holds otherwise.
fn add<K: aya::Pod + Eq + std::hash::Hash>(
    map: &mut BpfHashMap<MapData, K, u32>,
    installed: &HashMap<K, u32>,
    want: &HashMap<K, u32>,
    name: &str,
) -> Result<()> {
    for (k, v) in want {
        if installed.get(k) != Some(v) {
            map.insert(k, v, 0)
                .with_context(|| format!("updating {name}"))?;
        }
    }
    Ok(())
}

/// Take out of `map` what was installed and is no longer wanted.
fn remove<K: aya::Pod + Eq + std::hash::Hash>(
    map: &mut BpfHashMap<MapData, K, u32>,
    installed: &HashMap<K, u32>,
    want: &HashMap<K, u32>,
) {
    for k in installed.keys().filter(|k| !want.contains_key(k)) {
        let _ = map.remove(k);
    }
}

fn config(btf: &KernelBtf) -> Result<WatchConfig> {
    let o = btf.offsets().context("reading struct offsets from BTF")?;
    let w = btf
        .watch_offsets()
        .context("reading sk_buff offsets from BTF")?;
    Ok(WatchConfig {
        netns_inum: current_netns_inum()?,
        kfree_reason_off: tracefs::kfree_reason_offset()?,
        kfree_location_off: tracefs::field_offset("skb", "kfree_skb", "location")?,
        skb_dev_off: o.skb_dev,
        skb_refdst_off: o.skb_refdst,
        skb_len_off: w.skb_len,
        skb_head_off: w.skb_head,
        skb_protocol_off: w.skb_protocol,
        skb_network_header_off: w.skb_network_header,
        skb_mac_header_off: w.skb_mac_header,
        skb_nfct_off: w.skb_nfct,
        ct_orig_src_off: w.ct_orig_src,
        ct_reply_src_off: w.ct_reply_src,
        dev_ifindex_off: o.dev_ifindex,
        dev_net_off: o.dev_net,
        net_inum_off: o.net_inum,
    })
}
