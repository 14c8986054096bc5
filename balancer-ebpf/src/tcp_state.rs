//! A flow's TCP state bits (`Flow::client_tcp_state`,
//! `Flow::backend_tcp_state`) as a packet's flags move them.

use balancer_common::types::TCP_RST;

use crate::parse::{Packet, TCP_FIN, TCP_RST as TCP_FLAG_RST};

/// Add `bits` to one direction's `TCP_*` state (see `Flow::client_tcp_state`),
/// storing only if that changes it (see `choose::existing_flow`).
#[inline(always)]
pub fn add_tcp_bits<T: Copy + PartialEq + core::ops::BitOr<Output = T>>(state: &mut T, bits: T) {
    if *state | bits != *state {
        *state = *state | bits;
    }
}

/// `TCP_*` state bits a packet's flags add, seen from `fin_bit`'s side.
#[inline(always)]
pub fn tcp_state_bits(pkt: &Packet, fin_bit: u32) -> u32 {
    let mut bits = 0;
    if pkt.tcp_flags & TCP_FIN != 0 {
        bits |= fin_bit;
    }
    if pkt.tcp_flags & TCP_FLAG_RST != 0 {
        bits |= TCP_RST;
    }
    bits
}
