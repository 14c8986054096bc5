//! The daemon's state and the kernel's counters as one [`Snapshot`], for
//! `/metrics`, `/status`, `/` and `balancer status`.

use std::time::{SystemTime, UNIX_EPOCH};

use balancer_common::{counters::Counter, maps, types::BackendStats};

use super::Daemon;
use crate::{
    accounting,
    announce::Announcer,
    cluster::stats::{ClusterService, ClusterStatus},
    fingerprint,
    health::CheckResult,
    metrics::{BackendSnapshot, ServiceSnapshot, Snapshot},
    proxy::stats::ProxyStats,
    state::{BackendState, ServiceState},
    version,
};

impl Daemon {
    /// A map that cannot be read shows as zeros, and is logged once per
    /// snapshot and map (the first error).
    pub fn snapshot(&self) -> Snapshot {
        let counts = accounting::latest(&self.counts);
        let mut stats_error = None;
        let services = self
            .services
            .iter()
            .map(|s| ServiceSnapshot {
                name: s.config.name.clone(),
                vip: s.config.vip.to_string(),
                protocol: s.config.protocol.to_string(),
                affinity: s.config.affinity.to_string(),
                affinity_entries: counts.affinity.get(&s.id).copied().unwrap_or(0),
                table_fingerprint: fingerprint::table_fingerprint(s),
                proxy_bad_input: self.proxy_counts(s, |p| p.bad_inputs(&s.config.name)),
                proxy_requests: self.proxy_counts(s, |p| p.requests(&s.config.name)),
                proxy_pool: self.proxy_counts(s, |p| p.pool_events(&s.config.name)),
                backends: s
                    .backends
                    .iter()
                    .map(|b| self.backend_snapshot(b, &counts, &mut stats_error))
                    .collect(),
            })
            .collect();
        let mut counters_error = None;
        let (mut drops, mut events) = (Vec::new(), Vec::new());
        for c in Counter::ALL {
            let n = self.dataplane.counter(c).unwrap_or_else(|e| {
                counters_error.get_or_insert(e);
                0
            });
            match c.drop_reason() {
                Some(reason) => drops.push((reason.to_owned(), n)),
                None => events.push((c.name().to_owned(), n)),
            }
        }
        for (map, error) in [
            (maps::BACKEND_STATS, stats_error),
            (maps::COUNTERS, counters_error),
        ] {
            if let Some(e) = error {
                tracing::warn!(map, "metrics: cannot read the map, shown as 0: {e:#}");
            }
        }
        let cluster = self.cluster.as_ref().map(|c| {
            Box::new(ClusterStatus {
                services: self
                    .services
                    .iter()
                    .map(|s| ClusterService {
                        name: s.config.name.clone(),
                        vip: s.config.vip.to_string(),
                        table_fingerprint: Some(fingerprint::table_fingerprint(s)),
                    })
                    .collect(),
                admin_version: self.admin_version,
                admin_behind: self.admin_behind,
                ..c.status()
            })
        });
        Snapshot {
            services,
            cluster,
            conntrack_entries: counts.conntrack_entries,
            tables: self.dataplane.tables().into(),
            drops,
            events,
            generated_at: unix_seconds(SystemTime::now()),
            started_at: unix_seconds(self.started),
            version: version::VERSION.to_owned(),
            git: version::GIT.to_owned(),
            announce: self
                .announce
                .as_ref()
                .map(|a| Box::new(Announcer::snapshot(a))),
        }
    }

    /// `counts` of a daemon-terminated service; none for the others.
    fn proxy_counts(
        &self,
        s: &ServiceState,
        counts: impl FnOnce(&ProxyStats) -> Vec<(String, u64)>,
    ) -> Vec<(String, u64)> {
        if s.config.terminates_in_daemon() {
            counts(&self.proxy_stats)
        } else {
            Vec::new()
        }
    }

    fn backend_snapshot(
        &self,
        b: &BackendState,
        counts: &accounting::FlowCounts,
        error: &mut Option<anyhow::Error>,
    ) -> BackendSnapshot {
        let stats = self.dataplane.backend_stats(b.id).unwrap_or_else(|e| {
            error.get_or_insert(e);
            BackendStats::default()
        });
        // Connections the daemon made (daemon-terminated services; 0 for
        // the others) next to those the kernel forwarded.
        let proxied = self.proxy_stats.backend(b.id);
        let health = self.checks.get(&b.id).map(|h| h.stats());
        // A backend a change did not record (none should be) counts from
        // the start.
        let change = self.changes.get(&b.id);
        let last = health.as_ref().and_then(|h| h.last_result());
        // A backend found down at start has no transition to tell: its
        // latest failed check says why it stays down.
        let down_reason = change.and_then(|c| c.down_reason.clone()).or_else(|| {
            last.as_ref()
                .filter(|r| !r.success)
                .map(|r| r.reason.clone())
        });
        BackendSnapshot {
            address: b.address.to_string(),
            name: b.name.clone(),
            weight: b.weight,
            up: b.up,
            draining: b.draining,
            active_connections: counts.active.get(&b.id).copied().unwrap_or(0) + proxied.active,
            connections_total: stats.connections_total + proxied.connections_total,
            packets_in: stats.packets_in,
            packets_out: stats.packets_out,
            bytes_in: stats.bytes_in,
            bytes_out: stats.bytes_out,
            health_passed: health.as_ref().map_or(0, |h| h.passed()),
            health_failed: health.as_ref().map_or(0, |h| h.failed()),
            last_check: last.as_ref().map(describe),
            last_change: unix_seconds(change.map_or(self.started, |c| c.at)),
            down_reason: down_reason.filter(|_| !b.up),
        }
    }
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `"ok (200) 3 ms, 2s ago"`.
fn describe(r: &CheckResult) -> String {
    let ago = SystemTime::now().duration_since(r.at).unwrap_or_default();
    format!(
        "{} {} ms, {}s ago",
        r.reason,
        r.duration.as_millis(),
        ago.as_secs()
    )
}
