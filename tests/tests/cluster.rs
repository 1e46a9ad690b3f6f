//! Proxmox clusters: `--vm 101` on a node that does not run VM 101 names the
//! node that does (from the cluster file system's VM list), one line, exit 2 —
//! for trace and doctor. A fixture of /etc/pve seen from node pve1;
//! nothing is loaded or sent (the VM is resolved before anything else).

use std::path::PathBuf;

use pathtrace_tests::tracerun::pathtrace_bin;

fn fixture() -> PathBuf {
    let root = std::env::temp_dir().join(format!("pathtrace-cluster-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let pve = root.join("etc/pve");
    let w = |rel: &str, text: &str| {
        let p = pve.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    w(
        ".vmlist",
        r#"{"version":4,"ids":{"100":{"node":"pve1","type":"qemu","version":1},"101":{"node":"pve2","type":"qemu","version":2}}}"#,
    );
    w(
        "nodes/pve1/qemu-server/100.conf",
        "name: db01\nnet0: virtio=52:54:00:00:01:00,bridge=vmbr0\nipconfig0: ip=192.0.2.100/24,gw=192.0.2.1\n",
    );
    w(
        "nodes/pve2/qemu-server/101.conf",
        "name: web01\nnet0: virtio=52:54:00:00:01:01,bridge=vmbr0\n",
    );
    // As pmxcfs lays it out: the local node's directories linked from the top.
    std::os::unix::fs::symlink("nodes/pve1", pve.join("local")).unwrap();
    std::os::unix::fs::symlink("nodes/pve1/qemu-server", pve.join("qemu-server")).unwrap();
    root
}

#[test]
fn a_vm_on_another_node_names_that_node() {
    let root = fixture();
    let root_arg = root.to_str().unwrap();
    for args in [
        vec!["--vm", "101", "--to", "203.0.113.8"],
        vec!["doctor", "--vm", "web01"],
    ] {
        let out = std::process::Command::new(pathtrace_bin())
            .args(&args)
            .args(["--config-root", root_arg])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.contains("VM 101 (web01) runs on cluster node pve2, not on this node (pve1)"),
            "{args:?}: {err}"
        );
        assert!(out.stdout.is_empty());
    }
    std::fs::remove_dir_all(&root).unwrap();
}
