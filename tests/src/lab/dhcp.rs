//! A real DHCP server on the lab's VM bridge: Debian's dnsmasq, run as libvirt
//! and Proxmox SDN run it for their networks (`cargo xtask setup` installs it).

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::Lab;

/// The pool it hands out: inside the lab's VM subnet, away from its guests.
pub const DHCP_RANGE: &str = "192.0.2.150,192.0.2.199,255.255.255.0,1h";

impl Lab {
    /// Start dnsmasq as the DHCP server of `bridge` (DNS off) with `options`
    /// (none: the default pool [`DHCP_RANGE`]), and wait until it listens on
    /// udp/67. It is stopped with the lab.
    pub fn start_dhcp_server(&mut self, bridge: &str, options: &[&str]) -> Result<()> {
        let default_range = format!("--dhcp-range={DHCP_RANGE}");
        let options: Vec<&str> = match options {
            [] => vec![default_range.as_str()],
            given => given.to_vec(),
        };
        let leases = self.config_root.join("dnsmasq.leases");
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.hv))
            .args([
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--port=0",
                "--user=root",
                "--bind-interfaces",
                "--pid-file",
            ])
            .arg(format!("--interface={bridge}"))
            .args(&options)
            .arg(format!("--dhcp-leasefile={}", leases.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting dnsmasq (apt-get install dnsmasq-base)")?;
        self.helpers.push(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            // Port 67 is 0043 in /proc/net/udp's hex.
            if self.hv("grep -q ':0043 ' /proc/net/udp").is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("dnsmasq did not start listening on udp/67 within 5 s")
    }
}
