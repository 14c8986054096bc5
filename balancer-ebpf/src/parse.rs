//! Header parsing: Ethernet → IPv4 (with options) or IPv6 (with extension
//! headers) → TCP, UDP or an ICMP error, into what the balancer decides on
//! and the offsets of the fields it rewrites.
//!
//! Offsets, not pointers, are kept: in TC mode a checksum helper invalidates
//! every packet pointer, so each access checks its bounds again.

use balancer_common::{
    counters::Counter,
    types::{FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, PROTO_UDP},
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::{
    ctx::Frame,
    ptr::{ptr_at, read_at},
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

/// The Ethernet header is the only L2 header the balancer forwards behind.
pub const L3_OFF: usize = EthHdr::LEN;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_ESP: u8 = 50;
const IPV6_AUTH: u8 = 51;
const IPV6_DEST_OPTS: u8 = 60;
/// Extension headers walked before the L4 header; more is passed.
const MAX_EXT_HEADERS: usize = 4;

/// IPv4 `frags` word: more-fragments flag and offset (8-byte units).
const IPV4_MF: u16 = 0x2000;
const IPV4_OFFSET: u16 = 0x1fff;
/// IPv6 fragment header word: offset (bytes, multiple of 8) and M flag.
const IPV6_OFFSET: u16 = 0xfff8;
const IPV6_MF: u16 = 0x0001;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Where a packet stands in its datagram.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// Not fragmented.
    Whole,
    /// Offset 0 of a fragmented datagram: has the L4 header. Holds the id.
    First(u32),
    /// A later fragment: no L4 header, so the key's ports are 0. Holds the id.
    Later(u32),
}

/// A TCP or UDP packet (or a later fragment of one) whose IP header is
/// inside the linear data and whose announced length is inside the packet.
pub struct Packet {
    /// Offset of the L4 header (meaningless for a later fragment).
    pub l4_off: usize,
    /// Offset of the L4 checksum field.
    pub l4_check_off: usize,
    /// The 5-tuple as it arrived (addresses and ports in network order).
    pub key: FlowKey,
    /// TCP flags byte (0 for UDP).
    pub tcp_flags: u8,
    pub piece: Piece,
    /// Packet length, for byte counters.
    pub len: u64,
}

impl Packet {
    #[inline(always)]
    pub fn is_tcp(&self) -> bool {
        self.key.proto == PROTO_TCP
    }

    /// A SYN without ACK: the client opens a connection.
    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }
}

pub enum Parsed {
    Packet(Packet),
    /// An ICMP message (not fragmented): `icmp` parses it again, off the
    /// common path, and decides whether it is ours.
    Icmp,
    /// Not something the balancer handles; the counter says why.
    Pass(Counter),
}

/// The IP layer's facts, common to both families.
pub struct Ip {
    pub family: u8,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// The L4 protocol (after IPv6 extension headers).
    pub proto: u8,
    pub l4_off: usize,
    pub piece: Piece,
    /// Where the IP packet ends by its own header (before any padding):
    /// every header the balancer rewrites must end before it.
    pub end: u64,
}

#[inline(always)]
pub fn parse<C: Frame>(ctx: &C) -> Parsed {
    let Some(eth) = ptr_at::<EthHdr, C>(ctx, 0) else {
        return Parsed::Pass(Counter::PassTruncated);
    };
    let ether_type = u16::from_be(unsafe { (*eth).ether_type });
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD || ctx.has_hidden_vlan() {
        return Parsed::Pass(Counter::PassVlan);
    }
    match parse_ip(ctx, ether_type) {
        Ok(ip) => parse_l4(ctx, ip),
        Err(counter) => Parsed::Pass(counter),
    }
}

/// The IP header after an Ethernet header of `ether_type`.
#[inline(always)]
pub fn parse_ip<C: Frame>(ctx: &C, ether_type: u16) -> Result<Ip, Counter> {
    match ether_type {
        ETH_P_IP => parse_ipv4(ctx, L3_OFF),
        ETH_P_IPV6 => parse_ipv6(ctx, L3_OFF),
        _ => Err(Counter::PassNotOurs),
    }
}

/// The IP header of a frame `parse` has already accepted.
#[inline(always)]
pub fn reparse_ip<C: Frame>(ctx: &C) -> Result<Ip, Counter> {
    let ether_type = u16::from_be(read_at::<u16, C>(ctx, 12).ok_or(Counter::PassTruncated)?);
    parse_ip(ctx, ether_type)
}

#[inline(always)]
fn parse_l4<C: Frame>(ctx: &C, ip: Ip) -> Parsed {
    let mut key = FlowKey {
        src: ip.src,
        dst: ip.dst,
        sport: 0,
        dport: 0,
        proto: ip.proto,
        family: ip.family,
        _pad: [0; 2],
    };
    let len = ctx.len();
    if ip.proto == icmp_proto(ip.family) {
        if ip.piece != Piece::Whole {
            return Parsed::Pass(Counter::PassNotOurs);
        }
        return Parsed::Icmp;
    }
    if ip.proto != PROTO_TCP && ip.proto != PROTO_UDP {
        return Parsed::Pass(Counter::PassNotOurs);
    }
    if let Piece::Later(_) = ip.piece {
        return Parsed::Packet(Packet {
            l4_off: 0,
            l4_check_off: 0,
            key,
            tcp_flags: 0,
            piece: ip.piece,
            len,
        });
    }
    let l4_off = ip.l4_off;
    let header_len = if ip.proto == PROTO_TCP {
        TcpHdr::LEN
    } else {
        UdpHdr::LEN
    };
    if (l4_off + header_len) as u64 > ip.end {
        return Parsed::Pass(Counter::PassTruncated);
    }
    // Flags and ports are read through the pointer that was bounds-checked:
    // a pointer derived again from the offset would carry no checked range
    // for the verifier.
    let (l4, l4_check_off, tcp_flags) = if ip.proto == PROTO_TCP {
        let Some(tcp) = ptr_at::<TcpHdr, C>(ctx, l4_off) else {
            return Parsed::Pass(Counter::PassTruncated);
        };
        // Byte 13 of the TCP header holds the flags.
        (tcp as *const u8, l4_off + 16, unsafe {
            *(tcp as *const u8).add(13)
        })
    } else {
        let Some(udp) = ptr_at::<UdpHdr, C>(ctx, l4_off) else {
            return Parsed::Pass(Counter::PassTruncated);
        };
        (udp as *const u8, l4_off + 6, 0)
    };
    // Both ports are the first four bytes of either L4 header.
    let ports = unsafe { core::ptr::read_unaligned(l4 as *const [u16; 2]) };
    key.sport = ports[0];
    key.dport = ports[1];
    Parsed::Packet(Packet {
        l4_off,
        l4_check_off,
        key,
        tcp_flags,
        piece: ip.piece,
        len,
    })
}

/// The IPv4 header at `l3_off`, options skipped.
#[inline(always)]
pub fn parse_ipv4<C: Frame>(ctx: &C, l3_off: usize) -> Result<Ip, Counter> {
    let ip = ptr_at::<Ipv4Hdr, C>(ctx, l3_off).ok_or(Counter::PassTruncated)?;
    let iph = unsafe { &*ip };
    let header_len = usize::from(iph.vihl & 0x0f) * 4;
    // Bad version or IHL: the kernel drops it; we leave it to the kernel.
    if iph.vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN {
        return Err(Counter::PassTruncated);
    }
    // The packet must hold the whole datagram the header announces (it may
    // be longer: Ethernet padding). Compared as lengths, never added to a
    // packet pointer: the 6.1 and 6.12 verifiers forget a byte swap's range.
    let total_len = u64::from(u16::from_be_bytes(iph.tot_len));
    if total_len < header_len as u64 || l3_off as u64 + total_len > ctx.len() {
        return Err(Counter::PassTruncated);
    }
    let frags = u16::from_be_bytes(iph.frags);
    let id = u32::from(u16::from_ne_bytes(iph.id));
    let piece = if frags & IPV4_OFFSET != 0 {
        Piece::Later(id)
    } else if frags & IPV4_MF != 0 {
        Piece::First(id)
    } else {
        Piece::Whole
    };
    Ok(Ip {
        family: FAMILY_V4,
        src: [u32::from_ne_bytes(iph.src_addr), 0, 0, 0],
        dst: [u32::from_ne_bytes(iph.dst_addr), 0, 0, 0],
        proto: iph.proto,
        l4_off: l3_off + header_len,
        piece,
        end: l3_off as u64 + total_len,
    })
}

/// The IPv6 header at `l3_off`, hop-by-hop, destination-options, routing
/// (when no segments are left) and fragment headers walked.
#[inline(always)]
pub fn parse_ipv6<C: Frame>(ctx: &C, l3_off: usize) -> Result<Ip, Counter> {
    let ip = ptr_at::<Ipv6Hdr, C>(ctx, l3_off).ok_or(Counter::PassTruncated)?;
    let iph = unsafe { &*ip };
    if iph.vcf[0] >> 4 != 6 {
        return Err(Counter::PassTruncated);
    }
    let payload_len = u64::from(u16::from_be_bytes(iph.payload_len));
    // Payload length 0 is a jumbogram (or BIG TCP): not balanced.
    if payload_len == 0 || (l3_off + Ipv6Hdr::LEN) as u64 + payload_len > ctx.len() {
        return Err(Counter::PassTruncated);
    }
    let src = words(&iph.src_addr);
    let dst = words(&iph.dst_addr);
    let mut next = iph.next_hdr;
    let mut off = l3_off + Ipv6Hdr::LEN;
    let mut piece = Piece::Whole;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            IPV6_HOP_BY_HOP | IPV6_DEST_OPTS | IPV6_ROUTING => {
                // next header, length in 8-byte units beyond the first 8,
                // and for routing: type, segments left.
                let h = read_at::<[u8; 4], C>(ctx, off).ok_or(Counter::PassTruncated)?;
                if next == IPV6_ROUTING && h[3] != 0 {
                    // The destination is not the final one.
                    return Err(Counter::PassExtHeader);
                }
                next = h[0];
                off += (usize::from(h[1]) + 1) * 8;
            }
            IPV6_FRAGMENT => {
                let h = read_at::<[u8; 8], C>(ctx, off).ok_or(Counter::PassTruncated)?;
                let word = u16::from_be_bytes([h[2], h[3]]);
                let id = u32::from_ne_bytes([h[4], h[5], h[6], h[7]]);
                piece = if word & IPV6_OFFSET != 0 {
                    Piece::Later(id)
                } else if word & IPV6_MF != 0 {
                    Piece::First(id)
                } else {
                    // An atomic fragment (RFC 6946): one piece.
                    Piece::Whole
                };
                next = h[0];
                off += 8;
                // A later fragment's data follows: no more headers to walk.
                if word & IPV6_OFFSET != 0 {
                    break;
                }
            }
            _ => break,
        }
    }
    match next {
        PROTO_TCP | PROTO_UDP | PROTO_ICMPV6 => {}
        IPV6_HOP_BY_HOP | IPV6_DEST_OPTS | IPV6_ROUTING | IPV6_FRAGMENT | IPV6_ESP | IPV6_AUTH => {
            return Err(Counter::PassExtHeader);
        }
        _ => return Err(Counter::PassNotOurs),
    }
    let end = (l3_off + Ipv6Hdr::LEN) as u64 + payload_len;
    if off as u64 > end {
        return Err(Counter::PassTruncated);
    }
    Ok(Ip {
        family: FAMILY_V6,
        src,
        dst,
        proto: next,
        l4_off: off,
        piece,
        end,
    })
}

/// The ICMP protocol number of `family` (ICMP only counts under its own
/// family's number).
#[inline(always)]
pub fn icmp_proto(family: u8) -> u8 {
    if family == FAMILY_V4 {
        PROTO_ICMP
    } else {
        PROTO_ICMPV6
    }
}

/// An address's bytes as the four native words keys hold.
#[inline(always)]
pub fn words(bytes: &[u8; 16]) -> [u32; 4] {
    let w = |i: usize| u32::from_ne_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}
