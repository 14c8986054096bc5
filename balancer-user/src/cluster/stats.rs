//! What the cluster links count, and the status built from it
//! (`balancer cluster status`, the `balancer_cluster_*` metrics).

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::Instant,
};

use serde::{Deserialize, Serialize};

use super::wire::Reject;

/// "Not measured yet" in the `_us` fields.
const NONE: u64 = u64::MAX;

/// One peer's counters, shared by its outbound link and the connections
/// accepted from its address.
#[derive(Debug)]
pub struct PeerStats {
    connected: AtomicBool,
    last_message: Mutex<Option<Instant>>,
    rtt_us: AtomicU64,
    lag_us: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    inserted: AtomicU64,
    refreshed: AtomicU64,
    kept: AtomicU64,
    synced: AtomicU64,
    rejected: [AtomicU64; Reject::ALL.len()],
}

impl Default for PeerStats {
    fn default() -> Self {
        PeerStats {
            connected: AtomicBool::new(false),
            last_message: Mutex::new(None),
            rtt_us: AtomicU64::new(NONE),
            lag_us: AtomicU64::new(NONE),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            inserted: AtomicU64::new(0),
            refreshed: AtomicU64::new(0),
            kept: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            rejected: Default::default(),
        }
    }
}

/// What became of a received entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// None was here (or only an expired one): stored.
    Inserted,
    /// The same backend: its last use moved forward.
    Refreshed,
    /// The same backend, used here more recently: nothing to do.
    Current,
    /// Another backend, fresh: this gateway's choice stays.
    Kept,
    /// Older than the service's timeout: ignored.
    Expired,
}

impl PeerStats {
    pub fn set_connected(&self, up: bool) {
        self.connected.store(up, Relaxed);
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Relaxed)
    }

    /// A frame from the peer was authenticated.
    pub fn heard(&self) {
        *self
            .last_message
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }

    pub fn rtt(&self, us: u64) {
        self.rtt_us.store(us, Relaxed);
    }

    pub fn lag(&self, us: u64) {
        self.lag_us.store(us, Relaxed);
    }

    pub fn sent(&self, n: usize) {
        self.sent.fetch_add(n as u64, Relaxed);
    }

    pub fn received(&self, applied: Applied) {
        self.received.fetch_add(1, Relaxed);
        let counter = match applied {
            Applied::Inserted => &self.inserted,
            Applied::Refreshed => &self.refreshed,
            Applied::Kept => &self.kept,
            Applied::Current | Applied::Expired => return,
        };
        counter.fetch_add(1, Relaxed);
    }

    pub fn synced(&self, entries: u64) {
        self.synced.store(entries, Relaxed);
    }

    pub fn rejected(&self, reason: Reject) {
        self.rejected[reason.index()].fetch_add(1, Relaxed);
    }

    fn status(&self, address: &str) -> PeerStatus {
        let us = |a: &AtomicU64| match a.load(Relaxed) {
            NONE => None,
            v => Some(v / 1000),
        };
        let last = *self
            .last_message
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let rtt_ms = us(&self.rtt_us);
        PeerStatus {
            address: address.to_owned(),
            connected: self.connected.load(Relaxed),
            last_message_ms: last.map(|t| t.elapsed().as_millis() as u64),
            rtt_ms,
            lag_ms: us(&self.lag_us).map(|lag| lag + rtt_ms.unwrap_or(0) / 2),
            entries_sent: self.sent.load(Relaxed),
            entries_received: self.received.load(Relaxed),
            entries_inserted: self.inserted.load(Relaxed),
            entries_refreshed: self.refreshed.load(Relaxed),
            entries_kept: self.kept.load(Relaxed),
            last_sync_entries: self.synced.load(Relaxed),
            rejected: Reject::ALL
                .iter()
                .map(|r| (r.label().to_owned(), self.rejected[r.index()].load(Relaxed)))
                .collect(),
        }
    }
}

/// Every configured peer's counters, and those of connections from
/// addresses that are none of them.
#[derive(Debug, Default)]
pub struct Stats {
    peers: Vec<(SocketAddr, PeerStats)>,
    unknown: PeerStats,
}

/// The `peer` label of connections from unknown addresses.
pub const UNKNOWN_PEER: &str = "unknown";

impl Stats {
    pub fn new(peers: &[SocketAddr]) -> Self {
        Stats {
            peers: peers.iter().map(|p| (*p, PeerStats::default())).collect(),
            unknown: PeerStats::default(),
        }
    }

    pub fn peer(&self, address: SocketAddr) -> &PeerStats {
        self.peers
            .iter()
            .find(|(a, _)| *a == address)
            .map(|(_, s)| s)
            .expect("a configured peer")
    }

    /// The configured peer a connection from `ip` is: the first with that
    /// address.
    pub fn peer_at(&self, ip: IpAddr) -> Option<SocketAddr> {
        let ip = ip.to_canonical();
        self.peers
            .iter()
            .map(|(a, _)| *a)
            .find(|a| a.ip().to_canonical() == ip)
    }

    pub fn unknown(&self) -> &PeerStats {
        &self.unknown
    }

    pub fn peers(&self) -> Vec<PeerStatus> {
        let mut all: Vec<PeerStatus> = self
            .peers
            .iter()
            .map(|(a, s)| s.status(&a.to_string()))
            .collect();
        let unknown = self.unknown.status(UNKNOWN_PEER);
        if unknown.rejected.iter().any(|(_, n)| *n > 0) {
            all.push(unknown);
        }
        all
    }
}

/// `balancer cluster status --json`, and the `cluster` part of the status
/// snapshot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Where this gateway takes its peers' connections.
    pub listen: String,
    /// Whether this gateway has pulled its peers' entries (or found none
    /// to pull from in time) and may announce its VIPs.
    pub ready: bool,
    /// How it became ready, e.g. `synced 120 entries from 198.18.2.12:7946`.
    pub ready_reason: Option<String>,
    /// This gateway's admin version: bumped by every backend change it
    /// applies; a gateway behind a peer adopts that peer's backends.
    #[serde(default)]
    pub admin_version: u64,
    /// Restarted with other backends than the pinned version stood for:
    /// the state is offered as one version lower, so a peer holding the
    /// version is adopted.
    #[serde(default)]
    pub admin_behind: bool,
    pub peers: Vec<PeerStatus>,
    pub services: Vec<ClusterService>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The peer's `listen` address as configured, or `unknown` for the
    /// connections from addresses that are no peer's.
    pub address: String,
    /// This gateway's link to it is established (handshake done).
    pub connected: bool,
    /// How long ago the last authenticated message came from it.
    pub last_message_ms: Option<u64>,
    /// The link's round trip, from its pings.
    pub rtt_ms: Option<u64>,
    /// Replication lag estimate: from the kernel storing the newest entry
    /// sent to it to the write on the link, plus half the round trip.
    pub lag_ms: Option<u64>,
    pub entries_sent: u64,
    /// Authenticated, well-formed entries naming a service and backend
    /// this gateway has: `entries_inserted` were new here,
    /// `entries_refreshed` named the same backend, `entries_kept` named
    /// another (this gateway's choice stayed); the rest were current or
    /// expired already.
    pub entries_received: u64,
    pub entries_inserted: u64,
    pub entries_refreshed: u64,
    pub entries_kept: u64,
    /// Entries the last sync from it carried.
    pub last_sync_entries: u64,
    /// Messages (or connections) refused, by reason, every reason listed.
    pub rejected: Vec<(String, u64)>,
}

/// A service as the cluster compares it across gateways.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterService {
    pub name: String,
    pub vip: String,
    /// The service's Maglev table fingerprint, where the daemon computes
    /// one (`status --json`'s `table_fingerprint`): equal on every gateway
    /// with the same backend set.
    pub table_fingerprint: Option<String>,
}
