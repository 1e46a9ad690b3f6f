//! Kernel text addresses → `function+0xoff`, from /proc/kallsyms.

use anyhow::{Context, Result};

pub struct Symbols {
    /// Sorted by address.
    syms: Vec<(u64, String)>,
}

impl Symbols {
    pub fn load() -> Result<Self> {
        let text = std::fs::read_to_string("/proc/kallsyms").context("reading /proc/kallsyms")?;
        Ok(Self::parse(&text))
    }

    pub fn parse(text: &str) -> Self {
        let mut syms: Vec<(u64, String)> = text
            .lines()
            .filter_map(|line| {
                let mut it = line.split_whitespace();
                let addr = u64::from_str_radix(it.next()?, 16).ok()?;
                let kind = it.next()?;
                let name = it.next()?;
                // Only text symbols can be a drop location.
                matches!(kind, "t" | "T" | "w" | "W").then(|| (addr, name.to_string()))
            })
            .filter(|(addr, _)| *addr != 0)
            .collect();
        syms.sort_unstable_by_key(|(a, _)| *a);
        Self { syms }
    }

    /// `function+0xoff`; the raw address when symbols are hidden (kptr_restrict).
    pub fn resolve(&self, addr: u64) -> Option<String> {
        if addr == 0 {
            return None;
        }
        if self.syms.is_empty() {
            return Some(format!("{addr:#x}"));
        }
        let idx = self.syms.partition_point(|(a, _)| *a <= addr);
        let (base, name) = self.syms.get(idx.checked_sub(1)?)?;
        Some(format!("{name}+{:#x}", addr - base))
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
