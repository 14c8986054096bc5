//! This gateway's `AFFINITY` map as the cluster uses it: received entries
//! applied by the rule below ([`decide`]), fresh entries read for a sync or
//! a re-announcement, and the kernel's reports of new entries
//! (`AFFINITY_EVENTS`) read as they come.
//!
//! The rule for a received entry: stored only where this gateway has none
//! (or only an expired one, which its kernel ignores too); where it has
//! one naming the same backend, its last use moves forward to the sent
//! one's if that is later; where it has one naming another backend, that
//! stays. So replication never moves a client this gateway placed.

use std::{path::Path, time::Duration};

use anyhow::Context;
use aya::maps::{HashMap, Map, MapData, MapError, RingBuf};
use balancer_common::{
    maps,
    types::{Affinity, AffinityEvent, AffinityKey},
};
use tokio::io::{Interest, unix::AsyncFd};

use super::{
    directory::{Directory, Local},
    stats::Applied,
    wire::Entry,
};
use crate::{accounting::monotonic_ns, mapscan};

/// What to do with a received entry (`last_seen_ns`: its last use on this
/// gateway's clock) given the entry this gateway has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Store it, only if still absent (`BPF_NOEXIST`).
    Insert,
    /// Overwrite an expired entry.
    Replace,
    /// Same backend, sent one used later: move `last_seen_ns` forward.
    Refresh,
    /// Nothing to write; what became of it.
    Leave(Applied),
}

pub fn decide(
    existing: Option<&Affinity>,
    backend_id: u32,
    last_seen_ns: u64,
    now_ns: u64,
    timeout_ns: u64,
) -> Decision {
    if now_ns.saturating_sub(last_seen_ns) >= timeout_ns {
        return Decision::Leave(Applied::Expired);
    }
    match existing {
        None => Decision::Insert,
        Some(a) if now_ns.saturating_sub(a.last_seen_ns) > timeout_ns => Decision::Replace,
        Some(a) if a.backend_id != backend_id => Decision::Leave(Applied::Kept),
        Some(a) if last_seen_ns > a.last_seen_ns => Decision::Refresh,
        Some(_) => Decision::Leave(Applied::Current),
    }
}

/// `BPF_NOEXIST`, `BPF_EXIST`.
const NOEXIST: u64 = 1;
const EXIST: u64 = 2;

pub struct Table {
    affinity: HashMap<MapData, AffinityKey, Affinity>,
    /// `AFFINITY` again, for batched scans.
    scan: MapData,
}

fn open(pin_dir: &Path, name: &str) -> anyhow::Result<Map> {
    let path = pin_dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    Map::from_map_data(data).with_context(|| format!("opening {}", path.display()))
}

impl Table {
    pub fn open(pin_dir: &Path) -> anyhow::Result<Self> {
        let affinity = HashMap::try_from(open(pin_dir, maps::AFFINITY)?)?;
        let path = pin_dir.join(maps::AFFINITY);
        let scan =
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok(Table { affinity, scan })
    }

    /// Apply a received entry, `age_ns` old now.
    pub fn apply(&mut self, local: &Local, age_ns: u64) -> anyhow::Result<Applied> {
        let now = monotonic_ns();
        let last_seen_ns = now.saturating_sub(age_ns);
        let existing = match self.affinity.get(&local.key, 0) {
            Ok(a) => Some(a),
            Err(MapError::KeyNotFound) => None,
            Err(e) => return Err(e).context("reading AFFINITY"),
        };
        let value = Affinity {
            backend_id: local.backend_id,
            _pad: 0,
            last_seen_ns,
        };
        let (flags, applied) = match decide(
            existing.as_ref(),
            local.backend_id,
            last_seen_ns,
            now,
            local.timeout_ns,
        ) {
            Decision::Insert => (NOEXIST, Applied::Inserted),
            Decision::Replace => (0, Applied::Inserted),
            Decision::Refresh => (EXIST, Applied::Refreshed),
            Decision::Leave(applied) => return Ok(applied),
        };
        match self.affinity.insert(local.key, value, flags) {
            Ok(()) => Ok(applied),
            // The kernel stored or dropped this client's entry since the
            // read: its word stands.
            Err(MapError::SyscallError(e))
                if matches!(e.io_error.raw_os_error(), Some(libc::EEXIST | libc::ENOENT)) =>
            {
                Ok(Applied::Kept)
            }
            Err(e) => Err(e).context("writing AFFINITY"),
        }
    }

    /// Every entry of a source-ip service used less than `fraction` of its
    /// timeout ago, in shared names: `1.0` for a sync (every fresh entry),
    /// `0.5` for a re-announcement (the active ones).
    pub fn fresh(&self, directory: &Directory, fraction: f64) -> anyhow::Result<Vec<Entry>> {
        let now = monotonic_ns();
        let mut out = Vec::new();
        mapscan::scan::<AffinityKey, Affinity>(&self.scan, |key, a| {
            let Some(timeout) = directory.timeout_ns(key.service_id) else {
                return;
            };
            let age = now.saturating_sub(a.last_seen_ns);
            if (age as f64) < timeout as f64 * fraction
                && let Some(e) = directory.outgoing(key, a.backend_id, age)
            {
                out.push(e);
            }
        })
        .context("reading AFFINITY")?;
        Ok(out)
    }
}

/// The kernel's reports of new affinity entries, read as they arrive.
pub struct Events {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl Events {
    pub fn open(pin_dir: &Path) -> anyhow::Result<Self> {
        let ring = RingBuf::try_from(open(pin_dir, maps::AFFINITY_EVENTS)?)?;
        // SAFETY: the ring owns its fd, open for as long as the AsyncFd
        // holds the ring, and always the same one.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(std::io::Error::from)
            .context("polling AFFINITY_EVENTS")?;
        Ok(Events { ring })
    }

    /// The reports waiting now, at least one (waits for it).
    pub async fn next_batch(&mut self, max: usize) -> anyhow::Result<Vec<AffinityEvent>> {
        loop {
            let batch = drain(self.ring.get_mut(), max);
            if !batch.is_empty() {
                return Ok(batch);
            }
            // The kernel wakes this reader only for a burst (`report` in
            // the kernel program); between bursts, look every REPORT_POLL.
            tokio::select! {
                ready = self.ring.readable_mut() => ready?.clear_ready(),
                () = tokio::time::sleep(REPORT_POLL) => {}
            }
        }
    }
}

/// How often the daemon looks for reports the kernel did not wake it for:
/// a new entry reaches the peers within this much, plus the link's delay.
pub const REPORT_POLL: Duration = Duration::from_millis(20);

/// Up to `max` reports from `ring`, as many as are waiting.
fn drain(ring: &mut RingBuf<MapData>, max: usize) -> Vec<AffinityEvent> {
    let mut batch = Vec::new();
    while batch.len() < max {
        let Some(item) = ring.next() else { break };
        if item.len() >= size_of::<AffinityEvent>() {
            // SAFETY: the kernel wrote an `AffinityEvent` there (`report`),
            // a plain-data type; unaligned read.
            batch.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<AffinityEvent>()) });
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn a(backend_id: u32, last_seen_ns: u64) -> Affinity {
        Affinity {
            backend_id,
            _pad: 0,
            last_seen_ns,
        }
    }

    #[test]
    fn a_received_entry_never_moves_a_client_placed_here() {
        let now = 1000 * S;
        let timeout = 600 * S;
        let cases = [
            (None, 1, now - S, Decision::Insert, "none here"),
            (
                Some(a(2, now - 700 * S)),
                1,
                now - S,
                Decision::Replace,
                "only an expired one here",
            ),
            (
                Some(a(2, now - 5 * S)),
                1,
                now - S,
                Decision::Leave(Applied::Kept),
                "another backend, fresh",
            ),
            (
                Some(a(1, now - 5 * S)),
                1,
                now - S,
                Decision::Refresh,
                "same backend, used there later",
            ),
            (
                Some(a(1, now - S)),
                1,
                now - 5 * S,
                Decision::Leave(Applied::Current),
                "same backend, used here later",
            ),
            (
                None,
                1,
                now - 601 * S,
                Decision::Leave(Applied::Expired),
                "expired when it arrived",
            ),
        ];
        for (existing, backend, last_seen, want, what) in cases {
            assert_eq!(
                decide(existing.as_ref(), backend, last_seen, now, timeout),
                want,
                "{what}"
            );
        }
    }
}
