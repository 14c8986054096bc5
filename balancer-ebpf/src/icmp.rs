//! ICMP errors that belong to a balanced flow.
//!
//! An error quotes the packet that caused it. When that packet is one of
//! ours the error must reach the other end of the flow, rewritten to match
//! what that end sent, or path MTU discovery (and every other error) breaks:
//!
//! - quoted VIP → client (a reply on its way out; for example a router on
//!   the client's path says "fragmentation needed"): the error is addressed
//!   to the VIP; it goes to the flow's backend, with the quoted source
//!   rewritten to the backend's address and port;
//! - quoted client → backend (a request after DNAT; for example a router
//!   on the backend's path, or the backend itself, answers): the error is
//!   addressed to the client; the quoted destination becomes the VIP again,
//!   and an error the backend sent itself comes from the VIP.
//!
//! Both are found from the quoted 5-tuple reversed: it is the client's
//! CONNTRACK key in the first case, and a backend's reply in the second
//! (found as replies are, `lookup::reply_flow`, and without an entry as
//! `confirm` places such replies: from the client's backend). An error
//! about a client's packet to a VIP needs the flow's entry: without one it
//! passes untouched, as does any other ICMP (echo to a VIP, errors about
//! other traffic).

use balancer_common::{
    counters::Counter,
    types::{FAMILY_V4, FlowKey, PROTO_TCP, PROTO_UDP},
};
use network_types::ip::Ipv6Hdr;

use crate::{
    action::Action,
    client_path::learned,
    clock::now_ns,
    confirm::{chosen, is_direct},
    csum::Diff,
    ctx::Frame,
    forward::{L2Path, forward, to_this_host},
    ip::{End, addr_words, set_addr, ttl_expired},
    lookup::{Reply, reply_flow},
    maps::{BACKENDS, CONNTRACK},
    nat::set_port,
    parse::{Ip, L3_OFF, icmp_proto, words},
    ptr::read_at,
    stats::{self, Direction},
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
const ICMPV6_TIME_EXCEEDED: u8 = 3;
const ICMPV6_PARAMETER_PROBLEM: u8 = 4;
/// The ICMP header before the quoted packet (type, code, checksum, 4 more).
const ICMP_HEADER_LEN: usize = 8;

/// An ICMP error quoting a TCP or UDP packet of the same family.
pub struct IcmpError {
    pub family: u8,
    pub outer_src: [u32; 4],
    pub outer_dst: [u32; 4],
    pub icmp_off: usize,
    pub inner_l3_off: usize,
    pub inner_l4_off: usize,
    /// The quoted packet's 5-tuple.
    pub inner: FlowKey,
    pub len: u64,
}

#[inline(always)]
fn is_error(family: u8, icmp_type: u8) -> bool {
    if family == FAMILY_V4 {
        matches!(
            icmp_type,
            ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM
        )
    } else {
        matches!(
            icmp_type,
            ICMPV6_DEST_UNREACH
                | ICMPV6_PACKET_TOO_BIG
                | ICMPV6_TIME_EXCEEDED
                | ICMPV6_PARAMETER_PROBLEM
        )
    }
}

#[inline(always)]
pub fn parse_error<C: Frame>(ctx: &C, ip: &Ip) -> Result<IcmpError, Counter> {
    // Type, code and checksum: read as one (a 1-byte read at a variable
    // offset can compile to a bounds check the verifier takes no range from).
    let [icmp_type, ..] = read_at::<[u8; 4], C>(ctx, ip.l4_off).ok_or(Counter::PassTruncated)?;
    if !is_error(ip.family, icmp_type) {
        return Err(Counter::PassNotOurs);
    }
    let inner_l3_off = ip.l4_off + ICMP_HEADER_LEN;
    // The quoted header is cut short by design: read its fields, check no
    // lengths. Only TCP and UDP right after the IP header are ours.
    let (proto, src, dst, inner_l4_off) = if ip.family == FAMILY_V4 {
        let h = read_at::<[u8; 20], C>(ctx, inner_l3_off).ok_or(Counter::PassTruncated)?;
        let header_len = usize::from(h[0] & 0x0f) * 4;
        if h[0] >> 4 != 4 || header_len < 20 {
            return Err(Counter::PassNotOurs);
        }
        let word = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        (
            h[9],
            [word(12), 0, 0, 0],
            [word(16), 0, 0, 0],
            inner_l3_off + header_len,
        )
    } else {
        let h = read_at::<Ipv6Hdr, C>(ctx, inner_l3_off).ok_or(Counter::PassTruncated)?;
        if h.vcf[0] >> 4 != 6 {
            return Err(Counter::PassNotOurs);
        }
        (
            h.next_hdr,
            words(&h.src_addr),
            words(&h.dst_addr),
            inner_l3_off + Ipv6Hdr::LEN,
        )
    };
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Err(Counter::PassNotOurs);
    }
    // The quoted ports must be inside the ICMP packet, not past its end.
    if inner_l4_off as u64 + 4 > ip.end {
        return Err(Counter::PassTruncated);
    }
    let ports = read_at::<[u16; 2], C>(ctx, inner_l4_off).ok_or(Counter::PassTruncated)?;
    Ok(IcmpError {
        family: ip.family,
        outer_src: ip.src,
        outer_dst: ip.dst,
        icmp_off: ip.l4_off,
        inner_l3_off,
        inner_l4_off,
        inner: FlowKey {
            src,
            dst,
            sport: ports[0],
            dport: ports[1],
            proto,
            family: ip.family,
            _pad: [0; 2],
        },
        len: ctx.len(),
    })
}

#[inline(always)]
pub fn handle<C: Frame>(ctx: &C, err: &IcmpError) -> Result<Action, ()> {
    // Either way the error goes back to the quoted packet's source.
    if err.outer_dst != err.inner.src {
        return Ok(stats::pass(Counter::PassNotOurs));
    }
    let reversed = FlowKey {
        src: err.inner.dst,
        dst: err.inner.src,
        sport: err.inner.dport,
        dport: err.inner.sport,
        proto: err.inner.proto,
        family: err.family,
        _pad: [0; 2],
    };
    if ttl_expired(ctx, L3_OFF, err.family) {
        return Ok(stats::pass(Counter::PassTtlExpired));
    }
    if let Some(flow) = unsafe { CONNTRACK.get(&reversed) } {
        let backend_id = flow.backend_id;
        let Some(backend) = BACKENDS.get(backend_id).filter(|b| b.in_use()) else {
            return Ok(stats::pass(Counter::PassNotOurs));
        };
        let (addr, port) = (backend.addr, backend.port);
        stats::backend_packet(backend_id, err.len, Direction::ToBackend, false);
        let outer = set_addr(ctx, L3_OFF, err.family, End::Destination, &addr)?;
        let quoted = rewrite_quoted(ctx, err, End::Source, &addr, port)?;
        update_icmp_checksum(
            ctx,
            err,
            Diff::default().addr(&outer, &addr, addr_words(err.family)),
            quoted,
        )?;
        stats::count(Counter::ForwardIcmp);
        return Ok(forward(ctx, err.family, icmp_proto(err.family), None));
    }
    // About a packet on its way to a backend: back to its client from the
    // VIP. With no entry (a flow its backend has not confirmed, such as a
    // datagram to a port nothing listens on) it is placed as that flow's
    // replies are, and stores nothing either; an error about a flow its
    // client opened straight to the backend stays that flow's.
    let (vip, backend_id, path) = match reply_flow(&reversed) {
        Reply::Flow(flow, vip) => {
            let flow = unsafe { &*flow };
            (vip, flow.backend_id, Some(L2Path::to_client(flow)))
        }
        Reply::NoFlow if is_direct(&reversed) => return Ok(stats::pass(Counter::PassNotOurs)),
        Reply::NoFlow => match chosen(&reversed, now_ns()) {
            Ok((vip, _, backend_id))
                if BACKENDS
                    .get(backend_id)
                    .is_some_and(|b| b.addr == reversed.src && b.port == reversed.sport)
                    && !to_this_host(ctx, err.family, &reversed.dst) =>
            {
                (vip, backend_id, learned(&reversed.dst, err.family))
            }
            _ => return Ok(stats::pass(Counter::PassNotOurs)),
        },
        _ => return Ok(stats::pass(Counter::PassNotOurs)),
    };
    let (vip, vip_port) = (vip.addr, vip.port);
    stats::backend_packet(backend_id, err.len, Direction::ToClient, false);
    let quoted = rewrite_quoted(ctx, err, End::Destination, &vip, vip_port)?;
    // An error from the backend itself comes from the VIP: the client
    // never learns the backend's address.
    let mut pseudo = Diff::default();
    if err.outer_src == err.inner.dst {
        let outer = set_addr(ctx, L3_OFF, err.family, End::Source, &vip)?;
        pseudo = Diff::default().addr(&outer, &vip, addr_words(err.family));
    }
    update_icmp_checksum(ctx, err, pseudo, quoted)?;
    stats::count(Counter::ForwardIcmp);
    Ok(forward(
        ctx,
        err.family,
        icmp_proto(err.family),
        path.as_ref(),
    ))
}

/// Rewrite one end of the quoted packet; returns the change to the ICMP
/// checksum's own bytes. A quoted IPv4 header keeps its checksum right,
/// and so adds nothing to the ICMP checksum (address and header checksum
/// change by opposite amounts); a quoted IPv6 address does. The quoted L4
/// checksum is left alone: it covers data the error does not carry, and
/// receivers do not check it.
#[inline(always)]
fn rewrite_quoted<C: Frame>(
    ctx: &C,
    err: &IcmpError,
    end: End,
    addr: &[u32; 4],
    port: u16,
) -> Result<Diff, ()> {
    let old_addr = set_addr(ctx, err.inner_l3_off, err.family, end, addr)?;
    let mut diff = set_port(ctx, err.inner_l4_off, end, port)?;
    if err.family != FAMILY_V4 {
        diff = Diff(diff.0 + Diff::default().addr(&old_addr, addr, 4).0);
    }
    Ok(diff)
}

/// ICMPv4's checksum covers the message only; ICMPv6's also a
/// pseudo-header with the outer addresses.
#[inline(always)]
fn update_icmp_checksum<C: Frame>(
    ctx: &C,
    err: &IcmpError,
    outer: Diff,
    quoted: Diff,
) -> Result<(), ()> {
    let pseudo = if err.family == FAMILY_V4 {
        Diff::default()
    } else {
        outer
    };
    ctx.l4_csum_update(err.icmp_off + 2, pseudo, quoted, false)
}
