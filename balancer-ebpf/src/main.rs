//! The balancer's data plane: one XDP program, attached to the client-side
//! and the backend-side interface (the same one in a one-arm setup).
//!
//! - A packet for a VIP `addr:port/proto` picks a backend (conntrack, then
//!   the client's affinity, then the service's Maglev table), is DNATed to it
//!   and forwarded.
//! - A reply from a backend of a balanced flow is SNATed back to the VIP and
//!   forwarded to the client.
//! - Anything else passes to the kernel untouched.
#![no_std]
#![no_main]

mod csum;
mod forward;
mod maps;
mod nat;
mod parse;
mod ptr;
mod select;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use balancer_common::counters::Counter;

use crate::parse::{Parsed, parse};

#[xdp]
pub fn balancer_xdp(ctx: XdpContext) -> u32 {
    match try_balancer(&ctx) {
        Ok(action) => action,
        Err(()) => {
            stats::count(Counter::DropInternal);
            xdp_action::XDP_ABORTED
        }
    }
}

#[inline(always)]
fn try_balancer(ctx: &XdpContext) -> Result<u32, ()> {
    let pkt = match parse(ctx) {
        Parsed::Packet(pkt) => pkt,
        Parsed::Pass(reason) => return Ok(stats::pass(reason)),
    };
    if let Some(service) = maps::service_for(&pkt) {
        return select::to_backend(ctx, &pkt, service);
    }
    if let Some(reverse) = maps::reverse_nat_for(&pkt) {
        return select::to_client(ctx, &pkt, reverse);
    }
    Ok(stats::pass(Counter::PassNotOurs))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
