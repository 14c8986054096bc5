//! `balancer cluster status [--json]`: the links to the other gateways
//! (`[cluster] peers`): connected or not, when each last spoke, the
//! replication lag, entries sent and received, messages refused by reason,
//! and each service's table fingerprint.

use clap::{Args, Subcommand};

use super::{
    SocketArg,
    format::{self, Align, Table},
    unexpected,
};
use crate::{
    cluster::stats::ClusterStatus,
    control::{Reply, Request, client},
};

#[derive(Args, Debug)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub action: ClusterAction,
}

#[derive(Subcommand, Debug)]
pub enum ClusterAction {
    /// The links to the other gateways, and what they carried.
    Status {
        /// Print it as JSON (the `cluster` part of `status --json`).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
}

pub fn run(args: &ClusterArgs) -> anyhow::Result<()> {
    match &args.action {
        ClusterAction::Status { json, socket } => {
            let snapshot = match client::request(&socket.socket, &Request::Status)? {
                Reply::Status(s) => s,
                other => return Err(unexpected("cluster status", &other)),
            };
            let Some(cluster) = snapshot.cluster else {
                anyhow::bail!("this gateway has no [cluster] peers");
            };
            format::print(&if *json {
                format::json(&cluster)
            } else {
                render(&cluster)
            })
        }
    }
}

/// A readiness line, a table of peers, the refusals that counted
/// anything, and the services' fingerprints.
pub fn render(c: &ClusterStatus) -> String {
    let mut out = format!(
        "listening on {}; {}\n",
        c.listen,
        match (&c.ready, &c.ready_reason) {
            (true, Some(why)) => format!("ready: {why}"),
            _ => "not ready: pulling the peers' entries".to_owned(),
        }
    );
    let mut table = Table::new(&[
        ("PEER", Align::Left),
        ("LINK", Align::Left),
        ("LAST MESSAGE", Align::Right),
        ("LAG", Align::Right),
        ("SENT", Align::Right),
        ("RECEIVED", Align::Right),
        ("KEPT OURS", Align::Right),
        ("REFUSED", Align::Right),
    ]);
    let ms = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), format::duration_ms);
    for p in &c.peers {
        table.row(vec![
            p.address.clone(),
            if p.connected { "up" } else { "down" }.to_owned(),
            p.last_message_ms.map_or_else(
                || "never".to_owned(),
                |v| format!("{} ago", format::duration_ms(v)),
            ),
            ms(p.lag_ms),
            p.entries_sent.to_string(),
            p.entries_received.to_string(),
            p.entries_kept.to_string(),
            p.rejected.iter().map(|(_, n)| n).sum::<u64>().to_string(),
        ]);
    }
    out.push_str(&table.render("  "));
    for p in &c.peers {
        let refused: Vec<String> = p
            .rejected
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect();
        if !refused.is_empty() {
            out.push_str(&format!(
                "  refused from {}: {}\n",
                p.address,
                refused.join(", ")
            ));
        }
    }
    for s in &c.services {
        out.push_str(&format!(
            "service {} {}: table {}\n",
            s.name,
            s.vip,
            s.table_fingerprint.as_deref().unwrap_or("-")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::stats::{ClusterService, PeerStatus};

    #[test]
    fn renders_peers_refusals_and_fingerprints() {
        let c = ClusterStatus {
            listen: "198.18.2.11:7946".to_owned(),
            ready: true,
            ready_reason: Some("synced 2 entries from 198.18.2.12:7946".to_owned()),
            peers: vec![
                PeerStatus {
                    address: "198.18.2.12:7946".to_owned(),
                    connected: true,
                    last_message_ms: Some(300),
                    lag_ms: Some(2),
                    entries_sent: 5,
                    entries_received: 7,
                    entries_kept: 1,
                    rejected: vec![("bad_mac".to_owned(), 2), ("malformed".to_owned(), 0)],
                    ..PeerStatus::default()
                },
                PeerStatus {
                    address: "198.18.2.13:7946".to_owned(),
                    rejected: vec![("bad_mac".to_owned(), 0)],
                    ..PeerStatus::default()
                },
            ],
            services: vec![ClusterService {
                name: "chat".to_owned(),
                vip: "198.18.0.100:80".to_owned(),
                table_fingerprint: None,
            }],
        };
        let text = render(&c);
        assert!(
            text.starts_with(
                "listening on 198.18.2.11:7946; ready: synced 2 entries from 198.18.2.12:7946\n"
            ),
            "{text}"
        );
        let rows: Vec<Vec<&str>> = text
            .lines()
            .filter(|l| l.starts_with("  198."))
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows,
            vec![
                vec![
                    "198.18.2.12:7946",
                    "up",
                    "300ms",
                    "ago",
                    "2ms",
                    "5",
                    "7",
                    "1",
                    "2"
                ],
                vec!["198.18.2.13:7946", "down", "never", "-", "0", "0", "0", "0"],
            ]
        );
        assert!(
            text.contains("  refused from 198.18.2.12:7946: bad_mac 2\n"),
            "{text}"
        );
        assert!(!text.contains("refused from 198.18.2.13"), "{text}");
        assert!(
            text.ends_with("service chat 198.18.0.100:80: table -\n"),
            "{text}"
        );
    }
}
