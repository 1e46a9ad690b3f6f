//! Load the eBPF object without aya parsing the kernel's BTF.
//!
//! aya 0.14's `EbpfLoader::new()` always parses `/sys/kernel/btf/vmlinux` into
//! its own model of every kernel type, for CO-RE relocations. Rust eBPF programs
//! have none (pathtrace resolves offsets from BTF itself, with its small reader),
//! yet that parse took pathtrace's peak memory from 6 MB to 31 MB on 6.18.
//! `EbpfLoader::btf(None)` only drops it after the fact, so the loader is built
//! on a thread that sees an empty `/sys/kernel/btf`: its own mount namespace
//! (private, so nothing propagates to the host's), where a tiny read-only
//! tmpfs covers the directory. The namespace goes away with the thread.
//! Where that cannot be arranged the loader simply runs as usual.

use std::ffi::CString;

/// Run `f` (which builds and uses an `EbpfLoader`) where the kernel's BTF is
/// hidden if possible, else as is; its result comes back.
pub fn run<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            if !hide_btf() {
                log::debug!(
                    "loading the eBPF object with aya's kernel BTF parse (could not hide it)"
                );
            }
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// In this thread only: a mount namespace of its own where `/sys/kernel/btf`
/// is empty. False (and nothing changed for anyone else) when any step fails.
fn hide_btf() -> bool {
    let c = |s: &str| CString::new(s).expect("no NUL");
    let (root, dir, tmpfs, opts) = (
        c("/"),
        c("/sys/kernel/btf"),
        c("tmpfs"),
        c("size=4k,mode=0555"),
    );
    // SAFETY: plain system calls on valid C strings. unshare(CLONE_NEWNS) moves
    // only this thread (it implies CLONE_FS, this thread's own fs context).
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return false;
        }
        // Private first: a mount made below must never reach the host.
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return false;
        }
        libc::mount(
            tmpfs.as_ptr(),
            dir.as_ptr(),
            tmpfs.as_ptr(),
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            opts.as_ptr().cast(),
        ) == 0
    }
}
