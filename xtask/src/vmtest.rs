//! `cargo xtask vm-test`: run the end-to-end tests against another kernel.
//!
//! The development machine's kernel has no kprobes and is one version; pathtrace
//! must also work on the kernels hypervisors run (Debian 12's 6.1, 6.12, ...). This
//! boots a Debian cloud kernel under QEMU (TCG: nested KVM hangs on these machines)
//! and runs the same release test binaries inside it, against the same lab.
//!
//! The guest sees the host's root filesystem read-only through virtiofs (so every
//! tool the lab and the scenarios call is there, at the same path), with tmpfs on
//! the writable places, and a modprobe that loads the extracted kernel's modules. A
//! tiny busybox initramfs loads what virtiofs needs, builds that view, runs the
//! tests in a chroot, prints a result line on the serial console and powers off.
//!
//! Kernels are Debian packages fetched with `apt-get download` and unpacked with
//! `dpkg-deb -x` under target/vm-kernels/: nothing is installed into the host.

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use pathtrace_tests::vm::{
    initramfs,
    kernel::Kernel,
    process::{die_with_parent, Reaped},
};

use crate::{cargo, exec, release_bin, root};

/// The line the guest prints when the tests finished; the host parses it.
const RESULT_MARKER: &str = "PATHTRACE-VMTEST-RESULT";
/// virtiofsd from crates.io: Debian 12 does not package it.
const VIRTIOFSD_VERSION: &str = "1.14.0";
/// What building virtiofsd needs on the host (QEMU, busybox and kmod come with
/// `cargo xtask setup`, which vm-test runs first).
const HOST_PACKAGES: &[&str] = &["libseccomp-dev", "libcap-ng-dev"];
/// Modules loaded before the tests, as the development kernel has them built in
/// (br_netfilter above all: it changes what the FORWARD chain sees). Everything
/// else (nft expressions, NAT, sch_ingress, cls_bpf, ...) the kernel loads on
/// demand through modprobe, which finds the extracted modules.
const PRELOAD_MODULES: &[&str] = &[
    "bridge",
    "br_netfilter",
    "veth",
    "tun",
    "nf_tables",
    // Legacy iptables asks for ip_tables through modprobe itself.
    "ip_tables",
];
/// Modules virtiofs needs before the root can be mounted, when they are modules.
const BOOT_MODULES: &[&str] = &["virtio_pci", "virtiofs"];

/// The scenarios issue 9 asks to agree on every kernel; CI runs these on 6.1
/// (`--core`), about 4 minutes under TCG.
pub const CORE_SCENARIOS: &[&str] = &[
    "healthy_ping",
    "nft_forward_drop",
    "ip_forward_off",
    "masquerade_missing",
    "dns_reply_dropped",
    "ping_host_input_drop",
];

/// The layer-2 scenarios (issue 15): bridge VLAN filtering, VLAN devices and
/// bonds, which the development/CI kernel lacks; CI runs these on 6.12
/// (`--l2-core`).
pub const L2_CORE_SCENARIOS: &[&str] = &[
    "vlan_tap_without_pvid",
    "vlan_trunk_lacks_vid",
    "vlan_device_down",
    "vlan_uplink_down",
    "bond_every_slave_down",
    "bond_lacp_without_partner",
];

pub struct Options {
    /// Kernel series, e.g. "6.1" or "6.12".
    pub kernel: String,
    /// Test binary (a file under tests/tests/), e.g. "scenarios".
    pub test: String,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Whole-VM time limit.
    pub timeout: Duration,
    /// Arguments for the test binary (a name filter, --exact, ...).
    pub filter: Vec<String>,
    /// A shell command to run in the VM instead of the tests (to look at how the
    /// kernel behaves, e.g. build a lab by hand).
    pub exec: Option<String>,
    /// A host directory the VM may write to (everything else is read-only): it
    /// appears in the VM as [`VM_OUT`], e.g. for the bench's results.
    pub out_dir: Option<PathBuf>,
}

/// Where [`Options::out_dir`] is mounted in the VM.
pub const VM_OUT: &str = "/run/pathtrace-out";

/// What a VM run came back with.
pub struct VmResult {
    pub kernel_release: String,
    pub test_exit: Option<i32>,
    pub boot: Option<Duration>,
    pub total: Duration,
    /// Each test that finished: name, outcome (ok, failed, ignored), seconds.
    pub tests: Vec<(String, String, f64)>,
}

pub fn run(opts: &Options) -> Result<()> {
    host_tools()?;
    let virtiofsd = virtiofsd()?;
    let test_bin = build(&opts.test)?;
    let kernel = Kernel::fetch(&opts.kernel, &root().join("target/vm-kernels"))?;
    let work = TempDir::new(&root().join("target/vm-test"))?;
    let res = boot_and_test(opts, &kernel, &virtiofsd, &test_bin, &work.0)?;
    eprintln!("xtask: per test on {}:", res.kernel_release);
    for (name, outcome, secs) in &res.tests {
        eprintln!("  {outcome:7} {secs:6.1} s  {name}");
    }
    eprintln!(
        "xtask: vm-test on {}: boot {:.1} s, total {:.1} s, tests {}",
        res.kernel_release,
        res.boot.map_or(f64::NAN, |d| d.as_secs_f64()),
        res.total.as_secs_f64(),
        match res.test_exit {
            Some(0) => "passed".to_string(),
            Some(c) => format!("FAILED (exit {c})"),
            None => "did not report".to_string(),
        }
    );
    match res.test_exit {
        Some(0) => Ok(()),
        Some(c) => bail!("tests failed in the VM ({}): exit {c}", res.kernel_release),
        None => bail!("the VM ({}) gave no test result", res.kernel_release),
    }
}

fn host_tools() -> Result<()> {
    crate::setup::install_missing(HOST_PACKAGES)
}

/// virtiofsd built once into target/vm-tools (a minute or two).
fn virtiofsd() -> Result<PathBuf> {
    let dir = root().join("target/vm-tools");
    let bin = dir.join("bin/virtiofsd");
    let ok = Command::new(&bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(VIRTIOFSD_VERSION));
    if !ok {
        eprintln!("xtask: building virtiofsd {VIRTIOFSD_VERSION} (once)");
        exec(
            Command::new("cargo")
                .args(["install", "--locked", "virtiofsd", "--version"])
                .arg(VIRTIOFSD_VERSION)
                .arg("--root")
                .arg(&dir),
        )?;
    }
    Ok(bin)
}

/// Build pathtrace, fake-guest and the test binary; return the test binary's path
/// (cargo names it with a hash, so ask cargo).
fn build(test: &str) -> Result<PathBuf> {
    crate::build()?;
    let out = cargo()
        .args(["test", "--release", "-p", "pathtrace-tests", "--test", test])
        .args(["--no-run", "--message-format=json"])
        .stderr(Stdio::inherit())
        .output()
        .context("building the test binary")?;
    if !out.status.success() {
        bail!("building the test binary {test} failed");
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == test)
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("no executable for test {test} in cargo's output"))
}

/// A directory removed on drop (also when a step fails).
struct TempDir(PathBuf);

impl TempDir {
    fn new(parent: &Path) -> Result<TempDir> {
        remove_stale_runs(parent);
        let dir = parent.join(format!("run-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Work directories of runs that were killed (Ctrl-C skips destructors): those
/// whose xtask process is gone.
fn remove_stale_runs(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("run-") else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn boot_and_test(
    opts: &Options,
    kernel: &Kernel,
    virtiofsd: &Path,
    test_bin: &Path,
    work: &Path,
) -> Result<VmResult> {
    let initrd = work.join("initramfs.cpio");
    write_initramfs(&initrd, kernel)?;
    let stage2 = work.join("stage2.sh");
    std::fs::write(&stage2, stage2_script(opts, test_bin))?;

    let sock = work.join("virtiofs.sock");
    let _fsd = start_virtiofsd(virtiofsd, &sock, Path::new("/"), true)?;
    let out = match &opts.out_dir {
        Some(dir) => {
            let out_sock = work.join("virtiofs-out.sock");
            Some((start_virtiofsd(virtiofsd, &out_sock, dir, false)?, out_sock))
        }
        None => None,
    };
    let out_sock = out.as_ref().map(|(_, s)| s.as_path());
    let mut qemu = Reaped(start_qemu(opts, kernel, &initrd, &sock, out_sock, &stage2)?);
    let started = Instant::now();

    // Read the console on a thread so the time limit holds even when it is silent.
    let out = qemu.0.stdout.take().context("qemu stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut res = VmResult {
        kernel_release: kernel.release.clone(),
        test_exit: None,
        boot: None,
        total: Duration::ZERO,
        tests: Vec::new(),
    };
    // The whole console, kept for later reading (the terminal shows a digest).
    let log_path = root().join(format!("target/vm-test/{}.log", kernel.release));
    let mut log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    eprintln!("xtask: console log: {}", log_path.display());
    let mut stderr = std::io::stderr();
    loop {
        let left = opts.timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            eprintln!(
                "xtask: the VM did not finish within {:?}; killing it",
                opts.timeout
            );
            break;
        }
        match rx.recv_timeout(left) {
            Ok(line) => {
                let line = line.trim_end_matches('\r');
                let _ = writeln!(log, "{line}");
                match test_event(line) {
                    Some(ev) => {
                        let _ = writeln!(stderr, "vm| {}", ev.show());
                        if let Some(done) = ev.done() {
                            res.tests.push(done);
                        }
                    }
                    None => {
                        let _ = writeln!(stderr, "vm| {line}");
                    }
                }
                if line.contains("PATHTRACE-VMTEST-BOOTED") && res.boot.is_none() {
                    res.boot = Some(started.elapsed());
                }
                if let Some(rest) = line.split(RESULT_MARKER).nth(1) {
                    res.test_exit = rest.trim().trim_start_matches("exit=").parse().ok();
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            // QEMU exited (the guest powered off).
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    res.total = started.elapsed();
    Ok(res)
}

/// One libtest JSON event (`--format json`), e.g. a test that finished.
struct TestEvent(serde_json::Value);

fn test_event(line: &str) -> Option<TestEvent> {
    let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    (v["type"] == "test" || v["type"] == "suite").then_some(TestEvent(v))
}

impl TestEvent {
    /// A human line for the terminal; a failure brings the test's captured output
    /// (the panic and pathtrace's verdicts).
    fn show(&self) -> String {
        let v = &self.0;
        let name = v["name"].as_str().unwrap_or("");
        let event = v["event"].as_str().unwrap_or("");
        let secs = v["exec_time"].as_f64().unwrap_or(0.0);
        match (v["type"].as_str(), event) {
            (Some("suite"), "started") => format!("{} test(s)", v["test_count"]),
            (Some("suite"), _) => format!(
                "suite {event}: {} passed, {} failed, {:.1} s",
                v["passed"], v["failed"], secs
            ),
            (_, "started") => format!("test {name} ..."),
            (_, _) => {
                let out = v["stdout"].as_str().unwrap_or("");
                format!("test {name} {event} ({secs:.1} s)\n{out}")
            }
        }
    }

    fn done(&self) -> Option<(String, String, f64)> {
        let v = &self.0;
        let event = v["event"].as_str()?;
        (v["type"] == "test" && event != "started").then(|| {
            let name = v["name"].as_str().unwrap_or("").to_string();
            (
                name,
                event.to_string(),
                v["exec_time"].as_f64().unwrap_or(0.0),
            )
        })
    }
}

/// Share `dir`: the whole host root read-only (the guest runs the host's tools
/// and the freshly built binaries at their own paths), or an output directory.
fn start_virtiofsd(bin: &Path, sock: &Path, dir: &Path, readonly: bool) -> Result<Reaped> {
    let mut cmd = Command::new(bin);
    die_with_parent(&mut cmd)
        .arg("--socket-path")
        .arg(sock)
        .arg("--shared-dir")
        .arg(dir)
        .args([
            "--sandbox",
            "none",
            "--cache",
            "auto",
            "--log-level",
            "error",
        ]);
    if readonly {
        cmd.arg("--readonly");
    }
    let child = cmd
        .stdin(Stdio::null())
        .spawn()
        .context("starting virtiofsd")?;
    let child = Reaped(child);
    let start = Instant::now();
    while !sock.exists() {
        if start.elapsed() > Duration::from_secs(10) {
            bail!("virtiofsd did not create {}", sock.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

fn start_qemu(
    opts: &Options,
    kernel: &Kernel,
    initrd: &Path,
    sock: &Path,
    out_sock: Option<&Path>,
    stage2: &Path,
) -> Result<Child> {
    let mem = opts.memory_mib;
    // The checkout must stay visible in the guest even where tmpfs covers the
    // host's /tmp (a CI checkout may live there).
    let append = format!(
        "console=ttyS0 quiet loglevel=4 panic=-1 pathtrace.stage2={} pathtrace.keep={}",
        stage2.display(),
        root().display()
    );
    eprintln!(
        "xtask: booting {} under QEMU (TCG, {mem} MiB, 2 CPUs)",
        kernel.release
    );
    let mut cmd = Command::new("nice");
    die_with_parent(&mut cmd)
        .args(["-n", "10", "qemu-system-x86_64"])
        // Nested KVM hangs on these machines; TCG is slow but works.
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "2"])
        .args(["-m", &format!("{mem}M")])
        // virtiofs needs guest memory that virtiofsd can map.
        .args([
            "-object",
            &format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
        ])
        .args(["-numa", "node,memdev=mem"])
        .arg("-chardev")
        .arg(format!("socket,id=vfs,path={}", sock.display()))
        .args(["-device", "vhost-user-fs-pci,chardev=vfs,tag=hostroot"])
        .args([
            "-nographic",
            "-no-reboot",
            "-monitor",
            "none",
            "-serial",
            "stdio",
        ])
        .args(["-nic", "none"])
        .arg("-kernel")
        .arg(kernel.vmlinuz())
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", &append]);
    if let Some(out) = out_sock {
        cmd.arg("-chardev")
            .arg(format!("socket,id=vfsout,path={}", out.display()))
            .args(["-device", "vhost-user-fs-pci,chardev=vfsout,tag=hostout"]);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64")
}

/// The first stage, in the initramfs: load virtiofs, mount the host root with
/// tmpfs on the writable places, run stage 2 there, report, power off. It stays
/// PID 1 throughout, so whatever stage 2 does, the VM reports and stops.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /root
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules/order); do insmod /modules/$m || echo "insmod $m failed"; done
stage2=$(sed -n 's/.*pathtrace.stage2=\([^ ]*\).*/\1/p' /proc/cmdline)
keep=$(sed -n 's/.*pathtrace.keep=\([^ ]*\).*/\1/p' /proc/cmdline)
R=/root
if mount -t virtiofs -o ro hostroot $R; then
  for d in proc sys dev; do mount --bind /$d $R/$d; done
  # The checkout (binaries, stage 2) may be under /tmp: keep it through the tmpfs.
  mkdir -p /keep && mount --bind $R$keep /keep
  for d in tmp run var/tmp; do mount -t tmpfs tmpfs $R/$d; done
  mkdir -p $R$keep && mount --bind /keep $R$keep
  # A writable host directory (VM_OUT), when the run has one (Options::out_dir).
  mkdir -p $R/run/pathtrace-out
  mount -t virtiofs hostout $R/run/pathtrace-out 2>/dev/null || rmdir $R/run/pathtrace-out
  # The kernel runs modprobe from its own root (this initramfs), the tests from
  # the host's: the same path in both, each finding the unpacked kernel's modules.
  mkdir -p /run
  cp /bin/vm-modprobe /run/vm-modprobe
  cp /bin/vm-modprobe $R/run/vm-modprobe
  echo /run/vm-modprobe > /proc/sys/kernel/modprobe
  echo PATHTRACE-VMTEST-BOOTED
  chroot $R /bin/sh $stage2
  rc=$?
else
  echo "mounting the host root over virtiofs failed"
  rc=255
fi
echo "PATHTRACE-VMTEST-RESULT exit=$rc"
sync
poweroff -f
"#;

/// The second stage, in the host's root: the kernel's modules, the mounts
/// pathtrace expects, then the test binary.
fn stage2_script(opts: &Options, test_bin: &Path) -> String {
    let filter: Vec<String> = opts.filter.iter().map(|a| shell_quote(a)).collect();
    format!(
        r#"set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/tmp RUST_BACKTRACE=1
# Lets the (stable) test harness print JSON events with times, which the host
# parses: --format json --report-time are unstable options.
export RUSTC_BOOTSTRAP=1
export PATHTRACE_BIN={pathtrace} FAKE_GUEST_BIN={guest}
mkdir -p /run/netns
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
# Terminals (tmux in the watch live-view test) need pseudo-terminals.
mkdir -p /dev/pts && mount -t devpts -o ptmxmode=0666 devpts /dev/pts
/run/vm-modprobe -a {preload} || echo "modprobe failed"
ip link set lo up
echo "kernel $(uname -r); btf: $(ls -la /sys/kernel/btf/vmlinux 2>&1)"
cd {tests_dir}
start=$(date +%s)
{command}
rc=$?
echo "tests took $(( $(date +%s) - start )) s"
exit $rc
"#,
        pathtrace = release_bin("pathtrace").display(),
        guest = release_bin("fake-guest").display(),
        preload = PRELOAD_MODULES.join(" "),
        // cargo runs test binaries in their package's directory.
        tests_dir = root().join("tests").display(),
        command = match &opts.exec {
            Some(cmd) => format!("sh -c {}", shell_quote(cmd)),
            None => format!(
                "{} --test-threads=1 -Z unstable-options --format json --report-time {}",
                test_bin.display(),
                filter.join(" ")
            ),
        },
    )
}

/// modprobe for the unpacked kernel (the host root has no /usr/lib/modules/REL,
/// and is read-only). Run from the initramfs root (the kernel's on-demand loads:
/// nft expressions, NAT chains, qdiscs), it enters the host root first.
fn modprobe_wrapper(kernel: &Kernel) -> String {
    format!(
        "#!/bin/sh\n\
         if [ -x /usr/sbin/modprobe ]; then exec /usr/sbin/modprobe -d {dir} \"$@\"; fi\n\
         exec /bin/busybox chroot /root /usr/sbin/modprobe -d {dir} \"$@\"\n",
        dir = kernel.dir.display()
    )
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A newc cpio: /init, /bin/busybox, and the boot modules with their load order.
fn write_initramfs(path: &Path, kernel: &Kernel) -> Result<()> {
    let mut cpio = initramfs::with_busybox(INIT)?;
    cpio.file(
        "bin/vm-modprobe",
        0o755,
        modprobe_wrapper(kernel).as_bytes(),
    );
    initramfs::add_modules(&mut cpio, kernel, BOOT_MODULES)?;
    std::fs::write(path, cpio.finish())?;
    Ok(())
}
