//! A network beyond the internet's router with a smaller MTU on its link: the
//! provider router (the inet namespace, 198.51.100.1) forwards to it over a link
//! of MTU `mtu`, so a DF packet larger than that gets the router's own ICMP
//! "fragmentation needed" — the path-MTU black hole's common real case, where the
//! ICMP comes from beyond the host and the host's FORWARD chain may eat it.
//!
//!   inet namespace: far0 203.0.113.65/30 ══ MTU mtu ══ wan0 203.0.113.66/30
//!   far namespace:  203.0.113.80 on lo, TCP/UDP services on it (as the inet's)
//!   IPv6 (v6.rs):   far0 2001:db8:3::1/64 ══ wan0 2001:db8:3::2/64, the far
//!                   host 2001:db8:fffe::80 on far's lo; the provider's router
//!                   gives Packet Too Big for what exceeds the link

use anyhow::Result;

use super::{
    netns::{in_netns, sh},
    Lab,
};

/// The far network's service address and its TCP/UDP services' ports, as the
/// inet namespace's (`SERVICE_TCP`, `SERVICE_UDP`).
pub const REMOTE_HOST: &str = "203.0.113.80";

impl Lab {
    /// Build the far network behind the inet router, its link at `mtu`, with
    /// services on [`REMOTE_HOST`]; does nothing when it exists. It goes with
    /// the lab.
    pub fn add_remote_network(&mut self, mtu: u32) -> Result<()> {
        if self.far.is_some() {
            return Ok(());
        }
        let far = format!("{}-far", self.hv.trim_end_matches("-hv"));
        sh(&format!("ip netns add {far}"))?;
        self.far = Some(far.clone());
        super::v6::no_dad(&far)?;
        let inet = self.inet.clone();
        sh(&format!(
            "ip link add far0 netns {inet} mtu {mtu} type veth peer name wan0 netns {far} mtu {mtu}"
        ))?;
        // The inet namespace becomes a router (a new namespace does not forward).
        self.inet(&format!(
            "sysctl -qw net.ipv4.ip_forward=1 && \
             ip addr add 203.0.113.65/30 dev far0 && ip link set far0 up && \
             ip route add {REMOTE_HOST}/32 via 203.0.113.66"
        ))?;
        in_netns(
            &far,
            &format!(
                "ip link set lo up && ip addr add {REMOTE_HOST}/32 dev lo && \
                 ip addr add 203.0.113.66/30 dev wan0 && ip link set wan0 up && \
                 ip route add default via 203.0.113.65"
            ),
        )?;
        self.add_remote_network6(&far)?;
        let (tcp, udp) = (format!("{REMOTE_HOST}:8080"), format!("{REMOTE_HOST}:5001"));
        let services = self.spawn_ready(
            &far,
            &["services", "--tcp", &tcp, "--udp", &udp],
            "the far network's TCP/UDP services",
        )?;
        self.helpers.push(services);
        Ok(())
    }
}
