//! A stand-in for "someone else's" TC program (a firewall's, a CNI's): a tiny
//! packet counter loaded with raw bpf(2) calls and attached with its own tcx link,
//! so tests can check that pathtrace never disturbs programs it did not attach.
//! No compiler needed: ten hand-assembled instructions.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{bail, Result};

const BPF_MAP_CREATE: u32 = 0;
const BPF_MAP_LOOKUP_ELEM: u32 = 1;
const BPF_PROG_LOAD: u32 = 5;
const BPF_LINK_CREATE: u32 = 28;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;

fn bpf(cmd: u32, attr: &mut [u8; 128]) -> Result<OwnedFd> {
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if fd < 0 {
        bail!("bpf({cmd}): {}", std::io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn put(attr: &mut [u8; 128], at: usize, bytes: &[u8]) {
    attr[at..at + bytes.len()].copy_from_slice(bytes);
}

/// One eBPF instruction: opcode, dst and src registers, offset, immediate.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut i = [0u8; 8];
    i[0] = code;
    i[1] = (src << 4) | (dst & 0x0f);
    i[2..4].copy_from_slice(&off.to_le_bytes());
    i[4..8].copy_from_slice(&imm.to_le_bytes());
    i
}

/// Counts packets on an interface's TC ingress; detaches when dropped.
pub struct Counter {
    map: OwnedFd,
    _prog: OwnedFd,
    _link: OwnedFd,
}

impl Counter {
    /// Attach to `ifindex` (in the caller's network namespace).
    pub fn attach(ifindex: u32) -> Result<Self> {
        let mut attr = [0u8; 128];
        put(&mut attr, 0, &BPF_MAP_TYPE_ARRAY.to_le_bytes());
        put(&mut attr, 4, &4u32.to_le_bytes());
        put(&mut attr, 8, &8u64.to_le_bytes()[..4]);
        put(&mut attr, 12, &1u32.to_le_bytes());
        let map = bpf(BPF_MAP_CREATE, &mut attr)?;
        let fd = map.as_raw_fd();
        let code: Vec<u8> = [
            insn(0x62, 10, 0, -4, 0), // *(u32 *)(r10 - 4) = 0
            insn(0xbf, 2, 10, 0, 0),  // r2 = r10
            insn(0x07, 2, 0, 0, -4),  // r2 += -4
            insn(0x18, 1, 1, 0, fd),  // r1 = map (ld_imm64, pseudo map fd)
            insn(0x00, 0, 0, 0, 0),   //   (second half of ld_imm64)
            insn(0x85, 0, 0, 0, 1),   // call bpf_map_lookup_elem
            insn(0x15, 0, 0, 2, 0),   // if r0 == 0 goto +2
            insn(0xb7, 1, 0, 0, 1),   // r1 = 1
            insn(0xdb, 0, 1, 0, 0),   // lock *(u64 *)(r0 + 0) += r1
            insn(0xb7, 0, 0, 0, -1),  // r0 = TCX_NEXT: never change the verdict
            insn(0x95, 0, 0, 0, 0),   // exit
        ]
        .concat();
        let license = b"GPL\0";
        let mut attr = [0u8; 128];
        put(&mut attr, 0, &BPF_PROG_TYPE_SCHED_CLS.to_le_bytes());
        put(&mut attr, 4, &((code.len() / 8) as u32).to_le_bytes());
        put(&mut attr, 8, &(code.as_ptr() as u64).to_le_bytes());
        put(&mut attr, 16, &(license.as_ptr() as u64).to_le_bytes());
        put(&mut attr, 48, b"pt_test_counter\0");
        let prog = bpf(BPF_PROG_LOAD, &mut attr)?;
        let mut attr = [0u8; 128];
        put(&mut attr, 0, &(prog.as_raw_fd() as u32).to_le_bytes());
        put(&mut attr, 4, &ifindex.to_le_bytes());
        put(&mut attr, 8, &BPF_TCX_INGRESS.to_le_bytes());
        let link = bpf(BPF_LINK_CREATE, &mut attr)?;
        Ok(Self {
            map,
            _prog: prog,
            _link: link,
        })
    }

    /// Attach to `ifname` inside the network namespace at `netns` (a /run/netns
    /// path). Namespaces are per thread, so a short-lived thread enters it.
    pub fn attach_in(netns: &std::path::Path, ifname: &str) -> Result<Self> {
        let (netns, ifname) = (netns.to_path_buf(), ifname.to_string());
        std::thread::spawn(move || -> Result<Self> {
            let ns = std::fs::File::open(&netns)?;
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!(
                    "setns {}: {}",
                    netns.display(),
                    std::io::Error::last_os_error()
                );
            }
            let name = std::ffi::CString::new(ifname.clone())?;
            let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if index == 0 {
                bail!("no interface {ifname}");
            }
            Self::attach(index)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("attach thread panicked"))?
    }

    pub fn count(&self) -> Result<u64> {
        let key = 0u32;
        let mut value = 0u64;
        let mut attr = [0u8; 128];
        put(&mut attr, 0, &(self.map.as_raw_fd() as u32).to_le_bytes());
        put(&mut attr, 8, &(&key as *const u32 as u64).to_le_bytes());
        put(
            &mut attr,
            16,
            &(&mut value as *mut u64 as u64).to_le_bytes(),
        );
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_ELEM,
                attr.as_mut_ptr(),
                attr.len(),
            )
        };
        if rc < 0 {
            bail!("reading the counter: {}", std::io::Error::last_os_error());
        }
        Ok(value)
    }
}
