//! Choosing a backend for a client packet, and the state the choice
//! records (conntrack and affinity entries). In order:
//! 1. its conntrack entry, while that backend is up;
//! 2. the client's affinity entry (source-ip services), while it is fresh
//!    and its backend up (draining backends keep their clients);
//! 3. the service's Maglev table, at `flow_hash % M`.

use balancer_common::{
    addr::mask,
    counters::Counter,
    hash::{flow_hash, slot},
    types::{
        Affinity, AffinityKey, Backend, SERVICE_FOUR_TUPLE, Service, TCP_FIN_FROM_CLIENT,
        tcp_closed,
    },
};

use crate::{
    clock::epoch,
    ctx::Frame,
    lookup::backend_if_up,
    maps::{AFFINITY, CONNTRACK, MAGLEV},
    parse::Packet,
    ptr::read_at,
    scratch::scratch,
    stats,
    tcp_state::{add_tcp_bits, tcp_state_bits},
};

/// A long-lived flow refreshes its client's affinity at most this often, so
/// an open WebSocket keeps the client's later connections on its backend
/// without a map write per packet.
const AFFINITY_REFRESH_NS: u64 = 1_000_000_000;

/// `Flow::last_seen_ns` moves in steps of this much: idle timeouts are
/// seconds to minutes (`balancer_user::accounting`).
const LAST_SEEN_STEP_NS: u64 = 250_000_000;

/// The backend for a client packet of `service`, and whether it opens a
/// new flow. `Err`: the packet is dropped, for the counter's reason.
#[inline(always)]
pub fn backend_for<C: Frame>(
    ctx: &C,
    pkt: &Packet,
    service: &Service,
    now: u64,
) -> Result<(u32, &'static Backend, bool), Counter> {
    if let Some((id, backend)) = existing_flow(pkt, service, now) {
        return Ok((id, backend, false));
    }
    let (id, backend) = new_flow(ctx, pkt, service, now)?;
    Ok((id, backend, true))
}

/// The flow's backend from conntrack, if the flow is known, its backend up,
/// and the packet is not a new SYN on a closed connection (port reuse).
#[inline(always)]
fn existing_flow(pkt: &Packet, service: &Service, now: u64) -> Option<(u32, &'static Backend)> {
    let flow = unsafe { &mut *CONNTRACK.get_ptr_mut(&pkt.key)? };
    if pkt.is_syn() && tcp_closed(flow.tcp_state()) {
        return None;
    }
    let backend = backend_if_up(flow.backend_id, service.id)?;
    // Written only when they change: the flow's replies read this entry,
    // often on another CPU, and a store on every packet would pull its
    // cache line back and forth between the two.
    if now.wrapping_sub(flow.last_seen_ns) >= LAST_SEEN_STEP_NS {
        flow.last_seen_ns = now;
    }
    if pkt.is_tcp() {
        add_tcp_bits(
            &mut flow.client_tcp_state,
            tcp_state_bits(pkt, TCP_FIN_FROM_CLIENT),
        );
    }
    if service.flags & SERVICE_FOUR_TUPLE == 0
        && now - flow.affinity_touched_ns > AFFINITY_REFRESH_NS
    {
        flow.affinity_touched_ns = now;
        let key = affinity_key(pkt, service);
        if let Some(a) = AFFINITY.get_ptr_mut(&key) {
            let a = unsafe { &mut *a };
            if a.backend_id == flow.backend_id {
                a.last_seen_ns = now;
            }
        } else {
            let value = Affinity {
                backend_id: flow.backend_id,
                _pad: 0,
                last_seen_ns: now,
            };
            remember_affinity(&key, &value);
        }
    }
    Some((flow.backend_id, backend))
}

/// Written field by field with volatile stores (see `scratch::store_words`): a
/// struct literal compiles to a `memset` call here.
#[inline(always)]
pub fn affinity_key(pkt: &Packet, service: &Service) -> AffinityKey {
    use core::ptr::{addr_of_mut, write_volatile};
    let client = mask(
        pkt.key.src,
        pkt.key.family,
        service.source_prefix(pkt.key.family),
    );
    let mut key = core::mem::MaybeUninit::<AffinityKey>::uninit();
    let p = key.as_mut_ptr();
    unsafe {
        write_volatile(addr_of_mut!((*p).service_id), service.id);
        write_volatile(addr_of_mut!((*p).family), pkt.key.family);
        for i in 0..3 {
            write_volatile(addr_of_mut!((*p)._pad[i]), 0);
        }
        for i in 0..4 {
            write_volatile(addr_of_mut!((*p).client[i]), client[i]);
        }
        key.assume_init()
    }
}

/// Choose a backend for a flow conntrack does not know, and remember it.
#[inline(always)]
fn new_flow<C: Frame>(
    ctx: &C,
    pkt: &Packet,
    service: &Service,
    now: u64,
) -> Result<(u32, &'static Backend), Counter> {
    // The client's L2 path, remembered for replies (see `Flow`); only
    // new flows need it, so the conntrack fast path never reads it.
    // The MACs one at a time (a 14-byte header copy would call `memmove`).
    let client_mac = read_at::<[u8; 6], C>(ctx, 6).ok_or(Counter::DropMalformed)?;
    let gateway_mac = read_at::<[u8; 6], C>(ctx, 0).ok_or(Counter::DropMalformed)?;
    let ifindex = ctx.ingress_ifindex();
    let four_tuple = service.flags & SERVICE_FOUR_TUPLE != 0;
    let affinity_key = affinity_key(pkt, service);
    let sticky = if four_tuple {
        None
    } else {
        fresh_affinity(&affinity_key, service, now)
    };
    let (backend_id, backend) = match sticky {
        Some(found) => found,
        None => {
            let found = maglev_pick(pkt, service, &affinity_key.client)?;
            if !four_tuple {
                let value = Affinity {
                    backend_id: found.0,
                    _pad: 0,
                    last_seen_ns: now,
                };
                remember_affinity(&affinity_key, &value);
            }
            found
        }
    };
    // Field by field into scratch space: a whole-struct store compiles to
    // a `memcpy` call, and every call adds a frame to the verifier's count.
    let flow = &mut scratch().ok_or(Counter::DropInternal)?.flow;
    flow.backend_id = backend_id;
    flow.client_tcp_state = if pkt.is_tcp() {
        tcp_state_bits(pkt, TCP_FIN_FROM_CLIENT)
    } else {
        0
    };
    flow.backend_tcp_state = 0;
    flow.last_seen_ns = now;
    flow.affinity_touched_ns = now;
    flow.created_ns = now;
    flow.client_ifindex = ifindex;
    flow.client_mac = client_mac;
    flow.gateway_mac = gateway_mac;
    // A past epoch: the first reply looks its client's next hop up.
    flow.path_epoch = epoch(now).wrapping_sub(1);
    // `_pad` stays as the zeroed scratch space has it (nothing writes it;
    // a 6-byte store of zeroes would compile to a `memset` call).
    // The packet goes on, counted: without an entry the flow's next
    // packets are placed again (affinity, Maglev) and its replies are not
    // SNATed back, as for a flow whose entry was evicted.
    if CONNTRACK.insert(&pkt.key, flow, 0).is_err() {
        stats::count(Counter::ConntrackInsertFailed);
    }
    Ok((backend_id, backend))
}

/// Store the client's affinity; on a failure the client keeps its Maglev
/// slot, counted.
#[inline(always)]
fn remember_affinity(key: &AffinityKey, value: &Affinity) {
    if AFFINITY.insert(key, value, 0).is_err() {
        stats::count(Counter::AffinityInsertFailed);
    }
}

/// The client's affinity, if it is younger than the service's timeout and
/// its backend is still up; refreshed on use.
#[inline(always)]
pub fn fresh_affinity(
    key: &AffinityKey,
    service: &Service,
    now: u64,
) -> Option<(u32, &'static Backend)> {
    let affinity = unsafe { &mut *AFFINITY.get_ptr_mut(key)? };
    if now.saturating_sub(affinity.last_seen_ns) > service.affinity_timeout_ns {
        return None;
    }
    let backend = backend_if_up(affinity.backend_id, service.id)?;
    affinity.last_seen_ns = now;
    Some((affinity.backend_id, backend))
}

/// The backend at the flow's Maglev slot. `masked_client` is the client
/// address masked to the service's prefix (used by source-ip services).
#[inline(always)]
pub fn maglev_pick(
    pkt: &Packet,
    service: &Service,
    masked_client: &[u32; 4],
) -> Result<(u32, &'static Backend), Counter> {
    if service.table_size == 0 {
        return Err(Counter::DropNoBackend);
    }
    let client = if service.flags & SERVICE_FOUR_TUPLE != 0 {
        &pkt.key.src
    } else {
        masked_client
    };
    let hash = flow_hash(service.id, service.flags, client, pkt.key.sport);
    let index =
        service.table_offset[(service.active_table & 1) as usize] + slot(hash, service.table_size);
    let backend_id = *MAGLEV.get(index).ok_or(Counter::DropNoBackend)?;
    let backend = backend_if_up(backend_id, service.id).ok_or(Counter::DropBackendDown)?;
    Ok((backend_id, backend))
}
