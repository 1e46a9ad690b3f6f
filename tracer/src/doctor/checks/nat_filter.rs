//! NAT and filtering checks: source NAT for private guests, the firewall's
//! verdict on the guest's ping (replayed against the rule sets), br_netfilter.

use std::net::Ipv4Addr;

use super::*;

/// Addresses that the internet does not route back: they need source NAT on
/// the way out (RFC 1918, shared CGN space, link-local, documentation and
/// benchmarking ranges).
pub fn needs_nat(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_private()
        || ip.is_link_local()
        || ip.is_documentation()
        || (o[0] == 100 && (64..128).contains(&o[1]))
        || (o[0] == 198 && (o[1] == 18 || o[1] == 19))
}

pub(super) fn view(t: &Topology, reply: bool, proto: u8, dport: Option<u16>) -> nft::PacketView {
    let inbound = t.inbound().name.clone();
    let uplink = t.uplink.as_ref().map(|u| u.name.clone());
    let (saddr, daddr, iif, oif) = if reply {
        (t.dst, t.vm_ip, uplink.clone(), Some(inbound))
    } else {
        let oif = if t.bridged {
            Some(inbound.clone())
        } else {
            uplink
        };
        (t.vm_ip, t.dst, Some(inbound), oif)
    };
    let icmp_type = (proto == 1).then_some(if reply { 0 } else { 8 });
    nft::PacketView {
        saddr: Some(saddr),
        daddr: Some(daddr),
        proto,
        icmp_type,
        sport: dport.map(|p| if reply { p } else { 40000 }),
        dport: dport.map(|p| if reply { 40000 } else { p }),
        iifname: iif,
        oifname: if t.dst_local { None } else { oif },
        ct_state: Some(if reply { "established" } else { "new" }),
        ..Default::default()
    }
}

pub(super) fn nat(t: &Topology, host: &Host) -> Check {
    let up = t
        .uplink
        .as_ref()
        .map(|u| u.name.clone())
        .unwrap_or_default();
    let pkt = view(t, false, 1, None);
    let subject = format!("{} → {} out of {up}", t.vm_ip, t.dst);
    let found = nft::find_snat(&pkt)
        .map(|c| (c.describe(), c.certain))
        .or_else(|| iptables::find_snat(&pkt).map(|c| (c.describe("iptables-legacy"), c.certain)));
    let lan = t
        .vm_subnet
        .map(|(n, l)| format!("{n}/{l}"))
        .unwrap_or_else(|| t.vm_ip.to_string());
    let on_uplink_lan = t.uplink_addrs.iter().any(|a| {
        t.vm_subnet
            .is_some_and(|(_, l)| topology::net_of(*a, l) == topology::net_of(t.vm_ip, l))
    });
    let behind_fwbr = t.chain.iter().any(|h| h.is_bridge);
    let br_nf = host.sysctl("net/bridge/bridge-nf-call-iptables").as_deref() == Some("1");
    match found {
        Some((rule, _)) if behind_fwbr && br_nf && !conntrack_zones_split() => {
            Check::new("nat", Status::Fail, subject)
                .evidence(format!(
                    "{rule} exists, but the VM sits behind a firewall bridge with br_netfilter on: conntrack confirms the bridged pass through it without NAT, so the routed pass reuses that entry and the packet leaves untranslated (the Proxmox firewall + masquerading pitfall)"
                ))
                .fix("give the firewall bridges their own conntrack zone: iptables -t raw -I PREROUTING -i fwbr+ -j CT --zone 1   (nft: table ip raw, chain prerouting at priority raw: iifname \"fwbr*\" ct zone set 1)")
        }
        Some((rule, true)) => Check::new("nat", Status::Pass, subject)
            .evidence(format!("source NAT by {rule}")),
        Some((rule, false)) => Check::new("nat", Status::Warn, subject).evidence(format!(
            "{rule} may translate it (it has matches pathtrace cannot evaluate)"
        )),
        None if needs_nat(t.vm_ip4()) && !on_uplink_lan => Check::new("nat", Status::Fail, subject)
            .evidence(format!(
                "no MASQUERADE/SNAT rule (nftables or iptables-legacy) applies, and {} is not routable on the internet: replies can never come back",
                t.vm_ip
            ))
            .fix(fix::add_masquerade(&lan, &up)),
        None => Check::new("nat", Status::Pass, subject).evidence(format!(
            "no source NAT; {} is a routable address, so the upstream must route it back to this host",
            t.vm_ip
        )),
    }
}

/// A rule puts (firewall-)bridged traffic into its own conntrack zone, in
/// nftables (`ct zone set`) or iptables-legacy's raw table (`-j CT --zone`).
pub(super) fn conntrack_zones_split() -> bool {
    let rules = firewall::rules();
    rules
        .nft_text
        .as_deref()
        .is_some_and(|t| t.contains("ct zone set"))
        || rules
            .legacy_table("raw")
            .is_some_and(|t| t.contains("--zone"))
}

/// The firewall's verdict on the guest's ping and its reply (FORWARD, or INPUT
/// for the host itself), by replaying them against nftables and iptables-legacy.
pub(super) fn firewall(t: &Topology, host: &Host) -> Vec<Check> {
    if t.bridged && host.sysctl("net/bridge/bridge-nf-call-iptables").as_deref() != Some("1") {
        return Vec::new(); // bridged frames never meet the IP firewall
    }
    let hook = if t.dst_local { "input" } else { "forward" };
    let dirs: &[bool] = if t.dst_local {
        &[false]
    } else {
        &[false, true]
    };
    let mut out = Vec::new();
    for &reply in dirs {
        let pkt = view(t, reply, 1, None);
        let what = match reply {
            false => format!("ICMP {} → {}", t.vm_ip, t.dst),
            true => format!("the reply {} → {}", t.dst, t.vm_ip),
        };
        if let Some(c) = filter_verdict(t, hook, &pkt, reply, &what) {
            out.push(c);
        }
    }
    if out.is_empty() {
        out.push(
            Check::new("firewall", Status::Pass, format!("{hook} hook"))
                .evidence(format!(
                    "no nftables or iptables-legacy rule in {hook} drops the guest's ping to {} or its reply",
                    t.dst
                )),
        );
    }
    out
}

/// A failing (or, when unsure, warning) check if a rule or policy at `hook`
/// drops `pkt`.
pub(super) fn filter_verdict(
    t: &Topology,
    hook: &str,
    pkt: &nft::PacketView,
    reply: bool,
    what: &str,
) -> Option<Check> {
    let found = filter_culprit(hook, pkt, reply, &t.vm_ip.to_string())?;
    let (status, verb) = match found.certain {
        true => (Status::Fail, "drops"),
        false => (
            Status::Warn,
            "may drop (it has matches pathtrace cannot evaluate)",
        ),
    };
    Some(
        Check::new("firewall", status, format!("{hook} hook"))
            .evidence(format!("{} {verb} {what}", found.desc))
            .fix(found.fix),
    )
}

/// The rule or policy that drops a replayed packet.
pub struct Found {
    /// The rule (or chain policy), as people read it.
    pub desc: String,
    /// Every match before it could be evaluated.
    pub certain: bool,
    /// Delete the rule, or (for a policy) let the guest's packets through.
    pub fix: String,
    /// A chain's policy, not a rule.
    pub policy: bool,
}

/// Which nftables or legacy iptables rule (of the packet's family) drops `pkt`
/// at `hook`; `guest` (its address) names what a policy fix lets through.
pub fn filter_culprit(
    hook: &str,
    pkt: &nft::PacketView,
    reply: bool,
    guest: &str,
) -> Option<Found> {
    if let Some(c) = nft::find_culprit(hook, false, pkt) {
        let fix = fix::delete(&c).unwrap_or_else(|| fix::allow(&c, reply, guest));
        return Some(Found {
            desc: c.describe(),
            certain: c.certain,
            fix,
            policy: c.handle.is_none(),
        });
    }
    let c = iptables::find_culprit(hook, pkt)?;
    Some(Found {
        desc: c.describe(iptables::legacy_tool(pkt)),
        certain: c.certain,
        fix: fix::legacy(&c, reply, guest),
        policy: c.number.is_none(),
    })
}

pub(super) fn br_netfilter(s: &Subject, t: &Topology) -> Check {
    let value = s.host.sysctl("net/bridge/bridge-nf-call-iptables");
    let subject = "net.bridge.bridge-nf-call-iptables";
    let firewalled = s.nics.iter().any(|n| n.firewall);
    match value.as_deref() {
        None if firewalled => Check::new("br_netfilter", Status::Warn, subject)
            .evidence("br_netfilter is not loaded, so the VM's firewall bridge filters nothing (the Proxmox firewall is on for this VM)")
            .fix("modprobe br_netfilter && sysctl -w net.bridge.bridge-nf-call-iptables=1"),
        Some("0") if firewalled => Check::new("br_netfilter", Status::Warn, subject)
            .evidence("=0, so the VM's firewall bridge filters nothing (the Proxmox firewall is on for this VM)")
            .fix("sysctl -w net.bridge.bridge-nf-call-iptables=1"),
        None => Check::new("br_netfilter", Status::Pass, subject)
            .evidence("br_netfilter not loaded: bridged frames skip the IP firewall"),
        Some(v) => Check::new("br_netfilter", Status::Pass, subject).evidence(format!(
            "={v}: frames bridged on {} {} the IP firewall (FORWARD)",
            t.inbound().name,
            if v == "1" { "also traverse" } else { "skip" }
        )),
    }
}
