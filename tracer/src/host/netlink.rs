//! A small blocking rtnetlink client: dump a table (links, addresses,
//! neighbours, FDB) or ask one question (a route lookup). No process is
//! spawned and no text is parsed: the kernel's own messages, decoded by
//! `netlink-packet-route`.

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
