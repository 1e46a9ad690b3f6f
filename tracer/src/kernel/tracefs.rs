//! Tracepoint record layouts, read from tracefs at run time (they move between
//! kernels: `skb:kfree_skb`'s `reason` is at 28 on 6.6 and at 36 on 6.11+).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};

pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Offset of `field` in the tracepoint `category:name`, from its `format` file.
pub fn field_offset(category: &str, name: &str, field: &str) -> Result<u32> {
    let path = format_path(category, name);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_field_offset(&text, field)
        .ok_or_else(|| anyhow!("tracepoint {category}:{name} has no field {field}"))
}

/// Offset of the drop reason in `skb:kfree_skb`: the kernel's reasons are what
/// pathtrace explains drops with, and they exist only since Linux 5.17.
pub fn kfree_reason_offset() -> Result<u32> {
    field_offset("skb", "kfree_skb", "reason").context(super::facts::DROP_REASONS.note())
}

fn format_path(category: &str, name: &str) -> PathBuf {
    Path::new(TRACEFS)
        .join("events")
        .join(category)
        .join(name)
        .join("format")
}

/// Parse `field:<type> <name>;\toffset:<n>;` lines of a tracefs format file.
pub fn parse_field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let line = line.trim();
        let decl = line.strip_prefix("field:")?.split(';').next()?;
        let name = decl.rsplit([' ', '*']).next()?;
        if name != field {
            return None;
        }
        let off = line.split("offset:").nth(1)?.split(';').next()?;
        off.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KFREE_6_18: &str = "name: kfree_skb\nID: 2310\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
\tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;\n\
\tfield:void * rx_sk;\toffset:24;\tsize:8;\tsigned:0;\n\
\tfield:unsigned short protocol;\toffset:32;\tsize:2;\tsigned:0;\n\
\tfield:enum skb_drop_reason reason;\toffset:36;\tsize:4;\tsigned:0;\n";

    const KFREE_6_6: &str = "format:\n\
\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
\tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;\n\
\tfield:unsigned short protocol;\toffset:24;\tsize:2;\tsigned:0;\n\
\tfield:enum skb_drop_reason reason;\toffset:28;\tsize:4;\tsigned:0;\n";

    #[test]
    fn finds_fields_on_both_layouts() {
        assert_eq!(parse_field_offset(KFREE_6_18, "reason"), Some(36));
        assert_eq!(parse_field_offset(KFREE_6_18, "location"), Some(16));
        assert_eq!(parse_field_offset(KFREE_6_6, "reason"), Some(28));
        assert_eq!(parse_field_offset(KFREE_6_6, "rx_sk"), None);
    }

    #[test]
    fn does_not_match_suffixes() {
        assert_eq!(parse_field_offset(KFREE_6_18, "sk"), None);
        assert_eq!(parse_field_offset(KFREE_6_18, "skbaddr"), Some(8));
    }
}
