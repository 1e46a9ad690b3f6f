use super::*;

#[test]
fn which_addresses_need_nat() {
    for ip in [
        "192.168.1.5",
        "10.0.0.1",
        "100.64.0.1",
        "192.0.2.100",
        "172.16.3.3",
    ] {
        assert!(needs_nat(ip.parse().unwrap()), "{ip}");
    }
    for ip in ["8.8.8.8", "100.128.0.1", "193.0.2.1"] {
        assert!(!needs_nat(ip.parse().unwrap()), "{ip}");
    }
}
