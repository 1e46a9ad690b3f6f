//! `-v` / `RUST_LOG`: what pathtrace runs (host commands, phases and their
//! timings) and, one level further, the eBPF loader's own messages (aya logs
//! through the `log` crate). Everything goes to stderr, prefixed with the time
//! since start, so stdout's contract (text or JSON lines) never changes.

use std::{io::Write, time::Instant};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// A level per target prefix (`aya=debug`), the longest matching prefix wins, and
/// a default for every other target.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    default: LevelFilter,
    targets: Vec<(String, LevelFilter)>,
}

impl Filter {
    /// `-v` shows pathtrace's own debug lines, `-vv` also the loader's, `-vvv`
    /// everything at trace level. Without `-v`, only warnings from any crate.
    pub fn from_verbosity(v: u8) -> Self {
        let own = |level| Filter {
            default: LevelFilter::Warn,
            targets: vec![("pathtrace".into(), level)],
        };
        match v {
            0 => Filter {
                default: LevelFilter::Off,
                targets: Vec::new(),
            },
            1 => own(LevelFilter::Debug),
            2 => Filter {
                default: LevelFilter::Debug,
                targets: Vec::new(),
            },
            _ => Filter {
                default: LevelFilter::Trace,
                targets: Vec::new(),
            },
        }
    }

    /// `RUST_LOG` as env_logger reads its simple form: `LEVEL`, `TARGET=LEVEL`,
    /// comma-separated (`pathtrace=debug` is this program's own lines).
    /// Unknown levels are ignored rather than failing the run.
    pub fn parse(spec: &str) -> Self {
        let mut f = Filter {
            default: LevelFilter::Off,
            targets: Vec::new(),
        };
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                Some((target, level)) => {
                    if let Ok(level) = level.trim().parse() {
                        f.targets.push((target.trim().to_string(), level));
                    }
                }
                None => {
                    if let Ok(level) = part.parse() {
                        f.default = level;
                    }
                }
            }
        }
        f
    }

    fn level_for(&self, target: &str) -> LevelFilter {
        self.targets
            .iter()
            .filter(|(t, _)| target == t || target.starts_with(&format!("{t}::")))
            .max_by_key(|(t, _)| t.len())
            .map(|(_, l)| *l)
            .unwrap_or(self.default)
    }

    fn max(&self) -> LevelFilter {
        self.targets
            .iter()
            .map(|(_, l)| *l)
            .chain([self.default])
            .max()
            .unwrap_or(LevelFilter::Off)
    }
}

struct StderrLogger {
    filter: Filter,
    start: Instant,
}

impl Log for StderrLogger {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= self.filter.level_for(m.target())
    }

    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let level = match r.level() {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        };
        // One write per line, so lines from threads do not interleave.
        let line = format!(
            "pathtrace[{:8.3}s] {level} {}: {}\n",
            self.start.elapsed().as_secs_f64(),
            r.target(),
            r.args()
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Install the logger: `-v` wins over `RUST_LOG` (an explicit flag is the
/// operator's intent right now). Nothing is installed when both are absent, so
/// the default run pays nothing.
pub fn init(verbosity: u8) {
    let filter = match (verbosity, std::env::var("RUST_LOG")) {
        (0, Ok(spec)) => Filter::parse(&spec),
        (v, _) => Filter::from_verbosity(v),
    };
    let max = filter.max();
    if max == LevelFilter::Off {
        return;
    }
    let logger = StderrLogger {
        filter,
        start: Instant::now(),
    };
    // Lives as long as the process, like any global logger.
    if log::set_logger(Box::leak(Box::new(logger))).is_ok() {
        log::set_max_level(max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_levels_and_targets() {
        let f = Filter::parse("warn,pathtrace=debug,aya::bpf=trace");
        assert_eq!(f.level_for("pathtrace::trace"), LevelFilter::Debug);
        assert_eq!(f.level_for("aya::bpf"), LevelFilter::Trace);
        assert_eq!(f.level_for("aya::maps"), LevelFilter::Warn);
        assert_eq!(f.level_for("tokio"), LevelFilter::Warn);
        assert_eq!(f.max(), LevelFilter::Trace);
        assert_eq!(Filter::parse("").max(), LevelFilter::Off);
        assert_eq!(Filter::parse("bogus").max(), LevelFilter::Off);
        // A target prefix must end at a module boundary.
        assert_eq!(
            Filter::parse("aya=info").level_for("aya_obj"),
            LevelFilter::Off
        );
    }

    #[test]
    fn verbosity_levels() {
        assert_eq!(Filter::from_verbosity(0).max(), LevelFilter::Off);
        let v = Filter::from_verbosity(1);
        assert_eq!(v.level_for("pathtrace::probes"), LevelFilter::Debug);
        assert_eq!(v.level_for("aya::bpf"), LevelFilter::Warn);
        assert_eq!(
            Filter::from_verbosity(2).level_for("aya::bpf"),
            LevelFilter::Debug
        );
    }
}
