//! `cargo xtask test --vm`: the integration suite inside QEMU, booting
//! Debian's cloud kernel packages, so it runs on kernels other than the
//! host's and without root on the host.
//!
//! Per kernel: fetch and unpack the package ([`kernel`]), write a newc
//! initramfs with the test binaries, the balancer, the tools they run and
//! the modules they need ([`guest`], [`initramfs`]), boot it and read the
//! result from the serial console ([`qemu`]).

mod guest;
mod initramfs;
mod kernel;
mod qemu;

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use guest::{Payload, Run};
use qemu::{End, Machine, Transcript};

use crate::{
    apt, bootstrap,
    build::{self, Profile},
    cmd, npm,
    suites::{NODE_SUITES, TC_SUITES, TESTS_PACKAGE},
};

/// What the VM needs on the host beyond the suites' tools: QEMU, the
/// guest's busybox, `modinfo` and `xz` for the kernel package's modules
/// (apt and dpkg-deb, which fetch and unpack it, are always there).
const HOST_PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "kmod", "xz-utils"];
/// Guest memory: the initramfs (about 125 MiB, unpacked into RAM, twice
/// while it unpacks), the tests' namespaces, daemons and Prometheus.
const MEMORY_MIB: u32 = 4096;
/// Modules the topologies need that cloud kernels build as modules:
/// `sch_ingress` (the clsact qdisc) and `cls_bpf` for TC mode on kernels
/// without TCX links.
const MODULES: &[&str] = &["veth", "bridge", "sch_ingress", "cls_bpf"];
/// Tools every integration test binary runs (DESIGN.md, "Test topology
/// conventions").
/// `tc` finds the TC program on kernels without TCX links (before 6.6).
const TOOLS: &[&str] = &["ip", "ethtool", "mount", "umount", "sysctl", "tc"];

/// What the suite leaves out in the VM, and why (docs/operating.md,
/// "Tests in a VM").
struct Exclusion {
    binary: &'static str,
    /// The tests left out; none: the whole binary. A name is a `--skip`
    /// filter: it leaves out every test whose name holds it.
    tests: &'static [&'static str],
    /// `tests` are all the binary's tests that run Node: the rest run
    /// without it.
    all_node_tests: bool,
    why: &'static str,
}

const EXCLUDED: &[Exclusion] = &[
    Exclusion {
        binary: "socketio",
        tests: &[],
        all_node_tests: false,
        why: "Node under TCG emulation is too slow for Socket.IO's heartbeats: sessions see ping \
              and ack timeouts that the suite rightly counts as errors, whatever the balancer does",
    },
    Exclusion {
        binary: "flood",
        tests: &["idle_socketio_sessions_survive_spoofed_handshake_floods"],
        all_node_tests: true,
        why: "60 Node Socket.IO sessions through two spoofed floods: the Socket.IO suite's Node \
              limit under TCG; the same floods over plain-TCP sessions of the same shape \
              (idle_tcp_sessions_survive_spoofed_handshake_floods) run here",
    },
    Exclusion {
        binary: "cluster",
        tests: &[
            "steady_sessions_cross_both_gateways_without_errors",
            "scale_out_with_a_backend_added_on_one_gateway_only",
            "a_gateway_started_later_with_the_same_backends_by_another_history",
            "cluster_leave_moves_sessions_to_the_other_gateway_and_join_brings_it_back",
            "a_dead_gateway_costs_only_the_detection_window",
        ],
        all_node_tests: true,
        why: "30-90 Node Socket.IO sessions through the rig: the Socket.IO suite's Node limit \
              under TCG; the rig itself (BIRD, the router's ECMP) runs here, with plain-TCP \
              sessions in steady_tcp_sessions_cross_both_cluster_gateways_without_errors and \
              a_dead_cluster_gateway_costs_plain_tcp_sessions_only_the_detection_window",
    },
    Exclusion {
        binary: "replicate",
        tests: &[
            "a_runtime_backends_name_routes_its_sessions_on_every_gateway_and_across_restarts",
        ],
        all_node_tests: true,
        why: "its backends are Node Socket.IO servers that mint sid-prefixed session ids, which \
              the guest does not carry (the Socket.IO suite's Node limit under TCG); the cluster \
              messages it relies on are the same on every kernel, and the rest of the suite runs here",
    },
    Exclusion {
        binary: "proxy",
        tests: &[],
        all_node_tests: false,
        why: "every test drives Node Socket.IO sessions (through HAProxy, or roaming between \
              client addresses): the Socket.IO suite's Node limit under TCG, and the guest has no \
              HAProxy",
    },
    Exclusion {
        binary: "module_graph",
        tests: &[],
        all_node_tests: false,
        why: "reads the workspace's sources, not the kernel: the same on every kernel",
    },
    Exclusion {
        binary: "control",
        tests: &["the_control_group_reads_and_only_root_changes"],
        all_node_tests: false,
        why: "the guest has no user database (groupadd, useradd, setpriv) to make the test's \
              group and users in",
    },
];

pub struct Options<'a> {
    /// Kernel versions (`6.1`, `6.12.117+deb12`); empty: [`kernel::DEFAULT`].
    pub kernels: &'a [String],
    /// Arguments for every test binary (a name filter, `--nocapture`).
    pub args: &'a [String],
    /// Bound on one guest run, boot to power-off.
    pub timeout: Duration,
}

pub fn run(opts: &Options) -> Result<()> {
    apt::ensure(HOST_PACKAGES, "the VM needs them")?;
    // Kernels first: a version apt does not know fails before any build.
    let cache = cmd::target_dir()?.join("vm");
    let wanted: Vec<String> = if opts.kernels.is_empty() {
        kernel::DEFAULT.iter().map(|k| k.to_string()).collect()
    } else {
        opts.kernels.to_vec()
    };
    eprintln!("==> [1/3] kernels {}", wanted.join(", "));
    let kernels = wanted
        .iter()
        .map(|w| kernel::fetch(w, &cache))
        .collect::<Result<Vec<_>>>()?;

    bootstrap::ensure()?;
    eprintln!("==> [2/3] the balancer binary and the integration test binaries");
    let balancer = build::build_balancer(Profile::Release)?;
    let binaries = build_test_binaries()?;
    let payload = payload(balancer, binaries, opts.args)?;

    eprintln!("==> [3/3] the suite in QEMU, one boot per kernel");
    let mut reports = Vec::new();
    let mut failed = 0;
    for kernel in &kernels {
        let initrd = cache.join(format!("initramfs-{}.cpio", kernel.release));
        guest::write_initramfs(kernel, &payload, &initrd)?;
        let size = fs::metadata(&initrd).map(|m| m.len() >> 20).unwrap_or(0);
        eprintln!(
            "==> booting {} with {} ({size} MiB)",
            kernel.release,
            initrd.display()
        );
        let machine = Machine {
            kernel: kernel.vmlinuz(),
            initrd,
            memory_mib: MEMORY_MIB,
            cpus: thread::available_parallelism().map_or(1, |n| n.get().min(4)),
            timeout: opts.timeout,
        };
        let start = Instant::now();
        let mut transcript = Transcript::default();
        let end = machine.boot(&mut transcript, |line| eprintln!("{line}"))?;
        let elapsed = start.elapsed();
        let report = match verdict(&transcript, &end, opts.timeout) {
            Ok(passed) => format!(
                "kernel {}: {passed} tests passed in {} s",
                transcript.kernel.as_deref().unwrap_or("?"),
                elapsed.as_secs()
            ),
            Err(why) => {
                failed += 1;
                format!(
                    "kernel {}: FAILED after {} s: {why}",
                    transcript.kernel.as_deref().unwrap_or(&kernel.release),
                    elapsed.as_secs()
                )
            }
        };
        eprintln!("==> {report}");
        reports.push(report);
    }
    eprintln!();
    for report in &reports {
        println!("{report}");
    }
    for e in EXCLUDED {
        let what = match e.tests {
            [] => format!("{} (all of it)", e.binary),
            [test] => format!("{}::{test}", e.binary),
            tests => format!("{}::{{{}}}", e.binary, tests.join(", ")),
        };
        println!("not run in the VM: {what}: {}", e.why);
    }
    if failed > 0 {
        bail!("the suite failed on {failed} of {} kernels", kernels.len());
    }
    Ok(())
}

/// The number of tests that passed, or what went wrong.
fn verdict(t: &Transcript, end: &End, timeout: Duration) -> Result<u32, String> {
    let running = || {
        t.binaries
            .last()
            .filter(|b| b.exit.is_none())
            .map(|b| format!(" in {}", b.name))
            .unwrap_or_default()
    };
    if let Some(step) = &t.setup_failed {
        return Err(format!("guest setup failed: {step}"));
    }
    if let Some(panic) = &t.panic {
        return Err(format!("{panic}{}", running()));
    }
    let mut problems = Vec::new();
    for b in &t.binaries {
        problems.extend(b.failures.iter().map(|f| format!("{}::{f}", b.name)));
        match b.exit {
            Some(0) => {}
            Some(code) if b.failures.is_empty() => {
                problems.push(format!("{} exited with {code}", b.name))
            }
            _ => {}
        }
    }
    let done = match (end, t.done) {
        (_, Some(status)) => Ok(status),
        (End::TimedOut, None) => Err(format!(
            "timed out after {} s{}",
            timeout.as_secs(),
            running()
        )),
        (End::Exited, None) => Err(format!(
            "the guest stopped before the suite finished{}; its last lines:\n{}",
            running(),
            tail(t)
        )),
    };
    let failed: u32 = t.binaries.iter().map(|b| b.failed).sum();
    let passed: u32 = t.binaries.iter().map(|b| b.passed).sum();
    let list = problems
        .iter()
        .map(|p| format!("\n    {p}"))
        .collect::<String>();
    match done {
        Err(why) if problems.is_empty() => Err(why),
        Err(why) => Err(format!("{why}; failed before that:{list}")),
        Ok(_) if failed > 0 => Err(format!(
            "{failed} of {} tests failed:{list}",
            passed + failed
        )),
        Ok(_) if !problems.is_empty() => Err(format!("a test binary failed:{list}")),
        Ok(0) if passed > 0 => Ok(passed),
        Ok(0) => Err("no test ran (does the filter match any?)".to_owned()),
        Ok(status) => Err(format!("the guest reported status {status}")),
    }
}

fn tail(t: &Transcript) -> String {
    t.tail
        .iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Everything that goes into the guest, and the runs of its init.
fn payload(
    balancer: PathBuf,
    binaries: Vec<(String, PathBuf)>,
    args: &[String],
) -> Result<Payload> {
    let mut runs = Vec::new();
    for (name, binary) in binaries {
        if EXCLUDED
            .iter()
            .any(|e| e.binary == name && e.tests.is_empty())
        {
            continue;
        }
        let mut all = vec!["--test-threads=1".to_owned()];
        for e in EXCLUDED.iter().filter(|e| e.binary == name) {
            for test in e.tests {
                all.extend(["--skip".to_owned(), (*test).to_owned()]);
            }
        }
        all.extend(args.iter().cloned());
        if TC_SUITES.contains(&name.as_str()) {
            runs.push(Run {
                label: format!("{name}@tc"),
                name: name.clone(),
                mode: Some("tc"),
                binary: binary.clone(),
                args: all.clone(),
            });
        }
        runs.push(Run {
            label: name.clone(),
            name,
            mode: None,
            binary,
            args: all,
        });
    }
    let runs_binary = |name: &str| runs.iter().any(|r| r.name == name);
    let mut tools: Vec<&str> = TOOLS.to_vec();
    let mut modules = MODULES.to_vec();
    let mut dirs = Vec::new();
    if runs_binary("control")
        && !EXCLUDED
            .iter()
            .any(|e| e.tests.contains(&"prometheus_scrapes_the_metrics"))
    {
        tools.extend(["promtool", "prometheus"]);
    }
    // The cluster rig and the IPv6 BIRD check: BIRD on the router and the gateways (their control
    // sockets and pid files go in the tests' temp dirs, on the guest's
    // writable root), and the router's nftables record of which gateway
    // carried each SYN.
    if runs_binary("cluster") || runs_binary("bird6") {
        tools.extend(["bird", "birdc", "nft"]);
        modules.push("nf_tables");
    }
    // The alert rules and the dashboard, which the scrape test's Prometheus
    // loads and the deploy suite checks, and the BIRD configs the cluster
    // rig runs.
    if ["control", "deploy", "cluster", "bird6"]
        .iter()
        .any(|b| runs_binary(b))
    {
        dirs.push(cmd::workspace_root().join("deploy"));
    }
    // `flood` and `cluster` run here without their Node tests (see
    // EXCLUDED): the rest need no Node.
    let runs_node = |name: &str| {
        runs_binary(name)
            && !EXCLUDED
                .iter()
                .any(|e| e.binary == name && e.all_node_tests)
    };
    if NODE_SUITES.iter().any(|s| runs_node(s)) {
        npm::ensure_socketio_packages()?;
        tools.push("node");
        dirs.push(cmd::workspace_root().join(npm::SOCKETIO_DIR));
    }
    let tools = tools
        .iter()
        .map(|t| {
            guest::find_program(t)
                .with_context(|| format!("the tests in the VM run `{t}` from the host"))
        })
        .collect::<Result<_>>()?;
    Ok(Payload {
        balancer,
        runs,
        tools,
        dirs,
        modules,
    })
}

/// `cargo test --no-run` of the integration tests; their names and
/// executables, from cargo's JSON messages.
fn build_test_binaries() -> Result<Vec<(String, PathBuf)>> {
    let mut cargo = cmd::cargo();
    cargo.args([
        "test",
        "--release",
        "-p",
        TESTS_PACKAGE,
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    eprintln!("$ {}", cmd::display(&cargo));
    let mut child = cargo
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start cargo")?;
    let mut binaries = Vec::new();
    for line in BufReader::new(child.stdout.take().expect("piped stdout")).lines() {
        let message: serde_json::Value =
            serde_json::from_str(&line?).context("cargo printed a line that is not JSON")?;
        let test = message["reason"] == "compiler-artifact" && message["profile"]["test"] == true;
        if let (true, Some(name), Some(exe)) = (
            test,
            message["target"]["name"].as_str(),
            message["executable"].as_str(),
        ) {
            binaries.push((name.to_owned(), PathBuf::from(exe)));
        }
    }
    let status = child.wait()?;
    ensure!(
        status.success(),
        "building the test binaries failed ({status})"
    );
    ensure!(
        !binaries.is_empty(),
        "cargo built no test binary of {TESTS_PACKAGE}"
    );
    binaries.sort();
    Ok(binaries)
}

#[cfg(test)]
mod tests {
    use super::{qemu::BinaryRun, *};

    fn run(name: &str, exit: i32, passed: u32, failures: &[&str]) -> BinaryRun {
        BinaryRun {
            name: name.into(),
            exit: Some(exit),
            passed,
            failed: failures.len() as u32,
            failures: failures.iter().map(|f| f.to_string()).collect(),
            ..BinaryRun::default()
        }
    }

    #[test]
    fn verdicts() {
        let limit = Duration::from_secs(60);
        let mut t = Transcript::default();
        t.done = Some(0);
        t.binaries = vec![run("a", 0, 3, &[]), run("b", 0, 2, &[])];
        assert_eq!(verdict(&t, &End::Exited, limit), Ok(5));

        t.binaries.push(run("c", 101, 1, &["c_breaks"]));
        t.done = Some(1);
        assert_eq!(
            verdict(&t, &End::Exited, limit),
            Err("1 of 7 tests failed:\n    c::c_breaks".into())
        );

        t.binaries[2] = run("c", 139, 0, &[]);
        assert_eq!(
            verdict(&t, &End::Exited, limit),
            Err("a test binary failed:\n    c exited with 139".into())
        );

        t.binaries[2].exit = None;
        t.done = None;
        assert_eq!(
            verdict(&t, &End::TimedOut, limit),
            Err("timed out after 60 s in c".into())
        );

        let mut empty = Transcript::default();
        empty.done = Some(0);
        assert!(verdict(&empty, &End::Exited, limit).is_err());
    }
}
