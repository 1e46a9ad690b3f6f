use super::*;
use std::net::Ipv4Addr;

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

#[test]
fn reads_udp_listeners() {
    let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
      12: 010200C0:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0000000000000000 0\n\
      13: 00000000:0043 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0000000000000000 0\n";
    assert_eq!(udp_listeners(table, 53), [Ipv4Addr::new(192, 0, 2, 1)]);
    assert_eq!(udp_listeners(table, 67), [Ipv4Addr::UNSPECIFIED]);
    assert!(udp_listeners(table, 5353).is_empty());
}
