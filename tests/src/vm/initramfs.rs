//! Initramfs images for test VMs, written in Rust as "newc" cpio archives: busybox,
//! an `/init` script, and kernel modules in `/modules` with their load order in
//! `/modules/order` (busybox `insmod` loads one file and knows no dependencies).

use std::{
    io::Write,
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use super::kernel::Kernel;

/// An archive with `/init` (the script PID 1 runs), `/bin/busybox` (from the
/// host's busybox-static) and the empty directories init mounts on.
pub fn with_busybox(init: &str) -> Result<Cpio> {
    let busybox = std::fs::read("/bin/busybox").context("reading /bin/busybox (busybox-static)")?;
    let mut cpio = Cpio::default();
    for d in ["bin", "modules", "proc", "sys", "dev", "root", "tmp"] {
        cpio.dir(d);
    }
    cpio.file("init", 0o755, init.as_bytes());
    cpio.file("bin/busybox", 0o755, &busybox);
    Ok(cpio)
}

/// Put the modules that load `names` (dependencies first) into `/modules`, and
/// their file names, in load order, into `/modules/order`.
pub fn add_modules(cpio: &mut Cpio, kernel: &Kernel, names: &[&str]) -> Result<()> {
    let mut order = String::new();
    for rel in kernel.module_closure(names)? {
        let data = std::fs::read(kernel.modules().join(&rel))?;
        // busybox insmod cannot decompress: hand it the plain module.
        let (name, data) = match rel.strip_suffix(".xz") {
            Some(plain) => (plain, xz_decompress(&data)?),
            None => (rel.as_str(), data),
        };
        let name = name.rsplit('/').next().unwrap_or(name);
        cpio.file(&format!("modules/{name}"), 0o644, &data);
        order.push_str(name);
        order.push('\n');
    }
    cpio.file("modules/order", 0o644, order.as_bytes());
    Ok(())
}

fn xz_decompress(data: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new("xz")
        .args(["-dc"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("xz")?;
    let mut stdin = child.stdin.take().context("xz stdin")?;
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output()?;
    writer.join().map_err(|_| anyhow::anyhow!("xz writer"))??;
    if !out.status.success() {
        bail!("xz -dc failed");
    }
    Ok(out.stdout)
}

/// The "newc" cpio format the kernel unpacks as initramfs: a 110-byte ASCII
/// header per entry, name and data each padded to 4 bytes, a TRAILER!!! entry.
#[derive(Default)]
pub struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0, // uid
            0, // gid
            1, // nlink
            0, // mtime
            data.len(),
            0, // dev major
            0, // dev minor
            0, // rdev major
            0, // rdev minor
            name.len() + 1,
            0, // check
        );
        self.buf.extend_from_slice(header.as_bytes());
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[]);
    }

    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, data);
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_entries_are_aligned_and_end_with_the_trailer() {
        let mut c = Cpio::default();
        c.dir("bin");
        c.file("init", 0o755, b"#!/bin/sh\n");
        let buf = c.finish();
        assert_eq!(buf.len() % 4, 0);
        assert!(buf.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&buf);
        // The second entry's header starts on a 4-byte boundary.
        let second = text.match_indices("070701").nth(1).map(|(i, _)| i);
        assert_eq!(second.map(|i| i % 4), Some(0));
        assert!(text.contains("TRAILER!!!\0"));
        // Mode and size of "init": regular file 0755, 10 bytes.
        assert!(text.contains(&format!("{:08x}", 0o100755)));
        assert!(text.contains(&format!("{:08x}", 10)));
    }
}
