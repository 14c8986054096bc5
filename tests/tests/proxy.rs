//! Behind a proxy or a CDN: services whose client is not the packet's
//! source. The daemon terminates TCP on the VIP for them, reads the PROXY
//! header or the HTTP request head, and picks the backend by the address
//! found there (through the same table and affinity as the kernel) or by the
//! engine.io session id's prefix (`affinity = "sid"`).
//!
//! Real Socket.IO sessions through a real HAProxy ([`Cdn`]): without the
//! proxy services every client of the CDN lands on one backend; with them
//! they spread as direct clients would. Sessions whose client address
//! changes between requests keep their server only with `sid` affinity. Bad
//! input on one connection closes that connection and disturbs no session.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{self, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    path::PathBuf,
    time::{Duration, Instant},
};

use balancer_tests::{
    Topology, TopologyOpts,
    bpffs::TempBpffs,
    cdn::{CDN_NET, CDN_V4, Cdn, Frontend},
    daemon::{Daemon, cli_ok, config_head, named_backends_toml, status},
    http::{self, metric, metric_sum},
    require_root,
    servers::tcp_connect,
    socketio::{
        self, Driver, Session, SessionSpec, SocketIoServer, assert_clean, error_total, report,
    },
    topology::VIP_V4,
};

/// The Socket.IO servers' port on every backend.
const PORT: u16 = 3000;
const METRICS: &str = "127.0.0.1:9100";

/// The services, one VIP port each.
const PACKET: Service = Service {
    name: "packet",
    port: 80,
    keys: "",
    trusts_cdn: false,
};
const PROXY_PROTOCOL: Service = Service {
    name: "pp",
    port: 81,
    keys: "client_address = \"proxy-protocol\"",
    trusts_cdn: true,
};
const FORWARDED_FOR: Service = Service {
    name: "xff",
    port: 82,
    keys: "client_address = \"x-forwarded-for\"",
    trusts_cdn: true,
};
const SID: Service = Service {
    name: "sid",
    port: 83,
    keys: "affinity = \"sid\"",
    trusts_cdn: false,
};

/// HAProxy's frontends (on [`CDN_V4`]), one per service behind it.
const CDN_PLAIN: u16 = 8000;
const CDN_PROXY_V2: u16 = 8001;
const CDN_HTTP: u16 = 8002;

/// Client addresses for the sessions through the CDN (two sessions each).
const CDN_CLIENTS: usize = 24;
/// How long a run drives its sessions once they are all connected.
const RUN: Duration = Duration::from_secs(4);

#[derive(Clone, Copy)]
struct Service {
    name: &'static str,
    port: u16,
    /// Its keys beyond name, VIP and backends.
    keys: &'static str,
    /// The CDN may speak PROXY or set X-Forwarded-For (`trusted_proxies`).
    trusts_cdn: bool,
}

impl Service {
    fn vip(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(VIP_V4), self.port)
    }
}

/// The CDN frontend that forwards to `service`.
fn frontend(service: Service) -> Frontend {
    match service.name {
        "packet" => Frontend::Tcp {
            listen: CDN_PLAIN,
            to: service.vip(),
            send_proxy_v2: false,
        },
        "pp" => Frontend::Tcp {
            listen: CDN_PROXY_V2,
            to: service.vip(),
            send_proxy_v2: true,
        },
        "xff" => Frontend::Http {
            listen: CDN_HTTP,
            to: service.vip(),
        },
        other => panic!("no CDN frontend for {other}"),
    }
}

/// Fields drop in order: HAProxy and the daemon go before the namespaces.
struct Rig {
    cdn: Option<Cdn>,
    daemon: Daemon,
    _servers: Vec<SocketIoServer>,
    bpffs: TempBpffs,
    topo: Topology,
}

impl Rig {
    /// Socket.IO servers (session ids prefixed with their names) on three
    /// backends behind `services`, every one with `extra` keys; with a CDN
    /// in front of `behind_cdn`.
    fn new(services: &[Service], extra: &str, behind_cdn: &[Service]) -> Rig {
        require_root();
        let topo = Topology::new(&TopologyOpts {
            clients_v4: 40,
            extra_nets: vec![],
            vips: vec![VIP_V4.into()],
            ..TopologyOpts::default()
        });
        let bpffs = TempBpffs::new();
        let servers = topo
            .backends()
            .iter()
            .map(|b| SocketIoServer::start_sid_prefixed(b.ns(), b.name(), PORT))
            .collect();
        let backends = named_backends_toml(topo.backends(), PORT);
        let mut config = config_head(&bpffs, METRICS);
        for s in services {
            let trusted = if s.trusts_cdn {
                format!("trusted_proxies = [\"{CDN_NET}\"]")
            } else {
                String::new()
            };
            config += &format!(
                "[[services]]\nname = \"{}\"\nvip = \"{}\"\n{}\n{trusted}\n{extra}\n\
                 [services.health]\ninterval = \"500ms\"\ntimeout = \"300ms\"\n{backends}",
                s.name,
                s.vip(),
                s.keys,
            );
        }
        let mut daemon = Daemon::start(topo.gw(), &config, &bpffs.pin_dir(), &[]);
        daemon.wait_serving(topo.gw(), &bpffs.control_socket());
        let cdn = (!behind_cdn.is_empty()).then(|| {
            let frontends: Vec<Frontend> = behind_cdn.iter().copied().map(frontend).collect();
            Cdn::new(&topo, &frontends)
        });
        let rig = Rig {
            cdn,
            daemon,
            _servers: servers,
            bpffs,
            topo,
        };
        rig.wait_all_up();
        rig
    }

    fn socket(&self) -> PathBuf {
        self.bpffs.control_socket()
    }

    fn cdn(&self) -> &Cdn {
        self.cdn.as_ref().expect("a rig with a CDN")
    }

    /// Wait until every backend of every service is up.
    fn wait_all_up(&self) {
        let start = Instant::now();
        while !status(self.topo.gw(), &self.socket())
            .services
            .iter()
            .all(|s| s.backends.iter().all(|b| b.up))
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "backends not up after 10 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The backend (`b1`, ...) `balancer lookup` gives a new client at
    /// `client` of `service`.
    fn lookup(&self, service: Service, client: Ipv4Addr) -> String {
        let out = cli_ok(
            self.topo.gw(),
            &self.socket(),
            &["lookup", service.name, &client.to_string(), "--json"],
        );
        let answer: serde_json::Value = serde_json::from_str(&out).expect("lookup --json");
        let backend = answer["backend"]
            .as_str()
            .unwrap_or_else(|| panic!("lookup {client}: no backend: {out}"));
        self.topo
            .backends()
            .iter()
            .find(|b| format!("{}:{PORT}", b.v4()) == backend)
            .unwrap_or_else(|| panic!("lookup {client}: unknown backend {backend}"))
            .name()
            .to_owned()
    }

    fn metrics(&self) -> String {
        let (code, body) =
            http::get(self.topo.gw(), METRICS.parse().unwrap(), "/metrics").expect("GET /metrics");
        assert_eq!(code, 200, "{body}");
        body
    }

    /// `sessions` from the client namespace to `target` for [`RUN`].
    fn drive(&self, target: SocketAddr, sessions: &[SessionSpec]) -> Driver {
        Driver::start(self.topo.client(), target, sessions, RUN)
    }
}

/// The distinct first servers of `sessions`.
fn servers(sessions: &[Session]) -> BTreeSet<&str> {
    sessions
        .iter()
        .filter_map(|s| s.servers.first().map(String::as_str))
        .collect()
}

/// Every session through the CDN is on the backend `balancer lookup`
/// predicts for its client address: the daemon chose by the address HAProxy
/// passed on, through the kernel's table.
fn assert_predicted(rig: &Rig, service: Service, sessions: &[Session], scenario: &str) {
    let mut predicted = BTreeMap::new();
    for s in sessions {
        let address: Ipv4Addr = s.address.parse().unwrap();
        let expected = predicted
            .entry(address)
            .or_insert_with(|| rig.lookup(service, address));
        assert_eq!(
            s.servers.first(),
            Some(&*expected),
            "{scenario}: session {} from {address} is not where `balancer lookup` puts its address",
            s.id
        );
    }
}

/// Backend connections counted for `service`, over all its backends.
fn connections(rig: &Rig, service: Service) -> f64 {
    metric_sum(
        &rig.metrics(),
        "balancer_backend_connections_total",
        &[("service", service.name)],
    )
}

#[test]
fn sessions_through_proxy_protocol_spread_over_backends() {
    let rig = Rig::new(&[PACKET, PROXY_PROTOCOL], "", &[PACKET, PROXY_PROTOCOL]);
    let clients = &rig.topo.clients_v4()[..CDN_CLIENTS];
    let specs = socketio::sessions(clients, 1);

    // The contrast first: HAProxy in plain TCP mode to a `packet` service.
    // The gateway sees HAProxy's address only, so every client of the CDN
    // gets its backend.
    let plain = rig.drive(rig.cdn().addr(CDN_PLAIN), &specs).finish();
    assert_clean("CDN to a packet service", &plain);
    let one = servers(&plain);
    assert_eq!(
        one.len(),
        1,
        "a packet service behind a CDN spread sessions over {one:?}"
    );
    assert_eq!(
        one.first().copied(),
        Some(rig.lookup(PACKET, CDN_V4).as_str()),
        "not the backend of HAProxy's own address"
    );

    // PROXY v2: each client's address reaches the daemon.
    let proxied = rig.drive(rig.cdn().addr(CDN_PROXY_V2), &specs).finish();
    assert_clean("CDN with PROXY v2", &proxied);
    let spread = servers(&proxied);
    assert!(
        spread.len() >= 2,
        "PROXY v2 sessions all on {spread:?}: the client address was not used"
    );
    assert_predicted(&rig, PROXY_PROTOCOL, &proxied, "PROXY v2");
    let counted = connections(&rig, PROXY_PROTOCOL);
    assert!(
        counted >= proxied.len() as f64,
        "{counted} backend connections counted for {} sessions",
        proxied.len()
    );
    println!(
        "CDN: a packet service put {} sessions on {one:?}; with PROXY v2 they spread {:?} as `balancer lookup` predicts ({counted} backend connections counted)",
        plain.len(),
        socketio::per_first_server(&proxied)
    );
}

#[test]
fn sessions_through_x_forwarded_for_spread_over_backends() {
    let rig = Rig::new(&[FORWARDED_FOR], "", &[FORWARDED_FOR]);
    let clients = &rig.topo.clients_v4()[..CDN_CLIENTS];
    let sessions = rig
        .drive(rig.cdn().addr(CDN_HTTP), &socketio::sessions(clients, 1))
        .finish();
    assert_clean("CDN with X-Forwarded-For", &sessions);
    let spread = servers(&sessions);
    assert!(
        spread.len() >= 2,
        "X-Forwarded-For sessions all on {spread:?}: the client address was not used"
    );
    assert_predicted(&rig, FORWARDED_FOR, &sessions, "X-Forwarded-For");
    let m = rig.metrics();
    let requests = metric(
        &m,
        "balancer_proxy_requests_total",
        &[("service", FORWARDED_FOR.name), ("routed_by", "client")],
    )
    .unwrap_or(0.0);
    let made: usize = sessions.iter().map(|s| s.ports.len()).sum();
    // HAProxy reuses its connections to the gateway for other clients'
    // requests, so requests, not connections, are what the daemon routes:
    // at least one per connection a client made.
    assert!(
        requests >= made as f64,
        "{requests} requests routed by client address for {made} client connections"
    );
    println!(
        "CDN with X-Forwarded-For: sessions per backend {:?}, {requests} requests routed by client address ({made} client connections)",
        socketio::per_first_server(&sessions)
    );
}

/// Sessions whose connections alternate between two client addresses that
/// `source-ip` maps to different backends (for both `services`).
fn roaming_sessions(rig: &Rig, services: &[Service], count: usize) -> Vec<SessionSpec> {
    let clients = rig.topo.clients_v4();
    let backend_of =
        |a: Ipv4Addr| -> Vec<String> { services.iter().map(|s| rig.lookup(*s, a)).collect() };
    let looked: Vec<(Ipv4Addr, Vec<String>)> =
        clients.iter().map(|&a| (a, backend_of(a))).collect();
    let mut specs = Vec::new();
    let mut used = BTreeSet::new();
    for (i, (a, backends_a)) in looked.iter().enumerate() {
        if used.contains(a) {
            continue;
        }
        let partner = looked[i + 1..].iter().find(|(b, backends_b)| {
            !used.contains(b) && backends_a.iter().zip(backends_b).all(|(x, y)| x != y)
        });
        if let Some((b, _)) = partner {
            used.extend([*a, *b]);
            let mut spec = SessionSpec::new((*a).into(), specs.len() % 2 == 0);
            spec.addresses = vec![(*b).into()];
            specs.push(spec);
        }
        if specs.len() == count {
            return specs;
        }
    }
    panic!(
        "only {} pairs of client addresses on different backends among {}",
        specs.len(),
        clients.len()
    );
}

#[test]
fn sid_affinity_survives_a_changing_client_address() {
    let rig = Rig::new(&[SID, PACKET], "", &[]);
    let specs = roaming_sessions(&rig, &[SID, PACKET], 10);

    let sid = rig.drive(SID.vip(), &specs).finish();
    assert_clean("sid affinity, roaming clients", &sid);
    for s in &sid {
        let used: BTreeSet<IpAddr> = s.local_addresses.iter().copied().collect();
        assert!(
            used.len() == 2,
            "session {} did not change its address: {:?}",
            s.id,
            s.local_addresses
        );
    }
    let m = rig.metrics();
    let by_sid = metric(
        &m,
        "balancer_proxy_requests_total",
        &[("service", SID.name), ("routed_by", "sid")],
    )
    .unwrap_or(0.0);
    assert!(by_sid > 0.0, "no request routed by its sid");

    // The control case: the same clients on a source-ip service lose their
    // sessions (requests reach a server that does not know them).
    let control = rig.drive(PACKET.vip(), &specs).finish();
    let errors = report("source-ip affinity, roaming clients (control)", &control);
    assert!(
        errors > 0,
        "roaming clients had no session error on a source-ip service: the test would not notice sid routing failing"
    );
    println!(
        "roaming clients: 0 errors with sid affinity ({by_sid} requests routed by sid, sessions per backend {:?}), {errors} with source-ip",
        socketio::per_first_server(&sid)
    );
}

/// The connection was closed by the other end: EOF, or a reset (unread
/// data makes the close a reset). A timeout means it is still open.
fn assert_closed(mut stream: &TcpStream, what: &str) {
    let mut buf = [0u8; 4096];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!(
            "{what}: answered instead of closed: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) if closed_error(&e) => {}
        Err(e) => panic!("{what}: not closed ({e})"),
    }
}

/// The connection was closed, after at most an HTTP `431` answer (an HTTP
/// service may say why before it closes).
fn assert_closed_after_431(mut stream: &TcpStream, what: &str) {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if closed_error(&e) => break,
            Err(e) => panic!("{what}: not closed ({e})"),
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431 "),
        "{what}: answered {answer:?} before closing"
    );
}

fn closed_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// Sends `bytes`; a refusal to take them all counts as closed too (the
/// daemon may close while they are still coming).
fn send(mut stream: &TcpStream, bytes: &[u8], what: &str) {
    if let Err(e) = stream.write_all(bytes) {
        assert!(closed_error(&e), "{what}: write failed: {e}");
    }
}

/// The response head read from `stream` (up to its blank line, or all
/// there is before EOF): a keep-alive connection need not close after it.
fn response_head(mut stream: &TcpStream) -> String {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "no response head ({e}), got {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// How long a raw connection waits for the daemon to close it.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// `header_timeout` of the proxy services in the bad-input test.
const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// The largest request head the daemon reads.
const HEAD_LIMIT: usize = 16 * 1024;

#[test]
fn bad_input_closes_only_that_connection() {
    let rig = Rig::new(
        &[PROXY_PROTOCOL, FORWARDED_FOR, SID],
        &format!("header_timeout = \"{}s\"", HEADER_TIMEOUT.as_secs()),
        &[PROXY_PROTOCOL],
    );
    let clients = rig.topo.clients_v4();
    let specs = socketio::sessions(&clients[..8], 1);
    let driver = Driver::start(
        rig.topo.client(),
        rig.cdn().addr(CDN_PROXY_V2),
        &specs,
        Duration::from_secs(6),
    );
    driver.wait_for("ready", Duration::from_secs(20));

    let from_cdn = |service: Service| {
        tcp_connect(rig.cdn().ns(), CDN_V4.into(), service.vip(), CLOSE_WAIT)
            .unwrap_or_else(|e| panic!("connect from the CDN to {}: {e}", service.name))
    };
    // Clients outside `trusted_proxies`, and not among the sessions'.
    let direct = |service: Service, client: Ipv4Addr| {
        tcp_connect(rig.topo.client(), client.into(), service.vip(), CLOSE_WAIT)
            .unwrap_or_else(|e| panic!("connect from {client} to {}: {e}", service.name))
    };

    let malformed = from_cdn(PROXY_PROTOCOL);
    send(
        &malformed,
        b"PROXY TCP9 198.18.0.50 198.18.0.100 40000 81\r\nGET / HTTP/1.1\r\n\r\n",
        "malformed PROXY header",
    );
    assert_closed(&malformed, "malformed PROXY header");

    let partial = from_cdn(PROXY_PROTOCOL);
    send(&partial, b"PROXY TCP4 198.18.0.5", "partial PROXY header");
    let start = Instant::now();
    assert_closed(&partial, "partial PROXY header");
    let waited = start.elapsed();
    assert!(
        waited >= HEADER_TIMEOUT - Duration::from_millis(200),
        "a partial PROXY header was closed after {waited:?}, before the header timeout"
    );

    let untrusted = direct(PROXY_PROTOCOL, clients[30]);
    send(
        &untrusted,
        format!(
            "PROXY TCP4 198.18.0.50 {VIP_V4} 40000 {}\r\nGET / HTTP/1.1\r\n\r\n",
            PROXY_PROTOCOL.port
        )
        .as_bytes(),
        "PROXY header from an untrusted source",
    );
    assert_closed(&untrusted, "PROXY header from an untrusted source");

    let oversize = from_cdn(FORWARDED_FOR);
    let mut head = b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nX-Filler: ".to_vec();
    head.resize(HEAD_LIMIT + 4096, b'a');
    send(&oversize, &head, "oversize request head");
    assert_closed_after_431(&oversize, "oversize request head");

    // An unknown sid prefix is still answered (by a backend chosen by the
    // client address: engine.io's own 400 for a session it does not know).
    let unknown = direct(SID, clients[31]);
    send(
        &unknown,
        format!(
            "GET /socket.io/?EIO=4&transport=polling&sid=b9.nosuchsession HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            SID.vip()
        )
        .as_bytes(),
        "unknown sid prefix",
    );
    let answer = response_head(&unknown);
    assert!(
        answer.starts_with("HTTP/1.1 "),
        "unknown sid prefix: answered {answer:?}"
    );

    let sessions = driver.finish();
    assert_clean("sessions beside the bad input", &sessions);

    let m = rig.metrics();
    for (service, reason) in [
        (PROXY_PROTOCOL, "bad_proxy_header"),
        (PROXY_PROTOCOL, "header_timeout"),
        (PROXY_PROTOCOL, "untrusted_source"),
        (FORWARDED_FOR, "head_too_large"),
        (SID, "unknown_sid"),
    ] {
        let n = metric(
            &m,
            "balancer_proxy_bad_input_total",
            &[("service", service.name), ("reason", reason)],
        );
        assert_eq!(
            n,
            Some(1.0),
            "balancer_proxy_bad_input_total{{service=\"{}\",reason=\"{reason}\"}}",
            service.name
        );
    }
    let by_client = metric(
        &m,
        "balancer_proxy_requests_total",
        &[("service", SID.name), ("routed_by", "client")],
    );
    assert_eq!(
        by_client,
        Some(1.0),
        "the unknown sid's request was not routed by client address"
    );
    println!(
        "bad input: 5 raw connections (each closed but the unknown sid, answered {:?}), {} sessions beside them with {} errors",
        answer.lines().next().unwrap_or_default(),
        sessions.len(),
        error_total(&sessions)
    );
}

/// `send_proxy_protocol`: the daemon opens each backend connection with a
/// PROXY v2 header naming the client that the incoming PROXY header named,
/// so the backend sees the real client through two proxies; the backend is
/// the one `balancer lookup` gives that client.
#[test]
fn a_backend_is_told_the_client_with_proxy_protocol() {
    use balancer_tests::servers::{ask, tcp_whoami_proxied};
    use balancer_user::proxy::header::encode_v2;

    const WHOAMI: u16 = 3100;
    require_root();
    let topo = Topology::new(&TopologyOpts {
        clients_v4: 2,
        extra_nets: vec![],
        vips: vec![VIP_V4.into()],
        ..TopologyOpts::default()
    });
    let bpffs = TempBpffs::new();
    let _servers: Vec<_> = topo
        .backends()
        .iter()
        .map(|b| tcp_whoami_proxied(b.ns(), b.name(), WHOAMI))
        .collect();
    let proxy = topo.clients_v4()[0];
    let vip = SocketAddr::new(IpAddr::V4(VIP_V4), 84);
    let config = format!(
        "{}[[services]]\nname = \"told\"\nvip = \"{vip}\"\nclient_address = \"proxy-protocol\"\n\
         trusted_proxies = [\"{proxy}\"]\nsend_proxy_protocol = true\n\
         [services.health]\ncheck = \"none\"\n{}",
        config_head(&bpffs, METRICS),
        named_backends_toml(topo.backends(), WHOAMI),
    );
    let mut daemon = Daemon::start(topo.gw(), &config, &bpffs.pin_dir(), &[]);
    daemon.wait_serving(topo.gw(), &bpffs.control_socket());
    let mut backends = BTreeSet::new();
    for i in 1..=12u8 {
        let client = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(203, 0, 113, i)),
            40000 + u16::from(i),
        );
        let stream = tcp_connect(topo.client(), proxy.into(), vip, Duration::from_secs(3))
            .expect("connect to the VIP");
        send(&stream, &encode_v2(client, vip), "PROXY v2 header");
        let first = ask(&stream).expect("first answer");
        let again = ask(&stream).expect("second answer on the same connection");
        assert_eq!(first.seen, client, "the backend is told the client");
        assert_eq!(again.backend, first.backend, "one connection, one backend");
        let lookup = cli_ok(
            topo.gw(),
            &bpffs.control_socket(),
            &["lookup", "told", &client.ip().to_string(), "--json"],
        );
        let predicted: serde_json::Value = serde_json::from_str(&lookup).unwrap();
        let backend = topo
            .backends()
            .iter()
            .find(|b| b.name() == first.backend)
            .unwrap();
        assert_eq!(
            predicted["backend"].as_str(),
            Some(format!("{}:{WHOAMI}", backend.v4()).as_str()),
            "{client}: not where `balancer lookup` puts it"
        );
        backends.insert(first.backend);
    }
    assert!(
        backends.len() >= 2,
        "12 clients on one backend: {backends:?}"
    );
    drop(daemon);
}

/// SIGUSR2 restarts the daemon in place: every proxied connection parks at
/// a safe point, the daemon executes its binary again under the same PID,
/// and the new process resumes each one where it stopped. Socket.IO
/// sessions through HAProxy with PROXY v2 and by sid (WebSockets, and
/// long-polling requests held by their server) go on with 0 errors while
/// it restarts, twice.
#[test]
fn a_restart_in_place_keeps_proxied_sessions() {
    let rig = Rig::new(&[PROXY_PROTOCOL, SID], "", &[PROXY_PROTOCOL]);
    let specs = socketio::sessions(&rig.topo.clients_v4()[..8], 1);
    let run = Duration::from_secs(10);
    let through_cdn = Driver::start(rig.topo.client(), rig.cdn().addr(CDN_PROXY_V2), &specs, run);
    let by_sid = Driver::start(rig.topo.client(), SID.vip(), &specs, run);
    through_cdn.wait_for("ready", Duration::from_secs(20));
    by_sid.wait_for("ready", Duration::from_secs(20));
    let pid = rig.daemon.pid();
    for restart in 1..=2 {
        std::thread::sleep(Duration::from_secs(2));
        let before = Instant::now();
        rig.daemon.signal(libc::SIGUSR2);
        // The same process answers again once the new image serves.
        let socket = rig.socket();
        while balancer_tests::daemon::cli(rig.topo.gw(), &socket, &["status"])
            .status
            .code()
            != Some(0)
            || before.elapsed() < Duration::from_millis(100)
        {
            assert!(
                before.elapsed() < Duration::from_secs(10),
                "restart {restart}: not serving again after 10 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        println!(
            "restart {restart} in place: serving again after {:?}",
            before.elapsed()
        );
    }
    assert_eq!(rig.daemon.pid(), pid, "the daemon's PID changed");
    let cdn = through_cdn.finish();
    let sid = by_sid.finish();
    assert_clean(
        "PROXY v2 through HAProxy, across two restarts in place",
        &cdn,
    );
    assert_clean("sid affinity, across two restarts in place", &sid);
    let upgraded = cdn.iter().chain(&sid).filter(|s| s.upgraded).count();
    assert!(
        upgraded >= 8,
        "only {upgraded} sessions upgraded to WebSocket: the tunnels were not exercised"
    );
    // Connections after the restarts still count on their backends.
    let open = metric_sum(&rig.metrics(), "balancer_backend_active_connections", &[]);
    println!(
        "after two restarts in place: {} + {} sessions clean, {upgraded} WebSockets carried, {open} connections open",
        cdn.len(),
        sid.len()
    );
}

/// One `GET` on `stream` and its answer: the head and the body (read to
/// its `Content-Length`).
fn get(mut stream: &TcpStream, path: &str, close: bool) -> (String, String) {
    let connection = if close { "Connection: close\r\n" } else { "" };
    let request = format!("GET {path} HTTP/1.1\r\nHost: pool\r\n{connection}\r\n");
    stream
        .write_all(request.as_bytes())
        .expect("send a request");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut buf) {
            Ok(0) => panic!(
                "closed before an answer: {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("no answer ({e}): {:?}", String::from_utf8_lossy(&got)),
        }
    };
    let head = String::from_utf8_lossy(&got[..end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Content-Length in {head:?}"));
    while got.len() < end + length {
        match stream.read(&mut buf) {
            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
            other => panic!("body cut short: {other:?}"),
        }
    }
    (head, String::from_utf8_lossy(&got[end..]).into_owned())
}

/// The gateway port a backend saw (its answer is `<name> <peer>`), after
/// checking that `backend` answered.
fn seen_port(body: &str, backend: &str) -> u16 {
    let (name, peer) = body.trim_end().split_once(' ').expect("`<name> <peer>`");
    assert_eq!(name, backend, "answered by another backend");
    peer.parse::<SocketAddr>().expect("a peer address").port()
}

/// A backend connection outlives the client it was opened for: the daemon
/// keeps it open when the client says `Connection: close`, pools it, and
/// gives it to the next request for that backend from any client. The
/// backends see few connections where clients made many; a pooled
/// connection that the backend closes as a request arrives costs that
/// request nothing (it is sent again), and each is counted.
#[test]
fn backend_connections_are_pooled_across_clients() {
    use balancer_tests::servers::{HTTP_REQUESTS_PER_CONNECTION, http_whoami};

    const HTTP: u16 = 3200;
    const CLIENTS: usize = 2 * HTTP_REQUESTS_PER_CONNECTION;
    require_root();
    let topo = Topology::new(&TopologyOpts {
        clients_v4: 2,
        extra_nets: vec![],
        vips: vec![VIP_V4.into()],
        ..TopologyOpts::default()
    });
    let bpffs = TempBpffs::new();
    let _servers: Vec<_> = topo
        .backends()
        .iter()
        .map(|b| http_whoami(b.ns(), b.name(), HTTP))
        .collect();
    let vip = SocketAddr::new(IpAddr::V4(VIP_V4), 85);
    // One proxy thread: each thread pools its own connections, and the
    // clients' order of ports below is that of one pool.
    let config = format!(
        "{}[proxy]\nthreads = 1\n[[services]]\nname = \"pooled\"\nvip = \"{vip}\"\naffinity = \"sid\"\n\
         [services.health]\ncheck = \"none\"\n{}",
        config_head(&bpffs, METRICS),
        named_backends_toml(topo.backends(), HTTP),
    );
    let mut daemon = Daemon::start(topo.gw(), &config, &bpffs.pin_dir(), &[]);
    daemon.wait_serving(topo.gw(), &bpffs.control_socket());
    let client = topo.clients_v4()[0];
    let connect = || {
        tcp_connect(topo.client(), client.into(), vip, Duration::from_secs(3))
            .expect("connect to the VIP")
    };
    // The acceptor starts once the daemon serves: wait for the VIP.
    let start = Instant::now();
    while let Err(e) = tcp_connect(topo.client(), client.into(), vip, CLOSE_WAIT) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "nothing accepts on the VIP: {e}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pool = |event: &str| {
        let (code, body) =
            http::get(topo.gw(), METRICS.parse().unwrap(), "/metrics").expect("GET /metrics");
        assert_eq!(code, 200, "{body}");
        metric(
            &body,
            "balancer_proxy_pool_total",
            &[("service", "pooled"), ("event", event)],
        )
        .unwrap_or(0.0)
    };

    // One client after another, each with `Connection: close`, all for b1.
    let mut ports = Vec::new();
    for i in 0..CLIENTS {
        let stream = connect();
        let (head, body) = get(&stream, &format!("/?EIO=4&sid=b1.client{i}"), true);
        assert!(head.starts_with("HTTP/1.1 200 "), "client {i}: {head:?}");
        assert!(
            head.contains("Connection: close\r\n"),
            "client {i}: the answer does not say the connection closes: {head:?}"
        );
        assert_closed(&stream, "a client that asked to close");
        ports.push(seen_port(&body, "b1"));
    }
    // b1 answers 5 requests per connection, then closes it unanswered as
    // the 6th arrives: that request is sent again on a new connection,
    // which serves the rest.
    let (first, second) = ports.split_at(HTTP_REQUESTS_PER_CONNECTION);
    assert!(
        first.iter().all(|p| *p == first[0])
            && second.iter().all(|p| *p == second[0])
            && first[0] != second[0],
        "{CLIENTS} clients reached b1 from gateway ports {ports:?}: not 2 pooled connections"
    );
    assert_eq!(
        pool("reused"),
        (CLIENTS - 1) as f64,
        "requests on a pooled connection"
    );
    assert_eq!(pool("retried"), 1.0, "requests sent again");

    // A keep-alive client whose requests alternate between b2 and b3: each
    // request finds its backend's connection again, left in the pool by
    // the request before last.
    let stream = connect();
    let mut seen: BTreeMap<&str, BTreeSet<u16>> = BTreeMap::new();
    for i in 0..4 {
        let backend = ["b2", "b3"][i % 2];
        let (head, body) = get(&stream, &format!("/?EIO=4&sid={backend}.ka"), false);
        assert!(head.starts_with("HTTP/1.1 200 "), "request {i}: {head:?}");
        assert!(!head.contains("Connection: close"), "request {i}: {head:?}");
        seen.entry(backend)
            .or_default()
            .insert(seen_port(&body, backend));
    }
    assert!(
        seen.values().all(|ports| ports.len() == 1),
        "alternating requests opened new backend connections: {seen:?}"
    );
    assert_eq!(
        pool("reused"),
        (CLIENTS + 1) as f64,
        "the 3rd and 4th request reuse"
    );
    let connections = metric_sum(
        &http::get(topo.gw(), METRICS.parse().unwrap(), "/metrics")
            .expect("GET /metrics")
            .1,
        "balancer_backend_connections_total",
        &[("service", "pooled")],
    );
    assert_eq!(connections, 4.0, "backend connections opened");
    println!(
        "pool: {CLIENTS} close clients reached b1 over 2 connections (ports {ports:?}, 1 request sent again), a keep-alive client alternating b2/b3 over one each; 4 backend connections for {} requests",
        CLIENTS + 4
    );
    drop(daemon);
}
