//! The daemon's pinned maps, read (and, for the scale runs, filled) from
//! outside: the per-CPU counters that prove which path packets took, the
//! flows conntrack holds, and map memory.

use std::{
    net::Ipv4Addr,
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
};

use anyhow::{Context as _, Result};
use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray};
use balancer_common::{
    addr::{mask, to_words},
    counters::Counter,
    hash::{flow_hash, slot},
    maps,
    types::{Backend, BackendStats, Flow, FlowKey, PROTO_TCP, Service, ServiceKey},
};

/// Backend ids the bench's config can use (two services × three backends).
const BACKEND_IDS: u32 = 16;

fn open(pin_dir: &Path, name: &str) -> Result<MapData> {
    MapData::from_pin(pin_dir.join(name)).with_context(|| format!("opening the pinned map {name}"))
}

/// A pinned map as its aya type (`HashMap`, `PerCpuArray`, ...).
pub fn typed<T: TryFrom<Map, Error = MapError>>(pin_dir: &Path, name: &str) -> Result<T> {
    let map = Map::from_map_data(open(pin_dir, name)?)?;
    T::try_from(map).with_context(|| format!("the pinned map {name} has another type"))
}

/// The global counters and new connections, summed over CPUs (and, for
/// connections, over backends).
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub counters: Vec<u64>,
    pub connections: u64,
}

impl Counters {
    pub fn read(pin_dir: &Path) -> Result<Counters> {
        let values = balancer_tests::xdp_fixture::Counters::read_pinned(pin_dir)
            .0
            .to_vec();
        let stats: PerCpuArray<MapData, BackendStats> = typed(pin_dir, maps::BACKEND_STATS)?;
        let mut connections = 0;
        for id in 0..BACKEND_IDS {
            connections += BackendStats::sum(stats.get(&id, 0)?.iter()).connections_total;
        }
        Ok(Counters {
            counters: values,
            connections,
        })
    }

    pub fn get(&self, c: Counter) -> u64 {
        self.counters[c as usize]
    }

    pub fn since(&self, before: &Counters) -> Counters {
        Counters {
            counters: self
                .counters
                .iter()
                .zip(&before.counters)
                .map(|(a, b)| a - b)
                .collect(),
            connections: self.connections - before.connections,
        }
    }
}

/// Every conntrack flow with its backend's IPv4 address.
pub fn flows(pin_dir: &Path) -> Result<Vec<(FlowKey, Ipv4Addr)>> {
    let conntrack: HashMap<MapData, FlowKey, Flow> = typed(pin_dir, maps::CONNTRACK)?;
    let backends: Array<MapData, Backend> = typed(pin_dir, maps::BACKENDS)?;
    let mut out = Vec::new();
    for entry in conntrack.iter() {
        let (key, flow) = entry?;
        let backend = backends.get(&flow.backend_id, 0)?;
        out.push((key, Ipv4Addr::from(backend.addr[0].to_ne_bytes())));
    }
    Ok(out)
}

/// The backend a client with no affinity entry gets at a service now: its
/// Maglev slot, computed as the kernel program does (`flow_hash` of the
/// masked client address, `slot`, the active half of `MAGLEV`), read from
/// the pins.
pub struct MaglevChoice {
    service: Service,
    maglev: Array<MapData, u32>,
    backends: Array<MapData, Backend>,
}

impl MaglevChoice {
    /// For the TCP service at `vip`.
    pub fn new(pin_dir: &Path, vip: std::net::SocketAddrV4) -> Result<MaglevChoice> {
        let services: HashMap<MapData, ServiceKey, Service> = typed(pin_dir, maps::SERVICES)?;
        let (addr, family) = to_words((*vip.ip()).into());
        let key = ServiceKey {
            addr,
            port: vip.port().to_be(),
            proto: PROTO_TCP,
            family,
        };
        let service = services
            .get(&key, 0)
            .with_context(|| format!("the service {vip} is not in SERVICES"))?;
        anyhow::ensure!(
            service.table_size > 0,
            "the service {vip} has no Maglev table"
        );
        Ok(MaglevChoice {
            service,
            maglev: typed(pin_dir, maps::MAGLEV)?,
            backends: typed(pin_dir, maps::BACKENDS)?,
        })
    }

    /// The IPv4 address of `client`'s backend (source-ip: the port does
    /// not count).
    pub fn backend_of(&self, client: Ipv4Addr) -> Result<Ipv4Addr> {
        let s = &self.service;
        let (words, family) = to_words(client.into());
        let masked = mask(words, family, s.source_prefix(family));
        let hash = flow_hash(s.hash_seed, s.flags, &masked, 0);
        let index = s.table_offset[(s.active_table & 1) as usize] + slot(hash, s.table_size);
        let id = self.maglev.get(&index, 0)?;
        let backend = self.backends.get(&id, 0)?;
        Ok(Ipv4Addr::from(backend.addr[0].to_ne_bytes()))
    }
}

/// The kernel's memory charge for a pinned map (`memlock` in its fdinfo).
pub fn memlock(pin_dir: &Path, name: &str) -> Result<u64> {
    let map = open(pin_dir, name)?;
    let fd = map.fd().as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no memlock in the map's fdinfo")
}
