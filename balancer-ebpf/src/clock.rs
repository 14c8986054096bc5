//! The data plane's clock: `bpf_ktime_get_coarse_ns`, CLOCK_MONOTONIC at
//! tick resolution (what userspace compares against). It reads the
//! timekeeper without the TSC: `bpf_ktime_get_ns` cost about 15% of a
//! conntrack hit on the bench machine. Every use is a timeout or a
//! refresh interval of a second or more, which a few ms cannot affect.

use aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns;

#[inline(always)]
pub fn now_ns() -> u64 {
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// A tag that changes about once a second (2^30 ns): cached next hops are
/// looked up again when the current epoch differs from theirs. Wraps after
/// 19 hours; a wrapped match only keeps a path one second longer.
#[inline(always)]
pub fn epoch(now_ns: u64) -> u16 {
    (now_ns >> 30) as u16
}
