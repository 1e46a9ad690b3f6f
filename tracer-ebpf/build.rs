use which::which;

/// The eBPF object depends on the `bpf-linker` binary, which cargo cannot see:
/// rebuild when it changes (same approach as aya-template).
fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
