//! The gateways of the L7 comparison (issue 19): the balancer terminating
//! HTTP itself (`client_address = "x-forwarded-for"`, `affinity = "sid"`)
//! and HAProxy in `mode http` doing the same job, with the kernel path (a
//! plain source-ip service) as the reference. Each `start` installs and
//! configures its gateway; dropping the returned guard removes it.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};
use balancer_tests::{NetNs, topology::VIP_V4};

use crate::{
    bpf::Hook,
    gateways::{self, Balancer, Gateway},
    proc::Server,
    testbed::{self, HTTP_PORT, Testbed},
    wrk::Request,
};

/// Every balancer row runs in TC mode: on this test bed's veths XDP costs
/// more than it saves (bench/README.md, "XDP on veth"), and the daemon's
/// L7 services only pass through the program, so TC is the mode such a
/// host would use; HAProxy has no program at all.
pub const HOOK: Hook = Hook::Tc;

/// What decides a request's backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    /// The client address a trusted proxy names in `X-Forwarded-For`.
    ForwardedFor,
    /// The engine.io session id (`sid` query parameter).
    Sid,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L7Gateway {
    /// The balancer's kernel path: a source-ip service, TCP forwarded by
    /// the program, no HTTP read.
    Kernel,
    Balancer(Job),
    /// HAProxy with its default `http-reuse safe`: a client connection's
    /// first request gets a server connection of its own.
    Haproxy(Job),
    /// HAProxy with `http-reuse always`: idle server connections are
    /// shared by every client connection, first requests included, as the
    /// balancer's pool does.
    HaproxyReuseAlways(Job),
}

impl L7Gateway {
    /// Measured in this order each round: each pair balancer, HAProxy
    /// (for sid, HAProxy also with `http-reuse always`).
    pub const ALL: [L7Gateway; 6] = [
        L7Gateway::Kernel,
        L7Gateway::Balancer(Job::ForwardedFor),
        L7Gateway::Haproxy(Job::ForwardedFor),
        L7Gateway::Balancer(Job::Sid),
        L7Gateway::Haproxy(Job::Sid),
        L7Gateway::HaproxyReuseAlways(Job::Sid),
    ];

    pub fn label(self) -> &'static str {
        match self {
            L7Gateway::Kernel => "balancer kernel path (TC, source-ip, no HTTP read)",
            L7Gateway::Balancer(Job::ForwardedFor) => {
                "balancer L7, `client_address = \"x-forwarded-for\"`"
            }
            L7Gateway::Haproxy(Job::ForwardedFor) => {
                "HAProxy `balance hdr(X-Forwarded-For)` consistent"
            }
            L7Gateway::Balancer(Job::Sid) => "balancer L7, `affinity = \"sid\"`",
            L7Gateway::Haproxy(Job::Sid) => "HAProxy `use-server` by sid prefix",
            L7Gateway::HaproxyReuseAlways(Job::ForwardedFor) => {
                "HAProxy `balance hdr(X-Forwarded-For)` consistent, `http-reuse always`"
            }
            L7Gateway::HaproxyReuseAlways(Job::Sid) => {
                "HAProxy `use-server` by sid prefix, `http-reuse always`"
            }
        }
    }

    /// What each client host asks for, in host order, once the gateway is
    /// up (`start`). For X-Forwarded-For, each host names a client the
    /// gateway sends to a backend of its own: host i's to bi
    /// ([`spread_clients`]).
    pub fn requests(self, bed: &Testbed) -> Result<Vec<Request>> {
        let hosts = 1..=bed.hosts.len() as u8;
        match self {
            L7Gateway::Kernel => Ok(hosts.map(|_| Request::default()).collect()),
            L7Gateway::Balancer(Job::ForwardedFor)
            | L7Gateway::Haproxy(Job::ForwardedFor)
            | L7Gateway::HaproxyReuseAlways(Job::ForwardedFor) => Ok(spread_clients(bed)?
                .into_iter()
                .map(|client| Request {
                    path: "/".into(),
                    headers: vec![format!("X-Forwarded-For: {client}")],
                })
                .collect()),
            L7Gateway::Balancer(Job::Sid)
            | L7Gateway::Haproxy(Job::Sid)
            | L7Gateway::HaproxyReuseAlways(Job::Sid) => Ok(hosts.map(sid_request).collect()),
        }
    }

    /// Set the gateway up; the guard tears it down.
    pub fn start(self, bed: &Testbed) -> Result<Running> {
        let vip = vip();
        let targets = vec![vip; bed.hosts.len()];
        let guard = match self {
            L7Gateway::Kernel => {
                let running = Gateway::Balancer(HOOK).start(bed)?;
                return Ok(Running {
                    guard: Guard::Kernel(running),
                });
            }
            L7Gateway::Balancer(job) => {
                let services = balancer_services(job, &bed.backend_http());
                Guard::Balancer(Box::new(Balancer::with_services(bed, HOOK, &services)?))
            }
            L7Gateway::Haproxy(job) | L7Gateway::HaproxyReuseAlways(job) => {
                let conf = bed.dir.path("haproxy-l7.cfg");
                let stats = bed.dir.path("haproxy-l7.sock");
                let _ = std::fs::remove_file(&stats);
                let reuse_always = matches!(self, L7Gateway::HaproxyReuseAlways(_));
                let text = haproxy_conf(job, reuse_always, vip, &bed.backend_http(), &stats);
                std::fs::write(&conf, text)?;
                let args = ["-db", "-f", conf.to_str().unwrap()];
                let server = gateways::start_server(
                    bed.topo.gw(),
                    "HAProxy (mode http)",
                    "haproxy",
                    &args,
                    bed,
                )?;
                Guard::Haproxy(server, stats)
            }
        };
        gateways::wait_answering(bed, &targets)?;
        Ok(Running { guard })
    }
}

/// Where every client host sends its requests.
pub fn vip() -> SocketAddr {
    SocketAddr::new(VIP_V4.into(), HTTP_PORT)
}

/// Host i's session lives on backend bi (3 hosts, 3 backends).
fn sid_request(i: u8) -> Request {
    Request {
        path: format!("/?EIO=4&transport=polling&sid=b{i}.bench{i}"),
        headers: Vec::new(),
    }
}

/// Client addresses (one per wrk host) that the running gateway sends to
/// b1, b2, … in turn, found by asking it: every backend's nginx answers
/// with its name. The balancer and HAProxy hash the header differently, and
/// with one fixed address per host a hash of three keys may put two or
/// three on one nginx; its single worker then takes more requests per
/// wake-up, which makes the whole machine cheaper per request and flatters
/// that gateway's row. With one client per backend on every gateway, the
/// backends' work is the same in every row.
fn spread_clients(bed: &Testbed) -> Result<Vec<String>> {
    let mut picked: Vec<String> = Vec::new();
    for i in 1..=bed.hosts.len() {
        let backend = format!("b{i}");
        let mut found = None;
        for c in 1..=250u8 {
            let client = format!("203.0.113.{c}");
            if !picked.contains(&client) && served_by(&bed.hosts[0], &client)? == backend {
                found = Some(client);
                break;
            }
        }
        picked.push(found.with_context(|| format!("no client address reaches {backend}"))?);
    }
    Ok(picked)
}

/// The backend that answers a request naming `client` in X-Forwarded-For,
/// sent from `host` (a trusted proxy) to the VIP.
fn served_by(host: &NetNs, client: &str) -> Result<String> {
    host.run(|| {
        let mut stream = TcpStream::connect_timeout(&vip(), Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(
            stream,
            "GET / HTTP/1.1\r\nHost: bench\r\nX-Forwarded-For: {client}\r\nConnection: close\r\n\r\n"
        )?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        let body = answer
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.trim().to_owned());
        body.with_context(|| format!("no HTTP answer: {answer:?}"))
    })
}

/// A gateway set up for traffic.
pub struct Running {
    guard: Guard,
}

enum Guard {
    Kernel(gateways::Running),
    Balancer(Box<Balancer>),
    /// HAProxy and its stats socket.
    Haproxy(#[allow(dead_code)] Server, PathBuf),
}

impl Running {
    /// Set when the daemon did not attach what it was asked to.
    pub fn note(&self) -> Option<String> {
        self.balancer().and_then(|b| b.mode_note.clone())
    }

    /// The daemon, when this gateway is the balancer.
    pub fn balancer(&self) -> Option<&Balancer> {
        match &self.guard {
            Guard::Kernel(r) => r.balancer(),
            Guard::Balancer(b) => Some(b),
            Guard::Haproxy(..) => None,
        }
    }

    /// HAProxy's counts per server, in configuration order, when the
    /// gateway is HAProxy.
    pub fn haproxy_servers(&self) -> Option<Result<Vec<ServerCounts>>> {
        match &self.guard {
            Guard::Haproxy(_, stats) => Some(haproxy_stats(stats)),
            _ => None,
        }
    }
}

/// The wrk hosts, as `trusted_proxies` and as HAProxy's ACL.
fn proxy_hosts() -> Vec<String> {
    (1..=testbed::CLIENT_HOSTS)
        .map(|i| testbed::client_host_addr(i).to_string())
        .collect()
}

/// The HTTP service on the VIP, terminated by the daemon. Backends named
/// b1, b2, … (the sid prefixes). No health checks, as in the other parts.
fn balancer_services(job: Job, backends: &[SocketAddr]) -> String {
    let how = match job {
        Job::ForwardedFor => {
            let trusted: Vec<String> = proxy_hosts()
                .iter()
                .map(|a| format!("\"{a}/32\""))
                .collect();
            format!(
                "affinity = \"source-ip\"\nclient_address = \"x-forwarded-for\"\ntrusted_proxies = [{}]\n",
                trusted.join(", ")
            )
        }
        Job::Sid => "affinity = \"sid\"\n".to_owned(),
    };
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            format!(
                "[[services.backends]]\naddress = \"{b}\"\nname = \"b{}\"\n",
                i + 1
            )
        })
        .collect();
    format!(
        "[[services]]\nname = \"http\"\nvip = \"{VIP_V4}:{HTTP_PORT}\"\n{how}\
         [services.health]\ncheck = \"none\"\n{servers}"
    )
}

/// HAProxy doing the same job in `mode http`: keep-alive on both sides,
/// the default `http-reuse` (safe) unless `reuse_always`. For
/// X-Forwarded-For, as the balancer, it believes the header only from the
/// wrk hosts and hashes the peer's address otherwise (consistent hashing of
/// the header); for sid, `use-server` sends a request to the server its
/// sid's prefix names, and `balance source` places the others.
fn haproxy_conf(
    job: Job,
    reuse_always: bool,
    vip: SocketAddr,
    backends: &[SocketAddr],
    stats: &Path,
) -> String {
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("  server b{} {b}\n", i + 1))
        .collect();
    let (frontend, balance) = match job {
        Job::ForwardedFor => (
            format!(
                "  acl trusted src {}\n  http-request set-header X-Forwarded-For %[src] if !trusted\n",
                proxy_hosts().join(" ")
            ),
            "hdr(X-Forwarded-For)",
        ),
        // The balancer's job: the backend the sid's prefix names, else
        // by the client's address.
        Job::Sid => (String::new(), "source"),
    };
    let by_prefix: String = match job {
        Job::ForwardedFor => String::new(),
        Job::Sid => (1..=backends.len())
            .map(|i| format!("  use-server b{i} if {{ urlp(sid) -m beg b{i}. }}\n"))
            .collect(),
    };
    let reuse = if reuse_always {
        "  http-reuse always\n"
    } else {
        ""
    };
    format!(
        "global\n  maxconn 8000\n  stats socket {}\n\
         defaults\n  mode http\n  option http-keep-alive\n  timeout connect 5s\n  timeout client 60s\n  \
         timeout server 60s\n  timeout http-keep-alive 60s\n\
         frontend bench\n  bind {vip}\n{frontend}  default_backend backends\n\
         backend backends\n  balance {balance}\n  hash-type consistent\n{reuse}{by_prefix}{servers}",
        stats.display()
    )
}

/// One HAProxy server's cumulative counts (`show stat`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerCounts {
    /// HTTP requests sent to it (`req_tot`).
    pub requests: u64,
    /// Connections opened to it (`connect`; `reuse` counts the others).
    pub connections: u64,
}

/// `show stat` on HAProxy's stats socket: the servers of `backends`.
fn haproxy_stats(socket: &Path) -> Result<Vec<ServerCounts>> {
    let mut stream =
        UnixStream::connect(socket).with_context(|| format!("connect {}", socket.display()))?;
    stream.write_all(b"show stat\n")?;
    let mut csv = String::new();
    stream.read_to_string(&mut csv)?;
    parse_stats(&csv).context("HAProxy's `show stat` has no req_tot/connect for the servers")
}

fn parse_stats(csv: &str) -> Option<Vec<ServerCounts>> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (requests, connections) = (col("req_tot")?, col("connect")?);
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.first() == Some(&"backends") && f.get(1).is_some_and(|s| s.starts_with('b')))
        .map(|f| {
            let n = |i: usize| f.get(i).and_then(|v| v.parse().ok());
            Some(ServerCounts {
                requests: n(requests)?,
                connections: n(connections)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_show_stat() {
        let csv = "# pxname,svname,stot,req_tot,connect,reuse\n\
                   bench,FRONTEND,10,10,,\n\
                   backends,b1,5,7,2,5\n\
                   backends,b2,5,3,1,2\n\
                   backends,BACKEND,10,10,3,7\n";
        assert_eq!(
            parse_stats(csv).unwrap(),
            [
                ServerCounts {
                    requests: 7,
                    connections: 2
                },
                ServerCounts {
                    requests: 3,
                    connections: 1
                }
            ]
        );
        assert!(parse_stats("# pxname,svname\nbackends,b1\n").is_none());
    }
}
