//! A small rtnetlink client: dump a table (links, addresses, neighbours, FDB),
//! ask one question (a route lookup), or hear the kernel's change
//! notifications. No process is spawned and no text is parsed: the kernel's own
//! messages, decoded by `netlink-packet-route`.

use std::{
    io,
    os::fd::{AsRawFd, RawFd},
};

use anyhow::{anyhow, bail, Context, Result};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

pub struct Rtnl {
    sock: Socket,
    seq: u32,
}

impl Rtnl {
    /// A socket for requests, in the current network namespace.
    pub fn open() -> Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE).context("opening a netlink socket")?;
        sock.bind_auto().context("binding a netlink socket")?;
        sock.connect(&SocketAddr::new(0, 0))
            .context("connecting a netlink socket")?;
        Ok(Self { sock, seq: 0 })
    }

    /// A non-blocking socket that receives the kernel's notifications for
    /// `groups` (RTNLGRP_* numbers), for an event loop to poll.
    pub fn subscribe(groups: &[u32]) -> Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE).context("opening a netlink socket")?;
        sock.bind_auto().context("binding a netlink socket")?;
        for g in groups {
            sock.add_membership(*g)
                .with_context(|| format!("joining netlink group {g}"))?;
        }
        sock.set_non_blocking(true)
            .context("making a netlink socket non-blocking")?;
        Ok(Self { sock, seq: 0 })
    }

    /// Take every pending notification; how many there were. `WouldBlock`
    /// once none is left; `ENOBUFS` when the kernel dropped some (the reader
    /// must re-read the tables).
    pub fn drain(&mut self) -> io::Result<usize> {
        let mut n = 0;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match self.sock.recv(&mut &mut buf[..], 0) {
                Ok(0) => return Ok(n),
                Ok(_) => n += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && n > 0 => return Ok(n),
                Err(e) => return Err(e),
            }
        }
    }

    /// Every entry of a table (`NLM_F_DUMP`).
    pub fn dump(&mut self, msg: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>> {
        self.request(msg, NLM_F_REQUEST | NLM_F_DUMP)
    }

    /// One request, its answers.
    pub fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        nl.finalize();
        let mut buf = vec![0; nl.buffer_len()];
        nl.serialize(&mut buf);
        self.sock
            .send(&buf, 0)
            .context("sending a netlink request")?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        loop {
            let (bytes, _) = self.sock.recv_from_full().context("reading netlink")?;
            for m in messages(&bytes)? {
                if m.header.sequence_number != self.seq {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::InnerMessage(inner) => {
                        out.push(inner);
                        if !dump {
                            return Ok(out);
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) if e.code.is_none() => return Ok(out),
                    NetlinkPayload::Error(e) => return Err(anyhow!(e.to_io())),
                    _ => {}
                }
            }
        }
    }
}

/// The netlink messages packed in one datagram.
fn messages(mut bytes: &[u8]) -> Result<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
    let mut out = Vec::new();
    while bytes.len() >= 16 {
        let len = u32::from_ne_bytes(bytes[..4].try_into().unwrap_or_default()) as usize;
        if len < 16 || len > bytes.len() {
            bail!("truncated netlink message ({len} of {} bytes)", bytes.len());
        }
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[..len]) {
            Ok(m) => out.push(m),
            // A message this crate cannot decode (a newer kernel's attribute
            // layout) is skipped, not fatal: the rest of the table still counts.
            Err(e) => log::debug!("skipping an undecodable netlink message: {e}"),
        }
        // Messages are aligned to 4 bytes.
        let step = (len + 3) & !3;
        bytes = &bytes[step.min(bytes.len())..];
    }
    Ok(out)
}

impl AsRawFd for Rtnl {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}
