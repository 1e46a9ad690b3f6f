//! A KVM hypervisor in network namespaces, for the demo and the tests.
//!
//!   guest (fake-guest on tap100i0) ── vmbr0 192.0.2.1/24 ┐ hv namespace,
//!                                     eth0 198.51.100.2 ─┘ MASQUERADE out of eth0
//!                                           │ veth
//!   inet namespace: isp0 198.51.100.1, hosts 203.0.113.8 and .53 (DNS) on lo,
//!                   no route back to 192.0.2.0/24 (so NAT is required)
//!
//! Only RFC 5737 addresses; nothing outside the lab's own namespaces is changed.
//! Everything is removed on drop, and `up` first removes leftovers of killed runs.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{bail, Context, Result};

pub use crate::guest::{DnsResult, Guest, GuestSpec, PingOpts, PingResult};

const PREFIX: &str = "ptlab";
static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct LabOptions {
    pub guest_bin: PathBuf,
    pub guests: Vec<GuestSpec>,
}

impl LabOptions {
    /// One guest, 192.0.2.100 on tap100i0.
    pub fn new(guest_bin: PathBuf) -> Self {
        Self {
            guest_bin,
            guests: vec![GuestSpec::nth(0)],
        }
    }
}

/// Ways to break the path on purpose; `repair` undoes exactly each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// An nftables rule in the forward chain drops the guest's packets.
    NftForwardDrop,
    /// net.ipv4.ip_forward=0 on the hypervisor.
    IpForwardOff,
    /// The MASQUERADE rule is gone.
    NoMasquerade,
}

pub struct Lab {
    hv: String,
    inet: String,
    guest_bin: PathBuf,
    guests: Vec<Guest>,
    helpers: Vec<Child>,
}

impl Lab {
    pub fn up(opts: LabOptions) -> Result<Self> {
        Self::cleanup_stale();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let base = format!("{PREFIX}{}x{n}", std::process::id());
        let mut lab = Lab {
            hv: format!("{base}-hv"),
            inet: format!("{base}-inet"),
            guest_bin: opts.guest_bin,
            guests: Vec::new(),
            helpers: Vec::new(),
        };
        // From here on, Drop removes whatever was created, even if a step fails.
        lab.build()?;
        let inet = lab.inet.clone();
        lab.start_dns_server(&inet, "203.0.113.53:53")?;
        for spec in opts.guests {
            lab.add_guest(spec)?;
        }
        Ok(lab)
    }

    fn build(&mut self) -> Result<()> {
        let (hv, inet) = (self.hv.clone(), self.inet.clone());
        sh(&format!("ip netns add {hv} && ip netns add {inet}"))?;
        self.hv("ip link set lo up")?;
        self.inet("ip link set lo up")?;
        self.hv(
            // A fixed MAC, as libvirt and Proxmox give their bridges: otherwise the
            // bridge takes its lowest port's MAC, and every new port with a lower
            // one changes it and flushes the host's neighbour table.
            "ip link add vmbr0 address 02:00:00:00:01:01 type bridge stp_state 0 forward_delay 0 && \
             ip addr add 192.0.2.1/24 dev vmbr0 && ip link set vmbr0 up",
        )?;
        sh(&format!(
            "ip link add eth0 netns {hv} type veth peer name isp0 netns {inet}"
        ))?;
        self.hv(
            "ip addr add 198.51.100.2/24 dev eth0 && ip link set eth0 up && \
             ip route add default via 198.51.100.1 && sysctl -qw net.ipv4.ip_forward=1",
        )?;
        self.inet(
            "ip addr add 198.51.100.1/24 dev isp0 && ip link set isp0 up && \
             ip addr add 203.0.113.8/32 dev lo && ip addr add 203.0.113.53/32 dev lo",
        )?;
        self.masquerade()
    }

    fn masquerade(&self) -> Result<()> {
        self.nft(
            "add table ip nat\n\
             add chain ip nat postrouting { type nat hook postrouting priority srcnat; policy accept; }\n\
             add rule ip nat postrouting oifname \"eth0\" ip saddr 192.0.2.0/24 masquerade\n",
        )
    }

    /// A resolver on the hypervisor itself (192.0.2.1:53), as dnsmasq on a bridge.
    pub fn start_host_resolver(&mut self) -> Result<()> {
        let hv = self.hv.clone();
        self.start_dns_server(&hv, "192.0.2.1:53")
    }

    fn start_dns_server(&mut self, ns: &str, listen: &str) -> Result<()> {
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg(&self.guest_bin)
            .args(["dns-server", "--listen", listen])
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the lab's DNS responder")?;
        let mut line = String::new();
        let out = child.stdout.take().context("dns stdout")?;
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line)?;
        self.helpers.push(child);
        if !line.contains("\"ready\":true") {
            bail!("DNS responder failed: {line}");
        }
        Ok(())
    }

    /// Add a guest: a persistent TAP port on vmbr0, held open by a fake guest.
    pub fn add_guest(&mut self, spec: GuestSpec) -> Result<()> {
        let guest = self.plug(spec)?;
        self.guests.push(guest);
        Ok(())
    }

    fn plug(&self, spec: GuestSpec) -> Result<Guest> {
        self.hv(&format!(
            "ip tuntap add dev {t} mode tap && ip link set {t} master vmbr0 && ip link set {t} up",
            t = spec.tap
        ))?;
        Guest::start(&self.guest_bin, &self.hv_netns_path(), spec)
    }

    /// Like a VM reboot: guest `i` goes away with its port, and both come back
    /// (the port under a new interface index).
    pub fn recreate_port(&mut self, i: usize) -> Result<()> {
        let spec = self.guests[i].spec.clone();
        drop(self.guests.remove(i));
        self.hv(&format!("ip link del {}", spec.tap))?;
        let guest = self.plug(spec)?;
        self.guests.insert(i, guest);
        Ok(())
    }

    /// Like a VM shut down: guest `i` goes away with its port.
    pub fn remove_guest(&mut self, i: usize) -> Result<()> {
        let guest = self.guests.remove(i);
        let tap = guest.spec.tap.clone();
        drop(guest);
        self.hv(&format!("ip link del {tap}")).map(drop)
    }

    pub fn hv_ns(&self) -> &str {
        &self.hv
    }

    pub fn inet_ns(&self) -> &str {
        &self.inet
    }

    pub fn hv_netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.hv)
    }

    pub fn guest(&mut self, i: usize) -> &mut Guest {
        &mut self.guests[i]
    }

    /// Run a shell command in the hypervisor namespace; its stdout, or an error
    /// carrying its stderr.
    pub fn hv(&self, cmd: &str) -> Result<String> {
        in_netns(&self.hv, cmd)
    }

    pub fn inet(&self, cmd: &str) -> Result<String> {
        in_netns(&self.inet, cmd)
    }

    /// Load an nft script in the hypervisor namespace (`nft -f -`).
    pub fn nft(&self, script: &str) -> Result<()> {
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.hv))
            .args(["nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        std::io::Write::write_all(
            child.stdin.as_mut().context("nft stdin")?,
            script.as_bytes(),
        )?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("nft -f: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// `program args...` to be run inside the hypervisor namespace.
    pub fn command_in_hv(&self, program: &Path, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.hv_netns_path().display()))
            .arg(program)
            .args(args);
        c
    }

    pub fn break_path(&mut self, fault: Fault) -> Result<()> {
        match fault {
            Fault::NftForwardDrop => self.nft(
                "add table inet filter\n\
                 add chain inet filter forward { type filter hook forward priority filter; policy accept; }\n\
                 add rule inet filter forward ip saddr 192.0.2.100 drop\n",
            ),
            Fault::IpForwardOff => self.hv("sysctl -qw net.ipv4.ip_forward=0").map(drop),
            Fault::NoMasquerade => self.nft("delete table ip nat\n"),
        }
    }

    pub fn repair(&mut self, fault: Fault) -> Result<()> {
        match fault {
            Fault::NftForwardDrop => self.nft("delete table inet filter\n"),
            Fault::IpForwardOff => self.hv("sysctl -qw net.ipv4.ip_forward=1").map(drop),
            Fault::NoMasquerade => self.masquerade(),
        }
    }

    /// Unrelated drops on the hypervisor while a trace runs: datagrams from the
    /// internet side to a closed port of the host (dropped, NO_SOCKET) and the host
    /// itself pinging the traced destination. Bounded in count and time; stops when
    /// the handle drops.
    pub fn noise(&mut self, duration: Duration) -> Result<NoiseHandle> {
        let secs = duration.as_secs().max(1);
        let udp = spawn_in(
            &self.inet,
            &format!(
                "end=$(( $(date +%s) + {secs} )); i=0; \
                 while [ $i -lt 2000 ] && [ $(date +%s) -lt $end ]; do \
                 echo x > /dev/udp/198.51.100.2/9; i=$((i+1)); sleep 0.01; done"
            ),
        )?;
        let ping = spawn_in(
            &self.hv,
            &format!(
                "ping -q -c {} -i 0.2 -w {secs} 203.0.113.8 >/dev/null",
                secs * 5
            ),
        )?;
        Ok(NoiseHandle {
            children: vec![udp, ping],
        })
    }

    /// Remove labs whose creating process is gone (a killed test run).
    pub fn cleanup_stale() {
        cleanup_stale_netns(PREFIX);
    }
}

/// Remove namespaces named `{prefix}{pid}...` whose creating process is gone.
pub fn cleanup_stale_netns(prefix: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let Ok(pid) = digits.parse::<u32>() else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            remove_netns(name);
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.guests.clear();
        for c in &mut self.helpers {
            let _ = c.kill();
            let _ = c.wait();
        }
        remove_netns(&self.hv);
        remove_netns(&self.inet);
    }
}

pub struct NoiseHandle {
    children: Vec<Child>,
}

impl Drop for NoiseHandle {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Kill what still runs inside a namespace, then delete it (its interfaces go too).
pub fn remove_netns(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stderr(Stdio::null())
        .status();
}

fn sh(cmd: &str) -> Result<String> {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "`{cmd}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `nsenter --net` keeps the host's mounts (tracefs, bpffs), unlike `ip netns exec`.
fn in_netns(ns: &str, cmd: &str) -> Result<String> {
    sh(&format!(
        "nsenter --net=/run/netns/{ns} sh -c '{}'",
        cmd.replace('\'', "'\\''")
    ))
}

fn spawn_in(ns: &str, script: &str) -> Result<Child> {
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args(["bash", "-c", script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting noise")
}
