//! The L7 path against HAProxy (issue 19): the same clients (wrk from
//! three hosts), the same backends (nginx), one gateway at a time, round
//! after round as the end-to-end part, so the ratios are the same run's.
//! The gateways' own counters (the daemon's status, HAProxy's stats
//! socket) say how requests were routed and how many backend connections
//! they took.

use std::time::Duration;

use anyhow::Result;
use balancer_user::metrics::Snapshot;

use crate::{
    cpu::{self, PerRequest},
    e2e::Options,
    l7::{L7Gateway, Running, ServerCounts},
    testbed::Testbed,
    wrk::{self, Load, Runs, Workload},
};

/// What the gateway counted during a phase (differences of its counts).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Routed {
    /// The daemon's: requests routed by sid, by client address, and input
    /// refused.
    pub daemon: Option<[u64; 3]>,
    /// Connections each backend was sent, in configuration order.
    pub backend_connections: Vec<u64>,
    /// HAProxy's requests per backend (the daemon counts none).
    pub backend_requests: Option<Vec<u64>>,
}

/// A gateway's cumulative counts at one moment.
enum Counts {
    Daemon(Box<Snapshot>),
    Haproxy(Vec<ServerCounts>),
}

#[derive(Clone, Debug, Default)]
pub struct Measured {
    pub load: Load,
    pub cpu: PerRequest,
    /// What the gateway counted.
    pub routed: Routed,
}

#[derive(Debug, Default)]
pub struct Results {
    /// Per gateway and workload, one entry per round.
    pub runs: Runs<L7Gateway, Measured>,
    pub notes: Vec<String>,
}

impl Results {}

pub fn run(bed: &Testbed, opts: &Options) -> Result<Results> {
    let mut results = Results::default();
    let lua = bed.dir.path("report.lua");
    for round in 0..opts.rounds {
        for gateway in L7Gateway::ALL {
            eprintln!(
                "  L7, round {}/{}: {}",
                round + 1,
                opts.rounds,
                gateway.label()
            );
            let running = gateway.start(bed)?;
            if let Some(note) = running.note()
                && !results.notes.contains(&note)
            {
                results.notes.push(note);
            }
            let requests = gateway.requests(bed)?;
            let targets = vec![crate::l7::vip(); bed.hosts.len()];
            // Warm caches, neighbour entries and the proxies' pools.
            wrk::run_requests(
                &bed.hosts,
                &targets,
                &requests,
                Workload::KeepAlive,
                opts.warmup,
                &lua,
            )?;
            for workload in [Workload::KeepAlive, Workload::Close] {
                let counted = counts(bed, &running)?;
                let before = cpu::snapshot(bed.topo.gw())?;
                let load = wrk::run_requests(
                    &bed.hosts,
                    &targets,
                    &requests,
                    workload,
                    opts.duration,
                    &lua,
                )?;
                let cpu = cpu::snapshot(bed.topo.gw())?.per_request(before, load.requests);
                let routed = routed(&counted, &counts(bed, &running)?);
                results
                    .runs
                    .push(gateway, workload, Measured { load, cpu, routed });
            }
            drop(running);
            // Let TIME_WAIT and FIN traffic of the last run settle.
            crate::stop::sleep(Duration::from_millis(300))?;
        }
    }
    Ok(results)
}

/// The daemon's status or HAProxy's server counts. Taken outside the CPU
/// snapshots: the CLI runs in the gateway's namespace.
fn counts(bed: &Testbed, running: &Running) -> Result<Counts> {
    if let Some(b) = running.balancer() {
        return Ok(Counts::Daemon(Box::new(balancer_tests::daemon::status(
            bed.topo.gw(),
            &b.control_socket(),
        ))));
    }
    match running.haproxy_servers() {
        Some(servers) => Ok(Counts::Haproxy(servers?)),
        None => anyhow::bail!("a gateway that is neither the daemon nor HAProxy"),
    }
}

fn routed(before: &Counts, after: &Counts) -> Routed {
    match (before, after) {
        (Counts::Daemon(b), Counts::Daemon(a)) => daemon_routed(b, a),
        (Counts::Haproxy(b), Counts::Haproxy(a)) => Routed {
            daemon: None,
            backend_connections: a
                .iter()
                .zip(b)
                .map(|(a, b)| a.connections - b.connections)
                .collect(),
            backend_requests: Some(
                a.iter()
                    .zip(b)
                    .map(|(a, b)| a.requests - b.requests)
                    .collect(),
            ),
        },
        _ => Routed::default(),
    }
}

/// The HTTP service's counts from `before` to `after`.
fn daemon_routed(before: &Snapshot, after: &Snapshot) -> Routed {
    let service = |s: &Snapshot| s.services.iter().find(|s| s.name == "http").cloned();
    let (Some(b), Some(a)) = (service(before), service(after)) else {
        return Routed::default();
    };
    let count = |pairs: &[(String, u64)], key: Option<&str>| -> u64 {
        pairs
            .iter()
            .filter(|(k, _)| key.is_none_or(|key| k == key))
            .map(|(_, n)| n)
            .sum()
    };
    let delta = |key| count(&a.proxy_requests, key) - count(&b.proxy_requests, key);
    let refused = count(&a.proxy_bad_input, None) - count(&b.proxy_bad_input, None);
    Routed {
        daemon: Some([delta(Some("sid")), delta(Some("client")), refused]),
        backend_connections: a
            .backends
            .iter()
            .zip(&b.backends)
            .map(|(a, b)| a.connections_total - b.connections_total)
            .collect(),
        backend_requests: None,
    }
}
