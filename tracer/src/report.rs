//! `pathtrace report`: one bundle for a ticket or a forum post — doctor (JSON and
//! text), a snapshot of the host's network state, a short trace with its pcapng,
//! a few seconds of watch, versions and kernel facts, and a manifest of what ran
//! (arguments, exit status, time). Each part is pathtrace itself run as a child
//! (the same binary), so the bundle holds exactly what an operator would see.
//! `--redact` replaces public addresses and MACs consistently (see `redact`).

mod redact;

use std::{
    fmt::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::cli::ReportCli;

/// One part of the bundle: a pathtrace command and where its output goes.
struct Part {
    name: &'static str,
    args: Vec<String>,
    /// File for its stdout (None: it writes its own files, e.g. the snapshot).
    stdout: Option<&'static str>,
}

#[derive(Serialize)]
struct Ran {
    part: &'static str,
    args: Vec<String>,
    exit: Option<i32>,
    seconds: f64,
    stderr: String,
}

#[derive(Serialize)]
struct Manifest {
    #[serde(rename = "type")]
    kind: &'static str,
    version: &'static str,
    redacted: bool,
    ran: Vec<Ran>,
    files: Vec<String>,
}

pub fn run(cli: &ReportCli) -> Result<i32> {
    check_output(&cli.output)?;
    let dir = std::env::temp_dir().join(format!("pathtrace-report-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(dir.clone());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let exe = std::env::current_exe().context("finding pathtrace's own binary")?;
    let mut ran = Vec::new();
    for part in parts(cli, &dir) {
        eprintln!("pathtrace report: {} ...", part.name);
        ran.push(run_part(&exe, &part, &dir)?);
    }
    std::fs::write(dir.join("facts.txt"), facts())?;
    let mut files = list(&dir)?;
    if cli.redact {
        let mut r = redact::Redactor::default();
        r.redact_dir(&dir, &files)?;
        for run in &mut ran {
            run.args = run.args.iter().map(|a| r.text(a)).collect();
            run.stderr = r.text(&run.stderr);
        }
    }
    let manifest = Manifest {
        kind: "report",
        version: crate::cli::VERSION,
        redacted: cli.redact,
        ran,
        files: files.clone(),
    };
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)? + "\n",
    )?;
    files.push("manifest.json".into());
    write_bundle(&dir, &files, &cli.output)?;
    eprintln!(
        "pathtrace report: wrote {} ({} files{})",
        cli.output.display(),
        files.len(),
        if cli.redact { ", redacted" } else { "" }
    );
    Ok(0)
}

/// What the bundle holds, in the order it is collected.
fn parts(cli: &ReportCli, dir: &Path) -> Vec<Part> {
    let mut subject: Vec<String> = match (&cli.vm, cli.vm_ip) {
        (Some(vm), _) => vec!["--vm".into(), vm.clone()],
        (None, Some(ip)) => vec!["--vm-ip".into(), ip.to_string()],
        (None, None) => Vec::new(),
    };
    subject.extend([
        "--config-root".into(),
        cli.config_root.display().to_string(),
    ]);
    let to: Vec<String> = cli
        .to
        .map(|t| vec!["--to".into(), t.to_string()])
        .unwrap_or_default();
    let doctor = |json: bool| {
        let mut a: Vec<String> = vec!["doctor".into()];
        a.extend(subject.clone());
        a.extend(to.clone());
        if json {
            a.push("--json".into());
        }
        a
    };
    let mut parts = vec![
        Part {
            name: "doctor.json",
            args: doctor(true),
            stdout: Some("doctor.json"),
        },
        Part {
            name: "doctor.txt",
            args: doctor(false),
            stdout: Some("doctor.txt"),
        },
        Part {
            name: "snapshot",
            args: vec![
                "doctor".into(),
                "--snapshot".into(),
                dir.join("snapshot").display().to_string(),
            ],
            stdout: None,
        },
    ];
    // A trace needs a destination the guest is trying to reach.
    if cli.to.is_some() {
        let mut a: Vec<String> = vec!["trace".into()];
        a.extend(subject.clone());
        a.extend(to.clone());
        a.extend([
            "--count".into(),
            cli.count.to_string(),
            "--timeout".into(),
            cli.trace_secs.to_string(),
            "--json".into(),
            "--pcap".into(),
            dir.join("trace.pcapng").display().to_string(),
        ]);
        parts.push(Part {
            name: "trace.json",
            args: a,
            stdout: Some("trace.json"),
        });
    }
    parts.push(Part {
        name: "watch.json",
        args: vec![
            "watch".into(),
            "--json".into(),
            "--interval".into(),
            "1".into(),
            "--duration".into(),
            cli.watch_secs.to_string(),
            "--config-root".into(),
            cli.config_root.display().to_string(),
        ],
        stdout: Some("watch.json"),
    });
    parts
}

fn run_part(exe: &Path, part: &Part, dir: &Path) -> Result<Ran> {
    let start = Instant::now();
    let mut cmd = Command::new(exe);
    cmd.args(&part.args).stdin(Stdio::null());
    log::debug!("run: pathtrace {}", part.args.join(" "));
    let out = cmd
        .output()
        .with_context(|| format!("running pathtrace {}", part.args.join(" ")))?;
    if let Some(file) = part.stdout {
        std::fs::write(dir.join(file), &out.stdout)?;
    }
    Ok(Ran {
        part: part.name,
        args: part.args.clone(),
        exit: out.status.code(),
        seconds: (start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Versions and kernel facts that decide what pathtrace can do on this host.
fn facts() -> String {
    let mut f = String::new();
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|e| format!("({e})"))
    };
    let _ = writeln!(f, "pathtrace: {}", crate::cli::VERSION);
    let _ = writeln!(f, "kernel: {}", read("/proc/version"));
    let _ = writeln!(f, "kernel release: {}", read("/proc/sys/kernel/osrelease"));
    let os = read("/etc/os-release");
    let pretty = os
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .unwrap_or("unknown")
        .trim_matches('"')
        .to_string();
    let _ = writeln!(f, "os: {pretty}");
    let exists = |p: &str| if Path::new(p).exists() { "yes" } else { "no" };
    let _ = writeln!(
        f,
        "btf (/sys/kernel/btf/vmlinux): {}",
        exists("/sys/kernel/btf/vmlinux")
    );
    let _ = writeln!(
        f,
        "tracefs (/sys/kernel/tracing/events): {}",
        exists("/sys/kernel/tracing/events")
    );
    let _ = writeln!(
        f,
        "kprobes: {}",
        exists("/sys/bus/event_source/devices/kprobe")
    );
    let _ = writeln!(f, "lockdown: {}", read("/sys/kernel/security/lockdown"));
    let _ = writeln!(f, "ip_forward: {}", read("/proc/sys/net/ipv4/ip_forward"));
    let _ = writeln!(
        f,
        "bridge-nf-call-iptables: {}",
        read("/proc/sys/net/bridge/bridge-nf-call-iptables")
    );
    for (tool, args) in [
        ("ip", &["-V"][..]),
        ("nft", &["--version"][..]),
        ("iptables", &["--version"][..]),
    ] {
        log::debug!("run: {tool} {}", args.join(" "));
        let v = Command::new(tool)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|e| format!("({e})"));
        let _ = writeln!(f, "{tool}: {v}");
    }
    f
}

/// Files under `dir`, relative, sorted.
fn list(dir: &Path) -> Result<Vec<String>> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) -> Result<()> {
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            if p.is_dir() {
                walk(&p, base, out)?;
            } else {
                out.push(p.strip_prefix(base)?.display().to_string());
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

/// `output` as a gzip'd tar with every file under one top directory.
fn write_bundle(dir: &Path, files: &[String], output: &Path) -> Result<()> {
    let top = output
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| {
            n.trim_end_matches(".tar.gz")
                .trim_end_matches(".tgz")
                .to_string()
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "pathtrace-report".into());
    let file =
        std::fs::File::create(output).with_context(|| format!("creating {}", output.display()))?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for f in files {
        tar.append_path_with_name(dir.join(f), PathBuf::from(&top).join(f))
            .with_context(|| format!("adding {f} to the bundle"))?;
    }
    let gz = tar.into_inner().context("finishing the tar archive")?;
    gz.finish().context("finishing the gzip stream")?;
    Ok(())
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `-o` must name a .tar.gz (or .tgz) file.
fn check_output(path: &Path) -> Result<()> {
    let name = path.to_string_lossy();
    if !(name.ends_with(".tar.gz") || name.ends_with(".tgz")) {
        bail!("-o {name}: the bundle is a .tar.gz file");
    }
    Ok(())
}
