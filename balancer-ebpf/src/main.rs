//! The balancer's data plane: one body of logic, built as an XDP program
//! and as a TC (cls_bpf, direct-action) classifier (`mode = "tc"`),
//! attached to the client-side and the backend-side interface (the same
//! one in a one-arm setup).
//!
//! - A packet for a VIP `addr:port/proto` picks a backend (conntrack, then
//!   the client's affinity, then the service's Maglev table), is DNATed to it
//!   and forwarded.
//! - A reply from a backend of a balanced flow is SNATed back to the VIP and
//!   forwarded to the client. A flow's state is stored when its backend
//!   confirms it (`confirm`); until then, and whenever its entry is gone,
//!   its packets go by config and read-only choices.
//! - ICMP errors about a balanced flow and later fragments of a balanced
//!   datagram follow their flow (`icmp`, `fragment`).
//! - Anything else passes to the kernel untouched.
#![no_std]
#![no_main]

mod action;
mod choose;
mod client_path;
mod clock;
mod confirm;
mod csum;
mod ctx;
mod forward;
mod fragment;
mod icmp;
mod ip;
mod lookup;
mod maps;
mod nat;
mod parse;
mod paths;
mod ptr;
mod report;
mod scratch;
mod stats;
mod tcp_state;
mod values;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use balancer_common::{counters::Counter, types::SERVICE_TO_STACK};

use crate::{
    action::Action,
    ctx::{Frame, tc_pull_headers},
    lookup::Reply,
    parse::{Packet, Parsed, Piece, reparse_ip},
};

#[xdp]
pub fn balancer_xdp(ctx: XdpContext) -> u32 {
    run(&ctx)
}

#[classifier]
pub fn balancer_tc(ctx: TcContext) -> i32 {
    tc_pull_headers(&ctx);
    run(&ctx) as i32
}

/// Where [`common_path`] leaves a packet. A typed answer rather than
/// reserved verdict values: every `u32` is some hook's verdict
/// (`u32::MAX` is TC_ACT_UNSPEC).
enum Next {
    /// Done: the hook's return value.
    Verdict(u32),
    /// An ICMP message: [`icmp_path`].
    Icmp,
    /// A later fragment: [`fragment_path`].
    Fragment,
    /// A backend's reply whose flow has no entry: [`reply_path`].
    ReplyWithoutFlow,
}

/// Each path is a function of its own (BPF-to-BPF calls) and this entry
/// keeps almost no stack: the verifier adds up the stack of a call chain,
/// and the common path alone uses most of the 512 bytes. The entry's only
/// stack is the 8-byte [`Next`], which `common_path` returns through
/// memory; within the 32 bytes 6.1 counts for any frame (see `scratch`).
/// The rare paths parse again rather than take the common path's state
/// across.
#[inline(always)]
fn run<C: Frame>(ctx: &C) -> u32 {
    match common_path(ctx) {
        Next::Verdict(verdict) => verdict,
        Next::Icmp => icmp_path(ctx),
        Next::Fragment => fragment_path(ctx),
        Next::ReplyWithoutFlow => reply_path(ctx),
    }
}

#[inline(never)]
fn common_path<C: Frame>(ctx: &C) -> Next {
    let pkt = match parse::parse(ctx) {
        Parsed::Packet(pkt) => pkt,
        Parsed::Icmp => return Next::Icmp,
        Parsed::Pass(reason) => return Next::Verdict(ctx.verdict(stats::pass(reason))),
    };
    if let Piece::Later(_) = pkt.piece {
        return Next::Fragment;
    }
    balance(ctx, &pkt)
}

#[inline(never)]
fn icmp_path<C: Frame>(ctx: &C) -> u32 {
    let action = match reparse_ip(ctx).and_then(|ip| icmp::parse_error(ctx, &ip)) {
        Ok(error) => icmp::handle(ctx, &error),
        Err(reason) => Ok(stats::pass(reason)),
    };
    verdict(ctx, action)
}

/// Once or twice a connection (its SYN-ACK, its confirmation), or for
/// every reply of a flow whose entry is gone.
#[inline(never)]
fn reply_path<C: Frame>(ctx: &C) -> u32 {
    match parse::parse(ctx) {
        Parsed::Packet(pkt) => verdict(ctx, confirm::reply(ctx, &pkt)),
        _ => verdict(ctx, Err(())),
    }
}

#[inline(never)]
fn fragment_path<C: Frame>(ctx: &C) -> u32 {
    match parse::parse(ctx) {
        Parsed::Packet(pkt) => match pkt.piece {
            Piece::Later(id) => verdict(ctx, fragment::forward_later(ctx, &pkt, id)),
            _ => verdict(ctx, Err(())),
        },
        _ => verdict(ctx, Err(())),
    }
}

/// `Err`: a header the parser had checked was out of bounds when rewritten.
#[inline(always)]
fn verdict<C: Frame>(ctx: &C, action: Result<Action, ()>) -> u32 {
    match action {
        Ok(action) => ctx.verdict(action),
        Err(()) => {
            stats::count(Counter::DropInternal);
            ctx.verdict(Action::Aborted)
        }
    }
}

#[inline(always)]
fn balance<C: Frame>(ctx: &C, pkt: &Packet) -> Next {
    if let Some(service) = lookup::service_for(&pkt.key) {
        if service.flags & SERVICE_TO_STACK != 0 {
            return Next::Verdict(ctx.verdict(stats::pass(Counter::PassToStack)));
        }
        return Next::Verdict(verdict(ctx, paths::to_backend(ctx, pkt, service)));
    }
    match lookup::reply_flow(&pkt.key) {
        Reply::Flow(flow, vip) if !paths::reopened(pkt, flow, vip) => {
            Next::Verdict(verdict(ctx, paths::to_client(ctx, pkt, flow, vip)))
        }
        Reply::Flow(..) | Reply::NoFlow => Next::ReplyWithoutFlow,
        Reply::OtherBackend(flow, vip) if paths::reopened(pkt, flow, vip) => Next::ReplyWithoutFlow,
        Reply::NotOurs if lookup::to_backend_port(&pkt.key) => {
            // A host's packet straight to a backend port: remembered so its
            // replies are not taken for a VIP flow's.
            confirm::remember_direct(&pkt.key);
            Next::Verdict(ctx.verdict(stats::pass(Counter::PassNotOurs)))
        }
        Reply::OtherBackend(..) | Reply::NotOurs => {
            Next::Verdict(ctx.verdict(stats::pass(Counter::PassNotOurs)))
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
