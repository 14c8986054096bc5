//! The value types of the maps only the kernel side uses (`NEXT_HOPS`,
//! `CLIENT_PATHS`, `SCRATCH`); the shared ones are in `balancer_common::types`.

use aya_ebpf::bindings::bpf_fib_lookup as FibParams;
use balancer_common::types::{Flow, FlowKey, FragmentKey, FragmentNat};

/// A backend's next hop as the FIB last gave it, for `addr` (a backend id
/// reused for another address never takes the old one's path).
#[repr(C)]
pub struct NextHop {
    pub addr: [u32; 4],
    pub ifindex: u32,
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// `clock::epoch` of the lookup; `ifindex` 0 means none yet.
    pub epoch: u16,
    pub _pad: u16,
}

/// A client's L2 path as its packets came (see `client_path`).
#[repr(C)]
pub struct ClientPath {
    pub addr: [u32; 4],
    /// 0: the slot is empty.
    pub ifindex: u32,
    /// The packets' first 12 bytes as words: their destination MAC (the
    /// gateway's interface), then their source MAC (the client or its
    /// router).
    pub macs: [u32; 3],
    pub family: u32,
    pub _pad: u32,
}

/// Per-CPU scratch space for the large values the common path builds for
/// a helper (see `scratch`).
#[repr(C)]
pub struct Scratch {
    pub fib: FibParams,
    /// A reply's conntrack key, as `lookup::reply_flow` rebuilds it.
    pub reply_key: FlowKey,
    /// A new flow's conntrack entry.
    pub flow: Flow,
    pub fragment_key: FragmentKey,
    pub fragment_nat: FragmentNat,
}
