//! What an operator reads about a running balancer besides its metrics:
//! `balancer --version` (version, git revision, kernel object hash) and the
//! daemon's logs as JSON lines, through the real binary.

use std::{net::SocketAddr, process::Stdio};

use balancer_tests::{
    Topology, TopologyOpts,
    bpffs::TempBpffs,
    daemon::{Daemon, backends_toml, balancer_bin, config_head},
    require_root, tcp_whoami,
    topology::VIP_V4,
};
use balancer_user::version;

#[test]
fn version_names_the_revision_and_the_kernel_object() {
    let out = std::process::Command::new(balancer_bin())
        .arg("--version")
        .output()
        .expect("run balancer --version");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    // The binary under test and this test were built from the same tree
    // with the same kernel object.
    let want = format!(
        "balancer {} (git {}, bpf {})\n",
        version::VERSION,
        version::GIT,
        version::bpf_hash()
    );
    assert_eq!(text, want);
    let bpf = version::bpf_hash();
    assert!(
        bpf.len() == 16 && bpf.bytes().all(|b| b.is_ascii_hexdigit()),
        "the binary holds a real kernel object: {text}"
    );
    // A short revision with an optional -dirty; from a git checkout, the
    // checkout's own (a tarball build says `unknown`).
    let git = version::GIT;
    let rev = git.strip_suffix("-dirty").unwrap_or(git);
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    match head {
        Some(head) => assert_eq!(rev, head, "{text}"),
        None => assert!(
            git == "unknown" || (rev.len() >= 7 && rev.bytes().all(|b| b.is_ascii_hexdigit())),
            "{text}"
        ),
    }
    println!("--version: {}", text.trim_end());
}

/// Every line of `logs` as JSON; panics on one that is not.
fn json_lines(logs: &str) -> Vec<serde_json::Value> {
    logs.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}")))
        .collect()
}

#[test]
fn log_format_json_writes_one_object_per_line_at_the_chosen_level() {
    require_root();
    let topo = Topology::new(&TopologyOpts {
        backends: 1,
        ..TopologyOpts::default()
    });
    let bpffs = TempBpffs::new();
    let backend = &topo.backends()[0];
    let _server = tcp_whoami(backend.ns(), backend.name(), 3000);
    let config = format!(
        "{}\n[[services]]\nname = \"web\"\nvip = \"{VIP_V4}:80\"\n\
         [services.health]\ncheck = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\n{}",
        config_head(&bpffs, "127.0.0.1:9102"),
        backends_toml([SocketAddr::new(backend.v4().into(), 3000)]),
    );
    let start = |args: &[&str]| {
        let mut d = Daemon::start_with(
            topo.gw(),
            &config,
            &bpffs.pin_dir(),
            &[],
            args,
            &[],
            Stdio::piped(),
        );
        d.wait_serving(topo.gw(), &bpffs.control_socket());
        d
    };

    // The balancer's own debug lines (aya's would fill the pipe with one
    // line per relocation): the start, each health check and the stop,
    // all JSON.
    let daemon = start(&[
        "--log-format",
        "json",
        "--log-level",
        "info,balancer_user=debug",
    ]);
    std::thread::sleep(std::time::Duration::from_millis(700));
    let (status, logs) = daemon.stop_logs();
    assert!(status.success(), "{status}\n{logs}");
    let lines = json_lines(&logs);
    let balancing = lines
        .iter()
        .find(|l| l["message"] == "balancing")
        .unwrap_or_else(|| panic!("no `balancing` line:\n{logs}"));
    assert_eq!(balancing["level"], "INFO");
    assert_eq!(balancing["service"], "web");
    assert!(balancing["timestamp"].is_string(), "{balancing}");
    let checks = lines
        .iter()
        .filter(|l| l["message"] == "health check" && l["level"] == "DEBUG")
        .count();
    assert!(checks >= 2, "debug health-check lines: {checks}\n{logs}");
    assert!(
        lines
            .iter()
            .any(|l| l["message"].as_str().unwrap_or("").starts_with("stopping")),
        "{logs}"
    );

    // warn: a clean start and stop say nothing at all.
    let daemon = start(&["--log-format", "json", "--log-level", "warn"]);
    let (status, logs) = daemon.stop_logs();
    assert!(status.success(), "{status}\n{logs}");
    let below_warn: Vec<_> = json_lines(&logs)
        .into_iter()
        .filter(|l| l["level"] != "WARN" && l["level"] != "ERROR")
        .collect();
    assert!(below_warn.is_empty(), "{below_warn:?}");
    println!(
        "--log-format json: {} lines at info,balancer_user=debug, {checks} of them health checks; none below warn at warn",
        lines.len()
    );
}
