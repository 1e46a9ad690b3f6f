//! The network daemons running in this network namespace that the doctor asks
//! about (router advertisements: radvd, dnsmasq; proxy NDP: ndppd), with their
//! arguments and configuration file, read with the host so a saved host
//! answers the same.

use std::{fs, path::Path};

use serde::{Deserialize, Serialize};

/// The daemons read, by process name.
const NAMES: &[&str] = &["radvd", "dnsmasq", "ndppd"];
/// A configuration file larger than this is not a daemon's.
const MAX_CONFIG: u64 = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Daemon {
    pub name: String,
    /// Its command line after the program.
    pub args: Vec<String>,
    /// The configuration file it reads, with its text (None: unreadable).
    pub config: Option<(String, String)>,
}

impl Daemon {
    /// An option given on the command line (`--enable-ra`, `--interface=X`,
    /// `-i X`) or as a line of the configuration file (`enable-ra`,
    /// `interface=X`): every value of `long` (or `short`), "" for a flag.
    pub fn option(&self, long: &str, short: Option<&str>) -> Vec<String> {
        let mut out = Vec::new();
        let mut args = self.args.iter().peekable();
        while let Some(a) = args.next() {
            if let Some(v) = a.strip_prefix(&format!("--{long}=")) {
                out.push(v.to_string());
            } else if *a == format!("--{long}") {
                out.push(String::new());
            } else if short.is_some_and(|s| *a == format!("-{s}")) {
                out.push(args.next().cloned().unwrap_or_default());
            }
        }
        let lines = self.config.iter().flat_map(|(_, text)| text.lines());
        for l in lines.map(str::trim) {
            match l.split_once('=') {
                Some((k, v)) if k.trim() == long => out.push(v.trim().to_string()),
                None if l == long => out.push(String::new()),
                _ => {}
            }
        }
        out
    }
}

/// The daemons of interest in the reader's network namespace.
pub fn read() -> Vec<Daemon> {
    let Ok(own) = fs::read_link("/proc/thread-self/ns/net") else {
        return Vec::new();
    };
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| {
            let dir = e.path();
            let name = fs::read_to_string(dir.join("comm"))
                .ok()?
                .trim()
                .to_string();
            if !NAMES.contains(&name.as_str()) || fs::read_link(dir.join("ns/net")).ok()? != own {
                return None;
            }
            let cmdline = fs::read(dir.join("cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .skip(1)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let config = config_path(&name, &args).and_then(|p| read_config(&p));
            Some(Daemon { name, args, config })
        })
        .collect()
}

/// The configuration file: `-C FILE`/`--config=FILE` (radvd, default
/// /etc/radvd.conf), `--conf-file=FILE`/`-C FILE` (dnsmasq, default
/// /etc/dnsmasq.conf), `-c FILE` (ndppd, default /etc/ndppd.conf).
fn config_path(name: &str, args: &[String]) -> Option<String> {
    let (long, short, default) = match name {
        "radvd" => ("--config=", "-C", "/etc/radvd.conf"),
        "dnsmasq" => ("--conf-file=", "-C", "/etc/dnsmasq.conf"),
        _ => ("--config=", "-c", "/etc/ndppd.conf"),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(p) = a.strip_prefix(long) {
            return Some(p.to_string());
        }
        if a == short {
            return it.next().cloned();
        }
    }
    Some(default.to_string())
}

fn read_config(path: &str) -> Option<(String, String)> {
    let p = Path::new(path);
    if fs::metadata(p).ok()?.len() > MAX_CONFIG {
        return None;
    }
    Some((path.to_string(), fs::read_to_string(p).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_from_the_command_line_and_the_file() {
        let d = Daemon {
            name: "dnsmasq".into(),
            args: vec![
                "--conf-file=/x.conf".into(),
                "-i".into(),
                "vmbr0".into(),
                "--enable-ra".into(),
            ],
            config: Some((
                "/x.conf".into(),
                "interface=virbr0\nenable-ra\n# dhcp-range=::,ra-only\n".into(),
            )),
        };
        assert_eq!(d.option("interface", Some("i")), ["vmbr0", "virbr0"]);
        assert_eq!(d.option("enable-ra", None), ["", ""]);
        assert!(d.option("dhcp-range", None).is_empty());
        assert_eq!(
            config_path("radvd", &[]).as_deref(),
            Some("/etc/radvd.conf")
        );
        assert_eq!(
            config_path("dnsmasq", &["-C".into(), "/y".into()]).as_deref(),
            Some("/y")
        );
    }
}
