//! The Debian package (`cargo xtask deb`): its contents, lintian, the unit under
//! `systemd-analyze verify`, install and removal with dpkg, the manual page, and
//! the unit's exact ExecStart run under exactly the unit's capabilities as a
//! non-root user in the lab, serving /metrics with a VM's drop on it.
//!
//! The package is installed into a throwaway root (`dpkg --root`, maintainer
//! scripts run chroot-less with DPKG_ROOT set, which ours honour by leaving the
//! host's systemd alone), so the host's own package database and systemd are
//! never touched. Needs root; `cargo xtask test` builds the package and passes
//! it in PATHTRACE_DEB.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use pathtrace_tests::{
    lab::{Lab, LabOptions, PingOpts},
    tracerun::fake_guest_bin,
};

const UNIT: &str = "lib/systemd/system/pathtrace-watch.service";

fn deb() -> PathBuf {
    let deb = std::env::var_os("PATHTRACE_DEB")
        .map(PathBuf::from)
        .expect("PATHTRACE_DEB: run through `cargo xtask test`, or build with `cargo xtask deb` and point PATHTRACE_DEB at it");
    assert!(deb.exists(), "{} missing", deb.display());
    deb
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A throwaway root for dpkg; removed however the test ends.
struct Root(PathBuf);

impl Root {
    /// An empty system whose package database knows only the packages ours
    /// depends on (copied from the host's), so dpkg checks dependencies for real.
    fn new(depends_on: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("pathtrace-deb-root-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let admin = dir.join("var/lib/dpkg");
        for sub in ["info", "updates", "triggers"] {
            std::fs::create_dir_all(admin.join(sub)).unwrap();
        }
        std::fs::create_dir_all(dir.join("var/log")).unwrap();
        let status = std::fs::read_to_string("/var/lib/dpkg/status").unwrap();
        let stanzas: Vec<&str> = status
            .split("\n\n")
            .filter(|s| {
                s.lines()
                    .next()
                    .and_then(|l| l.strip_prefix("Package: "))
                    .is_some_and(|p| depends_on.contains(&p))
            })
            .collect();
        std::fs::write(admin.join("status"), stanzas.join("\n\n") + "\n\n").unwrap();
        std::fs::write(admin.join("available"), "").unwrap();
        for p in depends_on {
            std::fs::write(admin.join("info").join(format!("{p}.list")), "").unwrap();
        }
        Root(dir)
    }

    fn dpkg(&self, args: &[&str]) -> (bool, String) {
        run(Command::new("dpkg")
            .arg(format!("--root={}", self.0.display()))
            .arg("--force-script-chrootless")
            .arg(format!(
                "--log={}",
                self.0.join("var/log/dpkg.log").display()
            ))
            .args(args))
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    /// Files (not directories) installed under the root, outside dpkg's own.
    fn files(&self) -> Vec<String> {
        fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, base, out);
                } else {
                    out.push(p.strip_prefix(base).unwrap().display().to_string());
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.0, &self.0, &mut out);
        out.retain(|f| !f.starts_with("var/lib/dpkg") && !f.starts_with("var/log"));
        out.sort();
        out
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `Key=value` settings of the unit's [Service] section (last one wins, except
/// `Environment`, which accumulates).
fn service_settings(unit: &str) -> (BTreeMap<String, String>, Vec<String>) {
    let mut settings = BTreeMap::new();
    let mut env = Vec::new();
    let mut in_service = false;
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
            continue;
        }
        if !in_service || line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (k, v) = line.split_once('=').unwrap();
        if k == "Environment" {
            env.push(v.to_string());
        } else {
            settings.insert(k.to_string(), v.to_string());
        }
    }
    (settings, env)
}

/// The environment systemd gives the service: `Environment=` lines, then the
/// EnvironmentFile (read from the installed root) overriding them.
fn service_env(
    root: &Root,
    settings: &BTreeMap<String, String>,
    env: &[String],
) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    let mut assign = |line: &str| {
        if let Some((k, v)) = line.split_once('=') {
            vars.insert(k.trim().to_string(), v.trim().trim_matches('"').to_string());
        }
    };
    env.iter().for_each(|l| assign(l));
    let file = settings["EnvironmentFile"].trim_start_matches('-');
    let text = std::fs::read_to_string(root.path(file.trim_start_matches('/'))).unwrap();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .for_each(assign);
    vars
}

/// systemd's ExecStart expansion: `${VAR}` is one word, `$VAR` splits on
/// whitespace (and vanishes when empty).
fn expand(exec: &str, vars: &BTreeMap<String, String>) -> Vec<String> {
    let mut argv = Vec::new();
    for word in exec.split_whitespace() {
        if let Some(name) = word.strip_prefix("${").and_then(|w| w.strip_suffix('}')) {
            argv.push(vars.get(name).cloned().unwrap_or_default());
        } else if let Some(name) = word.strip_prefix('$') {
            let value = vars.get(name).cloned().unwrap_or_default();
            argv.extend(value.split_whitespace().map(str::to_string));
        } else {
            argv.push(word.to_string());
        }
    }
    argv
}

/// `CAP_BPF CAP_PERFMON` → `+bpf,+perfmon` (setpriv's syntax).
fn setpriv_caps(caps: &str) -> String {
    caps.split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect::<Vec<_>>()
        .join(",")
}

struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// GET `path` on 127.0.0.1:`port` inside the lab's namespace.
fn http_get(lab: &Lab, port: &str, method: &str) -> String {
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port} && \
         printf '{method} /metrics HTTP/1.1\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && timeout 5 cat <&3"
    );
    let (_, text) = run(Command::new("nsenter")
        .arg(format!("--net={}", lab.hv_netns_path().display()))
        .args(["bash", "-c", &script]));
    text
}

#[test]
fn deb_installs_verifies_and_its_unit_serves_metrics() {
    let deb = deb();

    // Contents.
    let (ok, listing) = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    assert!(ok, "{listing}");
    for path in [
        "./usr/bin/pathtrace",
        "./usr/share/man/man1/pathtrace.1.gz",
        "./usr/share/man/man1/pathtrace-trace.1.gz",
        "./usr/share/man/man1/pathtrace-watch.1.gz",
        "./usr/share/man/man1/pathtrace-doctor.1.gz",
        "./usr/share/man/man1/pathtrace-report.1.gz",
        "./usr/share/bash-completion/completions/pathtrace",
        "./usr/share/zsh/vendor-completions/_pathtrace",
        "./usr/share/fish/vendor_completions.d/pathtrace.fish",
        "./usr/share/pathtrace/monitoring/grafana-dashboard.json",
        "./usr/share/pathtrace/monitoring/prometheus-alerts.yml",
        "./usr/share/doc/pathtrace/copyright",
        "./usr/share/doc/pathtrace/json.md",
        "./etc/default/pathtrace",
        &format!("./{UNIT}"),
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(&format!(" {path}"))),
            "{path} not in the package:\n{listing}"
        );
    }
    assert!(
        listing.lines().all(|l| l.contains(" root/root ")),
        "every file owned by root:\n{listing}"
    );

    // lintian: no errors (warnings are reported, not failed on).
    let (ok, lint) = run(Command::new("lintian")
        .args(["--fail-on", "error", "--allow-root"])
        .arg(&deb));
    eprintln!("lintian:\n{lint}");
    assert!(ok, "lintian errors:\n{lint}");

    // Install into a throwaway root with the dependencies known.
    let root = Root::new(&["libc6", "libgcc-s1", "iproute2", "init-system-helpers"]);
    let (ok, out) = root.dpkg(&["-i", deb.to_str().unwrap()]);
    assert!(ok, "dpkg -i:\n{out}");
    let (ok, status) = root.dpkg(&["-s", "pathtrace"]);
    assert!(
        ok && status.contains("Status: install ok installed"),
        "{status}"
    );

    // systemd-analyze verify, against a root holding the unit, the binary it
    // runs, the manual page it names and the standard targets it is ordered
    // against (from the host).
    let units = root.path("lib/systemd/system");
    for target in std::fs::read_dir("/lib/systemd/system").unwrap().flatten() {
        let name = target.file_name().to_string_lossy().into_owned();
        if name.ends_with(".target") && target.path().is_file() {
            std::fs::copy(target.path(), units.join(&name)).unwrap();
        }
    }
    let (ok, verify) = run(Command::new("systemd-analyze")
        .arg(format!("--root={}", root.0.display()))
        .args(["verify", &format!("/{UNIT}")])
        .env("MANPATH", root.path("usr/share/man")));
    assert!(
        ok && verify.trim().is_empty(),
        "systemd-analyze verify:\n{verify}"
    );

    // The installed manual page renders.
    let (ok, page) = run(Command::new("man")
        .args(["-P", "cat", "pathtrace-watch"])
        .env("MANPATH", root.path("usr/share/man"))
        .env("MANWIDTH", "80"));
    assert!(
        ok && page.contains("--prometheus"),
        "man pathtrace-watch:\n{page}"
    );
    let (ok, page) = run(Command::new("man")
        .args(["-P", "cat", "-l"])
        .arg(root.path("usr/share/man/man1/pathtrace.1.gz")));
    assert!(
        ok && page.contains("watch") && page.contains("doctor"),
        "{page}"
    );

    serves_metrics_under_the_units_privileges(&root);

    // Removal leaves only the conffile; purge leaves nothing.
    let (ok, out) = root.dpkg(&["-r", "pathtrace"]);
    assert!(ok, "dpkg -r:\n{out}");
    let left: Vec<String> = root
        .files()
        .into_iter()
        .filter(|f| !f.starts_with("lib/systemd/system/") || f.ends_with(".service"))
        .collect();
    assert_eq!(left, ["etc/default/pathtrace"], "after dpkg -r");
    let (ok, out) = root.dpkg(&["-P", "pathtrace"]);
    assert!(ok, "dpkg -P:\n{out}");
    assert!(
        !root.path("etc/default/pathtrace").exists(),
        "purge removes the conffile"
    );
    let (found, _) = root.dpkg(&["-s", "pathtrace"]);
    assert!(!found, "pathtrace still known to dpkg after purge");
}

/// The unit's ExecStart, expanded as systemd would with the installed
/// /etc/default/pathtrace, run with exactly its AmbientCapabilities and
/// CapabilityBoundingSet as a user without privileges (what DynamicUser gives),
/// NoNewPrivileges — in the lab, with a VM whose replies are dropped.
fn serves_metrics_under_the_units_privileges(root: &Root) {
    let unit = std::fs::read_to_string(root.path(UNIT)).unwrap();
    let (settings, env) = service_settings(&unit);
    assert_eq!(settings["DynamicUser"], "yes");
    assert_eq!(settings["NoNewPrivileges"], "yes");
    assert_eq!(settings["ProtectSystem"], "strict");
    assert_eq!(settings["ProtectHome"], "yes");
    assert_eq!(settings["PrivateTmp"], "yes");
    assert_eq!(settings["Restart"], "on-failure");
    assert_eq!(
        settings["AmbientCapabilities"], settings["CapabilityBoundingSet"],
        "the service can use every capability it may hold"
    );
    let vars = service_env(root, &settings, &env);
    let argv = expand(&settings["ExecStart"], &vars);
    let listen = vars["PATHTRACE_LISTEN"].clone();
    assert_eq!(
        argv[..4],
        [
            "/usr/bin/pathtrace",
            "watch",
            "--prometheus",
            listen.as_str()
        ]
    );
    let port = listen.rsplit(':').next().unwrap().to_string();
    let caps = setpriv_caps(&settings["AmbientCapabilities"]);

    let mut lab = Lab::up(LabOptions::new(fake_guest_bin())).unwrap();
    let binary = root.path(argv[0].trim_start_matches('/'));
    let service = Command::new("nsenter")
        .arg(format!("--net={}", lab.hv_netns_path().display()))
        .args([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ])
        .arg(format!("--inh-caps=-all,{caps}"))
        .arg(format!("--ambient-caps=-all,{caps}"))
        .arg(format!("--bounding-set=-all,{caps}"))
        .arg("--no-new-privs")
        .arg(&binary)
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut service = Service(service);
    let start = Instant::now();
    while !http_get(&lab, &port, "GET").starts_with("HTTP/1.1 200 OK") {
        if let Some(status) = service.0.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            service
                .0
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("the unit's command exited ({status}): {err}");
        }
        assert!(start.elapsed() < Duration::from_secs(15), "no /metrics");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Replies to the guest dropped before MASQUERADE is undone: only conntrack
    // (read by the program under CAP_BPF/CAP_PERFMON) ties them to the VM.
    lab.nft(
        "add table inet pt_pkg\n\
         add chain inet pt_pkg pre { type filter hook prerouting priority -150; policy accept; }\n\
         add rule inet pt_pkg pre iifname \"eth0\" ct original ip saddr 192.0.2.100 drop\n",
    )
    .unwrap();
    let opts = PingOpts {
        count: 3,
        interval_ms: 50,
        timeout_ms: 500,
        ..PingOpts::default()
    };
    let got = lab
        .guest(0)
        .ping(Ipv4Addr::new(203, 0, 113, 8), opts)
        .unwrap()
        .received;
    assert_eq!(got, 0);
    let start = Instant::now();
    let body = loop {
        let text = http_get(&lab, &port, "GET");
        let dropped = text.lines().any(|l| {
            l.starts_with("pathtrace_drops_total{")
                && l.contains("vm_ip=\"192.0.2.100\"")
                && l.contains("direction=\"to_vm\"")
                // A named kernel function: CAP_SYSLOG reads kallsyms.
                && l.contains("location=\"nft_do_chain+")
        });
        if dropped {
            break text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no drop series:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    for series in [
        "pathtrace_build_info{version=",
        "pathtrace_programs_attached 1",
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
    ] {
        assert!(body.contains(series), "{series}:\n{body}");
    }
    let head = http_get(&lab, &port, "HEAD");
    assert!(
        head.starts_with("HTTP/1.1 200 OK") && head.ends_with("\r\n\r\n"),
        "HEAD: {head}"
    );
    // SIGTERM, as systemd stops it: a clean exit (Restart=on-failure stays quiet).
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(service.0.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    let status = loop {
        if let Some(s) = service.0.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
}
