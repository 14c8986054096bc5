//! `cargo xtask test`: every test tier on the host, in order, failing fast.

use std::time::Duration;

use anyhow::{Result, ensure};

use crate::{
    apt, bootstrap,
    build::{self, Profile, USER_PACKAGE},
    cmd, npm, package,
    suites::{TC_SUITES, TESTS_PACKAGE},
    vm,
};

/// The bench's own tests (its floor program attaches and is found); the
/// benchmarks themselves never run here.
const BENCH_PACKAGE: &str = "balancer-bench";
const COMMON_PACKAGE: &str = "balancer-common";
const STEPS: usize = 6;
/// Why [`apt::SUITES`] are installed.
const WHY: &str = "the test suites need them";

#[derive(clap::Args)]
pub struct Options {
    /// Run the integration suite inside a QEMU VM booting Debian kernel
    /// packages instead of on the host (no root needed on the host).
    #[arg(long)]
    vm: bool,
    /// With --vm: a Debian kernel version to boot (repeatable): `6.1` picks
    /// the newest linux-image-6.1.*-cloud-amd64. Default: 6.1 and 6.12.
    #[arg(long = "kernel", value_name = "VER", requires = "vm")]
    kernels: Vec<String>,
    /// With --vm: the limit on one kernel's run, boot to power-off, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 2700, requires = "vm")]
    vm_timeout: u64,
    /// Arguments for the integration test binaries, after `--` (e.g. a test
    /// name filter, `--nocapture`).
    #[arg(last = true, value_name = "ARGS")]
    args: Vec<String>,
}

pub fn run(opts: &Options) -> Result<()> {
    if opts.vm {
        // The VM runs the host's own `ip`, `ethtool`, `tc`, `promtool`, ...
        apt::ensure(apt::SUITES, WHY)?;
        return vm::run(&vm::Options {
            kernels: &opts.kernels,
            args: &opts.args,
            timeout: Duration::from_secs(opts.vm_timeout),
        });
    }
    ensure!(
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() } == 0,
        "`cargo xtask test` needs root: its BPF_PROG_TEST_RUN and network-namespace tests load \
         BPF programs and create namespaces"
    );
    apt::ensure(apt::SUITES, WHY)?;
    apt::ensure_node()?;
    npm::ensure_socketio_packages()?;
    bootstrap::ensure()?;

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
                "-p",
                BENCH_PACKAGE,
                "--",
                "--test-threads=1",
            ])
            .args(&opts.args)
            .env("BALANCER_BIN", &bin),
    )?;

    step(
        5,
        "the network-namespace suites again, attached as TC programs (mode = \"tc\")",
    );
    let mut tc = cmd::cargo();
    tc.args(["test", "--release", "-p", TESTS_PACKAGE]);
    for suite in TC_SUITES {
        tc.args(["--test", suite]);
    }
    cmd::run(
        tc.args(["--", "--test-threads=1"])
            .args(&opts.args)
            .env("BALANCER_BIN", &bin)
            .env("BALANCER_TEST_MODE", "tc"),
    )?;

    step(
        6,
        "the Debian package: installed with dpkg, checked, purged (balancer-tests, package)",
    );
    let deb = package::build_deb(&bin)?;
    cmd::run(
        cmd::cargo()
            .args([
                "test",
                "--release",
                "-p",
                TESTS_PACKAGE,
                "--test",
                "package",
            ])
            // The test is ignored by default: it installs a package on the host.
            .args(["--", "--ignored"])
            .env("BALANCER_DEB", &deb),
    )?;

    eprintln!("==> all {STEPS} test steps passed");
    Ok(())
}

fn step(n: usize, what: &str) {
    eprintln!("==> [{n}/{STEPS}] {what}");
}
