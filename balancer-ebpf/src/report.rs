//! Reporting the affinity entries confirmations make to the daemon
//! (`AFFINITY_EVENTS`), which sends them to its cluster peers. Only
//! confirmations report: an entry exists because a backend accepted a
//! connection, so packets a stranger can send write nothing here either.

use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use balancer_common::{
    counters::Counter,
    maps::AFFINITY_EVENTS_BYTES,
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
    // The reader is woken only once a burst has built up; between bursts
    // it looks every 20 ms (the daemon's `REPORT_POLL`). With no flags the
    // kernel wakes a reader that had caught up, which a daemon always has
    // between new clients: a wakeup for each one, and the bench measured a
    // new client's confirmation at 4.7x its cost without it.
    let flags = if AFFINITY_EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= WAKE_AT_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(u64::from(flags));
}

/// Reports waiting before the reader is woken: an eighth of the buffer,
/// so a burst is read long before the buffer fills.
const WAKE_AT_BYTES: u64 = AFFINITY_EVENTS_BYTES as u64 / 8;
