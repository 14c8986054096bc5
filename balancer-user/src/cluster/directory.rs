//! Between this gateway's ids and the names gateways share. Service and
//! backend ids are local (`crate::ids`, `adopt`): two gateways with one
//! config may number them differently. So an entry leaves a gateway naming
//! its service by VIP and protocol and its backend by address, and the
//! receiver finds its own ids for them, or refuses the entry.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use balancer_common::{
    addr::{from_words, mask, to_words},
    types::AffinityKey,
};

use super::wire::{Entry, Reject};
use crate::{config::AffinityMode, state::ServiceState};

/// Re-announce at least this often, and at most this rarely.
const MIN_REANNOUNCE: Duration = Duration::from_secs(1);
const MAX_REANNOUNCE: Duration = Duration::from_secs(30);

/// The running services, as the cluster needs them; rebuilt by the daemon
/// whenever its services change.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Directory {
    services: HashMap<u32, Service>,
    /// `(VIP, protocol)` → service id.
    by_vip: HashMap<(SocketAddr, u8), u32>,
}

#[derive(Clone, Debug, PartialEq)]
struct Service {
    vip: SocketAddr,
    proto: u8,
    timeout_ns: u64,
    prefix_v4: u8,
    prefix_v6: u8,
    /// Backend id → address.
    backends: HashMap<u32, SocketAddr>,
}

/// A received entry in this gateway's ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Local {
    pub key: AffinityKey,
    pub backend_id: u32,
    /// The service's affinity timeout.
    pub timeout_ns: u64,
}

impl Directory {
    /// The services of `services` that keep affinity entries: source-ip,
    /// and sid (whose requests without a sid go by client address);
    /// four-tuple services keep none.
    pub fn of(services: &[ServiceState]) -> Self {
        let mut d = Directory::default();
        for s in services
            .iter()
            .filter(|s| s.config.affinity != AffinityMode::FourTuple)
        {
            let value = s.map_value(0, true);
            let service = Service {
                vip: s.config.vip,
                proto: s.config.protocol.number(),
                timeout_ns: value.affinity_timeout_ns,
                prefix_v4: value.prefix_v4,
                prefix_v6: value.prefix_v6,
                backends: s.backends.iter().map(|b| (b.id, b.address)).collect(),
            };
            d.by_vip.insert((service.vip, service.proto), s.id);
            d.services.insert(s.id, service);
        }
        d
    }

    /// The service's affinity timeout, if it is one of ours.
    pub fn timeout_ns(&self, service_id: u32) -> Option<u64> {
        self.services.get(&service_id).map(|s| s.timeout_ns)
    }

    /// How often active entries are sent again: a quarter of the shortest
    /// affinity timeout, so a peer's copy of an entry still in use never
    /// expires even if one re-announcement is lost.
    pub fn reannounce_period(&self) -> Duration {
        let shortest = self.services.values().map(|s| s.timeout_ns).min();
        shortest
            .map_or(MAX_REANNOUNCE, |ns| Duration::from_nanos(ns / 4))
            .clamp(MIN_REANNOUNCE, MAX_REANNOUNCE)
    }

    /// A local entry in shared names, `age_ns` old; `None` for a service or
    /// backend id no longer running (removed since the kernel stored it).
    pub fn outgoing(&self, key: &AffinityKey, backend_id: u32, age_ns: u64) -> Option<Entry> {
        let s = self.services.get(&key.service_id)?;
        let backend = *s.backends.get(&backend_id)?;
        Some(Entry {
            vip: s.vip,
            proto: s.proto,
            client: from_words(key.client, key.family),
            backend,
            age_ms: u32::try_from(age_ns / 1_000_000).unwrap_or(u32::MAX),
        })
    }

    /// A received entry in this gateway's ids, or why it names nothing
    /// here. The client is masked again to this gateway's prefix (one
    /// config: the same).
    pub fn incoming(&self, e: &Entry) -> Result<Local, Reject> {
        let id = *self
            .by_vip
            .get(&(e.vip, e.proto))
            .ok_or(Reject::UnknownService)?;
        let s = &self.services[&id];
        if e.client.is_ipv4() != e.vip.is_ipv4() {
            return Err(Reject::Malformed);
        }
        let backend_id = s
            .backends
            .iter()
            .find(|(_, a)| **a == e.backend)
            .map(|(id, _)| *id)
            .ok_or(Reject::UnknownBackend)?;
        let (words, family) = to_words(e.client);
        let prefix = match e.client {
            IpAddr::V4(_) => s.prefix_v4,
            IpAddr::V6(_) => s.prefix_v6,
        };
        Ok(Local {
            key: AffinityKey {
                service_id: id,
                family,
                _pad: [0; 3],
                client: mask(words, family, prefix),
            },
            backend_id,
            timeout_ns: s.timeout_ns,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;
    use crate::{adopt, config::Config};

    /// The services of `text` as a fresh start numbers them.
    fn services(text: &str) -> Vec<ServiceState> {
        let config = Config::from_str(text).unwrap();
        let pinned = adopt::Pinned {
            maglev_capacity: crate::state::maglev_entries(&config),
            ..adopt::Pinned::default()
        };
        adopt::plan(&config, &pinned).unwrap().services
    }

    const TWO: &str = r#"
[interfaces]
clients = "eth0"
[[services]]
name = "web"
vip = "198.18.0.100:80"
source_prefix_v4 = 24
affinity_timeout = "2m"
[[services.backends]]
address = "198.18.1.11:8080"
[[services.backends]]
address = "198.18.1.12:8080"
[[services]]
name = "hash"
vip = "198.18.0.101:80"
affinity = "four-tuple"
[[services.backends]]
address = "198.18.1.11:8080"
"#;

    #[test]
    fn an_entry_goes_out_by_name_and_comes_back_by_id() {
        let s = services(TWO);
        let d = Directory::of(&s);
        let web = &s[0];
        let b2 = web.backends[1].clone();
        let (client, family) = web.masked("198.18.0.77".parse().unwrap());
        let key = AffinityKey {
            service_id: web.id,
            family,
            _pad: [0; 3],
            client,
        };
        let e = d.outgoing(&key, b2.id, 3_500_000_000).unwrap();
        assert_eq!(e.vip, web.config.vip);
        assert_eq!(e.backend, b2.address);
        assert_eq!(e.client, "198.18.0.0".parse::<IpAddr>().unwrap());
        assert_eq!(e.age_ms, 3500);
        let back = d.incoming(&e).unwrap();
        assert_eq!(back.key, key);
        assert_eq!(back.backend_id, b2.id);
        assert_eq!(back.timeout_ns, 120_000_000_000);
        assert_eq!(d.reannounce_period(), Duration::from_secs(30));
    }

    /// A sender's unmasked client is masked to the receiver's prefix.
    #[test]
    fn a_received_client_is_masked_here() {
        let s = services(TWO);
        let d = Directory::of(&s);
        let e = Entry {
            vip: s[0].config.vip,
            proto: 6,
            client: "198.18.0.77".parse().unwrap(),
            backend: s[0].backends[0].address,
            age_ms: 0,
        };
        let local = d.incoming(&e).unwrap();
        assert_eq!(
            local.key.client,
            s[0].masked("198.18.0.1".parse().unwrap()).0
        );
    }

    #[test]
    fn unknown_names_are_refused_by_reason() {
        let s = services(TWO);
        let d = Directory::of(&s);
        let good = Entry {
            vip: s[0].config.vip,
            proto: 6,
            client: "198.18.0.7".parse().unwrap(),
            backend: s[0].backends[0].address,
            age_ms: 0,
        };
        let cases = [
            (
                Entry {
                    vip: "198.18.0.99:80".parse().unwrap(),
                    ..good
                },
                Reject::UnknownService,
            ),
            (Entry { proto: 17, ..good }, Reject::UnknownService),
            // A four-tuple service keeps no affinity.
            (
                Entry {
                    vip: s[1].config.vip,
                    ..good
                },
                Reject::UnknownService,
            ),
            (
                Entry {
                    backend: "198.18.1.13:8080".parse().unwrap(),
                    ..good
                },
                Reject::UnknownBackend,
            ),
            (
                Entry {
                    client: "2001:db8::1".parse().unwrap(),
                    ..good
                },
                Reject::Malformed,
            ),
        ];
        for (e, reason) in cases {
            assert_eq!(d.incoming(&e), Err(reason), "{e:?}");
        }
        // Ids of a backend that left are not sent.
        let key = AffinityKey {
            service_id: s[0].id,
            ..AffinityKey::default()
        };
        assert_eq!(d.outgoing(&key, 999, 0), None);
        assert_eq!(
            d.outgoing(
                &AffinityKey {
                    service_id: 77,
                    ..key
                },
                s[0].backends[0].id,
                0
            ),
            None
        );
    }

    /// Two gateways whose ids differ still agree on names.
    #[test]
    fn ids_differ_names_agree() {
        let a = services(TWO);
        let mut b = services(TWO);
        for s in &mut b {
            s.id += 3;
            for backend in &mut s.backends {
                backend.id += 100;
            }
        }
        let (da, db) = (Directory::of(&a), Directory::of(&b));
        let (client, family) = a[0].masked("198.18.0.5".parse().unwrap());
        let key = AffinityKey {
            service_id: a[0].id,
            family,
            _pad: [0; 3],
            client,
        };
        let e = da.outgoing(&key, a[0].backends[1].id, 0).unwrap();
        let local = db.incoming(&e).unwrap();
        assert_eq!(local.key.service_id, b[0].id);
        assert_eq!(local.backend_id, b[0].backends[1].id);
    }
}
