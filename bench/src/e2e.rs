//! End to end: the same clients (wrk from three hosts), the same backends
//! (nginx), one gateway at a time, round after round so drift in the
//! machine spreads over every gateway alike.

use std::time::Duration;

use anyhow::Result;

use crate::{
    cpu::{self, PerRequest},
    gateways::Gateway,
    testbed::Testbed,
    wrk::{self, Load, Runs, Workload},
};

#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub rounds: usize,
    pub duration: Duration,
    pub warmup: Duration,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Measured {
    pub load: Load,
    pub cpu: PerRequest,
}

#[derive(Debug, Default)]
pub struct Results {
    /// Per gateway and workload, one entry per round.
    pub runs: Runs<Gateway, Measured>,
    pub notes: Vec<String>,
    /// Gateways that did not run as asked (TC mode with XDP attached).
    pub not_as_asked: Vec<Gateway>,
}

impl Results {
    /// The gateway's name, marked when it did not run as asked.
    pub fn label(&self, gateway: Gateway, name: &str) -> String {
        if self.not_as_asked.contains(&gateway) {
            format!("{name} (XDP attached)")
        } else {
            name.to_owned()
        }
    }
}

pub fn run(bed: &Testbed, opts: &Options) -> Result<Results> {
    let mut results = Results::default();
    let lua = bed.dir.path("report.lua");
    for round in 0..opts.rounds {
        for gateway in Gateway::ALL {
            eprintln!(
                "  end to end, round {}/{}: {}",
                round + 1,
                opts.rounds,
                gateway.label()
            );
            let running = gateway.start(bed)?;
            if let Some(note) = &running.note
                && !results.notes.contains(note)
            {
                results.notes.push(note.clone());
                results.not_as_asked.push(gateway);
            }
            // Warm caches, neighbour entries and the proxies' pools.
            wrk::run(
                &bed.hosts,
                &running.targets,
                Workload::KeepAlive,
                opts.warmup,
                &lua,
            )?;
            for workload in [Workload::KeepAlive, Workload::Close] {
                let before = cpu::snapshot(bed.topo.gw())?;
                let load = wrk::run(&bed.hosts, &running.targets, workload, opts.duration, &lua)?;
                let cpu = cpu::snapshot(bed.topo.gw())?.per_request(before, load.requests);
                results.runs.push(gateway, workload, Measured { load, cpu });
            }
            drop(running);
            // Let TIME_WAIT and FIN traffic of the last run settle.
            crate::stop::sleep(Duration::from_millis(300))?;
        }
    }
    Ok(results)
}
