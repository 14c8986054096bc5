//! `cargo xtask package`: the Debian package, built by cargo-deb (installed
//! when missing) from `[package.metadata.deb]` in balancer-user/Cargo.toml:
//! the binary, the systemd unit (deploy/systemd), the example config as the
//! conffile /etc/balancer/balancer.toml, the man pages and the bash, zsh and
//! fish completions.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, ensure};

use crate::{
    bootstrap,
    build::{self, Profile, USER_PACKAGE},
    cmd,
};

/// The cargo-deb release installed when `cargo deb` is missing.
const CARGO_DEB_VERSION: &str = "3.8.0";

pub fn run() -> Result<()> {
    bootstrap::ensure()?;
    let bin = build::build_balancer(Profile::Release)?;
    let deb = build_deb(&bin)?;
    println!("debian package: {}", deb.display());
    Ok(())
}

/// Packages `bin` (the release `balancer`, already built) and returns the
/// .deb's absolute path.
pub fn build_deb(bin: &Path) -> Result<PathBuf> {
    ensure_cargo_deb()?;
    // `target/release/assets` in the asset list of Cargo.toml; emptied first
    // so that a removed subcommand's page does not linger in the package.
    let assets = bin.with_file_name("assets");
    if assets.exists() {
        fs::remove_dir_all(&assets)
            .with_context(|| format!("cannot remove {}", assets.display()))?;
    }
    cmd::run(Command::new(bin).arg("assets").arg(&assets))?;
    gzip_man_pages(&assets.join("man"))?;
    // cargo-deb prints the .deb's path on stdout, its progress on stderr.
    let out = cmd::output(cmd::cargo().args(["deb", "-p", USER_PACKAGE, "--no-build"]))?;
    let deb = PathBuf::from(out.trim());
    ensure!(
        deb.is_file(),
        "cargo deb succeeded but printed no .deb path (stdout: {})",
        out.trim()
    );
    Ok(deb)
}

/// Debian policy wants man pages gzipped, and cargo-deb compresses only the
/// assets that do not come from the target directory.
fn gzip_man_pages(dir: &Path) -> Result<()> {
    let mut gzip = Command::new("gzip");
    // -n: no name or time stamp in the header, so the same pages give the same bytes.
    gzip.arg("-9n");
    for entry in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        gzip.arg(entry?.path());
    }
    cmd::output(&mut gzip).map(drop)
}

fn ensure_cargo_deb() -> Result<()> {
    if cmd::output(cmd::cargo().args(["deb", "--version"])).is_ok() {
        return Ok(());
    }
    eprintln!("cargo-deb is missing: installing it");
    cmd::run(
        cmd::cargo()
            .args(["install", "--locked"])
            .arg(format!("cargo-deb@{CARGO_DEB_VERSION}")),
    )
}
