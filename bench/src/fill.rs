//! Filling the running daemon's conntrack and affinity maps
//! to their capacity from userspace (batched updates, as the daemon's own
//! map writer does), to measure the fast path against full tables.

use std::{net::Ipv4Addr, path::Path, time::Instant};

use anyhow::{Context as _, Result};
use aya::maps::{Array, HashMap, MapData};
use balancer_common::{
    addr::to_words,
    maps,
    types::{
        Affinity, AffinityKey, Backend, Flow, FlowKey, PROTO_TCP, Service, ServiceKey,
        TCP_BACKEND_ANSWERED,
    },
};
use balancer_tests::topology::VIP_V4;
use balancer_user::mapscan::update_batch;

use crate::{pinned, testbed::HTTP_PORT};

/// Entries per batch call (what the daemon's writer uses too).
const CHUNK: usize = 65_536;

#[derive(Clone, Debug, Default)]
pub struct Filled {
    /// (map, entries, seconds to write them, kernel memory charged in bytes).
    pub maps: Vec<(&'static str, usize, f64, u64)>,
    /// The daemon's resident memory before and after, in bytes.
    pub daemon_rss: (u64, u64),
}

/// Write `value` at every key of `keys` into the pinned map `name`, in
/// batches; the row for the report (name, entries, seconds, memlock).
fn fill_map<K: aya::Pod, V: aya::Pod>(
    pin_dir: &Path,
    name: &'static str,
    keys: &[K],
    value: V,
) -> Result<(&'static str, usize, f64, u64)> {
    let map = MapData::from_pin(pin_dir.join(name)).with_context(|| format!("open {name}"))?;
    let values = vec![value; keys.len()];
    let start = Instant::now();
    for (k, v) in keys.chunks(CHUNK).zip(values.chunks(CHUNK)) {
        crate::stop::check()?;
        anyhow::ensure!(
            update_batch(&map, k, v)?,
            "this kernel has no batched update for LRU hash maps"
        );
    }
    let secs = start.elapsed().as_secs_f64();
    Ok((name, keys.len(), secs, pinned::memlock(pin_dir, name)?))
}

pub fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .map_or(0, |kb: u64| kb * 1024)
}

/// Fill CONNTRACK and AFFINITY with `entries` flows / clients
/// of the HTTP service that no packet will ever match.
pub fn fill(pin_dir: &Path, entries: usize, daemon_pid: u32) -> Result<Filled> {
    let rss_before = rss_bytes(daemon_pid);
    let services: HashMap<MapData, ServiceKey, Service> = pinned::typed(pin_dir, maps::SERVICES)?;
    let (vip, family) = to_words(VIP_V4.into());
    let key = ServiceKey {
        addr: vip,
        port: HTTP_PORT.to_be(),
        proto: PROTO_TCP,
        family,
    };
    let service = services
        .get(&key, 0)
        .context("the HTTP service is not in SERVICES")?;
    let backends: Array<MapData, Backend> = pinned::typed(pin_dir, maps::BACKENDS)?;
    let backend_id = (0..maps::MAX_BACKENDS)
        .find(|id| {
            backends
                .get(id, 0)
                .is_ok_and(|b| b.is_up() && b.service_id == service.id)
        })
        .context("the HTTP service has no backend up")?;
    let now = balancer_user::accounting::monotonic_ns();

    // 198.18.2.0/24 is not a client net of the testbed: these are keys only.
    let client = |i: usize| {
        (
            Ipv4Addr::new(198, 18, 2, 1 + (i / 50_000) as u8),
            10_000 + (i % 50_000) as u16,
        )
    };
    let flow_key = |src: Ipv4Addr, sport, dst: [u32; 4], dport| FlowKey {
        src: to_words(src.into()).0,
        dst,
        sport,
        dport,
        proto: PROTO_TCP,
        family,
        _pad: [0; 2],
    };
    let mut filled = Filled::default();

    let keys: Vec<FlowKey> = (0..entries)
        .map(client)
        .map(|(c, p)| flow_key(c, p.to_be(), vip, HTTP_PORT.to_be()))
        .collect();
    let flow = Flow {
        backend_id,
        backend_tcp_state: TCP_BACKEND_ANSWERED as u8,
        last_seen_ns: now,
        affinity_touched_ns: now,
        created_ns: now,
        ..Default::default()
    };
    filled
        .maps
        .push(fill_map(pin_dir, maps::CONNTRACK, &keys, flow)?);

    // A million distinct clients need IPv6 (2001:db8:2::/64, keys only).
    let keys: Vec<AffinityKey> = (0..entries)
        .map(|i| {
            let ip = std::net::Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, (i >> 16) as u16, i as u16);
            let (client, family) = to_words(ip.into());
            AffinityKey {
                service_id: service.id,
                family,
                _pad: [0; 3],
                client,
            }
        })
        .collect();
    let affinity = Affinity {
        backend_id,
        _pad: 0,
        last_seen_ns: now,
    };
    filled
        .maps
        .push(fill_map(pin_dir, maps::AFFINITY, &keys, affinity)?);

    filled.daemon_rss = (rss_before, rss_bytes(daemon_pid));
    Ok(filled)
}
