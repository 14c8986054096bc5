//! Sending a rewritten packet on: its next hop (interface and MACs), TTL
//! (hop limit) decrement, L2 rewrite, then out of the same interface or
//! another one in REDIRECT_DEVS.
//!
//! The next hop comes from `bpf_fib_lookup`, which alone cost about a third
//! of a conntrack hit, so the common paths keep its answer for about a
//! second (a clock epoch): per backend in NEXT_HOPS (per CPU; both the
//! packets to a backend and the check that a reply came from it read it),
//! per flow in its conntrack entry (`Flow::path_epoch`). Route and
//! neighbour changes are taken within a second. The rare paths (ICMP
//! errors, later fragments) look up every time.
//!
//! Whenever no next hop is found, the packet goes to the kernel with its L2
//! header untouched: with forwarding on, the kernel routes the already-NATed
//! packet itself (and resolves the neighbour for the next one, on
//! NO_NEIGH). Replies of a flow carry its last [`L2Path`] instead, because
//! the kernel would drop them (their source is the VIP, a local address).
//! A reply whose flow has no entry yet has no such path: it takes the
//! FIB's, or without a neighbour for its client the way its client's
//! packets came (`client_path`); with neither it is passed, counted.

use core::mem::size_of;

const _: () = assert!(size_of::<FibParams>() % 8 == 0);

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup as FibParams,
    },
    helpers::generated::bpf_fib_lookup,
};
use balancer_common::{
    counters::Counter,
    types::{Backend, FAMILY_V4, Flow},
};
use network_types::{eth::EthHdr, ip::Ipv6Hdr};

use crate::{
    action::Action,
    clock::epoch,
    ctx::Frame,
    ip::decrement_ttl,
    maps::{NEXT_HOPS, REDIRECT_DEVS},
    parse::L3_OFF,
    ptr::{ptr_at, read_at, read_words},
    scratch::{scratch, store_bytes, store_words},
    stats,
    values::NextHop,
};

/// `bpf_fib_lookup`'s address families (`linux/socket.h`; aya's bindings
/// have no `AF_*`).
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const FIB_SUCCESS: i64 = BPF_FIB_LKUP_RET_SUCCESS as i64;
const FIB_NO_NEIGH: i64 = BPF_FIB_LKUP_RET_NO_NEIGH as i64;
const FIB_NOT_FWDED: i64 = BPF_FIB_LKUP_RET_NOT_FWDED as i64;

/// A way to a host: out of `ifindex`, from `src_mac` to `dst_mac`.
#[derive(Clone, Copy)]
pub struct L2Path {
    pub ifindex: u32,
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
}

impl L2Path {
    /// Back to a flow's client: the FIB's way, as the flow last took it
    /// (see `Flow`).
    #[inline(always)]
    pub fn to_client(flow: &Flow) -> Self {
        L2Path {
            ifindex: flow.client_ifindex,
            dst_mac: flow.client_mac,
            src_mac: flow.gateway_mac,
        }
    }
}

/// Forward a packet just rewritten for `backend`.
#[inline(always)]
pub fn to_backend<C: Frame>(
    ctx: &C,
    family: u8,
    proto: u8,
    backend_id: u32,
    backend: &Backend,
    now: u64,
) -> Action {
    let Some(hop) = NEXT_HOPS.get_ptr_mut(backend_id) else {
        return forward(ctx, family, proto, None);
    };
    let hop = unsafe { &mut *hop };
    let epoch = epoch(now);
    if let Some(path) = fresh_hop(hop, &backend.addr, epoch) {
        return send(ctx, family, &path);
    }
    let path = match lookup(ctx, family, proto, None) {
        Ok(path) => path,
        Err(action) => return action,
    };
    keep_hop(hop, &backend.addr, epoch, &path);
    send(ctx, family, &path)
}

/// A backend's cached next hop (`hop`, its NEXT_HOPS entry), if it was
/// looked up this epoch for the backend's address `addr`. (Cache hit and
/// store are two functions, not one taking a closure for the lookup: a
/// closure can be compiled as a call of its own, and 6.1's verifier counts
/// every frame of a call chain against 512 bytes of stack.)
#[inline(always)]
fn fresh_hop(hop: &NextHop, addr: &[u32; 4], epoch: u16) -> Option<L2Path> {
    (hop.epoch == epoch && hop.ifindex != 0 && hop.addr == *addr).then_some(L2Path {
        ifindex: hop.ifindex,
        dst_mac: hop.dst_mac,
        src_mac: hop.src_mac,
    })
}

/// Keep `path`, just looked up, as the next hop to `addr` for `epoch`.
#[inline(always)]
fn keep_hop(hop: &mut NextHop, addr: &[u32; 4], epoch: u16, path: &L2Path) {
    store_words(&mut hop.addr, addr);
    store_bytes(&mut hop.dst_mac, &path.dst_mac);
    store_bytes(&mut hop.src_mac, &path.src_mac);
    hop.ifindex = path.ifindex;
    hop.epoch = epoch;
}

/// Forward a reply just rewritten back to its client, by the flow's path:
/// the FIB's, looked up at most once an epoch, or the last one it gave
/// while the FIB has no neighbour for the client.
#[inline(always)]
pub fn to_client<C: Frame>(ctx: &C, family: u8, proto: u8, flow: &mut Flow, now: u64) -> Action {
    let epoch = epoch(now);
    let known = L2Path::to_client(flow);
    if flow.path_epoch == epoch {
        return send(ctx, family, &known);
    }
    let path = match lookup(ctx, family, proto, Some(&known)) {
        Ok(path) => path,
        Err(action) => return action,
    };
    store_bytes(&mut flow.client_mac, &path.dst_mac);
    store_bytes(&mut flow.gateway_mac, &path.src_mac);
    flow.client_ifindex = path.ifindex;
    flow.path_epoch = epoch;
    send(ctx, family, &path)
}

/// Forward by a FIB lookup now (the rare paths); `fallback` as in [`lookup`].
#[inline(always)]
pub fn forward<C: Frame>(ctx: &C, family: u8, proto: u8, fallback: Option<&L2Path>) -> Action {
    match lookup(ctx, family, proto, fallback) {
        Ok(path) => send(ctx, family, &path),
        Err(action) => action,
    }
}

/// The FIB's next hop for the (already rewritten) packet; `fallback`, if
/// it leaves by the same interface, when the FIB has no neighbour entry.
/// `Err`: the packet is passed to the kernel, counted.
#[inline(always)]
pub fn lookup<C: Frame>(
    ctx: &C,
    family: u8,
    proto: u8,
    fallback: Option<&L2Path>,
) -> Result<L2Path, Action> {
    let (rc, fib) = fib_lookup(ctx, family, proto, None)?;
    answer(rc, fib, fallback)
}

/// [`lookup`] for a reply whose source is still the backend's: the next
/// hop it will have once its source is `vip`. `None`: the destination is
/// this host (the reply is the answer to a health check), so nothing is
/// to be rewritten. One FIB lookup answers both questions.
#[inline(always)]
pub fn lookup_as_from<C: Frame>(
    ctx: &C,
    family: u8,
    proto: u8,
    vip: &[u32; 4],
    fallback: Option<&L2Path>,
) -> Option<Result<L2Path, Action>> {
    let (rc, fib) = match fib_lookup(ctx, family, proto, Some(vip)) {
        Ok(found) => found,
        Err(action) => return Some(Err(action)),
    };
    (rc != FIB_NOT_FWDED).then(|| answer(rc, fib, fallback))
}

/// `bpf_fib_lookup` for the packet's addresses and length, its source
/// taken as `src` when given; the return code and the filled parameters.
/// `Err`: no scratch space, or a truncated header (passed, counted).
#[inline(always)]
fn fib_lookup<C: Frame>(
    ctx: &C,
    family: u8,
    proto: u8,
    src: Option<&[u32; 4]>,
) -> Result<(i64, &'static FibParams), Action> {
    let Some(scratch) = scratch() else {
        return Err(stats::pass(Counter::PassFibOther));
    };
    let fib = &mut scratch.fib;
    if fib_params(ctx, fib, family, proto).is_none() {
        return Err(stats::pass(Counter::PassTruncated));
    }
    if let Some(src) = src {
        if family == FAMILY_V4 {
            fib.__bindgen_anon_3.ipv4_src = src[0];
        } else {
            store_words(unsafe { &mut fib.__bindgen_anon_3.ipv6_src }, src);
        }
    }
    let rc = unsafe { bpf_fib_lookup(ctx.raw(), fib, size_of::<FibParams>() as i32, 0) };
    Ok((rc, fib))
}

/// The path in a FIB lookup's answer (`rc`, `fib`), as [`lookup`] says.
#[inline(always)]
fn answer(rc: i64, fib: &FibParams, fallback: Option<&L2Path>) -> Result<L2Path, Action> {
    match (rc, fallback) {
        (FIB_SUCCESS, _) => Ok(L2Path {
            ifindex: fib.ifindex,
            dst_mac: fib.dmac,
            src_mac: fib.smac,
        }),
        (FIB_NO_NEIGH, Some(path)) if path.ifindex == fib.ifindex => {
            stats::count(Counter::NoNeighbourLearnedMac);
            Ok(*path)
        }
        (FIB_NO_NEIGH, _) => Err(stats::pass(Counter::PassNoNeighbour)),
        _ => Err(stats::pass(Counter::PassFibOther)),
    }
}

/// Did the packet come from the next hop of backend `backend_id` (at
/// `addr`): in by the interface the FIB routes `addr` out of, from the MAC
/// of its neighbour entry (strict reverse-path filtering, with the MAC as
/// well)? A packet with a backend's address as its source that comes from
/// anywhere else is spoofed (`confirm`). The next hop is the one packets
/// to the backend use (NEXT_HOPS, at most one FIB lookup an epoch).
#[inline(always)]
pub fn from_next_hop<C: Frame>(
    ctx: &C,
    family: u8,
    backend_id: u32,
    addr: &[u32; 4],
    now: u64,
) -> bool {
    let Some(src_mac) = read_at::<[u8; 6], C>(ctx, 6) else {
        return false;
    };
    let Some(cached) = NEXT_HOPS.get_ptr_mut(backend_id) else {
        return false;
    };
    let cached = unsafe { &mut *cached };
    let epoch = epoch(now);
    let hop = match fresh_hop(cached, addr, epoch) {
        Some(hop) => hop,
        None => {
            let Some(fib) = route_to(ctx, family, addr, FIB_SUCCESS) else {
                return false;
            };
            let hop = L2Path {
                ifindex: fib.ifindex,
                dst_mac: fib.dmac,
                src_mac: fib.smac,
            };
            keep_hop(cached, addr, epoch, &hop);
            hop
        }
    };
    // Byte by byte: an array comparison can compile to a `bcmp` call.
    let mut differ = 0;
    for i in 0..6 {
        differ |= hop.dst_mac[i] ^ src_mac[i];
    }
    hop.ifindex == ctx.ingress_ifindex() && differ == 0
}

/// Is `addr` an address of the gateway itself (the FIB does not forward
/// to it)?
#[inline(always)]
pub fn to_this_host<C: Frame>(ctx: &C, family: u8, addr: &[u32; 4]) -> bool {
    route_to(ctx, family, addr, FIB_NOT_FWDED).is_some()
}

/// The FIB's answer for a packet to `addr` arriving where this one did,
/// if its return code is `want`.
#[inline(always)]
fn route_to<C: Frame>(
    ctx: &C,
    family: u8,
    addr: &[u32; 4],
    want: i64,
) -> Option<&'static FibParams> {
    let fib = &mut scratch()?.fib;
    zero(fib);
    fib.ifindex = ctx.ingress_ifindex();
    if family == FAMILY_V4 {
        fib.family = AF_INET;
        fib.__bindgen_anon_4.ipv4_dst = addr[0];
    } else {
        fib.family = AF_INET6;
        store_words(unsafe { &mut fib.__bindgen_anon_4.ipv6_dst }, addr);
    }
    let rc = unsafe { bpf_fib_lookup(ctx.raw(), fib, size_of::<FibParams>() as i32, 0) };
    (rc == want).then_some(&*fib)
}

/// Zero `fib` word by word: a struct assignment of zeroes compiles to a
/// call to `memset`, and every call adds a frame to the verifier's stack
/// count.
#[inline(always)]
fn zero(fib: &mut FibParams) {
    let words = fib as *mut FibParams as *mut u64;
    for i in 0..size_of::<FibParams>() / 8 {
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
}

/// Fill `fib` with the addresses and length the FIB lookup needs, read
/// from the (already rewritten) IP header.
#[inline(always)]
fn fib_params<C: Frame>(ctx: &C, fib: &mut FibParams, family: u8, proto: u8) -> Option<()> {
    zero(fib);
    fib.l4_protocol = proto;
    fib.ifindex = ctx.ingress_ifindex();
    if family == FAMILY_V4 {
        fib.family = AF_INET;
        let [tot_len, src, dst] = [
            u32::from(u16::from_be(read_at::<u16, C>(ctx, L3_OFF + 2)?)),
            read_at::<u32, C>(ctx, L3_OFF + 12)?,
            read_at::<u32, C>(ctx, L3_OFF + 16)?,
        ];
        fib.__bindgen_anon_1.tot_len = tot_len as u16;
        fib.__bindgen_anon_3.ipv4_src = src;
        fib.__bindgen_anon_4.ipv4_dst = dst;
    } else {
        fib.family = AF_INET6;
        let payload_len = u16::from_be(read_at::<u16, C>(ctx, L3_OFF + 4)?);
        fib.__bindgen_anon_1.tot_len = payload_len.saturating_add(Ipv6Hdr::LEN as u16);
        fib.__bindgen_anon_3.ipv6_src = read_words(ctx, L3_OFF + 8)?;
        fib.__bindgen_anon_4.ipv6_dst = read_words(ctx, L3_OFF + 24)?;
    }
    Some(())
}

/// Out by `path`: TTL, MACs, then transmit or redirect.
#[inline(always)]
pub fn send<C: Frame>(ctx: &C, family: u8, path: &L2Path) -> Action {
    let same_interface = path.ifindex == ctx.ingress_ifindex();
    if !same_interface && REDIRECT_DEVS.get(path.ifindex).is_none() {
        return stats::pass(Counter::PassNoRedirectDev);
    }
    if decrement_ttl(ctx, L3_OFF, family).is_err() {
        return stats::pass(Counter::PassTruncated);
    }
    let Some(eth) = ptr_at::<EthHdr, C>(ctx, 0) else {
        return stats::pass(Counter::PassTruncated);
    };
    unsafe {
        (*eth).dst_addr = path.dst_mac;
        (*eth).src_addr = path.src_mac;
    }
    if same_interface {
        Action::Tx
    } else {
        Action::Redirect(path.ifindex)
    }
}
