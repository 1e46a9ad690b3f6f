//! A trace's life: started, signalled, killed, refused; what it leaves behind
//! (nothing) and what it costs the host (processes spawned).

use super::*;

/// Start pathtrace (no traffic), wait until it is attached, send `signal`.
fn signal_running_trace(signal: &str) -> std::process::ExitStatus {
    let lab = lab();
    let mut child = lab
        .command_in_hv(
            &pathtrace_bin(),
            &["--vm-ip", VM, "--to", DEST, "--timeout", "20"],
        )
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    std::io::BufRead::read_line(&mut err, &mut line).unwrap();
    assert!(line.contains("following"), "{line}");
    // nsenter --net execs the program: this pid is pathtrace itself.
    let pid = child.id().to_string();
    Command::new("kill").args([signal, &pid]).status().unwrap();
    let status = child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    status
}

#[test]
fn ctrl_c_sigterm_and_sighup_detach_everything() {
    for signal in ["-INT", "-TERM", "-HUP"] {
        let status = signal_running_trace(signal);
        assert!(
            status.code().is_some(),
            "exited on its own after {signal}: {status:?}"
        );
        assert_nothing_attached();
    }
}

#[test]
fn missing_btf_is_a_clear_error_and_nothing_is_attached() {
    let lab = lab();
    let args = [
        "--vm-ip",
        VM,
        "--to",
        DEST,
        "--kernel-btf",
        "/nonexistent/vmlinux",
    ];
    let out = lab.command_in_hv(&pathtrace_bin(), &args).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("without BTF"), "{err}");
    assert_nothing_attached();
}

#[test]
fn mounts_tracefs_and_bpffs_when_missing() {
    let mut lab = lab();
    // A private mount namespace without tracefs and bpffs, as on a fresh machine.
    let script = format!(
        "umount /sys/kernel/tracing && (umount /sys/fs/bpf || true) && exec nsenter --net={} {} --vm-ip {VM} --to {DEST} --count 1 --timeout 10 --json",
        lab.hv_netns_path().display(),
        pathtrace_bin().display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    let run = trace_cmd_while(&mut lab, cmd, Duration::from_secs(30), |lab| {
        lab.guest(0)
            .ping(DEST.parse::<std::net::IpAddr>()?, PingOpts::default())?;
        Ok(())
    })
    .unwrap();
    eprintln!("{}{}", run.stdout, run.stderr);
    assert_eq!(run.code, 0);
    assert_eq!(run.verdicts()[0]["verdict"], "replied");
}

#[test]
fn sigkill_leaves_nothing_attached() {
    // tcx and tracepoint links belong to pathtrace's file descriptors: the kernel
    // drops them with the process.
    let status = signal_running_trace("-KILL");
    assert_eq!(status.code(), None, "killed");
    assert_nothing_attached();
}

/// Deep mode: where the kernel has kprobes, the request's path shows the kernel
/// functions it went through (forwarding, queueing on the uplink); where it has
/// none (like the development kernel), one clear line, exit 2, nothing attached.
#[test]
fn deep_mode_shows_kernel_functions_or_refuses_clearly() {
    let mut lab = lab();
    let kprobes = std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists();
    let args = [
        "--vm-ip",
        VM,
        "--to",
        DEST,
        "--count",
        "1",
        "--timeout",
        "10",
        "--json",
        "--deep",
    ];
    let run = trace_while(&mut lab, &args, Duration::from_secs(25), |lab| {
        let opts = PingOpts {
            count: 1,
            ..PingOpts::default()
        };
        lab.guest(0).ping(DEST.parse::<std::net::IpAddr>()?, opts)?;
        Ok(())
    })
    .expect("pathtrace runs");
    if !kprobes {
        assert_eq!(run.code, 2, "{}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
        assert!(run.stderr.contains("kprobes"), "{}", run.stderr);
        assert!(pathtrace_tests::tracerun::programs_settled(0).is_empty());
        return;
    }
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let v = &run.verdicts()[0];
    let functions: Vec<&str> = v["path"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["direction"] == "request")
        .filter_map(|h| h["function"].as_str())
        .collect();
    for f in ["ip_forward", "__dev_queue_xmit"] {
        assert!(
            functions.contains(&f),
            "request path lacks {f}: {functions:?}"
        );
    }
}

/// The programs pathtrace ran (execve) while it traced, counted by strace: the
/// host is read over netlink, the rule sets once, so a trace start spawns a
/// handful at most, and the verdicts (a firewall drop, replayed against the rule
/// sets) none.
#[test]
fn a_trace_spawns_a_handful_of_processes() {
    let mut lab = lab();
    lab.break_path(Fault::NftForwardDrop).unwrap();
    let log = std::env::temp_dir().join(format!("pathtrace-execve-{}.log", std::process::id()));
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", lab.hv_netns_path().display()))
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
        .args([
            "--vm-ip",
            VM,
            "--to",
            DEST,
            "--count",
            "2",
            "--timeout",
            "15",
            "--json",
        ]);
    let run = trace_cmd_while(&mut lab, cmd, Duration::from_secs(40), |lab| {
        let opts = PingOpts {
            count: 2,
            interval_ms: 200,
            timeout_ms: 1500,
            ..PingOpts::default()
        };
        lab.guest(0).ping(DEST.parse::<std::net::IpAddr>()?, opts)?;
        Ok(())
    })
    .expect("pathtrace runs under strace");
    let trace = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert_eq!(run.verdicts().len(), 2, "{}{}", run.stdout, run.stderr);
    assert!(run
        .verdicts()
        .iter()
        .all(|v| v["verdict"] == "dropped" && v["stage"] == "forward"));
    // The first execve is strace starting pathtrace itself. `tc` runs only at
    // exit on kernels without tcx, to remove a clsact qdisc pathtrace created.
    let spawned: Vec<&str> = trace
        .lines()
        .filter(|l| l.contains("execve(") && !l.contains("= -1"))
        .skip(1)
        .filter(|l| !l.contains("[\"tc\","))
        .collect();
    eprintln!("spawned:\n{}", spawned.join("\n"));
    assert!(
        spawned.len() <= 4,
        "a trace start spawns a handful of processes at most, this one {}:\n{}",
        spawned.len(),
        spawned.join("\n")
    );
}
