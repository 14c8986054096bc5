//! systemd's notify protocol (`Type=notify` / `Type=notify-reload`): READY
//! once the programs are attached and the control socket serves, RELOADING
//! and READY around a reload, STOPPING at shutdown, and watchdog pings.
//! Without `NOTIFY_SOCKET` (not under systemd) every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("telling systemd {states:?}: {e}");
    }
}

pub fn ready() {
    send(&[NotifyState::Ready]);
}

/// RELOADING=1 with the MONOTONIC_USEC that `Type=notify-reload` requires
/// (systemd matches it against the time it asked for the reload).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(e) => tracing::warn!("reading the monotonic clock for systemd: {e}"),
    }
}

pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// Ping the watchdog at half of `WATCHDOG_USEC`, for as long as the task
/// runs (it runs beside the daemon's other tasks, so a wedged runtime stops
/// the pings); never returns without a watchdog.
pub async fn watchdog() {
    let Some(timeout) = sd_notify::watchdog_enabled() else {
        return std::future::pending().await;
    };
    let mut ticks = tokio::time::interval((timeout / 2).max(Duration::from_millis(1)));
    loop {
        ticks.tick().await;
        send(&[NotifyState::Watchdog]);
    }
}
