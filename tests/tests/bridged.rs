//! Bridged mode (tests/src/lab.rs `Layout::Bridged`): vmbr0 bridges the guest's
//! TAP and the "physical" port eno1 into the LAN, whose router 192.0.2.1 is the
//! guest's gateway; the host routes none of the guest's traffic and has no
//! neighbour entry for it. pathtrace must find the guest from `--vm-ip` anyway,
//! show the physical port both ways, and say in operator words why a frame did
//! not leave or nothing came back. Needs root and eBPF.

use std::{net::Ipv4Addr, time::Duration};

use pathtrace_tests::{
    lab::{Lab, LabOptions, Layout, PingOpts, BRIDGED_UPLINK},
    tracerun::{fake_guest_bin, observed_hops as hops, run_in_hv, trace_while, TraceRun},
};
use serde_json::Value;

const DEST: &str = "203.0.113.8";
const VM: &str = "192.0.2.100";

fn lab() -> Lab {
    let mut opts = LabOptions::new(fake_guest_bin());
    opts.layout = Layout::Bridged;
    Lab::up(opts).expect("lab up")
}

fn trace(lab: &mut Lab, count: u32, timeout: &str) -> TraceRun {
    let n = count.to_string();
    let args = [
        "--vm-ip",
        VM,
        "--to",
        DEST,
        "--count",
        &n,
        "--timeout",
        timeout,
        "--json",
    ];
    let run = trace_while(lab, &args, Duration::from_secs(40), |lab| {
        let opts = PingOpts {
            count,
            interval_ms: 300,
            timeout_ms: 3000,
            ..PingOpts::default()
        };
        lab.guest(0).ping(DEST.parse::<Ipv4Addr>()?, opts)?;
        Ok(())
    })
    .expect("pathtrace runs");
    eprintln!("--- stdout\n{}--- stderr\n{}", run.stdout, run.stderr);
    run
}
#[test]
fn healthy_path_shows_the_physical_port_both_ways() {
    let mut lab = lab();
    // The host has never talked to the guest: no neighbour entry for it.
    let neigh = lab.hv(&format!("ip neigh show to {VM}")).unwrap();
    assert!(neigh.trim().is_empty(), "the host knows the guest: {neigh}");
    let run = trace(&mut lab, 2, "10");
    assert_eq!(run.code, 0, "replied");
    let verdicts = run.verdicts();
    assert_eq!(verdicts.len(), 2);
    for v in &verdicts {
        assert_eq!(v["verdict"], "replied");
        assert_eq!(v["ifname"], "tap100i0");
        let req = hops(v, "request");
        let rep = hops(v, "reply");
        assert_eq!(
            req.first().map(|h| h.1.as_str()),
            Some("tap100i0"),
            "{req:?}"
        );
        assert!(
            req.iter().any(|h| h.1 == BRIDGED_UPLINK && h.0 == "egress"),
            "request leaves by {BRIDGED_UPLINK}: {req:?}"
        );
        assert!(
            rep.iter().any(|h| h.1 == BRIDGED_UPLINK),
            "reply comes in by {BRIDGED_UPLINK}: {rep:?}"
        );
        assert_eq!(
            rep.last().map(|h| h.1.as_str()),
            Some("tap100i0"),
            "{rep:?}"
        );
    }
}

fn doctor(lab: &Lab) -> TraceRun {
    let run =
        run_in_hv(lab, &["doctor", "--vm-ip", VM, "--to", DEST, "--json"]).expect("doctor runs");
    eprintln!("--- doctor\n{}{}", run.stdout, run.stderr);
    run
}

/// The doctor's check named `name` (the first one).
fn check(run: &TraceRun, name: &str) -> Value {
    run.json()
        .into_iter()
        .find(|v| v["type"] == "check" && v["check"] == name)
        .unwrap_or_else(|| panic!("no {name} check"))
}

#[test]
fn doctor_checks_the_uplink_port_and_the_router() {
    let lab = lab();
    let run = doctor(&lab);
    let port = check(&run, "vm_port");
    assert_eq!(port["subject"], "tap100i0", "{port}");
    let up = check(&run, "bridge_uplink");
    assert_eq!(up["status"], "pass", "{up}");
    assert!(
        up["evidence"]
            .as_str()
            .unwrap()
            .contains("eno1 is vmbr0's port toward the LAN's router 192.0.2.1"),
        "{up}"
    );
    let gw = check(&run, "lan_gateway");
    assert_eq!(gw["status"], "pass", "{gw}");
    assert!(
        gw["evidence"]
            .as_str()
            .unwrap()
            .contains("answered ARP through vmbr0 from 02:00:00:00:02:01 on eno1"),
        "{gw}"
    );

    // The port toward the router taken out of forwarding.
    lab.hv("bridge link set dev eno1 state 0").unwrap();
    let up = check(&doctor(&lab), "bridge_uplink");
    lab.hv("bridge link set dev eno1 state 3").unwrap();
    assert_eq!(up["status"], "fail", "{up}");
    assert!(
        up["evidence"]
            .as_str()
            .unwrap()
            .contains("STP state disabled"),
        "{up}"
    );
    assert!(
        up["fix"]
            .as_str()
            .unwrap()
            .contains("bridge link set dev eno1 state 3"),
        "{up}"
    );

    // The router gone from the LAN: nobody answers ARP for the gateway.
    lab.inet("ip addr del 192.0.2.1/24 dev lan0").unwrap();
    let gw = check(&doctor(&lab), "lan_gateway");
    assert_eq!(gw["status"], "fail", "{gw}");
    assert!(
        gw["evidence"]
            .as_str()
            .unwrap()
            .contains("did not answer ARP through vmbr0"),
        "{gw}"
    );

    // No carrier on the physical port (the LAN side went down).
    lab.inet("ip link set lan0 down").unwrap();
    let run = doctor(&lab);
    let up = check(&run, "bridge_uplink");
    assert_eq!(up["status"], "fail", "{up}");
    assert!(
        up["evidence"]
            .as_str()
            .unwrap()
            .contains("eno1 is down (no carrier)"),
        "{up}"
    );
    assert!(up["fix"].as_str().unwrap().contains("cable"), "{up}");
    assert_eq!(run.code, 1);
}

/// The bridged lab with a VLAN-aware vmbr0 (guests and eno1 in VLAN 20), or
/// None with the reason printed on a kernel without bridge VLAN filtering.
fn vlan_lab() -> Option<Lab> {
    let mut opts = LabOptions::new(fake_guest_bin());
    opts.layout = Layout::Bridged;
    opts.vlan = Some(20);
    Lab::up_unless_unsupported(opts)
}

fn vlan_table(lab: &Lab) -> String {
    lab.hv("bridge -d vlan show").unwrap_or_default()
}

#[test]
fn vlan_aware_bridge_healthy() {
    let Some(mut lab) = vlan_lab() else { return };
    eprintln!("{}", vlan_table(&lab));
    let run = trace(&mut lab, 1, "15");
    assert_eq!(run.code, 0, "replied");
}

#[test]
fn doctor_vlan_check() {
    let Some(lab) = vlan_lab() else { return };
    let vlan = check(&doctor(&lab), "vlan");
    assert_eq!(vlan["status"], "pass", "{vlan}");
    assert!(
        vlan["evidence"]
            .as_str()
            .unwrap()
            .contains("tap100i0 is in VLAN 20"),
        "{vlan}"
    );
    // The trunk toward the router without the guests' VLAN.
    lab.hv("bridge vlan del dev eno1 vid 20 && bridge vlan add dev eno1 vid 1 pvid untagged")
        .unwrap();
    let vlan = check(&doctor(&lab), "vlan");
    assert_eq!(vlan["status"], "fail", "{vlan}");
    assert!(
        vlan["fix"]
            .as_str()
            .unwrap()
            .contains("bridge vlan add dev eno1 vid 20"),
        "{vlan}"
    );
    // The guest's port without a PVID.
    lab.hv("bridge vlan del dev tap100i0 vid 20").unwrap();
    let vlan = check(&doctor(&lab), "vlan");
    assert_eq!(vlan["status"], "fail", "{vlan}");
    assert!(
        vlan["evidence"].as_str().unwrap().contains("has no PVID"),
        "{vlan}"
    );
    assert!(
        vlan["fix"]
            .as_str()
            .unwrap()
            .contains("bridge vlan add dev tap100i0 vid"),
        "{vlan}"
    );
}
