//! `balancer`: the daemon (`run`) and the CLI that talks to it.

use std::{path::PathBuf, process::ExitCode};

use balancer_user::{
    cli::{
        self, assets::AssetsArgs, backend::BackendArgs, check::CheckArgs, cluster::ClusterArgs,
        detach::DetachArgs, flows::FlowsArgs, lookup::LookupArgs, reload::ReloadArgs,
        status::StatusArgs,
    },
    logging::{self, LogFormat},
    version,
};
use clap::{CommandFactory as _, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "balancer",
    version = version::long(),
    about = "XDP sticky-session load balancer"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: load the data plane and keep it current.
    Run {
        /// The TOML config file.
        #[arg(long)]
        config: PathBuf,
        /// How log lines look on stderr.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// error, warn, info, debug or trace, or a filter such as
        /// `info,balancer_user::health=debug`; wins over RUST_LOG [default:
        /// RUST_LOG, else info].
        #[arg(long, value_name = "LEVEL", value_parser = logging::parse_level)]
        log_level: Option<String>,
    },
    /// Check a config as `run` would (interfaces, pin dir, binds) without
    /// changing anything; `--diff`: what a reload with it would change.
    Check(CheckArgs),
    /// Make the daemon read its config file again and apply it (as SIGHUP
    /// does); prints what changed.
    Reload(ReloadArgs),
    /// Services, backends, their states and counts.
    Status(StatusArgs),
    /// Add, remove, drain, undrain or reweigh a backend of a service.
    Backend(BackendArgs),
    /// Which backend a new connection from a client gets now.
    Lookup(LookupArgs),
    /// The connection-tracking entries: which client talks to which backend.
    Flows(FlowsArgs),
    /// This gateway in the cluster: `status` shows the links to the other
    /// gateways (`[cluster] peers`), `leave` withdraws its VIPs from the
    /// routing daemon, `join` announces them again.
    Cluster(ClusterArgs),
    /// Remove the programs and the balancer's pins (the data plane stops balancing);
    /// the daemon, if one is running, does it and stops.
    Detach(DetachArgs),
    /// Write the man pages and shell completions (for packaging).
    #[command(hide = true)]
    Assets(AssetsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Run {
            log_format,
            log_level,
            ..
        } => logging::init(*log_format, log_level.as_deref()),
        _ => logging::init(LogFormat::Text, None),
    }
    let result = match cli.command {
        Command::Run { config, .. } => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(balancer_user::run::run(&config))),
        Command::Check(args) => cli::check::run(&args),
        Command::Reload(args) => cli::reload::run(&args),
        Command::Status(args) => cli::status::run(&args),
        Command::Backend(args) => cli::backend::run(&args),
        Command::Lookup(args) => cli::lookup::run(&args),
        Command::Flows(args) => cli::flows::run(&args),
        Command::Cluster(args) => cli::cluster::run(&args),
        Command::Detach(args) => cli::detach::run(&args),
        Command::Assets(args) => cli::assets::run(Cli::command(), &args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the context chain joined by ": ".
            eprintln!(
                "balancer: {}",
                balancer_user::oneline::escape_controls(&format!("{e:#}"))
            );
            ExitCode::FAILURE
        }
    }
}
