//! The demo: a namespaced hypervisor (bridge, a TAP port held by a fake guest, NAT
//! uplink), healthy first, then broken in two ways, with pathtrace's verdicts; then
//! the same guest over IPv6 (healthy, then with IPv6 forwarding off); then a
//! Proxmox-style host (firewall bridge per VM) traced and examined by `doctor`.

use std::{net::IpAddr, time::Duration};

use anyhow::Result;
use pathtrace_tests::{
    lab::{Fault, Fault6, Lab, LabOptions, Layout, PingOpts, INET6_DNS},
    tracerun::{fake_guest_bin, run_in_hv, trace_while},
};

const DEST: &str = "203.0.113.8";
const VM_IP: &str = "192.0.2.100";
/// The guest's IPv6 address in the lab (dual stack, a routed /64).
const VM_IP6: &str = "2001:db8:1::100";

/// What one demo step breaks before tracing (and repairs after).
#[derive(Clone, Copy)]
enum Break {
    Nothing,
    V4(Fault),
    V6(Fault6),
}

pub fn run() -> Result<()> {
    let mut lab = Lab::up(LabOptions::new(fake_guest_bin()))?;
    say(
        "A hypervisor namespace with bridge vmbr0, the guest 192.0.2.100 on tap100i0, \
         and NAT out of eth0 to the 'internet' (203.0.113.0/24).",
    );
    let dest: IpAddr = DEST.parse()?;
    show(
        &mut lab,
        "1. Healthy: the guest pings 203.0.113.8",
        VM_IP,
        dest,
        Break::Nothing,
    )?;
    show(
        &mut lab,
        "2. A firewall rule in the forward chain drops the guest's traffic",
        VM_IP,
        dest,
        Break::V4(Fault::NftForwardDrop),
    )?;
    show(
        &mut lab,
        "3. The MASQUERADE rule is missing",
        VM_IP,
        dest,
        Break::V4(Fault::NoMasquerade),
    )?;
    let dest6 = IpAddr::V6(INET6_DNS);
    show(
        &mut lab,
        "4. IPv6: the same guest (2001:db8:1::100, a routed /64) pings 2001:db8:ffff::53",
        VM_IP6,
        dest6,
        Break::Nothing,
    )?;
    show(
        &mut lab,
        "5. IPv6 forwarding is off (net.ipv6.conf.all.forwarding=0)",
        VM_IP6,
        dest6,
        Break::V6(Fault6::ForwardingOff),
    )?;
    drop(lab);
    let mut opts = LabOptions::new(fake_guest_bin());
    opts.layout = Layout::Proxmox;
    let mut lab = Lab::up(opts)?;
    show(
        &mut lab,
        "6. A Proxmox host with the VM firewall on: tap100i0 sits in fwbr100i0, joined to vmbr0 by fwln100i0/fwpr100p0",
        VM_IP,
        dest,
        Break::Nothing,
    )?;
    say("7. pathtrace doctor (static checks, no tracing) on a strict rp_filter with an asymmetric route");
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

fn show(lab: &mut Lab, title: &str, vm_ip: &str, dst: IpAddr, fault: Break) -> Result<()> {
    say(title);
    match fault {
        Break::Nothing => {}
        Break::V4(f) => lab.break_path(f)?,
        Break::V6(f) => lab.break_path6(f)?,
    }
    let to = dst.to_string();
    let args = [
        "--vm-ip",
        vm_ip,
        "--to",
        &to,
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
    match fault {
        Break::Nothing => {}
        Break::V4(f) => lab.repair(f)?,
        Break::V6(f) => lab.repair6(f)?,
    }
    Ok(())
}
