//! CPU time spent during a load run. What can be measured honestly on one
//! machine where clients, gateway and backends share the CPUs:
//!
//! - the machine's busy time (`/proc/stat`: everything but idle and
//!   iowait), all namespaces together: the clients and backends are the same
//!   in every row, so differences between rows are the gateway's;
//! - the softirq part of it, where the kernel's packet processing runs
//!   (XDP, TC, netfilter, routing: every namespace's, not only the gateway's);
//! - the gateway namespace's processes (the proxies, the balancer daemon):
//!   user + system time from `/proc/<pid>/stat`.

use std::{fs, os::unix::fs::MetadataExt as _};

use anyhow::{Context as _, Result};
use balancer_tests::NetNs;

/// Clock ticks, in jiffies.
#[derive(Clone, Copy, Debug, Default)]
pub struct Snapshot {
    busy: u64,
    softirq: u64,
    gateway_procs: u64,
}

/// Per-request CPU, in µs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PerRequest {
    pub machine_us: f64,
    pub softirq_us: f64,
    pub gateway_procs_us: f64,
}

fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as f64
}

pub fn snapshot(gw: &NetNs) -> Result<Snapshot> {
    let stat = fs::read_to_string("/proc/stat")?;
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .context("/proc/stat has no cpu line")?
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is in user).
    let total: u64 = cpu.iter().take(8).sum();
    let busy = total - cpu[3] - cpu[4];
    Ok(Snapshot {
        busy,
        softirq: cpu[6],
        gateway_procs: gateway_process_ticks(gw)?,
    })
}

/// Sum of utime + stime of every process in `gw`'s network namespace.
fn gateway_process_ticks(gw: &NetNs) -> Result<u64> {
    let ino = fs::metadata(format!("/run/netns/{}", gw.name()))?.ino();
    let mut ticks = 0;
    for entry in fs::read_dir("/proc")?.flatten() {
        let path = entry.path();
        let in_gw = fs::metadata(path.join("ns/net")).is_ok_and(|m| m.ino() == ino);
        if !in_gw {
            continue;
        }
        // Fields after the command name (which may hold spaces): state is
        // field 3, utime 14 and stime 15.
        let Ok(stat) = fs::read_to_string(path.join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        ticks += f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        ticks += f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    Ok(ticks)
}

impl Snapshot {
    pub fn per_request(self, before: Snapshot, requests: u64) -> PerRequest {
        let us = |ticks: u64| ticks as f64 / ticks_per_sec() * 1e6 / requests.max(1) as f64;
        PerRequest {
            machine_us: us(self.busy - before.busy),
            softirq_us: us(self.softirq - before.softirq),
            gateway_procs_us: us(self.gateway_procs.saturating_sub(before.gateway_procs)),
        }
    }
}
