//! The Socket.IO test suite's Node packages (`socket.io`,
//! `socket.io-client`), installed from npm's registry where missing, at the
//! versions `tests/socketio/package-lock.json` pins.

use std::process::Command;

use anyhow::{Context, Result, ensure};

use crate::cmd;

/// The Node project of the end-to-end suite, relative to the workspace.
pub const SOCKETIO_DIR: &str = "tests/socketio";

/// `npm ci` in `tests/socketio` unless its packages are already there.
pub fn ensure_socketio_packages() -> Result<()> {
    let dir = cmd::workspace_root().join(SOCKETIO_DIR);
    let installed = ["socket.io", "socket.io-client"].iter().all(|p| {
        dir.join("node_modules")
            .join(p)
            .join("package.json")
            .exists()
    });
    if installed {
        return Ok(());
    }
    ensure!(
        Command::new("npm")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "the Socket.IO suite needs Node.js and npm (`apt-get install nodejs npm`)"
    );
    eprintln!("installing from npm: socket.io socket.io-client (the Socket.IO suite needs them)");
    // npm's output only on failure (its last line, in the error).
    cmd::output(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir),
    )
    .map(drop)
    .with_context(|| {
        format!(
            "cannot install the Socket.IO suite's npm packages in {}",
            dir.display()
        )
    })
}
