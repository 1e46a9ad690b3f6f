use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;

use super::*;
use std::collections::HashMap;

/// A fresh directory under the system temp dir, removed when dropped (also when
/// the test fails).
struct TempRoot(PathBuf);

impl TempRoot {
    fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "pathtrace-hostconfig-{}-{tag}-{n}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    /// Write `text` at the absolute host path `abs`, re-rooted here.
    fn write(&self, abs: &str, text: &str) {
        let path = self.0.join(abs.trim_start_matches('/'));
        fs::create_dir_all(path.parent().expect("has parent")).expect("mkdir");
        fs::write(path, text).expect("write fixture");
    }

    fn dirs(&self) -> ConfigDirs {
        ConfigDirs::under(&self.0)
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

// A qemu VM: two NICs (one behind the firewall, one tagged), cloud-init for
// both, a description comment, odd whitespace and an upper-case MAC, and a
// snapshot whose NICs are not the VM's current ones.
const QEMU_105: &str = "\
#web server%3A frontend
boot: order=scsi0;net0
cores: 2
ipconfig0: ip=192.0.2.5/24,gw=192.0.2.1,ip6=2001:db8:1::5/64,gw6=2001:db8:1::1
ipconfig1:ip=dhcp,ip6=auto
memory: 2048
name: web01
net0: virtio=BC:24:11:AA:BB:CC,bridge=vmbr0,firewall=1
  net1 :  e1000=bc:24:11:00:00:01 , bridge=vmbr1,tag=20
ostype: l26
parent: before-upgrade
scsi0: local-lvm:vm-105-disk-0,size=32G
smbios1: uuid=6f1c0a6e-2d55-4d6a-9a57-0c7d2f1d3a11
vmgenid: 4b1b2c3d-1111-2222-3333-444455556666

[before-upgrade]
ipconfig0: ip=192.0.2.99/24
name: web01
net0: virtio=BC:24:11:AA:BB:CC,bridge=vmbr9
net2: virtio=BC:24:11:DE:AD:00,bridge=vmbr0
snaptime: 1700000000
";

const LXC_200: &str = "\
arch: amd64
cores: 1
hostname: dns01
memory: 512
net0: name=eth0,bridge=vmbr0,firewall=1,gw=192.0.2.1,hwaddr=BC:24:11:12:34:56,ip=192.0.2.7/24,ip6=2001:db8:1::7/64,type=veth
net1: name=eth1,bridge=vmbr1,hwaddr=BC:24:11:12:34:57,ip=dhcp,ip6=auto,tag=30,type=veth
ostype: debian
rootfs: local-lvm:vm-200-disk-0,size=8G
unprivileged: 1
";

// /run/libvirt/qemu/app.xml: the running state wraps the live domain XML.
const APP_RUNNING: &str = "\
<!--
WARNING: THIS IS AN AUTO-GENERATED FILE. CHANGES TO IT ARE LIKELY TO BE
OVERWRITTEN AND LOST.
-->
<domstatus state='running' reason='booted' pid='4242'>
  <taint flag='high-privileges'/>
  <monitor path='/var/lib/libvirt/qemu/domain-3-app/monitor.sock' type='unix'/>
  <domain type='kvm' id='3'>
<name>app</name>
<uuid>0b5e7c1e-8f7a-4c55-9b0e-2f6e8d1c9a01</uuid>
<memory unit='KiB'>2097152</memory>
<devices>
  <emulator>/usr/bin/qemu-system-x86_64</emulator>
  <interface type='network'>
    <mac address='52:54:00:6B:3C:01'/>
    <source network='default' portid='a1b2c3d4-0000-1111-2222-333344445555' bridge='virbr0'/>
    <target dev='vnet3'/>
    <model type='virtio'/>
    <alias name='net0'/>
    <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
  </interface>
  <interface type='bridge'>
    <mac address='52:54:00:6b:3c:02'/>
    <source bridge='br0'/>
    <vlan>
      <tag id='42'/>
    </vlan>
    <target dev='vnet4'/>
    <model type='virtio'/>
    <alias name='net1'/>
  </interface>
</devices>
  </domain>
</domstatus>
";

// /etc/libvirt/qemu/app.xml: the same domain's definition, no target devs.
const APP_PERSISTENT: &str = "\
<!--
WARNING: THIS IS AN AUTO-GENERATED FILE. CHANGES TO IT ARE LIKELY TO BE
OVERWRITTEN AND LOST. Changes to this xml configuration should be made using:
  virsh edit app
-->
<domain type='kvm'>
  <name>app</name>
  <uuid>0b5e7c1e-8f7a-4c55-9b0e-2f6e8d1c9a01</uuid>
  <devices>
<interface type='network'>
  <mac address='52:54:00:6b:3c:01'/>
  <source network='default'/>
  <model type='virtio'/>
</interface>
<interface type='bridge'>
  <mac address='52:54:00:6b:3c:02'/>
  <source bridge='br0'/>
  <vlan><tag id='42'/></vlan>
  <model type='virtio'/>
</interface>
  </devices>
</domain>
";

// A defined but stopped domain on the default network, and a trunk NIC.
const DB_PERSISTENT: &str = "\
<domain type='kvm'>
  <name>db</name>
  <devices>
<interface type='network'>
  <mac address='52:54:00:aa:00:01'/>
  <source network='default'/>
</interface>
<interface type='bridge'>
  <mac address='52:54:00:aa:00:02'/>
  <source bridge='br0'/>
  <vlan trunk='yes'><tag id='10'/><tag id='11'/></vlan>
</interface>
  </devices>
</domain>
";

const DEFAULT_NETWORK: &str = "\
<network>
  <name>default</name>
  <uuid>9a05da11-e96b-47f3-8253-a3a482e445f5</uuid>
  <forward mode='nat'/>
  <bridge name='virbr0' stp='on' delay='0'/>
  <mac address='52:54:00:0a:cd:21'/>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
<dhcp>
  <range start='192.168.122.2' end='192.168.122.254'/>
  <host mac='52:54:00:AA:00:01' name='db' ip='192.168.122.20'/>
  <host name='nomac' ip='192.168.122.21'/>
</dhcp>
  </ip>
  <ip family='ipv6' address='fd00::1' prefix='64'>
<dhcp><host id='0:1:0:1:aa' ip='fd00::20'/></dhcp>
  </ip>
</network>
";

// One current lease, one that expired long ago (stale), one with no expiry.
const VIRBR0_STATUS: &str = r#"[
  {
"ip-address": "192.168.122.45",
"mac-address": "52:54:00:6b:3c:01",
"hostname": "app",
"client-id": "01:52:54:00:6b:3c:01",
"expiry-time": 4102444800
  },
  {
"ip-address": "192.168.122.46",
"mac-address": "52:54:00:6b:3c:02",
"hostname": "app",
"expiry-time": 1000000000
  },
  {
"ip-address": "192.168.122.47",
"mac-address": "52:54:00:AA:00:01"
  }
]
"#;

fn host() -> TempRoot {
    let root = TempRoot::new("host");
    root.write("/etc/pve/qemu-server/105.conf", QEMU_105);
    root.write("/etc/pve/lxc/200.conf", LXC_200);
    root.write("/run/libvirt/qemu/app.xml", APP_RUNNING);
    root.write("/etc/libvirt/qemu/app.xml", APP_PERSISTENT);
    root.write("/etc/libvirt/qemu/db.xml", DB_PERSISTENT);
    root.write("/etc/libvirt/qemu/networks/default.xml", DEFAULT_NETWORK);
    root.write("/var/lib/libvirt/dnsmasq/virbr0.status", VIRBR0_STATUS);
    root
}

fn one<'a>(nics: &'a [VmNic], vm: &str, nic: &str) -> &'a VmNic {
    let found: Vec<_> = nics
        .iter()
        .filter(|n| n.vm_id == vm && n.nic == nic)
        .collect();
    assert_eq!(found.len(), 1, "{vm}/{nic} in {nics:#?}");
    found[0]
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("test address")
}

#[test]
fn proxmox_qemu_current_nics_only() {
    let root = host();
    let nics = read_all(&root.dirs());
    let qemu: Vec<_> = nics.iter().filter(|n| n.source == "proxmox-qemu").collect();
    assert_eq!(qemu.len(), 2, "the snapshot's net2 is not a NIC: {qemu:#?}");
    let net0 = one(&nics, "105", "net0");
    assert_eq!(
        *net0,
        VmNic {
            source: "proxmox-qemu",
            vm_id: "105".into(),
            vm_name: Some("web01".into()),
            nic: "net0".into(),
            mac: "bc:24:11:aa:bb:cc".into(),
            port: Some("tap105i0".into()),
            bridge: Some("vmbr0".into()),
            network: None,
            firewall: true,
            vlan: None,
            ips: vec![ip("192.0.2.5")],
            ips6: vec!["2001:db8:1::5".parse().unwrap()],
            config: root.0.join("etc/pve/qemu-server/105.conf"),
        }
    );
    let net1 = one(&nics, "105", "net1");
    assert_eq!(net1.mac, "bc:24:11:00:00:01");
    assert_eq!(net1.port.as_deref(), Some("tap105i1"));
    assert_eq!(net1.bridge.as_deref(), Some("vmbr1"));
    assert_eq!(net1.vlan, Some(20));
    assert!(!net1.firewall);
    assert!(net1.ips.is_empty(), "ip=dhcp is unknown: {:?}", net1.ips);
    assert!(net1.ips6.is_empty(), "ip6=auto is unknown: {:?}", net1.ips6);
}

#[test]
fn proxmox_lxc() {
    let root = host();
    let nics = read_all(&root.dirs());
    let net0 = one(&nics, "200", "net0");
    assert_eq!(net0.source, "proxmox-lxc");
    assert_eq!(net0.vm_name.as_deref(), Some("dns01"));
    assert_eq!(net0.mac, "bc:24:11:12:34:56");
    assert_eq!(net0.port.as_deref(), Some("veth200i0"));
    assert_eq!(net0.bridge.as_deref(), Some("vmbr0"));
    assert!(net0.firewall);
    assert_eq!(net0.ips, vec![ip("192.0.2.7")]);
    assert_eq!(
        net0.ips6,
        vec!["2001:db8:1::7".parse::<std::net::Ipv6Addr>().unwrap()]
    );
    let net1 = one(&nics, "200", "net1");
    assert_eq!(net1.port.as_deref(), Some("veth200i1"));
    assert_eq!(net1.vlan, Some(30));
    assert!(net1.ips.is_empty());
    assert!(net1.ips6.is_empty());
}

#[test]
fn proxmox_mac_spellings() {
    let path = Path::new("x.conf");
    let nics = proxmox_nics(
        ProxmoxKind::Qemu,
        "7",
        "net0: model=virtio,macaddr=0A-0B-0C-0D-0E-0F,bridge=vmbr0\n\
         net1: vmxnet3=1:2:3:4:5:6\n\
         net2: virtio,bridge=vmbr0\n\
         net10: rtl8139=AA:BB:CC:DD:EE:FF,link_down=1\n\
         netx: virtio=AA:BB:CC:DD:EE:00\n",
        path,
    );
    let got: Vec<_> = nics
        .iter()
        .map(|n| (n.nic.as_str(), n.mac.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("net0", "0a:0b:0c:0d:0e:0f"),
            ("net1", "01:02:03:04:05:06"),
            ("net10", "aa:bb:cc:dd:ee:ff"),
        ],
        "a NIC without a MAC and a non-numeric key are skipped; net10 sorts after net1"
    );
    assert_eq!(nics[2].port.as_deref(), Some("tap7i10"));
}

#[test]
fn libvirt_running_preferred_over_persistent() {
    let root = host();
    let nics = read_all(&root.dirs());
    let app: Vec<_> = nics.iter().filter(|n| n.vm_id == "app").collect();
    assert_eq!(app.len(), 2, "one entry per NIC: {app:#?}");
    let net0 = one(&nics, "app", "net0");
    assert_eq!(
        *net0,
        VmNic {
            source: "libvirt",
            vm_id: "app".into(),
            vm_name: Some("app".into()),
            nic: "net0".into(),
            mac: "52:54:00:6b:3c:01".into(),
            port: Some("vnet3".into()),
            bridge: Some("virbr0".into()),
            network: Some("default".into()),
            firewall: false,
            vlan: None,
            ips: vec![ip("192.168.122.45")],
            ips6: Vec::new(),
            config: root.0.join("run/libvirt/qemu/app.xml"),
        }
    );
    let net1 = one(&nics, "app", "net1");
    assert_eq!(net1.port.as_deref(), Some("vnet4"));
    assert_eq!(net1.bridge.as_deref(), Some("br0"));
    assert_eq!(net1.network, None);
    assert_eq!(net1.vlan, Some(42));
    assert!(net1.ips.is_empty(), "its lease expired: {:?}", net1.ips);
}

#[test]
fn libvirt_stopped_domain_uses_network_xml() {
    let root = host();
    let nics = read_all(&root.dirs());
    let net0 = one(&nics, "db", "net0");
    assert_eq!(net0.port, None, "a stopped domain has no port");
    assert_eq!(net0.network.as_deref(), Some("default"));
    assert_eq!(
        net0.bridge.as_deref(),
        Some("virbr0"),
        "from the network XML"
    );
    assert_eq!(
        net0.ips,
        vec![ip("192.168.122.20"), ip("192.168.122.47")],
        "the static DHCP host, then the lease"
    );
    let net1 = one(&nics, "db", "net1");
    assert_eq!(net1.vlan, None, "a trunk has no single VLAN");
}

#[test]
fn running_network_state_wins() {
    let root = host();
    // The running network was started with another bridge than the definition
    // now says (edited since); NICs are on the running one.
    root.write(
        "/run/libvirt/network/default.xml",
        "<networkstatus><class_id bitmap='0-2'/><floor sum='0'/>\
         <network><name>default</name><bridge name='virbr7'/></network></networkstatus>",
    );
    let nics = read_all(&root.dirs());
    assert_eq!(one(&nics, "db", "net0").bridge.as_deref(), Some("virbr7"));
}

#[test]
fn classic_leases_file() {
    let leases = parse_leases(
        "duid 00:01:00:01:2c:aa:bb:cc:52:54:00:00:00:01\n\
         1700000600 52:54:00:AA:00:09 192.168.122.9 vm9 01:52:54:00:aa:00:09\n\
         0 52:54:00:aa:00:08 192.168.122.8 * *\n\
         1700000600 2345 fd00::9 vm9 00:01\n\
         1600000000 52:54:00:aa:00:07 192.168.122.7 old *\n\
         garbage\n",
        1_700_000_000,
    );
    assert_eq!(
        leases,
        [
            Lease {
                mac: "52:54:00:aa:00:09".into(),
                ip: ip("192.168.122.9")
            },
            Lease {
                mac: "52:54:00:aa:00:08".into(),
                ip: ip("192.168.122.8")
            },
        ]
    );
}

#[test]
fn malformed_files_are_skipped() {
    let root = host();
    root.write(
        "/etc/pve/qemu-server/106.conf",
        "\u{0}\u{1}net0 virtio\n[[[\n",
    );
    root.write(
        "/etc/pve/qemu-server/notes.conf",
        "net0: virtio=AA:BB:CC:DD:EE:01\n",
    );
    root.write(
        "/etc/pve/qemu-server/107.conf.tmp",
        "net0: virtio=AA:BB:CC:DD:EE:02\n",
    );
    root.write(
        "/run/libvirt/qemu/broken.xml",
        "<domstatus><domain><name>broken",
    );
    root.write("/etc/libvirt/qemu/empty.xml", "");
    root.write(
        "/etc/libvirt/qemu/networks/bad.xml",
        "<network><bridge name='x'/></network>",
    );
    root.write("/var/lib/libvirt/dnsmasq/virbr1.status", "{not json");
    root.write(
        "/var/lib/libvirt/dnsmasq/virbr2.status",
        "{\"ip-address\": 5}",
    );
    // A directory named like a config is not one.
    fs::create_dir_all(root.0.join("etc/libvirt/qemu/dir.xml")).expect("mkdir");
    let nics = read_all(&root.dirs());
    let mut vms: Vec<_> = nics.iter().map(|n| n.vm_id.as_str()).collect();
    vms.dedup();
    assert_eq!(vms, ["105", "200", "app", "db"]);
    assert_eq!(nics.len(), 8);
}

#[test]
fn missing_directories_are_empty() {
    let root = TempRoot::new("empty");
    assert!(read_all(&root.dirs()).is_empty());
    assert!(read_all(&ConfigDirs::under(&root.0.join("does/not/exist"))).is_empty());
}

#[test]
fn find_by_id_name_or_mac() {
    let root = host();
    let nics = read_all(&root.dirs());
    let names = |found: Vec<&VmNic>| -> Vec<String> {
        found
            .iter()
            .map(|n| format!("{}/{}", n.vm_id, n.nic))
            .collect()
    };
    assert_eq!(names(find(&nics, "105")), ["105/net0", "105/net1"]);
    assert_eq!(names(find(&nics, "web01")), ["105/net0", "105/net1"]);
    assert_eq!(names(find(&nics, " dns01 ")), ["200/net0", "200/net1"]);
    assert_eq!(names(find(&nics, "app")), ["app/net0", "app/net1"]);
    assert_eq!(names(find(&nics, "BC:24:11:12:34:57")), ["200/net1"]);
    assert!(find(&nics, "Web01").is_empty(), "names are case-sensitive");
    assert!(find(&nics, "").is_empty());
    assert!(find(&nics, "999").is_empty());
}

#[test]
fn by_ip_static_and_leased() {
    let root = host();
    let nics = read_all(&root.dirs());
    let names = |found: Vec<&VmNic>| -> Vec<String> {
        found
            .iter()
            .map(|n| format!("{}/{}", n.vm_id, n.nic))
            .collect()
    };
    assert_eq!(names(by_ip(&nics, ip("192.0.2.5"))), ["105/net0"]);
    assert_eq!(names(by_ip(&nics, ip("192.0.2.7"))), ["200/net0"]);
    assert_eq!(names(by_ip(&nics, ip("192.168.122.45"))), ["app/net0"]);
    assert_eq!(names(by_ip(&nics, ip("192.168.122.20"))), ["db/net0"]);
    assert!(
        by_ip(&nics, ip("192.0.2.99")).is_empty(),
        "snapshot address"
    );
    assert!(
        by_ip(&nics, ip("192.168.122.46")).is_empty(),
        "expired lease"
    );
}

#[test]
fn config_dirs_under_root() {
    let dirs = ConfigDirs::under(Path::new("/srv/copy"));
    assert_eq!(
        dirs.proxmox_qemu,
        Path::new("/srv/copy/etc/pve/qemu-server")
    );
    assert_eq!(
        dirs.libvirt_domains,
        [
            PathBuf::from("/srv/copy/run/libvirt/qemu"),
            PathBuf::from("/srv/copy/etc/libvirt/qemu"),
        ]
    );
    let system = ConfigDirs::under(Path::new("/"));
    assert_eq!(system.proxmox_lxc, Path::new("/etc/pve/lxc"));
    assert_eq!(system.libvirt_leases, Path::new("/var/lib/libvirt/dnsmasq"));
    assert_eq!(
        system.libvirt_networks,
        [
            PathBuf::from("/run/libvirt/network"),
            PathBuf::from("/etc/libvirt/qemu/networks"),
        ]
    );
}

#[test]
fn mac_normalization() {
    assert_eq!(
        normalize_mac(" BC:24:11:aA:0:cc ").as_deref(),
        Some("bc:24:11:aa:00:cc")
    );
    assert_eq!(
        normalize_mac("bc-24-11-aa-bb-cc").as_deref(),
        Some("bc:24:11:aa:bb:cc")
    );
    for bad in [
        "",
        "bc:24:11:aa:bb",
        "bc:24:11:aa:bb:cc:dd",
        "bc:24:11:aa:bb:zz",
        "bc:24:11:aa::cc",
        "bc:24:11:aa:bbb:cc",
    ] {
        assert_eq!(normalize_mac(bad), None, "{bad}");
    }
}

proptest! {
    // Arbitrary text must give an answer or nothing, never a panic.
    #[test]
    fn parsers_never_panic(text in "(net[0-9]{0,2}|ipconfig0|name|:|=|,|\\[|#|\n| |virtio|BC:24:11:AA:BB:CC|ip|192.0.2.5/24|.){0,40}") {
        let _ = proxmox_nics(ProxmoxKind::Qemu, "1", &text, Path::new("1.conf"));
        let _ = proxmox_nics(ProxmoxKind::Lxc, "1", &text, Path::new("1.conf"));
        let _ = parse_leases(&text, 0);
        let _ = parse_status(&text, 0);
    }

    #[test]
    fn xml_parsers_never_panic(text in "(<domain>|<domstatus>|<network>|<name>x</name>|<devices>|<interface type='network'>|<mac address='52:54:00:00:00:01'/>|<source network='x' bridge='b'/>|<vlan>|<tag id='70000'/>|</vlan>|</interface>|</devices>|</domain>|<bridge name='b'/>|<ip><dhcp><host mac='52:54:00:00:00:01' ip='1.2.3.4'/></dhcp></ip>|</network>|.){0,30}") {
        let networks: HashMap<String, Network> = parse_network(&text).into_iter().collect();
        let _ = parse_domain(&text, Path::new("x.xml"), &networks);
    }
}
