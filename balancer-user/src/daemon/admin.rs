//! Backend changes across the cluster ([`crate::cluster::admin`]): the
//! daemon's side. A change asked of this gateway is checked here, proposed
//! to the peers, and applied at the agreed instant ([`propose`]); a peer's
//! change is checked and applied through [`Gateway`], which is also how a
//! gateway that was away adopts a peer's admin state.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use anyhow::bail;
use balancer_common::types::AdminRecord;
use tracing::{info, warn};

use super::{Daemon, check_weight, requests::backend_address};
use crate::{
    cluster::{
        Cluster,
        admin::{Admin, AdminBackend, AdminService, AdminState, Change, Op, until},
    },
    control::{Reply, Request, Response},
    oneline::escape_controls,
};

fn lock(daemon: &Mutex<Daemon>) -> MutexGuard<'_, Daemon> {
    daemon.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The backend change `request` asks for, if it is one.
pub fn change_of(request: &Request) -> anyhow::Result<Option<Change>> {
    let (service, address, op) = match request {
        Request::BackendAdd {
            service,
            address,
            weight,
            name,
        } => (
            service,
            address,
            Op::Add {
                weight: weight.unwrap_or(1),
                name: name.clone(),
            },
        ),
        Request::BackendRemove { service, address } => (service, address, Op::Remove),
        Request::BackendDrain { service, address } => (service, address, Op::Drain),
        Request::BackendUndrain { service, address } => (service, address, Op::Undrain),
        Request::BackendSetWeight {
            service,
            address,
            weight,
        } => (service, address, Op::SetWeight { weight: *weight }),
        _ => return Ok(None),
    };
    Ok(Some(Change {
        service: service.clone(),
        backend: backend_address(address)?,
        op,
    }))
}

/// `change`, asked of this gateway: checked here, sent to every linked
/// peer, and applied here at the instant they agreed on unless one of
/// them refused it. Called on a blocking thread; the daemon is not locked
/// while the peers answer.
pub fn propose(daemon: &Mutex<Daemon>, cluster: &Cluster, change: Change) -> Response {
    match propose_and_apply(daemon, cluster, &change) {
        Ok(message) => Response::Ok(Reply::Done { message }),
        Err(e) => Response::Error(escape_controls(&format!("{e:#}"))),
    }
}

fn propose_and_apply(
    daemon: &Mutex<Daemon>,
    cluster: &Cluster,
    change: &Change,
) -> anyhow::Result<String> {
    let version = {
        let d = lock(daemon);
        d.check_change(change)?;
        d.admin_version + 1
    };
    let outcome =
        tokio::runtime::Handle::current().block_on(cluster.propose(change.clone(), version));
    if !outcome.refused.is_empty() {
        let refused: Vec<String> = outcome
            .refused
            .iter()
            .map(|(peer, reason)| format!("{peer}: {reason}"))
            .collect();
        bail!(
            "refused by peer {}; nothing changed on any gateway",
            refused.join("; ")
        );
    }
    std::thread::sleep(until(outcome.apply_at_ms));
    let done = lock(daemon).apply_change(change, version)?;
    Ok(format!("{done}; {}", outcome.summary()))
}

impl Daemon {
    /// Would this gateway apply `change` now?
    fn check_change(&self, change: &Change) -> anyhow::Result<()> {
        let i = self.service_index(&change.service)?;
        match &change.op {
            Op::Add { weight, name } => {
                self.check_new_backend(i, change.backend, *weight, name.as_deref())
            }
            Op::SetWeight { weight } => {
                check_weight(*weight)?;
                self.backend_index(i, change.backend).map(drop)
            }
            Op::Remove | Op::Drain | Op::Undrain => self.backend_index(i, change.backend).map(drop),
        }
    }

    /// Apply `change`, made at admin version `version`. An add of a
    /// backend that is there, or a removal of one that is not, is in
    /// effect already (a peer's state adopted meanwhile may hold it).
    fn apply_change(&mut self, change: &Change, version: u64) -> anyhow::Result<String> {
        let (service, address) = (change.service.as_str(), change.backend);
        let i = self.service_index(service)?;
        let present = self.services[i].backend(address).is_some();
        let done = match &change.op {
            Op::Add { .. } if present => format!("{address} is in {service} already"),
            Op::Add { weight, name } => {
                self.add_backend(service, address, *weight, name.as_deref())?
            }
            Op::Remove if !present => format!("{address} is not in {service} already"),
            Op::Remove => self.remove_backend(service, address)?,
            Op::Drain => self.set_draining(service, address, true)?,
            Op::Undrain => self.set_draining(service, address, false)?,
            Op::SetWeight { weight } => self.set_weight(service, address, *weight)?,
        };
        // A change older than this gateway's version leaves it as it was
        // (and behind, if it was: its set is still not that version's).
        if version > self.admin_version {
            self.admin_version = version;
            self.admin_behind = false;
            self.pin_admin();
        }
        Ok(done)
    }

    /// The version this gateway's state is offered at: one lower while it
    /// is behind, so that a peer holding the version wins.
    fn offered_version(&self) -> u64 {
        self.admin_version - u64::from(self.admin_behind)
    }

    /// Take up the admin version the previous daemon pinned: as it was if
    /// the backends are the set it stood for, else behind.
    pub(super) fn resume_admin(&mut self) {
        let record = match self.dataplane.admin_record() {
            Ok(record) => record,
            Err(e) => {
                warn!("cluster: the pinned admin version is unreadable, starting from 0: {e:#}");
                return;
            }
        };
        if record.version == 0 {
            return;
        }
        self.admin_version = record.version;
        self.admin_behind = record.fingerprint != self.admin_state().set_fingerprint();
        if self.admin_behind {
            warn!(
                version = record.version,
                "cluster: resumed the admin version, but the backends differ from the set it \
                 stood for; a peer's state of that version will be adopted"
            );
        } else {
            info!(
                version = record.version,
                "cluster: resumed the admin version"
            );
        }
    }

    /// Pin the version and the set it stands for now. A failure is
    /// logged: the change is made, and the next one writes again.
    fn pin_admin(&mut self) {
        let record = AdminRecord {
            version: self.admin_version,
            fingerprint: self.admin_state().set_fingerprint(),
        };
        if let Err(e) = self.dataplane.write_admin_record(record) {
            warn!("cluster: the admin version is not pinned, a restart starts behind: {e:#}");
        }
    }

    fn admin_state(&self) -> AdminState {
        AdminState {
            version: self.offered_version(),
            services: self
                .services
                .iter()
                .map(|s| AdminService {
                    name: s.config.name.clone(),
                    backends: s
                        .backends
                        .iter()
                        .map(|b| AdminBackend {
                            address: b.address,
                            weight: b.weight,
                            draining: b.draining,
                            name: b.name.clone(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// Make every service named in `state` have its backends, weights,
    /// drains and runtime backends' names, if `state` is of a higher
    /// version than this gateway's. A backend added here starts as
    /// `backend add` starts one; health is each gateway's own. A service
    /// this gateway lacks is skipped.
    fn adopt_admin(&mut self, state: &AdminState) -> anyhow::Result<Option<String>> {
        if state.version <= self.offered_version() {
            return Ok(None);
        }
        let mut done = Vec::new();
        for target in &state.services {
            let Ok(i) = self.service_index(&target.name) else {
                warn!(
                    service = target.name,
                    "cluster: a peer's service is not here; skipped"
                );
                continue;
            };
            let name = target.name.as_str();
            let want: HashMap<SocketAddr, &AdminBackend> =
                target.backends.iter().map(|b| (b.address, b)).collect();
            let extra: Vec<SocketAddr> = self.services[i]
                .backends
                .iter()
                .map(|b| b.address)
                .filter(|a| !want.contains_key(a))
                .collect();
            for address in extra {
                self.remove_backend(name, address)?;
                done.push(format!("{name}: -{address}"));
            }
            for b in &target.backends {
                let Some(have) = self.services[i].backend(b.address).cloned() else {
                    self.add_backend(name, b.address, b.weight, b.name.as_deref())?;
                    done.push(format!("{name}: +{} (weight {})", b.address, b.weight));
                    if b.draining {
                        self.set_draining(name, b.address, true)?;
                        done.push(format!("{name}: {} draining", b.address));
                    }
                    continue;
                };
                if have.weight != b.weight {
                    self.set_weight(name, b.address, b.weight)?;
                    done.push(format!("{name}: {} weight {}", b.address, b.weight));
                }
                // A config backend's name is the config's: a peer that
                // names it otherwise has another config.
                if have.name != b.name && !have.runtime {
                    warn!(
                        service = name,
                        backend = %b.address,
                        "cluster: a peer names a config backend otherwise; the config's name is kept"
                    );
                } else if have.name != b.name {
                    self.set_runtime_name(name, b.address, b.name.as_deref())?;
                    done.push(format!(
                        "{name}: {} named {}",
                        b.address,
                        b.name.as_deref().unwrap_or("(none)")
                    ));
                }
                if have.draining != b.draining {
                    self.set_draining(name, b.address, b.draining)?;
                    let verb = if b.draining { "draining" } else { "undrained" };
                    done.push(format!("{name}: {} {verb}", b.address));
                }
            }
        }
        self.admin_version = state.version;
        self.admin_behind = false;
        self.pin_admin();
        info!(version = state.version, "adopted a peer's admin state");
        Ok(Some(if done.is_empty() {
            "the same backends already".to_owned()
        } else {
            done.join(", ")
        }))
    }
}

/// The daemon as the cluster links see it.
pub struct Gateway(pub Arc<Mutex<Daemon>>);

impl Admin for Gateway {
    fn check(&self, change: &Change) -> Result<(), String> {
        lock(&self.0)
            .check_change(change)
            .map_err(|e| escape_controls(&format!("{e:#}")))
    }

    fn apply(&self, change: &Change, version: u64) -> anyhow::Result<String> {
        lock(&self.0).apply_change(change, version)
    }

    fn state(&self) -> AdminState {
        lock(&self.0).admin_state()
    }

    fn adopt(&self, state: &AdminState) -> anyhow::Result<Option<String>> {
        lock(&self.0).adopt_admin(state)
    }
}
