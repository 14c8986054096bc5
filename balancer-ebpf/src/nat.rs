//! NAT rewrites of an IPv4 packet: address and port, with the IP header
//! checksum and the L4 checksum (whose pseudo-header covers the address)
//! updated incrementally.

use core::ptr::{read_unaligned, write_unaligned};

use aya_ebpf::programs::XdpContext;

use crate::{
    csum::{replace16, replace32},
    parse::Packet,
    ptr::ptr_at,
};

/// Which end of the packet a rewrite changes.
pub enum End {
    /// DNAT: client → VIP becomes client → backend.
    Destination,
    /// SNAT: backend → client becomes VIP → client.
    Source,
}

#[inline(always)]
pub fn rewrite(ctx: &XdpContext, pkt: &Packet, end: End, addr: u32, port: u16) -> Result<(), ()> {
    let ip = unsafe { &mut *pkt.ip };
    let (addr_field, port_off) = match end {
        End::Destination => (&mut ip.dst_addr, pkt.l4_off + 2),
        End::Source => (&mut ip.src_addr, pkt.l4_off),
    };
    let old_addr = u32::from_ne_bytes(*addr_field);
    *addr_field = addr.to_ne_bytes();
    ip.check = replace32(u16::from_ne_bytes(ip.check), old_addr, addr).to_ne_bytes();

    let port_ptr = ptr_at::<u16>(ctx, port_off).ok_or(())?;
    let old_port = unsafe { read_unaligned(port_ptr) };
    unsafe { write_unaligned(port_ptr, port) };

    let check_ptr = ptr_at::<u16>(ctx, pkt.l4_check_off).ok_or(())?;
    let check = unsafe { read_unaligned(check_ptr) };
    // A UDP checksum of 0 means "none": leave it so.
    if !pkt.is_tcp() && check == 0 {
        return Ok(());
    }
    let mut check = replace16(replace32(check, old_addr, addr), old_port, port);
    // UDP sends a computed 0 as all ones (RFC 768).
    if !pkt.is_tcp() && check == 0 {
        check = 0xffff;
    }
    unsafe { write_unaligned(check_ptr, check) };
    Ok(())
}
