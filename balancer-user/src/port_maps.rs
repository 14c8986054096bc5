//! How a packet finds its service by its destination port (VIP_PORTS), and
//! a backend's reply its VIP by its source port (BACKEND_PORTS,
//! BACKEND_VIPS), as the kernel holds them (see
//! `balancer_common::maps`): pure logic over the daemon's services, written
//! by `dataplane`.

use std::collections::{HashMap, HashSet};

use anyhow::bail;
use balancer_common::{
    addr::to_words,
    maps::{MAX_VIPS_PER_BACKEND, PORT_SHARED},
    types::{BackendVips, ServiceKey},
};

use crate::state::{BackendState, ServiceState};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct PortMaps {
    /// VIP_PORTS entries that are not 0: VIP port → `id + 1` of the one
    /// service on it, or `PORT_SHARED`.
    pub vip_ports: HashMap<u16, u32>,
    /// BACKEND_PORTS entries that are not 0: backend port → `id + 1` of the
    /// one service whose backends use it, or `PORT_SHARED`.
    pub backend_ports: HashMap<u16, u32>,
    /// BACKEND_VIPS: backend address:port/proto → the VIPs it serves, in
    /// service order.
    pub backend_vips: HashMap<ServiceKey, BackendVips>,
    /// Services with a backend address:port that serves other VIPs too:
    /// their replies cannot name their VIP from config, so they get
    /// `SERVICE_AMBIGUOUS_REPLIES`.
    pub ambiguous: HashSet<u32>,
}

impl PortMaps {
    /// The maps as `services` define them. `Err` when a backend
    /// address:port serves more than `MAX_VIPS_PER_BACKEND` services (the
    /// config check and `balancer backend add` refuse that first).
    pub fn of<'a>(
        services: impl IntoIterator<Item = &'a ServiceState>,
    ) -> anyhow::Result<PortMaps> {
        let services: Vec<&ServiceState> = services.into_iter().collect();
        let mut maps = PortMaps::default();
        for service in &services {
            let vip = service.key();
            mark_port(&mut maps.vip_ports, u16::from_be(vip.port), service.id);
            for (b, key) in endpoints(service) {
                mark_port(&mut maps.backend_ports, b.address.port(), service.id);
                let entry = maps.backend_vips.entry(key).or_default();
                let count = entry.count as usize;
                if count == MAX_VIPS_PER_BACKEND {
                    bail!(
                        "backend {} serves more than {MAX_VIPS_PER_BACKEND} services",
                        b.address
                    );
                }
                entry.vips[count] = vip;
                entry.count += 1;
            }
        }
        maps.ambiguous = services
            .iter()
            .filter(|s| endpoints(s).any(|(_, k)| maps.backend_vips[&k].count > 1))
            .map(|s| s.id)
            .collect();
        Ok(maps)
    }
}

/// `service`'s backends, each with its BACKEND_VIPS key; none for a service
/// the daemon terminates, whose backends answer the gateway itself, not a
/// client through it.
fn endpoints(service: &ServiceState) -> impl Iterator<Item = (&BackendState, ServiceKey)> {
    let proto = service.key().proto;
    let kernel_forwarded = !service.config.terminates_in_daemon();
    service
        .backends
        .iter()
        .filter(move |_| kernel_forwarded)
        .map(move |b| {
            let (addr, family) = to_words(b.address.ip());
            let key = ServiceKey {
                addr,
                port: b.address.port().to_be(),
                proto,
                family,
            };
            (b, key)
        })
}

/// Record that service `id` uses `port`: `id + 1` while it is the only one.
fn mark_port(ports: &mut HashMap<u16, u32>, port: u16, id: u32) {
    let who = ports.entry(port).or_insert(id + 1);
    if *who != id + 1 {
        *who = PORT_SHARED;
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use balancer_common::types::PROTO_TCP;

    use super::*;
    use crate::{adopt, config::Config};

    /// Services `s0..s{n}` on VIPs 198.18.0.100.. port 80; the first four
    /// have the backend 198.18.1.99:3000, and the last also 198.18.1.11:4000.
    fn services(n: u8) -> Vec<ServiceState> {
        let mut text = String::from("[interfaces]\nclients = \"eth0\"\n");
        for i in 0..n {
            text += &format!(
                "[[services]]\nname = \"s{i}\"\nvip = \"198.18.0.{}:80\"\n",
                100 + i
            );
            if i < 4 {
                text += "[[services.backends]]\naddress = \"198.18.1.99:3000\"\n";
            }
        }
        text += "[[services.backends]]\naddress = \"198.18.1.11:4000\"\n";
        adopt::from_config(&Config::from_str(&text).unwrap())
    }

    fn endpoint(s: &str) -> ServiceKey {
        let a: std::net::SocketAddr = s.parse().unwrap();
        let (addr, family) = to_words(a.ip());
        ServiceKey {
            addr,
            port: a.port().to_be(),
            proto: PROTO_TCP,
            family,
        }
    }

    #[test]
    fn a_port_of_one_service_names_it_and_a_shared_one_says_so() {
        let services = services(4);
        let maps = PortMaps::of(&services).unwrap();
        assert_eq!(
            maps.backend_ports,
            HashMap::from([(3000, PORT_SHARED), (4000, services[3].id + 1)])
        );
        assert_eq!(maps.vip_ports, HashMap::from([(80, PORT_SHARED)]));
        let shared = maps.backend_vips[&endpoint("198.18.1.99:3000")];
        assert_eq!(shared.count, 4);
        assert_eq!(
            shared.vips,
            [
                services[0].key(),
                services[1].key(),
                services[2].key(),
                services[3].key()
            ]
        );
        let own = maps.backend_vips[&endpoint("198.18.1.11:4000")];
        assert_eq!((own.count, own.vips[0]), (1, services[3].key()));
        // The four that share 198.18.1.99:3000; service 3 too, although its
        // other backend's replies name their VIP alone.
        assert_eq!(
            maps.ambiguous,
            HashSet::from_iter(services.iter().map(|s| s.id))
        );
    }

    #[test]
    fn services_without_shared_backends_are_not_ambiguous() {
        let services = services(5);
        let maps = PortMaps::of(&services[4..]).unwrap();
        assert!(maps.ambiguous.is_empty());
        let maps = PortMaps::of(&services).unwrap();
        assert!(!maps.ambiguous.contains(&services[4].id));
        assert_eq!(maps.ambiguous.len(), 4);
    }

    #[test]
    fn a_vip_port_of_one_service_names_it() {
        let text = "[interfaces]\nclients = \"eth0\"\n\
            [[services]]\nname = \"web\"\nvip = \"198.18.0.100:80\"\n\
            [[services.backends]]\naddress = \"198.18.1.11:3000\"\n\
            [[services]]\nname = \"tls\"\nvip = \"198.18.0.100:443\"\n\
            [[services.backends]]\naddress = \"198.18.1.11:3001\"\n\
            [[services]]\nname = \"other\"\nvip = \"[2001:db8::100]:443\"\n\
            [[services.backends]]\naddress = \"[2001:db8:1::11]:3001\"\n";
        let services = adopt::from_config(&Config::from_str(text).unwrap());
        let maps = PortMaps::of(&services).unwrap();
        assert_eq!(
            maps.vip_ports,
            HashMap::from([(80, services[0].id + 1), (443, PORT_SHARED)])
        );
    }

    /// `balancer backend add` of a fifth service's backend: refused, before
    /// anything is written.
    #[test]
    fn a_backend_of_a_fifth_service_is_refused() {
        let mut services = services(5);
        PortMaps::of(&services).unwrap();
        let shared = services[0].backends[0].clone();
        services[4].backends.push(shared);
        let err = PortMaps::of(&services).unwrap_err().to_string();
        assert_eq!(err, "backend 198.18.1.99:3000 serves more than 4 services");
    }
}
