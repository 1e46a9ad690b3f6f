//! `pathtrace report --redact`: the bundle holds doctor (JSON and text), a
//! snapshot, a trace with its pcapng, watch, facts and a manifest, and no public
//! address or MAC of the lab survives — one stand-in per address throughout.
//! Needs root, eBPF and tshark.

use std::{
    net::Ipv4Addr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use pathtrace_tests::{
    lab::{Fault, Lab, LabOptions, PingOpts},
    tracerun::{fake_guest_bin, pathtrace_bin},
};
use serde_json::Value;

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn redacted_report_bundle_holds_every_part() {
    let mut lab = Lab::up(LabOptions::new(fake_guest_bin())).unwrap();
    lab.break_path(Fault::NftForwardDrop).unwrap();
    let mac = lab.guest_spec(0).mac.to_lowercase();
    let dir = std::env::temp_dir().join(format!("pathtrace-report-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let bundle = dir.join("vm100.tar.gz");
    let mut child = lab
        .command_in_hv(
            &pathtrace_bin(),
            &[
                "report",
                "--vm-ip",
                "192.0.2.100",
                "--to",
                "203.0.113.8",
                "--count",
                "1",
                "--trace-secs",
                "8",
                "--watch-secs",
                "1",
                "--redact",
                "-o",
                bundle.to_str().unwrap(),
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The guest pings while the report runs (its trace part follows one request).
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < Duration::from_secs(40), "report hangs");
        let opts = PingOpts {
            count: 2,
            interval_ms: 200,
            timeout_ms: 300,
            ..PingOpts::default()
        };
        let _ = lab.guest(0).ping(Ipv4Addr::new(203, 0, 113, 8), opts);
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    eprintln!("report took {:?}", start.elapsed());

    let unpacked = dir.join("x");
    std::fs::create_dir_all(&unpacked).unwrap();
    let ok = Command::new("tar")
        .arg("-xzf")
        .arg(&bundle)
        .arg("-C")
        .arg(&unpacked)
        .status()
        .unwrap();
    assert!(ok.success());
    let top = unpacked.join("vm100");
    let read =
        |f: &str| std::fs::read_to_string(top.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
    for f in [
        "doctor.json",
        "doctor.txt",
        "trace.json",
        "trace.pcapng",
        "watch.json",
        "facts.txt",
        "manifest.json",
        "snapshot/routes.txt",
    ] {
        let p = top.join(f);
        assert!(
            p.exists(),
            "{f} missing; have {:?}",
            std::fs::read_dir(&top)
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .collect::<Vec<_>>()
        );
    }

    let manifest: Value = serde_json::from_str(&read("manifest.json")).unwrap();
    assert_eq!(manifest["redacted"], true);
    let exit = |part: &str| {
        manifest["ran"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["part"] == part)
            .unwrap_or_else(|| panic!("{part} not in {manifest}"))["exit"]
            .clone()
    };
    assert_eq!(exit("doctor.json"), 1, "doctor finds the drop");
    assert_eq!(exit("snapshot"), 0);
    assert_eq!(exit("trace.json"), 1, "the trace finds the drop");
    assert_eq!(exit("watch.json"), 0);

    let doctor = json_lines(&read("doctor.json"));
    let summary = doctor.iter().find(|v| v["type"] == "doctor").unwrap();
    let trace = json_lines(&read("trace.json"));
    let verdict = trace.iter().find(|v| v["type"] == "verdict").unwrap();
    assert_eq!(verdict["verdict"], "dropped", "{verdict}");
    assert_eq!(verdict["stage"], "forward", "{verdict}");
    // One stand-in for the guest everywhere, from the reserved 240/4.
    let vm = verdict["vm_ip"].as_str().unwrap();
    assert!(vm.starts_with("240."), "{vm}");
    assert_eq!(summary["vm_ip"], vm, "{summary}");
    assert_eq!(verdict["flow"]["src"], vm);
    assert!(read("doctor.txt").contains(vm));
    assert!(json_lines(&read("watch.json"))
        .iter()
        .any(|v| v["type"] == "watch"));
    assert!(read("facts.txt").contains("kernel release: "));

    // Nothing public survives: not as text, not in the packets.
    let needles: [&[u8]; 4] = [
        b"192.0.2.100",
        b"203.0.113.8",
        mac.as_bytes(),
        &[192, 0, 2, 100],
    ];
    let mut files = vec![];
    let mut stack = vec![top.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                files.push(e.path());
            }
        }
    }
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        for n in needles {
            assert!(
                !bytes.windows(n.len()).any(|w| w == n),
                "{} still holds {:?}",
                f.display(),
                String::from_utf8_lossy(n)
            );
        }
    }
    // The redacted capture still reads, with its hops and the verdict.
    let out = Command::new("tshark")
        .arg("-r")
        .arg(top.join("trace.pcapng"))
        .args([
            "-T",
            "fields",
            "-e",
            "frame.interface_name",
            "-e",
            "ip.src",
            "-e",
            "frame.comment",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("tap100i0") && text.contains("vmbr0"),
        "{text}"
    );
    assert!(text.contains(&format!("\t{vm}\t")), "{text}");
    assert!(text.contains("DROPPED"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}
