//! The bench's network: the test harness's gateway topology (client
//! namespace → gateway → switch → three backends), plus
//!
//! - three client hosts for wrk, each its own namespace and address on a
//!   macvlan of the client namespace's `eth0` (wrk cannot bind a source
//!   address, and source-ip balancing needs several sources: the design's
//!   "3 client namespaces × 16 connections");
//! - nginx on every backend, answering `GET /` with a short static body;
//! - sinks for the per-packet traffic (port [`SINK_PORT`]): the backends
//!   and the client namespace drop it before their TCP stacks could answer,
//!   so each per-packet phase sends exactly one kind of packet through the
//!   gateway.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Result;
use balancer_tests::{
    NetNs, Topology, TopologyOpts,
    netns::random_suffix,
    topology::{CLIENT_IF, GW_CLIENT_IF, GW_CLIENT_V4, VIP_V4},
};

use crate::proc::Server;

/// The HTTP service's port, on the VIP and on the backends.
pub const HTTP_PORT: u16 = 80;
/// The per-packet traffic's port (VIP and backends), dropped by the sinks.
pub const SINK_PORT: u16 = 9999;
/// Never-seen clients whose flows the per-packet traffic confirms: the
/// gateway routes them to the client namespace (whose sink drops the
/// frames), so the confirming reply finds a next hop in the FIB, as a real
/// client's would. Inside the harness's 198.18.0.0/15, used by nothing else.
pub const CONFIRM_CLIENTS: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 128, 0), 17);
/// Client hosts for wrk: 198.18.0.51, .52, .53.
pub const CLIENT_HOSTS: u8 = 3;
/// Addresses on the client namespace's eth0 (198.18.0.1..=N): sources of
/// the per-packet traffic's established flows.
pub const CLIENT_ADDRS: u8 = 64;

pub struct Testbed {
    pub topo: Topology,
    pub hosts: Vec<NetNs>,
    pub dir: WorkDir,
    _nginx: Vec<Server>,
}

/// Configs and logs of one run, removed at the end.
pub struct WorkDir(PathBuf);

impl WorkDir {
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Per-namespace sysctls for hosts that open many short connections: the
/// whole ephemeral range, and TIME_WAIT ports reused for new connections.
const MANY_CONNECTIONS: [(&str, &str); 4] = [
    ("net.ipv4.ip_local_port_range", "1024 65535"),
    ("net.ipv4.tcp_tw_reuse", "1"),
    ("net.core.somaxconn", "65535"),
    ("net.ipv4.tcp_max_syn_backlog", "65535"),
];

impl Testbed {
    pub fn new() -> Result<Testbed> {
        let topo = Topology::new(&TopologyOpts {
            clients_v4: CLIENT_ADDRS,
            extra_nets: vec![],
            clients_per_extra_net: 0,
            // The topology's client IPv6 default route needs one on-link address.
            clients_v6: 1,
            backends: 3,
            vips: vec![VIP_V4.into()],
        });
        let dir = WorkDir(std::env::temp_dir().join(format!("lbbench-{}", random_suffix())));
        std::fs::create_dir_all(&dir.0)?;
        topo.gw().sysctl(&MANY_CONNECTIONS);

        let hosts = (1..=CLIENT_HOSTS).map(|i| client_host(&topo, i)).collect();

        sink(topo.client(), "tcp sport 9999 drop", &dir)?;
        let (net, len) = CONFIRM_CLIENTS;
        let router = Ipv4Addr::new(198, 18, 0, 1);
        topo.gw().ip_batch(&[format!(
            "route add {net}/{len} via {router} dev {GW_CLIENT_IF}"
        )]);
        // The gateway's neighbour entry for that router, before any reply
        // needs it.
        topo.gw().exec("ping", ["-c1", "-W1", &router.to_string()]);
        let mut nginx = Vec::new();
        for b in topo.backends() {
            b.ns().sysctl(&MANY_CONNECTIONS);
            sink(b.ns(), "tcp dport 9999 drop", &dir)?;
            nginx.push(backend_nginx(b.ns(), b.name(), &dir)?);
        }
        let mut bed = Testbed {
            topo,
            hosts,
            dir,
            _nginx: nginx,
        };
        bed.wait_backends()?;
        Ok(bed)
    }

    /// Each backend's HTTP address.
    pub fn backend_http(&self) -> Vec<SocketAddr> {
        self.topo
            .backends()
            .iter()
            .map(|b| SocketAddr::new(b.v4().into(), HTTP_PORT))
            .collect()
    }

    /// Wait until every backend's nginx answers (straight from the gateway).
    fn wait_backends(&mut self) -> Result<()> {
        for addr in self.backend_http() {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while balancer_tests::http::get(self.topo.gw(), addr, "/").is_err() {
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "nginx on {addr} does not answer"
                );
                for n in &mut self._nginx {
                    n.check_running()?;
                }
                crate::stop::sleep(Duration::from_millis(50))?;
            }
        }
        Ok(())
    }
}

/// Client host `c<i>`'s address (`i` from 1).
pub fn client_host_addr(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 50 + i)
}

/// Client host `c<i>`: a macvlan of the client namespace's eth0 moved into
/// its own namespace, [`client_host_addr`]/24, default route via the gateway.
fn client_host(topo: &Topology, i: u8) -> NetNs {
    let ns = NetNs::with_suffix(&format!("c{i}"), topo.suffix());
    let addr = client_host_addr(i);
    let dev = format!("mv{i}");
    topo.client().ip_batch(&[
        format!("link add {dev} link {CLIENT_IF} type macvlan mode bridge"),
        format!("link set {dev} netns {}", ns.name()),
    ]);
    ns.ip_batch(&[
        format!("addr add {addr}/24 dev {dev}"),
        format!("link set {dev} up"),
        format!("route add default via {GW_CLIENT_V4}"),
    ]);
    ns.sysctl(&MANY_CONNECTIONS);
    ns.wait_ready(&dev);
    ns
}

/// An nftables rule at the very start of `ns`'s receive path.
fn sink(ns: &NetNs, rule: &str, dir: &WorkDir) -> Result<()> {
    let script = format!(
        "table inet lbbench {{\n chain pre {{\n type filter hook prerouting priority -300; policy accept;\n {rule}\n }}\n}}\n"
    );
    nft(ns, dir, &script)
}

/// Load an nftables script into `ns` (`nft -f`: the command line takes
/// only single commands).
pub fn nft(ns: &NetNs, dir: &WorkDir, script: &str) -> Result<()> {
    let path = dir.path(&format!("nft-{}.conf", ns.name()));
    std::fs::write(&path, script)?;
    ns.exec("nft", ["-f", path.to_str().unwrap()]);
    Ok(())
}

/// nginx in a backend: one worker, no logging, `GET /` answered from memory
/// with the backend's name (`b1\n`: as short as any body), so a probe
/// can tell which backend a gateway sent it to.
fn backend_nginx(ns: &NetNs, name: &str, dir: &WorkDir) -> Result<Server> {
    let conf = dir.path(&format!("{name}-nginx.conf"));
    std::fs::write(&conf, backend_conf(name, &dir.0))?;
    let log = dir.path(&format!("{name}-nginx.log"));
    let mut server = Server::spawn(
        ns,
        &format!("nginx on {name}"),
        "nginx",
        &["-e", "stderr", "-c", conf.to_str().unwrap()],
        &log,
    )?;
    std::thread::sleep(Duration::from_millis(20));
    server.check_running()?;
    Ok(server)
}

fn backend_conf(name: &str, dir: &Path) -> String {
    let d = dir.display();
    format!(
        "worker_processes 1;\ndaemon off;\npid {d}/{name}-nginx.pid;\nerror_log stderr warn;\n\
         events {{ worker_connections 8192; multi_accept on; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 10000000;\n  client_body_temp_path {d}/{name}-body;\n\
         \x20 server {{ listen {HTTP_PORT} reuseport backlog=65535; location / {{ return 200 \"{name}\\n\"; }} }}\n}}\n"
    )
}
