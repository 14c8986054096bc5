//! The L7 path: services whose client address comes from a proxy (PROXY
//! protocol, X-Forwarded-For) or whose affinity is the engine.io session id
//! (`ServiceConfig::terminates_in_daemon`). The kernel program passes their
//! packets to the stack (`SERVICE_TO_STACK`); here a tokio acceptor on each
//! VIP reads what it needs, picks the backend through the same table and
//! affinity map as the kernel, and splices the bytes.
//!
//! Layers, importing downwards only: `listen` (one acceptor per service)
//! → `conn` (one connection, on one of the `workers` threads) → `pool`
//! (idle backend connections, shared by a thread's connections) →
//! `backend` (one backend connection),
//! `route` (which backend), `splice` (moving bytes), `header` and `http`
//! (parsing, pure), `stats` (counts) and `handover` (what an in-place
//! restart carries over).

mod backend;
mod conn;
pub mod handover;
pub mod header;
pub mod http;
mod listen;
mod pool;
pub mod route;
pub mod splice;
pub mod stats;
mod workers;

use std::{
    os::fd::OwnedFd,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
};

use balancer_common::types::AffinityEvent;
pub use conn::resume;
use handover::{Handover, PARK_WAIT, ParkedConn, ParkedListener};
pub use listen::remove_local_routes;
use tokio::sync::{mpsc, watch};

use crate::state::ServiceState;

/// The daemon-terminated services as the daemon has them now; sent again
/// after every change (a health transition, a backend added, a reload).
pub type Routes = Arc<Vec<Arc<ServiceState>>>;

/// The daemon-terminated services among `services`, as [`Routes`].
pub fn routes(services: &[ServiceState]) -> Routes {
    Arc::new(
        services
            .iter()
            .filter(|s| s.config.terminates_in_daemon())
            .map(|s| Arc::new(s.clone()))
            .collect(),
    )
}

/// Accept on the daemon-terminated services' VIPs (`inherited`: the
/// listening sockets a previous process handed over) until the services'
/// sender is gone or the acceptors park, and meanwhile close the backend
/// connections idle too long in the pool.
pub async fn run(shared: Arc<Shared>, inherited: Vec<ParkedListener<OwnedFd>>) {
    tokio::select! {
        () = listen::run(Arc::clone(&shared), inherited) => {}
        () = pool::sweep_every(&shared.pool) => {}
    }
}

/// What every connection task reads.
pub struct Shared {
    routes: watch::Receiver<Routes>,
    affinity: route::AffinityMap,
    stats: Arc<stats::ProxyStats>,
    pool: pool::Pool,
    /// True once connections and acceptors are to park (a restart in
    /// place).
    parking: watch::Sender<bool>,
    /// Connection tasks and acceptors running; both reach 0 once all have
    /// parked.
    live: AtomicUsize,
    acceptors: AtomicUsize,
    /// What they put aside.
    parked: Mutex<Handover<OwnedFd>>,
    /// The threads connections run on.
    workers: workers::Workers,
}

impl Shared {
    /// With `threads` proxy threads (the `workers` module), or one per CPU.
    pub fn new(
        routes: watch::Receiver<Routes>,
        affinity: route::AffinityMap,
        stats: Arc<stats::ProxyStats>,
        threads: Option<u16>,
    ) -> std::io::Result<Self> {
        let workers = match threads {
            Some(n) => workers::Workers::start(n.into())?,
            None => workers::Workers::per_cpu()?,
        };
        Ok(Shared {
            routes,
            affinity,
            stats,
            pool: pool::Pool::new(workers.len()),
            parking: watch::Sender::new(false),
            live: AtomicUsize::new(0),
            acceptors: AtomicUsize::new(0),
            parked: Mutex::default(),
            workers,
        })
    }

    fn park_connection(&self, conn: ParkedConn<OwnedFd>) {
        self.parked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .connections
            .push(conn);
    }

    fn park_listener(&self, listener: ParkedListener<OwnedFd>) {
        self.parked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .listeners
            .push(listener);
    }

    /// Ask every acceptor and connection to park, and take what they put
    /// aside once all have, or after `PARK_WAIT` (a connection still
    /// inside a body then is left behind: it closes with this process).
    pub async fn park_all(&self) -> Handover<OwnedFd> {
        self.parking.send_replace(true);
        let started = tokio::time::Instant::now();
        while self.live.load(Ordering::SeqCst) + self.acceptors.load(Ordering::SeqCst) > 0
            && started.elapsed() < PARK_WAIT
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let left = self.live.load(Ordering::SeqCst);
        if left > 0 {
            tracing::warn!(
                connections = left,
                "not parked in time (a body in flight): they close with this process"
            );
        }
        // Idle backend connections hold no client's state: closed here,
        // the next process opens its own.
        self.pool.clear();
        std::mem::take(&mut *self.parked.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Service `name` as it is now; `None` once a reload removed it.
    /// Send the affinity entries connections make to `reports` too (the
    /// cluster's peers).
    pub fn report_affinity_to(&self, reports: mpsc::Sender<AffinityEvent>) {
        self.affinity.report_to(reports);
    }

    fn service(&self, name: &str) -> Option<Arc<ServiceState>> {
        self.routes
            .borrow()
            .iter()
            .find(|s| s.config.name == name)
            .cloned()
    }
}

/// Counts a connection task or an acceptor as running (in
/// `Shared::live` or `Shared::acceptors`) until dropped. Made before the
/// task is spawned, so a restart in place never misses one that has not
/// started yet.
pub(crate) struct Running {
    shared: Arc<Shared>,
    acceptor: bool,
}

impl Running {
    fn counter(&self) -> &AtomicUsize {
        if self.acceptor {
            &self.shared.acceptors
        } else {
            &self.shared.live
        }
    }

    fn connection(shared: &Arc<Shared>) -> Self {
        Running::new(shared, false)
    }

    fn acceptor(shared: &Arc<Shared>) -> Self {
        Running::new(shared, true)
    }

    fn new(shared: &Arc<Shared>, acceptor: bool) -> Self {
        let running = Running {
            shared: Arc::clone(shared),
            acceptor,
        };
        running.counter().fetch_add(1, Ordering::SeqCst);
        running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.counter().fetch_sub(1, Ordering::SeqCst);
    }
}
