//! Backend health checks, with HAProxy's semantics.
//!
//! [`HealthChecker::spawn`] starts one tokio task per backend. Every
//! `interval` it runs one check (`tcp`: a TCP connect; `http`: `GET path`,
//! passing iff the status is `expect_status`), bounded as a whole by
//! `timeout`. The **first check runs at once** on spawn, not one interval
//! later, so a dead backend is found within `fall` checks of the daemon
//! starting. Checks never overlap: when one outlasts `interval` (a `timeout`
//! longer than `interval` is allowed, as in HAProxy), the next starts as soon
//! as it ends and the schedule shifts.
//!
//! A backend that is up goes down after `fall` failures in a row, one that is
//! down goes up after `rise` passes in a row; a result of the opposite kind
//! resets the count ([`Tracker`]). Only transitions are reported, as
//! [`HealthEvent`]s on the channel given to `spawn`. Every result is counted
//! in the backend's [`HealthStats`], for metrics.
//!
//! With `check = "none"` no task runs: the backend is always up and no event
//! is ever sent.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use tokio::{
    sync::mpsc::UnboundedSender,
    task::JoinHandle,
    time::{self, MissedTickBehavior},
};

use crate::config::{HealthCheckKind, HealthConfig};

mod probe;
#[cfg(test)]
mod tests;

/// A backend's health changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthEvent {
    pub service: String,
    pub backend: SocketAddr,
    /// The new state: `true` if the backend just went up.
    pub up: bool,
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// When the check started.
    pub at: SystemTime,
    pub success: bool,
    /// Short and human: `"ok"`, `"ok (200)"`, `"status 500"`, `"timeout"`,
    /// `"connection refused"`, ...
    pub reason: String,
    /// How long the check took (at most about `timeout`).
    pub duration: Duration,
}

/// One backend's check results, shared between its task and readers
/// (metrics, status).
#[derive(Debug)]
pub struct HealthStats {
    /// Checks that passed.
    pub passed: AtomicU64,
    /// Checks that failed.
    pub failed: AtomicU64,
    /// The latest check, `None` before the first one ends.
    pub last_result: Mutex<Option<CheckResult>>,
    up: AtomicBool,
}

impl HealthStats {
    fn new(up: bool) -> Self {
        HealthStats {
            passed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_result: Mutex::new(None),
            up: AtomicBool::new(up),
        }
    }

    pub fn passed(&self) -> u64 {
        self.passed.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// A copy of the latest check's result.
    pub fn last_result(&self) -> Option<CheckResult> {
        self.last_result
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The backend's current state, as last reported.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn record(&self, result: CheckResult) {
        let counter = if result.success {
            &self.passed
        } else {
            &self.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        *self
            .last_result
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(result);
    }
}

/// HAProxy's rise/fall state machine, without the I/O.
#[derive(Debug, Clone)]
pub struct Tracker {
    up: bool,
    /// Results in a row against the current state.
    streak: u32,
    rise: u32,
    fall: u32,
}

impl Tracker {
    /// `rise` and `fall` below 1 count as 1.
    pub fn new(up: bool, rise: u32, fall: u32) -> Self {
        Tracker {
            up,
            streak: 0,
            rise: rise.max(1),
            fall: fall.max(1),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Counts one result; returns the new state if it changed.
    pub fn record(&mut self, success: bool) -> Option<bool> {
        if success == self.up {
            // Agrees with the current state: any streak against it is broken.
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { self.fall } else { self.rise };
        if self.streak < needed {
            return None;
        }
        self.up = success;
        self.streak = 0;
        Some(self.up)
    }
}

/// A running (or, for `check = "none"`, absent) check task. Dropping it, or
/// [`stop`](Self::stop), ends the task.
#[derive(Debug)]
pub struct HealthHandle {
    task: Option<JoinHandle<()>>,
    stats: Arc<HealthStats>,
}

impl HealthHandle {
    /// The backend's check counters and latest result.
    pub fn stats(&self) -> Arc<HealthStats> {
        Arc::clone(&self.stats)
    }

    /// The backend's current state. Always `true` for `check = "none"`.
    pub fn is_up(&self) -> bool {
        self.stats.is_up()
    }

    /// Ends the task, at its next await point. Events it already sent stay
    /// in the channel. Idempotent.
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for HealthHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One backend's check loop.
#[derive(Debug)]
pub struct HealthChecker {
    service: String,
    backend: SocketAddr,
    config: HealthConfig,
    tracker: Tracker,
    stats: Arc<HealthStats>,
    events: UnboundedSender<HealthEvent>,
}

impl HealthChecker {
    /// Starts checking `backend`, which is considered up or down to begin
    /// with as `initially_up` says; the first check runs at once. Must be
    /// called within a tokio runtime.
    ///
    /// The task also ends by itself if `events`' receiver is dropped.
    pub fn spawn(
        service: String,
        backend: SocketAddr,
        config: HealthConfig,
        initially_up: bool,
        events: UnboundedSender<HealthEvent>,
    ) -> HealthHandle {
        if config.check == HealthCheckKind::None {
            return HealthHandle {
                task: None,
                stats: Arc::new(HealthStats::new(true)),
            };
        }
        let stats = Arc::new(HealthStats::new(initially_up));
        let checker = HealthChecker {
            service,
            backend,
            tracker: Tracker::new(initially_up, config.rise, config.fall),
            config,
            stats: Arc::clone(&stats),
            events,
        };
        HealthHandle {
            task: Some(tokio::spawn(checker.run())),
            stats,
        }
    }

    async fn run(mut self) {
        // `interval` panics on zero; config validation refuses it anyway.
        let period = self.config.interval.max(Duration::from_millis(1));
        let mut ticks = time::interval(period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            // The first tick completes at once.
            ticks.tick().await;
            let result = self.check().await;
            tracing::debug!(
                service = %self.service,
                backend = %self.backend,
                success = result.success,
                reason = %result.reason,
                duration = ?result.duration,
                "health check"
            );
            let success = result.success;
            let reason = result.reason.clone();
            self.stats.record(result);
            let Some(up) = self.tracker.record(success) else {
                continue;
            };
            self.stats.up.store(up, Ordering::Relaxed);
            if up {
                tracing::info!(service = %self.service, backend = %self.backend, %reason, "backend up");
            } else {
                tracing::warn!(service = %self.service, backend = %self.backend, %reason, "backend down");
            }
            let event = HealthEvent {
                service: self.service.clone(),
                backend: self.backend,
                up,
            };
            if self.events.send(event).is_err() {
                tracing::debug!(service = %self.service, backend = %self.backend, "health event receiver gone; stopping checks");
                return;
            }
        }
    }

    async fn check(&self) -> CheckResult {
        let at = SystemTime::now();
        let start = Instant::now();
        let probe = async {
            match self.config.check {
                HealthCheckKind::Tcp => probe::tcp(self.backend).await,
                HealthCheckKind::Http => {
                    probe::http(self.backend, &self.config.path, self.config.expect_status).await
                }
                // `spawn` starts no task for `none`.
                HealthCheckKind::None => Ok("ok".to_owned()),
            }
        };
        let (success, reason) = match time::timeout(self.config.timeout, probe).await {
            Ok(Ok(reason)) => (true, reason),
            Ok(Err(reason)) => (false, reason),
            Err(_elapsed) => (false, "timeout".to_owned()),
        };
        CheckResult {
            at,
            success,
            reason,
            duration: start.elapsed(),
        }
    }
}
