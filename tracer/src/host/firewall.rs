//! The host's rule sets, read once per run: `nft -j list ruleset` (what the
//! replay walks), `nft -a list ruleset` (the rules' own text, for people) and
//! `iptables-legacy-save` and `ip6tables-legacy-save` (legacy tables;
//! iptables-nft and ip6tables-nft rules are in the nft rule set, as tables of
//! the `ip` and `ip6` families). A verdict made while the ring buffer is drained must not spawn a
//! process, so every reader of a rule set asks here, and the trace reads it
//! before it attaches.

use std::{cell::Cell, path::Path, sync::OnceLock};

use serde::{Deserialize, Serialize};

use super::run::run_optional;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Firewall {
    /// `nft -j list ruleset`; None without nft or root.
    pub nft_json: Option<String>,
    /// `nft -a list ruleset`.
    pub nft_text: Option<String>,
    /// `iptables-legacy-save` (every table); None without the legacy tools.
    pub legacy: Option<String>,
    /// `ip6tables-legacy-save` (every table); None without the legacy tools.
    #[serde(default)]
    pub legacy6: Option<String>,
    /// `iptables` is the nf_tables variant here (it names the fixing commands).
    #[serde(default)]
    pub iptables_nft: bool,
    /// `ebtables-nft-save`, read only when a bridge-family table holds xtables
    /// matches (ebtables-nft's, e.g. libvirt's nwfilter rules): what they test.
    #[serde(default)]
    pub ebtables: Option<String>,
}

impl Firewall {
    pub fn read() -> Self {
        let nft_json = run_optional("nft", &["-j", "list", "ruleset"]);
        let ebtables = nft_json
            .as_deref()
            .is_some_and(bridge_xt)
            .then(|| run_optional("ebtables-nft-save", &[]))
            .flatten();
        Self {
            nft_json,
            nft_text: run_optional("nft", &["-a", "list", "ruleset"]),
            legacy: run_optional("iptables-legacy-save", &[]),
            legacy6: run_optional("ip6tables-legacy-save", &[]),
            iptables_nft: iptables_is_nft(),
            ebtables,
        }
    }

    /// The output of `nft ARGS` for the two listings read here.
    pub fn nft(&self, args: &[&str]) -> Option<&str> {
        match args {
            ["-j", "list", "ruleset"] => self.nft_json.as_deref(),
            ["-a", "list", "ruleset"] => self.nft_text.as_deref(),
            _ => None,
        }
    }

    /// One table of `iptables-legacy-save`, as `iptables-legacy-save -t TABLE`
    /// prints it (`*nat` … `COMMIT`); "" when the table is not loaded.
    pub fn legacy_table(&self, table: &str) -> Option<String> {
        one_table(self.legacy.as_deref()?, table)
    }
}

/// One table (`*TABLE` … `COMMIT`) of an iptables-save output.
fn one_table(save: &str, table: &str) -> Option<String> {
    let head = format!("*{table}");
    let mut inside = false;
    let mut out = String::new();
    for line in save.lines() {
        if line == head {
            inside = true;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
            if line == "COMMIT" {
                break;
            }
        }
    }
    Some(out)
}

/// The nft rule set (`nft -j`) has a bridge-family rule with an xtables match.
fn bridge_xt(json: &str) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return false;
    };
    v["nftables"].as_array().into_iter().flatten().any(|item| {
        let r = &item["rule"];
        r["family"] == "bridge"
            && r["expr"]
                .as_array()
                .is_some_and(|e| e.iter().any(|x| x["xt"]["type"] == "match"))
    })
}

static SNAPSHOT: OnceLock<Firewall> = OnceLock::new();

thread_local! {
    /// Rule sets given to this thread instead (a saved host's, in tests).
    static GIVEN: Cell<Option<&'static Firewall>> = const { Cell::new(None) };
}

/// This run's rule sets, read at the first call.
pub fn rules() -> &'static Firewall {
    GIVEN
        .get()
        .unwrap_or_else(|| SNAPSHOT.get_or_init(Firewall::read))
}

/// Use `fw` as the rule sets on this thread from now on (a saved host's).
#[cfg(test)]
pub fn give_this_thread(fw: Firewall) {
    GIVEN.set(Some(Box::leak(Box::new(fw))));
}

/// `iptables` is the nf_tables variant (Debian's default): the multi-call
/// binary it resolves to says so, without running it; `iptables -V` when the
/// name does not tell.
fn iptables_is_nft() -> bool {
    {
        let resolved = std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|d| d.join("iptables"))
            .find(|p| p.exists())
            .and_then(|p| std::fs::canonicalize(p).ok());
        match resolved
            .as_deref()
            .and_then(Path::file_name)
            .and_then(|n| n.to_str())
        {
            Some(n) if n.contains("nft") => true,
            Some(n) if n.contains("legacy") => false,
            _ => run_optional("iptables", &["-V"]).is_some_and(|v| v.contains("nf_tables")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_legacy_table_out_of_the_whole_save() {
        let fw = Firewall {
            legacy: Some(
                "# Generated\n*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j DROP\nCOMMIT\n*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -o eth0 -j MASQUERADE\nCOMMIT\n".into(),
            ),
            ..Firewall::default()
        };
        assert_eq!(
            fw.legacy_table("nat").unwrap(),
            "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -o eth0 -j MASQUERADE\nCOMMIT\n"
        );
        assert_eq!(fw.legacy_table("mangle").unwrap(), "");
        assert_eq!(Firewall::default().legacy_table("nat"), None);
    }
}
