//! The L7 path against HAProxy (issue 19): the same clients (wrk from
//! three hosts), the same backends (nginx), one gateway at a time, round
//! after round as the end-to-end part, so the ratios are the same run's.
//! For the daemon's rows the daemon's own counters say how requests were
//! routed and how many backend connections they took.

use std::time::Duration;

use anyhow::Result;
use balancer_user::metrics::Snapshot;

use crate::{
    cpu::{self, PerRequest},
    e2e::Options,
    l7::{L7Gateway, Running},
    testbed::Testbed,
    wrk::{self, Load, Request, Workload},
};

/// What the daemon counted during a phase (differences of its status).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Routed {
    pub by_sid: u64,
    pub by_client: u64,
    pub bad_input: u64,
    /// Connections each backend was sent, in configuration order.
    pub backend_connections: Vec<u64>,
}

#[derive(Clone, Debug, Default)]
pub struct Measured {
    pub load: Load,
    pub cpu: PerRequest,
    /// The daemon's rows only.
    pub routed: Option<Routed>,
}

#[derive(Debug, Default)]
pub struct Results {
    /// Per gateway and workload, one entry per round.
    pub runs: Vec<(L7Gateway, Workload, Vec<Measured>)>,
    pub notes: Vec<String>,
}

impl Results {
    fn push(&mut self, gateway: L7Gateway, workload: Workload, m: Measured) {
        match self
            .runs
            .iter_mut()
            .find(|(g, w, _)| *g == gateway && *w == workload)
        {
            Some((_, _, v)) => v.push(m),
            None => self.runs.push((gateway, workload, vec![m])),
        }
    }

    pub fn get(&self, gateway: L7Gateway, workload: Workload) -> &[Measured] {
        self.runs
            .iter()
            .find(|(g, w, _)| *g == gateway && *w == workload)
            .map_or(&[], |(_, _, v)| v)
    }
}

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
            let requests: Vec<Request> = (1..=bed.hosts.len() as u8)
                .map(|i| gateway.request(i))
                .collect();
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
                let counted = daemon_status(bed, &running);
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
                let routed = counted
                    .zip(daemon_status(bed, &running))
                    .map(|(b, a)| routed(&b, &a));
                results.push(gateway, workload, Measured { load, cpu, routed });
            }
            drop(running);
            // Let TIME_WAIT and FIN traffic of the last run settle.
            crate::stop::sleep(Duration::from_millis(300))?;
        }
    }
    Ok(results)
}

/// `balancer status` of the daemon, when the gateway is one. Taken outside
/// the CPU snapshots: the CLI runs in the gateway's namespace.
fn daemon_status(bed: &Testbed, running: &Running) -> Option<Snapshot> {
    let b = running.balancer()?;
    Some(balancer_tests::daemon::status(
        bed.topo.gw(),
        &b.control_socket(),
    ))
}

/// The HTTP service's counts from `before` to `after`.
fn routed(before: &Snapshot, after: &Snapshot) -> Routed {
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
    Routed {
        by_sid: count(&a.proxy_requests, Some("sid")) - count(&b.proxy_requests, Some("sid")),
        by_client: count(&a.proxy_requests, Some("client"))
            - count(&b.proxy_requests, Some("client")),
        bad_input: count(&a.proxy_bad_input, None) - count(&b.proxy_bad_input, None),
        backend_connections: a
            .backends
            .iter()
            .zip(&b.backends)
            .map(|(a, b)| a.connections_total - b.connections_total)
            .collect(),
    }
}
