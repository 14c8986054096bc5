//! The balancer as a user runs it: the real daemon in the gateway namespace,
//! real TCP and UDP from many client addresses through real veths, to test
//! servers in three backend namespaces (DESIGN.md, Topology).

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
};

use balancer_common::counters::Counter;
use balancer_tests::{
    TIMEOUT, Topology, TopologyOpts,
    bpffs::TempBpffs,
    daemon::{Daemon, attached, balancer},
    require_root, tcp_ask, tcp_whoami,
    topology::{GW_BACKEND_IF, GW_CLIENT_IF, VIP_V4},
    udp_ask, udp_whoami,
    xdp_fixture::Counters,
};

const WEB_PORT: u16 = 80;
const SPREAD_PORT: u16 = 81;
const DNS_PORT: u16 = 53;

fn config(topo: &Topology, pin_dir: &std::path::Path) -> String {
    let backends = |port: u16| {
        topo.backends()
            .iter()
            .map(|b| format!("[[services.backends]]\naddress = \"{}:{port}\"\n", b.v4()))
            .collect::<String>()
    };
    format!(
        r#"
[interfaces]
clients = "{GW_CLIENT_IF}"
backends = "{GW_BACKEND_IF}"
mode = "{mode}"

[metrics]
listen = "127.0.0.1:9090"

[bpf]
pin_dir = "{pin}"

[control]
socket = "{sock}"

[[services]]
name = "web"
vip = "{VIP_V4}:{WEB_PORT}"
affinity = "source-ip"
[services.health]
check = "none"
{web}
[[services]]
name = "spread"
vip = "{VIP_V4}:{SPREAD_PORT}"
affinity = "four-tuple"
[services.health]
check = "none"
{web}
[[services]]
name = "dns"
vip = "{VIP_V4}:{DNS_PORT}"
protocol = "udp"
[services.health]
check = "none"
{dns}
"#,
        mode = balancer_tests::daemon::test_mode(),
        pin = pin_dir.display(),
        sock = balancer_tests::bpffs::control_socket_of(pin_dir).display(),
        web = backends(3000),
        dns = backends(5353),
    )
}

#[test]
fn balances_tcp_and_udp_with_affinity_through_the_gateway() {
    require_root();
    let topo = Topology::new(&TopologyOpts::default());
    let bpffs = TempBpffs::new();
    let tcp: Vec<_> = topo
        .backends()
        .iter()
        .map(|b| tcp_whoami(b.ns(), b.name(), 3000))
        .collect();
    let udp: Vec<_> = topo
        .backends()
        .iter()
        .map(|b| udp_whoami(b.ns(), b.name(), 5353))
        .collect();
    let pin_dir = bpffs.pin_dir();
    let mut daemon = Daemon::start(topo.gw(), &config(&topo, &pin_dir), &pin_dir, &[]);
    daemon.wait_serving(
        topo.gw(),
        &balancer_tests::bpffs::control_socket_of(&pin_dir),
    );
    assert!(attached(topo.gw(), GW_CLIENT_IF) && attached(topo.gw(), GW_BACKEND_IF));

    // source-ip: every one of 10 new connections from a client lands on the
    // same backend; the backend sees the client's own address; the client
    // talks to the VIP (the handshake only completes if replies come back
    // from VIP:80).
    let vip = SocketAddr::new(IpAddr::V4(VIP_V4), WEB_PORT);
    let clients: Vec<IpAddr> = topo
        .clients_v4()
        .iter()
        .take(16)
        .map(|&a| IpAddr::V4(a))
        .collect();
    let mut chosen: HashMap<IpAddr, String> = HashMap::new();
    for &client in &clients {
        let mut seen = BTreeSet::new();
        for i in 0..10 {
            let answer = tcp_ask(topo.client(), client, vip, TIMEOUT)
                .unwrap_or_else(|e| panic!("{client} connection {i} to {vip}: {e}"));
            assert_eq!(
                answer.seen.ip(),
                client,
                "the backend sees the real client address"
            );
            assert_eq!(answer.local.ip(), client);
            seen.insert(answer.backend);
        }
        assert_eq!(seen.len(), 1, "{client}: 10 connections reached {seen:?}");
        chosen.insert(client, seen.into_iter().next().unwrap());
    }
    let used: BTreeSet<_> = chosen.values().collect();
    assert!(used.len() >= 2, "16 clients all went to {used:?}");
    println!("source-ip: 16 clients x 10 connections, backends used: {used:?}");

    // four-tuple: one client's connections spread.
    let spread_vip = SocketAddr::new(IpAddr::V4(VIP_V4), SPREAD_PORT);
    let one = clients[0];
    let spread: BTreeSet<String> = (0..30)
        .map(|i| {
            tcp_ask(topo.client(), one, spread_vip, TIMEOUT)
                .unwrap_or_else(|e| panic!("four-tuple {i}: {e}"))
                .backend
        })
        .collect();
    assert!(
        spread.len() >= 2,
        "four-tuple: 30 connections from {one} reached only {spread:?}"
    );
    println!("four-tuple: 30 connections from one client reached {spread:?}");

    // UDP, source-ip: each client's datagrams (new socket, new source port
    // each time) reach one backend, and replies come from the VIP (the
    // client's socket is connected to the VIP, so anything else is ignored).
    let dns_vip = SocketAddr::new(IpAddr::V4(VIP_V4), DNS_PORT);
    let mut udp_used = BTreeSet::new();
    for &client in clients.iter().take(12) {
        let seen: BTreeSet<String> = (0..5)
            .map(|i| {
                udp_ask(topo.client(), client, dns_vip, TIMEOUT)
                    .unwrap_or_else(|e| panic!("UDP {client} #{i}: {e}"))
            })
            .map(|a| {
                assert_eq!(a.seen.ip(), client);
                a.backend
            })
            .collect();
        assert_eq!(seen.len(), 1, "UDP {client}: reached {seen:?}");
        udp_used.extend(seen);
    }
    assert!(udp_used.len() >= 2, "UDP clients all went to {udp_used:?}");
    // With no stranger on the wire, every reply was translated: a reply
    // passed untranslated reaches its client as a stranger's segment, and
    // the client's RST ends the connection (this caught replies that raced
    // their flow's confirmation on another CPU).
    let counters = Counters::read_pinned(&pin_dir);
    assert_eq!(
        (
            counters.get(Counter::PassReplyNotChosen),
            counters.get(Counter::PassReplyWrongPath)
        ),
        (0, 0),
        "replies passed untranslated (not chosen, wrong path)"
    );

    // Traffic that is not for a VIP is routed by the gateway as before.
    for b in topo.backends() {
        let direct = SocketAddr::new(IpAddr::V4(b.v4()), 3000);
        let answer = tcp_ask(topo.client(), clients[1], direct, TIMEOUT)
            .expect("direct connection to a backend");
        assert_eq!(answer.backend, b.name());
        let answer = udp_ask(
            topo.client(),
            clients[1],
            SocketAddr::new(IpAddr::V4(b.v4()), 5353),
            TIMEOUT,
        )
        .expect("direct UDP to a backend");
        assert_eq!(answer.backend, b.name());
    }

    // Stopping the daemon leaves the data plane forwarding (pinned), and
    // clients keep their backends.
    assert!(daemon.stop().success());
    assert!(
        attached(topo.gw(), GW_CLIENT_IF),
        "the pinned link outlives the daemon"
    );
    for (&client, backend) in chosen.iter().take(4) {
        let answer =
            tcp_ask(topo.client(), client, vip, TIMEOUT).expect("balanced with the daemon stopped");
        assert_eq!(&answer.backend, backend);
    }
    // `balancer detach` removes it.
    // With the daemon stopped, its (stale) socket refuses and the CLI removes
    // the pins itself.
    let socket = bpffs.control_socket();
    let out = balancer(
        topo.gw(),
        &[
            "detach",
            "--pin-dir",
            pin_dir.to_str().unwrap(),
            "--socket",
            socket.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "detach: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!attached(topo.gw(), GW_CLIENT_IF) && !attached(topo.gw(), GW_BACKEND_IF));
    drop((tcp, udp));
}

#[test]
fn a_bad_config_exits_with_one_line_and_attaches_nothing() {
    require_root();
    let topo = Topology::new(&TopologyOpts {
        backends: 1,
        ..TopologyOpts::default()
    });
    let bpffs = TempBpffs::new();
    let pin_dir = bpffs.pin_dir();
    let good = config(&topo, &pin_dir);
    let not_bpffs = std::env::temp_dir().join("lbt-not-bpffs");
    let cases = [
        (
            "table size",
            good.replacen("name = \"web\"", "name = \"web\"\ntable_size = 65536", 1),
            "table_size",
        ),
        (
            "interface",
            good.replace("clients = \"gwc\"", "clients = \"nosuchif0\""),
            "interfaces.clients",
        ),
        (
            "mode",
            good.replace(
                &format!("mode = \"{}\"", balancer_tests::daemon::test_mode()),
                "mode = \"ebpf\"",
            ),
            "interfaces.mode",
        ),
        (
            "pin dir",
            good.replace(pin_dir.to_str().unwrap(), not_bpffs.to_str().unwrap()),
            "bpf.pin_dir",
        ),
        (
            "syntax",
            good.replace("[[services]]", "[[services]"),
            "TOML",
        ),
    ];
    for (what, text, names) in cases {
        let path = std::env::temp_dir().join(format!(
            "lbt-bad-{}.toml",
            balancer_tests::netns::random_suffix()
        ));
        std::fs::write(&path, &text).unwrap();
        let out = balancer(topo.gw(), &["run", "--config", path.to_str().unwrap()]);
        std::fs::remove_file(&path).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: exit status {}", out.status);
        let lines: Vec<_> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{what}: one line on stderr, got {stderr:?}");
        assert!(
            lines[0].contains(names),
            "{what}: {:?} should name {names}",
            lines[0]
        );
        assert!(
            !attached(topo.gw(), GW_CLIENT_IF) && !attached(topo.gw(), GW_BACKEND_IF),
            "{what}: attached"
        );
        assert!(
            !pin_dir.exists() || std::fs::read_dir(&pin_dir).unwrap().next().is_none(),
            "{what}: pinned something"
        );
        println!("{what}: {}", lines[0]);
    }
}

#[test]
fn a_pinned_map_of_another_layout_is_refused_and_nothing_attaches() {
    require_root();
    let topo = Topology::new(&TopologyOpts {
        backends: 1,
        ..TopologyOpts::default()
    });
    let bpffs = TempBpffs::new();
    let pin_dir = bpffs.pin_dir();
    std::fs::create_dir_all(&pin_dir).unwrap();
    // As an older build left it: a counter array of another size.
    let counters = aya::maps::PerCpuArray::<aya::maps::MapData, u64>::create(
        balancer_common::counters::COUNTER_SLOTS - 1,
        0,
    )
    .expect("create a per-CPU array");
    counters
        .pin(pin_dir.join(balancer_common::maps::COUNTERS))
        .expect("pin it");
    let path = std::env::temp_dir().join(format!(
        "lbt-old-{}.toml",
        balancer_tests::netns::random_suffix()
    ));
    std::fs::write(&path, config(&topo, &pin_dir)).unwrap();
    let out = balancer(topo.gw(), &["run", "--config", path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let lines: Vec<_> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line, got {stderr:?}");
    assert!(
        lines[0].contains("COUNTERS") && lines[0].contains("another version"),
        "{}",
        lines[0]
    );
    assert!(!attached(topo.gw(), GW_CLIENT_IF) && !attached(topo.gw(), GW_BACKEND_IF));
    println!("{}", lines[0]);
}

/// The pinned LRU hash map `name` of the daemon whose maps are in
/// `pin_dir`.
fn pinned_lru<K: aya::Pod, V: aya::Pod>(
    pin_dir: &std::path::Path,
    name: &str,
) -> aya::maps::HashMap<aya::maps::MapData, K, V> {
    let map = aya::maps::MapData::from_pin(pin_dir.join(name)).expect("a pinned map");
    aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(map)).expect("an LRU hash map")
}

/// Lost state: an established connection whose CONNTRACK and AFFINITY
/// entries are deleted mid-session (as eviction, a restart without pins, or
/// another gateway taking over would leave it) keeps working both ways: the
/// client's packets are placed again (read-only, to the same backend), the
/// backend's reply is translated from config with no entry, and that reply
/// confirms the flow again.
#[test]
fn a_connection_whose_entries_are_deleted_keeps_working_both_ways() {
    use balancer_common::{
        addr::to_words,
        maps::{AFFINITY, CONNTRACK},
        types::{Affinity, AffinityKey, Flow, FlowKey, PROTO_TCP},
    };
    use balancer_tests::{ask, tcp_connect, xdp_fixture::Counters};

    require_root();
    let topo = Topology::new(&TopologyOpts::default());
    let bpffs = TempBpffs::new();
    let _tcp: Vec<_> = topo
        .backends()
        .iter()
        .map(|b| tcp_whoami(b.ns(), b.name(), 3000))
        .collect();
    let pin_dir = bpffs.pin_dir();
    let mut daemon = Daemon::start(topo.gw(), &config(&topo, &pin_dir), &pin_dir, &[]);
    daemon.wait_serving(topo.gw(), &bpffs.control_socket());

    let client = IpAddr::V4(topo.clients_v4()[3]);
    let vip = SocketAddr::new(IpAddr::V4(VIP_V4), WEB_PORT);
    let stream = tcp_connect(topo.client(), client, vip, TIMEOUT).expect("connect");
    let first = ask(&stream).expect("the first exchange");
    let (src, family) = to_words(client);
    let key = FlowKey {
        src,
        dst: to_words(vip.ip()).0,
        sport: first.local.port().to_be(),
        dport: WEB_PORT.to_be(),
        proto: PROTO_TCP,
        family,
        _pad: [0; 2],
    };
    let mut conntrack = pinned_lru::<FlowKey, Flow>(&pin_dir, CONNTRACK);
    let mut affinity = pinned_lru::<AffinityKey, Affinity>(&pin_dir, AFFINITY);
    let flow = conntrack.get(&key, 0).expect("the connection's entry");
    let theirs: Vec<AffinityKey> = affinity
        .keys()
        .map(Result::unwrap)
        .filter(|k| k.client == src)
        .collect();
    assert_eq!(theirs.len(), 1, "the client's one affinity entry");
    conntrack.remove(&key).unwrap();
    affinity.remove(&theirs[0]).unwrap();
    assert!(conntrack.get(&key, 0).is_err() && affinity.get(&theirs[0], 0).is_err());

    let before = Counters::read_pinned(&pin_dir);
    for i in 0..3 {
        let answer =
            ask(&stream).unwrap_or_else(|e| panic!("exchange {i} after the deletion: {e}"));
        assert_eq!(
            answer.backend, first.backend,
            "the same backend, the same connection"
        );
    }
    let grew = Counters::read_pinned(&pin_dir).since(&before);
    let grown = |name: &str| grew.iter().find(|(n, _)| *n == name).map_or(0, |(_, v)| *v);
    assert!(
        grown("forward_reply_without_flow") >= 1 && grown("flows_confirmed") == 1,
        "the backend's reply was translated with no entry and confirmed the flow: {grew:?}"
    );
    assert_eq!(
        grown("pass_reply_not_chosen") + grown("pass_reply_wrong_path"),
        0,
        "{grew:?}"
    );
    let again = conntrack
        .get(&key, 0)
        .expect("the entry, made again by the reply");
    assert_eq!(again.backend_id, flow.backend_id);
    assert_eq!(
        affinity
            .get(&theirs[0], 0)
            .expect("the affinity, made again")
            .backend_id,
        flow.backend_id
    );
    println!(
        "lost state: {client}:{} kept {} after its entries were deleted; counters {grew:?}",
        first.local.port(),
        first.backend
    );
    drop(stream);
}
