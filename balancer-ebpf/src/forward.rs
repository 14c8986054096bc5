//! Sending a rewritten packet on: FIB lookup for the next hop, L2 rewrite,
//! TTL (hop limit) decrement, then out of the same interface or another one
//! in REDIRECT_DEVS.
//!
//! Whenever the fast path cannot finish, the packet goes to the kernel with
//! its L2 header untouched: with forwarding on, the kernel routes the
//! already-NATed packet itself (and resolves the neighbour for the next
//! one, on NO_NEIGH). Replies to clients carry an [`L2Path`] instead,
//! because the kernel would drop them (their source is the VIP, a local
//! address).

use core::mem::size_of;

const _: () = assert!(size_of::<FibParams>() % 8 == 0);

use aya_ebpf::{bindings::bpf_fib_lookup as FibParams, helpers::generated::bpf_fib_lookup};
use balancer_common::{
    counters::Counter,
    types::{FAMILY_V4, ReverseNat},
};
use network_types::{eth::EthHdr, ip::Ipv6Hdr};

use crate::{
    ctx::{Action, Frame},
    ip::decrement_ttl,
    maps::REDIRECT_DEVS,
    parse::L3_OFF,
    ptr::{ptr_at, read_at, read_words},
    scratch::scratch,
    stats,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const FIB_SUCCESS: i64 = 0;
const FIB_NO_NEIGH: i64 = 7;

/// A known way to a host on a directly attached link, used when the FIB
/// has the route but no neighbour entry.
pub struct L2Path {
    pub ifindex: u32,
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
}

impl L2Path {
    /// Back the way a flow's first client packet came (see `ReverseNat`).
    #[inline(always)]
    pub fn to_client(reverse: &ReverseNat) -> Self {
        L2Path { ifindex: reverse.client_ifindex, dst_mac: reverse.client_mac, src_mac: reverse.gateway_mac }
    }
}

/// Fill `fib` with the addresses and length the FIB lookup needs, read
/// from the (already rewritten) IP header.
#[inline(always)]
fn fib_params<C: Frame>(ctx: &C, fib: &mut FibParams, family: u8, proto: u8) -> Option<()> {
    // Word by word: a struct assignment of zeroes compiles to a call to
    // `memset`, and every call adds a frame to the verifier's stack count.
    let words = fib as *mut FibParams as *mut u64;
    for i in 0..size_of::<FibParams>() / 8 {
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
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

#[inline(always)]
pub fn forward<C: Frame>(ctx: &C, family: u8, proto: u8, fallback: Option<&L2Path>) -> Action {
    let Some(scratch) = scratch() else {
        return stats::pass(Counter::PassFibOther);
    };
    let fib = &mut scratch.fib;
    if fib_params(ctx, fib, family, proto).is_none() {
        return stats::pass(Counter::PassTruncated);
    }
    let rc = unsafe { bpf_fib_lookup(ctx.raw(), fib, size_of::<FibParams>() as i32, 0) };
    let (ifindex, dst_mac, src_mac) = match (rc, fallback) {
        (FIB_SUCCESS, _) => (fib.ifindex, fib.dmac, fib.smac),
        (FIB_NO_NEIGH, Some(path)) if path.ifindex == fib.ifindex => {
            stats::count(Counter::NoNeighbourLearnedMac);
            (path.ifindex, path.dst_mac, path.src_mac)
        }
        (FIB_NO_NEIGH, _) => return stats::pass(Counter::PassNoNeighbour),
        _ => return stats::pass(Counter::PassFibOther),
    };
    let same_interface = ifindex == ctx.ingress_ifindex();
    if !same_interface && REDIRECT_DEVS.get(ifindex).is_none() {
        return stats::pass(Counter::PassNoRedirectDev);
    }
    if decrement_ttl(ctx, L3_OFF, family).is_err() {
        return stats::pass(Counter::PassTruncated);
    }
    let Some(eth) = ptr_at::<EthHdr, C>(ctx, 0) else {
        return stats::pass(Counter::PassTruncated);
    };
    unsafe {
        (*eth).dst_addr = dst_mac;
        (*eth).src_addr = src_mac;
    }
    if same_interface { Action::Tx } else { Action::Redirect(ifindex) }
}
