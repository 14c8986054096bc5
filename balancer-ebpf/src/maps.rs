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
        MAGLEV_DEFAULT_ENTRIES, MAX_AFFINITY, MAX_BACKENDS, MAX_FLOWS, MAX_FRAGMENTS,
        MAX_REDIRECT_DEVS, MAX_SERVICES, MAX_VIPS_PER_BACKEND, PORT_SHARED, PORTS,
    },
    types::{
        Affinity, AffinityKey, Backend, BackendStats, BackendVips, Flow, FlowKey, FragmentKey,
        FragmentNat, Service, ServiceKey, ServiceSlot,
    },
};

use crate::{
    parse::Packet,
    scratch::{scratch, store_words},
};

#[map]
pub static SERVICES: HashMap<ServiceKey, Service> = HashMap::pinned(MAX_SERVICES, 0);

#[map]
pub static BACKENDS: Array<Backend> = Array::pinned(MAX_BACKENDS, 0);

#[map]
pub static MAGLEV: Array<u32> = Array::pinned(MAGLEV_DEFAULT_ENTRIES, 0);

#[map]
pub static CONNTRACK: LruHashMap<FlowKey, Flow> = LruHashMap::pinned(MAX_FLOWS, 0);

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
pub static VIP_PORTS: Array<u32> = Array::with_max_entries(PORTS, 0);

/// `BPF_F_MMAPABLE` (uapi `linux/bpf.h`).
const BPF_F_MMAPABLE: u32 = 1 << 10;

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

/// The service whose VIP this packet is addressed to. Array reads by the
/// destination port (see `VIP_PORTS`) where one service has that port, as
/// most do; a SERVICES lookup, which hashes a 20-byte key, only where
/// several do.
#[inline(always)]
pub fn service_for(pkt: &Packet) -> Option<&'static Service> {
    let port = u32::from(u16::from_be(pkt.key.dport));
    match *VIP_PORTS.get(port)? {
        0 => None,
        PORT_SHARED => {
            let key = ServiceKey {
                addr: pkt.key.dst,
                port: pkt.key.dport,
                proto: pkt.key.proto,
                family: pkt.key.family,
            };
            unsafe { SERVICES.get(&key) }
        }
        service => {
            let slot = SERVICE_SLOTS.get(service - 1)?;
            let vip = &slot.vip;
            let ours = vip.addr == pkt.key.dst
                && vip.port == pkt.key.dport
                && vip.proto == pkt.key.proto
                && vip.family == pkt.key.family;
            ours.then_some(&slot.service)
        }
    }
}

/// The flow a backend → client packet (`reply`, its 5-tuple) belongs to,
/// and the flow's VIP: the client's conntrack entry, its key rebuilt with
/// the VIP of the sender's service (or each VIP the sender serves, when its
/// port is shared; see `BACKEND_PORTS`), whose backend is the sender
/// itself (a host that is not the flow's backend gets nothing rewritten).
#[inline(always)]
pub fn reply_flow(reply: &FlowKey) -> Option<(*mut Flow, &'static ServiceKey)> {
    let port = u32::from(u16::from_be(reply.sport));
    match *BACKEND_PORTS.get(port)? {
        0 => None,
        PORT_SHARED => {
            let endpoint = ServiceKey {
                addr: reply.src,
                port: reply.sport,
                proto: reply.proto,
                family: reply.family,
            };
            let vips = unsafe { BACKEND_VIPS.get(&endpoint)? };
            for i in 0..MAX_VIPS_PER_BACKEND {
                if i as u32 >= vips.count {
                    break;
                }
                if let Some(flow) = flow_of_reply(reply, &vips.vips[i]) {
                    return Some((flow, &vips.vips[i]));
                }
            }
            None
        }
        service => {
            let vip = &SERVICE_SLOTS.get(service - 1)?.vip;
            if vip.proto != reply.proto || vip.family != reply.family {
                return None;
            }
            Some((flow_of_reply(reply, vip)?, vip))
        }
    }
}

/// The conntrack entry of the flow `reply` answers if its client spoke to
/// `vip`, and only if the flow's backend sent `reply`.
#[inline(always)]
fn flow_of_reply(reply: &FlowKey, vip: &ServiceKey) -> Option<*mut Flow> {
    // Built in scratch space: a 40-byte key on the stack would push the
    // common path past 6.1's stack bound.
    let key = &mut scratch()?.reply_key;
    store_words(&mut key.src, &reply.dst);
    store_words(&mut key.dst, &vip.addr);
    key.sport = reply.dport;
    key.dport = vip.port;
    key.proto = reply.proto;
    key.family = reply.family;
    key._pad = [0; 2];
    let flow = CONNTRACK.get_ptr_mut(&*key)?;
    let backend = BACKENDS.get(unsafe { (*flow).backend_id })?;
    (backend.in_use() && backend.addr == reply.src && backend.port == reply.sport).then_some(flow)
}

/// A backend by id, if that slot is in use and up (draining counts as up).
#[inline(always)]
pub fn backend_if_up(id: u32, service_id: u32) -> Option<&'static Backend> {
    let backend = BACKENDS.get(id)?;
    (backend.is_up() && backend.service_id == service_id).then_some(backend)
}
