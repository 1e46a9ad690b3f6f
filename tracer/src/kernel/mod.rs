//! Facts about the running kernel, read at run time (never hard-coded).
pub mod btf;
pub mod kallsyms;
pub mod tracefs;

/// A sysctl of this network namespace (`/proc/sys/net` belongs to the reader's
/// namespace), e.g. `net/ipv4/ip_forward`; None when absent.
pub fn sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/sys/{path}"))
        .ok()
        .map(|s| s.trim().to_string())
}
