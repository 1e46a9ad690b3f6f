//! Which stage of the path a drop happened in, from what the kernel told us: the
//! drop reason, the function that freed the packet, whether it had a route yet and
//! which device it was on.

use crate::{
    correlate::{Direction, Stage},
    topology::Role,
};

#[derive(Debug, Clone, Default)]
pub struct DropFacts<'a> {
    pub reason: Option<&'a str>,
    /// Function name of the drop location (without `+0x..`).
    pub function: Option<&'a str>,
    pub direction: Option<Direction>,
    pub has_dst: bool,
    pub dev_known: bool,
    /// Role of the device the skb was on when freed, if it is one we watch.
    pub dev_role: Option<Role>,
    /// That device is a bridge itself (the VM bridge or a firewall bridge), not
    /// a port of one.
    pub dev_is_bridge: bool,
    /// The request was addressed to the host itself.
    pub dst_local: bool,
    /// The destination is on the guest's own bridge (bridged, not routed).
    pub bridged: bool,
}

pub fn drop_stage(f: &DropFacts) -> Stage {
    if let Some(stage) = f.reason.and_then(|r| by_reason(r, f)) {
        return stage;
    }
    if let Some(stage) = f.function.and_then(by_function) {
        return stage;
    }
    match f.dev_role {
        Some(Role::Port) => Stage::Tap,
        Some(Role::Bridge | Role::Hop) => Stage::Bridge,
        Some(Role::Uplink) => Stage::Egress,
        None => Stage::Routing,
    }
}

fn by_reason(reason: &str, f: &DropFacts) -> Option<Stage> {
    let stage = match reason {
        "NETFILTER_DROP" => netfilter_stage(f),
        r if r.starts_with("NEIGH_") => Stage::Neighbor,
        // TTL (hop limit) expiry: ip_forward / ip6_forward decrement it.
        "IP_INHDR" if matches!(f.function, Some("ip_forward" | "ip6_forward")) => Stage::Forward,
        "IPV6DISABLED" => Stage::Routing,
        r if r.starts_with("IPV6_NDISC") => Stage::Neighbor,
        "IP_INADDRERRORS" | "IP_INNOROUTES" | "IP_OUTNOROUTES" | "IP_RPFILTER"
        | "IP_INVALID_SOURCE" | "IP_LOCAL_SOURCE" | "IP_INVALID_DEST" | "IP_LOCALNET"
        | "IP_INHDR" | "XFRM_POLICY" => Stage::Routing,
        r if r.starts_with("BRIDGE_") || r == "ARP_PVLAN_DISABLE" => Stage::Bridge,
        "FULL_RING" | "DEV_READY" | "TAP_FILTER" | "TAP_TXFILTER" => Stage::Tap,
        r if r.starts_with("QDISC_") || r == "TC_EGRESS" || r == "PKT_TOO_BIG" => {
            if f.dev_role == Some(Role::Port) {
                Stage::Tap
            } else {
                Stage::Egress
            }
        }
        r if r.starts_with("SOCKET_") || r == "NO_SOCKET" || r == "IP_NOPROTO" => Stage::Input,
        _ => return None,
    };
    Some(stage)
}

/// A netfilter drop does not say which hook it was in; the skb's state does.
/// No route yet: PREROUTING. On the output device: POSTROUTING. Routed to the host:
/// INPUT. Otherwise FORWARD.
fn netfilter_stage(f: &DropFacts) -> Stage {
    // Bridged traffic meets the IP hooks only through br_netfilter (or ebtables).
    let in_bridge = f
        .function
        .is_some_and(|func| func.starts_with("br_") || func.starts_with("ebt_"));
    // A bridge device holding a real route is the routed pass: the frame was
    // addressed to the bridge's own MAC and entered the IP layer there (a guest
    // that took a firewall bridge's ARP answer for its gateway's routes through
    // it). br_netfilter's bridged pass never looks like that: its PREROUTING runs
    // before any route, and FORWARD/POSTROUTING with the skb on the outgoing port.
    let routed_at_bridge = f.dev_is_bridge && f.has_dst && !in_bridge;
    // On a firewall bridge or its veth pair, before the bridge that routes, only
    // the bridge firewall (br_netfilter, as Proxmox's) can have dropped it.
    if !routed_at_bridge && (f.bridged || in_bridge || f.dev_role == Some(Role::Hop)) {
        return Stage::Bridge;
    }
    // The skb on the VM's own port: the IP hooks never run there. The routed
    // pass sees the skb on the bridge device (ip_rcv after br_pass_frame_up;
    // ip_output sets the route's device), and so does br_netfilter's PREROUTING
    // (it swaps in the bridge first). What runs with the skb on a port is the
    // bridge family's hooks — prerouting on the port a frame came in by,
    // forward/postrouting on the one it leaves by — and br_netfilter's
    // FORWARD/POSTROUTING pass on the leaving port: all inside the bridge. Which
    // family it was, the rule that matches says (explain replays both).
    if f.dev_known && f.dev_role == Some(Role::Port) && !f.dev_is_bridge {
        return Stage::Bridge;
    }
    if f.dev_known && !f.has_dst {
        return Stage::Prerouting;
    }
    let on_output_dev = match f.direction {
        Some(Direction::Reply) => matches!(f.dev_role, Some(Role::Bridge | Role::Port)),
        _ => f.dev_role == Some(Role::Uplink),
    };
    if on_output_dev {
        Stage::Postrouting
    } else if f.dst_local && f.direction != Some(Direction::Reply) {
        Stage::Input
    } else {
        Stage::Forward
    }
}

fn by_function(func: &str) -> Option<Stage> {
    let prefixes: &[(&str, Stage)] = &[
        ("br_", Stage::Bridge),
        ("tun_", Stage::Tap),
        ("tap_", Stage::Tap),
        ("neigh_", Stage::Neighbor),
        ("arp_", Stage::Neighbor),
        ("ip_forward", Stage::Forward),
        ("ip_route", Stage::Routing),
        ("ip_error", Stage::Routing),
        ("ip_rcv", Stage::Routing),
        ("ip_local_deliver", Stage::Input),
        ("icmp_rcv", Stage::Input),
        ("udp", Stage::Input),
        ("ip_finish_output", Stage::Neighbor),
        ("ip_output", Stage::Postrouting),
        // IPv6's own functions.
        ("ndisc_", Stage::Neighbor),
        ("ip6_forward", Stage::Forward),
        ("ip6_route", Stage::Routing),
        ("ip6_pkt_", Stage::Routing),
        ("ipv6_rcv", Stage::Routing),
        ("ip6_rcv", Stage::Routing),
        ("ip6_input", Stage::Input),
        ("ip6_protocol_deliver", Stage::Input),
        ("icmpv6_rcv", Stage::Input),
        ("ip6_finish_output", Stage::Neighbor),
        ("ip6_output", Stage::Postrouting),
        ("dev_queue_xmit", Stage::Egress),
        ("__dev_queue_xmit", Stage::Egress),
        ("sch_", Stage::Egress),
        ("qdisc_", Stage::Egress),
    ];
    prefixes
        .iter()
        .find(|(p, _)| func.starts_with(p))
        .map(|(_, s)| *s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(reason: &str, function: &str) -> DropFacts<'static> {
        DropFacts {
            reason: Some(Box::leak(reason.to_string().into_boxed_str())),
            function: Some(Box::leak(function.to_string().into_boxed_str())),
            direction: Some(Direction::Request),
            dev_known: true,
            has_dst: true,
            dev_role: Some(Role::Bridge),
            dev_is_bridge: false,
            dst_local: false,
            bridged: false,
        }
    }

    #[test]
    fn ipv6_functions_name_their_stage() {
        let f = |func| drop_stage(&facts("NOT_SPECIFIED", func));
        assert_eq!(f("ip6_forward"), Stage::Forward);
        assert_eq!(f("ip6_pkt_drop"), Stage::Routing);
        assert_eq!(f("icmpv6_rcv"), Stage::Input);
        assert_eq!(f("ndisc_send_skb"), Stage::Neighbor);
        assert_eq!(
            drop_stage(&facts("IP_INHDR", "ip6_forward")),
            Stage::Forward
        );
    }

    #[test]
    fn routing_failures() {
        assert_eq!(
            drop_stage(&facts("IP_INADDRERRORS", "ip_error")),
            Stage::Routing
        );
        assert_eq!(
            drop_stage(&facts("IP_INNOROUTES", "ip_error")),
            Stage::Routing
        );
        assert_eq!(
            drop_stage(&facts("IP_RPFILTER", "ip_rcv_finish")),
            Stage::Routing
        );
    }

    #[test]
    fn netfilter_hook_from_skb_state() {
        let mut f = facts("NETFILTER_DROP", "nft_do_chain");
        assert_eq!(drop_stage(&f), Stage::Forward);
        f.has_dst = false;
        assert_eq!(drop_stage(&f), Stage::Prerouting);
        f.has_dst = true;
        f.dev_role = Some(Role::Uplink);
        assert_eq!(drop_stage(&f), Stage::Postrouting);
        f.dev_role = Some(Role::Bridge);
        f.dst_local = true;
        assert_eq!(drop_stage(&f), Stage::Input);
        f.direction = Some(Direction::Reply);
        f.dst_local = false;
        assert_eq!(drop_stage(&f), Stage::Postrouting);
        f.dev_role = Some(Role::Uplink);
        assert_eq!(drop_stage(&f), Stage::Forward);
        f.bridged = true;
        assert_eq!(drop_stage(&f), Stage::Bridge, "br_netfilter");
    }

    /// The skb on a firewall bridge (role Hop): before any route it is
    /// br_netfilter's bridged PREROUTING; with a route, the routed pass of a
    /// frame addressed to that bridge itself.
    #[test]
    fn firewall_bridge_bridged_pass_and_routed_pass() {
        let mut f = facts("NETFILTER_DROP", "nft_do_chain");
        f.dev_role = Some(Role::Hop);
        f.dev_is_bridge = true;
        f.has_dst = false;
        assert_eq!(drop_stage(&f), Stage::Bridge, "bridged prerouting");
        f.has_dst = true;
        assert_eq!(
            drop_stage(&f),
            Stage::Forward,
            "routed from the firewall bridge"
        );
        f.dst_local = true;
        assert_eq!(drop_stage(&f), Stage::Input);
        f.dev_is_bridge = false;
        assert_eq!(drop_stage(&f), Stage::Bridge, "on its veth: bridged pass");
    }

    /// A bridge-family hook drops with the skb on the VM's port: prerouting
    /// before any route for the guest's request, postrouting for the reply
    /// (routed, so with a route) on its way out to the guest.
    #[test]
    fn netfilter_drop_on_the_vm_port_is_inside_the_bridge() {
        let mut f = facts("NETFILTER_DROP", "nft_do_chain");
        f.dev_role = Some(Role::Port);
        f.has_dst = false;
        assert_eq!(drop_stage(&f), Stage::Bridge, "bridge-family prerouting");
        f.has_dst = true;
        f.direction = Some(Direction::Reply);
        assert_eq!(drop_stage(&f), Stage::Bridge, "bridge-family postrouting");
    }

    #[test]
    fn other_reasons_and_functions() {
        assert_eq!(
            drop_stage(&facts("NEIGH_FAILED", "neigh_invalidate")),
            Stage::Neighbor
        );
        assert_eq!(
            drop_stage(&facts("BRIDGE_INGRESS_STP_STATE", "br_handle_frame")),
            Stage::Bridge
        );
        assert_eq!(
            drop_stage(&facts("NOT_SPECIFIED", "br_handle_frame")),
            Stage::Bridge
        );
        assert_eq!(
            drop_stage(&facts("NOT_SPECIFIED", "tun_net_xmit")),
            Stage::Tap
        );
        assert_eq!(
            drop_stage(&facts("NO_SOCKET", "udp_queue_rcv_skb")),
            Stage::Input
        );
        let mut f = facts("QDISC_DROP", "__dev_queue_xmit");
        f.dev_role = Some(Role::Uplink);
        assert_eq!(drop_stage(&f), Stage::Egress);
    }
}
