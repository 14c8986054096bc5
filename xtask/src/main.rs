//! `cargo xtask`: the project's build and test entry points (DESIGN.md,
//! "Building and testing — contract").

mod apt;
mod bench;
mod bootstrap;
mod build;
mod cmd;
mod demo;
mod npm;
mod package;
mod suites;
mod test;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build and test the XDP balancer"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what is missing (rust-src for nightly, bpf-linker), then build
    /// the kernel object and the `balancer` binary.
    Build(build::Options),
    /// Installs what is missing (Debian packages, Node.js, the Socket.IO
    /// suite's npm packages, bpf-linker, cargo-deb), then unit tests,
    /// BPF_PROG_TEST_RUN tests, network-namespace tests and the Debian
    /// package's install test (needs root); with --vm, the integration suite
    /// in QEMU on Debian kernels.
    Test(test::Options),
    /// A throwaway netns topology (clients, gateway, three backends) with the
    /// balancer and client traffic, until Ctrl-C; then removes it all.
    Demo,
    /// The performance figures: the data plane per packet against an XDP_PASS
    /// floor, end to end against nftables, HAProxy and nginx, Maglev at scale
    /// (needs root; writes bench/results/).
    Bench(bench::Options),
    /// The Debian package (installs cargo-deb when missing): the binary, the
    /// systemd unit, /etc/balancer/balancer.toml, the man pages and the
    /// shell completions; prints the .deb's path.
    Package,
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Build(opts) => build::run(&opts),
        Command::Test(opts) => test::run(&opts),
        Command::Demo => demo::run(),
        Command::Bench(opts) => bench::run(&opts),
        Command::Package => package::run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
