//! `balancer reload`: the daemon reads its config file again and applies
//! it (as SIGHUP does); prints what changed.

use clap::Args;

use super::{SocketArg, format, unexpected};
use crate::control::{Reply, Request, client};

#[derive(Args, Debug)]
pub struct ReloadArgs {
    #[command(flatten)]
    pub socket: SocketArg,
}

pub fn run(args: &ReloadArgs) -> anyhow::Result<()> {
    match client::request(&args.socket.socket, &Request::Reload)? {
        Reply::Changes { changes, .. } => format::print(&render(&changes)),
        other => Err(unexpected("reload", &other)),
    }
}

/// The changes one per line, or a line saying there were none.
pub fn render(changes: &[String]) -> String {
    if changes.is_empty() {
        return "reloaded: no changes\n".to_owned();
    }
    changes.iter().map(|c| format!("{c}\n")).collect()
}
