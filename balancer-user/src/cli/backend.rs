//! `balancer backend add|remove|drain|undrain SERVICE ADDR` and `balancer
//! backend set-weight SERVICE ADDR N`: change a service's backends in the
//! running daemon.

use clap::{Args, Subcommand};

use super::{SocketArg, format, unexpected};
use crate::control::{Reply, Request, client};

#[derive(Args, Debug)]
pub struct BackendArgs {
    #[command(subcommand)]
    pub action: BackendAction,
}

#[derive(Subcommand, Debug)]
pub enum BackendAction {
    /// Add a backend; it takes new clients once it passes its health checks.
    Add {
        #[command(flatten)]
        target: Target,
        /// Its share of new clients, 1..=65535 (1 when left out; the daemon checks it).
        #[arg(long, value_name = "N")]
        weight: Option<u32>,
        /// The prefix of the engine.io session ids it mints, as the
        /// config's `name`: required with `affinity = "sid"`, unique in the
        /// service, 1 to 64 of A-Z a-z 0-9 _ . - (the daemon checks it).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Remove a backend: its flows and clients move on their next packet.
    Remove {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Send a backend no new clients; those it has stay on it.
    Drain {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Let a drained backend take new clients again.
    Undrain {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Change a backend's weight: its share of new clients follows (known
    /// clients stay), and a restart keeps it.
    SetWeight {
        #[command(flatten)]
        target: Target,
        /// Its share of new clients, 1..=65535 (the daemon checks it).
        #[arg(value_name = "N")]
        weight: u32,
        #[command(flatten)]
        socket: SocketArg,
    },
}

/// `SERVICE ADDR`, passed to the daemon as written: the daemon checks them.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// The service's name.
    pub service: String,
    /// The backend, `IP:PORT` (`[IPv6]:PORT`).
    #[arg(value_name = "ADDR")]
    pub address: String,
}

pub fn run(args: &BackendArgs) -> anyhow::Result<()> {
    let (socket, request) = to_request(&args.action);
    match client::request(&socket.socket, &request)? {
        Reply::Done { message } => format::print(&format!("{message}\n")),
        other => Err(unexpected("the backend change", &other)),
    }
}

/// The socket to ask and the request to send.
fn to_request(action: &BackendAction) -> (&SocketArg, Request) {
    let parts = |t: &Target| (t.service.clone(), t.address.clone());
    match action {
        BackendAction::Add {
            target,
            weight,
            name,
            socket,
        } => {
            let (service, address) = parts(target);
            (
                socket,
                Request::BackendAdd {
                    service,
                    address,
                    weight: *weight,
                    name: name.clone(),
                },
            )
        }
        BackendAction::Remove { target, socket } => {
            let (service, address) = parts(target);
            (socket, Request::BackendRemove { service, address })
        }
        BackendAction::Drain { target, socket } => {
            let (service, address) = parts(target);
            (socket, Request::BackendDrain { service, address })
        }
        BackendAction::Undrain { target, socket } => {
            let (service, address) = parts(target);
            (socket, Request::BackendUndrain { service, address })
        }
        BackendAction::SetWeight {
            target,
            weight,
            socket,
        } => {
            let (service, address) = parts(target);
            (
                socket,
                Request::BackendSetWeight {
                    service,
                    address,
                    weight: *weight,
                },
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        action: BackendAction,
    }

    fn parse(argv: &[&str]) -> (std::path::PathBuf, Request) {
        let cli = Cli::try_parse_from(std::iter::once("backend").chain(argv.iter().copied()))
            .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        let (socket, request) = to_request(&cli.action);
        (socket.socket.clone(), request)
    }

    #[test]
    fn cli_backend_requests() {
        let (socket, req) = parse(&[
            "add",
            "chat",
            "198.18.1.14:3000",
            "--weight",
            "3",
            "--name",
            "b4",
        ]);
        assert_eq!(
            socket,
            std::path::Path::new(crate::config::DEFAULT_CONTROL_SOCKET)
        );
        assert_eq!(
            req,
            Request::BackendAdd {
                service: "chat".into(),
                address: "198.18.1.14:3000".into(),
                weight: Some(3),
                name: Some("b4".into()),
            }
        );
        let (_, req) = parse(&["add", "chat", "[2001:db8::1]:80"]);
        assert_eq!(
            req,
            Request::BackendAdd {
                service: "chat".into(),
                address: "[2001:db8::1]:80".into(),
                weight: None,
                name: None,
            }
        );
        let (socket, req) = parse(&["remove", "--socket", "/tmp/s", "chat", "not-an-address"]);
        assert_eq!(socket, std::path::Path::new("/tmp/s"));
        assert_eq!(
            req,
            Request::BackendRemove {
                service: "chat".into(),
                address: "not-an-address".into()
            }
        );
        let (_, req) = parse(&["drain", "chat", "198.18.1.11:3000"]);
        assert_eq!(
            req,
            Request::BackendDrain {
                service: "chat".into(),
                address: "198.18.1.11:3000".into()
            }
        );
        let (_, req) = parse(&["set-weight", "chat", "198.18.1.11:3000", "5"]);
        assert_eq!(
            req,
            Request::BackendSetWeight {
                service: "chat".into(),
                address: "198.18.1.11:3000".into(),
                weight: 5
            }
        );
        let (_, req) = parse(&["undrain", "chat", "198.18.1.11:3000", "--socket", "/x"]);
        assert_eq!(
            req,
            Request::BackendUndrain {
                service: "chat".into(),
                address: "198.18.1.11:3000".into()
            }
        );
    }

    #[test]
    fn cli_backend_weight_is_a_u32() {
        assert!(Cli::try_parse_from(["backend", "add", "chat", "a:1", "--weight", "-1"]).is_err());
        assert!(
            Cli::try_parse_from(["backend", "add", "chat", "a:1", "--weight", "4294967296"])
                .is_err()
        );
        assert!(Cli::try_parse_from(["backend", "drain", "chat"]).is_err());
        assert!(Cli::try_parse_from(["backend", "set-weight", "chat", "a:1"]).is_err());
        assert!(Cli::try_parse_from(["backend", "set-weight", "chat", "a:1", "x"]).is_err());
    }
}
