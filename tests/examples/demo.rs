//! `cargo xtask demo`: the balancer on a throwaway topology of network
//! namespaces (clients → gateway → three backends), with client traffic,
//! until Ctrl-C; then everything it made is removed.
//!
//! The metrics endpoint listens on loopback inside the gateway namespace;
//! the demo forwards a port of the host's loopback to it, so a browser on
//! this machine can open the status page. No host interface is touched.

use std::{
    io,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use balancer_tests::{
    TIMEOUT, Topology, TopologyOpts,
    bpffs::TempBpffs,
    daemon::{Daemon, backends_toml, cli, cli_ok, config_head},
    netns::NetNs,
    tcp_ask, tcp_whoami,
    topology::VIP_V4,
};

const METRICS_IN_GW: &str = "127.0.0.1:9100";
const CLIENTS: usize = 8;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn main() {
    balancer_tests::require_root();
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    println!("creating the topology: a client namespace, a gateway, a switch and three backends");
    let topo = Topology::new(&TopologyOpts::default());
    let bpffs = TempBpffs::new();
    let servers: Vec<_> = topo
        .backends()
        .iter()
        .map(|b| tcp_whoami(b.ns(), b.name(), 3000))
        .collect();
    let socket = bpffs.control_socket();
    let backends = backends_toml(
        topo.backends()
            .iter()
            .map(|b| SocketAddr::new(b.v4().into(), 3000)),
    );
    let config = format!(
        r#"# The demo's config: one source-ip service, tcp health checks.
{head}
[[services]]
name = "demo"
vip = "{VIP_V4}:80"
affinity = "source-ip"
affinity_timeout = "10m"
[services.health]
check = "tcp"
interval = "1s"
timeout = "500ms"
{backends}"#,
        head = config_head(&bpffs, METRICS_IN_GW),
    );
    println!("{config}");
    let mut daemon = Daemon::start(topo.gw(), &config, &bpffs.pin_dir(), &[]);
    daemon.wait_serving(topo.gw(), &socket);

    let vip = SocketAddr::new(IpAddr::V4(VIP_V4), 80);
    let clients: Vec<IpAddr> = topo
        .clients_v4()
        .iter()
        .take(CLIENTS)
        .map(|&a| IpAddr::V4(a))
        .collect();
    println!("\n{CLIENTS} clients, 3 connections each, to the VIP {vip}:");
    for &client in &clients {
        let answers: Vec<String> = (0..3)
            .map(|_| {
                tcp_ask(topo.client(), client, vip, TIMEOUT)
                    .map_or_else(|e| format!("error: {e}"), |a| a.backend)
            })
            .collect();
        println!("  {client:<14} -> {}", answers.join(", "));
    }
    // Let the daemon recount its tables (every second) before showing them.
    std::thread::sleep(Duration::from_millis(1500));
    println!("\n{}", cli_ok(topo.gw(), &socket, &["status"]));

    let forward = forward_metrics(topo.gw());
    match &forward {
        Ok(port) => {
            println!(
                "status page: http://127.0.0.1:{port}/   metrics: http://127.0.0.1:{port}/metrics   JSON: http://127.0.0.1:{port}/status"
            );
        }
        Err(e) => println!("(no host port for the status page: {e})"),
    }
    let bin = balancer_tests::daemon::balancer_bin();
    println!(
        "the CLI: ip netns exec {} {} status --socket {}",
        topo.gw().name(),
        bin.display(),
        socket.display()
    );
    println!("traffic continues from the {CLIENTS} clients; Ctrl-C removes everything");

    let mut round = 0usize;
    while !STOP.load(Ordering::Relaxed) {
        let client = clients[round % clients.len()];
        let _ = tcp_ask(topo.client(), client, vip, TIMEOUT);
        round += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    println!("\nstopping: detaching the balancer and removing the namespaces");
    // Ctrl-C reached the daemon too (same process group) and it may have
    // stopped already, leaving its pins: detach by the pin dir then. Both
    // ways, unmounting the bpffs and deleting the namespaces below remove
    // whatever is left.
    let pin_dir = bpffs.pin_dir();
    let _ = cli(
        topo.gw(),
        &socket,
        &["detach", "--pin-dir", pin_dir.to_str().unwrap()],
    );
    drop(daemon);
    drop(servers);
    drop(topo);
    drop(bpffs);
    println!("done");
}

/// Forward a free port of the host's loopback (9100 and up) into the
/// gateway namespace's metrics endpoint; the port.
fn forward_metrics(gw: &NetNs) -> io::Result<u16> {
    let listener = (9100..9200)
        .find_map(|port| TcpListener::bind(("127.0.0.1", port)).ok())
        .ok_or_else(|| io::Error::other("ports 9100-9199 of 127.0.0.1 are all taken"))?;
    let port = listener.local_addr()?.port();
    // A socket keeps the namespace it was made in: the listener stays on
    // the host while this thread enters the gateway's namespace to connect.
    let netns = std::fs::File::open(format!("/run/netns/{}", gw.name()))?;
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid namespace fd; setns affects only this thread.
        if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            eprintln!("setns into the gateway: {}", io::Error::last_os_error());
            return;
        }
        for client in listener.incoming().flatten() {
            if let Ok(upstream) = TcpStream::connect(METRICS_IN_GW) {
                splice(client, upstream);
            }
        }
    });
    Ok(port)
}

/// Copy both ways until either side closes.
fn splice(a: TcpStream, b: TcpStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = io::copy(&mut &a, &mut &b);
        let _ = b.shutdown(std::net::Shutdown::Write);
    });
    std::thread::spawn(move || {
        let _ = io::copy(&mut &b2, &mut &a2);
        let _ = a2.shutdown(std::net::Shutdown::Write);
    });
}
