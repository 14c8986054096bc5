//! Build the test topology with whoami servers and keep it for manual
//! debugging: `cargo run --release -p balancer-tests --example debug_topology`.
use balancer_tests::{Topology, TopologyOpts, tcp_whoami, udp_whoami};

fn main() {
    let topo = Topology::new(&TopologyOpts::default());
    let _tcp: Vec<_> = topo
        .backends()
        .iter()
        .map(|b| tcp_whoami(b.ns(), b.name(), 3000))
        .collect();
    let _udp: Vec<_> = topo
        .backends()
        .iter()
        .map(|b| udp_whoami(b.ns(), b.name(), 5353))
        .collect();
    println!("namespaces: {:?}", topo.namespaces());
    let secs = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    std::thread::sleep(std::time::Duration::from_secs(secs));
}
