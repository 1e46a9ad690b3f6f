//! Bridged mode with a bond or a VLAN device as vmbr0's port toward the LAN
//! (tests/src/lab `Uplink`): the path shows the slave a request left by, and
//! the doctor's `bond`, `bridge_uplink` and `link_up` checks find a bond
//! without a working slave, an 802.3ad bond without an LACP partner and a VLAN
//! device that is down, with their fixes; and on the routed layouts, the
//! host's uplink address on a VLAN sub-interface that is down. Skipped, saying so, on kernels
//! without bonding or 802.1Q VLAN devices (the development kernel). Needs root
//! and eBPF.

use std::{net::Ipv4Addr, time::Duration};

use pathtrace_tests::{
    lab::{Lab, LabOptions, Layout, PingOpts, Uplink},
    tracerun::{fake_guest_bin, run_in_hv, trace_while, TraceRun},
};
use serde_json::Value;

const DEST: &str = "203.0.113.8";
const VM: &str = "192.0.2.100";

/// The bridged lab on `uplink`, or None with the reason printed.
fn lab(uplink: Uplink) -> Option<Lab> {
    let mut opts = LabOptions::new(fake_guest_bin());
    opts.layout = Layout::Bridged;
    opts.uplink = uplink;
    Lab::up_unless_unsupported(opts)
}

/// What the kernel says of the bond, for the log (and the parsers' fixtures).
fn show_bond(lab: &Lab, when: &str) {
    let proc = lab.hv("cat /proc/net/bonding/bond0").unwrap_or_default();
    let links = lab.hv("ip -d -j link show").unwrap_or_default();
    eprintln!("=== bond0 {when}\n{proc}\n=== ip -d -j link show {when}\n{links}\n=== end");
}

fn trace(lab: &mut Lab) -> TraceRun {
    let args = [
        "--vm-ip",
        VM,
        "--to",
        DEST,
        "--count",
        "1",
        "--timeout",
        "15",
        "--json",
    ];
    let run = trace_while(lab, &args, Duration::from_secs(40), |lab| {
        let opts = PingOpts {
            timeout_ms: 4000,
            ..PingOpts::default()
        };
        lab.guest(0).ping(DEST.parse::<Ipv4Addr>()?, opts)?;
        Ok(())
    })
    .expect("pathtrace runs");
    eprintln!("--- stdout\n{}--- stderr\n{}", run.stdout, run.stderr);
    run
}

fn doctor(lab: &Lab) -> TraceRun {
    let run =
        run_in_hv(lab, &["doctor", "--vm-ip", VM, "--to", DEST, "--json"]).expect("doctor runs");
    eprintln!("--- doctor\n{}{}", run.stdout, run.stderr);
    run
}

/// The doctor's check `name` on `subject`.
fn check(run: &TraceRun, name: &str, subject: &str) -> Value {
    run.json()
        .into_iter()
        .find(|v| v["type"] == "check" && v["check"] == name && v["subject"] == subject)
        .unwrap_or_else(|| panic!("no {name} check on {subject}"))
}

/// The failing `bridge_uplink` check, whatever ports it names.
fn uplink_check(run: &TraceRun) -> Value {
    let up = run
        .json()
        .into_iter()
        .find(|v| v["check"] == "bridge_uplink")
        .expect("bridge_uplink");
    assert_eq!(up["status"], "fail", "{up}");
    up
}

fn text<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or_default()
}

#[test]
fn active_backup_bond_path_and_doctor() {
    let Some(mut lab) = lab(Uplink::Bond("active-backup")) else {
        return;
    };
    show_bond(&lab, "healthy");
    let run = trace(&mut lab);
    assert_eq!(run.code, 0, "replied");
    let v = &run.verdicts()[0];
    // The request leaves vmbr0 by bond0 and the bond by its active slave.
    let left: Vec<&str> = v["path"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["direction"] == "request" && h["stage"] == "egress")
        .map(|h| text(h, "ifname"))
        .collect();
    assert!(left.contains(&"bond0"), "{left:?}");
    assert!(
        left.contains(&"eno1") || left.contains(&"eno2"),
        "a slave: {left:?}"
    );
    let bond = check(&doctor(&lab), "bond", "bond0");
    assert_eq!(bond["status"], "pass", "{bond}");

    // One slave down: the bond still carries the guests, without redundancy.
    lab.inet("ip link set lan1 down").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    show_bond(&lab, "one slave down");
    let bond = check(&doctor(&lab), "bond", "bond0");
    assert_eq!(bond["status"], "warn", "{bond}");
    assert!(
        text(&bond, "evidence").contains("runs on eno2 alone"),
        "{bond}"
    );

    // Every slave down: no carrier, the guests cut off.
    lab.inet("ip link set lan2 down").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    show_bond(&lab, "every slave down");
    let run = doctor(&lab);
    let bond = check(&run, "bond", "bond0");
    assert_eq!(bond["status"], "fail", "{bond}");
    let evidence = text(&bond, "evidence");
    assert!(evidence.contains("has no working slave"), "{bond}");
    assert!(
        evidence.contains("every guest behind vmbr0 is cut off"),
        "{bond}"
    );
    assert!(text(&bond, "fix").contains("ethtool eno1"), "{bond}");
    let up = check(&run, "bridge_uplink", "vmbr0 → bond0");
    assert_eq!(up["status"], "fail", "{up}");
    assert!(
        text(&up, "evidence").contains("none of the bond's slaves works"),
        "{up}"
    );
}

#[test]
fn lacp_bond_without_partner() {
    let Some(mut lab) = lab(Uplink::Bond("802.3ad")) else {
        return;
    };
    show_bond(&lab, "802.3ad, the switch without LACP");
    let bond = check(&doctor(&lab), "bond", "bond0");
    assert_eq!(bond["status"], "fail", "{bond}");
    assert!(
        text(&bond, "evidence").contains("no LACP partner"),
        "{bond}"
    );
    let fix = text(&bond, "fix");
    assert!(
        fix.contains("LACP (802.3ad) channel") && fix.contains("active-backup"),
        "{bond}"
    );
    // What the guest sees (Linux still sends by one aggregator): recorded.
    let run = trace(&mut lab);
    eprintln!("lacp without partner: trace exit {}", run.code);
}

#[test]
fn vlan_device_down_doctor() {
    let Some(lab) = lab(Uplink::Vlan(20)) else {
        return;
    };
    let run = doctor(&lab);
    let up = check(&run, "bridge_uplink", "vmbr0 → eno1.20");
    assert_eq!(up["status"], "pass", "{up}");
    lab.hv("ip link set eno1.20 down").unwrap();
    let run = doctor(&lab);
    let link = check(&run, "link_up", "eno1.20");
    assert_eq!(link["status"], "fail", "{link}");
    assert!(
        text(&link, "fix").contains("ip link set dev eno1.20 up"),
        "{link}"
    );
    // The bridge forgot the router's port with it: every other port is a
    // candidate, eno1.20 among them.
    let up = uplink_check(&run);
    assert!(
        text(&up, "evidence").contains("the VLAN 20 device on eno1"),
        "{up}"
    );
    assert!(text(&up, "fix").contains("ifreload -a"), "{up}");
    // Its lower device down instead.
    lab.hv("ip link set eno1.20 up && ip link set eno1 down")
        .unwrap();
    let up = uplink_check(&doctor(&lab));
    assert!(
        text(&up, "evidence").contains("the device it tags onto, eno1"),
        "{up}"
    );
    assert!(text(&up, "fix").contains("ip link set eno1 up"), "{up}");
}

/// The host's uplink address on a VLAN sub-interface (eth0.20), on every
/// routed layout (plain, Proxmox with its firewall bridge, libvirt's NAT
/// network): set down, it takes the default route with it, and the doctor's
/// `route` check names it with the fix.
#[test]
fn vlan_uplink_down_doctor_on_every_layout() {
    for layout in Layout::ALL {
        let mut opts = LabOptions::new(fake_guest_bin());
        opts.layout = layout;
        opts.uplink = Uplink::Vlan(20);
        let Some(lab) = Lab::up_unless_unsupported(opts) else {
            return;
        };
        let route = check(&doctor(&lab), "route", &format!("route to {DEST}"));
        assert_eq!(route["status"], "pass", "{layout:?}: {route}");
        assert!(text(&route, "evidence").contains("dev eth0.20"), "{route}");
        lab.hv("ip link set eth0.20 down").unwrap();
        let route = check(&doctor(&lab), "route", &format!("route to {DEST}"));
        assert_eq!(route["status"], "fail", "{layout:?}: {route}");
        assert!(
            text(&route, "evidence").contains(
                "eth0.20 is down (administratively; the VLAN 20 device on eth0) and holds 198.51.100.2/24"
            ),
            "{layout:?}: {route}"
        );
        assert!(
            text(&route, "fix").contains("ip link set eth0.20 up"),
            "{layout:?}: {route}"
        );
    }
}
