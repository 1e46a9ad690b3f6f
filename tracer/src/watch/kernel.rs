//! Watch mode's side of the kernel: load and attach the drop counter, keep its
//! VM maps in step with the inventory, and read its counters and samples.

use std::collections::{HashMap, HashSet};

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
    macs: BpfHashMap<MapData, u64, u32>,
    /// What we put in the three maps above, to remove exactly what went away.
    installed: Installed,
}

#[derive(Default, PartialEq)]
struct Installed {
    ports: HashSet<u32>,
    addrs: HashMap<u32, u32>,
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
        let macs = BpfHashMap::try_from(probes.take_map(names::VM_MACS)?)?;
        Ok(Self {
            probes,
            drops,
            samples,
            ports,
            addrs,
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
                want.addrs.insert(addr_key(ip.octets()), p.ifindex);
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
        for (k, v) in &want.addrs {
            if self.installed.addrs.get(k) != Some(v) {
                self.addrs.insert(k, v, 0).context("updating VM_ADDRS")?;
            }
        }
        for (k, v) in &want.macs {
            if self.installed.macs.get(k) != Some(v) {
                self.macs.insert(k, v, 0).context("updating VM_MACS")?;
            }
        }
        for i in self.installed.ports.difference(&want.ports) {
            let _ = self.ports.remove(i);
        }
        for k in self
            .installed
            .addrs
            .keys()
            .filter(|k| !want.addrs.contains_key(k))
        {
            let _ = self.addrs.remove(k);
        }
        for k in self
            .installed
            .macs
            .keys()
            .filter(|k| !want.macs.contains_key(k))
        {
            let _ = self.macs.remove(k);
        }
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
