//! Sessions that survive a SYN flood (issue 16): 60 idle Socket.IO
//! sessions from 20 client addresses (a third long-polling only, the rest
//! upgraded to WebSocket) on three plain Socket.IO servers, a fourth backend
//! added mid-session (about a quarter of the clients' Maglev slots move, so
//! those clients keep their server only through affinity), then two floods
//! of spoofed handshakes to the VIP, each three times the size of the
//! balancer's tables:
//!
//! 1. bare SYNs from random addresses and ports;
//! 2. SYN-then-ACK pairs, the shape of a handshake from addresses that
//!    never answer (the ACK's acknowledgement number is a guess).
//!
//! The sessions send nothing but Socket.IO's own heartbeats (ping every
//! 25 s, the default), so to an LRU table they look older than any spoofed
//! flow. They must all live through both floods and a heartbeat after each,
//! and answer one final acknowledged message from their own server; and
//! the spoofed flows must not count as connections.
//!
//! The same floods run over idle sessions of the same shape in plain TCP
//! (`balancer_tests::idle`, against the whoami servers) as well: the
//! `--vm` guest runs that version only, since Node under TCG emulation
//! cannot keep Socket.IO's heartbeats.
//!
//! Sizes: `BALANCER_FLOOD_TABLE` (entries of each table, default 65536)
//! and `BALANCER_FLOOD_SYNS` (spoofed packets per flood, default three
//! tables' worth in round hundred thousands). The full-size run:
//! `BALANCER_FLOOD_TABLE=1048576 BALANCER_FLOOD_SYNS=3000000 cargo xtask test -- flood`.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr, SocketAddrV4},
    path::PathBuf,
    time::{Duration, Instant},
};

use balancer_tests::{
    NetNs, Server, Topology, TopologyOpts,
    bpffs::TempBpffs,
    daemon::{Daemon, backends_toml, cli_ok, config_head, status, test_mode},
    idle::{IdleSession, IdleSessions},
    require_root,
    socketio::{
        self, Driver, Heartbeat, Session, SessionSpec, SocketIoServer, error_total, errors,
    },
    spoof::{FloodReport, Shape, Spoofer},
    tcp_whoami,
    topology::VIP_V4,
};
use balancer_user::metrics::Snapshot;

const PORT: u16 = 3000;
const METRICS: &str = "127.0.0.1:9100";
/// Client addresses, and sessions from each: one long-polling only, two
/// upgraded to WebSocket.
const ADDRESSES: usize = 20;
const WEBSOCKET_PER_ADDRESS: usize = 2;
/// The sender's pace: about what one attacker's uplink of 100 Mbit/s
/// carries in minimum-size SYNs, and what this rig's one sending core keeps
/// up without starving the sessions.
const SPOOFED_PER_SECOND: u64 = 100_000;
/// The wait after each flood: Socket.IO's default ping interval (25 s), its
/// timeout (20 s) and a margin, so every session exchanges a heartbeat over
/// whatever state the flood left, and one that lost its connection notices
/// (ping timeout) before the next flood: its error counts against this one.
const AFTER_FLOOD: Duration = Duration::from_secs(50);
/// The plain-TCP sessions' heartbeat: Socket.IO's default ping interval.
const TCP_HEARTBEAT: Duration = Duration::from_secs(25);
/// Their wait after each flood: a heartbeat and its answer's timeout.
const TCP_AFTER_FLOOD: Duration = Duration::from_secs(32);

/// The table size of the default run: small enough that three tables'
/// worth of SYNs take a few seconds. The full-size run sets
/// `BALANCER_FLOOD_TABLE=1048576` (the default `[tables]`).
const DEFAULT_TABLE: u64 = 65_536;

/// Entries of each table: `BALANCER_FLOOD_TABLE`, else the default.
fn table_size() -> u64 {
    env_u64("BALANCER_FLOOD_TABLE").unwrap_or(DEFAULT_TABLE)
}

/// The `[tables]` section giving both tables `size` entries.
fn tables_config(size: u64) -> String {
    format!("[tables]\nflows = {size}\naffinity = {size}\n")
}

/// Spoofed packets per flood: `BALANCER_FLOOD_SYNS`, else three tables'
/// worth, rounded up to a hundred thousand.
fn spoofed_per_flood(table: u64) -> u64 {
    env_u64("BALANCER_FLOOD_SYNS").unwrap_or((3 * table).div_ceil(100_000) * 100_000)
}

/// How long one flood of `packets` may take: four times the paced time
/// and a minute more, for senders slower than the pace (the `--vm` guest's
/// emulated CPUs send about 10,000 a second).
fn flood_time_limit(packets: u64) -> Duration {
    Duration::from_secs(4 * packets / SPOOFED_PER_SECOND + 60)
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
    )
}

/// What the backends run.
#[derive(Clone, Copy, PartialEq)]
enum Servers {
    /// Plain Socket.IO servers (health-checked over HTTP).
    SocketIo,
    /// The whoami TCP servers (health-checked by connecting).
    Whoami,
}

/// A backend's server, kept running for the rig's life.
#[expect(dead_code, reason = "held only to be dropped: a server stops on drop")]
enum BackendServer {
    SocketIo(SocketIoServer),
    Whoami(Server),
}

impl BackendServer {
    fn start(kind: Servers, backend: &balancer_tests::Backend) -> BackendServer {
        match kind {
            Servers::SocketIo => BackendServer::SocketIo(SocketIoServer::start_with(
                backend.ns(),
                backend.name(),
                PORT,
                Heartbeat::Default,
            )),
            Servers::Whoami => {
                BackendServer::Whoami(tcp_whoami(backend.ns(), backend.name(), PORT))
            }
        }
    }
}

struct Rig {
    topo: Topology,
    bpffs: TempBpffs,
    kind: Servers,
    _servers: Vec<BackendServer>,
    _daemon: Daemon,
}

impl Rig {
    fn new(table: u64, kind: Servers) -> Rig {
        require_root();
        let topo = Topology::new(&TopologyOpts {
            clients_v4: ADDRESSES as u8,
            extra_nets: vec![],
            clients_per_extra_net: 0,
            clients_v6: 1,
            backends: 3,
            ..TopologyOpts::default()
        });
        // The backends' answers to spoofed sources must die in the gateway,
        // not leave the topology: it routes nothing but its own subnets.
        for family in ["-4", "-6"] {
            let out = topo.gw().ip([family, "route", "show", "default"]);
            assert!(
                out.stdout.is_empty(),
                "the gateway has a default route ({family}): {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let bpffs = TempBpffs::new();
        let servers = topo
            .backends()
            .iter()
            .map(|b| BackendServer::start(kind, b))
            .collect();
        let health = match kind {
            Servers::SocketIo => "check = \"http\"\npath = \"/health\"",
            Servers::Whoami => "check = \"tcp\"",
        };
        let backends = backends_toml(
            topo.backends()
                .iter()
                .map(|b| SocketAddr::new(b.v4().into(), PORT)),
        );
        let config = format!(
            r#"{head}{tables}
[[services]]
name = "web"
vip = "{VIP_V4}:80"
affinity = "source-ip"
[services.health]
{health}
interval = "500ms"
timeout = "300ms"
rise = 2
fall = 3
{backends}"#,
            head = config_head(&bpffs, METRICS),
            tables = tables_config(table),
        );
        let mut daemon = Daemon::start(topo.gw(), &config, &bpffs.pin_dir(), &[]);
        daemon.wait_serving(topo.gw(), &bpffs.control_socket());
        let rig = Rig {
            topo,
            bpffs,
            kind,
            _servers: servers,
            _daemon: daemon,
        };
        rig.wait_up(3);
        rig
    }

    fn socket(&self) -> PathBuf {
        self.bpffs.control_socket()
    }

    fn status(&self) -> Snapshot {
        status(self.topo.gw(), &self.socket())
    }

    fn wait_up(&self, n: usize) {
        let start = Instant::now();
        while self.status().services[0]
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

    /// A fourth server, added to the service with the CLI.
    fn add_fourth_backend(&mut self) {
        let b4 = self.topo.add_backend();
        let addr = format!("{}:{PORT}", b4.v4());
        self._servers.push(BackendServer::start(self.kind, b4));
        let out = cli_ok(
            self.topo.gw(),
            &self.socket(),
            &["backend", "add", "web", &addr],
        );
        println!("{}", out.trim());
        self.wait_up(4);
    }

    /// The balancer's counts and, read around them, the client namespace's
    /// TCP active opens (`before`: read first; else read last, so the
    /// client's count covers every real connection the balancer saw).
    fn counts(&self, before: bool) -> Counts {
        let opens = || tcp_active_opens(self.topo.client());
        let client_opens = if before { opens() } else { 0 };
        let snapshot = self.status();
        let client_opens = if before { client_opens } else { opens() };
        Counts {
            snapshot,
            client_opens,
        }
    }
}

/// `TcpActiveOpens` of `ns` (`/proc/net/snmp`): the connections its TCP
/// stack opened. Spoofed frames go around it, so this counts the real
/// sessions' connections only.
fn tcp_active_opens(ns: &NetNs) -> u64 {
    let out = ns.exec("cat", ["/proc/net/snmp"]);
    let text = String::from_utf8(out.stdout).unwrap();
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == "ActiveOpens")
        .expect("ActiveOpens in /proc/net/snmp");
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

struct Counts {
    snapshot: Snapshot,
    client_opens: u64,
}

impl Counts {
    fn connections_total(&self) -> u64 {
        self.snapshot.services[0]
            .backends
            .iter()
            .map(|b| b.connections_total)
            .sum()
    }

    fn active(&self) -> u64 {
        self.snapshot.services[0]
            .backends
            .iter()
            .map(|b| b.active_connections)
            .sum()
    }

    fn tables(&self) -> String {
        format!(
            "conntrack {} entries, affinity {} entries",
            self.snapshot.conntrack_entries, self.snapshot.services[0].affinity_entries
        )
    }
}

/// One flood's figures, and what in them breaks the contract.
struct FloodOutcome {
    label: &'static str,
    sent: FloodReport,
    /// Since the driver started, in its clock: the flood's start.
    at_ms: u64,
    problems: Vec<String>,
}

/// The attacker: spoofed frames from the client side, `packets` a flood.
struct Attacker {
    spoofer: Spoofer,
    packets: u64,
    /// When the driver's clock (its errors' `at_ms`) started.
    driver_epoch: Instant,
    /// The real sessions, and how many of them are long-polling only.
    sessions: u64,
    polling: u64,
}

impl Attacker {
    fn new(rig: &Rig, packets: u64, driver_epoch: Instant, sessions: u64, polling: u64) -> Self {
        let seed = u64::from_str_radix(&balancer_tests::netns::random_suffix(), 16).unwrap();
        println!("spoofed addresses and ports from seed {seed:#x}");
        Attacker {
            spoofer: Spoofer::new(rig.topo.client(), rig.topo.gw(), seed).expect("raw sender"),
            packets,
            driver_epoch,
            sessions,
            polling,
        }
    }

    /// The two floods, each followed by `after` for the sessions to beat.
    fn both_floods(&mut self, rig: &Rig, after: Duration) -> Vec<FloodOutcome> {
        [
            ("flood 1 (SYN)", Shape::Syn),
            ("flood 2 (SYN, then ACK)", Shape::SynThenAck),
        ]
        .into_iter()
        .map(|(label, shape)| {
            let outcome = self.flood(rig, label, shape);
            std::thread::sleep(after);
            outcome
        })
        .collect()
    }

    /// One flood of `shape`, with the counts before and after it.
    fn flood(&mut self, rig: &Rig, label: &'static str, shape: Shape) -> FloodOutcome {
        let (packets, sessions, polling) = (self.packets, self.sessions, self.polling);
        let before = rig.counts(true);
        let at_ms = self.driver_epoch.elapsed().as_millis() as u64;
        let flows = packets / if shape == Shape::Syn { 1 } else { 2 };
        let limit = flood_time_limit(packets);
        let vip = SocketAddrV4::new(VIP_V4, 80);
        let sent = self
            .spoofer
            .flood(vip, shape, flows, SPOOFED_PER_SECOND, limit)
            .expect("spoofed flood");
        // Let the last frames and the backends' answers through, and the
        // daemon recount its active connections.
        std::thread::sleep(Duration::from_secs(2));
        let after = rig.counts(false);
        let grew = after
            .connections_total()
            .saturating_sub(before.connections_total());
        let real = after.client_opens.saturating_sub(before.client_opens);
        let per_backend: BTreeMap<&str, i128> = after.snapshot.services[0]
            .backends
            .iter()
            .map(|b| {
                let was = before.snapshot.services[0]
                    .backends
                    .iter()
                    .find(|x| x.address == b.address)
                    .map_or(0, |x| x.connections_total);
                (
                    b.address.as_str(),
                    b.connections_total as i128 - was as i128,
                )
            })
            .collect();
        println!(
            "{label}: {} spoofed frames ({} flows) in {:.1} s, {:.0}/s\n  \
         tables before: {}; after: {}\n  \
         connections_total +{grew} (the sessions opened {real} connections meanwhile; per backend {per_backend:?})\n  \
         active connections {} before, {} after (sessions: {sessions})",
            sent.frames,
            sent.frames / (packets / flows),
            sent.elapsed.as_secs_f64(),
            sent.per_second(),
            before.tables(),
            after.tables(),
            before.active(),
            after.active(),
        );
        let mut problems = Vec::new();
        if sent.frames != packets {
            problems.push(format!(
                "{label}: the sender sent {} of {packets} frames within {limit:?}",
                sent.frames
            ));
        }
        if grew > real {
            problems.push(format!(
                "{label}: connections_total grew by {grew}, the sessions opened only {real}"
            ));
        }
        // Each session holds one connection, and a long-polling one may hold
        // a second for a moment (a request in flight beside the held poll).
        let bound = sessions + polling;
        if after.active() > bound {
            problems.push(format!(
                "{label}: {} active connections after the flood, the sessions hold at most {bound}",
                after.active()
            ));
        }
        FloodOutcome {
            label,
            sent,
            at_ms,
            problems,
        }
    }
}

/// Sessions that had an error, by the flood after which the first came
/// (`first_errors`: each lost session's first error, in ms on the
/// sessions' clock).
fn lost_by_phase(
    first_errors: impl Iterator<Item = u64>,
    floods: &[FloodOutcome],
) -> Vec<(String, usize)> {
    let mut phases: Vec<(String, usize)> = std::iter::once("before the floods".to_owned())
        .chain(floods.iter().map(|f| format!("after {}", f.label)))
        .map(|p| (p, 0))
        .collect();
    for first in first_errors {
        let phase = floods.iter().filter(|f| f.at_ms <= first).count();
        phases[phase].1 += 1;
    }
    phases
}

/// Every flood's problems (the sender's shortfall, inflated counts).
fn flood_problems(floods: &[FloodOutcome]) -> Vec<&String> {
    for f in floods {
        println!("{}: {:.0} spoofed frames/s", f.label, f.sent.per_second());
    }
    floods.iter().flat_map(|f| &f.problems).collect()
}

/// What a run floods with and opens.
struct Plan {
    /// Spoofed frames per flood.
    packets: u64,
    specs: Vec<SessionSpec>,
    /// Sessions, and how many of them are long-polling only.
    total: u64,
    polling: u64,
}

/// The rig with `kind` servers, and the run's plan (sizes from the
/// environment, see the top of this file).
fn plan(kind: Servers) -> (Rig, Plan) {
    let table = table_size();
    let packets = spoofed_per_flood(table);
    let rig = Rig::new(table, kind);
    println!(
        "mode {}: tables of {table} entries, {packets} spoofed frames per flood at up to {SPOOFED_PER_SECOND}/s",
        test_mode()
    );
    let specs = socketio::sessions(&rig.topo.clients_v4()[..ADDRESSES], WEBSOCKET_PER_ADDRESS);
    let total = specs.len() as u64;
    let polling = specs.iter().filter(|s| s.polling).count() as u64;
    let plan = Plan {
        packets,
        specs,
        total,
        polling,
    };
    (rig, plan)
}

#[test]
fn idle_socketio_sessions_survive_spoofed_handshake_floods() {
    let (mut rig, run) = plan(Servers::SocketIo);
    let (packets, total, polling) = (run.packets, run.total, run.polling);
    // A safety bound only: the test ends the run itself.
    let run_limit = 2 * (flood_time_limit(packets) + AFTER_FLOOD) + Duration::from_secs(60);
    let vip = SocketAddr::new(IpAddr::V4(VIP_V4), 80);
    let driver = Driver::start_idle(rig.topo.client(), vip, &run.specs, run_limit);
    let ready = driver.wait_for("ready", Duration::from_secs(20));
    assert_eq!(ready["connected"], total, "{ready}");
    // The driver's clock (its errors' at_ms) started after_ms before now.
    let driver_epoch =
        Instant::now() - Duration::from_millis(ready["after_ms"].as_u64().unwrap_or(0));

    rig.add_fourth_backend();
    // Let the WebSocket upgrades and the long polls settle on four backends.
    std::thread::sleep(Duration::from_secs(2));

    let mut attacker = Attacker::new(&rig, packets, driver_epoch, total, polling);
    let floods = attacker.both_floods(&rig, AFTER_FLOOD);

    let sessions = driver.stop();
    let lost: Vec<&Session> = sessions.iter().filter(|s| s.error_count > 0).collect();
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, e) in errors(&sessions) {
        *by_kind.entry(e.kind.as_str()).or_default() += 1;
    }
    let mut per_server: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &sessions {
        *per_server
            .entry(s.servers.first().map_or("none", String::as_str))
            .or_default() += 1;
    }
    println!(
        "sessions: {total} ({polling} long-polling only, {} upgraded), per first server {per_server:?}; \
         {} lost (first error {:?}), {} final messages acknowledged, {} errors (kinds, first 10 per session: {by_kind:?})",
        sessions.iter().filter(|s| s.upgraded).count(),
        lost.len(),
        lost_by_phase(
            lost.iter()
                .filter_map(|s| s.errors.iter().map(|e| e.at_ms).min()),
            &floods
        ),
        sessions.iter().filter(|s| s.final_acked).count(),
        error_total(&sessions),
    );
    for s in lost.iter().take(5) {
        println!(
            "  e.g. session {} ({}, {}): {:?}",
            s.id,
            s.address,
            if s.polling { "polling" } else { "websocket" },
            s.errors.iter().take(3).collect::<Vec<_>>()
        );
    }
    let problems = flood_problems(&floods);
    assert!(
        lost.is_empty() && problems.is_empty(),
        "{} of {total} sessions lost; {problems:#?}",
        lost.len()
    );
    for s in &sessions {
        assert!(
            s.connected && s.servers.len() == 1 && s.final_acked,
            "session {s:?}"
        );
    }
}

/// The same floods over idle plain-TCP sessions of the same shape: 20
/// addresses, each with one long-polling session (a new connection every
/// heartbeat) and two upgraded ones (one held connection), against whoami
/// servers. Every heartbeat must be answered by the session's first
/// backend, through both floods, and the counts must stay the sessions'.
#[test]
fn idle_tcp_sessions_survive_spoofed_handshake_floods() {
    let (mut rig, run) = plan(Servers::Whoami);
    let (packets, total, polling) = (run.packets, run.total, run.polling);
    let vip = SocketAddr::new(IpAddr::V4(VIP_V4), 80);
    let sessions = IdleSessions::start(rig.topo.client(), vip, &run.specs, TCP_HEARTBEAT);
    rig.add_fourth_backend();
    // Let the daemon count the sessions' connections before the first flood.
    std::thread::sleep(Duration::from_secs(2));
    let mut attacker = Attacker::new(&rig, packets, sessions.epoch, total, polling);
    let floods = attacker.both_floods(&rig, TCP_AFTER_FLOOD);

    let records = sessions.stop();
    let lost: Vec<&IdleSession> = records.iter().filter(|s| s.failure.is_some()).collect();
    let mut per_backend: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &records {
        *per_backend
            .entry(s.backend.as_deref().unwrap_or("none"))
            .or_default() += 1;
    }
    println!(
        "sessions: {total} ({polling} long-polling only), per backend {per_backend:?}; \
         {} lost (first failure {:?}); heartbeats answered: {}",
        lost.len(),
        lost_by_phase(
            lost.iter().filter_map(|s| s.failure.as_ref().map(|f| f.0)),
            &floods
        ),
        records.iter().map(|s| s.heartbeats).sum::<u64>(),
    );
    for s in lost.iter().take(5) {
        println!("  e.g. {s:?}");
    }
    let problems = flood_problems(&floods);
    assert!(
        lost.is_empty() && problems.is_empty(),
        "{} of {total} sessions lost; {problems:#?}",
        lost.len()
    );
    for s in &records {
        // The first beat, one after each flood, and the final one.
        assert!(s.final_answered && s.heartbeats >= 4, "session {s:?}");
    }
}
