//! IP header fields the balancer rewrites, for either family: an address
//! (IPv4 keeps its header checksum right), and the TTL / hop limit.

use balancer_common::types::FAMILY_V4;

use crate::{
    csum::{Diff, apply},
    ctx::Frame,
    ptr::{read_at, read_words, write_at, write_words},
};

/// Which address of a header a rewrite changes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// DNAT: client → VIP becomes client → backend.
    Destination,
    /// SNAT: backend → client becomes VIP → client.
    Source,
}

const V4_TTL: usize = 8;
const V4_CHECK: usize = 10;
const V4_SRC: usize = 12;
const V4_DST: usize = 16;
const V6_HOP_LIMIT: usize = 7;
const V6_SRC: usize = 8;
const V6_DST: usize = 24;

/// Words of an address: 1 for IPv4, 4 for IPv6.
#[inline(always)]
pub fn addr_words(family: u8) -> usize {
    if family == FAMILY_V4 { 1 } else { 4 }
}

/// Set one address of the IP header at `l3_off` to `new`; returns the old
/// one. An IPv4 header checksum is updated (IPv6 has none; the L4
/// checksum's pseudo-header is the caller's business).
#[inline(always)]
pub fn set_addr<C: Frame>(
    ctx: &C,
    l3_off: usize,
    family: u8,
    end: End,
    new: &[u32; 4],
) -> Result<[u32; 4], ()> {
    let off = addr_off(l3_off, family, end);
    if family == FAMILY_V4 {
        let old = read_at::<u32, C>(ctx, off).ok_or(())?;
        write_at(ctx, off, new[0])?;
        let check = read_at::<u16, C>(ctx, l3_off + V4_CHECK).ok_or(())?;
        write_at(
            ctx,
            l3_off + V4_CHECK,
            apply(check, Diff::default().u32(old, new[0])),
        )?;
        Ok([old, 0, 0, 0])
    } else {
        let old = read_words(ctx, off).ok_or(())?;
        write_words(ctx, off, new)?;
        Ok(old)
    }
}

/// Is the TTL (hop limit) too low to forward? Checked before any rewrite,
/// so the kernel gets the original packet and sends its ICMP error.
#[inline(always)]
pub fn ttl_expired<C: Frame>(ctx: &C, l3_off: usize, family: u8) -> bool {
    let off = l3_off
        + if family == FAMILY_V4 {
            V4_TTL
        } else {
            V6_HOP_LIMIT
        };
    read_at::<u8, C>(ctx, off).is_none_or(|ttl| ttl <= 1)
}

/// Count one hop.
#[inline(always)]
pub fn decrement_ttl<C: Frame>(ctx: &C, l3_off: usize, family: u8) -> Result<(), ()> {
    if family != FAMILY_V4 {
        let hop_limit = read_at::<u8, C>(ctx, l3_off + V6_HOP_LIMIT).ok_or(())?;
        return write_at(ctx, l3_off + V6_HOP_LIMIT, hop_limit.wrapping_sub(1));
    }
    // TTL is the high byte of the (ttl, protocol) word.
    let old = read_at::<u16, C>(ctx, l3_off + V4_TTL).ok_or(())?;
    let [ttl, proto] = old.to_ne_bytes();
    let new = u16::from_ne_bytes([ttl.wrapping_sub(1), proto]);
    write_at(ctx, l3_off + V4_TTL, new)?;
    let check = read_at::<u16, C>(ctx, l3_off + V4_CHECK).ok_or(())?;
    write_at(
        ctx,
        l3_off + V4_CHECK,
        apply(check, Diff::default().u16(old, new)),
    )
}

/// Offset of one address in an IP header at `l3_off`.
#[inline(always)]
pub fn addr_off(l3_off: usize, family: u8, end: End) -> usize {
    l3_off
        + match (family == FAMILY_V4, end) {
            (true, End::Destination) => V4_DST,
            (true, End::Source) => V4_SRC,
            (false, End::Destination) => V6_DST,
            (false, End::Source) => V6_SRC,
        }
}
