//! `pathtrace doctor` on each lab layout (plain bridge, Proxmox with firewall
//! bridges, libvirt): healthy, then each planted fault found by the right check
//! with the right fixing command; and `--snapshot`/`--diff` around a change.
//! Needs root (CI runs it as root).

use std::net::Ipv4Addr;

use pathtrace_tests::{
    lab::{Fault, Lab, LabOptions, Layout, PingOpts},
    tracerun::{fake_guest_bin, run_in_hv, TraceRun},
};
use serde_json::Value;

const DEST: &str = "203.0.113.8";
const VM: &str = "192.0.2.100";

fn lab(layout: Layout) -> Lab {
    let mut opts = LabOptions::new(fake_guest_bin());
    opts.layout = layout;
    let mut lab = Lab::up(opts).expect("lab up");
    lab.start_host_resolver().expect("host resolver");
    // Let the host learn the guest (neighbour entry, FDB), as any running VM does.
    let ping = PingOpts {
        count: 1,
        ..PingOpts::default()
    };
    lab.guest(0)
        .ping(DEST.parse::<Ipv4Addr>().unwrap(), ping)
        .expect("guest pings");
    lab
}

fn doctor(lab: &Lab, extra: &[&str]) -> TraceRun {
    let root = lab.config_root();
    let mut args = vec![
        "doctor",
        "--vm-ip",
        VM,
        "--to",
        DEST,
        "--dns",
        "192.0.2.1",
        "--json",
        "--config-root",
        root.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run_in_hv(lab, &args).expect("doctor runs")
}

fn checks(run: &TraceRun) -> Vec<Value> {
    run.json()
        .into_iter()
        .filter(|v| v["type"] == "check")
        .collect()
}

fn not_passed(run: &TraceRun) -> Vec<String> {
    checks(run)
        .iter()
        .filter(|c| c["status"] != "pass")
        .map(|c| format!("{} {}: {}", c["status"], c["check"], c["evidence"]))
        .collect()
}

/// What doctor must say for a fault: the check, its status, words in its fix.
struct Finding {
    fault: Fault,
    check: &'static str,
    status: &'static str,
    fix: fn(&Lab) -> String,
}

fn expected(layout: Layout) -> Vec<Finding> {
    let mtu_status = if layout == Layout::Proxmox {
        "fail"
    } else {
        "warn"
    };
    vec![
        Finding {
            fault: Fault::NftForwardDrop,
            check: "firewall",
            status: "fail",
            fix: |_| "nft delete rule inet filter forward handle".into(),
        },
        Finding {
            fault: Fault::IpForwardOff,
            check: "ip_forward",
            status: "fail",
            fix: |_| "sysctl -w net.ipv4.ip_forward=1".into(),
        },
        // In the syntax of the tool that manages the firewall: nft on Proxmox (its
        // conntrack-zone table is nft's own), else iptables (nothing is left).
        Finding {
            fault: Fault::NoMasquerade,
            check: "nat",
            status: "fail",
            fix: |l| match l.layout() {
                Layout::Proxmox => "ip saddr 192.0.2.0/24 oifname \"eth0\" masquerade".into(),
                _ => "-t nat -A POSTROUTING -s 192.0.2.0/24 -o eth0 -j MASQUERADE".into(),
            },
        },
        Finding {
            fault: Fault::PortDown,
            check: "link_up",
            status: "fail",
            fix: |l| format!("ip link set dev {} up", l.port(0)),
        },
        Finding {
            fault: Fault::PortNoMaster,
            check: "bridge_member",
            status: "fail",
            fix: |l| format!("ip link set dev {} master {}", l.port(0), l.port_bridge(0)),
        },
        Finding {
            fault: Fault::StpBlocking,
            check: "stp_state",
            status: "fail",
            fix: |l| format!("bridge link set dev {} state 3", l.port(0)),
        },
        Finding {
            fault: Fault::MtuMismatch,
            check: "mtu",
            status: mtu_status,
            fix: |l| {
                if l.layout() == Layout::Proxmox {
                    "mtu 1500".into()
                } else {
                    "MTU".into()
                }
            },
        },
        Finding {
            fault: Fault::RpFilterStrict,
            check: "rp_filter",
            status: "fail",
            fix: |_| "rp_filter=2".into(),
        },
        Finding {
            fault: Fault::GatewayUnreachable,
            check: "gateway",
            status: "fail",
            fix: |_| "198.51.100.1".into(),
        },
        Finding {
            fault: Fault::IptablesForwardPolicyDrop,
            check: "firewall",
            status: "fail",
            fix: |_| format!("iptables-legacy -t filter -I FORWARD -s {VM} -j ACCEPT"),
        },
        Finding {
            fault: Fault::NoResolver,
            check: "dns",
            status: "fail",
            fix: |_| "start the resolver".into(),
        },
        Finding {
            fault: Fault::DuplicateIp,
            check: "duplicate_ip",
            status: "fail",
            fix: |_| "another address".into(),
        },
    ]
}

/// Wait (3 s at most) until the hypervisor has no neighbour entry for `ip`.
fn wait_forgotten(lab: &Lab, ip: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        let entry = lab.hv(&format!("ip neigh show {ip}")).unwrap_or_default();
        if entry.trim().is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn healthy_then_each_fault(layout: Layout) {
    let mut lab = lab(layout);
    let run = doctor(&lab, &[]);
    assert_eq!(
        run.code,
        0,
        "{layout:?} healthy: {:?}\n{}",
        not_passed(&run),
        run.stderr
    );
    let summary = run
        .json()
        .into_iter()
        .find(|v| v["type"] == "doctor")
        .expect("summary");
    let path: Vec<&str> = summary["path"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(path.first(), Some(&lab.port(0)), "{layout:?}: {path:?}");
    assert!(path.contains(&lab.bridge()), "{layout:?}: {path:?}");
    if layout == Layout::Proxmox {
        assert!(
            path.contains(&"fwbr100i0") && path.contains(&"fwpr100p0"),
            "{path:?}"
        );
    }
    for f in expected(layout) {
        lab.break_path(f.fault).expect("break");
        if layout == Layout::Plain && matches!(f.fault, Fault::PortDown | Fault::StpBlocking) {
            // The bridge lost its only forwarding port: the kernel flushes its
            // neighbour entries from link watch, up to a second later. Look, as
            // the operator would, once it has.
            wait_forgotten(&lab, VM);
        }
        let run = doctor(&lab, &[]);
        lab.repair(f.fault).expect("repair");
        let found = checks(&run)
            .into_iter()
            .find(|c| c["check"] == f.check && c["status"] == f.status);
        let Some(c) = found else {
            panic!(
                "{layout:?} {:?}: no {} {} check; not passed: {:?}\n{}",
                f.fault,
                f.status,
                f.check,
                not_passed(&run),
                run.stderr
            );
        };
        if layout == Layout::Plain && matches!(f.fault, Fault::PortDown | Fault::StpBlocking) {
            // No table and no configuration knows the VM once its only port is
            // blocked: doctor checks that port, but says it is a guess.
            let port = checks(&run)
                .into_iter()
                .find(|c| c["check"] == "vm_port")
                .expect("vm_port check");
            let evidence = port["evidence"].as_str().unwrap_or_default();
            assert_eq!(port["status"], "warn", "{port}");
            assert!(evidence.contains("cannot pass frames"), "{port}");
            let iface = format!("--iface {}", lab.port(0));
            assert!(
                port["fix"].as_str().unwrap_or_default().contains(&iface),
                "{port}"
            );
        }
        let want = (f.fix)(&lab);
        let fix = c["fix"].as_str().unwrap_or_default();
        assert!(
            fix.contains(&want),
            "{layout:?} {:?}: fix {fix:?} lacks {want:?}",
            f.fault
        );
        if f.fault == Fault::DuplicateIp {
            let evidence = c["evidence"].as_str().unwrap_or_default();
            let port = format!("(port {})", lab.port(0));
            assert!(evidence.contains(&port), "{layout:?}: {evidence}");
        }
        let code = if f.status == "fail" { 1 } else { 0 };
        assert_eq!(run.code, code, "{layout:?} {:?}", f.fault);
    }
}

#[test]
fn plain_bridge_faults() {
    healthy_then_each_fault(Layout::Plain);
}

#[test]
fn proxmox_firewall_bridge_faults() {
    healthy_then_each_fault(Layout::Proxmox);
}

#[test]
fn libvirt_faults() {
    healthy_then_each_fault(Layout::Libvirt);
}

/// The VM named by its id (Proxmox) or domain name (libvirt): address and port come
/// from the configuration.
#[test]
fn vm_by_id_or_name_from_configuration() {
    for (layout, name) in [(Layout::Proxmox, "100"), (Layout::Libvirt, "guest0")] {
        let lab = lab(layout);
        let root = lab.config_root();
        let run = run_in_hv(
            &lab,
            &[
                "doctor",
                "--vm",
                name,
                "--to",
                DEST,
                "--json",
                "--config-root",
                root.to_str().unwrap(),
            ],
        )
        .unwrap();
        let summary = run
            .json()
            .into_iter()
            .find(|v| v["type"] == "doctor")
            .expect("summary");
        assert_eq!(summary["vm_ip"], VM, "{layout:?}: {}", run.stderr);
        assert_eq!(run.code, 0, "{layout:?}: {:?}", not_passed(&run));
        let bad = run_in_hv(
            &lab,
            &[
                "doctor",
                "--vm",
                "no-such-vm",
                "--config-root",
                root.to_str().unwrap(),
            ],
        )
        .unwrap();
        assert_eq!(bad.code, 2);
        assert_eq!(bad.stderr.lines().count(), 1, "{}", bad.stderr);
    }
}

#[test]
fn snapshot_then_diff_shows_the_change() {
    let mut lab = lab(Layout::Plain);
    let dir = std::env::temp_dir().join(format!("ptsnap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    let saved = run_in_hv(&lab, &["doctor", "--snapshot", d]).unwrap();
    assert_eq!(saved.code, 0, "{}", saved.stderr);
    let same = run_in_hv(&lab, &["doctor", "--diff", d, "--json"]).unwrap();
    assert_eq!(same.code, 0, "unchanged host: {}", same.stdout);
    lab.break_path(Fault::NftForwardDrop).unwrap();
    lab.break_path(Fault::IpForwardOff).unwrap();
    let changed = run_in_hv(&lab, &["doctor", "--diff", d, "--json"]).unwrap();
    lab.repair(Fault::NftForwardDrop).unwrap();
    lab.repair(Fault::IpForwardOff).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(changed.code, 1);
    let text = changed.stdout;
    assert!(
        text.contains(VM) && text.contains("drop"),
        "nft rule added: {text}"
    );
    assert!(text.contains("ip_forward"), "sysctl changed: {text}");
}

/// Proxmox with its firewall on needs the firewall bridges in their own conntrack
/// zone, or MASQUERADE never applies (its admin guide says so): without the zone
/// rule the doctor fails the NAT check and says how to add it.
#[test]
fn proxmox_masquerade_needs_a_conntrack_zone() {
    let lab = lab(Layout::Proxmox);
    lab.nft("delete table ip pve_conntrack\n").unwrap();
    let run = doctor(&lab, &[]);
    let nat = checks(&run)
        .into_iter()
        .find(|c| c["check"] == "nat")
        .expect("nat check");
    assert_eq!(nat["status"], "fail", "{nat}");
    assert!(nat["fix"].as_str().unwrap().contains("--zone 1"), "{nat}");
    assert_eq!(run.code, 1);
}

/// Bad input and missing privileges: one line on stderr, exit 2.
#[test]
fn bad_input_is_one_line_and_exit_2() {
    let lab = lab(Layout::Plain);
    let cases: [&[&str]; 3] = [
        &["doctor"],
        &["doctor", "--vm-ip", VM, "--iface", "nosuch0"],
        &["doctor", "--vm-ip", "192.0.2.300"],
    ];
    for args in cases {
        let run = run_in_hv(&lab, args).unwrap();
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "{args:?}: {}", run.stderr);
    }
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(pathtrace_tests::tracerun::pathtrace_bin())
        .args(["doctor", "--vm-ip", VM])
        .output()
        .expect("setpriv (util-linux)");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("needs root"), "{err}");
}

/// Writes the doctor checks' unit-test fixtures (tracer/src/doctor/testdata):
/// real doctor runs (passive, by IP, no hypervisor configuration) in each layout,
/// healthy and with each planted fault, each saving the host model it read and
/// the checks it answered. Run it after changing what the host model holds:
/// `cargo test --release -p pathtrace-tests --test doctor -- --ignored write_doctor_fixtures`
#[test]
#[ignore = "writes fixtures into the source tree"]
fn write_doctor_fixtures() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tracer/src/doctor/testdata");
    std::fs::create_dir_all(&dir).unwrap();
    let empty = tempfile_dir();
    let save = |lab: &Lab, name: &str, vm: &str| {
        let path = dir.join(format!("{name}.json"));
        let out = lab
            .command_in_hv(
                &pathtrace_tests::tracerun::pathtrace_bin(),
                &[
                    "doctor",
                    "--vm-ip",
                    vm,
                    "--to",
                    DEST,
                    "--dns",
                    "192.0.2.1",
                    "--json",
                    "--passive",
                    "--config-root",
                    empty.to_str().unwrap(),
                ],
            )
            .env("PATHTRACE_SAVE_DOCTOR_FIXTURE", &path)
            .output()
            .unwrap();
        assert!(
            path.exists(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "{name}: {}",
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.contains("\"pass\""))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    };
    let faults: &[(Layout, &[Fault])] = &[
        (
            Layout::Plain,
            &[
                Fault::NftForwardDrop,
                Fault::IpForwardOff,
                Fault::NoMasquerade,
                Fault::PortDown,
                Fault::PortNoMaster,
                Fault::StpBlocking,
                Fault::MtuMismatch,
                Fault::RpFilterStrict,
                Fault::GatewayUnreachable,
                Fault::IptablesForwardPolicyDrop,
                Fault::NoResolver,
            ],
        ),
        (
            Layout::Proxmox,
            &[
                Fault::PortNoMaster,
                Fault::StpBlocking,
                Fault::MtuMismatch,
                Fault::NoMasquerade,
            ],
        ),
        (Layout::Libvirt, &[Fault::PortDown, Fault::NftForwardDrop]),
    ];
    for (layout, faults) in faults {
        let mut lab = lab(*layout);
        let base = format!("{layout:?}").to_lowercase();
        save(&lab, &format!("{base}-healthy"), VM);
        for f in *faults {
            lab.break_path(*f).expect("break");
            save(&lab, &format!("{base}-{}", snake(&format!("{f:?}"))), VM);
            lab.repair(*f).expect("repair");
            // Let the host learn the guest again (a port fault flushes its
            // neighbour and FDB entries).
            relearn(&mut lab);
        }
        if *layout == Layout::Plain {
            // A VM nothing on the host knows: in the bridge's subnet (a guess
            // among its ports), and outside every bridge's (not found at all).
            save(&lab, "plain-unknown-vm", "192.0.2.77");
            save(&lab, "plain-vm-in-no-subnet", "198.51.100.77");
            // A host without a default route.
            lab.hv("ip route del default").unwrap();
            save(&lab, "plain-no-route", VM);
        }
    }
    // Proxmox as installed: the firewall bridge answers the guest's ARP.
    let mut opts = LabOptions::new(fake_guest_bin());
    opts.layout = Layout::Proxmox;
    opts.fwbr_answers_arp = true;
    let mut lab = Lab::up(opts).expect("lab up");
    lab.start_host_resolver().expect("host resolver");
    let ping = PingOpts {
        count: 1,
        ..PingOpts::default()
    };
    lab.guest(0)
        .ping(DEST.parse::<Ipv4Addr>().unwrap(), ping)
        .expect("guest pings");
    save(&lab, "proxmox-fwbr-answers-arp", VM);
}

fn relearn(lab: &mut Lab) {
    let ping = PingOpts {
        count: 1,
        ..PingOpts::default()
    };
    lab.guest(0)
        .ping(DEST.parse::<Ipv4Addr>().unwrap(), ping)
        .expect("guest pings");
}

fn snake(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pathtrace-empty-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
