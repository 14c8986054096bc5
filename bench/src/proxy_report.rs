//! The L7 comparison's section of the results: the figures per gateway,
//! the balancer / HAProxy ratios with issue 19's goal, and what the daemon
//! counted (how requests were routed, backend connections per request).

use std::fmt::Write as _;

use crate::{
    e2e,
    l7::{Job, L7Gateway},
    proxy::{Measured, Results},
    summary::{fmt_spread, spread},
    wrk::{CONNECTIONS, Workload},
};

const WORKLOADS: [Workload; 2] = [Workload::KeepAlive, Workload::Close];

/// One compared figure: its workload, how it is read from a run, whether
/// more is better, its name in the verdict.
type Check = (Workload, fn(&Measured) -> f64, bool, &'static str);

fn med(v: &[Measured], pick: fn(&Measured) -> f64) -> f64 {
    spread(&v.iter().map(pick).collect::<Vec<_>>()).median
}

fn cell(v: &[Measured], pick: fn(&Measured) -> f64, digits: usize) -> String {
    fmt_spread(spread(&v.iter().map(pick).collect::<Vec<_>>()), digits)
}

/// Per-round ratios ours / theirs (rounds pair up in order), formatted,
/// and their median.
fn ratio(ours: &[Measured], theirs: &[Measured], pick: fn(&Measured) -> f64) -> (String, f64) {
    let r: Vec<f64> = ours
        .iter()
        .zip(theirs)
        .map(|(a, b)| pick(a) / pick(b))
        .collect();
    let s = spread(&r);
    (fmt_spread(s, 2), s.median)
}

pub fn markdown(md: &mut String, r: &Results, opts: &e2e::Options) {
    let rounds = r.runs.rounds();
    let _ = writeln!(
        md,
        "\n## The L7 path against HAProxy\n\n\
         wrk from 3 client hosts × {CONNECTIONS} connections, {} s per run, {rounds} round(s) (median; [min–max] \
         with more than one), to nginx in 3 backends, through each gateway in turn. *X-Forwarded-For*: each wrk \
         host is a trusted proxy sending `X-Forwarded-For: 203.0.113.<n>`; the backend is chosen by that \
         address, and n is picked per gateway (by asking it) so that host i's client lands on backend bi in \
         every row. *sid*: host i requests `/?EIO=4&transport=polling&sid=bi.…`; the balancer and HAProxy \
         (`use-server` on the sid's prefix) send it to the backend named bi. So every row gives each nginx one \
         wrk host. The balancer runs in TC mode. Keep-alive: \
         requests on open connections; close: `Connection: close` (requests/s = new connections/s). p50 is the \
         mean of the hosts' medians, p99 the worst host's. CPU per request: *gateway process* = user + system \
         time of the processes in the gateway namespace (the daemon, or HAProxy) over the run; *machine* = all \
         busy time of the CPUs (clients, gateway, backends and every namespace's softirq), which is where the \
         kernel path's work shows.\n",
        opts.duration.as_secs()
    );
    let _ = writeln!(
        md,
        "| gateway | keep-alive req/s | p50 ms | p99 ms | close conn/s | p50 ms | p99 ms | CPU µs/req gateway process (ka / close) | machine (ka / close) | errors |\n\
         |---|---|---|---|---|---|---|---|---|---|"
    );
    for g in L7Gateway::ALL {
        let ka = r.runs.get(g, Workload::KeepAlive);
        let cl = r.runs.get(g, Workload::Close);
        if ka.is_empty() {
            continue;
        }
        let errors: u64 = ka.iter().chain(cl).map(|m| m.load.errors).sum();
        let _ = writeln!(
            md,
            "| {} | {} | {:.2} | {} | {} | {:.2} | {} | {:.1} / {:.1} | {:.1} / {:.1} | {errors} |",
            g.label(),
            cell(ka, |m| m.load.per_sec, 0),
            med(ka, |m| m.load.p50_us) / 1e3,
            cell(ka, |m| m.load.p99_us / 1e3, 2),
            cell(cl, |m| m.load.per_sec, 0),
            med(cl, |m| m.load.p50_us) / 1e3,
            cell(cl, |m| m.load.p99_us / 1e3, 2),
            med(ka, |m| m.cpu.gateway_procs_us),
            med(cl, |m| m.cpu.gateway_procs_us),
            med(ka, |m| m.cpu.machine_us),
            med(cl, |m| m.cpu.machine_us),
        );
    }
    ratios_md(md, r);
    counted_md(md, r);
    for n in &r.notes {
        let _ = writeln!(md, "\n- **note**: {n}");
    }
}

/// Balancer / HAProxy per job, and issue 19's goal: ahead of HAProxy.
fn ratios_md(md: &mut String, r: &Results) {
    let _ = writeln!(
        md,
        "\nBalancer / HAProxy, the ratio taken per round (above 1 is better for req/s, below 1 for p99 and CPU):\n\n\
         | job | keep-alive req/s | close conn/s | p99 keep-alive | p99 close | gateway process CPU/req (ka) | (close) | ahead of HAProxy (issue 19) |\n\
         |---|---|---|---|---|---|---|---|"
    );
    let pairs = [
        (
            Job::ForwardedFor,
            L7Gateway::Haproxy(Job::ForwardedFor),
            "X-Forwarded-For",
        ),
        (Job::Sid, L7Gateway::Haproxy(Job::Sid), "sid"),
        (
            Job::Sid,
            L7Gateway::HaproxyReuseAlways(Job::Sid),
            "sid, against HAProxy `http-reuse always`",
        ),
    ];
    for (job, haproxy, name) in pairs {
        let ours = |w| r.runs.get(L7Gateway::Balancer(job), w);
        let theirs = |w| r.runs.get(haproxy, w);
        if ours(Workload::KeepAlive).is_empty() || theirs(Workload::KeepAlive).is_empty() {
            continue;
        }
        let mut cells = Vec::new();
        let mut behind = Vec::new();
        let checks: [Check; 6] = [
            (
                Workload::KeepAlive,
                |m| m.load.per_sec,
                true,
                "keep-alive req/s",
            ),
            (Workload::Close, |m| m.load.per_sec, true, "conn/s"),
            (
                Workload::KeepAlive,
                |m| m.load.p99_us,
                false,
                "keep-alive p99",
            ),
            (Workload::Close, |m| m.load.p99_us, false, "close p99"),
            (
                Workload::KeepAlive,
                |m| m.cpu.gateway_procs_us,
                false,
                "keep-alive CPU/req",
            ),
            (
                Workload::Close,
                |m| m.cpu.gateway_procs_us,
                false,
                "close CPU/req",
            ),
        ];
        for (w, pick, higher_is_better, what) in checks {
            let (text, median) = ratio(ours(w), theirs(w), pick);
            let ahead = if higher_is_better {
                median > 1.0
            } else {
                median < 1.0
            };
            if !ahead {
                behind.push(what);
            }
            cells.push(text);
        }
        let verdict = if behind.is_empty() {
            "met".to_owned()
        } else {
            format!("**missed**: not ahead on {}", behind.join(", "))
        };
        let _ = writeln!(md, "| {name} | {} | {verdict} |", cells.join(" | "));
    }
}

/// What the gateways counted, summed over the rounds: every request
/// routed as intended, the spread over the backends, and how often a
/// backend connection was opened (keep-alive reuses one while requests go
/// to one backend).
fn counted_md(md: &mut String, r: &Results) {
    let _ = writeln!(
        md,
        "\nWhat the gateways counted, summed over the rounds: the daemon's `balancer status` (requests by what \
         routed them, input refused, connections each backend was sent) and HAProxy's `show stat` (`req_tot` \
         and `connect` per server). wrk counts only completed requests, the gateways also those cut at the end \
         of a run.\n\n\
         | gateway | workload | wrk requests | daemon: by sid / by client address / refused | requests per backend (HAProxy) | connections per backend | backend connections per request |\n\
         |---|---|---|---|---|---|---|"
    );
    let joined = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(" / ");
    // Element-wise sums of per-backend counts over the rounds.
    let sum = |vs: Vec<&Vec<u64>>| -> Vec<u64> {
        let n = vs.iter().map(|v| v.len()).max().unwrap_or(0);
        (0..n)
            .map(|i| vs.iter().filter_map(|v| v.get(i)).sum())
            .collect()
    };
    for g in L7Gateway::ALL {
        for w in WORKLOADS {
            let runs = r.runs.get(g, w);
            if runs.is_empty() {
                continue;
            }
            let requests: u64 = runs.iter().map(|m| m.load.requests).sum();
            let daemon: Vec<&[u64; 3]> = runs
                .iter()
                .filter_map(|m| m.routed.daemon.as_ref())
                .collect();
            let daemon = if daemon.is_empty() {
                "–".to_owned()
            } else {
                joined(
                    &(0..3)
                        .map(|i| daemon.iter().map(|d| d[i]).sum())
                        .collect::<Vec<u64>>(),
                )
            };
            let per_backend: Vec<&Vec<u64>> = runs
                .iter()
                .filter_map(|m| m.routed.backend_requests.as_ref())
                .collect();
            let backend_requests = if per_backend.is_empty() {
                "–".to_owned()
            } else {
                joined(&sum(per_backend))
            };
            let connections = sum(runs.iter().map(|m| &m.routed.backend_connections).collect());
            let _ = writeln!(
                md,
                "| {} | {} | {requests} | {daemon} | {backend_requests} | {} | {:.3} |",
                g.label(),
                match w {
                    Workload::KeepAlive => "keep-alive",
                    Workload::Close => "close",
                },
                joined(&connections),
                connections.iter().sum::<u64>() as f64 / requests.max(1) as f64,
            );
        }
    }
}
