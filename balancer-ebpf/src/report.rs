//! Reporting the affinity entries confirmations make to the daemon
//! (`AFFINITY_EVENTS`), which sends them to its cluster peers. Only
//! confirmations report: an entry exists because a backend accepted a
//! connection, so packets a stranger can send write nothing here either.

use balancer_common::{
    counters::Counter,
    types::{AffinityEvent, AffinityKey},
};

use crate::{maps::AFFINITY_EVENTS, stats};

/// Report that `key` now names `backend_id`, as of `now`. A full buffer
/// loses the record, counted; nothing waits.
#[inline(always)]
pub fn affinity_stored(key: &AffinityKey, backend_id: u32, now: u64) {
    use core::ptr::{addr_of_mut, write_volatile};
    let Some(mut entry) = AFFINITY_EVENTS.reserve::<AffinityEvent>(0) else {
        stats::count(Counter::AffinityReportFailed);
        return;
    };
    // Field by field with volatile stores: a whole-struct copy compiles to
    // a `memcpy` call, and on 6.1 every call adds a frame to the stack the
    // verifier counts (see `scratch`).
    let p = entry.as_mut_ptr();
    unsafe {
        write_volatile(addr_of_mut!((*p).key.service_id), key.service_id);
        write_volatile(addr_of_mut!((*p).key.family), key.family);
        for i in 0..3 {
            write_volatile(addr_of_mut!((*p).key._pad[i]), 0);
        }
        for i in 0..4 {
            write_volatile(addr_of_mut!((*p).key.client[i]), key.client[i]);
        }
        write_volatile(addr_of_mut!((*p).backend_id), backend_id);
        write_volatile(addr_of_mut!((*p)._pad), 0);
        write_volatile(addr_of_mut!((*p).last_seen_ns), now);
    }
    // No flags: the kernel wakes the reader only when it had caught up, so
    // a burst of new clients costs one wakeup, not one each.
    entry.submit(0);
}
