//! The demo: a namespaced hypervisor (bridge, a TAP port held by a fake guest, NAT
//! uplink), healthy first, then broken in two ways, with pathtrace's verdicts.

use std::time::Duration;

use anyhow::Result;
use pathtrace_tests::{
    lab::{Fault, Lab, LabOptions, PingOpts},
    tracerun::{fake_guest_bin, trace_while},
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
    say("Demo lab removed. Run all tests with: cargo xtask test");
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
    let dst = DEST.parse()?;
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
