//! Metrics: a plain [`Snapshot`] that the daemon fills from the kernel maps
//! and the health checker, its Prometheus exposition ([`render_prometheus`]),
//! and the HTTP endpoint ([`bind`], [`serve`]) that serves it as
//! `GET /metrics`, as JSON at `GET /status`, and as a human page at `GET /`.
//!
//! The series are the DESIGN.md contract, names, types and labels alike.
//! The values come from the kernel, so every scrape builds a fresh
//! [`Registry`] whose one collector writes the snapshot's values as const
//! counters and gauges, in the snapshot's order.

mod http;
mod page;

use std::fmt;

use prometheus_client::{
    collector::Collector,
    encoding::{
        DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder,
        text::{encode, encode_registry},
    },
    metrics::{MetricType, TypedMetric, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use serde::{Deserialize, Serialize};

pub use self::{
    http::{SnapshotSource, bind, serve},
    page::render_html,
};
use crate::{
    cluster::stats::{ClusterStatus, UNKNOWN_PEER},
    config::tables::TablesMemory,
};

/// `Content-Type` of [`render_prometheus`]'s output (prometheus-client's text
/// encoder writes OpenMetrics 1.0).
pub const PROMETHEUS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `Content-Type` of [`render_prometheus_text`]'s output.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The snapshot in the classic Prometheus text format (0.0.4), for clients
/// that do not ask for OpenMetrics (`curl`, `promtool check metrics`).
///
/// prometheus-client writes OpenMetrics; the classic format differs in a
/// counter's family name (`x_total` like its sample, where OpenMetrics
/// names the family `x`) and in having no `# EOF`. The collector writes
/// counters as [`TextCounter`]s and the registry is encoded without the EOF
/// marker.
pub fn render_prometheus_text(s: &Snapshot) -> String {
    render(s, Format::Text)
}

/// Everything the metrics endpoint shows, read at one moment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub services: Vec<ServiceSnapshot>,
    /// Entries in the connection-tracking map.
    pub conntrack_entries: u64,
    /// The sizes of the conntrack and affinity maps and their memory.
    #[serde(default)]
    pub tables: TablesMemory,
    /// Packets the kernel program dropped, by reason.
    pub drops: Vec<(String, u64)>,
    /// Every other kernel counter (packets passed or forwarded by path,
    /// failed map inserts), by its name.
    #[serde(default)]
    pub events: Vec<(String, u64)>,
    /// When the snapshot was taken, in seconds since the Unix epoch.
    pub generated_at: u64,
    /// When the daemon started, in seconds since the Unix epoch.
    #[serde(default)]
    pub started_at: u64,
    /// The daemon's package version ([`crate::version::VERSION`]).
    #[serde(default)]
    pub version: String,
    /// The git revision it was built from ([`crate::version::GIT`]).
    #[serde(default)]
    pub git: String,
    /// VIP announcement, with `[announce]` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<Box<AnnounceSnapshot>>,
    /// The links to the other gateways, with `[cluster] peers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Box<ClusterStatus>>,
}

/// `[announce]`: where VIPs are announced and which are.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AnnounceSnapshot {
    /// `[announce] interface`.
    pub interface: String,
    /// Left the cluster (`balancer cluster leave`): nothing is announced.
    pub left: bool,
    /// Each VIP address and whether it is on the interface now.
    pub vips: Vec<(String, bool)>,
}

/// One configured service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceSnapshot {
    pub name: String,
    /// `ADDR:PORT` of the virtual IP.
    pub vip: String,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// The affinity mode, as written in the configuration.
    pub affinity: String,
    /// Entries in this service's affinity (sticky-session) table.
    pub affinity_entries: u64,
    /// 16 hex digits hashing what decides a new client's backend: the live
    /// Maglev table as backend addresses, its size and the flow hash's
    /// inputs ([`crate::fingerprint`]). Gateways with equal fingerprints
    /// pick alike.
    #[serde(default)]
    pub table_fingerprint: String,
    /// Daemon-terminated services: bad input by reason (every reason, 0
    /// included); empty for the others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxy_bad_input: Vec<(String, u64)>,
    /// Daemon-terminated services: requests (or connections) by what
    /// routed them, `sid` or `client`; empty for the others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxy_requests: Vec<(String, u64)>,
    /// Daemon-terminated services: requests that went on a pooled backend
    /// connection (`reused`), and those sent again on a new one
    /// (`retried`); empty for the others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxy_pool: Vec<(String, u64)>,
    pub backends: Vec<BackendSnapshot>,
}

/// One backend of a service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendSnapshot {
    /// `ADDR:PORT`.
    pub address: String,
    /// The config's `name`, or the one `backend add --name` gave it: the
    /// prefix of the session ids it mints (`affinity = "sid"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub weight: u32,
    pub up: bool,
    pub draining: bool,
    pub active_connections: u64,
    pub connections_total: u64,
    /// Client → backend.
    pub packets_in: u64,
    /// Backend → client.
    pub packets_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub health_passed: u64,
    pub health_failed: u64,
    /// The last health check in words, e.g. `"ok (200) 3 ms, 2s ago"`.
    pub last_check: Option<String>,
    /// When the backend last went up, down, drained or undrained (or was
    /// added, or the daemon started), in seconds since the Unix epoch.
    #[serde(default)]
    pub last_change: u64,
    /// Why a backend that is down went down: the failed health check that
    /// tipped it, e.g. `"connection refused"`. `None` while it is up, and
    /// for a backend that has not been up yet.
    #[serde(default)]
    pub down_reason: Option<String>,
}

/// The snapshot as Prometheus (OpenMetrics) text, served with
/// [`PROMETHEUS_CONTENT_TYPE`]. Series come in the snapshot's order.
pub fn render_prometheus(s: &Snapshot) -> String {
    render(s, Format::OpenMetrics)
}

/// The two expositions: they differ only in how a counter is written.
#[derive(Clone, Copy, Debug)]
enum Format {
    OpenMetrics,
    Text,
}

fn render(s: &Snapshot, format: Format) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector {
        snapshot: s.clone(),
        format,
    }));
    let mut out = String::new();
    match format {
        Format::OpenMetrics => encode(&mut out, &registry),
        Format::Text => encode_registry(&mut out, &registry),
    }
    .expect("writing to a String cannot fail");
    out
}

/// Encodes one snapshot as the contract's series, values set directly.
#[derive(Debug)]
struct SnapshotCollector {
    snapshot: Snapshot,
    format: Format,
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let s = &self.snapshot;
        let format = self.format;
        let backends = || {
            s.services
                .iter()
                .flat_map(|svc| svc.backends.iter().map(move |b| (svc.name.as_str(), b)))
        };
        family(
            &mut enc,
            "balancer_backend_up",
            "Whether the backend is up (1) or down (0)",
            backends().map(|(svc, b)| (sb(svc, b), ConstGauge::new(u64::from(b.up)))),
        )?;
        family(
            &mut enc,
            "balancer_backend_draining",
            "Whether the backend is draining: no new sessions, existing ones kept (1) or not (0)",
            backends().map(|(svc, b)| (sb(svc, b), ConstGauge::new(u64::from(b.draining)))),
        )?;
        family(
            &mut enc,
            "balancer_backend_active_connections",
            "Open connections to the backend: not closed by FIN from both sides or RST, and not idle past the timeout (recounted from conntrack)",
            backends().map(|(svc, b)| (sb(svc, b), ConstGauge::new(b.active_connections))),
        )?;
        counters(
            &mut enc,
            format,
            "balancer_backend_connections_total",
            "Connections sent to the backend",
            backends().map(|(svc, b)| (sb(svc, b), b.connections_total)),
        )?;
        counters(
            &mut enc,
            format,
            "balancer_backend_packets_total",
            "Packets for the backend; direction in = client to backend, out = backend to client",
            backends().flat_map(|(svc, b)| directed(svc, b, |b| (b.packets_in, b.packets_out))),
        )?;
        counters(
            &mut enc,
            format,
            "balancer_backend_bytes_total",
            "Bytes for the backend; direction in = client to backend, out = backend to client",
            backends().flat_map(|(svc, b)| directed(svc, b, |b| (b.bytes_in, b.bytes_out))),
        )?;
        family(
            &mut enc,
            "balancer_affinity_entries",
            "Entries in the service's session-affinity table",
            s.services.iter().map(|svc| {
                (
                    [("service", svc.name.as_str())],
                    ConstGauge::new(svc.affinity_entries),
                )
            }),
        )?;
        let conntrack = ConstGauge::new(s.conntrack_entries);
        conntrack.encode(enc.encode_descriptor(
            "balancer_conntrack_entries",
            "Entries in the connection-tracking table",
            None,
            conntrack.metric_type(),
        )?)?;
        counters(
            &mut enc,
            format,
            "balancer_packets_dropped_total",
            "Packets dropped by the kernel program, by reason",
            s.drops
                .iter()
                .map(|(reason, n)| ([("reason", reason.as_str())], *n)),
        )?;
        counters(
            &mut enc,
            format,
            "balancer_kernel_events_total",
            "What the kernel program did besides dropping: packets forwarded or passed, by path, and failed map inserts",
            s.events
                .iter()
                .map(|(event, n)| ([("event", event.as_str())], *n)),
        )?;
        family(
            &mut enc,
            "balancer_backend_last_change_seconds",
            "When the backend last went up, down, drained or undrained, or was added or found at start (Unix time)",
            backends().map(|(svc, b)| (sb(svc, b), ConstGauge::new(b.last_change))),
        )?;
        family(
            &mut enc,
            "balancer_table_capacity",
            "Entries the kernel table holds at most (conntrack: balancer_conntrack_entries, affinity: the sum of balancer_affinity_entries); the oldest are evicted beyond it",
            [
                ("conntrack", s.tables.flows.entries),
                ("affinity", s.tables.affinity.entries),
            ]
            .map(|(table, n)| ([("table", table)], ConstGauge::new(u64::from(n)))),
        )?;
        family(
            &mut enc,
            "balancer_build_info",
            "The running daemon's version and git revision; always 1",
            [(
                [("version", s.version.as_str()), ("git", s.git.as_str())],
                ConstGauge::new(1u64),
            )],
        )?;
        family(
            &mut enc,
            "balancer_vip_announced",
            "Whether the VIP is an address on [announce] interface, for the routing daemon to export (1), or withdrawn (0)",
            s.announce.iter().flat_map(|a| {
                a.vips
                    .iter()
                    .map(|(vip, on)| ([("vip", vip.as_str())], ConstGauge::new(u64::from(*on))))
            }),
        )?;
        counters(
            &mut enc,
            format,
            "balancer_health_checks_total",
            "Health checks of the backend, by result",
            backends().flat_map(|(svc, b)| {
                let address = b.address.as_str();
                [("passed", b.health_passed), ("failed", b.health_failed)].map(|(result, n)| {
                    (
                        [("service", svc), ("backend", address), ("result", result)],
                        n,
                    )
                })
            }),
        )?;
        counters(
            &mut enc,
            format,
            "balancer_proxy_bad_input_total",
            "Daemon-terminated services: client input refused (the connection closed), by reason; unknown_sid requests are routed by client address instead",
            s.services.iter().flat_map(|svc| {
                svc.proxy_bad_input.iter().map(|(reason, n)| {
                    (
                        [("service", svc.name.as_str()), ("reason", reason.as_str())],
                        *n,
                    )
                })
            }),
        )?;
        counters(
            &mut enc,
            format,
            "balancer_proxy_requests_total",
            "Daemon-terminated services: requests (whole connections where no HTTP is read) by what chose the backend, the session id or the client address",
            s.services.iter().flat_map(|svc| {
                svc.proxy_requests.iter().map(|(routed_by, n)| {
                    (
                        [
                            ("service", svc.name.as_str()),
                            ("routed_by", routed_by.as_str()),
                        ],
                        *n,
                    )
                })
            }),
        )?;
        counters(
            &mut enc,
            format,
            "balancer_proxy_pool_total",
            "Daemon-terminated services: requests sent on an idle backend connection from the pool (reused), and requests sent again on a new connection because a reused one ended before answering (retried)",
            s.services.iter().flat_map(|svc| {
                svc.proxy_pool.iter().map(|(event, n)| {
                    (
                        [("service", svc.name.as_str()), ("event", event.as_str())],
                        *n,
                    )
                })
            }),
        )?;
        match &s.cluster {
            Some(cluster) => encode_cluster(&mut enc, format, cluster),
            None => Ok(()),
        }
    }
}

/// `balancer_cluster_*`, with `[cluster] peers`: the configured peers
/// (and `unknown`, once connections from other addresses were refused).
fn encode_cluster(
    enc: &mut DescriptorEncoder,
    format: Format,
    cluster: &ClusterStatus,
) -> fmt::Result {
    let peers = || cluster.peers.iter().filter(|p| p.address != UNKNOWN_PEER);
    family(
        enc,
        "balancer_cluster_peer_up",
        "Whether this gateway's link to the peer is up (1: connected and authenticated) or not (0)",
        peers().map(|p| {
            (
                [("peer", p.address.as_str())],
                ConstGauge::new(u64::from(p.connected)),
            )
        }),
    )?;
    counters(
        enc,
        format,
        "balancer_cluster_entries_total",
        "Affinity entries sent to or received from the peer (received: authenticated and naming a service and backend this gateway has)",
        peers().flat_map(|p| {
            [("sent", p.entries_sent), ("received", p.entries_received)]
                .map(|(direction, n)| ([("peer", p.address.as_str()), ("direction", direction)], n))
        }),
    )?;
    counters(
        enc,
        format,
        "balancer_cluster_messages_rejected_total",
        "Cluster messages, entries or connections refused, by peer and reason; none of them changed anything",
        cluster.peers.iter().flat_map(|p| {
            p.rejected.iter().map(|(reason, n)| {
                (
                    [("peer", p.address.as_str()), ("reason", reason.as_str())],
                    *n,
                )
            })
        }),
    )
}

/// A counter as the classic text format writes it: its family carries the
/// sample's name (`x_total`), so the sample is the bare family name plus
/// labels. prometheus-client's own counters append `_total` to the family
/// name, as OpenMetrics wants.
#[derive(Debug)]
struct TextCounter(u64);

impl TypedMetric for TextCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for TextCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        // A bare `name{labels} value` line, which is what `encode_gauge`
        // writes; the descriptor above it says `counter`.
        encoder.encode_gauge(&self.0)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A counter family under its contract name (`x_total`): OpenMetrics names
/// the family `x` and its encoder adds the suffix to each sample; the
/// classic format names family and samples alike.
fn counters<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    format: Format,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    match format {
        Format::OpenMetrics => {
            let family_name = name
                .strip_suffix("_total")
                .expect("a counter's contract name ends in _total");
            family(
                enc,
                family_name,
                help,
                rows.into_iter().map(|(l, v)| (l, ConstCounter::new(v))),
            )
        }
        Format::Text => family(
            enc,
            name,
            help,
            rows.into_iter().map(|(l, v)| (l, TextCounter(v))),
        ),
    }
}

/// `{service, backend}`.
fn sb<'a>(service: &'a str, b: &'a BackendSnapshot) -> [(&'static str, &'a str); 2] {
    [("service", service), ("backend", b.address.as_str())]
}

/// `{service, backend, direction}` for direction `in` then `out`, from
/// `pick`'s (in, out) pair.
fn directed<'a>(
    service: &'a str,
    b: &'a BackendSnapshot,
    pick: fn(&BackendSnapshot) -> (u64, u64),
) -> [([(&'static str, &'a str); 3], u64); 2] {
    let (i, o) = pick(b);
    let address = b.address.as_str();
    [("in", i), ("out", o)].map(|(direction, v)| {
        (
            [
                ("service", service),
                ("backend", address),
                ("direction", direction),
            ],
            v,
        )
    })
}

/// One metric family: its HELP and TYPE, then one sample per label set.
fn family<L, M>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result
where
    L: EncodeLabelSet,
    M: EncodeMetric + TypedMetric,
{
    let mut metric = enc.encode_descriptor(name, help, None, M::TYPE)?;
    for (labels, value) in rows {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{collections::BTreeMap, process::Command};

    use super::*;
    use crate::cluster::stats::PeerStatus;

    /// Two services with two backends each; every value distinct.
    pub(crate) fn sample() -> Snapshot {
        let backend = |address: &str, base: u64, up: bool, draining: bool| BackendSnapshot {
            address: address.to_owned(),
            name: None,
            weight: base as u32,
            up,
            draining,
            active_connections: base + 1,
            connections_total: base + 2,
            packets_in: base + 3,
            packets_out: base + 4,
            bytes_in: base + 5,
            bytes_out: base + 6,
            health_passed: base + 7,
            health_failed: base + 8,
            last_check: Some(format!("ok (200) {base} ms, 2s ago")),
            last_change: 1_699_999_000 + base,
            down_reason: (!up).then(|| "connection refused".to_owned()),
        };
        Snapshot {
            services: vec![
                ServiceSnapshot {
                    name: "web".to_owned(),
                    vip: "198.18.0.10:80".to_owned(),
                    protocol: "tcp".to_owned(),
                    affinity: "source-ip".to_owned(),
                    affinity_entries: 11,
                    table_fingerprint: "00112233aabbccdd".to_owned(),
                    proxy_bad_input: vec![("bad_proxy_header".to_owned(), 2)],
                    proxy_requests: vec![("sid".to_owned(), 5)],
                    proxy_pool: vec![("reused".to_owned(), 6)],
                    backends: vec![
                        backend("198.18.1.1:8080", 100, true, false),
                        backend("198.18.1.2:8080", 200, false, false),
                    ],
                },
                ServiceSnapshot {
                    name: "dns".to_owned(),
                    vip: "[2001:db8::53]:53".to_owned(),
                    protocol: "udp".to_owned(),
                    affinity: "none".to_owned(),
                    affinity_entries: 22,
                    table_fingerprint: "ffeeddcc99887766".to_owned(),
                    proxy_bad_input: Vec::new(),
                    proxy_requests: Vec::new(),
                    proxy_pool: Vec::new(),
                    backends: vec![
                        backend("[2001:db8::1]:53", 300, true, true),
                        backend("<script>alert(1)</script>", 400, true, false),
                    ],
                },
            ],
            conntrack_entries: 33,
            tables: crate::config::Tables::default().into(),
            drops: vec![("no_backend".to_owned(), 44), ("malformed".to_owned(), 55)],
            events: vec![
                ("forward_to_backend".to_owned(), 66),
                ("conntrack_insert_failed".to_owned(), 77),
            ],
            generated_at: 1_700_000_000,
            started_at: 1_699_990_000,
            version: "0.1.0".to_owned(),
            git: "1a2b3c4-dirty".to_owned(),
            announce: Some(Box::new(AnnounceSnapshot {
                interface: "lo".to_owned(),
                left: false,
                vips: vec![
                    ("198.18.0.10".to_owned(), true),
                    ("2001:db8::53".to_owned(), false),
                ],
            })),
            cluster: Some(Box::new(ClusterStatus {
                listen: "198.18.2.11:7946".to_owned(),
                ready: true,
                ready_reason: Some("synced 3 entries from 198.18.2.12:7946".to_owned()),
                admin_version: 0,
                admin_behind: false,
                peers: vec![
                    PeerStatus {
                        address: "198.18.2.12:7946".to_owned(),
                        connected: true,
                        entries_sent: 91,
                        entries_received: 92,
                        rejected: vec![("bad_mac".to_owned(), 93), ("malformed".to_owned(), 0)],
                        ..PeerStatus::default()
                    },
                    PeerStatus {
                        address: UNKNOWN_PEER.to_owned(),
                        rejected: vec![("unknown_peer".to_owned(), 94)],
                        ..PeerStatus::default()
                    },
                ],
                services: vec![],
            })),
        }
    }

    /// Parses `name{k="v",...} value` sample lines into
    /// `(name, sorted labels) -> value`; `# ` lines give `name -> type`.
    /// `(name, labels) -> value`.
    type Samples = BTreeMap<(String, BTreeMap<String, String>), u64>;

    fn parse(text: &str) -> (Samples, BTreeMap<String, String>) {
        let mut samples = BTreeMap::new();
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, ty) = rest.split_once(' ').expect("TYPE line");
                types.insert(name.to_owned(), ty.to_owned());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').expect("closing brace");
                    let labels = body
                        .split("\",")
                        .filter(|kv| !kv.is_empty())
                        .map(|kv| {
                            let (k, v) = kv.split_once("=\"").expect("label");
                            (k.to_owned(), v.trim_end_matches('"').to_owned())
                        })
                        .collect();
                    (name, labels)
                }
                None => (series, BTreeMap::new()),
            };
            let value = value
                .parse()
                .unwrap_or_else(|e| panic!("value in {line:?}: {e}"));
            assert!(
                samples.insert((name.to_owned(), labels), value).is_none(),
                "duplicate series {line:?}"
            );
        }
        (samples, types)
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn metrics_render_every_contract_series() {
        let s = sample();
        let text = render_prometheus(&s);
        let (samples, types) = parse(&text);
        let mut expected = BTreeMap::new();
        let mut put = |name: &str, l: &[(&str, &str)], v: u64| {
            expected.insert((name.to_owned(), labels(l)), v);
        };
        for svc in &s.services {
            let service = svc.name.as_str();
            put(
                "balancer_affinity_entries",
                &[("service", service)],
                svc.affinity_entries,
            );
            for b in &svc.backends {
                let sb = [("service", service), ("backend", b.address.as_str())];
                put("balancer_backend_up", &sb, u64::from(b.up));
                put("balancer_backend_draining", &sb, u64::from(b.draining));
                put("balancer_backend_last_change_seconds", &sb, b.last_change);
                put(
                    "balancer_backend_active_connections",
                    &sb,
                    b.active_connections,
                );
                put(
                    "balancer_backend_connections_total",
                    &sb,
                    b.connections_total,
                );
                for (dir, p, n) in [
                    ("in", b.packets_in, b.bytes_in),
                    ("out", b.packets_out, b.bytes_out),
                ] {
                    let l = [sb[0], sb[1], ("direction", dir)];
                    put("balancer_backend_packets_total", &l, p);
                    put("balancer_backend_bytes_total", &l, n);
                }
                for (result, n) in [("passed", b.health_passed), ("failed", b.health_failed)] {
                    put(
                        "balancer_health_checks_total",
                        &[sb[0], sb[1], ("result", result)],
                        n,
                    );
                }
            }
        }
        put("balancer_conntrack_entries", &[], s.conntrack_entries);
        put(
            "balancer_table_capacity",
            &[("table", "conntrack")],
            u64::from(s.tables.flows.entries),
        );
        put(
            "balancer_table_capacity",
            &[("table", "affinity")],
            u64::from(s.tables.affinity.entries),
        );
        put(
            "balancer_build_info",
            &[("version", "0.1.0"), ("git", "1a2b3c4-dirty")],
            1,
        );
        for (reason, n) in &s.drops {
            put("balancer_packets_dropped_total", &[("reason", reason)], *n);
        }
        for (event, n) in &s.events {
            put("balancer_kernel_events_total", &[("event", event)], *n);
        }
        for (vip, on) in &s.announce.as_ref().unwrap().vips {
            put("balancer_vip_announced", &[("vip", vip)], u64::from(*on));
        }
        let peer = [("peer", "198.18.2.12:7946")];
        put("balancer_cluster_peer_up", &peer, 1);
        put(
            "balancer_cluster_entries_total",
            &[peer[0], ("direction", "sent")],
            91,
        );
        put(
            "balancer_cluster_entries_total",
            &[peer[0], ("direction", "received")],
            92,
        );
        put(
            "balancer_cluster_messages_rejected_total",
            &[peer[0], ("reason", "bad_mac")],
            93,
        );
        put(
            "balancer_cluster_messages_rejected_total",
            &[peer[0], ("reason", "malformed")],
            0,
        );
        put(
            "balancer_cluster_messages_rejected_total",
            &[("peer", "unknown"), ("reason", "unknown_peer")],
            94,
        );
        put(
            "balancer_proxy_bad_input_total",
            &[("service", "web"), ("reason", "bad_proxy_header")],
            2,
        );
        put(
            "balancer_proxy_requests_total",
            &[("service", "web"), ("routed_by", "sid")],
            5,
        );
        put(
            "balancer_proxy_pool_total",
            &[("service", "web"), ("event", "reused")],
            6,
        );
        assert_eq!(samples, expected, "rendered:\n{text}");

        // Types as the contract says (OpenMetrics names a counter's family
        // without `_total`).
        let want_types: BTreeMap<String, String> = [
            ("balancer_backend_up", "gauge"),
            ("balancer_backend_draining", "gauge"),
            ("balancer_backend_last_change_seconds", "gauge"),
            ("balancer_table_capacity", "gauge"),
            ("balancer_build_info", "gauge"),
            ("balancer_backend_active_connections", "gauge"),
            ("balancer_backend_connections", "counter"),
            ("balancer_backend_packets", "counter"),
            ("balancer_backend_bytes", "counter"),
            ("balancer_affinity_entries", "gauge"),
            ("balancer_conntrack_entries", "gauge"),
            ("balancer_packets_dropped", "counter"),
            ("balancer_kernel_events", "counter"),
            ("balancer_health_checks", "counter"),
            ("balancer_vip_announced", "gauge"),
            ("balancer_cluster_peer_up", "gauge"),
            ("balancer_cluster_entries", "counter"),
            ("balancer_cluster_messages_rejected", "counter"),
            ("balancer_proxy_bad_input", "counter"),
            ("balancer_proxy_requests", "counter"),
            ("balancer_proxy_pool", "counter"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(types, want_types);
        assert!(!text.contains("_total_total"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    /// The classic text format has the same samples; its counter families
    /// carry the sample name, and there is no `# EOF`.
    #[test]
    fn metrics_text_format_has_the_same_series() {
        let s = sample();
        let (open_samples, open_types) = parse(&render_prometheus(&s));
        let text = render_prometheus_text(&s);
        let (text_samples, text_types) = parse(&text);
        assert_eq!(text_samples, open_samples, "rendered:\n{text}");
        let want_types: BTreeMap<String, String> = open_types
            .into_iter()
            .map(|(name, ty)| match ty.as_str() {
                "counter" => (format!("{name}_total"), ty),
                _ => (name, ty),
            })
            .collect();
        assert_eq!(text_types, want_types);
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
    }

    #[test]
    fn metrics_empty_snapshot_renders() {
        let text = render_prometheus(&Snapshot::default());
        let (samples, _) = parse(&text);
        let empty = |name: &str, l: &[(&str, &str)]| ((name.to_owned(), labels(l)), 0);
        assert_eq!(
            samples.into_iter().collect::<Vec<_>>(),
            vec![
                (
                    (
                        "balancer_build_info".to_owned(),
                        labels(&[("version", ""), ("git", "")])
                    ),
                    1
                ),
                empty("balancer_conntrack_entries", &[]),
                empty("balancer_table_capacity", &[("table", "affinity")]),
                empty("balancer_table_capacity", &[("table", "conntrack")]),
            ]
        );
    }

    #[test]
    fn metrics_label_values_are_escaped() {
        let mut s = Snapshot::default();
        s.drops.push(("a\"b\\c\nd".to_owned(), 1));
        let text = render_prometheus(&s);
        assert!(
            text.contains(r#"balancer_packets_dropped_total{reason="a\"b\\c\nd"} 1"#),
            "{text}"
        );
    }

    /// Runs `promtool ARGS` with `stdin`; panics with a clear message when
    /// promtool is missing (Debian's `prometheus` package).
    fn promtool(args: &[&str], stdin: &str) -> std::process::Output {
        use std::{io::Write as _, process::Stdio};

        let mut child = match Command::new("promtool")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "promtool is not on PATH: install Debian's `prometheus` package \
                 (apt-get install prometheus); this test does not skip"
            ),
            Err(e) => panic!("running promtool: {e}"),
        };
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("writing to promtool");
        child.wait_with_output().expect("waiting for promtool")
    }

    /// `promtool check metrics` lints the classic text exposition clean.
    #[test]
    fn metrics_promtool_check_metrics() {
        let text = render_prometheus_text(&sample());
        let out = promtool(&["check", "metrics"], &text);
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "promtool check metrics ({}):\nstdout: {}\nstderr: {}\ninput:\n{text}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        let counters = text
            .lines()
            .filter(|l| l.starts_with("# TYPE ") && l.ends_with("_total counter"))
            .count();
        assert_eq!(counters, 11, "{text}");
        assert!(!text.contains("# EOF"));
    }

    /// promtool's OpenMetrics parser (the backfill importer, which wants a
    /// timestamp on each sample) accepts the exposition.
    #[test]
    fn metrics_promtool_parses_openmetrics() {
        let text = render_prometheus(&sample());
        let stamped: String = text
            .lines()
            .map(|l| {
                if l.starts_with('#') {
                    format!("{l}\n")
                } else {
                    format!("{l} 1700000000\n")
                }
            })
            .collect();
        let dir = std::env::temp_dir().join(format!("balancer-metrics-om-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let input = dir.join("metrics.om");
        std::fs::write(&input, &stamped).expect("write input");
        let input = input.to_str().expect("utf-8 path").to_owned();
        let blocks = dir.join("blocks");
        let blocks = blocks.to_str().expect("utf-8 path").to_owned();
        let out = promtool(
            &[
                "tsdb",
                "create-blocks-from",
                "openmetrics",
                "-q",
                &input,
                &blocks,
            ],
            "",
        );
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            out.status.success(),
            "promtool rejected the OpenMetrics text ({}):\n{}{}\ninput:\n{stamped}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
    }

    #[test]
    fn metrics_snapshot_json_round_trips() {
        let s = sample();
        let json = serde_json::to_string(&s).expect("serialize");
        let back: Snapshot = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, s);
    }
}
