//! DHCP messages as a guest sends and reads them (RFC 2131), for the fake guest.

use std::net::Ipv4Addr;

use crate::packet::Mac;

pub const DISCOVER: u8 = 1;
pub const OFFER: u8 = 2;
pub const REQUEST: u8 = 3;
pub const ACK: u8 = 5;
pub const NAK: u8 = 6;
const COOKIE: [u8; 4] = [99, 130, 83, 99];
/// BOOTP messages are at least this long (some servers ignore shorter ones).
const MIN_LEN: usize = 300;

/// A client's message: DISCOVER, or REQUEST for `requested` from `server`.
pub fn client_message(
    kind: u8,
    xid: u32,
    mac: Mac,
    requested: Option<Ipv4Addr>,
    server: Option<Ipv4Addr>,
) -> Vec<u8> {
    let mut m = vec![0u8; 236];
    m[0] = 1; // BOOTREQUEST
    m[1] = 1; // Ethernet
    m[2] = 6;
    m[4..8].copy_from_slice(&xid.to_be_bytes());
    m[28..34].copy_from_slice(&mac);
    m.extend_from_slice(&COOKIE);
    m.extend_from_slice(&[53, 1, kind]);
    m.extend_from_slice(&[61, 7, 1]); // client identifier: the MAC
    m.extend_from_slice(&mac);
    if let Some(ip) = requested {
        m.extend_from_slice(&[50, 4]);
        m.extend_from_slice(&ip.octets());
    }
    if let Some(ip) = server {
        m.extend_from_slice(&[54, 4]);
        m.extend_from_slice(&ip.octets());
    }
    m.extend_from_slice(&[55, 2, 1, 3]); // parameters: netmask, router
    m.push(255);
    if m.len() < MIN_LEN {
        m.resize(MIN_LEN, 0);
    }
    m
}

/// A server's answer: its transaction id, message type, the address offered
/// (`yiaddr`) and the server identifier (option 54).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub xid: u32,
    pub kind: u8,
    pub yiaddr: Ipv4Addr,
    pub server: Option<Ipv4Addr>,
}

/// Parse a DHCP message (the UDP payload).
pub fn parse(m: &[u8]) -> Option<Reply> {
    if m.len() < 240 || m[236..240] != COOKIE || m[0] != 2 {
        return None;
    }
    let xid = u32::from_be_bytes(m[4..8].try_into().ok()?);
    let yiaddr = Ipv4Addr::new(m[16], m[17], m[18], m[19]);
    let (mut kind, mut server, mut i) = (0, None, 240);
    while i < m.len() {
        match m[i] {
            0 => i += 1,
            255 => break,
            code => {
                let len = *m.get(i + 1)? as usize;
                let val = m.get(i + 2..i + 2 + len)?;
                match (code, len) {
                    (53, 1) => kind = val[0],
                    (54, 4) => server = Some(Ipv4Addr::new(val[0], val[1], val[2], val[3])),
                    _ => {}
                }
                i += 2 + len;
            }
        }
    }
    Some(Reply {
        xid,
        kind,
        yiaddr,
        server,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_discover_is_a_bootrequest_with_its_type_first() {
        let m = client_message(DISCOVER, 0x1234_5678, [2, 0, 0, 0, 0, 1], None, None);
        assert_eq!(m.len(), MIN_LEN);
        assert_eq!(&m[4..8], &[0x12, 0x34, 0x56, 0x78]);
        assert_eq!(&m[240..243], &[53, 1, DISCOVER]);
        // Not a server's message.
        assert!(parse(&m).is_none());
        let mut offer = m.clone();
        offer[0] = 2;
        offer[242] = OFFER;
        offer[16..20].copy_from_slice(&[192, 0, 2, 150]);
        let r = parse(&offer).unwrap();
        assert_eq!((r.xid, r.kind), (0x1234_5678, OFFER));
        assert_eq!(r.yiaddr, Ipv4Addr::new(192, 0, 2, 150));
    }
}
