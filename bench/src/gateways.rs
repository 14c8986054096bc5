//! What the gateway runs, one at a time: this balancer (XDP or TC mode),
//! the peers users pick today (nftables DNAT, HAProxy, nginx stream), plain
//! routing as the reference, and the floor programs. Each `start` installs
//! and configures its gateway; dropping the returned guard removes it.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result};
use balancer_tests::{
    NetNs,
    bpffs::TempBpffs,
    daemon::{Daemon, backends_toml},
    topology::{GW_BACKEND_IF, GW_CLIENT_IF, VIP_V4},
};

use crate::{
    bpf::{self, Hook},
    proc::Server,
    progs,
    testbed::{self, HTTP_PORT, SINK_PORT, Testbed},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gateway {
    /// Routing only: each client host talks to one backend's own address.
    Forward,
    Balancer(Hook),
    Nftables,
    /// nftables with the floor program on both gateway interfaces: what
    /// merely having XDP on these veths costs, apart from any program.
    NftablesUnderFloor,
    Haproxy,
    NginxStream,
}

impl Gateway {
    pub const ALL: [Gateway; 7] = [
        Gateway::Forward,
        Gateway::Balancer(Hook::Xdp),
        Gateway::Balancer(Hook::Tc),
        Gateway::Nftables,
        Gateway::NftablesUnderFloor,
        Gateway::Haproxy,
        Gateway::NginxStream,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Gateway::Forward => "plain forwarding (no balancing)",
            Gateway::Balancer(Hook::Xdp) => "balancer, XDP",
            Gateway::Balancer(Hook::Tc) => "balancer, TC",
            Gateway::Nftables => "nftables DNAT `jhash ip saddr`",
            Gateway::NftablesUnderFloor => "nftables DNAT, XDP_PASS floor on gwc and gwb",
            Gateway::Haproxy => "HAProxy `balance source` (TCP)",
            Gateway::NginxStream => "nginx stream `hash $remote_addr consistent`",
        }
    }

    /// Short name for the chart.
    pub fn short(self) -> &'static str {
        match self {
            Gateway::Forward => "forwarding",
            Gateway::Balancer(Hook::Xdp) => "balancer XDP",
            Gateway::Balancer(Hook::Tc) => "balancer TC",
            Gateway::Nftables => "nftables",
            Gateway::NftablesUnderFloor => "nftables + XDP floor",
            Gateway::Haproxy => "HAProxy",
            Gateway::NginxStream => "nginx stream",
        }
    }

    pub fn is_peer(self) -> bool {
        matches!(
            self,
            Gateway::Nftables | Gateway::Haproxy | Gateway::NginxStream
        )
    }

    /// Set the gateway up; the guard tears it down.
    pub fn start(self, bed: &Testbed) -> Result<Running> {
        let vip = SocketAddr::new(VIP_V4.into(), HTTP_PORT);
        let mut running = Running {
            targets: vec![vip; bed.hosts.len()],
            note: None,
            guard: Guard::None,
        };
        let gw = bed.topo.gw();
        match self {
            Gateway::Forward => {
                let backends = bed.backend_http();
                running.targets = (0..bed.hosts.len())
                    .map(|i| backends[i % backends.len()])
                    .collect();
            }
            Gateway::Balancer(hook) => {
                let balancer = Balancer::start(bed, hook)?;
                running.note = balancer.mode_note.clone();
                running.guard = Guard::Balancer(Box::new(balancer));
            }
            Gateway::Nftables | Gateway::NftablesUnderFloor => {
                testbed::nft(gw, &bed.dir, &nft_dnat(&bed.backend_http()))?;
                let table = NftTable(gw.name().to_owned());
                running.guard = if self == Gateway::Nftables {
                    Guard::Nft(table)
                } else {
                    Guard::NftUnderFloor(table, Floor::attach(gw, Hook::Xdp)?)
                };
            }
            Gateway::Haproxy => {
                let conf = bed.dir.path("haproxy.cfg");
                std::fs::write(&conf, haproxy_conf(vip, &bed.backend_http()))?;
                let server = start_server(
                    gw,
                    "HAProxy",
                    "haproxy",
                    &["-db", "-f", conf.to_str().unwrap()],
                    bed,
                )?;
                running.guard = Guard::Server(server);
            }
            Gateway::NginxStream => {
                let conf = bed.dir.path("nginx-stream.conf");
                std::fs::write(
                    &conf,
                    nginx_stream_conf(vip, &bed.backend_http(), &bed.dir.path("")),
                )?;
                let args = ["-e", "stderr", "-c", conf.to_str().unwrap()];
                let server = start_server(gw, "nginx stream", "nginx", &args, bed)?;
                running.guard = Guard::Server(server);
            }
        }
        wait_answering(bed, &running.targets)?;
        Ok(running)
    }
}

/// A gateway set up for traffic.
pub struct Running {
    /// Where each client host sends its requests.
    pub targets: Vec<SocketAddr>,
    /// Anything the results must say about this run (e.g. TC not attached).
    pub note: Option<String>,
    guard: Guard,
}

impl Running {
    /// The daemon, when this gateway is the balancer.
    pub fn balancer(&self) -> Option<&Balancer> {
        match &self.guard {
            Guard::Balancer(b) => Some(b),
            _ => None,
        }
    }
}

enum Guard {
    None,
    Balancer(Box<Balancer>),
    Nft(#[allow(dead_code)] NftTable),
    NftUnderFloor(#[allow(dead_code)] NftTable, #[allow(dead_code)] Floor),
    Server(#[allow(dead_code)] Server),
}

/// The real daemon with the bench's config, in a private bpffs; dropping
/// it stops the daemon, and unmounting the bpffs detaches its programs.
pub struct Balancer {
    // Field order is drop order: the daemon stops before its pins go.
    daemon: Daemon,
    bpffs: TempBpffs,
    pub hook: Hook,
    /// Set when the daemon did not attach what the config asked for.
    pub mode_note: Option<String>,
}

impl Balancer {
    pub fn start(bed: &Testbed, hook: Hook) -> Result<Balancer> {
        Balancer::with_services(bed, hook, &kernel_services(&bed.backend_http()))
    }

    /// The daemon with `services` (`[[services]]` tables) as its only
    /// services.
    pub fn with_services(bed: &Testbed, hook: Hook, services: &str) -> Result<Balancer> {
        Balancer::start_in(bed.topo.gw(), hook, services)
    }

    /// The daemon in `gw`, a namespace with interfaces named like the
    /// testbed gateway's; `tables` is the config after its `[control]`
    /// (e.g. `[cluster]`, then `[[services]]`).
    pub fn start_in(gw: &NetNs, hook: Hook, tables: &str) -> Result<Balancer> {
        let bpffs = TempBpffs::new();
        let config = balancer_config(&bpffs, hook, tables);
        let mut daemon = Daemon::start(gw, &config, &bpffs.pin_dir(), &[]);
        daemon.wait_serving(gw, &bpffs.control_socket());
        let mode_note = check_mode(gw, hook)?;
        Ok(Balancer {
            daemon,
            bpffs,
            hook,
            mode_note,
        })
    }

    pub fn pin_dir(&self) -> std::path::PathBuf {
        self.bpffs.pin_dir()
    }

    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    pub fn control_socket(&self) -> std::path::PathBuf {
        self.bpffs.control_socket()
    }

    /// The hook the daemon's programs actually sit on.
    pub fn attached_hook(&self) -> Hook {
        if self.mode_note.is_some() {
            Hook::Xdp
        } else {
            self.hook
        }
    }
}

/// None if the daemon attached `hook` to both gateway interfaces; else what
/// it did attach, for the results.
fn check_mode(gw: &NetNs, hook: Hook) -> Result<Option<String>> {
    let mut found = Vec::new();
    for ifname in [GW_CLIENT_IF, GW_BACKEND_IF] {
        let on = progs::attached(gw, ifname)?;
        anyhow::ensure!(!on.is_empty(), "the daemon attached no program to {ifname}");
        if !on.iter().any(|a| a.hook == hook) {
            let hows: Vec<&str> = on.iter().map(|a| a.how).collect();
            found.push(format!("{ifname}: {}", hows.join("+")));
        }
    }
    Ok((!found.is_empty()).then(|| {
        format!("mode = \"{}\" asked, but the daemon attached {} (`tc filter show`/tcx query find no TC program): these figures are XDP's", hook.name(), found.join(", "))
    }))
}

/// Two services on the VIP: HTTP for wrk, and the per-packet traffic's
/// port. No health checks: their packets would mix into the per-packet
/// phases.
pub fn kernel_services(backends: &[SocketAddr]) -> String {
    let service = |name: &str, port: u16| {
        let addrs = backends.iter().map(|b| SocketAddr::new(b.ip(), port));
        format!(
            "[[services]]\nname = \"{name}\"\nvip = \"{VIP_V4}:{port}\"\naffinity = \"source-ip\"\n\
             [services.health]\ncheck = \"none\"\n{}",
            backends_toml(addrs)
        )
    };
    format!(
        "{}{}",
        service("http", HTTP_PORT),
        service("packets", SINK_PORT)
    )
}

fn balancer_config(bpffs: &TempBpffs, hook: Hook, services: &str) -> String {
    format!(
        "[interfaces]\nclients = \"{GW_CLIENT_IF}\"\nbackends = \"{GW_BACKEND_IF}\"\nmode = \"{}\"\n\
         [metrics]\nlisten = \"127.0.0.1:9100\"\n\
         [bpf]\npin_dir = \"{}\"\n[control]\nsocket = \"{}\"\n{services}",
        hook.name(),
        bpffs.pin_dir().display(),
        bpffs.control_socket().display(),
    )
}

struct NftTable(String);

impl Drop for NftTable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.0,
                "nft",
                "delete",
                "table",
                "ip",
                "lbbench_dnat",
            ])
            .status();
    }
}

/// DNAT in prerouting, the backend picked by a hash of the client address:
/// the in-kernel equivalent of source-ip affinity (without the affinity
/// table, so a change of the backend set moves clients).
fn nft_dnat(backends: &[SocketAddr]) -> String {
    let map: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{i} : {}", b.ip()))
        .collect();
    format!(
        "table ip lbbench_dnat {{\n chain pre {{\n type nat hook prerouting priority dstnat; policy accept;\n \
         ip daddr {VIP_V4} tcp dport {HTTP_PORT} dnat to jhash ip saddr mod {} map {{ {} }}\n }}\n}}\n",
        backends.len(),
        map.join(", ")
    )
}

fn haproxy_conf(vip: SocketAddr, backends: &[SocketAddr]) -> String {
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("  server b{} {b}\n", i + 1))
        .collect();
    format!(
        "global\n  maxconn 8000\n\
         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
         frontend bench\n  bind {vip}\n  default_backend backends\n\
         backend backends\n  balance source\n{servers}"
    )
}

fn nginx_stream_conf(vip: SocketAddr, backends: &[SocketAddr], dir: &std::path::Path) -> String {
    let servers: String = backends
        .iter()
        .map(|b| format!("    server {b};\n"))
        .collect();
    format!(
        "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
         worker_processes auto;\nworker_rlimit_nofile 16384;\ndaemon off;\npid {}/gw-nginx.pid;\nerror_log stderr warn;\n\
         events {{ worker_connections 8192; multi_accept on; }}\n\
         stream {{\n  upstream backends {{\n    hash $remote_addr consistent;\n{servers}  }}\n\
         \x20 server {{ listen {vip} reuseport backlog=65535; proxy_pass backends; }}\n}}\n",
        dir.display()
    )
}

pub fn start_server(
    gw: &NetNs,
    what: &str,
    cmd: &str,
    args: &[&str],
    bed: &Testbed,
) -> Result<Server> {
    let log = bed.dir.path(&format!("{cmd}-gw.log"));
    let mut server = Server::spawn(gw, what, cmd, args, &log)?;
    std::thread::sleep(Duration::from_millis(100));
    server.check_running()?;
    Ok(server)
}

/// Wait until a request from every client host gets through.
pub fn wait_answering(bed: &Testbed, targets: &[SocketAddr]) -> Result<()> {
    for (host, target) in bed.hosts.iter().zip(targets) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if matches!(balancer_tests::http::get(host, *target, "/"), Ok((200, _))) {
                break;
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "{target} does not answer {}",
                host.name()
            );
            crate::stop::sleep(Duration::from_millis(50))?;
        }
    }
    Ok(())
}

/// The floor: the two-instruction program on both gateway interfaces, at
/// `hook`, while the kernel routes (and, for VIP traffic, answers) the
/// packets itself. Links close with the guard.
pub struct Floor {
    _links: Vec<std::os::fd::OwnedFd>,
    pub prog: std::os::fd::OwnedFd,
}

impl Floor {
    pub fn attach(gw: &NetNs, hook: Hook) -> Result<Floor> {
        let prog = bpf::load_floor(hook).context("loading the floor program")?;
        Floor::attach_prog(gw, hook, prog)
    }

    /// Another reference program in the floor's place (a map-cost
    /// reference, `bpf::load_reference`).
    pub fn attach_prog(gw: &NetNs, hook: Hook, prog: std::os::fd::OwnedFd) -> Result<Floor> {
        let mut links = Vec::new();
        for ifname in [GW_CLIENT_IF, GW_BACKEND_IF] {
            let ifindex = gw.ifindex(ifname);
            let link = gw.run(|| bpf::attach(std::os::fd::AsFd::as_fd(&prog), ifindex, hook));
            links.push(link.with_context(|| format!("attaching the floor to {ifname}"))?);
        }
        Ok(Floor {
            _links: links,
            prog,
        })
    }
}

#[cfg(test)]
mod tests {
    use balancer_tests::NetNs;

    use super::*;

    /// Needs root (`cargo xtask test` runs it).
    #[test]
    fn floor_attaches_at_both_hooks_and_is_found() {
        let ns = NetNs::new("floor");
        ns.ip_batch(&[
            format!("link add {GW_CLIENT_IF} type veth peer name {GW_BACKEND_IF}"),
            format!("link set {GW_CLIENT_IF} up"),
            format!("link set {GW_BACKEND_IF} up"),
        ]);
        for hook in [Hook::Xdp, Hook::Tc] {
            let floor = Floor::attach(&ns, hook).unwrap();
            let ids = progs::ids_on(&ns, &[GW_CLIENT_IF, GW_BACKEND_IF], hook).unwrap();
            assert_eq!(ids.len(), 1, "{hook:?}: {ids:?}");
            let how = progs::attached(&ns, GW_CLIENT_IF).unwrap();
            assert!(how.iter().all(|a| a.hook == hook), "{how:?}");
            drop(floor);
            assert!(progs::attached(&ns, GW_CLIENT_IF).unwrap().is_empty());
        }
    }
}
