//! `pathtrace report --redact`: public IPv4 addresses and MAC addresses are
//! replaced consistently across the whole bundle — one address always becomes the
//! same stand-in, in every file and in the pcapng's packets and comments — so the
//! bundle still shows which hop is which without naming the site.
//!
//! Public means any address that is not private (RFC 1918), shared (100.64/10),
//! loopback, link-local, multicast, reserved or unspecified. The documentation
//! ranges (192.0.2/24, 198.51.100/24, 203.0.113/24) count as public: they stand
//! for public addresses wherever they appear. Stand-ins come from 240.0.0.0/4
//! (reserved, never a real host) and locally administered MACs 02:00:00:00:xx:yy.

use std::{borrow::Cow, collections::HashMap, net::Ipv4Addr, path::Path};

use anyhow::{Context, Result};
use pcap_file::pcapng::{
    blocks::{
        enhanced_packet::EnhancedPacketOption, interface_description::InterfaceDescriptionOption,
    },
    Block, PcapNgReader, PcapNgWriter,
};

#[derive(Default)]
pub struct Redactor {
    ips: HashMap<Ipv4Addr, Ipv4Addr>,
    macs: HashMap<[u8; 6], [u8; 6]>,
}

pub fn is_public(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_unspecified()
        || o[0] == 0
        || o[0] >= 240
        || (o[0] == 100 && (o[1] & 0xc0) == 64))
}

/// A MAC that names a host (not broadcast, multicast or all-zero).
fn is_host_mac(m: &[u8; 6]) -> bool {
    m[0] & 1 == 0 && *m != [0; 6]
}

impl Redactor {
    fn ip(&mut self, ip: Ipv4Addr) -> Ipv4Addr {
        if !is_public(ip) {
            return ip;
        }
        let n = self.ips.len() as u32 + 1;
        *self
            .ips
            .entry(ip)
            .or_insert_with(|| Ipv4Addr::from(0xF000_0000 | n))
    }

    fn mac(&mut self, mac: [u8; 6]) -> [u8; 6] {
        if !is_host_mac(&mac) {
            return mac;
        }
        let n = self.macs.len() as u16 + 1;
        let [hi, lo] = n.to_be_bytes();
        *self.macs.entry(mac).or_insert([0x02, 0, 0, 0, hi, lo])
    }

    /// Every IPv4 address and MAC in `s`, replaced.
    pub fn text(&mut self, s: &str) -> String {
        let b = s.as_bytes();
        let mut out = String::with_capacity(s.len());
        let mut i = 0;
        while i < b.len() {
            // Only at the start of a token: not inside a longer number or word.
            let boundary = i == 0
                || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'.' || b[i - 1] == b':');
            if boundary {
                if let Some((mac, len)) = mac_at(&b[i..]) {
                    let m = self.mac(mac);
                    out.push_str(&fmt_mac(&m, b[i..i + 2].iter().any(u8::is_ascii_uppercase)));
                    i += len;
                    continue;
                }
                if let Some((ip, len)) = ipv4_at(&b[i..]) {
                    out.push_str(&self.ip(ip).to_string());
                    i += len;
                    continue;
                }
            }
            let ch = s[i..].chars().next().expect("in bounds");
            out.push(ch);
            i += ch.len_utf8();
        }
        out
    }

    /// Learn the addresses in a frame's Ethernet and IPv4 headers, then replace
    /// every known public address and MAC anywhere in it (headers, quoted
    /// headers of ICMP errors, DNS answers).
    fn frame(&mut self, data: &[u8]) -> Vec<u8> {
        if data.len() >= 12 {
            for off in [0, 6] {
                let mut m = [0u8; 6];
                m.copy_from_slice(&data[off..off + 6]);
                self.mac(m);
            }
        }
        if data.len() >= 34 && data[12..14] == [0x08, 0x00] {
            for off in [26, 30] {
                let a = [data[off], data[off + 1], data[off + 2], data[off + 3]];
                self.ip(Ipv4Addr::from(a));
            }
        }
        let mut out = data.to_vec();
        for (from, to) in &self.macs {
            replace_all(&mut out, from, to);
        }
        for (from, to) in &self.ips {
            replace_all(&mut out, &from.octets(), &to.octets());
        }
        out
    }

    /// Redact the bundle's files in place: text first (so their addresses are
    /// known), then the packet captures.
    pub fn redact_dir(&mut self, dir: &Path, files: &[String]) -> Result<()> {
        let (pcaps, texts): (Vec<&String>, Vec<&String>) =
            files.iter().partition(|f| f.ends_with(".pcapng"));
        for f in texts {
            let path = dir.join(f);
            let bytes = std::fs::read(&path)?;
            let text = String::from_utf8_lossy(&bytes);
            std::fs::write(&path, self.text(&text))?;
        }
        for f in pcaps {
            self.pcapng(&dir.join(f))
                .with_context(|| format!("redacting {f}"))?;
        }
        Ok(())
    }

    fn pcapng(&mut self, path: &Path) -> Result<()> {
        let input = std::fs::read(path)?;
        let mut reader = PcapNgReader::new(&input[..])?;
        let section = reader.section().clone();
        let mut out = Vec::new();
        {
            let mut w = PcapNgWriter::with_section_header(&mut out, section)?;
            while let Some(block) = reader.next_block() {
                match block? {
                    Block::SectionHeader(_) => {}
                    Block::InterfaceDescription(mut idb) => {
                        for o in &mut idb.options {
                            if let InterfaceDescriptionOption::IfDescription(s)
                            | InterfaceDescriptionOption::IfName(s)
                            | InterfaceDescriptionOption::Comment(s) = o
                            {
                                *s = Cow::Owned(self.text(s));
                            }
                        }
                        w.write_pcapng_block(idb)?;
                    }
                    Block::EnhancedPacket(mut epb) => {
                        epb.data = Cow::Owned(self.frame(&epb.data));
                        for o in &mut epb.options {
                            if let EnhancedPacketOption::Comment(s) = o {
                                *s = Cow::Owned(self.text(s));
                            }
                        }
                        w.write_pcapng_block(epb)?;
                    }
                    other => {
                        w.write_block(&other)?;
                    }
                }
            }
        }
        std::fs::write(path, out)?;
        Ok(())
    }
}

fn replace_all(data: &mut [u8], from: &[u8], to: &[u8]) {
    let n = from.len();
    let mut i = 0;
    while i + n <= data.len() {
        if &data[i..i + n] == from {
            data[i..i + n].copy_from_slice(to);
            i += n;
        } else {
            i += 1;
        }
    }
}

/// An IPv4 address at the start of `b` (not followed by more digits or a dot
/// and a digit): the address and its length.
fn ipv4_at(b: &[u8]) -> Option<(Ipv4Addr, usize)> {
    let mut parts = [0u32; 4];
    let mut i = 0;
    for (k, part) in parts.iter_mut().enumerate() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() && i - start < 3 {
            *part = *part * 10 + u32::from(b[i] - b'0');
            i += 1;
        }
        if i == start || *part > 255 {
            return None;
        }
        if k < 3 {
            if b.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
    }
    let continues = b.get(i).is_some_and(u8::is_ascii_digit)
        || (b.get(i) == Some(&b'.') && b.get(i + 1).is_some_and(u8::is_ascii_digit));
    if continues {
        return None;
    }
    Some((
        Ipv4Addr::new(
            parts[0] as u8,
            parts[1] as u8,
            parts[2] as u8,
            parts[3] as u8,
        ),
        i,
    ))
}

/// A MAC `xx:xx:xx:xx:xx:xx` at the start of `b`.
fn mac_at(b: &[u8]) -> Option<([u8; 6], usize)> {
    if b.len() < 17 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (k, byte) in mac.iter_mut().enumerate() {
        let hex = std::str::from_utf8(&b[k * 3..k * 3 + 2]).ok()?;
        if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(hex, 16).ok()?;
        if k < 5 && b[k * 3 + 2] != b':' {
            return None;
        }
    }
    if b.get(17)
        .is_some_and(|c| c.is_ascii_hexdigit() || *c == b':')
    {
        return None;
    }
    Some((mac, 17))
}

fn fmt_mac(m: &[u8; 6], upper: bool) -> String {
    let s = m
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    if upper {
        s.to_uppercase()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_macs_are_replaced_consistently() {
        let mut r = Redactor::default();
        let a = r.text("vm 192.0.2.100 (52:54:00:5a:00:56) via 198.51.100.2/24 to 203.0.113.8; lan 10.0.0.5, lo 127.0.0.1, bc ff:ff:ff:ff:ff:ff");
        assert_eq!(
            a,
            "vm 240.0.0.1 (02:00:00:00:00:01) via 240.0.0.2/24 to 240.0.0.3; lan 10.0.0.5, lo 127.0.0.1, bc ff:ff:ff:ff:ff:ff"
        );
        // The same address later, in another file: the same stand-in.
        assert_eq!(
            r.text("\"vm_ip\":\"192.0.2.100\""),
            "\"vm_ip\":\"240.0.0.1\""
        );
        // Not addresses: versions, longer numbers, times.
        assert_eq!(
            r.text("v1.2.3.4.5 1234.5.6.7 12:34:56"),
            "v1.2.3.4.5 1234.5.6.7 12:34:56"
        );
        assert_eq!(r.text("nft_do_chain+0x3e8"), "nft_do_chain+0x3e8");
    }

    #[test]
    fn frames_lose_their_addresses() {
        let mut r = Redactor::default();
        let mut f = vec![0u8; 42];
        f[..6].copy_from_slice(&[0x52, 0x54, 0, 0x5a, 0, 0x56]);
        f[6..12].copy_from_slice(&[0x52, 0x54, 0, 0x5a, 0, 0x57]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[26..30].copy_from_slice(&[192, 0, 2, 100]);
        f[30..34].copy_from_slice(&[10, 1, 2, 3]);
        f[38..42].copy_from_slice(&[192, 0, 2, 100]); // the address again, in a payload
        let out = r.frame(&f);
        assert_eq!(&out[..6], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(&out[26..30], &[240, 0, 0, 1]);
        assert_eq!(&out[30..34], &[10, 1, 2, 3], "private stays");
        assert_eq!(&out[38..42], &[240, 0, 0, 1]);
        assert!(is_public(Ipv4Addr::new(8, 8, 8, 8)));
        assert!(!is_public(Ipv4Addr::new(100, 64, 0, 1)));
    }
}
