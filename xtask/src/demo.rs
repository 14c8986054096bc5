//! `cargo xtask demo`: build what is needed, then run the demo
//! (`tests/examples/demo.rs`): a throwaway namespace topology, the balancer,
//! client traffic, and the status page, until Ctrl-C.

use anyhow::{Result, ensure};

use crate::{
    apt, bootstrap,
    build::{self, Profile},
    cmd,
};

pub fn run() -> Result<()> {
    ensure!(
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() } == 0,
        "`cargo xtask demo` needs root: it creates network namespaces and loads XDP programs"
    );
    // The topology runs `ip` and `ethtool`, like the suites.
    apt::ensure(&["iproute2", "ethtool"], "the demo runs them")?;
    bootstrap::ensure()?;
    let bin = build::build_balancer(Profile::Release)?;
    cmd::run(
        cmd::cargo()
            .args([
                "run",
                "--release",
                "-p",
                "balancer-tests",
                "--example",
                "demo",
            ])
            .env("BALANCER_BIN", &bin),
    )
}
