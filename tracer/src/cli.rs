//! Command line (the contract in DESIGN.md).

use std::net::Ipv4Addr;

use clap::{Parser, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "pathtrace",
    version,
    about = "Follow a KVM guest's ping/DNS packets through this hypervisor and say where they die",
    after_help = "Run it while the guest pings (or resolves) the destination; it needs root (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON).\nExit status: 0 every request got its reply, 1 a drop or missing reply was found, 2 usage or environment error."
)]
pub struct Cli {
    /// The guest's IPv4 address.
    #[arg(long, value_name = "IP")]
    pub vm_ip: Ipv4Addr,
    /// The destination the guest is trying to reach.
    #[arg(long = "to", value_name = "DEST")]
    pub to: Ipv4Addr,
    /// Which of the guest's packets to follow.
    #[arg(long, value_enum, default_value_t = Proto::Icmp)]
    pub proto: Proto,
    /// Stop after this many requests have a verdict.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100000))]
    pub count: u32,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub timeout: u64,
    /// The VM's port (tap/vnet), when it cannot be found from the VM IP.
    #[arg(long, value_name = "DEV")]
    pub iface: Option<String>,
    /// One JSON object per line on stdout.
    #[arg(long)]
    pub json: bool,
    /// Kernel→user event buffer in KiB (a power of two, at least 4). Raise it on
    /// very busy hosts if the summary reports lost events.
    #[arg(long, value_name = "KIB", default_value_t = 1024, value_parser = ring_kib)]
    pub buffer_kb: u32,
    /// The running kernel's BTF (struct layouts, drop-reason names).
    #[arg(long, value_name = "PATH", default_value = crate::kernel::btf::VMLINUX_BTF)]
    pub kernel_btf: std::path::PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Proto {
    Icmp,
    Dns,
    Any,
}

impl Proto {
    pub fn mask(self) -> u32 {
        match self {
            Proto::Icmp => tracer_common::PROTO_ICMP,
            Proto::Dns => tracer_common::PROTO_DNS,
            Proto::Any => tracer_common::PROTO_ICMP | tracer_common::PROTO_DNS,
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            Proto::Icmp => "icmp",
            Proto::Dns => "dns",
            Proto::Any => "any",
        }
    }
}

fn ring_kib(s: &str) -> Result<u32, String> {
    let v: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if v < 4 || !v.is_power_of_two() || v > 1 << 20 {
        return Err("must be a power of two between 4 and 1048576".into());
    }
    Ok(v)
}
