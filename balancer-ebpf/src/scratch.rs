//! Per-CPU scratch space (`maps::SCRATCH`) for the large values the common
//! path builds for a helper (FIB parameters, new map entries), and the
//! stores that fill it without a call to `memset`/`memcpy`.
//!
//! The verifier bounds a call chain's stack at 512 bytes, and 6.1 counts
//! each frame rounded up to 32 bytes (the entry's empty frame as 32): the
//! common path must stay within 480. A per-CPU map value is as private as
//! the stack (a program runs to completion on its CPU) and helpers take it
//! wherever they take stack memory.

use crate::{maps::SCRATCH, values::Scratch};

/// This CPU's scratch space (always there: a one-entry per-CPU array).
#[inline(always)]
pub fn scratch() -> Option<&'static mut Scratch> {
    SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// `*dst = *src`, byte by byte with volatile stores (see [`store_words`]).
#[inline(always)]
pub fn store_bytes<const N: usize>(dst: &mut [u8; N], src: &[u8; N]) {
    for i in 0..N {
        unsafe { core::ptr::write_volatile(&mut dst[i], src[i]) };
    }
}

/// `*dst = *src`, word by word with volatile stores: the plain copy
/// compiles to a call to `memset`/`memmove`, and on 6.1 every call adds a
/// 32-byte frame to the verifier's count of the common path's stack.
#[inline(always)]
pub fn store_words(dst: &mut [u32; 4], src: &[u32; 4]) {
    for i in 0..4 {
        unsafe { core::ptr::write_volatile(&mut dst[i], src[i]) };
    }
}
