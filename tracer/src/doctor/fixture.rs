//! Saved doctor runs, the fixtures of the checks' unit tests: the host model as
//! the doctor read it (links, addresses, neighbours, FDB, routes, sysctls, UDP
//! sockets), the rule sets, the question, and the checks it answered. Written
//! by a real run in a lab (`PATHTRACE_SAVE_DOCTOR_FIXTURE=FILE pathtrace doctor
//! ...`, see tests/tests/doctor.rs `write_doctor_fixtures`); the tests run the
//! checks again over the saved host, without root, and must give the same
//! answers.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Check, Question, Subject};
use crate::{
    cli::DoctorCli,
    host::{firewall, firewall::Firewall, Host},
};

/// The environment variable naming the file to save the run to.
pub const SAVE_ENV: &str = "PATHTRACE_SAVE_DOCTOR_FIXTURE";

#[derive(Debug, Serialize, Deserialize)]
pub struct Fixture {
    pub question: Question,
    pub passive: bool,
    pub host: Host,
    pub firewall: Firewall,
    /// The checks as the doctor printed them (JSON lines).
    pub checks: Vec<Value>,
}

pub fn save(path: &Path, cli: &DoctorCli, s: &Subject, checks: &[Check]) -> Result<()> {
    let fixture = Fixture {
        question: Question::of(cli),
        passive: cli.passive,
        host: s.host.clone(),
        firewall: firewall::rules().clone(),
        checks: checks
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()?,
    };
    let text = serde_json::to_string_pretty(&fixture)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::doctor::{checks, examine_host};

    fn fixtures() -> Vec<(String, Fixture)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/doctor/testdata");
        let mut out: Vec<(String, Fixture)> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .map(|p| {
                let text = std::fs::read_to_string(&p).unwrap();
                let name = p.file_stem().unwrap().to_string_lossy().into_owned();
                let fx = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
                (name, fx)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The checks over a saved host.
    fn run(fx: &Fixture) -> Vec<Value> {
        firewall::give_this_thread(fx.firewall.clone());
        let subject = examine_host(fx.host.clone(), &fx.question, &[], Path::new("")).unwrap();
        checks::all(&subject, fx.passive)
            .iter()
            .map(|c| serde_json::to_value(c).unwrap())
            .collect()
    }

    /// Every saved lab run (each layout healthy, and each planted fault) gives
    /// the same checks again over its saved host: the checks are functions of
    /// the host model.
    #[test]
    fn checks_over_saved_hosts_give_the_saved_answers() {
        let all = fixtures();
        assert!(!all.is_empty(), "no fixtures in src/doctor/testdata");
        for (name, fx) in &all {
            let got = run(fx);
            assert_eq!(
                serde_json::to_string_pretty(&got).unwrap(),
                serde_json::to_string_pretty(&fx.checks).unwrap(),
                "{name}"
            );
        }
    }

    fn fixture(name: &str) -> Fixture {
        fixtures()
            .into_iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no fixture {name}"))
            .1
    }

    fn check<'a>(checks: &'a [Value], name: &str) -> &'a Value {
        checks
            .iter()
            .find(|c| c["check"] == name)
            .unwrap_or_else(|| panic!("no {name} check in {checks:?}"))
    }

    /// A passive doctor finds a duplicate address only when the host itself
    /// holds it (another machine answering is found by an ARP probe, end to end).
    #[test]
    fn duplicate_ip_fails_when_the_host_holds_the_vms_address() {
        let mut fx = fixture("plain-healthy");
        let vmbr0 = fx.host.index_of("vmbr0").unwrap();
        fx.host.addrs.push(crate::host::Address {
            index: vmbr0,
            addr: "192.0.2.100".parse().unwrap(),
            prefix: 24,
            flags: Vec::new(),
        });
        let c = check(&run(&fx), "duplicate_ip").clone();
        assert_eq!(c["status"], "fail", "{c}");
        assert!(c["evidence"]
            .as_str()
            .unwrap()
            .contains("this host itself has the address"));
    }

    /// br_netfilter off matters only for a VM whose configuration turns its
    /// firewall on (the firewall bridge would filter nothing).
    #[test]
    fn br_netfilter_warns_for_a_firewalled_vm_without_it() {
        let mut fx = fixture("proxmox-healthy");
        fx.host
            .sysctls
            .insert("net/bridge/bridge-nf-call-iptables".into(), "0".into());
        let nic = crate::hostconfig::VmNic {
            source: "proxmox-qemu",
            vm_id: "100".into(),
            vm_name: None,
            nic: "net0".into(),
            mac: "bc:24:11:00:01:00".into(),
            port: Some("tap100i0".into()),
            bridge: Some("vmbr0".into()),
            network: None,
            firewall: true,
            vlan: None,
            ips: vec!["192.0.2.100".parse().unwrap()],
            ips6: Vec::new(),
            config: "/etc/pve/qemu-server/100.conf".into(),
        };
        firewall::give_this_thread(fx.firewall.clone());
        let subject = examine_host(fx.host.clone(), &fx.question, &[nic], Path::new("")).unwrap();
        let checks: Vec<Value> = checks::all(&subject, true)
            .iter()
            .map(|c| serde_json::to_value(c).unwrap())
            .collect();
        let c = check(&checks, "br_netfilter");
        assert_eq!(c["status"], "warn", "{c}");
        assert_eq!(
            c["fix"], "sysctl -w net.bridge.bridge-nf-call-iptables=1",
            "{c}"
        );
        // Without the firewall in its configuration, nothing to say.
        let fx = fixture("proxmox-healthy");
        assert_eq!(check(&run(&fx), "br_netfilter")["status"], "pass");
    }

    /// Each check is seen passing and seen failing (or warning) somewhere in
    /// the fixtures, so each has a test of both answers; the two that a passive
    /// run over a lab cannot fail have their own tests above.
    #[test]
    fn every_check_is_covered_both_ways() {
        let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (_, fx) in fixtures() {
            for c in &fx.checks {
                let name = c["check"].as_str().unwrap().to_string();
                let status = c["status"].as_str().unwrap().to_string();
                seen.entry(name).or_default().insert(status);
            }
        }
        let one_sided: Vec<String> = seen
            .iter()
            .filter(|(n, _)| !["duplicate_ip", "br_netfilter"].contains(&n.as_str()))
            .filter(|(_, s)| !s.contains("pass") || s.len() < 2)
            .map(|(n, s)| format!("{n}: {s:?}"))
            .collect();
        eprintln!("coverage: {seen:?}");
        assert!(
            one_sided.is_empty(),
            "checks seen one way only: {one_sided:?}"
        );
    }
}
