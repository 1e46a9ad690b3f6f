//! Kernel facts read from the running kernel's BTF: drop-reason names and the struct
//! offsets the programs need (Rust eBPF has no CO-RE, so user space resolves them).

use std::{collections::HashMap, path::Path};

use anyhow::{anyhow, bail, Context, Result};
use btf_rs::{Btf, Type};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

pub struct KernelBtf {
    btf: Btf,
}

/// Offsets inside kernel structs used by the free tracepoints.
#[derive(Debug, Default, Clone, Copy)]
pub struct Offsets {
    pub skb_dev: u32,
    pub skb_refdst: u32,
    pub dev_ifindex: u32,
    pub dev_net: u32,
    pub net_inum: u32,
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
        let btf =
            Btf::from_file(path).with_context(|| format!("reading BTF from {}", path.display()))?;
        Ok(Self { btf })
    }

    /// `enum skb_drop_reason` value → name without the `SKB_DROP_REASON_` prefix.
    pub fn drop_reasons(&self) -> Result<HashMap<u32, String>> {
        let types = self
            .btf
            .resolve_types_by_name("skb_drop_reason")
            .context("enum skb_drop_reason not in BTF")?;
        let mut names = HashMap::new();
        for t in types {
            if let Type::Enum(e) = t {
                for m in &e.members {
                    let name = self.btf.resolve_name(m)?;
                    let short = name.strip_prefix("SKB_DROP_REASON_").unwrap_or(&name);
                    names.insert(m.val(), short.to_string());
                }
            }
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
        })
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
        match self.named_struct(name)? {
            Type::Struct(s) => Ok(s.size() as u32),
            _ => bail!("{name} is not a struct"),
        }
    }

    /// Byte offset of `path` (nested member names) inside `struct name`. Anonymous
    /// structs and unions are searched through, as C would.
    pub fn member_offset(&self, name: &str, path: &[&str]) -> Result<u32> {
        let mut ty = self.named_struct(name)?;
        let mut total = 0;
        for (i, field) in path.iter().enumerate() {
            let (bits, member_ty) = self
                .find_member(&ty, field)?
                .ok_or_else(|| anyhow!("struct {name} has no member {}", path[..=i].join(".")))?;
            total += bits / 8;
            ty = self.strip(member_ty)?;
        }
        Ok(total)
    }

    fn named_struct(&self, name: &str) -> Result<Type> {
        self.btf
            .resolve_types_by_name(name)
            .with_context(|| format!("struct {name} not in BTF"))?
            .into_iter()
            .find(|t| matches!(t, Type::Struct(s) if !s.members.is_empty()))
            .ok_or_else(|| anyhow!("struct {name} not in BTF"))
    }

    /// Find `field` in a struct/union, returning (bit offset, member type).
    fn find_member(&self, ty: &Type, field: &str) -> Result<Option<(u32, Type)>> {
        let members = match ty {
            Type::Struct(s) | Type::Union(s) => &s.members,
            _ => return Ok(None),
        };
        for m in members {
            let name = self.btf.resolve_name(m).unwrap_or_default();
            let mty = self.btf.resolve_chained_type(m)?;
            if name == field {
                return Ok(Some((m.bit_offset(), mty)));
            }
            if name.is_empty() {
                let inner = self.strip(mty)?;
                if let Some((bits, t)) = self.find_member(&inner, field)? {
                    return Ok(Some((m.bit_offset() + bits, t)));
                }
            }
        }
        Ok(None)
    }

    /// Follow typedefs and qualifiers to the underlying type.
    fn strip(&self, mut ty: Type) -> Result<Type> {
        loop {
            ty = match &ty {
                Type::Typedef(t) => self.btf.resolve_chained_type(t)?,
                Type::Const(t) => self.btf.resolve_chained_type(t)?,
                Type::Volatile(t) => self.btf.resolve_chained_type(t)?,
                Type::Restrict(t) => self.btf.resolve_chained_type(t)?,
                Type::TypeTag(t) => self.btf.resolve_chained_type(t)?,
                _ => return Ok(ty),
            };
        }
    }
}
