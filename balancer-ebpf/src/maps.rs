//! The maps (names, types and sizes from `balancer_common::maps`; a test
//! checks that the object defines every one) and the lookups on them.
//!
//! All are pinned by name, so a restarted daemon finds the same flows,
//! affinities and counters.

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray},
};
use balancer_common::{
    counters::COUNTER_COUNT,
    maps::{
        MAGLEV_DEFAULT_ENTRIES, MAX_AFFINITY, MAX_BACKENDS, MAX_FLOWS, MAX_FRAGMENTS, MAX_REDIRECT_DEVS, MAX_SERVICES,
        PORT_WORDS,
    },
    types::{
        Affinity, AffinityKey, Backend, BackendStats, Flow, FlowKey, FragmentKey, FragmentNat, ReverseNat, Service,
        ServiceKey,
    },
};

use crate::parse::Packet;

#[map]
pub static SERVICES: HashMap<ServiceKey, Service> = HashMap::pinned(MAX_SERVICES, 0);

#[map]
pub static BACKENDS: Array<Backend> = Array::pinned(MAX_BACKENDS, 0);

#[map]
pub static MAGLEV: Array<u32> = Array::pinned(MAGLEV_DEFAULT_ENTRIES, 0);

#[map]
pub static CONNTRACK: LruHashMap<FlowKey, Flow> = LruHashMap::pinned(MAX_FLOWS, 0);

#[map]
pub static REVERSE_NAT: LruHashMap<FlowKey, ReverseNat> = LruHashMap::pinned(MAX_FLOWS, 0);

#[map]
pub static AFFINITY: LruHashMap<AffinityKey, Affinity> = LruHashMap::pinned(MAX_AFFINITY, 0);

#[map]
pub static BACKEND_STATS: PerCpuArray<BackendStats> = PerCpuArray::pinned(MAX_BACKENDS, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTER_COUNT, 0);

#[map]
pub static REDIRECT_DEVS: DevMapHash = DevMapHash::pinned(MAX_REDIRECT_DEVS, 0);

#[map]
pub static FRAGMENTS: LruHashMap<FragmentKey, FragmentNat> = LruHashMap::pinned(MAX_FRAGMENTS, 0);

#[map]
pub static FRAGMENT_SERVICES: HashMap<ServiceKey, ServiceKey> = HashMap::pinned(MAX_SERVICES, 0);

#[map]
pub static VIP_PORTS: Array<u64> = Array::with_max_entries(PORT_WORDS, 0);

#[map]
pub static BACKEND_PORTS: Array<u64> = Array::with_max_entries(PORT_WORDS, 0);

/// Is `port`'s (network order) bit set in a port bitmap? An inlined array
/// read, where a hash lookup would hash a 20- or 40-byte key first.
#[inline(always)]
pub fn has_port(ports: &Array<u64>, port: u16) -> bool {
    let port = u32::from(u16::from_be(port));
    ports.get(port >> 6).is_some_and(|word| word & (1 << (port & 63)) != 0)
}

/// The service whose VIP this packet is addressed to.
#[inline(always)]
pub fn service_for(pkt: &Packet) -> Option<&'static Service> {
    let key = ServiceKey { addr: pkt.key.dst, port: pkt.key.dport, proto: pkt.key.proto, family: pkt.key.family };
    unsafe { SERVICES.get(&key) }
}

/// The reverse NAT entry if this packet is a backend's reply in a balanced flow.
#[inline(always)]
pub fn reverse_nat_for(pkt: &Packet) -> Option<*mut ReverseNat> {
    REVERSE_NAT.get_ptr_mut(&pkt.key)
}

/// A backend by id, if that slot is in use and up (draining counts as up).
#[inline(always)]
pub fn backend_if_up(id: u32, service_id: u32) -> Option<&'static Backend> {
    let backend = BACKENDS.get(id)?;
    (backend.is_up() && backend.service_id == service_id).then_some(backend)
}
