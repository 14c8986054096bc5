//! IPv6 end to end through the gateway, next to IPv4 in one config: TCP and
//! UDP v6 VIPs, `source_prefix_v6` affinity, the reply path, and `lookup`
//! agreeing with the kernel for v6 clients. Runs in `BALANCER_TEST_MODE`.

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, Ipv6Addr, SocketAddr},
};

use balancer_tests::{
    TIMEOUT, Topology, TopologyOpts,
    bpffs::TempBpffs,
    daemon::{Daemon, backends_toml, cli_ok, config_head},
    require_root, tcp_ask, tcp_whoami,
    topology::{GW_CLIENT_IF, VIP_V4, VIP_V6},
    udp_ask, udp_whoami,
};
use balancer_user::control::protocol::LookupAnswer;

/// Client /64s besides the topology's 2001:db8::/64, on the client link.
const EXTRA_NETS_V6: [u16; 2] = [2, 3];
const CLIENTS_PER_NET: u16 = 5;

fn extra_clients(topo: &Topology) -> Vec<(u16, Ipv6Addr)> {
    let mut clients = Vec::new();
    let mut client_lines = Vec::new();
    let mut gw_lines = Vec::new();
    for net in EXTRA_NETS_V6 {
        for i in 1..=CLIENTS_PER_NET {
            let a = Ipv6Addr::new(0x2001, 0xdb8, net, 0, 0, 0, 0, i);
            client_lines.push(format!("addr add {a}/64 dev eth0"));
            clients.push((net, a));
        }
        // On-link through gwc, like the topology's extra IPv4 /24s.
        gw_lines.push(format!("route add 2001:db8:{net}::/64 dev {GW_CLIENT_IF}"));
    }
    topo.client().ip_batch(&client_lines);
    topo.gw().ip_batch(&gw_lines);
    topo.client().wait_ready("eth0");
    clients
}

#[test]
fn ipv4_and_ipv6_services_side_by_side() {
    require_root();
    let topo = Topology::new(&TopologyOpts::default());
    let extra = extra_clients(&topo);
    let bpffs = TempBpffs::new();
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
    let v4 = |port| {
        backends_toml(
            topo.backends()
                .iter()
                .map(|b| SocketAddr::new(b.v4().into(), port)),
        )
    };
    let v6 = |port| {
        backends_toml(
            topo.backends()
                .iter()
                .map(|b| SocketAddr::new(b.v6().into(), port)),
        )
    };
    let config = format!(
        "{head}\n\
         [[services]]\nname = \"web4\"\nvip = \"{VIP_V4}:80\"\n[services.health]\ncheck = \"none\"\n{web4}\n\
         [[services]]\nname = \"web6\"\nvip = \"[{VIP_V6}]:80\"\n[services.health]\ncheck = \"none\"\n{web6}\n\
         [[services]]\nname = \"net6\"\nvip = \"[{VIP_V6}]:81\"\nsource_prefix_v6 = 64\n[services.health]\ncheck = \"none\"\n{web6}\n\
         [[services]]\nname = \"dns6\"\nvip = \"[{VIP_V6}]:53\"\nprotocol = \"udp\"\n[services.health]\ncheck = \"none\"\n{dns6}\n",
        head = config_head(&bpffs, "127.0.0.1:9090"),
        web4 = v4(3000),
        web6 = v6(3000),
        dns6 = v6(5353),
    );
    let mut daemon = Daemon::start(topo.gw(), &config, &bpffs.pin_dir(), &[]);
    let socket = bpffs.control_socket();
    daemon.wait_serving(topo.gw(), &socket);
    let name_of: HashMap<String, String> = topo
        .backends()
        .iter()
        .map(|b| {
            (
                SocketAddr::new(b.v6().into(), 3000).to_string(),
                b.name().to_owned(),
            )
        })
        .collect();

    // TCP over v6, /128 affinity: every connection of a client on one
    // backend, which sees the client's own address; `lookup` predicted it.
    let web6 = SocketAddr::new(VIP_V6.into(), 80);
    let mut used = BTreeSet::new();
    for &client in topo.clients_v6().iter().take(16) {
        let predicted: LookupAnswer = serde_json::from_str(&cli_ok(
            topo.gw(),
            &socket,
            &["lookup", "web6", &client.to_string(), "--json"],
        ))
        .unwrap();
        let predicted = &name_of[predicted.backend.as_deref().expect("a backend")];
        let mut seen = BTreeSet::new();
        for _ in 0..3 {
            let answer = tcp_ask(topo.client(), client.into(), web6, TIMEOUT)
                .unwrap_or_else(|e| panic!("{client} → {web6}: {e}"));
            assert_eq!(
                answer.seen, answer.local,
                "the backend sees the client itself"
            );
            seen.insert(answer.backend);
        }
        assert_eq!(seen.len(), 1, "{client} spread over {seen:?}");
        let chosen = seen.pop_first().unwrap();
        assert_eq!(
            &chosen, predicted,
            "{client}: lookup said {predicted}, the kernel chose {chosen}"
        );
        used.insert(chosen);
    }
    assert!(used.len() >= 2, "16 v6 clients all went to {used:?}");

    // /64 affinity: every client of a /64 on its network's backend.
    let net6 = SocketAddr::new(VIP_V6.into(), 81);
    let mut by_net: HashMap<u16, BTreeSet<String>> = HashMap::new();
    for &(net, client) in &extra {
        for _ in 0..2 {
            let answer = tcp_ask(topo.client(), client.into(), net6, TIMEOUT)
                .unwrap_or_else(|e| panic!("{client} → {net6}: {e}"));
            by_net.entry(net).or_default().insert(answer.backend);
        }
    }
    for (net, backends) in &by_net {
        assert_eq!(
            backends.len(),
            1,
            "2001:db8:{net}::/64 spread over {backends:?}"
        );
    }

    // UDP over v6: consistent per client, no source NAT.
    let dns6 = SocketAddr::new(VIP_V6.into(), 53);
    for &client in topo.clients_v6().iter().take(8) {
        let first = udp_ask(topo.client(), client.into(), dns6, TIMEOUT)
            .unwrap_or_else(|e| panic!("{client}: {e}"));
        assert_eq!(first.seen, first.local);
        let again = udp_ask(topo.client(), client.into(), dns6, TIMEOUT).unwrap();
        assert_eq!(again.backend, first.backend, "{client}: UDP moved");
    }

    // IPv4 next to it, unchanged.
    let web4 = SocketAddr::new(VIP_V4.into(), 80);
    for &client in topo.clients_v4().iter().take(4) {
        let a = tcp_ask(topo.client(), IpAddr::V4(client), web4, TIMEOUT).unwrap();
        let b = tcp_ask(topo.client(), IpAddr::V4(client), web4, TIMEOUT).unwrap();
        assert_eq!(a.backend, b.backend);
        assert_eq!(a.seen, a.local);
    }
    println!(
        "ipv6: 16 v6 clients on {} backends, each /64 on one backend, v6 UDP and v4 alongside",
        used.len()
    );
    drop(daemon);
}
