//! TCP and UDP services end to end, beyond the scenario catalogue: a guest
//! opening connections faster than pathtrace follows them, and the options
//! that name a service.

use super::*;

/// 200 connection attempts back to back while `--count 3` follows three at a
/// time: three verdicts, each with its whole path, and the rest counted as
/// skipped, as for a ping flood.
#[test]
fn a_guest_opening_connections_at_full_rate_is_followed_within_the_budget() {
    let mut lab = lab();
    let to = format!("{DEST}:8080");
    let args = [
        "--vm-ip",
        VM,
        "--to",
        &to,
        "--count",
        "3",
        "--timeout",
        "15",
        "--json",
    ];
    let mut accepted = 0;
    let run = trace_while(&mut lab, &args, Duration::from_secs(30), |lab| {
        accepted = lab.guest(0).syn_burst(DEST.parse()?, 8080, 200)?;
        Ok(())
    })
    .expect("pathtrace runs");
    eprintln!("--- stdout\n{}--- stderr\n{}", run.stdout, run.stderr);
    assert!(accepted > 100, "the service accepted {accepted} of 200");
    let verdicts = run.verdicts();
    assert_eq!(verdicts.len(), 3, "{verdicts:?}");
    for v in &verdicts {
        assert_eq!(v["verdict"], "replied", "{v}");
        assert_eq!(v["proto"], "tcp");
        assert_eq!(v["flow"]["tcp_flags"], "SYN");
        assert_eq!(v["flow"]["reply_tcp_flags"], "SYN,ACK");
        assert!(stages(v, "request").contains(&"egress".to_string()), "{v}");
        assert_eq!(stages(v, "reply").last().map(String::as_str), Some("tap"));
    }
    let s = run.summary().expect("summary line");
    let skipped = s["skipped_requests"].as_u64().expect("skipped_requests");
    assert!(
        skipped >= 100,
        "attempts beyond the budget are counted: {s}"
    );
    assert_nothing_attached();
}

/// A service without its port, or a port for ping, or a service over IPv6
/// (the verifier refuses that program): one line, exit 2, nothing attached.
#[test]
fn a_service_needs_its_port_and_only_a_service_has_one() {
    let lab = lab();
    let v6 = [
        "--vm-ip",
        "2001:db8:1::100",
        "--to",
        "[2001:db8:ffff::8]:8080",
    ];
    let v4 = ["--vm-ip", VM, "--to", DEST];
    for (to, args, says) in [
        (v4, vec!["--proto", "tcp"], "needs the service's port"),
        (v4, vec!["--proto", "udp"], "needs the service's port"),
        (v4, vec!["--proto", "icmp", "--port", "80"], "has none"),
        (v6, vec![], "not traced over IPv6"),
        (v6, vec!["--proto", "udp"], "not traced over IPv6"),
    ] {
        let mut all = to.to_vec();
        all.extend(["--timeout", "2"]);
        all.extend(args.iter().copied());
        let out = Command::new("nsenter")
            .arg(format!("--net={}", lab.hv_netns_path().display()))
            .arg(pathtrace_bin())
            .args(&all)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{all:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(says), "{all:?}: {stderr}");
    }
    assert_nothing_attached();
}
