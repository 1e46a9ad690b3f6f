//! Network namespaces and commands run in them.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
};

use anyhow::{bail, Context, Result};

/// Remove namespaces named `{prefix}{pid}...` whose creating process is gone.
pub fn cleanup_stale_netns(prefix: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let Ok(pid) = digits.parse::<u32>() else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            remove_netns(name);
        }
    }
}

/// Kill what still runs inside a namespace, then delete it (its interfaces go too).
pub fn remove_netns(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stderr(Stdio::null())
        .status();
}

pub(super) fn sh(cmd: &str) -> Result<String> {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "`{cmd}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `nsenter --net` keeps the host's mounts (tracefs, bpffs), unlike `ip netns exec`.
pub(super) fn in_netns(ns: &str, cmd: &str) -> Result<String> {
    sh(&format!(
        "nsenter --net=/run/netns/{ns} sh -c '{}'",
        cmd.replace('\'', "'\\''")
    ))
}

pub(super) fn spawn_in(ns: &str, script: &str) -> Result<Child> {
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args(["bash", "-c", script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting noise")
}
