//! The L2 path client packets came by, learned for replies that have no
//! conntrack entry to take it from and whose client the FIB has no
//! neighbour entry for (`confirm`, `icmp`). A client on the gateway's own
//! link is such a client until the kernel itself talks to it, which it may
//! never do: its packets all cross the data plane. A reply with a VIP as
//! its source cannot be handed to the kernel to resolve it (the kernel
//! drops it as martian), so it goes to the MAC the client's packets came
//! from. (Taking this path first, before the FIB, made one Socket.IO
//! reconnect in two hang for a connect timeout in the suite's failover
//! test; not understood yet, so the FIB stays first.)
//!
//! A direct-mapped cache, by client address: an array slot per hash, no
//! hash-table insert, written by client packets with no conntrack entry
//! only when the slot holds something else. Packets with spoofed sources
//! overwrite slots, which only delays a client that has no neighbour entry
//! (its SYN is retransmitted); they cannot touch CONNTRACK or AFFINITY.
//! Two CPUs writing one slot at once can leave it mixed; the address is
//! checked on use, and a mixed MAC costs one lost packet.

use core::ptr::write_volatile;

use crate::{
    ctx::Frame,
    forward::L2Path,
    maps::{CLIENT_PATH_SLOTS, CLIENT_PATHS},
    ptr::read_at,
    scratch::store_words,
};

#[inline(always)]
fn slot(addr: &[u32; 4]) -> u32 {
    let folded = addr[0] ^ addr[1] ^ addr[2] ^ addr[3];
    (folded.wrapping_mul(0x9E37_79B1) >> 16) & (CLIENT_PATH_SLOTS - 1)
}

/// Remember the path the client packet in `ctx` from `addr` came by.
#[inline(always)]
pub fn learn<C: Frame>(ctx: &C, addr: &[u32; 4], family: u8) {
    let Some(entry) = CLIENT_PATHS.get_ptr_mut(slot(addr)) else {
        return;
    };
    let entry = unsafe { &mut *entry };
    // As words: byte arrays compare and copy by `bcmp`/`memcpy` calls.
    let Some(macs) = read_at::<[u32; 3], C>(ctx, 0) else {
        return;
    };
    let ifindex = ctx.ingress_ifindex();
    let family = u32::from(family);
    if entry.macs[0] == macs[0]
        && entry.macs[1] == macs[1]
        && entry.macs[2] == macs[2]
        && entry.ifindex == ifindex
        && entry.family == family
        && entry.addr == *addr
    {
        return;
    }
    store_words(&mut entry.addr, addr);
    unsafe {
        for i in 0..3 {
            write_volatile(&mut entry.macs[i], macs[i]);
        }
        write_volatile(&mut entry.ifindex, ifindex);
        write_volatile(&mut entry.family, family);
    }
}

/// The path packets from client `addr` last came by, if known.
#[inline(always)]
pub fn learned(addr: &[u32; 4], family: u8) -> Option<L2Path> {
    let entry = CLIENT_PATHS.get(slot(addr))?;
    if entry.ifindex == 0 || entry.family != u32::from(family) || entry.addr != *addr {
        return None;
    }
    let b: [u8; 12] = unsafe { core::mem::transmute(entry.macs) };
    Some(L2Path {
        ifindex: entry.ifindex,
        dst_mac: [b[6], b[7], b[8], b[9], b[10], b[11]],
        src_mac: [b[0], b[1], b[2], b[3], b[4], b[5]],
    })
}
