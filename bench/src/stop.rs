//! Ctrl-C: the first SIGINT or SIGTERM only raises a flag. Every loop and
//! wait of the bench looks at it, returns an error, and the guards it unwinds
//! through stop the servers and delete the namespaces.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, bail};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

pub fn install() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

pub fn requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// An error once Ctrl-C was pressed, to leave through the guards.
pub fn check() -> Result<()> {
    if requested() {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleep `d`, waking early (with an error) on Ctrl-C.
pub fn sleep(d: std::time::Duration) -> Result<()> {
    let end = std::time::Instant::now() + d;
    while std::time::Instant::now() < end {
        check()?;
        std::thread::sleep(
            (end - std::time::Instant::now()).min(std::time::Duration::from_millis(50)),
        );
    }
    check()
}
