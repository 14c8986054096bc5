use std::{net::SocketAddr, path::Path, str::FromStr, time::Duration};

use super::*;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The smallest valid config, with `extra` appended to its one service.
fn minimal(extra: &str) -> String {
    format!(
        "[interfaces]\nclients = \"eth0\"\n\n[[services]]\nname = \"chat\"\nvip = \"198.18.0.100:80\"\n{extra}"
    )
}

/// Parses `text`, expecting an error on `field` whose line contains `message`.
#[track_caller]
fn assert_invalid(text: &str, field: &str, message: &str) -> ConfigError {
    let err = Config::from_str(text).expect_err("config should be refused");
    let line = err.to_string();
    assert!(!line.contains('\n'), "not one line: {line:?}");
    assert_eq!(err.field(), Some(field), "{line}");
    assert!(line.starts_with(&format!("{field}: ")), "{line}");
    assert!(
        line.contains(message),
        "{line:?} does not contain {message:?}"
    );
    err
}

#[test]
fn example_parses_with_its_values() {
    let config = Config::from_str(EXAMPLE_CONFIG).unwrap();
    assert_eq!(
        config,
        Config {
            interfaces: Interfaces {
                clients: "eth0".into(),
                backends: "eth1".into(),
                mode: Mode::Xdp
            },
            metrics: Metrics {
                listen: addr("127.0.0.1:9090")
            },
            bpf: Bpf {
                pin_dir: "/sys/fs/bpf/balancer".into()
            },
            control: Control {
                socket: "/run/balancer/control.sock".into(),
                group: None
            },
            tables: Tables {
                flows: 1 << 20,
                affinity: 1 << 20
            },
            proxy: Proxy::default(),
            announce: None,
            cluster: Cluster::default(),
            services: vec![ServiceConfig {
                name: "chat".into(),
                vip: addr("198.18.0.100:80"),
                protocol: Protocol::Tcp,
                affinity: AffinityMode::SourceIp,
                source_prefix_v4: 32,
                source_prefix_v6: 128,
                affinity_timeout: Duration::from_secs(600),
                table_size: 65537,
                health: HealthConfig {
                    check: HealthCheckKind::Http,
                    path: "/health".into(),
                    expect_status: 200,
                    interval: Duration::from_secs(2),
                    timeout: Duration::from_secs(1),
                    rise: 2,
                    fall: 3,
                },
                client_address: ClientAddress::Packet,
                trusted_proxies: Vec::new(),
                send_proxy_protocol: false,
                header_timeout: Duration::from_secs(5),
                backends: vec![BackendConfig {
                    address: addr("198.18.1.11:3000"),
                    weight: 1,
                    name: Some("b1".into()),
                }],
            }],
        }
    );
    let service = &config.services[0];
    assert_eq!(service.family(), FAMILY_V4);
    assert_eq!(service.source_prefix(), 32);
    assert_eq!(service.protocol.number(), PROTO_TCP);
}

#[test]
fn left_out_keys_take_their_defaults() {
    let config = Config::from_str(&minimal("")).unwrap();
    assert_eq!(
        config.interfaces.backends, "eth0",
        "backends defaults to clients"
    );
    assert_eq!(config.interfaces.mode, Mode::Xdp);
    assert_eq!(config.metrics, Metrics::default());
    assert_eq!(config.metrics.listen, addr("127.0.0.1:9090"));
    assert_eq!(config.bpf.pin_dir, Path::new("/sys/fs/bpf/balancer"));
    assert_eq!(
        config.control.socket,
        Path::new("/run/balancer/control.sock")
    );
    assert_eq!(
        config.services,
        vec![ServiceConfig::new("chat", addr("198.18.0.100:80"))]
    );
    let s = &config.services[0];
    assert_eq!(s.protocol, Protocol::Tcp);
    assert_eq!(s.affinity, AffinityMode::SourceIp);
    assert_eq!((s.source_prefix_v4, s.source_prefix_v6), (32, 128));
    assert_eq!(s.affinity_timeout, Duration::from_secs(600));
    assert_eq!(s.table_size, 65537);
    assert!(
        s.backends.is_empty(),
        "a service may start with no backends"
    );
    let h = &s.health;
    assert_eq!(h.check, HealthCheckKind::Tcp);
    assert_eq!(h.path, "/");
    assert_eq!(h.expect_status, 200);
    assert_eq!(
        (h.interval, h.timeout),
        (Duration::from_secs(2), Duration::from_secs(1))
    );
    assert_eq!((h.rise, h.fall), (2, 3));
}

#[test]
fn partial_sections_fill_in_defaults() {
    let text = minimal(
        "[services.health]\ncheck = \"none\"\n[[services.backends]]\naddress = \"198.18.1.11:3000\"\n",
    );
    let s = &Config::from_str(&text).unwrap().services[0];
    assert_eq!(
        s.health,
        HealthConfig {
            check: HealthCheckKind::None,
            ..HealthConfig::default()
        }
    );
    assert_eq!(
        s.backends,
        vec![BackendConfig::new(addr("198.18.1.11:3000"))]
    );
}

#[test]
fn every_key_can_be_set() {
    let text = r#"
[interfaces]
clients = "veth-c"
backends = "veth-b"
mode = "tc"
[metrics]
listen = "[::1]:9100"
[bpf]
pin_dir = "/tmp/test-bpffs/balancer"
[control]
socket = "/tmp/balancer.sock"
[[services]]
name = "dns_v6.1-a"
vip = "[2001:db8::100]:53"
protocol = "udp"
affinity = "four-tuple"
source_prefix_v4 = 0
source_prefix_v6 = 56
affinity_timeout = "1h30m"
table_size = 251
[services.health]
check = "http"
path = "/healthz?full=1"
expect_status = 204
interval = "500ms"
timeout = "3s"
rise = 1
fall = 1
[[services.backends]]
address = "[2001:db8::11]:5353"
weight = 65535
[[services.backends]]
address = "[2001:db8::12]:5353"
weight = 3
"#;
    let config = Config::from_str(text).unwrap();
    assert_eq!(config.interfaces.mode, Mode::Tc);
    assert_eq!(config.interfaces.backends, "veth-b");
    assert_eq!(config.metrics.listen, addr("[::1]:9100"));
    assert_eq!(config.bpf.pin_dir, Path::new("/tmp/test-bpffs/balancer"));
    assert_eq!(config.control.socket, Path::new("/tmp/balancer.sock"));
    let s = &config.services[0];
    assert_eq!(s.family(), FAMILY_V6);
    assert_eq!(s.source_prefix(), 56);
    assert_eq!(s.protocol.number(), PROTO_UDP);
    assert_eq!(s.affinity, AffinityMode::FourTuple);
    assert_eq!(s.affinity_timeout, Duration::from_secs(5400));
    assert_eq!(s.table_size, 251);
    assert_eq!(
        s.health.timeout,
        Duration::from_secs(3),
        "timeout may exceed interval"
    );
    assert_eq!(s.health.interval, Duration::from_millis(500));
    assert_eq!(s.health.expect_status, 204);
    assert_eq!(
        s.backends.iter().map(|b| b.weight).collect::<Vec<_>>(),
        [65535, 3]
    );
}

#[test]
fn serializes_back_to_an_equal_config() {
    let config = Config::from_str(EXAMPLE_CONFIG).unwrap();
    let text = toml::to_string(&config).unwrap();
    assert_eq!(Config::from_str(&text).unwrap(), config, "{text}");
}

#[test]
fn json_uses_the_file_s_words() {
    let json = serde_json::to_value(Config::from_str(EXAMPLE_CONFIG).unwrap()).unwrap();
    assert_eq!(json["interfaces"]["mode"], "xdp");
    assert_eq!(json["metrics"]["listen"], "127.0.0.1:9090");
    assert_eq!(json["bpf"]["pin_dir"], "/sys/fs/bpf/balancer");
    let service = &json["services"][0];
    assert_eq!(service["vip"], "198.18.0.100:80");
    assert_eq!(service["protocol"], "tcp");
    assert_eq!(service["affinity"], "source-ip");
    assert_eq!(service["affinity_timeout"], "10m");
    assert_eq!(service["health"]["check"], "http");
    assert_eq!(service["health"]["interval"], "2s");
    assert_eq!(service["backends"][0]["address"], "198.18.1.11:3000");
}

#[test]
fn keywords_round_trip() {
    for m in Mode::ALL {
        assert_eq!(m.as_str().parse::<Mode>(), Ok(*m));
    }
    for p in Protocol::ALL {
        assert_eq!(p.to_string().parse::<Protocol>(), Ok(*p));
    }
    for a in AffinityMode::ALL {
        assert_eq!(a.as_str().parse::<AffinityMode>(), Ok(*a));
    }
    for k in HealthCheckKind::ALL {
        assert_eq!(k.as_str().parse::<HealthCheckKind>(), Ok(*k));
    }
    assert_eq!(
        "foo".parse::<Mode>(),
        Err(r#"expected "xdp" or "tc", got "foo""#.to_owned())
    );
    assert_eq!(
        "ping".parse::<HealthCheckKind>(),
        Err(r#"expected "http", "tcp" or "none", got "ping""#.to_owned())
    );
}

#[test]
fn default_table_sizes_are_prime() {
    assert!(is_prime(DEFAULT_TABLE_SIZE));
    assert!(is_prime(MAX_TABLE_SIZE));
    assert!(
        ((MAX_TABLE_SIZE + 1)..(1 << 20)).all(|n| !is_prime(n)),
        "MAX_TABLE_SIZE is the largest prime below 2^20"
    );
    assert!(2 * u64::from(MAX_TABLE_SIZE) <= MAX_MAGLEV_ENTRIES);
}

// ---- errors: one line, naming the field ----

#[test]
fn bad_mode() {
    let text = "[interfaces]\nclients = \"eth0\"\nmode = \"foo\"\n";
    let err = assert_invalid(
        text,
        "interfaces.mode",
        r#"interfaces.mode: expected "xdp" or "tc", got "foo""#,
    );
    assert_eq!(err.line_column(), Some((3, 8)));
    assert!(err.to_string().ends_with(" (line 3, column 8)"), "{err}");
}

#[test]
fn table_size_not_prime() {
    let err = assert_invalid(
        &minimal("table_size = 65536\n"),
        "services[0].table_size",
        "services[0].table_size: 65536 is not a prime; the next prime is 65537",
    );
    assert_eq!(err.line_column(), Some((7, 14)));
    assert_invalid(
        &minimal("table_size = 1\n"),
        "services[0].table_size",
        "1 is out of range 2..=1048573",
    );
    assert_invalid(
        &minimal("table_size = 16777259\n"),
        "services[0].table_size",
        "out of range 2..=1048573",
    );
    assert_invalid(
        &minimal("table_size = -7\n"),
        "services[0].table_size",
        "-7 is out of range",
    );
}

#[test]
fn table_size_smaller_than_backend_count() {
    let backends = "[[services.backends]]\naddress = \"198.18.1.11:3000\"\n\
                    [[services.backends]]\naddress = \"198.18.1.12:3000\"\n\
                    [[services.backends]]\naddress = \"198.18.1.13:3000\"\n";
    assert_invalid(
        &minimal(&format!("table_size = 2\n{backends}")),
        "services[0].table_size",
        "2 is smaller than the number of backends (3)",
    );
    Config::from_str(&minimal(&format!("table_size = 3\n{backends}"))).unwrap();
}

#[test]
fn bad_prefixes() {
    assert_invalid(
        &minimal("source_prefix_v4 = 33\n"),
        "services[0].source_prefix_v4",
        "33 is out of range 0..=32",
    );
    assert_invalid(
        &minimal("source_prefix_v6 = 129\n"),
        "services[0].source_prefix_v6",
        "129 is out of range 0..=128",
    );
    assert_invalid(
        &minimal("source_prefix_v4 = -1\n"),
        "services[0].source_prefix_v4",
        "-1 is out of range 0..=32",
    );
    assert_invalid(
        &minimal("source_prefix_v4 = 300\n"),
        "services[0].source_prefix_v4",
        "300 is out of range 0..=32",
    );
}

#[test]
fn duplicate_service_name() {
    let text = minimal("\n[[services]]\nname = \"chat\"\nvip = \"198.18.0.101:80\"\n");
    let err = assert_invalid(
        &text,
        "services[1].name",
        r#"services[1].name: duplicate service name "chat""#,
    );
    assert_eq!(err.line_column(), Some((9, 8)));
}

#[test]
fn duplicate_vip_and_protocol() {
    let text = minimal("\n[[services]]\nname = \"chat2\"\nvip = \"198.18.0.100:80\"\n");
    assert_invalid(
        &text,
        "services[1].vip",
        "198.18.0.100:80/tcp is already the VIP of another service",
    );
    let other_protocol = minimal(
        "\n[[services]]\nname = \"chat2\"\nvip = \"198.18.0.100:80\"\nprotocol = \"udp\"\n",
    );
    Config::from_str(&other_protocol).unwrap();
}

#[test]
fn duplicate_backend() {
    let text = minimal(
        "[[services.backends]]\naddress = \"198.18.1.11:3000\"\n\
         [[services.backends]]\naddress = \"198.18.1.12:3000\"\n\
         [[services.backends]]\naddress = \"198.18.1.11:3000\"\nweight = 2\n",
    );
    assert_invalid(
        &text,
        "services[0].backends[2].address",
        r#"duplicate backend 198.18.1.11:3000 in service "chat""#,
    );
}

#[test]
fn a_backend_may_serve_at_most_four_services_of_a_protocol() {
    let service = |i: u32, protocol: &str| {
        format!(
            "\n[[services]]\nname = \"s{i}\"\nvip = \"198.18.0.{}:80\"\nprotocol = \"{protocol}\"\n\
             [[services.backends]]\naddress = \"198.18.1.99:3000\"\n",
            100 + i
        )
    };
    // The one service of `minimal` plus three: four, and a UDP one (replies
    // of another protocol are told apart by it).
    let four: String = (1..=3)
        .map(|i| service(i, "tcp"))
        .chain([service(9, "udp")])
        .collect();
    let text = minimal(&format!(
        "[[services.backends]]\naddress = \"198.18.1.99:3000\"\n{four}"
    ));
    Config::from_str(&text).unwrap();
    let five = format!("{text}{}", service(4, "tcp"));
    assert_invalid(
        &five,
        "services[5].backends[0].address",
        "198.18.1.99:3000 is a backend of more than 4 services",
    );
}

#[test]
fn backend_family_must_match_the_vip() {
    let text = minimal("[[services.backends]]\naddress = \"[2001:db8::11]:3000\"\n");
    assert_invalid(
        &text,
        "services[0].backends[0].address",
        "[2001:db8::11]:3000 is IPv6 but the VIP 198.18.0.100:80 is IPv4",
    );
}

#[test]
fn unknown_keys() {
    let err = assert_invalid(
        &format!("verbose = true\n{}", minimal("")),
        "verbose",
        "unknown field `verbose`",
    );
    assert!(
        err.to_string().contains(
            "`interfaces`, `metrics`, `bpf`, `control`, `tables`, `proxy`, `announce`, `cluster`, `services`"
        ),
        "{err}"
    );
    assert_eq!(err.line_column(), Some((1, 1)), "at the key");
    assert_invalid(
        &minimal("[services.health]\nchek = \"http\"\n"),
        "services[0].health.chek",
        "unknown field `chek`, expected one of `check`,",
    );
    assert_invalid(
        &minimal("[[services.backends]]\naddress = \"198.18.1.11:3000\"\nwieght = 2\n"),
        "services[0].backends[0].wieght",
        "unknown field",
    );
    assert_invalid(
        "[interfaces]\nclients = \"eth0\"\nclient = \"eth1\"\n",
        "interfaces.client",
        "unknown field",
    );
    assert_invalid(
        &minimal("vips = \"198.18.0.1:80\"\n"),
        "services[0].vips",
        "unknown field",
    );
    // The first unknown key in the file, not in alphabetical order.
    assert_invalid(
        "[interfaces]\nclients = \"eth0\"\nzz = 1\naa = 2\n",
        "interfaces.zz",
        "unknown field",
    );
}

#[test]
fn bad_durations() {
    assert_invalid(
        &minimal("affinity_timeout = \"10\"\n"),
        "services[0].affinity_timeout",
        r#"invalid duration "10""#,
    );
    assert_invalid(
        &minimal("affinity_timeout = \"1.5x\"\n"),
        "services[0].affinity_timeout",
        "unknown time unit \"x\"",
    );
    assert_invalid(
        &minimal("affinity_timeout = \"366d\"\n"),
        "services[0].affinity_timeout",
        "longer than the maximum of 365d",
    );
    assert_invalid(
        &minimal("affinity_timeout = 600\n"),
        "services[0].affinity_timeout",
        "expected a string, got an integer (600)",
    );
    assert_invalid(
        &minimal("affinity_timeout = \"0s\"\n"),
        "services[0].affinity_timeout",
        "must be longer than 0s",
    );
    assert_invalid(
        &minimal("[services.health]\ninterval = \"fast\"\n"),
        "services[0].health.interval",
        "invalid duration",
    );
    assert_invalid(
        &minimal("[services.health]\ntimeout = \"0ms\"\n"),
        "services[0].health.timeout",
        "must be longer than 0s",
    );
}

#[test]
fn health_counts_and_status() {
    assert_invalid(
        &minimal("[services.health]\nrise = 0\n"),
        "services[0].health.rise",
        "0 is out of range 1..=",
    );
    assert_invalid(
        &minimal("[services.health]\nfall = 0\n"),
        "services[0].health.fall",
        "0 is out of range 1..=",
    );
    assert_invalid(
        &minimal("[services.health]\nexpect_status = 600\n"),
        "services[0].health.expect_status",
        "600 is out of range 100..=599",
    );
    assert_invalid(
        &minimal("[services.health]\ncheck = \"icmp\"\n"),
        "services[0].health.check",
        r#"expected "http", "tcp" or "none", got "icmp""#,
    );
    assert_invalid(
        &minimal("[services.health]\npath = \"health\"\n"),
        "services[0].health.path",
        "must start with '/'",
    );
    assert_invalid(
        &minimal("[services.health]\npath = \"/a b\"\n"),
        "services[0].health.path",
        "no spaces",
    );
}

#[test]
fn bad_protocol_and_affinity() {
    assert_invalid(
        &minimal("protocol = \"sctp\"\n"),
        "services[0].protocol",
        r#"services[0].protocol: expected "tcp" or "udp", got "sctp""#,
    );
    assert_invalid(
        &minimal("affinity = \"cookie\"\n"),
        "services[0].affinity",
        r#"expected "source-ip", "four-tuple" or "sid", got "cookie""#,
    );
}

#[test]
fn bad_addresses() {
    let text = minimal(
        "\n[[services]]\nname = \"b\"\nvip = \"198.18.0.101:80\"\n\
         [[services.backends]]\naddress = \"1.2.3:80\"\n",
    );
    let err = assert_invalid(
        &text,
        "services[1].backends[0].address",
        r#"services[1].backends[0].address: invalid socket address "1.2.3:80""#,
    );
    assert_eq!(err.line_column(), Some((12, 11)));
    assert_invalid(
        &minimal("[[services.backends]]\naddress = \"198.18.1.11\"\n"),
        "services[0].backends[0].address",
        "invalid socket address",
    );
    assert_invalid(
        "[interfaces]\nclients = \"eth0\"\n[[services]]\nname = \"a\"\nvip = \"2001:db8::1:80\"\n",
        "services[0].vip",
        "[2001:db8::1]:80",
    );
    assert_invalid(
        "[interfaces]\nclients = \"eth0\"\n[metrics]\nlisten = \"localhost:9090\"\n",
        "metrics.listen",
        "invalid socket address",
    );
    assert_invalid(
        "[interfaces]\nclients = \"eth0\"\n[[services]]\nname = \"a\"\nvip = \"0.0.0.0:80\"\n",
        "services[0].vip",
        "not a unicast address",
    );
    assert_invalid(
        "[interfaces]\nclients = \"eth0\"\n[[services]]\nname = \"a\"\nvip = \"198.18.0.1:0\"\n",
        "services[0].vip",
        "port 0",
    );
    assert_invalid(
        &minimal("[[services.backends]]\naddress = \"198.18.0.100:3000\"\n"),
        "services[0].backends[0].address",
        "the VIP's own address",
    );
}

#[test]
fn zero_weight_suggests_drain() {
    let text = minimal("[[services.backends]]\naddress = \"198.18.1.11:3000\"\nweight = 0\n");
    assert_invalid(
        &text,
        "services[0].backends[0].weight",
        "balancer backend drain",
    );
    let text = minimal("[[services.backends]]\naddress = \"198.18.1.11:3000\"\nweight = 65536\n");
    assert_invalid(
        &text,
        "services[0].backends[0].weight",
        "65536 is out of range 1..=65535",
    );
}

#[test]
fn syntax_error_has_line_and_column() {
    let err = Config::from_str("[interfaces]\nclients = \"eth0\"\nmode = xdp\n").unwrap_err();
    let line = err.to_string();
    assert!(matches!(err, ConfigError::Syntax { .. }), "{line}");
    assert!(!line.contains('\n'), "{line:?}");
    assert!(line.starts_with("TOML syntax error: "), "{line}");
    assert_eq!(err.line_column(), Some((3, 8)));
    assert!(line.ends_with("(line 3, column 8)"), "{line}");

    let err =
        Config::from_str("[interfaces]\nclients = \"eth0\"\nclients = \"eth1\"\n").unwrap_err();
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
    assert!(err.to_string().contains("duplicate key"), "{err}");
}

#[test]
fn empty_or_invalid_names() {
    assert_invalid(
        "[interfaces]\nclients = \"eth0\"\n[[services]]\nname = \"\"\nvip = \"198.18.0.1:80\"\n",
        "services[0].name",
        r#""" is not a valid name"#,
    );
    assert_invalid(
        "[interfaces]\nclients = \"eth0\"\n[[services]]\nname = \"chat room\"\nvip = \"198.18.0.1:80\"\n",
        "services[0].name",
        "not a valid name",
    );
    assert_invalid(
        &minimal("").replace("\"chat\"", &format!("{:?}", "x".repeat(65))),
        "services[0].name",
        "1 to 64",
    );
    assert_invalid(
        &minimal("").replace("\"eth0\"", "\"\""),
        "interfaces.clients",
        "not a valid interface name",
    );
    assert_invalid(
        &minimal("").replace("\"eth0\"", "\"a-very-long-ifname\""),
        "interfaces.clients",
        "not a valid interface name",
    );
    assert_invalid(
        &minimal("").replace("\"eth0\"\n", "\"eth0\"\nbackends = \"eth/1\"\n"),
        "interfaces.backends",
        "not a valid interface name",
    );
}

#[test]
fn wrong_types() {
    assert_invalid(
        &minimal("table_size = \"65537\"\n"),
        "services[0].table_size",
        r#"expected an integer, got a string ("65537")"#,
    );
    assert_invalid(
        &minimal("table_size = 65537.0\n"),
        "services[0].table_size",
        "expected an integer, got a float",
    );
    assert_invalid(
        "interfaces = \"eth0\"\n",
        "interfaces",
        r#"invalid type: string "eth0", expected a table ([interfaces])"#,
    );
    assert_invalid(
        "[interfaces]\nclients = \"eth0\"\n[services]\nname = \"a\"\n",
        "services",
        "expected an array of tables ([[services]]), got a table",
    );
    assert_invalid(
        "services = [1]\n[interfaces]\nclients = \"eth0\"\n",
        "services[0]",
        "invalid type: integer `1`, expected a table ([[services]])",
    );
    assert_invalid(
        &minimal("name = 1979-05-27\n").replacen("name = \"chat\"\n", "", 1),
        "services[0].name",
        "expected a string, got a datetime",
    );
    assert_invalid(
        "[interfaces]\nclients = [\"eth0\"]\n",
        "interfaces.clients",
        "expected a string, got an array",
    );
}

#[test]
fn missing_required_keys() {
    let err = assert_invalid("", "interfaces", "required section [interfaces] is missing");
    assert_eq!(err.line_column(), None);
    let err = assert_invalid(
        "[interfaces]\nmode = \"tc\"\n",
        "interfaces",
        "interfaces: missing field `clients`",
    );
    assert_eq!(err.line_column(), Some((1, 1)), "reported at its table");
    assert_invalid(
        "[interfaces]\nclients = \"eth0\"\n[[services]]\nname = \"a\"\n",
        "services[0]",
        "missing field `vip`",
    );
    assert_invalid(
        "[interfaces]\nclients = \"eth0\"\n[[services]]\nvip = \"198.18.0.1:80\"\n",
        "services[0]",
        "missing field `name`",
    );
    assert_invalid(
        &minimal("[[services.backends]]\nweight = 2\n"),
        "services[0].backends[0]",
        "missing field `address`",
    );
    assert_invalid(
        "[interfaces]\nclients = \"eth0\"\n",
        "services",
        "no [[services]] defined",
    );
}

#[test]
fn announce_section() {
    let text = format!("[announce]\ninterface = \"lo\"\n{}", minimal(""));
    let announce = Config::from_str(&text).unwrap().announce.unwrap();
    assert_eq!(announce.interface, "lo");
    assert_eq!(
        announce.state_file,
        Path::new("/var/lib/balancer/announce.state")
    );
    let text = format!(
        "[announce]\ninterface = \"dummy0\"\nstate_file = \"/run/x/state\"\n{}",
        minimal("")
    );
    let announce = Config::from_str(&text).unwrap().announce.unwrap();
    assert_eq!(announce.state_file, Path::new("/run/x/state"));
    assert_eq!(Config::from_str(&minimal("")).unwrap().announce, None);
    let text = format!("[announce]\n{}", minimal(""));
    assert_invalid(&text, "announce", "missing field `interface`");
    let text = format!("[announce]\ninterface = \"a b\"\n{}", minimal(""));
    assert_invalid(&text, "announce.interface", "not a valid interface name");
    let text = format!(
        "[announce]\ninterface = \"lo\"\nstate_file = \"x\"\n{}",
        minimal("")
    );
    assert_invalid(&text, "announce.state_file", "not an absolute path");
    let text = format!("[announce]\ninterface = \"lo\"\nbgp = 1\n{}", minimal(""));
    assert_invalid(&text, "announce.bgp", "unknown field `bgp`");
}

#[test]
fn paths_and_sockets() {
    let text = format!("[bpf]\npin_dir = \"bpffs/balancer\"\n{}", minimal(""));
    assert_invalid(&text, "bpf.pin_dir", "not an absolute path");
    let text = format!("[control]\nsocket = \"\"\n{}", minimal(""));
    assert_invalid(&text, "control.socket", "1 to 107 bytes");
    let text = format!(
        "[control]\nsocket = \"/{}\"\n{}",
        "s".repeat(107),
        minimal("")
    );
    assert_invalid(&text, "control.socket", "1 to 107 bytes");
    let text = format!("[control]\ngroup = \"ops\"\n{}", minimal(""));
    assert_eq!(
        Config::from_str(&text).unwrap().control.group.as_deref(),
        Some("ops")
    );
    for bad in ["", "a b", "a:b", "-x"] {
        let text = format!("[control]\ngroup = \"{bad}\"\n{}", minimal(""));
        assert_invalid(&text, "control.group", "not a valid group name");
    }
}

#[test]
fn kernel_limits() {
    let mut config = Config::from_str(&minimal("table_size = 3\n")).unwrap();
    let template = config.services[0].clone();
    config.services = (0..=MAX_SERVICES)
        .map(|i| ServiceConfig {
            name: format!("s{i}"),
            vip: SocketAddr::from(([198, 18, (i / 256) as u8, (i % 256) as u8], 80)),
            ..template.clone()
        })
        .collect();
    let err = config.validate().unwrap_err();
    assert_eq!(err.field(), Some("services"), "{err}");
    assert!(err.to_string().contains("at most 256"), "{err}");

    config.services.truncate(2);
    let backends = |base: u32| -> Vec<BackendConfig> {
        (0..MAX_BACKENDS / 2 + 1)
            .map(|j| BackendConfig::new(SocketAddr::from(((base + j).to_be_bytes(), 3000))))
            .collect()
    };
    for (k, s) in config.services.iter_mut().enumerate() {
        s.table_size = 65537;
        s.backends = backends(u32::from_be_bytes([10, k as u8, 0, 1]));
    }
    let err = config.validate().unwrap_err();
    assert_eq!(err.field(), Some("services[1].backends"), "{err}");
    assert!(err.to_string().contains("more than 4096 backends"), "{err}");

    for s in &mut config.services {
        s.backends.clear();
    }
    config.services.truncate(1);
    config.services[0].table_size = MAX_TABLE_SIZE;
    let many =
        (0..MAX_MAGLEV_ENTRIES / (2 * u64::from(MAX_TABLE_SIZE)) + 1).map(|i| ServiceConfig {
            name: format!("big{i}"),
            vip: SocketAddr::from(([198, 19, 0, i as u8], 80)),
            ..config.services[0].clone()
        });
    config.services = many.collect();
    let err = config.validate().unwrap_err();
    assert!(err.field().unwrap().ends_with(".table_size"), "{err}");
    assert!(
        err.to_string().contains("Maglev tables of all services"),
        "{err}"
    );
}

#[test]
fn validate_catches_what_code_changes() {
    let mut config = Config::from_str(EXAMPLE_CONFIG).unwrap();
    config.services[0].table_size = 65536;
    assert_eq!(
        config.validate().unwrap_err().to_string(),
        "services[0].table_size: 65536 is not a prime; the next prime is 65537"
    );
    config.services[0].table_size = 65537;
    config.services[0].health.rise = 0;
    assert_eq!(
        config.validate().unwrap_err().field(),
        Some("services[0].health.rise")
    );
}

#[test]
fn check_new_backend_for_the_cli() {
    let service = &Config::from_str(EXAMPLE_CONFIG).unwrap().services[0];
    service
        .check_new_backend(&BackendConfig::new(addr("198.18.1.12:3000")))
        .unwrap();
    let err = service
        .check_new_backend(&BackendConfig::new(addr("198.18.1.11:3000")))
        .unwrap_err();
    assert_eq!(err.field(), Some("backend.address"));
    assert!(err.to_string().contains("duplicate backend"), "{err}");
    let err = service
        .check_new_backend(&BackendConfig {
            address: addr("198.18.1.12:3000"),
            weight: 0,
            name: None,
        })
        .unwrap_err();
    assert_eq!(err.field(), Some("backend.weight"));
    let err = service
        .check_new_backend(&BackendConfig::new(addr("[2001:db8::1]:3000")))
        .unwrap_err();
    assert!(err.to_string().contains("is IPv6 but the VIP"), "{err}");
}

#[test]
fn a_new_backend_of_a_sid_service_needs_a_valid_unique_name() {
    let text = minimal(
        r#"affinity = "sid"
[[services.backends]]
address = "198.18.1.11:3000"
name = "b1"
"#,
    );
    let service = &Config::from_str(&text).unwrap().services[0];
    let named = |name: Option<&str>| BackendConfig {
        name: name.map(Into::into),
        ..BackendConfig::new(addr("198.18.1.12:3000"))
    };
    service.check_new_backend(&named(Some("b2"))).unwrap();
    for (name, says) in [
        (None, "required in service"),
        (Some("b1"), "duplicate backend name \"b1\""),
        (Some("b 2"), "is not a valid name"),
        (Some(""), "is not a valid name"),
    ] {
        let err = service.check_new_backend(&named(name)).unwrap_err();
        assert_eq!(err.field(), Some("backend.name"), "{name:?}");
        assert!(err.to_string().contains(says), "{name:?}: {err}");
        assert!(!err.to_string().contains('\n'), "{err}");
    }
    // Elsewhere a name is optional, and checked when given.
    let plain = &Config::from_str(EXAMPLE_CONFIG).unwrap().services[0];
    plain.check_new_backend(&named(None)).unwrap();
    assert!(plain.check_new_backend(&named(Some("a/b"))).is_err());
}

#[test]
fn from_file_names_the_file() {
    let dir = std::env::temp_dir().join(format!("balancer-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(&good, EXAMPLE_CONFIG).unwrap();
    assert_eq!(
        Config::from_file(&good).unwrap(),
        Config::from_str(EXAMPLE_CONFIG).unwrap()
    );

    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        EXAMPLE_CONFIG.replace("table_size = 65537", "table_size = 65536"),
    )
    .unwrap();
    let err = Config::from_file(&bad).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "services[0].table_size: 65536 is not a prime; the next prime is 65537 ({}:26:14)",
            bad.display()
        )
    );

    let missing = dir.join("missing.toml");
    let err = Config::from_file(&missing).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(
        err.to_string()
            .starts_with(&format!("cannot read config file {}: ", missing.display())),
        "{err}"
    );
    assert!(!err.to_string().contains('\n'));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn proxy_threads() {
    let threads =
        |text: &str| Config::from_str(&format!("{text}{}", minimal(""))).map(|c| c.proxy.threads);
    assert_eq!(threads("").unwrap(), None, "left out: one per CPU");
    assert_eq!(threads("[proxy]\n").unwrap(), None);
    assert_eq!(threads("[proxy]\nthreads = 3\n").unwrap(), Some(3));
    assert_invalid(
        &format!("[proxy]\nthreads = 0\n{}", minimal("")),
        "proxy.threads",
        "proxy.threads: 0 is out of range 1..=1024",
    );
    assert_invalid(
        &format!("[proxy]\nthreads = \"auto\"\n{}", minimal("")),
        "proxy.threads",
        r#"expected an integer, got a string ("auto")"#,
    );
    assert_invalid(
        &format!("[proxy]\nworkers = 2\n{}", minimal("")),
        "proxy.workers",
        "unknown field `workers`, expected `threads`",
    );
}

#[test]
fn tables_sizes() {
    let config = Config::from_str(&format!(
        "[tables]\nflows = 65536\naffinity = 32768\n{}",
        minimal("")
    ))
    .unwrap();
    assert_eq!(
        config.tables,
        Tables {
            flows: 65536,
            affinity: 32768
        }
    );
    let only_flows = Config::from_str(&format!("[tables]\nflows = 1024\n{}", minimal(""))).unwrap();
    assert_eq!(
        only_flows.tables.affinity, MAX_AFFINITY,
        "left out: default"
    );
    assert_eq!(
        Config::from_str(&minimal("")).unwrap().tables,
        Tables {
            flows: MAX_FLOWS,
            affinity: MAX_AFFINITY
        }
    );

    let err = assert_invalid(
        &format!("[tables]\nflows = 1023\n{}", minimal("")),
        "tables.flows",
        "tables.flows: 1023 is out of range 1024..=67108864",
    );
    assert_eq!(err.line_column(), Some((2, 9)));
    assert_invalid(
        &format!("[tables]\naffinity = 67108865\n{}", minimal("")),
        "tables.affinity",
        "67108865 is out of range 1024..=67108864",
    );
    assert_invalid(
        &format!("[tables]\naffinity = \"1M\"\n{}", minimal("")),
        "tables.affinity",
        r#"expected an integer, got a string ("1M")"#,
    );
    assert_invalid(
        &format!("[tables]\nconntrack = 4096\n{}", minimal("")),
        "tables.conntrack",
        "unknown field `conntrack`, expected `flows` or `affinity`",
    );

    let mut config = config;
    config.tables.flows = 0;
    assert_eq!(
        config.validate().unwrap_err().to_string(),
        "tables.flows: 0 is out of range 1024..=67108864"
    );
}

#[test]
fn errors_name_the_file_line_and_column() {
    let dir = std::env::temp_dir().join(format!("balancer-config-at-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("balancer.toml");
    std::fs::write(
        &file,
        minimal(
            "[[services.backends]]\naddress = \"198.18.1.11:3000\"\n\
             [[services.backends]]\naddress = \"x\"\n",
        ),
    )
    .unwrap();
    let err = Config::from_file(&file).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            r#"services[0].backends[1].address: invalid socket address "x" (expected IP:PORT, e.g. "198.18.0.100:80" or "[2001:db8::1]:80") ({}:10:11)"#,
            file.display()
        )
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cluster_peers_need_a_listener_and_a_key() {
    let ok = minimal("");
    let cluster = |body: &str| format!("{ok}[cluster]\n{body}");
    let full = cluster(
        "peers = [\"198.18.2.11:7946\", \"198.18.2.12:7946\"]\nlisten = \"198.18.2.11:7946\"\n\
         secret_file = \"/etc/balancer/cluster.key\"\n",
    );
    let config = Config::from_str(&full).unwrap();
    assert_eq!(
        config.cluster.other_peers(),
        vec![addr("198.18.2.12:7946")],
        "its own address is skipped"
    );
    assert_eq!(Config::from_str(&ok).unwrap().cluster, Cluster::default());
    // Only itself listed: a cluster of one, nothing required.
    assert!(
        Config::from_str(&cluster(
            "peers = [\"198.18.2.11:7946\"]\nlisten = \"198.18.2.11:7946\"\n"
        ))
        .is_ok()
    );
    assert_invalid(
        &cluster("peers = [\"198.18.2.12:7946\"]\nsecret_file = \"/k\"\n"),
        "cluster.listen",
        "required with cluster.peers",
    );
    assert_invalid(
        &cluster("peers = [\"198.18.2.12:7946\"]\nlisten = \"198.18.2.11:7946\"\n"),
        "cluster.secret_file",
        "required with cluster.peers",
    );
    assert_invalid(
        &cluster(
            "peers = [\"198.18.2.12:7946\"]\nlisten = \"198.18.2.11:7946\"\nsecret_file = \"key\"\n",
        ),
        "cluster.secret_file",
        "not an absolute path",
    );
    assert_invalid(
        &cluster("peers = [\"198.18.2.12:7946\", \"198.18.2.12:7946\"]\n"),
        "cluster.peers[1]",
        "listed twice",
    );
    assert_invalid(
        &cluster("peers = [\"198.18.2.12\"]\n"),
        "cluster.peers",
        "[0]: invalid socket address",
    );
    assert_invalid(
        &cluster("peers = \"198.18.2.12:7946\"\n"),
        "cluster.peers",
        "expected an array of strings",
    );
    assert_invalid(&cluster("peer = []\n"), "cluster.peer", "unknown field");
}

#[test]
fn services_behind_a_proxy_parse_their_keys() {
    let text = minimal(
        r#"affinity = "sid"
client_address = "proxy-protocol"
trusted_proxies = ["198.18.5.0/24", "2001:db8:5::1"]
send_proxy_protocol = true
header_timeout = "1s"
[[services.backends]]
address = "198.18.1.11:3000"
name = "b1"
"#,
    );
    let config = Config::from_str(&text).unwrap();
    let s = &config.services[0];
    assert!(s.terminates_in_daemon());
    assert_eq!(s.affinity, AffinityMode::Sid);
    assert_eq!(s.client_address, ClientAddress::ProxyProtocol);
    let trusted: Vec<String> = s.trusted_proxies.iter().map(|c| c.to_string()).collect();
    assert_eq!(trusted, ["198.18.5.0/24", "2001:db8:5::1/128"]);
    assert!(s.send_proxy_protocol);
    assert_eq!(s.header_timeout, Duration::from_secs(1));
    assert_eq!(s.backends[0].name.as_deref(), Some("b1"));
    assert!(!Config::from_str(&minimal("")).unwrap().services[0].terminates_in_daemon());
}

#[test]
fn services_behind_a_proxy_are_checked() {
    let sid_backend =
        |name: &str| format!("[[services.backends]]\naddress = \"198.18.1.11:3000\"\n{name}");
    assert_invalid(
        &minimal("client_address = \"x-forwarded-for\"\n"),
        "services[0].trusted_proxies",
        "required with client_address",
    );
    assert_invalid(
        &minimal("trusted_proxies = [\"198.18.5.0/24\"]\n"),
        "services[0].trusted_proxies",
        "only used with",
    );
    assert_invalid(
        &minimal("send_proxy_protocol = true\n"),
        "services[0].send_proxy_protocol",
        "only used with",
    );
    assert_invalid(
        &minimal("affinity = \"sid\"\nprotocol = \"udp\"\n"),
        "services[0].protocol",
        "need protocol = \"tcp\"",
    );
    assert_invalid(
        &minimal(&format!("affinity = \"sid\"\n{}", sid_backend(""))),
        "services[0].backends[0].name",
        "required with affinity = \"sid\"",
    );
    assert_invalid(
        &minimal(&sid_backend("name = \"b 1\"")),
        "services[0].backends[0].name",
        "not a valid name",
    );
    let two = format!(
        "{}\n[[services.backends]]\naddress = \"198.18.1.12:3000\"\nname = \"b1\"\n",
        sid_backend("name = \"b1\"")
    );
    assert_invalid(
        &minimal(&two),
        "services[0].backends[1].name",
        "duplicate backend name",
    );
    assert_invalid(
        &minimal("client_address = \"proxy-protocol\"\ntrusted_proxies = [\"198.18.5.0/33\"]\n"),
        "services[0].trusted_proxies",
        "invalid address block",
    );
    assert_invalid(
        &minimal("client_address = \"cookie\"\n"),
        "services[0].client_address",
        "expected \"packet\", \"proxy-protocol\" or \"x-forwarded-for\"",
    );
}
