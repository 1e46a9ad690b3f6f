//! `--proto dhcp` and `--proto arp` beyond the scenario catalogue: a Proxmox
//! guest without an address named by its VMID, followed through its firewall
//! bridge; and what bad input says. Needs root and eBPF.

use std::time::Duration;

use pathtrace_tests::{
    lab::{Lab, LabOptions, Layout},
    tracerun::{fake_guest_bin, programs_settled, run_in_hv, trace_while},
};

/// A Proxmox guest (VMID 100, behind fwbr100i0) asks dnsmasq on vmbr0 for an
/// address; pathtrace knows it only from its configuration.
#[test]
fn proxmox_guest_by_vmid_gets_its_offer_through_the_firewall_bridge() {
    let mut opts = LabOptions::new(fake_guest_bin());
    opts.layout = Layout::Proxmox;
    let mut lab = Lab::up(opts).expect("lab");
    lab.start_dhcp_server("vmbr0", &[]).expect("dnsmasq");
    let root = lab.config_root().display().to_string();
    let args = [
        "--vm",
        "100",
        "--config-root",
        &root,
        "--proto",
        "dhcp",
        "--count",
        "1",
        "--timeout",
        "12",
        "--json",
    ];
    let run = trace_while(&mut lab, &args, Duration::from_secs(30), |lab| {
        let got = lab.guest(0).dhcp(5000)?;
        anyhow::ensure!(got["ack"] == true, "the guest got no ACK: {got}");
        Ok(())
    })
    .expect("pathtrace runs");
    eprintln!("{}{}", run.stdout, run.stderr);
    let v = &run.verdicts()[0];
    assert_eq!(v["verdict"], "replied", "{v}");
    assert_eq!(v["proto"], "dhcp", "{v}");
    let seen = v["flow"]["dhcp_messages"].as_array().expect("messages");
    assert_eq!(seen[0], "DISCOVER", "{v}");
    assert!(seen.iter().any(|m| m == "OFFER"), "{v}");
    let hops: Vec<&str> = v["path"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["ifname"].as_str())
        .collect();
    for dev in ["tap100i0", "vmbr0"] {
        assert!(hops.contains(&dev), "{dev} not in {hops:?}");
    }
    assert_eq!(run.code, 0, "{}", run.stderr);
}

/// One line on stderr, exit status 2, nothing attached.
#[test]
fn bad_input_is_one_line_and_exit_2() {
    let lab = Lab::up(LabOptions::new(fake_guest_bin())).expect("lab");
    let cases: [&[&str]; 4] = [
        // ICMP and DNS still need a destination.
        &["--vm-ip", "192.0.2.100"],
        // DHCP needs the VM: by IP, configuration or port.
        &["--proto", "dhcp"],
        &["--proto", "dhcp", "--vm", "nosuchvm"],
        &["--proto", "arp", "--iface", "nosuch0"],
    ];
    for args in cases {
        let run = run_in_hv(&lab, args).unwrap();
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert_eq!(
            run.stderr.trim().lines().count(),
            1,
            "{args:?}: {}",
            run.stderr
        );
    }
    let left = programs_settled(0);
    assert!(
        left.is_empty(),
        "left attached (other helpers' runs count too): {left:?}"
    );
}
