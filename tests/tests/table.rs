//! One table per backend set: the real daemon in the gateway namespace, four
//! whoami backends, real TCP clients. The same set reached by different
//! histories (in the config, by `backend add`, by a remove and re-add, by a
//! restart that adopts the pins) gives the same `table_fingerprint` and
//! sends new clients to the same backends; what a fresh build moves when a
//! backend joins is measured against the ideal, and clients with an
//! affinity entry do not move.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use balancer_common::{
    addr::from_words,
    maps,
    types::{Backend, Service, ServiceKey},
};
use balancer_tests::{
    TIMEOUT, Topology, TopologyOpts,
    bpffs::TempBpffs,
    daemon::{Daemon, backends_toml, cli_ok, config_head, status},
    require_root,
    servers::Server,
    tcp_ask,
    topology::VIP_V4,
};
use balancer_user::metrics::Snapshot;

const PORT: u16 = 3000;
const METRICS: &str = "127.0.0.1:9100";
const TABLE_SIZE: u32 = 1009;

struct Rig {
    topo: Topology,
    _servers: Vec<Server>,
}

impl Rig {
    fn new(clients: u8) -> Rig {
        require_root();
        let topo = Topology::new(&TopologyOpts {
            clients_v4: clients,
            backends: 4,
            ..TopologyOpts::default()
        });
        let servers = balancer_tests::servers::tcp_whoami_on(topo.backends(), PORT);
        Rig {
            topo,
            _servers: servers,
        }
    }

    /// `ADDR:PORT` of backend `name` (b1 .. b4).
    fn addr(&self, name: &str) -> String {
        self.topo.backend_addr(name, PORT)
    }

    /// A config for service `web` with the backends `names`, tcp checks.
    fn config(&self, bpffs: &TempBpffs, names: &[&str]) -> String {
        let backends = backends_toml(names.iter().map(|n| self.addr(n).parse().unwrap()));
        format!(
            "{head}\n[[services]]\nname = \"web\"\nvip = \"{VIP_V4}:80\"\naffinity = \"source-ip\"\n\
             table_size = {TABLE_SIZE}\n[services.health]\ncheck = \"tcp\"\ninterval = \"200ms\"\n\
             timeout = \"150ms\"\nrise = 2\nfall = 3\n{backends}",
            head = config_head(bpffs, METRICS),
        )
    }

    fn start(&self, bpffs: &TempBpffs, names: &[&str]) -> Daemon {
        let mut daemon = Daemon::start(
            self.topo.gw(),
            &self.config(bpffs, names),
            &bpffs.pin_dir(),
            &[],
        );
        daemon.wait_serving(self.topo.gw(), &bpffs.control_socket());
        daemon
    }

    fn cli_ok(&self, bpffs: &TempBpffs, args: &[&str]) -> String {
        cli_ok(self.topo.gw(), &bpffs.control_socket(), args)
    }

    /// Once exactly the backends `names` are listed, all up: the service's
    /// fingerprint.
    fn settled(&self, bpffs: &TempBpffs, names: &[&str]) -> String {
        let mut want: Vec<String> = names.iter().map(|n| self.addr(n)).collect();
        want.sort();
        let start = Instant::now();
        loop {
            let s: Snapshot = status(self.topo.gw(), &bpffs.control_socket());
            let svc = &s.services[0];
            let mut have: Vec<String> = svc.backends.iter().map(|b| b.address.clone()).collect();
            have.sort();
            if have == want && svc.backends.iter().all(|b| b.up) {
                let fp = svc.table_fingerprint.clone();
                assert_eq!(fp.len(), 16, "{fp:?}");
                assert!(fp.chars().all(|c| c.is_ascii_hexdigit()), "{fp:?}");
                return fp;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "backends {want:?} not all up: {svc:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The backend (name) each client's new connection reaches.
    fn backends_of(&self, clients: &[Ipv4Addr]) -> BTreeMap<Ipv4Addr, String> {
        let vip = SocketAddr::new(IpAddr::V4(VIP_V4), 80);
        clients
            .iter()
            .map(|&c| {
                let b = tcp_ask(self.topo.client(), c.into(), vip, TIMEOUT)
                    .unwrap_or_else(|e| panic!("{c}: connection to the VIP: {e}"))
                    .backend;
                (c, b)
            })
            .collect()
    }
}

/// The service's table as packets read it now, from the pinned maps: each
/// slot's backend as `ADDR:PORT`.
fn pinned_table(pin_dir: &Path) -> Vec<String> {
    use aya::maps::{Array, HashMap, Map, MapData};
    let open = |name: &str| MapData::from_pin(pin_dir.join(name)).unwrap();
    let services =
        HashMap::<_, ServiceKey, Service>::try_from(Map::HashMap(open(maps::SERVICES))).unwrap();
    let (_, service) = services.iter().next().unwrap().unwrap();
    let maglev = Array::<_, u32>::try_from(Map::Array(open(maps::MAGLEV))).unwrap();
    let backends = Array::<_, Backend>::try_from(Map::Array(open(maps::BACKENDS))).unwrap();
    let base = service.table_offset[service.active_table as usize];
    (base..base + service.table_size)
        .map(|i| {
            let b = backends.get(&maglev.get(&i, 0).unwrap(), 0).unwrap();
            SocketAddr::new(from_words(b.addr, b.family), u16::from_be(b.port)).to_string()
        })
        .collect()
}

#[test]
fn the_same_backend_set_gives_the_same_table_whatever_the_history() {
    let rig = Rig::new(40);
    let clients = rig.topo.clients_v4().to_vec();
    let (probe, later) = clients.split_at(30);

    // Gateway "2": started with {b1, b2, b3, b4} in its config.
    let first = TempBpffs::new();
    let daemon = rig.start(&first, &["b1", "b2", "b3", "b4"]);
    let fp = rig.settled(&first, &["b1", "b2", "b3", "b4"]);
    let table = pinned_table(&first.pin_dir());
    let picks = rig.backends_of(probe);
    let later_picks = rig.backends_of(later);
    assert_eq!(
        picks
            .values()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        4,
        "30 clients over 4 backends: {picks:?}"
    );
    let out = rig.cli_ok(&first, &["status"]);
    assert!(
        out.lines()
            .next()
            .unwrap()
            .ends_with(&format!("table {fp}")),
        "{out}"
    );
    rig.cli_ok(&first, &["detach"]);
    daemon.wait_exit(Duration::from_secs(5));
    drop(first);

    // Gateway "1": started with {b1, b2, b3} (fresh pins), then `backend
    // add` b4. No client connects before the add, so none has an affinity
    // entry that would hide what the table says.
    let second = TempBpffs::new();
    let mut daemon = rig.start(&second, &["b1", "b2", "b3"]);
    let three = rig.settled(&second, &["b1", "b2", "b3"]);
    assert_ne!(three, fp);
    rig.cli_ok(&second, &["backend", "add", "web", &rig.addr("b4")]);
    assert_eq!(
        rig.settled(&second, &["b1", "b2", "b3", "b4"]),
        fp,
        "config {{b1..b4}} and config {{b1,b2,b3}} + backend add b4"
    );
    assert_eq!(pinned_table(&second.pin_dir()), table, "slot by slot");
    assert_eq!(
        rig.backends_of(probe),
        picks,
        "new clients pick as on the other gateway"
    );
    println!("fingerprint {fp}: config {{b1..b4}} = {{b1,b2,b3}} + add b4; 30 of 30 clients alike");

    // Remove b2 and add it back (it is now last in the daemon's list).
    rig.cli_ok(&second, &["backend", "remove", "web", &rig.addr("b2")]);
    let without = rig.settled(&second, &["b1", "b3", "b4"]);
    assert_ne!(without, fp);
    rig.cli_ok(&second, &["backend", "add", "web", &rig.addr("b2")]);
    assert_eq!(
        rig.settled(&second, &["b1", "b2", "b3", "b4"]),
        fp,
        "b2 removed and added back"
    );

    // Drain is part of the set: draining b3 changes the table, undrain
    // gives the original back.
    rig.cli_ok(&second, &["backend", "drain", "web", &rig.addr("b3")]);
    let drained = status(rig.topo.gw(), &second.control_socket()).services[0]
        .table_fingerprint
        .clone();
    assert!(!pinned_table(&second.pin_dir()).contains(&rig.addr("b3")));
    assert_ne!(drained, fp);
    rig.cli_ok(&second, &["backend", "undrain", "web", &rig.addr("b3")]);
    assert_eq!(rig.settled(&second, &["b1", "b2", "b3", "b4"]), fp);

    // A restart with the {b1, b2, b3} config adopts the pins (b4 was added
    // at runtime and stays): the same set, the same table.
    assert!(daemon.stop().success());
    daemon = rig.start(&second, &["b1", "b2", "b3"]);
    assert_eq!(
        rig.settled(&second, &["b1", "b2", "b3", "b4"]),
        fp,
        "after a restart that adopted the pins"
    );
    assert_eq!(pinned_table(&second.pin_dir()), table);
    assert_eq!(
        rig.backends_of(later),
        later_picks,
        "clients new to this gateway pick as on the other one"
    );
    drop(daemon);
}

/// One backend joins three: a fresh build moves its share of the slots and
/// a little more; clients that have an affinity entry stay where they are
/// whatever moved, and new clients follow the table.
#[test]
fn a_joining_backend_moves_no_known_client_and_about_its_share_of_slots() {
    let rig = Rig::new(60);
    let clients = rig.topo.clients_v4().to_vec();
    let (known, fresh) = clients.split_at(40);
    let bpffs = TempBpffs::new();
    let daemon = rig.start(&bpffs, &["b1", "b2", "b3"]);
    rig.settled(&bpffs, &["b1", "b2", "b3"]);
    let before = pinned_table(&bpffs.pin_dir());
    let picks = rig.backends_of(known);

    rig.cli_ok(&bpffs, &["backend", "add", "web", &rig.addr("b4")]);
    rig.settled(&bpffs, &["b1", "b2", "b3", "b4"]);
    let after = pinned_table(&bpffs.pin_dir());
    let b4 = rig.addr("b4");
    let m = f64::from(TABLE_SIZE);
    let moved = before.iter().zip(&after).filter(|(x, y)| x != y).count() as f64 / m;
    let taken = after.iter().filter(|b| **b == b4).count() as f64 / m;
    let ideal = 0.25;
    println!(
        "b4 joins b1..b3 ({TABLE_SIZE} slots): a fresh build moves {moved:.4} of the slots, b4 takes \
         {taken:.4}, ideal 1/4 = {ideal:.4} ({:.2}x)",
        moved / ideal
    );
    assert!((taken - ideal).abs() < 0.02, "b4's share {taken:.4}");
    assert!(moved >= taken && moved < ideal * 1.15, "moved {moved:.4}");

    // Known clients whose slot now names another backend: affinity keeps
    // them (the kernel reads it before the table).
    let mut slot_moved = 0;
    for c in known {
        let v: serde_json::Value =
            serde_json::from_str(&rig.cli_ok(&bpffs, &["lookup", "web", &c.to_string(), "--json"]))
                .unwrap();
        assert_eq!(v["via"], "affinity", "{c}: {v}");
        let slot = v["slot"].as_u64().unwrap() as usize;
        slot_moved += usize::from(before[slot] != after[slot]);
    }
    assert_eq!(
        rig.backends_of(known),
        picks,
        "a client with an affinity entry moved"
    );
    let on_b4 = rig
        .backends_of(fresh)
        .values()
        .filter(|b| *b == "b4")
        .count();
    assert!(on_b4 > 0, "no new client reached b4");
    println!(
        "{} known clients: {slot_moved} hash to a slot that moved, 0 moved (affinity); {on_b4} of {} \
         new clients on b4",
        known.len(),
        fresh.len()
    );
    drop(daemon);
}
