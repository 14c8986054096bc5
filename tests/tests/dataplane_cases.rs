//! The data plane beyond plain IPv4 TCP/UDP, through BPF_PROG_TEST_RUN on
//! the loaded program (real maps written by the real loader), every case in
//! XDP and in TC mode: IPv6 and its extension headers, IPv4 options, VLAN
//! tags, ICMP errors of balanced flows, fragments.
//!
//! Every forwarded frame is compared byte for byte with the frame built
//! from scratch as it should leave (NAT, TTL, MACs, checksums computed
//! anew), every pass-through with the frame that came in, and the counters
//! with exactly what each case should add.

use std::net::{IpAddr, SocketAddr};

use balancer_tests::{
    packet::{
        ETH_LEN, ETH_P_8021AD, ETH_P_8021Q, End, ExtHeader, Frame, ICMP_DEST_UNREACH,
        ICMP_ECHO_REQUEST, ICMP_FRAG_NEEDED, ICMP_PORT_UNREACH, ICMP_TIME_EXCEEDED,
        ICMPV6_DEST_UNREACH, ICMPV6_ECHO_REQUEST, ICMPV6_PACKET_TOO_BIG, L4, PROTO_ICMP,
        PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_PSH, TCP_SYN, assert_checksums_valid,
        checksum, parse, reassemble, set_quoted_end, vlan_tagged,
    },
    test_both_modes,
    xdp_fixture::{
        BACKEND_IF_MAC, CLIENT_IF_MAC, Fixture, Verdict, backend_index, backend_mac, client_mac,
    },
};

const VIP4: &str = "198.18.0.100";
const VIP6: &str = "2001:db8::100";

/// The backend `service` gives a client it does not know yet, predicted in
/// userspace.
fn predicted(fx: &Fixture, service: &str, client: &str, sport: u16) -> SocketAddr {
    let s = fx.service(service);
    let id = s
        .predict(client.parse().unwrap(), sport)
        .expect("the service has a table");
    s.backend_by_id(id).unwrap().address
}

fn sock(addr: &str, port: u16) -> SocketAddr {
    SocketAddr::new(addr.parse().unwrap(), port)
}

/// `f` as the balancer sends it to `backend`: destination rewritten, one
/// hop counted, MACs of the backend-side link.
fn to_backend(f: &Frame, backend: SocketAddr) -> Frame {
    Frame {
        src_mac: BACKEND_IF_MAC,
        dst_mac: backend_mac(backend_index(backend.ip())),
        dst: backend.ip(),
        dport: backend.port(),
        ttl: f.ttl - 1,
        ..f.clone()
    }
}

/// `f` as the balancer sends it to client number `i` (its MAC), from `vip`.
fn to_client(f: &Frame, vip: SocketAddr, i: u8) -> Frame {
    Frame {
        src_mac: CLIENT_IF_MAC,
        dst_mac: client_mac(i),
        src: vip.ip(),
        sport: vip.port(),
        ttl: f.ttl - 1,
        ..f.clone()
    }
}

/// A backend's packet to a client, arriving on the backend side.
fn from_backend(backend: SocketAddr, client: &str, cport: u16, proto: u8, flags: u8) -> Frame {
    Frame {
        src_mac: backend_mac(backend_index(backend.ip())),
        dst_mac: BACKEND_IF_MAC,
        ..Frame::of_proto(
            proto,
            backend.ip(),
            backend.port(),
            client.parse().unwrap(),
            cport,
            flags,
        )
    }
}

/// The protocol number of a configured service.
fn proto(fx: &Fixture, service: &str) -> u8 {
    if fx.service(service).config.protocol.to_string() == "udp" {
        PROTO_UDP
    } else {
        PROTO_TCP
    }
}

/// Send `frame` from the client side and expect exactly `want`, forwarded.
fn expect_forwarded(fx: &Fixture, from_client: bool, frame: &Frame, want: &Frame) {
    let input = frame.build();
    let (verdict, out) = if from_client {
        fx.run_client_frame(&input)
    } else {
        fx.run_backend_frame(&input)
    };
    assert_eq!(verdict, Verdict::Forwarded, "{frame:?}");
    assert_eq!(out, want.build(), "{frame:?}: rewritten as expected");
    assert_checksums_valid(&out);
}

/// Send `frame` and expect it passed untouched, counted under `counter`.
fn expect_passed(fx: &Fixture, from_client: bool, input: &[u8], counter: &'static str, what: &str) {
    let before = fx.counters();
    let (verdict, out) = if from_client {
        fx.run_client_frame(input)
    } else {
        fx.run_backend_frame(input)
    };
    assert_eq!(verdict, Verdict::Pass, "{what}");
    assert_eq!(out, input, "{what}: untouched");
    assert_eq!(
        fx.counters().since(&before),
        vec![(counter, 1)],
        "{what}: counted"
    );
}

/// A client's SYN to `vip:port`, the backend's SYN-ACK and its first ACK
/// (which confirms the flow: its conntrack entry is made), all checked: a
/// live flow. Returns its backend.
fn open_flow(
    fx: &Fixture,
    service: &str,
    client: &str,
    i: u8,
    cport: u16,
    vip: &str,
    port: u16,
) -> SocketAddr {
    open_flow_with(fx, service, client, i, cport, vip, port, |f| f)
}

/// [`open_flow`] with every packet `shape`d (options, extension headers).
#[allow(clippy::too_many_arguments)]
fn open_flow_with(
    fx: &Fixture,
    service: &str,
    client: &str,
    i: u8,
    cport: u16,
    vip: &str,
    port: u16,
    shape: impl Fn(Frame) -> Frame,
) -> SocketAddr {
    let proto = proto(fx, service);
    let first = shape(Frame {
        src_mac: client_mac(i),
        dst_mac: CLIENT_IF_MAC,
        ..Frame::of_proto(
            proto,
            client.parse().unwrap(),
            cport,
            vip.parse().unwrap(),
            port,
            TCP_SYN,
        )
    });
    let backend = predicted(fx, service, client, cport);
    expect_forwarded(fx, true, &first, &to_backend(&first, backend));
    let reply = shape(from_backend(
        backend,
        client,
        cport,
        proto,
        TCP_SYN | TCP_ACK,
    ));
    expect_forwarded(fx, false, &reply, &to_client(&reply, sock(vip, port), i));
    let confirm = shape(from_backend(backend, client, cport, proto, TCP_ACK));
    expect_forwarded(
        fx,
        false,
        &confirm,
        &to_client(&confirm, sock(vip, port), i),
    );
    backend
}

test_both_modes! {
    /// Both directions keep the FIB's next hop for about a second (a clock
    /// epoch): a neighbour change is taken within two.
    fn next_hops_follow_a_neighbour_change_within_two_seconds(fx) {
        let backend = open_flow(fx, "web", "198.18.0.20", 20, 47000, VIP4, 80);
        let b = backend_index(backend.ip());
        let (new_backend_mac, new_client_mac) = ([0x02, 0, 0, 0, 0xbb, b], [0x02, 0, 0, 0, 0xcc, 20]);
        let mac = balancer_tests::xdp_fixture::mac;
        for (addr, lladdr, dev) in [(backend.ip().to_string(), new_backend_mac, "veth1"), ("198.18.0.20".into(), new_client_mac, "veth0")] {
            let status = std::process::Command::new("ip")
                .args(["neigh", "replace", &addr, "lladdr", &mac(lladdr), "dev", dev, "nud", "permanent"])
                .status()
                .unwrap();
            assert!(status.success(), "ip neigh replace {addr}");
        }
        std::thread::sleep(std::time::Duration::from_millis(2200));
        let data = Frame { src_mac: client_mac(20), dst_mac: CLIENT_IF_MAC, ..Frame::tcp("198.18.0.20", 47000, VIP4, 80, TCP_ACK) };
        let want = Frame { dst_mac: new_backend_mac, ..to_backend(&data, backend) };
        expect_forwarded(fx, true, &data, &want);
        let reply = from_backend(backend, "198.18.0.20", 47000, PROTO_TCP, TCP_ACK);
        let want = Frame { dst_mac: new_client_mac, ..to_client(&reply, sock(VIP4, 80), 20) };
        expect_forwarded(fx, false, &reply, &want);
    }

    fn ipv6_syn_goes_to_the_predicted_backend_and_the_reply_comes_from_the_vip(fx) {
        let before = fx.counters();
        let backend = open_flow(fx, "web6", "2001:db8::1", 1, 40000, VIP6, 80);
        assert!(backend.is_ipv6());
        let data = Frame { payload: vec![7; 300], ..Frame::tcp("2001:db8::1", 40000, VIP6, 80, TCP_ACK | TCP_PSH) };
        expect_forwarded(fx, true, &data, &to_backend(&data, backend));
        // SYN-ACK and the first ACK had no entry; the ACK confirmed the flow.
        assert_eq!(
            fx.counters().since(&before),
            vec![("forward_to_backend", 2), ("forward_to_client", 2), ("forward_reply_without_flow", 2), ("flows_confirmed", 1)]
        );
        let id = fx.service("web6").backend(backend).unwrap().id;
        let stats = fx.dataplane.backend_stats(id).unwrap();
        assert_eq!((stats.connections_total, stats.packets_in, stats.packets_out), (1, 2, 2));

        // UDP, a four-tuple service: each client port on its own.
        for cport in [5000, 5001, 5002] {
            let dns = Frame::udp("2001:db8::2", cport, VIP6, 53);
            expect_forwarded(fx, true, &dns, &to_backend(&dns, predicted(fx, "dns6", "2001:db8::2", cport)));
        }
        let none = Frame { udp_no_checksum: true, ..Frame::udp("2001:db8::2", 5003, VIP6, 53) };
        expect_forwarded(fx, true, &none, &to_backend(&none, predicted(fx, "dns6", "2001:db8::2", 5003)));
    }

    fn ipv6_clients_of_one_64_share_a_backend(fx) {
        let web6 = fx.service("web6");
        let shared = predicted(fx, "web6", "2001:db8::1", 1);
        for (i, client) in ["2001:db8::1", "2001:db8::2", "2001:db8::abcd:1", "2001:db8::ffff:ffff:ffff:fffe"].iter().enumerate() {
            let syn = Frame::tcp(client, 41000 + i as u16, VIP6, 80, TCP_SYN).build();
            let (verdict, out) = fx.run_client_frame(&syn);
            assert_eq!(verdict, Verdict::Forwarded, "{client}");
            assert_eq!(parse(&out).dst_sock(), shared, "{client}: the /64's backend");
        }
        let mut used = std::collections::HashSet::new();
        for n in 1..40u16 {
            let backend = predicted(fx, "web6", &format!("2001:db8:0:{n:x}::1"), 0);
            for host in ["::1", "::beef", ":ffff:ffff:ffff:ffff"] {
                let client = format!("2001:db8:0:{n:x}{host}");
                let syn = Frame::tcp(&client, 42000 + n, VIP6, 80, TCP_SYN).build();
                let (verdict, out) = fx.run_client_frame(&syn);
                assert_eq!(verdict, Verdict::Forwarded, "{client}");
                assert_eq!(parse(&out).dst_sock(), backend, "{client}");
            }
            used.insert(backend);
        }
        assert_eq!(used.len(), web6.backends.len(), "/64s spread over every backend: {used:?}");
    }

    fn ipv4_options_are_kept_and_the_packet_balanced(fx) {
        let record_route = {
            let mut o = vec![7, 39, 4];
            o.resize(39, 0);
            o
        };
        for (i, options) in [vec![1, 1, 1, 0], vec![1; 8], record_route].into_iter().enumerate() {
            let shape = |f| Frame { ip_options: options.clone(), ..f };
            open_flow_with(fx, "web", "198.18.0.9", 9, 43000 + i as u16, VIP4, 80, shape);
        }
    }

    fn ipv6_hop_by_hop_destination_options_and_spent_routing_headers_are_walked(fx) {
        use ExtHeader::*;
        let chains = [
            vec![HopByHop { len: 0 }],
            vec![HopByHop { len: 0 }, DestOpts { len: 1 }],
            vec![Routing { segments_left: 0 }],
            vec![HopByHop { len: 2 }, DestOpts { len: 0 }, Routing { segments_left: 0 }, DestOpts { len: 0 }],
        ];
        for (i, chain) in chains.into_iter().enumerate() {
            let shape = |f| Frame { ext_headers: chain.clone(), ..f };
            open_flow_with(fx, "web6", "2001:db8::3", 3, 44000 + i as u16, VIP6, 80, shape);
        }
        let udp = Frame { ext_headers: vec![DestOpts { len: 3 }], ..Frame::udp("2001:db8::3", 5100, VIP6, 53) };
        expect_forwarded(fx, true, &udp, &to_backend(&udp, predicted(fx, "dns6", "2001:db8::3", 5100)));
    }

    fn ipv6_headers_the_balancer_does_not_walk_pass_untouched(fx) {
        use ExtHeader::*;
        let later = balancer_tests::packet::Fragment { offset: 8, more: true, id: 9 };
        let first = balancer_tests::packet::Fragment { offset: 0, more: true, id: 9 };
        let five = vec![HopByHop { len: 0 }, DestOpts { len: 0 }, DestOpts { len: 0 }, DestOpts { len: 0 }, DestOpts { len: 0 }];
        let cases = [
            ("routing header with segments left", vec![Routing { segments_left: 1 }]),
            ("routing header with segments left, after hop-by-hop", vec![HopByHop { len: 0 }, Routing { segments_left: 3 }]),
            ("AH", vec![Auth]),
            ("ESP", vec![Esp]),
            ("AH after destination options", vec![DestOpts { len: 0 }, Auth]),
            ("five extension headers", five),
            // A later fragment's data is not headers, whatever it looks like.
            (
                "a later fragment whose fragmentable part starts with destination options",
                vec![Fragment(later), DestOpts { len: 0 }],
            ),
            ("a later fragment whose data looks like a first fragment", vec![Fragment(later), Fragment(first)]),
        ];
        for (what, chain) in cases {
            let syn = Frame { ext_headers: chain, ..Frame::tcp("2001:db8::4", 45000, VIP6, 80, TCP_SYN) }.build();
            expect_passed(fx, true, &syn, "pass_ext_header", what);
        }
    }

    fn vlan_tagged_frames_pass_untouched(fx) {
        let frames = [
            Frame::tcp("198.18.0.10", 46000, VIP4, 80, TCP_SYN).build(),
            Frame::udp("198.18.0.10", 46000, VIP4, 53).build(),
            Frame::tcp("2001:db8::10", 46000, VIP6, 80, TCP_SYN).build(),
        ];
        for frame in &frames {
            for tpid in [ETH_P_8021Q, ETH_P_8021AD] {
                let tagged = vlan_tagged(frame, tpid, 42);
                expect_passed(fx, true, &tagged, "pass_vlan", &format!("tag {tpid:#06x}"));
                let double = vlan_tagged(&tagged, ETH_P_8021AD, 7);
                expect_passed(fx, true, &double, "pass_vlan", &format!("QinQ over {tpid:#06x}"));
            }
        }
        // A backend's reply of a live flow, tagged: not rewritten either.
        let backend = open_flow(fx, "web", "198.18.0.10", 10, 46001, VIP4, 80);
        let reply = from_backend(backend, "198.18.0.10", 46001, PROTO_TCP, TCP_ACK).build();
        expect_passed(fx, false, &vlan_tagged(&reply, ETH_P_8021Q, 5), "pass_vlan", "tagged reply");
    }

    /// Port 8080 has one service, `web-24` (TCP, 198.18.0.100): the kernel
    /// finds it by port alone (`VIP_PORTS`), then checks the rest of the
    /// VIP. Port 80 has two (`web`, `web6`), found by a SERVICES lookup.
    fn a_packet_on_a_vip_port_that_is_not_for_its_vip_passes_untouched(fx) {
        let cases = [
            ("another address", Frame::tcp("198.18.0.10", 46100, "198.18.0.99", 8080, TCP_SYN)),
            ("another protocol", Frame::udp("198.18.0.10", 46100, VIP4, 8080)),
            ("another family", Frame::tcp("2001:db8::10", 46100, VIP6, 8080, TCP_SYN)),
            ("another address, shared port", Frame::tcp("198.18.0.10", 46100, "198.18.0.99", 80, TCP_SYN)),
        ];
        for (what, frame) in cases {
            expect_passed(fx, true, &frame.build(), "pass_not_ours", what);
        }
        let backend = open_flow(fx, "web-24", "198.18.0.10", 10, 46101, VIP4, 8080);
        assert_eq!(backend.port(), 3001, "the port's one service");
    }

    fn frag_needed_and_packet_too_big_for_a_live_flow_go_to_its_backend(fx) {
        for (service, client, i, vip, router, icmp_type, code, mtu) in [
            ("web", "198.18.0.11", 11, VIP4, "198.18.0.250", ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 1400),
            ("web6", "2001:db8::11", 0x11, VIP6, "2001:db8:0:77::1", ICMPV6_PACKET_TOO_BIG, 0, 1280),
        ] {
            let backend = open_flow(fx, service, client, i, 47000, vip, 80);
            // The reply as it left the gateway (from the VIP), too big for a
            // link on the client's path.
            let reply = Frame { payload: vec![9; 200], ttl: 60, ..Frame::tcp(vip, 80, client, 47000, TCP_ACK | TCP_PSH) }.build();
            // At least the IP header and the ports, or as much as fits.
            for quote_len in [if vip == VIP4 { 28 } else { 48 }, 1000] {
                let error = Frame { dst_mac: CLIENT_IF_MAC, ..Frame::icmp_error(router, vip, icmp_type, code, mtu, &reply, quote_len) };
                // The backend gets it about its own packet: quoted source
                // (address and port) and destination are the backend's.
                let mut quote = error.payload.clone();
                set_quoted_end(&mut quote, 0, End::Source, backend);
                let want = Frame {
                    src_mac: BACKEND_IF_MAC,
                    dst_mac: backend_mac(backend_index(backend.ip())),
                    dst: backend.ip(),
                    ttl: error.ttl - 1,
                    payload: quote,
                    ..error.clone()
                };
                let before = fx.counters();
                expect_forwarded(fx, true, &error, &want);
                assert_eq!(fx.counters().since(&before), vec![("forward_icmp", 1)], "{service}, quote of {quote_len}");
            }
        }
    }

    fn an_error_from_a_backend_about_a_client_packet_goes_to_the_client_with_the_vip_quoted(fx) {
        for (service, client, i, vip, port, router, icmp_type, code) in [
            ("dns", "198.18.0.12", 12, VIP4, 53, "198.18.1.1", ICMP_DEST_UNREACH, ICMP_PORT_UNREACH),
            ("web6", "2001:db8::12", 0x12, VIP6, 80, "2001:db8:1::1", ICMPV6_DEST_UNREACH, 4),
        ] {
            let backend = open_flow(fx, service, client, i, 48000, vip, port);
            // The client's packet as it reached the backend (after DNAT).
            let dnatted = Frame::of_proto(proto(fx, service), client.parse().unwrap(), 48000, backend.ip(), backend.port(), TCP_ACK).build();
            let from_router = router.parse::<IpAddr>().unwrap();
            for (what, source) in [("from the backend", backend.ip()), ("from a router on the backend side", from_router)] {
                let error = Frame {
                    src: source,
                    src_mac: backend_mac(backend_index(backend.ip())),
                    dst_mac: BACKEND_IF_MAC,
                    ..Frame::icmp_error(&source.to_string(), client, icmp_type, code, 0, &dnatted, 1000)
                };
                let mut quote = error.payload.clone();
                set_quoted_end(&mut quote, 0, End::Destination, sock(vip, port));
                // The backend's own error comes from the VIP: the client
                // never sees a backend address.
                let src = if source == backend.ip() { vip.parse().unwrap() } else { source };
                let want = Frame { src, src_mac: CLIENT_IF_MAC, dst_mac: client_mac(i), ttl: error.ttl - 1, payload: quote, ..error.clone() };
                let before = fx.counters();
                expect_forwarded(fx, false, &error, &want);
                assert_eq!(fx.counters().since(&before), vec![("forward_icmp", 1)], "{service}: {what}");
            }
        }
    }

    /// A host that sends to a backend's own address, not through the VIP,
    /// gets the backend's ICMP errors untouched: even from the backend the
    /// host's VIP packets would be placed on, they are about the direct
    /// flow (`DIRECT`), not one of the VIP's.
    fn an_error_about_a_flow_straight_to_a_backend_passes_untouched(fx) {
        let client = "198.18.0.14";
        let backend = predicted(fx, "dns", client, 48100);
        let direct = Frame::udp(client, 48100, &backend.ip().to_string(), backend.port()).build();
        expect_passed(fx, true, &direct, "pass_not_ours", "a datagram straight to the backend");
        let error = Frame {
            src_mac: backend_mac(backend_index(backend.ip())),
            dst_mac: BACKEND_IF_MAC,
            ..Frame::icmp_error(&backend.ip().to_string(), client, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, 0, &direct, 1000)
        }
        .build();
        expect_passed(fx, false, &error, "pass_not_ours", "the backend's port unreachable about it");
    }

    fn icmp_that_is_not_about_a_balanced_flow_passes_untouched(fx) {
        let backend = open_flow(fx, "web", "198.18.0.13", 13, 49000, VIP4, 80);
        let live_reply = Frame::tcp(VIP4, 80, "198.18.0.13", 49000, TCP_ACK).build();
        let unknown = Frame::tcp(VIP4, 80, "198.18.0.13", 49999, TCP_ACK).build();
        let quoted_icmp = Frame {
            l4: L4::Icmp { icmp_type: ICMP_ECHO_REQUEST, code: 0, rest: 1 },
            ..Frame::tcp(VIP4, 0, "198.18.0.13", 0, 0)
        }
        .build();
        let echo = |src: &str, dst: &str, t: u8| {
            Frame { l4: L4::Icmp { icmp_type: t, code: 0, rest: 0x0001_0001 }, ..Frame::tcp(src, 0, dst, 0, 0) }.build()
        };
        let frag = |q: &[u8]| Frame::icmp_error("198.18.0.250", VIP4, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 1400, q, 1000).build();
        let cases = [
            ("echo request to the VIP", echo("198.18.0.13", VIP4, ICMP_ECHO_REQUEST)),
            ("ICMPv6 echo request to the VIP", echo("2001:db8::13", VIP6, ICMPV6_ECHO_REQUEST)),
            ("error about a flow never seen", frag(&unknown)),
            ("error about a live flow, not sent to its VIP", Frame::icmp_error("198.18.0.250", "198.18.0.77", ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 1400, &live_reply, 1000).build()),
            ("error quoting ICMP", frag(&quoted_icmp)),
            ("time exceeded about the backend's own address", Frame::icmp_error("198.18.0.250", &backend.ip().to_string(), ICMP_TIME_EXCEEDED, 0, 0, &Frame::tcp(&backend.ip().to_string(), backend.port(), "198.18.0.13", 49000, TCP_ACK).build(), 1000).build()),
        ];
        for (what, frame) in cases {
            expect_passed(fx, true, &frame, "pass_not_ours", what);
        }
        // The other family's ICMP protocol number: not an ICMP message.
        let mut v4_58 = frag(&live_reply);
        v4_58[ETH_LEN + 9] = PROTO_ICMPV6;
        v4_58[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&[0, 0]);
        let c = checksum(&v4_58[ETH_LEN..ETH_LEN + 20]);
        v4_58[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&c.to_be_bytes());
        expect_passed(fx, true, &v4_58, "pass_not_ours", "IPv4 with protocol 58");
        let backend6 = open_flow(fx, "web6", "2001:db8::13", 0x13, 49000, VIP6, 80);
        let live6 = Frame::tcp(VIP6, 80, "2001:db8::13", 49000, TCP_ACK).build();
        let too_big = Frame::icmp_error("2001:db8:5::1", VIP6, ICMPV6_PACKET_TOO_BIG, 0, 1280, &live6, 1000).build();
        let mut v6_1 = too_big.clone();
        v6_1[ETH_LEN + 6] = PROTO_ICMP;
        expect_passed(fx, true, &v6_1, "pass_not_ours", "IPv6 with next header 1");
        let (verdict, out) = fx.run_client_frame(&too_big);
        assert_eq!((verdict, parse(&out).dst()), (Verdict::Forwarded, backend6.ip()), "the same error as ICMPv6");
        // A quote cut before its ports cannot be placed.
        expect_passed(fx, true, &frag(&live_reply[..ETH_LEN + 22]), "pass_truncated", "quote without ports");
    }

    fn fragments_follow_their_first_fragment_both_ways(fx) {
        for (service, client, i, vip, port, id, udp) in [
            ("dns", "198.18.0.14", 14, VIP4, 53, 0x7701, true),
            ("web6", "2001:db8::14", 0x14, VIP6, 80, 0xdead_beef, false),
        ] {
            let f = if udp { Frame::udp(client, 5000, vip, port) } else { Frame::tcp(client, 5000, vip, port, TCP_ACK | TCP_PSH) };
            let f = Frame { payload: (0..100).collect(), src_mac: client_mac(i), dst_mac: CLIENT_IF_MAC, ..f };
            let backend = predicted(fx, service, client, 5000);
            let before = fx.counters();
            let outs = send_pieces(fx, true, &f.fragments(id, 48), &to_backend(&f, backend).fragments(id, 48));
            assert_eq!(fx.counters().since(&before), vec![("forward_to_backend", 1), ("forward_fragment", 2)], "{service}");
            let (first, segment) = reassemble(&outs.iter().map(Vec::as_slice).collect::<Vec<_>>()).unwrap();
            assert_eq!((first.dst_sock(), &segment[segment.len() - 100..]), (backend, &(0..100).collect::<Vec<u8>>()[..]));

            // The backend's reply, in pieces too, comes from the VIP.
            let reply = Frame { payload: vec![5; 70], ..from_backend(backend, client, 5000, f.proto(), TCP_ACK) };
            let before = fx.counters();
            send_pieces(fx, false, &reply.fragments(id ^ 1, 32), &to_client(&reply, sock(vip, port), i).fragments(id ^ 1, 32));
            // It has no conntrack entry yet: translated from config, and
            // the flow confirmed by it.
            assert_eq!(
                fx.counters().since(&before),
                vec![("forward_to_client", 1), ("forward_fragment", 2), ("forward_reply_without_flow", 1), ("flows_confirmed", 1)],
                "{service} reply"
            );
        }
    }

    fn a_later_fragment_before_its_first_goes_where_the_first_will_on_a_source_ip_service(fx) {
        for (service, client, i, vip, port, udp) in [
            ("dns", "198.18.0.15", 15, VIP4, 53, true),
            ("web6", "2001:db8::15", 0x15, VIP6, 80, false),
        ] {
            let f = if udp { Frame::udp(client, 5001, vip, port) } else { Frame::tcp(client, 5001, vip, port, TCP_ACK) };
            let f = Frame { payload: (0..100).collect(), src_mac: client_mac(i), dst_mac: CLIENT_IF_MAC, ..f };
            let backend = predicted(fx, service, client, 5001);
            let (pieces, want) = (f.fragments(0x5150, 48), to_backend(&f, backend).fragments(0x5150, 48));
            let before = fx.counters();
            // Last, first, middle: the client address alone places the last.
            let order = [2, 0, 1];
            let outs = send_pieces(fx, true, &order.map(|k| pieces[k].clone()), &order.map(|k| want[k].clone()));
            assert_eq!(fx.counters().since(&before), vec![("forward_to_backend", 1), ("forward_fragment", 2)], "{service}");
            reassemble(&outs.iter().map(Vec::as_slice).collect::<Vec<_>>()).unwrap();
        }
    }

    fn a_later_fragment_before_its_first_passes_where_the_client_address_cannot_place_it(fx) {
        for (service, client, i, vip, port, udp) in [
            ("quic", "198.18.0.16", 16, "198.18.0.101", 443, true),
            ("dns6", "2001:db8::16", 0x16, VIP6, 53, true),
            // 198.18.0.100 has three source-ip TCP services: which one?
            ("web", "198.18.0.16", 16, VIP4, 80, false),
        ] {
            let f = if udp { Frame::udp(client, 5002, vip, port) } else { Frame::tcp(client, 5002, vip, port, TCP_ACK) };
            let f = Frame { payload: (0..60).collect(), src_mac: client_mac(i), dst_mac: CLIENT_IF_MAC, ..f };
            let pieces = f.fragments(0x6160, 40);
            expect_passed(fx, true, &pieces[1], "pass_fragment", &format!("{service}: later fragment first"));
            // Once the first has been through, the later one follows it.
            let backend = predicted(fx, service, client, 5002);
            let want = to_backend(&f, backend).fragments(0x6160, 40);
            send_pieces(fx, true, &pieces, &want);
        }
    }
}

/// Send each piece, expect each forwarded exactly as `want`; the outputs.
fn send_pieces(
    fx: &Fixture,
    from_client: bool,
    pieces: &[Vec<u8>],
    want: &[Vec<u8>],
) -> Vec<Vec<u8>> {
    assert_eq!(pieces.len(), want.len());
    pieces
        .iter()
        .zip(want)
        .enumerate()
        .map(|(k, (piece, want))| {
            let (verdict, out) = if from_client {
                fx.run_client_frame(piece)
            } else {
                fx.run_backend_frame(piece)
            };
            assert_eq!(verdict, Verdict::Forwarded, "piece {k}");
            assert_eq!(&out, want, "piece {k} rewritten as expected");
            assert_checksums_valid(&out);
            out
        })
        .collect()
}
