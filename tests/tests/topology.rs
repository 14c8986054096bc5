//! Smoke test of the harness itself, with no balancer: plain forwarding
//! through the gateway reaches every backend from every kind of client
//! address, backends see the real client, and the namespaces go away.
//! Needs root; fails (never skips) without it.

use std::{
    io::ErrorKind,
    net::{IpAddr, SocketAddr},
    panic,
    process::Command,
};

use balancer_tests::{
    Topology, TopologyOpts,
    servers::{TIMEOUT, ask, tcp_ask, tcp_connect, tcp_whoami, udp_ask, udp_whoami},
    topology::VIP_V4,
};

const PORT: u16 = 3000;

fn netns_list() -> String {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("run ip netns list");
    assert!(
        out.status.success(),
        "ip netns list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn plain_forwarding_reaches_every_backend() {
    let mut topo = Topology::new(&TopologyOpts::default());
    topo.add_backend();
    let servers: Vec<_> = topo
        .backends()
        .iter()
        .flat_map(|b| {
            [
                tcp_whoami(b.ns(), b.name(), PORT),
                udp_whoami(b.ns(), b.name(), PORT),
            ]
        })
        .collect();

    let sources: Vec<IpAddr> = [
        topo.clients_v4()[0],
        *topo.clients_v4().last().unwrap(),
        topo.clients_extra_v4()[0],
        *topo.clients_extra_v4().last().unwrap(),
    ]
    .map(IpAddr::from)
    .into_iter()
    .chain([topo.clients_v6()[0], *topo.clients_v6().last().unwrap()].map(IpAddr::from))
    .collect();

    for backend in topo.backends() {
        for src in &sources {
            let dst_ip: IpAddr = if src.is_ipv4() {
                backend.v4().into()
            } else {
                backend.v6().into()
            };
            let dst = SocketAddr::new(dst_ip, PORT);
            for (proto, answer) in [
                ("tcp", tcp_ask(topo.client(), *src, dst, TIMEOUT)),
                ("udp", udp_ask(topo.client(), *src, dst, TIMEOUT)),
            ] {
                let answer = answer.unwrap_or_else(|e| panic!("{proto} {src} -> {dst}: {e}"));
                assert_eq!(answer.backend, backend.name(), "{proto} {src} -> {dst}");
                assert_eq!(answer.local.ip(), *src, "{proto} {src} -> {dst}");
                assert_eq!(
                    answer.seen, answer.local,
                    "{proto} {src} -> {dst}: backend must see the real client"
                );
            }
        }
    }

    // Stopping the servers kills the backends: an open connection is
    // closed, and a new one is refused.
    let b1 = &topo.backends()[0];
    let b1_addr = SocketAddr::new(b1.v4().into(), PORT);
    let open = tcp_connect(topo.client(), sources[0], b1_addr, TIMEOUT).expect("connect to b1");
    assert_eq!(ask(&open).expect("ask b1").backend, b1.name());
    drop(servers);
    ask(&open).expect_err("b1 answers after it was stopped");
    let err = tcp_ask(topo.client(), sources[0], b1_addr, TIMEOUT)
        .expect_err("b1 accepts after it was stopped");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    let err = udp_ask(topo.client(), sources[0], b1_addr, TIMEOUT)
        .expect_err("b1 answers UDP after it was stopped");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");

    // The gateway owns the VIP: with no balancer its own stack answers
    // (nothing listens there, so a refusal rather than a timeout).
    let err = tcp_ask(
        topo.client(),
        sources[0],
        SocketAddr::new(VIP_V4.into(), 80),
        TIMEOUT,
    )
    .expect_err("nothing listens on the VIP");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
}

#[test]
fn namespaces_are_removed_on_drop_and_on_panic() {
    let topo = Topology::new(&TopologyOpts {
        backends: 1,
        ..Default::default()
    });
    let names = topo.namespaces();
    assert_eq!(names.len(), 4);
    let listed = netns_list();
    for name in &names {
        assert!(
            listed.contains(name.as_str()),
            "{name} missing from {listed}"
        );
    }
    drop(topo);
    let listed = netns_list();
    for name in &names {
        assert!(
            !listed.contains(name.as_str()),
            "{name} left behind: {listed}"
        );
    }

    // A failing test unwinds through the guard, which still cleans up.
    let result = panic::catch_unwind(|| {
        let topo = Topology::new(&TopologyOpts {
            backends: 1,
            ..Default::default()
        });
        panic!("{:?}", topo.namespaces());
    });
    let payload = result.expect_err("closure panics");
    let message = payload
        .downcast_ref::<String>()
        .expect("formatted panic message");
    let listed = netns_list();
    for name in message.trim_matches(['[', ']']).split(", ") {
        let name = name.trim_matches('"');
        assert!(name.starts_with("lbt-"), "{name}");
        assert!(
            !listed.contains(name),
            "{name} left behind after a panic: {listed}"
        );
    }
}
