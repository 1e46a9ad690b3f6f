//! Trace mode on the Proxmox and libvirt layouts: the path names every hop
//! between the VM's TAP and the bridge that routes (Proxmox's firewall bridge and
//! its veth pair), and a drop inside the firewall bridge is reported there.
//! Needs root and eBPF (CI runs it as root).

use std::{net::Ipv4Addr, time::Duration};

use pathtrace_tests::{
    lab::{Lab, LabOptions, Layout, PingOpts},
    tracerun::{fake_guest_bin, run_in_hv, trace_while, TraceRun},
};
use serde_json::Value;

const DEST: &str = "203.0.113.8";
const VM: &str = "192.0.2.100";

fn lab(layout: Layout) -> Lab {
    let mut opts = LabOptions::new(fake_guest_bin());
    opts.layout = layout;
    lab_with(opts)
}

/// The lab up, and one ping from the guest (so the host's tables know it).
fn lab_with(opts: LabOptions) -> Lab {
    let mut lab = Lab::up(opts).expect("lab up");
    let one = PingOpts {
        count: 1,
        ..PingOpts::default()
    };
    lab.guest(0)
        .ping(DEST.parse::<Ipv4Addr>().unwrap(), one)
        .expect("guest pings");
    lab
}

fn trace(lab: &mut Lab, extra: &[&str]) -> TraceRun {
    let mut args = vec!["--to", DEST, "--count", "2", "--json"];
    args.extend_from_slice(extra);
    if !extra.contains(&"--timeout") {
        args.extend_from_slice(&["--timeout", "10"]);
    }
    let run = trace_while(lab, &args, Duration::from_secs(25), |lab| {
        let opts = PingOpts {
            count: 2,
            interval_ms: 200,
            timeout_ms: 1500,
            ..PingOpts::default()
        };
        lab.guest(0).ping(DEST.parse::<std::net::IpAddr>()?, opts)?;
        Ok(())
    })
    .expect("pathtrace runs");
    eprintln!("--- stdout\n{}--- stderr\n{}", run.stdout, run.stderr);
    run
}

/// (ifname, bridge) of a verdict's observed hops in one direction.
fn hops(v: &Value, dir: &str) -> Vec<(String, String)> {
    v["path"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["direction"] == dir && h["ifname"].is_string())
        .map(|h| {
            let s = |k: &str| h[k].as_str().unwrap_or_default().to_string();
            (s("ifname"), s("bridge"))
        })
        .collect()
}

#[test]
fn proxmox_path_crosses_the_firewall_bridge() {
    let mut lab = lab(Layout::Proxmox);
    let run = trace(&mut lab, &["--vm-ip", VM]);
    assert_eq!(run.code, 0, "replied");
    for v in run.verdicts() {
        assert_eq!(v["verdict"], "replied");
        let req = hops(&v, "request");
        let names: Vec<&str> = req.iter().map(|(n, _)| n.as_str()).collect();
        let at = |n: &str| names.iter().position(|x| *x == n);
        let (tap, fwln, fwpr, up) = (at("tap100i0"), at("fwln100i0"), at("fwpr100p0"), at("eth0"));
        assert!(
            tap < fwln && fwln < fwpr && fwpr < up,
            "request order: {names:?}"
        );
        assert!(tap.is_some(), "{names:?}");
        assert!(
            req.contains(&("tap100i0".into(), "fwbr100i0".into())),
            "{req:?}"
        );
        assert!(
            req.contains(&("fwpr100p0".into(), "vmbr0".into())),
            "{req:?}"
        );
        let rep: Vec<String> = hops(&v, "reply").into_iter().map(|(n, _)| n).collect();
        assert!(
            rep.contains(&"fwln100i0".to_string()),
            "reply crosses back: {rep:?}"
        );
        assert_eq!(rep.last().map(String::as_str), Some("tap100i0"));
    }
    assert!(
        run.stderr
            .contains("tap100i0 → fwbr100i0 → fwln100i0 → fwpr100p0 → vmbr0 → eth0"),
        "banner names the chain"
    );
}

/// A rule that drops what the firewall bridge forwards (as the Proxmox firewall
/// does through br_netfilter): the verdict names fwbr100i0, not vmbr0.
#[test]
fn drop_inside_the_firewall_bridge_is_reported_there() {
    let mut lab = lab(Layout::Proxmox);
    lab.nft(
        "add table inet pvefw\n\
         add chain inet pvefw forward { type filter hook forward priority filter; policy accept; }\n\
         add rule inet pvefw forward iifname \"fwbr100i0\" icmp type echo-request drop\n",
    )
    .unwrap();
    let run = trace(&mut lab, &["--vm-ip", VM]);
    assert_eq!(run.code, 1);
    let v = &run.verdicts()[0];
    assert_eq!(v["verdict"], "dropped");
    assert_eq!(v["direction"], "request");
    assert_eq!(v["stage"], "bridge");
    assert_eq!(v["ifname"], "fwbr100i0");
    assert_eq!(v["reason"], "NETFILTER_DROP");
    let rule = v["rule"].as_str().unwrap_or_default();
    assert!(rule.contains("pvefw forward"), "{rule}");
}

/// A Proxmox host whose firewall bridge answers ARP for the host's addresses (the
/// kernel's default): the guest, like Linux, keeps the first answer for its
/// gateway, which is fwbr100i0's, so its pings are routed from fwbr100i0. A drop
/// by a rule in the routed forward hook is `forward` at fwbr100i0 (not the
/// bridged pass), and both trace and doctor name the anomaly with its fix.
#[test]
fn traffic_routed_from_a_firewall_bridge_is_dropped_at_forward() {
    let mut opts = LabOptions::new(fake_guest_bin());
    opts.layout = Layout::Proxmox;
    opts.fwbr_answers_arp = true;
    let mut lab = lab_with(opts);
    lab.nft(
        "add table inet filter\n\
         add chain inet filter forward { type filter hook forward priority filter; policy accept; }\n\
         add rule inet filter forward iifname \"fwbr100i0\" ip saddr 192.0.2.100 drop\n",
    )
    .unwrap();
    let run = trace(&mut lab, &["--vm-ip", VM]);
    assert_eq!(run.code, 1);
    let v = &run.verdicts()[0];
    assert_eq!(v["verdict"], "dropped");
    assert_eq!(v["stage"], "forward", "the routed pass, not br_netfilter's");
    assert_eq!(v["ifname"], "fwbr100i0");
    let rule = v["rule"].as_str().unwrap_or_default();
    assert!(rule.contains("inet filter forward"), "{rule}");
    let anomaly = |checks: &[Value]| {
        checks
            .iter()
            .find(|c| c["check"] == "firewall_bridge_arp")
            .cloned()
            .unwrap_or(Value::Null)
    };
    let found = anomaly(v["doctor"].as_array().map_or(&[][..], Vec::as_slice));
    assert_eq!(found["status"], "fail", "trace names the anomaly: {v}");
    let fix = found["fix"].as_str().unwrap_or_default();
    assert!(
        fix.contains("net.ipv4.conf.fwbr100i0.arp_ignore=1"),
        "{fix}"
    );

    let doctor = run_in_hv(
        &lab,
        &["doctor", "--vm-ip", VM, "--to", DEST, "--json", "--passive"],
    )
    .expect("doctor runs");
    let checks: Vec<Value> = doctor
        .json()
        .into_iter()
        .filter(|c| c["type"] == "check")
        .collect();
    assert_eq!(anomaly(&checks)["status"], "fail", "{}", doctor.stdout);
    assert_eq!(doctor.code, 1);
}

/// libvirt: the VM named by its domain; vnet0 on virbr0.
#[test]
fn libvirt_vm_by_name() {
    let mut lab = lab(Layout::Libvirt);
    let root = lab.config_root();
    let run = trace(
        &mut lab,
        &["--vm", "guest0", "--config-root", root.to_str().unwrap()],
    );
    assert_eq!(run.code, 0, "replied");
    let v = &run.verdicts()[0];
    assert_eq!(v["vm_ip"], VM);
    let names: Vec<String> = hops(v, "request").into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names.first().map(String::as_str),
        Some("vnet0"),
        "{names:?}"
    );
    assert!(names.contains(&"virbr0".to_string()), "{names:?}");
}

/// The guest cannot send (its TAP is down): the trace sees no request and prints
/// the doctor's checks, which say so. The port comes from the VM's configuration
/// since the host's tables forgot the guest (its neighbour entry is flushed
/// here: the FDB alone would still lead to the firewall bridge's only port).
#[test]
fn no_request_runs_the_doctor_checks() {
    let mut lab = lab(Layout::Proxmox);
    lab.break_path(pathtrace_tests::lab::Fault::PortDown)
        .unwrap();
    lab.hv(&format!("ip neigh flush to {VM}")).unwrap();
    let root = lab.config_root();
    let args = [
        "--vm",
        "100",
        "--config-root",
        root.to_str().unwrap(),
        "--timeout",
        "3",
    ];
    let run = trace(&mut lab, &args);
    assert_eq!(run.code, 1);
    assert!(run.verdicts().is_empty());
    // Only the configuration names the port now: the first line says so.
    let banner = run.stderr.lines().next().unwrap_or_default();
    assert!(
        banner.contains("following") && banner.contains("named by proxmox-qemu configuration"),
        "{banner}"
    );
    let link = run
        .json()
        .into_iter()
        .find(|v| v["type"] == "check" && v["check"] == "link_up")
        .expect("link_up check printed");
    assert_eq!(link["status"], "fail");
    assert_eq!(link["fix"], "ip link set dev tap100i0 up");
}

/// A request that gets no reply because MASQUERADE is missing: the verdict
/// carries the doctor's NAT finding with its fix, the same command as the hint's
/// (one tool's syntax, not nft in one place and iptables in the other).
#[test]
fn no_reply_verdict_carries_the_nat_finding() {
    let mut lab = lab(Layout::Plain);
    lab.break_path(pathtrace_tests::lab::Fault::NoMasquerade)
        .unwrap();
    let run = trace(&mut lab, &["--vm-ip", VM, "--timeout", "4"]);
    let v = &run.verdicts()[0];
    assert_eq!(v["verdict"], "no_reply");
    let nat = v["doctor"]
        .as_array()
        .and_then(|d| d.iter().find(|c| c["check"] == "nat"))
        .expect("doctor nat finding");
    let fix = nat["fix"].as_str().unwrap();
    assert!(fix.contains("MASQUERADE"), "{nat}");
    let hint = v["hint"].as_str().unwrap();
    assert!(hint.ends_with(&format!(": {fix}")), "{hint} / {fix}");
}
