//! `balancer check --config FILE [--diff]`: everything `run` checks before
//! it touches the kernel (the config, the interfaces (`[announce]`'s too), the pin dir's
//! filesystem, the metrics address and the control socket), with nothing
//! attached, created or bound for longer than the check. `--diff` asks the
//! running daemon what a reload with FILE would change.

use std::{
    io::ErrorKind,
    net::TcpListener,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use clap::Args;

use super::{format, unexpected};
use crate::{
    cluster,
    config::Config,
    control::{Reply, Request, client},
    netif, pin, run,
};

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The TOML config file to check.
    #[arg(long)]
    pub config: PathBuf,
    /// Print what a reload with this file would change in the running
    /// daemon, one line each (nothing when it would change nothing).
    #[arg(long)]
    pub diff: bool,
    /// The running daemon's control socket; default: the file's
    /// `[control] socket`.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

pub fn run(args: &CheckArgs) -> anyhow::Result<()> {
    let config = Config::from_file(&args.config)?;
    run::interfaces(&config)?;
    if let Some(announce) = &config.announce {
        netif::ifindex("announce.interface", &announce.interface)?;
    }
    if let Some(secret_file) = &config.cluster.secret_file {
        cluster::secret::read(secret_file)?;
    }
    pin::check(&config.bpf.pin_dir)?;
    let socket = args.socket.as_deref().unwrap_or(&config.control.socket);
    let daemon = daemon_serves(socket)?;
    if !daemon {
        check_binds(&config)?;
    }
    if args.diff {
        if !daemon {
            bail!("--diff: no daemon serves {}", socket.display());
        }
        let text = std::fs::read_to_string(&args.config)
            .with_context(|| format!("cannot read {}", args.config.display()))?;
        return match client::request(socket, &Request::ReloadDiff { config: text })? {
            Reply::Changes { changes, .. } => {
                format::print(&changes.iter().map(|c| format!("{c}\n")).collect::<String>())
            }
            other => Err(unexpected("check --diff", &other)),
        };
    }
    let backends: usize = config.services.iter().map(|s| s.backends.len()).sum();
    let running = if daemon {
        format!("; a daemon serves {}", socket.display())
    } else {
        String::new()
    };
    format::print(&format!(
        "OK: {}: {} services, {backends} backends{running}\n",
        args.config.display(),
        config.services.len()
    ))
}

/// Does a daemon answer on `socket`? Its binds are then its own, and a
/// reload keeps them.
fn daemon_serves(socket: &Path) -> anyhow::Result<bool> {
    match client::request(socket, &Request::Status) {
        Ok(_) => Ok(true),
        Err(e)
            if e.downcast_ref::<client::Error>()
                .is_some_and(client::Error::no_daemon) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// With no daemon running: the metrics address binds (and is let go at
/// once), and the control socket's path could be bound.
fn check_binds(config: &Config) -> anyhow::Result<()> {
    let listen = config.metrics.listen;
    TcpListener::bind(listen).with_context(|| format!("metrics.listen: cannot bind {listen}"))?;
    if let Some(listen) = config.cluster.listen {
        TcpListener::bind(listen)
            .with_context(|| format!("cluster.listen: cannot bind {listen}"))?;
    }
    let socket = &config.control.socket;
    match std::fs::symlink_metadata(socket) {
        Ok(m) if !std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => bail!(
            "control.socket: {} exists and is not a socket",
            socket.display()
        ),
        Ok(_) => {} // a stale socket, which `run` replaces
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let dir = existing_ancestor(socket);
            if !dir.is_dir() {
                bail!("control.socket: {} is not a directory", dir.display());
            }
            let c =
                std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(dir.as_os_str()))?;
            if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
                bail!(
                    "control.socket: cannot create {} in {}: {}",
                    socket.display(),
                    dir.display(),
                    std::io::Error::last_os_error()
                );
            }
        }
        Err(e) => bail!("control.socket: cannot check {}: {e}", socket.display()),
    }
    Ok(())
}

/// The nearest ancestor of `path` that exists: where `run` would create the
/// socket's directory.
fn existing_ancestor(path: &Path) -> &Path {
    path.ancestors()
        .skip(1)
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
}
