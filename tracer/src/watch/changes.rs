//! When to read the host's VMs again: the kernel says so. A netlink socket
//! subscribed to link, neighbour (the bridges' FDB entries come as AF_BRIDGE
//! neighbour messages) and address notifications wakes watch when a port
//! appears or goes, a bridge learns or forgets a MAC, or an address changes —
//! so a new VM appears at once, and a quiet host is not re-read at all.

use std::time::Duration;

use anyhow::Result;
use tokio::io::unix::AsyncFd;

use crate::host::netlink::Rtnl;

/// rtnetlink multicast groups (linux/rtnetlink.h, `enum rtnetlink_groups`).
const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_NEIGH: u32 = 3;
const RTNLGRP_IPV4_IFADDR: u32 = 5;

/// Notifications arriving within this time are one change (a VM start brings
/// a tap, its bridge membership, carrier and FDB entries in a burst).
pub const SETTLE: Duration = Duration::from_millis(100);

pub struct HostChanges {
    socket: AsyncFd<Rtnl>,
}

impl HostChanges {
    pub fn subscribe() -> Result<Self> {
        let rtnl = Rtnl::subscribe(&[RTNLGRP_LINK, RTNLGRP_NEIGH, RTNLGRP_IPV4_IFADDR])?;
        // SAFETY: the socket's fd belongs to `rtnl`, which the AsyncFd owns and
        // keeps open and unchanged until it is dropped.
        let socket = unsafe { AsyncFd::register(rtnl) }?;
        Ok(Self { socket })
    }

    /// Wait until the kernel reports a change, and take every pending
    /// notification. Lost notifications (the socket overflowed) count as a
    /// change too: the tables are read whole anyway.
    pub async fn changed(&mut self) -> Result<()> {
        loop {
            let mut guard = self.socket.readable_mut().await?;
            match guard.get_inner_mut().drain() {
                Ok(_) => {
                    guard.clear_ready();
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => guard.clear_ready(),
                Err(e) => {
                    log::debug!("netlink notifications: {e}");
                    return Ok(());
                }
            }
        }
    }
}
