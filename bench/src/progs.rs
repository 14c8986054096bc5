//! Which BPF programs sit on an interface, and the kernel's run statistics
//! for them. Found generically (the bench does not ask the daemon), so it
//! works whether one program serves both interfaces or each has its own,
//! and whatever way TC is attached (tcx link or cls_bpf filter).

use std::{collections::BTreeSet, os::fd::OwnedFd, process::Command};

use anyhow::{Context as _, Result};
use aya::{
    programs::{
        ProgramFd, ProgramInfo, loaded_programs,
        tc::{SchedClassifier, TcAttachType},
    },
    sys::{Stats, enable_stats},
};
use balancer_tests::NetNs;
use serde_json::Value;

use crate::bpf::Hook;

/// A program attached to an interface, and how.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Attached {
    pub id: u32,
    pub hook: Hook,
    /// "xdp", "tcx" or "cls_bpf".
    pub how: &'static str,
}

/// Every program on `ifname` in `ns`: XDP (`ip -d -j link`), tcx ingress
/// (BPF_PROG_QUERY) and cls_bpf ingress filters (`tc -j filter`).
pub fn attached(ns: &NetNs, ifname: &str) -> Result<Vec<Attached>> {
    let mut found = Vec::new();
    let link = json(Command::new("ip").args([
        "-n",
        ns.name(),
        "-d",
        "-j",
        "link",
        "show",
        "dev",
        ifname,
    ]))?;
    let xdp = &link[0]["xdp"];
    let ids = xdp["prog"]["id"].as_u64().into_iter().chain(
        xdp["attached"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["prog"]["id"].as_u64()),
    );
    found.extend(ids.map(|id| Attached {
        id: id as u32,
        hook: Hook::Xdp,
        how: "xdp",
    }));

    let tcx = ns.run(|| SchedClassifier::query_tcx(ifname, TcAttachType::Ingress));
    // No tcx programs (or a kernel without tcx) is simply none found.
    if let Ok((_, programs)) = tcx {
        found.extend(programs.iter().map(|p| Attached {
            id: p.id(),
            hook: Hook::Tc,
            how: "tcx",
        }));
    }

    let filters = json(Command::new("tc").args([
        "-n",
        ns.name(),
        "-j",
        "filter",
        "show",
        "dev",
        ifname,
        "ingress",
    ]))
    .unwrap_or(Value::Null);
    let cls = filters
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["options"]["prog"]["id"].as_u64());
    found.extend(cls.map(|id| Attached {
        id: id as u32,
        hook: Hook::Tc,
        how: "cls_bpf",
    }));
    found.sort();
    found.dedup();
    Ok(found)
}

fn json(cmd: &mut Command) -> Result<Value> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text).with_context(|| format!("{cmd:?} printed no JSON"))
}

/// The distinct program ids of `hook` on the given interfaces.
pub fn ids_on(ns: &NetNs, ifnames: &[&str], hook: Hook) -> Result<BTreeSet<u32>> {
    let mut ids = BTreeSet::new();
    for ifname in ifnames {
        ids.extend(
            attached(ns, ifname)?
                .into_iter()
                .filter(|a| a.hook == hook)
                .map(|a| a.id),
        );
    }
    Ok(ids)
}

/// `run_time_ns` and `run_cnt`, summed over a set of programs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    pub time_ns: u64,
    pub count: u64,
}

impl RunStats {
    pub fn since(self, before: RunStats) -> RunStats {
        RunStats {
            time_ns: self.time_ns - before.time_ns,
            count: self.count - before.count,
        }
    }

    pub fn ns_per_run(self) -> f64 {
        if self.count == 0 {
            f64::NAN
        } else {
            self.time_ns as f64 / self.count as f64
        }
    }
}

pub fn run_stats(ids: &BTreeSet<u32>) -> Result<RunStats> {
    let mut total = RunStats::default();
    let mut seen = 0;
    for info in loaded_programs() {
        let info = info.context("listing BPF programs")?;
        if ids.contains(&info.id()) {
            total.time_ns += info.run_time().as_nanos() as u64;
            total.count += info.run_count();
            seen += 1;
        }
    }
    anyhow::ensure!(
        seen == ids.len(),
        "programs {ids:?}: only {seen} still loaded"
    );
    Ok(total)
}

/// An fd for program `id` (for BPF_PROG_TEST_RUN).
pub fn prog_fd(id: u32) -> Result<ProgramFd> {
    let info: ProgramInfo = loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .with_context(|| format!("no BPF program with id {id}"))?;
    Ok(info.fd()?)
}

/// The kernel counts run time and runs of every program while this is held
/// (BPF_ENABLE_STATS, the same switch as `sysctl kernel.bpf_stats_enabled`,
/// but released by the kernel when the bench exits, even on a crash).
pub struct StatsEnabled(#[allow(dead_code)] OwnedFd);

pub fn enable_run_stats() -> Result<StatsEnabled> {
    Ok(StatsEnabled(
        enable_stats(Stats::RunTime).context("BPF_ENABLE_STATS")?,
    ))
}
