//! The scenarios again with a real Linux guest instead of the fake one: a Debian
//! cloud kernel under QEMU (TCG) with virtio-net on the lab's TAP, QEMU opening
//! the TAP as Proxmox does. The guest's kernel does its own ARP, ICMP and DNS
//! (busybox ping and nslookup); pathtrace must give the verdicts the catalogue
//! (tests/src/scenarios.rs) expects, for every request the guest sent.
//! Needs root, eBPF, and qemu-system-x86 + busybox-static (`cargo xtask setup`);
//! the kernel is fetched once into target/vm-kernels/. About 20–40 s per test.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use pathtrace_tests::{
    guest::GuestSpec,
    lab::{Lab, LabOptions},
    realguest::{guest_kernel, Output, PingStats, RealGuest},
    scenarios::{self, Traffic},
    tracerun::{fake_guest_bin, trace_while},
};

/// Pings per test: more than one, so every request of a real guest is checked.
const PINGS: u32 = 3;

/// What the guest itself saw.
enum Seen {
    Ping(PingStats),
    Dns(Output),
}

fn run(name: &str) {
    let started = Instant::now();
    let sc = scenarios::find(name);
    let kernel = guest_kernel().expect("guest kernel");
    // The fake guest's binary also serves the lab's DNS; no fake guest is plugged.
    let mut opts = LabOptions::new(fake_guest_bin());
    opts.guests.clear();
    let mut lab = Lab::up(opts).expect("lab");
    let spec = lab.add_port(GuestSpec::nth(0)).expect("port for the guest");
    let mut guest = RealGuest::boot(&lab, spec, &kernel).expect("guest boots");
    eprintln!(
        "{name}: {} booted on {} in {:.1} s",
        kernel.release,
        guest.spec.tap,
        guest.boot_time().as_secs_f64()
    );
    for cmd in sc.break_hv {
        lab.hv(cmd)
            .unwrap_or_else(|e| panic!("breaking the lab: {e}"));
    }

    let vm_ip = guest.spec.ip.to_string();
    let (count, dns) = match sc.traffic {
        Traffic::Ping { size, ttl, .. } => {
            assert!(
                size == 56 && ttl == 64,
                "{name}: busybox ping is sent plain"
            );
            (PINGS, false)
        }
        // nslookup retransmits on its own; the first query is the one checked.
        Traffic::Dns { .. } => (1, true),
    };
    let count_arg = count.to_string();
    let mut args = vec!["--vm-ip", &vm_ip, "--to", sc.traffic.dst()];
    args.extend(["--count", &count_arg, "--timeout", "20", "--json"]);
    if dns {
        args.extend(["--proto", "dns"]);
    }
    let traced = Instant::now();
    let mut seen = None;
    let run = trace_while(&mut lab, &args, Duration::from_secs(45), |_| {
        seen = Some(match sc.traffic {
            Traffic::Ping { dst, .. } => Seen::Ping(guest.ping(dst.parse()?, count)?),
            Traffic::Dns { server, name } => {
                Seen::Dns(guest.nslookup(server.parse::<Ipv4Addr>()?, name)?)
            }
        });
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{name}: pathtrace or the guest failed: {e:#}"));
    eprintln!("--- {name}\n{}{}", run.stdout, run.stderr);

    let verdicts = run.verdicts();
    assert_eq!(
        verdicts.len(),
        count as usize,
        "{name}: a verdict per request"
    );
    for v in &verdicts {
        sc.check(v);
    }
    let expected_code = if sc.expect.verdict == "replied" { 0 } else { 1 };
    assert_eq!(run.code, expected_code, "{name}: exit status");
    guest_agrees(name, sc.expect.verdict, seen.expect("the guest sent"));
    eprintln!(
        "{name}: trace {:.1} s, whole test {:.1} s",
        traced.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// The guest's own view matches the verdict: its pings or its query answered
/// exactly when pathtrace says replied.
fn guest_agrees(name: &str, verdict: &str, seen: Seen) {
    let replied = verdict == "replied";
    match seen {
        Seen::Ping(s) => {
            assert_eq!(s.transmitted, PINGS, "{name}: pings sent");
            let want = if replied { s.transmitted } else { 0 };
            assert_eq!(s.received, want, "{name}: replies the guest got");
        }
        Seen::Dns(out) => assert_eq!(
            out.rc == 0,
            replied,
            "{name}: nslookup exit {} ({:?})",
            out.rc,
            out.lines
        ),
    }
}

#[test]
fn healthy_ping() {
    run("healthy_ping");
}

#[test]
fn nft_forward_drop() {
    run("nft_forward_drop");
}

#[test]
fn dns_reply_dropped() {
    run("dns_reply_dropped");
}
