//! A real Linux guest on a lab's TAP port: a Debian cloud kernel under QEMU (TCG;
//! nested KVM hangs on the development machines) with virtio-net on the TAP, QEMU
//! opening the persistent TAP itself the way Proxmox starts its VMs
//! (`-netdev tap,ifname=tap100i0,script=no,downscript=no`), from inside the lab's
//! hypervisor namespace.
//!
//! The guest is a busybox initramfs whose init loads the virtio-net modules,
//! configures the NIC from the kernel command line, resolves its gateway, says
//! `ready` on the serial console and then runs the commands the test writes to the
//! console, one per line, each bounded by `timeout`:
//!
//! ```text
//! host → guest:  ID SECS COMMAND...
//! guest → host:  PTGUEST out ID <a line of its output>
//!                PTGUEST done ID rc=N
//! ```
//!
//! The fake guest (tests/src/bin/fake-guest/) stands for a VM in most tests;
//! this one checks that a real kernel's ARP, ICMP and DNS give the same verdicts.

use std::{
    io::{BufRead, BufReader, Write},
    net::IpAddr,
    path::{Path, PathBuf},
    process::{ChildStdin, Command, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    guest::GuestSpec,
    lab::Lab,
    vm::{
        initramfs,
        kernel::Kernel,
        process::{die_with_parent, Reaped},
    },
};

/// What the guest's lines on the console start with (after any escape sequences
/// the firmware left on the line).
const MARKER: &str = "PTGUEST ";
/// Modules for virtio-net on the PCI transport, in dependency order once
/// [`Kernel::module_closure`] has added what they need (virtio_ring, virtio,
/// virtio_pci_{legacy,modern}_dev, failover, net_failover).
const NET_MODULES: &[&str] = &["virtio_pci", "virtio_net"];
/// Kernel series used unless `PATHTRACE_GUEST_KERNEL` names another (the oldest
/// supported one, which CI's VM runs use too).
const DEFAULT_SERIES: &str = "6.1";
/// Guest memory: a busybox initramfs needs little.
const MEMORY_MIB: u32 = 256;
/// Boot, module loading and the gateway's ARP, under TCG on a busy machine.
const BOOT_LIMIT: Duration = Duration::from_secs(90);

/// PID 1: modules, NIC, gateway, then the command loop on the console. The
/// console echoes what it reads unless told not to.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo 1 > /proc/sys/kernel/printk
stty -echo < /dev/console
for m in $(cat /modules/order); do
  insmod /modules/$m || echo "PTGUEST error insmod $m failed"
done
arg() { sed -n "s/.*pathtrace\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
gw=$(arg gw)
# The one NIC QEMU gives it (no udev here: the kernel's own name).
dev=$(ls /sys/class/net | grep -v '^lo$' | head -n 1)
ip link set lo up
ip link set "$dev" up
ip addr add "$(arg ip)" dev "$dev"
ip route add default via "$gw"
# IPv6 when given, static like the fake guest's: no router advertisements, no
# duplicate address detection (the address is usable at once; busybox ip knows
# no `nodad`).
ip6=$(arg ip6)
if [ -n "$ip6" ]; then
  echo 0 > /proc/sys/net/ipv6/conf/"$dev"/accept_ra
  echo 0 > /proc/sys/net/ipv6/conf/"$dev"/accept_dad
  ip -6 addr add "$ip6" dev "$dev" || echo "PTGUEST error ip6 address"
  ip -6 route add default via "$(arg gw6)" dev "$dev" || echo "PTGUEST error ip6 route"
fi
# Resolve the gateway before the tests send: the first frame after the TAP gets
# its carrier can be dropped by the bridge while the port becomes forwarding.
gwok=0
for i in 1 2 3 4 5; do
  if ping -c 1 -W 2 "$gw" >/dev/null 2>&1; then gwok=1; break; fi
done
# The IPv6 gateway too: the host then knows the guest's address (neighbour entry).
if [ -n "$ip6" ]; then
  for i in 1 2 3; do
    if ping -c 1 -W 2 "$(arg gw6)" >/dev/null 2>&1; then break; fi
  done
fi
echo
echo "PTGUEST ready dev=$dev gateway=$gwok"
while read -r id secs cmd; do
  timeout "$secs" sh -c "$cmd" > /tmp/out 2>&1
  rc=$?
  sed "s/^/PTGUEST out $id /" /tmp/out
  echo "PTGUEST done $id rc=$rc"
done
poweroff -f
"#;

/// The kernel the real-guest tests boot: Debian's cloud kernel of
/// `PATHTRACE_GUEST_KERNEL` (default 6.1), fetched once into target/vm-kernels/
/// (shared with `cargo xtask vm-test`).
pub fn guest_kernel() -> Result<Kernel> {
    let series =
        std::env::var("PATHTRACE_GUEST_KERNEL").unwrap_or_else(|_| DEFAULT_SERIES.to_string());
    Kernel::fetch(&series, &workspace_target().join("vm-kernels"))
}

fn workspace_target() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target")
}

/// What one command printed in the guest, and its exit status (143: busybox
/// `timeout` ended it).
#[derive(Debug, Clone)]
pub struct Output {
    pub rc: i32,
    pub lines: Vec<String>,
}

/// busybox ping's closing statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingStats {
    pub transmitted: u32,
    pub received: u32,
}

/// A QEMU guest on a lab port; QEMU is killed when it drops (no clean power-off
/// needed: the TAP closes with it) and, through `PR_SET_PDEATHSIG`, when the
/// thread that booted it dies.
pub struct RealGuest {
    pub spec: GuestSpec,
    stdin: ChildStdin,
    lines: Receiver<String>,
    /// Every console line so far, for failure messages.
    console: Vec<String>,
    next_id: u32,
    boot_time: Duration,
    _qemu: Reaped,
}

impl RealGuest {
    /// Boot `kernel` with its NIC on `spec.tap` (a port made by [`Lab::add_port`])
    /// in the lab's hypervisor namespace; returns once the guest has resolved its
    /// gateway.
    pub fn boot(lab: &Lab, spec: GuestSpec, kernel: &Kernel) -> Result<Self> {
        let initrd = write_initramfs(kernel)?;
        let mut qemu = Reaped(
            qemu_command(lab, &spec, kernel, &initrd)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("starting qemu-system-x86_64 (qemu-system-x86)")?,
        );
        let started = Instant::now();
        let stdin = qemu.0.stdin.take().context("qemu stdin")?;
        // Read on threads, so waits can time out; QEMU's own complaints (a TAP it
        // cannot open) join the console lines.
        let (tx, lines) = mpsc::channel();
        forward_lines(qemu.0.stdout.take().context("qemu stdout")?, tx.clone());
        forward_lines(qemu.0.stderr.take().context("qemu stderr")?, tx);
        let mut guest = RealGuest {
            spec,
            stdin,
            lines,
            console: Vec::new(),
            next_id: 0,
            boot_time: Duration::ZERO,
            _qemu: qemu,
        };
        let ready = guest
            .wait_for(BOOT_LIMIT, |l| l.starts_with("ready "))
            .with_context(|| format!("booting {} on {}", kernel.release, guest.spec.tap))?;
        guest.boot_time = started.elapsed();
        if !ready.contains("gateway=1") {
            bail!(
                "the guest on {} could not reach its gateway {}: {}",
                guest.spec.tap,
                guest.spec.gateway,
                guest.console_tail()
            );
        }
        Ok(guest)
    }

    /// From starting QEMU to the guest's `ready`.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// Run a shell command in the guest, ended there after `limit`.
    pub fn run(&mut self, cmd: &str, limit: Duration) -> Result<Output> {
        self.next_id += 1;
        let id = self.next_id;
        let secs = limit.as_secs().max(1);
        writeln!(self.stdin, "{id} {secs} {cmd}")?;
        self.stdin.flush()?;
        let out_prefix = format!("out {id} ");
        let done_prefix = format!("done {id} rc=");
        let mut lines = Vec::new();
        // The guest's own timeout ends the command; a margin for the console.
        let deadline = Instant::now() + limit + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = self
                .wait_for(left, |l| {
                    l.starts_with(&out_prefix) || l.starts_with(&done_prefix)
                })
                .with_context(|| format!("guest command {cmd:?}"))?;
            if let Some(text) = msg.strip_prefix(&out_prefix) {
                lines.push(text.to_string());
            } else if let Some(rc) = msg.strip_prefix(&done_prefix) {
                let rc = rc.trim().parse().context("guest exit status")?;
                return Ok(Output { rc, lines });
            }
        }
    }

    /// `count` pings to `dst`, one a second; returns busybox's statistics.
    /// `count` busybox pings to `dst` (IPv4 or IPv6).
    pub fn ping(&mut self, dst: IpAddr, count: u32) -> Result<PingStats> {
        let deadline = count + 3;
        let out = self.run(
            &format!("ping -c {count} -W 2 -w {deadline} {dst}"),
            Duration::from_secs(u64::from(deadline) + 2),
        )?;
        parse_ping_stats(&out.lines)
            .with_context(|| format!("no statistics from ping: {:?}", out.lines))
    }

    /// One A query (AAAA when `server` is IPv6) for `name` to `server` with
    /// busybox nslookup (it retries on its own until its timeout).
    pub fn nslookup(&mut self, server: IpAddr, name: &str) -> Result<Output> {
        let qtype = if server.is_ipv6() { "aaaa" } else { "a" };
        self.run(
            &format!("nslookup -type={qtype} {name} {server}"),
            Duration::from_secs(12),
        )
    }

    /// The last console lines, for a failure message.
    pub fn console_tail(&self) -> String {
        let from = self.console.len().saturating_sub(30);
        self.console[from..].join("\n")
    }

    /// The next guest message (the text after [`MARKER`]) that `wanted` accepts;
    /// other console lines are kept for [`Self::console_tail`].
    fn wait_for(&mut self, limit: Duration, wanted: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(line) => line,
                Err(RecvTimeoutError::Timeout) => {
                    bail!(
                        "no answer within {limit:?}; console:\n{}",
                        self.console_tail()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    bail!("QEMU exited; console:\n{}", self.console_tail())
                }
            };
            self.console.push(line.clone());
            let Some(msg) = line.find(MARKER).map(|i| &line[i + MARKER.len()..]) else {
                continue;
            };
            if let Some(err) = msg.strip_prefix("error ") {
                bail!("guest: {err}");
            }
            if wanted(msg) {
                return Ok(msg.to_string());
            }
        }
    }
}

/// `nsenter --net=HV qemu-system-x86_64 ...`: the NIC on the persistent TAP as
/// Proxmox attaches it, the console on stdin/stdout.
fn qemu_command(lab: &Lab, spec: &GuestSpec, kernel: &Kernel, initrd: &Path) -> Command {
    let mut cmd = Command::new("nsenter");
    die_with_parent(&mut cmd)
        .arg(format!("--net={}", lab.hv_netns_path().display()))
        .arg("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "1"])
        .args(["-m", &format!("{MEMORY_MIB}M")])
        .args(["-nodefaults", "-display", "none", "-no-reboot"])
        .args(["-serial", "stdio"])
        .arg("-netdev")
        .arg(format!(
            "tap,id=n0,ifname={},script=no,downscript=no",
            spec.tap
        ))
        // No option ROM: the kernel is loaded directly, nothing boots from the NIC.
        .arg("-device")
        .arg(format!(
            "virtio-net-pci,netdev=n0,mac={},romfile=",
            spec.mac
        ))
        .arg("-kernel")
        .arg(kernel.vmlinuz())
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 quiet loglevel=1 panic=-1 pathtrace.ip={}/{} pathtrace.gw={}{}",
            spec.ip,
            spec.prefix,
            spec.gateway,
            spec.v6
                .map(|v| format!(
                    " pathtrace.ip6={}/{} pathtrace.gw6={}",
                    v.ip, v.prefix, v.gateway
                ))
                .unwrap_or_default()
        ));
    cmd
}

/// The initramfs for `kernel`, written to target/real-guest/ (rewritten each boot:
/// it takes milliseconds, and a changed init script is never stale).
fn write_initramfs(kernel: &Kernel) -> Result<PathBuf> {
    let mut cpio = initramfs::with_busybox(INIT)?;
    initramfs::add_modules(&mut cpio, kernel, NET_MODULES)?;
    let dir = workspace_target().join("real-guest");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("initramfs-{}.cpio", kernel.release));
    let tmp = dir.join(format!(".initramfs-{}.cpio", std::process::id()));
    std::fs::write(&tmp, cpio.finish())?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Each line of `out` onto `tx` until either ends.
fn forward_lines(out: impl std::io::Read + Send + 'static, tx: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        let mut out = BufReader::new(out);
        let mut buf = Vec::new();
        // Bytes, not str lines: firmware and kernel may print anything.
        while out.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let line = String::from_utf8_lossy(&buf);
            let line = line.trim_end_matches(['\n', '\r']).to_string();
            buf.clear();
            if tx.send(line).is_err() {
                break;
            }
        }
    });
}

/// `3 packets transmitted, 2 packets received, 33% packet loss`.
fn parse_ping_stats(lines: &[String]) -> Option<PingStats> {
    let line = lines.iter().find(|l| l.contains("packets transmitted"))?;
    let mut words = line.split_whitespace();
    let transmitted = words.next()?.parse().ok()?;
    let received = line
        .split(", ")
        .find(|p| p.ends_with("received"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(PingStats {
        transmitted,
        received,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busybox_ping_statistics() {
        let lines: Vec<String> = [
            "PING 203.0.113.8 (203.0.113.8): 56 data bytes",
            "",
            "--- 203.0.113.8 ping statistics ---",
            "3 packets transmitted, 0 packets received, 100% packet loss",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            parse_ping_stats(&lines),
            Some(PingStats {
                transmitted: 3,
                received: 0
            })
        );
        assert_eq!(parse_ping_stats(&lines[..2]), None);
    }
}
