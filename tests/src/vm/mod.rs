//! What booting a Debian cloud kernel under QEMU takes, shared by the VM test
//! runner (`cargo xtask vm-test`, the tests inside another kernel) and the
//! real-guest tests (a Linux guest on a lab's TAP): the kernel package fetched and
//! unpacked once, a busybox initramfs written as cpio, and QEMU processes that
//! never outlive their owner.

pub mod initramfs;
pub mod kernel;
pub mod process;

use std::process::Command;

use anyhow::{bail, Context, Result};

/// Run `cmd`, failing with its command line when it fails.
fn exec(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}
