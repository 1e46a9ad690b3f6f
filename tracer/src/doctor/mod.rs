//! `pathtrace doctor`: the static half of the troubleshooting routine — bridge
//! membership, link and STP state, MTU, forwarding, rp_filter, routes, the
//! gateway, NAT, firewall verdicts, br_netfilter, DNS, address conflicts — each
//! with its evidence and the command that fixes it. No eBPF: it reads the host's
//! tables (and sends at most a few ARP requests, unless `--passive`).

pub mod arp;
mod bond;
pub mod checks;
pub mod findings;
pub mod firewall_bridge;
mod fixture;
mod l2;
pub mod ndp;
pub mod snapshot;
pub mod spoof;
pub mod v6;
mod vlan;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{anyhow, bail, Result};

use crate::{
    cli::DoctorCli,
    host::Host,
    hostconfig::{self, ConfigDirs, VmNic},
    topology::{self, Evidence, Location, Topology},
};

pub use crate::output::{print_checks, Check, Status};

/// What the doctor examines: one VM's path to one destination.
pub struct Subject {
    pub vm_ip: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// The operator named the destination (else: the internet, by the default route).
    pub dst_given: bool,
    pub dns: Option<Ipv4Addr>,
    /// The guest's IPv6 addresses as given (those the host learned for its
    /// MAC are added by the IPv6 checks).
    pub vm_ip6: Vec<Ipv6Addr>,
    /// The IPv6 destination and resolver, when given.
    pub dst6: Option<Ipv6Addr>,
    pub dns6: Option<Ipv6Addr>,
    /// The VM was named by its IPv6 address: the port and bridge checks and
    /// the IPv6 ones run, not IPv4's (`vm_ip` is then unspecified).
    pub ipv6: bool,
    /// The path, when the VM's port could be found.
    pub topo: Result<Topology, String>,
    /// The VM's NICs in the hypervisor's configuration (may be empty).
    pub nics: Vec<VmNic>,
    /// How the port was found, for people.
    pub found_by: String,
    /// The host as read when the examination started.
    pub host: Host,
    /// Where the hypervisor's configuration is (`--config-root`): generated
    /// firewalls are fixed in their own files.
    pub config_root: std::path::PathBuf,
}

/// Stands for "the internet" when no destination is given: only used for route
/// lookups, nothing is sent to it.
const INTERNET: Ipv4Addr = Ipv4Addr::new(8, 8, 8, 8);

pub fn run(cli: &DoctorCli) -> Result<i32> {
    if cli.snapshot.is_some() || cli.diff.is_some() {
        // A snapshot without the rule sets would show them "removed" later.
        crate::preflight::check_doctor()?;
    }
    if let Some(dir) = &cli.snapshot {
        let files = snapshot::save(dir)?;
        eprintln!(
            "pathtrace: saved {} files of network state to {}; later: pathtrace doctor --diff {}",
            files.len(),
            dir.display(),
            dir.display()
        );
        return Ok(0);
    }
    if let Some(dir) = &cli.diff {
        return show_diff(dir, cli.json);
    }
    crate::preflight::check_doctor()?;
    let subject = examine(cli)?;
    let checks = checks::all(&subject, cli.passive);
    if let Some(path) = std::env::var_os(fixture::SAVE_ENV) {
        fixture::save(std::path::Path::new(&path), cli, &subject, &checks)?;
    }
    print(&subject, &checks, cli.json);
    Ok(exit_code(&checks))
}

/// What the operator asked the doctor about.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Question {
    pub vm_ip: Option<IpAddr>,
    pub vm: Option<String>,
    pub to: Option<IpAddr>,
    pub dns: Option<IpAddr>,
    pub iface: Option<String>,
}

impl Question {
    fn of(cli: &DoctorCli) -> Self {
        Question {
            vm_ip: cli.vm_ip,
            vm: cli.vm.clone(),
            to: cli.to,
            dns: cli.dns,
            iface: cli.iface.clone(),
        }
    }
}

/// 1 when a check failed: the contract's "something is wrong".
pub fn exit_code(checks: &[Check]) -> i32 {
    i32::from(checks.iter().any(|c| c.status == Status::Fail))
}

/// Find the VM (by IP, or by id/name/MAC from the configuration) and its path,
/// on the running host.
fn examine(cli: &DoctorCli) -> Result<Subject> {
    let all = hostconfig::read_all(&ConfigDirs::under(&cli.config_root));
    examine_host(Host::read()?, &Question::of(cli), &all, &cli.config_root)
}

/// The same on a given host (the running one, or a saved one): no I/O but the
/// netlink route lookups of a live host.
pub fn examine_host(
    host: Host,
    q: &Question,
    all: &[VmNic],
    config_root: &std::path::Path,
) -> Result<Subject> {
    if let Some(i) = q.iface.as_deref().filter(|i| !host.has_link(i)) {
        bail!("interface {i} does not exist (--iface)");
    }
    if let Some(IpAddr::V6(vm6)) = q.vm_ip {
        return examine_v6(host, q, vm6, all, config_root);
    }
    let v4_ip = q.vm_ip.and_then(as_v4);
    let (vm_ip, nics) = resolve_vm(&host, v4_ip, q.vm.as_deref(), all, config_root)?;
    let dst = q.to.and_then(as_v4).unwrap_or(INTERNET);
    let located = match &q.iface {
        Some(i) => Ok(Location::named(i)),
        None => topology::locate_vm(&host, vm_ip.into(), &nics)
            .or_else(|e| {
                topology::bridged::first_packet_location(&host, vm_ip.into(), dst.into()).ok_or(e)
            })
            .or_else(|e| candidate_ports(&host, vm_ip).ok_or(e)),
    };
    let found_by = located
        .as_ref()
        .map_or_else(|_| String::new(), |l| l.evidence.found_by());
    let topo = located
        .and_then(|l| Topology::for_ports(&host, vm_ip.into(), dst.into(), l))
        .map_err(|e| format!("{e:#}"));
    Ok(Subject {
        vm_ip,
        dst,
        dst_given: q.to.is_some(),
        dns: q.dns.and_then(as_v4),
        vm_ip6: Vec::new(),
        dst6: q.to.and_then(as_v6),
        dns6: q.dns.and_then(as_v6),
        ipv6: false,
        topo,
        nics,
        found_by,
        host,
        config_root: config_root.to_path_buf(),
    })
}

fn as_v4(a: IpAddr) -> Option<Ipv4Addr> {
    match a {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    }
}

fn as_v6(a: IpAddr) -> Option<Ipv6Addr> {
    match a {
        IpAddr::V6(a) => Some(a),
        IpAddr::V4(_) => None,
    }
}

/// The VM named by its IPv6 address: found by its neighbour entry and the FDB
/// (or its configuration's `ip6=`, or `--iface`), its path toward the IPv6
/// destination.
fn examine_v6(
    host: Host,
    q: &Question,
    vm6: Ipv6Addr,
    all: &[VmNic],
    config_root: &std::path::Path,
) -> Result<Subject> {
    let nics: Vec<VmNic> = match q.vm.as_deref() {
        Some(query) => hostconfig::find(all, query).into_iter().cloned().collect(),
        None => all
            .iter()
            .filter(|n| n.ips6.contains(&vm6))
            .cloned()
            .collect(),
    };
    let dst6 = q.to.and_then(as_v6);
    let dst = IpAddr::V6(dst6.unwrap_or(v6::INTERNET6));
    let located = match &q.iface {
        Some(i) => Ok(Location::named(i)),
        None => topology::locate_vm(&host, vm6.into(), &nics)
            .or_else(|e| topology::bridged::first_packet_location(&host, vm6.into(), dst).ok_or(e)),
    };
    let found_by = located
        .as_ref()
        .map_or_else(|_| String::new(), |l| l.evidence.found_by());
    let topo = located
        .and_then(|l| Topology::for_ports(&host, vm6.into(), dst, l))
        .map_err(|e| format!("{e:#}"));
    Ok(Subject {
        vm_ip: Ipv4Addr::UNSPECIFIED,
        dst: INTERNET,
        dst_given: q.to.is_some(),
        dns: None,
        vm_ip6: vec![vm6],
        dst6,
        dns6: q.dns.and_then(as_v6),
        ipv6: true,
        topo,
        nics,
        found_by,
        host,
        config_root: config_root.to_path_buf(),
    })
}

impl Subject {
    /// The VM's address as the operator named it.
    pub fn vm_label(&self) -> String {
        match (self.ipv6, self.vm_ip6.first()) {
            (true, Some(ip)) => ip.to_string(),
            _ => self.vm_ip.to_string(),
        }
    }

    /// The destination as checked (IPv6's stand-in for the internet when the
    /// VM was named by IPv6 and no destination given).
    fn dst_label(&self) -> String {
        match self.ipv6 {
            true => self.dst6.unwrap_or(v6::INTERNET6).to_string(),
            false => self.dst.to_string(),
        }
    }
}

/// Where the doctor looks when nothing on the host knows the VM: the ports below
/// the bridge owning its subnet that cannot pass frames (what makes a VM vanish
/// from the tables), else the only port there is. A guess, and its `vm_port`
/// check says so; trace mode refuses to guess (it would follow another VM).
fn candidate_ports(host: &Host, vm_ip: Ipv4Addr) -> Option<Location> {
    let c = topology::candidates(host, vm_ip.into())?;
    let blocked: Vec<String> = c.blocked().iter().map(|(p, _)| p.to_string()).collect();
    let head = format!("no neighbour entry, FDB entry or configuration knows {vm_ip}");
    let (ports, why) = match c.ports.as_slice() {
        _ if !blocked.is_empty() => (blocked, topology::describe_candidates(&head, &c)),
        [(only, _)] => (
            vec![only.clone()],
            format!("{head}; {only} is the only port on {}", c.bridge_label()),
        ),
        _ => return None,
    };
    Some(Location {
        ports,
        mac: None,
        evidence: Evidence::Guess(format!("{why}; checked here as the VM's port")),
    })
}

/// The VM's IP and its configured NICs, from `--vm-ip` and/or `--vm`.
pub fn resolve_vm(
    host: &Host,
    vm_ip: Option<Ipv4Addr>,
    vm: Option<&str>,
    all: &[VmNic],
    config_root: &std::path::Path,
) -> Result<(Ipv4Addr, Vec<VmNic>)> {
    let Some(query) = vm else {
        let ip = vm_ip.ok_or_else(|| anyhow!("give --vm-ip IP or --vm ID|NAME"))?;
        let nics = hostconfig::by_ip(all, ip).into_iter().cloned().collect();
        return Ok((ip, nics));
    };
    let nics: Vec<VmNic> = hostconfig::find(all, query).into_iter().cloned().collect();
    if nics.is_empty() {
        // On a Proxmox cluster the VM may simply run on another node.
        if let Some(elsewhere) = crate::cluster::locate(config_root, query) {
            bail!("{elsewhere}");
        }
        bail!("no VM \"{query}\" in this host's Proxmox or libvirt configuration (by VMID, name or MAC); give its --vm-ip instead");
    }
    if let Some(ip) = vm_ip {
        return Ok((ip, nics));
    }
    let ip = nics
        .iter()
        .find_map(|n| n.ips.first().copied())
        .or_else(|| {
            nics.iter()
                .find_map(|n| host.ip_of_mac(&n.mac.to_lowercase()))
        });
    match ip {
        Some(ip) => Ok((ip, nics)),
        None => bail!(
            "VM \"{query}\" has no IPv4 address in its configuration and none is known for its MAC {}; give --vm-ip",
            nics[0].mac
        ),
    }
}

fn print(s: &Subject, checks: &[Check], json: bool) {
    let (pass, warn, fail) = tally(checks);
    if json {
        for c in checks {
            println!("{}", serde_json::to_string(c).unwrap_or_default());
        }
        let summary = serde_json::json!({
            "type": "doctor", "vm_ip": s.vm_label(), "dst": s.dst_label(),
            "path": s.topo.as_ref().map(|t| t.path_names()).unwrap_or_default(),
            "pass": pass, "warn": warn, "fail": fail,
        });
        println!("{summary}");
        return;
    }
    let path = match &s.topo {
        Ok(t) => t.path_names().join(" → "),
        Err(_) => "(VM port not found)".into(),
    };
    let to = if s.dst_given {
        s.dst_label()
    } else {
        "the internet (default route)".into()
    };
    println!("pathtrace doctor: VM {} to {to} via {path}", s.vm_label());
    print_checks(checks);
    println!("{pass} passed, {warn} warnings, {fail} failed");
}

fn tally(checks: &[Check]) -> (usize, usize, usize) {
    let n = |s| checks.iter().filter(|c| c.status == s).count();
    (n(Status::Pass), n(Status::Warn), n(Status::Fail))
}

fn show_diff(dir: &std::path::Path, json: bool) -> Result<i32> {
    let diffs = snapshot::diff(dir)?;
    for d in &diffs {
        if json {
            let mut v = serde_json::to_value(d)?;
            v["type"] = "diff".into();
            println!("{v}");
            continue;
        }
        println!("{} ({}):", d.file, d.what);
        for l in &d.removed {
            println!("  - {l}");
        }
        for l in &d.added {
            println!("  + {l}");
        }
    }
    if !json {
        match diffs.len() {
            0 => println!("no change since the snapshot in {}", dir.display()),
            n => println!("{n} kinds of state changed since the snapshot"),
        }
    }
    Ok(i32::from(!diffs.is_empty()))
}
