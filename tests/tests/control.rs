//! The control daemon as an operator uses it: the real `balancer run` in the
//! gateway namespace with health checks, the real CLI over its control
//! socket, `/metrics` over HTTP, and real TCP connections from many client
//! addresses to whoami servers in three backend namespaces.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    path::PathBuf,
    time::{Duration, Instant},
};

use balancer_common::{
    maps,
    types::{BACKEND_ADMIN_WEIGHT, Backend, Service, ServiceKey},
};
use balancer_tests::{
    TIMEOUT, Topology, TopologyOpts, ask,
    bpffs::TempBpffs,
    daemon::{Daemon, attached, backends_toml, cli, cli_ok, config_head, status},
    deploy,
    http::{self, metric, metric_sum},
    require_root,
    servers::Server,
    tcp_ask, tcp_connect, tcp_whoami,
    topology::{GW_BACKEND_IF, GW_CLIENT_IF, VIP_V4},
};
use balancer_user::{control::LookupAnswer, metrics::Snapshot};

const PORT: u16 = 3000;
const METRICS: &str = "127.0.0.1:9100";
/// Health: tcp every 500 ms, 300 ms timeout, rise 2, fall 3.
const INTERVAL: Duration = Duration::from_millis(500);
const CHECK_TIMEOUT: Duration = Duration::from_millis(300);
const RISE: u32 = 2;
const FALL: u32 = 3;

/// A topology, its whoami servers and a running daemon.
struct Rig {
    topo: Topology,
    bpffs: TempBpffs,
    /// Whoami servers by backend name; `None` when stopped.
    servers: BTreeMap<String, Option<Server>>,
    daemon: Option<Daemon>,
    /// The config's backends: `in_config` of the topology's backends.
    config: String,
}

impl Rig {
    /// Servers on every backend; the config lists the first `in_config`.
    fn new(opts: TopologyOpts, in_config: usize) -> Rig {
        require_root();
        let topo = Topology::new(&opts);
        let bpffs = TempBpffs::new();
        let servers = topo
            .backends()
            .iter()
            .map(|b| {
                (
                    b.name().to_owned(),
                    Some(tcp_whoami(b.ns(), b.name(), PORT)),
                )
            })
            .collect();
        let backends = backends_toml(
            topo.backends()[..in_config]
                .iter()
                .map(|b| SocketAddr::new(b.v4().into(), PORT)),
        );
        let config = format!(
            r#"{head}
[[services]]
name = "web"
vip = "{VIP_V4}:80"
affinity = "source-ip"
table_size = 1009
[services.health]
check = "tcp"
interval = "{interval}ms"
timeout = "{timeout}ms"
rise = {RISE}
fall = {FALL}
{backends}"#,
            head = config_head(&bpffs, METRICS),
            interval = INTERVAL.as_millis(),
            timeout = CHECK_TIMEOUT.as_millis(),
        );
        let mut rig = Rig {
            topo,
            bpffs,
            servers,
            daemon: None,
            config,
        };
        rig.start_daemon();
        rig
    }

    fn start_daemon(&mut self) {
        let mut daemon = Daemon::start(self.topo.gw(), &self.config, &self.bpffs.pin_dir(), &[]);
        daemon.wait_serving(self.topo.gw(), &self.socket());
        self.daemon = Some(daemon);
    }

    fn socket(&self) -> PathBuf {
        self.bpffs.control_socket()
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        cli(self.topo.gw(), &self.socket(), args)
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        cli_ok(self.topo.gw(), &self.socket(), args)
    }

    fn status(&self) -> Snapshot {
        status(self.topo.gw(), &self.socket())
    }

    fn metrics(&self) -> String {
        let (code, body) =
            http::get(self.topo.gw(), METRICS.parse().unwrap(), "/metrics").expect("GET /metrics");
        assert_eq!(code, 200);
        body
    }

    /// `ADDR:PORT` of backend `name`.
    fn addr(&self, name: &str) -> String {
        self.topo.backend_addr(name, PORT)
    }

    /// Backend name of `ADDR:PORT`.
    fn name_of(&self, addr: &str) -> String {
        let ip: SocketAddr = addr.parse().unwrap();
        self.topo
            .backends()
            .iter()
            .find(|b| IpAddr::V4(b.v4()) == ip.ip())
            .unwrap()
            .name()
            .to_owned()
    }

    fn connect(&self, client: Ipv4Addr) -> TcpStream {
        tcp_connect(self.topo.client(), client.into(), vip(), TIMEOUT)
            .unwrap_or_else(|e| panic!("{client}: connect to the VIP: {e}"))
    }

    /// The backend a new connection from `client` reaches.
    fn backend_of(&self, client: Ipv4Addr) -> String {
        tcp_ask(self.topo.client(), client.into(), vip(), TIMEOUT)
            .unwrap_or_else(|e| panic!("{client}: connection to the VIP: {e}"))
            .backend
    }

    fn lookup(&self, client: Ipv4Addr) -> LookupAnswer {
        serde_json::from_str(&self.cli_ok(&["lookup", "web", &client.to_string(), "--json"]))
            .unwrap()
    }

    /// Wait until `done(status)`, at most `limit`; how long it took.
    fn wait_status(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&Snapshot) -> bool,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let s = self.status();
            if done(&s) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "{what}: not within {limit:?}; status: {s:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_all_up(&self) {
        self.wait_status("every backend up", Duration::from_secs(10), |s| {
            s.services[0].backends.iter().all(|b| b.up)
        });
    }
}

fn vip() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(VIP_V4), 80)
}

fn backend_state<'a>(
    s: &'a Snapshot,
    addr: &str,
) -> Option<&'a balancer_user::metrics::BackendSnapshot> {
    s.services[0].backends.iter().find(|b| b.address == addr)
}

/// The backends as an operator sees them: address, up, draining, weight.
fn view(s: &Snapshot) -> Vec<(String, bool, bool, u32)> {
    s.services[0]
        .backends
        .iter()
        .map(|b| (b.address.clone(), b.up, b.draining, b.weight))
        .collect()
}

fn active_sum(metrics: &str) -> f64 {
    metric_sum(
        metrics,
        "balancer_backend_active_connections",
        &[("service", "web")],
    )
}

#[test]
fn health_checks_take_a_dead_backend_out_and_bring_it_back() {
    let mut rig = Rig::new(TopologyOpts::default(), 3);
    rig.wait_all_up();
    let client = rig.topo.clients_v4()[0];
    let victim = rig.backend_of(client);
    let victim_addr = rig.addr(&victim);

    // Kill its server: down on /metrics within fall × interval + timeout.
    let killed = Instant::now();
    rig.servers.insert(victim.clone(), None);
    let limit = INTERVAL * FALL + CHECK_TIMEOUT + Duration::from_secs(1);
    let labels = [("service", "web"), ("backend", victim_addr.as_str())];
    loop {
        if metric(&rig.metrics(), "balancer_backend_up", &labels) == Some(0.0) {
            break;
        }
        assert!(
            killed.elapsed() < limit,
            "{victim} not reported down within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let detection = killed.elapsed();
    println!("detection: {victim} down on /metrics after {detection:?} (bound {limit:?})");
    // The change is stamped, and the status says why it went down.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let changed = metric(
        &rig.metrics(),
        "balancer_backend_last_change_seconds",
        &labels,
    )
    .expect("last change of the victim");
    assert!(
        (now - detection.as_secs_f64() - 2.0..=now + 1.0).contains(&changed),
        "last change {changed}, now {now}, down after {detection:?}"
    );
    let down = rig.status();
    let down = backend_state(&down, &victim_addr).unwrap();
    assert_eq!(
        down.down_reason.as_deref(),
        Some("connection refused"),
        "{down:?}"
    );
    let (code, page) = http::get(rig.topo.gw(), METRICS.parse().unwrap(), "/").expect("GET /");
    assert_eq!(code, 200);
    assert!(
        page.contains("DOWN<div class=\"why\">connection refused</div>"),
        "{page}"
    );
    let failed = metric(
        &rig.metrics(),
        "balancer_health_checks_total",
        &[("backend", victim_addr.as_str()), ("result", "failed")],
    );
    assert!(
        failed.unwrap() >= f64::from(FALL),
        "failed checks counted: {failed:?}"
    );

    // The client that was on it gets another backend, and keeps it.
    let moved = rig.backend_of(client);
    assert_ne!(moved, victim, "{client} still reaches the dead backend");
    assert_eq!(rig.backend_of(client), moved);

    // Start it again: up after `rise` checks.
    let restarted = Instant::now();
    let b = rig
        .topo
        .backends()
        .iter()
        .find(|b| b.name() == victim)
        .unwrap();
    rig.servers
        .insert(victim.clone(), Some(tcp_whoami(b.ns(), b.name(), PORT)));
    let back = rig.wait_status(
        "back up",
        INTERVAL * (RISE + 1) + CHECK_TIMEOUT + Duration::from_secs(1),
        |s| backend_state(s, &victim_addr).is_some_and(|b| b.up),
    );
    println!(
        "recovery: {victim} up again {back:?} after its server restarted (rise {RISE} × {INTERVAL:?})"
    );
    let up = rig.status();
    let up = backend_state(&up, &victim_addr).unwrap();
    assert!(
        up.down_reason.is_none() && up.last_change as f64 >= changed,
        "{up:?}"
    );
    assert!(
        restarted.elapsed() >= INTERVAL * (RISE - 1),
        "up before {RISE} checks could pass"
    );
    // The moved client stays where its session now lives.
    assert_eq!(
        rig.backend_of(client),
        moved,
        "a recovered backend must not steal sessions back"
    );
}

#[test]
fn active_connection_counts_are_exact_and_follow_closes() {
    let rig = Rig::new(TopologyOpts::default(), 3);
    rig.wait_all_up();
    let clients = rig.topo.clients_v4();
    let mut open: Vec<(TcpStream, String)> = (0..30)
        .map(|i| {
            let stream = rig.connect(clients[i % clients.len()]);
            let backend = ask(&stream).expect("ask").backend;
            (stream, backend)
        })
        .collect();
    let per_backend = |open: &[(TcpStream, String)]| {
        let mut m = BTreeMap::new();
        for (_, b) in open {
            *m.entry(b.clone()).or_insert(0.0) += 1.0;
        }
        m
    };
    let wait_active = |n: f64, open: &[(TcpStream, String)]| {
        let start = Instant::now();
        loop {
            let m = rig.metrics();
            let exact = per_backend(open).iter().all(|(b, &count)| {
                metric(
                    &m,
                    "balancer_backend_active_connections",
                    &[("backend", rig.addr(b).as_str())],
                ) == Some(count)
            });
            if active_sum(&m) == n && exact {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "active connections not exactly {n}:\n{m}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let took = wait_active(30.0, &open);
    println!(
        "30 open: active sums to 30, per backend {:?}, after {took:?}",
        per_backend(&open)
    );
    let total = metric_sum(
        &rig.metrics(),
        "balancer_backend_connections_total",
        &[("service", "web")],
    );
    assert_eq!(total, 30.0);

    // Close 10 (FIN both ways): exactly 20, and it stays exact.
    for (stream, _) in open.drain(..10) {
        stream.shutdown(std::net::Shutdown::Both).unwrap();
    }
    let took = wait_active(20.0, &open);
    println!("10 closed: active exactly 20 after {took:?}");
    std::thread::sleep(Duration::from_secs(2));
    let m = rig.metrics();
    assert_eq!(active_sum(&m), 20.0, "drifted after two more recounts");
    assert_eq!(
        metric_sum(
            &m,
            "balancer_backend_connections_total",
            &[("service", "web")]
        ),
        30.0,
        "total keeps the closed ones"
    );
    let flows: serde_json::Value =
        serde_json::from_str(&rig.cli_ok(&["flows", "--service", "web", "--json"])).unwrap();
    let listed = flows["flows"].as_array().unwrap();
    assert_eq!(
        flows["total"], 30,
        "conntrack keeps closed flows until they are evicted or reused"
    );
    assert_eq!(listed.iter().filter(|f| f["active"] == true).count(), 20);
    assert_eq!(listed.iter().filter(|f| f["state"] == "closed").count(), 10);
    drop(open);
}

#[test]
fn backend_add_drain_and_remove_during_traffic() {
    let opts = TopologyOpts {
        clients_v4: 60,
        ..TopologyOpts::default()
    };
    let rig = Rig::new(opts, 2);
    rig.wait_all_up();
    let clients = rig.topo.clients_v4().to_vec();
    let (old, fresh) = clients.split_at(20);
    let before: BTreeMap<Ipv4Addr, String> = old.iter().map(|&c| (c, rig.backend_of(c))).collect();

    // add b3: known clients keep their backend, new clients reach b3.
    let b3 = rig.addr("b3");
    let out = rig.cli_ok(&["backend", "add", "web", &b3]);
    println!("add: {}", out.trim());
    let up = rig.wait_status("b3 up", Duration::from_secs(5), |s| {
        backend_state(s, &b3).is_some_and(|b| b.up)
    });
    println!("b3 took clients {up:?} after `backend add`");
    for (&c, b) in &before {
        assert_eq!(&rig.backend_of(c), b, "{c} moved when b3 was added");
    }
    let (new_a, new_b) = fresh.split_at(20);
    let new_clients: BTreeMap<Ipv4Addr, String> =
        new_a.iter().map(|&c| (c, rig.backend_of(c))).collect();
    let on_b3 = new_clients.values().filter(|b| *b == "b3").count();
    assert!(on_b3 > 0, "no new client reached b3: {new_clients:?}");
    println!("add: 0 of 20 known clients moved; {on_b3} of 20 new clients on b3");

    // drain b1: its clients stay, no new client reaches it.
    let b1 = rig.addr("b1");
    let on_b1: Vec<Ipv4Addr> = before
        .iter()
        .chain(&new_clients)
        .filter(|(_, b)| *b == "b1")
        .map(|(&c, _)| c)
        .collect();
    assert!(!on_b1.is_empty());
    let held = rig.connect(on_b1[0]);
    rig.cli_ok(&["backend", "drain", "web", &b1]);
    assert!(backend_state(&rig.status(), &b1).unwrap().draining);
    for &c in &on_b1 {
        assert_eq!(rig.backend_of(c), "b1", "{c} left the draining backend");
    }
    for &c in new_b {
        assert_ne!(
            rig.backend_of(c),
            "b1",
            "new client {c} reached the draining backend"
        );
    }
    assert_eq!(
        ask(&held).unwrap().backend,
        "b1",
        "an open connection stays on the draining backend"
    );
    println!(
        "drain: {} clients stayed on b1, 0 of 20 new clients reached it",
        on_b1.len()
    );

    // remove b1: its clients move.
    rig.cli_ok(&["backend", "remove", "web", &b1]);
    assert!(backend_state(&rig.status(), &b1).is_none());
    for &c in &on_b1 {
        let now = rig.backend_of(c);
        assert_ne!(now, "b1", "{c} still on a removed backend");
        assert_eq!(rig.backend_of(c), now, "{c} keeps its new backend");
    }
    println!("remove: all {} clients of b1 moved", on_b1.len());
    drop(held);
}

/// The service's Maglev table as packets read it now, from the pinned
/// maps: each slot's backend as `ADDR:PORT`, and the pinned BACKENDS
/// entries by address.
fn pinned_table(pin_dir: &std::path::Path) -> (Vec<String>, BTreeMap<String, Backend>) {
    use aya::maps::{Array, HashMap, Map, MapData};
    let open = |name: &str| MapData::from_pin(pin_dir.join(name)).unwrap();
    let services =
        HashMap::<_, ServiceKey, Service>::try_from(Map::HashMap(open(maps::SERVICES))).unwrap();
    let (_, service) = services.iter().next().unwrap().unwrap();
    let maglev = Array::<_, u32>::try_from(Map::Array(open(maps::MAGLEV))).unwrap();
    let backends = Array::<_, Backend>::try_from(Map::Array(open(maps::BACKENDS))).unwrap();
    let address = |b: &Backend| {
        SocketAddr::new(
            balancer_common::addr::from_words(b.addr, b.family),
            u16::from_be(b.port),
        )
        .to_string()
    };
    let base = service.table_offset[service.active_table as usize];
    let table = (base..base + service.table_size)
        .map(|i| address(&backends.get(&maglev.get(&i, 0).unwrap(), 0).unwrap()))
        .collect();
    let entries = (0..maps::MAX_BACKENDS)
        .filter_map(|id| backends.get(&id, 0).ok())
        .filter(|b| b.port != 0)
        .map(|b| (address(&b), b))
        .collect();
    (table, entries)
}

/// Slots per backend.
fn slot_counts(table: &[String]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for b in table {
        *counts.entry(b.clone()).or_default() += 1;
    }
    counts
}

/// The table is built afresh from the new set: b1 gets its weight's
/// share, a few slots move between the others too (reported against the
/// ideal, b1's gain), and no client with an affinity entry moves.
#[test]
fn set_weight_changes_that_backends_share_and_known_clients_stay() {
    let opts = TopologyOpts {
        clients_v4: 40,
        ..TopologyOpts::default()
    };
    let mut rig = Rig::new(opts, 3);
    rig.wait_all_up();
    let pin_dir = rig.bpffs.pin_dir();
    let b1 = rig.addr("b1");
    let clients = rig.topo.clients_v4().to_vec();
    let (old, fresh) = clients.split_at(20);
    let before: BTreeMap<Ipv4Addr, String> = old.iter().map(|&c| (c, rig.backend_of(c))).collect();
    let held: Vec<(TcpStream, String)> = old[..6]
        .iter()
        .map(|&c| {
            let s = rig.connect(c);
            let b = ask(&s).unwrap().backend;
            (s, b)
        })
        .collect();
    let (t0, _) = pinned_table(&pin_dir);
    let m = t0.len() as f64;

    // 1 -> 3 of 1+1+1: b1 should own 3/5 of the slots.
    let out = rig.cli_ok(&["backend", "set-weight", "web", &b1, "3"]);
    assert!(out.contains("1 -> 3"), "{out}");
    let (t1, entries) = pinned_table(&pin_dir);
    let moved: Vec<(&String, &String)> = t0.iter().zip(&t1).filter(|(a, b)| a != b).collect();
    let between_others = moved.iter().filter(|(_, to)| **to != b1).count();
    let count = |t: &[String]| slot_counts(t).get(&b1).copied().unwrap_or(0);
    let share = |t: &[String]| count(t) as f64 / m;
    let (s0, s1) = (share(&t0), share(&t1));
    assert!(
        (s1 - 0.6).abs() < 0.02,
        "b1 owns {s1:.4} of the slots, weight share 0.6"
    );
    assert!(moved.len() >= count(&t1) - count(&t0), "b1's gain moved");
    // A fresh build reshuffles a little between the others (the price of a
    // table that depends on the set alone); Maglev keeps it small.
    assert!(
        (between_others as f64 / m) < 0.02,
        "{between_others} of {m} slots moved between other backends"
    );
    println!(
        "set-weight 1 -> 3: b1 owns {s0:.4} -> {s1:.4} of {m} slots (weight share 0.6); the fresh \
         build moved {:.4} of the table, {:.4} between the others (ideal: b1's gain, {:.4})",
        moved.len() as f64 / m,
        between_others as f64 / m,
        s1 - s0
    );
    let entry = entries[&b1];
    assert_eq!(
        (entry.weight, entry.state & BACKEND_ADMIN_WEIGHT != 0),
        (3, true),
        "the pinned BACKENDS entry holds the weight"
    );
    assert_eq!(backend_state(&rig.status(), &b1).unwrap().weight, 3);

    // Real connections: open ones stay, known clients keep their backend
    // (affinity), and new clients go where the table now says.
    for (s, b) in &held {
        assert_eq!(&ask(s).unwrap().backend, b, "an open connection moved");
    }
    for (&c, b) in &before {
        assert_eq!(&rig.backend_of(c), b, "{c} moved on a weight change");
    }
    let mut on_b1 = 0;
    for &c in fresh {
        let want = rig.lookup(c);
        assert_eq!(want.via, "maglev");
        let got = rig.backend_of(c);
        assert_eq!(rig.addr(&got), want.backend.unwrap(), "new client {c}");
        on_b1 += usize::from(got == "b1");
    }
    println!("{on_b1} of {} new clients reached b1", fresh.len());

    // Bad input: one line, nothing changes.
    for (args, says) in [
        (vec!["web", b1.as_str(), "0"], "out of range"),
        (vec!["web", b1.as_str(), "65536"], "out of range"),
        (vec!["nope", b1.as_str(), "2"], "unknown service"),
        (vec!["web", "198.18.1.99:3000", "2"], "has no backend"),
        (vec!["web", "b1", "2"], "malformed backend address"),
    ] {
        let mut all = vec!["backend", "set-weight"];
        all.extend(&args);
        let out = rig.cli(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    assert_eq!(pinned_table(&pin_dir).0, t1, "a refused change moved slots");
    assert_eq!(backend_state(&rig.status(), &b1).unwrap().weight, 3);

    // A restart keeps the operator's weight (the config says 1) and the
    // table.
    assert!(rig.daemon.take().unwrap().stop().success());
    rig.start_daemon();
    assert_eq!(backend_state(&rig.status(), &b1).unwrap().weight, 3);
    assert_eq!(pinned_table(&pin_dir).0, t1, "the restart moved slots");

    // And back to 1: the same set as at the start, so the same table.
    rig.cli_ok(&["backend", "set-weight", "web", &b1, "1"]);
    let (t2, _) = pinned_table(&pin_dir);
    assert_eq!(t2, t0, "weight 1 again: the original table");
    for (&c, b) in &before {
        assert_eq!(&rig.backend_of(c), b, "{c} moved on a weight change");
    }
    drop(held);
}

#[test]
fn lookup_agrees_with_the_kernel_for_100_clients() {
    let opts = TopologyOpts {
        clients_v4: 60,
        extra_nets: vec![2, 3],
        clients_per_extra_net: 20,
        ..TopologyOpts::default()
    };
    let rig = Rig::new(opts, 3);
    rig.wait_all_up();
    let clients: Vec<Ipv4Addr> = rig
        .topo
        .clients_v4()
        .iter()
        .chain(rig.topo.clients_extra_v4())
        .copied()
        .take(100)
        .collect();
    assert_eq!(clients.len(), 100);
    let mut used = BTreeSet::new();
    for &c in &clients {
        let predicted = rig.lookup(c);
        assert_eq!(predicted.via, "maglev", "{c}: {predicted:?}");
        let predicted = rig.name_of(predicted.backend.as_deref().expect("a backend"));
        let actual = rig.backend_of(c);
        assert_eq!(
            predicted, actual,
            "{c}: lookup said {predicted}, the kernel chose {actual}"
        );
        used.insert(actual);
        // Now the client has an affinity entry, and lookup reports it.
        let again = rig.lookup(c);
        assert_eq!(
            (
                again.via.as_str(),
                rig.name_of(again.backend.as_deref().unwrap())
            ),
            ("affinity", predicted)
        );
    }
    assert_eq!(used.len(), 3, "100 clients over 3 backends used {used:?}");
    println!("lookup: 100 of 100 predictions matched the kernel");
}

#[test]
fn prometheus_scrapes_the_metrics() {
    let rig = Rig::new(
        TopologyOpts {
            clients_v4: 10,
            ..TopologyOpts::default()
        },
        3,
    );
    rig.wait_all_up();
    for &c in &rig.topo.clients_v4()[..10] {
        rig.backend_of(c);
    }
    // promtool accepts the exposition as it is served.
    let text = rig.metrics();
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package)");
    std::io::Write::write_all(promtool.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // A real Prometheus on loopback in the gateway namespace scrapes it.
    let dir = std::env::temp_dir().join(format!(
        "lbt-prom-{}",
        balancer_tests::netns::random_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: balancer\n    static_configs:\n      - targets: ['{METRICS}']\n",
            deploy::alert_rules().display()
        ),
    )
    .unwrap();
    let prom = rig.topo.gw().spawn(
        "prometheus",
        [
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            "--web.listen-address=127.0.0.1:9091".to_owned(),
            "--log.level=warn".to_owned(),
        ],
    );
    let prom = KillOnDrop(prom, dir);
    let api: SocketAddr = "127.0.0.1:9091".parse().unwrap();
    let start = Instant::now();
    let result = loop {
        if let Ok((200, body)) = http::get(
            rig.topo.gw(),
            api,
            "/api/v1/query?query=balancer_backend_connections_total",
        ) {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
            if result.len() == 3 {
                break result;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "Prometheus has no per-backend series after 60 s"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let total: f64 = result
        .iter()
        .map(|r| r["value"][1].as_str().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(
        total, 10.0,
        "Prometheus' per-backend connections: {result:?}"
    );
    let backends: BTreeSet<String> = result
        .iter()
        .map(|r| r["metric"]["backend"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        backends,
        ["b1", "b2", "b3"].iter().map(|b| rig.addr(b)).collect()
    );
    println!(
        "prometheus: scraped 3 per-backend series after {:?}",
        start.elapsed()
    );

    // It loaded deploy/prometheus/alerts.yml and evaluates every rule
    // against the live series without error; with every backend up, none
    // fires. The rules use only exported metrics (the cluster's once it
    // exists).
    let rules = loop {
        let (code, body) =
            http::get(rig.topo.gw(), api, "/api/v1/rules").expect("GET /api/v1/rules");
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let rules: Vec<serde_json::Value> = v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        if !rules.is_empty()
            && rules
                .iter()
                .all(|r| r["lastEvaluation"] != "0001-01-01T00:00:00Z")
        {
            break rules;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "Prometheus has not evaluated the rules: {body}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let names: Vec<&str> = rules.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, deploy::alert_names(), "the rules Prometheus loaded");
    for r in &rules {
        assert_eq!(r["health"], "ok", "rule {} evaluates: {r}", r["name"]);
        assert_eq!(r["state"], "inactive", "rule {} fires: {r}", r["name"]);
        for name in deploy::metric_names(r["query"].as_str().unwrap()) {
            assert!(
                text.contains(&format!("# TYPE {name} ")) || name.starts_with("balancer_cluster_"),
                "rule {} uses {name}, which is not exported",
                r["name"]
            );
        }
    }
    // Every dashboard query evaluates, and those over gauges (no rate over
    // a range that may hold one sample yet) return series; but for the
    // cluster's, which a daemon without `[cluster] peers` does not export.
    for q in deploy::dashboard_queries() {
        let path = format!("/api/v1/query?query={}", percent_encode(&q));
        let (code, body) = http::get(rig.topo.gw(), api, &path).expect("GET /api/v1/query");
        assert_eq!(code, 200, "dashboard query {q}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{q}: {body}");
        if !q.contains("rate(") && !q.contains("balancer_cluster_") {
            assert!(
                !v["data"]["result"].as_array().unwrap().is_empty(),
                "dashboard query {q} returns nothing from a live daemon"
            );
        }
    }
    println!(
        "prometheus: {} alert rules loaded, evaluated (health ok) and quiet; the dashboard's queries evaluate",
        rules.len()
    );
    drop(prom);
}

/// `q` for a URL's query string: everything but unreserved characters
/// percent-encoded.
fn percent_encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

struct KillOnDrop(std::process::Child, PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

#[test]
fn kill_9_loses_no_flow_and_a_restart_adopts_everything() {
    let mut rig = Rig::new(TopologyOpts::default(), 3);
    rig.wait_all_up();
    let clients = rig.topo.clients_v4().to_vec();
    let open: Vec<(TcpStream, String)> = clients[..5]
        .iter()
        .map(|&c| {
            let s = rig.connect(c);
            let b = ask(&s).unwrap().backend;
            (s, b)
        })
        .collect();
    let chosen: BTreeMap<Ipv4Addr, String> = clients[5..25]
        .iter()
        .map(|&c| (c, rig.backend_of(c)))
        .collect();
    let before = rig.status();

    rig.daemon.take().unwrap().kill9();
    // Mid-conversation connections carry on, on their backends.
    for (i, (stream, backend)) in open.iter().enumerate() {
        assert_eq!(
            &ask(stream).unwrap().backend,
            backend,
            "open connection {i} after kill -9"
        );
    }
    // New connections are balanced: known clients keep their backends, new
    // ones spread.
    for (&c, b) in &chosen {
        assert_eq!(&rig.backend_of(c), b, "{c} with the daemon dead");
    }
    let spread: BTreeSet<String> = clients[25..40].iter().map(|&c| rig.backend_of(c)).collect();
    assert!(
        spread.len() >= 2,
        "new clients with the daemon dead all went to {spread:?}"
    );

    // Restart: the same state, the same choices, the counts still right.
    rig.start_daemon();
    let after = rig.status();
    assert_eq!(view(&after), view(&before));
    for (i, (stream, backend)) in open.iter().enumerate() {
        assert_eq!(
            &ask(stream).unwrap().backend,
            backend,
            "open connection {i} after the restart"
        );
    }
    for (&c, b) in &chosen {
        assert_eq!(&rig.backend_of(c), b, "{c} after the restart");
        assert_eq!(
            rig.lookup(c).via,
            "affinity",
            "{c}: its affinity entry survived"
        );
    }
    let opened = 5 + chosen.len() * 3 + 15;
    let start = Instant::now();
    loop {
        let m = rig.metrics();
        if active_sum(&m) == 5.0 {
            assert_eq!(
                metric_sum(
                    &m,
                    "balancer_backend_connections_total",
                    &[("service", "web")]
                ),
                opened as f64
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "active not 5 after the restart:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "kill -9: 5 open connections kept talking, 20 clients kept their backends, counts exact after restart"
    );
}

#[test]
fn bad_control_requests_get_one_line_and_change_nothing() {
    let rig = Rig::new(
        TopologyOpts {
            clients_v4: 10,
            ..TopologyOpts::default()
        },
        3,
    );
    rig.wait_all_up();
    let socket = rig.socket();
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the control socket is owner-only");

    let lookups = |rig: &Rig| -> Vec<Option<String>> {
        rig.topo
            .clients_v4()
            .iter()
            .map(|&c| rig.lookup(c).backend)
            .collect()
    };
    let before = (view(&rig.status()), lookups(&rig));
    let b1 = rig.addr("b1");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["backend", "add", "nosuch", "198.18.1.99:3000"],
            "unknown service",
        ),
        (
            vec!["backend", "add", "web", "198.18.1:3000"],
            "malformed backend address",
        ),
        (
            vec!["backend", "add", "web", "198.18.1.99"],
            "malformed backend address",
        ),
        (vec!["backend", "add", "web", &b1], "198.18.1.11:3000"),
        (
            vec!["backend", "add", "web", "198.18.1.99:3000", "--weight", "0"],
            "weight",
        ),
        (
            vec!["backend", "remove", "web", "198.18.1.99:3000"],
            "has no backend",
        ),
        (vec!["backend", "drain", "chat", &b1], "unknown service"),
        (
            vec!["lookup", "web", "not-an-ip"],
            "malformed client address",
        ),
        (
            vec!["lookup", "web", "2001:db8::1"],
            "different IP families",
        ),
        (vec!["flows", "--service", "nosuch"], "unknown service"),
    ];
    for (args, says) in &cases {
        let out = rig.cli(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line, got {stderr:?}");
        assert!(
            lines[0].contains(says),
            "{args:?}: {:?} should say {says:?}",
            lines[0]
        );
        println!("{args:?} -> {}", lines[0]);
    }
    // Garbage straight on the socket.
    for garbage in [
        "hello\n",
        "{\"request\":\"reboot\"}\n",
        "\u{1}\u{2}\n",
        "{\"request\":\"backend_add\"}\n",
    ] {
        let answer = rig.topo.gw().run(|| {
            use std::io::{Read, Write};
            let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
            s.write_all(garbage.as_bytes()).unwrap();
            let mut answer = String::new();
            s.read_to_string(&mut answer).unwrap();
            answer
        });
        let v: serde_json::Value = serde_json::from_str(answer.trim())
            .unwrap_or_else(|e| panic!("{garbage:?}: {answer:?}: {e}"));
        let error = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{garbage:?}: not an error: {answer}"));
        assert!(
            error.starts_with("malformed request") && !error.contains('\n'),
            "{garbage:?}: {error}"
        );
    }
    assert_eq!(
        (view(&rig.status()), lookups(&rig)),
        before,
        "a bad request changed the state"
    );
}

#[test]
fn the_cli_shows_status_and_flows_and_detach_removes_everything() {
    let mut rig = Rig::new(
        TopologyOpts {
            clients_v4: 10,
            ..TopologyOpts::default()
        },
        3,
    );
    rig.wait_all_up();
    let client = rig.topo.clients_v4()[3];
    let held = rig.connect(client);
    let backend = ask(&held).unwrap().backend;

    let table = rig.cli_ok(&["status"]);
    assert!(
        table.contains("web") && table.contains(&format!("{VIP_V4}:80")),
        "{table}"
    );
    for b in ["b1", "b2", "b3"] {
        let row = table
            .lines()
            .find(|l| l.contains(&rig.addr(b)))
            .unwrap_or_else(|| panic!("no row for {b}:\n{table}"));
        assert!(row.contains("up"), "{row}");
    }
    let flows = rig.cli_ok(&["flows"]);
    let row = flows
        .lines()
        .find(|l| l.contains(&client.to_string()))
        .unwrap_or_else(|| panic!("{client} not in\n{flows}"));
    assert!(
        row.contains(&rig.addr(&backend)) && row.contains("open"),
        "{row}"
    );
    let lookup = rig.cli_ok(&["lookup", "web", &client.to_string()]);
    assert!(
        lookup.contains(&rig.addr(&backend)) && lookup.contains("affinity"),
        "{lookup}"
    );

    let out = rig.cli_ok(&["detach"]);
    assert!(out.contains("detached"), "{out}");
    let status = rig
        .daemon
        .take()
        .unwrap()
        .wait_exit(Duration::from_secs(10));
    assert!(
        status.success(),
        "the daemon exits cleanly after detach: {status}"
    );
    assert!(
        !attached(rig.topo.gw(), GW_CLIENT_IF) && !attached(rig.topo.gw(), GW_BACKEND_IF),
        "still attached"
    );
    assert!(!rig.bpffs.pin_dir().exists(), "pins left behind");
    assert!(!rig.socket().exists(), "the control socket is removed");
    drop(held);
}

#[test]
fn detach_leaves_foreign_pins_and_run_refuses_a_pin_dir_holding_one() {
    let mut rig = Rig::new(TopologyOpts::default(), 2);
    let pin_dir = rig.bpffs.pin_dir();
    let ours: Vec<String> = std::fs::read_dir(&pin_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(ours.iter().any(|n| n == maps::MAGLEV), "{ours:?}");
    // Another tool pins a map into the same directory while the daemon runs.
    let foreign = pin_dir.join("other_tool_map");
    balancer_tests::bpffs::pin_foreign_map(&foreign);

    let out = rig.cli_ok(&["detach"]);
    assert!(
        out.contains(&format!("removed {} pins", ours.len())) && out.contains("left 1 entries"),
        "{out}"
    );
    assert!(
        rig.daemon
            .take()
            .unwrap()
            .wait_exit(Duration::from_secs(10))
            .success()
    );
    let left: Vec<_> = std::fs::read_dir(&pin_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        left,
        std::slice::from_ref(&foreign),
        "detach removed exactly the balancer's pins"
    );
    assert!(
        !attached(rig.topo.gw(), GW_CLIENT_IF) && !attached(rig.topo.gw(), GW_BACKEND_IF),
        "still attached"
    );
    aya::maps::MapData::from_pin(&foreign).expect("the foreign map is still pinned and usable");

    // A pin dir holding a foreign pin is refused at start, in one line
    // naming it, and nothing is pinned or attached.
    let path = std::env::temp_dir().join(format!(
        "lbt-foreign-{}.toml",
        balancer_tests::netns::random_suffix()
    ));
    std::fs::write(&path, &rig.config).unwrap();
    let out = balancer_tests::daemon::balancer(
        rig.topo.gw(),
        &["run", "--config", path.to_str().unwrap()],
    );
    std::fs::remove_file(&path).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started beside a foreign pin: {stderr}"
    );
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains(&foreign.display().to_string()) && last.contains("did not pin"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_dir(&pin_dir).unwrap().count(), 1);
    assert!(!attached(rig.topo.gw(), GW_CLIENT_IF));
    println!("detach left {}; run refused: {last}", foreign.display());
}

/// A test group with one member and one user outside it, made with
/// groupadd/useradd and removed on drop, whatever the test did.
struct TestUsers {
    group: String,
    member: String,
    outsider: String,
}

impl TestUsers {
    fn new() -> TestUsers {
        let suffix = balancer_tests::netns::random_suffix();
        let users = TestUsers {
            group: format!("lbtg{suffix}"),
            member: format!("lbtm{suffix}"),
            outsider: format!("lbto{suffix}"),
        };
        let run = |args: &[&str]| {
            let out = std::process::Command::new(args[0])
                .args(&args[1..])
                .output()
                .unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&["groupadd", &users.group]);
        let nologin = "/usr/sbin/nologin";
        run(&[
            "useradd",
            "-M",
            "-U",
            "-s",
            nologin,
            "-G",
            &users.group,
            &users.member,
        ]);
        run(&["useradd", "-M", "-U", "-s", nologin, &users.outsider]);
        users
    }

    /// `balancer ARGS --socket SOCKET` as `user` (with its groups).
    fn balancer_as(
        &self,
        user: &str,
        socket: &std::path::Path,
        args: &[&str],
    ) -> std::process::Output {
        let id = |flag: &str| {
            let out = std::process::Command::new("id")
                .args([flag, user])
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        };
        std::process::Command::new("setpriv")
            .arg(format!("--reuid={}", id("-u")))
            .arg(format!("--regid={}", id("-g")))
            .arg("--init-groups")
            .arg(balancer_tests::daemon::balancer_bin())
            .args(args)
            .arg("--socket")
            .arg(socket)
            .output()
            .expect("run setpriv")
    }
}

impl Drop for TestUsers {
    fn drop(&mut self) {
        for user in [&self.member, &self.outsider] {
            let _ = std::process::Command::new("userdel").arg(user).status();
        }
        let _ = std::process::Command::new("groupdel")
            .arg(&self.group)
            .status();
    }
}

#[test]
fn the_control_group_reads_and_only_root_changes() {
    use std::os::unix::fs::MetadataExt;
    let users = TestUsers::new();
    let mut rig = Rig::new(TopologyOpts::default(), 2);
    // Restart with `[control] group`.
    assert!(rig.daemon.take().unwrap().stop().success());
    let socket_line = format!("socket = \"{}\"\n", rig.socket().display());
    rig.config = rig.config.replace(
        &socket_line,
        &format!("{socket_line}group = \"{}\"\n", users.group),
    );
    rig.start_daemon();
    rig.wait_all_up();
    let meta = std::fs::metadata(rig.socket()).unwrap();
    let gid = String::from_utf8(
        std::process::Command::new("getent")
            .args(["group", &users.group])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .split(':')
    .nth(2)
    .unwrap()
    .trim()
    .parse::<u32>()
    .unwrap();
    assert_eq!(
        (meta.mode() & 0o777, meta.uid(), meta.gid()),
        (0o660, 0, gid),
        "root:group, 0660"
    );

    let socket = rig.socket();
    let b1 = rig.addr("b1");
    let client = rig.topo.clients_v4()[0].to_string();
    for args in [
        vec!["status"],
        vec!["lookup", "web", client.as_str()],
        vec!["flows"],
    ] {
        let out = users.balancer_as(&users.member, &socket, &args);
        assert!(
            out.status.success(),
            "member: {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let status = users.balancer_as(&users.member, &socket, &["status"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains(&b1));

    for args in [
        vec!["backend", "drain", "web", b1.as_str()],
        vec!["backend", "set-weight", "web", b1.as_str(), "5"],
        vec!["detach"],
    ] {
        let out = users.balancer_as(&users.member, &socket, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "member may not {args:?}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("permission denied") && stderr.contains("changes need root"),
            "{stderr}"
        );
    }
    let b = backend_state(&rig.status(), &b1).unwrap().clone();
    assert!(
        !b.draining && b.weight == 1,
        "a refused change changed {b:?}"
    );
    assert!(
        rig.daemon.as_mut().unwrap().running(),
        "a refused detach stopped the daemon"
    );

    let out = users.balancer_as(&users.outsider, &socket, &["status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a user outside the group connected");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");

    // Root still changes things.
    rig.cli_ok(&["backend", "drain", "web", &b1]);
    assert!(backend_state(&rig.status(), &b1).unwrap().draining);
    println!(
        "group {}: member ran status/lookup/flows, was refused drain/set-weight/detach; outsider: {}",
        users.group,
        stderr.trim()
    );
}

/// A map entry's key plus value, rounded to 8 bytes (what kernels before
/// 6.4 count per entry in `memlock`).
fn key_value<K, V>() -> u64 {
    (size_of::<K>() + size_of::<V>()).next_multiple_of(8) as u64
}

/// The running kernel's major and minor version.
fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// The kernel's own account of a map's memory: `memlock` in its fdinfo.
fn kernel_memlock(map: &aya::maps::MapData) -> u64 {
    use std::os::fd::{AsFd, AsRawFd};

    let fd = map.fd().as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no memlock in the map's fdinfo:\n{info}"))
}

#[test]
fn tables_take_the_config_s_sizes_and_a_pinned_table_keeps_its_own() {
    use balancer_common::{
        maps::{AFFINITY, CONNTRACK},
        types::{Affinity, AffinityKey, Flow, FlowKey},
    };
    use balancer_user::config::{Tables, tables::TablesMemory};

    require_root();
    let topo = Topology::new(&TopologyOpts::default());
    let bpffs = TempBpffs::new();
    let socket = bpffs.control_socket();
    let config = |flows: u32| {
        format!(
            "{head}[tables]\nflows = {flows}\naffinity = 32768\n\
             [[services]]\nname = \"web\"\nvip = \"{VIP_V4}:80\"\n\
             [services.health]\ncheck = \"none\"\n{backends}",
            head = config_head(&bpffs, METRICS),
            backends = backends_toml([SocketAddr::new(topo.backends()[0].v4().into(), PORT)]),
        )
    };
    let mut daemon = Daemon::start(topo.gw(), &config(65536), &bpffs.pin_dir(), &[]);
    daemon.wait_serving(topo.gw(), &socket);

    let want = TablesMemory::from(Tables {
        flows: 65536,
        affinity: 32768,
    });
    assert_eq!(status(topo.gw(), &socket).tables, want);
    let json: serde_json::Value =
        serde_json::from_str(&cli_ok(topo.gw(), &socket, &["status", "--json"])).unwrap();
    assert_eq!(json["tables"]["flows"]["entries"], 65536);
    assert_eq!(json["tables"]["affinity"]["entries"], 32768);
    assert_eq!(json["tables"]["flows"]["bytes"], want.flows.bytes);
    let text = cli_ok(topo.gw(), &socket, &["status"]);
    assert!(
        text.contains("tables: flows 65536 entries (10.0 MiB), affinity 32768 entries"),
        "{text}"
    );

    // The kernel made the maps that size. Kernels with a per-map memory
    // account (6.4 and later: `map_mem_usage`) count the estimate plus a
    // fixed part of a few KiB; older ones (the 6.1 VM) report only
    // entries x (key + value, rounded to 8), page-rounded, in `memlock`.
    let (major, minor) = kernel_version();
    for (name, table, kv) in [
        (CONNTRACK, want.flows, key_value::<FlowKey, Flow>()),
        (
            AFFINITY,
            want.affinity,
            key_value::<AffinityKey, Affinity>(),
        ),
    ] {
        let map = aya::maps::MapData::from_pin(bpffs.pin_dir().join(name)).unwrap();
        assert_eq!(map.info().unwrap().max_entries(), table.entries, "{name}");
        let kernel = kernel_memlock(&map);
        if (major, minor) >= (6, 4) {
            assert!(
                kernel >= table.bytes && kernel - table.bytes < 64 * 1024,
                "{name}: the kernel counts {kernel} bytes, the estimate is {}",
                table.bytes
            );
        } else {
            let footprint = (u64::from(table.entries) * kv).next_multiple_of(4096);
            assert_eq!(kernel, footprint, "{name}: memlock on {major}.{minor}");
        }
    }

    // Restarted with another size, the daemon refuses in one line and the
    // pinned table, and what it holds, stay as they are.
    assert!(daemon.stop().success());
    let path = std::env::temp_dir().join(format!(
        "lbt-tables-{}.toml",
        balancer_tests::netns::random_suffix()
    ));
    std::fs::write(&path, config(131072)).unwrap();
    let out =
        balancer_tests::daemon::balancer(topo.gw(), &["run", "--config", path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started with a resized table: {stderr}"
    );
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("the pinned CONNTRACK holds 65536 entries but [tables] flows = 131072")
            && last.contains("balancer detach"),
        "{stderr}"
    );
    let map = aya::maps::MapData::from_pin(bpffs.pin_dir().join(CONNTRACK)).unwrap();
    assert_eq!(map.info().unwrap().max_entries(), 65536);
    println!("tables: {want}; a restart asking for 131072 flows was refused: {last}");
}
