//! Fragmented datagrams. Only the first fragment carries the ports, so:
//!
//! - the first fragment is balanced like any packet, and how it was
//!   rewritten is remembered in FRAGMENTS under (source, destination, IP id,
//!   protocol), in either direction;
//! - a later fragment takes the same rewrite from there;
//! - a later fragment that arrives before its first (reordering) is placed
//!   by client address alone when its VIP address has one `source-ip`
//!   service (FRAGMENT_SERVICES): affinity, else the Maglev slot of the
//!   masked client, the same answer its first fragment gets. Otherwise it is
//!   passed to the kernel untouched (`pass_fragment`), never guessed.

use core::ptr::write_volatile;

use balancer_common::{
    counters::Counter,
    types::{Backend, FRAGMENT_TO_BACKEND, FRAGMENT_TO_CLIENT, FragmentKey, ServiceKey},
};

use crate::{
    action::Action,
    choose::choice,
    ctx::Frame,
    forward::{L2Path, forward},
    ip::{End, ttl_expired},
    maps::{FRAGMENT_SERVICES, FRAGMENTS, SERVICES},
    nat::rewrite,
    parse::{L3_OFF, Packet, Piece},
    scratch::{scratch, store_bytes, store_words},
    stats::{self, Direction},
};

#[inline(always)]
fn key(pkt: &Packet, id: u32) -> FragmentKey {
    FragmentKey {
        src: pkt.key.src,
        dst: pkt.key.dst,
        id,
        proto: pkt.key.proto,
        family: pkt.key.family,
        _pad: [0; 2],
    }
}

/// Remember a first fragment's rewrite for the rest of its datagram: the
/// new `addr` (and for replies the client's L2 path).
#[inline(always)]
pub fn record_first(pkt: &Packet, addr: &[u32; 4], backend_id: u32, client_path: Option<&L2Path>) {
    let Piece::First(id) = pkt.piece else { return };
    let Some(s) = scratch() else { return };
    // Field by field into the map value (see `store_words`).
    let k = &mut s.fragment_key;
    store_words(&mut k.src, &pkt.key.src);
    store_words(&mut k.dst, &pkt.key.dst);
    k.id = id;
    k.proto = pkt.key.proto;
    k.family = pkt.key.family;
    k._pad = [0; 2];
    let nat = &mut s.fragment_nat;
    store_words(&mut nat.addr, addr);
    nat.backend_id = backend_id;
    let (direction, ifindex, client_mac, gateway_mac) = match client_path {
        Some(path) => (FRAGMENT_TO_CLIENT, path.ifindex, path.dst_mac, path.src_mac),
        None => (FRAGMENT_TO_BACKEND, 0, [0; 6], [0; 6]),
    };
    // Byte by byte and volatile: adjacent zero stores, or an array store,
    // would become a `memset` call.
    unsafe {
        write_volatile(&mut nat.direction, direction);
        write_volatile(&mut nat.client_ifindex, ifindex);
    }
    store_bytes(&mut nat._pad, &[0; 3]);
    store_bytes(&mut nat.client_mac, &client_mac);
    store_bytes(&mut nat.gateway_mac, &gateway_mac);
    // Its later fragments then pass to the kernel (`pass_fragment`) or are
    // placed by client alone, as if they had come first.
    if FRAGMENTS
        .insert(&s.fragment_key, &s.fragment_nat, 0)
        .is_err()
    {
        stats::count(Counter::FragmentInsertFailed);
    }
}

/// A fragment after the first: rewrite it as its first fragment was.
#[inline(always)]
pub fn forward_later<C: Frame>(ctx: &C, pkt: &Packet, id: u32) -> Result<Action, ()> {
    if ttl_expired(ctx, L3_OFF, pkt.key.family) {
        return Ok(stats::pass(Counter::PassTtlExpired));
    }
    // The new address, whose backend, and for a reply the client's path.
    let (addr, backend_id, client_path) = match unsafe { FRAGMENTS.get(&key(pkt, id)) } {
        Some(nat) => {
            let path = L2Path {
                ifindex: nat.client_ifindex,
                dst_mac: nat.client_mac,
                src_mac: nat.gateway_mac,
            };
            (
                nat.addr,
                nat.backend_id,
                (nat.direction == FRAGMENT_TO_CLIENT).then_some(path),
            )
        }
        None => match by_client(pkt) {
            Some(Ok((backend_id, backend))) => (backend.addr, backend_id, None),
            Some(Err(counter)) => return Ok(stats::drop(counter)),
            None => return Ok(stats::pass(Counter::PassFragment)),
        },
    };
    let (end, direction) = if client_path.is_some() {
        (End::Source, Direction::ToClient)
    } else {
        (End::Destination, Direction::ToBackend)
    };
    stats::backend_packet(backend_id, pkt.len, direction, false);
    rewrite(ctx, pkt, end, &addr, 0)?;
    stats::count(Counter::ForwardFragment);
    Ok(forward(
        ctx,
        pkt.key.family,
        pkt.key.proto,
        client_path.as_ref(),
    ))
}

/// The backend of a `source-ip` service at this VIP address for this
/// client; `None` if no such service.
#[inline(always)]
fn by_client(pkt: &Packet) -> Option<Result<(u32, &'static Backend), Counter>> {
    let vip = ServiceKey {
        addr: pkt.key.dst,
        port: 0,
        proto: pkt.key.proto,
        family: pkt.key.family,
    };
    let service_key = unsafe { FRAGMENT_SERVICES.get(&vip)? };
    let service = unsafe { SERVICES.get(service_key)? };
    let now = crate::clock::now_ns();
    Some(choice(
        &pkt.key.src,
        pkt.key.sport,
        pkt.key.family,
        service,
        now,
    ))
}
