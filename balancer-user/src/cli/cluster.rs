//! `balancer cluster leave|join`: take this gateway out of the cluster's
//! routing (its VIP addresses withdrawn, so BIRD withdraws the routes and
//! the router sends its flows to the other gateways) and back in.

use clap::{Args, Subcommand};

use super::{SocketArg, format, unexpected};
use crate::control::{Reply, Request, client};

#[derive(Args, Debug)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub action: ClusterAction,
}

#[derive(Subcommand, Debug)]
pub enum ClusterAction {
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
    let (socket, request) = to_request(&args.action);
    match client::request(&socket.socket, &request)? {
        Reply::Done { message } => format::print(&format!("{message}\n")),
        other => Err(unexpected("the cluster change", &other)),
    }
}

/// The socket to ask and the request to send.
fn to_request(action: &ClusterAction) -> (&SocketArg, Request) {
    match action {
        ClusterAction::Leave { socket } => (socket, Request::ClusterLeave),
        ClusterAction::Join { socket } => (socket, Request::ClusterJoin),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

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
            let (socket, request) = to_request(&cli.action);
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
}
