//! Every map the programs use, declared here and nowhere else (names,
//! types and sizes of the shared ones from `balancer_common::maps`; a test
//! checks that the object defines every one). Lookups on them are in
//! `lookup`.
//!
//! The shared ones are pinned by name, so a restarted daemon finds the same
//! flows, affinities and counters. `NEXT_HOPS`, `CLIENT_PATHS` and
//! `SCRATCH` are the kernel side's own and are not pinned, nor are the config-derived
//! arrays the daemon writes at every start, nor `PENDING` and `DIRECT`.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use balancer_common::{
    counters::COUNTER_SLOTS,
    maps::{
        AFFINITY_EVENTS_BYTES, MAGLEV_DEFAULT_ENTRIES, MAX_AFFINITY, MAX_BACKENDS, MAX_DIRECT,
        MAX_FLOWS, MAX_FRAGMENTS, MAX_PENDING, MAX_REDIRECT_DEVS, MAX_SERVICES, PORTS,
    },
    types::{
        AdminRecord, Affinity, AffinityKey, Backend, BackendName, BackendStats, BackendVips, Flow,
        FlowKey, FragmentKey, FragmentNat, Pending, Service, ServiceKey, ServiceSlot,
    },
};

use crate::values::{ClientPath, NextHop, Scratch};

#[map]
pub static SERVICES: HashMap<ServiceKey, Service> = HashMap::pinned(MAX_SERVICES, 0);

#[map]
pub static BACKENDS: Array<Backend> = Array::pinned(MAX_BACKENDS, 0);

/// The daemon's own (no program reads it): pinned here so it lives and
/// goes with the backends it describes.
#[map]
pub static ADMIN: Array<AdminRecord> = Array::pinned(1, 0);

/// The daemon's own, like `ADMIN`: runtime backends' names.
#[map]
pub static BACKEND_NAMES: Array<BackendName> = Array::pinned(MAX_BACKENDS, 0);

#[map]
pub static MAGLEV: Array<u32> = Array::pinned(MAGLEV_DEFAULT_ENTRIES, 0);

#[map]
pub static CONNTRACK: LruHashMap<FlowKey, Flow> = LruHashMap::pinned(MAX_FLOWS, 0);

#[map]
pub static AFFINITY: LruHashMap<AffinityKey, Affinity> = LruHashMap::pinned(MAX_AFFINITY, 0);

/// Affinity entries confirmations made, for the daemon's cluster peers
/// (`report`).
#[map]
pub static AFFINITY_EVENTS: RingBuf = RingBuf::pinned(AFFINITY_EVENTS_BYTES, 0);

#[map]
pub static BACKEND_STATS: PerCpuArray<BackendStats> = PerCpuArray::pinned(MAX_BACKENDS, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTER_SLOTS, 0);

#[map]
pub static REDIRECT_DEVS: DevMapHash = DevMapHash::pinned(MAX_REDIRECT_DEVS, 0);

#[map]
pub static FRAGMENTS: LruHashMap<FragmentKey, FragmentNat> = LruHashMap::pinned(MAX_FRAGMENTS, 0);

#[map]
pub static FRAGMENT_SERVICES: HashMap<ServiceKey, ServiceKey> = HashMap::pinned(MAX_SERVICES, 0);

#[map]
pub static VIP_PORTS: Array<u32> = Array::with_max_entries(PORTS, 0);

/// Mmapable: the kernel then starts the values on a page, so each 64-byte
/// slot is one cache line (a plain array's values start 56 bytes into a
/// line on 6.18, so slots would straddle two, the first one among them).
#[map]
pub static SERVICE_SLOTS: Array<ServiceSlot> =
    Array::with_max_entries(MAX_SERVICES, BPF_F_MMAPABLE);

#[map]
pub static BACKEND_PORTS: Array<u32> = Array::with_max_entries(PORTS, 0);

#[map]
pub static BACKEND_VIPS: HashMap<ServiceKey, BackendVips> =
    HashMap::with_max_entries(MAX_BACKENDS, 0);

/// Not pinned: a flow in it is seconds old, and one lost to a restart
/// costs its client a retransmitted SYN.
#[map]
pub static PENDING: LruHashMap<FlowKey, Pending> = LruHashMap::with_max_entries(MAX_PENDING, 0);

/// Not pinned: losing it to a restart only sends a direct flow's replies
/// through the config's translation until its next packet.
#[map]
pub static DIRECT: LruHashMap<FlowKey, u32> = LruHashMap::with_max_entries(MAX_DIRECT, 0);

/// Per CPU, so that no two CPUs write one entry at once (no torn paths)
/// and no cache line bounces between them. Not pinned: a cache.
#[map]
pub static NEXT_HOPS: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Slots of `CLIENT_PATHS`, a power of two.
pub const CLIENT_PATH_SLOTS: u32 = 1 << 16;

/// Shared by all CPUs (a reply runs on another CPU than its client's
/// packets), not pinned: a cache (see `client_path`).
#[map]
pub static CLIENT_PATHS: Array<ClientPath> = Array::with_max_entries(CLIENT_PATH_SLOTS, 0);

/// One entry: this CPU's scratch space (see `scratch`).
#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);
