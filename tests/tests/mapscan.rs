//! `balancer_user::mapscan` against real kernel maps, created from userspace
//! (`BPF_MAP_CREATE`) with conntrack's key and value types (40 and 32
//! bytes): every entry read back exactly once with the right value, by the
//! batch path, by the one-key-at-a-time fallback, and while another thread
//! inserts and deletes.

use std::{
    collections::HashMap,
    io, mem,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
    ptr,
    sync::atomic::{AtomicBool, Ordering},
    thread,
};

use aya::maps::{MapData, MapType};
use balancer_common::types::{Flow, FlowKey};
use balancer_tests::require_root;
use balancer_user::{
    mapscan::{self, ElemAttr, Method, ScanError, ScanOptions, ScanStats},
    syscall::sys_bpf,
};

// include/uapi/linux/bpf.h
const BPF_MAP_CREATE: libc::c_int = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_int = 2;
const BPF_MAP_DELETE_ELEM: libc::c_int = 3;
const BPF_NOEXIST: u64 = 1;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_PERCPU_HASH: u32 = 5;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;

/// The head of `union bpf_attr` for `BPF_MAP_CREATE` (the kernel zero-fills
/// the rest).
#[repr(C)]
struct CreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// A map of `FlowKey` → `Flow` of `map_type`, closed on drop.
fn create_map(map_type: u32, max_entries: u32) -> MapData {
    require_root();
    let mut attr = CreateAttr {
        map_type,
        key_size: mem::size_of::<FlowKey>() as u32,
        value_size: mem::size_of::<Flow>() as u32,
        max_entries,
        map_flags: 0,
    };
    // SAFETY: BPF_MAP_CREATE reads no pointers from these fields.
    let fd = unsafe { sys_bpf(BPF_MAP_CREATE, &mut attr) }.expect("BPF_MAP_CREATE");
    // SAFETY: BPF_MAP_CREATE returned a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    MapData::from_fd(fd).expect("MapData::from_fd")
}

fn key(i: u32) -> FlowKey {
    FlowKey {
        src: [i, i.wrapping_mul(0x9e37_79b9), 0xfe80_0000, 1],
        dst: [0x0a00_0001, 0, 0, i >> 16],
        sport: (i as u16).to_be(),
        dport: 443u16.to_be(),
        proto: 6,
        family: 10,
        _pad: [0; 2],
    }
}

fn value(i: u32) -> Flow {
    Flow {
        backend_id: i,
        client_tcp_state: i % 7,
        last_seen_ns: u64::from(i) * 1_000_003,
        affinity_touched_ns: !u64::from(i),
        created_ns: u64::from(i) << 20,
        client_ifindex: i ^ 0x5a5a,
        client_mac: [i as u8, 1, 2, 3, 4, (i >> 8) as u8],
        gateway_mac: [(i >> 16) as u8, 5, 6, 7, 8, 9],
        path_epoch: i as u16,
        backend_tcp_state: (i % 11) as u8,
        _pad: [0; 5],
    }
}

fn elem(map: &MapData, cmd: libc::c_int, i: u32, flags: u64) -> io::Result<()> {
    let k = key(i);
    let v = value(i);
    let mut attr = ElemAttr {
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        _pad: 0,
        key: ptr::from_ref(&k) as u64,
        // BPF_MAP_DELETE_ELEM refuses (EINVAL) any attr byte past `key`.
        value: if cmd == BPF_MAP_DELETE_ELEM {
            0
        } else {
            ptr::from_ref(&v) as u64
        },
        flags,
    };
    // SAFETY: `k` and `v` are the map's key and value size and outlive the
    // call; the kernel only reads them.
    unsafe { sys_bpf(cmd, &mut attr) }.map(drop)
}

fn insert(map: &MapData, i: u32) -> io::Result<()> {
    elem(map, BPF_MAP_UPDATE_ELEM, i, BPF_NOEXIST)
}

fn delete(map: &MapData, i: u32) -> io::Result<()> {
    elem(map, BPF_MAP_DELETE_ELEM, i, 0)
}

fn fill(map: &MapData, n: u32) {
    for i in 0..n {
        insert(map, i).unwrap_or_else(|e| panic!("insert {i}: {e}"));
    }
}

/// Every entry `scan_with` visits, failing on a key visited twice.
fn collect(map: &MapData, opts: ScanOptions) -> (HashMap<FlowKey, Flow>, ScanStats) {
    let mut got = HashMap::new();
    let mut twice = Vec::new();
    let stats = mapscan::scan_with(map, opts, |k: &FlowKey, v: &Flow| {
        if got.insert(*k, *v).is_some() {
            twice.push(*k);
        }
    })
    .expect("scan");
    assert!(twice.is_empty(), "keys visited twice: {twice:?}");
    assert_eq!(stats.entries, got.len() as u64, "{stats:?}");
    (got, stats)
}

/// The scan returns exactly keys `0..n`, each with its value.
fn assert_exact(map: &MapData, n: u32, opts: ScanOptions, method: Method) -> ScanStats {
    let (got, stats) = collect(map, opts);
    assert_eq!(stats.method, method, "{stats:?}");
    assert!(stats.complete, "{stats:?}");
    assert_eq!(got.len(), n as usize, "{stats:?}");
    for i in 0..n {
        assert_eq!(got.get(&key(i)), Some(&value(i)), "entry {i}");
    }
    stats
}

const SIZES: [u32; 4] = [0, 1, 5000, 100_000];

#[test]
fn hash_scan_returns_every_entry_once() {
    for n in SIZES {
        // Full to capacity.
        let map = create_map(BPF_MAP_TYPE_HASH, n.max(1));
        fill(&map, n);
        let stats = assert_exact(&map, n, ScanOptions::default(), Method::Batch);
        assert_eq!(stats.batch_refused, None);
        println!("hash, {n} entries: {stats:?}");
    }
}

#[test]
fn lru_hash_scan_returns_every_entry_once() {
    for n in SIZES {
        // An LRU map evicts before it is full when a CPU's local free list
        // runs dry (and the test thread may migrate): leave room.
        let map = create_map(BPF_MAP_TYPE_LRU_HASH, 2 * n + 1024);
        fill(&map, n);
        let stats = assert_exact(&map, n, ScanOptions::default(), Method::Batch);
        println!("lru hash, {n} entries: {stats:?}");
    }
}

#[test]
fn a_bucket_larger_than_the_chunk_grows_it() {
    // 5000 entries in 8192 buckets: many buckets hold two or more.
    let map = create_map(BPF_MAP_TYPE_HASH, 5000);
    fill(&map, 5000);
    let stats = assert_exact(
        &map,
        5000,
        ScanOptions {
            chunk: 1,
            batch: true,
        },
        Method::Batch,
    );
    assert!(stats.chunk > 1, "ENOSPC never grew the buffer: {stats:?}");
}

#[test]
fn fallback_walk_returns_every_entry_once() {
    let iterate = ScanOptions {
        batch: false,
        ..ScanOptions::default()
    };
    for map_type in [BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LRU_HASH] {
        for n in [0, 1, 5000] {
            let map = create_map(map_type, 2 * n + 1024);
            fill(&map, n);
            let stats = assert_exact(&map, n, iterate, Method::Iterate);
            assert_eq!((stats.restarts, stats.skipped), (0, 0), "{stats:?}");
            // One GET_NEXT_KEY and one LOOKUP_ELEM per entry, and the last
            // GET_NEXT_KEY.
            assert_eq!(stats.syscalls, 2 * u64::from(n) + 1, "{stats:?}");
        }
    }
}

/// The visitor deletes some of the keys it is given: the fallback walk's
/// next `BPF_MAP_GET_NEXT_KEY` then starts over from the first key, and the
/// walk must skip what it has visited instead of visiting it again.
#[test]
fn fallback_walk_survives_deleting_the_current_key() {
    const N: u32 = 5000;
    let iterate = ScanOptions {
        batch: false,
        ..ScanOptions::default()
    };
    // A few restarts: each costs at most one pass over the visited keys, and
    // the step budget (2 × max_entries) covers them.
    let map = create_map(BPF_MAP_TYPE_HASH, 2 * N + 1024);
    fill(&map, N);
    let doomed = |i: u32| [1000, 2500, 4000].contains(&i);
    let mut got = HashMap::new();
    let stats = mapscan::scan_with(&map, iterate, |k: &FlowKey, v: &Flow| {
        assert!(got.insert(*k, *v).is_none(), "visited twice: {k:?}");
        if doomed(v.backend_id) {
            delete(&map, v.backend_id).expect("delete");
        }
    })
    .expect("scan");
    assert!(stats.complete, "{stats:?}");
    // The kernel started over three times, and the walk skipped what it had
    // visited.
    assert!(stats.skipped > 0, "{stats:?}");
    assert_eq!(got.len(), N as usize, "{stats:?}");
    for i in 0..N {
        assert_eq!(got.get(&key(i)), Some(&value(i)), "entry {i}");
    }

    // Many restarts: the walk runs out of steps and says so, and still
    // visits no key twice.
    let map = create_map(BPF_MAP_TYPE_HASH, N);
    fill(&map, N);
    let mut got = HashMap::new();
    let stats = mapscan::scan_with(&map, iterate, |k: &FlowKey, v: &Flow| {
        assert!(got.insert(*k, *v).is_none(), "visited twice: {k:?}");
        if v.backend_id.is_multiple_of(10) {
            delete(&map, v.backend_id).expect("delete");
        }
    })
    .expect("scan");
    assert!(!stats.complete, "{stats:?}");
    assert!(stats.syscalls <= 2 * (2 * u64::from(N) + 2), "{stats:?}");
    println!("fallback, deleting every 10th key: {stats:?}");

    // The batch path is not disturbed by the same deletions.
    let map = create_map(BPF_MAP_TYPE_HASH, N);
    fill(&map, N);
    let mut got = HashMap::new();
    let stats = mapscan::scan(&map, |k: &FlowKey, v: &Flow| {
        assert!(got.insert(*k, *v).is_none(), "visited twice: {k:?}");
        if v.backend_id.is_multiple_of(10) {
            delete(&map, v.backend_id).expect("delete");
        }
    })
    .expect("scan");
    assert_eq!(
        (stats.method, stats.complete, got.len()),
        (Method::Batch, true, N as usize),
        "{stats:?}"
    );
}

#[test]
fn refuses_per_cpu_maps_and_wrong_sizes() {
    let map = create_map(BPF_MAP_TYPE_PERCPU_HASH, 16);
    let err = mapscan::scan(&map, |_: &FlowKey, _: &Flow| {}).unwrap_err();
    assert!(
        matches!(err, ScanError::UnsupportedMapType(MapType::PerCpuHash)),
        "{err:?}"
    );

    let map = create_map(BPF_MAP_TYPE_HASH, 16);
    let err = mapscan::scan(&map, |_: &u64, _: &Flow| {}).unwrap_err();
    assert!(
        matches!(
            err,
            ScanError::KeySize {
                expected: 40,
                actual: 8
            }
        ),
        "{err:?}"
    );
    let err = mapscan::scan(&map, |_: &FlowKey, _: &u64| {}).unwrap_err();
    assert!(
        matches!(
            err,
            ScanError::ValueSize {
                expected: 56,
                actual: 8
            }
        ),
        "{err:?}"
    );
}

/// Another thread inserts and deletes keys while scans run: every scan ends,
/// visits no key twice, sees every key that stayed put with its value, and
/// any churned key it sees with its value.
#[test]
fn scans_survive_concurrent_inserts_and_deletes() {
    const STABLE: u32 = 20_000;
    const CHURN_BASE: u32 = 1 << 24;
    const CHURN_KEYS: u32 = 4096;
    for map_type in [BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LRU_HASH] {
        let map = create_map(map_type, 1 << 16);
        fill(&map, STABLE);
        let stop = AtomicBool::new(false);
        thread::scope(|s| {
            let churn = s.spawn(|| {
                let mut j = 0u32;
                let mut deleted = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // Each key is inserted, then deleted half a cycle later.
                    let _ = insert(&map, CHURN_BASE + j % CHURN_KEYS);
                    match delete(&map, CHURN_BASE + (j + CHURN_KEYS / 2) % CHURN_KEYS) {
                        Ok(()) => deleted += 1,
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                        Err(e) => panic!("delete: {e}"),
                    }
                    j = j.wrapping_add(1);
                }
                deleted
            });
            let check = |opts: ScanOptions, method: Method| {
                let (got, stats) = collect(&map, opts);
                assert_eq!(stats.method, method);
                for (k, v) in &got {
                    assert_eq!(*v, value(v.backend_id), "wrong value for {k:?}");
                    assert_eq!(*k, key(v.backend_id), "wrong key for {v:?}");
                }
                if stats.complete {
                    for i in 0..STABLE {
                        assert_eq!(
                            got.get(&key(i)),
                            Some(&value(i)),
                            "stable entry {i}: {stats:?}"
                        );
                    }
                }
                stats
            };
            let mut restarts = 0;
            let mut skipped = 0;
            let mut incomplete = 0;
            for _ in 0..20 {
                let stats = check(ScanOptions::default(), Method::Batch);
                assert!(stats.complete);
            }
            for _ in 0..5 {
                let stats = check(
                    ScanOptions {
                        batch: false,
                        ..ScanOptions::default()
                    },
                    Method::Iterate,
                );
                restarts += stats.restarts;
                skipped += stats.skipped;
                incomplete += u32::from(!stats.complete);
            }
            stop.store(true, Ordering::Relaxed);
            let deleted = churn.join().expect("churn thread");
            println!(
                "map type {map_type}: {deleted} churn deletes; fallback: {restarts} restarts, {skipped} skipped, {incomplete} incomplete"
            );
            assert!(deleted > 0, "the churn thread deleted nothing");
        });
    }
}

#[test]
fn update_batch_writes_every_entry() {
    require_root();
    // More than one chunk (65,536 per call).
    let n = 100_000u32;
    let map = create_map(BPF_MAP_TYPE_HASH, n + 1024);
    let keys: Vec<FlowKey> = (0..n).map(key).collect();
    let values: Vec<Flow> = (0..n).map(value).collect();
    let start = std::time::Instant::now();
    assert!(
        mapscan::update_batch(&map, &keys, &values).expect("BPF_MAP_UPDATE_BATCH"),
        "batch refused"
    );
    let batched = start.elapsed();
    let (seen, _) = collect(&map, ScanOptions::default());
    assert_eq!(seen.len(), n as usize);
    for i in (0..n).step_by(997) {
        assert_eq!(seen.get(&key(i)), Some(&value(i)), "entry {i}");
    }
    // For comparison (printed, not asserted): the same, one syscall each.
    let other = create_map(BPF_MAP_TYPE_HASH, n + 1024);
    let start = std::time::Instant::now();
    fill(&other, n);
    println!(
        "{n} entries: batched {batched:?}, one by one {:?}",
        start.elapsed()
    );
}
