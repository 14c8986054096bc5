//! The one bounds check every packet access goes through.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;

/// A pointer to a `T` at `offset` bytes into the frame, if the whole `T` is
/// inside it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// The frame's length in bytes.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> u64 {
    (ctx.data_end() - ctx.data()) as u64
}
