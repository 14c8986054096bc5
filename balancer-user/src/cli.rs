//! The CLI's commands other than `run`, one module each: clap arguments,
//! the request to the daemon over the control socket, and a pure `render`
//! of the answer that the unit tests check. [`format`] holds what they share
//! (durations, byte counts, tables, printing).

pub mod assets;
pub mod backend;
pub mod check;
pub mod cluster;
pub mod detach;
pub mod flows;
pub mod format;
pub mod lookup;
pub mod reload;
pub mod status;

use std::path::PathBuf;

use clap::Args;

use crate::{config::DEFAULT_CONTROL_SOCKET, control::Reply};

/// `--socket PATH`, which every command but `run` takes.
#[derive(Args, Debug, Clone)]
pub struct SocketArg {
    /// The daemon's control socket (`[control] socket` in its config).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL_SOCKET)]
    pub socket: PathBuf,
}

/// The error for a reply of the wrong kind (`what` names the request).
fn unexpected(what: &str, reply: &Reply) -> anyhow::Error {
    let kind = match reply {
        Reply::Status(_) => "status",
        Reply::Done { .. } => "done",
        Reply::Lookup(_) => "lookup",
        Reply::Flows(_) => "flows",
        Reply::Detached { .. } => "detached",
        Reply::Changes { .. } => "changes",
    };
    anyhow::anyhow!("the daemon answered {what} with an unexpected `{kind}` reply")
}
