//! Which VM a port is, kept while the host's tables forget a quiet guest (FDB
//! ageing, a tap flapping) and found through the VM bridge's FDB behind a
//! firewall bridge.

use super::*;

/// Every series of VM port `port` in a scrape, as `metric{label="value",...}` with
/// the labels sorted: what Prometheus identifies a series by.
fn series_of(body: &str, port: &str) -> BTreeSet<String> {
    samples_of(body, port)
        .iter()
        .map(|s| {
            let mut labels: Vec<String> =
                s.labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
            labels.sort();
            format!("{}{{{}}}", s.metric, labels.join(","))
        })
        .collect()
}

/// Poll (bounded) until `done` holds for the hypervisor's state.
fn wait_until(lab: &Lab, what: &str, done: impl Fn(&Lab) -> bool) {
    let start = Instant::now();
    while !done(lab) {
        assert!(start.elapsed() < WAIT, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The ports of `bridge` whose FDB holds `mac` (learned entries only).
fn fdb_ports(lab: &Lab, bridge: &str, mac: &str) -> Vec<String> {
    let out = lab
        .hv(&format!("bridge -j fdb show br {bridge}"))
        .unwrap_or_default();
    let entries: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    entries
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["mac"].as_str() == Some(mac) && e["state"] != "permanent")
        .filter_map(|e| e["ifname"].as_str().map(str::to_string))
        .collect()
}

/// The bridges guest 0's frames cross: its port's bridge and, on Proxmox, vmbr0 above.
fn guest_bridges(lab: &Lab) -> Vec<String> {
    let mut bridges = vec![lab.port_bridge(0)];
    if bridges[0] != lab.bridge() {
        bridges.push(lab.bridge().to_string());
    }
    bridges
}

/// A quiet guest whose pings die in the forward chain: watch shows it, then the
/// host's tables forget it (FDB entries age out in 2 s, the neighbour entry is
/// flushed, its tap flaps down and up), and every series of the VM keeps its
/// labels, the JSON its addresses; new drops count on the same series. `config`:
/// watch reads the lab's hypervisor configuration (else an empty root, so only
/// what watch learned from the tables can keep the identity).
/// A dual-stack guest's `vm_ips`: its IPv4 address, then its IPv6 one (the
/// host's neighbour table knows both).
fn guest_ips(spec: &GuestSpec) -> Value {
    let mut ips = vec![spec.ip.to_string()];
    ips.extend(spec.v6.map(|v6| v6.ip.to_string()));
    serde_json::json!(ips)
}

fn identity_survives_ageing_and_a_tap_flap(layout: Layout, config: bool, metrics_port: u16) {
    let mut opts = LabOptions::new(fake_guest_bin());
    opts.layout = layout;
    let mut lab = Lab::up(opts).unwrap();
    let (tap, spec) = (lab.port(0).to_string(), lab.guest_spec(0).clone());
    let (ip, mac) = (spec.ip.to_string(), spec.mac.clone());
    for br in guest_bridges(&lab) {
        lab.hv(&format!("ip link set {br} type bridge ageing_time 200"))
            .unwrap();
    }
    let config_root = match config {
        true => lab.config_root(),
        false => lab.config_root().join("empty"),
    };
    let mut watch = watch_with_metrics(&lab, metrics_port, &config_root);
    lab.nft(&format!(
        "add table inet pt_watch\n\
         add chain inet pt_watch forward {{ type filter hook forward priority filter; policy accept; }}\n\
         add rule inet pt_watch forward ip saddr {ip} drop\n"
    ))
    .unwrap();
    assert_eq!(ping(&mut lab, 0, 3), 0, "the guest's pings are dropped");
    // Forward on vmbr0; with Proxmox's firewall bridge, br_netfilter's bridged
    // pass through fwbr100i0 meets the rule first (the skb on fwln100i0).
    let stage = match layout {
        Layout::Proxmox => "bridge",
        _ => "forward",
    };
    let dropped = |v: &Value, min: u64| {
        drops(v, &tap).into_iter().find(|d| {
            d["reason"] == "NETFILTER_DROP"
                && d["stage"] == stage
                && d["total"].as_u64() >= Some(min)
        })
    };
    let before = watch.wait_for(WAIT, |v| dropped(v, 3).is_some()).unwrap();
    let vm_before = vm(&before, &tap).unwrap().clone();
    assert_eq!(vm_before["vm_ips"], guest_ips(&spec), "{vm_before}");
    assert_eq!(vm_before["macs"], serde_json::json!([mac]), "{vm_before}");
    if config && layout == Layout::Proxmox {
        // The lab's /etc/pve/qemu-server/100.conf names VM 100 "guest0".
        assert_eq!(vm_before["vmid"], "100", "{vm_before}");
        assert_eq!(vm_before["vm_name"], "guest0", "{vm_before}");
    }
    watch.wait_snapshots(1, WAIT).unwrap();
    let series_before = series_of(&scrape(&lab, metrics_port), &tap);
    let drop_series = |set: &BTreeSet<String>| {
        set.iter()
            .filter(|s| s.starts_with("pathtrace_drops_total{"))
            .count()
    };
    assert!(drop_series(&series_before) >= 1, "{series_before:#?}");
    assert!(
        series_before
            .iter()
            .all(|s| s.contains(&format!("vm_ip=\"{ip}\""))),
        "{series_before:#?}"
    );

    // The host forgets the quiet guest.
    for br in guest_bridges(&lab) {
        wait_until(&lab, &format!("{br} forgot {mac}"), |lab| {
            fdb_ports(lab, &br, &mac).is_empty()
        });
    }
    // Both families: a dual-stack guest the host still knows by its IPv6
    // address is probed (unicast NS) and answers, and the bridges relearn it.
    lab.hv(&format!("ip neigh flush to {ip}")).unwrap();
    if let Some(v6) = &spec.v6 {
        lab.hv(&format!("ip -6 neigh flush to {}", v6.ip)).unwrap();
    }
    lab.hv(&format!(
        "ip link set {tap} down && sleep 0.5 && ip link set {tap} up"
    ))
    .unwrap();
    let after = watch.wait_snapshots(4, WAIT).unwrap();
    for br in guest_bridges(&lab) {
        assert!(
            fdb_ports(&lab, &br, &mac).is_empty(),
            "{br} relearned {mac}"
        );
    }
    let neigh = lab.hv(&format!("ip -4 neigh show to {ip}")).unwrap();
    assert!(
        !neigh.contains("lladdr"),
        "the host still knows {ip}: {neigh}"
    );
    let series_after = series_of(&scrape(&lab, metrics_port), &tap);
    assert_eq!(series_before, series_after, "labels changed");
    let vm_after = vm(&after, &tap).unwrap();
    for field in ["vm_ips", "macs", "vmid", "vm_name", "bridge"] {
        assert_eq!(vm_before[field], vm_after[field], "{field}: {vm_after}");
    }

    // New drops count on the same series.
    assert_eq!(ping(&mut lab, 0, 2), 0);
    watch.wait_for(WAIT, |v| dropped(v, 5).is_some()).unwrap();
    watch.wait_snapshots(1, WAIT).unwrap();
    let series_later = series_of(&scrape(&lab, metrics_port), &tap);
    assert_eq!(
        series_before, series_later,
        "labels changed after new drops"
    );
    assert_eq!(watch.stop().unwrap(), 0, "{}", watch.stderr());
}

#[test]
fn identity_survives_ageing_and_a_tap_flap_plain() {
    identity_survives_ageing_and_a_tap_flap(Layout::Plain, false, 19467);
}

#[test]
fn identity_survives_ageing_and_a_tap_flap_proxmox() {
    identity_survives_ageing_and_a_tap_flap(Layout::Proxmox, true, 19468);
}

#[test]
fn identity_survives_ageing_and_a_tap_flap_proxmox_without_config() {
    identity_survives_ageing_and_a_tap_flap(Layout::Proxmox, false, 19469);
}

/// Proxmox: the firewall bridge forgot the guest's MAC while vmbr0 still has it on
/// fwpr100p0. Watch started then (no configuration to help) finds the guest
/// through vmbr0's FDB, down the veth pair into fwbr100i0's one tap.
#[test]
fn a_firewalled_vm_is_found_through_the_vm_bridges_fdb() {
    let mut opts = LabOptions::new(fake_guest_bin());
    opts.layout = Layout::Proxmox;
    let mut lab = Lab::up(opts).unwrap();
    let (tap, spec) = (lab.port(0).to_string(), lab.guest_spec(0).clone());
    let fwbr = lab.port_bridge(0);
    lab.hv(&format!("ip link set {fwbr} type bridge ageing_time 200"))
        .unwrap();
    assert_eq!(
        ping(&mut lab, 0, 2),
        2,
        "healthy: both bridges learn the guest"
    );
    wait_until(&lab, &format!("{fwbr} forgot {}", spec.mac), |lab| {
        fdb_ports(lab, &fwbr, &spec.mac).is_empty()
    });
    let upper = fdb_ports(&lab, lab.bridge(), &spec.mac);
    assert_eq!(upper.len(), 1, "vmbr0 still knows the guest: {upper:?}");
    assert_ne!(upper[0], tap);
    // An empty configuration root: only the kernel's tables can tell.
    let empty = lab.config_root().join("empty");
    let mut watch = WatchRun::start(
        &lab,
        &[
            "--interval",
            "0.5",
            "--config-root",
            empty.to_str().unwrap(),
        ],
    )
    .unwrap();
    let snap = watch.wait_snapshots(1, WAIT).unwrap();
    let v = vm(&snap, &tap).unwrap_or_else(|| panic!("{tap} not watched: {snap}"));
    assert_eq!(v["bridge"], fwbr.as_str(), "{v}");
    assert_eq!(v["macs"], serde_json::json!([spec.mac]), "{v}");
    assert_eq!(v["vm_ips"], guest_ips(&spec), "{v}");
    assert_eq!(v["vmid"], Value::Null, "{v}");
    assert_eq!(watch.stop().unwrap(), 0, "{}", watch.stderr());
}
