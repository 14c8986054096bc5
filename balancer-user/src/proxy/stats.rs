//! What the daemon-terminated services count, for `/metrics` and `status`:
//! bad input by reason, requests by what routed them, reuses of pooled
//! backend connections, and per backend the
//! connections opened and open now (the kernel counts these for the
//! services it forwards; here the daemon does).

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
};

/// Why a client's input was refused (the connection closed), or, for
/// `UnknownSid`, routed by client address instead of its session id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BadInput {
    /// A malformed or partial PROXY header.
    BadProxyHeader,
    /// A PROXY header or X-Forwarded-For from a source outside
    /// `trusted_proxies` (every connection from one is refused).
    UntrustedSource,
    /// A request head over `http::MAX_HEAD` bytes or headers.
    HeadTooLarge,
    /// No complete PROXY header or request head within `header_timeout`.
    HeaderTimeout,
    /// A request head that is not HTTP/1.x, or that smuggles.
    BadRequest,
    /// A `sid` whose prefix names no backend of the service.
    UnknownSid,
}

impl BadInput {
    pub const ALL: [BadInput; 6] = [
        BadInput::BadProxyHeader,
        BadInput::UntrustedSource,
        BadInput::HeadTooLarge,
        BadInput::HeaderTimeout,
        BadInput::BadRequest,
        BadInput::UnknownSid,
    ];

    /// The `reason` label.
    pub const fn as_str(self) -> &'static str {
        match self {
            BadInput::BadProxyHeader => "bad_proxy_header",
            BadInput::UntrustedSource => "untrusted_source",
            BadInput::HeadTooLarge => "head_too_large",
            BadInput::HeaderTimeout => "header_timeout",
            BadInput::BadRequest => "bad_request",
            BadInput::UnknownSid => "unknown_sid",
        }
    }
}

/// What chose a request's (or a connection's) backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RoutedBy {
    /// The engine.io session id's prefix.
    Sid,
    /// The client's address: its affinity entry, else its Maglev slot.
    Client,
}

impl RoutedBy {
    pub const ALL: [RoutedBy; 2] = [RoutedBy::Sid, RoutedBy::Client];

    /// The `routed_by` label.
    pub const fn as_str(self) -> &'static str {
        match self {
            RoutedBy::Sid => "sid",
            RoutedBy::Client => "client",
        }
    }
}

/// What happened with the pool of idle backend connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PoolEvent {
    /// A request went on an idle connection from the pool.
    Reused,
    /// A request went on a reused connection (pooled or kept) that ended
    /// before answering, and was sent again on a new one.
    Retried,
}

impl PoolEvent {
    pub const ALL: [PoolEvent; 2] = [PoolEvent::Reused, PoolEvent::Retried];

    /// The `event` label.
    pub const fn as_str(self) -> &'static str {
        match self {
            PoolEvent::Reused => "reused",
            PoolEvent::Retried => "retried",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendCounts {
    pub connections_total: u64,
    pub active: u64,
}

/// One service's counts, indexed like `BadInput::ALL`, `RoutedBy::ALL` and
/// `PoolEvent::ALL`.
#[derive(Clone, Copy, Debug, Default)]
struct ServiceCounts {
    bad_input: [u64; BadInput::ALL.len()],
    requests: [u64; RoutedBy::ALL.len()],
    pool: [u64; PoolEvent::ALL.len()],
}

#[derive(Debug, Default)]
pub struct ProxyStats {
    /// By service name.
    services: Mutex<HashMap<String, ServiceCounts>>,
    /// By backend id.
    backends: Mutex<HashMap<u32, BackendCounts>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ProxyStats {
    /// Add to service `name`'s counts; the name is copied only the first
    /// time (this runs for every request).
    fn service(&self, name: &str, add: impl FnOnce(&mut ServiceCounts)) {
        let mut services = lock(&self.services);
        match services.get_mut(name) {
            Some(counts) => add(counts),
            None => add(services.entry(name.to_owned()).or_default()),
        }
    }

    pub fn bad_input(&self, service: &str, reason: BadInput) {
        self.service(service, |c| c.bad_input[reason as usize] += 1);
    }

    pub fn request(&self, service: &str, routed_by: RoutedBy) {
        self.service(service, |c| c.requests[routed_by as usize] += 1);
    }

    pub fn pool(&self, service: &str, event: PoolEvent) {
        self.service(service, |c| c.pool[event as usize] += 1);
    }

    /// A connection to backend `id` opened; [`ProxyStats::closed`] when it
    /// ends.
    pub fn opened(&self, id: u32) {
        let mut backends = lock(&self.backends);
        let counts = backends.entry(id).or_default();
        counts.connections_total += 1;
        counts.active += 1;
    }

    /// A connection to backend `id` that a previous process opened (and
    /// counted), carried over by an in-place restart.
    pub fn resumed(&self, id: u32) {
        lock(&self.backends).entry(id).or_default().active += 1;
    }

    pub fn closed(&self, id: u32) {
        if let Some(counts) = lock(&self.backends).get_mut(&id) {
            counts.active = counts.active.saturating_sub(1);
        }
    }

    pub fn backend(&self, id: u32) -> BackendCounts {
        lock(&self.backends).get(&id).copied().unwrap_or_default()
    }

    fn counts(&self, service: &str) -> ServiceCounts {
        lock(&self.services)
            .get(service)
            .copied()
            .unwrap_or_default()
    }

    /// Every reason with its count (0 included), for `service`.
    pub fn bad_inputs(&self, service: &str) -> Vec<(String, u64)> {
        let counts = self.counts(service);
        BadInput::ALL
            .iter()
            .map(|&r| (r.as_str().to_owned(), counts.bad_input[r as usize]))
            .collect()
    }

    pub fn requests(&self, service: &str) -> Vec<(String, u64)> {
        let counts = self.counts(service);
        RoutedBy::ALL
            .iter()
            .map(|&r| (r.as_str().to_owned(), counts.requests[r as usize]))
            .collect()
    }

    pub fn pool_events(&self, service: &str) -> Vec<(String, u64)> {
        let counts = self.counts(service);
        PoolEvent::ALL
            .iter()
            .map(|&e| (e.as_str().to_owned(), counts.pool[e as usize]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_land_under_their_service_and_label() {
        let stats = ProxyStats::default();
        stats.bad_input("chat", BadInput::HeadTooLarge);
        stats.bad_input("chat", BadInput::HeadTooLarge);
        stats.request("chat", RoutedBy::Sid);
        stats.request("other", RoutedBy::Client);
        for (i, &r) in BadInput::ALL.iter().enumerate() {
            assert_eq!(r as usize, i, "BadInput::ALL is in declaration order");
        }
        for (i, &r) in RoutedBy::ALL.iter().enumerate() {
            assert_eq!(r as usize, i, "RoutedBy::ALL is in declaration order");
        }
        for (i, &e) in PoolEvent::ALL.iter().enumerate() {
            assert_eq!(e as usize, i, "PoolEvent::ALL is in declaration order");
        }
        stats.pool("chat", PoolEvent::Retried);
        assert_eq!(
            stats.pool_events("chat"),
            [("reused".to_owned(), 0), ("retried".to_owned(), 1)]
        );
        let bad: Vec<(String, u64)> = stats.bad_inputs("chat");
        assert!(bad.contains(&("head_too_large".to_owned(), 2)));
        assert_eq!(bad.iter().map(|(_, n)| n).sum::<u64>(), 2);
        assert_eq!(
            stats.requests("chat"),
            [("sid".to_owned(), 1), ("client".to_owned(), 0)]
        );
        assert_eq!(
            stats.requests("other"),
            [("sid".to_owned(), 0), ("client".to_owned(), 1)]
        );
        stats.opened(3);
        stats.opened(3);
        stats.closed(3);
        assert_eq!(
            stats.backend(3),
            BackendCounts {
                connections_total: 2,
                active: 1
            }
        );
    }
}
