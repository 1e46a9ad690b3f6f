//! Proxmox VE's nftables firewall (proxmox-firewall) in its own terms.
//!
//! Its rules are generated from /etc/pve/firewall/<vmid>.fw (and cluster.fw,
//! host.fw): deleting a generated nft rule lasts until the next regeneration,
//! so the fix belongs in that file. The generated structure we recognise, from
//! its rule set (`bridge proxmox-firewall-guests`):
//! - per guest the chains `guest-<vmid>-out` (from the guest) and
//!   `guest-<vmid>-in` (to it), entered through `iifname vmap @vm-map-out` /
//!   `oifname vmap @vm-map-in` by the guest's port `tap<vmid>i<N>` (VM) or
//!   `veth<vmid>i<N>` (container), N the guest's `net<N>`;
//! - the IP filter (`ipfilter: 1`): `iifname PORT ip saddr !=
//!   @v4-guest-<vmid>/ipfilter-net<N> drop` (and `arp saddr ip`, and the
//!   `-nomatch` set for excluded addresses);
//! - the MAC filter (`macfilter: 1`, the default): one rule per guest,
//!   `iifname . ether saddr != { "veth100i3" . bc:24:11:4d:b0:fe, … } drop`,
//!   and its twin on `arp saddr ether`, pairing each firewalled port with its
//!   NIC's configured MAC;
//! - the guest's policy as its chain's last, unconditional rule: `jump
//!   do-reject` for REJECT, `drop` for DROP;
//! - security groups as `group-<name>-out`/`-in` chains.

use std::path::Path;

use super::nft::{Culprit, PacketView};
use crate::doctor::arp::{format_mac, parse_mac};

const TABLE: &str = "proxmox-firewall-guests";

/// Guest `vmid`'s chain in the walk, and whether it is its `out` chain.
struct GuestChain {
    vmid: u32,
    out: bool,
}

/// The hint for a culprit in Proxmox's guest firewall, or None when the rule
/// set is not Proxmox's.
pub fn hint(c: &Culprit, pkt: &PacketView, what: &str, config_root: &Path) -> Option<String> {
    if c.family != "bridge" || c.table != TABLE {
        return None;
    }
    let guest = c.path.iter().rev().find_map(|ch| guest_chain(ch))?;
    let port = port_of(c, pkt, guest.out);
    let net = port.as_deref().and_then(net_of);
    let fw_file = format!("/etc/pve/firewall/{}.fw", guest.vmid);
    let nic = match (net, &port) {
        (Some(n), Some(p)) => format!("net{n} ({p})"),
        (None, Some(p)) => p.clone(),
        _ => "its NIC".into(),
    };
    let config = std::fs::read_to_string(config_root.join(fw_file.trim_start_matches('/'))).ok();
    let reply = c
        .reply
        .as_ref()
        .map(|r| format!("; the guest is sent {r}"))
        .unwrap_or_default();
    let via = format!(" (reached by {})", c.path_text());
    let text = if let Some(allowed) = mac_filter(c, port.as_deref()) {
        mac_filter_hint(&guest, &nic, port.as_deref(), &allowed, pkt, what, c)
    } else if let Some(filter) = ip_filter(c, guest.vmid) {
        let addr = pkt
            .saddr
            .map(|a| a.to_string())
            .unwrap_or_else(|| "?".into());
        let arp = if c.text.as_deref().is_some_and(|t| t.contains("arp ")) {
            "ARP from "
        } else {
            ""
        };
        let (set, elems) = filter;
        let listed = if elems.is_empty() {
            "empty".to_string()
        } else {
            elems.join(", ")
        };
        match set.strip_suffix("-nomatch") {
            Some(base) => format!(
                "guest {vmid}'s firewall, IP filter of {nic}: {arp}{addr} is excluded from {base} \
                 ({listed}), so the bridge drops {what}; remove the exclusion (!{addr}) from \
                 [IPSET {base}] in {fw_file}, or fix the guest's address",
                vmid = guest.vmid,
                base = short(base),
            ),
            None => format!(
                "guest {vmid}'s firewall, IP filter of {nic}: {arp}{addr} is not in {set} \
                 ({listed}), so the bridge drops {what}; add it to [IPSET {set}] in {fw_file} \
                 (or set the NIC's ip= in the guest's config), or fix the guest's address",
                vmid = guest.vmid,
                set = short(set),
            ),
        }
    } else if let Some(policy) = policy(c, &guest) {
        let option = if guest.out { "policy_out" } else { "policy_in" };
        let dir = if guest.out { "OUT" } else { "IN" };
        let quoted = config
            .as_deref()
            .and_then(|t| option_line(t, option))
            .map(|l| format!(" ({fw_file} says `{l}`)"))
            .unwrap_or_default();
        format!(
            "guest {vmid}'s firewall: {option} {policy}{quoted} and no {dir} rule accepts {what} \
             on {nic}{reply}; add an {dir} rule that accepts it to [RULES] in {fw_file} \
             (e.g. `{dir} ACCEPT -p icmp`), or set {option}: ACCEPT there",
            vmid = guest.vmid,
        )
    } else if let Some(group) = c.path.iter().rev().find_map(|ch| group_of(ch)) {
        format!(
            "security group {group} of guest {vmid}'s firewall {verdict}s {what} on {nic}{reply}; \
             change the group's rules ([group {group}] in /etc/pve/firewall/cluster.fw) or \
             its GROUP line in {fw_file}",
            vmid = guest.vmid,
            verdict = c.verdict,
        )
    } else {
        let dir = if guest.out { "OUT" } else { "IN" };
        format!(
            "an {dir} rule of guest {vmid}'s firewall {verdict}s {what} on {nic}{reply}; change \
             or remove it in [RULES] of {fw_file}",
            vmid = guest.vmid,
            verdict = c.verdict,
        )
    };
    Some(format!(
        "{text}{via}. The rules are generated by proxmox-firewall: an nft edit is undone at \
         its next update"
    ))
}

/// `guest-100-out` → guest 100, out.
fn guest_chain(chain: &str) -> Option<GuestChain> {
    let rest = chain.strip_prefix("guest-")?;
    let (vmid, dir) = rest.split_once('-')?;
    Some(GuestChain {
        vmid: vmid.parse().ok()?,
        out: match dir {
            "out" => true,
            "in" => false,
            _ => return None,
        },
    })
}

/// `group-web-out` → `web`.
fn group_of(chain: &str) -> Option<&str> {
    let rest = chain.strip_prefix("group-")?;
    rest.strip_suffix("-out")
        .or_else(|| rest.strip_suffix("-in"))
        .or_else(|| rest.strip_suffix("-forward"))
}

/// The guest's port: the verdict map key that led to its chain, else the
/// device the packet came from (out) or goes to (in).
fn port_of(c: &Culprit, pkt: &PacketView, out: bool) -> Option<String> {
    let from_map = c.path.iter().find_map(|p| {
        let key = p
            .strip_prefix("vm-map-out[")
            .or_else(|| p.strip_prefix("vm-map-in["))?;
        key.strip_suffix(']').map(str::to_string)
    });
    from_map.or_else(|| {
        if out {
            pkt.iifname.clone()
        } else {
            pkt.oifname.clone()
        }
    })
}

/// `tap100i3` / `veth100i3` → 3.
fn net_of(port: &str) -> Option<u32> {
    let rest = port
        .strip_prefix("tap")
        .or_else(|| port.strip_prefix("veth"))?;
    rest.split_once('i')?.1.parse().ok()
}

/// The IP filter set the culprit looks in: (`v4-guest-100/ipfilter-net3`, elements).
fn ip_filter(c: &Culprit, vmid: u32) -> Option<(&str, &[String])> {
    let prefix = format!("v4-guest-{vmid}/ipfilter-net");
    c.sets
        .iter()
        .find(|(name, _)| name.starts_with(&prefix))
        .map(|(name, elems)| (name.as_str(), elems.as_slice()))
}

/// The MAC filter's rule: the MAC it allows on `port` (as nft lists the rule:
/// `iifname . ether saddr != { "veth100i3" . bc:24:11:4d:b0:fe, … } drop`),
/// or "" when the rule does not list the port. None for any other rule.
fn mac_filter(c: &Culprit, port: Option<&str>) -> Option<String> {
    let text = c.text.as_deref()?;
    let on_mac = ["iifname . ether saddr != ", "iifname . arp saddr ether != "];
    if !on_mac.iter().any(|m| text.starts_with(m)) {
        return None;
    }
    let allowed = port.and_then(|p| {
        let rest = &text[text.find(&format!("\"{p}\" . "))? + p.len() + 5..];
        let mac = rest.get(..17)?.to_lowercase();
        parse_mac(&mac).map(|_| mac)
    });
    Some(allowed.unwrap_or_default())
}

/// The MAC filter dropped a frame from a MAC other than the NIC's configured
/// one: the two MACs, and the three ways out (the guest's own MAC back, the
/// NIC's MAC changed in the guest's configuration, the filter off).
fn mac_filter_hint(
    guest: &GuestChain,
    nic: &str,
    port: Option<&str>,
    allowed: &str,
    pkt: &PacketView,
    what: &str,
    c: &Culprit,
) -> String {
    let vmid = guest.vmid;
    let arp = match c
        .text
        .as_deref()
        .is_some_and(|t| t.contains("arp saddr ether"))
    {
        true => "ARP ",
        false => "",
    };
    let sent = pkt
        .ether_saddr
        .map(|m| format_mac(&m))
        .filter(|m| m != allowed);
    let from = match &sent {
        Some(m) => format!("the guest sends {arp}from {m}"),
        None => format!("the guest sends {arp}from another MAC"),
    };
    let only = match allowed {
        "" => "the NIC's configured MAC".to_string(),
        m => m.to_string(),
    };
    // A container's NIC says `hwaddr=`, a VM's `<model>=MAC`.
    let conf = match port.is_some_and(|p| p.starts_with("veth")) {
        true => format!("/etc/pve/lxc/{vmid}.conf (hwaddr=)"),
        false => format!("/etc/pve/qemu-server/{vmid}.conf (virtio=)"),
    };
    let new_mac = sent.as_deref().unwrap_or("the MAC it uses");
    format!(
        "guest {vmid}'s firewall, MAC filter of {nic}: {from}, but only {only} may send \
         there, so the bridge drops {what}; give the guest back its configured MAC (a \
         cloned guest, or an OS that sets its own), or set the NIC's MAC to {new_mac} in \
         {conf}, or turn the filter off: macfilter: 0 in /etc/pve/firewall/{vmid}.fw"
    )
}

/// `v4-guest-100/ipfilter-net3` → `ipfilter-net3`, the ipset's name in the .fw file.
fn short(set: &str) -> &str {
    set.rsplit_once('/').map_or(set, |(_, s)| s)
}

/// The guest's policy when it decided: its chain's closing unconditional
/// `jump do-reject` (REJECT) or `drop` (DROP).
fn policy(c: &Culprit, guest: &GuestChain) -> Option<&'static str> {
    let chain = format!(
        "guest-{}-{}",
        guest.vmid,
        if guest.out { "out" } else { "in" }
    );
    if c.chain == chain {
        return (c.unconditional && c.verdict == "drop").then_some("DROP");
    }
    let last = c.via.iter().rfind(|v| v.chain == chain)?;
    (last.unconditional && c.chain == "do-reject").then_some("REJECT")
}

/// `policy_out: REJECT` as written in the guest's .fw file.
fn option_line<'a>(fw: &'a str, option: &str) -> Option<&'a str> {
    fw.lines()
        .map(str::trim)
        .find(|l| l.split(':').next().map(str::trim) == Some(option))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explain::nft::{Ruleset, Via};

    fn pve_json() -> &'static str {
        crate::testdata::generated("proxmox-firewall/ruleset-6.12.json")
    }

    fn guest(saddr: &str) -> PacketView {
        PacketView {
            saddr: Some(saddr.parse().unwrap()),
            daddr: Some("203.0.113.8".parse().unwrap()),
            proto: 1,
            icmp_type: Some(8),
            iifname: Some("veth100i3".into()),
            ..Default::default()
        }
    }

    fn culprit(pkt: &PacketView) -> Culprit {
        let rs = Ruleset::parse(&serde_json::from_str(pve_json()).unwrap());
        rs.culprit("prerouting", &["bridge"], pkt).unwrap()
    }

    fn root() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("pve-fw-hint-{}", std::process::id()));
        let fw = dir.join("etc/pve/firewall");
        std::fs::create_dir_all(&fw).unwrap();
        std::fs::write(
            fw.join("100.fw"),
            crate::testdata::generated("proxmox-firewall/100.fw"),
        )
        .unwrap();
        dir
    }

    #[test]
    fn policy_out_reject_in_proxmox_terms() {
        if crate::testdata::missing("proxmox-firewall/ruleset-6.12.json") {
            return;
        }
        let pkt = guest("192.0.2.10");
        let h = hint(&culprit(&pkt), &pkt, "the guest's request", &root()).unwrap();
        assert!(
            h.starts_with(
                "guest 100's firewall: policy_out REJECT (/etc/pve/firewall/100.fw says \
                 `policy_out: REJECT`) and no OUT rule accepts the guest's request on net3 \
                 (veth100i3); the guest is sent ICMP port-unreachable; add an OUT rule"
            ),
            "{h}"
        );
        assert!(h.contains("or set policy_out: ACCEPT there"), "{h}");
        assert!(h.contains("vm-out → vm-map-out[veth100i3] → guest-100-out → do-reject"));
    }

    #[test]
    fn ip_filter_in_proxmox_terms() {
        if crate::testdata::missing("proxmox-firewall/ruleset-6.12.json") {
            return;
        }
        let pkt = guest("192.0.2.11");
        let h = hint(
            &culprit(&pkt),
            &pkt,
            "the guest's request",
            Path::new("/nonexistent"),
        )
        .unwrap();
        assert!(
            h.starts_with(
                "guest 100's firewall, IP filter of net3 (veth100i3): 192.0.2.11 is not in \
                 ipfilter-net3 (192.0.2.10), so the bridge drops the guest's request; add it to \
                 [IPSET ipfilter-net3] in /etc/pve/firewall/100.fw"
            ),
            "{h}"
        );
    }

    /// The MAC filter's rules as proxmox-firewall generates them with
    /// `macfilter: 1` and the kernel lists them (generated-rulesets/
    /// proxmox-firewall/macfilter; the e2e test loads them unchanged).
    fn mac_culprit(rule: &str) -> Culprit {
        Culprit {
            family: "bridge".into(),
            table: TABLE.into(),
            chain: "guest-100-out".into(),
            handle: Some(44),
            text: Some(format!(
                "iifname . {rule} != {{ \"veth100i3\" . bc:24:11:4d:b0:fe, \"veth100i1\" . \
                 bc:24:11:4d:b0:ff }} drop"
            )),
            verdict: "drop".into(),
            certain: true,
            path: ["vm-out", "vm-map-out[veth100i3]", "guest-100-out"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn mac_filter_in_proxmox_terms() {
        let mut pkt = guest("192.0.2.10");
        pkt.ether_saddr = parse_mac("bc:24:11:4d:b0:aa");
        let c = mac_culprit("ether saddr");
        let h = hint(&c, &pkt, "the guest's request", Path::new("/")).unwrap();
        assert!(
            h.starts_with(
                "guest 100's firewall, MAC filter of net3 (veth100i3): the guest sends from \
                 bc:24:11:4d:b0:aa, but only bc:24:11:4d:b0:fe may send there, so the bridge \
                 drops the guest's request; give the guest back its configured MAC"
            ),
            "{h}"
        );
        assert!(h.contains("set the NIC's MAC to bc:24:11:4d:b0:aa in /etc/pve/lxc/100.conf"));
        assert!(
            h.contains("macfilter: 0 in /etc/pve/firewall/100.fw"),
            "{h}"
        );
        // Its ARP, by the rule's twin; a MAC the host does not know.
        pkt.ether_saddr = None;
        let h = hint(&mac_culprit("arp saddr ether"), &pkt, "x", Path::new("/")).unwrap();
        assert!(
            h.contains("the guest sends ARP from another MAC, but only bc:24:11:4d:b0:fe"),
            "{h}"
        );
    }

    #[test]
    fn other_rule_sets_are_not_proxmox() {
        if crate::testdata::missing("proxmox-firewall/ruleset-6.12.json") {
            return;
        }
        let pkt = guest("192.0.2.10");
        let mut c = culprit(&pkt);
        c.table = "filter".into();
        assert_eq!(hint(&c, &pkt, "x", Path::new("/")), None);
        // A user REJECT rule (conditional jump to do-reject) is no policy.
        let mut c = culprit(&pkt);
        c.via = vec![Via {
            chain: "guest-100-out".into(),
            handle: 253,
            unconditional: false,
        }];
        let h = hint(&c, &pkt, "the guest's request", Path::new("/")).unwrap();
        assert!(
            h.starts_with("an OUT rule of guest 100's firewall rejects"),
            "{h}"
        );
    }

    /// Traffic to guest 100's net1 (veth100i1), which has `GROUP network1 -i
    /// net1` in 100.fw: the generated group chain is walked (reached by
    /// `oifname "veth100i1" jump group-network1-in`) and its accept ends the
    /// walk; what it does not accept meets the guest's IN rules and policy_in.
    /// The published snapshot's group only accepts: a group rule that drops is
    /// not in Proxmox's test output (see generated-rulesets/proxmox-firewall/README.md).
    #[test]
    fn security_group_rules_are_followed() {
        if crate::testdata::missing("proxmox-firewall/ruleset-6.12.json") {
            return;
        }
        let rs = Ruleset::parse(&serde_json::from_str(pve_json()).unwrap());
        let to_net1 = |saddr: &str, icmp_type: u8| PacketView {
            saddr: Some(saddr.parse().unwrap()),
            daddr: Some("172.16.100.7".parse().unwrap()),
            proto: 1,
            icmp_type: Some(icmp_type),
            oifname: Some("veth100i1".into()),
            ct_state: Some("new"),
            ..Default::default()
        };
        // [group network1] `IN ACCEPT -source network1 -dest network1`.
        assert_eq!(
            rs.culprit("postrouting", &["bridge"], &to_net1("172.16.100.5", 8)),
            None
        );
        // From elsewhere: `IN DROP --icmp-type echo-request` (handle 247).
        let pkt = to_net1("198.51.100.7", 8);
        let c = rs.culprit("postrouting", &["bridge"], &pkt).unwrap();
        assert_eq!((c.chain.as_str(), c.handle), ("guest-100-in", Some(247)));
        assert_eq!(c.path, ["vm-in", "vm-map-in[veth100i1]", "guest-100-in"]);
        let h = hint(&c, &pkt, "the reply to the guest", &root()).unwrap();
        assert!(
            h.starts_with(
                "an IN rule of guest 100's firewall drops the reply to the guest on net1 (veth100i1)"
            ),
            "{h}"
        );
        // Anything else it did not accept: policy_in DROP (the chain's last rule).
        let c = rs
            .culprit("postrouting", &["bridge"], &to_net1("198.51.100.7", 13))
            .unwrap();
        assert_eq!(c.handle, Some(250));
        let h = hint(&c, &pkt, "the reply to the guest", &root()).unwrap();
        assert!(h.contains("policy_in DROP"), "{h}");
    }
}
