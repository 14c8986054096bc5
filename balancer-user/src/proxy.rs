//! The L7 path: services whose client address comes from a proxy (PROXY
//! protocol, X-Forwarded-For) or whose affinity is the engine.io session id
//! (`ServiceConfig::terminates_in_daemon`). The kernel program passes their
//! packets to the stack (`SERVICE_TO_STACK`); here a tokio acceptor on each
//! VIP reads what it needs, picks the backend through the same table and
//! affinity map as the kernel, and splices the bytes.
//!
//! Layers, importing downwards only: `listen` (one acceptor per service)
//! → `conn` (one connection) → `route` (which backend), `splice` (moving
//! bytes), `header` and `http` (parsing, pure) and `stats` (counts).

mod conn;
pub mod header;
pub mod http;
mod listen;
pub mod route;
pub mod splice;
pub mod stats;

use std::sync::Arc;

pub use listen::{remove_local_routes, run};
use tokio::sync::watch;

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

/// What every connection task reads.
pub struct Shared {
    routes: watch::Receiver<Routes>,
    affinity: route::AffinityMap,
    stats: Arc<stats::ProxyStats>,
}

impl Shared {
    pub fn new(
        routes: watch::Receiver<Routes>,
        affinity: route::AffinityMap,
        stats: Arc<stats::ProxyStats>,
    ) -> Self {
        Shared {
            routes,
            affinity,
            stats,
        }
    }

    /// Service `name` as it is now; `None` once a reload removed it.
    fn service(&self, name: &str) -> Option<Arc<ServiceState>> {
        self.routes
            .borrow()
            .iter()
            .find(|s| s.config.name == name)
            .cloned()
    }
}
