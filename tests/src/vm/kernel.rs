//! Debian cloud kernels for test VMs: fetched with `apt-get download` and unpacked
//! with `dpkg-deb -x` into a cache directory; nothing is installed into the host.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use super::exec;

/// An unpacked Debian kernel package.
pub struct Kernel {
    /// Where the .deb was unpacked (boot/, lib/modules/).
    pub dir: PathBuf,
    /// `uname -r` of that kernel, e.g. 6.1.0-56-cloud-amd64.
    pub release: String,
}

impl Kernel {
    /// The newest Debian cloud kernel of `series` (e.g. "6.1"), downloaded and
    /// unpacked once under `cache` (a directory per package).
    pub fn fetch(series: &str, cache: &Path) -> Result<Kernel> {
        match resolve_package(series).and_then(|p| Self::unpacked(&p, cache)) {
            Ok(k) => Ok(k),
            // Package lists missing, or older than the archive and naming a .deb it
            // no longer has (security updates replace kernels): refresh them once.
            Err(e) => {
                eprintln!("{e:#}; refreshing the package lists");
                exec(Command::new("apt-get").args(["update", "-qq"]))?;
                Self::unpacked(&resolve_package(series)?, cache)
            }
        }
    }

    /// `package`, downloaded and unpacked into `cache/package` unless it is there.
    fn unpacked(package: &str, cache: &Path) -> Result<Kernel> {
        let dir = cache.join(package);
        let done = dir.join(".unpacked");
        if !done.exists() {
            eprintln!("fetching {package} into {}", cache.display());
            let dl = cache.join("debs");
            std::fs::create_dir_all(&dl)?;
            exec(
                Command::new("apt-get")
                    .arg("download")
                    .arg(package)
                    .current_dir(&dl),
            )?;
            let deb = std::fs::read_dir(&dl)?
                .filter_map(|e| Some(e.ok()?.path()))
                .find(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&format!("{package}_")))
                })
                .with_context(|| format!("apt-get download left no {package}_*.deb"))?;
            let _ = std::fs::remove_dir_all(&dir);
            exec(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
            let release = kernel_release(&dir)?;
            // The package leaves modules.dep/alias to its postinst: make them here,
            // in the unpacked tree only, so modprobe resolves dependencies and the
            // kernel's on-demand loads (nft expressions, qdiscs) find their module.
            exec(Command::new("depmod").arg("-b").arg(&dir).arg(&release))?;
            std::fs::write(&done, "")?;
        }
        let release = kernel_release(&dir)?;
        Ok(Kernel { dir, release })
    }

    pub fn vmlinuz(&self) -> PathBuf {
        self.dir.join(format!("boot/vmlinuz-{}", self.release))
    }

    pub fn modules(&self) -> PathBuf {
        self.dir.join("lib/modules").join(&self.release)
    }

    /// The files (relative to [`Self::modules`]) that load `names` with their
    /// dependencies, dependencies first; built-in modules need none.
    pub fn module_closure(&self, names: &[&str]) -> Result<Vec<String>> {
        let deps = std::fs::read_to_string(self.modules().join("modules.dep"))?;
        Ok(closure(&deps, names))
    }
}

/// [`Kernel::module_closure`] over the text of a modules.dep.
fn closure(modules_dep: &str, names: &[&str]) -> Vec<String> {
    let deps: Vec<(&str, Vec<&str>)> = modules_dep
        .lines()
        .filter_map(|l| {
            let (m, d) = l.split_once(':')?;
            Some((m, d.split_whitespace().collect()))
        })
        .collect();
    let mut order: Vec<String> = Vec::new();
    for name in names {
        let Some((file, needs)) = deps.iter().find(|(f, _)| module_name(f) == *name) else {
            continue; // built in
        };
        // modules.dep lists every (transitive) dependency, the deepest last.
        for f in needs.iter().rev().chain(std::iter::once(file)) {
            if !order.iter().any(|o| o == f) {
                order.push(f.to_string());
            }
        }
    }
    order
}

/// `kernel/fs/fuse/virtiofs.ko.xz` -> `virtiofs` (modprobe treats - and _ alike).
pub fn module_name(file: &str) -> String {
    let base = file.rsplit('/').next().unwrap_or(file);
    base.split(".ko").next().unwrap_or(base).replace('-', "_")
}

/// The real package behind a series: Debian's metapackages (linux-image-cloud-amd64,
/// linux-image-6.12-cloud-amd64) depend on the versioned image package.
fn resolve_package(series: &str) -> Result<String> {
    let prefix = format!("linux-image-{series}");
    for meta in [
        format!("linux-image-{series}-cloud-amd64"),
        "linux-image-cloud-amd64".to_string(),
    ] {
        let out = Command::new("apt-cache")
            .args(["depends", &meta])
            .output()
            .context("apt-cache")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let found = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|p| {
                p.ends_with("-cloud-amd64")
                    && (p.starts_with(&format!("{prefix}."))
                        || p.starts_with(&format!("{prefix}-")))
            });
        if let Some(p) = found {
            return Ok(p.to_string());
        }
    }
    bail!(
        "no Debian cloud kernel {series} in the configured apt sources \
         (apt-cache search linux-image | grep cloud lists what there is)"
    )
}

fn kernel_release(dir: &Path) -> Result<String> {
    std::fs::read_dir(dir.join("lib/modules"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .next()
        .with_context(|| format!("no lib/modules/* in {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closure_orders_dependencies_first_without_repeats() {
        let dep = "kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
                   kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
                   kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n";
        let names: Vec<String> = closure(dep, &["virtio_pci", "virtio_net", "built_in"])
            .iter()
            .map(|f| module_name(f))
            .collect();
        assert_eq!(
            names,
            [
                "virtio_ring",
                "virtio",
                "virtio_pci_modern_dev",
                "virtio_pci_legacy_dev",
                "virtio_pci",
                "failover",
                "net_failover",
                "virtio_net"
            ]
        );
    }

    #[test]
    fn module_names_drop_path_suffix_and_dashes() {
        assert_eq!(module_name("kernel/fs/fuse/virtiofs.ko.xz"), "virtiofs");
        assert_eq!(module_name("a/nf-nat.ko"), "nf_nat");
    }
}
