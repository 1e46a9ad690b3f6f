//! The lab itself, in each hypervisor layout (plain, Proxmox with its firewall
//! bridges, libvirt): the guest reaches the internet, each planted fault breaks what
//! it should, and its repair makes the path work again. No pathtrace here; this is
//! what the `doctor` tests will stand on. Needs root (CI runs it as root).

use std::{net::Ipv4Addr, path::PathBuf, time::Instant};

use pathtrace_tests::lab::{Fault, Lab, LabOptions, Layout, PingOpts};

const DEST: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 8);
const HOST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

/// `FAKE_GUEST_BIN` as the other end-to-end tests (CI sets it to the release
/// build), else the binary cargo built for this very test run.
fn fake_guest_bin() -> PathBuf {
    std::env::var_os("FAKE_GUEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_fake-guest")))
}

/// Replies to a burst of 3 pings of `size` bytes (DF set) from guest 0. Three, so
/// the one frame a port may drop while it turns forwarding does not count.
fn replies(lab: &mut Lab, size: usize, timeout_ms: u64) -> u32 {
    let opts = PingOpts {
        count: 3,
        interval_ms: 50,
        timeout_ms,
        size,
        ..PingOpts::default()
    };
    lab.guest(0).ping(DEST, opts).expect("guest pings").received
}

fn assert_ping_works(lab: &mut Lab, what: &str) {
    let got = replies(lab, 56, 1000);
    assert!(
        got >= 1,
        "{:?} {what}: ping to {DEST} unanswered",
        lab.layout()
    );
}

fn assert_ping_fails(lab: &mut Lab, size: usize, what: &str) {
    let got = replies(lab, size, 500);
    assert_eq!(
        got,
        0,
        "{:?} {what}: a {size}-byte ping was answered",
        lab.layout()
    );
}

fn dns_answered(lab: &mut Lab) -> u32 {
    let r = lab.guest(0).dns(HOST, "example.com", 1, 500).expect("dns");
    r.answered
}

const BREAKS_PING: [Fault; 6] = [
    Fault::PortDown,
    Fault::PortNoMaster,
    Fault::StpBlocking,
    Fault::RpFilterStrict,
    Fault::GatewayUnreachable,
    Fault::IptablesForwardPolicyDrop,
];

fn run(layout: Layout) {
    let t0 = Instant::now();
    let mut opts = LabOptions::new(fake_guest_bin());
    opts.layout = layout;
    let mut lab = Lab::up(opts).expect("lab comes up");
    let root = lab.config_root();
    check_topology(&lab);
    check_configs(&lab);
    assert_ping_works(&mut lab, "healthy");
    assert_eq!(
        replies(&mut lab, 1472, 1000),
        3,
        "{layout:?}: 1500-byte path"
    );

    for fault in BREAKS_PING {
        lab.break_path(fault)
            .unwrap_or_else(|e| panic!("{fault:?}: {e:#}"));
        assert_ping_fails(&mut lab, 56, &format!("{fault:?}"));
        lab.repair(fault)
            .unwrap_or_else(|e| panic!("repair {fault:?}: {e:#}"));
        assert_ping_works(&mut lab, &format!("after {fault:?}"));
    }

    lab.break_path(Fault::MtuMismatch).unwrap();
    assert_ping_fails(&mut lab, 1472, "MtuMismatch");
    assert_ping_works(&mut lab, "MtuMismatch, small packets");
    lab.repair(Fault::MtuMismatch).unwrap();
    assert_eq!(
        replies(&mut lab, 1472, 1000),
        3,
        "{layout:?}: after MtuMismatch"
    );

    lab.start_host_resolver().unwrap();
    assert_eq!(dns_answered(&mut lab), 1, "{layout:?}: host resolver");
    lab.break_path(Fault::NoResolver).unwrap();
    assert_eq!(dns_answered(&mut lab), 0, "{layout:?}: NoResolver");
    lab.repair(Fault::NoResolver).unwrap();
    assert_eq!(dns_answered(&mut lab), 1, "{layout:?}: after NoResolver");

    lab.break_path(Fault::DuplicateIp).unwrap();
    check_duplicate(&lab);
    lab.repair(Fault::DuplicateIp).unwrap();
    assert!(lab.hv("ip link show dev tap199i0").is_err());
    assert!(lab.hv("ip link show dev vnet99").is_err());
    assert!(lab.hv("ip link show dev fwbr199i0").is_err());
    assert_ping_works(&mut lab, "after DuplicateIp");

    drop(lab);
    assert!(!root.exists(), "{} left behind", root.display());
    eprintln!("{layout:?}: {:.1} s", t0.elapsed().as_secs_f64());
}

fn master_of(lab: &Lab, dev: &str) -> String {
    let out = lab.hv(&format!("ip -o link show dev {dev}")).unwrap();
    let mut words = out.split_whitespace();
    words.find(|w| *w == "master");
    words.next().unwrap_or_default().to_string()
}

fn check_topology(lab: &Lab) {
    let (br, tap) = (lab.bridge(), lab.port(0).to_string());
    match lab.layout() {
        Layout::Plain => {
            assert_eq!((br, tap.as_str()), ("vmbr0", "tap100i0"));
            assert_eq!(master_of(lab, &tap), "vmbr0");
        }
        Layout::Proxmox => {
            assert_eq!((br, tap.as_str()), ("vmbr0", "tap100i0"));
            assert_eq!(master_of(lab, &tap), "fwbr100i0");
            assert_eq!(lab.port_bridge(0), "fwbr100i0");
            assert_eq!(master_of(lab, "fwln100i0"), "fwbr100i0");
            assert_eq!(master_of(lab, "fwpr100p0"), "vmbr0");
            let fwbr = lab.hv("ip -d link show dev fwbr100i0").unwrap();
            assert!(fwbr.contains("stp_state 0") && fwbr.contains("forward_delay 0"));
        }
        Layout::Libvirt => {
            assert_eq!((br, tap.as_str()), ("virbr0", "vnet0"));
            assert_eq!(master_of(lab, &tap), "virbr0");
            assert!(lab.hv("ip link show dev vmbr0").is_err());
        }
        Layout::Bridged => {
            assert_eq!((br, tap.as_str()), ("vmbr0", "tap100i0"));
            assert_eq!(master_of(lab, &tap), "vmbr0");
            assert_eq!(master_of(lab, "eno1"), "vmbr0");
            // The router is on the LAN; the host holds another address there.
            assert!(lab
                .inet("ip -4 addr show dev lan0")
                .unwrap()
                .contains("192.0.2.1/24"));
        }
    }
    let host_addr = match lab.layout() {
        Layout::Bridged => "192.0.2.2/24",
        _ => "192.0.2.1/24",
    };
    assert!(lab
        .hv(&format!("ip -4 addr show dev {br}"))
        .unwrap()
        .contains(host_addr));
}

fn check_configs(lab: &Lab) {
    let root = lab.config_root();
    let mac = lab.guest_spec(0).mac.clone();
    match lab.layout() {
        Layout::Plain | Layout::Bridged => {}
        Layout::Proxmox => {
            let conf = std::fs::read_to_string(root.join("etc/pve/qemu-server/100.conf")).unwrap();
            assert!(conf.contains("name: guest0\n"), "{conf}");
            assert!(
                conf.contains(&format!(
                    "net0: virtio={},bridge=vmbr0,firewall=1\n",
                    mac.to_uppercase()
                )),
                "{conf}"
            );
            assert!(
                conf.contains(
                    "ipconfig0: ip=192.0.2.100/24,gw=192.0.2.1,\
                     ip6=2001:db8:1::100/64,gw6=2001:db8:1::1\n"
                ),
                "{conf}"
            );
        }
        Layout::Libvirt => {
            let dom = std::fs::read_to_string(root.join("run/libvirt/qemu/guest0.xml")).unwrap();
            for want in [
                "<name>guest0</name>".to_string(),
                format!("<mac address='{mac}'/>"),
                "<source network='default' bridge='virbr0'/>".into(),
                "<target dev='vnet0'/>".into(),
            ] {
                assert!(dom.contains(&want), "{want} in {dom}");
            }
            let net =
                std::fs::read_to_string(root.join("run/libvirt/network/default.xml")).unwrap();
            assert!(net.contains("<bridge name='virbr0'"), "{net}");
            assert!(
                net.contains(&format!(
                    "<host mac='{mac}' name='guest0' ip='192.0.2.100'/>"
                )),
                "{net}"
            );
            assert!(
                net.contains("<ip family='ipv6' address='2001:db8:1::1' prefix='64'>")
                    && net.contains("<host name='guest0' ip='2001:db8:1::100'/>"),
                "{net}"
            );
        }
    }
}

fn check_duplicate(lab: &Lab) {
    let (tap, master) = match lab.layout() {
        Layout::Plain | Layout::Bridged => ("tap199i0", "vmbr0"),
        Layout::Proxmox => ("tap199i0", "fwbr199i0"),
        Layout::Libvirt => ("vnet99", "virbr0"),
    };
    assert_eq!(master_of(lab, tap), master);
    let root = lab.config_root();
    match lab.layout() {
        Layout::Plain | Layout::Bridged => {}
        Layout::Proxmox => {
            let conf = std::fs::read_to_string(root.join("etc/pve/qemu-server/199.conf")).unwrap();
            assert!(conf.contains("ipconfig0: ip=192.0.2.100/24"), "{conf}");
        }
        Layout::Libvirt => {
            let dom = std::fs::read_to_string(root.join("run/libvirt/qemu/guest99.xml")).unwrap();
            assert!(dom.contains("<target dev='vnet99'/>"), "{dom}");
        }
    }
}

#[test]
fn plain_layout_and_its_faults() {
    run(Layout::Plain);
}

#[test]
fn proxmox_layout_and_its_faults() {
    run(Layout::Proxmox);
}

#[test]
fn libvirt_layout_and_its_faults() {
    run(Layout::Libvirt);
}
