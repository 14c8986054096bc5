//! `balancer assets DIR` (hidden): the man pages and the bash, zsh and fish
//! completions, generated from the clap definition the binary parses its own
//! arguments with, so they cannot drift from it. `cargo xtask package` runs
//! it and puts the files in the .deb.

use std::{fs, path::PathBuf};

use anyhow::{Context as _, Result};
use clap::Args;
use clap_complete::Shell;

/// The binary's name, which the completions are registered for.
const BIN: &str = "balancer";

#[derive(Args, Debug)]
pub struct AssetsArgs {
    /// Where to write `man/*.1` (balancer(1), then one page per subcommand)
    /// and `completions/` (`balancer.bash`, `_balancer`, `balancer.fish`).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// `cmd` is the binary's whole command (`Cli::command()`).
pub fn run(cmd: clap::Command, args: &AssetsArgs) -> Result<()> {
    let man = args.dir.join("man");
    let completions = args.dir.join("completions");
    for dir in [&man, &completions] {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    clap_mangen::generate_to(cmd.clone(), &man)
        .with_context(|| format!("cannot write the man pages to {}", man.display()))?;
    let mut shown = visible(&cmd);
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut shown, BIN, &completions).with_context(|| {
            format!(
                "cannot write the {shell} completions to {}",
                completions.display()
            )
        })?;
    }
    Ok(())
}

/// `cmd` without its hidden subcommands (this one), which clap_complete's
/// generators would otherwise offer; clap_mangen leaves them out itself.
fn visible(cmd: &clap::Command) -> clap::Command {
    clap::Command::new(BIN)
        .version(env!("CARGO_PKG_VERSION"))
        .args(cmd.get_arguments().cloned())
        .subcommands(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
}
