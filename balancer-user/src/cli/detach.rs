//! `balancer detach`: remove the programs and the balancer's pins (its maps
//! and links, never another tool's pins in the same directory). With a daemon
//! running, the daemon does it (and stops); without one (the data plane
//! keeps forwarding from its pins after the daemon stops), the CLI removes
//! the pins itself, which detaches the programs.

use std::path::{Path, PathBuf};

use clap::Args;

use super::{SocketArg, format, unexpected};
use crate::{
    config::DEFAULT_PIN_DIR,
    control::{Reply, Request, client},
    pin,
};

#[derive(Args, Debug)]
pub struct DetachArgs {
    /// The bpffs directory to clear when no daemon answers (`[bpf] pin_dir`).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    #[command(flatten)]
    pub socket: SocketArg,
}

pub fn run(args: &DetachArgs) -> anyhow::Result<()> {
    format::print(&detach(args)?)
}

/// Detach, through the daemon or without it; what to print.
fn detach(args: &DetachArgs) -> anyhow::Result<String> {
    match client::request(&args.socket.socket, &Request::Detach) {
        Ok(Reply::Detached {
            pins_removed,
            foreign_left,
        }) => Ok(render_detached(pins_removed, foreign_left)),
        Ok(other) => Err(unexpected("detach", &other)),
        Err(e)
            if e.downcast_ref::<client::Error>()
                .is_some_and(client::Error::no_daemon) =>
        {
            crate::attach::remove_tc_filters();
            let removed = pin::remove_ours(&args.pin_dir)?;
            Ok(render_removed(removed, &args.pin_dir))
        }
        Err(e) => Err(e),
    }
}

/// The daemon detached and stopped.
pub fn render_detached(pins_removed: usize, foreign_left: usize) -> String {
    format!(
        "detached: removed {pins_removed} pins{}; the daemon has stopped\n",
        left(foreign_left)
    )
}

/// No daemon: the CLI removed the pins itself.
pub fn render_removed(removed: pin::Removed, pin_dir: &Path) -> String {
    format!(
        "removed {} pins from {}{}\n",
        removed.pins,
        pin_dir.display(),
        left(removed.foreign_left)
    )
}

fn left(foreign: usize) -> String {
    match foreign {
        0 => String::new(),
        n => format!(" (left {n} entries that are not the balancer's)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_detach_messages() {
        assert_eq!(
            render_detached(5, 0),
            "detached: removed 5 pins; the daemon has stopped\n"
        );
        assert_eq!(
            render_detached(5, 1),
            "detached: removed 5 pins (left 1 entries that are not the balancer's); the daemon has stopped\n"
        );
        let removed = |pins, foreign_left| pin::Removed { pins, foreign_left };
        assert_eq!(
            render_removed(removed(3, 0), Path::new("/sys/fs/bpf/balancer")),
            "removed 3 pins from /sys/fs/bpf/balancer\n"
        );
    }

    /// No daemon at the socket: detach falls back to the pin dir (here a
    /// plain directory; `remove_ours` does not care which filesystem).
    #[test]
    fn cli_detach_without_a_daemon_removes_the_pins() {
        let dir = std::env::temp_dir().join(format!("balancer-cli-detach-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pins = dir.join("pins");
        std::fs::create_dir_all(&pins).unwrap();
        std::fs::write(pins.join("MAGLEV"), b"").unwrap();
        std::fs::write(pins.join("link_xdp_eth0"), b"").unwrap();
        let args = DetachArgs {
            pin_dir: pins.clone(),
            socket: SocketArg {
                socket: dir.join("no-such.sock"),
            },
        };
        assert_eq!(
            detach(&args).unwrap(),
            render_removed(
                pin::Removed {
                    pins: 2,
                    foreign_left: 0
                },
                &pins
            )
        );
        assert!(!pins.exists());
        // Nothing left: still fine, nothing removed.
        assert_eq!(
            detach(&args).unwrap(),
            render_removed(
                pin::Removed {
                    pins: 0,
                    foreign_left: 0
                },
                &pins
            )
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
