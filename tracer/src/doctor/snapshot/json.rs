//! iproute2's and bridge's JSON, normalised into self-describing lines with
//! counters, timers and kernel-assigned indexes removed.

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

/// Keys whose values change without anyone changing the configuration:
/// traffic counters, timers, lifetimes, reference counts and kernel-assigned
/// indexes (a recreated tap gets a new ifindex but is configured the same).
pub(super) fn is_volatile(key: &str) -> bool {
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
pub(super) fn prune(value: &mut Value) {
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
pub(super) fn records(text: &str) -> Result<Vec<Map<String, Value>>> {
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
pub(super) fn take(obj: &mut Map<String, Value>, key: &str) -> Option<String> {
    obj.remove(key).map(|v| match v {
        Value::String(s) => s,
        other => other.to_string(),
    })
}

/// `label: {rest}`, or just the label when nothing else is left.
pub(super) fn keyed(label: String, rest: Map<String, Value>) -> String {
    if rest.is_empty() {
        label
    } else {
        format!("{label}: {}", Value::Object(rest))
    }
}

/// Sorted lines with a final newline: JSON dumps follow kernel hash order,
/// which says nothing about configuration.
pub(super) fn sorted(mut lines: Vec<String>) -> String {
    lines.sort();
    lines.iter().map(|l| format!("{l}\n")).collect()
}

pub(super) fn normalise_links(text: &str) -> Result<String> {
    let lines = records(text)?
        .into_iter()
        .map(|mut o| keyed(take(&mut o, "ifname").unwrap_or_default(), o))
        .collect();
    Ok(sorted(lines))
}

/// One line per address, labelled `dev address/prefix`.
pub(super) fn normalise_addresses(text: &str) -> Result<String> {
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
pub(super) fn normalise_routes(text: &str) -> Result<String> {
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

/// `proxy ADDR: {"dev": ...}`: each proxy entry is configuration (an entry has
/// no link-layer address or state to filter on).
pub(super) fn normalise_proxies(text: &str) -> Result<String> {
    let lines = records(text)?
        .into_iter()
        .map(|mut o| {
            let dst = take(&mut o, "dst").unwrap_or_default();
            keyed(format!("proxy {dst}"), o)
        })
        .collect();
    Ok(sorted(lines))
}

/// `priority N: {...}`; the priority carries the order, so sorting loses nothing.
pub(super) fn normalise_rules(text: &str) -> Result<String> {
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
pub(super) fn normalise_neighbours(text: &str) -> Result<String> {
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
pub(super) fn normalise_bridge_ports(text: &str) -> Result<String> {
    normalise_links(text)
}

/// `MAC dev PORT [vlan N]: {...}`.
pub(super) fn normalise_fdb(text: &str) -> Result<String> {
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
pub(super) fn normalise_vlans(text: &str) -> Result<String> {
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
