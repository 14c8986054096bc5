//! What the daemon starts from: the config, merged with whatever a previous
//! daemon left pinned, so that a restart moves no client.
//!
//! Flows and affinities in the kernel name backends by id and are hashed
//! with the service's id, so a restarted daemon must keep every id and
//! table region that is still valid:
//!
//! - a service whose VIP is pinned keeps its id; with the same table size it
//!   also keeps its table region. Its table is built afresh from the
//!   backend set ([`crate::state::ServiceState::next_table`]), so the same
//!   set gives the same table packets read before the restart, and the
//!   table a fresh gateway builds;
//! - a backend pinned for that service keeps its id, its health state (no
//!   traffic to a backend known to be down) and an operator's drain;
//! - a weight set with `balancer backend set-weight` stays over the
//!   config's (like a drain, it is the operator's word on that backend);
//! - backends added with `balancer backend add` stay although the config
//!   does not list them, with the name they were given (`BACKEND_NAMES`);
//!   a config backend removed with `balancer backend
//!   remove` comes back, as the config lists it (runtime changes to the
//!   config's own backends last until the next start, as in HAProxy);
//! - pinned services and backends the config dropped are removed.
//!
//! A live reload plans the same way from the maps as they are then, so a
//! reload and a restart with the same file give the same result.
//!
//! Pure: the kernel maps come in as [`Pinned`], the result is a [`Plan`].

use std::collections::{BTreeSet, HashMap};

use anyhow::bail;
use balancer_common::{
    addr::from_words,
    maps::{MAX_BACKENDS, MAX_SERVICES},
    types::{
        BACKEND_ADMIN_DRAIN, BACKEND_ADMIN_WEIGHT, BACKEND_RUNTIME, Backend, Service, ServiceKey,
    },
};

use crate::{
    config::{Config, ServiceConfig},
    ids::BackendIds,
    state::{self, BackendState, ServiceState},
};

/// One service as pinned.
#[derive(Clone, Debug, Default)]
pub struct PinnedService {
    pub key: ServiceKey,
    pub value: Service,
    /// From the table offsets (`value.table_size` is 0 while the service
    /// has no backend taking clients).
    pub table_size: u32,
}

/// The pinned maps' contents that the plan needs.
#[derive(Clone, Debug, Default)]
pub struct Pinned {
    pub services: Vec<PinnedService>,
    /// `(id, slot)` of every backend slot in use.
    pub backends: Vec<(u32, Backend)>,
    /// The pinned names of backends in use, by id (`BACKEND_NAMES`).
    pub names: HashMap<u32, String>,
    /// Entries the `MAGLEV` array holds.
    pub maglev_capacity: u32,
}

#[derive(Debug)]
pub struct Plan {
    pub services: Vec<ServiceState>,
    /// Pinned VIPs the config no longer has.
    pub removed_services: Vec<ServiceKey>,
    /// Pinned backend ids nobody uses any more: cleared after the new
    /// tables are written.
    pub freed_backends: Vec<u32>,
    pub ids: BackendIds,
}

/// Services and backends as a first start gives them (nothing pinned):
/// ids in config order, every backend up until health checks say otherwise.
pub fn from_config(config: &Config) -> Vec<ServiceState> {
    let pinned = Pinned {
        maglev_capacity: state::maglev_entries(config),
        ..Pinned::default()
    };
    plan(config, &pinned)
        .expect("a fresh plan always fits")
        .services
}

/// The services to run: the config, with ids and regions adopted from
/// `pinned` where they are still valid.
pub fn plan(config: &Config, pinned: &Pinned) -> anyhow::Result<Plan> {
    let by_key: HashMap<ServiceKey, &PinnedService> =
        pinned.services.iter().map(|p| (p.key, p)).collect();
    let keys: Vec<ServiceKey> = config.services.iter().map(ServiceState::key_of).collect();

    // Service ids: adopted, then the lowest free ones.
    let mut used_ids: BTreeSet<u32> = keys
        .iter()
        .filter_map(|k| by_key.get(k))
        .map(|p| p.value.id)
        .collect();
    let mut services: Vec<ServiceState> = Vec::with_capacity(config.services.len());
    // Every pinned region is taken: packets read them until each service's
    // new table is flipped in (or the service removed), after the writes.
    let mut regions: Vec<(u32, u32)> = pinned
        .services
        .iter()
        .map(|p| (p.value.table_offset[0], 2 * p.table_size))
        .collect();
    let mut pending_region: Vec<usize> = Vec::new();
    for (cfg, key) in config.services.iter().zip(&keys) {
        let adopted = by_key.get(key);
        let id = match adopted {
            Some(p) => p.value.id,
            None => {
                let id = (0..MAX_SERVICES)
                    .find(|i| !used_ids.contains(i))
                    .expect("config allows at most MAX_SERVICES");
                used_ids.insert(id);
                id
            }
        };
        let config = ServiceConfig {
            backends: Vec::new(),
            ..cfg.clone()
        };
        let mut service = ServiceState {
            id,
            table_base: 0,
            config,
            backends: Vec::new(),
            table: Vec::new(),
        };
        match adopted {
            Some(p)
                if p.table_size == cfg.table_size
                    && p.value.table_offset[0] + 2 * p.table_size <= pinned.maglev_capacity =>
            {
                service.table_base = p.value.table_offset[0];
            }
            _ => pending_region.push(services.len()),
        }
        services.push(service);
    }
    for i in pending_region {
        let size = 2 * services[i].config.table_size;
        let Some(base) = first_fit(&regions, size, pinned.maglev_capacity) else {
            bail!(
                "the pinned MAGLEV map holds {} entries, too few for the tables of this config \
                 (`balancer detach` and a fresh start make a bigger one, but drop the live flows)",
                pinned.maglev_capacity
            );
        };
        regions.push((base, size));
        services[i].table_base = base;
    }

    // Backends: adopted by (service id, address), then new ids.
    let service_of_id: HashMap<u32, usize> = services
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id, i))
        .collect();
    let mut pinned_backends: Vec<Vec<(u32, Backend)>> = vec![Vec::new(); services.len()];
    let mut freed = Vec::new();
    for &(id, b) in &pinned.backends {
        match service_of_id.get(&b.service_id) {
            Some(&i) if id < MAX_BACKENDS => pinned_backends[i].push((id, b)),
            _ => freed.push(id),
        }
    }
    let kept_ids = pinned_backends.iter().flatten().map(|(id, _)| *id);
    let mut ids = BackendIds::new(kept_ids);
    for (i, cfg) in config.services.iter().enumerate() {
        let mut adoptable: Vec<(u32, Backend)> = std::mem::take(&mut pinned_backends[i]);
        for b in &cfg.backends {
            let found = adoptable.iter().position(|(_, p)| address(p) == b.address);
            let state = match found.map(|k| adoptable.remove(k)) {
                Some((id, p)) => {
                    let weight_set = p.state & BACKEND_ADMIN_WEIGHT != 0;
                    BackendState {
                        id,
                        address: b.address,
                        weight: if weight_set { p.weight } else { b.weight },
                        up: p.is_up(),
                        draining: p.state & BACKEND_ADMIN_DRAIN != 0,
                        runtime: false,
                        weight_set,
                        name: b.name.clone(),
                    }
                }
                None => {
                    let Some(id) = ids.allocate() else {
                        bail!("no free backend id (at most {MAX_BACKENDS})")
                    };
                    BackendState {
                        id,
                        address: b.address,
                        weight: b.weight,
                        up: true,
                        draining: false,
                        runtime: false,
                        weight_set: false,
                        name: b.name.clone(),
                    }
                }
            };
            services[i].backends.push(state);
        }
        for (id, p) in adoptable {
            if p.state & BACKEND_RUNTIME != 0 {
                services[i].backends.push(BackendState {
                    id,
                    address: address(&p),
                    weight: p.weight,
                    up: p.is_up(),
                    draining: p.state & BACKEND_ADMIN_DRAIN != 0,
                    runtime: true,
                    weight_set: p.state & BACKEND_ADMIN_WEIGHT != 0,
                    name: pinned.names.get(&id).cloned(),
                });
            } else {
                ids.release(id);
                freed.push(id);
            }
        }
    }
    let removed_services = pinned
        .services
        .iter()
        .map(|p| p.key)
        .filter(|k| !keys.contains(k))
        .collect();
    Ok(Plan {
        services,
        removed_services,
        freed_backends: freed,
        ids,
    })
}

fn address(b: &Backend) -> std::net::SocketAddr {
    std::net::SocketAddr::new(from_words(b.addr, b.family), u16::from_be(b.port))
}

/// The lowest base where `size` entries fit between `taken` regions, below
/// `capacity`.
fn first_fit(taken: &[(u32, u32)], size: u32, capacity: u32) -> Option<u32> {
    let mut sorted = taken.to_vec();
    sorted.sort_unstable();
    let mut base = 0u32;
    for (start, len) in sorted {
        if base.checked_add(size)? <= start {
            return Some(base);
        }
        base = base.max(start + len);
    }
    (base.checked_add(size)? <= capacity).then_some(base)
}

#[cfg(test)]
mod tests;
