//! pathtrace must never disturb the host it diagnoses: other programs on the same
//! interfaces keep working while it runs and after it leaves, and two instances do
//! not interfere. Needs root and eBPF.

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    time::Duration,
};

use pathtrace_tests::{
    counter::Counter,
    lab::{Lab, LabOptions, PingOpts},
    tracerun::{fake_guest_bin, pathtrace_bin, trace_while, trace_while_pid},
};

const ARGS: [&str; 9] = [
    "--vm-ip",
    "192.0.2.100",
    "--to",
    "203.0.113.8",
    "--count",
    "2",
    "--timeout",
    "15",
    "--json",
];

fn pings(lab: &mut Lab, count: u32) -> u32 {
    let opts = PingOpts {
        count,
        interval_ms: 100,
        timeout_ms: 1000,
        ..PingOpts::default()
    };
    lab.guest(0)
        .ping("203.0.113.8".parse::<std::net::IpAddr>().unwrap(), opts)
        .unwrap()
        .received
}

#[test]
fn a_preexisting_tc_program_keeps_counting_during_and_after() {
    let mut lab = Lab::up(LabOptions::new(fake_guest_bin())).unwrap();
    let counter = Counter::attach_in(&lab.hv_netns_path(), "tap100i0").unwrap();
    assert_eq!(pings(&mut lab, 3), 3);
    let before = counter.count().unwrap();
    assert!(before >= 3, "counter sees the guest: {before}");

    let run = trace_while(&mut lab, &ARGS, Duration::from_secs(30), |lab| {
        assert_eq!(pings(lab, 2), 2, "traffic flows while both are attached");
        Ok(())
    })
    .unwrap();
    eprintln!("{}{}", run.stdout, run.stderr);
    assert_eq!(run.code, 0);
    assert!(run.verdicts().iter().all(|v| v["verdict"] == "replied"));
    let during = counter.count().unwrap();
    assert!(
        during >= before + 2,
        "kept counting while pathtrace ran: {before} -> {during}"
    );

    assert_eq!(pings(&mut lab, 2), 2);
    let after = counter.count().unwrap();
    assert!(
        after >= during + 2,
        "still counting after pathtrace left: {during} -> {after}"
    );
}

#[test]
fn two_instances_do_not_interfere() {
    let mut lab = Lab::up(LabOptions::new(fake_guest_bin())).unwrap();
    let mut other = lab
        .command_in_hv(&pathtrace_bin(), &ARGS)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    BufReader::new(other.stderr.take().unwrap())
        .read_line(&mut banner)
        .unwrap();
    assert!(banner.contains("following"), "{banner}");
    let run = trace_while(&mut lab, &ARGS, Duration::from_secs(30), |lab| {
        assert_eq!(pings(lab, 2), 2);
        Ok(())
    })
    .unwrap();
    let out = other.wait_with_output().unwrap();
    let other_out = String::from_utf8_lossy(&out.stdout);
    eprintln!("first:\n{}\nsecond:\n{other_out}", run.stdout);
    assert_eq!(run.code, 0);
    assert_eq!(out.status.code(), Some(0));
    let replied = |s: &str| {
        s.lines()
            .filter(|l| l.contains("\"verdict\":\"replied\""))
            .count()
    };
    assert_eq!(replied(&run.stdout), 2);
    assert_eq!(replied(&other_out), 2);
}

#[test]
fn ring_buffer_overflow_is_counted_and_reported() {
    let mut lab = Lab::up(LabOptions::new(fake_guest_bin())).unwrap();
    // A deliberately tiny buffer and a burst of pings: the kernel must count what
    // it could not hand over, and the output must say so.
    let args = [
        "--vm-ip",
        "192.0.2.100",
        "--to",
        "203.0.113.8",
        "--count",
        "500",
        "--timeout",
        "6",
        "--buffer-kb",
        "4",
        "--json",
    ];
    // The reader is stalled during the burst (as a busy host can stall it), so the
    // kernel has to overflow the ring however fast the reader would otherwise be.
    let run = trace_while_pid(&mut lab, &args, Duration::from_secs(30), |lab, pid| {
        let opts = PingOpts {
            count: 500,
            interval_ms: 0,
            timeout_ms: 500,
            ..PingOpts::default()
        };
        // SAFETY: kill(2) on our own child (pathtrace, exec'd by nsenter).
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        let sent = lab
            .guest(0)
            .ping("203.0.113.8".parse::<std::net::IpAddr>()?, opts);
        unsafe { libc::kill(pid as i32, libc::SIGCONT) };
        sent?;
        Ok(())
    })
    .unwrap();
    let summary = run.summary().expect("summary");
    let lost = summary["events_lost"].as_u64().unwrap();
    eprintln!("summary: {summary}\n{}{}", run.stdout, run.stderr);
    assert!(
        lost > 0,
        "a 4 KiB buffer overflows under a burst of 500 pings"
    );
    assert!(
        run.verdicts().iter().any(|v| v["events_missing"] == true),
        "verdicts built while events were lost say so"
    );
}

#[test]
fn vm_port_recreated_mid_trace_is_reattached() {
    let mut lab = Lab::up(LabOptions::new(fake_guest_bin())).unwrap();
    let args = [
        "--vm-ip",
        "192.0.2.100",
        "--to",
        "203.0.113.8",
        "--count",
        "2",
        "--timeout",
        "20",
        "--json",
    ];
    let run = trace_while(&mut lab, &args, Duration::from_secs(40), |lab| {
        assert_eq!(pings(lab, 1), 1);
        lab.recreate_port(0)?;
        // pathtrace looks for its interfaces twice a second.
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(pings(lab, 1), 1);
        Ok(())
    })
    .unwrap();
    eprintln!("{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("vanished") || run.stderr.contains("is back"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("re-attached"), "{}", run.stderr);
    assert_eq!(run.code, 0);
    let verdicts = run.verdicts();
    assert_eq!(verdicts.len(), 2);
    assert!(
        verdicts.iter().all(|v| v["verdict"] == "replied"),
        "both sides of the reboot traced"
    );
}

#[test]
fn bridge_vanishing_stops_with_a_clear_error() {
    let mut lab = Lab::up(LabOptions::new(fake_guest_bin())).unwrap();
    let run = trace_while(&mut lab, &ARGS, Duration::from_secs(30), |lab| {
        lab.hv("ip link del vmbr0")?;
        Ok(())
    })
    .unwrap();
    assert_eq!(run.code, 2, "{}", run.stderr);
    let last = run.stderr.lines().last().unwrap_or_default();
    assert!(last.contains("vmbr0 vanished"), "{}", run.stderr);
    let left = pathtrace_tests::tracerun::programs_settled(0);
    assert!(left.is_empty(), "nothing left attached: {left:?}");
}

/// The documented capability set (README, Safety) is enough without root.
const LEAST_CAPS: &str = "+bpf,+perfmon,+net_admin,+dac_read_search,+syslog";

#[test]
fn least_privilege_capability_set_is_enough() {
    let mut lab = Lab::up(LabOptions::new(fake_guest_bin())).unwrap();
    lab.break_path(pathtrace_tests::lab::Fault::NftForwardDrop)
        .unwrap();
    let mut cmd = std::process::Command::new("nsenter");
    cmd.arg(format!("--net={}", lab.hv_netns_path().display()))
        .args([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ])
        .arg(format!("--inh-caps={LEAST_CAPS}"))
        .arg(format!("--ambient-caps={LEAST_CAPS}"))
        .arg(pathtrace_tests::tracerun::pathtrace_bin())
        .args([
            "--vm-ip",
            "192.0.2.100",
            "--to",
            "203.0.113.8",
            "--count",
            "1",
            "--timeout",
            "10",
        ])
        .arg("--json");
    let run =
        pathtrace_tests::tracerun::trace_cmd_while(&mut lab, cmd, Duration::from_secs(30), |lab| {
            pings(lab, 1);
            Ok(())
        })
        .unwrap();
    eprintln!("{}{}", run.stdout, run.stderr);
    let v = &run.verdicts()[0];
    assert_eq!(v["verdict"], "dropped");
    assert_eq!(v["stage"], "forward");
    assert!(
        v["rule"]
            .as_str()
            .unwrap()
            .contains("ip saddr 192.0.2.100 drop"),
        "nft readable"
    );
    assert!(
        v["location"].as_str().unwrap().starts_with("nft_do_chain+"),
        "symbols readable"
    );
}

/// Before tcx (kernels < 6.6) the first instance creates the clsact qdisc; when it
/// exits while a second instance still uses that qdisc, the second must keep
/// tracing (the qdisc is only removed when nothing but the exiting instance's own
/// filters hang on it). On tcx kernels this holds trivially.
#[test]
fn first_instance_exiting_leaves_the_second_attached() {
    let mut lab = Lab::up(LabOptions::new(fake_guest_bin())).unwrap();
    let one = [
        "--vm-ip",
        "192.0.2.100",
        "--to",
        "203.0.113.8",
        "--count",
        "1",
        "--timeout",
        "20",
        "--json",
    ];
    let mut first = lab
        .command_in_hv(&pathtrace_bin(), &one)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    BufReader::new(first.stderr.take().unwrap())
        .read_line(&mut banner)
        .unwrap();
    assert!(banner.contains("following"), "{banner}");
    let three = [
        "--vm-ip",
        "192.0.2.100",
        "--to",
        "203.0.113.8",
        "--count",
        "3",
        "--timeout",
        "20",
        "--json",
    ];
    let run = trace_while(&mut lab, &three, Duration::from_secs(40), |lab| {
        assert_eq!(pings(lab, 1), 1);
        // The first instance has its verdict and exits (detaching).
        let status = first.wait().unwrap();
        assert_eq!(status.code(), Some(0));
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(pings(lab, 2), 2);
        Ok(())
    })
    .unwrap();
    let replied = run
        .stdout
        .lines()
        .filter(|l| l.contains("\"verdict\":\"replied\""))
        .count();
    assert_eq!(
        replied, 3,
        "second instance kept tracing: {}\n{}",
        run.stdout, run.stderr
    );
    assert_eq!(run.code, 0);
}
