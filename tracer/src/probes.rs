//! Load the embedded eBPF object, attach its programs, and detach them again.
//!
//! Everything pathtrace attaches is owned by file descriptors of this process
//! (tcx links on 6.6+, perf-event tracepoint links), so the kernel removes it when
//! the process exits for any reason, SIGKILL included. Only on kernels without tcx
//! do we fall back to clsact; a clsact qdisc we had to create is removed on drop.

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{Array, Map, MapData, PerCpuArray, RingBuf},
    programs::{
        tc::{self, NlOptions, TcAttachOptions},
        KProbe, LinkOrder, RawTracePoint, SchedClassifier, TcAttachType, TracePoint,
    },
    Ebpf, EbpfLoader,
};
use tracer_common::{names, Config, WatchConfig, CNT_RINGBUF_FULL, CNT_TRACK_FULL};

use crate::{kernel::facts, topology::Iface};

/// A record of type `T` from the bytes a ring buffer handed over; None when the
/// record is shorter than `T` (a layout mismatch, never trusted).
pub fn record<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: T is plain old data (tracer-common) and the length is checked above;
    // ring-buffer records are only 8-byte aligned, so read unaligned.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// The smallest ring buffer (one page) for a mode that does not use it.
const MIN_RING: u32 = 4096;

/// Every TC program of trace mode.
const TC_PROGRAMS: [&str; 4] = [
    names::TC_PORT_INGRESS,
    names::TC_PORT_EGRESS,
    names::TC_INGRESS,
    names::TC_EGRESS,
];

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

pub struct Probes {
    ebpf: Ebpf,
    /// Interfaces where we created a clsact qdisc (pre-tcx kernels only).
    created_clsact: Vec<String>,
    pub attached: usize,
    /// Optional probes this kernel refused, each with what is lost without it.
    pub skipped: Vec<String>,
}

impl Probes {
    /// Load the programs; the ring buffer gets `ring_bytes` (a power of two, at
    /// least a page).
    pub fn load(config: Config, ring_bytes: u32) -> Result<Self> {
        let mut probes = Self::from_loader(|loader| {
            loader
                .override_global(names::CONFIG, &config, true)
                .map_max_entries(names::EVENTS, ring_bytes)
                // Watch mode's ring buffer is unused here: the smallest size.
                .map_max_entries(names::SAMPLES, MIN_RING);
        })?;
        for name in TC_PROGRAMS {
            probes
                .classifier(name)?
                .load()
                .with_context(|| format!("loading {name}"))?;
        }
        Ok(probes)
    }

    /// Load for watch mode and attach its one program (on `skb:kfree_skb`): nothing
    /// runs for packets that are not dropped.
    pub fn load_watch(config: WatchConfig) -> Result<Self> {
        let mut probes = Self::from_loader(|loader| {
            loader
                .override_global(names::WATCH_CONFIG, &config, true)
                .map_max_entries(names::EVENTS, MIN_RING);
        })?;
        probes.attach_free_probe(names::WATCH_RAW, names::WATCH_DROP, "kfree_skb")?;
        Ok(probes)
    }

    /// Load the object with the loader `configure` sets up, without the
    /// kernel's BTF (see `crate::kernel::no_btf`).
    fn from_loader<'a>(configure: impl FnOnce(&mut EbpfLoader<'a>) + Send) -> Result<Self> {
        let start = std::time::Instant::now();
        let ebpf = crate::kernel::no_btf::run(|| {
            let mut loader = EbpfLoader::new();
            loader.btf(None);
            configure(&mut loader);
            loader.load(OBJECT)
        })
        .map_err(|e| anyhow!("loading the eBPF programs failed: {e}"))?;
        log::debug!(
            "eBPF object ({} bytes) loaded in {:.1} ms",
            OBJECT.len(),
            start.elapsed().as_secs_f64() * 1e3
        );
        Ok(Self {
            ebpf,
            created_clsact: Vec::new(),
            attached: 0,
            skipped: Vec::new(),
        })
    }

    /// Take a map out to use it on its own (user space's handle keeps it alive).
    pub fn take_map(&mut self, name: &str) -> Result<Map> {
        self.ebpf
            .take_map(name)
            .ok_or_else(|| anyhow!("map {name} missing from the object"))
    }

    /// A kernel self-monitoring counter (`CNT_*`), summed over CPUs.
    pub fn counter(&self, index: u32) -> u64 {
        let Some(map) = self.ebpf.map(names::COUNTERS) else {
            return 0;
        };
        let Ok(counters) = PerCpuArray::<_, u64>::try_from(map) else {
            return 0;
        };
        counters.get(&index, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }

    fn classifier(&mut self, name: &str) -> Result<&mut SchedClassifier> {
        let prog = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the object"))?;
        Ok(prog.try_into()?)
    }

    /// Attach both TC directions on `iface`, ahead of any other program so we see
    /// packets before something else drops them; we never change their verdict.
    /// `port`: the VM's own port (where requests start being followed); every
    /// other hook gets the programs that return at once while nothing is in
    /// flight.
    pub fn attach_tc(&mut self, iface: &Iface, port: bool) -> Result<()> {
        let tcx = facts::TCX.holds() == Some(true);
        log::debug!(
            "attach TC ingress+egress on {} ({})",
            iface.name,
            if tcx { "tcx" } else { "clsact" }
        );
        if !tcx {
            match tc::qdisc_add_clsact(&iface.name) {
                Ok(()) => self.created_clsact.push(iface.name.clone()),
                // Already there (someone else's): use it, never remove it.
                Err(tc::TcError::AlreadyAttached) => {}
                // EEXIST: with an extended ack the message is the kernel's text
                // ("Exclusivity flag on, cannot modify"), not "File exists".
                Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) if e.to_string().contains("exists") => {}
                Err(e) => return Err(anyhow!("adding clsact to {}: {e}", iface.name)),
            }
        }
        let (ingress, egress) = if port {
            (names::TC_PORT_INGRESS, names::TC_PORT_EGRESS)
        } else {
            (names::TC_INGRESS, names::TC_EGRESS)
        };
        for (name, dir) in [
            (ingress, TcAttachType::Ingress),
            (egress, TcAttachType::Egress),
        ] {
            let options = if tcx {
                TcAttachOptions::TcxOrder(LinkOrder::first())
            } else {
                TcAttachOptions::Netlink(NlOptions::default())
            };
            self.classifier(name)?
                .attach_with_options(&iface.name, dir, options)
                .with_context(|| format!("attaching {name} to {}", iface.name))?;
            self.attached += 1;
        }
        Ok(())
    }

    /// `skb:kfree_skb` is essential (it names drops). `skb:consume_skb` only tells
    /// normal ends (delivered to the host, handed to another namespace): without it
    /// pathtrace still works, and says what it cannot see.
    pub fn attach_tracepoints(&mut self) -> Result<()> {
        self.attach_free_probe(names::KFREE_RAW, names::KFREE_SKB, "kfree_skb")?;
        if let Err(e) =
            self.attach_free_probe(names::CONSUME_RAW, names::CONSUME_SKB, "consume_skb")
        {
            self.skipped.push(facts::CONSUME_SKB.skipped_because(&e));
        }
        Ok(())
    }

    /// Deep mode: kprobes on `functions` (name, position of the skb argument).
    /// A kernel without kprobes is an error (the operator asked for them); a
    /// function that cannot be probed is skipped and recorded.
    pub fn attach_deep(&mut self, functions: &[(String, usize)]) -> Result<()> {
        if facts::KPROBES.holds() == Some(false) {
            bail!("{}", facts::KPROBES.note());
        }
        let mut attached = 0;
        for (func, arg) in functions {
            let name = names::DEEP[*arg];
            let prog: &mut KProbe = self
                .ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from the object"))?
                .try_into()?;
            if prog.fd().is_err() {
                prog.load().with_context(|| format!("loading {name}"))?;
            }
            match prog.attach(func, 0) {
                Ok(_) => attached += 1,
                Err(e) => self.skipped.push(format!("deep: {func} ({e})")),
            }
        }
        if attached == 0 {
            bail!(
                "--deep: no kernel function could be probed ({})",
                self.skipped.join("; ")
            );
        }
        self.attached += attached;
        Ok(())
    }

    /// A program on `skb:<event>`: the raw tracepoint when the kernel takes it (no
    /// trace record is built per call: much cheaper, and consume_skb runs for nearly
    /// every packet), else the classic tracepoint. The kernel refuses the raw one
    /// when the tracepoint has fewer arguments than it reads (older layouts).
    fn attach_free_probe(&mut self, raw: &str, classic: &str, event: &str) -> Result<()> {
        let prog: &mut RawTracePoint = self
            .ebpf
            .program_mut(raw)
            .ok_or_else(|| anyhow!("program {raw} missing from the object"))?
            .try_into()?;
        let attached = prog.load().is_ok() && prog.attach(event).is_ok();
        if attached {
            self.attached += 1;
            return Ok(());
        }
        let _ = prog.unload();
        log::debug!("{event}: {}", facts::RAW_FREE_PROBES.note());
        self.attach_tracepoint(classic, "skb", event)
    }

    fn attach_tracepoint(&mut self, name: &str, category: &str, event: &str) -> Result<()> {
        let prog: &mut TracePoint = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the object"))?
            .try_into()?;
        prog.load().with_context(|| format!("loading {name}"))?;
        prog.attach(category, event)
            .with_context(|| format!("attaching to tracepoint {category}:{event}"))?;
        self.attached += 1;
        Ok(())
    }

    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        Ok(RingBuf::try_from(self.take_map(names::EVENTS)?)?)
    }

    /// Trace mode's `STATE` slot (`tracer_common::state`).
    pub fn state(&self, index: u32) -> Result<u64> {
        let map = self
            .ebpf
            .map(names::STATE)
            .ok_or_else(|| anyhow!("map {} missing from the object", names::STATE))?;
        Ok(Array::<_, u64>::try_from(map)?.get(&index, 0)?)
    }

    /// Write trace mode's `STATE` slot `index` (only the slots user space owns).
    pub fn set_state(&mut self, index: u32, value: u64) -> Result<()> {
        let map = self
            .ebpf
            .map_mut(names::STATE)
            .ok_or_else(|| anyhow!("map {} missing from the object", names::STATE))?;
        Ok(Array::<_, u64>::try_from(map)?.set(index, value, 0)?)
    }

    /// Kernel-side losses: (ring buffer full, tracking map full), summed over CPUs.
    pub fn losses(&self) -> (u64, u64) {
        (self.counter(CNT_RINGBUF_FULL), self.counter(CNT_TRACK_FULL))
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        // Links detach when `ebpf` drops; only a qdisc we created needs removing,
        // and only while it holds nothing but our own filters: another program
        // (or a second pathtrace) may have attached to it since.
        let ours: Vec<String> = TC_PROGRAMS
            .iter()
            .filter_map(|n| self.classifier(n).ok()?.info().ok())
            .map(|i| i.id().to_string())
            .collect();
        for name in &self.created_clsact {
            if only_ours_on_clsact(name, &ours) {
                let _ = crate::host::run::run("tc", &["qdisc", "del", "dev", name, "clsact"]);
            }
        }
    }
}

/// Every filter on `dev`'s clsact hooks is one of our programs (by id).
fn only_ours_on_clsact(dev: &str, ours: &[String]) -> bool {
    ["ingress", "egress"].iter().all(|hook| {
        let Ok(out) = crate::host::run::run("tc", &["filter", "show", "dev", dev, hook]) else {
            return false;
        };
        out.text()
            .lines()
            .filter(|l| l.contains(" handle "))
            .all(|l| filter_is_ours(l, ours))
    })
}

/// A `tc filter show` line of a bpf filter names its program as `id N`.
fn filter_is_ours(line: &str, ours: &[String]) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .windows(2)
        .any(|w| w[0] == "id" && ours.iter().any(|o| o == w[1]))
}
