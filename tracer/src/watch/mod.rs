//! `pathtrace watch`: live per-VM drop points for incidents and always-on use.
//!
//! The kernel counts every drop that concerns a watched VM (see
//! `tracer-ebpf/src/programs/watch.rs`); this loop re-reads the host's VMs, keeps
//! the kernel's VM maps current, and each interval turns the counters into one
//! snapshot for the chosen view: the live terminal view, JSON lines, and/or the
//! Prometheus endpoint.

mod changes;
pub mod identity;
pub mod inventory;
mod kernel;
mod prometheus;
pub mod report;
mod resets;
pub mod tui;
mod vlan;

use std::{
    collections::{BTreeMap, HashMap},
    io::{IsTerminal, Write},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::Mutex,
    time::{interval, sleep_until, Instant, MissedTickBehavior},
};

use self::{
    changes::HostChanges,
    identity::Identities,
    inventory::{Inventory, VmPort},
    kernel::{WatchKernel, DROPS_CAPACITY},
    report::{Names, Reporter, SelfStats, Snapshot},
    tui::{Action, Tui},
};
use crate::{
    cli::WatchCli,
    hostconfig::ConfigDirs,
    kernel::{btf::KernelBtf, kallsyms::Symbols},
    preflight,
};

struct KernelNames {
    reasons: HashMap<u32, String>,
    symbols: Symbols,
    resets: resets::Resets,
}

impl Names for KernelNames {
    fn reason(&self, value: u32) -> Option<String> {
        self.reasons.get(&value).cloned()
    }

    fn location(&self, addr: u64) -> Option<String> {
        self.symbols.resolve(addr)
    }

    fn tcp_reset_rule(
        &self,
        hook: &'static str,
        pkt: &tracer_common::PacketInfo,
        iif: &str,
    ) -> Option<String> {
        self.resets.rule(hook, pkt, iif)
    }
}

/// Where snapshots go.
enum View {
    Live(Box<Tui>),
    Json,
    /// Plain lines for a pipe or a log: drop points that moved this interval, and
    /// any new loss (the losses last reported).
    Text {
        lost: u64,
    },
    /// Only the Prometheus endpoint (a service without a terminal).
    Quiet,
}

/// A VM port appearing or going away, reported as it happens.
#[derive(Serialize)]
struct PortEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    event: &'static str,
    port: &'a str,
    ifindex: u32,
    bridge: &'a str,
    vm_ips: Vec<String>,
    macs: Vec<String>,
    vmid: Option<&'a str>,
    vm_name: Option<&'a str>,
    vlan: Option<u16>,
    ts: f64,
}

pub fn run(cli: &WatchCli) -> Result<i32> {
    preflight::check_watch()?;
    let btf = KernelBtf::load(&cli.kernel_btf)?;
    let reasons = btf.drop_reasons()?;
    let kernel = WatchKernel::start(&btf)?;
    // Everything needed from the (large) parsed BTF is taken by now.
    btf.release();
    let names = KernelNames {
        reasons,
        symbols: Symbols::load()?,
        resets: resets::Resets::default(),
    };
    let mut ids = Identities::new(ConfigDirs::under(&cli.config_root));
    let inv = current_vms(cli, &mut ids)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    rt.block_on(watch(cli, kernel, &names, ids, inv))
}

/// The host's VM ports now, each with its identity, narrowed to `--vm-ip` (by the
/// identity, so a VM the tables forgot stays watched).
fn current_vms(cli: &WatchCli, ids: &mut Identities) -> Result<Inventory> {
    let mut inv = Inventory::discover()?;
    ids.apply(&mut inv);
    inv.narrow(&cli.vm_ips);
    Ok(inv)
}

async fn watch(
    cli: &WatchCli,
    mut kernel: WatchKernel,
    names: &KernelNames,
    mut ids: Identities,
    mut inv: Inventory,
) -> Result<i32> {
    let page = Arc::new(Mutex::new(String::new()));
    let _server = match cli.prometheus {
        Some(addr) => Some(prometheus::serve(addr, page.clone()).await?),
        None => None,
    };
    let mut view = if cli.json {
        View::Json
    } else if std::io::stdout().is_terminal() {
        View::Live(Box::new(Tui::start()?))
    } else if cli.prometheus.is_some() {
        View::Quiet
    } else {
        View::Text { lost: 0 }
    };
    let mut keys = matches!(view, View::Live(_)).then(Tui::keys);
    status(&view, &startup_line(cli, &inv));
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut tick = interval(Duration::from_secs_f64(cli.interval));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let deadline = cli
        .duration
        .map(|d| Instant::now() + Duration::from_secs(d));
    let mut reporter = Reporter::default();
    let mut last = Instant::now();
    announce_ports(&view, &BTreeMap::new(), &inv.ports);
    kernel.sync(&inv)?;
    // The VMs are read again when the kernel reports a change (SETTLE after
    // the first notification of a burst), never on a timer.
    let mut changes = HostChanges::subscribe()?;
    // Once right after subscribing: a change between the first read and the
    // subscription would otherwise go unseen.
    let mut reread_at = Some(Instant::now() + changes::SETTLE);
    loop {
        tokio::select! {
            changed = changes.changed() => {
                changed?;
                reread_at.get_or_insert_with(|| Instant::now() + changes::SETTLE);
            }
            _ = sleep_until(reread_at.unwrap_or_else(Instant::now)), if reread_at.is_some() => {
                reread_at = None;
                reread_vms(cli, &mut kernel, &mut reporter, &mut ids, &mut inv, &view)?;
            }
            _ = tick.tick() => {
                take_samples(&mut kernel, &mut reporter, &mut ids, &mut inv)?;
                let now = Instant::now();
                let elapsed = now.duration_since(last).as_secs_f64();
                last = now;
                let snap = snapshot(cli, &kernel, &mut reporter, &inv, names, elapsed);
                if cli.prometheus.is_some() {
                    *page.lock().await = prometheus::render(&snap);
                }
                show(&mut view, &snap)?;
            }
            Some(k) = next_key(&mut keys) => {
                if let View::Live(tui) = &mut view {
                    match tui.key(k) {
                        Action::Quit => break,
                        Action::Redraw => tui.redraw()?,
                        Action::None => {}
                    }
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => break,
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => break,
        }
    }
    // Leave the terminal before the last words, so they stay on screen.
    drop(view);
    Ok(0)
}

async fn next_key(
    keys: &mut Option<tokio::sync::mpsc::UnboundedReceiver<ratatui::crossterm::event::KeyEvent>>,
) -> Option<ratatui::crossterm::event::KeyEvent> {
    match keys {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Re-read the host's VMs (the kernel reported a change); drop what vanished,
/// announce what appeared, and bring the kernel's maps up to date.
fn reread_vms(
    cli: &WatchCli,
    kernel: &mut WatchKernel,
    reporter: &mut Reporter,
    ids: &mut Identities,
    inv: &mut Inventory,
    view: &View,
) -> Result<()> {
    // A failed read (racing a device removal) keeps the last inventory.
    if let Ok(fresh) = current_vms(cli, ids) {
        announce_ports(view, &inv.ports, &fresh.ports);
        for gone in inv.ports.keys().filter(|i| !fresh.ports.contains_key(i)) {
            kernel.forget_port(*gone);
            reporter.forget_port(*gone);
        }
        *inv = fresh;
    }
    kernel.sync(inv)
}

/// Take the interval's drop samples (learning guests' addresses from them).
fn take_samples(
    kernel: &mut WatchKernel,
    reporter: &mut Reporter,
    ids: &mut Identities,
    inv: &mut Inventory,
) -> Result<()> {
    let mut learned = false;
    for (key, pkt) in kernel.samples() {
        learned |= ids.learn_from_drop(inv, &key, &pkt);
        reporter.sample(key, pkt);
    }
    if learned {
        kernel.sync(inv)?;
    }
    Ok(())
}

fn snapshot(
    cli: &WatchCli,
    kernel: &WatchKernel,
    reporter: &mut Reporter,
    inv: &Inventory,
    names: &KernelNames,
    elapsed: f64,
) -> Snapshot {
    let counts = kernel.counts();
    let (events_lost, map_full, unattributed_drops) = kernel.self_counters();
    Snapshot {
        kind: "watch",
        ts: unix_now(),
        interval_s: cli.interval,
        vms: reporter.report(&counts, inv, names, elapsed),
        self_stats: SelfStats {
            programs_attached: kernel.programs_attached(),
            vm_ports: inv.ports.len(),
            events_lost,
            map_full,
            map_entries: counts.len(),
            map_capacity: DROPS_CAPACITY,
            unattributed_drops,
        },
    }
}

fn show(view: &mut View, snap: &Snapshot) -> Result<()> {
    match view {
        View::Live(tui) => tui.show(snap),
        View::Json => print_line(&serde_json::to_string(snap)?),
        View::Text { lost } => {
            let st = &snap.self_stats;
            if st.events_lost + st.map_full > *lost {
                *lost = st.events_lost + st.map_full;
                print_line(&format!(
                    "{} pathtrace: {} drop samples lost, {} drops uncounted (map full): counts may be low",
                    clock(snap.ts),
                    st.events_lost,
                    st.map_full
                ))?;
            }
            for vm in &snap.vms {
                for d in vm.drops.iter().filter(|d| d.per_s > 0.0) {
                    print_line(&format!(
                        "{} {} ({}): {} {} at {} on {}, {:.1}/s, {} total",
                        clock(snap.ts),
                        vm.port,
                        vm.vm_ips.join(","),
                        d.stage,
                        d.reason.as_deref().unwrap_or("-"),
                        d.location.as_deref().unwrap_or("?"),
                        d.ifname.as_deref().unwrap_or("?"),
                        d.per_s,
                        d.total
                    ))?;
                }
            }
            Ok(())
        }
        View::Quiet => Ok(()),
    }
}

fn announce_ports(view: &View, old: &BTreeMap<u32, VmPort>, new: &BTreeMap<u32, VmPort>) {
    let added = new.values().filter(|p| !old.contains_key(&p.ifindex));
    let removed = old.values().filter(|p| !new.contains_key(&p.ifindex));
    let events = added
        .map(|p| ("added", p))
        .chain(removed.map(|p| ("removed", p)));
    for (event, p) in events {
        match view {
            View::Json => {
                let line = serde_json::to_string(&PortEvent {
                    kind: "port",
                    event,
                    port: &p.name,
                    ifindex: p.ifindex,
                    bridge: &p.bridge,
                    vm_ips: p.ips.iter().map(|i| i.to_string()).collect(),
                    macs: p.macs.iter().map(inventory::format_mac).collect(),
                    vmid: p.vmid.as_deref(),
                    vm_name: p.vm_name.as_deref(),
                    vlan: p.vlan,
                    ts: unix_now(),
                });
                if let Ok(line) = line {
                    let _ = print_line(&line);
                }
            }
            View::Text { .. } | View::Quiet => {
                eprintln!("pathtrace: VM port {} on {} {event}", p.name, p.bridge)
            }
            View::Live(_) => {}
        }
    }
}

fn startup_line(cli: &WatchCli, inv: &Inventory) -> String {
    let scope = if cli.vm_ips.is_empty() {
        "every VM port".to_string()
    } else {
        let ips: Vec<String> = cli.vm_ips.iter().map(|i| i.to_string()).collect();
        format!("VMs {}", ips.join(", "))
    };
    let metrics = cli
        .prometheus
        .map(|a| format!("; metrics at http://{a}/metrics"))
        .unwrap_or_default();
    format!(
        "pathtrace: watching drops of {scope} ({} port(s) now){metrics}; Ctrl-C stops",
        inv.ports.len()
    )
}

/// Status goes to stderr, never into the JSON stream or over the live view.
fn status(view: &View, line: &str) {
    if !matches!(view, View::Live(_)) {
        eprintln!("{line}");
    }
}

/// Write a line to stdout; a closed pipe ends watch quietly like any filter.
fn print_line(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
        std::process::exit(0);
    }
    Ok(())
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| (d.as_millis() as f64) / 1000.0)
        .unwrap_or(0.0)
}

/// hh:mm:ss (UTC) of a Unix time.
fn clock(ts: f64) -> String {
    let s = ts as u64 % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}
