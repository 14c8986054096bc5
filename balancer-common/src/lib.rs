//! Shared between the kernel programs (`balancer-ebpf`) and userspace
//! (`balancer-user`): map names and sizes, the `#[repr(C)]` map types, and the
//! pure logic both sides must agree on (the flow hash, prefix masking, the
//! Maglev permutation).
//!
//! Everything here is `no_std` unless the `std` feature is on; the Maglev
//! table *builder* needs `Vec` and is userspace-only.
#![cfg_attr(not(feature = "std"), no_std)]

pub mod addr;
pub mod counters;
pub mod hash;
#[cfg(feature = "std")]
pub mod maglev;
pub mod maps;
pub mod types;

#[cfg(feature = "user")]
mod pod;
