//! A stand-in for "someone else's" TC program (a firewall's, a CNI's): a tiny
//! packet counter loaded with raw bpf(2) calls and attached with its own tcx link,
//! so tests can check that pathtrace never disturbs programs it did not attach.
//! No compiler needed: ten hand-assembled instructions.
//!
//! The same machinery gives the benchmark its traffic sink: an XDP program that
//! counts every packet reaching an interface and drops UDP before the kernel
//! allocates anything for it (no skb, so no drop events either).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{bail, Result};

const BPF_MAP_CREATE: u32 = 0;
const BPF_MAP_LOOKUP_ELEM: u32 = 1;
const BPF_PROG_LOAD: u32 = 5;
const BPF_LINK_CREATE: u32 = 28;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
const BPF_XDP: u32 = 37;

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

/// A one-slot array map holding the packet count.
fn counter_map() -> Result<OwnedFd> {
    let mut attr = [0u8; 128];
    put(&mut attr, 0, &BPF_MAP_TYPE_ARRAY.to_le_bytes());
    put(&mut attr, 4, &4u32.to_le_bytes());
    put(&mut attr, 8, &8u64.to_le_bytes()[..4]);
    put(&mut attr, 12, &1u32.to_le_bytes());
    bpf(BPF_MAP_CREATE, &mut attr)
}

/// Instructions adding one to the map's slot 0 (clobbers r0-r5).
fn count_packet(map_fd: i32) -> Vec<[u8; 8]> {
    vec![
        insn(0x62, 10, 0, -4, 0),    // *(u32 *)(r10 - 4) = 0
        insn(0xbf, 2, 10, 0, 0),     // r2 = r10
        insn(0x07, 2, 0, 0, -4),     // r2 += -4
        insn(0x18, 1, 1, 0, map_fd), // r1 = map (ld_imm64, pseudo map fd)
        insn(0x00, 0, 0, 0, 0),      //   (second half of ld_imm64)
        insn(0x85, 0, 0, 0, 1),      // call bpf_map_lookup_elem
        insn(0x15, 0, 0, 2, 0),      // if r0 == 0 goto +2
        insn(0xb7, 1, 0, 0, 1),      // r1 = 1
        insn(0xdb, 0, 1, 0, 0),      // lock *(u64 *)(r0 + 0) += r1
    ]
}

fn load(prog_type: u32, expected_attach: u32, code: &[[u8; 8]], name: &[u8]) -> Result<OwnedFd> {
    let code: Vec<u8> = code.concat();
    let license = b"GPL\0";
    let mut attr = [0u8; 128];
    put(&mut attr, 0, &prog_type.to_le_bytes());
    put(&mut attr, 4, &((code.len() / 8) as u32).to_le_bytes());
    put(&mut attr, 8, &(code.as_ptr() as u64).to_le_bytes());
    put(&mut attr, 16, &(license.as_ptr() as u64).to_le_bytes());
    put(&mut attr, 48, name);
    put(&mut attr, 68, &expected_attach.to_le_bytes());
    bpf(BPF_PROG_LOAD, &mut attr)
}

/// A bpf link (owned by the returned fd) of `prog` to `ifindex`.
fn link(prog: &OwnedFd, ifindex: u32, attach_type: u32) -> Result<OwnedFd> {
    let mut attr = [0u8; 128];
    put(&mut attr, 0, &(prog.as_raw_fd() as u32).to_le_bytes());
    put(&mut attr, 4, &ifindex.to_le_bytes());
    put(&mut attr, 8, &attach_type.to_le_bytes());
    bpf(BPF_LINK_CREATE, &mut attr)
}

/// Counts packets on an interface; detaches when dropped.
pub struct Counter {
    map: OwnedFd,
    _prog: OwnedFd,
    _link: OwnedFd,
}

impl Counter {
    /// Attach to `ifindex`'s TC ingress (in the caller's network namespace).
    pub fn attach(ifindex: u32) -> Result<Self> {
        let map = counter_map()?;
        let mut code = count_packet(map.as_raw_fd());
        code.extend([
            insn(0xb7, 0, 0, 0, -1), // r0 = TCX_NEXT: never change the verdict
            insn(0x95, 0, 0, 0, 0),  // exit
        ]);
        let prog = load(BPF_PROG_TYPE_SCHED_CLS, 0, &code, b"pt_test_counter\0")?;
        let link = link(&prog, ifindex, BPF_TCX_INGRESS)?;
        Ok(Self {
            map,
            _prog: prog,
            _link: link,
        })
    }

    /// The benchmark's sink on `ifindex`'s XDP hook: count every packet, drop UDP
    /// (pass the rest, so pings are still answered).
    pub fn attach_xdp_sink(ifindex: u32) -> Result<Self> {
        let map = counter_map()?;
        let mut code = vec![insn(0xbf, 6, 1, 0, 0)]; // r6 = ctx
        code.extend(count_packet(map.as_raw_fd()));
        code.extend([
            insn(0x61, 2, 6, 0, 0),  // r2 = ctx->data
            insn(0x61, 3, 6, 4, 0),  // r3 = ctx->data_end
            insn(0xbf, 4, 2, 0, 0),  // r4 = r2
            insn(0x07, 4, 0, 0, 24), // r4 += 24 (Ethernet + IP up to the protocol)
            insn(0x2d, 4, 3, 4, 0),  // if r4 > r3 goto pass
            insn(0x71, 5, 2, 23, 0), // r5 = IP protocol
            insn(0x55, 5, 0, 2, 17), // if r5 != UDP goto pass
            insn(0xb7, 0, 0, 0, 1),  // r0 = XDP_DROP
            insn(0x95, 0, 0, 0, 0),  // exit
            insn(0xb7, 0, 0, 0, 2),  // pass: r0 = XDP_PASS
            insn(0x95, 0, 0, 0, 0),  // exit
        ]);
        let prog = load(BPF_PROG_TYPE_XDP, BPF_XDP, &code, b"pt_bench_sink\0")?;
        let link = link(&prog, ifindex, BPF_XDP)?;
        Ok(Self {
            map,
            _prog: prog,
            _link: link,
        })
    }

    /// Attach to `ifname` inside the network namespace at `netns` (a /run/netns
    /// path). Namespaces are per thread, so a short-lived thread enters it.
    pub fn attach_in(netns: &std::path::Path, ifname: &str) -> Result<Self> {
        Self::attach_in_with(netns, ifname, Self::attach)
    }

    /// [`Self::attach_in`] with the attach function of the caller's choice.
    pub fn attach_in_with(
        netns: &std::path::Path,
        ifname: &str,
        attach: fn(u32) -> Result<Self>,
    ) -> Result<Self> {
        in_netns(netns, ifname, attach)
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

/// Run `attach` with `ifname`'s index inside the network namespace at `netns`
/// (a /run/netns path). Namespaces are per thread, so a short-lived thread
/// enters it.
fn in_netns<T: Send + 'static>(
    netns: &std::path::Path,
    ifname: &str,
    attach: fn(u32) -> Result<T>,
) -> Result<T> {
    let (netns, ifname) = (netns.to_path_buf(), ifname.to_string());
    std::thread::spawn(move || -> Result<T> {
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
        attach(index)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("attach thread panicked"))?
}

/// A TC program that does nothing (passes every packet on) at `ifname`'s tcx
/// ingress and egress: what having hooks there at all costs, the floor under
/// any program that runs there. Detaches when dropped.
pub struct PassHooks {
    _prog: OwnedFd,
    _links: [OwnedFd; 2],
}

impl PassHooks {
    pub fn attach_in(netns: &std::path::Path, ifname: &str) -> Result<Self> {
        in_netns(netns, ifname, |ifindex| {
            let code = [
                insn(0xb7, 0, 0, 0, -1), // r0 = TCX_NEXT
                insn(0x95, 0, 0, 0, 0),  // exit
            ];
            let prog = load(BPF_PROG_TYPE_SCHED_CLS, 0, &code, b"pt_bench_pass\0")?;
            let ingress = link(&prog, ifindex, BPF_TCX_INGRESS)?;
            let egress = link(&prog, ifindex, BPF_TCX_EGRESS)?;
            Ok(Self {
                _prog: prog,
                _links: [ingress, egress],
            })
        })
    }
}
