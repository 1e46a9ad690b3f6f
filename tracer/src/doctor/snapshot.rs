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

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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

// ---------------------------------------------------------------------------
// Comparison
// ---------------------------------------------------------------------------

/// More edits than this in one file and the order-aware diff would need too
/// much memory (it grows with the square); such files are compared as multisets.
const MAX_ORDERED_EDITS: usize = 2000;

/// Lines added and removed between two normalised texts, each in the order it
/// appears. Lines are matched by a longest common subsequence, so a rule that
/// moved shows as removed and added; repeated lines count as often as they occur.
pub fn diff_texts(old: &str, new: &str) -> (Vec<String>, Vec<String>) {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    // Most diffs are a few lines in a long file: skip the common ends cheaply.
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (a, b) = (&a[prefix..a.len() - suffix], &b[prefix..b.len() - suffix]);
    let (keep_a, keep_b) = myers(a, b, MAX_ORDERED_EDITS).unwrap_or_else(|| multiset_common(a, b));
    let unkept = |lines: &[&str], keep: &[bool]| -> Vec<String> {
        lines
            .iter()
            .zip(keep)
            .filter(|(_, k)| !**k)
            .map(|(l, _)| l.to_string())
            .collect()
    };
    (unkept(b, &keep_b), unkept(a, &keep_a))
}

/// Which lines of `a` and `b` belong to a longest common subsequence (Myers'
/// O((N+M)·D) algorithm), or None if more than `max_edits` edits are needed.
fn myers(a: &[&str], b: &[&str], max_edits: usize) -> Option<(Vec<bool>, Vec<bool>)> {
    let (n, m) = (a.len() as isize, b.len() as isize);
    let limit = (a.len() + b.len()).min(max_edits) as isize;
    // v[k + off] = furthest x reached on diagonal k = x - y.
    let off = limit + 1;
    let mut v = vec![0isize; (2 * limit + 3) as usize];
    // trace[d] = v for diagonals -d..=d before step d, to walk back the path.
    let mut trace: Vec<Vec<isize>> = Vec::new();
    for d in 0..=limit {
        trace.push(v[(off - d) as usize..=(off + d) as usize].to_vec());
        for k in (-d..=d).step_by(2) {
            let down = k == -d || (k != d && v[(off + k - 1) as usize] < v[(off + k + 1) as usize]);
            let mut x = if down {
                v[(off + k + 1) as usize]
            } else {
                v[(off + k - 1) as usize] + 1
            };
            let mut y = x - k;
            while x < n && y < m && a[x as usize] == b[y as usize] {
                x += 1;
                y += 1;
            }
            v[(off + k) as usize] = x;
            if x >= n && y >= m {
                return Some(walk_back(&trace, n, m));
            }
        }
    }
    None
}

/// Follow the Myers path backwards from (n, m), marking the diagonal moves.
fn walk_back(trace: &[Vec<isize>], n: isize, m: isize) -> (Vec<bool>, Vec<bool>) {
    let mut keep_a = vec![false; n as usize];
    let mut keep_b = vec![false; m as usize];
    let (mut x, mut y) = (n, m);
    for (d, v) in trace.iter().enumerate().rev() {
        let d = d as isize;
        let at = |k: isize| v[(k + d) as usize];
        let k = x - y;
        let prev_k = if k == -d || (k != d && at(k - 1) < at(k + 1)) {
            k + 1
        } else {
            k - 1
        };
        let (prev_x, prev_y) = if d == 0 {
            (0, 0)
        } else {
            (at(prev_k), at(prev_k) - prev_k)
        };
        while x > prev_x && y > prev_y {
            x -= 1;
            y -= 1;
            keep_a[x as usize] = true;
            keep_b[y as usize] = true;
        }
        x = prev_x;
        y = prev_y;
    }
    (keep_a, keep_b)
}

/// Order-blind fallback: a line is kept as many times as it occurs on both sides.
fn multiset_common(a: &[&str], b: &[&str]) -> (Vec<bool>, Vec<bool>) {
    (kept_by_count(a, b), kept_by_count(b, a))
}

/// For each line of `lines`, whether `other` still has an unmatched copy of it.
fn kept_by_count(lines: &[&str], other: &[&str]) -> Vec<bool> {
    let mut left: HashMap<&str, usize> = HashMap::new();
    for l in other {
        *left.entry(l).or_default() += 1;
    }
    lines
        .iter()
        .map(|l| match left.get_mut(l) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        })
        .collect()
}

// ---------------------------------------------------------------------------
// JSON sources (iproute2 and bridge)
// ---------------------------------------------------------------------------

/// Keys whose values change without anyone changing the configuration:
/// traffic counters, timers, lifetimes, reference counts and kernel-assigned
/// indexes (a recreated tap gets a new ifindex but is configured the same).
fn is_volatile(key: &str) -> bool {
    const KEYS: &[&str] = &[
        "stats",
        "stats64",
        "ifindex",
        "link_index",
        // Reference counts: tcpdump or a bridge raise them, nobody configures them.
        "promiscuity",
        "allmulti",
        "valid_life_time",
        "preferred_life_time",
        "used",
        "updated",
        "confirmed",
        "probes",
        "refcnt",
        "expires",
        "cacheinfo",
        "carrier_changes",
        "carrier_up_count",
        "carrier_down_count",
    ];
    KEYS.contains(&key)
        || key.ends_with("_timer")
        || key.contains("packets")
        || key.contains("bytes")
        || key.ends_with("errors")
        || key.ends_with("dropped")
}

/// Drop volatile keys at every depth.
fn prune(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|k, _| !is_volatile(k));
            map.values_mut().for_each(prune);
        }
        Value::Array(items) => items.iter_mut().for_each(prune),
        _ => {}
    }
}

/// The objects of an iproute2 JSON array, pruned. No output means no objects.
fn records(text: &str) -> Result<Vec<Map<String, Value>>> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut value: Value = serde_json::from_str(text).context("parsing JSON")?;
    prune(&mut value);
    let Value::Array(items) = value else {
        bail!("expected a JSON array");
    };
    Ok(items
        .into_iter()
        .filter_map(|v| match v {
            Value::Object(map) => Some(map),
            _ => None,
        })
        .collect())
}

/// Remove `key` and give its value as plain text (strings without quotes).
fn take(obj: &mut Map<String, Value>, key: &str) -> Option<String> {
    obj.remove(key).map(|v| match v {
        Value::String(s) => s,
        other => other.to_string(),
    })
}

/// `label: {rest}`, or just the label when nothing else is left.
fn keyed(label: String, rest: Map<String, Value>) -> String {
    if rest.is_empty() {
        label
    } else {
        format!("{label}: {}", Value::Object(rest))
    }
}

/// Sorted lines with a final newline: JSON dumps follow kernel hash order,
/// which says nothing about configuration.
fn sorted(mut lines: Vec<String>) -> String {
    lines.sort();
    lines.iter().map(|l| format!("{l}\n")).collect()
}

fn normalise_links(text: &str) -> Result<String> {
    let lines = records(text)?
        .into_iter()
        .map(|mut o| keyed(take(&mut o, "ifname").unwrap_or_default(), o))
        .collect();
    Ok(sorted(lines))
}

/// One line per address, labelled `dev address/prefix`.
fn normalise_addresses(text: &str) -> Result<String> {
    let mut lines = Vec::new();
    for mut link in records(text)? {
        let dev = take(&mut link, "ifname").unwrap_or_default();
        let Some(Value::Array(addrs)) = link.remove("addr_info") else {
            continue;
        };
        for addr in addrs {
            let Value::Object(mut addr) = addr else {
                continue;
            };
            // IPv6 privacy addresses rotate on their own.
            if addr.get("temporary") == Some(&Value::Bool(true)) {
                continue;
            }
            let local = take(&mut addr, "local").unwrap_or_default();
            let len = take(&mut addr, "prefixlen").unwrap_or_default();
            lines.push(keyed(format!("{dev} {local}/{len}"), addr));
        }
    }
    Ok(sorted(lines))
}

/// `table T DST: {...}`; iproute2 leaves out the table for main.
fn normalise_routes(text: &str) -> Result<String> {
    let lines = records(text)?
        .into_iter()
        .map(|mut o| {
            let table = take(&mut o, "table").unwrap_or_else(|| "main".into());
            let dst = take(&mut o, "dst").unwrap_or_default();
            keyed(format!("table {table} {dst}"), o)
        })
        .collect();
    Ok(sorted(lines))
}

/// `priority N: {...}`; the priority carries the order, so sorting loses nothing.
fn normalise_rules(text: &str) -> Result<String> {
    let lines = records(text)?
        .into_iter()
        .map(|mut o| {
            let prio = take(&mut o, "priority").unwrap_or_default();
            keyed(format!("priority {prio}"), o)
        })
        .collect();
    Ok(sorted(lines))
}

/// Neighbour states (REACHABLE, STALE, ...) change with traffic, so only the
/// configured ones (PERMANENT, NOARP) are kept; an entry without a link-layer
/// address is a resolution in progress or failed, not state worth comparing.
fn normalise_neighbours(text: &str) -> Result<String> {
    let mut lines = Vec::new();
    for mut o in records(text)? {
        let configured: Vec<Value> = o
            .remove("state")
            .and_then(|s| s.as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter(|s| matches!(s.as_str(), Some("PERMANENT" | "NOARP")))
            .collect();
        if !o.contains_key("lladdr") && configured.is_empty() {
            continue;
        }
        if !configured.is_empty() {
            o.insert("state".into(), Value::Array(configured));
        }
        let dst = take(&mut o, "dst").unwrap_or_default();
        let dev = take(&mut o, "dev").unwrap_or_default();
        lines.push(keyed(format!("{dst} dev {dev}"), o));
    }
    Ok(sorted(lines))
}

/// Bridge ports, keeping the STP `state`: a port stuck in blocking is a change.
fn normalise_bridge_ports(text: &str) -> Result<String> {
    normalise_links(text)
}

/// `MAC dev PORT [vlan N]: {...}`.
fn normalise_fdb(text: &str) -> Result<String> {
    let lines = records(text)?
        .into_iter()
        .map(|mut o| {
            let mac = take(&mut o, "mac").unwrap_or_default();
            let dev = take(&mut o, "ifname").unwrap_or_default();
            let vlan = take(&mut o, "vlan").map_or(String::new(), |v| format!(" vlan {v}"));
            keyed(format!("{mac} dev {dev}{vlan}"), o)
        })
        .collect();
    Ok(sorted(lines))
}

/// One line per port and VLAN (or VLAN range): `PORT vlan N[-M]: {flags}`.
fn normalise_vlans(text: &str) -> Result<String> {
    let mut lines = Vec::new();
    for mut port in records(text)? {
        let dev = take(&mut port, "ifname").unwrap_or_default();
        let Some(Value::Array(vlans)) = port.remove("vlans") else {
            continue;
        };
        for vlan in vlans {
            let Value::Object(mut vlan) = vlan else {
                continue;
            };
            let id = take(&mut vlan, "vlan").unwrap_or_default();
            let end = take(&mut vlan, "vlanEnd").map_or(String::new(), |e| format!("-{e}"));
            lines.push(keyed(format!("{dev} vlan {id}{end}"), vlan));
        }
    }
    Ok(sorted(lines))
}

// ---------------------------------------------------------------------------
// Rule sets (nft, iptables-save)
// ---------------------------------------------------------------------------

/// Words of a line, split on whitespace outside double quotes, so a comment
/// keeps its spaces.
fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in line.chars() {
        if c == '"' {
            quoted = !quoted;
        }
        if c.is_whitespace() && !quoted {
            if !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
        } else {
            word.push(c);
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

fn is_number(w: &str) -> bool {
    !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit())
}

/// nft durations such as `58m24s624ms` or `1d2h`.
fn is_duration(w: &str) -> bool {
    !w.is_empty()
        && w.bytes()
            .all(|b| b.is_ascii_digit() || b"dhms.".contains(&b))
}

/// An nft statement without its traffic-driven values: `counter packets N
/// bytes M` keeps only `counter`, quota and `last` lose their `used ...`, and
/// set elements lose `expires ...`. Whitespace is collapsed.
fn strip_nft_volatile(line: &str) -> String {
    let w = words(line);
    let mut out: Vec<&str> = Vec::new();
    let mut i = 0;
    while i < w.len() {
        let at = |j: usize| w.get(i + j).map(String::as_str).unwrap_or("");
        if at(0) == "packets" && is_number(at(1)) && at(2) == "bytes" && is_number(at(3)) {
            i += 4;
        } else if at(0) == "expires" && is_duration(at(1)) {
            i += 2;
        } else if at(0) == "used" && is_number(at(1)) && at(2).ends_with("bytes") {
            i += 3;
        } else if at(0) == "used" && out.last() == Some(&"last") {
            i += 2; // `last used 3s40ms` or `last used never`
        } else {
            out.push(&w[i]);
            i += 1;
        }
    }
    out.join(" ")
}

/// `{` minus `}` outside quotes.
fn brace_balance(text: &str) -> i32 {
    let mut quoted = false;
    let mut balance = 0;
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            '{' if !quoted => balance += 1,
            '}' if !quoted => balance -= 1,
            _ => {}
        }
    }
    balance
}

/// The items of `elements = { a, b : c, ... }`, split on top-level commas.
fn set_elements(statement: &str) -> Vec<String> {
    let Some(open) = statement.find('{') else {
        return Vec::new();
    };
    let inner = statement[open + 1..].trim_end();
    let inner = inner.strip_suffix('}').unwrap_or(inner);
    let (mut items, mut item) = (Vec::new(), String::new());
    let (mut depth, mut quoted) = (0, false);
    for c in inner.chars() {
        match c {
            '"' => quoted = !quoted,
            '{' if !quoted => depth += 1,
            '}' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                items.push(std::mem::take(&mut item));
                continue;
            }
            _ => {}
        }
        item.push(c);
    }
    items.push(item);
    items
        .iter()
        .map(|i| strip_nft_volatile(i))
        .filter(|i| !i.is_empty())
        .collect()
}

/// A table, or an object inside one (chain, set, map, counter, ...), and its lines.
struct NftBlock {
    head: String,
    body: Vec<String>,
    /// Set or map elements: their order in the listing means nothing.
    elements: Vec<String>,
    /// A set filled by the packet path (`flags dynamic`): its elements are traffic.
    dynamic: bool,
}

impl NftBlock {
    fn new(head: String) -> NftBlock {
        NftBlock {
            head,
            body: Vec::new(),
            elements: Vec::new(),
            dynamic: false,
        }
    }

    fn add(&mut self, statement: &str) {
        if statement.starts_with("elements =") {
            if !self.dynamic {
                self.elements.extend(set_elements(statement));
            }
            return;
        }
        let statement = strip_nft_volatile(statement);
        if statement.starts_with("flags ") && statement.contains("dynamic") {
            self.dynamic = true;
        }
        // A named counter's only line is `packets N bytes M`, now empty.
        if !statement.is_empty() {
            self.body.push(statement);
        }
    }

    /// The head alone (so an empty chain still shows), then each line under it.
    fn lines(mut self) -> Vec<String> {
        self.elements.sort();
        let head = &self.head;
        let mut lines = vec![head.clone()];
        lines.extend(self.body.iter().map(|l| format!("{head}: {l}")));
        lines.extend(self.elements.iter().map(|e| format!("{head} element: {e}")));
        lines
    }
}

/// `nft list ruleset` as self-describing lines: `table F T`, `table F T chain C`,
/// `table F T chain C: RULE`, `table F T set S element: E`. Rule order within
/// a chain is kept; tables and objects are sorted, because their listing order
/// is creation order, which does not change how packets are handled.
fn normalise_nft(text: &str) -> Result<String> {
    let mut blocks: Vec<NftBlock> = Vec::new();
    // Indexes into `blocks` of the open table and the open object inside it.
    let mut table: Option<usize> = None;
    let mut object: Option<usize> = None;
    let mut pending = String::new();
    for line in text.lines().map(str::trim) {
        // Comments are iptables-nft's "managed by" warnings, not configuration.
        if line.is_empty() || (pending.is_empty() && line.starts_with('#')) {
            continue;
        }
        // A statement may be wrapped over lines (long sets): join it first.
        if !pending.is_empty() {
            pending.push(' ');
        }
        pending.push_str(line);
        let balance = brace_balance(&pending);
        // `table ... {` and `chain ... {` open blocks; any other open brace
        // belongs to a statement that continues on the next line.
        let opens_block = balance > 0 && pending.ends_with('{') && object.is_none();
        if balance > 0 && !opens_block {
            continue;
        }
        let statement = std::mem::take(&mut pending);
        let head = statement.trim_end_matches('{').trim();
        if balance < 0 {
            // A closing brace ends the innermost open block.
            if object.take().is_none() {
                table = None;
            }
        } else if let Some(t) = table {
            if opens_block {
                let head = format!("{} {head}", blocks[t].head);
                blocks.push(NftBlock::new(head));
                object = Some(blocks.len() - 1);
            } else {
                blocks[object.unwrap_or(t)].add(&statement);
            }
        } else if opens_block {
            blocks.push(NftBlock::new(head.to_string()));
            table = Some(blocks.len() - 1);
        } else {
            bail!("nft statement outside a table: {statement}");
        }
    }
    // Stable sort: blocks with equal heads (none expected) keep their order.
    blocks.sort_by(|a, b| a.head.cmp(&b.head));
    Ok(blocks
        .into_iter()
        .flat_map(NftBlock::lines)
        .map(|l| l + "\n")
        .collect())
}

/// One iptables chain: its declaration and its rules in order.
#[derive(Default)]
struct IptChain {
    declaration: Option<String>,
    rules: Vec<String>,
}

/// iptables-save output as `*TABLE :CHAIN POLICY` and `*TABLE -A CHAIN ...`
/// lines, without comments or counters. Rules keep their order within a
/// chain; tables and chains are sorted, since iptables-save lists them in
/// module-load or creation order.
fn normalise_iptables(text: &str) -> Result<String> {
    let mut chains: BTreeMap<(String, String), IptChain> = BTreeMap::new();
    let mut table: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line == "COMMIT" {
            continue;
        }
        if let Some(name) = line.strip_prefix('*') {
            table = Some(name.to_string());
            continue;
        }
        let Some(t) = &table else {
            bail!("iptables-save line outside a table: {line}");
        };
        let line = strip_ipt_counters(line);
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or("").to_string();
            let chain = chains.entry((t.clone(), name)).or_default();
            chain.declaration = Some(format!("*{t} {line}"));
        } else {
            let name = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let chain = chains.entry((t.clone(), name)).or_default();
            chain.rules.push(format!("*{t} {line}"));
        }
    }
    Ok(chains
        .into_values()
        .flat_map(|c| c.declaration.into_iter().chain(c.rules))
        .map(|l| l + "\n")
        .collect())
}

/// Drop `[packets:bytes]` (a chain's policy counters, or a rule's with
/// `iptables-save -c`) and a rule's `-c packets bytes`.
fn strip_ipt_counters(line: &str) -> String {
    let w = words(line);
    let mut out: Vec<&str> = Vec::new();
    let mut i = 0;
    while i < w.len() {
        let word = w[i].as_str();
        let next = |j: usize| w.get(i + j).map(String::as_str).unwrap_or("");
        if is_bracket_counter(word) {
            i += 1;
        } else if word == "-c" && is_number(next(1)) && is_number(next(2)) {
            i += 3;
        } else {
            out.push(word);
            i += 1;
        }
    }
    out.join(" ")
}

fn is_bracket_counter(word: &str) -> bool {
    word.strip_prefix('[')
        .and_then(|w| w.strip_suffix(']'))
        .and_then(|w| w.split_once(':'))
        .is_some_and(|(p, b)| is_number(p) && is_number(b))
}

// ---------------------------------------------------------------------------
// Sysctls
// ---------------------------------------------------------------------------

/// Per-interface sysctls that decide whether and how packets are forwarded.
const CONF_KEYS: &[&str] = &["rp_filter", "forwarding", "proxy_arp", "arp_ignore"];

/// `net.x.y = value` lines for the forwarding sysctls under `root`
/// (/proc/sys/net). Unreadable files are skipped; /proc/sys/net/bridge only
/// exists while br_netfilter is loaded.
fn read_sysctls(root: &Path) -> String {
    let mut paths = vec![vec!["ipv4".to_string(), "ip_forward".to_string()]];
    for dev in dir_names(&root.join("ipv4/conf")) {
        for key in CONF_KEYS {
            paths.push(vec![
                "ipv4".into(),
                "conf".into(),
                dev.clone(),
                key.to_string(),
            ]);
        }
    }
    for name in dir_names(&root.join("bridge")) {
        paths.push(vec!["bridge".into(), name]);
    }
    let mut lines = String::new();
    for parts in paths {
        let Ok(value) = fs::read_to_string(root.join(parts.join("/"))) else {
            continue;
        };
        // sysctl(8) spells a dot inside a component (eth0.100) as a slash.
        let name: Vec<String> = parts.iter().map(|p| p.replace('.', "/")).collect();
        let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
        lines.push_str(&format!("net.{} = {value}\n", name.join(".")));
    }
    lines
}

fn dir_names(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn normalise_sysctls(text: &str) -> Result<String> {
    Ok(sorted(
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
    ))
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
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Samples below are real output of iproute2 6.1, nft 1.0.6 and iptables
    // 1.8.9 in a throwaway namespace, cut down.

    const LINKS: &str = r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"mtu":65536,"qdisc":"noqueue","operstate":"UNKNOWN","linkmode":"DEFAULT","group":"default","txqlen":1000,"link_type":"loopback","address":"00:00:00:00:00:00","promiscuity":0,"allmulti":0},{"ifindex":4,"link":"v1","ifname":"v0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1500,"master":"br0","operstate":"UP","txqlen":1000,"address":"b2:3a:df:c4:88:77","promiscuity":1,"allmulti":1,"linkinfo":{"info_kind":"veth","info_slave_kind":"bridge","info_slave_data":{"state":"listening","priority":32,"cost":2,"hold_timer":0.00,"message_age_timer":0.00,"forward_delay_timer":7.28,"bridge_id":"8000.b2:3a:df:c4:88:77"}},"stats64":{"rx":{"bytes":100,"packets":2}}},{"ifindex":5,"ifname":"br0","flags":["NO-CARRIER","BROADCAST","MULTICAST","UP"],"mtu":1500,"operstate":"DOWN","txqlen":1000,"linkinfo":{"info_kind":"bridge","info_data":{"forward_delay":1500,"stp_state":1,"hello_timer":0.99,"gc_timer":292.38,"mcast_last_member_cnt":2,"vlan_filtering":0}}}]"#;

    const ADDRS: &str = r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"mtu":65536,"operstate":"UNKNOWN","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host","label":"lo","valid_life_time":4294967295,"preferred_life_time":4294967295}]},{"ifindex":5,"ifname":"br0","mtu":1500,"addr_info":[{"family":"inet","local":"10.9.0.1","prefixlen":24,"scope":"global","label":"br0","valid_life_time":4294967295,"preferred_life_time":4294967295},{"family":"inet6","local":"2001:db8::1c2d:3e4f","prefixlen":64,"scope":"global","temporary":true,"dynamic":true,"valid_life_time":600,"preferred_life_time":300},{"family":"inet6","local":"fd00::1","prefixlen":64,"scope":"global","nodad":true,"valid_life_time":4294967295,"preferred_life_time":4294967295}]},{"ifindex":6,"ifname":"tap0","addr_info":[]}]"#;

    const ROUTES: &str = r#"[{"dst":"10.8.0.0/16","gateway":"10.9.0.2","dev":"br0","table":"100","flags":["linkdown"]},{"dst":"10.9.0.0/24","dev":"br0","protocol":"kernel","scope":"link","prefsrc":"10.9.0.1","flags":["linkdown"]},{"type":"local","dst":"10.9.0.1","dev":"br0","table":"local","protocol":"kernel","scope":"host","prefsrc":"10.9.0.1","flags":[]},{"dst":"2001:db8:1::/64","dev":"br0","protocol":"ra","metric":1024,"expires":1795,"flags":[],"pref":"medium"}]"#;

    const RULES: &str = r#"[{"priority":0,"src":"all","table":"local"},{"priority":32765,"src":"10.9.0.0","srclen":24,"table":"100"},{"priority":32766,"src":"all","table":"main"},{"priority":32767,"src":"all","table":"default"}]"#;

    const NEIGH: &str = r#"[{"dst":"10.9.0.6","dev":"br0","lladdr":"52:54:00:12:34:57","used":367,"confirmed":367,"updated":333,"probes":0,"state":["STALE"]},{"dst":"10.9.0.5","dev":"br0","lladdr":"52:54:00:12:34:56","used":367,"confirmed":367,"updated":367,"probes":0,"state":["PERMANENT"]},{"dst":"10.9.0.2","dev":"br0","used":367,"confirmed":427,"updated":364,"probes":6,"state":["FAILED"]}]"#;

    const PORTS: &str = r#"[{"ifindex":4,"link":"v1","ifname":"v0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1500,"master":"br0","state":"listening","priority":32,"cost":2,"hairpin":false,"learning":true,"flood":true}]"#;

    const FDB: &str = r#"[{"mac":"33:33:00:00:00:01","ifname":"v1","flags":["self"],"state":"permanent"},{"mac":"b6:28:c3:b7:b8:6b","ifname":"v0","used":339,"updated":12,"flags":[],"master":"br0","state":""},{"mac":"52:54:00:aa:bb:cc","ifname":"v0","vlan":10,"flags":[],"master":"br0","state":"static"}]"#;

    const VLANS: &str = r#"[{"ifname":"v0","vlans":[{"vlan":1,"flags":["PVID","Egress Untagged"]},{"vlan":10},{"vlan":20,"vlanEnd":30}]},{"ifname":"br0","vlans":[{"vlan":1,"flags":["PVID","Egress Untagged"]}]}]"#;

    const NFT: &str = "\
table inet filt {
\tset blk {
\t\ttype ipv4_addr
\t\tflags timeout
\t\telements = { 10.1.1.2, 10.1.1.1 timeout 1h expires 58m24s624ms }
\t}

\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\tip saddr @blk counter packets 12 bytes 1008 drop
\t\ttcp dport 22 counter packets 0 bytes 0 accept comment \"ssh {admin}\"
\t}
}
table ip nat2 {
\tcounter c1 {
\t\tpackets 3 bytes 180
\t}

\tquota q1 {
\t\tover 10 mbytes used 512 kbytes
\t}

\tset many {
\t\ttype ipv4_addr
\t\tflags interval
\t\telements = { 1.1.1.1, 2.2.2.2,
\t\t\t     10.0.0.0/8, 100.64.0.0/10 }
\t}

\tset dyn {
\t\ttype ipv4_addr
\t\tsize 65535
\t\tflags dynamic,timeout
\t\ttimeout 5m
\t\telements = { 10.9.0.7 expires 4m59s counter packets 1 bytes 84 }
\t}

\tchain pre {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tupdate @dyn { ip saddr counter }
\t\ttcp dport vmap { 22 : accept,
\t\t\t\t 80 : drop }
\t\tip daddr 1.2.3.4 quota 5 mbytes used 1 mbytes last used 3s40ms accept
\t}
}
table ip filter {
\tcomment \"iptables-nft\"
\tchain INPUT {
\t\ttype filter hook input priority filter; policy accept;
\t\t# Warning: managed by iptables-nft, do not touch!
\t\ttcp dport 80 counter packets 0 bytes 0 drop
\t}
}
";

    const IPT: &str = "\
# Generated by iptables-save v1.8.9 on Thu Nov 26 12:13:00 2026
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
[2:124] -A POSTROUTING -s 10.9.0.0/24 -j MASQUERADE
COMMIT
# Completed on Thu Nov 26 12:13:00 2026
# Generated by iptables-save v1.8.9 on Thu Nov 26 12:13:00 2026
*filter
:INPUT ACCEPT [1:112]
:FORWARD DROP [0:0]
:guests - [0:0]
-A FORWARD -i br0 -j guests
-A FORWARD -o br0 -m comment --comment \"return  path\" -c 7 420 -j ACCEPT
-A guests -s 10.9.0.5/32 -j ACCEPT
COMMIT
# Completed on Thu Nov 26 12:13:00 2026
";

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    /// A directory under the system temp dir, removed when dropped.
    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let path = std::env::temp_dir()
                .join(format!("pathtrace-snapshot-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn links_drop_counters_timers_and_indexes_but_keep_state() {
        let out = normalise_links(LINKS).unwrap();
        assert_eq!(lines(&out)[0].split(':').next(), Some("br0"), "{out}");
        for gone in [
            "ifindex",
            "promiscuity",
            "allmulti",
            "_timer",
            "stats64",
            "packets",
        ] {
            assert!(!out.contains(gone), "{gone} left in:\n{out}");
        }
        for kept in [
            "\"operstate\":\"UP\"",
            "\"state\":\"listening\"",
            "\"txqlen\":1000",
            "mcast_last_member_cnt",
            "\"stp_state\":1",
        ] {
            assert!(out.contains(kept), "{kept} missing in:\n{out}");
        }
        assert_eq!(lines(&out).len(), 3);
        assert!(lines(&out).windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn addresses_are_one_line_each_without_lifetimes() {
        let out = normalise_addresses(ADDRS).unwrap();
        assert_eq!(
            lines(&out),
            [
                r#"br0 10.9.0.1/24: {"family":"inet","label":"br0","scope":"global"}"#,
                r#"br0 fd00::1/64: {"family":"inet6","nodad":true,"scope":"global"}"#,
                r#"lo 127.0.0.1/8: {"family":"inet","label":"lo","scope":"host"}"#,
            ]
        );
    }

    #[test]
    fn routes_name_their_table() {
        let out = normalise_routes(ROUTES).unwrap();
        assert_eq!(
            lines(&out),
            [
                r#"table 100 10.8.0.0/16: {"dev":"br0","flags":["linkdown"],"gateway":"10.9.0.2"}"#,
                r#"table local 10.9.0.1: {"dev":"br0","flags":[],"prefsrc":"10.9.0.1","protocol":"kernel","scope":"host","type":"local"}"#,
                r#"table main 10.9.0.0/24: {"dev":"br0","flags":["linkdown"],"prefsrc":"10.9.0.1","protocol":"kernel","scope":"link"}"#,
                r#"table main 2001:db8:1::/64: {"dev":"br0","flags":[],"metric":1024,"pref":"medium","protocol":"ra"}"#,
            ]
        );
    }

    #[test]
    fn rules_are_labelled_by_priority() {
        let out = normalise_rules(RULES).unwrap();
        assert!(
            out.contains(
                "priority 32765: {\"src\":\"10.9.0.0\",\"srclen\":24,\"table\":\"100\"}\n"
            ),
            "{out}"
        );
        assert_eq!(lines(&out).len(), 4);
    }

    #[test]
    fn neighbours_keep_only_configured_state() {
        let out = normalise_neighbours(NEIGH).unwrap();
        assert_eq!(
            lines(&out),
            [
                r#"10.9.0.5 dev br0: {"lladdr":"52:54:00:12:34:56","state":["PERMANENT"]}"#,
                r#"10.9.0.6 dev br0: {"lladdr":"52:54:00:12:34:57"}"#,
            ]
        );
    }

    #[test]
    fn bridge_ports_fdb_and_vlans() {
        let ports = normalise_bridge_ports(PORTS).unwrap();
        assert!(
            ports.starts_with("v0: {") && ports.contains("\"state\":\"listening\""),
            "{ports}"
        );
        assert!(!ports.contains("ifindex"));

        let fdb = normalise_fdb(FDB).unwrap();
        assert_eq!(
            lines(&fdb),
            [
                r#"33:33:00:00:00:01 dev v1: {"flags":["self"],"state":"permanent"}"#,
                r#"52:54:00:aa:bb:cc dev v0 vlan 10: {"flags":[],"master":"br0","state":"static"}"#,
                r#"b6:28:c3:b7:b8:6b dev v0: {"flags":[],"master":"br0","state":""}"#,
            ]
        );

        let vlans = normalise_vlans(VLANS).unwrap();
        assert_eq!(
            lines(&vlans),
            [
                r#"br0 vlan 1: {"flags":["PVID","Egress Untagged"]}"#,
                // Plain string order: "10" sorts before "1: ".
                "v0 vlan 10",
                r#"v0 vlan 1: {"flags":["PVID","Egress Untagged"]}"#,
                "v0 vlan 20-30",
            ]
        );
    }

    #[test]
    fn json_sources_accept_empty_output_and_reject_garbage() {
        assert_eq!(normalise_links("").unwrap(), "");
        assert_eq!(normalise_vlans("[]\n").unwrap(), "");
        assert!(normalise_routes("Error: no JSON").is_err());
        assert!(normalise_rules("{\"priority\":0}").is_err());
    }

    #[test]
    fn nft_lines_carry_table_and_chain_without_counters() {
        let out = normalise_nft(NFT).unwrap();
        let expected = [
            "table inet filt",
            "table inet filt chain input",
            "table inet filt chain input: type filter hook input priority filter; policy accept;",
            "table inet filt chain input: ip saddr @blk counter drop",
            "table inet filt chain input: tcp dport 22 counter accept comment \"ssh {admin}\"",
            "table inet filt set blk",
            "table inet filt set blk: type ipv4_addr",
            "table inet filt set blk: flags timeout",
            "table inet filt set blk element: 10.1.1.1 timeout 1h",
            "table inet filt set blk element: 10.1.1.2",
            "table ip filter",
            "table ip filter: comment \"iptables-nft\"",
            "table ip filter chain INPUT",
            "table ip filter chain INPUT: type filter hook input priority filter; policy accept;",
            "table ip filter chain INPUT: tcp dport 80 counter drop",
            "table ip nat2",
            "table ip nat2 chain pre",
            "table ip nat2 chain pre: type nat hook prerouting priority dstnat; policy accept;",
            "table ip nat2 chain pre: update @dyn { ip saddr counter }",
            "table ip nat2 chain pre: tcp dport vmap { 22 : accept, 80 : drop }",
            "table ip nat2 chain pre: ip daddr 1.2.3.4 quota 5 mbytes last accept",
            "table ip nat2 counter c1",
            "table ip nat2 quota q1",
            "table ip nat2 quota q1: over 10 mbytes",
            "table ip nat2 set dyn",
            "table ip nat2 set dyn: type ipv4_addr",
            "table ip nat2 set dyn: size 65535",
            "table ip nat2 set dyn: flags dynamic,timeout",
            "table ip nat2 set dyn: timeout 5m",
            "table ip nat2 set many",
            "table ip nat2 set many: type ipv4_addr",
            "table ip nat2 set many: flags interval",
            "table ip nat2 set many element: 1.1.1.1",
            "table ip nat2 set many element: 10.0.0.0/8",
            "table ip nat2 set many element: 100.64.0.0/10",
            "table ip nat2 set many element: 2.2.2.2",
        ];
        assert_eq!(lines(&out), expected, "\n{out}");
    }

    #[test]
    fn nft_traffic_changes_nothing() {
        let busy = NFT
            .replace("packets 12 bytes 1008", "packets 99012 bytes 81008")
            .replace("expires 58m24s624ms", "expires 2m1s")
            .replace("used 512 kbytes", "used 9 mbytes")
            .replace("10.9.0.7 expires 4m59s", "10.9.0.8 expires 1s");
        assert_eq!(normalise_nft(&busy).unwrap(), normalise_nft(NFT).unwrap());
    }

    #[test]
    fn nft_rejects_rules_outside_tables() {
        assert!(normalise_nft("drop\n").is_err());
        assert_eq!(normalise_nft("").unwrap(), "");
    }

    #[test]
    fn iptables_lines_carry_table_without_counters() {
        let out = normalise_iptables(IPT).unwrap();
        assert_eq!(
            lines(&out),
            [
                "*filter :FORWARD DROP",
                "*filter -A FORWARD -i br0 -j guests",
                "*filter -A FORWARD -o br0 -m comment --comment \"return  path\" -j ACCEPT",
                "*filter :INPUT ACCEPT",
                "*filter :guests -",
                "*filter -A guests -s 10.9.0.5/32 -j ACCEPT",
                "*nat :POSTROUTING ACCEPT",
                "*nat -A POSTROUTING -s 10.9.0.0/24 -j MASQUERADE",
                "*nat :PREROUTING ACCEPT",
            ]
        );
        assert_eq!(normalise_iptables("").unwrap(), "");
        assert!(normalise_iptables("-A INPUT -j DROP\n").is_err());
    }

    #[test]
    fn sysctls_are_read_per_interface_and_named_like_sysctl() {
        let root = TempDir::new("sysctl");
        let write = |p: &str, v: &str| {
            let path = root.0.join(p);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, v).unwrap();
        };
        write("ipv4/ip_forward", "1\n");
        write("ipv4/conf/eth0.100/rp_filter", "2\n");
        write("ipv4/conf/eth0.100/forwarding", "1\n");
        write("ipv4/conf/all/proxy_arp", "0\n");
        write("ipv4/conf/all/log_martians", "1\n");
        write("bridge/bridge-nf-call-iptables", "0\n");
        let out = normalise_sysctls(&read_sysctls(&root.0)).unwrap();
        assert_eq!(
            lines(&out),
            [
                "net.bridge.bridge-nf-call-iptables = 0",
                "net.ipv4.conf.all.proxy_arp = 0",
                "net.ipv4.conf.eth0/100.forwarding = 1",
                "net.ipv4.conf.eth0/100.rp_filter = 2",
                "net.ipv4.ip_forward = 1",
            ]
        );
    }

    #[test]
    fn diff_texts_shows_additions_removals_and_moves() {
        let old = "a\nb\nc\n";
        assert_eq!(diff_texts(old, old), (vec![], vec![]));
        assert_eq!(diff_texts(old, "a\nb\nx\nc\n"), (vec!["x".into()], vec![]));
        assert_eq!(diff_texts(old, "a\nc\n"), (vec![], vec!["b".into()]));
        // A rule moved above another changes what matches first.
        let (added, removed) = diff_texts(old, "b\na\nc\n");
        assert_eq!((added.len(), removed.len()), (1, 1));
        assert_eq!(added, removed);
        // A duplicated rule is a change too.
        assert_eq!(diff_texts(old, "a\nb\nb\nc\n"), (vec!["b".into()], vec![]));
        assert_eq!(diff_texts("", "a\n"), (vec!["a".into()], vec![]));
    }

    #[test]
    fn diff_texts_lists_lines_in_file_order() {
        let (added, removed) = diff_texts("1\n2\n3\n4\n5\n", "0\n1\n3\n5\n6\n");
        assert_eq!(added, ["0", "6"]);
        assert_eq!(removed, ["2", "4"]);
    }

    #[test]
    fn many_edits_fall_back_to_multiset_comparison() {
        let a: Vec<&str> = vec!["x", "y", "z", "y"];
        let b: Vec<&str> = vec!["y", "q", "x"];
        assert!(myers(&a, &b, 1).is_none());
        let (ka, kb) = multiset_common(&a, &b);
        assert_eq!(ka, [true, true, false, false]);
        assert_eq!(kb, [true, false, true]);
    }

    /// Length of a longest common subsequence, by the textbook table.
    fn lcs_len(a: &[&str], b: &[&str]) -> usize {
        let mut t = vec![vec![0usize; b.len() + 1]; a.len() + 1];
        for i in 0..a.len() {
            for j in 0..b.len() {
                t[i + 1][j + 1] = if a[i] == b[j] {
                    t[i][j] + 1
                } else {
                    t[i][j + 1].max(t[i + 1][j])
                };
            }
        }
        t[a.len()][b.len()]
    }

    proptest! {
        #[test]
        fn myers_keeps_a_longest_common_subsequence(
            a in prop::collection::vec("[abc]", 0..12),
            b in prop::collection::vec("[abc]", 0..12),
        ) {
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            let b: Vec<&str> = b.iter().map(String::as_str).collect();
            let (ka, kb) = myers(&a, &b, usize::MAX).unwrap();
            let common_a: Vec<&str> = a.iter().zip(&ka).filter(|(_, k)| **k).map(|(l, _)| *l).collect();
            let common_b: Vec<&str> = b.iter().zip(&kb).filter(|(_, k)| **k).map(|(l, _)| *l).collect();
            prop_assert_eq!(&common_a, &common_b);
            prop_assert_eq!(common_a.len(), lcs_len(&a, &b));
        }

        #[test]
        fn diff_texts_counts_match_the_lcs(
            a in prop::collection::vec("[abc]", 0..12),
            b in prop::collection::vec("[abc]", 0..12),
        ) {
            let (added, removed) = diff_texts(&a.join("\n"), &b.join("\n"));
            let (ar, br): (Vec<&str>, Vec<&str>) = (
                a.iter().map(String::as_str).collect(),
                b.iter().map(String::as_str).collect(),
            );
            let common = lcs_len(&ar, &br);
            prop_assert_eq!(added.len(), b.len() - common);
            prop_assert_eq!(removed.len(), a.len() - common);
        }
    }

    fn host() -> Host {
        Host {
            hostname: "hv1".into(),
            kernel_release: "6.18.0".into(),
            netns_inode: 4026531840,
        }
    }

    fn captured(routes: &str, legacy: Option<&str>) -> Vec<(String, Option<String>)> {
        vec![
            ("routes.txt".into(), Some(routes.into())),
            ("iptables-legacy.txt".into(), legacy.map(String::from)),
            (
                "sysctls.txt".into(),
                Some("net.ipv4.ip_forward = 1\n".into()),
            ),
        ]
    }

    #[test]
    fn save_then_diff_round_trip() {
        let dir = TempDir::new("roundtrip");
        let before = captured("table main default: {}\ntable main 10.0.0.0/8: {}\n", None);
        let written = save_with(&dir.0, &before, &host()).unwrap();
        assert_eq!(written, ["routes.txt", "sysctls.txt"]);
        let marker = read_marker(&dir.0).unwrap();
        assert_eq!(marker.absent, ["iptables-legacy.txt"]);
        assert_eq!(marker.host, host());
        assert!(marker.time_utc.ends_with('Z'));

        assert!(diff_with(&dir.0, &before, &host()).unwrap().is_empty());

        let after = captured(
            "table main default: {}\ntable main 10.1.0.0/16: {}\n",
            Some(""),
        );
        let diffs = diff_with(&dir.0, &after, &host()).unwrap();
        assert_eq!(diffs.len(), 1, "{diffs:?}");
        assert_eq!(diffs[0].file, "routes.txt");
        assert!(diffs[0].what.starts_with("routes"));
        assert_eq!(diffs[0].added, ["table main 10.1.0.0/16: {}"]);
        assert_eq!(diffs[0].removed, ["table main 10.0.0.0/8: {}"]);
        assert_eq!(diffs[0].note, None);
    }

    #[test]
    fn diff_notes_sources_unavailable_on_one_side() {
        let dir = TempDir::new("absent");
        save_with(
            &dir.0,
            &captured("r\n", Some("*filter :INPUT ACCEPT\n")),
            &host(),
        )
        .unwrap();
        let diffs = diff_with(&dir.0, &captured("r\n", None), &host()).unwrap();
        assert_eq!(diffs.len(), 1);
        assert_eq!(diffs[0].removed, ["*filter :INPUT ACCEPT"]);
        assert!(diffs[0]
            .note
            .as_deref()
            .unwrap()
            .contains("unavailable now"));

        // Saving again without it removes the old file, so it is not compared.
        save_with(&dir.0, &captured("r\n", None), &host()).unwrap();
        assert!(!dir.0.join("iptables-legacy.txt").exists());
        let diffs = diff_with(
            &dir.0,
            &captured("r\n", Some("*filter :INPUT ACCEPT\n")),
            &host(),
        )
        .unwrap();
        assert_eq!(diffs[0].added, ["*filter :INPUT ACCEPT"]);
        assert!(diffs[0]
            .note
            .as_deref()
            .unwrap()
            .contains("not in the snapshot"));
    }

    #[test]
    fn diff_reports_another_host_or_namespace_first() {
        let dir = TempDir::new("host");
        save_with(&dir.0, &captured("r\n", None), &host()).unwrap();
        let other = Host {
            netns_inode: 4026532999,
            ..host()
        };
        let diffs = diff_with(&dir.0, &captured("r\n", None), &other).unwrap();
        assert_eq!(diffs.len(), 1);
        assert_eq!(diffs[0].file, MARKER);
        assert_eq!(diffs[0].added, ["network namespace inode = 4026532999"]);
        assert_eq!(diffs[0].removed, ["network namespace inode = 4026531840"]);
    }

    #[test]
    fn save_refuses_a_foreign_non_empty_directory() {
        let dir = TempDir::new("foreign");
        fs::create_dir_all(&dir.0).unwrap();
        fs::write(dir.0.join("notes.txt"), "mine").unwrap();
        let err = save_with(&dir.0, &captured("r\n", None), &host()).unwrap_err();
        assert!(format!("{err:#}").contains(MARKER), "{err:#}");
        assert_eq!(fs::read_to_string(dir.0.join("notes.txt")).unwrap(), "mine");
        assert!(!dir.0.join("routes.txt").exists());

        // An empty directory is fine.
        let empty = TempDir::new("empty");
        fs::create_dir_all(&empty.0).unwrap();
        assert!(save_with(&empty.0, &captured("r\n", None), &host()).is_ok());
    }

    #[test]
    fn diff_needs_the_marker() {
        let dir = TempDir::new("nomarker");
        fs::create_dir_all(&dir.0).unwrap();
        let err = diff_with(&dir.0, &captured("r\n", None), &host()).unwrap_err();
        assert!(
            format!("{err:#}").contains("not a pathtrace snapshot"),
            "{err:#}"
        );
    }

    #[test]
    fn save_writes_only_our_file_names() {
        let dir = TempDir::new("names");
        let bad = vec![("../escape.txt".to_string(), Some("x\n".to_string()))];
        assert!(save_with(&dir.0, &bad, &host()).is_err());
        assert!(!dir.0.parent().unwrap().join("escape.txt").exists());
    }

    #[test]
    fn sources_have_distinct_files() {
        let mut files: Vec<&str> = SOURCES.iter().map(|s| s.file).collect();
        files.sort();
        files.dedup();
        assert_eq!(files.len(), SOURCES.len());
        assert!(!files.contains(&MARKER));
    }

    #[test]
    fn utc_times() {
        assert_eq!(utc_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_rfc3339(1_764_159_180), "2025-11-26T12:13:00Z");
    }
}
