//! Run `pathtrace` inside a lab's hypervisor namespace while the guest sends
//! traffic, and collect what it printed. Shared by the demo and the tests.

use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::lab::Lab;

/// What one pathtrace run printed.
#[derive(Debug)]
pub struct TraceRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl TraceRun {
    /// The JSON lines of a `--json` run.
    pub fn json(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn verdicts(&self) -> Vec<Value> {
        self.json()
            .into_iter()
            .filter(|v| v["type"] == "verdict")
            .collect()
    }

    /// The verdict lines read as the contract's typed verdicts (a line that does
    /// not fit the contract fails the test).
    pub fn typed_verdicts(&self) -> Vec<pathtrace_json::Verdict> {
        self.verdicts()
            .into_iter()
            .map(|v| {
                serde_json::from_value(v.clone())
                    .unwrap_or_else(|e| panic!("not a verdict line of the contract ({e}): {v}"))
            })
            .collect()
    }

    pub fn summary(&self) -> Option<Value> {
        self.json().into_iter().find(|v| v["type"] == "summary")
    }

    /// The doctor check `name` among the JSON lines (a trace prints the checks
    /// that explain what it saw, the doctor all of them); panics without it.
    pub fn check(&self, name: &str) -> Value {
        self.json()
            .into_iter()
            .find(|v| v["type"] == "check" && v["check"] == name)
            .unwrap_or_else(|| panic!("a {name} check:\n{}", self.stdout))
    }
}

/// `pathtrace doctor --passive` for `vm_ip` toward `dst` with the lab's
/// config root, printed for the test's log.
pub fn doctor_with_config(lab: &Lab, vm_ip: &str, dst: &str) -> TraceRun {
    let root = lab.config_root().display().to_string();
    let args = [
        "doctor",
        "--vm-ip",
        vm_ip,
        "--to",
        dst,
        "--passive",
        "--json",
        "--config-root",
        &root,
    ];
    let run = run_in_hv(lab, &args).expect("doctor runs");
    eprintln!("--- doctor\n{}{}", run.stdout, run.stderr);
    run
}

/// Trace guest `guest` (as `vm_ip`) pinging `dst` twice, one request followed
/// for up to 10 s, with the hypervisor's configuration under the lab's config
/// root (generated firewalls are explained from it); printed for the test's log.
pub fn trace_pings_with_config(lab: &mut Lab, guest: usize, vm_ip: &str, dst: &str) -> TraceRun {
    let root = lab.config_root().display().to_string();
    let args = [
        "--vm-ip",
        vm_ip,
        "--to",
        dst,
        "--count",
        "1",
        "--timeout",
        "10",
        "--json",
        "--config-root",
        &root,
    ];
    let run = trace_while(lab, &args, Duration::from_secs(25), |lab| {
        let opts = crate::lab::PingOpts {
            count: 2,
            interval_ms: 300,
            timeout_ms: 1500,
            ..Default::default()
        };
        lab.guest(guest)
            .ping(dst.parse::<std::net::IpAddr>()?, opts)?;
        Ok(())
    })
    .expect("pathtrace runs");
    eprintln!("--- stdout\n{}--- stderr\n{}", run.stdout, run.stderr);
    run
}

/// A verdict's observed (not inferred) hops of one direction: (stage, ifname).
pub fn observed_hops(v: &Value, dir: &str) -> Vec<(String, String)> {
    v["path"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|h| h["direction"] == dir && h["inferred"] != true)
        .map(|h| {
            let s = |k: &str| h[k].as_str().unwrap_or_default().to_string();
            (s("stage"), s("ifname"))
        })
        .collect()
}

/// pathtrace's programs loaded in the kernel right now (`bpftool prog show`).
/// `cargo xtask test` runs tests one at a time, so outside a run any is a leftover.
pub fn loaded_programs() -> Vec<String> {
    let out = std::process::Command::new("bpftool")
        .args(["prog", "show"])
        .output()
        .expect("bpftool (installed by cargo xtask setup)");
    // bpftool truncates names to 15 characters: `pathtrace_tc_in`, `pathtrace_watch`, ...
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("name pathtrace_"))
        .map(str::to_string)
        .collect()
}

/// [`loaded_programs`] once it holds `n` programs, or after 3 s whatever it holds:
/// the kernel frees a program of an exited process a moment later (deferred work),
/// so "nothing left" is checked after that moment.
pub fn programs_settled(n: usize) -> Vec<String> {
    let start = std::time::Instant::now();
    loop {
        let progs = loaded_programs();
        if progs.len() == n || start.elapsed() > Duration::from_secs(3) {
            return progs;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The pathtrace binary: `PATHTRACE_BIN`, else the workspace's release build.
pub fn pathtrace_bin() -> PathBuf {
    std::env::var_os("PATHTRACE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_target().join("release/pathtrace"))
}

/// The fake-guest binary: `FAKE_GUEST_BIN`, else the workspace's release build.
pub fn fake_guest_bin() -> PathBuf {
    std::env::var_os("FAKE_GUEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_target().join("release/fake-guest"))
}

fn workspace_target() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target")
}

/// Start pathtrace with `args` in the hypervisor namespace, wait until its probes
/// are attached (it says so on stderr), run `traffic`, then wait for it to exit
/// (bounded by `limit`; killed past that).
pub fn trace_while(
    lab: &mut Lab,
    args: &[&str],
    limit: Duration,
    traffic: impl FnOnce(&mut Lab) -> Result<()>,
) -> Result<TraceRun> {
    let cmd = lab.command_in_hv(&pathtrace_bin(), args);
    trace_cmd_while(lab, cmd, limit, traffic)
}

/// [`trace_while`] with a command of the caller's making (e.g. wrapped in unshare).
pub fn trace_cmd_while(
    lab: &mut Lab,
    cmd: std::process::Command,
    limit: Duration,
    traffic: impl FnOnce(&mut Lab) -> Result<()>,
) -> Result<TraceRun> {
    trace_cmd_with_pid(lab, cmd, limit, |lab, _| traffic(lab))
}

/// [`trace_while`], with pathtrace's process id handed to `traffic` (to stall or
/// signal it while traffic flows).
pub fn trace_while_pid(
    lab: &mut Lab,
    args: &[&str],
    limit: Duration,
    traffic: impl FnOnce(&mut Lab, u32) -> Result<()>,
) -> Result<TraceRun> {
    let cmd = lab.command_in_hv(&pathtrace_bin(), args);
    trace_cmd_with_pid(lab, cmd, limit, traffic)
}

fn trace_cmd_with_pid(
    lab: &mut Lab,
    mut cmd: std::process::Command,
    limit: Duration,
    traffic: impl FnOnce(&mut Lab, u32) -> Result<()>,
) -> Result<TraceRun> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting pathtrace")?;
    // Drain stdout on a thread so a chatty run can never block on a full pipe.
    let mut out = child.stdout.take().context("stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let mut stderr = BufReader::new(child.stderr.take().context("stderr")?);
    let mut first = String::new();
    stderr.read_line(&mut first)?;
    if !first.contains("following") {
        let mut rest = String::new();
        let _ = stderr.read_to_string(&mut rest);
        let code = wait_bounded(&mut child, limit)?;
        let stdout = reader.join().unwrap_or_default();
        return Ok(TraceRun {
            code,
            stdout,
            stderr: first + &rest,
        });
    }
    let sent = traffic(lab, child.id());
    let code = wait_bounded(&mut child, limit)?;
    let mut rest = String::new();
    let _ = stderr.read_to_string(&mut rest);
    let stdout = reader.join().unwrap_or_default();
    sent?;
    Ok(TraceRun {
        code,
        stdout,
        stderr: first + &rest,
    })
}

fn wait_bounded(child: &mut Child, limit: Duration) -> Result<i32> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status.code().unwrap_or(-1));
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("pathtrace did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run `pathtrace ARGS` to completion in the lab's hypervisor namespace (doctor,
/// and anything else that needs no traffic alongside).
pub fn run_in_hv(lab: &Lab, args: &[&str]) -> Result<TraceRun> {
    let out = lab
        .command_in_hv(&pathtrace_bin(), args)
        .output()
        .context("running pathtrace")?;
    Ok(TraceRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}
