//! Real firewall rule sets, loaded unchanged in the lab: Proxmox VE's nftables
//! firewall (proxmox-firewall) exactly as its generator wrote it for guest 100
//! of its own test configuration (kept outside the repository, see `fixtures`,
//! provenance in its README). The lab's guests are built to match that
//! configuration — guest 100's net3 is `veth100i3`, MAC BC:24:11:4D:B0:FE,
//! 192.0.2.10/24 with the IP filter on and `policy_out: REJECT`; net2
//! (`veth100i2`) has no firewall — so nothing in the rule set is substituted.
//!
//! The rule set needs bridge conntrack (nf_conntrack_bridge), bridge reject and
//! bridge meta expressions; a kernel without them (the 6.18 development kernel)
//! refuses it, and the tests say so and skip. Debian's 6.12 runs them:
//! `cargo xtask vm-test --kernel 6.12 --test real_rulesets`.
//! Needs root and eBPF.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    time::Duration,
};

use pathtrace_tests::{
    lab::{GuestSpec, Lab, LabOptions, PingOpts},
    tracerun::{
        doctor_with_config, fake_guest_bin, trace_pings_with_config, trace_while, TraceRun,
    },
};
use serde_json::Value;

const DEST: &str = "203.0.113.8";

/// Proxmox's generated rule set is third-party data kept out of the repository:
/// `$PATHTRACE_GENERATED_RULESETS/proxmox-firewall/`, else
/// `shared/generated-rulesets/proxmox-firewall/` beside the checkout.
fn fixtures() -> PathBuf {
    std::env::var_os("PATHTRACE_GENERATED_RULESETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/generated-rulesets")
        })
        .join("proxmox-firewall")
}

fn fixture(name: &str) -> PathBuf {
    fixtures().join(name)
}

/// Which of the generator's outputs: its committed snapshot (guest 100 with
/// `macfilter: 0`), or its output for the same input with `macfilter: 1`
/// (in `macfilter/`, with that 100.fw).
#[derive(Clone, Copy)]
enum Output {
    Committed,
    MacFilter,
}

impl Output {
    fn file(self, name: &str) -> PathBuf {
        match self {
            Output::Committed => fixture(name),
            Output::MacFilter => fixture("macfilter").join(name),
        }
    }
}

/// A guest NIC of guest 100 as its configuration (100.conf) describes it.
fn nic(port: &str, ip: &str, mac: &str) -> GuestSpec {
    GuestSpec {
        tap: port.into(),
        ip: ip.parse().unwrap(),
        prefix: 24,
        gateway: Ipv4Addr::new(192, 0, 2, 1),
        mac: mac.into(),
        v6: None,
    }
}

/// net3 of 100.conf: `hwaddr=BC:24:11:4D:B0:FE,ip=192.0.2.10/24,firewall=1`.
fn net3(ip: &str) -> GuestSpec {
    nic("veth100i3", ip, "bc:24:11:4d:b0:fe")
}

/// The lab with `guests`, each having pinged once before the firewall is
/// loaded (the host's neighbour and bridge tables know them, and each guest
/// knows its gateway's MAC), then Proxmox's rule set. None (with the reason
/// printed) when this kernel cannot hold the rule set.
fn lab_with_proxmox_firewall(guests: Vec<GuestSpec>, output: Output) -> Option<Lab> {
    let snapshot = output.file("integration_tests__firewall.snap");
    if !snapshot.is_file() {
        eprintln!(
            "skipped: Proxmox's generated rule set is not in {} (set PATHTRACE_GENERATED_RULESETS)",
            snapshot.display()
        );
        return None;
    }
    let mut opts = LabOptions::new(fake_guest_bin());
    let n = guests.len();
    opts.guests = guests;
    let mut lab = Lab::up(opts).expect("lab up");
    let one = PingOpts {
        count: 1,
        ..PingOpts::default()
    };
    for i in 0..n {
        lab.guest(i)
            .ping(DEST.parse::<IpAddr>().unwrap(), one)
            .expect("guest pings before the firewall");
    }
    if let Err(e) = lab.nft(BRIDGE_FIREWALL_PROBE) {
        eprintln!(
            "SKIPPED: this kernel cannot hold Proxmox's nftables firewall: it needs bridge \
             conntrack (nf_conntrack_bridge), bridge reject (nft_reject_bridge) and bridge \
             meta (nft_meta_bridge); run it on Debian's 6.12: cargo xtask vm-test --kernel \
             6.12 --test real_rulesets ({e})"
        );
        return None;
    }
    load_proxmox_firewall(&lab, &snapshot).expect("Proxmox's rule set loads unchanged");
    // Where `--config-root` finds the guest's firewall configuration.
    let fw = lab.config_root().join("etc/pve/firewall");
    std::fs::create_dir_all(&fw).unwrap();
    std::fs::copy(output.file("100.fw"), fw.join("100.fw")).unwrap();
    Some(lab)
}

/// What the rule set needs from the kernel beyond plain nftables, in one
/// transaction that leaves nothing behind: the kernel lacking any of it is a
/// reason to skip; any other failure to load the rule set is a failure.
const BRIDGE_FIREWALL_PROBE: &str = "add table bridge pt-probe
add chain bridge pt-probe c
add rule bridge pt-probe c ct state established accept
add rule bridge pt-probe c meta ibrname \"vmbr0\" accept
add rule bridge pt-probe c reject with icmpx type port-unreachable
delete table bridge pt-probe
";

/// As proxmox-firewall does: its static rule set first, then the generated
/// batch. The chains the generator was told exist (chains.json, its test's
/// input) are created before, since its batch deletes some of them.
fn load_proxmox_firewall(lab: &Lab, snapshot: &std::path::Path) -> anyhow::Result<()> {
    let base = std::fs::read_to_string(fixture("proxmox-firewall.nft"))?;
    lab.nft(&base)?;
    let chains: Value = serde_json::from_str(&std::fs::read_to_string(fixture("chains.json"))?)?;
    let existing: String = chains["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item.get("chain"))
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            format!("add chain {} {} {}\n", s("family"), s("table"), s("name"))
        })
        .collect();
    lab.nft(&existing)?;
    let snap = std::fs::read_to_string(snapshot)?;
    // insta's header, then the batch as the generator emitted it.
    let batch = &snap[snap.find("{\n").unwrap_or(0)..];
    lab.nft_json(batch)
}

fn trace(lab: &mut Lab, guest: usize, vm_ip: &str) -> TraceRun {
    trace_pings_with_config(lab, guest, vm_ip, DEST)
}

fn one_verdict(run: &TraceRun) -> Value {
    let v = run.verdicts();
    assert!(!v.is_empty(), "a verdict");
    v[0].clone()
}

fn text(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_string()
}

/// net2 (no firewall) replies; net3's ping meets policy_out REJECT in the bridge
/// family's prerouting hook, reached through `iifname vmap @vm-map-out`.
#[test]
fn proxmox_nft_policy_reject_and_allowed_guest() {
    let guests = vec![
        net3("192.0.2.10"),
        // net2 of 100.conf: `hwaddr=BC:24:11:4D:B0:FF`, no firewall=1 (its
        // address there is DHCP; the lab's LAN gives it one).
        nic("veth100i2", "192.0.2.12", "bc:24:11:4d:b0:ff"),
    ];
    let Some(mut lab) = lab_with_proxmox_firewall(guests, Output::Committed) else {
        return;
    };
    let allowed = trace(&mut lab, 1, "192.0.2.12");
    assert_eq!(allowed.code, 0, "net2 has no firewall: replied");
    assert_eq!(one_verdict(&allowed)["verdict"], "replied");

    let run = trace(&mut lab, 0, "192.0.2.10");
    assert_eq!(run.code, 1);
    let v = one_verdict(&run);
    assert_eq!(v["verdict"], "dropped");
    assert_eq!(v["direction"], "request");
    assert_eq!(
        v["stage"], "bridge",
        "a bridge-family hook, not IP prerouting"
    );
    assert_eq!(v["ifname"], "veth100i3");
    let rule = text(&v, "rule");
    assert!(
        rule.starts_with("bridge proxmox-firewall-guests do-reject handle "),
        "{rule}"
    );
    assert!(
        rule.contains("vm-out → vm-map-out[veth100i3] → guest-100-out → do-reject"),
        "{rule}"
    );
    let hint = text(&v, "hint");
    assert!(hint.contains("policy_out"), "{hint}");
    assert!(hint.contains("100.fw"), "{hint}");
}

/// net3 sending from 192.0.2.11, outside its ipfilter-net3 set (192.0.2.10):
/// the IP filter's rule in guest-100-out drops it.
#[test]
fn proxmox_nft_ip_filter_drop() {
    let Some(mut lab) = lab_with_proxmox_firewall(vec![net3("192.0.2.11")], Output::Committed)
    else {
        return;
    };
    let run = trace(&mut lab, 0, "192.0.2.11");
    assert_eq!(run.code, 1);
    let v = one_verdict(&run);
    assert_eq!(v["verdict"], "dropped");
    assert_eq!(v["stage"], "bridge");
    let rule = text(&v, "rule");
    assert!(
        rule.starts_with("bridge proxmox-firewall-guests guest-100-out handle "),
        "{rule}"
    );
    assert!(rule.contains("@v4-guest-100/ipfilter-net3"), "{rule}");
    assert!(
        rule.contains("vm-out → vm-map-out[veth100i3] → guest-100-out"),
        "{rule}"
    );
    let hint = text(&v, "hint");
    assert!(hint.contains("ipfilter-net3"), "{hint}");
    assert!(hint.contains("192.0.2.11"), "{hint}");
}

/// The `spoof_filter` check among `run`'s JSON lines.
fn spoof_check(run: &TraceRun) -> Value {
    run.check("spoof_filter")
}

/// The IP filter drops ARP from 192.0.2.11 too (handle 234): a guest that has
/// not resolved its gateway sends no IP packet at all. The trace sees no
/// request, and the checks it prints then name the rule that keeps the guest
/// mute; so does the doctor.
#[test]
fn proxmox_nft_ip_filter_drops_the_guests_arp() {
    let Some(mut lab) = lab_with_proxmox_firewall(vec![net3("192.0.2.11")], Output::Committed)
    else {
        return;
    };
    let root = lab.config_root().display().to_string();
    let args = [
        "--vm-ip",
        "192.0.2.11",
        "--to",
        DEST,
        "--count",
        "1",
        "--timeout",
        "3",
        "--json",
        "--config-root",
        &root,
    ];
    // The guest sends nothing (as one whose ARP goes unanswered).
    let run =
        trace_while(&mut lab, &args, Duration::from_secs(20), |_| Ok(())).expect("pathtrace runs");
    eprintln!("--- stdout\n{}--- stderr\n{}", run.stdout, run.stderr);
    assert_eq!(run.code, 1);
    assert!(run.verdicts().is_empty());
    assert_eq!(run.summary().unwrap()["probes"], 0);
    let c = spoof_check(&run);
    assert_eq!(c["status"], "fail");
    assert_eq!(c["subject"], "veth100i3");
    let evidence = text(&c, "evidence");
    // The handle is the kernel's (load order), not the fixture listing's 234.
    assert!(
        evidence.starts_with("bridge proxmox-firewall-guests guest-100-out handle "),
        "{evidence}"
    );
    assert!(
        evidence.contains(
            ": iifname \"veth100i3\" arp saddr ip != @v4-guest-100/ipfilter-net3 drop \
             (via vm-out → vm-map-out[veth100i3] → guest-100-out)"
        ),
        "{evidence}"
    );
    assert!(
        evidence.contains(
            "drops the guest's ARP for its gateway 192.0.2.1 from 192.0.2.11 (bc:24:11:4d:b0:fe)"
        ),
        "{evidence}"
    );
    let fix = text(&c, "fix");
    assert!(
        fix.contains("IP filter of net3 (veth100i3): ARP from 192.0.2.11 is not in ipfilter-net3 (192.0.2.10)"),
        "{fix}"
    );
    assert!(fix.contains("/etc/pve/firewall/100.fw"), "{fix}");

    let doctor = doctor_with_config(&lab, "192.0.2.11", DEST);
    let c = spoof_check(&doctor);
    assert_eq!(c["status"], "fail");
    assert!(text(&c, "evidence").contains("arp saddr ip != @v4-guest-100/ipfilter-net3 drop"));
}

/// The guest with its configured address: its ARP passes the IP filter (its
/// ping meets policy_out REJECT, which the trace names; no spoofing rule).
#[test]
fn proxmox_nft_spoof_filter_passes_the_configured_guest() {
    let Some(lab) = lab_with_proxmox_firewall(vec![net3("192.0.2.10")], Output::Committed) else {
        return;
    };
    let doctor = doctor_with_config(&lab, "192.0.2.10", DEST);
    let c = spoof_check(&doctor);
    assert_eq!(c["status"], "pass", "{c}");
}

/// With the MAC filter on (`macfilter: 1`, Proxmox's default), net3 sending
/// from a MAC other than its configured BC:24:11:4D:B0:FE (its OS set its own:
/// the host learnt that MAC before the firewall came up) has its ping dropped
/// by the filter's rule in guest-100-out; the doctor's `spoof_filter` finds the
/// rule's ARP twin for the guest's ARP.
#[test]
fn proxmox_nft_mac_filter_drop() {
    const SENT: &str = "bc:24:11:4d:b0:aa";
    let guest = nic("veth100i3", "192.0.2.10", SENT);
    let Some(mut lab) = lab_with_proxmox_firewall(vec![guest], Output::MacFilter) else {
        return;
    };
    let run = trace(&mut lab, 0, "192.0.2.10");
    assert_eq!(run.code, 1);
    let v = one_verdict(&run);
    assert_eq!(v["verdict"], "dropped");
    assert_eq!(v["direction"], "request");
    assert_eq!(v["stage"], "bridge");
    let rule = text(&v, "rule");
    assert!(
        rule.starts_with("bridge proxmox-firewall-guests guest-100-out handle "),
        "{rule}"
    );
    assert!(
        rule.contains(": iifname . ether saddr != { \"veth100i3\" . bc:24:11:4d:b0:fe"),
        "{rule}"
    );
    let hint = text(&v, "hint");
    assert!(
        hint.starts_with(&format!(
            "guest 100's firewall, MAC filter of net3 (veth100i3): the guest sends from \
             {SENT}, but only bc:24:11:4d:b0:fe may send there"
        )),
        "{hint}"
    );
    assert!(
        hint.contains("macfilter: 0 in /etc/pve/firewall/100.fw"),
        "{hint}"
    );

    let doctor = doctor_with_config(&lab, "192.0.2.10", DEST);
    let c = spoof_check(&doctor);
    assert_eq!(c["status"], "fail", "{c}");
    // The filter's first rule (on the frame's source) drops the ARP too,
    // before its twin on ARP's sender MAC is reached.
    let evidence = text(&c, "evidence");
    assert!(
        evidence.contains(": iifname . ether saddr != { \"veth100i3\" . bc:24:11:4d:b0:fe"),
        "{evidence}"
    );
    assert!(
        evidence.contains(&format!(
            "drops the guest's ARP for its gateway 192.0.2.1 from 192.0.2.10 ({SENT})"
        )),
        "{evidence}"
    );
    let fix = text(&c, "fix");
    assert!(
        fix.contains(&format!(
            "MAC filter of net3 (veth100i3): the guest sends from {SENT}"
        )),
        "{fix}"
    );
}
