//! The Debian package of `cargo xtask package`, installed as an operator
//! would: `dpkg -i`, every file where it belongs and working, the unit
//! accepted by `systemd-analyze verify`, `balancer check` passing the
//! installed example config, then `dpkg --purge` leaves nothing
//! behind. Ignored by default: it needs root, dpkg and the .deb, which
//! `cargo xtask test` builds and passes in `BALANCER_DEB`.

use std::{
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use balancer_tests::netns::{NetNs, require_root};

const PACKAGE: &str = "balancer";
const CONFIG: &str = "/etc/balancer/balancer.toml";
const UNIT: &str = "/usr/lib/systemd/system/balancer.service";
const MAN: &str = "/usr/share/man/man1/balancer.1.gz";
const BASH: &str = "/usr/share/bash-completion/completions/balancer";
const ZSH: &str = "/usr/share/zsh/vendor-completions/_balancer";
const FISH: &str = "/usr/share/fish/vendor_completions.d/balancer.fish";
/// How long to wait for another tool's dpkg lock.
const DPKG_LOCK_WAIT: Duration = Duration::from_secs(300);
/// Every file the package must install (and purge).
const FILES: &[&str] = &["/usr/bin/balancer", UNIT, CONFIG, MAN, BASH, ZSH, FISH];

#[test]
#[ignore = "needs root and the .deb: `cargo xtask test` runs it with BALANCER_DEB"]
fn the_deb_installs_works_and_purges_cleanly() {
    require_root();
    let deb = std::env::var("BALANCER_DEB")
        .expect("BALANCER_DEB: the .deb to install (`cargo xtask package` prints it)");
    assert!(
        !installed(),
        "a `{PACKAGE}` package is already installed, and this test would purge it: \
         remove it first (dpkg --purge {PACKAGE})"
    );
    for file in FILES {
        assert!(
            !Path::new(file).exists(),
            "{file} exists before the install"
        );
    }

    let purge = Purge;
    dpkg(&["-i", &deb]);
    assert!(
        installed(),
        "dpkg -i succeeded but {PACKAGE} is not installed"
    );
    for file in FILES {
        assert!(Path::new(file).is_file(), "{file} is not installed");
    }

    let version = run("/usr/bin/balancer", &["--version"]);
    assert!(
        version.starts_with("balancer "),
        "balancer --version: {version}"
    );
    let man = run("gzip", &["-dc", MAN]);
    assert!(man.contains(".TH balancer 1"), "{MAN} is not balancer(1)");
    // The completion files do what each shell loads them for.
    let bash = run(
        "bash",
        &["-c", &format!("source {BASH} && complete -p balancer")],
    );
    assert!(
        bash.contains("-F _balancer balancer"),
        "bash completion: {bash}"
    );
    assert!(read(ZSH).starts_with("#compdef balancer"), "{ZSH}");
    assert!(read(FISH).contains("complete -c balancer"), "{FISH}");

    // dpkg keeps the operator's edits to the config over an upgrade.
    let conffiles = run("dpkg-query", &["-W", "-f=${Conffiles}", PACKAGE]);
    assert!(
        conffiles.contains(CONFIG),
        "{CONFIG} is not a conffile: {conffiles}"
    );
    // The installed unit with the installed binary: syntax, known options,
    // executables present. --man=no: `man` is not on every machine; the page
    // was checked above.
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no", UNIT])
        .output()
        .expect("run systemd-analyze");
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify {UNIT}: {complaints}"
    );

    // `balancer check` on the installed example, where what it names
    // exists: a namespace with its interfaces (eth0, eth1) as a veth pair,
    // and a bpffs on /sys/fs/bpf inside the mount namespace of this
    // `ip netns exec` only (the host's may not be mounted, and stays as it is).
    let ns = NetNs::new("pkg");
    ns.ip([
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ]);
    let check =
        format!("mount -t bpf bpf /sys/fs/bpf && exec /usr/bin/balancer check --config {CONFIG}");
    let ok = ns.command("sh", ["-c", &check]).output().expect("run sh");
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success() && stdout == format!("OK: {CONFIG}: 1 services, 3 backends\n"),
        "balancer check on the installed example ({}): {stdout}{}",
        ok.status,
        String::from_utf8_lossy(&ok.stderr)
    );
    // And it can fail: without eth1, one line naming the key.
    ns.ip(["link", "set", "eth1", "name", "eth9"]);
    let bad = ns.command("sh", ["-c", &check]).output().expect("run sh");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success()
            && stderr
                == "balancer: interfaces.backends: no interface named \"eth1\" in this network namespace\n",
        "balancer check without eth1 ({}): {stderr}",
        bad.status
    );

    drop(purge);
    assert!(
        !installed(),
        "{PACKAGE} is still installed after dpkg --purge"
    );
    for file in FILES {
        assert!(!Path::new(file).exists(), "{file} is left after the purge");
    }
    assert!(
        !Path::new("/etc/balancer").exists(),
        "/etc/balancer is left after the purge"
    );
}

/// `dpkg --purge` on drop: the package never outlives the test, also when an
/// assertion fails.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Best effort, without a second panic that would abort.
            let _ = Command::new("dpkg").args(["--purge", PACKAGE]).status();
        } else {
            dpkg(&["--purge", PACKAGE]);
        }
    }
}

/// `dpkg ARGS`, checked. dpkg refuses to start while another package tool
/// holds its lock (apt run by a neighbouring task on this machine) and has
/// no option to wait, so wait here, for a bounded time.
fn dpkg(args: &[&str]) {
    let deadline = Instant::now() + DPKG_LOCK_WAIT;
    loop {
        let out = Command::new("dpkg").args(args).output().expect("run dpkg");
        if out.status.success() {
            return;
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("lock") && Instant::now() < deadline,
            "dpkg {args:?} failed ({}): {stderr}",
            out.status
        );
        thread::sleep(Duration::from_secs(1));
    }
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", PACKAGE])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Runs `program args`, panics with its stderr unless it succeeds, and
/// returns its stdout.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}
