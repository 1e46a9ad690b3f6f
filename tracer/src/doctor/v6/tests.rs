use super::*;

#[test]
fn slaac_addresses_are_told_by_their_mac() {
    let ip: Ipv6Addr = "2001:db8:1::5054:ff:fe12:3456".parse().unwrap();
    assert!(slaac_shaped(ip, "52:54:00:12:34:56"));
    assert!(!slaac_shaped(ip, "52:54:00:12:34:57"));
    assert!(!slaac_shaped(
        "2001:db8:1::100".parse().unwrap(),
        "52:54:00:12:34:56"
    ));
}

/// Over saved lab hosts, changed the way a real host would be.
mod over_fixtures {
    use std::path::Path;

    use serde_json::Value;

    use crate::{
        doctor::{checks, examine_host, fixture::Fixture},
        host::firewall,
    };

    fn fixture(name: &str) -> Fixture {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/doctor/testdata")
            .join(format!("{name}.json"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn check(fx: &Fixture, name: &str) -> Value {
        firewall::give_this_thread(fx.firewall.clone());
        let s = examine_host(fx.host.clone(), &fx.question, &[], Path::new("")).unwrap();
        let all: Vec<Value> = checks::all(&s, true)
            .iter()
            .map(|c| serde_json::to_value(c).unwrap())
            .collect();
        all.into_iter()
            .find(|c| c["check"] == name)
            .unwrap_or_else(|| panic!("no {name}"))
    }

    /// 6.17+: a device's force_forwarding forwards what arrives there even
    /// with all.forwarding=0; both ends of the path need it. It leaves the
    /// device's own forwarding at 0 (measured on 6.18), and with it the
    /// router flag off in its advertisements: the VM bridge needs both.
    #[test]
    fn force_forwarding_on_both_devices_forwards() {
        let mut fx = fixture("v6-all-forwarding-off");
        assert_eq!(check(&fx, "ip6_forward")["status"], "fail");
        for dev in ["vmbr0", "eth0"] {
            fx.host
                .sysctls
                .insert(format!("net/ipv6/conf/{dev}/force_forwarding"), "1".into());
        }
        let c = check(&fx, "ip6_forward");
        assert_eq!(c["subject"], "net.ipv6.conf.vmbr0.forwarding", "{c}");
        fx.host
            .sysctls
            .insert("net/ipv6/conf/vmbr0/forwarding".into(), "1".into());
        assert_eq!(check(&fx, "ip6_forward")["status"], "pass");
        fx.host
            .sysctls
            .insert("net/ipv6/conf/eth0/force_forwarding".into(), "0".into());
        assert_eq!(check(&fx, "ip6_forward")["status"], "fail");
    }

    /// accept_ra=2 keeps a route from advertisements alive on a forwarding
    /// uplink; disabling IPv6 on the uplink is its own failure.
    #[test]
    fn accept_ra_two_and_disabled_ipv6() {
        let mut fx = fixture("v6-ra-route-ignored");
        fx.host
            .sysctls
            .insert("net/ipv6/conf/eth0/accept_ra".into(), "2".into());
        let c = check(&fx, "accept_ra");
        assert_eq!(c["status"], "pass", "{c}");
        fx.host
            .sysctls
            .insert("net/ipv6/conf/eth0/disable_ipv6".into(), "1".into());
        let c = check(&fx, "ip6_forward");
        assert_eq!(
            c["fix"], "sysctl -w net.ipv6.conf.eth0.disable_ipv6=0",
            "{c}"
        );
    }
}
