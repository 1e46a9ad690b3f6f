//! Save the hypervisor's network state to a directory and later show what changed.
//!
//! An operator runs `pathtrace doctor --snapshot DIR` before a change and
//! `pathtrace doctor --diff DIR` after it. Every source is read in the current
//! network namespace (netlink through iproute2, and /proc/sys/net, which is per
//! namespace of the reader), because pathtrace runs inside the hypervisor's
//! namespace; /sys/class/net would show the root namespace under `nsenter --net`.
//!
//! Each source is normalised into lines that carry their own context, with
//! counters, timers and other churn removed, so the diff shows configuration
//! changes rather than traffic.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

mod diff;
mod json;
mod rulesets;
mod sysctls;

use diff::*;
use json::*;
use rulesets::*;
use sysctls::*;

/// Marks a directory as ours and records what was captured, where and when.
pub const MARKER: &str = "pathtrace-snapshot.json";

/// Bumped if the normalised format changes, so old snapshots can be recognised.
const FORMAT: u32 = 1;

/// Where /proc/sys/net is; it shows the namespace of the process reading it.
const PROC_SYS_NET: &str = "/proc/sys/net";

/// One captured piece of state: a file name in the snapshot dir and how to get its text.
pub struct Source {
    pub file: &'static str,
    /// One-line description, shown next to the changes.
    pub what: &'static str,
    pub origin: Origin,
    /// Turns the raw text into sorted or ordered self-describing lines.
    pub normalise: fn(&str) -> Result<String>,
}

/// Where a source's raw text comes from.
pub enum Origin {
    /// A program and its arguments; missing or failing means "unavailable".
    Command(&'static [&'static str]),
    /// The forwarding and filtering sysctls under /proc/sys/net.
    Sysctls,
    /// The IPv6 per-interface sysctls under /proc/sys/net/ipv6/conf.
    Sysctls6,
}

pub const SOURCES: &[Source] = &[
    Source {
        file: "links.txt",
        what: "network devices and their settings (ip -d link)",
        origin: Origin::Command(&["ip", "-d", "-j", "link", "show"]),
        normalise: normalise_links,
    },
    Source {
        file: "addresses.txt",
        what: "IP addresses (ip addr)",
        origin: Origin::Command(&["ip", "-j", "addr"]),
        normalise: normalise_addresses,
    },
    Source {
        file: "routes.txt",
        what: "routes of all tables (ip route show table all)",
        origin: Origin::Command(&["ip", "-j", "route", "show", "table", "all"]),
        normalise: normalise_routes,
    },
    Source {
        file: "rules.txt",
        what: "policy routing rules (ip rule)",
        origin: Origin::Command(&["ip", "-j", "rule"]),
        normalise: normalise_rules,
    },
    Source {
        file: "neighbours.txt",
        what: "ARP/NDP neighbours with a link-layer address (ip neigh)",
        origin: Origin::Command(&["ip", "-j", "neigh"]),
        normalise: normalise_neighbours,
    },
    Source {
        file: "nft.txt",
        what: "nftables ruleset (nft list ruleset)",
        origin: Origin::Command(&["nft", "list", "ruleset"]),
        normalise: normalise_nft,
    },
    Source {
        file: "iptables-legacy.txt",
        what: "legacy iptables rules (iptables-legacy-save)",
        origin: Origin::Command(&["iptables-legacy-save"]),
        normalise: normalise_iptables,
    },
    Source {
        file: "iptables-nft.txt",
        what: "iptables-nft rules (iptables-nft-save)",
        origin: Origin::Command(&["iptables-nft-save"]),
        normalise: normalise_iptables,
    },
    Source {
        file: "bridge-ports.txt",
        what: "bridge ports and their STP state (bridge -d link)",
        origin: Origin::Command(&["bridge", "-j", "-d", "link"]),
        normalise: normalise_bridge_ports,
    },
    Source {
        file: "bridge-fdb.txt",
        what: "bridge forwarding database (bridge fdb)",
        origin: Origin::Command(&["bridge", "-j", "fdb", "show"]),
        normalise: normalise_fdb,
    },
    Source {
        file: "bridge-vlans.txt",
        what: "bridge port VLANs (bridge vlan)",
        origin: Origin::Command(&["bridge", "-j", "vlan", "show"]),
        normalise: normalise_vlans,
    },
    Source {
        file: "sysctls.txt",
        what: "forwarding, rp_filter, proxy_arp, arp_ignore and br_netfilter sysctls",
        origin: Origin::Sysctls,
        normalise: normalise_sysctls,
    },
    // IPv6, in files of their own: a snapshot taken before pathtrace read them
    // shows them as unavailable rather than as added lines of the files above.
    Source {
        file: "routes6.txt",
        what: "IPv6 routes of all tables (ip -6 route show table all)",
        origin: Origin::Command(&["ip", "-6", "-j", "route", "show", "table", "all"]),
        normalise: normalise_routes,
    },
    Source {
        file: "rules6.txt",
        what: "IPv6 policy routing rules (ip -6 rule)",
        origin: Origin::Command(&["ip", "-6", "-j", "rule"]),
        normalise: normalise_rules,
    },
    Source {
        file: "neighbour-proxies.txt",
        what: "IPv6 proxy neighbour entries (ip -6 neigh show proxy)",
        origin: Origin::Command(&["ip", "-6", "-j", "neigh", "show", "proxy"]),
        normalise: normalise_proxies,
    },
    Source {
        file: "ip6tables-legacy.txt",
        what: "legacy ip6tables rules (ip6tables-legacy-save)",
        origin: Origin::Command(&["ip6tables-legacy-save"]),
        normalise: normalise_iptables,
    },
    Source {
        file: "ip6tables-nft.txt",
        what: "ip6tables-nft rules (ip6tables-nft-save)",
        origin: Origin::Command(&["ip6tables-nft-save"]),
        normalise: normalise_iptables,
    },
    Source {
        file: "sysctls6.txt",
        what: "IPv6 forwarding, accept_ra, proxy_ndp, disable_ipv6 and mtu sysctls",
        origin: Origin::Sysctls6,
        normalise: normalise_sysctls,
    },
];

/// The changes in one saved file since the snapshot.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FileDiff {
    pub file: String,
    pub what: String,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Set when one side could not be read, so the lines are not a true comparison.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Where a capture was taken: a diff against another host, kernel or
/// namespace explains many changes on its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Host {
    pub hostname: String,
    pub kernel_release: String,
    /// Inode of /proc/self/ns/net: tells namespaces apart on one boot.
    pub netns_inode: u64,
}

/// Contents of [`MARKER`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Marker {
    pub format: u32,
    pub time_unix: u64,
    pub time_utc: String,
    #[serde(flatten)]
    pub host: Host,
    /// Files written, one per available source.
    pub files: Vec<String>,
    /// Sources that were unavailable (tool missing or failing).
    #[serde(default)]
    pub absent: Vec<String>,
}

impl Host {
    /// The host, kernel and network namespace this process runs in.
    pub fn current() -> Host {
        let read = |p: &str| {
            fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        Host {
            hostname: read("/proc/sys/kernel/hostname"),
            kernel_release: read("/proc/sys/kernel/osrelease"),
            netns_inode: fs::metadata("/proc/self/ns/net")
                .map(|m| m.ino())
                .unwrap_or(0),
        }
    }

    fn lines(&self) -> String {
        format!(
            "hostname = {}\nkernel release = {}\nnetwork namespace inode = {}\n",
            self.hostname, self.kernel_release, self.netns_inode
        )
    }
}

/// Capture all sources now, normalised. Sources whose tool is missing or fails
/// are recorded as absent (None), not as an error.
pub fn capture() -> Vec<(String, Option<String>)> {
    SOURCES
        .iter()
        .map(|s| (s.file.to_string(), capture_source(s)))
        .collect()
}

fn capture_source(source: &Source) -> Option<String> {
    let raw = match source.origin {
        Origin::Command(argv) => run(argv)?,
        Origin::Sysctls => read_sysctls(Path::new(PROC_SYS_NET)),
        Origin::Sysctls6 => read_sysctls6(Path::new(PROC_SYS_NET)),
    };
    // Output we cannot parse is as useless as no output: record it as absent.
    (source.normalise)(&raw).ok()
}

/// Stdout of a command, or None if it is missing or fails.
fn run(argv: &[&str]) -> Option<String> {
    let (program, args) = argv.split_first()?;
    log::debug!("run: {}", argv.join(" "));
    let out = Command::new(program)
        .args(args)
        // Messages and number formats must not depend on the operator's locale.
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Write a capture into `dir`; see [`save_with`].
pub fn save(dir: &Path) -> Result<Vec<String>> {
    save_with(dir, &capture(), &Host::current())
}

/// Write `captured` into `dir`, creating it. A non-empty directory without our
/// marker is refused, so a typo cannot scatter files into (or replace files of)
/// some other directory. Returns the files written.
pub fn save_with(
    dir: &Path,
    captured: &[(String, Option<String>)],
    host: &Host,
) -> Result<Vec<String>> {
    let previous = prepare_dir(dir)?;
    // The marker goes last: its presence means the files beside it are complete.
    remove_if_present(&dir.join(MARKER))?;
    let mut files = Vec::new();
    let mut absent = Vec::new();
    for (file, text) in captured {
        check_name(file)?;
        match text {
            Some(text) => {
                let path = dir.join(file);
                fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
                files.push(file.clone());
            }
            None => absent.push(file.clone()),
        }
    }
    // A source that is unavailable now must not leave its old file behind.
    for stale in previous.iter().filter(|f| !files.contains(f)) {
        if check_name(stale).is_ok() {
            remove_if_present(&dir.join(stale))?;
        }
    }
    let time_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let marker = Marker {
        format: FORMAT,
        time_unix,
        time_utc: utc_rfc3339(time_unix),
        host: host.clone(),
        files: files.clone(),
        absent,
    };
    let path = dir.join(MARKER);
    let json = serde_json::to_string_pretty(&marker)?;
    fs::write(&path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    Ok(files)
}

/// Create `dir` or accept it if empty or an earlier snapshot; returns the files
/// the earlier snapshot listed.
fn prepare_dir(dir: &Path) -> Result<Vec<String>> {
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_none() {
                return Ok(Vec::new());
            }
            if !dir.join(MARKER).exists() {
                bail!(
                    "{} exists, is not empty and is not a pathtrace snapshot (no {MARKER}); \
                     choose a new or empty directory",
                    dir.display()
                );
            }
            Ok(read_marker(dir)?.files)
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            Ok(Vec::new())
        }
        Err(e) => Err(e).with_context(|| format!("reading directory {}", dir.display())),
    }
}

/// Only our own source names may be written or deleted: a hand-edited marker
/// must not make us touch `../something`.
fn check_name(file: &str) -> Result<()> {
    if SOURCES.iter().any(|s| s.file == file) {
        Ok(())
    } else {
        bail!("{file:?} is not a snapshot file name")
    }
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Read the marker of a saved snapshot.
pub fn read_marker(dir: &Path) -> Result<Marker> {
    let path = dir.join(MARKER);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => bail!(
            "{} is not a pathtrace snapshot: {MARKER} is missing \
             (take one with `pathtrace doctor --snapshot DIR`)",
            dir.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Compare `dir` (a saved snapshot) with a fresh capture; see [`diff_with`].
pub fn diff(dir: &Path) -> Result<Vec<FileDiff>> {
    diff_with(dir, &capture(), &Host::current())
}

/// Compare the snapshot in `dir` with `captured`. Only changed files are
/// returned; a changed host, kernel or namespace comes first, as a change of
/// the marker file.
pub fn diff_with(
    dir: &Path,
    captured: &[(String, Option<String>)],
    host: &Host,
) -> Result<Vec<FileDiff>> {
    let marker = read_marker(dir)?;
    if marker.format != FORMAT {
        // Lines normalised another way would all show as changed.
        bail!(
            "{} holds a snapshot in format {}; this pathtrace compares format {FORMAT}: take a new one",
            dir.display(),
            marker.format
        );
    }
    let mut diffs = Vec::new();
    if marker.host != *host {
        let (added, removed) = diff_texts(&marker.host.lines(), &host.lines());
        diffs.push(FileDiff {
            file: MARKER.to_string(),
            what: "where the snapshot was taken (another host, kernel or namespace explains many changes)".into(),
            added,
            removed,
            note: None,
        });
    }
    for (file, new) in captured {
        let old = if marker.files.contains(file) {
            check_name(file)?;
            let path = dir.join(file);
            let text = fs::read_to_string(&path)
                .with_context(|| format!("snapshot is incomplete: reading {}", path.display()))?;
            Some(text)
        } else {
            None
        };
        diffs.extend(compare(file, old.as_deref(), new.as_deref()));
    }
    Ok(diffs)
}

/// The changes in one file; None if there are none. An unavailable side
/// counts as empty, with a note saying so.
fn compare(file: &str, old: Option<&str>, new: Option<&str>) -> Option<FileDiff> {
    let (added, removed) = diff_texts(old.unwrap_or(""), new.unwrap_or(""));
    if added.is_empty() && removed.is_empty() {
        return None;
    }
    let note = match (old, new) {
        (None, _) => Some("not in the snapshot (unavailable then): every current line is listed as added".into()),
        (_, None) => Some("unavailable now (tool missing or failing): saved lines are listed as removed, but may still be in place".into()),
        _ => None,
    };
    let what = SOURCES
        .iter()
        .find(|s| s.file == file)
        .map_or("", |s| s.what);
    Some(FileDiff {
        file: file.to_string(),
        what: what.to_string(),
        added,
        removed,
        note,
    })
}

/// `YYYY-MM-DDThh:mm:ssZ` for a Unix time (days to civil date after H. Hinnant).
fn utc_rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let s = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

#[cfg(test)]
mod tests;
