//! Prerequisites of the eBPF build: the nightly toolchain (aya-build runs
//! `rustup run nightly cargo build -Z build-std=core`), its rust-src component,
//! and a bpf-linker built against the nightly rustc's own libLLVM.
//!
//! Idempotent: when everything is in place this only runs a few quick probes.

use std::{
    env, fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{self, Command},
};

use anyhow::{Context as _, Result, bail};

use crate::cmd;

const NIGHTLY: &str = "nightly";
const BPF_LINKER: &str = "bpf-linker";
/// The bpf-linker release installed when it is missing or built for another LLVM.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// What the build needs to know about the nightly toolchain.
struct Nightly {
    /// `release:` of `rustc -vV`, e.g. `1.97.0-nightly`.
    release: String,
    /// Major of `LLVM version:` of `rustc -vV`, e.g. 22.
    llvm_major: u32,
    sysroot: PathBuf,
}

pub fn ensure() -> Result<()> {
    let nightly = nightly()?;
    ensure_rust_src()?;
    let linker = ensure_bpf_linker(&nightly)?;
    eprintln!(
        "prerequisites: rustc {} (LLVM {}), rust-src, {} at {}",
        nightly.release,
        nightly.llvm_major,
        linker.version,
        linker.path.display()
    );
    Ok(())
}

/// `rustup run nightly PROGRAM`: the environment (PATH, LD_LIBRARY_PATH) that
/// aya-build gives rustc and bpf-linker. Never installs a toolchain.
fn in_nightly(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", NIGHTLY])
        .arg(program)
        .env("RUSTUP_AUTO_INSTALL", "0");
    cmd
}

fn nightly() -> Result<Nightly> {
    let Ok(version) = cmd::output(in_nightly("rustc").arg("-vV")) else {
        bail!(
            "the `{NIGHTLY}` toolchain is missing (the eBPF build needs it): \
             install it with `rustup toolchain install {NIGHTLY}`"
        );
    };
    let field = |name: &str| {
        version
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .with_context(|| format!("`rustc +{NIGHTLY} -vV` printed no `{name}` line"))
    };
    let release = field("release:")?.to_owned();
    let llvm = field("LLVM version:")?;
    let llvm_major = leading_number(llvm)
        .with_context(|| format!("cannot read the LLVM major from `LLVM version: {llvm}`"))?;
    let sysroot = cmd::output(in_nightly("rustc").args(["--print", "sysroot"]))?;
    Ok(Nightly {
        release,
        llvm_major,
        sysroot: PathBuf::from(sysroot.trim()),
    })
}

fn ensure_rust_src() -> Result<()> {
    let installed = cmd::output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))?;
    // Lines are `rust-src` (no target suffix) or `rustc-x86_64-unknown-linux-gnu`.
    if !installed.lines().any(|l| l.trim() == "rust-src") {
        cmd::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            NIGHTLY,
        ]))?;
    }
    Ok(())
}

struct Linker {
    path: PathBuf,
    /// What `bpf-linker --version` prints, e.g. `bpf-linker 0.13.0`.
    version: String,
}

/// Why the bpf-linker on PATH cannot be used as it is.
enum Unfit {
    Missing,
    WontRun(String),
    OtherLlvm(u32),
    UnknownLlvm,
}

fn ensure_bpf_linker(nightly: &Nightly) -> Result<Linker> {
    let unfit = match inspect_bpf_linker(nightly)? {
        Ok(linker) => return Ok(linker),
        Err(unfit) => unfit,
    };
    let want = nightly.llvm_major;
    match unfit {
        Unfit::Missing => eprintln!("{BPF_LINKER} is missing: installing it"),
        Unfit::WontRun(why) => eprintln!("{BPF_LINKER} does not run ({why}): reinstalling it"),
        Unfit::OtherLlvm(have) => {
            eprintln!(
                "{BPF_LINKER} is built for LLVM {have}, nightly rustc uses LLVM {want}: reinstalling it"
            )
        }
        Unfit::UnknownLlvm => eprintln!(
            "{BPF_LINKER} links no libLLVM dynamically, so its LLVM version is unknown: reinstalling it"
        ),
    }
    install_bpf_linker(nightly)?;
    match inspect_bpf_linker(nightly)? {
        Ok(linker) => Ok(linker),
        Err(unfit) => {
            let why = match unfit {
                Unfit::Missing => {
                    format!("it is not on PATH (is {} on PATH?)", cargo_bin().display())
                }
                Unfit::WontRun(why) => format!("it does not run: {why}"),
                Unfit::OtherLlvm(have) => format!("the one on PATH is built for LLVM {have}"),
                Unfit::UnknownLlvm => "the one on PATH links no libLLVM dynamically".to_owned(),
            };
            bail!("{BPF_LINKER} is still unusable after `cargo install`: {why}")
        }
    }
}

/// Finds the bpf-linker that rustc will run (PATH as `rustup run nightly`
/// sets it) and checks that it starts with the nightly's libLLVM and is
/// linked against the same LLVM major.
fn inspect_bpf_linker(nightly: &Nightly) -> Result<Result<Linker, Unfit>> {
    let found = in_nightly("sh")
        .args(["-c", &format!("command -v {BPF_LINKER}")])
        .output()?;
    let path = String::from_utf8_lossy(&found.stdout).trim().to_owned();
    if !found.status.success() || path.is_empty() {
        return Ok(Err(Unfit::Missing));
    }
    let path = PathBuf::from(path);
    let version = match cmd::output(in_nightly(&path).arg("--version")) {
        Ok(v) => v.trim().to_owned(),
        Err(err) => return Ok(Err(Unfit::WontRun(format!("{err:#}")))),
    };
    // `ldd` names each needed library even when it cannot find it, e.g.
    // `libLLVM.so.22.1-rust-1.97.0-nightly => not found`; a static binary has none.
    let ldd = Command::new("ldd")
        .arg(&path)
        .output()
        .context("cannot run ldd")?;
    let linked = String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .find_map(llvm_major_of_soname);
    Ok(match linked {
        Some(major) if major == nightly.llvm_major => Ok(Linker { path, version }),
        Some(major) => Err(Unfit::OtherLlvm(major)),
        None => Err(Unfit::UnknownLlvm),
    })
}

/// `cargo install bpf-linker` against the nightly rustc's libLLVM: a prefix
/// whose lib/libLLVM.so points at it, and an rpath to the sysroot's lib so
/// the binary also finds it outside `rustup run`.
fn install_bpf_linker(nightly: &Nightly) -> Result<()> {
    let lib_dir = nightly.sysroot.join("lib");
    let libllvm = find_libllvm(&lib_dir, nightly.llvm_major)?;
    let prefix = env::temp_dir().join(format!("xtask-llvm-prefix-{}", process::id()));
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("cannot create {}", prefix_lib.display()))?;
    let link = prefix_lib.join("libLLVM.so");
    let _ = fs::remove_file(&link);
    symlink(&libllvm, &link).with_context(|| format!("cannot create {}", link.display()))?;

    let mut cargo = cmd::cargo();
    cargo
        .args([
            "install",
            "--force",
            "--locked",
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{}", nightly.llvm_major))
        .arg(format!("{BPF_LINKER}@{BPF_LINKER_VERSION}"))
        .env("LLVM_PREFIX", &prefix)
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            format!("-Clink-arg=-Wl,-rpath,{}", lib_dir.display()),
        )
        .env_remove("RUSTFLAGS");
    let result = cmd::run(&mut cargo);
    let _ = fs::remove_dir_all(&prefix);
    result
}

/// The real libLLVM shared object in the sysroot's lib, e.g.
/// `libLLVM.so.22.1-rust-1.97.0-nightly` (`libLLVM-22-*.so` beside it is a
/// linker script).
fn find_libllvm(lib_dir: &Path, major: u32) -> Result<PathBuf> {
    let entries =
        fs::read_dir(lib_dir).with_context(|| format!("cannot read {}", lib_dir.display()))?;
    for entry in entries {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("libLLVM.so.") && llvm_major_of_soname(&name) == Some(major) {
            return Ok(lib_dir.join(&*name));
        }
    }
    bail!("no libLLVM.so.{major}* in {}", lib_dir.display())
}

fn cargo_bin() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_default()
        .join("bin")
}

/// The LLVM major in a libLLVM file name: `libLLVM.so.22.1-rust-1.97.0-nightly`,
/// `libLLVM-22-rust-1.97.0-nightly.so`, `libLLVM-19.so.1`, `libLLVM.so.19.1`.
fn llvm_major_of_soname(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("libLLVM")?;
    let rest = rest
        .strip_prefix(".so.")
        .or_else(|| rest.strip_prefix('-'))?;
    leading_number(rest)
}

fn leading_number(s: &str) -> Option<u32> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_from_library_names() {
        assert_eq!(
            llvm_major_of_soname("libLLVM.so.22.1-rust-1.97.0-nightly"),
            Some(22)
        );
        assert_eq!(
            llvm_major_of_soname("libLLVM-22-rust-1.97.0-nightly.so"),
            Some(22)
        );
        assert_eq!(llvm_major_of_soname("libLLVM-19.so.1"), Some(19));
        assert_eq!(llvm_major_of_soname("libLLVM.so.19.1"), Some(19));
        assert_eq!(llvm_major_of_soname("libLLVM.so"), None);
        assert_eq!(llvm_major_of_soname("libLLVMSupport.a"), None);
        assert_eq!(llvm_major_of_soname("libc.so.6"), None);
    }

    #[test]
    fn llvm_major_from_version() {
        assert_eq!(leading_number("22.1.4"), Some(22));
        assert_eq!(leading_number("x"), None);
    }
}
