//! Counter bumps (per-CPU maps, so plain adds are safe).

use balancer_common::counters::Counter;

use crate::{
    action::Action,
    maps::{BACKEND_STATS, COUNTERS},
};

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(c) = COUNTERS.get_ptr_mut(counter as u32) {
        unsafe { *c += 1 };
    }
}

/// Count and pass to the kernel.
#[inline(always)]
pub fn pass(counter: Counter) -> Action {
    count(counter);
    Action::Pass
}

/// Count and drop.
#[inline(always)]
pub fn drop(counter: Counter) -> Action {
    count(counter);
    Action::Drop
}

/// Which way a packet crosses the balancer.
pub enum Direction {
    ToBackend,
    ToClient,
}

#[inline(always)]
pub fn backend_packet(backend_id: u32, len: u64, direction: Direction, new_connection: bool) {
    let Some(s) = BACKEND_STATS.get_ptr_mut(backend_id) else {
        return;
    };
    let s = unsafe { &mut *s };
    match direction {
        Direction::ToBackend => {
            s.packets_in += 1;
            s.bytes_in += len;
        }
        Direction::ToClient => {
            s.packets_out += 1;
            s.bytes_out += len;
        }
    }
    if new_connection {
        s.connections_total += 1;
    }
}
