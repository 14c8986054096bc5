//! The two balanced paths: client → backend (choose a backend, DNAT,
//! forward) and backend → client (SNAT back to the VIP, forward).

use balancer_common::{
    counters::Counter,
    types::{Flow, Service, ServiceKey, TCP_BACKEND_ANSWERED, TCP_FIN_FROM_BACKEND, tcp_closed},
};

use crate::{
    action::Action,
    choose,
    clock::now_ns,
    ctx::Frame,
    forward, fragment,
    ip::{End, ttl_expired},
    lookup::client_key,
    maps::{BACKENDS, CONNTRACK},
    nat::rewrite,
    parse::{L3_OFF, Packet, TCP_ACK, TCP_SYN},
    scratch::scratch,
    stats::{self, Direction},
    tcp_state::{add_tcp_bits, tcp_state_bits},
};

/// A client packet to `service`: pick its backend, DNAT, forward.
#[inline(always)]
pub fn to_backend<C: Frame>(ctx: &C, pkt: &Packet, service: &Service) -> Result<Action, ()> {
    if ttl_expired(ctx, L3_OFF, pkt.key.family) {
        return Ok(stats::pass(Counter::PassTtlExpired));
    }
    let now = now_ns();
    let (backend_id, backend) = match choose::backend_for(ctx, pkt, service, now) {
        Ok(chosen) => chosen,
        Err(counter) => return Ok(stats::drop(counter)),
    };
    // A connection is counted when its backend confirms it (`confirm`).
    stats::backend_packet(backend_id, pkt.len, Direction::ToBackend, false);
    fragment::record_first(pkt, &backend.addr, backend_id, None);
    rewrite(ctx, pkt, End::Destination, &backend.addr, backend.port)?;
    stats::count(Counter::ForwardToBackend);
    Ok(forward::to_backend(
        ctx,
        pkt.key.family,
        pkt.key.proto,
        backend_id,
        backend,
        now,
    ))
}

/// A SYN-ACK on the 4-tuple of a flow that is over (its entry saw both
/// FINs or an RST) or whose backend is no longer up: the client reuses the
/// 4-tuple, and the new connection is confirmed afresh by its backend's
/// next packet (`confirm`). Removes the old entry (`vip`: the flow's).
///
/// The entry may name another backend than the sender: the client's
/// affinity moved between the two connections (its backend failed, or a
/// peer's entry replaced it). Kept, that entry would make every SYN-ACK of
/// the new connection pass as a stranger's until the daemon expires it,
/// seconds of SYN retries. An entry of a live flow on a backend that is up
/// stays: a SYN-ACK is then the answer to a SYN anyone could have sent.
#[inline(always)]
pub fn reopened(pkt: &Packet, flow: *mut Flow, vip: &ServiceKey) -> bool {
    let flow = unsafe { &*flow };
    if pkt.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN | TCP_ACK {
        return false;
    }
    let backend_up = BACKENDS.get(flow.backend_id).is_some_and(|b| b.is_up());
    if backend_up && !tcp_closed(flow.tcp_state()) {
        return false;
    }
    if let Some(s) = scratch() {
        client_key(&mut s.reply_key, &pkt.key, vip);
        let _ = CONNTRACK.remove(&s.reply_key);
    }
    true
}

/// A reply in `flow` (see `lookup::reply_flow`): SNAT back to `vip`.
#[inline(always)]
pub fn to_client<C: Frame>(
    ctx: &C,
    pkt: &Packet,
    flow: *mut Flow,
    vip: &ServiceKey,
) -> Result<Action, ()> {
    if ttl_expired(ctx, L3_OFF, pkt.key.family) {
        return Ok(stats::pass(Counter::PassTtlExpired));
    }
    let flow = unsafe { &mut *flow };
    let now = now_ns();
    let (vip_addr, vip_port, backend_id) = (vip.addr, vip.port, flow.backend_id);
    if pkt.is_tcp() {
        let mut bits = tcp_state_bits(pkt, TCP_FIN_FROM_BACKEND);
        // Only the SYN-ACK marks the handshake answered.
        if pkt.tcp_flags & TCP_SYN != 0 {
            bits |= TCP_BACKEND_ANSWERED;
        }
        // Every backend-side bit fits the byte (`Flow::backend_tcp_state`).
        add_tcp_bits(&mut flow.backend_tcp_state, bits as u8);
    }
    stats::backend_packet(backend_id, pkt.len, Direction::ToClient, false);
    fragment::record_first(
        pkt,
        &vip_addr,
        backend_id,
        Some(&forward::L2Path::to_client(flow)),
    );
    rewrite(ctx, pkt, End::Source, &vip_addr, vip_port)?;
    stats::count(Counter::ForwardToClient);
    Ok(forward::to_client(
        ctx,
        pkt.key.family,
        pkt.key.proto,
        flow,
        now,
    ))
}
