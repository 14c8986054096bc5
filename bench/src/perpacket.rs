//! Data-plane cost per packet (DESIGN.md, Performance method): the
//! kernel's run statistics (`run_time_ns / run_cnt`) of the programs on the
//! gateway's interfaces, one kind of traffic at a time, for the balancer and
//! then for the floor program on the same interfaces under the same
//! traffic, round after round. Plus BPF_PROG_TEST_RUN with a repeat count
//! where it is a valid timer (a frame the program passes unchanged), and the
//! fast path again with conntrack and affinity full.

use std::{collections::BTreeSet, os::fd::AsFd as _, time::Duration};

use anyhow::{Context as _, Result};
use balancer_common::counters::Counter;
use balancer_tests::topology::{GW_BACKEND_IF, GW_CLIENT_IF};
use balancer_user::accounting::monotonic_ns;

use crate::{
    bpf::{self, Hook, Reference},
    fill::{self, Filled},
    gateways::{Balancer, Floor},
    pinned::Counters,
    progs::{self, RunStats},
    testbed::Testbed,
    traffic::{Kind, PhaseLimits, Traffic},
};

#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub rounds: usize,
    pub phase: PhaseLimits,
    /// Frames per never-seen-client phase (each needs a fresh address).
    pub new_clients: u64,
    pub test_run_repeat: u32,
    /// Entries to fill conntrack and affinity with (0: skip).
    pub fill_entries: usize,
}

/// One phase: ns per program run, runs counted, and the share of runs
/// that the program's own counters place on the path being timed (None for
/// the floor, which has one path).
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub ns: f64,
    pub runs: u64,
    pub on_path: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Variant {
    Normal,
    /// Conntrack and affinity filled to capacity first.
    FullTables,
}

/// Balancer samples and floor samples of one path, round by round.
pub type Pair = (Vec<Sample>, Vec<Sample>);

#[derive(Debug, Default)]
pub struct Results {
    pub rows: std::collections::BTreeMap<(Hook, Variant, Kind), Pair>,
    /// BPF_PROG_TEST_RUN of a non-VIP frame: (balancer ns, floor ns,
    /// repeat, PassNotOurs counted by the balancer during its run).
    pub test_runs: Vec<(f64, f64, u32, u64)>,
    pub filled: Option<Filled>,
    pub notes: Vec<String>,
    /// How programs were attached, e.g. "xdp: gwc id 12, gwb id 12".
    pub attachments: BTreeSet<String>,
    /// Per round, XDP, under the frames of "SYN, known client":
    /// (the one-insert reference's ns, the floor's ns).
    pub insert_reference: Vec<(f64, f64)>,
    /// The same for the one-insert reference on a map with per-CPU LRU
    /// lists (`BPF_F_NO_COMMON_LRU`).
    pub insert_pcpu_reference: Vec<(f64, f64)>,
    /// The same for the one-lookup reference, under the frames of
    /// "established flow".
    pub lookup_reference: Vec<(f64, f64)>,
}

pub fn run(bed: &Testbed, opts: &Options) -> Result<Results> {
    let _stats = progs::enable_run_stats()?;
    let mut traffic = Traffic::new(bed)?;
    let mut results = Results::default();
    let mut tc_attached = true;
    for round in 0..opts.rounds {
        for hook in [Hook::Xdp, Hook::Tc] {
            if hook == Hook::Tc && !tc_attached {
                continue;
            }
            eprintln!(
                "  per packet, round {}/{}, {} mode",
                round + 1,
                opts.rounds,
                hook.name()
            );
            let balancer = Balancer::start(bed, hook)?;
            if let Some(note) = &balancer.mode_note {
                // TC is not attached at all: no point in trying again.
                results.notes.push(note.clone());
                tc_attached = false;
                continue;
            }
            traffic.prepare(&balancer.pin_dir())?;
            let ids = program_ids(bed, hook, &mut results, "balancer")?;
            for kind in Kind::ALL {
                let sample = phase(&mut traffic, kind, &ids, Some(&balancer), opts)?;
                results
                    .rows
                    .entry((hook, Variant::Normal, kind))
                    .or_default()
                    .0
                    .push(sample);
            }
            let test_run = (hook == Hook::Xdp)
                .then(|| test_run_balancer(bed, &traffic, &balancer, &ids, opts))
                .transpose()?;
            drop(balancer);

            // The floor keeps no state: it gets the same frames from the start.
            traffic.rewind();
            let floor = Floor::attach(bed.topo.gw(), hook)?;
            let floor_ids = program_ids(bed, hook, &mut results, "floor")?;
            for kind in Kind::ALL {
                let sample = phase(&mut traffic, kind, &floor_ids, None, opts)?;
                results
                    .rows
                    .entry((hook, Variant::Normal, kind))
                    .or_default()
                    .1
                    .push(sample);
            }
            if let Some((ns, counted)) = test_run {
                let frame = traffic.non_vip_frame()?;
                let floor_ns = test_run_ns(bed, floor.prog.as_fd(), &frame, opts.test_run_repeat)?;
                results
                    .test_runs
                    .push((ns, floor_ns, opts.test_run_repeat, counted));
            }
            drop(floor);
            if hook == Hook::Xdp {
                let floor_ns = |kind| {
                    results.rows[&(hook, Variant::Normal, kind)]
                        .1
                        .last()
                        .map_or(f64::NAN, |s| s.ns)
                };
                let (insert_floor, lookup_floor) =
                    (floor_ns(Kind::NewFlow), floor_ns(Kind::Established));
                let ns = reference(bed, &mut traffic, &mut results, opts, Reference::Insert)?;
                results.insert_reference.push((ns, insert_floor));
                let ns = reference(
                    bed,
                    &mut traffic,
                    &mut results,
                    opts,
                    Reference::InsertPerCpuLru,
                )?;
                results.insert_pcpu_reference.push((ns, insert_floor));
                let ns = reference(bed, &mut traffic, &mut results, opts, Reference::Lookup)?;
                results.lookup_reference.push((ns, lookup_floor));
            }
        }
    }
    if opts.fill_entries > 0 {
        full_tables(bed, &mut traffic, opts, &mut results)?;
    }
    Ok(results)
}

/// ns per run of a map-cost reference (`bpf::load_reference`): the insert
/// under the frames of "SYN, known client", what one conntrack
/// insert costs by itself on this machine; the lookup under the frames of
/// "established flow", what one conntrack hit's lookup costs.
fn reference(
    bed: &Testbed,
    traffic: &mut Traffic,
    results: &mut Results,
    opts: &Options,
    reference: Reference,
) -> Result<f64> {
    let kind = reference_kind(reference);
    let limits = limits(kind, opts.phase, opts.new_clients);
    reference_ns(bed, traffic, reference, limits, || {
        program_ids(bed, Hook::Xdp, results, reference_name(reference))
    })
}

/// The frames a reference is timed under.
pub fn reference_kind(reference: Reference) -> Kind {
    match reference {
        Reference::Insert | Reference::InsertPerCpuLru => Kind::NewFlow,
        Reference::Lookup => Kind::Established,
    }
}

fn reference_name(reference: Reference) -> &'static str {
    match reference {
        Reference::Insert => "one-insert reference",
        Reference::InsertPerCpuLru => "one-insert reference, BPF_F_NO_COMMON_LRU",
        Reference::Lookup => "one-lookup reference",
    }
}

/// [`reference`] within explicit limits, the programs' ids from `ids_of`
/// (the peer comparison paces new flows). The lookup's frames are sent
/// twice and the second pass timed: the first makes each flow's entry, so
/// every timed run finds one.
pub fn reference_ns(
    bed: &Testbed,
    traffic: &mut Traffic,
    reference: Reference,
    limits: PhaseLimits,
    ids_of: impl FnOnce() -> Result<BTreeSet<u32>>,
) -> Result<f64> {
    let what = reference_name(reference);
    let kind = reference_kind(reference);
    let (prog, _map) =
        bpf::load_reference(reference).with_context(|| format!("loading the {what}"))?;
    let _reference = Floor::attach_prog(bed.topo.gw(), Hook::Xdp, prog)?;
    // Every reference map starts empty: the same frames as the balancer's.
    traffic.rewind();
    let ids = ids_of()?;
    if reference == Reference::Lookup {
        timed_phase(traffic, kind, &ids, None, limits)?;
    }
    Ok(timed_phase(traffic, kind, &ids, None, limits)?.ns)
}

/// The programs of `hook` on both gateway interfaces, noting how they sit
/// (without ids: they change with every daemon start).
fn program_ids(
    bed: &Testbed,
    hook: Hook,
    results: &mut Results,
    what: &str,
) -> Result<BTreeSet<u32>> {
    let gw = bed.topo.gw();
    let mut desc = Vec::new();
    for ifname in [GW_CLIENT_IF, GW_BACKEND_IF] {
        let hows: Vec<&str> = progs::attached(gw, ifname)?
            .into_iter()
            .filter(|a| a.hook == hook)
            .map(|a| a.how)
            .collect();
        desc.push(format!("{ifname}: {}", hows.join("+")));
    }
    let ids = progs::ids_on(gw, &[GW_CLIENT_IF, GW_BACKEND_IF], hook)?;
    anyhow::ensure!(!ids.is_empty(), "no {} program on the gateway", hook.name());
    let shared = if ids.len() == 1 {
        "one program on both"
    } else {
        "a program each"
    };
    results.attachments.insert(format!(
        "{what}, {} mode: {} ({shared})",
        hook.name(),
        desc.join(", ")
    ));
    Ok(ids)
}

/// How much of `kind` one phase sends: never-seen clients are capped, each
/// needs a fresh address.
pub fn limits(kind: Kind, phase: PhaseLimits, new_clients: u64) -> PhaseLimits {
    match kind {
        Kind::NewClient | Kind::ConfirmNewClient => PhaseLimits {
            frames: new_clients,
            ..phase
        },
        _ => phase,
    }
}

/// Send one kind of traffic and read the programs' statistics around it.
fn phase(
    traffic: &mut Traffic,
    kind: Kind,
    ids: &BTreeSet<u32>,
    balancer: Option<&Balancer>,
    opts: &Options,
) -> Result<Sample> {
    timed_phase(
        traffic,
        kind,
        ids,
        balancer,
        limits(kind, opts.phase, opts.new_clients),
    )
}

/// [`phase`] within explicit limits (the peer comparison paces some).
pub fn timed_phase(
    traffic: &mut Traffic,
    kind: Kind,
    ids: &BTreeSet<u32>,
    balancer: Option<&Balancer>,
    limits: PhaseLimits,
) -> Result<Sample> {
    let counters = |b: &Balancer| Counters::read(&b.pin_dir());
    let c0 = balancer.map(counters).transpose()?;
    let s0 = progs::run_stats(ids)?;
    let started = monotonic_ns();
    traffic.send(kind, limits)?;
    if std::env::var_os("BENCH_PHASE_LOG").is_some() {
        // For profiling: `perf record -a -k CLOCK_MONOTONIC` samples can be
        // split by phase with these bounds.
        eprintln!(
            "phase {} {} {} {:?}",
            started,
            monotonic_ns(),
            if balancer.is_some() {
                "balancer"
            } else {
                "floor"
            },
            kind
        );
    }
    // The last frames are still in softirq for a moment.
    crate::stop::sleep(Duration::from_millis(50))?;
    let d: RunStats = progs::run_stats(ids)?.since(s0);
    let on_path = match (balancer, c0) {
        (Some(b), Some(c0)) => {
            let c = counters(b)?.since(&c0);
            let on = on_path(kind, &c);
            Some(on as f64 / d.count.max(1) as f64)
        }
        _ => None,
    };
    Ok(Sample {
        ns: d.ns_per_run(),
        runs: d.count,
        on_path,
    })
}

/// How many of a phase's program runs the balancer's counters place on
/// the path being timed. A connection is counted when its backend
/// confirms it, so: client packets forwarded with no connection counted
/// are conntrack hits (established) or SYNs that wrote nothing; a
/// confirmation is a confirmed flow with its connection counted; a reply
/// without an entry is translated and confirms nothing.
fn on_path(kind: Kind, c: &Counters) -> u64 {
    let less = |a: u64, b: u64| a - b.min(a);
    match kind {
        Kind::Established | Kind::NewFlow | Kind::NewClient => {
            less(c.get(Counter::ForwardToBackend), c.connections)
        }
        Kind::Confirm | Kind::ConfirmNewClient => c.get(Counter::FlowConfirmed).min(c.connections),
        Kind::StatelessReply => less(
            c.get(Counter::ForwardReplyWithoutFlow),
            c.get(Counter::FlowConfirmed),
        ),
        Kind::Reply => less(
            c.get(Counter::ForwardToClient),
            c.get(Counter::ForwardReplyWithoutFlow),
        ),
        Kind::NonVip => c.get(Counter::PassNotOurs),
    }
}

/// BPF_PROG_TEST_RUN of the balancer on a non-VIP frame: the program passes
/// it untouched, so every repetition runs on the same bytes. The counters
/// must show every repetition on the pass-not-ours path. Returns the ns per
/// run and the counter's increase.
fn test_run_balancer(
    bed: &Testbed,
    traffic: &Traffic,
    balancer: &Balancer,
    ids: &BTreeSet<u32>,
    opts: &Options,
) -> Result<(f64, u64)> {
    let frame = traffic.non_vip_frame()?;
    // The program on the client-side interface (the same one on both today).
    let id = progs::attached(bed.topo.gw(), GW_CLIENT_IF)?
        .into_iter()
        .find(|a| ids.contains(&a.id))
        .context("no balancer program on the client side")?
        .id;
    let fd = progs::prog_fd(id)?;
    let before = Counters::read(&balancer.pin_dir())?;
    let ns = test_run_ns(bed, fd.as_fd(), &frame, opts.test_run_repeat)?;
    let counted = Counters::read(&balancer.pin_dir())?
        .since(&before)
        .get(Counter::PassNotOurs);
    anyhow::ensure!(
        counted >= u64::from(opts.test_run_repeat),
        "BPF_PROG_TEST_RUN: {counted} of {} repetitions took the pass-not-ours path: not a valid timing",
        opts.test_run_repeat
    );
    Ok((ns, counted))
}

/// Average ns per run of `repeat` runs on `frame`, as arriving on the
/// gateway's client-side interface (so run inside the gateway namespace).
fn test_run_ns(
    bed: &Testbed,
    prog: std::os::fd::BorrowedFd<'_>,
    frame: &[u8],
    repeat: u32,
) -> Result<f64> {
    let gw = bed.topo.gw();
    let ifindex = gw.ifindex(GW_CLIENT_IF);
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
    let ctx: Vec<u8> = [0, frame.len() as u32, 0, ifindex, 0, 0]
        .iter()
        .flat_map(|w: &u32| w.to_ne_bytes())
        .collect();
    let run = gw
        .run(|| bpf::test_run(prog, frame, Some(&ctx), repeat))
        .context("BPF_PROG_TEST_RUN")?;
    anyhow::ensure!(
        run.retval == 2,
        "the non-VIP frame got verdict {} instead of XDP_PASS",
        run.retval
    );
    Ok(f64::from(run.duration_ns))
}

/// The hot paths again, with conntrack and affinity full
/// (XDP mode; the floor is the normal rounds').
fn full_tables(
    bed: &Testbed,
    traffic: &mut Traffic,
    opts: &Options,
    results: &mut Results,
) -> Result<()> {
    eprintln!(
        "  per packet, tables filled to {} entries",
        opts.fill_entries
    );
    let balancer = Balancer::start(bed, Hook::Xdp)?;
    let mut filled = fill::fill(&balancer.pin_dir(), opts.fill_entries, balancer.pid())?;
    // The established flows go in after the fill, so the LRU keeps them.
    traffic.prepare(&balancer.pin_dir())?;
    let ids = progs::ids_on(
        bed.topo.gw(),
        &[GW_CLIENT_IF, GW_BACKEND_IF],
        balancer.attached_hook(),
    )?;
    for kind in [
        Kind::Established,
        Kind::NewFlow,
        Kind::NewClient,
        Kind::Confirm,
        Kind::ConfirmNewClient,
        Kind::StatelessReply,
        Kind::Reply,
    ] {
        let sample = phase(traffic, kind, &ids, Some(&balancer), opts)?;
        results
            .rows
            .entry((Hook::Xdp, Variant::FullTables, kind))
            .or_default()
            .0
            .push(sample);
    }
    filled.daemon_rss.1 = fill::rss_bytes(balancer.pid());
    results.filled = Some(filled);
    Ok(())
}
