//! QEMU (and its helpers) as child processes that never outlive the test or
//! runner that started them.

use std::process::{Child, Command};

/// Have the kernel kill a child when the thread that started it dies, however it
/// dies (SIGKILL included), so no QEMU or virtiofsd is left running. Survives exec
/// (`nice`, `nsenter`). Start the child on a thread that lives as long as it.
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// A child process killed and reaped on drop, so no QEMU or virtiofsd outlives us.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
