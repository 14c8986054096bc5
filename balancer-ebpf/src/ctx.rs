//! What the balancer needs from its hook, so one body of logic runs as an
//! XDP program and as a TC (cls_bpf, direct-action) classifier.
//!
//! The two differ in four places only: how long the packet is (XDP: the
//! frame; TC: the skb, whose data may not all be linear), how a verdict is
//! spelled, how a packet is sent out another interface (devmap vs
//! `bpf_redirect`), and how an L4 checksum is updated (in place vs
//! `bpf_l4_csum_replace`, which also handles the skb's partial-checksum
//! state; see [`Frame::l4_csum_update`]).

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{
        BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, xdp_action,
    },
    helpers::generated::{bpf_l4_csum_replace, bpf_redirect, bpf_skb_pull_data},
    programs::{TcContext, XdpContext},
};
use balancer_common::counters::Counter;

use crate::{
    action::Action,
    csum::{Diff, apply, fold},
    maps::REDIRECT_DEVS,
    stats,
};

pub trait Frame {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// The whole packet's length (for TC including non-linear data).
    fn len(&self) -> u64;
    fn ingress_ifindex(&self) -> u32;
    /// The context pointer helpers such as `bpf_fib_lookup` take.
    fn raw(&self) -> *mut c_void;
    /// Is there VLAN state the data does not show (TC: an accelerated tag)?
    fn has_hidden_vlan(&self) -> bool;
    /// Update the L4 checksum at `offset` for changes to pseudo-header
    /// fields (`pseudo`: addresses) and to the segment's own bytes
    /// (`data`: ports, quoted headers). `udp`: a 0 checksum means "none"
    /// and stays 0; a computed 0 is sent as 0xffff.
    fn l4_csum_update(&self, offset: usize, pseudo: Diff, data: Diff, udp: bool) -> Result<(), ()>;
    fn verdict(&self, action: Action) -> u32;
}

impl Frame for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
    #[inline(always)]
    fn len(&self) -> u64 {
        (XdpContext::data_end(self) - XdpContext::data(self)) as u64
    }
    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        XdpContext::ingress_ifindex(self) as u32
    }
    #[inline(always)]
    fn raw(&self) -> *mut c_void {
        self.ctx.cast()
    }
    #[inline(always)]
    fn has_hidden_vlan(&self) -> bool {
        false
    }
    /// An XDP frame's checksums are always complete: update in place.
    #[inline(always)]
    fn l4_csum_update(&self, offset: usize, pseudo: Diff, data: Diff, udp: bool) -> Result<(), ()> {
        let start = XdpContext::data(self);
        if start + offset + 2 > XdpContext::data_end(self) {
            return Err(());
        }
        let field = (start + offset) as *mut u16;
        let check = unsafe { core::ptr::read_unaligned(field) };
        if udp && check == 0 {
            return Ok(());
        }
        let mut check = apply(check, Diff(pseudo.0 + data.0));
        if udp && check == 0 {
            check = 0xffff;
        }
        unsafe { core::ptr::write_unaligned(field, check) };
        Ok(())
    }
    #[inline(always)]
    fn verdict(&self, action: Action) -> u32 {
        match action {
            Action::Pass => xdp_action::XDP_PASS,
            Action::Drop => xdp_action::XDP_DROP,
            Action::Aborted => xdp_action::XDP_ABORTED,
            Action::Tx => xdp_action::XDP_TX,
            // Flags 0: on a failure (no such device in the map) the helper
            // answers XDP_ABORTED.
            Action::Redirect(ifindex) => REDIRECT_DEVS.redirect(ifindex, 0).unwrap_or_else(|rc| {
                stats::count(Counter::DropRedirectFailed);
                rc
            }),
        }
    }
}

/// Headers the TC program reads directly: Ethernet, a VLAN tag's worth of
/// slack, IPv6 with extension headers, ICMPv6 and the quoted IPv6 + L4
/// header. Pulled into the linear area when they are not there yet.
const TC_HEADER_BYTES: u32 = 256;

/// Make the first bytes of an skb linear (and writable) so direct packet
/// access sees them. Nothing is pulled when they already are.
#[inline(always)]
pub fn tc_pull_headers(ctx: &TcContext) {
    let want = if ctx.len() < TC_HEADER_BYTES {
        ctx.len()
    } else {
        TC_HEADER_BYTES
    };
    if ctx.data() + want as usize > ctx.data_end() {
        unsafe { bpf_skb_pull_data(ctx.skb.skb, want) };
    }
}

impl Frame for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
    #[inline(always)]
    fn len(&self) -> u64 {
        u64::from(TcContext::len(self))
    }
    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        unsafe { (*self.skb.skb).ifindex }
    }
    #[inline(always)]
    fn raw(&self) -> *mut c_void {
        self.skb.skb.cast()
    }
    #[inline(always)]
    fn has_hidden_vlan(&self) -> bool {
        unsafe { (*self.skb.skb).vlan_present != 0 }
    }
    /// The skb may carry a partial checksum (a local sender's offload, or a
    /// GRO packet): only the helper knows, and updates it the right way.
    #[inline(always)]
    fn l4_csum_update(&self, offset: usize, pseudo: Diff, data: Diff, udp: bool) -> Result<(), ()> {
        // Flags: the change is in the pseudo-header; a UDP checksum of 0
        // ("none") stays 0 and a computed 0 is sent as 0xffff.
        let mangled = if udp {
            u64::from(BPF_F_MARK_MANGLED_0)
        } else {
            0
        };
        let skb = self.skb.skb;
        // Size 0 in the flags: `to` is a checksum difference, `from` 0.
        let rc = unsafe {
            bpf_l4_csum_replace(
                skb,
                offset as u32,
                0,
                u64::from(fold(pseudo.0)),
                u64::from(BPF_F_PSEUDO_HDR) | mangled,
            )
        };
        if rc != 0 {
            return Err(());
        }
        let rc =
            unsafe { bpf_l4_csum_replace(skb, offset as u32, 0, u64::from(fold(data.0)), mangled) };
        if rc == 0 { Ok(()) } else { Err(()) }
    }
    #[inline(always)]
    fn verdict(&self, action: Action) -> u32 {
        match action {
            Action::Pass => TC_ACT_OK as u32,
            Action::Drop | Action::Aborted => TC_ACT_SHOT as u32,
            Action::Tx => tc_redirect(Frame::ingress_ifindex(self)),
            Action::Redirect(ifindex) => tc_redirect(ifindex),
        }
    }
}

/// Out of the egress of interface `ifindex`. `bpf_redirect` answers
/// TC_ACT_REDIRECT, or TC_ACT_SHOT on a failure (a bad flag): a drop,
/// counted.
#[inline(always)]
fn tc_redirect(ifindex: u32) -> u32 {
    let rc = unsafe { bpf_redirect(ifindex, 0) } as u32;
    if rc != TC_ACT_REDIRECT as u32 {
        stats::count(Counter::DropRedirectFailed);
    }
    rc
}
