//! The little DNS the verdicts need: query names from wire format, RCODE names.

/// Decode a question's name from wire-format labels. The kernel sends at most 64
/// bytes, so a longer name ends in "…"; compression never occurs in questions.
pub fn qname(wire: &[u8]) -> Option<String> {
    let mut labels = Vec::new();
    let mut i = 0;
    while let Some(&len) = wire.get(i) {
        let len = len as usize;
        if len == 0 {
            return Some(labels.join("."));
        }
        if len > 63 {
            return None;
        }
        let Some(label) = wire.get(i + 1..i + 1 + len) else {
            labels.push("…".to_string());
            return Some(labels.join("."));
        };
        labels.push(String::from_utf8_lossy(label).into_owned());
        i += 1 + len;
    }
    (!labels.is_empty()).then(|| labels.join(".") + ".…")
}

pub fn rcode_name(rcode: u8) -> String {
    match rcode {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        n => format!("RCODE{n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_names() {
        assert_eq!(
            qname(b"\x07example\x03com\x00\x00\x01").as_deref(),
            Some("example.com")
        );
        assert_eq!(qname(b"\x00").as_deref(), Some(""));
        assert_eq!(qname(b"\x07exam").as_deref(), Some("…"));
        assert_eq!(qname(b"\x03abc\x05de").as_deref(), Some("abc.…"));
        assert_eq!(qname(b"\xc0\x0c"), None, "no compression in questions");
        assert_eq!(qname(b""), None);
    }

    #[test]
    fn names_rcodes() {
        assert_eq!(rcode_name(3), "NXDOMAIN");
        assert_eq!(rcode_name(9), "RCODE9");
    }
}
