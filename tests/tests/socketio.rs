//! Socket.IO end to end, the problem the balancer exists for: three (then
//! four) plain Socket.IO servers with no sticky adapter and no shared state,
//! behind the balancer; sessions from many client addresses, each making
//! several TCP connections (long-polling requests, then the WebSocket
//! upgrade; some stay on long-polling). Any request of a session that
//! reaches another server than the one holding it gets `400 Session ID
//! unknown`, and the driver counts it, with every other error a user sees.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

use balancer_tests::{
    Topology, TopologyOpts,
    bpffs::TempBpffs,
    daemon::{Daemon, backends_toml, cli_ok, config_head, status},
    http::{self, metric},
    require_root,
    socketio::{self, Driver, SessionSpec, SocketIoServer, assert_clean, errors, report},
    topology::VIP_V4,
};

const PORT: u16 = 3000;
const METRICS: &str = "127.0.0.1:9100";
const INTERVAL_MS: u64 = 500;
const TIMEOUT_MS: u64 = 300;
const FALL: u64 = 3;

struct Rig {
    topo: Topology,
    bpffs: TempBpffs,
    servers: BTreeMap<String, SocketIoServer>,
    _daemon: Daemon,
}

impl Rig {
    /// Socket.IO servers on three backends behind a `web` service with
    /// `affinity` (and `extra` service keys), http health checks on
    /// `/health`.
    fn new(affinity: &str, extra: &str, opts: TopologyOpts) -> Rig {
        require_root();
        let topo = Topology::new(&opts);
        let bpffs = TempBpffs::new();
        let servers = topo
            .backends()
            .iter()
            .map(|b| {
                (
                    b.name().to_owned(),
                    SocketIoServer::start(b.ns(), b.name(), PORT),
                )
            })
            .collect();
        let backends = backends_toml(
            topo.backends()
                .iter()
                .map(|b| SocketAddr::new(b.v4().into(), PORT)),
        );
        let config = format!(
            r#"{head}
[[services]]
name = "web"
vip = "{VIP_V4}:80"
affinity = "{affinity}"
{extra}
[services.health]
check = "http"
path = "/health"
interval = "{INTERVAL_MS}ms"
timeout = "{TIMEOUT_MS}ms"
rise = 2
fall = {FALL}
{backends}"#,
            head = config_head(&bpffs, METRICS),
        );
        let mut daemon = Daemon::start(topo.gw(), &config, &bpffs.pin_dir(), &[]);
        daemon.wait_serving(topo.gw(), &bpffs.control_socket());
        let rig = Rig {
            topo,
            bpffs,
            servers,
            _daemon: daemon,
        };
        rig.wait_up(3);
        rig
    }

    fn socket(&self) -> PathBuf {
        self.bpffs.control_socket()
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        cli_ok(self.topo.gw(), &self.socket(), args)
    }

    /// Wait until `n` backends are up.
    fn wait_up(&self, n: usize) {
        let start = Instant::now();
        while status(self.topo.gw(), &self.socket()).services[0]
            .backends
            .iter()
            .filter(|b| b.up)
            .count()
            != n
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{n} backends not up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn addr(&self, name: &str) -> String {
        self.topo.backend_addr(name, PORT)
    }

    fn drive(&self, sessions: &[SessionSpec], duration: Duration) -> Driver {
        Driver::start(self.topo.client(), vip(), sessions, duration)
    }
}

fn vip() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(VIP_V4), 80)
}

#[test]
fn four_tuple_affinity_breaks_socketio_sessions() {
    // The control case: without source affinity, a session's requests are
    // spread over the servers, and Socket.IO fails.
    let rig = Rig::new(
        "four-tuple",
        "",
        TopologyOpts {
            clients_v4: 12,
            ..TopologyOpts::default()
        },
    );
    let sessions = socketio::sessions(&rig.topo.clients_v4()[..12], 1);
    let report_ = rig.drive(&sessions, Duration::from_secs(4)).finish();
    let n = report("four-tuple (control)", &report_);
    assert!(
        n > 0,
        "four-tuple balancing produced no session error: the suite would not notice broken affinity"
    );
    let kinds: BTreeSet<&str> = errors(&report_)
        .iter()
        .map(|(_, e)| e.kind.as_str())
        .collect();
    println!("four-tuple error kinds: {kinds:?}");
}

#[test]
fn source_ip_sessions_survive_scale_out() {
    let mut opts = TopologyOpts {
        clients_v4: 40,
        ..TopologyOpts::default()
    };
    opts.backends = 3;
    let mut rig = Rig::new("source-ip", "", opts);
    let clients = rig.topo.clients_v4().to_vec();
    // 60 live sessions (20 long-polling only) from 20 addresses.
    let live = socketio::sessions(&clients[..20], 2);
    let driver = rig.drive(&live, Duration::from_secs(8));
    let ready = driver.wait_for("ready", Duration::from_secs(20));
    assert_eq!(ready["connected"], 60, "{ready}");

    // Add a fourth backend while they poll.
    let b4 = rig.topo.add_backend();
    let (b4_name, b4_ns) = (b4.name().to_owned(), b4.ns());
    let server = SocketIoServer::start(b4_ns, &b4_name, PORT);
    rig.servers.insert(b4_name.clone(), server);
    let b4_addr = rig.addr(&b4_name);
    println!(
        "{}",
        rig.cli_ok(&["backend", "add", "web", &b4_addr]).trim()
    );
    rig.wait_up(4);
    // New sessions, from new addresses, while the old ones still run.
    let fresh = socketio::sessions(&clients[20..40], 0);
    let newcomers = rig.drive(&fresh, Duration::from_secs(2)).finish();
    let live = driver.finish();
    assert_clean("scale-out, live sessions", &live);
    assert_clean("scale-out, new sessions", &newcomers);
    let on_b4 = newcomers
        .iter()
        .filter(|s| s.server.as_deref() == Some(b4_name.as_str()))
        .count();
    assert!(on_b4 > 0, "no new session reached {b4_name}");
    println!(
        "scale-out: {on_b4} of {} new sessions on {b4_name}",
        newcomers.len()
    );
}

#[test]
fn source_ip_sessions_survive_drain() {
    let rig = Rig::new(
        "source-ip",
        "",
        TopologyOpts {
            clients_v4: 40,
            ..TopologyOpts::default()
        },
    );
    let clients = rig.topo.clients_v4().to_vec();
    let live = socketio::sessions(&clients[..20], 2);
    let driver = rig.drive(&live, Duration::from_secs(6));
    driver.wait_for("ready", Duration::from_secs(20));
    let b1 = rig.addr("b1");
    println!("{}", rig.cli_ok(&["backend", "drain", "web", &b1]).trim());
    let fresh = socketio::sessions(&clients[20..40], 0);
    let newcomers = rig.drive(&fresh, Duration::from_secs(2)).finish();
    let live = driver.finish();
    assert_clean("drain, live sessions", &live);
    assert_clean("drain, new sessions", &newcomers);
    let kept = live
        .iter()
        .filter(|s| s.server.as_deref() == Some("b1"))
        .count();
    assert!(kept > 0, "no live session was on b1 to drain");
    assert!(
        newcomers.iter().all(|s| s.server.as_deref() != Some("b1")),
        "a new session landed on the draining b1"
    );
    // Its sessions are over: its active count falls to 0 (within the
    // handshake timeout plus a recount, should a last connect attempt have
    // been cut short by the driver's exit).
    let start = Instant::now();
    loop {
        let (_, m) = http::get(rig.topo.gw(), METRICS.parse().unwrap(), "/metrics").unwrap();
        let active = metric(
            &m,
            "balancer_backend_active_connections",
            &[("backend", b1.as_str())],
        )
        .unwrap();
        if active == 0.0 {
            break;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let flows = rig.cli_ok(&["flows", "--service", "web", "--limit", "100000"]);
            let open: Vec<&str> = flows
                .lines()
                .filter(|l| l.contains(b1.as_str()) && l.contains(" yes "))
                .collect();
            panic!("b1 still has {active} active connections: {open:#?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "drain: {kept} sessions finished on b1 without error, 0 of {} new sessions on it, its active count 0 after {:?}",
        newcomers.len(),
        start.elapsed()
    );
}

#[test]
fn a_dead_servers_sessions_reconnect_elsewhere_and_no_other_is_disturbed() {
    let mut rig = Rig::new(
        "source-ip",
        "",
        TopologyOpts {
            clients_v4: 20,
            ..TopologyOpts::default()
        },
    );
    let clients = rig.topo.clients_v4().to_vec();
    let live = socketio::sessions(&clients[..20], 2);
    let driver = rig.drive(&live, Duration::from_secs(8));
    driver.wait_for("ready", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    let victim = "b2";
    rig.servers.remove(victim).unwrap().kill();
    let sessions = driver.finish();
    report("failure", &sessions);
    let bound = Duration::from_millis(FALL * INTERVAL_MS + TIMEOUT_MS + 1000);
    let mut moved = 0;
    for s in &sessions {
        if s.servers.first().map(String::as_str) == Some(victim) {
            let r = s
                .reconnects
                .first()
                .unwrap_or_else(|| panic!("session {} on {victim} never reconnected: {s:?}", s.id));
            assert_ne!(r.to, victim);
            // Socket.IO retries every 200-400 ms: allow one retry interval.
            assert!(
                Duration::from_millis(r.after_ms) <= bound + Duration::from_millis(400),
                "session {} reconnected after {} ms (bound {bound:?})",
                s.id,
                r.after_ms
            );
            moved += 1;
        } else {
            assert!(
                s.error_count == 0,
                "session {} on {:?} was disturbed: {:?}",
                s.id,
                s.servers,
                s.errors
            );
        }
    }
    assert!(moved > 0, "no session was on {victim}");
    let worst = sessions
        .iter()
        .flat_map(|s| &s.reconnects)
        .map(|r| r.after_ms)
        .max()
        .unwrap();
    let undisturbed = sessions.len() - moved;
    println!(
        "failure: {moved} sessions on {victim} reconnected elsewhere (slowest {worst} ms, bound {bound:?} + one retry); {undisturbed} others had 0 errors"
    );
}

#[test]
fn a_slash_24_prefix_puts_a_whole_network_on_one_backend() {
    let opts = TopologyOpts {
        clients_v4: 1,
        extra_nets: vec![2, 3, 4, 5],
        clients_per_extra_net: 5,
        ..TopologyOpts::default()
    };
    let rig = Rig::new("source-ip", "source_prefix_v4 = 24", opts);
    let addresses = rig.topo.clients_extra_v4().to_vec();
    let sessions = rig
        .drive(&socketio::sessions(&addresses, 1), Duration::from_secs(3))
        .finish();
    assert_clean("/24 prefix", &sessions);
    let mut by_net: BTreeMap<u8, BTreeSet<String>> = BTreeMap::new();
    for s in &sessions {
        let ip: Ipv4Addr = s.address.parse().unwrap();
        by_net
            .entry(ip.octets()[2])
            .or_default()
            .insert(s.server.clone().unwrap());
    }
    for (net, servers) in &by_net {
        assert_eq!(
            servers.len(),
            1,
            "198.18.{net}.0/24 spread over {servers:?}"
        );
    }
    println!(
        "/24 prefix: {} sessions from {} networks, one backend each: {by_net:?}",
        sessions.len(),
        by_net.len()
    );
}
