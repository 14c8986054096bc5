//! Debian's cloud kernels: a version like `6.1` is resolved with `apt-cache`
//! to the newest `linux-image-<ver>-cloud-amd64` package, fetched with
//! `apt-get download` into `target/vm/debs/` and unpacked with `dpkg-deb -x`
//! into `target/vm/kernels/<release>/`, where later runs find it (also
//! offline). The cloud flavour is small and boots straight from QEMU's
//! `-kernel`; what it builds as modules (veth, bridge) the guest loads.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::cmd;

/// The Debian kernel flavour booted: `linux-image-<ver>-cloud-amd64`.
const FLAVOUR: &str = "cloud-amd64";

/// Kernel versions booted when no `--kernel` is given: Debian 12's 6.1, the
/// oldest kernel the balancer is tested on, and the newest one Debian
/// packages here (the host's own kernel is what `cargo xtask test` covers).
pub const DEFAULT: &[&str] = &["6.1", "6.12"];

/// An unpacked kernel package.
#[derive(Debug)]
pub struct Kernel {
    /// `uname -r` of the kernel: `6.1.0-56-cloud-amd64`.
    pub release: String,
    /// Where the package is unpacked (holds `boot/` and `lib/modules/`).
    root: PathBuf,
}

impl Kernel {
    pub fn vmlinuz(&self) -> PathBuf {
        self.root
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }

    pub fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }

    /// The module files that loading `names` takes, dependencies before the
    /// modules that need them; modules built into this kernel are left out.
    pub fn modules_for(&self, names: &[&str]) -> Result<Vec<Module>> {
        let dir = self.modules_dir();
        let builtin: BTreeSet<String> = fs::read_to_string(dir.join("modules.builtin"))
            .with_context(|| format!("{}: no modules.builtin", dir.display()))?
            .lines()
            .filter_map(|l| module_name(Path::new(l)))
            .collect();
        let mut files = BTreeMap::new();
        index_modules(&dir.join("kernel"), &mut files)?;
        let mut order = Vec::new();
        for name in names {
            visit(
                &normalise(name),
                &builtin,
                &files,
                &mut Vec::new(),
                &mut order,
            )?;
        }
        Ok(order)
    }
}

/// One loadable module file of a kernel package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    /// `bridge`, `veth` (dashes as underscores, as the kernel names them).
    pub name: String,
    /// The `.ko`, `.ko.xz`, `.ko.zst` or `.ko.gz` in the package.
    pub path: PathBuf,
}

impl Module {
    /// The plain ELF object, decompressed on the host: the guest's
    /// `insmod` then needs no decompressor, whatever the kernel's config.
    pub fn object(&self) -> Result<Vec<u8>> {
        let name = self.path.to_string_lossy();
        let tool = if name.ends_with(".ko") {
            return fs::read(&self.path).with_context(|| format!("read {name}"));
        } else if name.ends_with(".xz") {
            "xz"
        } else if name.ends_with(".zst") {
            "zstd"
        } else if name.ends_with(".gz") {
            "gzip"
        } else {
            bail!("{name}: not a kernel module file")
        };
        let out = Command::new(tool)
            .arg("-dc")
            .arg(&self.path)
            .output()
            .with_context(|| {
                format!("cannot run `{tool}` to decompress {name} (apt-get install {tool})")
            })?;
        ensure!(
            out.status.success(),
            "`{tool} -dc {name}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(out.stdout)
    }
}

/// Depth first: a module's dependencies (from its `depends=` modinfo) go
/// into `order` before it.
fn visit(
    name: &str,
    builtin: &BTreeSet<String>,
    files: &BTreeMap<String, PathBuf>,
    stack: &mut Vec<String>,
    order: &mut Vec<Module>,
) -> Result<()> {
    if builtin.contains(name) || order.iter().any(|m| m.name == name) {
        return Ok(());
    }
    ensure!(
        !stack.iter().any(|s| s == name),
        "module dependency loop: {} -> {name}",
        stack.join(" -> ")
    );
    let path = files
        .get(name)
        .with_context(|| format!("the kernel has no module {name}, built in or loadable"))?;
    let depends = cmd::output(Command::new("modinfo").args(["-F", "depends"]).arg(path))?;
    stack.push(name.to_owned());
    for dep in depends.trim().split(',').filter(|d| !d.is_empty()) {
        visit(&normalise(dep), builtin, files, stack, order)?;
    }
    stack.pop();
    order.push(Module {
        name: name.to_owned(),
        path: path.clone(),
    });
    Ok(())
}

fn index_modules(dir: &Path, files: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            index_modules(&path, files)?;
        } else if let Some(name) = module_name(&path) {
            files.insert(name, path);
        }
    }
    Ok(())
}

/// `kernel/net/bridge/bridge.ko.xz` -> `bridge`; `nf-x.ko` -> `nf_x`.
fn module_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let (stem, _) = file.split_once(".ko")?;
    Some(normalise(stem))
}

fn normalise(name: &str) -> String {
    name.replace('-', "_")
}

/// Finds, fetches and unpacks the kernel for `wanted` (`6.1`, `6.1.0-56`,
/// `6.12.117+deb12`, or a full release `6.1.0-56-cloud-amd64`) under
/// `cache` (`target/vm`).
pub fn fetch(wanted: &str, cache: &Path) -> Result<Kernel> {
    let wanted = wanted
        .strip_suffix(&format!("-{FLAVOUR}"))
        .unwrap_or(wanted);
    let kernels = cache.join("kernels");
    let version = match newest(wanted, &apt_versions()?) {
        Some(v) => v,
        None => {
            let cached = cached_versions(&kernels);
            let Some(v) = newest(wanted, &cached) else {
                bail!(
                    "no Debian package linux-image-{wanted}…-{FLAVOUR} (see `apt-cache search linux-image | grep {FLAVOUR}`), \
                     and none unpacked in {}",
                    kernels.display()
                );
            };
            eprintln!(
                "apt knows no linux-image-{wanted}…-{FLAVOUR}; using the one unpacked in {}",
                kernels.display()
            );
            v
        }
    };
    let release = format!("{version}-{FLAVOUR}");
    let kernel = Kernel {
        root: kernels.join(&release),
        release,
    };
    if kernel.vmlinuz().is_file() {
        return Ok(kernel);
    }

    let package = format!("linux-image-{version}-{FLAVOUR}");
    let debs = cache.join("debs");
    fs::create_dir_all(&debs).with_context(|| format!("create {}", debs.display()))?;
    let deb = match find_deb(&debs, &package)? {
        Some(deb) => deb,
        None => {
            eprintln!("==> fetching {package}");
            cmd::run(
                Command::new("apt-get")
                    .args(["download", "-q", &package])
                    .current_dir(&debs),
            )?;
            find_deb(&debs, &package)?.with_context(|| {
                format!(
                    "apt-get download left no {package}_*.deb in {}",
                    debs.display()
                )
            })?
        }
    };
    let partial = kernels.join(format!(".{}.partial", kernel.release));
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial)?;
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
    fs::rename(&partial, &kernel.root)
        .with_context(|| format!("rename {} to {}", partial.display(), kernel.root.display()))?;
    ensure!(
        kernel.vmlinuz().is_file(),
        "{package} holds no {}",
        kernel.vmlinuz().display()
    );
    Ok(kernel)
}

/// Versions of every `linux-image-<ver>-cloud-amd64` apt knows. With an
/// empty package list (no `apt-get update` yet) and root, updates it once.
fn apt_versions() -> Result<Vec<String>> {
    let search = || -> Result<Vec<String>> {
        let pattern = format!("^linux-image-[0-9].*-{FLAVOUR}$");
        let out =
            cmd::output(Command::new("apt-cache").args(["search", "--names-only", &pattern]))?;
        Ok(out
            .lines()
            .filter_map(|l| package_version(l.split_whitespace().next()?))
            .collect())
    };
    let versions = search().unwrap_or_default();
    // SAFETY: geteuid has no preconditions and cannot fail.
    if versions.is_empty() && unsafe { libc::geteuid() } == 0 {
        cmd::run(Command::new("apt-get").args(["update", "-q"]))?;
        return search();
    }
    Ok(versions)
}

/// `linux-image-6.1.0-56-cloud-amd64` -> `6.1.0-56`. Meta-packages
/// (`linux-image-6.12-cloud-amd64`, no ABI number) hold no kernel: `None`.
fn package_version(package: &str) -> Option<String> {
    let version = package
        .strip_prefix("linux-image-")?
        .strip_suffix(&format!("-{FLAVOUR}"))?;
    let real = version.starts_with(|c: char| c.is_ascii_digit()) && version.contains(['-', '+']);
    real.then(|| version.to_owned())
}

fn cached_versions(kernels: &Path) -> Vec<String> {
    let Ok(dir) = fs::read_dir(kernels) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        e.ok()?
            .file_name()
            .to_str()?
            .strip_suffix(&format!("-{FLAVOUR}"))
            .map(str::to_owned)
    })
    .collect()
}

/// The newest of `versions` that is `wanted` or starts with it followed by
/// a separator: `6.1` picks among `6.1.0-*`, never `6.12.*`.
fn newest(wanted: &str, versions: &[String]) -> Option<String> {
    versions
        .iter()
        .filter(|v| match v.strip_prefix(wanted) {
            Some(rest) => rest.is_empty() || rest.starts_with(['.', '-', '+']),
            None => false,
        })
        .max_by_key(|v| version_key(v))
        .cloned()
}

/// The numbers in a version, in order: `6.12.117+deb12` -> [6, 12, 117, 12].
fn version_key(version: &str) -> Vec<u64> {
    version
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

fn find_deb(dir: &Path, package: &str) -> Result<Option<PathBuf>> {
    let prefix = format!("{package}_");
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_prefix_picks_the_newest_package_of_that_line() {
        let versions: Vec<String> = [
            "6.1.0-9",
            "6.1.0-56",
            "6.1.0-48",
            "6.12.117+deb12",
            "6.12.9+deb12",
            "6.10.1",
        ]
        .map(String::from)
        .into();
        assert_eq!(newest("6.1", &versions).as_deref(), Some("6.1.0-56"));
        assert_eq!(newest("6.12", &versions).as_deref(), Some("6.12.117+deb12"));
        assert_eq!(newest("6.1.0-48", &versions).as_deref(), Some("6.1.0-48"));
        assert_eq!(newest("6.1.0-4", &versions), None);
        assert_eq!(newest("6.10", &versions).as_deref(), Some("6.10.1"));
        assert_eq!(newest("5.10", &versions), None);
    }

    #[test]
    fn package_names_give_versions() {
        assert_eq!(
            package_version("linux-image-6.1.0-56-cloud-amd64").as_deref(),
            Some("6.1.0-56")
        );
        assert_eq!(
            package_version("linux-image-6.12.117+deb12-cloud-amd64").as_deref(),
            Some("6.12.117+deb12")
        );
        assert_eq!(package_version("linux-image-cloud-amd64"), None);
        assert_eq!(package_version("linux-image-6.12-cloud-amd64"), None);
        assert_eq!(
            package_version("linux-image-6.1.0-56-cloud-amd64-dbg"),
            None
        );
    }

    #[test]
    fn module_names_as_the_kernel_spells_them() {
        assert_eq!(
            module_name(Path::new("kernel/net/bridge/bridge.ko.xz")).as_deref(),
            Some("bridge")
        );
        assert_eq!(
            module_name(Path::new("kernel/drivers/net/veth.ko")).as_deref(),
            Some("veth")
        );
        assert_eq!(
            module_name(Path::new("kernel/net/x/nf-conntrack.ko.zst")).as_deref(),
            Some("nf_conntrack")
        );
        assert_eq!(module_name(Path::new("modules.builtin")), None);
    }
}
