//! The one bounds check every packet access goes through.

use core::mem::size_of;

use crate::ctx::Frame;

/// A pointer to a `T` at `offset` bytes into the packet, if the whole `T`
/// is inside its linear data.
#[inline(always)]
pub fn ptr_at<T, C: Frame>(ctx: &C, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// A copy of the `T` at `offset`, if it is inside the linear data.
#[inline(always)]
pub fn read_at<T: Copy, C: Frame>(ctx: &C, offset: usize) -> Option<T> {
    ptr_at::<T, C>(ctx, offset).map(|p| unsafe { core::ptr::read_unaligned(p) })
}

/// Overwrite the `T` at `offset`; `Err` if it is not inside the linear data.
#[inline(always)]
pub fn write_at<T, C: Frame>(ctx: &C, offset: usize, value: T) -> Result<(), ()> {
    let p = ptr_at::<T, C>(ctx, offset).ok_or(())?;
    unsafe { core::ptr::write_unaligned(p, value) };
    Ok(())
}

/// The 16 bytes at `offset` as four words (an IPv6 address). Read word by
/// word: one 16-byte unaligned copy compiles to a call to `memmove`, and
/// every call adds a frame to the verifier's stack count.
#[inline(always)]
pub fn read_words<C: Frame>(ctx: &C, offset: usize) -> Option<[u32; 4]> {
    let p = ptr_at::<[u32; 4], C>(ctx, offset)? as *const u32;
    Some(unsafe { [0, 1, 2, 3].map(|i| core::ptr::read_unaligned(p.add(i))) })
}

/// Overwrite the 16 bytes at `offset` word by word (see [`read_words`]).
#[inline(always)]
pub fn write_words<C: Frame>(ctx: &C, offset: usize, words: &[u32; 4]) -> Result<(), ()> {
    let p = ptr_at::<[u32; 4], C>(ctx, offset).ok_or(())? as *mut u32;
    for (i, w) in words.iter().enumerate() {
        unsafe { core::ptr::write_unaligned(p.add(i), *w) };
    }
    Ok(())
}
