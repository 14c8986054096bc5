//! The daemon's view of what the data plane should hold: services with their
//! ids and Maglev table regions, backends with their ids and states. Pure
//! logic, turned into map values here and written by `dataplane`.

use std::net::{IpAddr, SocketAddr};

use balancer_common::{
    addr::{mask, to_words},
    hash::{flow_hash, service_seed, slot},
    maglev::{self, MaglevBackend},
    types::{
        BACKEND_ADMIN_DRAIN, BACKEND_ADMIN_WEIGHT, BACKEND_DRAINING, BACKEND_RUNTIME, BACKEND_UP,
        Backend, PROTO_TCP, PROTO_UDP, SERVICE_FOUR_TUPLE, SERVICE_TO_STACK, Service, ServiceKey,
    },
};

use crate::config::{AffinityMode, Config, MAX_MAGLEV_ENTRIES, Protocol, ServiceConfig};

#[derive(Clone, Debug, PartialEq)]
pub struct BackendState {
    pub id: u32,
    pub address: SocketAddr,
    pub weight: u32,
    /// Health: passes checks (or has no checks).
    pub up: bool,
    /// Admin: keeps its clients, takes no new ones.
    pub draining: bool,
    /// Added with `balancer backend add` rather than listed in the config.
    pub runtime: bool,
    /// `weight` was set with `balancer backend set-weight`: a restart keeps
    /// it over the config's.
    pub weight_set: bool,
    /// The config's `name`, or the one given with `backend add --name`:
    /// the prefix of the engine.io session ids it mints (`affinity =
    /// "sid"`).
    pub name: Option<String>,
}

impl BackendState {
    /// The `BACKENDS` value.
    pub fn map_value(&self, service_id: u32) -> Backend {
        let (addr, family) = to_words(self.address.ip());
        let mut state = 0;
        if self.up {
            state |= BACKEND_UP;
            if self.draining {
                state |= BACKEND_DRAINING;
            }
        }
        if self.draining {
            state |= BACKEND_ADMIN_DRAIN;
        }
        if self.runtime {
            state |= BACKEND_RUNTIME;
        }
        if self.weight_set {
            state |= BACKEND_ADMIN_WEIGHT;
        }
        Backend {
            addr,
            port: self.address.port().to_be(),
            family,
            state,
            service_id,
            weight: self.weight,
            _pad: 0,
        }
    }

    /// In the Maglev table: up and not draining.
    pub fn takes_new_clients(&self) -> bool {
        self.up && !self.draining
    }

    fn maglev_identity(&self) -> [u32; 6] {
        let (a, family) = to_words(self.address.ip());
        [
            a[0],
            a[1],
            a[2],
            a[3],
            u32::from(self.address.port()),
            u32::from(family),
        ]
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServiceState {
    /// Index of the service: part of affinity keys, local to this gateway
    /// (the flow hash is seeded from the VIP instead).
    pub id: u32,
    /// First `MAGLEV` index of this service's two table halves.
    pub table_base: u32,
    /// The service as configured, without its backends: the live set (which
    /// the CLI can change) is `backends`.
    pub config: ServiceConfig,
    pub backends: Vec<BackendState>,
    /// The Maglev table (backend ids) that packets read now; empty until the
    /// first write.
    pub table: Vec<u32>,
}

impl ServiceState {
    pub fn key(&self) -> ServiceKey {
        Self::key_of(&self.config)
    }

    /// The `SERVICES` key of a configured service: its VIP.
    pub fn key_of(config: &ServiceConfig) -> ServiceKey {
        let (addr, family) = to_words(config.vip.ip());
        let proto = match config.protocol {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        };
        ServiceKey {
            addr,
            port: config.vip.port().to_be(),
            proto,
            family,
        }
    }

    /// The `SERVICES` value pointing packets at table half `active`.
    /// `table_size` is 0 when no backend takes new clients, which the kernel
    /// reads as "no backend".
    pub fn map_value(&self, active: u32, has_table: bool) -> Service {
        Service {
            id: self.id,
            flags: match self.config.affinity {
                // Without a sid, a sid service's client goes by address.
                AffinityMode::SourceIp | AffinityMode::Sid => 0,
                AffinityMode::FourTuple => SERVICE_FOUR_TUPLE,
            } | if self.config.terminates_in_daemon() {
                SERVICE_TO_STACK
            } else {
                0
            },
            table_offset: [self.table_base, self.table_base + self.config.table_size],
            active_table: active,
            table_size: if has_table { self.config.table_size } else { 0 },
            affinity_timeout_ns: u64::try_from(self.config.affinity_timeout.as_nanos())
                .unwrap_or(u64::MAX),
            prefix_v4: self.config.source_prefix_v4,
            prefix_v6: self.config.source_prefix_v6,
            _pad: [0; 2],
            hash_seed: service_seed(&self.key()),
        }
    }

    /// The next Maglev table as backend ids; empty when no backend takes
    /// new clients. A pure function of the set of backends taking clients
    /// (address, port, family, weight) and the table size
    /// ([`maglev::build`]): every gateway with the same set writes the same
    /// table, whatever history led there. A draining or down backend is
    /// out of the table, so drain state is part of that set.
    pub fn next_table(&self) -> Vec<u32> {
        let input: Vec<MaglevBackend> = self
            .backends
            .iter()
            .map(|b| MaglevBackend {
                identity: b.maglev_identity(),
                weight: if b.takes_new_clients() { b.weight } else { 0 },
            })
            .collect();
        maglev::build(&input, self.config.table_size)
            .into_iter()
            .map(|i| self.backends[i as usize].id)
            .collect()
    }

    /// The backend id a new client gets from the current table, computed
    /// exactly as the kernel does: the same mask, the same hash, the same
    /// slot. Affinity and conntrack can keep a client elsewhere; this is the
    /// answer for a client they do not know.
    pub fn predict(&self, client: IpAddr, sport: u16) -> Option<u32> {
        let slot = self.slot_for(client, sport)?;
        self.table.get(slot as usize).copied()
    }

    /// The Maglev slot a new client hashes to, computed exactly as the
    /// kernel does: the same mask, the same hash, the same slot. `None`
    /// while the service has no table.
    pub fn slot_for(&self, client: IpAddr, sport: u16) -> Option<u32> {
        if self.table.is_empty() {
            return None;
        }
        let value = self.map_value(0, true);
        let key_addr = if value.flags & SERVICE_FOUR_TUPLE != 0 {
            to_words(client).0
        } else {
            self.masked(client).0
        };
        let hash = flow_hash(value.hash_seed, value.flags, &key_addr, sport.to_be());
        Some(slot(hash, self.config.table_size))
    }

    /// `client` masked to the service's source prefix for its family, and
    /// the family: what the kernel's affinity key and source-ip hash use.
    pub fn masked(&self, client: IpAddr) -> ([u32; 4], u8) {
        let (words, family) = to_words(client);
        (
            mask(words, family, self.map_value(0, true).source_prefix(family)),
            family,
        )
    }

    pub fn backend_by_id(&self, id: u32) -> Option<&BackendState> {
        self.backends.iter().find(|b| b.id == id)
    }

    pub fn backend(&self, address: SocketAddr) -> Option<&BackendState> {
        self.backends.iter().find(|b| b.address == address)
    }
}

/// The `MAGLEV` size for a first start: every service's two halves, and room
/// for as much again, because the array's size is fixed once pinned and a
/// restart with more services must still fit.
pub fn maglev_entries(config: &Config) -> u32 {
    let needed: u64 = config
        .services
        .iter()
        .map(|s| 2 * u64::from(s.table_size))
        .sum();
    let floor = 8 * u64::from(balancer_common::maps::MAGLEV_DEFAULT_ENTRIES);
    (2 * needed).max(floor).min(MAX_MAGLEV_ENTRIES).max(needed) as u32
}
