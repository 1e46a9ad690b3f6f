//! The model from iproute2's JSON (`ip -j -d link`, `ip -j addr`, `ip -j neigh`,
//! `bridge -j fdb`): how unit tests write a host by hand, in the form an
//! operator can produce with those commands on a real one.

use std::net::IpAddr;

use serde_json::Value;

use super::{
    bond::{Bond, BondSlave},
    link::PortState,
    Address, FdbEntry, Host, Link, Neighbour,
};

fn arr(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn flags(v: &Value) -> Vec<&str> {
    arr(&v["flags"]).iter().filter_map(Value::as_str).collect()
}

impl Host {
    pub fn from_iproute2(links: &Value, addrs: &Value, neigh: &Value, fdb: &Value) -> Host {
        let index = |name: &str| {
            arr(links)
                .iter()
                .find(|l| l["ifname"].as_str() == Some(name))
                .and_then(|l| l["ifindex"].as_u64())
                .map(|i| i as u32)
        };
        let links_typed = arr(links)
            .iter()
            .filter_map(|l| {
                let f = flags(l);
                Some(Link {
                    index: l["ifindex"].as_u64()? as u32,
                    name: l["ifname"].as_str()?.to_string(),
                    kind: l["linkinfo"]["info_kind"].as_str().map(str::to_string),
                    master: l["master"].as_str().and_then(index),
                    up: f.contains(&"UP"),
                    lower_up: f.contains(&"LOWER_UP"),
                    operstate: l["operstate"].as_str().unwrap_or("UNKNOWN").to_string(),
                    mtu: l["mtu"].as_u64().unwrap_or(1500) as u32,
                    mac: l["address"].as_str().map(str::to_lowercase),
                    peer: l["link"].as_str().and_then(index),
                    port_state: l["linkinfo"]["info_slave_data"]["state"]
                        .as_str()
                        .filter(|_| l["linkinfo"]["info_slave_kind"] != "bond")
                        .map(port_state),
                    stp: l["linkinfo"]["info_data"]["stp_state"]
                        .as_u64()
                        .is_some_and(|s| s != 0),
                    vlan_id: l["linkinfo"]["info_data"]["id"].as_u64().map(|i| i as u16),
                    forward_delay: l["linkinfo"]["info_data"]["forward_delay"]
                        .as_u64()
                        .map(|d| d as u32),
                    vlan_filtering: l["linkinfo"]["info_data"]["vlan_filtering"]
                        .as_u64()
                        .is_some_and(|v| v != 0),
                    bond: bond(&l["linkinfo"], index),
                    bond_slave: bond_slave(&l["linkinfo"]),
                })
            })
            .collect();
        let addrs = arr(addrs)
            .iter()
            .flat_map(|l| {
                let i = l["ifname"].as_str().and_then(index).unwrap_or(0);
                arr(&l["addr_info"]).iter().filter_map(move |a| {
                    Some(Address {
                        index: i,
                        addr: a["local"].as_str()?.parse().ok()?,
                        prefix: a["prefixlen"].as_u64()? as u8,
                        flags: ["tentative", "dadfailed", "deprecated", "optimistic"]
                            .into_iter()
                            .filter(|f| a[*f].as_bool() == Some(true))
                            .map(str::to_string)
                            .collect(),
                    })
                })
            })
            .collect();
        let neighbours = arr(neigh)
            .iter()
            .filter_map(|n| {
                Some(Neighbour {
                    index: n["dev"].as_str().and_then(index).unwrap_or(0),
                    ip: n["dst"].as_str()?.parse::<IpAddr>().ok()?,
                    mac: n["lladdr"].as_str().map(str::to_lowercase),
                    state: arr(&n["state"])
                        .first()
                        .and_then(Value::as_str)
                        .unwrap_or("NONE")
                        .to_string(),
                    proxy: n.get("proxy").is_some(),
                    router: n.get("router").is_some(),
                })
            })
            .collect();
        let fdb = arr(fdb)
            .iter()
            .filter_map(|f| {
                Some(FdbEntry {
                    port: f["ifname"].as_str().and_then(index)?,
                    bridge: f["master"].as_str().and_then(index),
                    mac: f["mac"].as_str()?.to_lowercase(),
                    vlan: f["vlan"].as_u64().map(|v| v as u16),
                    own: flags(f).contains(&"self"),
                    permanent: f["state"].as_str() == Some("permanent"),
                })
            })
            .collect();
        Host {
            links: links_typed,
            addrs,
            neighbours,
            fdb,
            ..Host::default()
        }
    }

    /// Only links, for tests about interfaces alone.
    pub fn from_links(links: &Value) -> Host {
        Host::from_iproute2(links, &Value::Null, &Value::Null, &Value::Null)
    }
}

/// `ip -d -j link` of a bond: `info_data` with `mode`, `active_slave` (a
/// name), `miimon` and, in 802.3ad mode, `ad_info`.
fn bond(info: &Value, index: impl Fn(&str) -> Option<u32>) -> Option<Bond> {
    if info["info_kind"] != "bond" {
        return None;
    }
    let d = &info["info_data"];
    let ad = &d["ad_info"];
    Some(Bond {
        mode: d["mode"].as_str().unwrap_or_default().to_string(),
        active_slave: d["active_slave"].as_str().and_then(index),
        miimon: d["miimon"].as_u64().unwrap_or(0) as u32,
        ad_aggregator: ad["aggregator"].as_u64().map(|a| a as u16),
        ad_partner_mac: ad["partner_mac"].as_str().map(str::to_lowercase),
    })
}

/// `ip -d -j link` of a bond slave: `info_slave_data` with `state`
/// (ACTIVE/BACKUP), `mii_status`, `link_failure_count` and the 802.3ad fields.
fn bond_slave(info: &Value) -> Option<BondSlave> {
    if info["info_slave_kind"] != "bond" {
        return None;
    }
    let d = &info["info_slave_data"];
    let byte = |k: &str| d[k].as_u64().map(|v| v as u8);
    Some(BondSlave {
        active: d["state"].as_str() == Some("ACTIVE"),
        mii: d["mii_status"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase()
            .replace('_', " "),
        link_failures: d["link_failure_count"].as_u64().unwrap_or(0) as u32,
        ad_aggregator: d["ad_aggregator_id"].as_u64().map(|a| a as u16),
        ad_actor_state: byte("ad_actor_oper_port_state"),
        ad_partner_state: byte("ad_partner_oper_port_state"),
    })
}

fn port_state(s: &str) -> PortState {
    match s {
        "disabled" => PortState::Disabled,
        "listening" => PortState::Listening,
        "learning" => PortState::Learning,
        "forwarding" => PortState::Forwarding,
        "blocking" => PortState::Blocking,
        _ => PortState::Other(u8::MAX),
    }
}
