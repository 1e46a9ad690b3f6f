//! Doctor findings attached to trace verdicts. The checks run once when a trace
//! starts; those about state that changes while it runs — links and carrier
//! (a VM starting), bridge port states, neighbour entries — are read again when
//! a verdict is made, so a verdict never carries a finding that no longer holds.

use super::{checks, Check, Status, Subject};
use crate::{explain, host::Host};

/// Checks whose answer can change while a trace runs; re-read at verdict time.
const VOLATILE: &[&str] = &[
    "bridge_member",
    "link_up",
    "stp_state",
    "bridge_uplink",
    "gateway",
    "gateway6",
    "lan_gateway",
    "firewall_bridge_arp",
];

pub struct Findings {
    subject: Subject,
    /// Every check as it was when the trace started.
    at_start: Vec<Check>,
}

impl Findings {
    pub fn new(subject: Subject, at_start: Vec<Check>) -> Self {
        Self { subject, at_start }
    }

    /// The volatile checks over the host as it is now (read again over netlink:
    /// no process is spawned), or as at the start when it cannot be read.
    fn volatile_now(&self) -> Vec<Check> {
        match Host::read() {
            Ok(now) => checks::volatile(&self.subject, &now),
            Err(_) => checks::volatile(&self.subject, &self.subject.host),
        }
    }
}

impl explain::Findings for Findings {
    /// The failed or warning checks among `names` (all checks when None), as
    /// they hold now: the volatile ones read fresh from the host.
    fn current(&self, names: Option<&[&str]>) -> Vec<Check> {
        let wanted = |c: &Check| names.is_none_or(|n| n.contains(&c.check.as_str()));
        let needs_fresh = names.is_none_or(|n| n.iter().any(|c| VOLATILE.contains(c)));
        let fresh = match needs_fresh {
            true => self.volatile_now(),
            false => Vec::new(),
        };
        merge(&self.at_start, fresh)
            .into_iter()
            .filter(|c| c.status != Status::Pass && wanted(c))
            .collect()
    }

    /// Every check as it holds now (for a trace that saw no request at all).
    fn all_now(&self) -> Vec<Check> {
        merge(&self.at_start, self.volatile_now())
    }

    fn proxy_ndp(&self, vm: std::net::Ipv6Addr, uplink: &str) -> Option<Check> {
        proxy_ndp_now(vm, uplink)
    }
}

/// The `proxy_ndp` check over the host as it is now (proxy entries and
/// sysctls change while a trace runs).
pub fn proxy_ndp_now(vm: std::net::Ipv6Addr, uplink: &str) -> Option<Check> {
    super::v6::proxy_ndp_on(&Host::read().ok()?, vm, uplink)
}

/// The start-time checks with every volatile one replaced by `fresh` (when
/// fresh results were read), in the start-time order.
fn merge(at_start: &[Check], fresh: Vec<Check>) -> Vec<Check> {
    if fresh.is_empty() {
        return at_start.to_vec();
    }
    let mut out: Vec<Check> = Vec::new();
    let mut fresh = Some(fresh);
    for c in at_start {
        if !VOLATILE.contains(&c.check.as_str()) {
            out.push(c.clone());
        } else if let Some(f) = fresh.take() {
            // The fresh block takes the place of the first volatile check.
            out.extend(f);
        }
    }
    out.extend(fresh.into_iter().flatten());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &'static str, status: Status, subject: &str) -> Check {
        Check::new(name, status, subject)
    }

    #[test]
    fn volatile_checks_are_replaced_by_fresh_ones() {
        let start = vec![
            check("vm_port", Status::Pass, "tap105i0"),
            check("link_up", Status::Fail, "tap105i0"),
            check("stp_state", Status::Pass, "tap105i0"),
            check("firewall", Status::Fail, "forward"),
        ];
        let fresh = vec![
            check("link_up", Status::Pass, "tap105i0"),
            check("stp_state", Status::Pass, "tap105i0"),
        ];
        let merged = merge(&start, fresh);
        let names: Vec<(&str, Status)> = merged
            .iter()
            .map(|c| (c.check.as_str(), c.status))
            .collect();
        assert_eq!(
            names,
            vec![
                ("vm_port", Status::Pass),
                ("link_up", Status::Pass),
                ("stp_state", Status::Pass),
                ("firewall", Status::Fail),
            ]
        );
    }

    #[test]
    fn without_fresh_results_the_start_stays() {
        let start = vec![check("nat", Status::Fail, "eth0")];
        assert_eq!(merge(&start, Vec::new()).len(), 1);
    }
}
