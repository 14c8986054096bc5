//! `balancer status [--json]`: services, backends, their states and counts.

use clap::Args;

use super::{
    SocketArg,
    format::{self, Align, Table},
    unexpected,
};
use crate::{
    control::{Reply, Request, client},
    metrics::{AnnounceSnapshot, BackendSnapshot, Snapshot},
};

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print the daemon's status as JSON (the same document as `GET /status`).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: SocketArg,
}

pub fn run(args: &StatusArgs) -> anyhow::Result<()> {
    let snapshot = match client::request(&args.socket.socket, &Request::Status)? {
        Reply::Status(s) => s,
        other => return Err(unexpected("status", &other)),
    };
    format::print(&if args.json {
        format::json(&snapshot)
    } else {
        render(&snapshot)
    })
}

/// One block per service: a header line, then a table of its backends;
/// then the conntrack count, the kernel tables' sizes and memory, the
/// drop reasons that counted anything, and the announced VIPs.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    for (i, svc) in s.services.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!(
            "{}  {}/{}  affinity {}  affinity entries {}  table {}\n",
            svc.name,
            svc.vip,
            svc.protocol,
            svc.affinity,
            svc.affinity_entries,
            short(&svc.table_fingerprint)
        ));
        if !svc.proxy_requests.is_empty() {
            // A daemon-terminated service: what routed its requests, and
            // the input it refused (the reasons that counted anything).
            let counts = |list: &[(String, u64)], all: bool| -> String {
                list.iter()
                    .filter(|(_, n)| all || *n > 0)
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let refused = counts(&svc.proxy_bad_input, false);
            out.push_str(&format!(
                "  proxied: requests by {}; pooled backend connections {}; bad input {}\n",
                counts(&svc.proxy_requests, true),
                counts(&svc.proxy_pool, true),
                if refused.is_empty() {
                    "none".to_owned()
                } else {
                    refused
                }
            ));
        }
        if svc.backends.is_empty() {
            out.push_str("  no backends\n");
            continue;
        }
        let mut table = Table::new(&[
            ("BACKEND", Align::Left),
            ("WEIGHT", Align::Right),
            ("STATE", Align::Left),
            ("ACTIVE", Align::Right),
            ("TOTAL", Align::Right),
            ("PKTS IN/OUT", Align::Right),
            ("BYTES IN/OUT", Align::Right),
            ("LAST CHECK", Align::Left),
        ]);
        for b in &svc.backends {
            table.row(vec![
                match &b.name {
                    Some(name) => format!("{} ({name})", b.address),
                    None => b.address.clone(),
                },
                b.weight.to_string(),
                state(b).to_owned(),
                b.active_connections.to_string(),
                b.connections_total.to_string(),
                format!("{}/{}", b.packets_in, b.packets_out),
                format!(
                    "{}/{}",
                    format::bytes(b.bytes_in),
                    format::bytes(b.bytes_out)
                ),
                b.last_check.clone().unwrap_or_else(|| "-".to_owned()),
            ]);
        }
        out.push_str(&table.render("  "));
    }
    if s.services.is_empty() {
        out.push_str("no services\n");
    }
    out.push_str(&format!("\nconntrack entries {}\n", s.conntrack_entries));
    out.push_str(&format!("tables: {}\n", s.tables));
    let drops: Vec<String> = s
        .drops
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect();
    if !drops.is_empty() {
        out.push_str(&format!("dropped packets: {}\n", drops.join(", ")));
    }
    if let Some(a) = &s.announce {
        out.push_str(&announce_line(a));
    }
    out
}

/// `announce on lo: 198.18.0.100 announced, ...` (or that the gateway
/// left the cluster).
fn announce_line(a: &AnnounceSnapshot) -> String {
    let vips: Vec<String> = a
        .vips
        .iter()
        .map(|(vip, on)| format!("{vip} {}", if *on { "announced" } else { "withdrawn" }))
        .collect();
    let vips = if vips.is_empty() {
        "no VIP".to_owned()
    } else {
        vips.join(", ")
    };
    let left = if a.left {
        " (left the cluster: `balancer cluster join` announces again)"
    } else {
        ""
    };
    format!("announce on {}: {vips}{left}\n", a.interface)
}

/// The fingerprint's first 16 hex digits (all of a 64-bit one), `-` from a
/// daemon that sends none.
fn short(fingerprint: &str) -> &str {
    match fingerprint.get(..16).unwrap_or(fingerprint) {
        "" => "-",
        s => s,
    }
}

/// `up`, `down`, `draining` or `down+draining`.
fn state(b: &BackendSnapshot) -> &'static str {
    match (b.up, b.draining) {
        (true, false) => "up",
        (true, true) => "draining",
        (false, false) => "down",
        (false, true) => "down+draining",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::Tables, metrics::ServiceSnapshot};

    fn backend(address: &str, up: bool, draining: bool) -> BackendSnapshot {
        BackendSnapshot {
            address: address.to_owned(),
            weight: 1,
            up,
            draining,
            ..BackendSnapshot::default()
        }
    }

    fn sample() -> Snapshot {
        Snapshot {
            services: vec![
                ServiceSnapshot {
                    name: "chat".to_owned(),
                    vip: "198.18.0.100:80".to_owned(),
                    protocol: "tcp".to_owned(),
                    affinity: "source-ip".to_owned(),
                    affinity_entries: 12,
                    table_fingerprint: "0123456789abcdef".to_owned(),
                    proxy_bad_input: vec![
                        ("bad_proxy_header".to_owned(), 0),
                        ("untrusted_source".to_owned(), 2),
                    ],
                    proxy_requests: vec![("sid".to_owned(), 40), ("client".to_owned(), 9)],
                    proxy_pool: vec![("reused".to_owned(), 30), ("retried".to_owned(), 1)],
                    backends: vec![
                        BackendSnapshot {
                            weight: 10,
                            active_connections: 3,
                            connections_total: 1500,
                            packets_in: 120,
                            packets_out: 118,
                            bytes_in: 10_035,
                            bytes_out: 1_258_291,
                            last_check: Some("ok (200) 3 ms, 2s ago".to_owned()),
                            name: Some("b1".to_owned()),
                            ..backend("198.18.1.11:3000", true, false)
                        },
                        backend("198.18.1.12:3000", true, true),
                        backend("198.18.1.13:3000", false, false),
                        backend("198.18.1.14:3000", false, true),
                    ],
                },
                ServiceSnapshot {
                    name: "dns".to_owned(),
                    vip: "[2001:db8::53]:53".to_owned(),
                    protocol: "udp".to_owned(),
                    affinity: "four-tuple".to_owned(),
                    affinity_entries: 0,
                    table_fingerprint: String::new(),
                    proxy_bad_input: Vec::new(),
                    proxy_requests: Vec::new(),
                    proxy_pool: Vec::new(),
                    backends: vec![],
                },
            ],
            conntrack_entries: 42,
            tables: Tables {
                flows: 65536,
                affinity: 32768,
            }
            .into(),
            drops: vec![("malformed".to_owned(), 0), ("no_backend".to_owned(), 7)],
            events: vec![],
            generated_at: 1_700_000_000,
            ..Snapshot::default()
        }
    }

    #[test]
    fn cli_status_renders_services_backends_and_trailer() {
        let got = render(&sample());
        let want = "\
chat  198.18.0.100:80/tcp  affinity source-ip  affinity entries 12  table 0123456789abcdef
  proxied: requests by sid 40, client 9; pooled backend connections reused 30, retried 1; bad input untrusted_source 2
  BACKEND                WEIGHT  STATE          ACTIVE  TOTAL  PKTS IN/OUT     BYTES IN/OUT  LAST CHECK
  198.18.1.11:3000 (b1)      10  up                  3   1500      120/118  9.8 KiB/1.2 MiB  ok (200) 3 ms, 2s ago
  198.18.1.12:3000            1  draining            0      0          0/0          0 B/0 B  -
  198.18.1.13:3000            1  down                0      0          0/0          0 B/0 B  -
  198.18.1.14:3000            1  down+draining       0      0          0/0          0 B/0 B  -

dns  [2001:db8::53]:53/udp  affinity four-tuple  affinity entries 0  table -
  no backends

conntrack entries 42
tables: flows 65536 entries (10.0 MiB), affinity 32768 entries (3.2 MiB)
dropped packets: no_backend 7
";
        assert_eq!(got, want, "got:\n{got}");
    }

    #[test]
    fn cli_status_announce_line() {
        let mut a = AnnounceSnapshot {
            interface: "lo".to_owned(),
            left: false,
            vips: vec![
                ("198.18.0.100".to_owned(), true),
                ("2001:db8::100".to_owned(), false),
            ],
        };
        assert_eq!(
            announce_line(&a),
            "announce on lo: 198.18.0.100 announced, 2001:db8::100 withdrawn\n"
        );
        a.left = true;
        a.vips = vec![];
        assert_eq!(
            announce_line(&a),
            "announce on lo: no VIP (left the cluster: `balancer cluster join` announces again)\n"
        );
        let s = Snapshot {
            announce: Some(Box::new(a)),
            ..Snapshot::default()
        };
        assert!(render(&s).ends_with(
            "announce on lo: no VIP (left the cluster: `balancer cluster join` announces again)\n"
        ));
    }

    #[test]
    fn cli_status_empty_snapshot() {
        assert_eq!(
            render(&Snapshot::default()),
            "no services\n\nconntrack entries 0\n\
             tables: flows 0 entries (0.0 MiB), affinity 0 entries (0.0 MiB)\n"
        );
    }

    #[test]
    fn cli_status_json_round_trips() {
        let s = sample();
        let back: Snapshot = serde_json::from_str(&format::json(&s)).unwrap();
        assert_eq!(back, s);
    }
}
