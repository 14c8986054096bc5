//! `examples/balancer.toml`, the config the README tells users to start
//! from, read by the daemon's own parser: if the example stops parsing, or
//! stops describing the gateway the README describes, this fails.

use std::{path::Path, time::Duration};

use balancer_user::config::{AffinityMode, Config, HealthCheckKind, Mode, Protocol};

fn example() -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/balancer.toml");
    Config::from_file(&path).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn example_config_parses_as_a_two_interface_socketio_gateway() {
    let config = example();
    assert_eq!(config.interfaces.clients, "eth0");
    assert_eq!(config.interfaces.backends, "eth1");
    assert_eq!(config.interfaces.mode, Mode::Xdp);

    let [service] = config.services.as_slice() else {
        panic!("expected one service, got {}", config.services.len());
    };
    assert_eq!(service.name, "chat");
    assert_eq!(service.vip, "198.18.0.100:80".parse().unwrap());
    assert_eq!(service.protocol, Protocol::Tcp);
    assert_eq!(service.affinity, AffinityMode::SourceIp);
    assert_eq!(service.source_prefix_v4, 32);
    assert_eq!(service.affinity_timeout, Duration::from_secs(600));
    assert_eq!(service.health.check, HealthCheckKind::Http);
    assert_eq!(service.health.path, "/health");

    let backends: Vec<(String, u32)> = service
        .backends
        .iter()
        .map(|b| (b.address.to_string(), b.weight))
        .collect();
    assert_eq!(
        backends,
        [
            ("198.18.1.11:3000".to_owned(), 1),
            ("198.18.1.12:3000".to_owned(), 1),
            ("198.18.1.13:3000".to_owned(), 2),
        ]
    );
}

#[test]
fn example_config_uses_documentation_addresses_only() {
    // 198.18.0.0/15 (RFC 2544): a copied example can never point at
    // someone's real hosts.
    let config = example();
    let in_range = |ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V4(v4) => v4.octets()[0] == 198 && (v4.octets()[1] & 0xfe) == 18,
        std::net::IpAddr::V6(_) => false,
    };
    for service in &config.services {
        assert!(in_range(service.vip.ip()), "VIP {}", service.vip);
        for b in &service.backends {
            assert!(in_range(b.address.ip()), "backend {}", b.address);
        }
    }
}
