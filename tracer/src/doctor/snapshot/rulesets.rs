//! Rule sets (`nft list ruleset`, `iptables-save`) normalised: counters and
//! set churn removed, every rule on one line with its table and chain.

use std::collections::BTreeMap;

use anyhow::{bail, Result};

/// Words of a line, split on whitespace outside double quotes, so a comment
/// keeps its spaces.
pub(super) fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in line.chars() {
        if c == '"' {
            quoted = !quoted;
        }
        if c.is_whitespace() && !quoted {
            if !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
        } else {
            word.push(c);
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

pub(super) fn is_number(w: &str) -> bool {
    !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit())
}

/// nft durations such as `58m24s624ms` or `1d2h`.
pub(super) fn is_duration(w: &str) -> bool {
    !w.is_empty()
        && w.bytes()
            .all(|b| b.is_ascii_digit() || b"dhms.".contains(&b))
}

/// An nft statement without its traffic-driven values: `counter packets N
/// bytes M` keeps only `counter`, quota and `last` lose their `used ...`, and
/// set elements lose `expires ...`. Whitespace is collapsed.
pub(super) fn strip_nft_volatile(line: &str) -> String {
    let w = words(line);
    let mut out: Vec<&str> = Vec::new();
    let mut i = 0;
    while i < w.len() {
        let at = |j: usize| w.get(i + j).map(String::as_str).unwrap_or("");
        if at(0) == "packets" && is_number(at(1)) && at(2) == "bytes" && is_number(at(3)) {
            i += 4;
        } else if at(0) == "expires" && is_duration(at(1)) {
            i += 2;
        } else if at(0) == "used" && is_number(at(1)) && at(2).ends_with("bytes") {
            i += 3;
        } else if at(0) == "used" && out.last() == Some(&"last") {
            i += 2; // `last used 3s40ms` or `last used never`
        } else {
            out.push(&w[i]);
            i += 1;
        }
    }
    out.join(" ")
}

/// `{` minus `}` outside quotes.
pub(super) fn brace_balance(text: &str) -> i32 {
    let mut quoted = false;
    let mut balance = 0;
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            '{' if !quoted => balance += 1,
            '}' if !quoted => balance -= 1,
            _ => {}
        }
    }
    balance
}

/// The items of `elements = { a, b : c, ... }`, split on top-level commas.
pub(super) fn set_elements(statement: &str) -> Vec<String> {
    let Some(open) = statement.find('{') else {
        return Vec::new();
    };
    let inner = statement[open + 1..].trim_end();
    let inner = inner.strip_suffix('}').unwrap_or(inner);
    let (mut items, mut item) = (Vec::new(), String::new());
    let (mut depth, mut quoted) = (0, false);
    for c in inner.chars() {
        match c {
            '"' => quoted = !quoted,
            '{' if !quoted => depth += 1,
            '}' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                items.push(std::mem::take(&mut item));
                continue;
            }
            _ => {}
        }
        item.push(c);
    }
    items.push(item);
    items
        .iter()
        .map(|i| strip_nft_volatile(i))
        .filter(|i| !i.is_empty())
        .collect()
}

/// A table, or an object inside one (chain, set, map, counter, ...), and its lines.
pub(super) struct NftBlock {
    head: String,
    body: Vec<String>,
    /// Set or map elements: their order in the listing means nothing.
    elements: Vec<String>,
    /// A set filled by the packet path (`flags dynamic`): its elements are traffic.
    dynamic: bool,
}

impl NftBlock {
    fn new(head: String) -> NftBlock {
        NftBlock {
            head,
            body: Vec::new(),
            elements: Vec::new(),
            dynamic: false,
        }
    }

    fn add(&mut self, statement: &str) {
        if statement.starts_with("elements =") {
            if !self.dynamic {
                self.elements.extend(set_elements(statement));
            }
            return;
        }
        let statement = strip_nft_volatile(statement);
        if statement.starts_with("flags ") && statement.contains("dynamic") {
            self.dynamic = true;
        }
        // A named counter's only line is `packets N bytes M`, now empty.
        if !statement.is_empty() {
            self.body.push(statement);
        }
    }

    /// The head alone (so an empty chain still shows), then each line under it.
    fn lines(mut self) -> Vec<String> {
        self.elements.sort();
        let head = &self.head;
        let mut lines = vec![head.clone()];
        lines.extend(self.body.iter().map(|l| format!("{head}: {l}")));
        lines.extend(self.elements.iter().map(|e| format!("{head} element: {e}")));
        lines
    }
}

/// `nft list ruleset` as self-describing lines: `table F T`, `table F T chain C`,
/// `table F T chain C: RULE`, `table F T set S element: E`. Rule order within
/// a chain is kept; tables and objects are sorted, because their listing order
/// is creation order, which does not change how packets are handled.
pub(super) fn normalise_nft(text: &str) -> Result<String> {
    let mut blocks: Vec<NftBlock> = Vec::new();
    // Indexes into `blocks` of the open table and the open object inside it.
    let mut table: Option<usize> = None;
    let mut object: Option<usize> = None;
    let mut pending = String::new();
    for line in text.lines().map(str::trim) {
        // Comments are iptables-nft's "managed by" warnings, not configuration.
        if line.is_empty() || (pending.is_empty() && line.starts_with('#')) {
            continue;
        }
        // A statement may be wrapped over lines (long sets): join it first.
        if !pending.is_empty() {
            pending.push(' ');
        }
        pending.push_str(line);
        let balance = brace_balance(&pending);
        // `table ... {` and `chain ... {` open blocks; any other open brace
        // belongs to a statement that continues on the next line.
        let opens_block = balance > 0 && pending.ends_with('{') && object.is_none();
        if balance > 0 && !opens_block {
            continue;
        }
        let statement = std::mem::take(&mut pending);
        let head = statement.trim_end_matches('{').trim();
        if balance < 0 {
            // A closing brace ends the innermost open block.
            if object.take().is_none() {
                table = None;
            }
        } else if let Some(t) = table {
            if opens_block {
                let head = format!("{} {head}", blocks[t].head);
                blocks.push(NftBlock::new(head));
                object = Some(blocks.len() - 1);
            } else {
                blocks[object.unwrap_or(t)].add(&statement);
            }
        } else if opens_block {
            blocks.push(NftBlock::new(head.to_string()));
            table = Some(blocks.len() - 1);
        } else {
            bail!("nft statement outside a table: {statement}");
        }
    }
    // Stable sort: blocks with equal heads (none expected) keep their order.
    blocks.sort_by(|a, b| a.head.cmp(&b.head));
    Ok(blocks
        .into_iter()
        .flat_map(NftBlock::lines)
        .map(|l| l + "\n")
        .collect())
}

/// One iptables chain: its declaration and its rules in order.
#[derive(Default)]
pub(super) struct IptChain {
    declaration: Option<String>,
    rules: Vec<String>,
}

/// iptables-save output as `*TABLE :CHAIN POLICY` and `*TABLE -A CHAIN ...`
/// lines, without comments or counters. Rules keep their order within a
/// chain; tables and chains are sorted, since iptables-save lists them in
/// module-load or creation order.
pub(super) fn normalise_iptables(text: &str) -> Result<String> {
    let mut chains: BTreeMap<(String, String), IptChain> = BTreeMap::new();
    let mut table: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line == "COMMIT" {
            continue;
        }
        if let Some(name) = line.strip_prefix('*') {
            table = Some(name.to_string());
            continue;
        }
        let Some(t) = &table else {
            bail!("iptables-save line outside a table: {line}");
        };
        let line = strip_ipt_counters(line);
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or("").to_string();
            let chain = chains.entry((t.clone(), name)).or_default();
            chain.declaration = Some(format!("*{t} {line}"));
        } else {
            let name = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let chain = chains.entry((t.clone(), name)).or_default();
            chain.rules.push(format!("*{t} {line}"));
        }
    }
    Ok(chains
        .into_values()
        .flat_map(|c| c.declaration.into_iter().chain(c.rules))
        .map(|l| l + "\n")
        .collect())
}

/// Drop `[packets:bytes]` (a chain's policy counters, or a rule's with
/// `iptables-save -c`) and a rule's `-c packets bytes`.
pub(super) fn strip_ipt_counters(line: &str) -> String {
    let w = words(line);
    let mut out: Vec<&str> = Vec::new();
    let mut i = 0;
    while i < w.len() {
        let word = w[i].as_str();
        let next = |j: usize| w.get(i + j).map(String::as_str).unwrap_or("");
        if is_bracket_counter(word) {
            i += 1;
        } else if word == "-c" && is_number(next(1)) && is_number(next(2)) {
            i += 3;
        } else {
            out.push(word);
            i += 1;
        }
    }
    out.join(" ")
}

pub(super) fn is_bracket_counter(word: &str) -> bool {
    word.strip_prefix('[')
        .and_then(|w| w.strip_suffix(']'))
        .and_then(|w| w.split_once(':'))
        .is_some_and(|(p, b)| is_number(p) && is_number(b))
}
