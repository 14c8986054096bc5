//! Choosing a backend for a client packet. In order:
//! 1. its conntrack entry, while that backend is up (not for a SYN: a new
//!    connection has no entry yet, so a SYN costs no lookup there);
//! 2. the client's affinity entry (source-ip services), while it is fresh
//!    and its backend up (draining backends keep their clients);
//! 3. the service's Maglev table, at `flow_hash % M`.
//!
//! Steps 2 and 3 write nothing: a flow's entries are made when its backend
//! confirms it (`confirm`), so packets anyone can send to the VIP cannot
//! fill or evict the tables. The one exception is `PENDING`, for services
//! whose replies cannot find their VIP from config (see
//! `SERVICE_AMBIGUOUS_REPLIES`).

use balancer_common::{
    addr::mask,
    counters::Counter,
    hash::{flow_hash, slot},
    types::{
        Affinity, AffinityKey, Backend, FlowKey, Pending, SERVICE_AMBIGUOUS_REPLIES,
        SERVICE_FOUR_TUPLE, Service, TCP_FIN_FROM_CLIENT,
    },
};

use crate::{
    client_path,
    ctx::Frame,
    lookup::backend_if_up,
    maps::{AFFINITY, CONNTRACK, MAGLEV, PENDING},
    parse::Packet,
    report, stats,
    tcp_state::{add_tcp_bits, tcp_state_bits},
};

/// A long-lived flow refreshes its client's affinity at most this often, so
/// an open WebSocket keeps the client's later connections on its backend
/// without a map write per packet.
const AFFINITY_REFRESH_NS: u64 = 1_000_000_000;

/// `Flow::last_seen_ns` moves in steps of this much: idle timeouts are
/// seconds to minutes (`balancer_user::accounting`).
const LAST_SEEN_STEP_NS: u64 = 250_000_000;

/// The backend for a client packet of `service`. `Err`: the packet is
/// dropped, for the counter's reason.
#[inline(always)]
pub fn backend_for<C: Frame>(
    ctx: &C,
    pkt: &Packet,
    service: &Service,
    now: u64,
) -> Result<(u32, &'static Backend), Counter> {
    if !pkt.is_syn()
        && let Some(found) = existing_flow(pkt, service, now)
    {
        return Ok(found);
    }
    let found = choice(&pkt.key.src, pkt.key.sport, pkt.key.family, service, now)?;
    client_path::learn(ctx, &pkt.key.src, pkt.key.family);
    if service.flags & SERVICE_AMBIGUOUS_REPLIES != 0 {
        remember_pending(&pkt.key, found.0, service.id);
    }
    Ok(found)
}

/// The flow's backend from conntrack, if the flow is known and its backend
/// up.
#[inline(always)]
fn existing_flow(pkt: &Packet, service: &Service, now: u64) -> Option<(u32, &'static Backend)> {
    let flow = unsafe { &mut *CONNTRACK.get_ptr_mut(&pkt.key)? };
    let Some(backend) = backend_if_up(flow.backend_id, service.id) else {
        // The client's packets go to another backend now, whose answer (an
        // RST, or the confirmation of a flow it takes over) must find no
        // entry naming the old one, or it would pass untranslated.
        let _ = CONNTRACK.remove(&pkt.key);
        return None;
    };
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
        touch_affinity::<false>(&pkt.key.src, pkt.key.family, service, flow.backend_id, now);
    }
    Some((flow.backend_id, backend))
}

/// The backend a client's packets of a flow with no conntrack entry go to
/// now (`client`, `port`: the client's address and port): its fresh
/// affinity, else its Maglev slot. Reads only, so a reply can ask the same
/// question (`confirm`) and get the same answer.
#[inline(always)]
pub fn choice(
    client: &[u32; 4],
    port: u16,
    family: u8,
    service: &Service,
    now: u64,
) -> Result<(u32, &'static Backend), Counter> {
    let key = affinity_key(client, family, service);
    if service.flags & SERVICE_FOUR_TUPLE == 0
        && let Some(found) = fresh_affinity(&key, service, now)
    {
        return Ok(found);
    }
    maglev_pick(client, port, service, &key.client)
}

/// Make the client's affinity name `backend_id` as of `now`: refreshed in
/// place when it does already, stored otherwise. Only for flows their
/// backend confirmed. With `REPORT` (a confirmation, not a long flow's
/// refresh) a stored entry is reported to the daemon's cluster peers.
#[inline(always)]
pub fn touch_affinity<const REPORT: bool>(
    client: &[u32; 4],
    family: u8,
    service: &Service,
    backend_id: u32,
    now: u64,
) {
    let key = affinity_key(client, family, service);
    if let Some(a) = AFFINITY.get_ptr_mut(&key) {
        let a = unsafe { &mut *a };
        if a.backend_id == backend_id {
            a.last_seen_ns = now;
            return;
        }
    }
    let value = Affinity {
        backend_id,
        _pad: 0,
        last_seen_ns: now,
    };
    // On a failure the client keeps its Maglev slot, counted.
    if AFFINITY.insert(&key, &value, 0).is_err() {
        stats::count(Counter::AffinityInsertFailed);
    } else if REPORT {
        report::affinity_stored(&key, backend_id, now);
    }
}

/// Record the choice for an unconfirmed flow of a service with ambiguous
/// replies, where it is not recorded yet: a flood of one flow writes once.
#[inline(always)]
fn remember_pending(key: &FlowKey, backend_id: u32, service_id: u32) {
    if let Some(p) = unsafe { PENDING.get(key) }
        && p.backend_id == backend_id
        && p.service_id == service_id
    {
        return;
    }
    let value = Pending {
        backend_id,
        service_id,
    };
    if PENDING.insert(key, &value, 0).is_err() {
        stats::count(Counter::PendingInsertFailed);
    }
}

/// Written field by field with volatile stores (see `scratch::store_words`): a
/// struct literal compiles to a `memset` call here.
#[inline(always)]
pub fn affinity_key(client: &[u32; 4], family: u8, service: &Service) -> AffinityKey {
    use core::ptr::{addr_of_mut, write_volatile};
    let client = mask(*client, family, service.source_prefix(family));
    let mut key = core::mem::MaybeUninit::<AffinityKey>::uninit();
    let p = key.as_mut_ptr();
    unsafe {
        write_volatile(addr_of_mut!((*p).service_id), service.id);
        write_volatile(addr_of_mut!((*p).family), family);
        for i in 0..3 {
            write_volatile(addr_of_mut!((*p)._pad[i]), 0);
        }
        for i in 0..4 {
            write_volatile(addr_of_mut!((*p).client[i]), client[i]);
        }
        key.assume_init()
    }
}

/// The client's affinity, if it is younger than the service's timeout and
/// its backend is still up. Read only: confirmed flows refresh it
/// (`touch_affinity`).
#[inline(always)]
pub fn fresh_affinity(
    key: &AffinityKey,
    service: &Service,
    now: u64,
) -> Option<(u32, &'static Backend)> {
    let affinity = unsafe { AFFINITY.get(key)? };
    if now.saturating_sub(affinity.last_seen_ns) > service.affinity_timeout_ns {
        return None;
    }
    let backend = backend_if_up(affinity.backend_id, service.id)?;
    Some((affinity.backend_id, backend))
}

/// The backend at the flow's Maglev slot (`client`, `port`: the client's
/// address and port). `masked_client` is the client address masked to the
/// service's prefix (used by source-ip services).
#[inline(always)]
pub fn maglev_pick(
    client: &[u32; 4],
    port: u16,
    service: &Service,
    masked_client: &[u32; 4],
) -> Result<(u32, &'static Backend), Counter> {
    if service.table_size == 0 {
        return Err(Counter::DropNoBackend);
    }
    let client = if service.flags & SERVICE_FOUR_TUPLE != 0 {
        client
    } else {
        masked_client
    };
    let hash = flow_hash(service.hash_seed, service.flags, client, port);
    let index =
        service.table_offset[(service.active_table & 1) as usize] + slot(hash, service.table_size);
    let backend_id = *MAGLEV.get(index).ok_or(Counter::DropNoBackend)?;
    let backend = backend_if_up(backend_id, service.id).ok_or(Counter::DropBackendDown)?;
    Ok((backend_id, backend))
}
