//! BPF_PROG_TEST_RUN on crafted IPv4 frames: the loaded program (real maps,
//! written by the real loader) gets one frame at a time (repeat = 1), and
//! the verdict and every rewritten byte are checked, checksums recomputed
//! from scratch. Every case runs in XDP and in TC mode (`NAME::xdp`,
//! `NAME::tc`); IPv6, ICMP, fragments and VLAN tags are in `dataplane_cases`.
//!
//! Runs in a namespace of its own with two veths (client side, backend side)
//! and permanent neighbour entries, so `bpf_fib_lookup` succeeds and the
//! full fast path (NAT, TTL, MACs, redirect) is exercised.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use balancer_common::{
    addr::to_words,
    counters::Counter,
    types::{FlowKey, TCP_BACKEND_ANSWERED, TCP_FIN_FROM_BACKEND, TCP_FIN_FROM_CLIENT, tcp_closed},
};
use balancer_tests::{
    packet::{
        ETH_LEN, Frame, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, assert_checksums_valid, parse,
    },
    test_both_modes,
    xdp_fixture::{
        BACKEND_IF_MAC, CLIENT_IF_MAC, CLIENT_MAC, Fixture, Verdict, backend_index, backend_mac,
    },
};
use balancer_user::{accounting::FlowTables, state::ServiceState};

/// The backend `service` gives a new client, predicted in userspace.
fn predicted(service: &ServiceState, client: &str, sport: u16) -> std::net::SocketAddr {
    let id = service
        .predict(IpAddr::from_str(client).unwrap(), sport)
        .unwrap();
    service.backend_by_id(id).unwrap().address
}

/// Entries in CONNTRACK and in AFFINITY (all services), now.
fn table_entries(fx: &Fixture) -> (u64, u64) {
    let timeouts: HashMap<u32, u64> = fx.services.iter().map(|s| (s.id, u64::MAX)).collect();
    let counts = FlowTables::open(fx.dataplane.pin_dir())
        .unwrap()
        .count(&timeouts)
        .unwrap();
    (counts.conntrack_entries, counts.affinity.values().sum())
}

/// The conntrack key of a client's flow to `vip:port` (TCP).
fn flow_key(client: &str, cport: u16, vip: &str, port: u16) -> FlowKey {
    let (src, family) = to_words(client.parse().unwrap());
    let (dst, _) = to_words(vip.parse().unwrap());
    FlowKey {
        src,
        dst,
        sport: cport.to_be(),
        dport: port.to_be(),
        proto: 6,
        family,
        _pad: [0; 2],
    }
}

/// A backend's packet to a client, arriving on the backend side.
fn from_backend(backend: SocketAddr, client: &str, cport: u16, flags: u8) -> Frame {
    Frame {
        src_mac: backend_mac(backend_index(backend.ip())),
        dst_mac: BACKEND_IF_MAC,
        ..Frame::tcp(
            &backend.ip().to_string(),
            backend.port(),
            client,
            cport,
            flags,
        )
    }
}

/// `f` as the balancer sends it to client 198.18.0.1 (`CLIENT_MAC`) from
/// the VIP `web` listens on.
fn to_client_1(f: &Frame) -> Frame {
    Frame {
        src_mac: CLIENT_IF_MAC,
        dst_mac: CLIENT_MAC,
        src: "198.18.0.100".parse().unwrap(),
        sport: 80,
        ttl: f.ttl - 1,
        ..f.clone()
    }
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

        // The same flow's next packet, which has no entry either, is placed
        // the same way (read-only) to the same backend.
        let data = Frame::tcp("198.18.0.1", 40000, "198.18.0.100", 80, TCP_ACK | TCP_PSH).build();
        let (verdict, out) = fx.run_client_frame(&data);
        assert_eq!(verdict, Verdict::Forwarded);
        assert_eq!(parse(&out).dst(), want.ip());
        assert_checksums_valid(&out);
        let id = fx.service("web").backend(want).unwrap().id;
        let stats = fx.dataplane.backend_stats(id).unwrap();
        assert_eq!(stats.connections_total, 0, "no connection until the backend confirms it");
        assert_eq!(stats.packets_in, 2);
        assert_eq!(stats.bytes_in, (frame.len() + data.len()) as u64);
    }

    /// Nothing the client sends is stored: a SYN, its ACK, its data.
    fn a_syn_and_the_clients_packets_store_nothing(fx) {
        let before = fx.counters();
        for (i, flags) in [TCP_SYN, TCP_ACK, TCP_ACK | TCP_PSH].into_iter().enumerate() {
            let frame = Frame::tcp("198.18.0.1", 40030, "198.18.0.100", 80, flags).build();
            assert_eq!(fx.run_client_frame(&frame).0, Verdict::Forwarded, "packet {i}");
            assert_eq!(table_entries(fx), (0, 0), "packet {i}: no CONNTRACK, no AFFINITY entry");
        }
        assert_eq!(fx.counters().since(&before), vec![("forward_to_backend", 3)]);
        let total: u64 = fx.service("web").backends.iter().map(|b| fx.dataplane.backend_stats(b.id).unwrap().connections_total).sum();
        assert_eq!(total, 0, "no connection counted");
    }

    /// The backend confirms a flow: its SYN-ACK and an RST store nothing;
    /// its first ACK makes one CONNTRACK and one AFFINITY entry and counts
    /// one connection; its later packets take the entry.
    fn the_backends_first_ack_confirms_the_flow(fx) {
        let syn = Frame::tcp("198.18.0.1", 40031, "198.18.0.100", 80, TCP_SYN).build();
        fx.run_client_frame(&syn);
        let backend = predicted(fx.service("web"), "198.18.0.1", 40031);
        let id = fx.service("web").backend(backend).unwrap().id;
        let connections = || fx.dataplane.backend_stats(id).unwrap().connections_total;
        for (what, flags) in [("SYN-ACK", TCP_SYN | TCP_ACK), ("RST", TCP_RST), ("RST-ACK", TCP_RST | TCP_ACK)] {
            let reply = from_backend(backend, "198.18.0.1", 40031, flags);
            let before = fx.counters();
            let (verdict, out) = fx.run_backend_frame(&reply.build());
            assert_eq!(verdict, Verdict::Forwarded, "{what}");
            assert_eq!(out, to_client_1(&reply).build(), "{what}: translated");
            assert_eq!(fx.counters().since(&before), vec![("forward_to_client", 1), ("forward_reply_without_flow", 1)], "{what}");
            assert_eq!((table_entries(fx), connections()), ((0, 0), 0), "{what}: nothing stored");
        }
        let ack = from_backend(backend, "198.18.0.1", 40031, TCP_ACK);
        let before = fx.counters();
        let (verdict, out) = fx.run_backend_frame(&ack.build());
        assert_eq!((verdict, out), (Verdict::Forwarded, to_client_1(&ack).build()));
        assert_eq!(fx.counters().since(&before), vec![("forward_to_client", 1), ("forward_reply_without_flow", 1), ("flows_confirmed", 1)]);
        assert_eq!((table_entries(fx), connections()), ((1, 1), 1), "one entry each, one connection");
        let flow = fx.dataplane.flow(&flow_key("198.18.0.1", 40031, "198.18.0.100", 80)).unwrap().expect("the flow's entry");
        assert_eq!(flow.backend_id, id);
        assert_eq!((flow.client_ifindex, flow.client_mac, flow.gateway_mac), (fx.client_if, CLIENT_MAC, CLIENT_IF_MAC), "the client's path from the FIB");
        assert_eq!(u32::from(flow.backend_tcp_state), TCP_BACKEND_ANSWERED);
        // Data both ways now takes the entry: nothing more is stored or counted.
        let data = Frame { payload: vec![1; 10], ..from_backend(backend, "198.18.0.1", 40031, TCP_ACK | TCP_PSH) };
        let before = fx.counters();
        assert_eq!(fx.run_backend_frame(&data.build()).1, to_client_1(&data).build());
        let request = Frame::tcp("198.18.0.1", 40031, "198.18.0.100", 80, TCP_ACK | TCP_PSH).build();
        assert_eq!(fx.run_client_frame(&request).0, Verdict::Forwarded);
        assert_eq!(fx.counters().since(&before), vec![("forward_to_backend", 1), ("forward_to_client", 1)]);
        assert_eq!((table_entries(fx), connections()), ((1, 1), 1));
    }

    /// A reply with no entry is translated from config, byte for byte.
    fn backend_reply_is_natted_back_to_the_vip(fx) {
        let syn = Frame::tcp("198.18.0.1", 40001, "198.18.0.100", 80, TCP_SYN).build();
        let (_, out) = fx.run_client_frame(&syn);
        let backend = parse(&out).dst_sock();
        let reply = Frame { payload: b"hello".to_vec(), ..from_backend(backend, "198.18.0.1", 40001, TCP_SYN | TCP_ACK) };
        let (verdict, out) = fx.run_backend_frame(&reply.build());
        assert_eq!(verdict, Verdict::Forwarded, "reply redirected to the client side");
        assert_eq!(out, to_client_1(&reply).build(), "SNAT to the VIP, MACs of the client's link, TTL, checksums");
        let p = parse(&out);
        assert_eq!((p.src().to_string().as_str(), p.sport()), ("198.18.0.100", 80), "SNAT back to the VIP");
        assert_eq!((p.dst().to_string().as_str(), p.dport()), ("198.18.0.1", 40001));
        assert_checksums_valid(&out);
        assert_eq!(fx.counter(Counter::ForwardToClient), 1);
        assert_eq!(fx.counter(Counter::ForwardReplyWithoutFlow), 1);
    }

    fn a_reply_from_a_host_that_is_not_the_flows_backend_passes_untouched(fx) {
        let syn = Frame::tcp("198.18.0.1", 40020, "198.18.0.100", 80, TCP_SYN).build();
        let (_, out) = fx.run_client_frame(&syn);
        let backend = parse(&out).dst_sock();
        // Another backend of the same service, from the same port: with no
        // entry, it is not the backend the client's packets go to.
        let other = fx.service("web").backends.iter().find(|b| b.address.ip() != backend.ip()).unwrap().address;
        for flags in [TCP_SYN | TCP_ACK, TCP_ACK] {
            let spoof = from_backend(other, "198.18.0.1", 40020, flags).build();
            let before = fx.counters();
            assert_eq!(fx.run_backend_frame(&spoof), (Verdict::Pass, spoof.clone()), "passed untouched");
            assert_eq!(fx.counters().since(&before), vec![("pass_reply_not_chosen", 1)], "counted");
            assert_eq!(table_entries(fx), (0, 0), "confirms nothing");
        }
        // The flow's own backend confirms it; then the other backend's
        // packet finds the entry, whose backend it is not.
        let reply = from_backend(backend, "198.18.0.1", 40020, TCP_ACK).build();
        assert_eq!(fx.run_backend_frame(&reply).0, Verdict::Forwarded, "the flow's own backend is answered for");
        assert_eq!(table_entries(fx), (1, 1));
        let spoof = from_backend(other, "198.18.0.1", 40020, TCP_ACK).build();
        let before = fx.counters();
        assert_eq!(fx.run_backend_frame(&spoof), (Verdict::Pass, spoof.clone()), "passed untouched");
        assert_eq!(fx.counters().since(&before), vec![("pass_not_ours", 1)], "counted");
        assert_eq!(fx.counter(Counter::ForwardToClient), 1);
    }

    /// A reply with no entry to a client the FIB has no neighbour for goes
    /// to the MAC the client's packets came from (the kernel would drop a
    /// VIP-sourced packet handed to it); the flow's entry keeps that path.
    /// A client never seen has no path: its reply is passed, counted.
    fn reply_to_a_client_without_a_neighbour_entry_goes_to_its_learned_mac(fx) {
        let client_mac = [0x02, 0, 0, 0, 0x0c, 0xc9];
        let syn = Frame { src_mac: client_mac, dst_mac: CLIENT_IF_MAC, ..Frame::tcp("198.18.0.201", 40010, "198.18.0.100", 80, TCP_SYN) }.build();
        let (_, out) = fx.run_client_frame(&syn);
        let backend = parse(&out).dst_sock();
        for (flags, stored) in [(TCP_SYN | TCP_ACK, (0, 0)), (TCP_ACK, (1, 1))] {
            let reply = from_backend(backend, "198.18.0.201", 40010, flags);
            let (verdict, out) = fx.run_backend_frame(&reply.build());
            assert_eq!(verdict, Verdict::Forwarded, "not handed to the kernel, which would drop a VIP-sourced packet");
            let want = Frame { dst_mac: client_mac, ..to_client_1(&reply) };
            assert_eq!(out, want.build(), "to the MAC of the client's own SYN");
            assert_eq!(table_entries(fx), stored);
        }
        assert_eq!(fx.counter(Counter::NoNeighbourLearnedMac), 2);
        let flow = fx.dataplane.flow(&flow_key("198.18.0.201", 40010, "198.18.0.100", 80)).unwrap().expect("confirmed");
        assert_eq!((flow.client_ifindex, flow.client_mac, flow.gateway_mac), (fx.client_if, client_mac, CLIENT_IF_MAC));

        let stranger = predicted(fx.service("web"), "198.18.0.202", 40012);
        let reply = from_backend(stranger, "198.18.0.202", 40012, TCP_ACK).build();
        let before = fx.counters();
        assert_eq!(fx.run_backend_frame(&reply).0, Verdict::Pass);
        assert_eq!(fx.counters().since(&before), vec![("pass_no_neighbour", 1)]);
        assert_eq!(table_entries(fx), (1, 1));
    }

    /// A backend port's packet to the gateway itself is the answer to a
    /// health check, even from the backend that address would be placed on.
    fn a_backends_answer_to_the_gateway_itself_passes_untouched(fx) {
        let backend = predicted(fx.service("web"), "198.18.1.254", 40100);
        for flags in [TCP_SYN | TCP_ACK, TCP_ACK] {
            let answer = from_backend(backend, "198.18.1.254", 40100, flags).build();
            let before = fx.counters();
            assert_eq!(fx.run_backend_frame(&answer), (Verdict::Pass, answer.clone()));
            assert_eq!(fx.counters().since(&before), vec![("pass_not_ours", 1)]);
        }
        assert_eq!(table_entries(fx), (0, 0));
    }

    /// A host that talks to a backend's address straight, not through the
    /// VIP, gets the backend's answers untouched, even from the backend it
    /// would be placed on.
    fn a_flow_straight_to_a_backend_is_not_translated(fx) {
        let backend = predicted(fx.service("web"), "198.18.0.1", 45600);
        for (flags, reply_flags) in [(TCP_SYN, TCP_SYN | TCP_ACK), (TCP_ACK, TCP_ACK | TCP_PSH)] {
            let direct = Frame::tcp("198.18.0.1", 45600, &backend.ip().to_string(), backend.port(), flags).build();
            let before = fx.counters();
            assert_eq!(fx.run_client_frame(&direct), (Verdict::Pass, direct.clone()));
            let answer = from_backend(backend, "198.18.0.1", 45600, reply_flags).build();
            assert_eq!(fx.run_backend_frame(&answer), (Verdict::Pass, answer.clone()));
            assert_eq!(fx.counters().since(&before), vec![("pass_not_ours", 2)]);
        }
        assert_eq!(table_entries(fx), (0, 0));
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
        ];
        for (what, frame) in cases {
            let before = fx.counters();
            let (verdict, out) = fx.run_client_frame(&frame);
            assert_eq!(verdict, Verdict::Pass, "{what}");
            assert_eq!(out, frame, "{what}: bytes untouched");
            assert_eq!(fx.counters().since(&before), vec![("pass_not_ours", 1)], "{what}: counted");
        }
        // From a backend port but not a backend: not the client's backend.
        let stranger = Frame::tcp("198.18.1.99", 3000, "198.18.0.1", 45555, TCP_ACK).build();
        let before = fx.counters();
        assert_eq!(fx.run_backend_frame(&stranger), (Verdict::Pass, stranger.clone()));
        assert_eq!(fx.counters().since(&before), vec![("pass_reply_not_chosen", 1)]);
        // The source of the backend the client's packets go to, but in by
        // the client side: spoofed, and neither translated nor stored.
        let backend = predicted(fx.service("web"), "198.18.0.1", 45555);
        let spoof = Frame::tcp(&backend.ip().to_string(), backend.port(), "198.18.0.1", 45555, TCP_ACK).build();
        let before = fx.counters();
        assert_eq!(fx.run_client_frame(&spoof), (Verdict::Pass, spoof.clone()));
        assert_eq!(fx.counters().since(&before), vec![("pass_reply_wrong_path", 1)]);
        // From the backend side, but from another MAC than the backend's.
        let before = fx.counters();
        assert_eq!(fx.run_backend_frame(&spoof), (Verdict::Pass, spoof.clone()));
        assert_eq!(fx.counters().since(&before), vec![("pass_reply_wrong_path", 1)]);
        assert_eq!(table_entries(fx), (0, 0));
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

    fn fin_and_rst_are_recorded_and_a_syn_ack_reopens(fx) {
        let syn = Frame::tcp("198.18.0.2", 40006, "198.18.0.100", 80, TCP_SYN).build();
        let (_, out) = fx.run_client_frame(&syn);
        let backend = parse(&out).dst_sock();
        let id = fx.service("web").backend(backend).unwrap().id;
        let connections = || fx.dataplane.backend_stats(id).unwrap().connections_total;
        assert_eq!(fx.run_backend_frame(&from_backend(backend, "198.18.0.2", 40006, TCP_ACK).build()).0, Verdict::Forwarded);
        let fin = Frame::tcp("198.18.0.2", 40006, "198.18.0.100", 80, TCP_FIN | TCP_ACK).build();
        fx.run_client_frame(&fin);
        let reply_fin = from_backend(backend, "198.18.0.2", 40006, TCP_FIN | TCP_ACK).build();
        assert_eq!(fx.run_backend_frame(&reply_fin).0, Verdict::Forwarded);
        let key = flow_key("198.18.0.2", 40006, "198.18.0.100", 80);
        let flow = fx.dataplane.flow(&key).unwrap().expect("conntrack entry");
        // Each direction's FIN in its own field (a shared word lost one when
        // both ends closed at once on two CPUs).
        assert_eq!(flow.client_tcp_state, TCP_FIN_FROM_CLIENT);
        assert_eq!(u32::from(flow.backend_tcp_state), TCP_FIN_FROM_BACKEND | TCP_BACKEND_ANSWERED);
        assert!(tcp_closed(flow.tcp_state()));
        assert_eq!(connections(), 1);
        // Port reuse: the client's new SYN goes where its affinity says; the
        // backend's SYN-ACK removes the closed entry, and its next ACK makes
        // and counts the new connection.
        let (verdict, out) = fx.run_client_frame(&syn);
        assert_eq!(verdict, Verdict::Forwarded);
        assert_eq!(parse(&out).dst_sock(), backend, "affinity keeps the client on its backend");
        let syn_ack = from_backend(backend, "198.18.0.2", 40006, TCP_SYN | TCP_ACK).build();
        let before = fx.counters();
        assert_eq!(fx.run_backend_frame(&syn_ack).0, Verdict::Forwarded);
        assert_eq!(fx.counters().since(&before), vec![("forward_to_client", 1), ("forward_reply_without_flow", 1)]);
        assert_eq!(fx.dataplane.flow(&key).unwrap(), None, "the closed entry is gone");
        assert_eq!(fx.run_backend_frame(&from_backend(backend, "198.18.0.2", 40006, TCP_ACK).build()).0, Verdict::Forwarded);
        let flow = fx.dataplane.flow(&key).unwrap().expect("the new connection's entry");
        assert!(!tcp_closed(flow.tcp_state()));
        assert_eq!(connections(), 2);
    }

    fn a_reused_4_tuple_reaches_a_new_backend_once_the_old_flow_is_over(fx) {
        // A client's connection ends (both FINs); its affinity then moves to
        // another backend (its backend failed, or a peer's entry replaced
        // it) and it reuses the 4-tuple at once, as a busy client's
        // ephemeral ports do. The new backend's SYN-ACK finds the closed
        // entry naming the old backend: it must replace it, not pass as a
        // stranger's reply for as long as the entry lives.
        let (client, port) = ("198.18.0.3", 40007);
        let syn = Frame::tcp(client, port, "198.18.0.100", 80, TCP_SYN).build();
        let old = parse(&fx.run_client_frame(&syn).1).dst_sock();
        let key = flow_key(client, port, "198.18.0.100", 80);
        let web = fx.service("web");
        let new = web.backends.iter().map(|b| b.address).find(|&b| b != old).unwrap();
        let new_id = web.backend(new).unwrap().id;
        fx.run_backend_frame(&from_backend(old, client, port, TCP_ACK).build());
        fx.run_client_frame(&Frame::tcp(client, port, "198.18.0.100", 80, TCP_FIN | TCP_ACK).build());
        fx.run_backend_frame(&from_backend(old, client, port, TCP_FIN | TCP_ACK).build());
        assert!(tcp_closed(fx.dataplane.flow(&key).unwrap().expect("the old entry").tcp_state()));
        fx.move_affinity("web", client.parse().unwrap(), new_id);

        let (verdict, out) = fx.run_client_frame(&syn);
        assert_eq!(verdict, Verdict::Forwarded);
        assert_eq!(parse(&out).dst_sock(), new, "the SYN follows the moved affinity");
        let (verdict, out) = fx.run_backend_frame(&from_backend(new, client, port, TCP_SYN | TCP_ACK).build());
        assert_eq!(verdict, Verdict::Forwarded, "the new backend's SYN-ACK reaches the client");
        assert_eq!(parse(&out).src_sock(), "198.18.0.100:80".parse().unwrap(), "from the VIP");
        assert_eq!(fx.dataplane.flow(&key).unwrap(), None, "the closed entry is gone");
        fx.run_client_frame(&Frame::tcp(client, port, "198.18.0.100", 80, TCP_ACK).build());
        assert_eq!(fx.run_backend_frame(&from_backend(new, client, port, TCP_ACK).build()).0, Verdict::Forwarded);
        let flow = fx.dataplane.flow(&key).unwrap().expect("the new connection's entry");
        assert_eq!(flow.backend_id, new_id);

        // The contrast: that connection is live, so a SYN-ACK from the old
        // backend on its 4-tuple (the answer to a SYN anyone could send)
        // passes untouched and the live entry stays.
        let stray = from_backend(old, client, port, TCP_SYN | TCP_ACK).build();
        assert_eq!(fx.run_backend_frame(&stray), (Verdict::Pass, stray.clone()));
        assert_eq!(fx.dataplane.flow(&key).unwrap().map(|f| f.backend_id), Some(new_id), "the live entry stays");
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
/// backend's VIPs that is. Both services have ambiguous replies: their
/// unconfirmed flows are recorded in PENDING, which confirmation clears;
/// another service's SYN records nothing.
fn a_backend_of_two_services_answers_each_flow_from_its_own_vip(fx: &Fixture) {
    use balancer_common::types::Pending;
    for (sport, vip, name) in [
        (40040, "198.18.0.100", "web"),
        (40041, "198.18.0.102", "web-alias"),
    ] {
        let syn = Frame::tcp("198.18.0.2", sport, vip, 80, TCP_SYN).build();
        let (verdict, out) = fx.run_client_frame(&syn);
        assert_eq!(verdict, Verdict::Forwarded, "{vip}");
        let backend = parse(&out).dst_sock();
        let key = flow_key("198.18.0.2", sport, vip, 80);
        let service = fx.service(name);
        let id = service.backend(backend).unwrap().id;
        assert_eq!(
            fx.dataplane.pending(&key).unwrap(),
            Some(Pending {
                backend_id: id,
                service_id: service.id
            }),
            "{vip}"
        );
        for flags in [TCP_SYN | TCP_ACK, TCP_ACK] {
            let reply = from_backend(backend, "198.18.0.2", sport, flags).build();
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
        assert_eq!(
            fx.dataplane.pending(&key).unwrap(),
            None,
            "{vip}: confirmed, no longer pending"
        );
        assert_eq!(
            fx.dataplane.flow(&key).unwrap().map(|f| f.backend_id),
            Some(id)
        );
    }
    assert_eq!(fx.counter(Counter::ForwardToClient), 4);
    assert_eq!(fx.counter(Counter::FlowConfirmed), 2);
    // A service whose backends serve it alone records nothing.
    let syn = Frame::tcp("198.18.0.2", 40042, "198.18.0.100", 8080, TCP_SYN).build();
    assert_eq!(fx.run_client_frame(&syn).0, Verdict::Forwarded);
    assert_eq!(
        fx.dataplane
            .pending(&flow_key("198.18.0.2", 40042, "198.18.0.100", 8080))
            .unwrap(),
        None
    );
    // With no PENDING entry, a reply of an ambiguous backend names no VIP.
    let backend = predicted(fx.service("web"), "198.18.0.3", 40043);
    let reply = from_backend(backend, "198.18.0.3", 40043, TCP_ACK).build();
    let before = fx.counters();
    assert_eq!(fx.run_backend_frame(&reply), (Verdict::Pass, reply.clone()));
    assert_eq!(
        fx.counters().since(&before),
        vec![("pass_reply_not_chosen", 1)]
    );
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

/// The fixture's services, and one the daemon terminates (`affinity =
/// "sid"`) on backends' port 3009, which no other service uses.
fn config_with_a_daemon_terminated_service() -> String {
    let sid = "\n[[services]]\nname = \"sio\"\nvip = \"198.18.0.103:80\"\naffinity = \"sid\"\ntable_size = 251\n";
    let backends: String = (11..=12)
        .map(|i| {
            format!("[[services.backends]]\naddress = \"198.18.1.{i}:3009\"\nname = \"b{i}\"\n")
        })
        .collect();
    format!("{}{sid}{backends}", balancer_tests::xdp_fixture::CONFIG)
}

/// A daemon-terminated service's packets go to the stack (its acceptor)
/// untouched and counted, and leave no entry in any table; its backends'
/// packets are not taken for replies of a balanced flow.
fn a_daemon_terminated_service_is_left_to_the_stack(fx: &Fixture) {
    for (sport, flags) in [(40050, TCP_SYN), (40050, TCP_ACK), (40051, TCP_ACK)] {
        let frame = Frame::tcp("198.18.0.2", sport, "198.18.0.103", 80, flags).build();
        let before = fx.counters();
        assert_eq!(fx.run_client_frame(&frame), (Verdict::Pass, frame.clone()));
        assert_eq!(fx.counters().since(&before), vec![("pass_to_stack", 1)]);
        let key = flow_key("198.18.0.2", sport, "198.18.0.103", 80);
        assert_eq!(fx.dataplane.flow(&key).unwrap(), None);
        assert_eq!(fx.dataplane.pending(&key).unwrap(), None);
    }
    assert_eq!(table_entries(fx), (0, 0));
    let answer = from_backend(
        "198.18.1.11:3009".parse().unwrap(),
        "198.18.0.2",
        40050,
        TCP_SYN | TCP_ACK,
    )
    .build();
    let before = fx.counters();
    assert_eq!(
        fx.run_backend_frame(&answer),
        (Verdict::Pass, answer.clone())
    );
    assert_eq!(fx.counters().since(&before), vec![("pass_not_ours", 1)]);
    // The kernel-forwarded services beside it are balanced as ever.
    let syn = Frame::tcp("198.18.0.2", 40052, "198.18.0.100", 80, TCP_SYN).build();
    assert_eq!(fx.run_client_frame(&syn).0, Verdict::Forwarded);
}

mod a_daemon_terminated_service {
    use balancer_tests::xdp_fixture::{Mode, with_fixture_config};

    #[test]
    fn xdp() {
        with_fixture_config(
            Mode::Xdp,
            &super::config_with_a_daemon_terminated_service(),
            super::a_daemon_terminated_service_is_left_to_the_stack,
        );
    }

    #[test]
    fn tc() {
        with_fixture_config(
            Mode::Tc,
            &super::config_with_a_daemon_terminated_service(),
            super::a_daemon_terminated_service_is_left_to_the_stack,
        );
    }
}
