//! dnsmasq's lease files (libvirt networks): addresses handed to guests' MACs.

use std::{net::Ipv4Addr, path::Path};

use serde_json::Value;

use super::*;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Lease {
    pub(super) mac: String,
    pub(super) ip: Ipv4Addr,
}

/// Current leases from libvirt's dnsmasq directory: `*.status` (JSON, written by
/// libvirt's lease helper) and classic `*.leases`.
pub(super) fn read_leases(dir: &Path, now: u64) -> Vec<Lease> {
    let status = files_with_ext(dir, "status")
        .into_iter()
        .filter_map(|p| read_text(&p))
        .flat_map(|t| parse_status(&t, now));
    let classic = files_with_ext(dir, "leases")
        .into_iter()
        .filter_map(|p| read_text(&p))
        .flat_map(|t| parse_leases(&t, now));
    status.chain(classic).collect()
}

/// dnsmasq removes a lease when it expires, so one still listed past its expiry is
/// stale (the helper did not run); its address may belong to another guest by now.
/// Expiry 0 means the lease never expires.
pub(super) fn lease_current(expiry: u64, now: u64) -> bool {
    expiry == 0 || expiry > now
}

/// `[{"ip-address": "..", "mac-address": "..", "hostname": "..", "expiry-time": N}]`.
pub(super) fn parse_status(text: &str, now: u64) -> Vec<Lease> {
    let Ok(Value::Array(entries)) = serde_json::from_str::<Value>(text) else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|e| {
            let mac = normalize_mac(e.get("mac-address")?.as_str()?)?;
            let ip = e.get("ip-address")?.as_str()?.trim().parse().ok()?;
            // A missing or odd expiry is not a reason to drop the address.
            let expiry = e.get("expiry-time").and_then(Value::as_u64).unwrap_or(0);
            lease_current(expiry, now).then_some(Lease { mac, ip })
        })
        .collect()
}

/// `expiry mac ip hostname clientid` lines; IPv6 lines (and the `duid` line) have no
/// MAC in the second field and are skipped by its check.
pub(super) fn parse_leases(text: &str, now: u64) -> Vec<Lease> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let expiry: u64 = fields.next()?.parse().ok()?;
            let mac = normalize_mac(fields.next()?)?;
            let ip = fields.next()?.parse().ok()?;
            lease_current(expiry, now).then_some(Lease { mac, ip })
        })
        .collect()
}

pub(super) fn apply_leases(nics: &mut [VmNic], leases: &[Lease]) {
    for nic in nics {
        for lease in leases.iter().filter(|l| l.mac == nic.mac) {
            push_unique(&mut nic.ips, lease.ip);
        }
    }
}
