//! libvirt's network filters (nwfilter) on a lab port, instantiated by libvirt
//! itself: its daemon, run inside the hypervisor namespace with a private mount
//! namespace, creates a filter binding for the port — what libvirt does when a
//! domain whose `<interface>` has `<filterref filter='clean-traffic'>` starts —
//! and writes its ebtables rules (nft `bridge` tables with ebtables-nft) from
//! the filter definitions Debian packages (libvirt-daemon-config-nwfilter),
//! unchanged. Nothing is written by hand and nothing outside the lab changes:
//!
//! - tmpfs over /run and /var (fresh /run/libvirt, /var/lib/libvirt, no host
//!   D-Bus or journal socket) and /etc/libvirt (the packaged filters only);
//! - only the nwfilter driver is loaded (`LIBVIRT_DRIVER_DIR`): no QEMU, no
//!   networks, no host devices;
//! - the daemon runs in the lab's network namespace, so its ebtables and
//!   iptables see only the lab's; it is stopped once the binding exists (the
//!   rules stay, as on a host whose libvirtd restarts) and exits by itself after
//!   30 s idle should the test die first.
//!
//! libvirt's own state file for the binding (its filter's parameters) is copied
//! to `run/libvirt/nwfilter-binding/` under [`Lab::config_root`], where a host
//! has it, and the guest's domain XML gets the `<filterref>`.

use std::{fmt::Write as _, net::Ipv4Addr, path::Path, process::Command};

use anyhow::{bail, Context, Result};

use super::*;

/// What the packaged filter definitions are installed as.
const FILTERS: &str = "/usr/share/libvirt/nwfilter";
const DRIVER: &str =
    "/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_nwfilter.so";

/// A NIC's `<filterref>` as its domain XML has it, with the MAC the domain
/// gives the NIC (libvirt passes it to the filter as `MAC`).
#[derive(Debug, Clone)]
pub struct Filterref {
    pub port: String,
    pub filter: String,
    /// The NIC's `<mac address=>`.
    pub mac: String,
    /// The filter's `IP` parameter.
    pub ip: Ipv4Addr,
}

impl Filterref {
    /// `filter` for the NIC as the guest uses it: its own MAC and address.
    pub fn of(spec: &GuestSpec, filter: &str) -> Self {
        Self {
            port: spec.tap.clone(),
            filter: filter.into(),
            mac: spec.mac.clone(),
            ip: spec.ip,
        }
    }

    /// The `<filterref>` element, indented for an `<interface>`.
    pub(super) fn xml(&self) -> String {
        format!(
            "      <filterref filter='{}'>\n        <parameter name='IP' value='{}'/>\n      \
             </filterref>\n",
            self.filter, self.ip
        )
    }
}

/// Why libvirt cannot run here (not installed), or None.
pub fn libvirt_missing() -> Option<String> {
    let missing: Vec<&str> = ["/usr/sbin/libvirtd", "/usr/bin/virsh", DRIVER, FILTERS]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "libvirt is not installed ({} missing; cargo xtask setup installs libvirt-daemon, \
             libvirt-clients and libvirt-daemon-config-nwfilter)",
            missing.join(", ")
        )
    })
}

impl Lab {
    /// Have libvirt instantiate `f` on its port (see the module's comment).
    /// Returns libvirt's state file for the binding.
    pub fn libvirt_nwfilter(&mut self, f: Filterref) -> Result<PathBuf> {
        if let Some(why) = libvirt_missing() {
            bail!(why);
        }
        let dir = self.config_root.join("run/libvirt/nwfilter-binding");
        std::fs::create_dir_all(&dir)?;
        let binding = self.config_root.join(format!("binding-{}.xml", f.port));
        write_file(&binding, &binding_xml(&f, &self.domain_uuid(&f.port)))?;
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.hv_netns_path().display()))
            .args(["unshare", "--mount", "--propagation", "private"])
            .args(["sh", "-c", SCRIPT, "nwfilter"])
            .arg(&binding)
            .arg(&dir)
            .arg(&f.port)
            .arg(DRIVER)
            .arg(FILTERS)
            .output()
            .context("running libvirtd in the lab")?;
        if !out.status.success() {
            bail!(
                "libvirt could not instantiate {} on {}: {}{}",
                f.filter,
                f.port,
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        self.filterrefs.retain(|r| r.port != f.port);
        let state = dir.join(format!("{}.xml", f.port));
        self.filterrefs.push(f);
        self.write_configs()?;
        Ok(state)
    }

    /// The UUID the lab's domain XML gives the guest on `port`.
    pub(super) fn domain_uuid(&self, port: &str) -> String {
        let (vmid, _) = parse_port(port).unwrap_or((100, 0));
        format!("{:08x}-0000-4000-8000-{:012x}", std::process::id(), vmid)
    }

    /// The `<filterref>` of the NIC on `port`, if one was instantiated.
    pub(super) fn filterref(&self, port: &str) -> Option<&Filterref> {
        self.filterrefs.iter().find(|r| r.port == port)
    }
}

/// What libvirt's QEMU driver hands the nwfilter driver for a starting
/// domain's NIC (virDomainConfNWFilterInstantiate): the owner, the port, its
/// MAC and the filter with the NIC's parameters.
fn binding_xml(f: &Filterref, uuid: &str) -> String {
    let (vmid, _) = parse_port(&f.port).unwrap_or((100, 0));
    let mut xml = String::new();
    let _ = write!(
        xml,
        "<filterbinding>\n  <owner>\n    <name>{name}</name>\n    <uuid>{uuid}</uuid>\n  \
         </owner>\n  <portdev name='{port}'/>\n  <mac address='{mac}'/>\n  \
         <filterref filter='{filter}'>\n    <parameter name='IP' value='{ip}'/>\n  \
         </filterref>\n</filterbinding>\n",
        name = guest_name(vmid),
        port = f.port,
        mac = f.mac,
        filter = f.filter,
        ip = f.ip,
    );
    xml
}

/// Run in the hypervisor namespace under `unshare --mount`: $1 the binding
/// XML, $2 where libvirt's state file goes, $3 the port, $4 the nwfilter
/// driver, $5 the packaged filters. The daemon's log is printed when a step
/// fails.
const SCRIPT: &str = r#"set -eu
binding=$1 out=$2 port=$3 driver=$4 filters=$5
mount -t tmpfs pt-libvirt-run /run
mount -t tmpfs pt-libvirt-var /var
ln -s /run /var/run
mkdir -p /var/lib/libvirt /var/cache/libvirt /var/log/libvirt /run/libvirt /run/pt-drivers
mount -t tmpfs pt-libvirt-etc /etc/libvirt
mkdir /etc/libvirt/nwfilter
cp "$filters"/*.xml /etc/libvirt/nwfilter/
log=/run/libvirt/libvirtd.log
printf 'log_outputs="1:file:%s"\nlog_filters="1:nwfilter 1:firewall 3:*"\n' "$log" \
  > /etc/libvirt/libvirtd.conf
ln -s "$driver" /run/pt-drivers/
export LIBVIRT_DRIVER_DIR=/run/pt-drivers DBUS_SYSTEM_BUS_ADDRESS=unix:path=/run/no-bus
libvirtd --timeout 30 &
daemon=$!
fail() { echo "$1"; tail -n 40 "$log" 2>/dev/null; kill "$daemon" 2>/dev/null; exit 1; }
i=0
until [ -S /run/libvirt/libvirt-sock ]; do
  i=$((i+1)); [ $i -le 100 ] || fail "libvirtd did not start"
  kill -0 "$daemon" 2>/dev/null || fail "libvirtd exited"
  sleep 0.1
done
virsh -q -c nwfilter:///system nwfilter-binding-create "$binding" || fail "nwfilter-binding-create failed"
cp "/run/libvirt/nwfilter-binding/$port.xml" "$out/" || fail "no binding state for $port"
kill "$daemon"
wait "$daemon" || true
"#;
