//! Watch counts a guest's DHCP and ARP drops on its VM, though the guest may
//! have no address: tied to it by its MAC.

use std::time::Duration;

use pathtrace_tests::{
    lab::{Lab, LabOptions},
    tracerun::fake_guest_bin,
    watchrun::{drops, WatchRun},
};
use serde_json::Value;

const PORT: &str = "tap100i0";
const WAIT: Duration = Duration::from_secs(15);

fn drop_of(snapshot: &Value, proto: &str) -> Option<Value> {
    drops(snapshot, PORT)
        .into_iter()
        .find(|d| d["proto"] == proto)
}

#[test]
fn dhcp_and_arp_drops_are_the_guests() {
    let mut lab = Lab::up(LabOptions::new(fake_guest_bin())).unwrap();
    lab.start_dhcp_server("vmbr0", &[]).unwrap();
    let mut watch = WatchRun::start(&lab, &["--interval", "0.5"]).unwrap();
    watch
        .wait_for(WAIT, |v| v["type"] == "port" && v["port"] == PORT)
        .unwrap();

    // The host's INPUT drops the guest's DISCOVER (from 0.0.0.0).
    lab.hv("iptables -A INPUT -i vmbr0 -p udp --dport 67 -j DROP")
        .unwrap();
    let got = lab.guest(0).dhcp(1000).unwrap();
    assert!(got["offered"].is_null(), "{got}");
    let snap = watch
        .wait_for(WAIT, |v| drop_of(v, "dhcp").is_some())
        .unwrap();
    let d = drop_of(&snap, "dhcp").unwrap();
    assert_eq!(d["direction"], "from_vm", "{d}");
    assert_eq!(d["reason"], "NETFILTER_DROP", "{d}");
    assert_eq!(d["stage"], "input", "{d}");
    assert_eq!(d["example"]["src"], "0.0.0.0", "{d}");
    assert_eq!(d["example"]["dport"], 67, "{d}");

    // A bridge-family rule drops the guest's who-has on its way to the host.
    lab.nft(
        "add table bridge pt_arp\n\
         add chain bridge pt_arp in { type filter hook input priority 0; policy accept; }\n\
         add rule bridge pt_arp in ether type arp drop\n",
    )
    .unwrap();
    let got = lab.guest(0).arp("192.0.2.1".parse().unwrap(), 500).unwrap();
    assert_eq!(got["answered"], false, "{got}");
    let snap = watch
        .wait_for(WAIT, |v| drop_of(v, "arp").is_some())
        .unwrap();
    let d = drop_of(&snap, "arp").unwrap();
    assert_eq!(d["reason"], "NETFILTER_DROP", "{d}");
    eprintln!("{snap:#}");
    assert_eq!(watch.stop().unwrap(), 0, "{}", watch.stderr());
}
