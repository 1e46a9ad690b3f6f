//! End-to-end: a namespaced hypervisor with a real TAP port held by a fake guest,
//! broken on purpose; pathtrace runs in its namespace and its JSON verdict is
//! checked. Needs root and eBPF (CI runs these as root).

use std::{process::Command, time::Duration};

use pathtrace_tests::{
    lab::{Fault, Lab, LabOptions, PingOpts},
    tracerun::{fake_guest_bin, pathtrace_bin, trace_cmd_while, trace_while, TraceRun},
};
use serde_json::Value;

mod flows;
mod lifecycle;

const VM: &str = "192.0.2.100";
const DEST: &str = "203.0.113.8";

fn lab() -> Lab {
    Lab::up(LabOptions::new(fake_guest_bin())).expect("lab comes up")
}

/// Trace `count` guest pings to DEST.
fn trace_pings(lab: &mut Lab, count: u32) -> TraceRun {
    trace_pings_as(lab, count, true)
}

/// [`trace_pings`] as JSON lines or as the text view a person reads.
fn trace_pings_as(lab: &mut Lab, count: u32, json: bool) -> TraceRun {
    let n = count.to_string();
    let mut args = vec![
        "--vm-ip",
        VM,
        "--to",
        DEST,
        "--count",
        &n,
        "--timeout",
        "15",
    ];
    if json {
        args.push("--json");
    }
    let run = trace_while(lab, &args, Duration::from_secs(30), |lab| {
        let opts = PingOpts {
            count,
            interval_ms: 200,
            timeout_ms: 1500,
            ..PingOpts::default()
        };
        lab.guest(0).ping(DEST.parse::<std::net::IpAddr>()?, opts)?;
        Ok(())
    })
    .expect("pathtrace runs");
    eprintln!(
        "--- pathtrace stdout\n{}--- stderr\n{}",
        run.stdout, run.stderr
    );
    run
}

fn stages(v: &Value, direction: &str) -> Vec<String> {
    v["path"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["direction"] == direction)
        .map(|h| h["stage"].as_str().unwrap().to_string())
        .collect()
}

fn only_verdict(run: &TraceRun) -> Value {
    let verdicts = run.verdicts();
    assert_eq!(verdicts.len(), 1, "exactly one verdict: {verdicts:?}");
    let v = verdicts[0].clone();
    assert_eq!(v["vm_ip"], VM);
    assert_eq!(v["dst"], DEST);
    assert_eq!(v["proto"], "icmp");
    assert_eq!(v["flow"]["src"], VM);
    v
}

#[test]
fn healthy_ping_is_replied_with_full_path() {
    let mut lab = lab();
    let run = trace_pings(&mut lab, 2);
    assert_eq!(run.code, 0, "exit 0 when every request got its reply");
    let verdicts = run.verdicts();
    assert_eq!(verdicts.len(), 2);
    for v in &verdicts {
        assert_eq!(v["verdict"], "replied");
        assert_eq!(v["direction"], Value::Null);
        let req = stages(v, "request");
        for s in ["tap", "bridge", "forward", "postrouting", "egress"] {
            assert!(
                req.contains(&s.to_string()),
                "request path has {s}: {req:?}"
            );
        }
        let rep = stages(v, "reply");
        assert_eq!(rep.first().map(String::as_str), Some("egress"));
        assert_eq!(
            rep.last().map(String::as_str),
            Some("tap"),
            "reply reaches the tap"
        );
        // MASQUERADE is visible on the way out.
        let snat = v["path"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["nat"]["type"] == "snat");
        assert_eq!(snat.unwrap()["nat"]["to"], "198.51.100.2");
        assert!(v["flow"]["icmp_seq"].as_u64().is_some());
    }
    let s = run.summary().expect("summary line");
    assert_eq!(
        (s["probes"].as_u64(), s["replied"].as_u64()),
        (Some(2), Some(2))
    );
}

/// A guest sending faster than pathtrace follows (20 echoes 2 ms apart, while a
/// verdict takes at least 50 ms): `--count 2` follows two at once, each with its
/// whole path, and counts the echoes it did not follow instead of dropping them
/// silently.
#[test]
fn a_flooding_guest_is_followed_within_the_budget_and_the_rest_counted() {
    let mut lab = lab();
    let args = [
        "--vm-ip",
        VM,
        "--to",
        DEST,
        "--count",
        "2",
        "--timeout",
        "15",
        "--json",
    ];
    let run = trace_while(&mut lab, &args, Duration::from_secs(30), |lab| {
        let opts = PingOpts {
            count: 20,
            interval_ms: 2,
            timeout_ms: 1500,
            ..PingOpts::default()
        };
        lab.guest(0).ping(DEST.parse::<std::net::IpAddr>()?, opts)?;
        Ok(())
    })
    .expect("pathtrace runs");
    eprintln!("--- stdout\n{}--- stderr\n{}", run.stdout, run.stderr);
    let verdicts = run.verdicts();
    assert_eq!(verdicts.len(), 2, "{verdicts:?}");
    for v in &verdicts {
        assert_eq!(v["verdict"], "replied");
        assert!(stages(v, "request").contains(&"egress".to_string()), "{v}");
        assert_eq!(stages(v, "reply").last().map(String::as_str), Some("tap"));
    }
    let s = run.summary().expect("summary line");
    let skipped = s["skipped_requests"].as_u64().expect("skipped_requests");
    assert!(skipped >= 1, "echoes beyond the budget are counted: {s}");
    assert_nothing_attached();
}

#[test]
fn nft_forward_drop_names_the_rule() {
    let mut lab = lab();
    lab.break_path(Fault::NftForwardDrop).unwrap();
    let run = trace_pings(&mut lab, 1);
    assert_eq!(run.code, 1);
    let v = only_verdict(&run);
    assert_eq!(v["verdict"], "dropped");
    assert_eq!(v["direction"], "request");
    assert_eq!(v["stage"], "forward");
    assert_eq!(v["reason"], "NETFILTER_DROP");
    let rule = v["rule"].as_str().expect("rule named");
    assert!(rule.starts_with("inet filter forward handle "), "{rule}");
    assert!(rule.ends_with("ip saddr 192.0.2.100 drop"), "{rule}");
    assert!(v["location"]
        .as_str()
        .unwrap()
        .starts_with("nft_do_chain+0x"));
    assert!(v["hint"]
        .as_str()
        .unwrap()
        .contains("nft delete rule inet filter forward handle"));
}

/// The command iptables-nft is run by here: `iptables` when that is the nf_tables
/// variant (Debian's default), else `iptables-nft`.
fn iptables_nft_bin() -> &'static str {
    let v = Command::new("iptables").arg("-V").output();
    match v.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("nf_tables")) {
        true => "iptables",
        false => "iptables-nft",
    }
}

/// A FORWARD rule added with iptables-nft lives in a table nft warns not to
/// touch: the fix is an iptables command by rule number, not `nft delete rule`,
/// and the doctor finding on the verdict says the same command.
#[test]
fn iptables_nft_forward_drop_is_fixed_with_iptables() {
    let mut lab = lab();
    lab.hv("iptables-nft -A FORWARD -s 192.0.2.100 -j DROP")
        .unwrap();
    let run = trace_pings(&mut lab, 1);
    assert_eq!(run.code, 1);
    let v = only_verdict(&run);
    assert_eq!(
        (v["verdict"].as_str(), v["stage"].as_str()),
        (Some("dropped"), Some("forward"))
    );
    let want = format!("{} -D FORWARD 1", iptables_nft_bin());
    let hint = v["hint"].as_str().unwrap();
    assert!(hint.ends_with(&format!(": {want}")), "{hint}");
    assert!(hint.contains("managed by iptables-nft"), "{hint}");
    let fixes: Vec<&str> = v["doctor"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["check"] == "firewall")
        .filter_map(|c| c["fix"].as_str())
        .collect();
    assert_eq!(fixes, [want.as_str()], "{v}");
}

/// Text view: the missing MASQUERADE is one `fix:` line (the doctor's nat
/// finding is still shown, without a second command), in iptables syntax, since
/// no nftables or legacy table manages NAT on this host once the lab's is gone.
#[test]
fn missing_masquerade_text_prints_one_fix() {
    let mut lab = lab();
    lab.break_path(Fault::NoMasquerade).unwrap();
    let run = trace_pings_as(&mut lab, 1, false);
    assert_eq!(run.code, 1);
    let lines: Vec<&str> = run.stdout.lines().map(str::trim).collect();
    assert!(
        lines.iter().any(|l| l.starts_with("doctor: nat:")),
        "{}",
        run.stdout
    );
    let fixes: Vec<&&str> = lines.iter().filter(|l| l.starts_with("fix:")).collect();
    assert_eq!(fixes.len(), 1, "{}", run.stdout);
    assert!(
        fixes[0].ends_with("-t nat -A POSTROUTING -s 192.0.2.0/24 -o eth0 -j MASQUERADE"),
        "{}",
        run.stdout
    );
}

#[test]
fn ip_forward_off_is_a_routing_drop_naming_the_sysctl() {
    let mut lab = lab();
    lab.break_path(Fault::IpForwardOff).unwrap();
    let run = trace_pings(&mut lab, 1);
    assert_eq!(run.code, 1);
    let v = only_verdict(&run);
    assert_eq!(v["verdict"], "dropped");
    assert_eq!(v["direction"], "request");
    assert_eq!(v["stage"], "routing");
    assert_eq!(v["ifname"], "vmbr0");
    assert_eq!(v["rule"], "sysctl net.ipv4.ip_forward=0");
    assert!(v["hint"]
        .as_str()
        .unwrap()
        .contains("sysctl -w net.ipv4.ip_forward=1"));
}

#[test]
fn missing_masquerade_is_no_reply_with_nat_hint() {
    let mut lab = lab();
    lab.break_path(Fault::NoMasquerade).unwrap();
    let run = trace_pings(&mut lab, 1);
    assert_eq!(run.code, 1);
    let v = only_verdict(&run);
    assert_eq!(v["verdict"], "no_reply");
    assert_eq!(v["stage"], "remote");
    assert_eq!(v["ifname"], "eth0");
    let hint = v["hint"].as_str().unwrap();
    assert!(
        hint.contains("MASQUERADE") && hint.contains("192.0.2.0/24"),
        "{hint}"
    );
}

#[test]
fn unrelated_drops_on_the_host_do_not_change_verdicts() {
    let mut lab = lab();
    let _noise = lab.noise(Duration::from_secs(8)).unwrap();
    let run = trace_pings(&mut lab, 2);
    assert_eq!(run.code, 0, "noise must not turn healthy into dropped");
    assert!(run.verdicts().iter().all(|v| v["verdict"] == "replied"));
    lab.break_path(Fault::NftForwardDrop).unwrap();
    let run = trace_pings(&mut lab, 1);
    let v = only_verdict(&run);
    assert_eq!(
        (v["verdict"].as_str(), v["stage"].as_str()),
        (Some("dropped"), Some("forward"))
    );
}

/// After pathtrace exits (any way), none of its programs stay loaded.
fn assert_nothing_attached() {
    let ours = pathtrace_tests::tracerun::programs_settled(0);
    assert!(ours.is_empty(), "left behind: {ours:?}");
}

#[test]
fn unknown_vm_is_a_clear_error_with_exit_2() {
    let mut lab = lab();
    let out = lab
        .command_in_hv(
            &pathtrace_bin(),
            &["--vm-ip", "192.0.2.77", "--to", DEST, "--timeout", "2"],
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("no VM with IP 192.0.2.77"), "{err}");
    assert!(out.stdout.is_empty());
    let out = lab
        .command_in_hv(&pathtrace_bin(), &["--vm-ip", "192.0.2.300", "--to", DEST])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "malformed IP is a usage error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("192.0.2.300"), "{err}");
    let out = lab
        .command_in_hv(
            &pathtrace_bin(),
            &["--vm-ip", VM, "--to", DEST, "--iface", "nosuch0"],
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nosuch0 does not exist"));
    let _ = &mut lab;
}

/// A mistyped IP while another VM's port is disabled: pathtrace must not trace
/// that port as if it were the VM's. It says nothing knows the IP, names the port
/// that cannot pass frames with the `--iface` to trace it, exits 2, and leaves
/// nothing attached. The guess it still makes with --vm-ip of the real VM (whose
/// entries the bridge flushed too) is refused the same way.
#[test]
fn unknown_ip_names_the_blocked_port_and_exits_2() {
    let lab = lab();
    lab.hv("bridge link set dev tap100i0 state 0 && sleep 2")
        .unwrap();
    for ip in ["192.0.2.77", VM] {
        let out = lab
            .command_in_hv(
                &pathtrace_bin(),
                &["--vm-ip", ip, "--to", DEST, "--timeout", "2", "--json"],
            )
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{ip}: {err}");
        assert_eq!(err.lines().count(), 1, "{ip}: one line: {err}");
        assert!(
            err.contains(&format!("no VM with IP {ip} is known")),
            "{err}"
        );
        assert!(
            err.contains("tap100i0 (disabled)") && err.contains("--iface tap100i0"),
            "{err}"
        );
        assert!(out.stdout.is_empty(), "{ip}: nothing on stdout");
        assert_nothing_attached();
    }
}

/// The bridge forgot on which port the guest's MAC is (FDB entry aged out) while
/// the neighbour entry still knows it: every port of the bridge is watched, the
/// banner says the port is a guess, and the request's own port answers it.
#[test]
fn aged_out_fdb_entry_is_a_guess_said_in_the_banner() {
    let mut opts = LabOptions::new(fake_guest_bin());
    opts.guests.push(pathtrace_tests::guest::GuestSpec::nth(1));
    let mut lab = Lab::up(opts).expect("lab comes up");
    let ping = PingOpts {
        count: 1,
        ..PingOpts::default()
    };
    lab.guest(0)
        .ping(DEST.parse::<std::net::IpAddr>().unwrap(), ping)
        .unwrap();
    let mac = lab.guest_spec(0).mac.clone();
    lab.hv(&format!("bridge fdb del {mac} dev tap100i0 master"))
        .unwrap();
    let run = trace_pings(&mut lab, 1);
    let banner = run.stderr.lines().next().unwrap_or_default();
    assert!(banner.contains("port guessed"), "{banner}");
    assert!(
        banner.contains("tap100i0") && banner.contains("tap101i0"),
        "{banner}"
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let v = only_verdict(&run);
    assert_eq!(v["ifname"], "tap100i0");
}

#[test]
fn without_privileges_it_says_so_and_exits_2() {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(pathtrace_bin())
        .args(["--vm-ip", VM, "--to", DEST])
        .output()
        .expect("setpriv (util-linux)");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("needs root"), "{err}");
}

#[test]
fn dns_query_through_nat_is_replied_by_transaction_id() {
    let mut lab = lab();
    let args = [
        "--vm-ip",
        VM,
        "--to",
        "203.0.113.53",
        "--proto",
        "dns",
        "--count",
        "2",
        "--timeout",
        "15",
        "--json",
    ];
    let run = trace_while(&mut lab, &args, Duration::from_secs(30), |lab| {
        let r = lab.guest(0).dns(
            "203.0.113.53".parse::<std::net::IpAddr>()?,
            "example.com",
            2,
            1000,
        )?;
        assert_eq!(r.answered, 2, "the lab's resolver answers");
        Ok(())
    })
    .unwrap();
    eprintln!("{}{}", run.stdout, run.stderr);
    assert_eq!(run.code, 0);
    let verdicts = run.verdicts();
    assert_eq!(verdicts.len(), 2);
    for v in &verdicts {
        assert_eq!(v["verdict"], "replied");
        assert_eq!(v["proto"], "dns");
        assert!(v["flow"]["dns_id"].as_u64().is_some());
        assert!(v["flow"].get("icmp_id").is_none());
    }
}

#[test]
fn guest_pinging_the_host_with_input_drop_is_an_input_drop() {
    let mut lab = lab();
    lab.hv("nft add table inet filter && nft add chain inet filter input '{ type filter hook input priority filter; policy accept; }' && nft add rule inet filter input icmp type echo-request drop").unwrap();
    let args = [
        "--vm-ip",
        VM,
        "--to",
        "192.0.2.1",
        "--count",
        "1",
        "--timeout",
        "10",
        "--json",
    ];
    let run = trace_while(&mut lab, &args, Duration::from_secs(20), |lab| {
        lab.guest(0).ping(
            "192.0.2.1".parse::<std::net::IpAddr>()?,
            PingOpts::default(),
        )?;
        Ok(())
    })
    .unwrap();
    eprintln!("{}{}", run.stdout, run.stderr);
    let v = &run.verdicts()[0];
    assert_eq!(v["verdict"], "dropped");
    assert_eq!(v["direction"], "request");
    assert_eq!(v["stage"], "input");
    assert_eq!(v["reason"], "NETFILTER_DROP");
    assert!(v["rule"]
        .as_str()
        .unwrap()
        .ends_with("icmp type echo-request drop"));
}

/// pathtrace started before the VM: its port has no carrier then, and the
/// doctor's start-time finding says so. The VM starts, and a drop seconds later
/// must not carry that finding any more (findings are re-read at the verdict).
#[test]
fn a_trace_started_before_the_vm_attaches_no_stale_finding() {
    let mut lab = lab();
    lab.hv("ip link set eth0 mtu 1280").unwrap();
    let spec = lab.stop_guest(0);
    let args = [
        "--vm-ip",
        VM,
        "--iface",
        "tap100i0",
        "--to",
        DEST,
        "--count",
        "1",
        "--timeout",
        "15",
        "--json",
    ];
    let run = trace_while(&mut lab, &args, Duration::from_secs(30), move |lab| {
        lab.start_guest(spec)?;
        let big = PingOpts {
            size: 1400,
            timeout_ms: 1500,
            ..PingOpts::default()
        };
        lab.guest(0).ping(DEST.parse::<std::net::IpAddr>()?, big)?;
        Ok(())
    })
    .expect("pathtrace runs");
    eprintln!("--- stdout\n{}--- stderr\n{}", run.stdout, run.stderr);
    let v = only_verdict(&run);
    assert_eq!(v["verdict"], "dropped");
    assert_eq!(v["stage"], "egress");
    let doctor = v["doctor"].as_array().cloned().unwrap_or_default();
    assert!(
        doctor.iter().all(|c| c["check"] != "link_up"),
        "no stale 'no carrier' finding: {doctor:?}"
    );
    assert!(
        doctor.iter().any(|c| c["check"] == "mtu"),
        "the finding that holds stays: {doctor:?}"
    );
}
