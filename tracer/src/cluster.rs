//! Proxmox clusters: `--vm 101` on a node that does not run VM 101 says which
//! node does, instead of "no VM". The cluster file system (pmxcfs, /etc/pve) is
//! the same on every node: `.vmlist` maps every VMID to its node and type
//! (`{"ids":{"101":{"node":"pve2","type":"qemu","version":3}}}`), and
//! `nodes/NODE/qemu-server/VMID.conf` (`lxc/` for containers) holds each guest's
//! configuration (name, MACs), so a name or MAC is found there too. Read under
//! `--config-root` like the rest of the hypervisor configuration.

use std::{fmt, path::Path};

use crate::hostconfig;

/// A guest that runs on another node of the cluster.
#[derive(Debug, PartialEq, Eq)]
pub struct Elsewhere {
    pub vmid: String,
    /// `qemu` or `lxc`.
    pub kind: String,
    pub name: Option<String>,
    pub node: String,
    /// This node, when known.
    pub here: Option<String>,
}

impl fmt::Display for Elsewhere {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.kind == "lxc" {
            "container"
        } else {
            "VM"
        };
        let name = self
            .name
            .as_ref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        let here = self
            .here
            .as_ref()
            .map(|h| format!(" ({h})"))
            .unwrap_or_default();
        write!(
            f,
            "{what} {}{name} runs on cluster node {}, not on this node{here}: run pathtrace on {} (the cluster's VM list, /etc/pve/.vmlist)",
            self.vmid, self.node, self.node
        )
    }
}

/// Where the cluster runs the guest named `query` (VMID, name or MAC), when that
/// is another node than this one.
pub fn locate(root: &Path, query: &str) -> Option<Elsewhere> {
    let pve = root.join("etc/pve");
    let here = this_node(&pve);
    let vmlist = read_vmlist(&pve);
    let by_id = vmlist.iter().find(|(id, _, _)| id == query.trim());
    let (vmid, node, kind) = match by_id {
        Some(found) => found.clone(),
        None => find_in_nodes(&pve, query, &vmlist)?,
    };
    if here.as_deref() == Some(node.as_str()) {
        return None;
    }
    let name = guest_name(&pve.join("nodes").join(&node), &vmid);
    Some(Elsewhere {
        vmid,
        kind,
        name,
        node,
        here,
    })
}

/// `.vmlist` as (vmid, node, type); empty when absent or malformed.
fn read_vmlist(pve: &Path) -> Vec<(String, String, String)> {
    let Ok(text) = std::fs::read_to_string(pve.join(".vmlist")) else {
        return Vec::new();
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Vec::new();
    };
    let Some(ids) = v["ids"].as_object() else {
        return Vec::new();
    };
    ids.iter()
        .filter_map(|(id, e)| {
            let node = e["node"].as_str()?.to_string();
            let kind = e["type"].as_str().unwrap_or("qemu").to_string();
            Some((id.clone(), node, kind))
        })
        .collect()
}

/// A guest matched by name or MAC in some node's configuration.
fn find_in_nodes(
    pve: &Path,
    query: &str,
    vmlist: &[(String, String, String)],
) -> Option<(String, String, String)> {
    let nodes = std::fs::read_dir(pve.join("nodes")).ok()?;
    for node in nodes.flatten() {
        let nics = hostconfig::read_proxmox_node(&node.path());
        if let Some(nic) = hostconfig::find(&nics, query).first() {
            let node = node.file_name().to_string_lossy().into_owned();
            let kind = vmlist
                .iter()
                .find(|(id, _, _)| *id == nic.vm_id)
                .map_or_else(
                    || {
                        if nic.source == "proxmox-lxc" {
                            "lxc".to_string()
                        } else {
                            "qemu".to_string()
                        }
                    },
                    |(_, _, k)| k.clone(),
                );
            return Some((nic.vm_id.clone(), node, kind));
        }
    }
    None
}

fn guest_name(node_dir: &Path, vmid: &str) -> Option<String> {
    hostconfig::read_proxmox_node(node_dir)
        .into_iter()
        .find(|n| n.vm_id == vmid)
        .and_then(|n| n.vm_name)
}

/// This node's name: `/etc/pve/local` links to `nodes/NODE`; else the host name
/// (Proxmox node names are host names).
fn this_node(pve: &Path) -> Option<String> {
    if let Ok(target) = std::fs::read_link(pve.join("local")) {
        if let Some(name) = target.file_name() {
            return Some(name.to_string_lossy().into_owned());
        }
    }
    let root = pve.parent()?.parent()?;
    let hostname = if root == Path::new("/") {
        std::fs::read_to_string("/proc/sys/kernel/hostname").ok()
    } else {
        std::fs::read_to_string(root.join("etc/hostname")).ok()
    }?;
    let short = hostname.trim().split('.').next()?.to_string();
    (!short.is_empty()).then_some(short)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A two-node cluster seen from pve1: VM 100 here, VM 101 and CT 200 on pve2.
    fn fixture() -> std::path::PathBuf {
        let root = std::env::temp_dir().join(format!(
            "pathtrace-cluster-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let pve = root.join("etc/pve");
        let w = |rel: &str, text: &str| {
            let p = pve.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        w(
            ".vmlist",
            r#"{"version":7,"ids":{"100":{"node":"pve1","type":"qemu","version":1},"101":{"node":"pve2","type":"qemu","version":2},"200":{"node":"pve2","type":"lxc","version":3}}}"#,
        );
        w(
            "nodes/pve1/qemu-server/100.conf",
            "name: db01\nnet0: virtio=52:54:00:00:01:00,bridge=vmbr0\n",
        );
        w(
            "nodes/pve2/qemu-server/101.conf",
            "name: web01\nnet0: virtio=52:54:00:00:01:01,bridge=vmbr0\n",
        );
        w(
            "nodes/pve2/lxc/200.conf",
            "hostname: cache\nnet0: name=eth0,bridge=vmbr0,hwaddr=52:54:00:00:02:00,ip=dhcp\n",
        );
        std::os::unix::fs::symlink("nodes/pve1", pve.join("local")).unwrap();
        root
    }

    #[test]
    fn a_guest_on_another_node_is_named_with_its_node() {
        let root = fixture();
        let e = locate(&root, "101").unwrap();
        assert_eq!(e.node, "pve2");
        assert_eq!(e.name.as_deref(), Some("web01"));
        assert_eq!(e.here.as_deref(), Some("pve1"));
        assert_eq!(
            e.to_string(),
            "VM 101 (web01) runs on cluster node pve2, not on this node (pve1): run pathtrace on pve2 (the cluster's VM list, /etc/pve/.vmlist)"
        );
        // By name and by MAC, through the node's configuration.
        assert_eq!(locate(&root, "web01").unwrap().vmid, "101");
        assert_eq!(locate(&root, "52:54:00:00:01:01").unwrap().node, "pve2");
        let ct = locate(&root, "cache").unwrap();
        assert_eq!((ct.vmid.as_str(), ct.kind.as_str()), ("200", "lxc"));
        assert!(ct.to_string().starts_with("container 200 (cache)"));
        // Here, or nowhere: not "elsewhere".
        assert_eq!(locate(&root, "100"), None);
        assert_eq!(locate(&root, "999"), None);
        assert_eq!(locate(&root.join("nonexistent"), "101"), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
