//! The control plane's side of scale: Maglev table builds for 1k and 10k
//! backends, the disruption one backend joining or leaving causes, and the
//! swap of a table into the kernel through the daemon's own map writer.

use std::{str::FromStr as _, time::Instant};

use anyhow::{Context as _, Result};
use balancer_common::maglev::{MaglevBackend, build};
use balancer_tests::bpffs::TempBpffs;
use balancer_user::{adopt, config::Config, dataplane::DataPlane, state};

use crate::summary::{Spread, spread};

#[derive(Clone, Debug)]
pub struct Row {
    pub backends: u32,
    pub m: u32,
    /// Fresh build, ms.
    pub build_ms: Spread,
    /// Share of slots moved when one backend joins / leaves: the build the
    /// daemon does (a fresh one, from the set alone), against the ideal.
    pub moved_join: (f64, f64),
    pub moved_leave: (f64, f64),
    /// `write_service`: build, batched write of M slots, flip; and the
    /// build alone (`next_table`); ms. None where the backends do not fit
    /// the BACKENDS map.
    pub swap_ms: Option<(Spread, Spread)>,
}

fn backends(n: u32) -> Vec<MaglevBackend> {
    (0..n)
        .map(|i| MaglevBackend {
            identity: [0xc612_0000 | i, 0, 0, 0, 8080, 4],
            weight: 1,
        })
        .collect()
}

fn moved(a: &[u32], b: &[u32]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64
}

pub fn run(sizes: &[(u32, u32)], repeats: usize) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &(n, m) in sizes {
        eprintln!("  Maglev: {n} backends, M = {m}");
        let list = backends(n);
        let mut times = Vec::new();
        let mut table = Vec::new();
        for _ in 0..repeats {
            crate::stop::check()?;
            let start = Instant::now();
            table = build(&list, m);
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        // Join: a new backend at the end (indices of the others unchanged).
        let mut joined = list.clone();
        joined.push(MaglevBackend {
            identity: [0xc612_ffff, 0, 0, 0, 8080, 4],
            weight: 1,
        });
        let join_fresh = moved(&table, &build(&joined, m));
        // Leave: backend 0 goes (weight 0 keeps the others' indices).
        let mut left = list.clone();
        left[0].weight = 0;
        let leave_fresh = moved(&table, &build(&left, m));
        let swap_ms = if n <= balancer_common::maps::MAX_BACKENDS {
            Some(swap(n, m, repeats)?)
        } else {
            None
        };
        rows.push(Row {
            backends: n,
            m,
            build_ms: spread(&times),
            moved_join: (join_fresh, 1.0 / f64::from(n + 1)),
            moved_leave: (leave_fresh, 1.0 / f64::from(n)),
            swap_ms,
        });
    }
    Ok(rows)
}

/// The daemon's `write_service` on a loaded (unattached) data plane, each
/// time with one more backend: the table's build, the batched write into
/// the idle half, and the flip.
fn swap(n: u32, m: u32, repeats: usize) -> Result<(Spread, Spread)> {
    let bpffs = TempBpffs::new();
    let pin_dir = bpffs.pin_dir();
    std::fs::create_dir_all(&pin_dir)?;
    let backends: String = (0..n + repeats as u32)
        .map(|i| {
            format!(
                "[[services.backends]]\naddress = \"198.18.{}.{}:8080\"\n",
                4 + i / 250,
                1 + i % 250
            )
        })
        .collect();
    let head = format!(
        "[interfaces]\nclients = \"lo\"\n[bpf]\npin_dir = \"{}\"\n[[services]]\nname = \"big\"\nvip = \"198.18.0.100:80\"\ntable_size = {m}\n",
        pin_dir.display()
    );
    let config =
        Config::from_str(&format!("{head}{backends}")).context("the swap bench's config")?;
    let mut services = adopt::from_config(&config);
    let service = &mut services[0];
    let all = service.backends.clone();
    service.backends.truncate(n as usize);
    let mut dataplane = DataPlane::load(
        &pin_dir,
        state::maglev_entries(&config),
        config.interfaces.mode,
    )?;
    dataplane.write_service(service)?;
    let (mut times, mut builds) = (Vec::new(), Vec::new());
    for extra in all.into_iter().skip(n as usize) {
        crate::stop::check()?;
        service.backends.push(extra);
        let start = Instant::now();
        std::hint::black_box(service.next_table());
        builds.push(start.elapsed().as_secs_f64() * 1e3);
        let start = Instant::now();
        dataplane.write_service(service)?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    drop(dataplane);
    drop(bpffs);
    Ok((spread(&times), spread(&builds)))
}
