//! The demo: a namespaced hypervisor (bridge, a TAP port held by a fake guest, NAT
//! uplink), healthy first, then broken in two ways, with pathtrace's verdicts; then
//! a Proxmox-style host (firewall bridge per VM) traced and examined by `doctor`.

use std::time::Duration;

use anyhow::Result;
use pathtrace_tests::{
    lab::{Fault, Lab, LabOptions, Layout, PingOpts},
    tracerun::{fake_guest_bin, run_in_hv, trace_while},
};

const DEST: &str = "203.0.113.8";

pub fn run() -> Result<()> {
    let mut lab = Lab::up(LabOptions::new(fake_guest_bin()))?;
    say(
        "A hypervisor namespace with bridge vmbr0, the guest 192.0.2.100 on tap100i0, \
         and NAT out of eth0 to the 'internet' (203.0.113.0/24).",
    );
    show(&mut lab, "1. Healthy: the guest pings 203.0.113.8", None)?;
    show(
        &mut lab,
        "2. A firewall rule in the forward chain drops the guest's traffic",
        Some(Fault::NftForwardDrop),
    )?;
    show(
        &mut lab,
        "3. The MASQUERADE rule is missing",
        Some(Fault::NoMasquerade),
    )?;
    drop(lab);
    let mut opts = LabOptions::new(fake_guest_bin());
    opts.layout = Layout::Proxmox;
    let mut lab = Lab::up(opts)?;
    show(
        &mut lab,
        "4. A Proxmox host with the VM firewall on: tap100i0 sits in fwbr100i0, joined to vmbr0 by fwln100i0/fwpr100p0",
        None,
    )?;
    say("5. pathtrace doctor (static checks, no tracing) on a strict rp_filter with an asymmetric route");
    lab.break_path(Fault::RpFilterStrict)?;
    let root = lab.config_root();
    // The lab keeps its Proxmox configuration under its own root, not /etc.
    let root = root.to_str().unwrap_or("/");
    let args = ["doctor", "--vm", "100", "--to", DEST, "--config-root", root];
    println!("$ pathtrace {}", args.join(" "));
    let run = run_in_hv(&lab, &args)?;
    print!("{}{}", run.stdout, run.stderr);
    println!("(exit status {})", run.code);
    drop(lab);
    say("Demo labs removed. Run all tests with: cargo xtask test");
    Ok(())
}

fn say(s: &str) {
    println!("\n\x1b[1m{s}\x1b[0m\n");
}

fn show(lab: &mut Lab, title: &str, fault: Option<Fault>) -> Result<()> {
    say(title);
    if let Some(f) = fault {
        lab.break_path(f)?;
    }
    let dst: std::net::IpAddr = DEST.parse()?;
    let args = [
        "--vm-ip",
        "192.0.2.100",
        "--to",
        DEST,
        "--count",
        "1",
        "--timeout",
        "10",
    ];
    println!("$ pathtrace {}", args.join(" "));
    let run = trace_while(lab, &args, Duration::from_secs(20), |lab| {
        lab.guest(0).ping(
            dst,
            PingOpts {
                count: 1,
                ..PingOpts::default()
            },
        )?;
        Ok(())
    })?;
    print!("{}", run.stdout);
    eprint!(
        "{}",
        run.stderr
            .lines()
            .skip(1)
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    );
    println!("(exit status {})", run.code);
    if let Some(f) = fault {
        lab.repair(f)?;
    }
    Ok(())
}
