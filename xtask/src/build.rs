//! `cargo xtask build`: prerequisites, then the `balancer` binary (whose
//! build.rs builds the kernel object with the nightly toolchain).

use std::path::PathBuf;

use anyhow::{Result, ensure};

use crate::{bootstrap, cmd};

/// The userspace crate, and the binary it builds.
pub const USER_PACKAGE: &str = "balancer-user";
pub const BINARY: &str = "balancer";

#[derive(clap::Args)]
pub struct Options {
    /// Build the userspace binary without optimisations (target/debug/balancer).
    /// The kernel object is always built optimised.
    #[arg(long)]
    debug: bool,
}

#[derive(Clone, Copy)]
pub enum Profile {
    Debug,
    Release,
}

pub fn run(opts: &Options) -> Result<()> {
    bootstrap::ensure()?;
    let profile = if opts.debug {
        Profile::Debug
    } else {
        Profile::Release
    };
    let bin = build_balancer(profile)?;
    println!("balancer binary: {}", bin.display());
    Ok(())
}

/// Builds balancer-user (kernel object included) and returns the absolute path
/// of the `balancer` binary.
pub fn build_balancer(profile: Profile) -> Result<PathBuf> {
    let mut cargo = cmd::cargo();
    cargo.args(["build", "-p", USER_PACKAGE]);
    let dir = match profile {
        Profile::Debug => "debug",
        Profile::Release => {
            cargo.arg("--release");
            "release"
        }
    };
    cmd::run(&mut cargo)?;
    let bin = cmd::target_dir()?.join(dir).join(BINARY);
    ensure!(
        bin.is_file(),
        "the build succeeded but {} is not there",
        bin.display()
    );
    Ok(bin)
}
