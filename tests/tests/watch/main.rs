//! `pathtrace watch` end to end: two fake guests on one bridge, one healthy and one
//! broken in two different ways in turn; drops must show on the right VM with the
//! right stage and reason, and the JSON, the Prometheus endpoint and the live
//! terminal view must agree. Needs root and eBPF.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    process::Command,
    time::{Duration, Instant},
};

use pathtrace_tests::{
    lab::{GuestSpec, Lab, LabOptions, Layout, PingOpts},
    tracerun::{fake_guest_bin, pathtrace_bin, programs_settled},
    watchrun::{drops, vm, WatchRun},
};
use serde_json::Value;

mod dhcparp;
mod identity;
mod v6;
mod vlan;

const HEALTHY: &str = "tap100i0";
const BROKEN: &str = "tap101i0";
const WAIT: Duration = Duration::from_secs(15);

/// A lab with guests 192.0.2.100 (healthy) and 192.0.2.101 (to be broken).
fn two_guests() -> Lab {
    let mut opts = LabOptions::new(fake_guest_bin());
    opts.guests.push(GuestSpec::nth(1));
    Lab::up(opts).unwrap()
}

fn ping(lab: &mut Lab, guest: usize, count: u32) -> u32 {
    let opts = PingOpts {
        count,
        interval_ms: 50,
        timeout_ms: 500,
        ..PingOpts::default()
    };
    lab.guest(guest)
        .ping(Ipv4Addr::new(203, 0, 113, 8), opts)
        .unwrap()
        .received
}

/// A drop point of `port` matching stage and reason, with at least `min` packets.
fn find_drop(snapshot: &Value, port: &str, stage: &str, reason: &str, min: u64) -> Option<Value> {
    drops(snapshot, port).into_iter().find(|d| {
        d["stage"] == stage && d["reason"] == reason && d["total"].as_u64().unwrap_or(0) >= min
    })
}

fn total_drops(snapshot: &Value, port: &str) -> u64 {
    vm(snapshot, port).map_or(0, |v| v["drops_total"].as_u64().unwrap_or(0))
}

/// Drop the broken guest's pings in the forward chain.
const FORWARD_DROP: &str = "add table inet pt_watch\n\
     add chain inet pt_watch forward { type filter hook forward priority filter; policy accept; }\n\
     add rule inet pt_watch forward ip saddr 192.0.2.101 drop\n";

/// Drop the broken guest's replies on the uplink after conntrack but before the
/// MASQUERADE is undone: the packet is addressed to the host's uplink, only the
/// conntrack entry knows it is the VM's.
const REPLY_DROP: &str = "add table inet pt_watch\n\
     add chain inet pt_watch pre { type filter hook prerouting priority -150; policy accept; }\n\
     add rule inet pt_watch pre iifname \"eth0\" ct original ip saddr 192.0.2.101 drop\n";

/// Apply `rule`, have the broken guest (which fails) and the healthy one (which
/// succeeds) ping `count` times, and wait until watch shows `count` drops at
/// `stage`. Returns the snapshot and the drop point.
fn break_vm(
    lab: &mut Lab,
    watch: &WatchRun,
    rule: &str,
    stage: &str,
    count: u32,
) -> (Value, Value) {
    lab.nft(rule).unwrap();
    assert_eq!(ping(lab, 1, count), 0, "the broken guest gets no reply");
    assert_eq!(ping(lab, 0, count), count, "the healthy guest does");
    let matches = |v: &Value| find_drop(v, BROKEN, stage, "NETFILTER_DROP", count.into());
    let snap = watch.wait_for(WAIT, |v| matches(v).is_some()).unwrap();
    let point = matches(&snap).unwrap();
    (snap, point)
}

#[test]
fn drops_show_on_the_broken_vm_only_with_stage_and_reason() {
    let mut lab = two_guests();
    let mut watch = WatchRun::start(&lab, &["--interval", "0.5"]).unwrap();
    for port in [HEALTHY, BROKEN] {
        watch
            .wait_for(WAIT, |v| {
                v["type"] == "port" && v["event"] == "added" && v["port"] == port
            })
            .unwrap();
    }

    // Broken in the forward chain: the guest's own requests die.
    let (snap, d) = break_vm(&mut lab, &watch, FORWARD_DROP, "forward", 5);
    assert_eq!(d["direction"], "from_vm", "{d}");
    assert_eq!(d["proto"], "icmp", "{d}");
    assert_eq!(d["ifname"], "vmbr0", "{d}");
    assert!(
        d["location"].as_str().unwrap().starts_with("nft_do_chain"),
        "{d}"
    );
    assert_eq!(d["example"]["src"], "192.0.2.101", "{d}");
    assert_eq!(vm(&snap, BROKEN).unwrap()["vm_ips"][0], "192.0.2.101");
    assert_eq!(total_drops(&snap, HEALTHY), 0, "healthy VM: {snap}");

    // Broken on the way back: replies die before NAT is undone; only conntrack
    // ties them to the guest.
    lab.nft("delete table inet pt_watch\n").unwrap();
    let (snap, d) = break_vm(&mut lab, &watch, REPLY_DROP, "prerouting", 4);
    eprintln!("{snap:#}");
    assert_eq!(d["direction"], "to_vm", "{d}");
    assert_eq!(d["via_conntrack"], true, "{d}");
    assert_eq!(d["ifname"], "eth0", "{d}");
    assert_eq!(d["example"]["dst"], "198.51.100.2", "{d}");
    // The first breakage is still counted.
    assert!(find_drop(&snap, BROKEN, "forward", "NETFILTER_DROP", 5).is_some());
    assert_eq!(total_drops(&snap, HEALTHY), 0, "healthy VM: {snap}");
    assert_eq!(snap["self"]["programs_attached"], 1);
    assert_eq!(snap["self"]["events_lost"], 0);

    assert_eq!(watch.stop().unwrap(), 0, "{}", watch.stderr());
}

/// The VM ports a snapshot reports.
fn watched(snap: &Value) -> Vec<&str> {
    snap["vms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["port"].as_str())
        .collect()
}

/// Watch at a half-second interval, serving metrics on `port`.
fn with_metrics(lab: &Lab, port: u16) -> WatchRun {
    WatchRun::start(
        lab,
        &["--interval", "0.5", "--prometheus", &port.to_string()],
    )
    .unwrap()
}

/// GET /metrics over a real TCP connection inside the lab's namespace.
/// `pathtrace watch --json` every 0.5 s with its Prometheus endpoint on
/// `metrics_port`, reading the hypervisor's configuration under `config_root`.
fn watch_with_metrics(lab: &Lab, metrics_port: u16, config_root: &std::path::Path) -> WatchRun {
    let metrics = metrics_port.to_string();
    let root = config_root.display().to_string();
    let args = [
        "--interval",
        "0.5",
        "--prometheus",
        &metrics,
        "--config-root",
        &root,
    ];
    WatchRun::start(lab, &args).unwrap()
}

/// Every sample of VM port `port` in a scrape.
fn samples_of(body: &str, port: &str) -> Vec<prometheus_parse::Sample> {
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let metrics = prometheus_parse::Scrape::parse(lines).expect("exposition format parses");
    metrics
        .samples
        .into_iter()
        .filter(|s| s.labels.get("port") == Some(port))
        .collect()
}

fn scrape(lab: &Lab, port: u16) -> String {
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port} && \
         printf 'GET /metrics HTTP/1.1\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && timeout 5 cat <&3"
    );
    let out = Command::new("nsenter")
        .arg(format!("--net={}", lab.hv_netns_path().display()))
        .args(["bash", "-c", &script])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    text.split_once("\r\n\r\n").unwrap().1.to_string()
}

#[test]
fn prometheus_scrape_carries_the_same_numbers() {
    let mut lab = two_guests();
    let port = 19464;
    let mut watch = with_metrics(&lab, port);
    assert!(watch.stderr().contains("http://127.0.0.1:19464/metrics"));
    break_vm(&mut lab, &watch, FORWARD_DROP, "forward", 3);
    // Traffic has stopped; let the counters settle, then compare.
    let snap = watch.wait_snapshots(2, WAIT).unwrap();
    let body = scrape(&lab, port);
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let metrics = prometheus_parse::Scrape::parse(lines).expect("exposition format parses");
    let json_total = find_drop(&snap, BROKEN, "forward", "NETFILTER_DROP", 3).unwrap()["total"]
        .as_u64()
        .unwrap();
    let sample = metrics
        .samples
        .iter()
        .find(|s| {
            s.metric == "pathtrace_drops_total"
                && s.labels.get("port") == Some(BROKEN)
                && s.labels.get("stage") == Some("forward")
                && s.labels.get("vm_ip") == Some("192.0.2.101")
        })
        .unwrap_or_else(|| panic!("no drops metric for {BROKEN}:\n{body}"));
    match sample.value {
        prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => {
            assert_eq!(v as u64, json_total, "{body}")
        }
        ref other => panic!("unexpected value {other:?}"),
    }
    assert!(!metrics
        .samples
        .iter()
        .any(|s| s.metric == "pathtrace_drops_total" && s.labels.get("port") == Some(HEALTHY)));
    let gauge = |name: &str| {
        metrics
            .samples
            .iter()
            .find(|s| s.metric == name)
            .map(|s| format!("{:?}", s.value))
            .unwrap_or_default()
    };
    assert!(
        gauge("pathtrace_programs_attached").contains("1.0"),
        "{body}"
    );
    assert!(
        gauge("pathtrace_events_lost_total").contains("0.0"),
        "{body}"
    );
    assert!(gauge("pathtrace_vm_ports").contains("2.0"), "{body}");
    assert_eq!(watch.stop().unwrap(), 0);
}

#[test]
fn ports_appearing_and_vanishing_are_picked_up_and_dropped() {
    let mut lab = two_guests();
    let mut watch = WatchRun::start(&lab, &["--interval", "0.5"]).unwrap();
    break_vm(&mut lab, &watch, FORWARD_DROP, "forward", 3);

    // A VM starts: its port is watched without a restart.
    lab.add_guest(GuestSpec::nth(2)).unwrap();
    let added = watch
        .wait_for(WAIT, |v| {
            v["type"] == "port" && v["event"] == "added" && v["port"] == "tap102i0"
        })
        .unwrap();
    assert_eq!(added["bridge"], "vmbr0");
    watch
        .wait_for(WAIT, |v| {
            vm(v, "tap102i0").is_some_and(|p| p["vm_ips"][0] == "192.0.2.102")
        })
        .unwrap();

    // It stops: its port is dropped; the others keep their counters.
    lab.remove_guest(2).unwrap();
    watch
        .wait_for(WAIT, |v| {
            v["type"] == "port" && v["event"] == "removed" && v["port"] == "tap102i0"
        })
        .unwrap();
    let snap = watch.wait_snapshots(1, WAIT).unwrap();
    assert!(vm(&snap, "tap102i0").is_none(), "{snap}");
    assert!(
        find_drop(&snap, BROKEN, "forward", "NETFILTER_DROP", 3).is_some(),
        "{snap}"
    );
    assert!(vm(&snap, HEALTHY).is_some());
    assert_eq!(watch.stop().unwrap(), 0);
}

#[test]
fn narrowed_to_one_vm_ignores_the_others() {
    let mut lab = two_guests();
    let mut watch =
        WatchRun::start(&lab, &["--interval", "0.5", "--vm-ip", "192.0.2.100"]).unwrap();
    lab.nft(FORWARD_DROP).unwrap();
    assert_eq!(ping(&mut lab, 1, 3), 0);
    let snap = watch.wait_snapshots(3, WAIT).unwrap();
    assert_eq!(watched(&snap), [HEALTHY], "{snap}");
    assert_eq!(total_drops(&snap, HEALTHY), 0);
    assert_eq!(watch.stop().unwrap(), 0);
}

#[test]
fn stops_cleanly_on_sigint_sigterm_and_sighup() {
    let lab = two_guests();
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        let mut watch = WatchRun::start(&lab, &["--interval", "0.5"]).unwrap();
        watch.wait_snapshots(1, WAIT).unwrap();
        assert_eq!(programs_settled(1).len(), 1, "one program while running");
        assert_eq!(watch.signal(signal).unwrap(), 0, "{}", watch.stderr());
        let left = programs_settled(0);
        assert!(
            left.is_empty(),
            "left behind after signal {signal}: {left:?}"
        );
    }
}

#[test]
fn bad_input_is_one_line_and_exit_2_with_nothing_attached() {
    let lab = two_guests();
    let run = |args: &[&str]| {
        let out = lab.command_in_hv(&pathtrace_bin(), args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(!err.contains("panicked"), "{err}");
        err
    };
    assert!(run(&["watch", "--vm-ip", "192.0.2.300"]).contains("192.0.2.300"));
    assert!(run(&["watch", "--prometheus", "localhost"]).contains("ADDR:PORT"));
    assert!(run(&["watch", "--interval", "0"]).contains("interval"));
    assert!(run(&["watch", "--kernel-btf", "/nonexistent"]).contains("BTF"));
    // The metrics port is taken (by another watch): a clear error, and the one
    // that failed leaves nothing behind.
    let mut first = WatchRun::start(&lab, &["--prometheus", "19466"]).unwrap();
    let err = run(&["watch", "--json", "--prometheus", "19466"]);
    assert!(err.contains("cannot listen on 127.0.0.1:19466"), "{err}");
    assert_eq!(
        programs_settled(1).len(),
        1,
        "only the first instance's program"
    );
    assert_eq!(first.stop().unwrap(), 0);
    assert!(programs_settled(0).is_empty());
}

/// The live view in a real pseudo-terminal (tmux): it shows the drop, obeys its
/// keys and leaves cleanly on `q`.
#[test]
fn live_view_in_a_terminal() {
    let mut lab = two_guests();
    let session = format!("ptwatch{}", std::process::id());
    let done = std::env::temp_dir().join(format!("{session}.exit"));
    let _ = std::fs::remove_file(&done);
    let cmd = format!(
        "nsenter --net={} {} watch --interval 0.5; echo $? > {}",
        lab.hv_netns_path().display(),
        pathtrace_bin().display(),
        done.display()
    );
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .args(args)
            .output()
            .expect("tmux (installed by cargo xtask setup)")
    };
    let _guard = KillSession(session.clone());
    let started = tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "150",
        "-y",
        "30",
        &cmd,
    ]);
    assert!(started.status.success(), "{started:?}");
    let screen = || {
        String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", &session]).stdout).into_owned()
    };
    let wait_screen = |what: &dyn Fn(&str) -> bool| {
        let start = Instant::now();
        loop {
            let s = screen();
            if what(&s) {
                return s;
            }
            assert!(start.elapsed() < WAIT, "screen never matched:\n{s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_screen(&|s| s.contains("pathtrace watch") && s.contains(BROKEN));

    lab.nft(FORWARD_DROP).unwrap();
    assert_eq!(ping(&mut lab, 1, 3), 0);
    let s = wait_screen(&|s| s.contains("NETFILTER_DROP"));
    eprintln!("{s}");
    let row = s.lines().find(|l| l.contains("NETFILTER_DROP")).unwrap();
    assert!(row.contains("forward") && row.contains("vmbr0"), "{s}");
    assert!(
        s.contains("no drops"),
        "the healthy VM shows no drops:\n{s}"
    );

    tmux(&["send-keys", "-t", &session, "s"]);
    wait_screen(&|s| s.contains("sort: total"));
    tmux(&[
        "send-keys",
        "-t",
        &session,
        "/",
        "t",
        "a",
        "p",
        "1",
        "0",
        "0",
        "Enter",
    ]);
    let s = wait_screen(&|s| s.contains("filter: tap100"));
    assert!(s.contains(HEALTHY) && !s.contains("NETFILTER_DROP"), "{s}");

    tmux(&["send-keys", "-t", &session, "q"]);
    let start = Instant::now();
    while !done.exists() {
        assert!(
            start.elapsed() < WAIT,
            "watch did not quit on q:\n{}",
            screen()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(100));
    let code = std::fs::read_to_string(&done).unwrap();
    assert_eq!(code.trim(), "0");
    assert!(programs_settled(0).is_empty(), "detached on q");
    let _ = std::fs::remove_file(&done);
}

struct KillSession(String);

impl Drop for KillSession {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .output();
    }
}

/// Piped without --json (a log, a `grep`): one plain line per moving drop point;
/// --duration ends it by itself.
#[test]
fn plain_lines_when_piped_and_duration_ends_it() {
    let mut lab = two_guests();
    let mut child = lab
        .command_in_hv(
            &pathtrace_bin(),
            &["watch", "--interval", "0.5", "--duration", "6"],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Break the path only once it watches (start-up is slow under emulation).
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut banner = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut banner).unwrap();
    assert!(banner.contains("watching"), "{banner}");
    // Keep reading, so later notes never meet a closed pipe.
    let rest = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    lab.nft(FORWARD_DROP).unwrap();
    assert_eq!(ping(&mut lab, 1, 3), 0);
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let notes = rest.join().unwrap_or_default();
    assert_eq!(out.status.code(), Some(0), "{text}{notes}");
    let line = text
        .lines()
        .find(|l| l.contains(BROKEN))
        .unwrap_or_else(|| panic!("no line for {BROKEN}: {text}"));
    assert!(
        // The dual-stack guest's addresses, IPv4 first.
        line.contains("(192.0.2.101,2001:db8:1::101): forward NETFILTER_DROP at nft_do_chain"),
        "{line}"
    );
    assert!(!text.contains(HEALTHY), "{text}");
    assert!(programs_settled(0).is_empty());
}

/// Watch reads the host over netlink, again only when the kernel reports a
/// change: over fifteen intervals, while guests ping, it runs no program at all
/// (strace counts execve).
#[test]
fn watch_spawns_nothing_per_interval() {
    let mut lab = two_guests();
    let log =
        std::env::temp_dir().join(format!("pathtrace-watch-execve-{}.log", std::process::id()));
    let watch = Command::new("nsenter")
        .arg(format!("--net={}", lab.hv_netns_path().display()))
        .args([
            "strace",
            "-f",
            "-qq",
            "-e",
            "trace=execve",
            "-e",
            "signal=none",
            "-o",
        ])
        .arg(&log)
        .arg(pathtrace_bin())
        .args(["watch", "--json", "--interval", "0.2", "--duration", "3"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    ping(&mut lab, 0, 3);
    ping(&mut lab, 1, 3);
    let out = watch.wait_with_output().unwrap();
    let trace = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert!(out.status.success());
    let snapshots = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(r#""type":"watch""#))
        .count();
    assert!(snapshots >= 10, "{snapshots} snapshots");
    // The first execve is strace starting pathtrace itself.
    let spawned: Vec<&str> = trace
        .lines()
        .filter(|l| l.contains("execve(") && !l.contains("= -1"))
        .skip(1)
        .collect();
    assert!(spawned.is_empty(), "watch ran: {spawned:#?}");
}

/// The broken guest's connections to the service port are refused by the host.
const TCP_RESET: &str = "add table inet pt_watch\n\
     add chain inet pt_watch forward { type filter hook forward priority filter; policy accept; }\n\
     add rule inet pt_watch forward ip saddr 192.0.2.101 tcp dport 8080 reject with tcp reset\n";

#[test]
fn tcp_resets_the_host_sends_are_counted_per_vm() {
    let mut lab = two_guests();
    let port = 19465;
    let mut watch = with_metrics(&lab, port);
    lab.nft(TCP_RESET).unwrap();
    let dst = Ipv4Addr::new(203, 0, 113, 8);
    for _ in 0..3 {
        let seen = lab.guest(1).tcp(dst, 8080, 1000, 0).unwrap();
        assert_eq!(seen.result, "reset", "the host refuses: {seen:?}");
        let seen = lab.guest(0).tcp(dst, 8080, 1000, 0).unwrap();
        assert_eq!(
            seen.result, "synack",
            "the healthy guest connects: {seen:?}"
        );
    }
    let refused = |v: &Value| {
        drops(v, BROKEN)
            .into_iter()
            .find(|d| d["tcp_resets_sent"].as_u64().unwrap_or(0) >= 3)
    };
    let snap = watch.wait_for(WAIT, |v| refused(v).is_some()).unwrap();
    let d = refused(&snap).unwrap();
    assert_eq!(
        (d["stage"].as_str(), d["proto"].as_str()),
        (Some("forward"), Some("tcp")),
        "{d}"
    );
    assert!(
        d["reset_rule"]
            .as_str()
            .unwrap()
            .contains("reject with tcp reset"),
        "{d}"
    );
    assert_eq!(total_drops(&snap, HEALTHY), 0, "healthy VM: {snap}");
    let body = scrape(&lab, port);
    let line = body
        .lines()
        .find(|l| l.starts_with("pathtrace_tcp_resets_sent_total{") && l.contains(BROKEN))
        .unwrap_or_else(|| panic!("no resets metric:\n{body}"));
    assert!(line.contains("vm_ip=\"192.0.2.101\""), "{line}");
    assert_eq!(watch.stop().unwrap(), 0);
}
