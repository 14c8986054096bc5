//! Builds the kernel object (`balancer-ebpf`, target bpfel-unknown-none) with
//! the nightly toolchain and bpf-linker, into `$OUT_DIR/balancer`.
//!
//! It runs the nested cargo the way `aya_build::build_ebpf` does (same
//! flags), with two differences that aya-build 0.2.0 does not offer: the
//! nested cargo's output is shown only when it fails, and its target
//! directory is one for the workspace (`target/ebpf`) rather than one per
//! `OUT_DIR`. `cargo build` and `cargo test` of balancer-user resolve
//! different feature sets, hence different `OUT_DIR`s; with one target
//! directory they share one build of the object (and of `core`), rebuilt
//! only when its sources change.
//!
//! It also sets `BALANCER_GIT` for `--version` and `balancer_build_info`:
//! `git rev-parse --short HEAD`, with `-dirty` when the checkout has
//! changes, or `unknown` outside a git checkout (a source tarball).
//!
//! `AYA_BUILD_SKIP=1` skips it and leaves an empty stub, so `cargo check`,
//! clippy and host unit tests work without nightly or bpf-linker; loading the
//! stub then fails with a clear error.
use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::{self, Command},
};

use anyhow::{Context as _, Result, bail};

const PACKAGE: &str = "balancer-ebpf";
/// The kernel crate's binary, and the object's name in `OUT_DIR`.
const BINARY: &str = "balancer";
const TOOLCHAIN: &str = "nightly";

fn main() {
    // An error, not a panic or anyhow's backtrace: the nested cargo's output
    // above it says what went wrong.
    if let Err(err) = run() {
        eprintln!("error: {err:#}");
        process::exit(1);
    }
}

fn run() -> Result<()> {
    let out = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let object = out.join(BINARY);
    git_revision();
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        if !object.exists() {
            fs::write(&object, [])?;
        }
        return Ok(());
    }
    // What the object is built from: the kernel crate, the shared types
    // compiled into it, and the workspace's profile settings and lock file.
    // The nested cargo decides itself what, if anything, to recompile.
    for path in [
        "../balancer-ebpf",
        "../balancer-common",
        "../Cargo.toml",
        "../Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }
    let built = build(&ebpf_target_dir(&out)?)?;
    fs::copy(&built, &object)
        .with_context(|| format!("cannot copy {} to {}", built.display(), object.display()))?;
    Ok(())
}

/// Sets `BALANCER_GIT` and asks cargo to run this again when the revision
/// or the checkout's state can have changed: a commit or checkout moves
/// `HEAD` or the ref it names, staging rewrites the index, and an edit of
/// the sources compiled into the binary changes them.
fn git_revision() {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let revision = match git(&["rev-parse", "--short", "HEAD"]) {
        Some(rev) if !rev.is_empty() => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|changes| !changes.is_empty());
            if dirty { format!("{rev}-dirty") } else { rev }
        }
        _ => "unknown".to_owned(),
    };
    println!("cargo:rustc-env=BALANCER_GIT={revision}");
    for path in ["HEAD", "index"]
        .iter()
        .filter_map(|p| git(&["rev-parse", "--git-path", p]))
        .chain(
            git(&["symbolic-ref", "-q", "HEAD"])
                .and_then(|r| git(&["rev-parse", "--git-path", &r])),
        )
        // A packed ref has no file; a path that does not exist would make
        // cargo run this on every build.
        .filter(|p| Path::new(p).exists())
    {
        println!("cargo:rerun-if-changed={path}");
    }
    println!("cargo:rerun-if-changed=src");
}

/// `<target>/ebpf`: `OUT_DIR` is `<target>/<profile>/build/<crate>-<hash>/out`.
fn ebpf_target_dir(out: &Path) -> Result<PathBuf> {
    let target = out
        .ancestors()
        .nth(4)
        .with_context(|| format!("OUT_DIR {} is not inside a target directory", out.display()))?;
    Ok(target.join("ebpf"))
}

/// `cargo build` of the kernel crate for BPF with the nightly toolchain;
/// returns the object's path. Its output is printed only if it fails.
fn build(target_dir: &Path) -> Result<PathBuf> {
    let endian = env::var("CARGO_CFG_TARGET_ENDIAN").context("CARGO_CFG_TARGET_ENDIAN not set")?;
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH not set")?;
    let target = match endian.as_str() {
        "little" => "bpfel-unknown-none",
        "big" => "bpfeb-unknown-none",
        other => bail!("unsupported target endianness {other}"),
    };
    // aya-ebpf reads bpf_target_arch for the host's pt_regs layout; the
    // BTF the loader relocates against comes from bpf-linker's --btf.
    let rustflags: OsString = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
    ]
    .join("\x1f")
    .into();
    let mut cargo = Command::new("rustup");
    cargo
        .args([
            "run",
            TOOLCHAIN,
            "cargo",
            "build",
            "--package",
            PACKAGE,
            "--bins",
            "--release",
        ])
        .args(["--target", target, "-Z", "build-std=core", "--target-dir"])
        .arg(target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        // The outer build's compiler is the stable one: let rustup pick nightly's.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    let output = cargo
        .output()
        .with_context(|| format!("cannot run {cargo:?} (is rustup installed?)"))?;
    if !output.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&output.stdout));
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        bail!(
            "building the kernel object failed ({}): its output is above",
            output.status
        );
    }
    let object = target_dir.join(target).join("release").join(BINARY);
    if !object.is_file() {
        bail!(
            "the kernel build succeeded but {} is not there",
            object.display()
        );
    }
    Ok(object)
}
