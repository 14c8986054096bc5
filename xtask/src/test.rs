//! `cargo xtask test`: every test tier on the host, in order, failing fast.

use anyhow::{Result, bail, ensure};

use crate::{
    bootstrap,
    build::{self, Profile, USER_PACKAGE},
    cmd, npm,
};

/// The integration tests (BPF_PROG_TEST_RUN and network namespaces).
const TESTS_PACKAGE: &str = "balancer-tests";
const COMMON_PACKAGE: &str = "balancer-common";
const STEPS: usize = 4;

#[derive(clap::Args)]
pub struct Options {
    /// Run the integration suite inside a QEMU VM instead of on the host
    /// (not implemented yet).
    #[arg(long)]
    vm: bool,
    /// With --vm: a Debian kernel version to boot (repeatable).
    #[arg(long = "kernel", value_name = "VER", requires = "vm")]
    kernels: Vec<String>,
    /// Arguments for the integration test binaries, after `--` (e.g. a test
    /// name filter, `--nocapture`).
    #[arg(last = true, value_name = "ARGS")]
    args: Vec<String>,
}

pub fn run(opts: &Options) -> Result<()> {
    if opts.vm {
        bail!("`cargo xtask test --vm` is not implemented yet");
    }
    ensure!(
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() } == 0,
        "`cargo xtask test` needs root: its BPF_PROG_TEST_RUN and network-namespace tests load \
         BPF programs and create namespaces"
    );
    bootstrap::ensure()?;
    npm::ensure_socketio_packages()?;

    step(1, "host unit tests (balancer-common)");
    cmd::run(cmd::cargo().args(["test", "-p", COMMON_PACKAGE, "--features", "user"]))?;

    step(
        2,
        "unit tests of the daemon (balancer-user, release: builds the kernel object)",
    );
    cmd::run(cmd::cargo().args(["test", "--release", "-p", USER_PACKAGE]))?;

    step(3, "the balancer binary");
    let bin = build::build_balancer(Profile::Release)?;

    step(
        4,
        "BPF_PROG_TEST_RUN, network-namespace and Socket.IO tests (balancer-tests)",
    );
    cmd::run(
        cmd::cargo()
            .args([
                "test",
                "--release",
                "-p",
                TESTS_PACKAGE,
                "--",
                "--test-threads=1",
            ])
            .args(&opts.args)
            .env("BALANCER_BIN", &bin),
    )?;

    eprintln!("==> all {STEPS} test steps passed");
    Ok(())
}

fn step(n: usize, what: &str) {
    eprintln!("==> [{n}/{STEPS}] {what}");
}
