//! Faults planted on purpose in a lab, and their exact repair.

use anyhow::{bail, Context, Result};

use super::*;

/// Ways to break the path on purpose; `repair` undoes exactly each. Those about a
/// port act on guest 0's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// An nftables rule in the forward chain drops the guest's packets.
    NftForwardDrop,
    /// net.ipv4.ip_forward=0 on the hypervisor.
    IpForwardOff,
    /// The MASQUERADE rule is gone.
    NoMasquerade,
    /// Guest 0's TAP is administratively down.
    PortDown,
    /// Guest 0's TAP is detached from its bridge (fwbr with Proxmox).
    PortNoMaster,
    /// Guest 0's TAP is a port in state disabled (not forwarding) on its bridge.
    StpBlocking,
    /// Proxmox: guest 0's fwln/fwpr veth pair at MTU 1400, its TAP at 1500.
    /// Otherwise: the uplink (eth0, and isp0 facing it) at MTU 1400, the bridge 1500.
    MtuMismatch,
    /// Strict rp_filter (all and the VM bridge) with a route to guest 0's address
    /// out of eth0, so its packets fail the reverse-path check.
    RpFilterStrict,
    /// The default gateway 198.51.100.1 is gone from the inet side (no ARP answer),
    /// and the hypervisor's neighbour entries on eth0 are flushed.
    GatewayUnreachable,
    /// Legacy iptables FORWARD policy DROP in the hypervisor.
    IptablesForwardPolicyDrop,
    /// The host resolver (192.0.2.1:53) is stopped.
    NoResolver,
    /// A second guest with guest 0's IP, another MAC, on tap199i0 / vnet99
    /// (Proxmox: with its fwbr199i0 chain), with its own config file.
    DuplicateIp,
}

impl Lab {
    pub(super) fn first_guest(&self) -> Result<&GuestSpec> {
        self.guests
            .first()
            .map(|g| &g.spec)
            .context("this fault needs a guest")
    }

    pub fn break_path(&mut self, fault: Fault) -> Result<()> {
        let br = self.bridge();
        match fault {
            Fault::NftForwardDrop => self.nft(
                "add table inet filter\n\
                 add chain inet filter forward { type filter hook forward priority filter; policy accept; }\n\
                 add rule inet filter forward ip saddr 192.0.2.100 drop\n",
            ),
            Fault::IpForwardOff => self.hv("sysctl -qw net.ipv4.ip_forward=0").map(drop),
            Fault::NoMasquerade => self.nft("delete table ip nat\n"),
            Fault::PortDown => {
                let tap = &self.first_guest()?.tap;
                self.hv(&format!("ip link set {tap} down")).map(drop)
            }
            Fault::PortNoMaster => {
                let tap = &self.first_guest()?.tap;
                self.hv(&format!("ip link set {tap} nomaster")).map(drop)
            }
            // Accepted because STP is off on every lab bridge (with kernel STP on,
            // the kernel refuses a state from user space with EBUSY). It holds until
            // the port's carrier or admin state changes.
            Fault::StpBlocking => {
                let tap = &self.first_guest()?.tap;
                self.hv(&format!("bridge link set dev {tap} state 0"))
                    .map(drop)
            }
            Fault::MtuMismatch => self.set_mtu_fault(1400),
            Fault::RpFilterStrict => {
                let ip = self.first_guest()?.ip;
                let saved = self.hv(&format!(
                    "sysctl -n net.ipv4.conf.all.rp_filter net.ipv4.conf.{br}.rp_filter"
                ))?;
                let mut v = saved.split_whitespace().map(str::to_string);
                let (all, bridge) = (v.next(), v.next());
                let (Some(all), Some(bridge)) = (all, bridge) else {
                    bail!("reading rp_filter: {saved:?}");
                };
                self.hv(&format!(
                    "ip route add {ip}/32 via 198.51.100.1 dev eth0 && \
                     sysctl -qw net.ipv4.conf.all.rp_filter=1 net.ipv4.conf.{br}.rp_filter=1"
                ))?;
                self.saved_rp_filter = Some((all, bridge));
                Ok(())
            }
            Fault::GatewayUnreachable => {
                self.inet("ip addr del 198.51.100.1/24 dev isp0")?;
                self.hv("ip neigh flush dev eth0").map(drop)
            }
            Fault::IptablesForwardPolicyDrop => {
                // -w: the xtables lock is machine-wide, other labs may hold it.
                self.hv("iptables-legacy -w -P FORWARD DROP").map(drop)
            }
            Fault::NoResolver => {
                self.stop_host_resolver();
                Ok(())
            }
            Fault::DuplicateIp => {
                if self.duplicate.is_some() {
                    return Ok(());
                }
                let ip = self.first_guest()?.ip;
                let spec = GuestSpec {
                    ip,
                    ..GuestSpec::nth((DUPLICATE_VMID - 100) as u8)
                };
                let tap = self.layout.port_name(&spec.tap);
                match self.plug(spec) {
                    Ok(g) => self.duplicate = Some(g),
                    Err(e) => {
                        let _ = self.unplug(&tap);
                        return Err(e);
                    }
                }
                self.write_configs()
            }
        }
    }

    pub fn repair(&mut self, fault: Fault) -> Result<()> {
        let br = self.bridge();
        match fault {
            Fault::NftForwardDrop => self.nft("delete table inet filter\n"),
            Fault::IpForwardOff => self.hv("sysctl -qw net.ipv4.ip_forward=1").map(drop),
            Fault::NoMasquerade => self.masquerade(),
            Fault::PortDown => {
                let tap = &self.first_guest()?.tap;
                self.hv(&format!("ip link set {tap} up")).map(drop)
            }
            Fault::PortNoMaster => {
                let tap = self.first_guest()?.tap.clone();
                let master = self.tap_master(&tap);
                self.hv(&format!("ip link set {tap} master {master}"))
                    .map(drop)
            }
            Fault::StpBlocking => {
                let tap = &self.first_guest()?.tap;
                self.hv(&format!("bridge link set dev {tap} state 3"))
                    .map(drop)
            }
            Fault::MtuMismatch => self.set_mtu_fault(1500),
            Fault::RpFilterStrict => {
                let ip = self.first_guest()?.ip;
                let (all, bridge) = self
                    .saved_rp_filter
                    .take()
                    .unwrap_or_else(|| ("0".into(), "0".into()));
                self.hv(&format!(
                    "ip route del {ip}/32 via 198.51.100.1 dev eth0 && \
                     sysctl -qw net.ipv4.conf.all.rp_filter={all} net.ipv4.conf.{br}.rp_filter={bridge}"
                ))
                .map(drop)
            }
            Fault::GatewayUnreachable => {
                self.inet("ip addr add 198.51.100.1/24 dev isp0")?;
                // Forget the FAILED entry rather than wait for it to age.
                self.hv("ip neigh flush dev eth0").map(drop)
            }
            Fault::IptablesForwardPolicyDrop => {
                self.hv("iptables-legacy -w -P FORWARD ACCEPT").map(drop)
            }
            Fault::NoResolver => self.start_host_resolver(),
            Fault::DuplicateIp => {
                let Some(dup) = self.duplicate.take() else {
                    return Ok(());
                };
                let (tap, ip) = (dup.spec.tap.clone(), dup.spec.ip);
                drop(dup);
                self.unplug(&tap)?;
                self.write_configs()?;
                // The duplicate's ARP moved the host's entry for the address to its
                // MAC: forget it, so the real guest is asked again.
                self.hv(&format!("ip neigh del {ip} dev {br} 2>/dev/null; true"))
                    .map(drop)
            }
        }
    }

    pub(super) fn set_mtu_fault(&self, mtu: u32) -> Result<()> {
        if self.layout == Layout::Proxmox {
            let FwChain { fwpr, fwln, .. } = fw_chain(&self.first_guest()?.tap)?;
            self.hv(&format!(
                "ip link set {fwln} mtu {mtu} && ip link set {fwpr} mtu {mtu}"
            ))
            .map(drop)
        } else {
            self.hv(&format!("ip link set eth0 mtu {mtu}"))?;
            self.inet(&format!("ip link set isp0 mtu {mtu}")).map(drop)
        }
    }
}
