//! BPF_PROG_TEST_RUN on crafted IPv4 frames: the loaded program (real maps,
//! written by the real loader) gets one frame at a time (repeat = 1), and
//! the verdict and every rewritten byte are checked, checksums recomputed
//! from scratch. Every case runs in XDP and in TC mode (`NAME::xdp`,
//! `NAME::tc`); IPv6, ICMP, fragments and VLAN tags are in `dataplane_cases`.
//!
//! Runs in a namespace of its own with two veths (client side, backend side)
//! and permanent neighbour entries, so `bpf_fib_lookup` succeeds and the
//! full fast path (NAT, TTL, MACs, redirect) is exercised.

use std::{net::IpAddr, str::FromStr};

use balancer_common::{
    addr::to_words,
    counters::Counter,
    types::{FlowKey, TCP_FIN_FROM_BACKEND, TCP_FIN_FROM_CLIENT, tcp_closed},
};
use balancer_tests::{
    packet::{ETH_LEN, Frame, TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN, assert_checksums_valid, parse},
    test_both_modes,
    xdp_fixture::{BACKEND_IF_MAC, CLIENT_IF_MAC, CLIENT_MAC, Verdict, backend_index, backend_mac},
};
use balancer_user::state::ServiceState;

/// The backend `service` gives a new client, predicted in userspace.
fn predicted(service: &ServiceState, client: &str, sport: u16) -> std::net::SocketAddr {
    let id = service
        .predict(IpAddr::from_str(client).unwrap(), sport)
        .unwrap();
    service.backend_by_id(id).unwrap().address
}

test_both_modes! {
    fn vip_syn_is_natted_to_the_predicted_backend_and_forwarded(fx) {
        let frame = Frame::tcp("198.18.0.1", 40000, "198.18.0.100", 80, TCP_SYN).build();
        let (verdict, out) = fx.run_client_frame(&frame);
        assert_eq!(verdict, Verdict::Forwarded, "VIP SYN is redirected to the backend side");
        let want = predicted(fx.service("web"), "198.18.0.1", 40000);
        let p = parse(&out);
        assert_eq!(p.dst(), want.ip(), "DNAT to the predicted backend");
        assert_eq!(p.dport(), want.port());
        assert_eq!((p.src().to_string().as_str(), p.sport()), ("198.18.0.1", 40000), "source untouched");
        assert_eq!(p.ip.ttl, 63, "TTL decremented once");
        assert_eq!(p.dst_mac, backend_mac(backend_index(want.ip())), "next hop MAC from the FIB");
        assert_eq!(p.src_mac, BACKEND_IF_MAC, "egress interface MAC");
        assert_eq!(out.len(), frame.len());
        assert_eq!(&out[ETH_LEN + 20 + 20..], &frame[ETH_LEN + 20 + 20..], "payload untouched");
        assert_checksums_valid(&out);

        // The same flow's next packet takes the conntrack path to the same
        // backend; so does a second connection from the same client.
        let data = Frame::tcp("198.18.0.1", 40000, "198.18.0.100", 80, TCP_ACK | TCP_PSH).build();
        let (verdict, out) = fx.run_client_frame(&data);
        assert_eq!(verdict, Verdict::Forwarded);
        assert_eq!(parse(&out).dst(), want.ip());
        assert_checksums_valid(&out);
        let id = fx.service("web").backend(want).unwrap().id;
        let stats = fx.dataplane.backend_stats(id).unwrap();
        assert_eq!(stats.connections_total, 1, "one new connection counted");
        assert_eq!(stats.packets_in, 2);
        assert_eq!(stats.bytes_in, (frame.len() + data.len()) as u64);
    }

    fn backend_reply_is_natted_back_to_the_vip(fx) {
        let syn = Frame::tcp("198.18.0.1", 40001, "198.18.0.100", 80, TCP_SYN).build();
        let (_, out) = fx.run_client_frame(&syn);
        let backend = parse(&out);

        let reply = Frame {
            src_mac: backend_mac(backend_index(backend.dst())),
            dst_mac: BACKEND_IF_MAC,
            ..Frame::tcp(&backend.dst().to_string(), backend.dport(), "198.18.0.1", 40001, TCP_SYN | TCP_ACK)
        }
        .build();
        let (verdict, out) = fx.run_backend_frame(&reply);
        assert_eq!(verdict, Verdict::Forwarded, "reply redirected to the client side");
        let p = parse(&out);
        assert_eq!((p.src().to_string().as_str(), p.sport()), ("198.18.0.100", 80), "SNAT back to the VIP");
        assert_eq!((p.dst().to_string().as_str(), p.dport()), ("198.18.0.1", 40001));
        assert_eq!(p.dst_mac, CLIENT_MAC);
        assert_eq!(p.src_mac, CLIENT_IF_MAC);
        assert_eq!(p.ip.ttl, 63);
        assert_checksums_valid(&out);
        assert_eq!(fx.counter(Counter::ForwardToClient), 1);
    }

    fn a_reply_from_a_host_that_is_not_the_flows_backend_passes_untouched(fx) {
        let syn = Frame::tcp("198.18.0.1", 40020, "198.18.0.100", 80, TCP_SYN).build();
        let (_, out) = fx.run_client_frame(&syn);
        let backend = parse(&out);
        // Another backend of the same service, from the same port: the
        // flow's conntrack key is rebuilt all the same, and the check on
        // its backend is what keeps this packet from being rewritten.
        let other = fx.service("web").backends.iter().find(|b| b.address.ip() != backend.dst()).unwrap().address;
        let spoof = Frame::tcp(&other.ip().to_string(), other.port(), "198.18.0.1", 40020, TCP_SYN | TCP_ACK).build();
        let before = fx.counter(Counter::PassNotOurs);
        assert_eq!(fx.run_backend_frame(&spoof), (Verdict::Pass, spoof.clone()), "passed untouched");
        assert_eq!(fx.counter(Counter::PassNotOurs), before + 1, "counted");
        assert_eq!(fx.counter(Counter::ForwardToClient), 0);
        let reply = Frame::tcp(&backend.dst().to_string(), backend.dport(), "198.18.0.1", 40020, TCP_SYN | TCP_ACK).build();
        assert_eq!(fx.run_backend_frame(&reply).0, Verdict::Forwarded, "the flow's own backend is answered for");
    }

    fn reply_to_a_client_without_a_neighbour_entry_goes_to_its_learned_mac(fx) {
        let client_mac = [0x02, 0, 0, 0, 0x0c, 0xc9];
        let syn = Frame { src_mac: client_mac, dst_mac: CLIENT_IF_MAC, ..Frame::tcp("198.18.0.201", 40010, "198.18.0.100", 80, TCP_SYN) }.build();
        let (_, out) = fx.run_client_frame(&syn);
        let backend = parse(&out);
        let reply = Frame::tcp(&backend.dst().to_string(), backend.dport(), "198.18.0.201", 40010, TCP_SYN | TCP_ACK).build();
        let (verdict, out) = fx.run_backend_frame(&reply);
        assert_eq!(verdict, Verdict::Forwarded, "not handed to the kernel, which would drop a VIP-sourced packet");
        let p = parse(&out);
        assert_eq!((p.dst_mac, p.src_mac), (client_mac, CLIENT_IF_MAC), "the MACs of the client's own SYN, swapped");
        assert_eq!(p.src().to_string(), "198.18.0.100");
        assert_checksums_valid(&out);
        assert_eq!(fx.counter(Counter::NoNeighbourLearnedMac), 1);
    }

    fn udp_vip_is_natted_with_and_without_checksum(fx) {
        let frame = Frame::udp("198.18.0.7", 5000, "198.18.0.100", 53).build();
        let (verdict, out) = fx.run_client_frame(&frame);
        assert_eq!(verdict, Verdict::Forwarded);
        let want = predicted(fx.service("dns"), "198.18.0.7", 5000);
        let p = parse(&out);
        assert_eq!((p.dst(), p.dport()), (want.ip(), want.port()));
        assert_checksums_valid(&out);

        let no_sum = Frame { udp_no_checksum: true, ..Frame::udp("198.18.0.7", 5001, "198.18.0.100", 53) }.build();
        let (verdict, out) = fx.run_client_frame(&no_sum);
        assert_eq!(verdict, Verdict::Forwarded);
        assert_eq!(parse(&out).l4_checksum, Some(0), "a UDP checksum of 0 (none) stays 0");
        assert_checksums_valid(&out);
    }

    fn traffic_not_for_a_vip_passes_untouched(fx) {
        let cases = [
            ("to a backend's own address", Frame::tcp("198.18.0.1", 40000, "198.18.1.11", 3000, TCP_SYN).build()),
            ("to the VIP on another port", Frame::tcp("198.18.0.1", 40000, "198.18.0.100", 9999, TCP_SYN).build()),
            ("UDP to a TCP VIP port", Frame::udp("198.18.0.1", 40000, "198.18.0.100", 80).build()),
            (
                "from a backend, not a balanced flow",
                Frame::tcp("198.18.1.11", 3000, "198.18.0.1", 45555, TCP_ACK).build(),
            ),
        ];
        for (what, frame) in cases {
            let before = fx.counter(Counter::PassNotOurs);
            let (verdict, out) = fx.run_client_frame(&frame);
            assert_eq!(verdict, Verdict::Pass, "{what}");
            assert_eq!(out, frame, "{what}: bytes untouched");
            assert_eq!(fx.counter(Counter::PassNotOurs), before + 1, "{what}: counted");
        }
        let mut arp = Frame::tcp("198.18.0.1", 1, "198.18.0.100", 80, TCP_SYN).build();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(fx.run_client_frame(&arp), (Verdict::Pass, arp.clone()), "non-IP ethertype");
    }

    fn truncated_frames_at_every_length_pass_untouched(fx) {
        let full = Frame::tcp("198.18.0.1", 40003, "198.18.0.100", 80, TCP_SYN).build();
        // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header.
        // TC: from the IPv4 header on (see `Fixture::runnable`).
        for len in (ETH_LEN..full.len()).filter(|&len| fx.runnable(&full[..len])) {
            let cut = &full[..len];
            let before = fx.counter(Counter::PassTruncated);
            let (verdict, out) = fx.run_client_frame(cut);
            assert_eq!(verdict, Verdict::Pass, "cut at {len}");
            assert_eq!(out, cut, "cut at {len}: untouched");
            assert_eq!(fx.counter(Counter::PassTruncated), before + 1, "cut at {len}: counted as truncated");
        }
        // An IHL below 5 and a total length beyond the frame are malformed too.
        let mut bad_ihl = full.clone();
        bad_ihl[ETH_LEN] = 0x44;
        assert_eq!(fx.run_client_frame(&bad_ihl), (Verdict::Pass, bad_ihl.clone()));
        let mut long_total = full.clone();
        long_total[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&2000u16.to_be_bytes());
        assert_eq!(fx.run_client_frame(&long_total), (Verdict::Pass, long_total.clone()));
        assert_eq!(fx.counter(Counter::ForwardToBackend), 0, "nothing truncated was forwarded");
    }

    fn expiring_ttl_is_left_to_the_kernel(fx) {
        let mut f = Frame::tcp("198.18.0.1", 40004, "198.18.0.100", 80, TCP_SYN);
        f.ttl = 1;
        let frame = f.build();
        assert_eq!(fx.run_client_frame(&frame), (Verdict::Pass, frame.clone()));
        assert_eq!(fx.counter(Counter::PassTtlExpired), 1);
    }

    fn a_service_without_backends_drops_with_a_reason(fx) {
        let frame = Frame::tcp("198.18.0.1", 40005, "198.18.0.100", 81, TCP_SYN).build();
        assert_eq!(fx.run_client_frame(&frame).0, Verdict::Drop);
        assert_eq!(fx.counter(Counter::DropNoBackend), 1);
    }

    fn kernel_choice_matches_userspace_lookup_for_100_clients(fx) {
        let mut used = std::collections::HashSet::new();
        for service in ["web", "web-24"] {
            let svc = fx.service(service);
            for i in 0..100u16 {
                let client = format!("198.18.{}.{}", 100 + i / 50, 1 + i % 50);
                let sport = 20000 + i;
                let frame = Frame::tcp(&client, sport, "198.18.0.100", svc.config.vip.port(), TCP_SYN).build();
                let (verdict, out) = fx.run_client_frame(&frame);
                assert_eq!(verdict, Verdict::Forwarded, "{client}");
                let p = parse(&out);
                let want = predicted(svc, &client, sport);
                assert_eq!((p.dst(), p.dport()), (want.ip(), want.port()), "{service}: {client}");
                used.insert(want);
            }
        }
        assert!(used.len() >= 4, "clients spread over backends: {used:?}");
    }

    fn fin_and_rst_are_recorded_and_a_new_syn_reopens(fx) {
        let syn = Frame::tcp("198.18.0.2", 40006, "198.18.0.100", 80, TCP_SYN).build();
        let (_, out) = fx.run_client_frame(&syn);
        let backend = parse(&out);
        let fin = Frame::tcp("198.18.0.2", 40006, "198.18.0.100", 80, TCP_FIN | TCP_ACK).build();
        fx.run_client_frame(&fin);
        let reply_fin = Frame {
            src_mac: backend_mac(backend_index(backend.dst())),
            ..Frame::tcp(&backend.dst().to_string(), backend.dport(), "198.18.0.2", 40006, TCP_FIN | TCP_ACK)
        }
        .build();
        assert_eq!(fx.run_backend_frame(&reply_fin).0, Verdict::Forwarded);
        let (src, _) = to_words("198.18.0.2".parse().unwrap());
        let (vip, family) = to_words("198.18.0.100".parse().unwrap());
        let key = FlowKey { src, dst: vip, sport: 40006u16.to_be(), dport: 80u16.to_be(), proto: 6, family, _pad: [0; 2] };
        let flow = fx.dataplane.flow(&key).unwrap().expect("conntrack entry");
        // Each direction's FIN in its own field (a shared word lost one when
        // both ends closed at once on two CPUs).
        assert_eq!(flow.client_tcp_state, TCP_FIN_FROM_CLIENT);
        assert_eq!(u32::from(flow.backend_tcp_state), TCP_FIN_FROM_BACKEND);
        assert!(tcp_closed(flow.tcp_state()));
        // Port reuse: a SYN on the closed flow counts as a new connection.
        let id = fx.service("web").backend(std::net::SocketAddr::new(backend.dst(), backend.dport())).unwrap().id;
        let before = fx.dataplane.backend_stats(id).unwrap().connections_total;
        let (verdict, out) = fx.run_client_frame(&syn);
        assert_eq!(verdict, Verdict::Forwarded);
        assert_eq!(parse(&out).dst(), backend.dst(), "affinity keeps the client on its backend");
        assert_eq!(fx.dataplane.backend_stats(id).unwrap().connections_total, before + 1);
    }
}

/// The fixture's services, and a second VIP with the same backends as
/// `web`: each of those backends serves two VIPs.
fn config_with_an_alias_of_web() -> String {
    let alias =
        "\n[[services]]\nname = \"web-alias\"\nvip = \"198.18.0.102:80\"\ntable_size = 251\n";
    let backends: String = (11..=13)
        .map(|i| format!("[[services.backends]]\naddress = \"198.18.1.{i}:3000\"\n"))
        .collect();
    format!("{}{alias}{backends}", balancer_tests::xdp_fixture::CONFIG)
}

/// A reply's VIP is found among those its backend serves: each flow's
/// replies come from the VIP its client connected to, whichever of the
/// backend's VIPs that is.
fn a_backend_of_two_services_answers_each_flow_from_its_own_vip(
    fx: &balancer_tests::xdp_fixture::Fixture,
) {
    for (sport, vip) in [(40040, "198.18.0.100"), (40041, "198.18.0.102")] {
        let syn = Frame::tcp("198.18.0.2", sport, vip, 80, TCP_SYN).build();
        let (verdict, out) = fx.run_client_frame(&syn);
        assert_eq!(verdict, Verdict::Forwarded, "{vip}");
        let backend = parse(&out);
        let reply = Frame::tcp(
            &backend.dst().to_string(),
            backend.dport(),
            "198.18.0.2",
            sport,
            TCP_SYN | TCP_ACK,
        )
        .build();
        let (verdict, out) = fx.run_backend_frame(&reply);
        assert_eq!(verdict, Verdict::Forwarded, "reply of the flow to {vip}");
        let p = parse(&out);
        assert_eq!(
            (p.src().to_string().as_str(), p.sport()),
            (vip, 80),
            "SNAT to the flow's own VIP"
        );
        assert_checksums_valid(&out);
    }
    assert_eq!(fx.counter(Counter::ForwardToClient), 2);
}

mod a_backend_of_two_services {
    use balancer_tests::xdp_fixture::{Mode, with_fixture_config};

    #[test]
    fn xdp() {
        with_fixture_config(
            Mode::Xdp,
            &super::config_with_an_alias_of_web(),
            super::a_backend_of_two_services_answers_each_flow_from_its_own_vip,
        );
    }

    #[test]
    fn tc() {
        with_fixture_config(
            Mode::Tc,
            &super::config_with_an_alias_of_web(),
            super::a_backend_of_two_services_answers_each_flow_from_its_own_vip,
        );
    }
}
