//! Sending a rewritten packet on: FIB lookup for the next hop, L2 rewrite,
//! TTL decrement, then XDP_TX (same interface) or XDP_REDIRECT (the other
//! one, through the REDIRECT_DEVS devmap).
//!
//! Whenever the fast path cannot finish, the packet goes to the kernel with
//! its L2 header untouched: with forwarding on, the kernel routes the
//! already-NATed packet itself (and resolves the neighbour for the next
//! one, on NO_NEIGH). Replies to clients carry an [`L2Path`] instead,
//! because the kernel would drop them (their source is the VIP, a local
//! address).

use core::mem::{size_of, zeroed};

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, xdp_action},
    helpers::generated::bpf_fib_lookup,
    programs::XdpContext,
};
use balancer_common::counters::Counter;
use network_types::eth::EthHdr;

use crate::{csum::replace16, maps::REDIRECT_DEVS, parse::Packet, ptr::ptr_at, stats};

const AF_INET: u8 = 2;
const FIB_SUCCESS: i64 = 0;
const FIB_NO_NEIGH: i64 = 7;

/// A known way to a host on a directly attached link, used when the FIB
/// has the route but no neighbour entry.
pub struct L2Path {
    pub ifindex: u32,
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
}

/// Is the TTL too low to forward? Checked before any rewrite, so the kernel
/// gets the original packet and sends its ICMP time-exceeded.
#[inline(always)]
pub fn ttl_expired(pkt: &Packet) -> bool {
    unsafe { (*pkt.ip).ttl <= 1 }
}

#[inline(always)]
pub fn forward(ctx: &XdpContext, pkt: &Packet, fallback: Option<&L2Path>) -> u32 {
    let ip = unsafe { &mut *pkt.ip };
    let mut fib: FibParams = unsafe { zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = ip.proto;
    fib.__bindgen_anon_1.tot_len = u16::from_be_bytes(ip.tot_len);
    fib.ifindex = ctx.ingress_ifindex() as u32;
    fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(ip.src_addr);
    fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(ip.dst_addr);
    let rc = unsafe {
        bpf_fib_lookup(ctx.ctx.cast(), &mut fib, size_of::<FibParams>() as i32, 0)
    };
    let (ifindex, dst_mac, src_mac) = match (rc, fallback) {
        (FIB_SUCCESS, _) => (fib.ifindex, fib.dmac, fib.smac),
        (FIB_NO_NEIGH, Some(path)) if path.ifindex == fib.ifindex => {
            stats::count(Counter::NoNeighbourLearnedMac);
            (path.ifindex, path.dst_mac, path.src_mac)
        }
        (FIB_NO_NEIGH, _) => return stats::pass(Counter::PassNoNeighbour),
        _ => return stats::pass(Counter::PassFibOther),
    };
    let same_interface = ifindex == ctx.ingress_ifindex() as u32;
    if !same_interface && REDIRECT_DEVS.get(ifindex).is_none() {
        return stats::pass(Counter::PassNoRedirectDev);
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return stats::pass(Counter::PassTruncated);
    };
    // TTL is the high byte of the (ttl, protocol) word.
    let old = u16::from_ne_bytes([ip.ttl, ip.proto]);
    ip.ttl -= 1;
    let new = u16::from_ne_bytes([ip.ttl, ip.proto]);
    ip.check = replace16(u16::from_ne_bytes(ip.check), old, new).to_ne_bytes();
    unsafe {
        (*eth).dst_addr = dst_mac;
        (*eth).src_addr = src_mac;
    }
    if same_interface {
        return xdp_action::XDP_TX;
    }
    REDIRECT_DEVS.redirect(ifindex, 0).unwrap_or(xdp_action::XDP_ABORTED)
}
