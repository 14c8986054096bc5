//! NAT rewrites: one address and its port, with the L4 checksum (whose
//! pseudo-header covers the address) updated incrementally.

use crate::{
    csum::Diff,
    ctx::Frame,
    ip::{End, addr_words, set_addr},
    parse::{L3_OFF, Packet, Piece},
    ptr::{read_at, write_at},
};

/// Rewrite `end` of `pkt` to `addr:port`. A later fragment has no ports
/// (and no L4 checksum): only its address changes.
#[inline(always)]
pub fn rewrite<C: Frame>(
    ctx: &C,
    pkt: &Packet,
    end: End,
    addr: &[u32; 4],
    port: u16,
) -> Result<(), ()> {
    let old_addr = set_addr(ctx, L3_OFF, pkt.key.family, end, addr)?;
    if let Piece::Later(_) = pkt.piece {
        return Ok(());
    }
    let addr_diff = Diff::default().addr(&old_addr, addr, addr_words(pkt.key.family));
    let port_diff = set_port(ctx, pkt.l4_off, end, port)?;
    ctx.l4_csum_update(pkt.l4_check_off, addr_diff, port_diff, !pkt.is_tcp())
}

/// Set the source or destination port of the TCP/UDP header at `l4_off`
/// (a packet's own, or one an ICMP error quotes); returns the change for
/// the checksum that covers it.
#[inline(always)]
pub fn set_port<C: Frame>(ctx: &C, l4_off: usize, end: End, port: u16) -> Result<Diff, ()> {
    let port_off = if end == End::Destination {
        l4_off + 2
    } else {
        l4_off
    };
    let old_port = read_at::<u16, C>(ctx, port_off).ok_or(())?;
    write_at(ctx, port_off, port)?;
    Ok(Diff::default().u16(old_port, port))
}
