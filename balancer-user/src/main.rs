//! `balancer`: the daemon (`run`) and the CLI that talks to it.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "balancer", version, about = "XDP sticky-session load balancer")]
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
    },
    /// Remove the programs and every pin (the data plane stops balancing).
    Detach {
        /// The bpffs directory the daemon pinned into (`[bpf] pin_dir`).
        #[arg(long, default_value = "/sys/fs/bpf/balancer")]
        pin_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(balancer_user::run::run(&config))),
        Command::Detach { pin_dir } => balancer_user::pin::remove_all(&pin_dir).map(|n| {
            println!("removed {n} pins from {}", pin_dir.display());
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the context chain joined by ": ".
            eprintln!("balancer: {e:#}");
            ExitCode::FAILURE
        }
    }
}
