//! Every scenario of the catalogue (tests/src/scenarios.rs) end to end: build the
//! lab, break it as described, let the guest send, and check pathtrace's verdict.
//! Needs root and eBPF; CI runs it as root.

use std::time::Duration;

use pathtrace_tests::{
    guest::GuestSpec,
    lab::{Filterref, Lab, LabOptions, PingOpts},
    scenarios::{self, Scenario, Traffic},
    tracerun::{fake_guest_bin, trace_while},
};
use serde_json::Value;

fn run(name: &str) {
    let sc = scenarios::find(name);
    let mut opts = LabOptions::new(fake_guest_bin());
    opts.layout = sc.layout;
    opts.vlan = sc.vlan;
    opts.uplink = sc.uplink;
    opts.v6 = sc.v6;
    if sc.second_guest {
        opts.guests.push(GuestSpec::nth(1));
    }
    // Kernels without bridge VLAN filtering, bonding or VLAN devices skip.
    let Some(mut lab) = Lab::up_unless_unsupported(opts) else {
        return;
    };
    if let Some(mtu) = sc.remote_mtu {
        lab.add_remote_network(mtu).expect("the far network");
    }
    if sc.host_resolver {
        lab.start_host_resolver().expect("host resolver");
    }
    if let Some(options) = sc.dhcp_server {
        lab.start_dhcp_server("vmbr0", options)
            .expect("dhcp server");
    }
    for cmd in sc.break_hv {
        lab.hv(cmd)
            .unwrap_or_else(|e| panic!("breaking the lab: {e}"));
    }
    for cmd in sc.break_lan {
        lab.inet(cmd)
            .unwrap_or_else(|e| panic!("breaking the LAN: {e}"));
    }
    if sc.guest_resolves_again {
        lab.guest(0).flush_neighbours().expect("guest forgets");
    }
    if let Some(nw) = sc.nwfilter {
        let mut f = Filterref::of(lab.guest_spec(0), nw.filter);
        f.ip = nw.ip.parse().expect("the filter's IP");
        lab.libvirt_nwfilter(f)
            .unwrap_or_else(|e| panic!("libvirt's nwfilter: {e:#}"));
    }
    let v = trace(&mut lab, sc);
    sc.check(&v);
}

fn trace(lab: &mut Lab, sc: &Scenario) -> Value {
    let (to, count) = (sc.traffic.to_arg(), sc.traffic.requests().to_string());
    // The guest as pathtrace is told of it: by its address of the traffic's family.
    let vm_ip = match lab.guest_spec(0).v6 {
        Some(v6) if sc.traffic.is_v6() => v6.ip.to_string(),
        _ => "192.0.2.100".to_string(),
    };
    let mut args = match sc.traffic {
        // The guest has no address yet: named by its port.
        Traffic::Dhcp => vec!["--iface", "tap100i0", "--proto", "dhcp"],
        Traffic::Arp { target } => {
            let mut a = vec!["--vm-ip", "192.0.2.100", "--proto", "arp"];
            a.extend(target.iter().flat_map(|t| ["--to", *t]));
            a
        }
        _ => vec!["--vm-ip", &vm_ip, "--to", &to],
    };
    args.extend(["--count", &count, "--timeout", "12", "--json"]);
    // libvirt's state for the filter binding is under the lab's config root.
    let root = lab.config_root().display().to_string();
    if sc.nwfilter.is_some() {
        args.extend(["--config-root", &root]);
    }
    if let Some(port) = sc.iface {
        args.extend(["--iface", port]);
    }
    let proto = sc.traffic.proto_args();
    args.extend(proto.iter().map(String::as_str));
    let run = trace_while(lab, &args, Duration::from_secs(30), |lab| {
        if !sc.during_hv.is_empty() {
            lab.hv(&format!("({}) >/dev/null 2>&1 &", sc.during_hv))?;
        }
        match sc.traffic {
            Traffic::Ping { dst, size, ttl } => {
                // Long enough for a neighbour resolution to fail (3 probes, 1 s apart).
                let opts = PingOpts {
                    size,
                    ttl,
                    timeout_ms: 5000,
                    ..PingOpts::default()
                };
                match lab.guest(0).ping(dst.parse::<std::net::IpAddr>()?, opts) {
                    Ok(_) => {}
                    // Its next hop never answered: it sent only solicitations.
                    Err(e) if sc.guest_resolves_again => eprintln!("guest: {e:#}"),
                    Err(e) => return Err(e),
                }
            }
            Traffic::Dns { server, name } => {
                let qtype = if sc.traffic.is_v6() { "AAAA" } else { "A" };
                let server = server.parse::<std::net::IpAddr>()?;
                lab.guest(0).dns_type(server, name, 1, 3000, qtype)?;
            }
            Traffic::Tcp { dst, port, data } => {
                let seen = lab
                    .guest(0)
                    .tcp(dst.parse::<std::net::IpAddr>()?, port, 3000, data)?;
                eprintln!("guest: {seen:?}");
            }
            Traffic::Udp { dst, port } => {
                let seen = lab
                    .guest(0)
                    .udp(dst.parse::<std::net::IpAddr>()?, port, 3000)?;
                eprintln!("guest: {seen:?}");
            }
            Traffic::Dhcp => {
                // dnsmasq pings the address it offers for 3 s first.
                eprintln!("guest: {}", lab.guest(0).dhcp(5000)?);
            }
            Traffic::Arp { .. } => {
                let target = sc.traffic.dst().parse()?;
                eprintln!("guest: {}", lab.guest(0).arp(target, 3000)?);
            }
        }
        Ok(())
    })
    .expect("pathtrace runs");
    eprintln!("--- {}\n{}{}", sc.name, run.stdout, run.stderr);
    let verdicts = run.verdicts();
    let n = sc.traffic.requests() as usize;
    assert_eq!(verdicts.len(), n, "{}: a verdict per request", sc.name);
    let expected_code = if sc.expect.verdict == "replied" { 0 } else { 1 };
    assert_eq!(run.code, expected_code, "{}: exit status", sc.name);
    // A connection and its data segment: the segment's verdict (decided first
    // when it is dropped, while the handshake's waits to settle).
    let data = verdicts
        .iter()
        .find(|v| v["flow"]["tcp_payload"].is_number());
    data.unwrap_or(&verdicts[n - 1]).clone()
}

macro_rules! scenario_tests {
    ($($name:ident),* $(,)?) => {
        $( #[test] fn $name() { run(stringify!($name)); } )*

        #[test]
        fn every_catalogue_entry_has_a_test() {
            let tested = [$(stringify!($name)),*];
            for sc in scenarios::CATALOGUE {
                assert!(tested.contains(&sc.name), "no test for scenario {}", sc.name);
            }
        }
    };
}

scenario_tests!(
    healthy_ping,
    healthy_dns,
    dns_nxdomain,
    iptables_legacy_forward_policy_drop,
    iptables_reject_rule,
    nft_forward_drop,
    nft_prerouting_drop,
    nft_postrouting_drop,
    masquerade_missing,
    dnat_dns_dead_resolver,
    dns_reply_dropped,
    host_resolver_blocked_by_input,
    ping_host_input_drop,
    ip_forward_off,
    no_route,
    rp_filter_asymmetric,
    gateway_neighbour_failure,
    uplink_mtu_too_small,
    ttl_expires,
    bridge_port_disabled,
    vm_port_down_reply,
    vm_port_blocked_reply,
    br_netfilter_guest_to_guest,
    nft_bridge_family_drop,
    nft_bridge_prerouting_vmap_drop,
    bridged_healthy_ping,
    bridged_uplink_no_carrier,
    bridged_uplink_stp_disabled,
    bridged_uplink_stp_listening,
    bridged_router_silent,
    vlan_tap_without_pvid,
    vlan_trunk_lacks_vid,
    healthy_tcp,
    healthy_udp,
    tcp_port_closed_remote,
    tcp_reject_with_reset,
    iptables_tcp_reset,
    tcp_forward_drop,
    tcp_pmtu_black_hole,
    tcp_pmtu_black_hole_remote,
    tcp_mtu_too_small,
    udp_forward_drop,
    bond_every_slave_down,
    bond_lacp_without_partner,
    vlan_device_down,
    vlan_uplink_down,
    healthy_dhcp,
    dhcp_server_not_listening,
    dhcp_blocked_by_input,
    dhcp_no_offer_for_mac,
    arp_wrong_gateway,
    arp_dropped_by_bridge_rule,
    arp_reply_dropped,
    healthy_arp,
    libvirt_clean_traffic_spoofed_source,
    healthy_ping_v6,
    healthy_dns_v6,
    nft_forward_drop_v6,
    ip6tables_legacy_forward_policy_drop,
    ipv6_forwarding_off,
    ipv6_forwarding_per_interface_only,
    no_route_v6,
    gateway_neighbour_failure_v6,
    ping_host_input_drop_v6,
    uplink_mtu_too_small_v6,
    remote_packet_too_big_v6,
    nat66_missing,
    ndp_proxy_entry_missing,
    proxy_ndp_off,
    dns_reply_dropped_v6,
    nft_fib_rpf_v6,
    nft_fib_rpf,
);

/// Bridge VLAN filtering with the VM port in the wrong VLAN, where the kernel has
/// it; this one is built without it, and says so.
#[test]
fn bridge_vlan_filtering_support_is_recorded() {
    let lab = Lab::up(LabOptions::new(fake_guest_bin())).expect("lab");
    match lab.hv("ip link set vmbr0 type bridge vlan_filtering 1") {
        Err(e) => eprintln!("skipped: this kernel has no bridge VLAN filtering ({e})"),
        Ok(_) => eprintln!("this kernel supports VLAN filtering: the vlan_* scenarios run here"),
    }
}
