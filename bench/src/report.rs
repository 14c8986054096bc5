//! The results as Markdown tables (printed and written under
//! `bench/results/`), with the machine they were measured on and the goals
//! of issue 7 checked against them.

use std::fmt::Write as _;

use crate::{
    bpf::Hook,
    cluster, cluster_report,
    e2e::{self, Measured},
    flood,
    gateways::Gateway,
    machine::Machine,
    maglev, peer,
    perpacket::{self, Sample, Variant},
    proxy, proxy_report,
    summary::{Spread, fmt_spread, spread},
    traffic::Kind,
    underload,
    wrk::{CONNECTIONS, Workload},
};

/// Everything one run measured.
pub struct Report<'a> {
    pub machine: &'a Machine,
    pub command: &'a str,
    pub wall_secs: f64,
    pub per_packet: Option<&'a perpacket::Results>,
    pub against_katran: Option<&'a peer::Outcome>,
    pub under_load: Option<&'a underload::Results>,
    pub e2e: Option<(&'a e2e::Results, &'a e2e::Options)>,
    pub proxy: Option<(&'a proxy::Results, &'a e2e::Options)>,
    pub flood: Option<(&'a flood::Results, &'a flood::Options)>,
    pub cluster: Option<&'a cluster::Results>,
    pub maglev: Option<&'a [maglev::Row]>,
}

/// A map-cost reference's rounds, `(reference ns, floor ns)` each, as the
/// report prints them: ns and ratio to the floor, median [min–max]. `None`
/// when it did not run.
fn reference_figures(rounds: &[(f64, f64)]) -> Option<(String, String)> {
    if rounds.is_empty() {
        return None;
    }
    let ns: Vec<f64> = rounds.iter().map(|r| r.0).collect();
    let ratio: Vec<f64> = rounds.iter().map(|r| r.0 / r.1).collect();
    Some((fmt_spread(spread(&ns), 1), fmt_spread(spread(&ratio), 2)))
}

fn ns(samples: &[Sample]) -> Spread {
    spread(&samples.iter().map(|s| s.ns).collect::<Vec<_>>())
}

/// Per-round ratios balancer / floor (rounds pair up in order).
fn ratios(bal: &[Sample], floor: &[Sample]) -> Spread {
    spread(
        &bal.iter()
            .zip(floor)
            .map(|(b, f)| b.ns / f.ns)
            .collect::<Vec<_>>(),
    )
}

fn on_path(samples: &[Sample]) -> String {
    let worst = samples
        .iter()
        .filter_map(|s| s.on_path)
        .fold(f64::INFINITY, f64::min);
    if worst.is_finite() {
        format!("{:.2}%", worst * 100.0)
    } else {
        "–".into()
    }
}

/// Per-round ratio of two series of `(ns, floor ns)` rounds, formatted.
fn per_round_ratio(a: &[(f64, f64)], b: &[(f64, f64)]) -> String {
    let r: Vec<f64> = a.iter().zip(b).map(|(a, b)| a.0 / b.0).collect();
    fmt_spread(spread(&r), 2)
}

/// Per-round ratios of balancer samples to a reference's rounds.
fn to_reference(bal: &[Sample], reference: &[(f64, f64)]) -> Spread {
    spread(
        &bal.iter()
            .zip(reference)
            .map(|(b, r)| b.ns / r.0)
            .collect::<Vec<_>>(),
    )
}

/// Issue 16's goal for a path against the map-cost references: the
/// verdict, from the median ns of the path, of the references and of the
/// floor under the path's frames. None: no goal for this path.
fn reference_goal(
    kind: Kind,
    ns: f64,
    lookup: f64,
    insert: f64,
    floor: f64,
    bal: &[Sample],
) -> Option<String> {
    let (goal, limit) = match kind {
        Kind::Established => ("≤ 1.5× one lookup", 1.5 * lookup),
        Kind::NewFlow => ("≤ one lookup + floor", lookup + floor),
        Kind::Confirm | Kind::ConfirmNewClient => ("≤ 1.2× one insert", 1.2 * insert),
        _ => return None,
    };
    Some(if !all_on_path(bal) {
        format!("{goal}: not on the path")
    } else if ns.is_nan() || limit.is_nan() {
        format!("{goal}: –")
    } else if ns <= limit {
        format!("{goal} ({limit:.0} ns): met")
    } else {
        format!("{goal} ({limit:.0} ns): **missed**")
    })
}

/// Per-round ratios of two series of samples (rounds pair up in order).
fn sample_ratios(a: &[Sample], b: &[Sample]) -> Spread {
    spread(
        &a.iter()
            .zip(b)
            .map(|(a, b)| a.ns / b.ns)
            .collect::<Vec<_>>(),
    )
}

/// Ours against Katran on the same frames (issue 16: ≤ 1.0× on both
/// established and new flows).
fn katran_md(md: &mut String, r: &peer::Results) {
    let rounds = r.rows.values().map(|(o, _)| o.len()).max().unwrap_or(0);
    let _ = writeln!(
        md,
        "## Per packet, against Katran\n\n\
         Katran's XDP balancer (`{}`, built from Katran's source with its default flags; bench/README.md) and \
         ours, in XDP mode on the same gateway interfaces under the same frames, timed the same way \
         (`run_time_ns / run_cnt`). {rounds} rounds, ours first in odd rounds and Katran first in even ones; \
         median [min–max], the ratio taken per round. Katran is configured as its userspace would: the VIP \
         with no flags, the three backends as reals, a hash ring whose every slot names a real, the next hop's \
         MAC, and a per-CPU LRU of {} entries for each CPU. It encapsulates (IPIP) and sends the frame back out \
         with XDP_TX; nothing decapsulates, and nothing needs to: only program time is measured, and the \
         frames are dropped on arrival either way. New flows (SYNs, and our confirmations) are paced at {} a \
         second, below Katran's flood guard (125,000 new flows a second per CPU, beyond which it skips the \
         insert). *On path*: the smallest share over the rounds; Katran's from its own statistics: an \
         established flow is an LRU hit (`stats[MAX_VIPS+LRU_CNTRS]` packets less misses), a new flow a SYN \
         that missed the LRU (`stats[MAX_VIPS+LRU_MISS_CNTR].v1`) and added an entry to it (entries counted \
         in the per-CPU LRU maps).\n",
        r.obj.display(),
        r.lru_entries,
        peer::NEW_FLOW_RATE,
    );
    let _ = writeln!(
        md,
        "| ours | Katran | ours ns/packet | Katran ns/packet | ours / Katran | goal ≤ 1.0× | on path (ours / Katran) | runs per phase (ours / Katran) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    let empty = (Vec::new(), Vec::new());
    let row = |k: Kind| r.rows.get(&k).unwrap_or(&empty);
    let pairs = [
        (Kind::Established, Kind::Established),
        (Kind::NewFlow, Kind::NewFlow),
        (Kind::NewClient, Kind::NewClient),
        (Kind::Confirm, Kind::NewFlow),
        (Kind::ConfirmNewClient, Kind::NewClient),
    ];
    for (ours_kind, katran_kind) in pairs {
        let ours = &row(ours_kind).0;
        let theirs = &row(katran_kind).1;
        let ratio = sample_ratios(ours, theirs);
        let goal = if ratio.n == 0 {
            "–"
        } else if !all_on_path(ours) || !all_on_path(theirs) {
            "not on the path"
        } else if ratio.median <= 1.0 {
            "met"
        } else {
            "**missed**"
        };
        let katran_label = match katran_kind {
            Kind::Established => "established flow (LRU hit)",
            Kind::NewFlow => "SYN, known client (hash ring + LRU insert)",
            _ => "SYN, new client (hash ring + LRU insert)",
        };
        let runs = |s: &[Sample]| s.iter().map(|s| s.runs).min().unwrap_or(0);
        let _ = writeln!(
            md,
            "| {} | {katran_label} | {} | {} | {} | {goal} | {} / {} | {} / {} |",
            ours_kind.label(),
            fmt_spread(ns(ours), 1),
            fmt_spread(ns(theirs), 1),
            fmt_spread(ratio, 2),
            on_path(ours),
            on_path(theirs),
            runs(ours),
            runs(theirs),
        );
    }
    katran_references_md(md, r);
    let _ = writeln!(
        md,
        "\nOur SYN writes nothing; our durable write happens when the backend's first ACK confirms the flow. \
         Katran writes its LRU entry on the SYN. So Katran's new flow is compared both with our SYN rows and \
         with our confirmation rows (one conntrack insert for a known client; conntrack and affinity inserts \
         for a new one); a new connection costs us a SYN plus a confirmation, Katran a SYN (it never sees \
         the backend's packets).\n"
    );
    let _ = writeln!(
        md,
        "- Katran packets that found no per-CPU LRU (fallback table): {}.\n\
         - Background load (CPUs busy with the bench idle, 1 s): {:.0}% just before the comparison, {:.0}% just \
         after; the whole machine was {:.0}% busy during it (the bench's own sender and softirq included).\n",
        r.fallback,
        r.background_before * 100.0,
        r.background_after * 100.0,
        r.busy_during * 100.0,
    );
}

/// Both programs against the map-cost references timed in the same rounds
/// (issue 16's goals): how far the peer itself is from them.
fn katran_references_md(md: &mut String, r: &peer::Results) {
    if r.references.is_empty() {
        return;
    }
    let empty = (Vec::new(), Vec::new());
    let row = |k: Kind| r.rows.get(&k).unwrap_or(&empty);
    let per_round = |samples: &[Sample], pick: fn(&(f64, f64)) -> f64| {
        spread(
            &samples
                .iter()
                .zip(&r.references)
                .map(|(s, refs)| s.ns / pick(refs))
                .collect::<Vec<_>>(),
        )
    };
    let refs =
        |pick: fn(&(f64, f64)) -> f64| spread(&r.references.iter().map(pick).collect::<Vec<_>>());
    let _ = writeln!(
        md,
        "\nThe same rounds against the one-lookup reference ({} ns) and the one-insert reference ({} ns), timed \
         after the two programs in each round under the same frames and pacing (median [min–max] of per-round \
         ratios). Issue 16's goals: an established flow ≤ 1.5× one lookup; a new connection's durable writes ≤ \
         1.2× one insert (ours are made by the confirmation, Katran's by its SYN).\n\n\
         | path | reference | ours | Katran |\n|---|---|---|---|",
        fmt_spread(refs(|x| x.0), 1),
        fmt_spread(refs(|x| x.1), 1),
    );
    let lookup: fn(&(f64, f64)) -> f64 = |x| x.0;
    let insert: fn(&(f64, f64)) -> f64 = |x| x.1;
    let lines = [
        (
            "established flow",
            "one lookup",
            Kind::Established,
            Kind::Established,
            lookup,
        ),
        (
            "new connection, known client",
            "one insert",
            Kind::Confirm,
            Kind::NewFlow,
            insert,
        ),
        (
            "new connection, new client",
            "one insert",
            Kind::ConfirmNewClient,
            Kind::NewClient,
            insert,
        ),
    ];
    for (label, reference, ours, theirs, pick) in lines {
        let _ = writeln!(
            md,
            "| {label} | {reference} | {} | {} |",
            fmt_spread(per_round(&row(ours).0, pick), 2),
            fmt_spread(per_round(&row(theirs).1, pick), 2),
        );
    }
}

/// Every path against the one-lookup and one-insert references (XDP
/// programs, measured in the same rounds), with issue 16's goals.
fn references_md(md: &mut String, pp: &perpacket::Results) {
    if pp.lookup_reference.is_empty() || pp.insert_reference.is_empty() {
        return;
    }
    let med = |r: &[(f64, f64)]| spread(&r.iter().map(|x| x.0).collect::<Vec<_>>()).median;
    let (lookup, insert) = (med(&pp.lookup_reference), med(&pp.insert_reference));
    let _ = writeln!(
        md,
        "\n### Against the map-cost references\n\n\
         Each path's ns per packet divided by the one-lookup and the one-insert reference's of the same round \
         (median [min–max]; the references are XDP programs, so the TC rows compare a TC path with XDP map \
         calls). Medians: one lookup {lookup:.1} ns, one insert {insert:.1} ns. The goals (issue 16) compare \
         medians in ns.\n"
    );
    let _ = writeln!(
        md,
        "| mode | traffic | ns/packet | × floor | × one lookup | × one insert | goal |\n|---|---|---|---|---|---|---|"
    );
    for ((hook, variant, kind), (bal, floor)) in &pp.rows {
        if *variant != Variant::Normal || *kind == Kind::NonVip {
            continue;
        }
        let goal = reference_goal(*kind, ns(bal).median, lookup, insert, ns(floor).median, bal)
            .unwrap_or_default();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {goal} |",
            hook.name().to_uppercase(),
            kind.label(),
            fmt_spread(ns(bal), 1),
            fmt_spread(ratios(bal, floor), 2),
            fmt_spread(to_reference(bal, &pp.lookup_reference), 2),
            fmt_spread(to_reference(bal, &pp.insert_reference), 2),
        );
    }
}

/// Whether at least 99% of every round's runs took the path timed: a
/// goal is judged only then.
fn all_on_path(samples: &[Sample]) -> bool {
    samples.iter().all(|s| s.on_path.is_some_and(|p| p >= 0.99))
}

fn goal_cell(kind: Kind, ratio: Spread) -> String {
    match kind.goal() {
        Some(g) if ratio.n > 0 => format!(
            "≤ {g}×: {}",
            if ratio.median <= g {
                "met"
            } else {
                "**missed**"
            }
        ),
        _ => String::new(),
    }
}

impl Report<'_> {
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let m = self.machine;
        let _ = writeln!(md, "# Benchmark results\n");
        let _ = writeln!(
            md,
            "`{}`, {} ({:.0} s wall time). Machine: {}, {} cores, {} GiB, kernel {}.\n",
            self.command, m.date, self.wall_secs, m.cpu, m.cores, m.mem_gib, m.kernel
        );
        let busy = m.background_busy * 100.0;
        let warning = if busy > 5.0 {
            " **Other work was running: absolute figures are low and noisy.**"
        } else {
            ""
        };
        let _ = writeln!(
            md,
            "Background load before the run: {busy:.0}% of the CPUs busy.{warning}\n"
        );
        if let Some(pp) = self.per_packet {
            self.per_packet_md(&mut md, pp);
        }
        match self.against_katran {
            Some(peer::Outcome::Measured(r)) => katran_md(&mut md, r),
            Some(peer::Outcome::Skipped(line)) => {
                let _ = writeln!(md, "## Per packet, against Katran\n\n{line}\n");
            }
            None => {}
        }
        if let Some(ul) = self.under_load {
            under_load_md(&mut md, ul);
        }
        if let Some((r, opts)) = self.e2e {
            self.e2e_md(&mut md, r, opts);
        }
        if let Some((r, opts)) = self.proxy {
            proxy_report::markdown(&mut md, r, opts);
        }
        if let Some((r, opts)) = self.flood {
            flood_md(&mut md, r, opts);
        }
        if let Some(r) = self.cluster {
            cluster_report::markdown(&mut md, r);
        }
        if let Some(rows) = self.maglev {
            maglev_md(&mut md, rows);
        }
        self.goals_md(&mut md);
        md
    }

    fn per_packet_md(&self, md: &mut String, pp: &perpacket::Results) {
        let rounds = pp.rows.values().map(|(b, _)| b.len()).max().unwrap_or(0);
        let _ = writeln!(
            md,
            "## Data plane, per packet\n\n\
             The kernel's run statistics (`run_time_ns / run_cnt`, BPF_ENABLE_STATS) of the programs on the gateway's \
             `gwc` and `gwb`, while one kind of crafted TCP traffic at a time crosses the namespace topology \
             (nothing answers it: backends and clients drop port 9999 on arrival). The floor is a two-instruction \
             program (`r0 = XDP_PASS` or `TC_ACT_OK`; `exit`) on the same interfaces under the same frames. \
             Median [min–max] over {rounds} rounds; the ratio is taken per round. *On path*: the smallest share, \
             over the rounds, of program runs that the balancer's own counters (COUNTERS, BACKEND_STATS) place on \
             the path being timed.\n"
        );
        let _ = writeln!(
            md,
            "| mode | traffic | balancer ns/packet | floor ns/packet | ratio to floor | goal | on path | runs per phase |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
        for ((hook, variant, kind), (bal, floor)) in &pp.rows {
            if *variant != Variant::Normal {
                continue;
            }
            let r = ratios(bal, floor);
            let runs = bal.iter().map(|s| s.runs).min().unwrap_or(0);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                hook.name().to_uppercase(),
                kind.label(),
                fmt_spread(ns(bal), 1),
                fmt_spread(ns(floor), 1),
                fmt_spread(r, 2),
                goal_cell(*kind, r),
                on_path(bal),
                runs
            );
        }
        let _ = writeln!(md);
        for a in &pp.attachments {
            let _ = writeln!(md, "- attached: {a}");
        }
        for n in &pp.notes {
            let _ = writeln!(md, "- **note**: {n}");
        }
        if !pp.test_runs.is_empty() {
            let bal = spread(&pp.test_runs.iter().map(|t| t.0).collect::<Vec<_>>());
            let floor = spread(&pp.test_runs.iter().map(|t| t.1).collect::<Vec<_>>());
            let ratio = spread(&pp.test_runs.iter().map(|t| t.0 / t.1).collect::<Vec<_>>());
            let (_, _, repeat, _) = pp.test_runs[0];
            let extra = pp
                .test_runs
                .iter()
                .map(|t| t.3 - u64::from(t.2))
                .max()
                .unwrap_or(0);
            let _ = writeln!(
                md,
                "\nBPF_PROG_TEST_RUN, repeat {repeat}, on the non-VIP frame (passed untouched, so every repetition \
                 sees the same bytes): balancer {} ns, floor {} ns, ratio {}. The balancer's `pass_not_ours` counter \
                 rose by at least the repeat count in every round (by {extra} more at most: live packets on the \
                 interfaces), so every repetition took the timed path. Not used for the rewriting paths: the kernel \
                 reruns the program on the frame the previous run rewrote.",
                fmt_spread(bal, 1),
                fmt_spread(floor, 1),
                fmt_spread(ratio, 2)
            );
        }
        if let Some((ns, ratio)) = reference_figures(&pp.insert_reference) {
            let _ = writeln!(
                md,
                "\nOne insert alone (XDP, the frames of \"SYN, known client\"): a reference program that \
                 builds a flow-sized key from each frame's addresses and ports and makes one `bpf_map_update_elem` \
                 into a new LRU hash of CONNTRACK's size and layout ({} entries), nothing else: {ns} ns, {ratio} × \
                 the floor. A confirmation makes this insert (conntrack), a new client's one more (affinity).",
                balancer_common::maps::MAX_FLOWS,
            );
        }
        if let Some((ns, ratio)) = reference_figures(&pp.insert_pcpu_reference) {
            let _ = writeln!(
                md,
                "\nThe same insert into a map created with `BPF_F_NO_COMMON_LRU` (an LRU list per CPU, each with \
                 its share of the entries, instead of one list under one lock): {ns} ns, {ratio} × the floor, \
                 ratio to the plain insert {}.",
                per_round_ratio(&pp.insert_pcpu_reference, &pp.insert_reference)
            );
        }
        if let Some((ns, ratio)) = reference_figures(&pp.lookup_reference) {
            let _ = writeln!(
                md,
                "\nOne lookup alone (XDP, the frames of \"established flow\", sent twice and the second pass \
                 timed): the same key and map, one `bpf_map_lookup_elem` that finds the flow (an insert only on a \
                 miss, which the first pass takes), nothing else: {ns} ns, {ratio} × the floor. A conntrack hit makes \
                 this lookup; the rest of the hit (parse, service, NAT, counters, next hop) is what the balancer adds."
            );
        }
        references_md(md, pp);
        self.full_tables_md(md, pp);
    }

    fn full_tables_md(&self, md: &mut String, pp: &perpacket::Results) {
        let Some(filled) = &pp.filled else { return };
        let entries = filled.maps.first().map_or(0, |m| m.1);
        let _ = writeln!(
            md,
            "\n### Tables filled ({entries} entries, capacity {})\n",
            balancer_common::maps::MAX_FLOWS
        );
        let _ = writeln!(
            md,
            "| map | entries | fill time (batched updates) | kernel memory (memlock) |\n|---|---|---|---|"
        );
        for (name, n, secs, mem) in &filled.maps {
            let _ = writeln!(
                md,
                "| {name} | {n} | {:.2} s | {:.1} MiB |",
                secs,
                *mem as f64 / 1048576.0
            );
        }
        let _ = writeln!(
            md,
            "\nThe maps are preallocated LRU hashes: their memory is the same empty or full. The daemon's resident \
             memory: {:.1} MiB before the fill, {:.1} MiB after the phases below (it recounts conntrack every second).\n",
            filled.daemon_rss.0 as f64 / 1048576.0,
            filled.daemon_rss.1 as f64 / 1048576.0
        );
        let _ = writeln!(
            md,
            "| traffic (XDP) | ns/packet, tables filled | ns/packet, tables nearly empty | filled / empty | goal ≤ 1.3× (issue 16) | ratio to floor, filled | on path |\n|---|---|---|---|---|---|---|"
        );
        for ((hook, variant, kind), (bal, _)) in &pp.rows {
            if *variant != Variant::FullTables {
                continue;
            }
            let normal = pp.rows.get(&(*hook, Variant::Normal, *kind));
            let empty = normal.map_or(Spread::default(), |(b, _)| ns(b));
            let floor = normal.map_or(f64::NAN, |(_, f)| ns(f).median);
            let full = ns(bal);
            let growth = full.median / empty.median;
            let verdict = if !all_on_path(bal) {
                "not on the path"
            } else if growth.is_nan() {
                "–"
            } else if growth <= 1.3 {
                "met"
            } else {
                "**missed**"
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {growth:.2} | {verdict} | {:.2} | {} |",
                kind.label(),
                fmt_spread(full, 1),
                fmt_spread(empty, 1),
                full.median / floor,
                on_path(bal)
            );
        }
    }

    fn e2e_md(&self, md: &mut String, r: &e2e::Results, opts: &e2e::Options) {
        let rounds = r.runs.rounds();
        let _ = writeln!(
            md,
            "\n## End to end\n\n\
             wrk from 3 client hosts × {CONNECTIONS} connections, {} s per run, {rounds} round(s) (median; \
             [min–max] with more than one), to `GET /` on nginx in 3 backends, through each gateway in turn. \
             Keep-alive: requests on open connections. Close: `Connection: close`, one request per connection \
             (requests/s = new connections/s). p50 is the mean of the hosts' medians, p99 the worst host's. \
             CPU per request: *machine* = all busy time of the 2 CPUs (`/proc/stat`, every namespace: clients, \
             gateway and backends; the same clients and backends in every row, so differences between rows are \
             the gateway's); *softirq* = its part in the kernel's packet processing (every namespace's); \
             *gw procs* = user + system time of the processes in the gateway namespace (the proxies, the daemon).\n",
            opts.duration.as_secs()
        );
        let _ = writeln!(
            md,
            "| gateway | keep-alive req/s | p50 ms | p99 ms | close conn/s | p50 ms | p99 ms | CPU µs/req machine (ka / close) | softirq (ka / close) | gw procs (ka / close) | errors |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
        for g in Gateway::ALL {
            let ka = r.runs.get(g, Workload::KeepAlive);
            let cl = r.runs.get(g, Workload::Close);
            if ka.is_empty() {
                continue;
            }
            let f = |v: &[Measured], pick: fn(&Measured) -> f64, d| {
                fmt_spread(spread(&v.iter().map(pick).collect::<Vec<_>>()), d)
            };
            let med = |v: &[Measured], pick: fn(&Measured) -> f64| {
                spread(&v.iter().map(pick).collect::<Vec<_>>()).median
            };
            let errors: u64 = ka.iter().chain(cl).map(|m| m.load.errors).sum();
            let _ = writeln!(
                md,
                "| {} | {} | {:.2} | {} | {} | {:.2} | {} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} | {} |",
                r.label(g, g.label()),
                f(ka, |m| m.load.per_sec, 0),
                med(ka, |m| m.load.p50_us) / 1e3,
                f(ka, |m| m.load.p99_us / 1e3, 2),
                f(cl, |m| m.load.per_sec, 0),
                med(cl, |m| m.load.p50_us) / 1e3,
                f(cl, |m| m.load.p99_us / 1e3, 2),
                med(ka, |m| m.cpu.machine_us),
                med(cl, |m| m.cpu.machine_us),
                med(ka, |m| m.cpu.softirq_us),
                med(cl, |m| m.cpu.softirq_us),
                med(ka, |m| m.cpu.gateway_procs_us),
                med(cl, |m| m.cpu.gateway_procs_us),
                errors
            );
        }
        for n in &r.notes {
            let _ = writeln!(md, "\n- **note**: {n}");
        }
    }

    fn goals_md(&self, md: &mut String) {
        let _ = writeln!(md, "\n## Goals (issue 7)\n");
        if let Some(pp) = self.per_packet {
            for (kind, goal) in [
                (Kind::Established, 4.0),
                (Kind::NewFlow, 8.0),
                (Kind::NewClient, 8.0),
            ] {
                for hook in [Hook::Xdp, Hook::Tc] {
                    if let Some((b, f)) = pp.rows.get(&(hook, Variant::Normal, kind)) {
                        let r = ratios(b, f).median;
                        let verdict = if r <= goal { "met" } else { "**missed**" };
                        let _ = writeln!(
                            md,
                            "- {} ({}): {r:.2}× the floor, goal ≤ {goal}×: {verdict}",
                            kind.label(),
                            hook.name().to_uppercase()
                        );
                    }
                }
            }
        }
        if let Some((r, _)) = self.e2e {
            for hook in [Hook::Xdp, Hook::Tc] {
                let me = Gateway::Balancer(hook);
                if r.not_as_asked.contains(&me) {
                    let _ = writeln!(
                        md,
                        "- end to end ({}): not measured, the daemon attached XDP",
                        hook.name().to_uppercase()
                    );
                    continue;
                }
                for workload in [Workload::KeepAlive, Workload::Close] {
                    let med = |g: Gateway, pick: fn(&Measured) -> f64| {
                        spread(&r.runs.get(g, workload).iter().map(pick).collect::<Vec<_>>()).median
                    };
                    let ours = (med(me, |m| m.load.per_sec), med(me, |m| m.load.p99_us));
                    if ours.0.is_nan() {
                        continue;
                    }
                    let mut losses = Vec::new();
                    for peer in Gateway::ALL.into_iter().filter(|g| g.is_peer()) {
                        let theirs = (med(peer, |m| m.load.per_sec), med(peer, |m| m.load.p99_us));
                        if theirs.0 >= ours.0 {
                            losses.push(format!(
                                "{} has more requests/s ({:.0} vs {:.0})",
                                peer.short(),
                                theirs.0,
                                ours.0
                            ));
                        }
                        if theirs.1 <= ours.1 {
                            losses.push(format!(
                                "{} has a lower p99 ({:.2} vs {:.2} ms)",
                                peer.short(),
                                theirs.1 / 1e3,
                                ours.1 / 1e3
                            ));
                        }
                    }
                    let what = match workload {
                        Workload::KeepAlive => "keep-alive",
                        Workload::Close => "new connections",
                    };
                    let verdict = if losses.is_empty() {
                        "met".to_owned()
                    } else {
                        format!("**missed**: {}", losses.join("; "))
                    };
                    let _ = writeln!(
                        md,
                        "- end to end, {what} ({}): ahead of every peer on req/s and p99: {verdict}",
                        hook.name().to_uppercase()
                    );
                }
            }
        }
    }
}

fn workload_label(w: Workload) -> &'static str {
    match w {
        Workload::KeepAlive => "wrk keep-alive",
        Workload::Close => "wrk `Connection: close`",
    }
}

fn under_load_md(md: &mut String, ul: &underload::Results) {
    let rounds = ul.runs.first().map_or(0, |r| r.1.len());
    let _ = writeln!(
        md,
        "\n### Under real HTTP traffic\n\n\
         The same statistics while wrk (3 hosts × {CONNECTIONS} connections) runs through the balancer (XDP), then \
         through nftables DNAT with the floor program on the same interfaces. Every packet of both directions \
         (one program serves both interfaces today). Median [min–max] over {rounds} round(s).\n"
    );
    let _ = writeln!(
        md,
        "| traffic | balancer ns/packet | floor ns/packet | ratio | program runs per request | balancer's counters per request |\n|---|---|---|---|---|---|"
    );
    for (w, bal, floor) in &ul.runs {
        let ns_of = |v: &[underload::Run]| spread(&v.iter().map(|r| r.ns).collect::<Vec<_>>());
        let ratio = spread(
            &bal.iter()
                .zip(floor)
                .map(|(b, f)| b.ns / f.ns)
                .collect::<Vec<_>>(),
        );
        let ppr = spread(
            &bal.iter()
                .map(|r| r.packets_per_request)
                .collect::<Vec<_>>(),
        );
        let counters = ul
            .counters
            .iter()
            .find(|(cw, _)| cw == w)
            .map(|(_, c)| {
                c.iter()
                    .map(|(n, v)| format!("{n} {v:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {counters} |",
            workload_label(*w),
            fmt_spread(ns_of(bal), 1),
            fmt_spread(ns_of(floor), 1),
            fmt_spread(ratio, 2),
            fmt_spread(ppr, 2)
        );
    }
}

fn flood_md(md: &mut String, r: &flood::Results, opts: &flood::Options) {
    let _ = writeln!(
        md,
        "\n## New connections under a spoofed SYN flood\n\n\
         wrk `Connection: close` from 3 client hosts × {CONNECTIONS} connections, {} s per run, through each \
         gateway: first alone (quiet), then while TCP SYNs from random spoofed sources in 198.19.0.0/16 and \
         random ports go to the same VIP:port from the client namespace, paced at {} a second (one thread, \
         started 0.5 s before wrk, stopped 1 s after it). The sources are unrouted in the gateway, so the \
         backends' SYN-ACKs die there. One run each: compare the rows of one run. *Counted*: connections the \
         balancer counted during the flooded run (it counts a connection when its backend confirms it), \
         against wrk's requests; *conntrack*: its entries right after.\n",
        opts.duration.as_secs(),
        opts.rate
    );
    let _ = writeln!(
        md,
        "| gateway | conn/s quiet | p99 ms quiet | conn/s flooded | p99 ms flooded | flooded / quiet conn/s | errors (quiet / flooded) | spoofed SYNs sent (per s) | counted / requests, conntrack after |\n|---|---|---|---|---|---|---|---|---|"
    );
    for row in &r.rows {
        let balancer = row.balancer.map_or("–".to_owned(), |(counted, entries)| {
            format!("{counted} / {}, {entries}", row.flooded.requests)
        });
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.2} | {:.0} | {:.2} | {:.2} | {} / {} | {} ({:.0}) | {balancer} |",
            row.gateway.label(),
            row.quiet.per_sec,
            row.quiet.p99_us / 1e3,
            row.flooded.per_sec,
            row.flooded.p99_us / 1e3,
            row.flooded.per_sec / row.quiet.per_sec,
            row.quiet.errors,
            row.flooded.errors,
            row.flood.frames,
            row.flood.per_second()
        );
    }
    for n in &r.notes {
        let _ = writeln!(md, "\n- **note**: {n}");
    }
}

fn maglev_md(md: &mut String, rows: &[maglev::Row]) {
    let _ = writeln!(
        md,
        "\n## Maglev tables\n\n\
         Build: `balancer_common::maglev::build`, median [min–max] ms. Swap: the daemon's `write_service` on a loaded \
         data plane (the table built from the backend set, batched write of the M slots into the idle half, flip), one \
         backend more each time; in brackets the build alone (`next_table`), the rest is the map writes. Moved: share of slots whose backend changes when one backend joins or leaves, \
         with the build the daemon uses (a fresh one, from the set alone) / the ideal 1/N.\n"
    );
    let _ = writeln!(
        md,
        "| backends | M | build ms | swap ms | moved on join | moved on leave |\n|---|---|---|---|---|---|"
    );
    for r in rows {
        let pct = |t: (f64, f64)| format!("{:.3}% / {:.3}%", t.0 * 100.0, t.1 * 100.0);
        let swap = r.swap_ms.map_or_else(
            || {
                format!(
                    "n/a (BACKENDS holds {})",
                    balancer_common::maps::MAX_BACKENDS
                )
            },
            |(total, build)| format!("{} (build {})", fmt_spread(total, 1), fmt_spread(build, 1)),
        );
        let _ = writeln!(
            md,
            "| {} | {} | {} | {swap} | {} | {} |",
            r.backends,
            r.m,
            fmt_spread(r.build_ms, 1),
            pct(r.moved_join),
            pct(r.moved_leave)
        );
    }
}

/// A bar chart of the end-to-end comparison: requests/s with keep-alive
/// and new connections/s, per gateway (hand-written SVG).
pub fn svg(r: &e2e::Results, machine: &Machine) -> String {
    let gateways: Vec<Gateway> = Gateway::ALL
        .into_iter()
        .filter(|g| !r.runs.get(*g, Workload::KeepAlive).is_empty())
        .collect();
    let med = |g: Gateway, w: Workload| {
        spread(
            &r.runs
                .get(g, w)
                .iter()
                .map(|m| m.load.per_sec)
                .collect::<Vec<_>>(),
        )
        .median
    };
    let max = gateways
        .iter()
        .flat_map(|g| [med(*g, Workload::KeepAlive), med(*g, Workload::Close)])
        .fold(1.0, f64::max);
    let (left, width, row, bar) = (200.0, 500.0, 46.0, 18.0);
    let height = 70.0 + row * gateways.len() as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">",
        w = left + width + 90.0
    );
    let _ = writeln!(s, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
    let _ = writeln!(
        s,
        "<text x=\"10\" y=\"18\" font-size=\"14\" font-weight=\"bold\">End to end: wrk, 3 hosts × {CONNECTIONS} connections, nginx backends</text>"
    );
    let _ = writeln!(
        s,
        "<text x=\"10\" y=\"36\" fill=\"#555\">{}, {} cores, kernel {}</text>",
        escape(&machine.cpu),
        machine.cores,
        machine.kernel
    );
    let _ = writeln!(
        s,
        "<rect x=\"{left}\" y=\"44\" width=\"12\" height=\"10\" fill=\"#2b6cb0\"/><text x=\"{}\" y=\"53\">requests/s, keep-alive</text>",
        left + 16.0
    );
    let _ = writeln!(
        s,
        "<rect x=\"{}\" y=\"44\" width=\"12\" height=\"10\" fill=\"#dd6b20\"/><text x=\"{}\" y=\"53\">new connections/s</text>",
        left + 180.0,
        left + 196.0
    );
    for (i, g) in gateways.iter().enumerate() {
        let y = 64.0 + row * i as f64;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            left - 8.0,
            y + bar,
            escape(&r.label(*g, g.short()))
        );
        for (j, (w, color)) in [
            (Workload::KeepAlive, "#2b6cb0"),
            (Workload::Close, "#dd6b20"),
        ]
        .into_iter()
        .enumerate()
        {
            let v = med(*g, w);
            let len = if v.is_finite() { v / max * width } else { 0.0 };
            let by = y + j as f64 * (bar + 2.0);
            let _ = writeln!(
                s,
                "<rect x=\"{left}\" y=\"{by}\" width=\"{len:.1}\" height=\"{bar}\" fill=\"{color}\"/>"
            );
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\">{v:.0}</text>",
                left + len + 4.0,
                by + bar - 5.0
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_path(share: f64) -> Vec<Sample> {
        vec![Sample {
            ns: 0.0,
            runs: 1,
            on_path: Some(share),
        }]
    }

    /// Issue 16's goals against the references, judged in ns, and only
    /// on a path the counters confirm.
    #[test]
    fn reference_goals() {
        let on = on_path(1.0);
        let goal = |kind, ns| reference_goal(kind, ns, 100.0, 400.0, 30.0, &on).unwrap();
        assert!(goal(Kind::Established, 150.0).ends_with("met"));
        assert!(goal(Kind::Established, 151.0).ends_with("**missed**"));
        assert!(goal(Kind::NewFlow, 130.0).ends_with("met"));
        assert!(goal(Kind::NewFlow, 131.0).ends_with("**missed**"));
        assert!(goal(Kind::ConfirmNewClient, 480.0).ends_with("met"));
        assert!(goal(Kind::Confirm, 481.0).ends_with("**missed**"));
        assert_eq!(
            reference_goal(Kind::Reply, 1.0, 100.0, 400.0, 30.0, &on),
            None
        );
        let off = on_path(0.5);
        assert!(
            reference_goal(Kind::Established, 1.0, 100.0, 400.0, 30.0, &off)
                .unwrap()
                .ends_with("not on the path")
        );
    }
}
