//! Debian packages the tasks run (the suites' tools, the VM's QEMU, the
//! bench's peers), installed with apt where missing, so a fresh machine
//! needs nothing by hand. One line per install; apt's own output only when
//! it fails, as one line naming the package.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Command, Output},
};

use anyhow::{Result, bail, ensure};

/// What the network-namespace suites and the demo run: `ip` and `tc`,
/// `ethtool` (veth offloads), `bpftool`, `nft`, `ping`, `promtool` and
/// `prometheus` (the metrics tests check and scrape `/metrics`), and
/// `systemd-analyze` (the package test verifies the installed unit),
/// `bird` (the cluster suite's router and gateways speak BGP), and
/// `haproxy` (the proxy suite's CDN).
pub const SUITES: &[&str] = &[
    "bird2",
    "haproxy",
    "iproute2",
    "ethtool",
    "bpftool",
    "nftables",
    "iputils-ping",
    "prometheus",
    "systemd",
];

/// Installs the packages of `packages` that dpkg does not list as installed;
/// `why` ends the line that says so (`the test suites need them`).
pub fn ensure(packages: &[&str], why: &str) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    install(&missing, why)
}

/// Node.js and npm for the Socket.IO suite, from Debian when `node` or `npm`
/// is not on PATH. Only then: a NodeSource `nodejs` bundles npm, and Debian's
/// separate `npm` package would conflict with it.
pub fn ensure_node() -> Result<()> {
    let on_path = |tool: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if on_path("node") && on_path("npm") {
        return Ok(());
    }
    install(&["nodejs", "npm"], "the Socket.IO suite runs Node.js")
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn install(missing: &[&str], why: &str) -> Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    ensure!(
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() } == 0,
        "{list} missing ({why}): run as root, or `apt-get install {list}`"
    );
    eprintln!("installing from Debian: {list} ({why})");
    let _policy = NoServiceStarts::new()?;
    let update = apt(&["update"])?;
    if !update.status.success() {
        bail!(
            "cannot update Debian's package lists: {}",
            last_error(&update)
        );
    }
    if apt_install(missing)?.status.success() {
        return Ok(());
    }
    // apt refuses the whole set for one bad package: find which, so the
    // error names it.
    for package in missing.iter().filter(|p| !installed(p)) {
        let out = apt_install(&[package])?;
        if !out.status.success() {
            bail!("cannot install {package} from Debian: {}", last_error(&out));
        }
    }
    Ok(())
}

fn apt_install(packages: &[&str]) -> Result<Output> {
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend(packages);
    apt(&args)
}

/// `apt-get -q ARGS`, its output captured: it is shown only on failure.
fn apt(args: &[&str]) -> Result<Output> {
    Ok(Command::new("apt-get")
        .arg("-q")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()?)
}

/// apt's last `E:` line, else its last line.
fn last_error(out: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .rfind(|l| l.starts_with("E: "))
        .map(|l| &l[3..])
        .or(lines.last().copied())
        .unwrap_or("apt-get failed and printed nothing")
        .to_owned()
}

/// While it lives, package scripts may not start services on the host
/// (nginx would take port 80 of the root namespace, prometheus port 9090):
/// a policy-rc.d that says no, the way Debian's container images do. One
/// already there is left as it is.
struct NoServiceStarts {
    ours: bool,
}

const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

impl NoServiceStarts {
    fn new() -> Result<Self> {
        let policy = Path::new(POLICY_RC_D);
        if policy.exists() {
            return Ok(Self { ours: false });
        }
        fs::write(policy, "#!/bin/sh\nexit 101\n")?;
        fs::set_permissions(policy, fs::Permissions::from_mode(0o755))?;
        Ok(Self { ours: true })
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if self.ours {
            let _ = fs::remove_file(POLICY_RC_D);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{os::unix::process::ExitStatusExt as _, process::ExitStatus};

    use super::*;

    fn output(stdout: &str, stderr: &str) -> Output {
        Output {
            status: ExitStatus::from_raw(100 << 8),
            stdout: stdout.into(),
            stderr: stderr.into(),
        }
    }

    #[test]
    fn the_error_is_apts_last_e_line() {
        let out = output(
            "Reading package lists...\n",
            "E: Unable to locate package nosuch\nW: something after\n",
        );
        assert_eq!(last_error(&out), "Unable to locate package nosuch");
        assert_eq!(last_error(&output("a\nlast\n\n", "")), "last");
        assert_eq!(
            last_error(&output("", "")),
            "apt-get failed and printed nothing"
        );
    }
}
