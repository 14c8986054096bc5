//! Replies of flows with no conntrack entry, and the confirmation that
//! makes a flow's entries.
//!
//! A flow is stored only once its backend confirms it: its first packet in
//! the flow that is neither a SYN nor an RST (TCP), or any packet (UDP).
//! The backend's TCP stack sends such a segment only after it accepted the
//! handshake's last ACK, checked against its own sequence number or SYN
//! cookie; a sender of spoofed packets never sees the SYN-ACK, so its ACKs
//! are answered with an RST, which confirms nothing. Until then the
//! client's packets are placed read-only (`choose::choice`).
//!
//! Such a reply (a SYN-ACK, the confirming packet, or any packet of a flow
//! whose entry was evicted, lost to a restart, or made by another gateway)
//! finds its VIP from config: the sender's service (`BACKEND_PORTS`, or
//! `BACKEND_VIPS` when one address:port serves one VIP). Where an
//! address:port serves several, the flow's `PENDING` entry names the
//! service. It is translated only if the sender is the backend the
//! client's packets go to now (its choice, or its `PENDING` entry), and it
//! came from that backend's next hop (the FIB's interface and MAC for the
//! backend's address): another host's packets, even from another backend
//! of the service, and packets that only carry the backend's address as
//! their source, pass untouched, counted. So do replies of flows a host
//! opened straight to a backend's address (`DIRECT`).

use aya_ebpf::bindings::BPF_NOEXIST;
use balancer_common::{
    counters::Counter,
    maps::{MAX_VIPS_PER_BACKEND, PORT_SHARED},
    types::{
        FlowKey, SERVICE_AMBIGUOUS_REPLIES, SERVICE_FOUR_TUPLE, Service, ServiceKey,
        TCP_BACKEND_ANSWERED, TCP_FIN_FROM_BACKEND,
    },
};

use crate::{
    action::Action,
    choose::{choice, touch_affinity},
    client_path,
    clock::{epoch, now_ns},
    ctx::Frame,
    forward::{self, L2Path},
    fragment,
    ip::{End, ttl_expired},
    lookup::{Reply, client_key, reply_flow},
    maps::{
        BACKEND_PORTS, BACKEND_VIPS, BACKENDS, CONNTRACK, DIRECT, PENDING, SERVICE_SLOTS, SERVICES,
    },
    nat::rewrite,
    parse::{L3_OFF, Packet, TCP_RST, TCP_SYN},
    paths,
    scratch::{scratch, store_bytes, store_words},
    stats::{self, Direction},
    tcp_state::{add_tcp_bits, tcp_state_bits},
};

/// `-EEXIST`, as map helpers return it.
const EEXIST: i32 = -17;

/// A backend → client packet whose flow has no conntrack entry: SNAT to
/// the VIP and forward if its sender is the client's backend, and confirm
/// the flow if the packet says the backend accepted it.
#[inline(always)]
pub fn reply<C: Frame>(ctx: &C, pkt: &Packet) -> Result<Action, ()> {
    if ttl_expired(ctx, L3_OFF, pkt.key.family) {
        return Ok(stats::pass(Counter::PassTtlExpired));
    }
    if is_direct(&pkt.key) {
        return Ok(stats::pass(Counter::PassNotOurs));
    }
    let now = now_ns();
    let (vip, service, backend_id) = match chosen(&pkt.key, now) {
        Ok(found) => found,
        // Another CPU confirmed the flow since this packet found no entry
        // (a backend's answer and its FIN, sent back to back, can be
        // handled at once): `store_flow` stores the entry before it drops
        // the flow's `PENDING` one, so a packet that misses both finds the
        // entry now. Passed untranslated, it would reach the client as a
        // stranger's, and the client's RST would end the connection.
        Err(Counter::PassReplyNotChosen) if let Reply::Flow(flow, vip) = reply_flow(&pkt.key) => {
            return paths::to_client(ctx, pkt, flow, vip);
        }
        Err(counter) => return Ok(stats::pass(counter)),
    };
    match BACKENDS.get(backend_id) {
        Some(b) if b.addr == pkt.key.src && b.port == pkt.key.sport => {}
        _ => return Ok(stats::pass(Counter::PassReplyNotChosen)),
    }
    if !forward::from_next_hop(ctx, pkt.key.family, backend_id, &pkt.key.src, now) {
        return Ok(stats::pass(Counter::PassReplyWrongPath));
    }
    // The FIB's way to the client (no entry holds one), or without a
    // neighbour the way its packets came.
    let learned = client_path::learned(&pkt.key.dst, pkt.key.family);
    let family = pkt.key.family;
    let Some(route) =
        forward::lookup_as_from(ctx, family, pkt.key.proto, &vip.addr, learned.as_ref())
    else {
        // Its source is a backend port: to the gateway itself it is the
        // answer to a health check, not a reply.
        return Ok(stats::pass(Counter::PassNotOurs));
    };
    // Rewritten even when it is passed: with the backend's source the
    // kernel would forward it, and the client would answer a stranger's
    // SYN-ACK with a reset that ends the backend's half of the connection.
    rewrite(ctx, pkt, End::Source, &vip.addr, vip.port)?;
    let path = match route {
        Ok(path) => path,
        Err(action) => return Ok(action),
    };
    let confirms = !pkt.is_tcp() || pkt.tcp_flags & (TCP_SYN | TCP_RST) == 0;
    let stored = confirms && store_flow(pkt, vip, service, backend_id, &path, now);
    stats::backend_packet(backend_id, pkt.len, Direction::ToClient, stored);
    fragment::record_first(pkt, &vip.addr, backend_id, Some(&path));
    stats::count(Counter::ForwardReplyWithoutFlow);
    stats::count(Counter::ForwardToClient);
    Ok(forward::send(ctx, pkt.key.family, &path))
}

/// Remember a flow a host opened straight to a backend port (`key`, as
/// its packets carry it), if it is not remembered yet.
#[inline(always)]
pub fn remember_direct(key: &FlowKey) {
    if unsafe { DIRECT.get(key) }.is_none() {
        let _ = DIRECT.insert(key, &0, 0);
    }
}

/// Does `reply` answer a flow its client opened straight to the backend?
#[inline(always)]
pub fn is_direct(reply: &FlowKey) -> bool {
    let Some(s) = scratch() else {
        return false;
    };
    let key = &mut s.reply_key;
    store_words(&mut key.src, &reply.dst);
    store_words(&mut key.dst, &reply.src);
    key.sport = reply.dport;
    key.dport = reply.sport;
    key.proto = reply.proto;
    key.family = reply.family;
    key._pad = [0; 2];
    unsafe { DIRECT.get(&*key) }.is_some()
}

/// The VIP and service a reply with no entry answers for, and the backend
/// the client's packets of that flow go to now. `Err`: pass, counted.
#[inline(always)]
pub fn chosen(
    reply: &FlowKey,
    now: u64,
) -> Result<(&'static ServiceKey, &'static Service, u32), Counter> {
    let port = u32::from(u16::from_be(reply.sport));
    match *BACKEND_PORTS.get(port).ok_or(Counter::PassNotOurs)? {
        0 => Err(Counter::PassNotOurs),
        PORT_SHARED => {
            let endpoint = ServiceKey {
                addr: reply.src,
                port: reply.sport,
                proto: reply.proto,
                family: reply.family,
            };
            let vips = unsafe { BACKEND_VIPS.get(&endpoint) }.ok_or(Counter::PassNotOurs)?;
            if vips.count == 1 {
                let vip = &vips.vips[0];
                let service = unsafe { SERVICES.get(vip) }.ok_or(Counter::PassNotOurs)?;
                return choice_for(reply, vip, service, now);
            }
            let key = &mut scratch().ok_or(Counter::PassNotOurs)?.reply_key;
            for i in 0..MAX_VIPS_PER_BACKEND {
                if i as u32 >= vips.count {
                    break;
                }
                let vip = &vips.vips[i];
                client_key(key, reply, vip);
                if let Some(pending) = unsafe { PENDING.get(&*key) }
                    && let Some(service) = unsafe { SERVICES.get(vip) }
                    && service.id == pending.service_id
                {
                    return Ok((vip, service, pending.backend_id));
                }
            }
            Err(Counter::PassReplyNotChosen)
        }
        service => {
            let slot = SERVICE_SLOTS.get(service - 1).ok_or(Counter::PassNotOurs)?;
            if slot.vip.proto != reply.proto || slot.vip.family != reply.family {
                return Err(Counter::PassNotOurs);
            }
            choice_for(reply, &slot.vip, &slot.service, now)
        }
    }
}

/// The backend the client of `reply` gets at `vip` now, as its next packet
/// would (`choose::choice`, read-only).
#[inline(always)]
fn choice_for(
    reply: &FlowKey,
    vip: &'static ServiceKey,
    service: &'static Service,
    now: u64,
) -> Result<(&'static ServiceKey, &'static Service, u32), Counter> {
    let (backend_id, _) = choice(&reply.dst, reply.dport, reply.family, service, now)
        .map_err(|_| Counter::PassReplyNotChosen)?;
    Ok((vip, service, backend_id))
}

/// Confirm the flow `reply` belongs to: its conntrack entry (backend
/// `backend_id`, the client's `path`), its client's affinity. `false` if
/// the entry could not be stored (counted; the backend's next packet
/// tries again) or another CPU stored it first.
#[inline(always)]
fn store_flow(
    reply: &Packet,
    vip: &ServiceKey,
    service: &Service,
    backend_id: u32,
    path: &L2Path,
    now: u64,
) -> bool {
    let Some(s) = scratch() else {
        return false;
    };
    client_key(&mut s.reply_key, &reply.key, vip);
    // Field by field into scratch space: a whole-struct store compiles to
    // a `memcpy` call, and every call adds a frame to the verifier's count.
    let flow = &mut s.flow;
    flow.backend_id = backend_id;
    flow.client_tcp_state = 0;
    // Every backend-side bit fits the byte (`Flow::backend_tcp_state`).
    let backend_bits = if reply.is_tcp() {
        tcp_state_bits(reply, TCP_FIN_FROM_BACKEND) as u8
    } else {
        0
    };
    flow.backend_tcp_state = if reply.is_tcp() {
        backend_bits | TCP_BACKEND_ANSWERED as u8
    } else {
        0
    };
    flow.last_seen_ns = now;
    flow.affinity_touched_ns = now;
    flow.created_ns = now;
    flow.client_ifindex = path.ifindex;
    store_bytes(&mut flow.client_mac, &path.dst_mac);
    store_bytes(&mut flow.gateway_mac, &path.src_mac);
    flow.path_epoch = epoch(now);
    // `_pad` stays as the zeroed scratch space has it (nothing writes it;
    // a 5-byte store of zeroes would compile to a `memset` call).
    // Only if absent: the backend's next packet may be confirming the same
    // flow on another CPU at this moment, and the connection counts once.
    match CONNTRACK.insert(&s.reply_key, &s.flow, u64::from(BPF_NOEXIST)) {
        Ok(()) => {}
        Err(EEXIST) => {
            // Stored by another CPU a moment ago: this packet's FIN still
            // counts toward the flow's end.
            if let Some(stored) = CONNTRACK.get_ptr_mut(&s.reply_key) {
                add_tcp_bits(unsafe { &mut (*stored).backend_tcp_state }, backend_bits);
            }
            return false;
        }
        Err(_) => {
            stats::count(Counter::ConntrackInsertFailed);
            return false;
        }
    }
    if service.flags & SERVICE_FOUR_TUPLE == 0 {
        touch_affinity::<true>(&reply.key.dst, reply.key.family, service, backend_id, now);
    }
    if service.flags & SERVICE_AMBIGUOUS_REPLIES != 0 {
        let _ = PENDING.remove(&s.reply_key);
    }
    stats::count(Counter::FlowConfirmed);
    true
}
