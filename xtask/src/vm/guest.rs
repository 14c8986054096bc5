//! What the guest holds: the test binaries and the balancer, the host's own
//! tools the tests run (`ip`, `ethtool`, ...) with every shared library they
//! load and the dynamic loader, the kernel's modules the tests need
//! (decompressed), busybox for the init and its few commands, and the init
//! itself: a shell script that sets the machine up, runs each test binary
//! and reports on the serial console.

use std::{
    collections::BTreeSet,
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};

use super::{initramfs::Tree, kernel::Kernel, qemu::MARKER};

/// The guest's own directory: binaries under test, modules, busybox links.
const XTASK: &str = "/xtask";
/// Where the `balancer` binary is in the guest (`BALANCER_BIN`).
pub const BALANCER: &str = "/xtask/bin/balancer";

/// One test binary to run, with its arguments.
pub struct Run {
    /// The test target's name (`gateway`, `xdp_test_run`).
    pub name: String,
    /// How results name this run: the target's name, `@tc` added for the
    /// run in TC mode.
    pub label: String,
    /// `BALANCER_TEST_MODE` for this run (`None`: the default, XDP).
    pub mode: Option<&'static str>,
    /// The executable on the host.
    pub binary: PathBuf,
    pub args: Vec<String>,
}

/// Everything that goes into the guest besides the kernel's modules.
pub struct Payload {
    pub balancer: PathBuf,
    pub runs: Vec<Run>,
    /// Host programs the tests run, by absolute path (found on PATH).
    pub tools: Vec<PathBuf>,
    /// Host directories copied to the same path (the Socket.IO suite's
    /// scripts and packages, which the tests find at their build path).
    pub dirs: Vec<PathBuf>,
    /// Kernel modules to load (dependencies are found and loaded first).
    pub modules: Vec<&'static str>,
}

/// Builds the initramfs for `kernel` at `out`.
pub fn write_initramfs(kernel: &Kernel, payload: &Payload, out: &Path) -> Result<()> {
    let mut tree = Tree::new();
    let mut elves: Vec<PathBuf> = vec![payload.balancer.clone()];
    tree.add_host_file_as(BALANCER, &payload.balancer)?;
    // A binary that runs in both modes goes in once.
    let mut added = BTreeSet::new();
    for run in &payload.runs {
        if !added.insert(run.name.as_str()) {
            continue;
        }
        tree.add_host_file_as(guest_test_path(&run.name), &run.binary)?;
        elves.push(run.binary.clone());
    }
    let busybox = find_program("busybox")?;
    for tool in payload.tools.iter().chain([&busybox]) {
        tree.add_host_path(tool)?;
        elves.push(tool.clone());
    }
    let mut libraries = BTreeSet::new();
    for elf in &elves {
        libraries.extend(shared_libraries(elf)?);
    }
    for library in &libraries {
        tree.add_host_path(library)?;
    }
    for dir in &payload.dirs {
        tree.add_host_path(dir)?;
    }

    let modules = kernel.modules_for(&payload.modules)?;
    for module in &modules {
        tree.add_data(
            format!("{XTASK}/modules/{}.ko", module.name),
            module.object()?,
            0o644,
        )?;
    }
    let names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();

    tree.add_data("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644)?;
    tree.add_data("/etc/group", "root:x:0:\n", 0o644)?;
    tree.add_data("/etc/hosts", "127.0.0.1 localhost\n::1 localhost\n", 0o644)?;
    tree.insert("/root", super::initramfs::Entry::Dir)?;
    tree.add_data("/init", init_script(&busybox, &names, &payload.runs), 0o755)?;
    tree.write_to_file(out)
}

fn guest_test_path(name: &str) -> String {
    format!("{XTASK}/tests/{name}")
}

/// The init: busybox's shell, so it needs nothing else to start.
fn init_script(busybox: &Path, modules: &[&str], runs: &[Run]) -> String {
    let mut s = format!(
        r#"#!{busybox} sh
# The guest's init, written by `cargo xtask test --vm`: sets the machine up,
# runs each test binary, and reports to the host on the serial console in
# lines that start with {MARKER}.
{busybox} mkdir -p {XTASK}/busybox
{busybox} --install -s {XTASK}/busybox
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{XTASK}/busybox

say() {{ echo "{MARKER} $*"; }}
fail() {{ say setup-failed "$*"; poweroff -f; sleep 1000000; }}

# The initramfs is already a writable tmpfs: /run and /tmp stay on it, so
# nothing hides a workspace that lives below them.
mkdir -p /proc /sys /dev /run /tmp /var
mount -t proc proc /proc || fail mount /proc
mount -t sysfs sysfs /sys || fail mount /sys
mount -t devtmpfs devtmpfs /dev || fail mount /dev
ln -s /run /var/run
mount -t bpf bpf /sys/fs/bpf || fail mount bpffs
mount -t cgroup2 cgroup2 /sys/fs/cgroup || fail mount cgroup2
"#,
        busybox = busybox.display()
    );
    for module in modules {
        s.push_str(&format!(
            "insmod {XTASK}/modules/{module}.ko || fail insmod {module}\n"
        ));
    }
    s.push_str(&format!(
        r#"ip link set lo up || fail ip link set lo up
say kernel "$(uname -r)"

export BALANCER_BIN={BALANCER} RUST_BACKTRACE=1 TMPDIR=/tmp HOME=/root
cd /tmp
status=0
"#
    ));
    for run in runs {
        let args: Vec<String> = run.args.iter().map(|a| shell_quote(a)).collect();
        s.push_str(&format!(
            "say run {name}\n{env}{path} {args}\nrc=$?\nsay exit {name} $rc\n[ $rc -eq 0 ] || status=1\n",
            name = run.label,
            env = run.mode.map(|m| format!("BALANCER_TEST_MODE={m} ")).unwrap_or_default(),
            path = guest_test_path(&run.name),
            args = args.join(" ")
        ));
    }
    s.push_str("say done $status\nsync\npoweroff -f\nsleep 1000000\n");
    s
}

fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// `name` on PATH (and in the sbin directories a non-root PATH may lack).
pub fn find_program(name: &str) -> Result<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("`{name}` is not installed"))
}

/// The shared libraries and the loader that `elf` loads, as `ldd` finds
/// them; none for a static binary.
fn shared_libraries(elf: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(elf)
        .output()
        .context("cannot run ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if text.contains("not a dynamic executable") || stderr.contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed: {}", elf.display(), stderr.trim());
    }
    parse_ldd(&text).with_context(|| format!("ldd {}", elf.display()))
}

fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut libraries = Vec::new();
    for line in text.lines().map(str::trim) {
        let path = match line.split_once("=>") {
            Some((name, found)) => {
                let found = found.trim();
                ensure!(!found.starts_with("not found"), "{} not found", name.trim());
                found.split_whitespace().next().unwrap_or("")
            }
            None => line.split_whitespace().next().unwrap_or(""),
        };
        // linux-vdso.so.1 comes from the kernel, and has no path.
        if path.starts_with('/') {
            libraries.push(PathBuf::from(path));
        }
    }
    Ok(libraries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_libraries_and_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibbpf.so.1 => /lib/x86_64-linux-gnu/libbpf.so.1 (0x00007f1)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f3)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libbpf.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(parse_ldd("\tlibgone.so.3 => not found\n").is_err());
    }

    #[test]
    fn the_init_loads_modules_in_order_and_reports_each_binary() {
        let run = |label: &str, mode| Run {
            label: label.into(),
            name: "gateway".into(),
            mode,
            binary: "/h/gateway-1".into(),
            args: vec!["--skip".into(), "it's".into()],
        };
        let runs = [run("gateway", None), run("gateway@tc", Some("tc"))];
        let script = init_script(
            Path::new("/usr/bin/busybox"),
            &["llc", "stp", "bridge"],
            &runs,
        );
        assert!(script.starts_with("#!/usr/bin/busybox sh\n"));
        let llc = script.find("insmod /xtask/modules/llc.ko").unwrap();
        let bridge = script.find("insmod /xtask/modules/bridge.ko").unwrap();
        assert!(llc < bridge);
        assert!(script.contains("say run gateway\n/xtask/tests/gateway '--skip' 'it'\\''s'\nrc=$?\nsay exit gateway $rc\n"));
        assert!(script.contains(
            "say run gateway@tc\nBALANCER_TEST_MODE=tc /xtask/tests/gateway '--skip' 'it'\\''s'\n"
        ));
        assert!(script.contains("say done $status\n"));
    }
}
