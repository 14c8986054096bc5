//! Reading every entry of a BPF hash or LRU hash map from userspace, fast
//! enough to walk a 1M-entry conntrack table every second.
//!
//! [`scan`] reads with `BPF_MAP_LOOKUP_BATCH` (kernel 5.6+): one syscall
//! copies out up to a chunk of entries ([`DEFAULT_CHUNK`]), whole hash
//! buckets at a time. If the kernel refuses batch ops on the first call
//! (`EINVAL` from a kernel without the command, `ENOTSUPP`/`EOPNOTSUPP`
//! from a map type without them) it falls back to `BPF_MAP_GET_NEXT_KEY` +
//! `BPF_MAP_LOOKUP_ELEM`, two syscalls per entry.
//!
//! Only maps with one value per key are supported: `BPF_MAP_TYPE_HASH` and
//! `BPF_MAP_TYPE_LRU_HASH`. A per-CPU map's values are
//! `round_up(value_size, 8) × nr_cpus` bytes per entry, which `V` does not
//! describe; those (and every other map type) are refused with
//! [`ScanError::UnsupportedMapType`].
//!
//! # Concurrent updates
//!
//! The kernel program may insert and delete entries while a scan runs. A
//! scan is weakly consistent, like `/proc/net/nf_conntrack`: every entry
//! present for the whole scan is visited exactly once (by the fallback: if
//! [`ScanStats::complete`]), an entry inserted or deleted during it may or
//! may not be, and no key is visited twice.
//!
//! - Batch: the cursor is a bucket index, and each bucket is copied under
//!   its lock. A key always hashes to the same bucket, so it is seen at most
//!   once, and the scan ends after at most one pass over the buckets.
//! - Fallback: `BPF_MAP_GET_NEXT_KEY` on a key that has since been deleted
//!   starts over from the first key. The walk restarts from the start
//!   explicitly when the key it stands on disappears, remembers the keys it
//!   has visited (memory in proportion to the map) so a restart, explicit or
//!   silent, never visits a key twice, and gives up after `2 × max_entries`
//!   steps: under churn heavy enough to exhaust that, [`ScanStats::complete`]
//!   is false and some entries were not visited.

use std::{
    collections::HashSet,
    io,
    mem::{self, MaybeUninit},
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
    ptr, slice,
};

use aya::{
    Pod,
    maps::{MapData, MapError, MapType},
};

use crate::syscall::sys_bpf;

/// Entries per `BPF_MAP_LOOKUP_BATCH` call: 4096 conntrack entries (40-byte
/// key, 32-byte value) are 288 KiB of buffers, and 1M entries take ~250
/// calls. The size hardly matters beyond that: a 1M-entry LRU hash took
/// ~270 ms to scan with chunks of 1024 to 65536 (kernel 6.18, 2 vCPUs), the
/// kernel's per-bucket work dominating; one entry at a time took 2.1 s.
pub const DEFAULT_CHUNK: u32 = 4096;

// `enum bpf_cmd` (include/uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_ELEM: libc::c_int = 1;
const BPF_MAP_GET_NEXT_KEY: libc::c_int = 4;
const BPF_MAP_LOOKUP_BATCH: libc::c_int = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_int = 26;
/// Entries per `BPF_MAP_UPDATE_BATCH` call.
const UPDATE_CHUNK: usize = 1 << 16;

/// The kernel's internal `ENOTSUPP` (not `EOPNOTSUPP`), which
/// `bpf_map_do_batch` returns for a map type without batch ops.
const ENOTSUPP: i32 = 524;

/// The `batch` member of `union bpf_attr`, for the `BPF_MAP_*_BATCH`
/// commands.
#[repr(C)]
struct BatchAttr {
    /// Cursor to resume from; 0 (NULL) starts at the beginning.
    in_batch: u64,
    /// Where the kernel writes the cursor to resume from next.
    out_batch: u64,
    keys: u64,
    values: u64,
    /// In: room in `keys`/`values`, in entries. Out: entries written.
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}
const _: () = assert!(mem::size_of::<BatchAttr>() == 56);

/// The member of `union bpf_attr` for the `BPF_MAP_*_ELEM` and
/// `BPF_MAP_GET_NEXT_KEY` commands.
#[repr(C)]
pub struct ElemAttr {
    pub map_fd: u32,
    pub _pad: u32,
    /// 0 (NULL) for `BPF_MAP_GET_NEXT_KEY`'s first key.
    pub key: u64,
    /// `value`, or `next_key` for `BPF_MAP_GET_NEXT_KEY`.
    pub value: u64,
    pub flags: u64,
}
const _: () = assert!(mem::size_of::<ElemAttr>() == 32);

/// How to scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanOptions {
    /// Entries per batch call, at first: a bucket holding more is met by
    /// doubling it (up to the map's `max_entries`).
    pub chunk: u32,
    /// Try `BPF_MAP_LOOKUP_BATCH` first. False goes straight to the
    /// one-key-at-a-time walk (for tests of the fallback).
    pub batch: bool,
}

impl Default for ScanOptions {
    fn default() -> Self {
        Self {
            chunk: DEFAULT_CHUNK,
            batch: true,
        }
    }
}

/// How a scan read the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// `BPF_MAP_LOOKUP_BATCH`.
    Batch,
    /// `BPF_MAP_GET_NEXT_KEY` + `BPF_MAP_LOOKUP_ELEM`.
    Iterate,
}

/// What a scan did, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanStats {
    /// Entries passed to the visitor.
    pub entries: u64,
    /// `bpf(2)` calls made by the scan (the one `BPF_OBJ_GET_INFO_BY_FD`
    /// that checks the map type is not counted).
    pub syscalls: u64,
    pub method: Method,
    /// The errno with which the kernel refused the first batch call, when
    /// the scan fell back to [`Method::Iterate`] because of it.
    pub batch_refused: Option<i32>,
    /// Entries per batch call at the end, after any growth for a bucket
    /// larger than [`ScanOptions::chunk`]; 0 for [`Method::Iterate`].
    pub chunk: u32,
    /// [`Method::Iterate`] only: times the walk started over from the first
    /// key because the key it had just been given was gone at lookup.
    pub restarts: u64,
    /// [`Method::Iterate`] only: already-visited keys handed back by
    /// `BPF_MAP_GET_NEXT_KEY` and skipped, after the kernel started over
    /// because the key it was given had been deleted: the walk's wasted steps.
    pub skipped: u64,
    /// False when the [`Method::Iterate`] walk ran out of steps under churn
    /// and stopped early; always true for [`Method::Batch`].
    pub complete: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot read the map's info")]
    Info(#[source] MapError),
    #[error("cannot scan a {0:?} map: only Hash and LruHash maps (not per-CPU) are supported")]
    UnsupportedMapType(MapType),
    #[error("the key type is {actual} bytes but the map's keys are {expected}")]
    KeySize { expected: u32, actual: usize },
    #[error("the value type is {actual} bytes but the map's values are {expected}")]
    ValueSize { expected: u32, actual: usize },
    #[error("`{call}` failed")]
    Syscall {
        call: &'static str,
        #[source]
        io_error: io::Error,
    },
    /// `ENOSPC` with a buffer as large as the map: the kernel misbehaves.
    #[error(
        "BPF_MAP_LOOKUP_BATCH: a bucket holds more than {chunk} entries, the map's max_entries"
    )]
    BucketTooLarge { chunk: u32 },
    /// More batch calls than the map has buckets: the kernel's cursor is not
    /// moving forward.
    #[error("BPF_MAP_LOOKUP_BATCH made no progress after {calls} calls")]
    NoProgress { calls: u64 },
}

/// Every (key, value) of the hash or LRU hash map `map`, passed to `visit`;
/// see the module docs for the method and what concurrent updates do.
pub fn scan<K: Pod, V: Pod>(
    map: &MapData,
    visit: impl FnMut(&K, &V),
) -> Result<ScanStats, ScanError> {
    scan_with(map, ScanOptions::default(), visit)
}

/// [`scan`] with explicit options.
pub fn scan_with<K: Pod, V: Pod>(
    map: &MapData,
    opts: ScanOptions,
    mut visit: impl FnMut(&K, &V),
) -> Result<ScanStats, ScanError> {
    let info = map.info().map_err(ScanError::Info)?;
    let map_type = info.map_type().map_err(ScanError::Info)?;
    if !matches!(map_type, MapType::Hash | MapType::LruHash) {
        return Err(ScanError::UnsupportedMapType(map_type));
    }
    if mem::size_of::<K>() != info.key_size() as usize {
        return Err(ScanError::KeySize {
            expected: info.key_size(),
            actual: mem::size_of::<K>(),
        });
    }
    if mem::size_of::<V>() != info.value_size() as usize {
        return Err(ScanError::ValueSize {
            expected: info.value_size(),
            actual: mem::size_of::<V>(),
        });
    }
    let fd = map.fd().as_fd();
    let max_entries = info.max_entries();
    let mut batch_refused = None;
    if opts.batch {
        match scan_batch(fd, max_entries, opts.chunk, &mut visit) {
            Ok(stats) => return Ok(stats),
            // Refused on the first call, before anything was visited.
            Err(BatchError::Refused(errno)) => batch_refused = Some(errno),
            Err(BatchError::Failed(e)) => return Err(e),
        }
    }
    let mut stats = scan_iterate(fd, max_entries, &mut visit)?;
    stats.batch_refused = batch_refused;
    if batch_refused.is_some() {
        stats.syscalls += 1;
    }
    Ok(stats)
}

enum BatchError {
    /// The first call failed with this errno: no batch ops here.
    Refused(i32),
    Failed(ScanError),
}

fn scan_batch<K: Pod, V: Pod>(
    fd: BorrowedFd<'_>,
    max_entries: u32,
    chunk: u32,
    visit: &mut impl FnMut(&K, &V),
) -> Result<ScanStats, BatchError> {
    // No bucket holds more than the map does.
    let cap = max_entries.max(1);
    let mut chunk = chunk.clamp(1, cap);
    let mut keys: Vec<MaybeUninit<K>> = Vec::new();
    let mut values: Vec<MaybeUninit<V>> = Vec::new();
    keys.resize_with(chunk as usize, MaybeUninit::uninit);
    values.resize_with(chunk as usize, MaybeUninit::uninit);
    // The cursor is opaque: a u32 bucket index for hash maps, a key for
    // some other map types. Room for either, 8-byte aligned.
    let words = mem::size_of::<K>().max(8).div_ceil(8);
    let mut cursor_in = vec![0u64; words];
    let mut cursor_out = vec![0u64; words];
    let mut resume = false;
    let mut stats = ScanStats {
        entries: 0,
        syscalls: 0,
        method: Method::Batch,
        batch_refused: None,
        chunk,
        restarts: 0,
        skipped: 0,
        complete: true,
    };
    // Each successful call moves the cursor forward one bucket or more, and
    // there are roundup_pow_of_two(max_entries) buckets; the growth retries
    // are at most 32. Bounded all the same, so a kernel bug cannot hang the
    // daemon.
    let max_calls = u64::from(cap).next_power_of_two() + 64;
    loop {
        if stats.syscalls >= max_calls {
            return Err(BatchError::Failed(ScanError::NoProgress {
                calls: stats.syscalls,
            }));
        }
        let mut attr = BatchAttr {
            in_batch: if resume { cursor_in.as_ptr() as u64 } else { 0 },
            out_batch: cursor_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk,
            map_fd: fd.as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        stats.syscalls += 1;
        // SAFETY: `keys` and `values` have room for `chunk` entries of the
        // map's key and value size (checked by `scan_with`), the cursors for
        // at least a key or 8 bytes, and all of them outlive the call.
        let result = unsafe { sys_bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) };
        let last = match result {
            Ok(_) => false,
            // The end: this call's entries (possibly none) are still valid.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            // The next bucket holds more than `chunk` entries (none were
            // copied, the cursor did not move): grow and retry.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                let grown = chunk.saturating_mul(2).min(cap);
                if grown == chunk {
                    return Err(BatchError::Failed(ScanError::BucketTooLarge { chunk }));
                }
                chunk = grown;
                stats.chunk = chunk;
                keys.resize_with(chunk as usize, MaybeUninit::uninit);
                values.resize_with(chunk as usize, MaybeUninit::uninit);
                continue;
            }
            Err(e) if stats.syscalls == 1 && is_unsupported(&e) => {
                return Err(BatchError::Refused(e.raw_os_error().unwrap_or_default()));
            }
            Err(io_error) => {
                return Err(BatchError::Failed(ScanError::Syscall {
                    call: "BPF_MAP_LOOKUP_BATCH",
                    io_error,
                }));
            }
        };
        let n = (attr.count as usize).min(chunk as usize);
        for (key, value) in keys[..n].iter().zip(&values[..n]) {
            // SAFETY: the kernel wrote the first `attr.count` keys and values.
            visit(unsafe { key.assume_init_ref() }, unsafe {
                value.assume_init_ref()
            });
        }
        stats.entries += n as u64;
        if last {
            return Ok(stats);
        }
        mem::swap(&mut cursor_in, &mut cursor_out);
        resume = true;
    }
}

fn scan_iterate<K: Pod, V: Pod>(
    fd: BorrowedFd<'_>,
    max_entries: u32,
    visit: &mut impl FnMut(&K, &V),
) -> Result<ScanStats, ScanError> {
    let mut stats = ScanStats {
        entries: 0,
        syscalls: 0,
        method: Method::Iterate,
        batch_refused: None,
        chunk: 0,
        restarts: 0,
        skipped: 0,
        complete: true,
    };
    let mut seen: HashSet<Box<[u8]>> = HashSet::new();
    let mut current: Option<K> = None;
    // A quiet map takes entries + 1 steps; twice the capacity leaves room
    // for a restart or two.
    let budget = 2 * u64::from(max_entries) + 2;
    let mut steps = 0;
    loop {
        if steps == budget {
            stats.complete = false;
            return Ok(stats);
        }
        steps += 1;
        stats.syscalls += 1;
        let Some(key) = next_key(fd, current.as_ref())? else {
            return Ok(stats);
        };
        current = Some(key);
        if seen.contains(bytes_of(&key)) {
            // Already visited: the kernel started over because the key it
            // was given had just been deleted (or this is the explicit
            // restart below).
            stats.skipped += 1;
            continue;
        }
        stats.syscalls += 1;
        match lookup::<K, V>(fd, &key)? {
            Some(value) => {
                seen.insert(bytes_of(&key).into());
                visit(&key, &value);
                stats.entries += 1;
            }
            None => {
                // Deleted since `next_key` returned it: the kernel would
                // start over from the first key; do so explicitly.
                stats.restarts += 1;
                current = None;
            }
        }
    }
}

/// The key after `key` (the first key for `None`), or `None` at the end.
fn next_key<K: Pod>(fd: BorrowedFd<'_>, key: Option<&K>) -> Result<Option<K>, ScanError> {
    let mut next = MaybeUninit::<K>::uninit();
    let mut attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        _pad: 0,
        key: key.map_or(0, |k| ptr::from_ref(k) as u64),
        value: next.as_mut_ptr() as u64,
        flags: 0,
    };
    // SAFETY: `key` and `next` are the map's key size and outlive the call.
    match unsafe { sys_bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) } {
        // SAFETY: the kernel wrote the next key.
        Ok(_) => Ok(Some(unsafe { next.assume_init() })),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(io_error) => Err(ScanError::Syscall {
            call: "BPF_MAP_GET_NEXT_KEY",
            io_error,
        }),
    }
}

/// The value of `key`, or `None` if there is none.
fn lookup<K: Pod, V: Pod>(fd: BorrowedFd<'_>, key: &K) -> Result<Option<V>, ScanError> {
    let mut value = MaybeUninit::<V>::uninit();
    let mut attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        _pad: 0,
        key: ptr::from_ref(key) as u64,
        value: value.as_mut_ptr() as u64,
        flags: 0,
    };
    // SAFETY: `key` and `value` are the map's key and value size and outlive
    // the call.
    match unsafe { sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) } {
        // SAFETY: the kernel wrote the value.
        Ok(_) => Ok(Some(unsafe { value.assume_init() })),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(io_error) => Err(ScanError::Syscall {
            call: "BPF_MAP_LOOKUP_ELEM",
            io_error,
        }),
    }
}

fn bytes_of<T: Pod>(value: &T) -> &[u8] {
    // SAFETY: `Pod` types are plain bytes without padding.
    unsafe { slice::from_raw_parts(ptr::from_ref(value).cast::<u8>(), mem::size_of::<T>()) }
}

/// Write `values[i]` at `keys[i]` for every `i`, with `BPF_MAP_UPDATE_BATCH`
/// (kernel 5.6+; array and hash maps): one syscall per 65,536 entries
/// instead of one per entry, which is what makes swapping a Maglev table of
/// 655,373 slots take milliseconds. Returns `Ok(false)`, having written
/// nothing, if the kernel has no batch update for this map (the caller then
/// writes entry by entry).
pub fn update_batch<K: Pod, V: Pod>(map: &MapData, keys: &[K], values: &[V]) -> io::Result<bool> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    let fd = map.fd().as_fd();
    for (k, v) in keys.chunks(UPDATE_CHUNK).zip(values.chunks(UPDATE_CHUNK)) {
        let mut done = 0usize;
        while done < k.len() {
            let mut attr = BatchAttr {
                in_batch: 0,
                out_batch: 0,
                keys: k[done..].as_ptr() as u64,
                values: v[done..].as_ptr() as u64,
                count: (k.len() - done) as u32,
                map_fd: fd.as_raw_fd() as u32,
                elem_flags: 0,
                flags: 0,
            };
            // SAFETY: `keys` and `values` hold `count` entries of the map's
            // key and value types (the caller's K and V) and outlive the call.
            match unsafe { sys_bpf(BPF_MAP_UPDATE_BATCH, &mut attr) } {
                Ok(_) => done = k.len(),
                Err(e) if done == 0 && attr.count == 0 && is_unsupported(&e) => return Ok(false),
                // Interrupted part way: `count` entries were written.
                Err(e)
                    if e.raw_os_error() == Some(libc::EINTR)
                        || e.raw_os_error() == Some(libc::EAGAIN) =>
                {
                    done += attr.count as usize;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(true)
}

/// How a kernel without a batch command (or without it for this map type)
/// refuses it.
fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
    )
}
