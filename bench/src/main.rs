//! `cargo xtask bench [--quick]`: the balancer's data plane against the
//! physical floor, end to end against the peers users pick today, the L7
//! path against HAProxy (issue 19), and at scale (issue 7; the method is
//! DESIGN.md's "Performance method").
//!
//! Needs root: it builds the harness's namespace topology, loads BPF
//! programs and starts servers in the namespaces. Everything it creates is
//! removed when it ends, also on failure and on Ctrl-C. Never part of
//! `cargo xtask test`: no test asserts on time.

mod bpf;
mod cluster;
mod cluster_report;
mod cpu;
mod e2e;
mod fill;
mod flood;
mod gateways;
mod katran;
mod l7;
mod machine;
mod maglev;
mod peer;
mod perpacket;
mod pinned;
mod proc;
mod progs;
mod proxy;
mod proxy_report;
mod report;
mod stop;
mod summary;
mod testbed;
mod traffic;
mod underload;
mod wrk;

use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{machine::Machine, report::Report, testbed::Testbed, traffic::PhaseLimits};

const USAGE: &str = "usage: balancer-bench [--quick] [--only perpacket|katran|underload|e2e|proxy|flood|cluster|maglev]... \
     [--katran PATH] [--out DIR]";

/// The parts `--only` selects. `katran` is the comparison with Katran,
/// which `perpacket` includes.
const PARTS: [&str; 8] = [
    "perpacket",
    "katran",
    "underload",
    "e2e",
    "proxy",
    "flood",
    "cluster",
    "maglev",
];

struct Args {
    quick: bool,
    only: Vec<String>,
    /// Katran's balancer.bpf.o (else from the environment, else skipped).
    katran: Option<PathBuf>,
    out: PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        quick: false,
        only: Vec::new(),
        katran: None,
        out: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.quick = true,
            "--only" => args.only.push(it.next().context(USAGE)?),
            "--katran" => args.katran = Some(it.next().context(USAGE)?.into()),
            "--out" => args.out = it.next().context(USAGE)?.into(),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    for o in &args.only {
        anyhow::ensure!(
            PARTS.contains(&o.as_str()),
            "unknown section {o:?}\n{USAGE}"
        );
    }
    Ok(args)
}

/// The comparison with Katran: issue 16's three rounds, phases as the
/// per-packet part's.
fn peer_options(pp: &perpacket::Options) -> peer::Options {
    peer::Options {
        rounds: 3,
        phase: pp.phase,
        new_clients: pp.new_clients,
    }
}

/// How long each part runs: the full run fits 15 minutes on 2 cores,
/// `--quick` 2 minutes.
struct Plan {
    per_packet: perpacket::Options,
    peer: peer::Options,
    under_load: underload::Options,
    e2e: e2e::Options,
    /// The L7 path against HAProxy: timed as end to end.
    proxy: e2e::Options,
    flood: flood::Options,
    cluster: cluster::Options,
    maglev_sizes: Vec<(u32, u32)>,
    maglev_repeats: usize,
}

fn options(quick: bool) -> Plan {
    let sizes = vec![
        (1000, 65537),
        (1000, 655373),
        (10000, 65537),
        (10000, 655373),
    ];
    if quick {
        let pp = perpacket::Options {
            rounds: 2,
            phase: PhaseLimits {
                time: Duration::from_millis(250),
                frames: 500_000,
                per_second: None,
            },
            new_clients: 20_000,
            test_run_repeat: 200_000,
            fill_entries: 100_000,
        };
        let e2e = e2e::Options {
            rounds: 1,
            duration: Duration::from_secs(2),
            warmup: Duration::from_secs(1),
        };
        let under_load = underload::Options {
            rounds: 1,
            duration: Duration::from_secs(2),
        };
        let flood = flood::Options {
            duration: Duration::from_secs(2),
            warmup: Duration::from_secs(1),
            rate: 50_000,
        };
        let cluster = cluster::Options {
            rates: vec![Some(20_000), Some(100_000), None],
            cost_rounds: 1,
            cost_frames: 5_000,
        };
        Plan {
            per_packet: pp,
            peer: peer_options(&pp),
            under_load,
            e2e,
            proxy: e2e,
            flood,
            cluster,
            maglev_sizes: sizes,
            maglev_repeats: 1,
        }
    } else {
        let pp = perpacket::Options {
            rounds: 5,
            phase: PhaseLimits {
                time: Duration::from_secs(1),
                frames: 2_000_000,
                per_second: None,
            },
            new_clients: traffic::NEW_CLIENTS - 1000,
            test_run_repeat: 1_000_000,
            fill_entries: balancer_common::maps::MAX_FLOWS as usize,
        };
        let e2e = e2e::Options {
            rounds: 3,
            duration: Duration::from_secs(8),
            warmup: Duration::from_secs(1),
        };
        let under_load = underload::Options {
            rounds: 3,
            duration: Duration::from_secs(3),
        };
        // The rate of the flood issue 16 was found with.
        let flood = flood::Options {
            duration: Duration::from_secs(6),
            warmup: Duration::from_secs(1),
            rate: 100_000,
        };
        Plan {
            per_packet: pp,
            peer: peer_options(&pp),
            under_load,
            e2e,
            // Six gateways: five rounds of shorter runs (the machine's
            // scheduling moves single runs by ±10%, and a median of five
            // ratios holds still better than one of three) keep the part
            // near 5.5 minutes.
            proxy: e2e::Options {
                rounds: 5,
                duration: Duration::from_secs(4),
                ..e2e
            },
            flood,
            cluster: cluster::Options {
                rates: vec![
                    Some(10_000),
                    Some(20_000),
                    Some(50_000),
                    Some(100_000),
                    Some(200_000),
                    None,
                ],
                cost_rounds: 3,
                cost_frames: 8_000,
            },
            maglev_sizes: sizes,
            maglev_repeats: 5,
        }
    }
}

fn run(args: &Args) -> Result<()> {
    balancer_tests::require_root();
    stop::install();
    let start = Instant::now();
    let machine = Machine::describe();
    let plan = options(args.quick);
    let wants = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    let mut command = String::from("cargo xtask bench");
    if args.quick {
        command.push_str(" --quick");
    }
    for o in &args.only {
        command.push_str(&format!(" --only {o}"));
    }
    if let Some(k) = &args.katran {
        command.push_str(&format!(" --katran {}", k.display()));
    }

    let maglev = if wants("maglev") {
        eprintln!("==> Maglev tables");
        Some(maglev::run(&plan.maglev_sizes, plan.maglev_repeats)?)
    } else {
        None
    };
    let mut per_packet = None;
    let mut against_katran = None;
    let mut under_load = None;
    let mut e2e = None;
    let mut proxy = None;
    let mut flood = None;
    let mut cluster = None;
    // Every part but the Maglev one runs on the testbed.
    if PARTS.iter().any(|&s| s != "maglev" && wants(s)) {
        eprintln!("==> building the testbed (namespaces, nginx on the backends)");
        let bed = Testbed::new()?;
        if wants("perpacket") {
            eprintln!("==> data plane, per packet");
            per_packet = Some(perpacket::run(&bed, &plan.per_packet)?);
        }
        if wants("perpacket") || wants("katran") {
            against_katran = Some(match peer::object(args.katran.as_deref()) {
                Some(obj) => {
                    eprintln!("==> per packet, against Katran ({})", obj.display());
                    peer::run(&bed, &obj, &plan.peer)?
                }
                None => {
                    let skipped = peer::skipped();
                    if let peer::Outcome::Skipped(line) = &skipped {
                        eprintln!("==> {line}");
                    }
                    skipped
                }
            });
        }
        if wants("underload") {
            eprintln!("==> data plane, under real HTTP traffic");
            under_load = Some(underload::run(&bed, &plan.under_load)?);
        }
        if wants("e2e") {
            eprintln!("==> end to end");
            e2e = Some(e2e::run(&bed, &plan.e2e)?);
        }
        if wants("proxy") {
            eprintln!("==> the L7 path against HAProxy");
            proxy = Some(proxy::run(&bed, &plan.proxy)?);
        }
        if wants("flood") {
            eprintln!("==> new connections under a spoofed SYN flood");
            flood = Some(flood::run(&bed, &plan.flood)?);
        }
        if wants("cluster") {
            eprintln!("==> affinity replicated between two gateways");
            cluster = Some(cluster::run(&bed, &plan.cluster)?);
        }
    }
    let report = Report {
        machine: &machine,
        command: &command,
        wall_secs: start.elapsed().as_secs_f64(),
        per_packet: per_packet.as_ref(),
        against_katran: against_katran.as_ref(),
        under_load: under_load.as_ref(),
        e2e: e2e.as_ref().map(|r| (r, &plan.e2e)),
        proxy: proxy.as_ref().map(|r| (r, &plan.proxy)),
        flood: flood.as_ref().map(|r| (r, &plan.flood)),
        cluster: cluster.as_ref(),
        maglev: maglev.as_deref(),
    };
    let md = report.markdown();
    println!("{md}");
    let stem = if args.quick { "quick" } else { "latest" };
    std::fs::create_dir_all(&args.out)?;
    let md_path = args.out.join(format!("{stem}.md"));
    std::fs::write(&md_path, &md)?;
    eprintln!("wrote {}", md_path.display());
    if let Some(r) = &e2e {
        let svg_path = args.out.join(format!("{stem}.svg"));
        std::fs::write(&svg_path, report::svg(r, &machine))?;
        eprintln!("wrote {}", svg_path.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    // The daemon inherits this: its info logs would drown the progress lines.
    if std::env::var_os("RUST_LOG").is_none() {
        // SAFETY: still single-threaded; nothing reads the environment concurrently.
        unsafe { std::env::set_var("RUST_LOG", "warn") };
    }
    match parse_args().and_then(|a| run(&a)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
