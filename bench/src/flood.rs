//! Real clients' new connections while a spoofed SYN flood runs: wrk with
//! `Connection: close` from the three client hosts through the balancer
//! (XDP and TC) and through nftables DNAT, first without the flood (the
//! reference), then with SYNs from random sources in 198.19.0.0/16 sent
//! from the client namespace at a fixed rate (`balancer_tests::spoof`).
//!
//! The spoofed sources are unrouted in the gateway (no default route), so
//! the backends' SYN-ACKs die there and nothing leaves the namespaces. The
//! flood is bounded in frames and time.

use std::{net::SocketAddrV4, time::Duration};

use anyhow::{Context as _, Result};
use balancer_tests::{
    spoof::{FloodReport, Shape, Spoofer},
    topology::VIP_V4,
};

use crate::{
    bpf::Hook,
    gateways::Gateway,
    pinned::{self, Counters},
    testbed::{HTTP_PORT, Testbed},
    wrk::{self, Load, Workload},
};

#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Each wrk run, with and without the flood.
    pub duration: Duration,
    pub warmup: Duration,
    /// Spoofed SYNs per second.
    pub rate: u64,
}

pub const GATEWAYS: [Gateway; 3] = [
    Gateway::Balancer(Hook::Xdp),
    Gateway::Balancer(Hook::Tc),
    Gateway::Nftables,
];

/// One gateway's figures.
#[derive(Clone, Copy, Debug)]
pub struct Row {
    pub gateway: Gateway,
    pub quiet: Load,
    pub flooded: Load,
    pub flood: FloodReport,
    /// The balancer only: connections it counted during the flooded run,
    /// and conntrack entries right after it.
    pub balancer: Option<(u64, usize)>,
}

#[derive(Debug, Default)]
pub struct Results {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

pub fn run(bed: &Testbed, opts: &Options) -> Result<Results> {
    let mut results = Results::default();
    let lua = bed.dir.path("report.lua");
    let vip = SocketAddrV4::new(VIP_V4, HTTP_PORT);
    for (seed, gateway) in GATEWAYS.into_iter().enumerate() {
        eprintln!("  SYN flood: {}", gateway.label());
        let running = gateway.start(bed)?;
        if let Some(note) = &running.note {
            results.notes.push(note.clone());
        }
        wrk::run(
            &bed.hosts,
            &running.targets,
            Workload::KeepAlive,
            opts.warmup,
            &lua,
        )?;
        let quiet = wrk::run(
            &bed.hosts,
            &running.targets,
            Workload::Close,
            opts.duration,
            &lua,
        )?;
        crate::stop::sleep(Duration::from_millis(300))?;

        let pin_dir = running.balancer().map(|b| b.pin_dir());
        let before = pin_dir.as_deref().map(Counters::read).transpose()?;
        // Every gateway gets the same sources and ports.
        let mut spoofer = Spoofer::new(bed.topo.client(), bed.topo.gw(), seed as u64 + 16)
            .context("the spoofing sender")?;
        // The flood starts first and outlasts wrk by a little, so every
        // request of the run meets it.
        let flood_time = opts.duration + Duration::from_millis(1500);
        let flows = opts.rate * flood_time.as_secs_f64().ceil() as u64;
        let (flood, flooded) = std::thread::scope(|s| {
            let flood = s.spawn(|| spoofer.flood(vip, Shape::Syn, flows, opts.rate, flood_time));
            std::thread::sleep(Duration::from_millis(500));
            let load = wrk::run(
                &bed.hosts,
                &running.targets,
                Workload::Close,
                opts.duration,
                &lua,
            );
            let flood = flood.join().expect("the flood thread panicked");
            (flood, load)
        });
        let (flood, flooded) = (flood.context("the spoofed flood")?, flooded?);
        let balancer = match (&pin_dir, &before) {
            (Some(dir), Some(before)) => {
                let counted = Counters::read(dir)?.since(before).connections;
                Some((counted, pinned::flows(dir)?.len()))
            }
            _ => None,
        };
        results.rows.push(Row {
            gateway,
            quiet,
            flooded,
            flood,
            balancer,
        });
        drop(running);
        crate::stop::sleep(Duration::from_millis(300))?;
    }
    Ok(results)
}
