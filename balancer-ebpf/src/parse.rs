//! Header parsing: Ethernet → IPv4 → TCP/UDP, into a [`Packet`] that holds
//! what the balancer decides on and where the fields it rewrites sit.

use aya_ebpf::programs::XdpContext;
use balancer_common::{
    counters::Counter,
    types::{FAMILY_V4, FlowKey, PROTO_TCP, PROTO_UDP},
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};

use crate::ptr::{frame_len, ptr_at};

const ETH_P_IP: u16 = 0x0800;
/// More-fragments flag and fragment offset, in network byte order.
const IP_MF_AND_OFFSET: u16 = 0x3fff;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// A TCP or UDP packet over IPv4 whose headers are all inside the frame.
pub struct Packet {
    pub ip: *mut Ipv4Hdr,
    /// Offset of the L4 header.
    pub l4_off: usize,
    /// Offset of the L4 checksum field.
    pub l4_check_off: usize,
    /// The 5-tuple as it arrived (addresses and ports in network order).
    pub key: FlowKey,
    /// TCP flags byte (0 for UDP).
    pub tcp_flags: u8,
    /// Frame length, for byte counters.
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
    /// Not something the balancer handles; the counter says why.
    Pass(Counter),
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Parsed {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Parsed::Pass(Counter::PassTruncated);
    };
    if u16::from_be(unsafe { (*eth).ether_type }) != ETH_P_IP {
        return Parsed::Pass(Counter::PassNotOurs);
    }
    parse_ipv4(ctx, EthHdr::LEN)
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l3_off: usize) -> Parsed {
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, l3_off) else {
        return Parsed::Pass(Counter::PassTruncated);
    };
    let iph = unsafe { &*ip };
    let header_len = usize::from(iph.vihl & 0x0f) * 4;
    // Bad version or IHL: the kernel drops it; we leave it to the kernel.
    if iph.vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN {
        return Parsed::Pass(Counter::PassTruncated);
    }
    // The frame must hold the whole datagram the header announces (a frame
    // may be longer: Ethernet padding).
    let total_len = usize::from(u16::from_be_bytes(iph.tot_len));
    // The 6.1 and 6.12 verifiers forget the range of a byte swap's result
    // and refuse to add it to a packet pointer ("math between pkt pointer and
    // register with unbounded min value"); a constant bound restores it. No
    // XDP frame's linear part holds 16 KiB.
    if total_len < header_len || total_len > 0x3fff || ctx.data() + l3_off + total_len > ctx.data_end() {
        return Parsed::Pass(Counter::PassTruncated);
    }
    let proto = iph.proto;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Parsed::Pass(Counter::PassNotOurs);
    }
    // A fragment carries no (or not only) the L4 header we balance on.
    if u16::from_be_bytes(iph.frags) & IP_MF_AND_OFFSET != 0 {
        return Parsed::Pass(Counter::PassFragment);
    }
    let l4_off = l3_off + header_len;
    let (l4_check_off, tcp_flags) = if proto == PROTO_TCP {
        let Some(tcp) = ptr_at::<TcpHdr>(ctx, l4_off) else {
            return Parsed::Pass(Counter::PassTruncated);
        };
        // Byte 13 of the TCP header holds the flags.
        let flags = unsafe { *(tcp as *const u8).add(13) };
        (l4_off + 16, flags)
    } else {
        if ptr_at::<UdpHdr>(ctx, l4_off).is_none() {
            return Parsed::Pass(Counter::PassTruncated);
        }
        (l4_off + 6, 0)
    };
    // Both ports are the first four bytes of either L4 header.
    let Some(ports) = ptr_at::<[u16; 2]>(ctx, l4_off) else {
        return Parsed::Pass(Counter::PassTruncated);
    };
    let ports = unsafe { core::ptr::read_unaligned(ports) };
    let key = FlowKey {
        src: [u32::from_ne_bytes(iph.src_addr), 0, 0, 0],
        dst: [u32::from_ne_bytes(iph.dst_addr), 0, 0, 0],
        sport: ports[0],
        dport: ports[1],
        proto,
        family: FAMILY_V4,
        _pad: [0; 2],
    };
    Parsed::Packet(Packet { ip, l4_off, l4_check_off, key, tcp_flags, len: frame_len(ctx) })
}
