//! `balancer cluster ...`:
//! - `status [--json]`: the links to the other gateways (`[cluster]
//!   peers`): connected or not, when each last spoke, the replication lag,
//!   entries sent and received, messages refused by reason, and each
//!   service's table fingerprint;
//! - `leave|join`: take this gateway out of the cluster's routing (its VIP
//!   addresses withdrawn, so BIRD withdraws the routes and the router sends
//!   its flows to the other gateways) and back in.

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
    /// Withdraw this gateway's VIPs (for maintenance): the router moves
    /// their flows to the other gateways. A restart stays out until `join`.
    Leave {
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Announce this gateway's VIPs again (those with a backend up).
    Join {
        #[command(flatten)]
        socket: SocketArg,
    },
}

pub fn run(args: &ClusterArgs) -> anyhow::Result<()> {
    match &args.action {
        ClusterAction::Leave { .. } | ClusterAction::Join { .. } => {
            let (socket, request) = membership_request(&args.action).expect("leave or join");
            match client::request(&socket.socket, &request)? {
                Reply::Done { message } => format::print(&format!("{message}\n")),
                other => Err(unexpected("the cluster change", &other)),
            }
        }
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

/// The socket to ask and the request to send, for `leave` and `join`.
fn membership_request(action: &ClusterAction) -> Option<(&SocketArg, Request)> {
    match action {
        ClusterAction::Leave { socket } => Some((socket, Request::ClusterLeave)),
        ClusterAction::Join { socket } => Some((socket, Request::ClusterJoin)),
        ClusterAction::Status { .. } => None,
    }
}

/// A readiness line, a table of peers, the refusals that counted
/// anything, and the services' fingerprints.
pub fn render(c: &ClusterStatus) -> String {
    let mut out = format!(
        "listening on {}; {}; admin version {}{}\n",
        c.listen,
        match (&c.ready, &c.ready_reason) {
            (true, Some(why)) => format!("ready: {why}"),
            _ => "not ready: pulling the peers' entries".to_owned(),
        },
        c.admin_version,
        if c.admin_behind {
            " (behind: a peer's state of it is adopted)"
        } else {
            ""
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
    use clap::Parser;

    use super::*;
    use crate::cluster::stats::{ClusterService, PeerStatus};

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        action: ClusterAction,
    }

    #[test]
    fn cli_cluster_requests() {
        let parse = |argv: &[&str]| {
            let cli = Cli::try_parse_from(std::iter::once("cluster").chain(argv.iter().copied()))
                .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            let (socket, request) = membership_request(&cli.action).expect("leave or join");
            (socket.socket.clone(), request)
        };
        let (socket, req) = parse(&["leave"]);
        assert_eq!(
            socket,
            std::path::Path::new(crate::config::DEFAULT_CONTROL_SOCKET)
        );
        assert_eq!(req, Request::ClusterLeave);
        let (socket, req) = parse(&["join", "--socket", "/tmp/s"]);
        assert_eq!(socket, std::path::Path::new("/tmp/s"));
        assert_eq!(req, Request::ClusterJoin);
        assert!(Cli::try_parse_from(["cluster", "part"]).is_err());
    }

    #[test]
    fn renders_peers_refusals_and_fingerprints() {
        let c = ClusterStatus {
            listen: "198.18.2.11:7946".to_owned(),
            ready: true,
            ready_reason: Some("synced 2 entries from 198.18.2.12:7946".to_owned()),
            admin_version: 4,
            admin_behind: true,
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
                "listening on 198.18.2.11:7946; ready: synced 2 entries from 198.18.2.12:7946; admin version 4 (behind: a peer's state of it is adopted)\n"
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
