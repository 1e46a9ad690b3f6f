//! Trace mode: attach, follow the guest's requests, print a verdict per request.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
    time::{interval, sleep_until, Instant},
};
use tracer_common::{Config, Event, EventKind, NameEvent, PacketEvent, CNT_SKIPPED};

use crate::{
    budget::Budget,
    cli::Cli,
    correlate::{Correlator, Finished, Outcome, PathCtx},
    doctor::{self, findings::Findings},
    explain::Explainer,
    host::{firewall, Host},
    hostconfig::{self, ConfigDirs, VmNic},
    kernel::{btf::KernelBtf, facts::Mode, kallsyms::Symbols, tracefs},
    output::{Printer, Summary},
    pcap::{Capture, Device},
    preflight,
    probes::{record, Probes},
    topology::{Iface, Role, Topology},
};

pub fn run(cli: &Cli) -> Result<i32> {
    let mut cli = cli.clone();
    cli.settle()?;
    let all = hostconfig::read_all(&ConfigDirs::under(&cli.config_root));
    // The host's tables, read once for the whole run.
    let host = Host::read()?;
    let nics = crate::dhcparp::resolve(&mut cli, &host, &all)?;
    let cli = &cli;
    let modes: &[Mode] = match cli.deep {
        true => &[Mode::Trace, Mode::Deep],
        false => &[Mode::Trace],
    };
    preflight::check(modes)?;
    let start = std::time::Instant::now();
    let topo = discover(cli, &host, &nics)?;
    log::debug!(
        "topology {} found in {:.1} ms",
        topo.path_names().join(" → "),
        start.elapsed().as_secs_f64() * 1e3
    );
    // The rule sets too, before anything is attached: a verdict made while the
    // ring buffer drains replays against them and must not spawn a process.
    firewall::rules();
    // The static checks (passive: trace mode sends nothing of its own) explain
    // verdicts, and what went wrong when the guest sends nothing at all.
    let findings = static_checks(cli, &topo, nics, host);
    let btf = KernelBtf::load(&cli.kernel_btf)?;
    let reasons = btf.drop_reasons()?;
    let config = build_config(cli, &btf)?;
    let names: Vec<&str> = crate::deep::FUNCTIONS.iter().map(|(f, _)| *f).collect();
    let deep = cli
        .deep
        .then(|| crate::deep::plan(&btf.skb_params(&names), tracer_common::names::DEEP.len()));
    // Everything needed from the (large) parsed BTF is taken by now.
    btf.release();
    let mut probes = Probes::load(config, cli.buffer_kb * 1024)?;
    // Tracepoints first, so a packet tracked by TC can never be freed unseen.
    probes.attach_tracepoints()?;
    if let Some((functions, missing)) = &deep {
        probes.attach_deep(functions)?;
        probes.skipped.extend(missing.iter().cloned());
    }
    for (iface, role) in topo.hooks() {
        probes.attach_tc(&iface, role == Role::Port)?;
    }
    let events = probes.take_events()?;
    log::debug!(
        "{} programs attached {:.1} ms after start",
        probes.attached,
        start.elapsed().as_secs_f64() * 1e3
    );
    let printer = Printer { json: cli.json };
    let explainer = Explainer {
        symbols: Symbols::load()?,
        reasons,
        proto_word: cli.proto().word(),
        topo,
        findings,
        config_root: cli.config_root.clone(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    let mut explainer = explainer;
    // --pcap: the hop devices as they are at the start (a port recreated during
    // the trace is added at the end under its new index).
    let mut devices = hop_devices(&explainer.topo);
    let mut capture = cli.pcap.as_ref().map(|_| Capture::default());
    let tally = rt.block_on(follow(
        cli,
        events,
        &mut probes,
        &mut explainer,
        &printer,
        capture.as_mut(),
    ))?;
    if let (Some(path), Some(capture)) = (&cli.pcap, &capture) {
        for d in hop_devices(&explainer.topo) {
            if !devices.iter().any(|k| k.ifindex == d.ifindex) {
                devices.push(d);
            }
        }
        let n = capture.write(path, &devices, boot_to_unix_ns())?;
        let more = match capture.dropped {
            0 => String::new(),
            k => format!(" ({k} more not kept)"),
        };
        printer.status(&format!(
            "pathtrace: wrote {n} packets{more} to {}",
            path.display()
        ));
    }
    let (lost, _) = probes.losses();
    printer.summary(&Summary {
        kind: "summary".into(),
        probes: tally.total(),
        replied: tally.replied,
        dropped: tally.dropped,
        no_reply: tally.no_reply,
        events_lost: lost,
        programs_attached: probes.attached,
        skipped_requests: probes.counter(CNT_SKIPPED),
        skipped_probes: probes.skipped.clone(),
    });
    if tally.total() == 0 {
        printer.status(&format!(
            "saw no {} request from {} to {} in {} s: is the guest sending? (ping {} from inside the VM while pathtrace runs); the host-side checks:",
            cli.proto().word(),
            cli.vm_ip,
            cli.to,
            cli.timeout,
            cli.to
        ));
        // As they hold now: the port may have come up since the start.
        printer.checks(&explainer.findings.all_now());
        return Ok(1);
    }
    Ok(if tally.replied == tally.total() { 0 } else { 1 })
}

/// The path from the guest's port. A DHCP DISCOVER is broadcast: the host's
/// part in it is its bridge (a server there, or the way to one beyond), so the
/// path is the one to the bridge's own address.
fn discover(cli: &Cli, host: &Host, nics: &[VmNic]) -> Result<Topology> {
    let topo = Topology::discover(host, cli.vm_ip, cli.to, cli.iface.as_deref(), nics)?;
    if cli.proto() != crate::cli::Proto::Dhcp {
        return Ok(topo);
    }
    let bridge = topo.bridge.as_ref().map(|b| b.name.as_str());
    let Some(server) = crate::dhcparp::bridge_address(host, bridge) else {
        return Ok(topo);
    };
    let location = crate::topology::Location {
        ports: topo.ports.iter().map(|p| p.name.clone()).collect(),
        mac: topo.vm_mac.clone(),
        evidence: topo.evidence.clone(),
    };
    let mut local = Topology::for_ports(host, cli.vm_ip, server.into(), location)?;
    local.dst = cli.to;
    Ok(local)
}

/// The devices pathtrace hooks, named for the pcapng interface blocks.
fn hop_devices(topo: &Topology) -> Vec<Device> {
    topo.hooks()
        .into_iter()
        .map(|(iface, _)| Device {
            ifindex: iface.index,
            name: iface.name,
            netns: format!("net:[{}]", topo.netns_inum),
        })
        .collect()
}

/// Add this to a `bpf_ktime_get_ns()` time to get Unix time in ns.
fn boot_to_unix_ns() -> i128 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    unix - i128::from(monotonic_ns())
}

fn static_checks(
    cli: &Cli,
    topo: &Topology,
    nics: Vec<VmNic>,
    host: Host,
) -> Box<dyn crate::explain::Findings> {
    // An IPv6 trace asks the doctor's IPv6 questions (its subject named by the
    // guest's IPv6 address): IPv4's checks would be about an address the guest
    // does not use. The verdict attaches those of the trace's family only.
    let v6 = |a: IpAddr| match a {
        IpAddr::V6(a) => Some(a),
        IpAddr::V4(_) => None,
    };
    let v4 = |a: IpAddr| match a {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    };
    let (vm_ip6, ipv6) = match v6(cli.vm_ip) {
        Some(ip) => (vec![ip], true),
        None => (Vec::new(), false),
    };
    let subject = doctor::Subject {
        vm_ip: v4(cli.vm_ip).unwrap_or(Ipv4Addr::UNSPECIFIED),
        dst: v4(cli.to).unwrap_or(Ipv4Addr::UNSPECIFIED),
        dst_given: true,
        dns: None,
        vm_ip6,
        dst6: v6(cli.to),
        dns6: None,
        ipv6,
        topo: Ok(topo.clone()),
        nics,
        found_by: topo.evidence.found_by(),
        host,
        config_root: cli.config_root.clone(),
    };
    let at_start = doctor::checks::all(&subject, true);
    Box::new(Findings::new(subject, at_start))
}

fn banner(cli: &Cli, topo: &Topology) -> String {
    let hops = topo.path_names();
    let mac = topo
        .vm_mac
        .as_ref()
        .map(|m| format!(" ({m})"))
        .unwrap_or_default();
    let route = if topo.unroutable {
        format!("; this host has no route to {}", cli.to)
    } else {
        String::new()
    };
    // A port not known from the host's tables is said at once, before any verdict.
    let caveat = topo
        .evidence
        .caveat(cli.vm_ip, &hops[..topo.ports.len()])
        .map(|c| format!(" — {c}"))
        .unwrap_or_default();
    format!(
        "pathtrace: following {} from {}{mac} to {} via {}{route} (up to {} requests, {} s; Ctrl-C stops){caveat}",
        cli.proto().word(),
        cli.vm_ip,
        cli.to,
        hops.join(" → "),
        cli.count,
        cli.timeout
    )
}

fn build_config(cli: &Cli, btf: &KernelBtf) -> Result<Config> {
    let offsets = btf.offsets().context("reading struct offsets from BTF")?;
    Ok(Config {
        vm_ip: tracer_common::addr_bytes(cli.vm_ip),
        dst_ip: tracer_common::addr_bytes(cli.to),
        protos: cli.proto().mask(),
        kfree_reason_off: tracefs::kfree_reason_offset()?,
        kfree_location_off: tracefs::field_offset("skb", "kfree_skb", "location")?,
        consume_location_off: tracefs::field_offset("skb", "consume_skb", "location").unwrap_or(0),
        skb_dev_off: offsets.skb_dev,
        skb_refdst_off: offsets.skb_refdst,
        dev_ifindex_off: offsets.dev_ifindex,
        dev_net_off: offsets.dev_net,
        net_inum_off: offsets.net_inum,
        skb_head_off: offsets.skb_head,
        skb_nh_off: offsets.skb_network_header,
        capture: u32::from(cli.pcap.is_some()),
        max_follow: crate::budget::max_follow(cli.count),
        _pad: 0,
        dst_port: cli.port.unwrap_or(0),
        family: tracer_common::family_of(cli.vm_ip),
        _pad_port: [0; 5],
    })
}

#[derive(Default)]
struct Tally {
    replied: usize,
    dropped: usize,
    no_reply: usize,
}

impl Tally {
    fn total(&self) -> usize {
        self.replied + self.dropped + self.no_reply
    }

    fn add(&mut self, o: Outcome) {
        match o {
            Outcome::Replied => self.replied += 1,
            Outcome::Dropped => self.dropped += 1,
            Outcome::NoReply => self.no_reply += 1,
        }
    }
}

/// Monotonic clock in ns: the same clock as `bpf_ktime_get_ns()`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// How often queued events are taken and traces decided.
const TICK_MS: u64 = 50;

async fn follow(
    cli: &Cli,
    events: RingBuf<MapData>,
    probes: &mut Probes,
    explainer: &mut Explainer,
    printer: &Printer,
    mut capture: Option<&mut Capture>,
) -> Result<Tally> {
    let topo = &explainer.topo;
    let roles = topo.roles();
    let mut corr = Correlator::new(PathCtx {
        roles,
        netns: topo.netns_inum,
        inbound: topo.inbound().index,
        bridged: topo.bridged,
        lan: topo.lan.is_some(),
        reply_hold_ns: crate::kernel::neighbour_hold_ns(&topo.inbound().name),
    });
    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged for
    // as long as the AsyncFd holds it.
    let mut ring = unsafe { AsyncFd::register(events) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(cli.timeout);
    let mut tick = interval(Duration::from_millis(TICK_MS));
    let mut ticks = 0u64;
    let (mut int, mut term, mut hup) = (
        signal(SignalKind::interrupt())?,
        signal(SignalKind::terminate())?,
        signal(SignalKind::hangup())?,
    );
    // Only now, with signals handled, say we are ready: a wrapper may start the
    // traffic (or send SIGTERM) as soon as it reads this line.
    printer.status(&banner(cli, topo));
    for skipped in &probes.skipped {
        printer.status(&format!(
            "pathtrace: probe unavailable on this kernel: {skipped}"
        ));
    }
    let mut tally = Tally::default();
    // The counters belong to this run's maps: every loss since load is ours, even
    // one that happens before the first tick (reading the counter here, after the
    // banner let the traffic start, could already include it and hide it).
    let mut seen_lost = 0;
    let mut waiting = HashSet::new();
    let mut budget = Budget::default();
    let want = cli.count as usize;
    let report = |done: Vec<Finished>,
                  tally: &mut Tally,
                  explainer: &Explainer,
                  capture: Option<&mut Capture>| {
        let mut capture = capture;
        for f in done {
            if tally.total() >= want {
                break;
            }
            tally.add(f.outcome);
            let verdict = explainer.verdict(&f);
            if let Some(c) = capture.as_deref_mut() {
                c.on_verdict(&verdict);
            }
            printer.verdict(&verdict);
        }
    };
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), &mut corr, capture.as_deref_mut());
                guard.clear_ready();
            }
            _ = tick.tick() => {
                let started = Budget::started(probes);
                let now = catch_up(ring.get_mut(), &mut corr, probes, &mut seen_lost, capture.as_deref_mut());
                report(corr.poll(now), &mut tally, explainer, capture.as_deref_mut());
                budget.settle(probes, started, corr.open(), corr.newest_request())?;
                ticks += 1;
                if ticks.is_multiple_of(500 / TICK_MS) {
                    let mut churn = Churn { probes: &mut *probes, corr: &mut corr, waiting: &mut waiting, printer };
                    churn.check(&mut explainer.topo)?;
                }
            }
            _ = sleep_until(deadline) => break,
            _ = int.recv() => break,
            _ = term.recv() => break,
            _ = hup.recv() => break,
        }
        if tally.total() >= want {
            break;
        }
    }
    // Stopping (deadline, signal) can win over a pending tick: take what is still
    // queued and note losses before the last verdicts, as every tick does.
    let now = catch_up(
        ring.get_mut(),
        &mut corr,
        probes,
        &mut seen_lost,
        capture.as_deref_mut(),
    );
    report(corr.flush(now), &mut tally, explainer, capture);
    Ok(tally)
}

/// Take every queued event, then note losses: the kernel wakes us only once events
/// pile up (see the eBPF crate's wakeup_flags), so this runs every tick. Traces
/// open when the kernel could not hand over events (and those starting in this
/// instant) may miss hops; they will say so. Returns the time it was done.
fn catch_up(
    rb: &mut RingBuf<MapData>,
    corr: &mut Correlator,
    probes: &Probes,
    seen_lost: &mut u64,
    capture: Option<&mut Capture>,
) -> u64 {
    drain(rb, corr, capture);
    let now = monotonic_ns();
    let lost = probes.losses().0;
    if lost > *seen_lost {
        *seen_lost = lost;
        corr.mark_lossy(now);
    }
    now
}

/// Hand every queued ring-buffer record to the correlator.
fn drain(rb: &mut RingBuf<MapData>, corr: &mut Correlator, mut capture: Option<&mut Capture>) {
    while let Some(item) = rb.next() {
        match decode(&item) {
            Some(Decoded::Event(ev)) => corr.on_event(&ev),
            Some(Decoded::Name(ev, name)) => corr.on_name(&ev, name),
            Some(Decoded::Packet(p)) => {
                if let Some(c) = capture.as_deref_mut() {
                    c.on_packet(&p);
                }
            }
            None => {}
        }
    }
}

enum Decoded {
    Event(Event),
    Name(Event, String),
    Packet(Box<PacketEvent>),
}

/// One ring-buffer record: an [`Event`], a [`NameEvent`] (same head, kind DnsName)
/// or a [`PacketEvent`] (kind Packet, `--pcap`).
fn decode(bytes: &[u8]) -> Option<Decoded> {
    let ev: Event = record(bytes)?;
    match EventKind::from_u8(ev.kind) {
        Some(EventKind::DnsName) => {
            let named: NameEvent = record(bytes)?;
            Some(Decoded::Name(ev, crate::dns::qname(&named.name)?))
        }
        Some(EventKind::Packet) => Some(Decoded::Packet(Box::new(record(bytes)?))),
        _ => Some(Decoded::Event(ev)),
    }
}

/// VMs reboot and migrate: their port can vanish and come back with a new index.
/// The bridge and the uplink must stay; without them the trace is meaningless.
struct Churn<'a> {
    probes: &'a mut Probes,
    corr: &'a mut Correlator,
    /// VM ports that vanished and are awaited.
    waiting: &'a mut HashSet<String>,
    printer: &'a Printer,
}

impl Churn<'_> {
    fn check(&mut self, topo: &mut Topology) -> Result<()> {
        for (iface, role) in topo.hooks() {
            let index = ifindex_of(&iface.name);
            if index == iface.index {
                continue;
            }
            // A VM's port comes and goes with the VM, and so does its firewall
            // plumbing (Proxmox recreates fwbr/fwln/fwpr with the tap).
            if !matches!(role, Role::Port | Role::Hop) {
                bail!(
                    "interface {} vanished during the trace; stopping (nothing left attached)",
                    iface.name
                );
            }
            if index == 0 {
                if self.waiting.insert(iface.name.clone()) {
                    self.printer.status(&format!(
                        "pathtrace: {} vanished (VM stopped, rebooting or migrating?); waiting for it to come back",
                        iface.name
                    ));
                }
                continue;
            }
            let fresh = Iface {
                index,
                name: iface.name.clone(),
            };
            self.probes.attach_tc(&fresh, role == Role::Port)?;
            topo.port_recreated(&fresh);
            self.corr.set_role(index, role);
            self.waiting.remove(&iface.name);
            self.printer.status(&format!(
                "pathtrace: {} is back (ifindex {index}): re-attached",
                iface.name
            ));
        }
        Ok(())
    }
}

fn ifindex_of(name: &str) -> u32 {
    std::ffi::CString::new(name).map_or(0, |n| unsafe { libc::if_nametoindex(n.as_ptr()) })
}

/// The user-space half of the event pipeline, measured: how many ring-buffer
/// records per second decoding + correlation sustain on one core. Not a test (no
/// timing assertions); `cargo xtask bench` runs it and reports the figure.
#[cfg(test)]
mod pipeline_bench {
    use std::{collections::HashMap, time::Instant};

    use tracer_common::{
        Event, EventKind, PacketInfo, DIR_EGRESS, DIR_INGRESS, ROLE_REPLY, ROLE_REQUEST,
    };

    use super::{decode, Decoded};
    use crate::{
        correlate::{Correlator, PathCtx},
        topology::Role,
    };

    const PORT: u32 = 4;
    const BRIDGE: u32 = 3;
    const UPLINK: u32 = 2;

    /// The seven records of one replied ping: three hops out, three back, the
    /// reply consumed by the guest's port.
    fn replied_ping(n: u64, t0: u64) -> Vec<Vec<u8>> {
        let req = PacketInfo {
            saddr: tracer_common::addr4([192, 0, 2, 100]),
            daddr: tracer_common::addr4([203, 0, 113, 8]),
            proto: 1,
            icmp_type: 8,
            id: (n >> 16) as u16,
            seq: n as u16,
            ..PacketInfo::default()
        };
        let rep = PacketInfo {
            saddr: req.daddr,
            daddr: tracer_common::addr4([198, 51, 100, 2]),
            icmp_type: 0,
            ..req
        };
        let ev = |skb: u64, dt: u64, ifindex: u32, dir: u8, role: u8, pkt: PacketInfo| Event {
            ts_ns: t0 + dt,
            skb,
            kind: EventKind::Tc as u8,
            dir,
            role,
            ifindex,
            pkt,
            ..Event::default()
        };
        let (a, b) = (0x1000 + 2 * n, 0x1001 + 2 * n);
        let mut consumed = ev(b, 9_000, PORT, 0, ROLE_REPLY, rep);
        consumed.kind = EventKind::Consume as u8;
        [
            ev(a, 0, PORT, DIR_INGRESS, ROLE_REQUEST, req),
            ev(a, 1_000, BRIDGE, DIR_INGRESS, ROLE_REQUEST, req),
            ev(a, 3_000, UPLINK, DIR_EGRESS, ROLE_REQUEST, req),
            ev(b, 5_000, UPLINK, DIR_INGRESS, ROLE_REPLY, rep),
            ev(b, 7_000, BRIDGE, DIR_EGRESS, ROLE_REPLY, rep),
            ev(b, 8_000, PORT, DIR_EGRESS, ROLE_REPLY, rep),
            consumed,
        ]
        .iter()
        .map(|e| {
            // The bytes exactly as the ring buffer hands them over.
            let p = (e as *const Event).cast::<u8>();
            unsafe { std::slice::from_raw_parts(p, std::mem::size_of::<Event>()) }.to_vec()
        })
        .collect()
    }

    #[test]
    #[ignore = "a benchmark: run by cargo xtask bench"]
    fn pipeline_throughput() {
        const PINGS: u64 = 300_000;
        let records: Vec<Vec<u8>> = (0..PINGS)
            .flat_map(|n| replied_ping(n, n * 10_000))
            .collect();
        let mut corr = Correlator::new(PathCtx {
            roles: HashMap::from([
                (PORT, Role::Port),
                (BRIDGE, Role::Bridge),
                (UPLINK, Role::Uplink),
            ]),
            netns: 1,
            inbound: BRIDGE,
            bridged: false,
            lan: false,
            reply_hold_ns: 0,
        });
        let start = Instant::now();
        let mut finished = 0usize;
        for (i, r) in records.iter().enumerate() {
            if let Some(Decoded::Event(ev)) = decode(r) {
                corr.on_event(&ev);
            }
            // The trace loop polls every 100 ms; at this rate that is every ~10k records.
            if i % 10_000 == 9_999 {
                finished += corr.poll(ev_time(i)).len();
            }
        }
        finished += corr.flush(u64::MAX).len();
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(finished as u64, PINGS);
        println!(
            "pipeline: {:.0} events/s ({} events, {} pings in {:.3} s)",
            records.len() as f64 / secs,
            records.len(),
            PINGS,
            secs
        );
    }

    /// Time of record `i`: pings are 10 µs apart, seven records each.
    fn ev_time(i: usize) -> u64 {
        (i as u64 / 7) * 10_000
    }
}
