//! Kernel text addresses → `function+0xoff`, from /proc/kallsyms.

use anyhow::{Context, Result};

/// Kept compact (one string arena, no per-symbol allocation): a kernel has over
/// 100k text symbols and pathtrace must stay small on the host it diagnoses.
pub struct Symbols {
    /// Symbol addresses, sorted.
    addrs: Vec<u64>,
    /// End of each symbol's name in `names` (its start is the previous end).
    ends: Vec<u32>,
    names: String,
}

impl Symbols {
    pub fn load() -> Result<Self> {
        let text = std::fs::read_to_string("/proc/kallsyms").context("reading /proc/kallsyms")?;
        Ok(Self::parse(&text))
    }

    pub fn parse(text: &str) -> Self {
        let mut syms: Vec<(u64, &str)> = text
            .lines()
            .filter_map(|line| {
                let mut it = line.split_whitespace();
                let addr = u64::from_str_radix(it.next()?, 16).ok()?;
                let kind = it.next()?;
                let name = it.next()?;
                // Only text symbols can be a drop location.
                matches!(kind, "t" | "T" | "w" | "W").then_some((addr, name))
            })
            .filter(|(addr, _)| *addr != 0)
            .collect();
        syms.sort_unstable_by_key(|(a, _)| *a);
        let mut out = Self {
            addrs: Vec::with_capacity(syms.len()),
            ends: Vec::with_capacity(syms.len()),
            names: String::new(),
        };
        for (addr, name) in syms {
            out.names.push_str(name);
            out.addrs.push(addr);
            out.ends.push(out.names.len() as u32);
        }
        out
    }

    /// `function+0xoff`; the raw address when symbols are hidden (kptr_restrict).
    pub fn resolve(&self, addr: u64) -> Option<String> {
        if addr == 0 {
            return None;
        }
        if self.addrs.is_empty() {
            return Some(format!("{addr:#x}"));
        }
        let i = self.addrs.partition_point(|a| *a <= addr).checked_sub(1)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        let name = &self.names[start..self.ends[i] as usize];
        Some(format!("{name}+{:#x}", addr - self.addrs[i]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_to_nearest_preceding_text_symbol() {
        let s = Symbols::parse(
            "ffffffff81000000 T _stext\nffffffff81100000 t nft_do_chain\t[nf_tables]\n\
             ffffffff81100800 D some_data\nffffffff81200000 T ip_forward\n",
        );
        assert_eq!(
            s.resolve(0xffffffff811003e8).as_deref(),
            Some("nft_do_chain+0x3e8")
        );
        assert_eq!(
            s.resolve(0xffffffff81200000).as_deref(),
            Some("ip_forward+0x0")
        );
        assert_eq!(s.resolve(0x10), None, "below every symbol");
    }

    #[test]
    fn hidden_addresses_give_no_symbols() {
        let s = Symbols::parse("0000000000000000 T _stext\n0000000000000000 t ip_forward\n");
        assert_eq!(s.resolve(0xffff0010).as_deref(), Some("0xffff0010"));
        assert_eq!(s.resolve(0), None);
    }
}
