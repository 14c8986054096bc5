//! Packets other than plain TCP/UDP through the gateway, with real kernels
//! at both ends (runs in `BALANCER_TEST_MODE`):
//!
//! - ICMP errors of balanced flows reach the other end of the flow: a
//!   "fragmentation needed" / "packet too big" for a VIP flow teaches the
//!   backend the path MTU (its kernel only learns it when the quoted packet
//!   matches its own socket, after the balancer rewrote it), and a backend's
//!   "port unreachable" fails the client's socket, which only happens when
//!   the quote names the VIP again;
//! - datagrams larger than the MTU cross in fragments both ways, on
//!   `source-ip` and `four-tuple` services, IPv4 and IPv6;
//! - 802.1Q-tagged frames pass to the kernel untouched, never balanced.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use balancer_common::counters::Counter;
use balancer_tests::{
    NetNs, TIMEOUT, Topology, TopologyOpts,
    bpffs::TempBpffs,
    daemon::{Daemon, backends_toml, config_head, test_mode},
    packet::{
        ETH_P_8021Q, Frame, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, ICMPV6_PACKET_TOO_BIG, vlan_tagged,
    },
    require_root,
    topology::{VIP_V4, VIP_V6},
    udp_ask, udp_ask_sized, udp_whoami,
    xdp_fixture::Counters,
};

const DNS: u16 = 53;
const DNS_BACKEND: u16 = 5353;
/// A UDP service whose backends listen on no port: they answer with ICMP
/// port unreachable.
const CLOSED: u16 = 54;
const CLOSED_BACKEND: u16 = 5999;
const SPREAD: u16 = 55;

fn udp_services(topo: &Topology, bpffs: &TempBpffs) -> String {
    let mut config = config_head(bpffs, "127.0.0.1:9090");
    for (vip, family) in [(IpAddr::V4(VIP_V4), 4), (IpAddr::V6(VIP_V6), 6)] {
        let backends = |port| {
            backends_toml(topo.backends().iter().map(|b| {
                let ip: IpAddr = if family == 4 {
                    b.v4().into()
                } else {
                    b.v6().into()
                };
                SocketAddr::new(ip, port)
            }))
        };
        for (name, port, backend_port, affinity) in [
            ("dns", DNS, DNS_BACKEND, "source-ip"),
            ("closed", CLOSED, CLOSED_BACKEND, "source-ip"),
            ("spread", SPREAD, DNS_BACKEND, "four-tuple"),
        ] {
            config += &format!(
                "[[services]]\nname = \"{name}{family}\"\nvip = \"{}\"\nprotocol = \"udp\"\naffinity = \"{affinity}\"\n\
                 [services.health]\ncheck = \"none\"\n{}\n",
                SocketAddr::new(vip, port),
                backends(backend_port)
            );
        }
    }
    config
}

struct Rig {
    topo: Topology,
    bpffs: TempBpffs,
    _daemon: Daemon,
    _servers: Vec<balancer_tests::Server>,
}

fn rig() -> Rig {
    require_root();
    let topo = Topology::new(&TopologyOpts::default());
    let bpffs = TempBpffs::new();
    let servers = topo
        .backends()
        .iter()
        .map(|b| udp_whoami(b.ns(), b.name(), DNS_BACKEND))
        .collect();
    let mut daemon = Daemon::start(
        topo.gw(),
        &udp_services(&topo, &bpffs),
        &bpffs.pin_dir(),
        &[],
    );
    daemon.wait_serving(topo.gw(), &bpffs.control_socket());
    Rig {
        topo,
        bpffs,
        _daemon: daemon,
        _servers: servers,
    }
}

impl Rig {
    fn backend_ns(&self, name: &str) -> &NetNs {
        self.topo
            .backends()
            .iter()
            .find(|b| b.name() == name)
            .expect("a backend")
            .ns()
    }
}

/// The path MTU `ns`'s kernel has learnt towards `dst`, if any.
fn learnt_mtu(ns: &NetNs, dst: IpAddr) -> Option<u32> {
    let out = ns.exec("ip", ["route", "get", &dst.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[0] == "mtu")
        .and_then(|w| w[1].parse().ok())
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within 3 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A "too big" ICMP error (v4: fragmentation needed; v6: packet too big)
/// naming `mtu`, from `router` to the VIP, quoting the first 8 bytes of a
/// big UDP datagram `vip → client` (a reply the VIP sent), as a router on
/// the client's path would send it; out of the client's link as a frame.
fn send_too_big(client_ns: &NetNs, router: IpAddr, vip: SocketAddr, client: SocketAddr, mtu: u32) {
    let mut quoted = Frame::udp(
        &vip.ip().to_string(),
        vip.port(),
        &client.ip().to_string(),
        client.port(),
    );
    quoted.payload = vec![0; 1400];
    let (icmp_type, code, ip_header) = if vip.is_ipv4() {
        (ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 20)
    } else {
        (ICMPV6_PACKET_TOO_BIG, 0, 40)
    };
    let error = Frame::icmp_error(
        &router.to_string(),
        &vip.ip().to_string(),
        icmp_type,
        code,
        mtu,
        &quoted.build(),
        ip_header + 8,
    );
    send_frames(client_ns, "eth0", &[error.build()]);
}

#[test]
fn a_path_mtu_error_for_a_vip_flow_reaches_its_backend() {
    let rig = rig();
    let topo = &rig.topo;
    // v4: a client's flow to the VIP, then a router (here: another client
    // address) says the path to that client takes 1000 bytes at most.
    let client = topo.clients_v4()[3];
    let router = topo.clients_v4()[9];
    let vip = SocketAddr::new(VIP_V4.into(), DNS);
    let answer = udp_ask(topo.client(), client.into(), vip, TIMEOUT).expect("UDP over v4");
    let backend = rig.backend_ns(&answer.backend);
    assert_eq!(
        learnt_mtu(backend, client.into()),
        None,
        "no PMTU known before"
    );
    send_too_big(topo.client(), router.into(), vip, answer.local, 1000);
    let mtu = wait_for("the backend learns the v4 path MTU", || {
        learnt_mtu(backend, client.into())
    });
    assert_eq!(mtu, 1000);
    for other in topo
        .backends()
        .iter()
        .filter(|b| b.name() != answer.backend)
    {
        assert_eq!(
            learnt_mtu(other.ns(), client.into()),
            None,
            "{} learnt it too",
            other.name()
        );
    }

    // v6: "packet too big".
    let client6 = topo.clients_v6()[3];
    let router6 = topo.clients_v6()[9];
    let vip6 = SocketAddr::new(VIP_V6.into(), DNS);
    let answer6 = udp_ask(topo.client(), client6.into(), vip6, TIMEOUT).expect("UDP over v6");
    let backend6 = rig.backend_ns(&answer6.backend);
    send_too_big(topo.client(), router6.into(), vip6, answer6.local, 1280);
    let mtu6 = wait_for("the backend learns the v6 path MTU", || {
        learnt_mtu(backend6, client6.into())
    });
    assert_eq!(mtu6, 1280);
    println!(
        "pmtu: {} learnt mtu {mtu} (v4), {} learnt mtu {mtu6} (v6)",
        answer.backend, answer6.backend
    );
}

/// A connected UDP socket's answer to one request: the reply, or the error
/// the kernel delivered (ECONNREFUSED after an ICMP port unreachable).
fn udp_exchange(ns: &NetNs, src: IpAddr, dst: SocketAddr) -> io::Result<usize> {
    let socket = ns.run(|| {
        let s = UdpSocket::bind(SocketAddr::new(src, 0))?;
        s.connect(dst)?;
        s.set_read_timeout(Some(TIMEOUT))?;
        io::Result::Ok(s)
    })?;
    socket.send(b"peer\n")?;
    socket.recv(&mut [0u8; 512])
}

#[test]
fn a_backends_port_unreachable_reaches_the_client_as_the_vips() {
    let rig = rig();
    let topo = &rig.topo;
    for (client, vip) in [
        (IpAddr::V4(topo.clients_v4()[5]), IpAddr::V4(VIP_V4)),
        (IpAddr::V6(topo.clients_v6()[5]), IpAddr::V6(VIP_V6)),
    ] {
        let started = Instant::now();
        let err = udp_exchange(topo.client(), client, SocketAddr::new(vip, CLOSED))
            .expect_err("nothing listens there");
        assert_eq!(
            err.kind(),
            io::ErrorKind::ConnectionRefused,
            "{client}: the backend's ICMP error should fail the socket, got {err} after {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn datagrams_bigger_than_the_mtu_cross_in_fragments_both_ways() {
    let rig = rig();
    let topo = &rig.topo;
    let mut lines = Vec::new();
    for (vip, clients) in [
        (
            IpAddr::V4(VIP_V4),
            topo.clients_v4()
                .iter()
                .take(6)
                .map(|&a| IpAddr::V4(a))
                .collect::<Vec<_>>(),
        ),
        (
            IpAddr::V6(VIP_V6),
            topo.clients_v6()
                .iter()
                .take(6)
                .map(|&a| IpAddr::V6(a))
                .collect::<Vec<_>>(),
        ),
    ] {
        for port in [DNS, SPREAD] {
            let service = SocketAddr::new(vip, port);
            for &client in &clients {
                let small = udp_ask(topo.client(), client, service, TIMEOUT)
                    .unwrap_or_else(|e| panic!("{client} → {service}: {e}"));
                let (big, len) = udp_ask_sized(topo.client(), client, service, 4000, TIMEOUT)
                    .unwrap_or_else(|e| panic!("{client} → {service}, 4000 bytes each way: {e}"));
                assert_eq!(
                    len, 4000,
                    "{client} → {service}: the whole big reply came back"
                );
                assert_eq!(big.seen, big.local, "no source NAT");
                if port == DNS {
                    assert_eq!(
                        big.backend, small.backend,
                        "{client}: source-ip keeps a client on its backend"
                    );
                }
            }
            lines.push(format!(
                "{service}: {} clients, 4000-byte datagrams both ways",
                clients.len()
            ));
        }
    }
    println!("fragments: {}", lines.join("; "));
}

/// A datagram `src → VIP:53`, 802.1Q-tagged with `vlan` if given.
fn dns_frame(src: Ipv4Addr, vlan: Option<u16>) -> Vec<u8> {
    let mut frame = Frame::udp(&src.to_string(), 40000, &VIP_V4.to_string(), DNS);
    frame.payload = b"peer\n".to_vec();
    let bytes = frame.build();
    match vlan {
        Some(id) => vlan_tagged(&bytes, ETH_P_8021Q, id),
        None => bytes,
    }
}

/// Send raw frames out of the client's interface (AF_PACKET).
fn send_frames(ns: &NetNs, ifname: &str, frames: &[Vec<u8>]) {
    let ifindex = ns.ifindex(ifname);
    ns.run(|| unsafe {
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            i32::from((libc::ETH_P_ALL as u16).to_be()),
        );
        assert!(fd >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        for frame in frames {
            let sent = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(
                sent,
                frame.len() as isize,
                "sendto: {}",
                io::Error::last_os_error()
            );
        }
        libc::close(fd);
    });
}

#[test]
fn vlan_tagged_frames_pass_to_the_kernel_untouched() {
    let rig = rig();
    let topo = &rig.topo;
    let client = topo.clients_v4()[2];
    let counter = |c| Counters::read_pinned(&rig.bpffs.pin_dir()).get(c);
    let tagged: Vec<_> = (0..20).map(|_| dns_frame(client, Some(100))).collect();
    let before = (
        counter(Counter::PassVlan),
        counter(Counter::ForwardToBackend),
    );
    send_frames(topo.client(), "eth0", &tagged);
    let vlan = wait_for("20 tagged frames counted", || {
        let n = counter(Counter::PassVlan) - before.0;
        (n >= 20).then_some(n)
    });
    assert_eq!(vlan, 20, "each tagged frame passed once");
    assert_eq!(
        counter(Counter::ForwardToBackend),
        before.1,
        "a tagged frame was balanced"
    );
    // The same datagram untagged is balanced: the tag alone made the difference.
    send_frames(topo.client(), "eth0", &[dns_frame(client, None)]);
    wait_for("the untagged frame balanced", || {
        (counter(Counter::ForwardToBackend) > before.1).then_some(())
    });
    println!(
        "vlan: 20 tagged frames passed untouched ({} mode), the untagged one balanced",
        test_mode()
    );
}
