//! The peers and the load generator come from Debian's packages: the bench
//! installs whatever is missing, so a fresh machine needs nothing by hand.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, ensure};

/// Debian packages the bench runs: the backends' and the userspace peers'
/// servers, the nftables peer, the load generator, and the tools it reads
/// the interfaces with.
pub const PACKAGES: &[&str] = &[
    "nginx",
    "libnginx-mod-stream",
    "haproxy",
    "nftables",
    "wrk",
    "iproute2",
    "ethtool",
];

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// apt-get install what is missing. Package scripts must not start the
/// services on the host (nginx would take port 80 of the root namespace):
/// a temporary policy-rc.d says no, the way Debian's container images do.
pub fn ensure() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing from Debian: {}", missing.join(" "));
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let own_policy = !policy.exists();
    if own_policy {
        std::fs::write(policy, "#!/bin/sh\nexit 101\n")?;
        std::fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    let result = (|| {
        let update = Command::new("apt-get")
            .args(["update", "-qq"])
            .stdout(std::process::Stdio::from(std::io::stderr()))
            .status()
            .context("run apt-get update")?;
        ensure!(update.success(), "apt-get update failed");
        let status = Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            // stdout carries the report; apt's chatter goes with the progress lines.
            .stdout(std::process::Stdio::from(std::io::stderr()))
            .status()
            .context("run apt-get install")?;
        ensure!(
            status.success(),
            "apt-get install {} failed",
            missing.join(" ")
        );
        Ok(())
    })();
    if own_policy {
        let _ = std::fs::remove_file(policy);
    }
    result
}
