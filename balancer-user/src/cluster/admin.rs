//! Backend changes applied on every gateway at one instant, and the admin
//! state a gateway that was away adopts.
//!
//! - **One instant.** The gateway an operator asks (the origin) checks the
//!   change, picks `T` = its wall clock + [`LEAD`], and sends the change to
//!   every linked peer. Each peer checks it as it would its own command
//!   and answers at once: accepted (it will apply at `T`) or refused, with
//!   the one-line reason. With every answer in (or [`ANSWER_WITHIN`] gone),
//!   the origin applies at `T` too. Peers that did not answer in time are
//!   reported unreachable; they apply at `T` if the change reached them,
//!   else they catch up when they link again.
//! - **A refusal stops it everywhere.** One peer refusing means the
//!   gateways' sets differ already; the origin applies nothing, tells
//!   every peer it sent the change to that it is cancelled (there is a lead
//!   minus [`ANSWER_WITHIN`] left for that), and reports the refusal.
//! - **Catch-up.** Every gateway keeps an admin version, a Lamport counter:
//!   a change carries the origin's version + 1, and whoever applies it
//!   takes the larger of its own and that. A link's server sends its admin
//!   state (every backend's address, weight, drain, name) first in every
//!   sync;
//!   a client whose version is lower adopts it before anything else,
//!   health aside.
//! - **Across a restart.** The version is pinned with the backends
//!   (`ADMIN`, beside `BACKENDS`), with the fingerprint of the set it
//!   stood for ([`AdminState::set_fingerprint`]). A restarted gateway that
//!   finds that set again resumes the version. One whose set differs (a
//!   config backend removed at runtime comes back, the config was edited,
//!   a reload diverged) resumes it *behind*: it offers its state as one
//!   version lower, so it adopts any peer that holds the version, never
//!   overrides one, and its own next change still carries a version above
//!   everything it saw.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::{
    sync::{mpsc, oneshot},
    task::AbortHandle,
    time::{Instant, sleep, timeout_at},
};
use tracing::{info, warn};

/// From the origin's clock to the agreed instant: long enough for a LAN
/// round trip and a cancellation. Gateways must run NTP: the instants
/// differ between them by their clocks' skew.
pub const LEAD: Duration = Duration::from_millis(500);
/// Peers' answers count only within this; the rest of [`LEAD`] is for
/// cancelling.
pub const ANSWER_WITHIN: Duration = Duration::from_millis(300);
/// A proposal whose instant is further than this from this gateway's
/// clock + [`LEAD`] is refused: the clocks differ too much for "one
/// instant" to mean anything.
pub const MAX_SKEW: Duration = Duration::from_secs(5);
/// A one-line reason on the wire is cut to this many bytes.
pub const MAX_REASON: usize = 1000;

/// What a backend change does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `name`: the prefix of the engine.io session ids it mints.
    Add {
        weight: u32,
        name: Option<String>,
    },
    Remove,
    Drain,
    Undrain,
    SetWeight {
        weight: u32,
    },
}

/// A backend change, by names every gateway shares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub service: String,
    pub backend: SocketAddr,
    pub op: Op,
}

/// A change as the origin sends it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// Random, for the answer and a cancellation to name it.
    pub id: u64,
    /// The origin's admin version + 1.
    pub version: u64,
    /// When to apply it: ms since the Unix epoch (wall clock).
    pub apply_at_ms: u64,
    pub change: Change,
}

/// One backend as the operator set it (health is each gateway's own).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminBackend {
    pub address: SocketAddr,
    pub weight: u32,
    pub draining: bool,
    /// Its sid prefix, from the config or `backend add --name`.
    pub name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminService {
    pub name: String,
    pub backends: Vec<AdminBackend>,
}

/// A gateway's whole admin state and its version.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdminState {
    pub version: u64,
    pub services: Vec<AdminService>,
}

impl AdminState {
    /// A hash of the services' backends, weights, drains and names,
    /// whatever their order: equal for equal sets within one build. An
    /// unnamed backend hashes as before names were carried, so a pinned
    /// fingerprint of a set without names still matches after an upgrade.
    pub fn set_fingerprint(&self) -> u64 {
        let mut services: Vec<&AdminService> = self.services.iter().collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for s in services {
            h.update(&(s.name.len() as u64).to_le_bytes());
            h.update(s.name.as_bytes());
            let mut backends = s.backends.clone();
            backends.sort_by_key(|b| b.address);
            h.update(&(backends.len() as u64).to_le_bytes());
            for b in backends {
                let address = b.address.to_string();
                h.update(&(address.len() as u64).to_le_bytes());
                h.update(address.as_bytes());
                h.update(&b.weight.to_le_bytes());
                h.update(&[u8::from(b.draining)]);
                if let Some(name) = &b.name {
                    h.update(&[0xff, name.len() as u8]);
                    h.update(name.as_bytes());
                }
            }
        }
        h.digest()
    }

    /// Add one `AdminState` frame's services: a service continued from
    /// the last frame goes on where it stopped.
    pub fn extend(&mut self, services: Vec<AdminService>) {
        for s in services {
            match self.services.last_mut() {
                Some(last) if last.name == s.name => last.backends.extend(s.backends),
                _ => self.services.push(s),
            }
        }
    }
}

/// What the links need of the daemon. Called on blocking threads.
pub trait Admin: Send + Sync {
    /// Would this gateway apply `change` now? The one-line reason if not.
    fn check(&self, change: &Change) -> Result<(), String>;
    /// Apply `change` (made at admin version `version`); a no-op if it is
    /// in effect already. What it did, in one line.
    fn apply(&self, change: &Change, version: u64) -> anyhow::Result<String>;
    fn state(&self) -> AdminState;
    /// Adopt `state` if its version is above this gateway's; what changed,
    /// or `None` if this gateway was not behind.
    fn adopt(&self, state: &AdminState) -> anyhow::Result<Option<String>>;
}

/// The wall clock in ms since the Unix epoch.
pub fn realtime_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Is `at_ms`, a proposal's instant, within [`MAX_SKEW`] of when this
/// gateway would have picked? The one-line reason if not.
pub fn check_instant(at_ms: u64) -> Result<(), String> {
    let expected = realtime_ms() + LEAD.as_millis() as u64;
    let off = at_ms.abs_diff(expected);
    if off > MAX_SKEW.as_millis() as u64 {
        return Err(format!(
            "the change's instant is {off} ms off this gateway's clock (more than {} s): \
             synchronise the gateways' clocks (NTP)",
            MAX_SKEW.as_secs()
        ));
    }
    Ok(())
}

/// How long until wall-clock instant `at_ms` (zero if it has passed).
pub fn until(at_ms: u64) -> Duration {
    Duration::from_millis(at_ms.saturating_sub(realtime_ms()))
}

/// What a client link is asked to send.
pub enum Outgoing {
    /// Send the proposal; the peer's answer (`Some(reason)` if refused)
    /// goes to the sender. Dropped unanswered if the link ends.
    Propose(Proposal, oneshot::Sender<Option<String>>),
    Cancel(u64),
}

/// Every linked peer's outbox (its client link's), by peer.
#[derive(Default)]
pub struct Outboxes(Mutex<HashMap<SocketAddr, mpsc::Sender<Outgoing>>>);

impl Outboxes {
    pub fn open(&self, peer: SocketAddr) -> mpsc::Receiver<Outgoing> {
        let (tx, rx) = mpsc::channel(64);
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(peer, tx);
        rx
    }

    pub fn close(&self, peer: SocketAddr) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&peer);
    }

    fn get(&self, peer: SocketAddr) -> Option<mpsc::Sender<Outgoing>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&peer)
            .cloned()
    }
}

/// How the peers took a proposal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub apply_at_ms: u64,
    /// Accepted: they apply at the instant.
    pub accepted: Vec<SocketAddr>,
    /// Peer and its one-line reason.
    pub refused: Vec<(SocketAddr, String)>,
    /// Peer and why it is counted unreachable.
    pub unreachable: Vec<(SocketAddr, String)>,
}

impl Outcome {
    /// The cluster's part of the command's answer, one line.
    pub fn summary(&self) -> String {
        let list = |peers: &[SocketAddr]| {
            peers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut s = if self.accepted.is_empty() {
            "applied on no peer".to_owned()
        } else {
            format!("applied on peers {}", list(&self.accepted))
        };
        if !self.unreachable.is_empty() {
            let named: Vec<String> = self
                .unreachable
                .iter()
                .map(|(p, why)| format!("{p} ({why})"))
                .collect();
            s.push_str(&format!(
                "; unreachable: {}, which catch up when they link again",
                named.join(", ")
            ));
        }
        s
    }
}

/// Send `proposal` to every peer in `peers` that is linked, and collect
/// their answers until [`ANSWER_WITHIN`]. On a refusal, everyone it was
/// sent to is told to cancel it.
pub async fn propose(outboxes: &Outboxes, peers: &[SocketAddr], proposal: Proposal) -> Outcome {
    let deadline = Instant::now() + ANSWER_WITHIN;
    let mut outcome = Outcome {
        apply_at_ms: proposal.apply_at_ms,
        ..Outcome::default()
    };
    let mut waiting = Vec::new();
    for &peer in peers {
        let (tx, rx) = oneshot::channel();
        let sent = match outboxes.get(peer) {
            Some(outbox) => outbox
                .send(Outgoing::Propose(proposal.clone(), tx))
                .await
                .is_ok(),
            None => false,
        };
        if sent {
            waiting.push((peer, rx));
        } else {
            outcome.unreachable.push((peer, "not linked".to_owned()));
        }
    }
    let sent_to: Vec<SocketAddr> = waiting.iter().map(|(p, _)| *p).collect();
    for (peer, rx) in waiting {
        match timeout_at(deadline, rx).await {
            Ok(Ok(None)) => outcome.accepted.push(peer),
            Ok(Ok(Some(reason))) => outcome.refused.push((peer, reason)),
            Ok(Err(_)) => outcome
                .unreachable
                .push((peer, "the link dropped before it answered".to_owned())),
            Err(_) => outcome.unreachable.push((
                peer,
                format!("no answer within {} ms", ANSWER_WITHIN.as_millis()),
            )),
        }
    }
    if !outcome.refused.is_empty() {
        for peer in sent_to {
            if let Some(outbox) = outboxes.get(peer) {
                let _ = outbox.send(Outgoing::Cancel(proposal.id)).await;
            }
        }
    }
    outcome
}

/// Changes accepted from peers, waiting for their instant.
#[derive(Default)]
pub struct Scheduled(Mutex<HashMap<u64, AbortHandle>>);

impl Scheduled {
    /// Apply `proposal` through `admin` at its instant, unless cancelled.
    pub fn schedule(self: &Arc<Self>, admin: Arc<dyn Admin>, from: SocketAddr, proposal: Proposal) {
        let id = proposal.id;
        let scheduled = Arc::clone(self);
        let task = tokio::spawn(async move {
            sleep(until(proposal.apply_at_ms)).await;
            scheduled.take(id);
            let applied = tokio::task::spawn_blocking(move || {
                admin.apply(&proposal.change, proposal.version)
            })
            .await;
            match applied {
                Ok(Ok(done)) => info!("cluster: change from {from}: {done}"),
                Ok(Err(e)) => warn!("cluster: change from {from} failed here: {e:#}"),
                Err(e) => warn!("cluster: change from {from} failed here: {e}"),
            }
        });
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, task.abort_handle());
    }

    fn take(&self, id: u64) -> Option<AbortHandle> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id)
    }

    /// Cancel change `id`; whether it was still waiting.
    pub fn cancel(&self, id: u64) -> bool {
        self.take(id).map(|task| task.abort()).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proposal() -> Proposal {
        Proposal {
            id: 7,
            version: 3,
            apply_at_ms: realtime_ms() + LEAD.as_millis() as u64,
            change: Change {
                service: "web".into(),
                backend: "198.18.1.14:3000".parse().unwrap(),
                op: Op::Add {
                    weight: 1,
                    name: None,
                },
            },
        }
    }

    /// A peer whose link answers `answer` (or never, for `None`).
    fn linked(outboxes: &Outboxes, peer: SocketAddr, answer: Option<Option<String>>) {
        let mut rx = outboxes.open(peer);
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some(out) = rx.recv().await {
                if let Outgoing::Propose(_, tx) = out {
                    match &answer {
                        Some(a) => {
                            let _ = tx.send(a.clone());
                        }
                        None => held.push(tx),
                    }
                }
            }
        });
    }

    #[tokio::test]
    async fn answers_sort_peers_into_accepted_refused_and_unreachable() {
        let outboxes = Outboxes::default();
        let [a, b, c, d]: [SocketAddr; 4] =
            [1, 2, 3, 4].map(|n| format!("198.18.2.1{n}:7946").parse().unwrap());
        linked(&outboxes, a, Some(None));
        linked(&outboxes, b, None);
        linked(
            &outboxes,
            d,
            Some(Some("service \"web\" has no backend".into())),
        );
        let started = Instant::now();
        let outcome = propose(&outboxes, &[a, b, c], proposal()).await;
        assert!(started.elapsed() >= ANSWER_WITHIN && started.elapsed() < LEAD);
        assert_eq!(outcome.accepted, vec![a]);
        assert!(outcome.refused.is_empty());
        assert_eq!(outcome.unreachable[0], (c, "not linked".to_owned()));
        assert_eq!(outcome.unreachable[1].0, b);
        let line = outcome.summary();
        assert!(
            line.starts_with("applied on peers 198.18.2.11:7946; unreachable: "),
            "{line}"
        );
        assert!(line.contains("198.18.2.13:7946 (not linked)"), "{line}");

        let outcome = propose(&outboxes, &[a, d], proposal()).await;
        assert_eq!(outcome.accepted, vec![a]);
        assert_eq!(outcome.refused[0].0, d);
    }

    #[test]
    fn the_set_fingerprint_follows_the_set_not_its_order() {
        let b = |n: u8, weight, draining| AdminBackend {
            address: format!("198.18.1.1{n}:3000").parse().unwrap(),
            weight,
            draining,
            name: None,
        };
        let named = |n: u8, name: &str| AdminBackend {
            name: Some(name.into()),
            ..b(n, 1, false)
        };
        let state = |backends: Vec<AdminBackend>, version| AdminState {
            version,
            services: vec![AdminService {
                name: "web".into(),
                backends,
            }],
        };
        let fp = state(vec![b(1, 1, false), b(2, 1, false)], 3).set_fingerprint();
        assert_eq!(
            fp,
            state(vec![b(2, 1, false), b(1, 1, false)], 9).set_fingerprint()
        );
        for other in [
            vec![b(1, 1, false)],
            vec![b(1, 2, false), b(2, 1, false)],
            vec![b(1, 1, true), b(2, 1, false)],
            vec![b(1, 1, false), b(3, 1, false)],
            vec![named(1, "b1"), b(2, 1, false)],
        ] {
            assert_ne!(fp, state(other, 3).set_fingerprint());
        }
        assert_ne!(
            state(vec![named(1, "b1")], 3).set_fingerprint(),
            state(vec![named(1, "b2")], 3).set_fingerprint()
        );
    }

    #[test]
    fn an_instant_off_by_more_than_the_skew_is_refused() {
        let now = realtime_ms() + LEAD.as_millis() as u64;
        assert_eq!(check_instant(now), Ok(()));
        assert_eq!(check_instant(now - 4000), Ok(()));
        for off in [now + 6000, now - 6000, 0, u64::MAX] {
            let e = check_instant(off).unwrap_err();
            assert!(e.contains("(NTP)") && !e.contains('\n'), "{e}");
        }
    }

    struct Counting(Mutex<Vec<u64>>);

    impl Admin for Counting {
        fn check(&self, _: &Change) -> Result<(), String> {
            Ok(())
        }
        fn apply(&self, _: &Change, version: u64) -> anyhow::Result<String> {
            self.0.lock().unwrap().push(version);
            Ok("done".into())
        }
        fn state(&self) -> AdminState {
            AdminState::default()
        }
        fn adopt(&self, _: &AdminState) -> anyhow::Result<Option<String>> {
            Ok(None)
        }
    }

    #[tokio::test]
    async fn a_scheduled_change_applies_at_its_instant_unless_cancelled() {
        let admin = Arc::new(Counting(Mutex::new(Vec::new())));
        let scheduled = Arc::new(Scheduled::default());
        let from = "198.18.2.11:7946".parse().unwrap();
        let mut p = proposal();
        p.apply_at_ms = realtime_ms() + 200;
        scheduled.schedule(admin.clone(), from, p.clone());
        let mut cancelled = p.clone();
        cancelled.id = 8;
        cancelled.version = 4;
        scheduled.schedule(admin.clone(), from, cancelled);
        sleep(Duration::from_millis(100)).await;
        assert!(admin.0.lock().unwrap().is_empty(), "not before its instant");
        assert!(scheduled.cancel(8));
        sleep(Duration::from_millis(250)).await;
        assert_eq!(*admin.0.lock().unwrap(), vec![3]);
        assert!(!scheduled.cancel(7), "applied: nothing left to cancel");
    }
}
