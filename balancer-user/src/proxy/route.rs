//! Which backend a daemon-terminated connection or request goes to: the
//! backend its engine.io session id names, else the client's, chosen as
//! the kernel chooses for the services it forwards (a fresh affinity
//! entry, else the Maglev slot), through the same `AFFINITY` map, so
//! `balancer lookup`, the affinity counts and cluster peers see one view.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::{Mutex, OnceLock, PoisonError},
};

use anyhow::Context;
use aya::maps::{HashMap, Map, MapData, MapError};
use balancer_common::{
    maps,
    types::{Affinity, AffinityEvent, AffinityKey},
};
use tokio::sync::mpsc;

use super::{http::sid_backend_name, stats::RoutedBy};
use crate::{accounting::monotonic_ns, config::AffinityMode, state::ServiceState};

/// A backend for one connection or request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    pub backend_id: u32,
    pub address: SocketAddr,
    pub routed_by: RoutedBy,
}

/// What a request's session id says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SidRoute {
    /// No session id: the handshake, or not engine.io.
    None,
    /// Its backend, up (draining included: its sessions stay).
    Backend(u32),
    /// A prefix that names no backend of the service: counted, and routed
    /// by client address.
    Unknown,
    /// Its backend is down: the session is gone with it, and the client
    /// goes by address like a new one.
    Down,
}

/// The backend `sid`'s prefix names.
pub fn by_sid(service: &ServiceState, sid: Option<&str>) -> SidRoute {
    let Some(sid) = sid else {
        return SidRoute::None;
    };
    let named = sid_backend_name(sid).and_then(|name| {
        service
            .backends
            .iter()
            .find(|b| b.name.as_deref() == Some(name))
    });
    match named {
        None => SidRoute::Unknown,
        Some(b) if b.up => SidRoute::Backend(b.id),
        Some(_) => SidRoute::Down,
    }
}

/// This gateway's `AFFINITY` map, shared by every connection task.
pub struct AffinityMap {
    map: Mutex<HashMap<MapData, AffinityKey, Affinity>>,
    /// Where the entries this daemon makes go to be sent to the cluster's
    /// peers at once, as the kernel reports the entries its confirmations
    /// make (`AFFINITY_EVENTS`); set when the gateway has peers.
    reports: OnceLock<mpsc::Sender<AffinityEvent>>,
}

impl AffinityMap {
    pub fn open(pin_dir: &Path) -> anyhow::Result<Self> {
        let path = pin_dir.join(maps::AFFINITY);
        let data =
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        let map = HashMap::try_from(Map::from_map_data(data)?)?;
        Ok(AffinityMap {
            map: Mutex::new(map),
            reports: OnceLock::new(),
        })
    }

    /// Send every entry [`AffinityMap::remember`] makes to `reports` too.
    pub fn report_to(&self, reports: mpsc::Sender<AffinityEvent>) {
        let _ = self.reports.set(reports);
    }

    /// The backend for `client` (its address, and port for four-tuple
    /// services): its affinity entry when fresh and its backend up, else
    /// its Maglev slot. `None` while no backend takes clients.
    pub fn by_client(&self, service: &ServiceState, client: SocketAddr) -> Option<u32> {
        if let Some(key) = affinity_key(service, client.ip()) {
            let entry = self
                .map
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&key, 0);
            if let Ok(a) = entry {
                let age =
                    std::time::Duration::from_nanos(monotonic_ns().saturating_sub(a.last_seen_ns));
                let fresh = age <= service.config.affinity_timeout;
                if fresh && service.backend_by_id(a.backend_id).is_some_and(|b| b.up) {
                    return Some(a.backend_id);
                }
            }
        }
        service.predict(client.ip(), client.port())
    }

    /// Record that `client` is on `backend_id` as of now, as the kernel
    /// does when a backend confirms a flow. Called once the backend
    /// accepted the connection. A map error is returned for the caller to
    /// log: the connection goes on regardless.
    pub fn remember(
        &self,
        service: &ServiceState,
        client: IpAddr,
        backend_id: u32,
    ) -> Result<(), MapError> {
        let Some(key) = affinity_key(service, client) else {
            return Ok(());
        };
        let value = Affinity {
            backend_id,
            _pad: 0,
            last_seen_ns: monotonic_ns(),
        };
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, value, 0)?;
        if let Some(reports) = self.reports.get() {
            // Full: the peers get it with the next re-announcement.
            let _ = reports.try_send(AffinityEvent {
                key,
                backend_id,
                _pad: 0,
                last_seen_ns: value.last_seen_ns,
            });
        }
        Ok(())
    }
}

/// The client's `AFFINITY` key; `None` for four-tuple services, which keep
/// no affinity.
fn affinity_key(service: &ServiceState, client: IpAddr) -> Option<AffinityKey> {
    if service.config.affinity == AffinityMode::FourTuple {
        return None;
    }
    let (client, family) = service.masked(client);
    Some(AffinityKey {
        service_id: service.id,
        family,
        _pad: [0; 3],
        client,
    })
}

/// The backend of a request: its sid's, else `by_client`'s. `None` while
/// no backend takes new clients and the sid names none that is up.
pub fn choose(
    service: &ServiceState,
    sid: SidRoute,
    by_client: impl FnOnce() -> Option<u32>,
) -> Option<Choice> {
    let (id, routed_by) = match sid {
        SidRoute::Backend(id) => (id, RoutedBy::Sid),
        SidRoute::None | SidRoute::Unknown | SidRoute::Down => (by_client()?, RoutedBy::Client),
    };
    let b = service.backend_by_id(id)?;
    Some(Choice {
        backend_id: id,
        address: b.address,
        routed_by,
    })
}
