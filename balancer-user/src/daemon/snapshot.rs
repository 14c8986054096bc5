//! The daemon's state and the kernel's counters as one [`Snapshot`], for
//! `/metrics`, `/status`, `/` and `balancer status`.

use std::time::{SystemTime, UNIX_EPOCH};

use balancer_common::counters::Counter;

use super::Daemon;
use crate::{
    accounting,
    health::CheckResult,
    metrics::{BackendSnapshot, ServiceSnapshot, Snapshot},
    state::BackendState,
};

impl Daemon {
    pub fn snapshot(&self) -> Snapshot {
        let counts = accounting::latest(&self.counts);
        let services = self
            .services
            .iter()
            .map(|s| ServiceSnapshot {
                name: s.config.name.clone(),
                vip: s.config.vip.to_string(),
                protocol: s.config.protocol.to_string(),
                affinity: s.config.affinity.to_string(),
                affinity_entries: counts.affinity.get(&s.id).copied().unwrap_or(0),
                backends: s
                    .backends
                    .iter()
                    .map(|b| self.backend_snapshot(b, &counts))
                    .collect(),
            })
            .collect();
        let drops = Counter::ALL
            .iter()
            .filter_map(|&c| {
                Some((
                    c.drop_reason()?.to_owned(),
                    self.dataplane.counter(c).unwrap_or(0),
                ))
            })
            .collect();
        Snapshot {
            services,
            conntrack_entries: counts.conntrack_entries,
            tables: self.dataplane.tables().into(),
            drops,
            generated_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    fn backend_snapshot(
        &self,
        b: &BackendState,
        counts: &accounting::FlowCounts,
    ) -> BackendSnapshot {
        let stats = self.dataplane.backend_stats(b.id).unwrap_or_default();
        let health = self.checks.get(&b.id).map(|h| h.stats());
        BackendSnapshot {
            address: b.address.to_string(),
            weight: b.weight,
            up: b.up,
            draining: b.draining,
            active_connections: counts.active.get(&b.id).copied().unwrap_or(0),
            connections_total: stats.connections_total,
            packets_in: stats.packets_in,
            packets_out: stats.packets_out,
            bytes_in: stats.bytes_in,
            bytes_out: stats.bytes_out,
            health_passed: health.as_ref().map_or(0, |h| h.passed()),
            health_failed: health.as_ref().map_or(0, |h| h.failed()),
            last_check: health.and_then(|h| h.last_result()).map(|r| describe(&r)),
        }
    }
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
