//! libvirt's `clean-traffic` network filter, instantiated by libvirt itself on
//! the lab's port (see `lab/nwfilter.rs`: libvirtd in the hypervisor namespace
//! and a private mount namespace, the filters Debian packages, unchanged): a
//! guest sending from another address than its filter's `IP` parameter, or
//! from another MAC than its NIC's, is dropped in the bridge family's
//! prerouting hook (ebtables-nft's `bridge nat` table). The trace names the
//! rule, what the filter allows against what the guest sends, and the fix in
//! libvirt's terms; the doctor's `spoof_filter` check says the same. An honest
//! guest passes. Needs root, eBPF and libvirt (installed by `cargo xtask setup`).

use pathtrace_tests::{
    lab::{libvirt_missing, Filterref, GuestSpec, Lab, LabOptions, Layout, PingOpts},
    tracerun::{doctor_with_config, fake_guest_bin, trace_pings_with_config, TraceRun},
};
use serde_json::Value;

const DEST: &str = "203.0.113.8";

/// The libvirt lab with guest 0 (vnet0), having pinged once before the
/// filter (the host's neighbour and bridge tables know it, it knows its
/// gateway's MAC), then `clean-traffic` instantiated by libvirt on its port
/// as `nic` describes the NIC (its domain's MAC and the filter's IP). None,
/// with the reason printed, when libvirt is not installed.
fn lab_with_clean_traffic(guest: GuestSpec, nic: impl FnOnce(&mut Filterref)) -> Option<Lab> {
    if let Some(why) = libvirt_missing() {
        eprintln!("SKIPPED: {why}");
        return None;
    }
    let mut opts = LabOptions::new(fake_guest_bin());
    opts.layout = Layout::Libvirt;
    opts.guests = vec![guest];
    let mut lab = Lab::up(opts).expect("lab up");
    lab.guest(0)
        .ping(
            DEST.parse::<std::net::IpAddr>().unwrap(),
            PingOpts::default(),
        )
        .expect("guest pings before its filter");
    let mut f = Filterref::of(lab.guest_spec(0), "clean-traffic");
    nic(&mut f);
    let state = lab
        .libvirt_nwfilter(f)
        .expect("libvirt instantiates clean-traffic");
    eprintln!(
        "--- libvirt's binding\n{}--- rules\n{}",
        std::fs::read_to_string(&state).unwrap_or_default(),
        lab.hv("nft -a list table bridge nat").unwrap_or_default()
    );
    Some(lab)
}

fn trace(lab: &mut Lab, vm_ip: &str) -> TraceRun {
    trace_pings_with_config(lab, 0, vm_ip, DEST)
}

fn doctor(lab: &Lab, vm_ip: &str) -> TraceRun {
    doctor_with_config(lab, vm_ip, DEST)
}

fn spoof_check(run: &TraceRun) -> Value {
    run.check("spoof_filter")
}

fn text(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_string()
}

/// The guest as its domain and filter describe it: replies come back.
#[test]
fn clean_traffic_passes_the_configured_guest() {
    let Some(mut lab) = lab_with_clean_traffic(GuestSpec::nth(0), |_| {}) else {
        return;
    };
    let vm = lab.guest_spec(0).ip.to_string();
    let run = trace(&mut lab, &vm);
    assert_eq!(run.code, 0);
    assert_eq!(run.verdicts()[0]["verdict"], "replied");
    let c = spoof_check(&doctor(&lab, &vm));
    assert_eq!(c["status"], "pass", "{c}");
}

/// The verdict of `run`: dropped at the bridge on vnet0 by `chain` of
/// libvirt's rules for vnet0 (reached from PREROUTING through libvirt-I-vnet0),
/// with the hint naming the binding.
fn assert_dropped_by(run: &TraceRun, chain: &str) -> String {
    assert_eq!(run.code, 1);
    let v = &run.verdicts()[0];
    assert_eq!(v["verdict"], "dropped");
    assert_eq!(v["direction"], "request");
    assert_eq!(v["stage"], "bridge");
    assert_eq!(v["ifname"], "vnet0");
    assert_eq!(v["reason"], "NETFILTER_DROP");
    let rule = text(v, "rule");
    assert!(
        rule.starts_with(&format!("bridge nat {chain} handle ")),
        "{rule}"
    );
    assert!(
        rule.ends_with(&format!(
            ": counter drop (via PREROUTING → libvirt-I-vnet0 → {chain})"
        )),
        "{rule}"
    );
    let hint = text(v, "hint");
    assert!(
        hint.starts_with("libvirt's nwfilter clean-traffic on vnet0 (domain guest0; "),
        "{hint}"
    );
    assert!(
        hint.contains("run/libvirt/nwfilter-binding/vnet0.xml)"),
        "{hint}"
    );
    assert!(
        hint.ends_with("an ebtables or nft edit is undone"),
        "{hint}"
    );
    hint
}

/// The guest sends from 192.0.2.101; its filter's IP parameter is 192.0.2.100:
/// no-ip-spoofing drops its packets, and its ARP too (the doctor says so).
#[test]
fn clean_traffic_drops_a_spoofed_source() {
    let mut guest = GuestSpec::nth(0);
    guest.ip = "192.0.2.101".parse().unwrap();
    let Some(mut lab) = lab_with_clean_traffic(guest, |f| f.ip = "192.0.2.100".parse().unwrap())
    else {
        return;
    };
    let run = trace(&mut lab, "192.0.2.101");
    let hint = assert_dropped_by(&run, "I-vnet0-ipv4-ip");
    assert!(
        hint.contains(
            "lets vnet0 send IPv4 only from 192.0.2.100, its IP parameter (no-ip-spoofing), \
             and the guest's request comes from 192.0.2.101: I-vnet0-ipv4-ip drops it"
        ),
        "{hint}"
    );
    assert!(
        hint.contains("Make the guest send from 192.0.2.100"),
        "{hint}"
    );
    assert!(
        hint.contains(
            "virsh edit guest0: <filterref filter='clean-traffic'><parameter name='IP' \
             value='192.0.2.101'/></filterref>"
        ),
        "{hint}"
    );

    let c = spoof_check(&doctor(&lab, "192.0.2.101"));
    assert_eq!(c["status"], "fail");
    assert_eq!(c["subject"], "vnet0");
    let evidence = text(&c, "evidence");
    assert!(
        evidence.starts_with("bridge nat I-vnet0-arp-ip handle "),
        "{evidence}"
    );
    assert!(
        evidence.contains(
            "drops the guest's ARP for its gateway 192.0.2.1 from 192.0.2.101 \
             (52:54:00:"
        ),
        "{evidence}"
    );
    let fix = text(&c, "fix");
    assert!(
        fix.contains(
            "lets vnet0 send ARP only from 192.0.2.100, its IP parameter (no-arp-ip-spoofing)"
        ),
        "{fix}"
    );
}

/// The guest changed its MAC: its domain gives the NIC 52:54:00:00:00:aa, the
/// guest sends from its own. no-mac-spoofing drops everything it sends.
#[test]
fn clean_traffic_drops_a_changed_mac() {
    let Some(mut lab) =
        lab_with_clean_traffic(GuestSpec::nth(0), |f| f.mac = "52:54:00:00:00:aa".into())
    else {
        return;
    };
    let (vm, mac) = (
        lab.guest_spec(0).ip.to_string(),
        lab.guest_spec(0).mac.clone(),
    );
    let run = trace(&mut lab, &vm);
    let hint = assert_dropped_by(&run, "I-vnet0-mac");
    assert!(
        hint.contains(&format!(
            "lets vnet0 send only from MAC 52:54:00:00:00:aa (no-mac-spoofing: the NIC's \
             <mac address='52:54:00:00:00:aa'/>), and the guest's request comes from {mac}: \
             I-vnet0-mac drops its frames"
        )),
        "{hint}"
    );
    assert!(
        hint.contains("ip link set dev eth0 address 52:54:00:00:00:aa"),
        "{hint}"
    );
    assert!(hint.contains(&format!("<mac address='{mac}'/>")), "{hint}");

    let c = spoof_check(&doctor(&lab, &vm));
    assert_eq!(c["status"], "fail");
    let evidence = text(&c, "evidence");
    assert!(
        evidence.starts_with("bridge nat I-vnet0-mac handle "),
        "{evidence}"
    );
    assert!(text(&c, "fix").contains("no-mac-spoofing"), "{c}");

    // A host that knew the guest before it changed its MAC: its neighbour
    // entry holds the NIC's MAC, and the bridge never learned the new one
    // (the filter drops the frames before the bridge learns). The frame, as
    // the host knows the guest, would pass: the trace replays it without
    // assuming the MAC and names the MAC rule.
    lab.hv(&format!(
        "ip neigh replace {vm} lladdr 52:54:00:00:00:aa dev virbr0 nud stale && \
         bridge fdb del {mac} dev vnet0 master"
    ))
    .unwrap();
    let run = trace(&mut lab, &vm);
    let hint = assert_dropped_by(&run, "I-vnet0-mac");
    assert!(
        hint.contains(
            "lets vnet0 send only from MAC 52:54:00:00:00:aa (no-mac-spoofing: the NIC's \
             <mac address='52:54:00:00:00:aa'/>), and the guest's request comes from \
             another MAC: I-vnet0-mac drops its frames"
        ),
        "{hint}"
    );
}
