//! Affinity replicated between gateways (`[cluster]`): two gateways, each
//! a whole topology of its own (clients, gateway, backends with the same
//! addresses), their daemons linked over a veth between the two gateway
//! namespaces (198.18.2.11 and .12, DESIGN.md's rig convention). Real
//! daemons, real connections, the kernels' own AFFINITY maps read back.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    path::PathBuf,
    time::{Duration, Instant},
};

use aya::maps::{Array, HashMap, Map, MapData};
use balancer_common::{
    addr::{from_words, to_words},
    maps::{AFFINITY, BACKEND_NAMES, BACKENDS},
    types::{Affinity, AffinityKey, Backend, BackendName},
};
use balancer_tests::{
    TIMEOUT, Topology, TopologyOpts,
    bpffs::TempBpffs,
    daemon::{Daemon, backends_toml, cli_ok, config_head, named_backends_toml},
    http,
    servers::Server,
    socketio::SocketIoServer,
    tcp_ask,
    topology::VIP_V4,
};
use balancer_user::{
    cluster::{
        stats::ClusterStatus,
        wire::{Message, Sealer, Side},
    },
    control::LookupAnswer,
};

const PORT: u16 = 3000;
/// The Socket.IO servers' port, for the sid service.
const SIO_PORT: u16 = 3001;
const CLUSTER_PORT: u16 = 7946;
/// The link between the two gateway namespaces.
const LINK_IF: &str = "cl";
const METRICS: &str = "127.0.0.1:9090";
const KEY: &str = "a shared key for the test cluster, 48 bytes long.";

fn vip() -> SocketAddr {
    SocketAddr::new(VIP_V4.into(), 80)
}

/// The `affinity = "sid"` service's VIP (the daemon terminates it).
fn sid_vip() -> SocketAddr {
    SocketAddr::new(VIP_V4.into(), 83)
}

fn cluster_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 2, 10 + n)
}

fn cluster_addr(n: u8) -> SocketAddr {
    SocketAddr::new(cluster_ip(n).into(), CLUSTER_PORT)
}

/// One gateway: its topology, pins, backends' servers and daemon.
struct Gateway {
    n: u8,
    /// The service's `affinity_timeout`.
    timeout: &'static str,
    topo: Topology,
    bpffs: TempBpffs,
    key_file: PathBuf,
    /// With `[announce]` on `lo`: where a leave is remembered.
    announce_state: Option<PathBuf>,
    /// How many of the topology's backends the config lists (the rest are
    /// for `backend add`).
    listed: usize,
    /// The config has a second service, "chat" with `affinity = "sid"`,
    /// on the same backends (named `b1`, ...).
    sid: bool,
    _servers: Vec<Server>,
    daemon: Option<Daemon>,
}

impl Gateway {
    fn new(n: u8, key_file: PathBuf) -> Self {
        let topo = Topology::new(&TopologyOpts {
            clients_v4: 20,
            // 198.18.2.0/24 is the gateways' link.
            extra_nets: vec![],
            clients_v6: 1,
            backends: 4,
            vips: vec![VIP_V4.into()],
            ..TopologyOpts::default()
        });
        let servers = balancer_tests::servers::tcp_whoami_on(topo.backends(), PORT);
        Gateway {
            n,
            timeout: "10m",
            topo,
            bpffs: TempBpffs::new(),
            key_file,
            announce_state: None,
            listed: 3,
            sid: false,
            _servers: servers,
            daemon: None,
        }
    }

    fn config(&self) -> String {
        let announce = self.announce_state.as_ref().map_or(String::new(), |state| {
            format!(
                "[announce]\ninterface = \"lo\"\nstate_file = \"{}\"\n",
                state.display()
            )
        });
        format!(
            "{head}{announce}[cluster]\npeers = [\"{p1}\", \"{p2}\"]\nlisten = \"{me}\"\nsecret_file = \"{key}\"\n\
             [[services]]\nname = \"web\"\nvip = \"{vip}\"\naffinity_timeout = \"{timeout}\"\n\
             [services.health]\ncheck = \"none\"\n{backends}",
            head = config_head(&self.bpffs, METRICS),
            p1 = cluster_addr(1),
            p2 = cluster_addr(2),
            me = cluster_addr(self.n),
            key = self.key_file.display(),
            vip = vip(),
            timeout = self.timeout,
            backends = backends_toml(
                self.topo
                    .backends()
                    .iter()
                    .take(self.listed)
                    .map(|b| SocketAddr::new(b.v4().into(), PORT))
            ),
        ) + &if self.sid {
            format!(
                "[[services]]\nname = \"chat\"\nvip = \"{}\"\naffinity = \"sid\"\n\
                 [services.health]\ncheck = \"none\"\n{}",
                sid_vip(),
                named_backends_toml(&self.topo.backends()[..self.listed], SIO_PORT)
            )
        } else {
            String::new()
        }
    }

    fn start(&mut self) {
        let pin_dir = self.bpffs.pin_dir();
        let mut daemon = Daemon::start(self.topo.gw(), &self.config(), &pin_dir, &[]);
        daemon.wait_serving(self.topo.gw(), &self.bpffs.control_socket());
        self.daemon = Some(daemon);
    }

    fn stop(&mut self) {
        assert!(self.daemon.take().expect("running").stop().success());
    }

    fn cli(&self, args: &[&str]) -> String {
        cli_ok(self.topo.gw(), &self.bpffs.control_socket(), args)
    }

    fn cluster(&self) -> ClusterStatus {
        serde_json::from_str(&self.cli(&["cluster", "status", "--json"]))
            .expect("cluster status --json")
    }

    /// The service's backends (address, weight, draining) and its table
    /// fingerprint, from `status --json`.
    fn backend_set(&self) -> (Vec<(String, u32, bool)>, String) {
        let status = balancer_tests::daemon::status(self.topo.gw(), &self.bpffs.control_socket());
        let s = &status.services[0];
        (set_of(s), s.table_fingerprint.clone())
    }

    /// The topology's `n`th backend (0-based), by address.
    fn backend(&self, n: usize) -> SocketAddr {
        SocketAddr::new(self.topo.backends()[n].v4().into(), PORT)
    }

    fn metrics(&self) -> String {
        let (code, body) =
            http::get(self.topo.gw(), METRICS.parse().unwrap(), "/metrics").expect("GET /metrics");
        assert_eq!(code, 200);
        body
    }

    /// The backend `client` gets now (`balancer lookup`).
    fn lookup(&self, client: Ipv4Addr) -> SocketAddr {
        let answer: LookupAnswer =
            serde_json::from_str(&self.cli(&["lookup", "web", &client.to_string(), "--json"]))
                .expect("lookup --json");
        answer.backend.expect("a backend").parse().unwrap()
    }

    /// A connection from `client` through this gateway: the backend that
    /// answered, by address.
    fn connect(&self, client: Ipv4Addr) -> SocketAddr {
        let answer = tcp_ask(self.topo.client(), client.into(), vip(), TIMEOUT)
            .unwrap_or_else(|e| panic!("gateway {}: {client} -> {}: {e}", self.n, vip()));
        let b = self
            .topo
            .backends()
            .iter()
            .find(|b| b.name() == answer.backend)
            .expect("a known backend");
        SocketAddr::new(b.v4().into(), PORT)
    }

    /// A new engine.io session, made directly with the Socket.IO server on
    /// the topology's `n`th backend (0-based): its id, which that server
    /// prefixes with its name.
    fn session_on(&self, n: usize) -> String {
        let server = SocketAddr::new(self.topo.backends()[n].v4().into(), SIO_PORT);
        let (code, body) = http::get(
            self.topo.gw(),
            server,
            "/socket.io/?EIO=4&transport=polling",
        )
        .expect("an engine.io handshake");
        assert_eq!(code, 200, "{body}");
        let start = body.find("\"sid\":\"").expect("a sid") + 7;
        let len = body[start..].find('"').expect("a quoted sid");
        body[start..start + len].to_owned()
    }

    /// An engine.io packet (a pong) posted to session `sid` from `client`
    /// through this gateway's sid service: the answer's status. Only the
    /// server holding the session answers 200; any other, 400.
    fn post_by_sid(&self, client: Ipv4Addr, sid: &str) -> u16 {
        let mut stream = balancer_tests::servers::tcp_connect(
            self.topo.client(),
            client.into(),
            sid_vip(),
            TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("gateway {}: {client} -> {}: {e}", self.n, sid_vip()));
        write!(
            stream,
            "POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: {}\r\n\
             Content-Type: text/plain;charset=UTF-8\r\nContent-Length: 1\r\nConnection: close\r\n\r\n3",
            sid_vip()
        )
        .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(&stream), &mut line)
            .unwrap_or_else(|e| panic!("gateway {}: sid {sid} from {client}: {e}", self.n));
        line.split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("gateway {}: not an HTTP answer: {line:?}", self.n))
    }

    /// The "chat" service's backends (address, weight, draining).
    fn chat_set(&self) -> Vec<(String, u32, bool)> {
        let status = balancer_tests::daemon::status(self.topo.gw(), &self.bpffs.control_socket());
        let s = status
            .services
            .iter()
            .find(|s| s.name == "chat")
            .expect("the chat service");
        set_of(s)
    }

    /// Every name pinned in BACKEND_NAMES.
    fn pinned_names(&self) -> Vec<String> {
        let map = MapData::from_pin(self.bpffs.pin_dir().join(BACKEND_NAMES)).expect("pinned");
        let names: Array<MapData, BackendName> =
            Array::try_from(Map::Array(map)).expect("an array");
        names
            .iter()
            .map(|n| n.expect("readable"))
            .filter(|n| !n.as_bytes().is_empty())
            .map(|n| String::from_utf8_lossy(n.as_bytes()).into_owned())
            .collect()
    }

    fn affinity_map(&self) -> HashMap<MapData, AffinityKey, Affinity> {
        let map = MapData::from_pin(self.bpffs.pin_dir().join(AFFINITY)).expect("AFFINITY");
        HashMap::try_from(Map::LruHashMap(map)).expect("an LRU hash map")
    }

    /// Backend id → address, from this gateway's pinned BACKENDS.
    fn backend_address(&self, id: u32) -> SocketAddr {
        let map = MapData::from_pin(self.bpffs.pin_dir().join(BACKENDS)).expect("BACKENDS");
        let array: Array<MapData, Backend> = Array::try_from(Map::Array(map)).expect("an array");
        let b = array.get(&id, 0).expect("a backend slot");
        SocketAddr::new(from_words(b.addr, b.family), u16::from_be(b.port))
    }

    fn backend_id(&self, address: SocketAddr) -> u32 {
        (0..64)
            .find(|&id| self.backend_address(id) == address)
            .expect("a backend id")
    }

    /// Every affinity entry: client → (backend address, last use).
    fn affinities(&self) -> BTreeMap<IpAddr, (SocketAddr, u64)> {
        let map = self.affinity_map();
        map.iter()
            .map(Result::unwrap)
            .map(|(k, a)| {
                (
                    from_words(k.client, k.family),
                    (self.backend_address(a.backend_id), a.last_seen_ns),
                )
            })
            .collect()
    }

    fn affinity_of(&self, client: Ipv4Addr) -> Option<SocketAddr> {
        self.affinities().get(&IpAddr::V4(client)).map(|(b, _)| *b)
    }
}

/// A service's backends as `status --json` shows them (address, weight,
/// draining), sorted.
fn set_of(service: &balancer_user::metrics::ServiceSnapshot) -> Vec<(String, u32, bool)> {
    let mut set: Vec<_> = service
        .backends
        .iter()
        .map(|b| (b.address.clone(), b.weight, b.draining))
        .collect();
    set.sort();
    set
}

/// Both gateways, linked, neither daemon started; the shared key written.
fn pair() -> (Gateway, Gateway) {
    let key = std::env::temp_dir().join(format!(
        "lbt-cluster-key-{}",
        balancer_tests::netns::random_suffix()
    ));
    std::fs::write(&key, KEY).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let g1 = Gateway::new(1, key.clone());
    let g2 = Gateway::new(2, key);
    let (ns1, ns2) = (g1.topo.gw(), g2.topo.gw());
    ns1.ip(format!(
        "link add {LINK_IF} type veth peer name {LINK_IF} netns {}",
        ns2.name()
    )
    .split(' '));
    for (ns, n) in [(ns1, 1), (ns2, 2)] {
        ns.ip_batch(&[
            format!("addr add {}/24 dev {LINK_IF}", cluster_ip(n)),
            format!("link set {LINK_IF} up"),
        ]);
    }
    ns1.wait_ready(LINK_IF);
    ns2.wait_ready(LINK_IF);
    (g1, g2)
}

/// Both gateways started with the sid service ("chat"), a server made by
/// `server` on every backend of both topologies (returned last, so it is
/// dropped before the namespaces).
fn sid_pair<S>(server: impl Fn(&balancer_tests::Backend) -> S) -> (Gateway, Gateway, Vec<S>) {
    let (mut g1, mut g2) = pair();
    let servers = [&g1, &g2]
        .iter()
        .flat_map(|g| g.topo.backends())
        .map(server)
        .collect();
    g1.sid = true;
    g2.sid = true;
    g1.start();
    g2.start();
    (g1, g2, servers)
}

fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A gateway started later pulls the entries before it is ready; a new
/// entry on one gateway appears on the other naming the same backend, and
/// takes the client there even where that gateway's table would not; an
/// entry naming another backend is never overwritten.
#[test]
fn entries_replicate_sync_first_and_never_overwrite() {
    balancer_tests::require_root();
    let (mut g1, mut g2) = pair();
    let clients = g1.topo.clients_v4().to_vec();

    // (c) Gateway 1 alone, with entries; gateway 2 starts later.
    g1.start();
    let early = [clients[0], clients[1]];
    let early_backends: Vec<SocketAddr> = early.iter().map(|c| g1.connect(*c)).collect();
    for (c, b) in early.iter().zip(&early_backends) {
        assert_eq!(g1.affinity_of(*c), Some(*b), "gateway 1 stored {c}");
    }
    g2.start();
    let started = Instant::now();
    let status = wait_for("gateway 2 ready", Duration::from_secs(15), || {
        Some(g2.cluster()).filter(|s| s.ready)
    });
    let at_ready = g2.affinities();
    let ready_after = started.elapsed();
    for (c, b) in early.iter().zip(&early_backends) {
        assert_eq!(
            at_ready.get(&IpAddr::V4(*c)).map(|(b, _)| *b),
            Some(*b),
            "gateway 2 had {c}'s entry when it said ready: {status:?}"
        );
    }
    let reason = status.ready_reason.clone().unwrap_or_default();
    assert!(
        reason.contains(&format!("from {}", cluster_addr(1))) && reason.starts_with("synced"),
        "{reason}"
    );
    let from_g1 = &status.peers[0];
    assert_eq!(from_g1.address, cluster_addr(1).to_string());
    assert!(from_g1.last_sync_entries >= 2, "{from_g1:?}");
    println!("late start: gateway 2 ready after {ready_after:?}: {reason}");

    // (a) A new client through gateway 1 shows up on gateway 2 with the
    // same backend, and gateway 2 sends it there although its own table
    // would send a new client elsewhere: a local reload (which, unlike the
    // `backend` commands, does not reach the peers) gave the other
    // backends 50 times the weight there.
    wait_for("both links up", Duration::from_secs(10), || {
        (g1.cluster().peers[0].connected && g2.cluster().peers[0].connected).then_some(())
    });
    let client = clients[2];
    let chosen = g1.lookup(client);
    let config = g2.daemon.as_ref().unwrap().config_path().to_owned();
    let mut text = std::fs::read_to_string(&config).unwrap();
    for b in (0..3).map(|n| g2.backend(n)).filter(|b| *b != chosen) {
        let line = format!("address = \"{b}\"\n");
        text = text.replace(&line, &format!("{line}weight = 50\n"));
    }
    std::fs::write(&config, text).unwrap();
    g2.cli(&["reload"]);
    assert_ne!(g2.lookup(client), chosen, "outweighed on gateway 2");
    let start = Instant::now();
    assert_eq!(g1.connect(client), chosen);
    let replicated = wait_for("the entry on gateway 2", Duration::from_secs(5), || {
        g2.affinity_of(client)
    });
    println!("replicated {client} in {:?}", start.elapsed());
    assert_eq!(replicated, chosen, "the same backend, by address");
    assert_eq!(
        g2.connect(client),
        chosen,
        "gateway 2 follows the replicated entry"
    );
    let g1_ids = g1.affinity_map();
    let g1_key = g1_ids
        .keys()
        .map(Result::unwrap)
        .find(|k| k.client == to_words(client.into()).0)
        .unwrap();
    let g1_backend = g1_ids.get(&g1_key, 0).unwrap().backend_id;
    assert_eq!(g1.backend_address(g1_backend), chosen);

    // (b) An entry gateway 2 already has, naming another backend, stays.
    let client = clients[3];
    let theirs = g1.lookup(client);
    let ours = g2
        .topo
        .backends()
        .iter()
        .map(|b| SocketAddr::new(b.v4().into(), PORT))
        .find(|b| *b != theirs && *b != chosen)
        .expect("another backend");
    let service_id = g2
        .affinity_map()
        .keys()
        .map(Result::unwrap)
        .next()
        .expect("an entry")
        .service_id;
    let (words, family) = to_words(client.into());
    let key = AffinityKey {
        service_id,
        family,
        _pad: [0; 3],
        client: words,
    };
    // Six minutes old: fresh (the timeout is ten), but not active, so
    // gateway 2 does not re-announce it to gateway 1 meanwhile.
    let planted = Affinity {
        backend_id: g2.backend_id(ours),
        _pad: 0,
        last_seen_ns: monotonic_ns() - 360_000_000_000,
    };
    g2.affinity_map().insert(key, planted, 0).unwrap();
    let kept_before = g2.cluster().peers[0].entries_kept;
    assert_eq!(g1.connect(client), theirs);
    wait_for(
        "gateway 2 received and kept its own",
        Duration::from_secs(5),
        || (g2.cluster().peers[0].entries_kept > kept_before).then_some(()),
    );
    assert_eq!(
        g2.affinity_map().get(&key, 0).unwrap(),
        planted,
        "unchanged"
    );
    assert_eq!(g2.connect(client), ours, "gateway 2's choice stands");

    let metrics = g2.metrics();
    let peer = cluster_addr(1).to_string();
    let received = http::metric(
        &metrics,
        "balancer_cluster_entries_total",
        &[("peer", &peer), ("direction", "received")],
    )
    .expect("entries received");
    assert!(received >= 4.0, "{metrics}");
    assert_eq!(
        http::metric(&metrics, "balancer_cluster_peer_up", &[("peer", &peer)]),
        Some(1.0)
    );
    let sent = http::metric(
        &g1.metrics(),
        "balancer_cluster_entries_total",
        &[
            ("peer", &cluster_addr(2).to_string()),
            ("direction", "sent"),
        ],
    )
    .expect("entries sent");
    assert!(sent >= 4.0, "sent {sent}");

    // Rejoin: gateway 2 restarts (adopting its pinned maps, the reports'
    // ring buffer among them) and pulls gateway 1's entries again before
    // it is ready; what it had stays as it was.
    let had = g2.affinities();
    g2.stop();
    g2.start();
    let status = wait_for("gateway 2 ready again", Duration::from_secs(15), || {
        Some(g2.cluster()).filter(|s| s.ready)
    });
    let reason = status.ready_reason.unwrap_or_default();
    assert!(reason.starts_with("synced"), "{reason}");
    assert!(
        status.peers[0].last_sync_entries >= 4,
        "{:?}",
        status.peers[0]
    );
    // (Its last use moved: gateway 2 carried the client since.)
    assert_eq!(
        g2.affinity_map().get(&key, 0).unwrap().backend_id,
        planted.backend_id
    );
    let now = g2.affinities();
    for (client, (backend, _)) in &had {
        assert_eq!(now.get(client).map(|(b, _)| b), Some(backend), "{client}");
    }
    // And it still sends: a new client on gateway 2 reaches gateway 1.
    let client = clients[4];
    let backend = g2.connect(client);
    let replicated = wait_for(
        "gateway 2's entry on gateway 1",
        Duration::from_secs(5),
        || g1.affinity_of(client),
    );
    assert_eq!(replicated, backend);
}

/// An entry in use on one gateway is sent again while it is, so the other
/// gateway's copy does not expire although no new entry is made: with an
/// 8 s timeout (re-announced every 2 s), a connection held for 12 s keeps
/// gateway 2's copy fresh.
#[test]
fn active_entries_are_reannounced() {
    balancer_tests::require_root();
    let (mut g1, mut g2) = pair();
    g1.timeout = "8s";
    g2.timeout = "8s";
    g1.start();
    g2.start();
    wait_for("both linked", Duration::from_secs(15), || {
        (g1.cluster().peers[0].connected && g2.cluster().peers[0].connected).then_some(())
    });
    let client = g1.topo.clients_v4()[0];
    let stream = balancer_tests::tcp_connect(g1.topo.client(), client.into(), vip(), TIMEOUT)
        .expect("connect");
    let first = balancer_tests::ask(&stream).expect("first exchange");
    let (backend, _) = wait_for("the entry on gateway 2", Duration::from_secs(5), || {
        g2.affinities().get(&IpAddr::V4(client)).copied()
    });
    let refreshed_before = g2.cluster().peers[0].entries_refreshed;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(12) {
        let answer = balancer_tests::ask(&stream).expect("an exchange");
        assert_eq!(answer.backend, first.backend);
        std::thread::sleep(Duration::from_millis(500));
    }
    let (still, last_seen) = g2.affinities()[&IpAddr::V4(client)];
    assert_eq!(still, backend);
    let idle = Duration::from_nanos(monotonic_ns() - last_seen);
    assert!(
        idle < Duration::from_secs(6),
        "gateway 2's copy was refreshed (without re-announcements it would be 12 s idle, expired): idle {idle:?}"
    );
    let refreshed = g2.cluster().peers[0].entries_refreshed - refreshed_before;
    assert!(refreshed >= 3, "refreshed {refreshed} times in 12 s");
    println!(
        "re-announced: gateway 2's copy idle {idle:?} after 12 s, refreshed {refreshed} times"
    );
}

/// A key file others can read is refused, by `check` and `run`, in one
/// line, and nothing is attached.
/// With `[announce]`, a gateway announces its VIPs only once it has pulled
/// its peers' entries, or once none answered for `SYNC_WAIT` (10 s): here
/// its only peer runs no daemon. Until then its VIP is not on `lo`, and
/// `cluster leave` is refused in one line.
#[test]
fn a_gateway_announces_only_once_it_is_ready() {
    balancer_tests::require_root();
    let (mut g1, _g2) = pair();
    let state = std::env::temp_dir().join(format!(
        "lbt-announce-{}.state",
        balancer_tests::netns::random_suffix()
    ));
    g1.announce_state = Some(state.clone());
    let on_lo = |g: &Gateway| {
        let out = g.topo.gw().ip(["-4", "addr", "show", "dev", "lo"]);
        String::from_utf8_lossy(&out.stdout).contains(&format!("{VIP_V4}/32"))
    };
    let started = Instant::now();
    g1.start();
    assert!(!g1.cluster().ready, "ready with no peer answering");
    assert!(!on_lo(&g1), "announced before the pull");
    let out = balancer_tests::daemon::cli(
        g1.topo.gw(),
        &g1.bpffs.control_socket(),
        &["cluster", "leave"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.lines().count() == 1,
        "{stderr}"
    );
    assert!(
        stderr.contains("still pulling its peers' entries"),
        "{stderr}"
    );
    wait_for("the VIP on lo", Duration::from_secs(20), || {
        on_lo(&g1).then_some(())
    });
    let waited = started.elapsed();
    assert!(g1.cluster().ready);
    assert!(
        waited >= Duration::from_secs(9),
        "announced after {waited:?}"
    );
    println!("announced {waited:?} after the start, with no peer answering");
    g1.stop();
    let _ = std::fs::remove_file(&state);
}

#[test]
fn a_readable_key_is_refused_in_one_line() {
    balancer_tests::require_root();
    let (g1, _g2) = pair();
    std::fs::set_permissions(
        &g1.key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let path = std::env::temp_dir().join(format!(
        "lbt-cluster-{}.toml",
        balancer_tests::netns::random_suffix()
    ));
    std::fs::write(&path, g1.config()).unwrap();
    for command in ["check", "run"] {
        let out = balancer_tests::daemon::balancer(
            g1.topo.gw(),
            &[command, "--config", path.to_str().unwrap()],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command}: {}", out.status);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{command}: {stderr}");
        assert!(
            lines[0].contains("cluster.secret_file: ")
                && lines[0].contains("readable by others than its owner"),
            "{command}: {}",
            lines[0]
        );
    }
    std::fs::remove_file(&path).unwrap();
    assert!(!balancer_tests::daemon::attached(
        g1.topo.gw(),
        balancer_tests::topology::GW_CLIENT_IF
    ));
}

/// Write `bytes` from `ns` (from `source`, when given) to `to`, and wait
/// for the receiver to close the connection.
fn send_and_expect_close(g: &Gateway, source: Option<Ipv4Addr>, to: SocketAddr, bytes: &[u8]) {
    let bytes = bytes.to_vec();
    g.topo.gw().run(move || {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        if let Some(ip) = source {
            socket
                .bind(&SocketAddr::new(ip.into(), 0).into())
                .expect("bind");
        }
        socket
            .connect_timeout(&to.into(), Duration::from_secs(3))
            .expect("connect");
        let mut stream: TcpStream = socket.into();
        stream
            .set_read_timeout(Some(Duration::from_secs(8)))
            .unwrap();
        // The receiver may close before all is written.
        let _ = stream.write_all(&bytes);
        assert_closed_without_answer(&mut stream);
    });
}

/// Garbage and a wrong key, from the peer's own address and from one that
/// is no peer's: each connection is closed, counted by reason, and the
/// receiver's table does not change; its good peer carries on.
#[test]
fn bad_peers_change_nothing() {
    balancer_tests::require_root();
    let (mut g1, mut g2) = pair();
    g1.start();
    g2.start();
    wait_for("both linked", Duration::from_secs(15), || {
        (g1.cluster().peers[0].connected && g2.cluster().peers[0].connected).then_some(())
    });
    let clients = g1.topo.clients_v4().to_vec();
    let first = g1.connect(clients[0]);
    wait_for(
        "the first entry on gateway 2",
        Duration::from_secs(5),
        || g2.affinity_of(clients[0]),
    );
    let before = g2.affinities();
    let to = cluster_addr(2);

    // HTTP: its first four bytes read as a length of 1.2 GB.
    send_and_expect_close(&g1, None, to, b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n");
    // A length too short for any frame.
    send_and_expect_close(&g1, None, to, &[0, 0, 0, 3, 1, 2, 3]);
    // A well-formed handshake under another key, then a well-formed frame
    // of entries with a made-up MAC.
    let mut wrong = Sealer::handshake(b"not the cluster's key, but as long", Side::Client);
    send_and_expect_close(
        &g1,
        None,
        to,
        &wrong.seal(&Message::Hello { nonce: [7; 16] }),
    );
    let mut forged = Sealer::handshake(KEY.as_bytes(), Side::Client).seal(&Message::Entries(vec![
        balancer_user::cluster::wire::Entry {
            vip: vip(),
            proto: 6,
            client: IpAddr::V4(clients[5]),
            backend: SocketAddr::new(g2.topo.backends()[0].v4().into(), PORT),
            age_ms: 0,
        },
    ]));
    let mac_at = forged.len() - 32;
    forged[mac_at..].fill(0xab);
    send_and_expect_close(&g1, None, to, &forged);
    // From an address that is no peer's.
    let stranger = Ipv4Addr::new(198, 18, 2, 99);
    g1.topo
        .gw()
        .ip_batch(&[format!("addr add {stranger}/24 dev {LINK_IF}")]);
    send_and_expect_close(&g1, Some(stranger), to, &wrong.seal(&Message::SyncRequest));

    let metrics = g2.metrics();
    let peer = cluster_addr(1).to_string();
    let rejected = |peer: &str, reason: &str| {
        http::metric(
            &metrics,
            "balancer_cluster_messages_rejected_total",
            &[("peer", peer), ("reason", reason)],
        )
        .unwrap_or_else(|| panic!("no {reason} series for {peer}:\n{metrics}"))
    };
    assert_eq!(rejected(&peer, "too_large"), 1.0);
    assert_eq!(rejected(&peer, "malformed"), 1.0);
    assert_eq!(rejected(&peer, "bad_mac"), 2.0);
    assert_eq!(rejected("unknown", "unknown_peer"), 1.0);
    assert_eq!(rejected(&peer, "unknown_service"), 0.0);
    let after = g2.affinities();
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "no entry added or removed"
    );
    assert_eq!(after[&IpAddr::V4(clients[0])].0, first);
    assert!(!after.contains_key(&IpAddr::V4(clients[5])));
    let status = g2.cluster();
    assert!(status.peers[0].connected, "the good link stayed up");

    // The good peer's entries still arrive.
    let next = g1.connect(clients[1]);
    let replicated = wait_for("a later entry on gateway 2", Duration::from_secs(5), || {
        g2.affinity_of(clients[1])
    });
    assert_eq!(replicated, next);
    println!("bad peers: refused by reason; gateway 2 still replicates from gateway 1");
}

/// Both gateways show the same backends and table within `limit`; the set.
fn wait_same_set(
    g1: &Gateway,
    g2: &Gateway,
    limit: Duration,
) -> (Vec<(String, u32, bool)>, String) {
    wait_for(
        "the same backends and table on both gateways",
        limit,
        || {
            let a = g1.backend_set();
            (a == g2.backend_set()).then_some(a)
        },
    )
}

fn both_linked(g1: &Gateway, g2: &Gateway) {
    wait_for("both linked", Duration::from_secs(15), || {
        (g1.cluster().peers[0].connected && g2.cluster().peers[0].connected).then_some(())
    });
}

/// `backend add|drain|set-weight` given on one gateway applies on both at
/// one instant, and the answer names the peer that applied it; a change a
/// peer refuses applies nowhere, and the answer gives the peer's reason.
#[test]
fn a_backend_change_on_one_gateway_applies_on_every_gateway() {
    balancer_tests::require_root();
    let (mut g1, mut g2) = pair();
    g1.start();
    g2.start();
    both_linked(&g1, &g2);
    let (before, fp_before) = wait_same_set(&g1, &g2, Duration::from_secs(5));
    assert_eq!(before.len(), 3);
    let fourth = g1.backend(3).to_string();
    let peer = cluster_addr(2).to_string();

    let asked = Instant::now();
    let out = g1.cli(&["backend", "add", "web", &fourth]);
    let answered = asked.elapsed();
    assert!(out.contains(&format!("added {fourth} to web")), "{out}");
    assert!(out.contains(&format!("applied on peers {peer}")), "{out}");
    assert!(!out.contains("unreachable"), "{out}");
    // Both applied at the instant the answer waited for: gateway 2 has it
    // the moment gateway 1 answers.
    let (after, fp_after) = wait_same_set(&g1, &g2, Duration::from_secs(1));
    let since = asked.elapsed();
    assert_eq!(after.len(), 4, "{after:?}");
    assert_ne!(fp_after, fp_before);
    println!(
        "backend add on gateway 1: answered in {} ms, both gateways equal {} ms after the command",
        answered.as_millis(),
        since.as_millis()
    );

    let out = g2.cli(&["backend", "drain", "web", &fourth]);
    assert!(
        out.contains(&format!("applied on peers {}", cluster_addr(1))),
        "{out}"
    );
    let out = g1.cli(&[
        "backend",
        "set-weight",
        "web",
        &g1.backend(0).to_string(),
        "3",
    ]);
    assert!(out.contains("applied on peers"), "{out}");
    let (set, _) = wait_same_set(&g1, &g2, Duration::from_secs(1));
    assert!(set.contains(&(fourth.clone(), 1, true)), "{set:?}");
    assert!(
        set.contains(&(g1.backend(0).to_string(), 3, false)),
        "{set:?}"
    );
    assert_eq!(g1.cluster().admin_version, 3);
    assert_eq!(g2.cluster().admin_version, 3);

    // A change gateway 2 would refuse (it has no such backend: its set was
    // changed behind the cluster's back by a local reload) applies nowhere.
    let third = g1.backend(2).to_string();
    let config = g2.daemon.as_ref().unwrap().config_path().to_owned();
    let without_third = std::fs::read_to_string(&config).unwrap().replace(
        &format!("[[services.backends]]\naddress = \"{third}\"\n"),
        "",
    );
    std::fs::write(&config, without_third).unwrap();
    g2.cli(&["reload"]);
    let out = balancer_tests::daemon::cli(
        g1.topo.gw(),
        &g1.bpffs.control_socket(),
        &["backend", "drain", "web", &third],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("refused by peer {peer}")) && err.contains("has no backend"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    std::thread::sleep(Duration::from_millis(800));
    let (set, _) = g1.backend_set();
    assert!(
        set.contains(&(third.clone(), 1, false)),
        "nothing changed on gateway 1: {set:?}"
    );
    println!("refusal: {}", err.trim());
}

/// With the peer down, a change applies here and names the unreachable
/// peer; the peer, started with the old config, adopts the change and
/// ends with the same table.
#[test]
fn a_peer_that_was_down_catches_up_when_it_starts() {
    balancer_tests::require_root();
    let (mut g1, mut g2) = pair();
    g1.start();
    let fourth = g1.backend(3).to_string();
    let out = g1.cli(&["backend", "add", "web", &fourth, "--weight", "2"]);
    assert!(out.contains(&format!("added {fourth} to web")), "{out}");
    assert!(
        out.contains(&format!("unreachable: {} (not linked)", cluster_addr(2))),
        "{out}"
    );
    let out = g1.cli(&["backend", "drain", "web", &g1.backend(1).to_string()]);
    assert!(out.contains("unreachable"), "{out}");
    let (set, _) = g1.backend_set();
    assert_eq!(set.len(), 4);

    let started = Instant::now();
    g2.start();
    let (caught_up, fp) = wait_same_set(&g1, &g2, Duration::from_secs(10));
    assert!(caught_up.contains(&(fourth, 2, false)), "{caught_up:?}");
    assert!(
        caught_up.contains(&(g1.backend(1).to_string(), 1, true)),
        "{caught_up:?}"
    );
    assert_eq!(g2.cluster().admin_version, 2);
    println!(
        "gateway 2 caught up {} ms after its start: fingerprint {fp}",
        started.elapsed().as_millis()
    );
}

/// The admin version is pinned with the backends: both gateways stopped
/// and started again (in either order) resume it with their sets; a
/// gateway that was down through a change, both then restarted, adopts
/// the newer set rather than overriding it; and a gateway whose restart
/// brings back a config backend the cluster removed starts behind and
/// adopts its peer's set.
#[test]
fn the_admin_version_survives_restarts_and_the_newer_set_wins() {
    balancer_tests::require_root();
    let (mut g1, mut g2) = pair();
    g1.start();
    g2.start();
    both_linked(&g1, &g2);
    let fourth = g1.backend(3).to_string();
    let second = g1.backend(1).to_string();
    assert!(
        g1.cli(&["backend", "add", "web", &fourth])
            .contains("applied on peers")
    );
    assert!(
        g2.cli(&["backend", "drain", "web", &second])
            .contains("applied on peers")
    );
    let (before, fp) = wait_same_set(&g1, &g2, Duration::from_secs(1));
    assert_eq!(g1.cluster().admin_version, 2);

    // Both stopped; gateway 2 started first, then gateway 1.
    g1.stop();
    g2.stop();
    g2.start();
    g1.start();
    both_linked(&g1, &g2);
    for g in [&g1, &g2] {
        let c = g.cluster();
        assert_eq!(
            (c.admin_version, c.admin_behind),
            (2, false),
            "gateway {}",
            g.n
        );
        assert_eq!(
            g.backend_set(),
            (before.clone(), fp.clone()),
            "gateway {}",
            g.n
        );
    }
    let out = g2.cli(&["backend", "undrain", "web", &second]);
    assert!(out.contains("applied on peers"), "{out}");
    wait_same_set(&g1, &g2, Duration::from_secs(1));
    assert_eq!(g1.cluster().admin_version, 3);
    assert_eq!(g2.cluster().admin_version, 3);

    // Gateway 2 is down through a change; then both restart, the stale
    // one first and alone. Unpinned, both would start at 0 and each keep
    // its own set.
    g2.stop();
    let first = g1.backend(0).to_string();
    let out = g1.cli(&["backend", "set-weight", "web", &first, "3"]);
    assert!(out.contains("unreachable"), "{out}");
    let (newer, newer_fp) = g1.backend_set();
    g1.stop();
    g2.start();
    assert_eq!(g2.cluster().admin_version, 3);
    assert!(g2.backend_set().0.contains(&(first.clone(), 1, false)));
    g1.start();
    let (set, set_fp) = wait_same_set(&g1, &g2, Duration::from_secs(10));
    assert_eq!((set, set_fp), (newer, newer_fp), "the newer set on both");
    assert_eq!(g1.cluster().admin_version, 4);
    assert_eq!(g2.cluster().admin_version, 4);

    // A config backend removed cluster-wide comes back with gateway 2's
    // restart (runtime changes to the config's own backends last until
    // the next start): gateway 2 resumes version 5 behind, and adopts.
    let third = g1.backend(2).to_string();
    both_linked(&g1, &g2);
    let out = g1.cli(&["backend", "remove", "web", &third]);
    assert!(out.contains("applied on peers"), "{out}");
    let (removed, _) = wait_same_set(&g1, &g2, Duration::from_secs(1));
    assert!(!removed.iter().any(|(a, _, _)| *a == third), "{removed:?}");
    g2.stop();
    g2.start();
    let (set, _) = wait_same_set(&g1, &g2, Duration::from_secs(10));
    assert_eq!(set, removed, "gateway 2 adopted the set without {third}");
    let c2 = g2.cluster();
    assert_eq!((c2.admin_version, c2.admin_behind), (5, false));
    assert_eq!(g1.cluster().admin_version, 5);
    println!(
        "admin version carried over restarts: 2, 3, 4 (stale gateway adopted), 5 (behind, adopted)"
    );
}

/// `backend add --name` on one gateway: the runtime backend takes the
/// sessions its name prefixes, on both gateways; the name is pinned, so a
/// gateway restarted with no peer to ask still routes them and resumes its
/// admin version level; a removed backend's name is unpinned. A bad, a
/// duplicate or a missing name is refused in one line and changes nothing
/// on either gateway.
#[test]
fn a_runtime_backends_name_routes_its_sessions_on_every_gateway_and_across_restarts() {
    balancer_tests::require_root();
    // Socket.IO servers minting `NAME.<uuid>` session ids.
    let (mut g1, mut g2, _sio) =
        sid_pair(|b| SocketIoServer::start_sid_prefixed(b.ns(), b.name(), SIO_PORT));
    both_linked(&g1, &g2);
    let fourth = SocketAddr::new(g1.topo.backends()[3].v4().into(), SIO_PORT).to_string();
    let clients: Vec<Ipv4Addr> = g1.topo.clients_v4()[..6].to_vec();
    let before = g1.chat_set();
    assert_eq!(before.len(), 3);
    // Not a backend of the service yet: its prefix is unknown, the client's
    // address picks another server, which does not know the session.
    let sid = g1.session_on(3);
    assert!(sid.starts_with("b4."), "{sid}");
    assert_eq!(g1.post_by_sid(clients[0], &sid), 400);

    for (args, says) in [
        (vec!["--name", "b 4"], "is not a valid name"),
        (vec!["--name", "b2"], "duplicate backend name \"b2\""),
        (vec![], "backend.name: required"),
    ] {
        let mut argv = vec!["backend", "add", "chat", &fourth];
        argv.extend(&args);
        let out = balancer_tests::daemon::cli(g1.topo.gw(), &g1.bpffs.control_socket(), &argv);
        assert!(!out.status.success(), "{argv:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{argv:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{argv:?}: {err}");
    }
    for g in [&g1, &g2] {
        assert_eq!(g.chat_set(), before, "gateway {}: changed", g.n);
        assert_eq!(g.cluster().admin_version, 0, "gateway {}", g.n);
    }

    let out = g1.cli(&["backend", "add", "chat", &fourth, "--name", "b4"]);
    assert!(
        out.contains(&format!("added {fourth} to chat (weight 1, name b4)")),
        "{out}"
    );
    assert!(
        out.contains(&format!("applied on peers {}", cluster_addr(2))),
        "{out}"
    );
    std::thread::sleep(Duration::from_millis(200));
    for g in [&g1, &g2] {
        let sid = g.session_on(3);
        for &client in &clients {
            assert_eq!(
                g.post_by_sid(client, &sid),
                200,
                "gateway {}, client {client}: {sid} did not reach b4",
                g.n
            );
        }
        assert_eq!(g.pinned_names(), ["b4"], "gateway {}", g.n);
        let shown = balancer_tests::daemon::status(g.topo.gw(), &g.bpffs.control_socket());
        let b4 = shown
            .services
            .iter()
            .flat_map(|s| &s.backends)
            .find(|b| b.address == fourth);
        assert_eq!(
            b4.and_then(|b| b.name.as_deref()),
            Some("b4"),
            "gateway {}: status --json names it",
            g.n
        );
    }

    // Gateway 2 restarts while gateway 1 is away: only its pins can give
    // it the name.
    g1.stop();
    g2.stop();
    g2.start();
    let c2 = g2.cluster();
    assert_eq!((c2.admin_version, c2.admin_behind), (1, false));
    let sid = g2.session_on(3);
    for &client in &clients {
        assert_eq!(g2.post_by_sid(client, &sid), 200, "after a restart");
    }

    let out = g2.cli(&["backend", "remove", "chat", &fourth]);
    assert!(out.contains("removed"), "{out}");
    assert!(g2.pinned_names().is_empty(), "{:?}", g2.pinned_names());
    assert_eq!(g2.post_by_sid(clients[0], &sid), 400, "removed: by client");
    println!(
        "b4 added by name on gateway 1: {} clients' requests with b4's session ids reached it on both gateways and after gateway 2's restart",
        clients.len()
    );
}

/// An entry the daemon makes for a client of a service it terminates (the
/// sid service's fallback by client address) reaches the peer at once, as
/// the kernel's confirmations do, not at the next re-announcement (up to
/// 30 s away).
#[test]
fn a_proxied_clients_entry_reaches_the_peer_at_once() {
    balancer_tests::require_root();
    let (g1, g2, _http) =
        sid_pair(|b| balancer_tests::servers::http_whoami(b.ns(), b.name(), SIO_PORT));
    both_linked(&g1, &g2);
    let client = g1.topo.clients_v4()[7];
    assert_eq!(g2.affinity_of(client), None);
    // No backend has that prefix: routed by the client's address, which
    // makes the client's entry on gateway 1.
    let sent = Instant::now();
    assert_eq!(g1.post_by_sid(client, "nobody.x"), 200);
    let on_g1 = g1
        .affinity_of(client)
        .expect("gateway 1 made the client's entry");
    let on_g2 = wait_for("the entry on gateway 2", Duration::from_secs(3), || {
        g2.affinity_of(client)
    });
    assert_eq!(on_g2, on_g1, "the same backend");
    println!(
        "a proxied client's entry reached the peer {} ms after its request",
        sent.elapsed().as_millis()
    );
}

/// A gateway started later whose config lists the backend gateway 1 got
/// by `backend add`: the same set, so the same table.
#[test]
fn a_later_gateway_with_the_backend_in_its_config_has_the_same_table() {
    balancer_tests::require_root();
    let (mut g1, mut g2) = pair();
    g2.listed = 4;
    g1.start();
    let fourth = g1.backend(3).to_string();
    g1.cli(&["backend", "add", "web", &fourth]);
    g2.start();
    let (set, fp) = wait_same_set(&g1, &g2, Duration::from_secs(10));
    assert_eq!(set.len(), 4);
    let c1 = g1.cluster();
    let c2 = g2.cluster();
    assert_eq!(
        c1.services[0].table_fingerprint,
        c2.services[0].table_fingerprint
    );
    println!("gateway 1 by backend add, gateway 2 by config: fingerprint {fp} on both");
}

/// A change from a peer that lacks the key: as its first frame, and after
/// an honest handshake under a session key of the wrong secret. Both
/// connections are closed and counted as `bad_mac`; nothing changes.
#[test]
fn a_change_under_a_wrong_key_changes_nothing() {
    use balancer_user::cluster::{
        admin::{Change, Op, Proposal},
        wire::{Opener, session_key},
    };
    balancer_tests::require_root();
    let (mut g1, mut g2) = pair();
    g1.start();
    g2.start();
    both_linked(&g1, &g2);
    let before = g2.backend_set();
    let to = cluster_addr(2);
    let wrong: &[u8] = b"not the cluster's key, but as long";
    let propose = Message::Propose(Proposal {
        id: 1,
        version: 99,
        apply_at_ms: 0,
        change: Change {
            service: "web".into(),
            backend: g2.backend(0),
            op: Op::Remove,
        },
    });
    send_and_expect_close(
        &g1,
        None,
        to,
        &Sealer::handshake(wrong, Side::Client).seal(&propose),
    );
    g1.topo.gw().run(move || {
        let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(3)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(8)))
            .unwrap();
        let ours = [5; 16];
        stream
            .write_all(
                &Sealer::handshake(KEY.as_bytes(), Side::Client)
                    .seal(&Message::Hello { nonce: ours }),
            )
            .unwrap();
        let mut len = [0; 4];
        stream.read_exact(&mut len).unwrap();
        let mut body = vec![0; u32::from_be_bytes(len) as usize];
        stream.read_exact(&mut body).unwrap();
        let Ok(Message::HelloAck { server_nonce, .. }) =
            Opener::handshake(KEY.as_bytes(), Side::Server).open(&body)
        else {
            panic!("a handshake answer")
        };
        let key = session_key(wrong, &ours, &server_nonce);
        let _ = stream.write_all(&Sealer::session(key, Side::Client).seal(&propose));
        assert_closed_without_answer(&mut stream);
    });
    std::thread::sleep(Duration::from_millis(200));
    let metrics = g2.metrics();
    let bad_mac = http::metric(
        &metrics,
        "balancer_cluster_messages_rejected_total",
        &[
            ("peer", &cluster_addr(1).to_string()),
            ("reason", "bad_mac"),
        ],
    );
    assert_eq!(bad_mac, Some(2.0), "{metrics}");
    assert_eq!(g2.backend_set(), before, "nothing changed");
    assert_eq!(g2.cluster().admin_version, 0);
    assert!(g2.cluster().peers[0].connected, "the good link stayed up");
}

/// The receiver closed `stream` (or reset it) without answering a byte.
fn assert_closed_without_answer(stream: &mut std::net::TcpStream) {
    use std::io::Read as _;
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the receiver kept a bad connection open: {e}"),
    }
    assert!(rest.is_empty(), "the receiver answered: {rest:?}");
}
