//! `cargo xtask bench [--quick]`: build the release binaries (like `demo`),
//! then run the bench (`bench/`, crate balancer-bench): the data plane per
//! packet against the floor, end to end against nftables, HAProxy and nginx,
//! the L7 path against HAProxy in `mode http`, affinity replication between
//! two gateways, and Maglev at scale. Writes `bench/results/latest.md` (`quick.md` with
//! --quick) and a chart beside it.

use anyhow::{Result, ensure};

use crate::{
    apt, bootstrap,
    build::{self, Profile},
    cmd,
};

/// Debian packages the bench runs: the backends' and the userspace peers'
/// servers, the nftables peer, the load generator, and the tools it reads
/// the interfaces with.
const PACKAGES: &[&str] = &[
    "nginx",
    "libnginx-mod-stream",
    "haproxy",
    "nftables",
    "wrk",
    "iproute2",
    "ethtool",
];

#[derive(clap::Args)]
pub struct Options {
    /// A shorter run (under 2 minutes): fewer rounds, shorter phases,
    /// 100k-entry tables instead of 1M.
    #[arg(long)]
    quick: bool,
    /// Run only this part (repeatable): perpacket, katran (the per-packet
    /// comparison with Katran alone), underload, e2e, proxy (the L7 path
    /// against HAProxy), flood, cluster (affinity replicated between two
    /// gateways), maglev.
    #[arg(long, value_name = "PART")]
    only: Vec<String>,
    /// Katran's balancer.bpf.o, built outside this repository
    /// (bench/README.md): the per-packet part then compares with it.
    /// Default: $BALANCER_BENCH_KATRAN_OBJ; without either, it is skipped.
    #[arg(long, value_name = "PATH")]
    katran: Option<std::path::PathBuf>,
}

pub fn run(opts: &Options) -> Result<()> {
    ensure!(
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() } == 0,
        "`cargo xtask bench` needs root: it creates network namespaces, loads BPF programs and installs the \
         peers from Debian packages"
    );
    apt::ensure(PACKAGES, "the bench runs them")?;
    bootstrap::ensure()?;
    let bin = build::build_balancer(Profile::Release)?;
    let mut cargo = cmd::cargo();
    cargo
        .args(["run", "--release", "-p", "balancer-bench", "--"])
        .env("BALANCER_BIN", &bin);
    if opts.quick {
        cargo.arg("--quick");
    }
    for part in &opts.only {
        cargo.args(["--only", part]);
    }
    if let Some(obj) = &opts.katran {
        cargo.arg("--katran").arg(obj);
    }
    cmd::run(&mut cargo)
}
