//! A "CDN" in front of the gateway: HAProxy in a namespace of its own that
//! the topology's clients reach, and whose connections to the VIPs go back
//! through the client namespace (a router for the CDN's /24) to the
//! gateway, so the gateway sees HAProxy's one address as the source of
//! every client's traffic:
//!
//! ```text
//!  client ns                          cdn ns [haproxy]
//!  eth0 198.18.0.1-N/24 (to the gw)
//!  cdn0 198.18.4.254/24 ═════════════ eth0 198.18.4.1/24, default via .254
//! ```
//!
//! HAProxy runs in the foreground as a child, killed on drop; its config is
//! checked with `haproxy -c` first.

use std::{
    fs,
    io::Read as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use crate::{
    netns::{NetNs, random_suffix},
    topology::{GW_CLIENT_IF, Topology, veth},
};

/// HAProxy's address, the only source the gateway sees from the CDN.
pub const CDN_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 4, 1);
/// The CDN's network, for `trusted_proxies`.
pub const CDN_NET: &str = "198.18.4.0/24";
/// The client namespace's address on the CDN link.
const CLIENT_SIDE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 4, 254);
/// The client namespace's interface towards the CDN.
const CLIENT_CDN_IF: &str = "cdn0";
/// The CDN's interface.
const CDN_IF: &str = "eth0";
/// How long HAProxy may take to listen on every frontend.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// One HAProxy frontend on `CDN_V4:listen`, forwarding to `to` (a VIP).
#[derive(Clone, Copy, Debug)]
pub enum Frontend {
    /// `mode tcp`; with `send_proxy_v2` HAProxy starts every connection to
    /// `to` with a PROXY v2 header carrying the client's address.
    Tcp {
        listen: u16,
        to: SocketAddr,
        send_proxy_v2: bool,
    },
    /// `mode http` with `option forwardfor` (an X-Forwarded-For header with
    /// the client's address) and `http-reuse always`: one connection to
    /// `to` carries the requests of different clients.
    Http { listen: u16, to: SocketAddr },
}

impl Frontend {
    fn listen(&self) -> u16 {
        match *self {
            Frontend::Tcp { listen, .. } | Frontend::Http { listen, .. } => listen,
        }
    }

    fn config(&self) -> String {
        match *self {
            Frontend::Tcp {
                listen,
                to,
                send_proxy_v2,
            } => {
                let proxy = if send_proxy_v2 { " send-proxy-v2" } else { "" };
                format!(
                    "frontend tcp{listen}\n    mode tcp\n    bind {CDN_V4}:{listen}\n    default_backend to{listen}\n\
                     backend to{listen}\n    mode tcp\n    server gw {to}{proxy}\n"
                )
            }
            Frontend::Http { listen, to } => format!(
                "frontend http{listen}\n    mode http\n    bind {CDN_V4}:{listen}\n    option forwardfor\n    default_backend to{listen}\n\
                 backend to{listen}\n    mode http\n    http-reuse always\n    server gw {to}\n"
            ),
        }
    }
}

/// What every frontend shares: timeouts long enough for WebSockets and
/// long-polls (a tunnel lives as long as its session).
const DEFAULTS: &str = "global\n    maxconn 4096\n\
defaults\n    timeout connect 5s\n    timeout client 1h\n    timeout server 1h\n    timeout tunnel 1h\n    timeout http-request 10s\n    timeout http-keep-alive 1h\n";

/// The CDN namespace and its running HAProxy; dropping it kills HAProxy and
/// deletes the namespace (and with it the link to the client namespace).
pub struct Cdn {
    ns: NetNs,
    child: Child,
    config: PathBuf,
    log: PathBuf,
}

impl Cdn {
    /// Links a CDN namespace to `topo`'s client namespace, routes its /24
    /// from the gateway through the client namespace, and starts HAProxy
    /// with `frontends`; returns once every frontend listens.
    pub fn new(topo: &Topology, frontends: &[Frontend]) -> Self {
        let ns = NetNs::with_suffix("cdn", topo.suffix());
        let client = topo.client();
        let router = *topo.clients_v4().first().expect(
            "the CDN's traffic goes through the client namespace: it needs a client address",
        );
        veth(client, CLIENT_CDN_IF, &ns, CDN_IF);
        // Full checksums: HAProxy's packets reach the gateway's XDP program,
        // which cannot finish a partial one (DESIGN.md, veth quirks).
        ns.exec("ethtool", ["-K", CDN_IF, "tx", "off"]);
        client.sysctl(&[("net.ipv4.ip_forward", "1")]);
        client.ip_batch(&[
            format!("addr add {CLIENT_SIDE_V4}/24 dev {CLIENT_CDN_IF}"),
            format!("link set {CLIENT_CDN_IF} up"),
        ]);
        ns.ip_batch(&[
            format!("addr add {CDN_V4}/24 dev {CDN_IF}"),
            format!("link set {CDN_IF} up"),
            format!("route add default via {CLIENT_SIDE_V4}"),
        ]);
        topo.gw().ip_batch(&[format!(
            "route add {CDN_NET} via {router} dev {GW_CLIENT_IF}"
        )]);
        client.wait_ready(CLIENT_CDN_IF);
        ns.wait_ready(CDN_IF);

        let suffix = random_suffix();
        let config = std::env::temp_dir().join(format!("lbt-haproxy-{suffix}.cfg"));
        let log = std::env::temp_dir().join(format!("lbt-haproxy-{suffix}.log"));
        let text: String = std::iter::once(DEFAULTS.to_owned())
            .chain(frontends.iter().map(Frontend::config))
            .collect();
        fs::write(&config, &text).expect("write haproxy config");
        let path = config.to_str().unwrap();
        let check = ns
            .command("haproxy", ["-c", "-q", "-f", path])
            .output()
            .expect("run haproxy -c (Debian package haproxy)");
        assert!(
            check.status.success(),
            "haproxy -c refused the config: {}{}\n{text}",
            String::from_utf8_lossy(&check.stdout).trim(),
            String::from_utf8_lossy(&check.stderr).trim()
        );
        let child = ns
            .command("haproxy", ["-db", "-f", path])
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("create haproxy log"))
            .spawn()
            .expect("spawn haproxy");
        let mut cdn = Cdn {
            ns,
            child,
            config,
            log,
        };
        cdn.wait_listening(frontends);
        cdn
    }

    /// The namespace HAProxy runs in (its address is trusted by the
    /// proxy services: raw connections from here speak as the CDN).
    pub fn ns(&self) -> &NetNs {
        &self.ns
    }

    /// `CDN_V4:port`, where clients reach a frontend.
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(CDN_V4), port)
    }

    fn wait_listening(&mut self, frontends: &[Frontend]) {
        let deadline = Instant::now() + START_TIMEOUT;
        for frontend in frontends {
            let addr = self.addr(frontend.listen());
            loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    panic!("haproxy exited with {status}: {}", self.stderr());
                }
                // Listening sockets, not a probe connection: a probe would
                // reach the services behind HAProxy and show in their
                // counters.
                let listening = self.ns.exec("ss", ["-Hltn"]);
                if String::from_utf8_lossy(&listening.stdout).contains(&format!("{addr} ")) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "haproxy not listening on {addr} after {START_TIMEOUT:?}: {}",
                    self.stderr()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn stderr(&self) -> String {
        let mut text = String::new();
        let _ = fs::File::open(&self.log).and_then(|mut f| f.read_to_string(&mut text));
        text.trim().to_owned()
    }
}

impl Drop for Cdn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.config);
        let _ = fs::remove_file(&self.log);
    }
}
