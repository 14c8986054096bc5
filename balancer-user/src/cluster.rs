//! Affinity shared between gateways (`[cluster]`). Gateways behind one
//! router that spreads connections by ECMP see one client's connections
//! arrive at several of them; each must send that client to the backend
//! the first one chose.
//!
//! - The kernel reports every affinity entry a confirmation makes
//!   (`AFFINITY_EVENTS`); the daemon sends it to every peer at once
//!   ([`table::Events`], [`link`]).
//! - Entries used in the last half of their service's timeout are sent
//!   again every quarter of the shortest timeout, so peers do not expire
//!   entries still in use ([`Directory::reannounce_period`]).
//! - A receiver stores an entry only where it has none, and refreshes one
//!   only where it names the same backend ([`table::decide`]).
//! - Every connection starts by pulling the peer's fresh entries, so a
//!   gateway that starts or was cut off catches up; [`Cluster::ready`]
//!   says when the first pull is done, which is when the gateway may
//!   announce its VIPs.
//! - Backend changes given on any gateway apply on every gateway at one
//!   agreed instant, and a gateway that was away adopts the admin state of
//!   a peer that is ahead ([`admin`]).
//! - Messages are framed, bounded and authenticated with the shared key
//!   ([`wire`]); anything else is refused, counted by reason, and changes
//!   nothing.

pub mod admin;
pub mod directory;
mod link;
pub mod secret;
pub mod stats;
pub mod table;
pub mod wire;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use balancer_common::types::AffinityEvent;
use tokio::{
    net::TcpListener,
    sync::{broadcast, mpsc, watch},
    time::{sleep, timeout},
};
use tracing::{info, warn};

pub use self::directory::Directory;
use self::{
    admin::{Admin, Change, LEAD, Outcome, Proposal, Scheduled},
    link::{Batch, Shared},
    stats::{ClusterStatus, Stats},
    table::{Events, Table},
    wire::MAX_ENTRIES,
};
use crate::{accounting::monotonic_ns, config};

/// A gateway that hears from no peer in this long is ready anyway: the
/// first gateway of a cluster has nobody to pull from.
pub const SYNC_WAIT: Duration = Duration::from_secs(10);

/// Whether this gateway has caught up with its peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    Waiting,
    /// Ready, and how it became so.
    Ready(String),
}

/// What `run` binds and reads before it touches the kernel.
pub struct Prepared {
    listener: TcpListener,
    listen: SocketAddr,
    secret: Vec<u8>,
    peers: Vec<SocketAddr>,
}

/// The running cluster links; cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    shared: Arc<Shared>,
    listen: SocketAddr,
    peers: Vec<SocketAddr>,
}

/// Read the key and bind the listener; `None` without peers.
pub async fn prepare(config: &config::Cluster) -> anyhow::Result<Option<Prepared>> {
    let peers = config.other_peers();
    let (Some(listen), Some(secret_file)) = (config.listen, &config.secret_file) else {
        return Ok(None);
    };
    if peers.is_empty() {
        return Ok(None);
    }
    let secret = secret::read(secret_file)?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cluster.listen: cannot bind {listen}"))?;
    Ok(Some(Prepared {
        listener,
        listen,
        secret,
        peers,
    }))
}

impl Prepared {
    /// Start the links, the readers of the kernel's reports and of
    /// `daemons_entries` (the entries the daemon makes for the services it
    /// terminates), and the re-announcements. `directory` follows the
    /// daemon's services; `admin` applies peers' backend changes.
    pub fn start(
        self,
        pin_dir: &Path,
        directory: watch::Receiver<Directory>,
        admin: Arc<dyn Admin>,
        daemons_entries: mpsc::Receiver<AffinityEvent>,
    ) -> anyhow::Result<Cluster> {
        let table = Arc::new(Mutex::new(Table::open(pin_dir)?));
        let events = Events::open(pin_dir)?;
        let shared = Arc::new(Shared {
            secret: self.secret,
            directory,
            table,
            stats: Stats::new(&self.peers),
            announce: broadcast::channel(4096).0,
            ready: watch::Sender::new(Readiness::Waiting),
            admin,
            outboxes: Default::default(),
            scheduled: Arc::new(Scheduled::default()),
        });
        tokio::spawn(link::accept_forever(Arc::clone(&shared), self.listener));
        for peer in &self.peers {
            tokio::spawn(link::connect_forever(Arc::clone(&shared), *peer));
        }
        tokio::spawn(report_new(Arc::clone(&shared), events));
        tokio::spawn(report_daemons(Arc::clone(&shared), daemons_entries));
        tokio::spawn(reannounce(Arc::clone(&shared)));
        info!(listen = %self.listen, peers = self.peers.len(), "cluster: linking to peers");
        Ok(Cluster {
            shared,
            listen: self.listen,
            peers: self.peers,
        })
    }
}

impl Cluster {
    /// Returns once this gateway has pulled a peer's entries, or after
    /// [`SYNC_WAIT`] if no peer answered; how it became ready. The
    /// gateway announces its VIPs only after this.
    pub async fn ready(&self) -> String {
        let mut rx = self.shared.ready.subscribe();
        let waited = timeout(SYNC_WAIT, rx.wait_for(|r| *r != Readiness::Waiting)).await;
        if !matches!(waited, Ok(Ok(_))) {
            self.shared.ready.send_if_modified(|r| {
                let waiting = *r == Readiness::Waiting;
                if waiting {
                    *r = Readiness::Ready(format!(
                        "no peer answered within {}s",
                        SYNC_WAIT.as_secs()
                    ));
                }
                waiting
            });
        }
        match &*self.shared.ready.borrow() {
            Readiness::Ready(why) => why.clone(),
            Readiness::Waiting => unreachable!("set above"),
        }
    }

    /// Send `change`, made at admin version `version`, to every linked
    /// peer to apply [`LEAD`] from now, and collect their answers
    /// ([`admin::propose`]).
    pub async fn propose(&self, change: Change, version: u64) -> Outcome {
        let proposal = Proposal {
            id: u64::from_ne_bytes(link::nonce()[..8].try_into().expect("8 bytes")),
            version,
            apply_at_ms: admin::realtime_ms() + LEAD.as_millis() as u64,
            change,
        };
        admin::propose(&self.shared.outboxes, &self.peers, proposal).await
    }

    /// Peers and readiness (services are the daemon's to add).
    pub fn status(&self) -> ClusterStatus {
        let (ready, ready_reason) = match &*self.shared.ready.borrow() {
            Readiness::Waiting => (false, None),
            Readiness::Ready(why) => (true, Some(why.clone())),
        };
        ClusterStatus {
            listen: self.listen.to_string(),
            ready,
            ready_reason,
            admin_version: 0,
            admin_behind: false,
            peers: self.shared.stats.peers(),
            services: Vec::new(),
        }
    }
}

/// Without peers: read the kernel's reports and drop them, so the ring
/// buffer never fills and `affinity_report_failed` counts only reports
/// lost while no daemon runs.
pub async fn discard_reports(pin_dir: PathBuf) {
    let mut events = match Events::open(&pin_dir) {
        Ok(events) => events,
        Err(e) => return warn!("cannot read AFFINITY_EVENTS: {e:#}"),
    };
    while events.next_batch(MAX_ENTRIES).await.is_ok() {}
}

/// The kernel's new entries, to every peer as they come.
async fn report_new(shared: Arc<Shared>, mut events: Events) {
    loop {
        let batch = match events.next_batch(MAX_ENTRIES).await {
            Ok(batch) => batch,
            Err(e) => {
                warn!("cluster: reading AFFINITY_EVENTS: {e:#}");
                sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        send_new(&shared, &batch);
    }
}

/// The entries the daemon itself makes (for the services it terminates:
/// `proxy::route::AffinityMap::remember`), sent as the kernel's are.
async fn report_daemons(shared: Arc<Shared>, mut made: mpsc::Receiver<AffinityEvent>) {
    let mut batch = Vec::new();
    while made.recv_many(&mut batch, MAX_ENTRIES).await > 0 {
        send_new(&shared, &batch);
        batch.clear();
    }
}

/// New entries to every linked peer.
fn send_new(shared: &Shared, batch: &[AffinityEvent]) {
    let now = monotonic_ns();
    let taken = Instant::now();
    let directory = shared.directory.borrow();
    let mut oldest = 0;
    let entries: Vec<_> = batch
        .iter()
        .filter_map(|e| {
            let age = now.saturating_sub(e.last_seen_ns);
            oldest = oldest.max(age);
            directory.outgoing(&e.key, e.backend_id, age)
        })
        .collect();
    drop(directory);
    if !entries.is_empty() {
        // No link up: nobody to send to, and each peer pulls what it
        // missed when it links again.
        let _ = shared.announce.send(Arc::new(Batch {
            entries,
            taken,
            oldest_ns: Some(oldest),
        }));
    }
}

/// The active entries, again, every [`Directory::reannounce_period`].
async fn reannounce(shared: Arc<Shared>) {
    loop {
        let period = shared.directory.borrow().reannounce_period();
        sleep(period).await;
        if shared.announce.receiver_count() == 0 {
            continue;
        }
        let table = Arc::clone(&shared.table);
        let directory = shared.directory.borrow().clone();
        let found = tokio::task::spawn_blocking(move || {
            table
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .fresh(&directory, 0.5)
        })
        .await;
        let entries = match found {
            Ok(Ok(entries)) => entries,
            Ok(Err(e)) => {
                warn!("cluster: re-announcing: {e:#}");
                continue;
            }
            Err(e) => {
                warn!("cluster: re-announcing: {e}");
                continue;
            }
        };
        let taken = Instant::now();
        for chunk in entries.chunks(MAX_ENTRIES) {
            let _ = shared.announce.send(Arc::new(Batch {
                entries: chunk.to_vec(),
                taken,
                oldest_ns: None,
            }));
        }
    }
}
