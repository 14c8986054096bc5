//! Active connections and table sizes, counted from the tables themselves.
//!
//! A kernel counter of opens minus closes would drift: the LRU conntrack map
//! evicts entries without telling anyone, and a connection whose last FIN
//! was never seen would stay open for ever. So the active count is not kept,
//! it is recounted: every pass reads the whole `CONNTRACK` map (batched) and
//! counts, per backend, the flows that are still open — not closed by FIN
//! from both sides or by RST, and idle less than their protocol's timeout.
//! What the LRU evicted is simply not there. Every entry is a connection
//! its backend confirmed: spoofed SYNs and handshakes that never complete
//! make none. `AFFINITY` is counted the same
//! way, per service, fresh entries only (stale ones are ignored by the
//! kernel too).

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::Context;
use aya::maps::MapData;
use balancer_common::{
    maps,
    types::{Affinity, AffinityKey, Flow, FlowKey, PROTO_TCP, TCP_BACKEND_ANSWERED, tcp_closed},
};

use crate::mapscan;

/// A TCP flow idle this long no longer counts as active (the client or
/// backend vanished without FIN or RST). Socket.IO pings every 25 s, so a
/// live session is never this idle.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// A TCP flow whose backend never answered the handshake stops counting
/// after this long. The data plane makes an entry only when the backend
/// confirms its flow (so with `TCP_BACKEND_ANSWERED`); entries without it
/// are adopted from a build that stored flows at the client's SYN, where a
/// client that gave up while connecting sent nothing more, and neither FIN
/// nor RST would ever end it.
pub const TCP_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A UDP "connection" is a flow seen in the last minute.
pub const UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Recount at least this often.
const MIN_PERIOD: Duration = Duration::from_secs(1);

/// The kernel's clock (`bpf_ktime_get_coarse_ns`, a tick behind at most):
/// CLOCK_MONOTONIC in ns.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // Cannot fail for CLOCK_MONOTONIC with a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Is the flow an open connection at `now`?
pub fn flow_active(key: &FlowKey, flow: &Flow, now_ns: u64) -> bool {
    let idle = now_ns.saturating_sub(flow.last_seen_ns);
    if key.proto == PROTO_TCP {
        let timeout = if flow.tcp_state() & TCP_BACKEND_ANSWERED != 0 {
            TCP_IDLE_TIMEOUT
        } else {
            TCP_HANDSHAKE_TIMEOUT
        };
        !tcp_closed(flow.tcp_state()) && idle < timeout.as_nanos() as u64
    } else {
        idle < UDP_IDLE_TIMEOUT.as_nanos() as u64
    }
}

/// One recount's results.
#[derive(Clone, Debug, Default)]
pub struct FlowCounts {
    /// Active flows by backend id.
    pub active: HashMap<u32, u64>,
    /// Every entry in `CONNTRACK`, active or not.
    pub conntrack_entries: u64,
    /// Fresh affinity entries by service id.
    pub affinity: HashMap<u32, u64>,
    /// When this count was taken, and how long it took.
    pub taken: Option<Instant>,
    pub took: Duration,
}

/// The latest [`FlowCounts`], shared between the counting task and readers.
pub type SharedCounts = Arc<Mutex<FlowCounts>>;

pub fn latest(counts: &SharedCounts) -> FlowCounts {
    counts
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// The pinned maps a recount reads, opened on their own file descriptors so
/// counting needs no lock shared with the rest of the daemon.
pub struct FlowTables {
    conntrack: MapData,
    affinity: MapData,
}

impl FlowTables {
    pub fn open(pin_dir: &Path) -> anyhow::Result<Self> {
        let open = |name: &str| {
            let path = pin_dir.join(name);
            MapData::from_pin(&path).with_context(|| format!("cannot open {}", path.display()))
        };
        Ok(FlowTables {
            conntrack: open(maps::CONNTRACK)?,
            affinity: open(maps::AFFINITY)?,
        })
    }

    /// Count both maps now. `affinity_timeout_ns` is by service id.
    pub fn count(&self, affinity_timeout_ns: &HashMap<u32, u64>) -> anyhow::Result<FlowCounts> {
        let start = Instant::now();
        let now = monotonic_ns();
        let mut counts = FlowCounts::default();
        mapscan::scan::<FlowKey, Flow>(&self.conntrack, |key, flow| {
            counts.conntrack_entries += 1;
            if flow_active(key, flow, now) {
                *counts.active.entry(flow.backend_id).or_default() += 1;
            }
        })
        .context("counting CONNTRACK")?;
        mapscan::scan::<AffinityKey, Affinity>(&self.affinity, |key, a| {
            let Some(&timeout) = affinity_timeout_ns.get(&key.service_id) else {
                return;
            };
            if now.saturating_sub(a.last_seen_ns) < timeout {
                *counts.affinity.entry(key.service_id).or_default() += 1;
            }
        })
        .context("counting AFFINITY")?;
        counts.taken = Some(Instant::now());
        counts.took = start.elapsed();
        Ok(counts)
    }

    /// Every conntrack entry, for `balancer flows`.
    pub fn flows(&self, visit: impl FnMut(&FlowKey, &Flow)) -> anyhow::Result<()> {
        mapscan::scan::<FlowKey, Flow>(&self.conntrack, visit).context("reading CONNTRACK")?;
        Ok(())
    }
}

/// Recount into `shared` for as long as the task runs: every second, or
/// ten times as long as a count takes when the tables are huge, so counting
/// never takes more than a tenth of a CPU. `affinity_timeout_ns` is by
/// service id (services come from the config, so it does not change).
pub async fn run(
    tables: Arc<FlowTables>,
    shared: SharedCounts,
    affinity_timeout_ns: HashMap<u32, u64>,
) {
    let timeouts = Arc::new(affinity_timeout_ns);
    loop {
        let (tables2, timeouts2) = (Arc::clone(&tables), Arc::clone(&timeouts));
        let result = tokio::task::spawn_blocking(move || tables2.count(&timeouts2)).await;
        let period = match result {
            Ok(Ok(counts)) => {
                let period = (counts.took * 10).max(MIN_PERIOD);
                *shared.lock().unwrap_or_else(PoisonError::into_inner) = counts;
                period
            }
            Ok(Err(e)) => {
                tracing::warn!("recounting connections: {e:#}");
                MIN_PERIOD
            }
            Err(e) => {
                tracing::warn!("recounting connections: {e}");
                MIN_PERIOD
            }
        };
        tokio::time::sleep(period).await;
    }
}

#[cfg(test)]
mod tests {
    use balancer_common::types::{PROTO_UDP, TCP_FIN_FROM_BACKEND, TCP_FIN_FROM_CLIENT, TCP_RST};

    use super::*;

    const S: u64 = 1_000_000_000;

    /// Each bit in the field of the direction that sets it, as the kernel
    /// stores them (`Flow::client_tcp_state`).
    fn flow(proto: u8, tcp_state: u32, idle_s: u64, now: u64) -> (FlowKey, Flow) {
        let key = FlowKey {
            proto,
            ..FlowKey::default()
        };
        let last = now - idle_s * S;
        let client_tcp_state = tcp_state & TCP_FIN_FROM_CLIENT;
        let backend_tcp_state = (tcp_state & !TCP_FIN_FROM_CLIENT) as u8;
        (
            key,
            Flow {
                client_tcp_state,
                backend_tcp_state,
                last_seen_ns: last,
                created_ns: last,
                ..Flow::default()
            },
        )
    }

    #[test]
    fn what_counts_as_an_open_connection() {
        let now = 10_000 * S;
        let answered = TCP_BACKEND_ANSWERED;
        let cases = [
            (PROTO_TCP, answered, 1, true, "established"),
            (
                PROTO_TCP,
                answered,
                599,
                true,
                "established, idle under 10 min",
            ),
            (PROTO_TCP, answered, 601, false, "idle past 10 min"),
            (
                PROTO_TCP,
                answered | TCP_FIN_FROM_CLIENT,
                1,
                true,
                "half closed",
            ),
            (
                PROTO_TCP,
                answered | TCP_FIN_FROM_CLIENT | TCP_FIN_FROM_BACKEND,
                0,
                false,
                "closed both ways",
            ),
            (PROTO_TCP, answered | TCP_RST, 0, false, "reset"),
            (PROTO_TCP, 0, 1, true, "handshake in progress"),
            (PROTO_TCP, 0, 6, false, "a SYN the backend never answered"),
            (PROTO_UDP, 0, 59, true, "UDP seen in the last minute"),
            (PROTO_UDP, 0, 61, false, "UDP idle past a minute"),
        ];
        for (proto, state, idle, want, what) in cases {
            let (k, f) = flow(proto, state, idle, now);
            assert_eq!(flow_active(&k, &f, now), want, "{what}");
        }
    }
}
