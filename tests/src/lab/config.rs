//! The hypervisor's configuration files a lab writes for its guests (Proxmox's
//! VM configs, libvirt's domains and network), as the real tools would.

use std::fmt::Write as _;

use anyhow::{Context, Result};

use super::*;

impl Lab {
    /// (Re)write the hypervisor's config files for the running guests under
    /// [`Lab::config_root`]: Proxmox's VM configs, or libvirt's running domains and
    /// its network. Nothing for the plain layout.
    pub(super) fn write_configs(&self) -> Result<()> {
        let root = &self.config_root;
        let specs: Vec<&GuestSpec> = self
            .guests
            .iter()
            .chain(&self.duplicate)
            .map(|g| &g.spec)
            .chain(&self.bare_ports)
            .collect();
        match self.layout {
            Layout::Plain | Layout::Bridged => Ok(()),
            Layout::Proxmox => {
                let dir = root.join("etc/pve/qemu-server");
                recreate_dir(&dir)?;
                let mut vms: Vec<(u32, String)> = Vec::new();
                for s in &specs {
                    let (vmid, net) = parse_port(&s.tap).context("Proxmox port name")?;
                    let idx = match vms.iter().position(|(v, _)| *v == vmid) {
                        Some(idx) => idx,
                        None => {
                            vms.push((vmid, format!("name: {}\n", guest_name(vmid))));
                            vms.len() - 1
                        }
                    };
                    write!(
                        vms[idx].1,
                        "net{net}: virtio={},bridge={},firewall=1\n\
                         ipconfig{net}: ip={}/{},gw={}",
                        s.mac.to_uppercase(),
                        self.bridge(),
                        s.ip,
                        s.prefix,
                        s.gateway
                    )?;
                    // cloud-init's IPv6 keys, as Proxmox writes them.
                    if let Some(v6) = s.v6 {
                        write!(
                            vms[idx].1,
                            ",ip6={}/{},gw6={}",
                            v6.ip, v6.prefix, v6.gateway
                        )?;
                    }
                    vms[idx].1.push('\n');
                }
                for (vmid, conf) in vms {
                    write_file(&dir.join(format!("{vmid}.conf")), &conf)?;
                }
                Ok(())
            }
            Layout::Libvirt => {
                let qemu = root.join("run/libvirt/qemu");
                recreate_dir(&qemu)?;
                let (mut hosts, mut hosts6) = (String::new(), String::new());
                for s in &specs {
                    let (vmid, _) = parse_port(&s.tap).unwrap_or((100, 0));
                    let name = guest_name(vmid);
                    // A NIC with a filter: the MAC its domain gives it (the guest
                    // may send from another) and its <filterref>.
                    let filter = self.filterref(&s.tap);
                    let xml = format!(
                        "<domain type='kvm' id='{id}'>\n  <name>{name}</name>\n  \
                         <uuid>{uuid}</uuid>\n  <devices>\n    <interface type='network'>\n      \
                         <mac address='{mac}'/>\n      \
                         <source network='default' bridge='{br}'/>\n      \
                         <target dev='{tap}'/>\n      <model type='virtio'/>\n{filterref}    \
                         </interface>\n  </devices>\n</domain>\n",
                        id = vmid.saturating_sub(99),
                        uuid = self.domain_uuid(&s.tap),
                        mac = filter.map_or(&s.mac, |f| &f.mac),
                        filterref = filter.map(Filterref::xml).unwrap_or_default(),
                        br = self.bridge(),
                        tap = s.tap,
                    );
                    write_file(&qemu.join(format!("{name}.xml")), &xml)?;
                    // libvirt refuses two DHCP hosts with one address: the duplicate
                    // is a guest configured statically, unknown to the network.
                    if vmid != DUPLICATE_VMID {
                        let (mac, ip) = filter.map_or((&s.mac, s.ip), |f| (&f.mac, f.ip));
                        writeln!(hosts, "      <host mac='{mac}' name='{name}' ip='{ip}'/>")?;
                        // DHCPv6 hosts are matched by name (or DUID), not MAC.
                        if let Some(v6) = s.v6 {
                            writeln!(hosts6, "      <host name='{name}' ip='{}'/>", v6.ip)?;
                        }
                    }
                }
                let net = root.join("run/libvirt/network");
                std::fs::create_dir_all(&net)?;
                write_file(
                    &net.join("default.xml"),
                    &format!(
                        "<network>\n  <name>default</name>\n  <forward mode='nat'/>\n  \
                         <bridge name='{br}' stp='on' delay='0'/>\n  \
                         <ip address='192.0.2.1' netmask='255.255.255.0'>\n    <dhcp>\n      \
                         <range start='192.0.2.2' end='192.0.2.254'/>\n{hosts}    </dhcp>\n  \
                         </ip>\n  \
                         <ip family='ipv6' address='{GATEWAY6}' prefix='64'>\n    <dhcp>\n      \
                         <range start='2001:db8:1::1000' end='2001:db8:1::1fff'/>\n{hosts6}    \
                         </dhcp>\n  </ip>\n</network>\n",
                        br = self.bridge()
                    ),
                )
            }
        }
    }
}
