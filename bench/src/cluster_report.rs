//! The results of the `cluster` part as Markdown: what one peer link
//! carries, and what a new client costs the data plane by who reads the
//! kernel's reports.

use std::fmt::Write as _;

use crate::{
    cluster::{Reader, Results, Step},
    summary::spread,
};

pub fn markdown(md: &mut String, r: &Results) {
    let _ = writeln!(
        md,
        "\n## Affinity replicated between two gateways\n\n\
         Gateway A is the testbed's gateway, gateway B a namespace of its own linked to A by a veth; both \
         daemons run the bench's services with `[cluster]` naming each other. A's new entries come from real \
         confirmations through A's data plane (each never-seen client's flow confirmed by the backend its Maglev \
         slot names, every backend in turn), offered at each step's rate; between steps both gateways' tables \
         are emptied. *Sent by A* / *received by B* / *inserted by B*: the daemons' `balancer cluster status \
         --json` counts; *B's rate*: entries B received over the time from the first confirmation to the last \
         client's entry on B. *Lag*: from A's kernel storing an entry (its `last_seen_ns`) to B's AFFINITY \
         having it, for {} sampled clients (the last one among them), watched every 0.5 ms; *first → last*: \
         the earliest and the last sample, a lag that grows means B falls behind. *Wire*: bytes both ways on \
         the link's veth (frames, TCP/IP headers, acks and pings) per entry received. *CPU*: user + system time \
         of each daemon over the step (`/proc/PID/stat`, 10 ms ticks) per 1000 entries received.\n",
        crate::cluster::LAG_SAMPLES + 1
    );
    let _ = writeln!(
        md,
        "| offered new clients/s | sent | stored on A (lost reports) | sent by A | received by B | inserted by B | send s | B's rate /s | lag ms median [first → last, max] | wire B/entry | CPU A ms/1000 | CPU B ms/1000 |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for s in &r.steps {
        let _ = writeln!(md, "{}", step_row(s));
    }
    let _ = writeln!(
        md,
        "\n**A new client's confirmation by who reads the reports.** The per-packet cost (`run_time_ns / run_cnt`, \
         XDP, A's programs) of the \"confirmation, new client\" frames, unpaced, a fresh daemon each; median \
         [min–max] over the rounds. The kernel always reports (`BPF_RB_NO_WAKEUP` until an eighth of the buffer \
         waits, then a forced wakeup for each report); *lost*: reports the full buffer refused \
         (`affinity_report_failed`) over the rounds.\n\n\
         | reader | ns per run | on path | lost |\n|---|---|---|---|"
    );
    for (reader, samples) in &r.cost {
        let ns: Vec<f64> = samples.iter().map(|s| s.ns).collect();
        let on: Vec<f64> = samples.iter().filter_map(|s| s.on_path).collect();
        let s = spread(&ns);
        let _ = writeln!(
            md,
            "| {} | {:.1} [{:.1}–{:.1}] | {:.0}% | {} |",
            reader.label(),
            s.median,
            s.min,
            s.max,
            on.iter().copied().fold(f64::INFINITY, f64::min) * 100.0,
            r.cost_lost.get(reader).copied().unwrap_or(0)
        );
    }
    if let (Some(d), Some(c)) = (
        r.cost.get(&Reader::Discarding),
        r.cost.get(&Reader::Streaming),
    ) {
        let med = |v: &[crate::perpacket::Sample]| {
            spread(&v.iter().map(|s| s.ns).collect::<Vec<_>>()).median
        };
        let _ = writeln!(
            md,
            "\nWith a peer / without `[cluster]`: {:.2}×.",
            med(c) / med(d)
        );
    }
}

fn step_row(s: &Step) -> String {
    let lags: Vec<f64> = s.lags_ms.iter().flatten().copied().collect();
    let l = spread(&lags);
    let first = s.lags_ms.first().copied().flatten();
    let last = s.lags_ms.last().copied().flatten();
    let ms = |v: Option<f64>| v.map_or("never".to_owned(), |v| format!("{v:.0}"));
    let unseen = s.lags_ms.iter().filter(|l| l.is_none()).count();
    let unseen = if unseen > 0 {
        format!(", {unseen} never seen")
    } else {
        String::new()
    };
    let per_1000 = |ms: f64| ms * 1000.0 / s.received_b.max(1) as f64;
    format!(
        "| {} | {} | {} ({}) | {} | {} | {} | {:.2} | {:.0} | {:.0} [{} → {}, {:.0}{unseen}] | {:.0} | {:.1} | {:.1} |",
        s.offered.map_or("unpaced".to_owned(), |r| r.to_string()),
        s.sent,
        s.stored_a,
        s.lost_a,
        s.sent_by_a,
        s.received_b,
        s.inserted_b,
        s.send_secs,
        s.received_per_sec(),
        l.median,
        ms(first),
        ms(last),
        l.max,
        s.wire_bytes as f64 / s.received_b.max(1) as f64,
        per_1000(s.cpu_a_ms),
        per_1000(s.cpu_b_ms),
    )
}
