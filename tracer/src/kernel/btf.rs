//! Kernel facts read from the running kernel's BTF: drop-reason names and the struct
//! offsets the programs need (Rust eBPF has no CO-RE, so user space resolves them).
//!
//! A small reader of the BTF format of its own: it keeps the raw bytes and an index
//! of where each type starts, and looks names up by scanning. A general BTF library
//! builds maps of every type and string of the kernel (tens of MB resident); this
//! needs a handful of lookups, once, and keeps pathtrace small on the host.

use std::{collections::HashMap, path::Path};

use anyhow::{anyhow, bail, Context, Result};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

pub struct KernelBtf {
    data: Vec<u8>,
    /// Start and end of the string section in `data`.
    strings: (usize, usize),
    /// Byte offset in `data` of type id `i + 1` (id 0 is void).
    types: Vec<usize>,
}

/// One `struct btf_type` header.
#[derive(Debug, Clone, Copy)]
struct TypeHead {
    name_off: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    /// `size` or `type`, depending on the kind.
    size_or_type: u32,
    /// Where the kind-specific data after the header starts.
    extra: usize,
}

/// Offsets inside kernel structs used by the free tracepoints.
#[derive(Debug, Default, Clone, Copy)]
pub struct Offsets {
    pub skb_dev: u32,
    pub skb_refdst: u32,
    pub dev_ifindex: u32,
    pub dev_net: u32,
    pub net_inum: u32,
    pub skb_head: u32,
    pub skb_network_header: u32,
}

/// Offsets used by watch mode in addition to [`Offsets`].
#[derive(Debug, Default, Clone, Copy)]
pub struct WatchOffsets {
    pub skb_len: u32,
    pub skb_head: u32,
    pub skb_protocol: u32,
    pub skb_network_header: u32,
    pub skb_mac_header: u32,
    pub skb_nfct: u32,
    pub ct_orig_src: u32,
    pub ct_reply_src: u32,
}

impl KernelBtf {
    /// Read the kernel's BTF from `path` (normally [`VMLINUX_BTF`]).
    pub fn load(path: &Path) -> Result<Self> {
        if !path.exists() {
            bail!(
                "{} is missing: this kernel was built without BTF (CONFIG_DEBUG_INFO_BTF), which pathtrace needs",
                path.display()
            );
        }
        let data =
            std::fs::read(path).with_context(|| format!("reading BTF from {}", path.display()))?;
        Self::parse(data).with_context(|| format!("reading BTF from {}", path.display()))
    }

    /// Index raw BTF (header, type and string sections; little-endian).
    pub fn parse(data: Vec<u8>) -> Result<Self> {
        let u32_at =
            |off: usize| read_u32(&data, off).ok_or_else(|| anyhow!("truncated BTF header"));
        let magic = data.get(..2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        if magic != Some(BTF_MAGIC) {
            bail!("not BTF (bad magic)");
        }
        let hdr_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let span = |off: usize, len: usize| -> Result<(usize, usize)> {
            let start = hdr_len
                .checked_add(off)
                .ok_or_else(|| anyhow!("bad BTF section"))?;
            let end = start
                .checked_add(len)
                .ok_or_else(|| anyhow!("bad BTF section"))?;
            if end > data.len() {
                bail!("BTF section past the end");
            }
            Ok((start, end))
        };
        let (t_start, t_end) = span(type_off, type_len)?;
        let strings = span(str_off, str_len)?;
        let mut btf = Self {
            data,
            strings,
            types: Vec::new(),
        };
        let mut at = t_start;
        while at < t_end {
            btf.types.push(at);
            let head = btf.head_at(at)?;
            at = head.extra + extra_len(&head)?;
        }
        Ok(btf)
    }

    /// Free the parsed BTF (tens of MB for a full kernel) and hand the memory back
    /// to the system: pathtrace runs for long on hosts it must not crowd.
    pub fn release(self) {
        drop(self);
        // SAFETY: malloc_trim only returns free heap pages to the kernel.
        unsafe { libc::malloc_trim(0) };
    }

    /// `enum skb_drop_reason` value → name without the `SKB_DROP_REASON_` prefix.
    pub fn drop_reasons(&self) -> Result<HashMap<u32, String>> {
        // A 32-bit enum, or (on kernels that widen it) a 64-bit one.
        let (id, entry) = self
            .find(KIND_ENUM, "skb_drop_reason")
            .map(|id| (id, 8))
            .or_else(|| self.find(KIND_ENUM64, "skb_drop_reason").map(|id| (id, 12)))
            .context("enum skb_drop_reason not in BTF")?;
        let head = self.head(id)?;
        let mut names = HashMap::new();
        for i in 0..head.vlen {
            let at = head.extra + i * entry;
            let name = self.name(self.u32_at(at)?)?;
            let value = self.u32_at(at + 4)?;
            let short = name.strip_prefix("SKB_DROP_REASON_").unwrap_or(name);
            names.insert(value, short.to_string());
        }
        if names.is_empty() {
            bail!("enum skb_drop_reason has no members in BTF");
        }
        Ok(names)
    }

    pub fn offsets(&self) -> Result<Offsets> {
        Ok(Offsets {
            skb_dev: self.member_offset("sk_buff", &["dev"])?,
            skb_refdst: self.member_offset("sk_buff", &["_skb_refdst"])?,
            dev_ifindex: self.member_offset("net_device", &["ifindex"])?,
            dev_net: self.member_offset("net_device", &["nd_net", "net"])?,
            net_inum: self.member_offset("net", &["ns", "inum"])?,
            skb_head: self.member_offset("sk_buff", &["head"])?,
            skb_network_header: self.member_offset("sk_buff", &["network_header"])?,
        })
    }

    /// For each function of `names` that this kernel's BTF describes, the position
    /// of its `struct sk_buff *` parameter (where a kprobe finds the packet).
    /// Functions without one (or not in BTF: inlined, renamed) are left out.
    pub fn skb_params(&self, names: &[&str]) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for id in 1..=self.types.len() as u32 {
            let Ok(h) = self.head(id) else { continue };
            if h.kind != KIND_FUNC {
                continue;
            }
            let Some(name) = self.name(h.name_off).ok().filter(|n| names.contains(n)) else {
                continue;
            };
            if let Some(i) = self.skb_param(h.size_or_type) {
                out.insert(name.to_string(), i);
            }
        }
        out
    }

    fn skb_param(&self, proto: u32) -> Option<usize> {
        let p = self.head(proto).ok()?;
        if p.kind != KIND_FUNC_PROTO {
            return None;
        }
        (0..p.vlen).find(|i| {
            let ty = self.u32_at(p.extra + i * 8 + 4).unwrap_or(0);
            self.points_to_struct(ty, "sk_buff")
        })
    }

    fn points_to_struct(&self, ty: u32, name: &str) -> bool {
        let Ok(ptr) = self.strip(ty).and_then(|t| self.head(t)) else {
            return false;
        };
        if ptr.kind != KIND_PTR {
            return false;
        }
        self.strip(ptr.size_or_type)
            .and_then(|t| self.head(t))
            .is_ok_and(|s| s.kind == KIND_STRUCT && self.name(s.name_off).is_ok_and(|n| n == name))
    }

    /// Offsets the watch program reads: where the skb's headers are, and where a
    /// conntrack entry keeps the original addresses. Conntrack ones are optional (a
    /// kernel without conntrack has no `_nfct`): then they are 0 and NATed traffic is
    /// attributed by the other means.
    pub fn watch_offsets(&self) -> Result<WatchOffsets> {
        let skb = |path: &[&str]| self.member_offset("sk_buff", path);
        let ct = || -> Result<(u32, u32, u32)> {
            let nfct = skb(&["_nfct"])?;
            let table = self.member_offset("nf_conn", &["tuplehash"])?;
            let src = self.member_offset("nf_conntrack_tuple_hash", &["tuple", "src", "u3"])?;
            let size = self.struct_size("nf_conntrack_tuple_hash")?;
            Ok((nfct, table + src, table + size + src))
        };
        let (nfct, ct_orig_src, ct_reply_src) = ct().unwrap_or((0, 0, 0));
        Ok(WatchOffsets {
            skb_len: skb(&["len"])?,
            skb_head: skb(&["head"])?,
            skb_protocol: skb(&["protocol"])?,
            skb_network_header: skb(&["network_header"])?,
            skb_mac_header: skb(&["mac_header"])?,
            skb_nfct: nfct,
            ct_orig_src,
            ct_reply_src,
        })
    }

    fn struct_size(&self, name: &str) -> Result<u32> {
        let id = self.named_struct(name)?;
        Ok(self.head(id)?.size_or_type)
    }

    /// Byte offset of `path` (nested member names) inside `struct name`. Anonymous
    /// structs and unions are searched through, as C would.
    pub fn member_offset(&self, name: &str, path: &[&str]) -> Result<u32> {
        let mut id = self.named_struct(name)?;
        let mut total = 0;
        for (i, field) in path.iter().enumerate() {
            let (bits, member_ty) = self
                .find_member(id, field, 0)?
                .ok_or_else(|| anyhow!("struct {name} has no member {}", path[..=i].join(".")))?;
            total += bits / 8;
            id = self.strip(member_ty)?;
        }
        Ok(total)
    }

    /// A struct with members (not a forward declaration) named `name`.
    fn named_struct(&self, name: &str) -> Result<u32> {
        self.find(KIND_STRUCT, name)
            .ok_or_else(|| anyhow!("struct {name} not in BTF"))
    }

    /// The first type of `kind` named `name` that has members.
    fn find(&self, kind: u32, name: &str) -> Option<u32> {
        (1..=self.types.len() as u32).find(|&id| {
            self.head(id).is_ok_and(|h| {
                h.kind == kind && h.vlen > 0 && self.name(h.name_off).is_ok_and(|n| n == name)
            })
        })
    }

    /// Find `field` in struct/union `id`, returning (bit offset, member type id).
    fn find_member(&self, id: u32, field: &str, depth: u32) -> Result<Option<(u32, u32)>> {
        let head = self.head(id)?;
        if !matches!(head.kind, KIND_STRUCT | KIND_UNION) || depth > 16 {
            return Ok(None);
        }
        for i in 0..head.vlen {
            let at = head.extra + i * 12;
            let name = self.name(self.u32_at(at)?)?;
            let ty = self.u32_at(at + 4)?;
            let raw = self.u32_at(at + 8)?;
            // With kind_flag the low 24 bits are the offset, the top 8 a bitfield size.
            let bits = if head.kind_flag {
                raw & 0x00ff_ffff
            } else {
                raw
            };
            if name == field {
                return Ok(Some((bits, ty)));
            }
            if name.is_empty() {
                let inner = self.strip(ty)?;
                if let Some((b, t)) = self.find_member(inner, field, depth + 1)? {
                    return Ok(Some((bits + b, t)));
                }
            }
        }
        Ok(None)
    }

    /// Follow typedefs and qualifiers to the underlying type.
    fn strip(&self, mut id: u32) -> Result<u32> {
        for _ in 0..32 {
            let head = self.head(id)?;
            match head.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = head.size_or_type
                }
                _ => return Ok(id),
            }
        }
        bail!("BTF type chain too long")
    }

    fn head(&self, id: u32) -> Result<TypeHead> {
        let at = *id
            .checked_sub(1)
            .and_then(|i| self.types.get(i as usize))
            .ok_or_else(|| anyhow!("BTF type {id} out of range"))?;
        self.head_at(at)
    }

    fn head_at(&self, at: usize) -> Result<TypeHead> {
        let info = self.u32_at(at + 4)?;
        Ok(TypeHead {
            name_off: self.u32_at(at)?,
            kind: (info >> 24) & 0x1f,
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 == 1,
            size_or_type: self.u32_at(at + 8)?,
            extra: at + 12,
        })
    }

    fn u32_at(&self, at: usize) -> Result<u32> {
        read_u32(&self.data, at).ok_or_else(|| anyhow!("BTF truncated at {at}"))
    }

    /// The NUL-terminated string at `off` in the string section.
    fn name(&self, off: u32) -> Result<&str> {
        let (start, end) = self.strings;
        let from = start
            .checked_add(off as usize)
            .filter(|&f| f < end)
            .ok_or_else(|| anyhow!("BTF string offset {off} out of range"))?;
        let bytes = &self.data[from..end];
        let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        std::str::from_utf8(&bytes[..len]).map_err(|_| anyhow!("BTF string not UTF-8"))
    }
}

/// Bytes of kind-specific data following a type header.
fn extra_len(h: &TypeHead) -> Result<usize> {
    Ok(match h.kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * h.vlen,
        KIND_ENUM | KIND_FUNC_PROTO => 8 * h.vlen,
        0..=19 => 0,
        k => bail!("unknown BTF kind {k}"),
    })
}

fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    let b = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A tiny BTF blob: `typedef int u32t; struct s { u32t a; union { u32t b; }; }`
    /// and `enum skb_drop_reason { SKB_DROP_REASON_X = 5 }`.
    pub fn sample() -> Vec<u8> {
        let mut strs = b"\0int\0u32t\0s\0a\0b\0skb_drop_reason\0SKB_DROP_REASON_X\0".to_vec();
        strs.push(0);
        let off = |name: &str| {
            let needle = format!("\0{name}\0");
            strs.windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .map(|p| p as u32 + 1)
                .unwrap()
        };
        let info = |kind: u32, vlen: u32| (kind << 24) | vlen;
        let mut t: Vec<u32> = Vec::new();
        t.extend([off("int"), info(KIND_INT, 0), 4, 32]); // 1: int
        t.extend([off("u32t"), info(KIND_TYPEDEF, 0), 1]); // 2: typedef
        t.extend([0, info(KIND_UNION, 1), 4, off("b"), 2, 0]); // 3: anonymous union
        t.extend([off("s"), info(KIND_STRUCT, 2), 8, off("a"), 2, 0, 0, 3, 32]); // 4
        t.extend([
            off("skb_drop_reason"),
            info(KIND_ENUM, 1),
            4,
            off("SKB_DROP_REASON_X"),
            5,
        ]);
        let types: Vec<u8> = t.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut out = Vec::new();
        out.extend(BTF_MAGIC.to_le_bytes());
        out.extend([1u8, 0]);
        for v in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strs.len() as u32,
        ] {
            out.extend(v.to_le_bytes());
        }
        out.extend(types);
        out.extend(strs);
        out
    }

    #[test]
    fn finds_members_through_anonymous_unions_and_typedefs() {
        let btf = KernelBtf::parse(sample()).unwrap();
        assert_eq!(btf.member_offset("s", &["a"]).unwrap(), 0);
        assert_eq!(btf.member_offset("s", &["b"]).unwrap(), 4);
        assert_eq!(btf.struct_size("s").unwrap(), 8);
        assert!(btf.member_offset("s", &["c"]).is_err());
        assert!(btf.member_offset("nope", &["a"]).is_err());
        assert_eq!(btf.drop_reasons().unwrap()[&5], "X");
    }

    #[test]
    fn rejects_garbage() {
        assert!(KernelBtf::parse(vec![]).is_err());
        assert!(KernelBtf::parse(vec![0x9f, 0xeb, 1, 0, 24, 0, 0, 0]).is_err());
        let mut b = sample();
        b.truncate(b.len() - 10);
        assert!(KernelBtf::parse(b).is_err());
    }

    /// The running kernel's BTF, when there is one: the offsets the programs use.
    #[test]
    fn reads_the_running_kernel() {
        let Ok(btf) = KernelBtf::load(Path::new(VMLINUX_BTF)) else {
            return;
        };
        let o = btf.offsets().unwrap();
        assert!(o.skb_dev > 0 && o.dev_ifindex > 0 && o.net_inum > 0);
        let w = btf.watch_offsets().unwrap();
        assert!(w.skb_head > 0 && w.skb_network_header > 0);
        assert!(btf
            .drop_reasons()
            .unwrap()
            .values()
            .any(|n| n == "NETFILTER_DROP"));
        // Where kprobes find the packet: first argument of ip_forward, third of
        // ip_finish_output2 (net, sk, skb); none for a function without one.
        let params = btf.skb_params(&["ip_forward", "ip_finish_output2", "nft_do_chain"]);
        assert_eq!(params.get("ip_forward"), Some(&0));
        assert_eq!(params.get("ip_finish_output2"), Some(&2));
        assert!(
            !params.contains_key("nft_do_chain"),
            "takes nft_pktinfo, not an skb"
        );
    }
}
