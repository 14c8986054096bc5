//! Several gateways behind a router that spreads connections over them by
//! ECMP, as a ToR router does for a VIP that BGP learned from each gateway
//! (DESIGN.md, "Beyond one gateway"):
//!
//! ```text
//!  client ns            router ns                  lan ns           gateway ns g1, g2, ...          bsw ns             backend ns b1, b2, ...
//!  eth0 ══════ cl [BIRD, ECMP] lan ══ r ─ br0 ─ gN ══ gwc [BIRD + balancer] gwb ══ gN ─ br0 ─ bN ══ eth0
//!  198.18.0.1-N/24   198.18.0.254       198.18.2.1/24       198.18.2.(10+N)/24   198.18.1.(1+N)/24         198.18.1.(10+N)/24
//! ```
//!
//! Each gateway runs BIRD with the shipped `deploy/bird/gateway.conf` (its
//! router id set to its address) and the real balancer daemon with
//! `[announce] interface = "lo"`; the router runs `deploy/bird/router.conf`
//! as shipped, with L4 multipath hashing. The gateways share L2 segments
//! with the router and with the backends (bridges), so a gateway that dies
//! leaves every other link up: the router notices through BGP's hold timer,
//! the backends through neighbour reachability (their default route is
//! ECMP over every gateway, `fib_multipath_use_neigh` skips a dead one).
//!
//! The router records the next hop of every client SYN it forwards (an
//! nftables set of gateway . client . port), so a test can tell which
//! gateway carried each connection. Dropping the rig kills every BIRD and
//! balancer and deletes the namespaces.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    bpffs::TempBpffs,
    daemon::{self, Daemon, backends_toml, config_head},
    netns::{NetNs, random_suffix},
    topology::{BACKEND_IF, BRIDGE, CLIENT_IF, GW_BACKEND_IF, GW_CLIENT_IF},
};

/// The VIP the gateways announce: outside the clients' /24, so clients
/// reach it through the router.
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 10, 100);
pub const ROUTER_LAN: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
pub const ROUTER_CLIENTS: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
/// The router's interfaces: towards the clients, and on the gateways' LAN.
const ROUTER_CLIENT_IF: &str = "cl";
const ROUTER_LAN_IF: &str = "lan";
/// The router's port on the LAN bridge.
const LAN_ROUTER_PORT: &str = "r";
/// Where the gateways' metrics listen (each in its own namespace).
pub const METRICS: &str = "127.0.0.1:9100";
/// How long BGP takes at most to install or withdraw a route here.
const CONVERGE: Duration = Duration::from_secs(30);

/// A gateway's address on the router's LAN: 198.18.2.(10+n).
pub fn gateway_lan(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 2, 10 + n as u8)
}

/// Where gateway `n`'s cluster links listen: its LAN address.
pub fn cluster_listen(n: usize) -> SocketAddr {
    SocketAddr::new(gateway_lan(n).into(), 7946)
}

/// The rig's shared cluster key.
const CLUSTER_KEY: &str = "the rig's cluster key, more than 32 bytes long";

/// How [`Cluster::add_gateway_with`] configures a gateway.
#[derive(Clone, Copy, Debug, Default)]
pub struct GatewayOpts {
    /// List only the first this many backends (all when `None`).
    pub listed: Option<usize>,
    /// With a `[cluster]` section linking gateways 1..=`peers`; none when 0.
    pub peers: usize,
}

/// A gateway's address on the backends' segment: 198.18.1.(1+n).
pub fn gateway_backend_side(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, 1 + n as u8)
}

/// The repository's `deploy/bird/NAME`. Without `..`: the `--vm` guest
/// holds the repository's `deploy` but not this crate's directory.
pub fn bird_config(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .join("deploy/bird")
        .join(name)
}

/// A `bird -f` in a namespace, with its control socket; killed on drop.
pub struct Bird {
    child: Child,
    dir: PathBuf,
}

impl Bird {
    /// Start BIRD in `ns` with config text `config`; its log goes to
    /// `bird.log` in its temp dir.
    pub fn start(ns: &NetNs, config: &str) -> Bird {
        let dir = std::env::temp_dir().join(format!("lbt-bird-{}", random_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("bird.conf");
        std::fs::write(&conf, config).unwrap();
        let log = std::fs::File::create(dir.join("bird.log")).unwrap();
        let child = ns
            .command(
                "bird",
                [
                    "-f",
                    "-c",
                    conf.to_str().unwrap(),
                    "-s",
                    dir.join("bird.ctl").to_str().unwrap(),
                    "-P",
                    dir.join("bird.pid").to_str().unwrap(),
                ],
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn bird (Debian's bird2: `cargo xtask test` installs it)");
        Bird { child, dir }
    }

    /// `birdc show protocols`, for failure messages.
    pub fn protocols(&self, ns: &NetNs) -> String {
        let out = ns
            .command(
                "birdc",
                [
                    "-s",
                    self.dir.join("bird.ctl").to_str().unwrap(),
                    "show",
                    "protocols",
                ],
            )
            .output()
            .expect("run birdc");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// SIGKILL: no BGP notification is sent.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One gateway: BIRD and the balancer in their namespace. Fields drop in
/// order: the daemon and BIRD stop before the bpffs and the namespace go.
pub struct Gateway {
    pub n: usize,
    pub daemon: Option<Daemon>,
    /// The balancer's config, for a restart.
    config: String,
    pub bird: Bird,
    pub bpffs: TempBpffs,
    state_dir: TempDir,
    pub ns: NetNs,
}

impl Gateway {
    pub fn socket(&self) -> PathBuf {
        self.bpffs.control_socket()
    }

    /// `balancer ARGS --socket ...` in this gateway, which must succeed.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        daemon::cli_ok(&self.ns, &self.socket(), args)
    }

    /// Stop the daemon with SIGTERM and start it again with the same
    /// config; returns once it serves.
    pub fn restart_daemon(&mut self) {
        let status = self.daemon.take().expect("a running daemon").stop();
        assert!(
            status.success(),
            "g{}: balancer run exited with {status}",
            self.n
        );
        let mut daemon = Daemon::start(&self.ns, &self.config, &self.bpffs.pin_dir(), &[]);
        daemon.wait_serving(&self.ns, &self.socket());
        self.daemon = Some(daemon);
    }

    /// A silent death: its links go down (the switches' ports stay up, so
    /// neither the router nor the backends see a carrier change), then BIRD
    /// and the balancer are killed without a word.
    pub fn die(&mut self) {
        self.ns.ip(["link", "set", GW_CLIENT_IF, "down"]);
        self.ns.ip(["link", "set", GW_BACKEND_IF, "down"]);
        self.bird.kill();
        if let Some(d) = self.daemon.take() {
            d.kill9();
        }
    }

    /// Where the daemon remembers `cluster leave`.
    pub fn state_file(&self) -> PathBuf {
        self.state_dir.0.join("announce.state")
    }

    /// Is the VIP an address on this gateway's `lo`?
    pub fn has_vip(&self) -> bool {
        let out = self.ns.ip(["-4", "-o", "addr", "show", "dev", "lo"]);
        String::from_utf8_lossy(&out.stdout).contains(&format!(" {VIP}/32 "))
    }
}

/// A temp dir removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A backend host on the backends' segment.
pub struct ClusterBackend {
    pub name: String,
    pub addr: Ipv4Addr,
    pub ns: NetNs,
}

/// The rig; see the module doc.
pub struct Cluster {
    /// Declared first: they stop before anything they use goes.
    pub gateways: Vec<Gateway>,
    pub router_bird: Bird,
    pub backends: Vec<ClusterBackend>,
    pub clients: Vec<Ipv4Addr>,
    pub client: NetNs,
    pub router: NetNs,
    lan: NetNs,
    bsw: NetNs,
}

impl Cluster {
    /// The namespaces, the router's BIRD and `backends` backend hosts;
    /// [`Cluster::add_gateway`] adds gateways.
    pub fn new(clients: u8, backends: usize) -> Cluster {
        let suffix = random_suffix();
        let client = NetNs::with_suffix("client", &suffix);
        let router = NetNs::with_suffix("router", &suffix);
        let lan = NetNs::with_suffix("lan", &suffix);
        let bsw = NetNs::with_suffix("bsw", &suffix);
        for ns in [&lan, &bsw] {
            // Pure L2; STP off and no forward delay: ports forward at once.
            ns.sysctl(&[("net.ipv6.conf.all.disable_ipv6", "1")]);
            ns.ip_batch(&[format!(
                "link add {BRIDGE} type bridge stp_state 0 forward_delay 0 mcast_snooping 0"
            )]);
        }
        router.sysctl(&[
            ("net.ipv4.ip_forward", "1"),
            // ECMP by the L4 hash: one client's connections spread.
            ("net.ipv4.fib_multipath_hash_policy", "1"),
        ]);
        veth(&router, ROUTER_LAN_IF, &lan, LAN_ROUTER_PORT);
        veth(&client, CLIENT_IF, &router, ROUTER_CLIENT_IF);
        // Full checksums from the hosts whose packets XDP may redirect.
        client.exec("ethtool", ["-K", CLIENT_IF, "tx", "off"]);
        router.exec("ethtool", ["-K", ROUTER_LAN_IF, "tx", "off"]);
        lan.ip_batch(&[
            format!("link set {LAN_ROUTER_PORT} master {BRIDGE}"),
            format!("link set {LAN_ROUTER_PORT} up"),
            format!("link set {BRIDGE} up"),
        ]);
        bsw.ip_batch(&[format!("link set {BRIDGE} up")]);
        router.ip_batch(&[
            format!("addr add {ROUTER_CLIENTS}/24 dev {ROUTER_CLIENT_IF}"),
            format!("addr add {ROUTER_LAN}/24 dev {ROUTER_LAN_IF}"),
            format!("link set {ROUTER_CLIENT_IF} up"),
            format!("link set {ROUTER_LAN_IF} up"),
        ]);
        let clients: Vec<Ipv4Addr> = (1..=clients)
            .map(|i| Ipv4Addr::new(198, 18, 0, i))
            .collect();
        let mut lines: Vec<String> = clients
            .iter()
            .map(|a| format!("addr add {a}/24 dev {CLIENT_IF}"))
            .collect();
        lines.extend([
            format!("link set {CLIENT_IF} up"),
            format!("route add default via {ROUTER_CLIENTS}"),
        ]);
        client.ip_batch(&lines);
        router.exec(
            "nft",
            [
                "add table ip rig; \
                 add set ip rig syns { type ipv4_addr . ipv4_addr . inet_service; size 65535; flags dynamic; }; \
                 add chain ip rig forward { type filter hook forward priority 0; policy accept; }; \
                 add rule ip rig forward tcp flags & (syn | ack) == syn add @syns { rt ip nexthop . ip saddr . tcp sport }",
            ],
        );
        let router_conf = std::fs::read_to_string(bird_config("router.conf")).unwrap();
        let router_bird = Bird::start(&router, &router_conf);
        client.wait_ready(CLIENT_IF);
        router.wait_ready(ROUTER_LAN_IF);

        let mut cluster = Cluster {
            gateways: Vec::new(),
            router_bird,
            backends: Vec::new(),
            clients,
            client,
            router,
            lan,
            bsw,
        };
        for _ in 0..backends {
            cluster.add_backend();
        }
        cluster
    }

    /// `count` more client addresses after the last (198.18.0.N/24), with
    /// no history at the gateways: no affinity entry yet.
    pub fn add_clients(&mut self, count: u8) -> Vec<Ipv4Addr> {
        let first = self.clients.len() as u8 + 1;
        let added: Vec<Ipv4Addr> = (first..first + count)
            .map(|i| Ipv4Addr::new(198, 18, 0, i))
            .collect();
        let lines: Vec<String> = added
            .iter()
            .map(|a| format!("addr add {a}/24 dev {CLIENT_IF}"))
            .collect();
        self.client.ip_batch(&lines);
        self.clients.extend(&added);
        added
    }

    /// Backend `bN` at 198.18.1.(10+N), its default route ECMP over the
    /// gateways' backend-side addresses of `gateways` (1..=count).
    fn add_backend(&mut self) {
        let n = self.backends.len() + 1;
        let name = format!("b{n}");
        let addr = Ipv4Addr::new(198, 18, 1, 10 + n as u8);
        let ns = NetNs::with_suffix(&name, &self.suffix());
        veth(&ns, BACKEND_IF, &self.bsw, &name);
        // A gateway whose neighbour entry failed is left out of the ECMP
        // default route: how a backend stops sending replies to a dead
        // gateway. Short neighbour timers (per interface: a namespace has
        // no `default` set) make that seconds.
        ns.sysctl(&[
            ("net.ipv4.fib_multipath_hash_policy", "1"),
            ("net.ipv4.fib_multipath_use_neigh", "1"),
            ("net.ipv4.neigh.eth0.base_reachable_time_ms", "1000"),
            ("net.ipv4.neigh.eth0.delay_first_probe_time", "1"),
            ("net.ipv4.neigh.eth0.retrans_time_ms", "300"),
        ]);
        self.bsw.exec("ethtool", ["-K", &name, "gro", "on"]);
        ns.exec("ethtool", ["-K", BACKEND_IF, "tx", "off"]);
        self.bsw.ip_batch(&[
            format!("link set {name} master {BRIDGE}"),
            format!("link set {name} up"),
        ]);
        ns.ip_batch(&[
            format!("addr add {addr}/24 dev {BACKEND_IF}"),
            format!("link set {BACKEND_IF} up"),
        ]);
        ns.wait_ready(BACKEND_IF);
        self.backends.push(ClusterBackend { name, addr, ns });
    }

    /// Every backend's default route: ECMP over the first `count` gateways.
    pub fn route_backends_over(&self, count: usize) {
        let hops: String = (1..=count)
            .map(|g| format!(" nexthop via {}", gateway_backend_side(g)))
            .collect();
        for b in &self.backends {
            b.ns.ip_batch(&[format!("route replace default{hops}")]);
        }
    }

    fn suffix(&self) -> String {
        self.client
            .name()
            .rsplit('-')
            .next()
            .expect("names end in the suffix")
            .to_owned()
    }

    /// Gateway `g<N>`: its links, BIRD with the shipped gateway config, and
    /// the balancer with `service` (a `[[services]]` block; the backends
    /// are appended) and `[announce] interface = "lo"`. Returns once the
    /// daemon serves its control socket.
    pub fn add_gateway(&mut self, service: &str, port: u16) -> &Gateway {
        self.add_gateway_with(service, port, &GatewayOpts::default())
    }

    /// [`Cluster::add_gateway`], with only some backends in the config or
    /// a `[cluster]` section.
    pub fn add_gateway_with(&mut self, service: &str, port: u16, opts: &GatewayOpts) -> &Gateway {
        let n = self.gateways.len() + 1;
        let ns = NetNs::with_suffix(&format!("g{n}"), &self.suffix());
        ns.sysctl(&[("net.ipv4.ip_forward", "1")]);
        let port_name = format!("g{n}");
        veth(&ns, GW_BACKEND_IF, &self.bsw, &port_name);
        veth(&ns, GW_CLIENT_IF, &self.lan, &port_name);
        // veth quirk (DESIGN.md): a frame XDP-redirected into a veth
        // reaches the other end only if that end has NAPI. And a veth
        // hands XDP every frame, where a NIC's filter drops those for
        // other MACs: no unknown unicast to a gateway's port, or a
        // switch that forgot a dead gateway's MAC would flood its frames
        // to the live ones, which would carry them and hide the death.
        // Each gateway's MAC stays known: it talks BGP and checks health
        // every second on both segments.
        for sw in [&self.lan, &self.bsw] {
            sw.exec("ethtool", ["-K", &port_name, "gro", "on"]);
            sw.ip_batch(&[
                format!("link set {port_name} master {BRIDGE}"),
                format!("link set {port_name} type bridge_slave flood off"),
                format!("link set {port_name} up"),
            ]);
        }
        ns.ip_batch(&[
            format!("addr add {}/24 dev {GW_CLIENT_IF}", gateway_lan(n)),
            format!(
                "addr add {}/24 dev {GW_BACKEND_IF}",
                gateway_backend_side(n)
            ),
            format!("link set {GW_CLIENT_IF} up"),
            format!("link set {GW_BACKEND_IF} up"),
            format!("route add default via {ROUTER_LAN}"),
        ]);
        ns.wait_ready(GW_CLIENT_IF);
        ns.wait_ready(GW_BACKEND_IF);

        let bird = Bird::start(&ns, &gateway_bird_config(n));
        let bpffs = TempBpffs::new();
        let state_dir =
            TempDir(std::env::temp_dir().join(format!("lbt-state-{}", random_suffix())));
        let backends = backends_toml(
            self.backends
                .iter()
                .take(opts.listed.unwrap_or(usize::MAX))
                .map(|b| SocketAddr::new(b.addr.into(), port)),
        );
        let cluster = if opts.peers == 0 {
            String::new()
        } else {
            std::fs::create_dir_all(&state_dir.0).unwrap();
            let key = state_dir.0.join("cluster.key");
            std::fs::write(&key, CLUSTER_KEY).unwrap();
            std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
            let peers: Vec<String> = (1..=opts.peers)
                .map(|g| format!("\"{}\"", cluster_listen(g)))
                .collect();
            format!(
                "[cluster]\npeers = [{}]\nlisten = \"{}\"\nsecret_file = \"{}\"\n",
                peers.join(", "),
                cluster_listen(n),
                key.display()
            )
        };
        let config = format!(
            "{head}[announce]\ninterface = \"lo\"\nstate_file = \"{state}\"\n{cluster}{service}\n{backends}",
            head = config_head(&bpffs, METRICS),
            state = state_dir.0.join("announce.state").display(),
        );
        let mut daemon = Daemon::start(&ns, &config, &bpffs.pin_dir(), &[]);
        daemon.wait_serving(&ns, &bpffs.control_socket());
        self.gateways.push(Gateway {
            n,
            daemon: Some(daemon),
            config,
            bird,
            bpffs,
            state_dir,
            ns,
        });
        self.gateways.last().expect("just pushed")
    }

    /// The router's next hops for the VIP now (none while unrouted).
    pub fn vip_next_hops(&self) -> BTreeSet<Ipv4Addr> {
        let out = self
            .router
            .ip(["-4", "route", "show", &format!("{VIP}/32")]);
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "via")
            .filter_map(|w| w[1].parse().ok())
            .collect()
    }

    /// Wait until the router routes the VIP over exactly the gateways
    /// `want` (by number); how long it took.
    pub fn wait_next_hops(&self, want: &[usize]) -> Duration {
        let want: BTreeSet<Ipv4Addr> = want.iter().map(|&g| gateway_lan(g)).collect();
        let start = Instant::now();
        loop {
            if self.vip_next_hops() == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < CONVERGE,
                "the router's route to {VIP} is over {:?}, not {want:?}, after {CONVERGE:?}; router BIRD:\n{}",
                self.vip_next_hops(),
                self.router_bird.protocols(&self.router)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The gateway (number) that carried each client connection, by the
    /// router's record of the SYNs it forwarded: (client, port) -> gateway
    /// (the last, for a SYN retransmitted to another gateway).
    pub fn connections(&self) -> BTreeMap<(Ipv4Addr, u16), usize> {
        self.syns()
            .into_iter()
            .map(|(g, client, port)| ((client, port), g))
            .collect()
    }

    /// Every (gateway, client, port) the router forwarded a SYN for: a
    /// connection whose SYN was retransmitted after the route changed
    /// shows once per gateway.
    pub fn syns(&self) -> BTreeSet<(usize, Ipv4Addr, u16)> {
        let out = self
            .router
            .exec("nft", ["-j", "list", "set", "ip", "rig", "syns"]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("nft -j");
        let gateway = |hop: Ipv4Addr| {
            self.gateways
                .iter()
                .find(|g| gateway_lan(g.n) == hop)
                .map(|g| g.n)
        };
        let mut found = BTreeSet::new();
        for item in json["nftables"].as_array().into_iter().flatten() {
            let elems = item["set"]["elem"].as_array().into_iter().flatten();
            for e in elems {
                // An element is {"concat": [hop, client, port]}, or wrapped
                // in {"elem": {"val": ...}} with timeouts.
                let concat = e["concat"]
                    .as_array()
                    .or_else(|| e["elem"]["val"]["concat"].as_array());
                let Some(c) = concat else { continue };
                let (Some(hop), Some(client), Some(port)) =
                    (c[0].as_str(), c[1].as_str(), c[2].as_u64())
                else {
                    continue;
                };
                if let (Ok(hop), Ok(client)) = (hop.parse(), client.parse())
                    && let Some(g) = gateway(hop)
                {
                    found.insert((g, client, port as u16));
                }
            }
        }
        found
    }
}

/// The shipped gateway config with gateway `n`'s router id.
pub fn gateway_bird_config(n: usize) -> String {
    let shipped = std::fs::read_to_string(bird_config("gateway.conf")).unwrap();
    let id = format!("router id {};", gateway_lan(1));
    assert!(
        shipped.contains(&id),
        "deploy/bird/gateway.conf no longer says `{id}`: the rig sets each gateway's id there"
    );
    shipped.replace(&id, &format!("router id {};", gateway_lan(n)))
}

/// A veth pair with `name` in `ns` and `peer` in `peer_ns`.
fn veth(ns: &NetNs, name: &str, peer_ns: &NetNs, peer: &str) {
    let netns = peer_ns.name();
    ns.ip(format!("link add {name} type veth peer name {peer} netns {netns}").split(' '));
}

/// Is `bird` on PATH? The suite fails (never skips) without it.
pub fn require_bird() {
    let found = Command::new("sh")
        .args(["-c", "command -v bird && command -v birdc"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "no bird/birdc on PATH: `cargo xtask test` installs Debian's bird2 (apt-get install bird2)"
    );
}
