//! The program's cost per packet under real HTTP traffic (wrk keep-alive
//! and `Connection: close`), next to the floor program on the same
//! interfaces under the same traffic. The floor passes everything, so for
//! its runs nftables DNATs the VIP to the same backends: the packets are
//! the same, only the program differs. One program serves both interfaces
//! today, so a figure mixes the client → backend and the reply direction;
//! the crafted-frame phases (`perpacket`) separate the paths.
//!
//! The balancer's counters, per request, show where its packets went (e.g.
//! how many it handed to the kernel).

use std::time::Duration;

use anyhow::Result;
use balancer_common::counters::Counter;
use balancer_tests::topology::{GW_BACKEND_IF, GW_CLIENT_IF};

use crate::{
    bpf::Hook,
    gateways::Gateway,
    pinned::Counters,
    progs::{self, RunStats},
    testbed::Testbed,
    wrk::{self, Workload},
};

#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub rounds: usize,
    pub duration: Duration,
}

/// One wrk run: program ns per packet, packets per request.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    pub ns: f64,
    pub packets_per_request: f64,
}

#[derive(Debug, Default)]
pub struct Results {
    /// Per workload: balancer runs, floor runs.
    pub runs: Vec<(Workload, Vec<Run>, Vec<Run>)>,
    /// Per workload: the balancer's non-zero counters per request (last round).
    pub counters: Vec<(Workload, Vec<(&'static str, f64)>)>,
}

impl Results {
    fn entry(&mut self, w: Workload) -> &mut (Workload, Vec<Run>, Vec<Run>) {
        if !self.runs.iter().any(|r| r.0 == w) {
            self.runs.push((w, Vec::new(), Vec::new()));
        }
        self.runs.iter_mut().find(|r| r.0 == w).expect("just added")
    }
}

const WORKLOADS: [Workload; 2] = [Workload::KeepAlive, Workload::Close];

pub fn run(bed: &Testbed, opts: &Options) -> Result<Results> {
    let _stats = progs::enable_run_stats()?;
    let lua = bed.dir.path("report.lua");
    let ifs = [GW_CLIENT_IF, GW_BACKEND_IF];
    let mut results = Results::default();
    for round in 0..opts.rounds {
        eprintln!("  under wrk, round {}/{}", round + 1, opts.rounds);
        let running = Gateway::Balancer(Hook::Xdp).start(bed)?;
        let pin_dir = running.balancer().expect("a balancer gateway").pin_dir();
        let ids = progs::ids_on(bed.topo.gw(), &ifs, Hook::Xdp)?;
        let mut counters = Vec::new();
        for w in WORKLOADS {
            let c0 = Counters::read(&pin_dir)?;
            let (run, requests) = measure(bed, &running.targets, w, &ids, opts, &lua)?;
            let c = Counters::read(&pin_dir)?.since(&c0);
            let per_req = |n: u64| n as f64 / requests.max(1) as f64;
            let mut nonzero: Vec<(&'static str, f64)> = Counter::ALL
                .iter()
                .filter(|k| c.get(**k) > 0)
                .map(|k| (k.name(), per_req(c.get(*k))))
                .collect();
            nonzero.push(("new connections", per_req(c.connections)));
            counters.push((w, nonzero));
            results.entry(w).1.push(run);
        }
        results.counters = counters;
        drop(running);

        // The floor under the same requests: nftables forwards them.
        let running = Gateway::NftablesUnderFloor.start(bed)?;
        let ids = progs::ids_on(bed.topo.gw(), &ifs, Hook::Xdp)?;
        for w in WORKLOADS {
            let (run, _) = measure(bed, &running.targets, w, &ids, opts, &lua)?;
            results.entry(w).2.push(run);
        }
        drop(running);
    }
    Ok(results)
}

fn measure(
    bed: &Testbed,
    targets: &[std::net::SocketAddr],
    w: Workload,
    ids: &std::collections::BTreeSet<u32>,
    opts: &Options,
    lua: &std::path::Path,
) -> Result<(Run, u64)> {
    let s0 = progs::run_stats(ids)?;
    let load = wrk::run(&bed.hosts, targets, w, opts.duration, lua)?;
    crate::stop::sleep(Duration::from_millis(100))?;
    let d: RunStats = progs::run_stats(ids)?.since(s0);
    let run = Run {
        ns: d.ns_per_run(),
        packets_per_request: d.count as f64 / load.requests.max(1) as f64,
    };
    Ok((run, load.requests))
}
