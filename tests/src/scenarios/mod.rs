//! The catalogue of ways a guest's ping or DNS dies on a hypervisor: how the lab
//! breaks, what the guest sends, and what pathtrace must say. Each entry is an
//! end-to-end test (tests/scenarios.rs) and a row of docs/troubleshooting.md, which
//! is generated from here (`cargo xtask docs`) and checked against it, so the two
//! cannot drift.

use crate::lab::{Layout, Uplink, V6Setup};

mod catalogue;

pub use catalogue::CATALOGUE;

/// What the guest does while pathtrace watches.
#[derive(Debug, Clone, Copy)]
pub enum Traffic {
    /// One ping to `dst` with this IP payload size and TTL.
    Ping {
        dst: &'static str,
        size: usize,
        ttl: u8,
    },
    /// One DNS query for `name` to `server`: type A over IPv4, AAAA over IPv6.
    Dns {
        server: &'static str,
        name: &'static str,
    },
    /// A TCP connection to `dst:port` (`--to DST:PORT`); with `data` > 0 the
    /// guest then sends that many bytes in one DF segment, and the scenario's
    /// verdict is that segment's.
    Tcp {
        dst: &'static str,
        port: u16,
        data: usize,
    },
    /// One UDP datagram to `dst:port` (`--proto udp --port PORT`).
    Udp { dst: &'static str, port: u16 },
    /// One DHCP transaction of a guest without an address (DISCOVER, then
    /// REQUEST for the offer), traced with `--iface PORT --proto dhcp`.
    Dhcp,
    /// One ARP who-has for `target` (None: the guest's gateway, 192.0.2.1,
    /// and pathtrace is given no `--to`), traced with `--proto arp`.
    Arp { target: Option<&'static str> },
}

/// The fake guest's gateway: the lab bridge's address.
pub const GATEWAY: &str = "192.0.2.1";

impl Traffic {
    /// Whether the guest talks IPv6 (pathtrace is then given its IPv6 address).
    pub fn is_v6(&self) -> bool {
        self.dst().contains(':')
    }

    pub const fn ping(dst: &'static str) -> Self {
        Traffic::Ping {
            dst,
            size: 56,
            ttl: 64,
        }
    }

    pub fn dst(&self) -> &'static str {
        match self {
            Traffic::Ping { dst, .. } => dst,
            Traffic::Dns { server, .. } => server,
            Traffic::Tcp { dst, .. } | Traffic::Udp { dst, .. } => dst,
            Traffic::Dhcp => "255.255.255.255",
            Traffic::Arp { target } => target.unwrap_or(GATEWAY),
        }
    }

    /// pathtrace's `--to`: the destination, with the port for TCP.
    pub fn to_arg(&self) -> String {
        match self {
            Traffic::Tcp { dst, port, .. } if self.is_v6() => format!("[{dst}]:{port}"),
            Traffic::Tcp { dst, port, .. } => format!("{dst}:{port}"),
            _ => self.dst().to_string(),
        }
    }

    /// pathtrace's options for this traffic beyond `--to`.
    pub fn proto_args(&self) -> Vec<String> {
        match self {
            Traffic::Ping { .. } => vec![],
            Traffic::Dns { .. } => vec!["--proto".into(), "dns".into()],
            // `--to DST:PORT` says TCP (see `to_arg`).
            Traffic::Tcp { .. } => vec![],
            // Built by the scenario test itself (no --to, --iface for DHCP).
            Traffic::Dhcp | Traffic::Arp { .. } => vec![],
            Traffic::Udp { port, .. } => vec![
                "--proto".into(),
                "udp".into(),
                "--port".into(),
                port.to_string(),
            ],
        }
    }

    /// Requests pathtrace follows (a connection and its data segment are two);
    /// the scenario's verdict is the last one's.
    pub fn requests(&self) -> u32 {
        match self {
            Traffic::Tcp { data, .. } if *data > 0 => 2,
            _ => 1,
        }
    }
}

/// The fields of pathtrace's JSON verdict a scenario pins down.
#[derive(Debug, Clone, Copy)]
pub struct Expect {
    pub verdict: &'static str,
    pub direction: Option<&'static str>,
    pub stage: Option<&'static str>,
    pub reason: Option<&'static str>,
    /// Text the `rule` field must contain.
    pub rule: Option<&'static str>,
    /// Text the `hint` must contain.
    pub hint: Option<&'static str>,
    pub dns_rcode: Option<&'static str>,
    /// Doctor checks the verdict's `doctor` must carry, failed or warning, as
    /// they held when the verdict was made.
    pub doctor: &'static [&'static str],
    /// Another verdict that is right too, where which one the kernel leads to
    /// is a race the lab cannot control.
    pub or: Option<&'static Expect>,
}

#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub name: &'static str,
    /// What the operator hears or sees.
    pub symptom: &'static str,
    /// The misconfiguration.
    pub cause: &'static str,
    /// How the lab wires the guest (bridged mode: the LAN's router is the
    /// gateway, beyond the bridge port eno1).
    pub layout: Layout,
    /// Bridged layout with a VLAN-aware vmbr0: the guests and eno1 in this VLAN
    /// (see `LabOptions::vlan`). Skipped, saying so, on kernels without bridge
    /// VLAN filtering.
    pub vlan: Option<u16>,
    /// Bridged layout: vmbr0's port toward the LAN (a bond, a VLAN device).
    /// Skipped, saying so, on kernels without bonding or 802.1Q devices.
    pub uplink: Uplink,
    /// How the guests get IPv6 (see `LabOptions::v6`): the provider routes
    /// their /64, or NAT66, or proxy NDP on the uplink.
    pub v6: V6Setup,
    /// After breaking, the guest forgets its neighbours (its entries went
    /// stale and are probed again, as a Linux guest's do within a minute):
    /// its next packet solicits its next hop anew.
    pub guest_resolves_again: bool,
    /// Shell commands run in the hypervisor namespace to break the path.
    pub break_hv: &'static [&'static str],
    /// Shell commands run in the internet namespace (bridged mode: the LAN and
    /// its router) to break the path there.
    pub break_lan: &'static [&'static str],
    /// Commands run in the hypervisor namespace while the guest's request is in
    /// flight (in the background).
    pub during_hv: &'static str,
    /// A far network behind the internet's router over a link of this MTU, with
    /// the services on `lab::REMOTE_HOST` (see `Lab::add_remote_network`).
    pub remote_mtu: Option<u32>,
    /// A second guest (192.0.2.101 on tap101i0).
    pub second_guest: bool,
    /// A DNS resolver on the host itself (192.0.2.1:53), as dnsmasq on a bridge.
    pub host_resolver: bool,
    /// A DHCP server (dnsmasq) on the VM bridge, as libvirt and Proxmox SDN run
    /// it, with these options (none: its default pool).
    pub dhcp_server: Option<&'static [&'static str]>,
    pub traffic: Traffic,
    /// The VM's port, passed as `--iface`: where the host's tables have forgotten
    /// the VM, pathtrace refuses to guess its port (it says which ports could be it).
    pub iface: Option<&'static str>,
    /// The libvirt layout: this network filter instantiated by libvirt itself
    /// on the guest's port (see `Lab::libvirt_nwfilter`), as its domain's
    /// `<filterref>` describes it.
    pub nwfilter: Option<Nwfilter>,
    pub expect: Expect,
    /// The fix an operator applies (documentation; pathtrace's hint says it too).
    pub fix: &'static str,
}

/// A NIC's `<filterref filter=...><parameter name='IP' value=.../>`, its MAC
/// the guest's own.
#[derive(Debug, Clone, Copy)]
pub struct Nwfilter {
    pub filter: &'static str,
    pub ip: &'static str,
}

pub fn find(name: &str) -> &'static Scenario {
    CATALOGUE
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no scenario {name}"))
}

impl Scenario {
    /// Panics unless `v`, one of pathtrace's JSON verdicts, says what this scenario
    /// expects, or its accepted alternative (shared by the fake-guest and the
    /// real-guest tests).
    pub fn check(&self, v: &serde_json::Value) {
        let name = self.name;
        // Read as the contract's typed verdict: a word outside the contract (a
        // stage, verdict or direction it does not define) fails here.
        let typed: pathtrace_json::Verdict =
            serde_json::from_value(v.clone()).unwrap_or_else(|err| {
                panic!("{name}: not a verdict line of the contract ({err}): {v}")
            });
        let wrong = mismatches(&self.expect, &typed);
        if wrong.is_empty() {
            return;
        }
        if let Some(alt) = self.expect.or {
            if mismatches(alt, &typed).is_empty() {
                eprintln!("{name}: the verdict is the accepted alternative: {v}");
                return;
            }
        }
        panic!("{name}: {}\nverdict: {v}", wrong.join("; "));
    }
}

/// How the verdict `v` differs from `e` (empty: it says what `e` expects).
fn mismatches(e: &Expect, v: &pathtrace_json::Verdict) -> Vec<String> {
    let mut wrong = Vec::new();
    let mut same = |what: &str, got: Option<&str>, want: Option<&str>| {
        if got != want {
            wrong.push(format!("{what} {got:?}, expected {want:?}"));
        }
    };
    same("verdict", Some(v.verdict.as_str()), Some(e.verdict));
    same("direction", v.direction.map(|d| d.as_str()), e.direction);
    if e.stage.is_some() {
        same("stage", v.stage.map(|s| s.as_str()), e.stage);
    }
    if e.reason.is_some() {
        same("reason", v.reason.as_deref(), e.reason);
    }
    if let Some(rcode) = e.dns_rcode {
        same("rcode", v.dns_rcode.as_deref(), Some(rcode));
    }
    for (k, got, want) in [("rule", &v.rule, e.rule), ("hint", &v.hint, e.hint)] {
        if let Some(want) = want {
            let got = got.clone().unwrap_or_default();
            if !got.to_lowercase().contains(&want.to_lowercase()) {
                wrong.push(format!("{k} {got:?} should contain {want:?}"));
            }
        }
    }
    wrong.extend(doctor_mismatches(e, v));
    wrong
}

/// Checks about IPv6 only (docs/json.md), and about IPv4 only: a verdict
/// carries those of its own family (the port and bridge ones bear on both).
pub const IPV6_CHECKS: &[&str] = &[
    "mtu6",
    "ip6_forward",
    "accept_ra",
    "route6",
    "gateway6",
    "proxy_ndp",
    "firewall6",
    "ra_service",
];
const IPV4_CHECKS: &[&str] = &[
    "ip_forward",
    "rp_filter",
    "route",
    "gateway",
    "nat",
    "firewall",
    "dns",
    "duplicate_ip",
    "spoof_filter",
    "firewall_bridge_arp",
    "br_netfilter",
];

/// Unless the verdict's `doctor` carries the expected checks, and none of the
/// other family's: how it differs.
fn doctor_mismatches(e: &Expect, v: &pathtrace_json::Verdict) -> Vec<String> {
    let got: Vec<&str> = v.doctor.iter().map(|c| c.check.as_str()).collect();
    let mut wrong: Vec<String> = e
        .doctor
        .iter()
        .filter(|want| !got.contains(want))
        .map(|want| format!("doctor {got:?} should have {want}"))
        .collect();
    let v6 = v.vm_ip.parse::<std::net::Ipv6Addr>().is_ok();
    let foreign = match v6 {
        true => IPV4_CHECKS,
        false => IPV6_CHECKS,
    };
    let other: Vec<&&str> = got.iter().filter(|c| foreign.contains(c)).collect();
    if !other.is_empty() {
        wrong.push(format!("doctor {got:?}: {other:?} are the other family's"));
    }
    wrong
}

/// What pathtrace shows for a scenario, as a table cell.
fn shows(e: &Expect) -> String {
    let mut parts = vec![format!("`{}`", e.verdict)];
    parts.extend(e.direction.map(|d| format!("`{d}`")));
    parts.extend(e.stage.map(|s| format!("at `{s}`")));
    parts.extend(e.reason.map(|r| format!("`{r}`")));
    parts.extend(e.dns_rcode.map(|r| format!("rcode `{r}`")));
    parts.extend(e.rule.map(|r| format!("rule “{r}…”")));
    if !e.doctor.is_empty() {
        let names: Vec<String> = e.doctor.iter().map(|c| format!("`{c}`")).collect();
        parts.push(format!("with check {}", names.join(", ")));
    }
    let shown = parts.join(" ");
    match e.or {
        Some(alt) => format!("{shown}, or {}", shows(alt)),
        None => shown,
    }
}

/// What pathtrace shows, and the `--iface` the scenario needs.
fn shows_for(sc: &Scenario) -> String {
    let shown = match sc.iface {
        Some(port) => format!(
            "{} (with `--iface {port}`: the host's tables forgot the VM)",
            shows(&sc.expect)
        ),
        None => shows(&sc.expect),
    };
    match (sc.vlan, sc.uplink) {
        (Some(_), _) => format!("{shown} (kernels with bridge VLAN filtering)"),
        (_, Uplink::Bond(_)) => format!("{shown} (kernels with bonding)"),
        (_, Uplink::Vlan(_)) => format!("{shown} (kernels with 802.1Q VLAN devices)"),
        (None, Uplink::Nic) => shown,
    }
}

/// docs/troubleshooting.md, generated from the catalogue.
pub fn render_doc() -> String {
    let mut s = String::from(
        "# Troubleshooting with pathtrace\n\n\
         Generated from `tests/src/scenarios.rs` by `cargo xtask docs`; every row is an \
         end-to-end test (`tests/tests/scenarios.rs`) on a real kernel, so this table \
         cannot drift from what pathtrace says.\n\n\
         | symptom | what pathtrace shows | cause | fix |\n|---|---|---|---|\n",
    );
    for sc in CATALOGUE {
        s.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            sc.symptom,
            shows_for(sc).replace('|', "\\|"),
            sc.cause,
            sc.fix.replace('|', "\\|")
        ));
    }
    s.push_str(
        "\nThe rows for VLAN-aware bridges run where the kernel has bridge VLAN filtering \
         (Debian's 6.1 and 6.12: `cargo xtask vm-test --kernel 6.12 -- vlan_`); the 6.18 CI \
         kernel is built without CONFIG_BRIDGE_VLAN_FILTERING, and their tests skip there, \
         saying so. The same holds for the rows about bonds (CONFIG_BONDING) and VLAN \
         devices (CONFIG_VLAN_8021Q): `cargo xtask vm-test --kernel 6.12 -- bond_ vlan_device vlan_uplink`.\n",
    );
    s.push_str(PROXMOX_FIREWALL_ROWS);
    s
}

/// Proxmox VE's firewall as its generator (proxmox-firewall) writes it, loaded
/// unchanged: the end-to-end tests of `tests/tests/real_rulesets.rs`, which
/// need the generated rule sets beside the checkout and a kernel with bridge
/// conntrack (Debian's 6.12 in the VM runner).
const PROXMOX_FIREWALL_ROWS: &str = "
## Proxmox VE's firewall (its generated rule sets)

Each row is an end-to-end test in `tests/tests/real_rulesets.rs` against the rule set \
proxmox-firewall generates for its own test configuration, loaded unchanged (guest 100, \
container NIC net3 = veth100i3, hwaddr BC:24:11:4D:B0:FE, 192.0.2.10). They need bridge \
conntrack, which the 6.18 CI kernel lacks: `cargo xtask vm-test --kernel 6.12 --test real_rulesets`.

| symptom | what pathtrace shows | cause | fix |
|---|---|---|---|
| one guest with the firewall on reaches nothing | `dropped` `request` at `bridge` `NETFILTER_DROP` rule “bridge proxmox-firewall-guests do-reject… (via vm-out → vm-map-out[veth100i3] → guest-100-out → do-reject)” | `policy_out: REJECT` in 100.fw and no OUT rule accepts the traffic | add an OUT rule to [RULES] of /etc/pve/firewall/100.fw, or `policy_out: ACCEPT` |
| a guest whose address was changed inside it reaches nothing | `dropped` `request` at `bridge` rule “… ip saddr != @v4-guest-100/ipfilter-net3 drop…”; when its ARP is dropped too it sends nothing: the trace sees no request and its checks include `spoof_filter` (“arp saddr ip != @v4-guest-100/ipfilter-net3 drop”) | the IP filter (`ipfilter: 1`): the address is not in ipfilter-net3 | add it to [IPSET ipfilter-net3] in 100.fw (or set the NIC's ip=), or give the guest its configured address |
| a guest whose MAC was changed inside it (or a clone) reaches nothing | `dropped` `request` at `bridge` rule “… iifname . ether saddr != { \"veth100i3\" . bc:24:11:4d:b0:fe, … } drop…” with check `spoof_filter`; the hint names the MAC sent and the one allowed | the MAC filter (`macfilter: 1`, the default) allows only the NIC's configured MAC | give the guest back its MAC, or set the NIC's MAC (hwaddr=/virtio=) to the one it uses, or `macfilter: 0` in 100.fw |
";

pub const DOC_PATH: &str = "docs/troubleshooting.md";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = CATALOGUE.iter().map(|s| s.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), CATALOGUE.len());
    }

    #[test]
    fn troubleshooting_doc_matches_the_catalogue() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(DOC_PATH);
        let doc = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            doc == render_doc(),
            "{DOC_PATH} is stale: run `cargo xtask docs`"
        );
    }
}
