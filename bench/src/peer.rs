//! Per packet against a peer (issue 16): Katran's XDP balancer and ours on
//! the same frames at the same hook, timed the same way (the kernel's run
//! statistics of the programs on the gateway's interfaces), round after
//! round, the order of the two swapped every round. Optional: it needs
//! Katran's object, built from Katran's source outside this repository.
//!
//! The paths compared: the established flow (a connection-table hit in
//! both) and the new flow. Katran's new flow is a SYN: hash ring, then an
//! insert into its per-CPU LRU. Ours writes nothing on a SYN and makes its
//! durable write when the backend's first ACK confirms the flow, so both
//! our SYN rows and our confirmation rows are measured next to Katran's.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Result;
use balancer_tests::topology::{GW_BACKEND_IF, GW_CLIENT_IF};

use crate::{
    bpf::{Hook, Reference},
    gateways::Balancer,
    katran::{self, Katran},
    machine,
    perpacket::{self, Sample},
    progs::{self, RunStats},
    testbed::Testbed,
    traffic::{Kind, PhaseLimits, Traffic},
};

/// Katran's flood guard (`MAX_CONN_RATE` in balancer_consts.h): beyond this
/// many new flows a second on one CPU it skips the LRU insert.
const KATRAN_MAX_CONN_RATE: u64 = 125_000;

/// New-flow phases, ours and Katran's, are paced below Katran's flood guard
/// so every Katran new flow makes its insert.
pub const NEW_FLOW_RATE: u64 = 100_000;
const _: () = assert!(NEW_FLOW_RATE < KATRAN_MAX_CONN_RATE);

#[derive(Clone, Debug)]
pub struct Options {
    pub rounds: usize,
    pub phase: PhaseLimits,
    pub new_clients: u64,
}

/// Kinds timed for both programs, then kinds only ours has (Katran never
/// sees a backend's packets: they go straight to the client).
const SHARED: [Kind; 3] = [Kind::Established, Kind::NewFlow, Kind::NewClient];
const OURS_ONLY: [Kind; 2] = [Kind::Confirm, Kind::ConfirmNewClient];

#[derive(Debug)]
pub enum Outcome {
    /// No object given: the line the report prints instead.
    Skipped(String),
    Measured(Results),
}

#[derive(Debug, Default)]
pub struct Results {
    pub obj: PathBuf,
    /// Per kind: (ours, Katran's) samples, round by round (Katran's empty
    /// for the kinds it never sees).
    pub rows: BTreeMap<Kind, (Vec<Sample>, Vec<Sample>)>,
    /// Entries in each of Katran's per-CPU LRU maps.
    pub lru_entries: u32,
    /// Per round, the one-lookup and the one-insert reference's ns under
    /// the same frames and pacing (`perpacket::reference_ns`): how far
    /// each program is from issue 16's goals, Katran's included.
    pub references: Vec<(f64, f64)>,
    /// Packets that found no per-CPU LRU in Katran (must be 0).
    pub fallback: u64,
    /// Share of the CPUs busy with nothing of the bench running, just
    /// before and just after the comparison; and over the comparison.
    pub background_before: f64,
    pub background_after: f64,
    pub busy_during: f64,
}

/// The object from `--katran` or [`katran::OBJ_ENV`], if any.
pub fn object(flag: Option<&Path>) -> Option<PathBuf> {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os(katran::OBJ_ENV).map(PathBuf::from))
}

pub fn skipped() -> Outcome {
    Outcome::Skipped(format!(
        "Comparison with Katran skipped: no object given. Build Katran's balancer.bpf.o (bench/README.md, \
         \"Against Katran\") and pass it with `--katran PATH` or {}=PATH.",
        katran::OBJ_ENV
    ))
}

pub fn run(bed: &Testbed, obj: &Path, opts: &Options) -> Result<Outcome> {
    let _stats = progs::enable_run_stats()?;
    let mut traffic = Traffic::new(bed)?;
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)? as u32;
    let mut results = Results {
        obj: obj.to_path_buf(),
        // Our CONNTRACK's capacity, shared out as Katran shares its LRU
        // size among its forwarding cores.
        lru_entries: balancer_common::maps::MAX_FLOWS / cpus.max(1),
        background_before: machine::busy_over(Duration::from_secs(1)),
        ..Results::default()
    };
    let (busy0, total0) = machine::cpu_jiffies();
    for round in 0..opts.rounds {
        let katran_first = round % 2 == 1;
        eprintln!(
            "  against Katran, round {}/{} ({} first)",
            round + 1,
            opts.rounds,
            if katran_first { "Katran" } else { "ours" }
        );
        if katran_first {
            katran_round(bed, &mut traffic, obj, opts, &mut results)?;
            ours_round(bed, &mut traffic, opts, &mut results)?;
        } else {
            ours_round(bed, &mut traffic, opts, &mut results)?;
            katran_round(bed, &mut traffic, obj, opts, &mut results)?;
        }
        let ids = || progs::ids_on(bed.topo.gw(), &[GW_CLIENT_IF, GW_BACKEND_IF], Hook::Xdp);
        let [lookup, insert] = [Reference::Lookup, Reference::Insert].map(|r| {
            let limits = limits(perpacket::reference_kind(r), opts);
            perpacket::reference_ns(bed, &mut traffic, r, limits, ids)
        });
        results.references.push((lookup?, insert?));
    }
    let (busy1, total1) = machine::cpu_jiffies();
    results.busy_during = (busy1 - busy0) as f64 / (total1 - total0).max(1) as f64;
    results.background_after = machine::busy_over(Duration::from_secs(1));
    Ok(Outcome::Measured(results))
}

/// What one phase of `kind` may send here: new flows paced below Katran's
/// flood guard.
fn limits(kind: Kind, opts: &Options) -> PhaseLimits {
    let l = perpacket::limits(kind, opts.phase, opts.new_clients);
    match kind {
        Kind::Established => l,
        _ => PhaseLimits {
            per_second: Some(NEW_FLOW_RATE),
            ..l
        },
    }
}

fn ours_round(
    bed: &Testbed,
    traffic: &mut Traffic,
    opts: &Options,
    results: &mut Results,
) -> Result<()> {
    let balancer = Balancer::start(bed, Hook::Xdp)?;
    anyhow::ensure!(
        balancer.mode_note.is_none(),
        "the balancer did not attach in XDP mode: {:?}",
        balancer.mode_note
    );
    traffic.prepare(&balancer.pin_dir())?;
    let ids = progs::ids_on(bed.topo.gw(), &[GW_CLIENT_IF, GW_BACKEND_IF], Hook::Xdp)?;
    for kind in SHARED.into_iter().chain(OURS_ONLY) {
        let sample =
            perpacket::timed_phase(traffic, kind, &ids, Some(&balancer), limits(kind, opts))?;
        results.rows.entry(kind).or_default().0.push(sample);
    }
    Ok(())
}

fn katran_round(
    bed: &Testbed,
    traffic: &mut Traffic,
    obj: &Path,
    opts: &Options,
    results: &mut Results,
) -> Result<()> {
    let katran = Katran::start(bed, obj, results.lru_entries)?;
    let ids = progs::ids_on(bed.topo.gw(), &[GW_CLIENT_IF, GW_BACKEND_IF], Hook::Xdp)?;
    anyhow::ensure!(ids.len() == 1, "Katran: programs {ids:?} on the gateway");
    // The same frames as ours from the start: fresh tables, fresh sequences.
    traffic.rewind();
    // Katran learns a flow from its first packet, SYN or not: one untimed
    // pass puts the established flows in its LRU.
    katran_phase(traffic, Kind::Established, &ids, &katran, opts)?;
    for kind in SHARED {
        let sample = katran_phase(traffic, kind, &ids, &katran, opts)?;
        results.rows.entry(kind).or_default().1.push(sample);
    }
    results.fallback += katran.counters()?.fallback;
    Ok(())
}

/// One phase under Katran, on-path share from its own statistics: an
/// established flow is an LRU hit; a new flow is a SYN that missed the
/// LRU and left a new entry in it.
fn katran_phase(
    traffic: &mut Traffic,
    kind: Kind,
    ids: &std::collections::BTreeSet<u32>,
    katran: &Katran,
    opts: &Options,
) -> Result<Sample> {
    let c0 = katran.counters()?;
    let s0 = progs::run_stats(ids)?;
    traffic.send(kind, limits(kind, opts))?;
    // The last frames are still in softirq for a moment.
    crate::stop::sleep(Duration::from_millis(50))?;
    let d: RunStats = progs::run_stats(ids)?.since(s0);
    let c = katran.counters()?.since(&c0);
    let on = match kind {
        Kind::Established => c.lru_hits(),
        _ => c.syn_misses.min(c.lru_entries),
    };
    Ok(Sample {
        ns: d.ns_per_run(),
        runs: d.count,
        on_path: Some(on as f64 / d.count.max(1) as f64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_flows_are_paced_below_katrans_flood_guard() {
        let opts = Options {
            rounds: 1,
            phase: PhaseLimits {
                time: Duration::from_secs(1),
                frames: 1000,
                per_second: None,
            },
            new_clients: 10,
        };
        assert_eq!(limits(Kind::Established, &opts).per_second, None);
        for kind in [Kind::NewFlow, Kind::NewClient, Kind::Confirm] {
            assert_eq!(limits(kind, &opts).per_second, Some(NEW_FLOW_RATE));
        }
        assert_eq!(limits(Kind::NewClient, &opts).frames, 10);
    }

    #[test]
    fn without_an_object_the_comparison_is_skipped_with_how_to_enable_it() {
        let Outcome::Skipped(line) = skipped() else {
            panic!("not skipped")
        };
        assert!(line.contains("--katran PATH") && line.contains(katran::OBJ_ENV));
    }
}
