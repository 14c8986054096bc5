//! A live reload: the services of a new config applied to the running data
//! plane with the planning a restart uses ([`adopt::plan`] on the maps as
//! they are now), so unchanged services and backends keep their ids, table
//! slots, flows and affinities.
//!
//! Everything that can refuse the config (the plan, the port maps) runs
//! before the first write: a refused reload changes nothing.

use std::{collections::HashMap, net::SocketAddr};

use anyhow::Context;
use tracing::info;

use super::Daemon;
use crate::{
    adopt::{self, Plan},
    config::{Config, HealthCheckKind},
    notify,
    port_maps::PortMaps,
    reload,
    state::ServiceState,
};

impl Daemon {
    /// What a reload with `config` would do, and the lines describing it.
    /// Writes nothing.
    pub fn plan_reload(&self, config: &Config) -> anyhow::Result<(Plan, Vec<String>)> {
        let pinned = self.dataplane.read_pinned()?;
        let mut plan = adopt::plan(config, &pinned)?;
        let running = self.running_backends();
        for s in &mut plan.services {
            // A backend new to a running daemon starts down when checked,
            // as with `backend add`: no client goes to a server nobody has
            // seen answer. (A restart starts every backend up, as nothing
            // would serve otherwise.)
            let checked = s.config.health.check != HealthCheckKind::None;
            for b in &mut s.backends {
                if running.get(&b.id) != Some(&b.address) {
                    b.up = !checked;
                }
            }
        }
        PortMaps::of(&plan.services)?;
        let changes = reload::changes(&self.services, &plan.services);
        Ok((plan, changes))
    }

    /// `balancer reload` and SIGHUP: read the daemon's config file again
    /// and apply it; the lines describing what changed. systemd hears
    /// RELOADING=1 before and READY=1 after, whatever the outcome.
    pub fn reload_from_file(&mut self) -> anyhow::Result<Vec<String>> {
        notify::reloading();
        let result = Config::from_file(&self.source.path)
            .context("reload refused")
            .and_then(|next| self.reload(next));
        notify::ready();
        if let Err(e) = &result {
            tracing::error!("{e:#}");
        }
        result
    }

    /// `balancer check --diff`: what a reload with the config `text` would
    /// change. Writes nothing.
    pub fn reload_diff(&self, text: &str) -> anyhow::Result<Vec<String>> {
        let refused = "a reload would be refused";
        let next: Config = text.parse().context(refused)?;
        reload::restart_only(&self.source.config, &next).context(refused)?;
        Ok(self.plan_reload(&next).context(refused)?.1)
    }

    /// Apply `next`'s services; the lines describing what changed.
    fn reload(&mut self, next: Config) -> anyhow::Result<Vec<String>> {
        reload::restart_only(&self.source.config, &next).context("reload refused")?;
        let (plan, changes) = self.plan_reload(&next).context("reload refused")?;
        self.apply(plan).context("reload failed part way")?;
        self.source.config = next;
        self.timeouts.send_replace(self.affinity_timeouts());
        self.publish_services();
        for line in &changes {
            info!("reload: {line}");
        }
        info!(changes = changes.len(), path = %self.source.path.display(), "reloaded");
        Ok(changes)
    }

    fn apply(&mut self, mut plan: Plan) -> anyhow::Result<()> {
        let running = self.running_backends();
        let fresh = |id: u32, address: SocketAddr| running.get(&id) != Some(&address);
        // The order `run` loads in: ports first (a reply of a backend not yet
        // written passes unrewritten), then each service's table swap, then
        // the VIPs and backend slots nobody uses any more.
        self.dataplane.write_port_maps(&plan.services)?;
        for service in &mut plan.services {
            for b in service.backends.iter().filter(|b| fresh(b.id, b.address)) {
                self.dataplane.reset_backend_stats(b.id)?;
            }
            self.dataplane.write_service(service)?;
        }
        for key in &plan.removed_services {
            self.dataplane.remove_service(key)?;
        }
        self.dataplane.write_fragment_services(&plan.services)?;
        for &id in &plan.freed_backends {
            self.dataplane.clear_backend(id)?;
        }
        let old = std::mem::replace(&mut self.services, plan.services);
        self.ids = plan.ids;
        self.restart_checks(&old);
        self.sync_announce();
        Ok(())
    }

    /// Backend id -> address, of the backends the daemon runs now.
    fn running_backends(&self) -> HashMap<u32, SocketAddr> {
        self.services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| (b.id, b.address)))
            .collect()
    }

    /// Keep the health check of every backend whose service name, address
    /// and health settings are unchanged (its rise/fall count carries on);
    /// stop the others and start checks for what is new.
    fn restart_checks(&mut self, old: &[ServiceState]) {
        let same = |old: &ServiceState, new: &ServiceState| {
            old.config.name == new.config.name && old.config.health == new.config.health
        };
        let mut kept = Vec::new();
        for (i, s) in self.services.iter().enumerate() {
            for b in &s.backends {
                let before = old.iter().find(|o| {
                    o.backends
                        .iter()
                        .any(|ob| ob.id == b.id && ob.address == b.address)
                });
                let keep = before.is_some_and(|o| same(o, s)) && self.checks.contains_key(&b.id);
                kept.push((i, b.clone(), keep));
            }
        }
        let mut checks = std::mem::take(&mut self.checks);
        for (_, b, keep) in &kept {
            if *keep && let Some(check) = checks.remove(&b.id) {
                self.checks.insert(b.id, check);
            }
        }
        for check in checks.values_mut() {
            check.stop();
        }
        for (i, b, keep) in kept {
            if !keep {
                self.start_check(i, &b);
            }
        }
    }
}
