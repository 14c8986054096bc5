//! The running daemon's state and every change to it: health transitions
//! and the operator's backend changes, each applied as one new Maglev table
//! swapped in atomically ([`DataPlane::write_service`]).
//!
//! A change is made on a copy of the service and written; only a write that
//! succeeded replaces the daemon's view, so a refused or failed change
//! leaves `status` as it was.

pub mod admin;
mod cluster;
mod reload;
mod requests;
mod snapshot;

use std::{collections::HashMap, net::SocketAddr, path::PathBuf, sync::Arc, time::SystemTime};

use anyhow::{Context, bail};
use tokio::sync::{mpsc::UnboundedSender, watch};
use tracing::info;

use crate::{
    accounting::{FlowTables, SharedCounts},
    announce::Announcer,
    cluster::{Cluster, Directory},
    config::{BackendConfig, Config, HealthCheckKind, MAX_WEIGHT},
    dataplane::DataPlane,
    health::{HealthChecker, HealthEvent, HealthHandle},
    ids::BackendIds,
    proxy::{self, stats::ProxyStats},
    state::{BackendState, ServiceState},
};

pub struct Daemon {
    dataplane: DataPlane,
    services: Vec<ServiceState>,
    ids: BackendIds,
    /// Health check tasks by backend id.
    checks: HashMap<u32, HealthHandle>,
    health_events: UnboundedSender<HealthEvent>,
    counts: SharedCounts,
    tables: Arc<FlowTables>,
    /// When this daemon started.
    started: SystemTime,
    /// Each backend's last state change, by backend id.
    changes: HashMap<u32, Change>,
    /// The file `reload` reads again and the config running now.
    source: ConfigSource,
    /// Affinity timeouts by service id, for the counting task; sent again
    /// when a reload changes them.
    timeouts: watch::Sender<HashMap<u32, u64>>,
    /// The VIP addresses for the routing daemon (`[announce]`), kept in
    /// line with the services after every change once `announce_ready`.
    announce: Option<Announcer>,
    /// With `[cluster] peers`, false until the first pull from a peer is
    /// done (`run`): until then nothing is announced, and `cluster
    /// leave|join` is refused.
    announce_ready: bool,
    /// The services as the cluster links name them; sent again whenever
    /// they change.
    directory: watch::Sender<Directory>,
    /// The links to the other gateways, with `[cluster] peers`.
    cluster: Option<Cluster>,
    /// Bumped by every backend change applied here; a peer's admin state
    /// of a higher version is adopted ([`crate::cluster::admin`]).
    admin_version: u64,
    /// Resumed at start with another backend set than the version stood
    /// for: the state is offered as one version lower until a change or a
    /// peer's state puts this gateway level again.
    admin_behind: bool,
    /// The daemon-terminated services, for their acceptors; sent again
    /// whenever they change.
    routes: watch::Sender<proxy::Routes>,
    /// What those services' connections counted.
    proxy_stats: Arc<ProxyStats>,
}

/// The config a daemon was started with, and where it came from.
pub struct ConfigSource {
    pub path: PathBuf,
    pub config: Config,
}

/// A backend's last state change, for `balancer_backend_last_change_seconds`
/// and the status page.
#[derive(Clone, Debug)]
struct Change {
    at: SystemTime,
    /// The failed check that took it down, when that was the change.
    down_reason: Option<String>,
}

impl Change {
    fn now() -> Self {
        Change {
            at: SystemTime::now(),
            down_reason: None,
        }
    }
}

impl Daemon {
    /// Take over a data plane whose services are written; start their
    /// health checks (each backend from the state it has now).
    pub fn new(
        dataplane: DataPlane,
        services: Vec<ServiceState>,
        ids: BackendIds,
        health_events: UnboundedSender<HealthEvent>,
        counts: SharedCounts,
        tables: Arc<FlowTables>,
        source: ConfigSource,
    ) -> Self {
        let mut daemon = Daemon {
            dataplane,
            services,
            ids,
            checks: HashMap::new(),
            health_events,
            counts,
            tables,
            started: SystemTime::now(),
            changes: HashMap::new(),
            source,
            timeouts: watch::Sender::new(HashMap::new()),
            announce: None,
            announce_ready: false,
            directory: watch::Sender::new(Directory::default()),
            cluster: None,
            admin_version: 0,
            admin_behind: false,
            routes: watch::Sender::new(Arc::default()),
            proxy_stats: Arc::default(),
        };
        daemon.resume_admin();
        daemon.timeouts.send_replace(daemon.affinity_timeouts());
        daemon.publish_services();
        let all: Vec<(usize, BackendState)> = daemon
            .services
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.backends.iter().map(move |b| (i, b.clone())))
            .collect();
        for (i, b) in all {
            daemon.start_check(i, &b);
            daemon.changes.insert(b.id, Change::now());
        }
        daemon
    }

    /// Keep the served VIPs announced through `announce` (`[announce]`):
    /// from now on if `ready` (the first sync runs here), else from
    /// [`Daemon::start_announcing`].
    pub fn announcing(mut self, announce: Option<Announcer>, ready: bool) -> Self {
        self.announce = announce;
        if ready {
            self.start_announcing();
        }
        self
    }

    /// Keep the served VIPs on the announce interface from now on.
    pub fn start_announcing(&mut self) {
        self.announce_ready = true;
        self.sync_announce();
    }

    /// Put the served VIPs on the announce interface and take the others
    /// off. A failure is logged, not returned: the data plane change that
    /// led here is made, and the next change tries again.
    fn sync_announce(&mut self) {
        if !self.announce_ready {
            return;
        }
        if let Some(a) = &mut self.announce
            && let Err(e) = a.sync(&self.services)
        {
            tracing::error!("{e:#}");
        }
    }

    pub fn services(&self) -> &[ServiceState] {
        &self.services
    }

    /// Affinity timeouts by service id, for counting fresh entries; the
    /// receiver sees them change with a reload.
    pub fn watch_affinity_timeouts(&self) -> watch::Receiver<HashMap<u32, u64>> {
        self.timeouts.subscribe()
    }

    /// The services as the cluster names them; the receiver sees every
    /// change.
    pub fn watch_directory(&self) -> watch::Receiver<Directory> {
        self.directory.subscribe()
    }

    /// The daemon-terminated services as they are now; the receiver sees
    /// every change.
    pub fn watch_routes(&self) -> watch::Receiver<proxy::Routes> {
        self.routes.subscribe()
    }

    pub fn proxy_stats(&self) -> Arc<ProxyStats> {
        Arc::clone(&self.proxy_stats)
    }

    /// Tell the cluster links and the acceptors what the services are now.
    fn publish_services(&self) {
        self.directory.send_replace(Directory::of(&self.services));
        self.routes.send_replace(proxy::routes(&self.services));
    }

    /// The running cluster links, for status and metrics.
    pub fn set_cluster(&mut self, cluster: Cluster) {
        self.cluster = Some(cluster);
    }

    fn affinity_timeouts(&self) -> HashMap<u32, u64> {
        self.services
            .iter()
            .map(|s| {
                (
                    s.id,
                    u64::try_from(s.config.affinity_timeout.as_nanos()).unwrap_or(u64::MAX),
                )
            })
            .collect()
    }

    fn start_check(&mut self, service: usize, b: &BackendState) {
        let s = &self.services[service];
        let handle = HealthChecker::spawn(
            s.config.name.clone(),
            b.address,
            s.config.health.clone(),
            b.up,
            self.health_events.clone(),
        );
        self.checks.insert(b.id, handle);
    }

    fn service_index(&self, name: &str) -> anyhow::Result<usize> {
        self.services
            .iter()
            .position(|s| s.config.name == name)
            .with_context(|| {
                let names: Vec<&str> = self
                    .services
                    .iter()
                    .map(|s| s.config.name.as_str())
                    .collect();
                format!("unknown service {name:?} (services: {})", names.join(", "))
            })
    }

    fn backend_index(&self, service: usize, address: SocketAddr) -> anyhow::Result<usize> {
        let s = &self.services[service];
        s.backends
            .iter()
            .position(|b| b.address == address)
            .with_context(|| format!("service {:?} has no backend {address}", s.config.name))
    }

    /// Write `next` as service `index`'s new state; on success it replaces
    /// the current one.
    fn commit(&mut self, index: usize, mut next: ServiceState) -> anyhow::Result<()> {
        // In service order, `next` in its place: BACKEND_VIPS lists VIPs in
        // that order, and an entry whose order changed would be rewritten.
        let services = self
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| if i == index { &next } else { s });
        self.dataplane
            .write_port_maps(services)
            .with_context(|| format!("service {}: writing the port maps", next.config.name))?;
        self.dataplane
            .write_service(&mut next)
            .with_context(|| format!("service {}: writing the new table", next.config.name))?;
        self.services[index] = next;
        self.sync_announce();
        self.publish_services();
        Ok(())
    }

    /// A health checker's transition.
    pub fn apply_health(&mut self, event: &HealthEvent) -> anyhow::Result<()> {
        let Ok(i) = self.service_index(&event.service) else {
            return Ok(());
        };
        let Ok(k) = self.backend_index(i, event.backend) else {
            return Ok(()); // removed since the check started
        };
        if self.services[i].backends[k].up == event.up {
            return Ok(());
        }
        let mut next = self.services[i].clone();
        next.backends[k].up = event.up;
        let id = next.backends[k].id;
        self.commit(i, next)?;
        // The check that tipped it is the latest: the checker records a
        // result before it reports the transition, and the next check is an
        // interval away.
        let down_reason = (!event.up)
            .then(|| self.checks.get(&id)?.stats().last_result())
            .flatten()
            .filter(|r| !r.success)
            .map(|r| r.reason);
        self.changes.insert(
            id,
            Change {
                down_reason,
                ..Change::now()
            },
        );
        Ok(())
    }

    /// `balancer backend add`. With health checks the backend starts down
    /// and takes clients once it passes `rise` checks: no client is sent to
    /// a server nobody has seen answer. Its `name` (the sid prefix) is
    /// pinned before the backend is, so a restart never finds it unnamed.
    pub fn add_backend(
        &mut self,
        service: &str,
        address: SocketAddr,
        weight: u32,
        name: Option<&str>,
    ) -> anyhow::Result<String> {
        let i = self.service_index(service)?;
        self.check_new_backend(i, address, weight, name)?;
        let s = &self.services[i];
        let checked = s.config.health.check != HealthCheckKind::None;
        let Some(id) = self.ids.allocate() else {
            bail!("no free backend id: all are in use")
        };
        let result = self
            .dataplane
            .reset_backend_stats(id)
            .and_then(|()| self.dataplane.write_backend_name(id, name))
            .and_then(|()| {
                let mut next = self.services[i].clone();
                let b = BackendState {
                    id,
                    address,
                    weight,
                    up: !checked,
                    draining: false,
                    runtime: true,
                    weight_set: false,
                    name: name.map(str::to_owned),
                };
                next.backends.push(b.clone());
                self.commit(i, next)?;
                Ok(b)
            });
        let b = match result {
            Ok(b) => b,
            Err(e) => {
                self.ids.release(id);
                return Err(e);
            }
        };
        self.start_check(i, &b);
        self.changes.insert(b.id, Change::now());
        info!(service, backend = %address, weight, name, id, "backend added");
        let named = name.map_or(String::new(), |n| format!(", name {n}"));
        Ok(if checked {
            format!(
                "added {address} to {service} (weight {weight}{named}); it takes clients once it passes {} health checks",
                self.services[i].config.health.rise
            )
        } else {
            format!("added {address} to {service} (weight {weight}{named})")
        })
    }

    /// Would `address` (of `weight`, named `name`) be accepted as a new
    /// backend of service `i`? The one-line reason if not.
    fn check_new_backend(
        &self,
        i: usize,
        address: SocketAddr,
        weight: u32,
        name: Option<&str>,
    ) -> anyhow::Result<()> {
        let s = &self.services[i];
        let mut check = s.config.clone();
        check.backends = s
            .backends
            .iter()
            .map(|b| BackendConfig {
                address: b.address,
                weight: b.weight,
                name: b.name.clone(),
            })
            .collect();
        check
            .check_new_backend(&BackendConfig {
                address,
                weight,
                name: name.map(str::to_owned),
            })
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if !self.ids.has_free() {
            bail!("no free backend id: all are in use");
        }
        Ok(())
    }

    /// Name runtime backend `address` of `service` `name`, as a peer's
    /// admin state has it (the peer's set is whole and was checked there,
    /// so the name is not checked against this gateway's half-adopted one).
    fn set_runtime_name(
        &mut self,
        service: &str,
        address: SocketAddr,
        name: Option<&str>,
    ) -> anyhow::Result<()> {
        let i = self.service_index(service)?;
        let k = self.backend_index(i, address)?;
        let id = self.services[i].backends[k].id;
        self.dataplane.write_backend_name(id, name)?;
        let mut next = self.services[i].clone();
        next.backends[k].name = name.map(str::to_owned);
        self.commit(i, next)?;
        info!(service, backend = %address, name, "backend named as a peer names it");
        Ok(())
    }

    /// `balancer backend remove`: out of the table, then its slot cleared,
    /// so its flows and affinities choose again on their next packet.
    pub fn remove_backend(&mut self, service: &str, address: SocketAddr) -> anyhow::Result<String> {
        let i = self.service_index(service)?;
        let k = self.backend_index(i, address)?;
        let mut next = self.services[i].clone();
        let removed = next.backends.remove(k);
        self.commit(i, next)?;
        self.dataplane.clear_backend(removed.id)?;
        self.ids.release(removed.id);
        if let Some(mut check) = self.checks.remove(&removed.id) {
            check.stop();
        }
        self.changes.remove(&removed.id);
        info!(service, backend = %address, "backend removed");
        Ok(format!(
            "removed {address} from {service}; its clients move on their next packet"
        ))
    }

    /// `balancer backend drain|undrain`.
    pub fn set_draining(
        &mut self,
        service: &str,
        address: SocketAddr,
        draining: bool,
    ) -> anyhow::Result<String> {
        let i = self.service_index(service)?;
        let k = self.backend_index(i, address)?;
        let verb = if draining { "draining" } else { "undrained" };
        if self.services[i].backends[k].draining == draining {
            return Ok(format!(
                "{address} in {service} is already {}",
                if draining { "draining" } else { "not draining" }
            ));
        }
        let mut next = self.services[i].clone();
        next.backends[k].draining = draining;
        let id = next.backends[k].id;
        self.commit(i, next)?;
        // Draining leaves up/down as it is, and why it went down with it.
        let down_reason = self.changes.remove(&id).and_then(|c| c.down_reason);
        self.changes.insert(
            id,
            Change {
                down_reason,
                ..Change::now()
            },
        );
        info!(service, backend = %address, "backend {verb}");
        Ok(if draining {
            format!("draining {address} in {service}: its clients stay, new clients go elsewhere")
        } else {
            format!("undrained {address} in {service}: it takes new clients again")
        })
    }

    /// `balancer backend set-weight`: the backend's share of the table
    /// follows `weight`. The table is built afresh from the new set
    /// ([`balancer_common::maglev::build`]), so some new clients of other
    /// backends move as well; clients with an affinity entry stay. Kept in
    /// the pinned entry, so a restart keeps it.
    pub fn set_weight(
        &mut self,
        service: &str,
        address: SocketAddr,
        weight: u32,
    ) -> anyhow::Result<String> {
        check_weight(weight)?;
        let i = self.service_index(service)?;
        let k = self.backend_index(i, address)?;
        let old = self.services[i].backends[k].weight;
        let mut next = self.services[i].clone();
        next.backends[k].weight = weight;
        next.backends[k].weight_set = true;
        self.commit(i, next)?;
        info!(service, backend = %address, old, weight, "backend weight set");
        Ok(format!(
            "weight of {address} in {service}: {old} -> {weight}; its share of new clients follows, known clients stay"
        ))
    }

    /// Remove the balancer's pins: the programs detach, the maps go with
    /// the daemon. Another tool's pins in the directory stay.
    pub fn detach(&mut self) -> anyhow::Result<crate::pin::Removed> {
        for check in self.checks.values_mut() {
            check.stop();
        }
        // Nothing forwards once detached: the routes go first.
        if let Some(a) = &mut self.announce {
            a.withdraw_all()?;
        }
        proxy::remove_local_routes(&self.services)?;
        crate::attach::remove_tc_filters();
        crate::pin::remove_ours(self.dataplane.pin_dir())
    }
}

/// A weight `set-weight` accepts, or the one-line reason.
fn check_weight(weight: u32) -> anyhow::Result<()> {
    if !(1..=MAX_WEIGHT).contains(&weight) {
        bail!(
            "weight {weight} is out of range (1..={MAX_WEIGHT}); to send a backend no new clients, drain it"
        );
    }
    Ok(())
}
