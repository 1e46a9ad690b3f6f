//! `--pcap FILE`: a trace whose reply is dropped writes a pcapng that tshark
//! reads, with the packet at every hop it crossed (one interface per device)
//! and the verdict as a comment on the packet where it died. Needs root, eBPF
//! and tshark (`cargo xtask setup` installs it).

use std::{collections::BTreeSet, net::Ipv4Addr, process::Command, time::Duration};

use pathtrace_tests::{
    lab::{Lab, LabOptions, Layout, PingOpts},
    tracerun::{fake_guest_bin, trace_while},
};

/// Replies to the guest dropped on the uplink before MASQUERADE is undone.
const REPLY_DROP: &str = "add table inet pt_pcap\n\
     add chain inet pt_pcap pre { type filter hook prerouting priority -150; policy accept; }\n\
     add rule inet pt_pcap pre iifname \"eth0\" ct original ip saddr 192.0.2.100 drop\n";

/// tshark's fields of every packet, tab-separated.
fn tshark(file: &std::path::Path, fields: &[&str]) -> Vec<Vec<String>> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r")
        .arg(file)
        .args(["-T", "fields", "-E", "occurrence=a"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd
        .output()
        .expect("tshark (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

#[test]
fn pcap_has_every_hop_and_the_drop_comment() {
    let mut opts = LabOptions::new(fake_guest_bin());
    opts.layout = Layout::Proxmox;
    let mut lab = Lab::up(opts).unwrap();
    lab.nft(REPLY_DROP).unwrap();
    let dir = std::env::temp_dir().join(format!("pathtrace-pcap-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("trace.pcapng");
    let run = trace_while(
        &mut lab,
        &[
            "--vm-ip",
            "192.0.2.100",
            "--to",
            "203.0.113.8",
            "--count",
            "1",
            "--timeout",
            "15",
            "--json",
            "--pcap",
            file.to_str().unwrap(),
        ],
        Duration::from_secs(30),
        |lab| {
            let opts = PingOpts {
                count: 1,
                timeout_ms: 1000,
                ..PingOpts::default()
            };
            lab.guest(0).ping(Ipv4Addr::new(203, 0, 113, 8), opts)?;
            Ok(())
        },
    )
    .unwrap();
    eprintln!("{}{}", run.stdout, run.stderr);
    let v = &run.verdicts()[0];
    assert_eq!(v["verdict"], "dropped", "{v}");
    assert_eq!(v["direction"], "reply", "{v}");
    assert!(run.stderr.contains("wrote"), "{}", run.stderr);

    let rows = tshark(
        &file,
        &[
            "frame.interface_name",
            "ip.src",
            "ip.dst",
            "icmp.type",
            "frame.comment",
        ],
    );
    for r in &rows {
        eprintln!("{r:?}");
    }
    // Every hop of the request, from the VM port to the uplink, in path order;
    // the path's hops are the devices pathtrace reported.
    let path: Vec<String> = v["path"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["direction"] == "request" && h["inferred"] != true)
        .map(|h| h["ifname"].as_str().unwrap().to_string())
        .collect();
    let request: Vec<&String> = rows.iter().filter(|r| r[3] == "8").map(|r| &r[0]).collect();
    let mut seen = BTreeSet::new();
    let request_devices: Vec<&String> = request
        .iter()
        .copied()
        .filter(|d| seen.insert(*d))
        .collect();
    for hop in ["tap100i0", "fwln100i0", "fwpr100p0", "vmbr0", "eth0"] {
        assert!(
            request_devices.iter().any(|d| *d == hop),
            "{hop} missing from the capture's request hops {request_devices:?} (path {path:?})"
        );
    }
    assert_eq!(
        request_devices.first().map(|s| s.as_str()),
        Some("tap100i0")
    );
    assert_eq!(request_devices.last().map(|s| s.as_str()), Some("eth0"));
    // NAT is visible: the guest's address at the port, the uplink's after MASQUERADE.
    let first = rows.iter().find(|r| r[3] == "8").unwrap();
    assert_eq!(first[1], "192.0.2.100");
    let out = rows.iter().rfind(|r| r[3] == "8").unwrap();
    assert_eq!(out[1], "198.51.100.2", "{out:?}");
    // The reply was seen on the uplink and dropped there: the comment says so.
    let reply = rows.iter().filter(|r| r[3] == "0").collect::<Vec<_>>();
    assert!(!reply.is_empty(), "the reply is in the capture");
    let last = reply.last().unwrap();
    assert_eq!(last[0], "eth0");
    assert!(
        last[4].contains("DROPPED") && last[4].contains("NETFILTER_DROP"),
        "drop comment on the reply: {last:?}"
    );
    assert!(last[4].contains("prerouting"), "{last:?}");
    // Exactly one packet carries the verdict.
    let verdicts = rows.iter().filter(|r| r[4].contains("verdict")).count();
    assert_eq!(verdicts, 1);
    std::fs::remove_dir_all(&dir).unwrap();
}
