//! Facts about the running kernel, read at run time (never hard-coded).
pub mod btf;
pub mod facts;
pub mod kallsyms;
pub mod no_btf;
pub mod tracefs;

/// A sysctl of this network namespace (`/proc/sys/net` belongs to the reader's
/// namespace), e.g. `net/ipv4/ip_forward`; None when absent.
pub fn sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/sys/{path}"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// The longest the kernel holds a packet queued for neighbour resolution on
/// `dev` before freeing it (NEIGH_FAILED): every probe it may send (unicast,
/// application, multicast solicitations), `retrans_time_ms` apart, plus a second
/// for timer slack. From the device's own neighbour parameters (IPv4 ARP).
pub fn neighbour_hold_ns(dev: &str) -> u64 {
    let param = |name: &str, default: u64| {
        sysctl(&format!("net/ipv4/neigh/{dev}/{name}"))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(default)
    };
    let probes = param("ucast_solicit", 3) + param("app_solicit", 0) + param("mcast_solicit", 3);
    let retrans_ms = param("retrans_time_ms", 1000);
    (probes * retrans_ms + 1000) * 1_000_000
}
