//! What each mode needs from the kernel, in one declaration: the hooks and
//! features, how their presence is probed, and what happens without them —
//! refuse (with the sentence the operator reads), fall back to something else,
//! or go on and say what is lost. The loader walks this: preflight refuses on
//! the missing essentials of a mode, and the probes take their choices and the
//! words of their skipped-probe notes from here. The README's "What each mode
//! needs" table is this catalogue in prose.

use std::path::Path;

use aya::util::KernelVersion;

/// A mode of pathtrace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Trace,
    Watch,
    /// `--deep` on top of trace.
    Deep,
}

/// How a fact is probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The running kernel is at least this version.
    KernelAtLeast(u32, u32),
    /// This path exists (a sysfs or tracefs entry).
    Path(&'static str),
    /// A field of a tracepoint's record (`category`, `event`, `field`).
    TracepointField(&'static str, &'static str, &'static str),
    /// Only loading or attaching the program tells (the verifier decides).
    Attach,
}

/// What happens when a fact does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Without {
    /// The mode cannot run: this sentence says why and what to do.
    Refuse(&'static str),
    /// Something else is used instead; `lost` is what that costs.
    Fallback {
        to: &'static str,
        lost: &'static str,
    },
    /// The mode runs without it; `lost` is what it cannot see.
    Skip { lost: &'static str },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fact {
    pub what: &'static str,
    pub modes: &'static [Mode],
    pub probe: Probe,
    pub without: Without,
}

/// The kernel reports why it dropped a packet (skb:kfree_skb's `reason`).
pub const DROP_REASONS: Fact = Fact {
    what: "drop reasons (skb:kfree_skb reason, Linux 5.17+)",
    modes: &[Mode::Trace, Mode::Watch],
    probe: Probe::TracepointField("skb", "kfree_skb", "reason"),
    without: Without::Refuse(
        "this kernel reports no drop reasons (skb:kfree_skb has them since Linux 5.17); pathtrace needs 5.17 or newer (tested: 6.1, 6.12, 6.18)",
    ),
};

/// Raw tracepoints on skb:kfree_skb/consume_skb (no trace record per call).
pub const RAW_FREE_PROBES: Fact = Fact {
    what: "raw tracepoints on skb:kfree_skb and skb:consume_skb",
    modes: &[Mode::Trace, Mode::Watch],
    probe: Probe::Attach,
    without: Without::Fallback {
        to: "classic tracepoints",
        lost: "nothing but cost: a trace record is built for every freed packet",
    },
};

/// skb:consume_skb: the normal ends of packets.
pub const CONSUME_SKB: Fact = Fact {
    what: "skb:consume_skb",
    modes: &[Mode::Trace],
    probe: Probe::Attach,
    without: Without::Skip {
        lost: "deliveries to the host itself are not seen",
    },
};

/// tcx links (6.6+): owned by the process, gone when it exits.
pub const TCX: Fact = Fact {
    what: "tcx attachment of the TC programs (Linux 6.6+)",
    modes: &[Mode::Trace],
    probe: Probe::KernelAtLeast(6, 6),
    without: Without::Fallback {
        to: "a clsact qdisc (created if missing, removed at exit if it holds only ours)",
        lost: "nothing; a SIGKILL may leave a clsact qdisc pathtrace created",
    },
};

/// Kprobes (CONFIG_KPROBES), for `--deep`'s function hops.
pub const KPROBES: Fact = Fact {
    what: "kprobes (CONFIG_KPROBES)",
    modes: &[Mode::Deep],
    probe: Probe::Path("/sys/bus/event_source/devices/kprobe"),
    without: Without::Refuse(
        "--deep needs kprobes, which this kernel lacks (CONFIG_KPROBES is off); run without --deep",
    ),
};

/// Every fact, for the walks over a mode.
pub const CATALOGUE: &[Fact] = &[DROP_REASONS, RAW_FREE_PROBES, CONSUME_SKB, TCX, KPROBES];

impl Fact {
    /// Whether it holds on this kernel; None when only an attach can tell.
    pub fn holds(&self) -> Option<bool> {
        match self.probe {
            Probe::KernelAtLeast(major, minor) => Some(
                KernelVersion::current()
                    .is_ok_and(|v| v >= KernelVersion::new(major as u8, minor as u8, 0)),
            ),
            Probe::Path(p) => Some(Path::new(p).exists()),
            Probe::TracepointField(cat, event, field) => {
                Some(super::tracefs::field_offset(cat, event, field).is_ok())
            }
            Probe::Attach => None,
        }
    }

    /// The note for a skipped probe: what failed, and what is lost.
    pub fn skipped_because(&self, err: &anyhow::Error) -> String {
        match self.without {
            Without::Skip { lost } | Without::Fallback { lost, .. } => {
                format!("{} ({err:#}): {lost}", self.what)
            }
            Without::Refuse(why) => format!("{why} ({err:#})"),
        }
    }

    /// What the operator is told when it does not hold.
    pub fn note(&self) -> String {
        match self.without {
            Without::Refuse(why) => why.to_string(),
            Without::Fallback { to, lost } => format!("{}: using {to} ({lost})", self.what),
            Without::Skip { lost } => format!("{}: {lost}", self.what),
        }
    }
}

/// The first essential of `mode` that this kernel lacks, as the sentence to
/// refuse with (facts that only an attach can tell are left to the loader).
pub fn missing_essential(mode: Mode) -> Option<&'static str> {
    CATALOGUE
        .iter()
        .filter(|f| f.modes.contains(&mode))
        .find_map(|f| match (f.without, f.holds()) {
            (Without::Refuse(why), Some(false)) => Some(why),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fact_says_what_is_lost_or_why_it_refuses() {
        for f in CATALOGUE {
            assert!(!f.modes.is_empty(), "{}", f.what);
            let note = f.note();
            assert!(note.len() > 20 && !note.contains('\n'), "{note}");
        }
    }

    #[test]
    fn notes_name_the_fallback() {
        assert_eq!(
            CONSUME_SKB.note(),
            "skb:consume_skb: deliveries to the host itself are not seen"
        );
        assert!(TCX
            .note()
            .starts_with("tcx attachment of the TC programs (Linux 6.6+): using a clsact qdisc"));
    }
}
