//! What the `[tables]` sizes cost in kernel memory.
//!
//! `CONNTRACK` and `AFFINITY` are `BPF_MAP_TYPE_LRU_HASH` maps, which the
//! kernel allocates in full when the map is created (`kernel/bpf/hashtab.c`,
//! `htab_map_mem_usage`), whatever the traffic:
//! - one element per entry: a [`ELEMENT_HEADER`]-byte header (`struct
//!   htab_elem`: the bucket list node, the LRU list node and the hash), then
//!   the key and the value, each rounded up to 8 bytes;
//! - one [`BUCKET`]-byte bucket (`struct bucket`: a list head and a lock)
//!   per slot of the bucket array, whose length is the entries rounded up to
//!   a power of two.
//!
//! The kernel's own figure (the map's `memlock` in `/proc/PID/fdinfo/FD`)
//! adds a fixed part of a few KiB (the map struct, per-CPU locks) on top.

use std::{fmt, mem::size_of};

use balancer_common::types::{Affinity, AffinityKey, Flow, FlowKey};
use serde::{Deserialize, Serialize};

use super::Tables;

/// `sizeof(struct htab_elem)` before the key, on 64-bit kernels.
pub const ELEMENT_HEADER: u64 = 48;
/// `sizeof(struct bucket)` on 64-bit kernels without lock debugging.
pub const BUCKET: u64 = 16;

/// One table's size and its memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableMemory {
    pub entries: u32,
    pub bytes: u64,
}

impl TableMemory {
    fn new(entries: u32, key: usize, value: usize) -> Self {
        let round8 = |n: usize| (n as u64).next_multiple_of(8);
        let element = ELEMENT_HEADER + round8(key) + round8(value);
        let buckets = u64::from(entries).next_power_of_two();
        TableMemory {
            entries,
            bytes: u64::from(entries) * element + buckets * BUCKET,
        }
    }
}

/// Both tables, as `balancer status` shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TablesMemory {
    pub flows: TableMemory,
    pub affinity: TableMemory,
}

impl From<Tables> for TablesMemory {
    fn from(tables: Tables) -> Self {
        TablesMemory {
            flows: TableMemory::new(tables.flows, size_of::<FlowKey>(), size_of::<Flow>()),
            affinity: TableMemory::new(
                tables.affinity,
                size_of::<AffinityKey>(),
                size_of::<Affinity>(),
            ),
        }
    }
}

/// `flows 1048576 entries (160.0 MiB), affinity 1048576 entries (104.0 MiB)`
impl fmt::Display for TablesMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |t: &TableMemory| t.bytes as f64 / f64::from(1 << 20);
        write!(
            f,
            "flows {} entries ({:.1} MiB), affinity {} entries ({:.1} MiB)",
            self.flows.entries,
            mib(&self.flows),
            self.affinity.entries,
            mib(&self.affinity)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_tables_take_what_the_kernel_allocates() {
        let memory = TablesMemory::from(Tables::default());
        // 48 + 40 + 56 = 144 bytes per flow, 48 + 24 + 16 = 88 per affinity,
        // and 16 per bucket, 2^20 of each.
        assert_eq!(memory.flows.bytes, (1 << 20) * (144 + 16));
        assert_eq!(memory.affinity.bytes, (1 << 20) * (88 + 16));
        assert_eq!(
            memory.to_string(),
            "flows 1048576 entries (160.0 MiB), affinity 1048576 entries (104.0 MiB)"
        );
    }

    #[test]
    fn buckets_round_up_to_a_power_of_two() {
        let memory = TablesMemory::from(Tables {
            flows: 65537,
            affinity: 1024,
        });
        assert_eq!(memory.flows.bytes, 65537 * 144 + 131_072 * 16);
        assert_eq!(memory.affinity.bytes, 1024 * (88 + 16));
    }
}
