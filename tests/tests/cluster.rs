//! Two gateways behind ECMP (tests/src/cluster.rs): a router running BIRD
//! learns the VIP from each gateway's BIRD, which exports it because the
//! balancer put it on `lo` (`[announce]`). Real Socket.IO sessions (the
//! suite's driver) whose connections the router spreads over both
//! gateways; the backends' replies go back over either. Both gateways build
//! the same table from the same config, and a reply is translated by
//! whichever gateway it crosses, so a session holds however its
//! connections are spread.
//!
//! Scenarios: steady; `balancer cluster leave` and `join` mid-session
//! (with a restart while left, which stays left, and one that keeps the
//! address); a gateway that dies silently mid-session, where only BGP's
//! detection window may cost retries; scale-out with a backend added on
//! one gateway only (gateways linked by `[cluster]`, so the change applies
//! on both at one instant), with the health disagreement window measured;
//! a gateway started later whose config lists the backend set the other
//! reached by `backend add`. Steady and the dead gateway run again with
//! plain-TCP sessions ([`IdleSessions`]) against whoami backends: no Node,
//! so the `--vm` guest runs them. And the mistakes: the shipped BIRD
//! configs must parse, an announce interface that does not exist is
//! refused, and a gateway without `[announce]` has nothing to leave.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::Command,
    time::{Duration, Instant},
};

use balancer_tests::{
    Topology, TopologyOpts,
    bpffs::TempBpffs,
    cluster::{
        Cluster, GatewayOpts, VIP, bird_config, cluster_listen, gateway_bird_config, require_bird,
    },
    daemon::{Daemon, attached, balancer, cli, config_head, status},
    http::{self, metric},
    idle::{ANSWER_TIMEOUT, IdleSession, IdleSessions},
    require_root,
    servers::Server,
    socketio::{Driver, Session, SessionSpec, SocketIoServer, error_total, errors},
    tcp_whoami,
    topology::GW_CLIENT_IF,
};

const PORT: u16 = 3000;
const CLIENTS: u8 = 12;
/// The BGP hold time in the shipped configs.
const HOLD: Duration = Duration::from_secs(3);

/// What the backends run.
#[derive(Clone, Copy, PartialEq)]
enum Servers {
    /// Socket.IO in Node (health-checked over HTTP).
    SocketIo,
    /// The whoami TCP servers (health-checked by connecting), for the
    /// plain-TCP sessions that need no Node (the `--vm` guest).
    Whoami,
}

struct Rig {
    cluster: Cluster,
    kind: Servers,
    /// One per backend, of `kind`.
    socketio: Vec<SocketIoServer>,
    _whoami: Vec<Server>,
}

/// Two gateways, three Socket.IO backends, the VIP routed over both.
fn rig() -> Rig {
    rig_with(3, Servers::SocketIo, &[GatewayOpts::default(); 2])
}

/// `backends` backends running `kind`, and one gateway per `gateways`
/// entry, configured by it; returns once the router routes over them all.
fn rig_with(backends: usize, kind: Servers, gateways: &[GatewayOpts]) -> Rig {
    require_root();
    require_bird();
    let mut cluster = Cluster::new(CLIENTS, backends);
    let (mut socketio, mut whoami) = (Vec::new(), Vec::new());
    for b in &cluster.backends {
        match kind {
            Servers::SocketIo => socketio.push(SocketIoServer::start(&b.ns, &b.name, PORT)),
            Servers::Whoami => whoami.push(tcp_whoami(&b.ns, &b.name, PORT)),
        }
    }
    let start = Instant::now();
    let service = service(kind);
    for opts in gateways {
        cluster.add_gateway_with(&service, PORT, opts);
    }
    let rig = Rig {
        cluster,
        kind,
        socketio,
        _whoami: whoami,
    };
    let converged = rig.serve();
    println!(
        "rig: {} gateways up and the router's ECMP route over them all {:?} after the daemons started ({converged:?} waiting for BGP)",
        gateways.len(),
        start.elapsed()
    );
    rig
}

/// The service every gateway serves (the backends are appended).
fn service(kind: Servers) -> String {
    let health = match kind {
        Servers::SocketIo => "check = \"http\"\npath = \"/health\"",
        Servers::Whoami => "check = \"tcp\"",
    };
    format!(
        r#"[[services]]
name = "web"
vip = "{VIP}:80"
[services.health]
{health}
interval = "500ms"
timeout = "300ms"
rise = 2
fall = 3
"#
    )
}

impl Rig {
    /// One more gateway, configured by `opts`; returns once the router
    /// routes over it too, with how long BGP took.
    fn add_gateway(&mut self, opts: &GatewayOpts) -> Duration {
        self.cluster
            .add_gateway_with(&service(self.kind), PORT, opts);
        self.serve()
    }

    /// The backends' replies routed over every gateway, each gateway's
    /// backends up, and the router's route over every gateway; how long
    /// the last took.
    fn serve(&self) -> Duration {
        let c = &self.cluster;
        c.route_backends_over(c.gateways.len());
        for g in &c.gateways {
            let deadline = Instant::now() + Duration::from_secs(15);
            while status(&g.ns, &g.socket()).services[0]
                .backends
                .iter()
                .any(|b| !b.up)
            {
                assert!(Instant::now() < deadline, "g{}: backends not up", g.n);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let all: Vec<usize> = c.gateways.iter().map(|g| g.n).collect();
        c.wait_next_hops(&all)
    }

    /// Every gateway's `table_fingerprint` of the service.
    fn fingerprints(&self) -> Vec<String> {
        self.cluster
            .gateways
            .iter()
            .map(|g| {
                status(&g.ns, &g.socket()).services[0]
                    .table_fingerprint
                    .clone()
            })
            .collect()
    }
}

/// `per_address` long-polling sessions from every client address, then
/// `websocket` sessions that upgrade from the first addresses.
fn sessions(clients: &[Ipv4Addr], per_address: usize, websocket: usize) -> Vec<SessionSpec> {
    let polling = clients
        .iter()
        .flat_map(|&a| std::iter::repeat_n(SessionSpec::new(a.into(), true), per_address));
    let upgrading = clients
        .iter()
        .take(websocket)
        .map(|&a| SessionSpec::new(a.into(), false));
    polling.chain(upgrading).collect()
}

fn vip() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(VIP), 80)
}

/// Prints the run's totals; the number of session errors.
fn report(scenario: &str, sessions: &[Session]) -> usize {
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, e) in errors(sessions) {
        *by_kind.entry(e.kind.as_str()).or_default() += 1;
    }
    let acks: u64 = sessions.iter().map(|s| s.acks).sum();
    let connections: usize = sessions.iter().map(|s| s.ports.len()).sum();
    println!(
        "{scenario}: {} sessions, {} connected at the end, {connections} TCP connections, {acks} acked messages, session errors {} (kinds, first 10 per session: {by_kind:?})",
        sessions.len(),
        sessions.iter().filter(|s| s.connected).count(),
        error_total(sessions),
    );
    for (id, e) in errors(sessions).iter().take(5) {
        println!(
            "  e.g. session {id}: {} {} (on {:?}, at {} ms)",
            e.kind, e.detail, e.server, e.at_ms
        );
    }
    error_total(sessions)
}

/// One session's connections, as [`crossed_both`] checks them.
struct Connections<'a> {
    id: String,
    polling: bool,
    client: Ipv4Addr,
    ports: &'a [u16],
}

fn socketio_connections(run: &[Session]) -> Vec<Connections<'_>> {
    run.iter()
        .map(|s| Connections {
            id: s.id.to_string(),
            polling: s.polling,
            client: s.address.parse().unwrap(),
            ports: &s.ports,
        })
        .collect()
}

fn idle_connections(run: &[IdleSession]) -> Vec<Connections<'_>> {
    run.iter()
        .enumerate()
        .map(|(i, s)| Connections {
            id: format!("{i} ({})", s.address),
            polling: s.polling,
            client: match s.address {
                IpAddr::V4(a) => a,
                IpAddr::V6(a) => panic!("the rig's clients are IPv4, not {a}"),
            },
            ports: &s.ports,
        })
        .collect()
}

/// The gateways each session's connections crossed, by the router's
/// record; panics on a connection the router did not see.
fn gateways_of(cluster: &Cluster, sessions: &[Connections]) -> Vec<BTreeSet<usize>> {
    let seen = cluster.connections();
    sessions
        .iter()
        .map(|s| {
            s.ports
                .iter()
                .map(|&p| {
                    *seen.get(&(s.client, p)).unwrap_or_else(|| {
                        panic!(
                            "session {}: the router saw no SYN from {}:{p}",
                            s.id, s.client
                        )
                    })
                })
                .collect()
        })
        .collect()
}

/// Forget the SYNs the router recorded so far.
fn flush_connections(cluster: &Cluster) {
    cluster
        .router
        .exec("nft", ["flush", "set", "ip", "rig", "syns"]);
}

/// Connections per gateway since the last [`flush_connections`].
fn gateways_since_flush(cluster: &Cluster) -> BTreeMap<usize, usize> {
    let mut per = BTreeMap::new();
    for g in cluster.connections().values() {
        *per.entry(*g).or_default() += 1;
    }
    per
}

/// Asserts what traffic over both gateways shows: every long-polling
/// session's connections (a new one per request) crossed at least two
/// gateways, and so did some WebSocket session's (an upgraded session's
/// few connections may all hash to one); prints the counts.
fn crossed_both(scenario: &str, c: &Cluster, run: &[Connections]) {
    let crossed = gateways_of(c, run);
    let mut upgraded_across = 0;
    for (s, gws) in run.iter().zip(&crossed) {
        if s.polling {
            assert!(
                gws.len() >= 2,
                "{scenario}: session {} ({} connections) crossed only {gws:?}",
                s.id,
                s.ports.len()
            );
        } else if gws.len() >= 2 {
            upgraded_across += 1;
        }
    }
    let websocket = run.iter().filter(|s| !s.polling).count();
    assert!(
        websocket == 0 || upgraded_across > 0,
        "{scenario}: no WebSocket session's connections crossed two gateways"
    );
    let upgraded = match websocket {
        0 => String::new(),
        _ => format!("; {upgraded_across} of {websocket} WebSocket sessions did too"),
    };
    println!(
        "{scenario}: every long-polling session crossed both gateways{upgraded}; connections per gateway {:?}",
        gateways_since_flush(c)
    );
}

#[test]
fn shipped_bird_configs_parse() {
    require_bird();
    let dir = std::env::temp_dir().join(format!(
        "lbt-birdconf-{}",
        balancer_tests::netns::random_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let rigged = dir.join("gateway2.conf");
    std::fs::write(&rigged, gateway_bird_config(2)).unwrap();
    for file in [
        bird_config("gateway.conf"),
        bird_config("router.conf"),
        rigged,
    ] {
        let out = Command::new("bird")
            .arg("-p")
            .arg("-c")
            .arg(&file)
            .output()
            .expect("run bird -p");
        assert!(
            out.status.success(),
            "bird -p -c {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn steady_sessions_cross_both_gateways_without_errors() {
    let rig = rig();
    let c = &rig.cluster;
    for g in &c.gateways {
        let announce = status(&g.ns, &g.socket())
            .announce
            .expect("[announce] status");
        assert_eq!(announce.vips, vec![(VIP.to_string(), true)], "g{}", g.n);
        assert!(!announce.left && g.has_vip(), "g{}", g.n);
    }
    // 12 addresses × 4 long-polling sessions (a new connection per
    // request), and 12 sessions that upgrade to WebSocket.
    let specs = sessions(&c.clients, 4, c.clients.len());
    let run = Driver::start(&c.client, vip(), &specs, Duration::from_secs(6)).finish();
    let n = report("steady, 2 gateways", &run);
    assert_eq!(n, 0, "steady: session errors");
    for s in &run {
        assert!(
            s.connected && s.servers.len() == 1 && s.acks > 0,
            "session {s:?}"
        );
    }
    crossed_both("steady", c, &socketio_connections(&run));
}

/// When each gateway's `status` first shows `backend` with `up == want`,
/// from now: each gateway polled by a thread of its own every 10 ms, so
/// one gateway's slow answer does not delay the other's reading. Panics
/// after `limit`.
fn when_marked(c: &Cluster, backend: &str, want: bool, limit: Duration) -> Vec<Duration> {
    let since = Instant::now();
    std::thread::scope(|scope| {
        let polls: Vec<_> = c
            .gateways
            .iter()
            .map(|g| {
                scope.spawn(move || {
                    loop {
                        let marked = status(&g.ns, &g.socket()).services[0]
                            .backends
                            .iter()
                            .any(|b| b.address == backend && b.up == want);
                        if marked {
                            return since.elapsed();
                        }
                        assert!(
                            since.elapsed() < limit,
                            "g{}: {backend} not up={want} within {limit:?}",
                            g.n
                        );
                        std::thread::sleep(Duration::from_millis(10));
                    }
                })
            })
            .collect();
        polls.into_iter().map(|p| p.join().unwrap()).collect()
    })
}

fn spread(times: &[Duration]) -> Duration {
    *times.iter().max().unwrap() - *times.iter().min().unwrap()
}

/// Scale-out mid-session: a 4th backend added with `backend add` on
/// gateway 1 only. The change applies on both gateways at one instant
/// (the answer names gateway 2), both tables stay equal, sessions on the
/// old backends keep theirs, fresh sessions reach the new one, with 0
/// session errors. Then health: the new backend killed, each gateway
/// checks on its own; the spread between their "down" is measured.
#[test]
fn scale_out_with_a_backend_added_on_one_gateway_only() {
    let mut rig = rig_with(
        4,
        Servers::SocketIo,
        &[GatewayOpts {
            listed: Some(3),
            peers: 2,
        }; 2],
    );
    let before = rig.fingerprints();
    let c = &rig.cluster;
    assert_eq!(before[0], before[1], "one table from one config");
    let specs = sessions(&c.clients, 4, c.clients.len());
    let driver = Driver::start(&c.client, vip(), &specs, Duration::from_secs(8));
    std::thread::sleep(Duration::from_secs(2));
    let fourth = SocketAddr::new(c.backends[3].addr.into(), PORT).to_string();
    let out = c.gateways[0].cli_ok(&["backend", "add", "web", &fourth]);
    assert!(
        out.contains(&format!("applied on peers {}", cluster_listen(2))),
        "{out}"
    );
    // Both start checking it at the instant: it goes up on both within
    // `rise` checks, nearly together.
    let up = when_marked(c, &fourth, true, Duration::from_secs(10));
    let run = driver.finish();
    let errors = report("scale-out, a backend added on gateway 1 only", &run);
    let after = rig.fingerprints();
    assert_eq!(after[0], after[1], "equal tables after the change");
    assert_ne!(after[0], before[0]);
    assert_eq!(errors, 0, "scale-out: session errors");
    for s in &run {
        assert!(s.connected && s.servers.len() == 1, "session {s:?}");
    }

    // Fresh clients: addresses with no affinity entry yet (those above
    // keep theirs, on the old backends).
    let new_clients = rig.cluster.add_clients(28);
    let c = &rig.cluster;
    let fresh = Driver::start(
        &c.client,
        vip(),
        &sessions(&new_clients, 1, 0),
        Duration::from_secs(3),
    )
    .finish();
    let fresh_errors = report("fresh sessions after the scale-out", &fresh);
    assert_eq!(fresh_errors, 0, "fresh sessions: session errors");
    let on_new = fresh
        .iter()
        .filter(|s| s.servers.contains(&c.backends[3].name))
        .count();
    assert!(on_new > 0, "no fresh session reached the new backend");
    println!(
        "scale-out: the new backend went up on the gateways {:?} after the change ({} ms apart); {on_new} of {} fresh sessions on it",
        up,
        spread(&up).as_millis(),
        fresh.len()
    );

    // Health: each gateway checks on its own (interval 500 ms, fall 3).
    // The added backend's checks started at the change's instant on both
    // gateways; a backend from the config has checks started with each
    // daemon, so in another phase on each: up to an interval apart.
    for (k, what) in [(3, "the added backend"), (0, "a backend from the config")] {
        let killed = Instant::now();
        rig.socketio.remove(k).kill();
        let c = &rig.cluster;
        let address = SocketAddr::new(c.backends[k].addr.into(), PORT).to_string();
        let down = when_marked(c, &address, false, Duration::from_secs(10));
        let window = spread(&down);
        println!(
            "health: {what} killed, marked down on the gateways {down:?} after ({:?} in all); disagreement window {} ms (interval 500 ms, fall 3)",
            killed.elapsed(),
            window.as_millis()
        );
        assert!(
            window < Duration::from_millis(1000),
            "the gateways disagreed on the health of {what} for {window:?}: more than two check intervals"
        );
    }
}

/// A gateway started later, whose config lists the backend set gateway 1
/// reached by another history: gateway 1 started with b1..b3 and got b4 by
/// `backend add` while gateway 2 was not running (the answer names it
/// unreachable); gateway 2 starts with b1..b4 in its file, pulls gateway
/// 1's entries and admin state, announces, and the router spreads over
/// both. One table per backend set: equal fingerprints whatever the
/// history, so sessions started before the join (whose connections then
/// cross both gateways) and fresh ones after it (addresses with no
/// affinity entry, which only the table places) see 0 errors.
#[test]
fn a_gateway_started_later_with_the_same_backends_by_another_history() {
    let mut rig = rig_with(
        4,
        Servers::SocketIo,
        &[GatewayOpts {
            listed: Some(3),
            peers: 2,
        }],
    );
    let c = &rig.cluster;
    let fourth = SocketAddr::new(c.backends[3].addr.into(), PORT).to_string();
    let out = c.gateways[0].cli_ok(&["backend", "add", "web", &fourth]);
    assert!(
        out.contains(&format!("unreachable: {} (not linked)", cluster_listen(2))),
        "{out}"
    );
    when_marked(c, &fourth, true, Duration::from_secs(10));
    let history = rig.fingerprints();

    let early = Driver::start(
        &c.client,
        vip(),
        &sessions(&c.clients, 2, 6),
        Duration::from_secs(16),
    );
    early.wait_for("ready", Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(2));
    let joining = Instant::now();
    let converged = rig.add_gateway(&GatewayOpts {
        listed: None,
        peers: 2,
    });
    let joined = joining.elapsed();
    assert_eq!(
        rig.fingerprints(),
        vec![history[0].clone(); 2],
        "gateway 2's table from its file differs from gateway 1's, reached by `backend add`"
    );
    let run = early.finish();
    let c = &rig.cluster;
    let early_errors = report("sessions started before gateway 2", &run);
    assert_eq!(early_errors, 0, "sessions across the join: session errors");
    for s in &run {
        assert!(s.connected && s.servers.len() == 1, "session {s:?}");
    }
    // Long-polling sessions only: a WebSocket session that upgraded
    // before the join holds its one connection on gateway 1.
    let mut polling = socketio_connections(&run);
    polling.retain(|s| s.polling);
    crossed_both("sessions started before gateway 2", c, &polling);

    // Fresh clients after the join: no affinity entry anywhere, so each
    // gateway places them by its own table.
    flush_connections(c);
    let fresh = rig.cluster.add_clients(CLIENTS);
    let c = &rig.cluster;
    let late = Driver::start(
        &c.client,
        vip(),
        &sessions(&fresh, 4, fresh.len()),
        Duration::from_secs(6),
    )
    .finish();
    let late_errors = report("fresh sessions after gateway 2 joined", &late);
    assert_eq!(late_errors, 0, "fresh sessions: session errors");
    for s in &late {
        assert!(s.connected && s.servers.len() == 1, "session {s:?}");
    }
    crossed_both(
        "fresh sessions after gateway 2 joined",
        c,
        &socketio_connections(&late),
    );
    println!(
        "later gateway: up and routed over {joined:?} after its start ({converged:?} waiting for BGP); table {} on both; session errors {early_errors} across the join, {late_errors} after it",
        history[0]
    );
}

#[test]
fn cluster_leave_moves_sessions_to_the_other_gateway_and_join_brings_it_back() {
    let mut rig = rig();
    let specs = sessions(&rig.cluster.clients, 2, 6);
    let driver = Driver::start(&rig.cluster.client, vip(), &specs, Duration::from_secs(14));
    driver.wait_for("ready", Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(1));

    let c = &rig.cluster;
    let g1 = &c.gateways[0];
    println!("g1: {}", g1.cli_ok(&["cluster", "leave"]).trim());
    assert!(!g1.has_vip(), "the VIP is still on g1's lo after leave");
    assert!(g1.state_file().exists(), "leave is not remembered");
    let withdrawn = c.wait_next_hops(&[2]);
    flush_connections(c);
    std::thread::sleep(Duration::from_secs(2));
    let after_leave = gateways_since_flush(c);
    assert_eq!(
        after_leave.keys().copied().collect::<Vec<_>>(),
        vec![2],
        "connections after leave: {after_leave:?}"
    );

    // A restart while left stays left.
    rig.cluster.gateways[0].restart_daemon();
    let c = &rig.cluster;
    let g1 = &c.gateways[0];
    let announce = status(&g1.ns, &g1.socket()).announce.unwrap();
    assert!(announce.left && !g1.has_vip(), "{announce:?}");
    assert_eq!(c.vip_next_hops().len(), 1);

    println!("g1: {}", g1.cli_ok(&["cluster", "join"]).trim());
    assert!(g1.has_vip());
    assert!(!g1.state_file().exists());
    let rejoined = c.wait_next_hops(&[1, 2]);
    flush_connections(c);
    std::thread::sleep(Duration::from_secs(2));
    let after_join = gateways_since_flush(c);
    assert_eq!(
        after_join.keys().copied().collect::<Vec<_>>(),
        vec![1, 2],
        "connections after join: {after_join:?}"
    );

    // SIGTERM keeps the address: a restart does not flap the route.
    rig.cluster.gateways[1].restart_daemon();
    let c = &rig.cluster;
    assert!(c.gateways[1].has_vip());
    assert_eq!(c.vip_next_hops().len(), 2);

    let run = driver.finish();
    let n = report("cluster leave, restart, join", &run);
    println!(
        "leave: route over g2 only {withdrawn:?} after `cluster leave` (then connections per gateway {after_leave:?}); join: over both again {rejoined:?} after `cluster join` ({after_join:?})"
    );
    assert_eq!(n, 0, "cluster leave/join: session errors");
    assert!(run.iter().all(|s| s.connected && s.servers.len() == 1));
}

#[test]
fn a_dead_gateway_costs_only_the_detection_window() {
    let mut rig = rig();
    let specs = sessions(&rig.cluster.clients, 2, 6);
    let started = Instant::now();
    let driver = Driver::start(&rig.cluster.client, vip(), &specs, Duration::from_secs(14));
    driver.wait_for("ready", Duration::from_secs(20));
    flush_connections(&rig.cluster);
    std::thread::sleep(Duration::from_secs(2));
    let before = gateways_since_flush(&rig.cluster);
    assert_eq!(
        before.keys().copied().collect::<Vec<_>>(),
        vec![1, 2],
        "connections before the death: {before:?}"
    );

    let killed_at = started.elapsed();
    rig.cluster.gateways[1].die();
    let detected = rig.cluster.wait_next_hops(&[1]);
    let run = driver.finish();
    let n = report("a gateway dies", &run);
    // Connections whose SYN went to the dead gateway and, retransmitted
    // once the route changed, to the live one: the retries of the window.
    let syns = rig.cluster.syns();
    let retried = syns
        .iter()
        .filter(|(g, client, port)| *g == 1 && syns.contains(&(2, *client, *port)))
        .count();
    println!(
        "dead gateway: the router withdrew it {detected:?} after it went silent (BGP hold time {HOLD:?}); {retried} connections' SYNs retried onto g1; {n} session errors"
    );
    assert!(
        detected <= HOLD + Duration::from_secs(2),
        "the router took {detected:?} to withdraw the dead gateway"
    );
    // Every session ends connected, on one server, and its errors (lost
    // requests, reconnects) all fall in the window from the death until the
    // router and the backends stopped using the dead gateway, plus one
    // Socket.IO retry.
    let window_end = killed_at + detected + HOLD + Duration::from_secs(3);
    for s in &run {
        assert!(s.connected && s.servers.len() == 1, "session {s:?}");
        for e in &s.errors {
            let at = Duration::from_millis(e.at_ms);
            assert!(
                at + Duration::from_millis(500) >= killed_at && at <= window_end,
                "session {}: error at {at:?}, outside {killed_at:?}..{window_end:?}: {e:?}",
                s.id
            );
        }
        assert!(s.acks > 0, "session {s:?}");
    }
    if let Some(last) = errors(&run)
        .iter()
        .map(|(_, e)| Duration::from_millis(e.at_ms))
        .max()
    {
        println!(
            "dead gateway: the last error {last:?} after the driver started, the death at {killed_at:?}"
        );
    }
}

/// How often the plain-TCP sessions beat: a long-polling one makes a new
/// connection each beat, 20 in [`TCP_STEADY`], so each crosses both
/// gateways but with odds of 2^-19 (an L4 hash over two next hops), and
/// the TCG guest carries them.
const TCP_HEARTBEAT: Duration = Duration::from_millis(400);
const TCP_STEADY: Duration = Duration::from_secs(8);

/// The plain-TCP sessions ([`IdleSessions`]): one long-polling and one
/// upgraded from every client address.
fn tcp_sessions(clients: &[Ipv4Addr]) -> Vec<SessionSpec> {
    sessions(clients, 1, clients.len())
}

/// Prints the plain-TCP run's totals; the sessions lost.
fn tcp_report(scenario: &str, run: &[IdleSession]) -> usize {
    let lost: Vec<&IdleSession> = run
        .iter()
        .filter(|s| s.failure.is_some() || !s.final_answered)
        .collect();
    let mut per_backend: BTreeMap<&str, usize> = BTreeMap::new();
    for s in run {
        *per_backend
            .entry(s.backend.as_deref().unwrap_or("none"))
            .or_default() += 1;
    }
    println!(
        "{scenario}: {} plain-TCP sessions, per backend {per_backend:?}, {} TCP connections, {} heartbeats answered, {} retried, {} sessions lost",
        run.len(),
        run.iter().map(|s| s.ports.len()).sum::<usize>(),
        run.iter().map(|s| s.heartbeats).sum::<u64>(),
        run.iter().map(|s| s.retried.len()).sum::<usize>(),
        lost.len()
    );
    for s in lost.iter().take(5) {
        println!("  e.g. {s:?}");
    }
    lost.len()
}

/// Steady, in plain TCP (no Node: the `--vm` guest runs it): every
/// heartbeat answered by the session's first backend, and every
/// long-polling session's connections crossed both gateways. An upgraded
/// session holds one connection, so it crosses one gateway inbound (its
/// backend's replies may take either).
#[test]
fn steady_tcp_sessions_cross_both_cluster_gateways_without_errors() {
    let rig = rig_with(3, Servers::Whoami, &[GatewayOpts::default(); 2]);
    let c = &rig.cluster;
    let sessions = IdleSessions::start(&c.client, vip(), &tcp_sessions(&c.clients), TCP_HEARTBEAT);
    std::thread::sleep(TCP_STEADY);
    let run = sessions.stop();
    let lost = tcp_report("steady, 2 gateways, plain TCP", &run);
    assert_eq!(lost, 0, "steady, plain TCP: sessions lost");
    for s in &run {
        assert!(s.heartbeats >= 10, "session {s:?}");
    }
    let polling: Vec<IdleSession> = run.into_iter().filter(|s| s.polling).collect();
    crossed_both("steady, plain TCP", c, &idle_connections(&polling));
}

/// A gateway that dies silently, in plain TCP (the `--vm` guest runs it):
/// sessions retry a heartbeat that got no answer, as a Socket.IO client
/// would, and every retry must fall in the detection window (from the
/// death until the router and the backends stop using the dead gateway,
/// plus one answer timeout); no session may reach another backend.
#[test]
fn a_dead_cluster_gateway_costs_plain_tcp_sessions_only_the_detection_window() {
    let mut rig = rig_with(3, Servers::Whoami, &[GatewayOpts::default(); 2]);
    let c = &rig.cluster;
    let sessions =
        IdleSessions::start_retrying(&c.client, vip(), &tcp_sessions(&c.clients), TCP_HEARTBEAT);
    flush_connections(c);
    std::thread::sleep(Duration::from_secs(2));
    let before = gateways_since_flush(c);
    assert_eq!(
        before.keys().copied().collect::<Vec<_>>(),
        vec![1, 2],
        "connections before the death: {before:?}"
    );

    let killed_at = sessions.epoch.elapsed();
    rig.cluster.gateways[1].die();
    let detected = rig.cluster.wait_next_hops(&[1]);
    // Past the window, and a few heartbeats more on the live gateway.
    std::thread::sleep(HOLD + ANSWER_TIMEOUT);
    let run = sessions.stop();
    let lost = tcp_report("a gateway dies, plain TCP", &run);
    assert_eq!(lost, 0, "a dead gateway, plain TCP: sessions lost");
    let window_end = killed_at + detected + HOLD + ANSWER_TIMEOUT;
    let retries: Vec<Duration> = run
        .iter()
        .flat_map(|s| &s.retried)
        .map(|(at, _)| Duration::from_millis(*at))
        .collect();
    for s in &run {
        for (at, what) in &s.retried {
            let at = Duration::from_millis(*at);
            assert!(
                at >= killed_at && at <= window_end,
                "session from {}: a heartbeat retried at {at:?}, outside {killed_at:?}..{window_end:?}: {what}",
                s.address
            );
        }
    }
    let last = retries.iter().max().map(|&at| at - killed_at);
    // What the window cost the sessions that did not retry: heartbeats
    // whose SYN or request went to the dead gateway, answered once TCP
    // retransmitted it over the live one.
    let (slowest, at) = run.iter().map(|s| s.slowest).max().expect("sessions");
    let slowest_at = Duration::from_millis(at).as_secs_f64() - killed_at.as_secs_f64();
    println!(
        "dead gateway, plain TCP: the router withdrew it {:.1} s after it went silent (BGP hold time {} s); {} heartbeats retried in {} sessions{}; the slowest heartbeat took {:.1} s, started {slowest_at:.1} s from the death; 0 sessions lost",
        detected.as_secs_f64(),
        HOLD.as_secs(),
        retries.len(),
        run.iter().filter(|s| !s.retried.is_empty()).count(),
        last.map(|l| format!(", the last {:.1} s after the death", l.as_secs_f64()))
            .unwrap_or_default(),
        slowest.as_secs_f64(),
    );
    assert!(
        detected <= HOLD + Duration::from_secs(2),
        "the router took {detected:?} to withdraw the dead gateway"
    );
}

/// One client address, one backend, and no VIP on the gateway's own
/// interfaces: the daemon's `[announce]` puts it on `lo`.
fn one_gateway() -> Topology {
    Topology::new(&TopologyOpts {
        clients_v4: 1,
        extra_nets: vec![],
        clients_per_extra_net: 0,
        clients_v6: 1,
        backends: 1,
        vips: vec![],
    })
}

#[test]
fn announce_mistakes_are_one_line_and_change_nothing() {
    require_root();
    let topo = one_gateway();
    let bpffs = TempBpffs::new();
    let service = format!(
        "[[services]]\nname = \"web\"\nvip = \"{VIP}:80\"\n[services.health]\ncheck = \"none\"\n[[services.backends]]\naddress = \"{}:{PORT}\"\n",
        topo.backends()[0].v4()
    );
    let head = config_head(&bpffs, "127.0.0.1:9100");

    // An announce interface that does not exist: `check` and `run` refuse
    // it in one line, and nothing is attached.
    let bad = format!("{head}[announce]\ninterface = \"nope0\"\n{service}");
    let path = std::env::temp_dir().join(format!(
        "lbt-announce-{}.toml",
        balancer_tests::netns::random_suffix()
    ));
    std::fs::write(&path, &bad).unwrap();
    for command in ["check", "run"] {
        let out = balancer(topo.gw(), &[command, "--config", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().last().unwrap_or_default();
        assert!(!out.status.success(), "{command}: {stderr}");
        assert_eq!(
            last,
            "balancer: announce.interface: no interface named \"nope0\" in this network namespace",
            "{command}"
        );
        assert!(!attached(topo.gw(), GW_CLIENT_IF), "{command} attached");
    }
    let _ = std::fs::remove_file(&path);

    // Without [announce], there is nothing to leave: one line, no change.
    let mut daemon = Daemon::start(
        topo.gw(),
        &format!("{head}{service}"),
        &bpffs.pin_dir(),
        &[],
    );
    daemon.wait_serving(topo.gw(), &bpffs.control_socket());
    for verb in ["leave", "join"] {
        let out = cli(topo.gw(), &bpffs.control_socket(), &["cluster", verb]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with(
                "balancer: this gateway announces no VIP: its config has no [announce] section"
            ),
            "{stderr}"
        );
    }
    let snapshot = status(topo.gw(), &bpffs.control_socket());
    assert_eq!(snapshot.announce, None);
    assert!(!on_lo(&topo));
}

/// Is the VIP an address on the gateway's `lo`?
fn on_lo(topo: &Topology) -> bool {
    let lo = topo.gw().ip(["-4", "-o", "addr", "show", "dev", "lo"]);
    String::from_utf8_lossy(&lo.stdout).contains(&format!(" {VIP}/32 "))
}

/// Wait (at most 10 s) until the VIP is on `lo` (`want`) or not.
fn wait_on_lo(topo: &Topology, want: bool) -> Duration {
    let start = Instant::now();
    while on_lo(topo) != want {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the VIP on lo: {} after 10 s",
            !want
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

#[test]
fn the_vip_is_on_lo_only_while_a_backend_is_up_and_until_detach() {
    // One gateway, no BIRD: the daemon's side of the contract.
    require_root();
    let topo = one_gateway();
    let bpffs = TempBpffs::new();
    let state = std::env::temp_dir().join(format!(
        "lbt-announce-{}.state",
        balancer_tests::netns::random_suffix()
    ));
    let backend = topo.backends()[0].v4();
    let config = format!(
        "{head}[announce]\ninterface = \"lo\"\nstate_file = \"{state}\"\n\
         [[services]]\nname = \"web\"\nvip = \"{VIP}:80\"\n\
         [services.health]\ncheck = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nrise = 1\nfall = 1\n\
         [[services.backends]]\naddress = \"{backend}:{PORT}\"\n",
        head = config_head(&bpffs, "127.0.0.1:9100"),
        state = state.display(),
    );
    let server = tcp_whoami(topo.backends()[0].ns(), "b1", PORT);
    let mut daemon = Daemon::start(topo.gw(), &config, &bpffs.pin_dir(), &[]);
    daemon.wait_serving(topo.gw(), &bpffs.control_socket());
    wait_on_lo(&topo, true);
    let metric_of = || {
        let (_, text) =
            http::get(topo.gw(), "127.0.0.1:9100".parse().unwrap(), "/metrics").unwrap();
        metric(
            &text,
            "balancer_vip_announced",
            &[("vip", &VIP.to_string())],
        )
    };
    assert_eq!(metric_of(), Some(1.0));

    // Its one backend goes down: the VIP goes; back up: it returns.
    server.stop();
    let gone = wait_on_lo(&topo, false);
    assert_eq!(metric_of(), Some(0.0));
    let server = tcp_whoami(topo.backends()[0].ns(), "b1", PORT);
    let back = wait_on_lo(&topo, true);
    println!(
        "no backend up: the VIP left lo {gone:?} after the server stopped, and was back {back:?} after it started"
    );

    // Detach removes it, and the daemon stops.
    let out = cli(topo.gw(), &bpffs.control_socket(), &["detach"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!on_lo(&topo), "the VIP is still on lo after detach");
    daemon.wait_exit(Duration::from_secs(10));
    drop(server);
    let _ = std::fs::remove_file(&state);
}
