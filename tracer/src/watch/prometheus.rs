//! `--prometheus ADDR:PORT`: the snapshot in the Prometheus text exposition format,
//! served at `/metrics` by a minimal HTTP/1.1 responder (one request per
//! connection; scrapers need nothing more).
//!
//! A VM's labels (`vm_ip`, `vm_ip6`, `vmid`, `vm_name`, `vlan`) come from its
//! identity, which stays fixed while its port exists (see `identity`): a quiet
//! guest's series keep their labels when the host's tables forget it. `vm_ip`
//! holds the IPv4 addresses as it always has and `vm_ip6` the IPv6 ones, so a
//! series grouped by `vm_ip` does not change when a dual-stack guest's IPv6
//! address is learned.

use std::{fmt::Write, net::SocketAddr, sync::Arc};

use anyhow::{Context, Result};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Mutex,
};

use super::report::{Snapshot, VmReport};

/// The latest rendered page, shared between the watch loop and the server.
pub type Page = Arc<Mutex<String>>;

pub async fn serve(addr: SocketAddr, page: Page) -> Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for --prometheus"))?;
    Ok(tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let page = page.clone();
            tokio::spawn(async move {
                let _ = answer(stream, page).await;
            });
        }
    }))
}

async fn answer(mut stream: TcpStream, page: Page) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    // Read the request head (bounded: a scraper's request is a few hundred bytes).
    while len < buf.len() {
        let n = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            stream.read(&mut buf[len..]),
        )
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if n == 0 {
            break;
        }
        len += n;
        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let page = match path.split('?').next() {
        // Read the process's own numbers at scrape time, not at the last interval.
        Some("/metrics") => format!("{}{}", page.lock().await, process_metrics()),
        _ => String::new(),
    };
    stream.write_all(&response(method, path, &page)).await?;
    stream.shutdown().await
}

/// The whole HTTP response to `method path`: `/metrics` (the exposition text in
/// `metrics`) and `/` for GET and HEAD (HEAD: the same headers, no body, as
/// scrapers' health checks and load balancers expect), 404 for other paths, 405
/// for other methods.
fn response(method: &str, path: &str, metrics: &str) -> Vec<u8> {
    let path = path.split('?').next().unwrap_or("");
    let text = "text/plain; charset=utf-8";
    let (status, body, ctype, allow) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => (
            "200 OK",
            metrics.to_string(),
            "text/plain; version=0.0.4; charset=utf-8",
            false,
        ),
        ("GET" | "HEAD", "/") => (
            "200 OK",
            "pathtrace watch: metrics at /metrics\n".to_string(),
            text,
            false,
        ),
        ("GET" | "HEAD", _) => ("404 Not Found", "not found\n".to_string(), text, false),
        _ => (
            "405 Method Not Allowed",
            "only GET and HEAD\n".to_string(),
            text,
            true,
        ),
    };
    let allow = if allow { "Allow: GET, HEAD\r\n" } else { "" };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// The standard process metrics every exporter has, so a fleet dashboard can
/// show what pathtrace itself costs on each node: resident memory and CPU time,
/// read from /proc at scrape time.
fn process_metrics() -> String {
    let mut out = String::new();
    if let Some(rss) = resident_bytes() {
        family(
            &mut out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
        );
        let _ = writeln!(out, "process_resident_memory_bytes {rss}");
    }
    if let Some(cpu) = cpu_seconds() {
        family(
            &mut out,
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
        );
        let _ = writeln!(out, "process_cpu_seconds_total {cpu}");
    }
    out
}

fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    stat_cpu_seconds(&stat, ticks as f64)
}

/// utime + stime (fields 14 and 15 of /proc/PID/stat) in seconds. The command
/// name (field 2) may hold spaces and parentheses: count from the last `)`.
fn stat_cpu_seconds(stat: &str, ticks_per_s: f64) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, index 11 here.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    (ticks_per_s > 0.0).then(|| (utime + stime) / ticks_per_s)
}

/// The running kernel's release (`uname -r`), for `pathtrace_build_info`.
fn kernel_release() -> &'static str {
    static RELEASE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    RELEASE.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    })
}

/// Escape a label value as the exposition format requires.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `vlan="20"`; empty when untagged or unknown, as the other optional labels
/// (Prometheus treats an empty label as absent).
fn vlan_label(vm: &VmReport) -> String {
    vm.vlan.map(|v| v.to_string()).unwrap_or_default()
}

fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The `vm_ip` and `vm_ip6` label values: a VM's IPv4 and its IPv6 addresses,
/// each comma-joined.
fn addresses(vm_ips: &[String]) -> (String, String) {
    let (v6, v4): (Vec<&str>, Vec<&str>) = vm_ips
        .iter()
        .map(String::as_str)
        .partition(|a| a.contains(':'));
    (v4.join(","), v6.join(","))
}

pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "pathtrace_build_info",
        "gauge",
        "Always 1: the pathtrace version and commit, and the kernel it runs on.",
    );
    let l = labels(&[
        ("version", env!("CARGO_PKG_VERSION")),
        ("commit", env!("PATHTRACE_GIT_COMMIT")),
        ("kernel", kernel_release()),
    ]);
    let _ = writeln!(out, "pathtrace_build_info{l} 1");
    family(
        &mut out,
        "pathtrace_drops_total",
        "counter",
        "Packets of a VM dropped on this host, by drop point.",
    );
    let mut bytes = String::new();
    let mut resets = String::new();
    for vm in &s.vms {
        let (ip, ip6) = addresses(&vm.vm_ips);
        let vlan = vlan_label(vm);
        for d in &vm.drops {
            let l = labels(&[
                ("vm_ip", &ip),
                ("vm_ip6", &ip6),
                ("vmid", vm.vmid.as_deref().unwrap_or("")),
                ("vm_name", vm.vm_name.as_deref().unwrap_or("")),
                ("port", &vm.port),
                ("bridge", &vm.bridge),
                ("vlan", &vlan),
                ("stage", d.stage),
                ("reason", d.reason.as_deref().unwrap_or("")),
                ("location", d.location.as_deref().unwrap_or("")),
                ("ifname", d.ifname.as_deref().unwrap_or("")),
                ("direction", d.direction.unwrap_or("")),
                ("proto", d.proto),
            ]);
            let _ = writeln!(out, "pathtrace_drops_total{l} {}", d.total);
            let _ = writeln!(bytes, "pathtrace_drop_bytes_total{l} {}", d.bytes);
            if let Some(n) = d.tcp_resets_sent {
                let _ = writeln!(resets, "pathtrace_tcp_resets_sent_total{l} {n}");
            }
        }
    }
    family(
        &mut out,
        "pathtrace_drop_bytes_total",
        "counter",
        "Bytes of a VM's packets dropped on this host, by drop point.",
    );
    out.push_str(&bytes);
    family(
        &mut out,
        "pathtrace_tcp_resets_sent_total",
        "counter",
        "TCP resets this host sent a VM on behalf of a REJECT with tcp reset rule (one per segment dropped at that drop point).",
    );
    out.push_str(&resets);
    family(
        &mut out,
        "pathtrace_vm_info",
        "gauge",
        "A watched VM port (1), with the guest addresses and the VM behind it.",
    );
    for vm in &s.vms {
        let (ip, ip6) = addresses(&vm.vm_ips);
        let l = labels(&[
            ("vm_ip", &ip),
            ("vm_ip6", &ip6),
            ("vmid", vm.vmid.as_deref().unwrap_or("")),
            ("vm_name", vm.vm_name.as_deref().unwrap_or("")),
            ("port", &vm.port),
            ("bridge", &vm.bridge),
            ("vlan", &vlan_label(vm)),
        ]);
        let _ = writeln!(out, "pathtrace_vm_info{l} 1");
    }
    let st = &s.self_stats;
    let gauges: [(&str, &str, &str, f64); 6] = [
        (
            "pathtrace_events_lost_total",
            "counter",
            "Drop samples lost because the ring buffer was full (drop counts are unaffected).",
            st.events_lost as f64,
        ),
        (
            "pathtrace_map_full_drops_total",
            "counter",
            "Drops not counted because the drop-point map was full.",
            st.map_full as f64,
        ),
        (
            "pathtrace_unattributed_drops_total",
            "counter",
            "Drops on this host that belong to no watched VM.",
            st.unattributed_drops as f64,
        ),
        (
            "pathtrace_programs_attached",
            "gauge",
            "eBPF programs pathtrace has attached.",
            st.programs_attached as f64,
        ),
        (
            "pathtrace_map_entries",
            "gauge",
            "Drop points held in the kernel map.",
            st.map_entries as f64,
        ),
        (
            "pathtrace_map_capacity",
            "gauge",
            "Capacity of the kernel drop-point map.",
            st.map_capacity as f64,
        ),
    ];
    for (name, kind, help, value) in gauges {
        family(&mut out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
    family(
        &mut out,
        "pathtrace_vm_ports",
        "gauge",
        "VM ports being watched.",
    );
    let _ = writeln!(out, "pathtrace_vm_ports {}", st.vm_ports);
    out
}

#[cfg(test)]
mod tests {
    use super::super::report::{DropPoint, SelfStats};
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            kind: "watch",
            ts: 0.0,
            interval_s: 1.0,
            vms: vec![VmReport {
                port: "tap100i0".into(),
                ifindex: 7,
                bridge: "vmbr0".into(),
                vm_ips: vec!["192.0.2.100".into(), "2001:db8:1::100".into()],
                macs: vec![],
                vmid: Some("100".into()),
                vm_name: Some("web01".into()),
                vlan: Some(20),
                drops_total: 3,
                drops_per_s: 1.0,
                drops: vec![DropPoint {
                    stage: "forward",
                    reason: Some("NETFILTER_DROP".into()),
                    location: Some("nft_do_chain+0x3e8".into()),
                    ifname: Some("vm\"br0".into()),
                    direction: Some("from_vm"),
                    proto: "icmp",
                    total: 3,
                    bytes: 252,
                    per_s: 1.0,
                    via_conntrack: false,
                    example: None,
                    tcp_resets_sent: None,
                    reset_rule: None,
                }],
            }],
            self_stats: SelfStats {
                programs_attached: 1,
                vm_ports: 1,
                map_capacity: 4096,
                ..SelfStats::default()
            },
        }
    }

    #[test]
    fn renders_the_exposition_format() {
        let text = render(&sample());
        assert!(text.contains(
            "pathtrace_drops_total{vm_ip=\"192.0.2.100\",vm_ip6=\"2001:db8:1::100\",vmid=\"100\",vm_name=\"web01\",port=\"tap100i0\",bridge=\"vmbr0\",vlan=\"20\",stage=\"forward\",reason=\"NETFILTER_DROP\",location=\"nft_do_chain+0x3e8\",ifname=\"vm\\\"br0\",direction=\"from_vm\",proto=\"icmp\"} 3\n"
        ), "{text}");
        assert!(text.contains("# TYPE pathtrace_drops_total counter\n"));
        assert!(text.contains("pathtrace_programs_attached 1\n"));
        assert!(text.contains("pathtrace_map_capacity 4096\n"));
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn head_404_and_405() {
        let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
        let get = text(response("GET", "/metrics?x=1", "m 1\n"));
        assert!(get.starts_with("HTTP/1.1 200 OK\r\n"), "{get}");
        assert!(get.contains("Content-Length: 4\r\n") && get.ends_with("\r\n\r\nm 1\n"));
        let head = text(response("HEAD", "/metrics", "m 1\n"));
        assert!(head.contains("Content-Length: 4\r\n") && head.ends_with("\r\n\r\n"));
        assert!(text(response("GET", "/nope", "")).starts_with("HTTP/1.1 404 Not Found"));
        assert!(text(response("HEAD", "/nope", "")).ends_with("\r\n\r\n"));
        let post = text(response("POST", "/metrics", ""));
        assert!(post.starts_with("HTTP/1.1 405") && post.contains("Allow: GET, HEAD"));
    }

    #[test]
    fn process_numbers() {
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 5 1000 200";
        assert_eq!(stat_cpu_seconds(stat, 100.0), Some(3.0));
        assert_eq!(stat_cpu_seconds("garbage", 100.0), None);
        let own = process_metrics();
        assert!(own.contains("\nprocess_resident_memory_bytes "), "{own}");
        assert!(own.contains("\nprocess_cpu_seconds_total "), "{own}");
        let text = render(&sample());
        assert!(text.contains("pathtrace_build_info{version=\""), "{text}");
        assert!(text.contains(&format!("kernel=\"{}\"}} 1\n", kernel_release())));
    }

    /// The shipped dashboard and alert rules only use metrics (and labels) that
    /// watch exports, so they cannot drift apart.
    #[test]
    fn monitoring_examples_use_exported_metrics() {
        let text = render(&sample());
        let dashboard = include_str!("../../../monitoring/grafana-dashboard.json");
        let alerts = include_str!("../../../monitoring/prometheus-alerts.yml");
        let parsed: serde_json::Value = serde_json::from_str(dashboard).expect("dashboard is JSON");
        assert!(parsed["panels"].as_array().is_some_and(|p| !p.is_empty()));
        for source in [dashboard, alerts] {
            let mut rest = source;
            while let Some(i) = rest.find("pathtrace_") {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                assert!(
                    text.contains(&format!("\n{name}{{")) || text.contains(&format!("\n{name} ")),
                    "{name} is used by the monitoring examples but not exported"
                );
                rest = &rest[i + name.len()..];
            }
        }
        for label in [
            "vm_ip",
            "vm_ip6",
            "vmid",
            "vm_name",
            "port",
            "bridge",
            "vlan",
            "stage",
            "reason",
            "location",
            "ifname",
            "direction",
            "proto",
        ] {
            assert!(text.contains(&format!("{label}=\"")), "label {label}");
        }
    }
}
