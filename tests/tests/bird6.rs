//! The shipped BIRD configs (`deploy/bird/`) announce IPv6 VIPs too: a
//! router namespace and two gateway namespaces on one segment (a bridge in
//! the router's namespace), each running BIRD with the shipped config, each
//! gateway with the same VIP on `lo` as the balancer's `[announce]` keeps
//! it. No balancer runs here: this checks the routing side alone. The
//! cluster suite (`tests/tests/cluster.rs`) runs the same configs on an
//! IPv4-only segment with the balancer.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use balancer_tests::{
    cluster::{Bird, bird_config, gateway_bird_config, gateway_lan, require_bird},
    netns::{NetNs, random_suffix},
};

/// The VIPs both gateways serve.
const VIP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);
const VIP_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
/// The router's side of the segment: 198.18.2.1 (the shipped configs'
/// ROUTER_IP) and 2001:db8:2::1.
const ROUTER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
const BRIDGE: &str = "br0";
/// BGP with the shipped 1 s connect delay and 3 s hold time converges in a
/// few seconds; this bounds it.
const CONVERGE: Duration = Duration::from_secs(20);

/// Gateway `n`'s IPv6 address on the segment: 2001:db8:2::(10+n).
fn gateway_v6(n: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x10 + n as u16)
}

struct Rig {
    // Fields drop in order: BIRD stops before the namespaces go.
    router_bird: Bird,
    _gateway_birds: Vec<Bird>,
    router: NetNs,
    gateways: Vec<NetNs>,
}

impl Rig {
    /// The router and two gateways, the segment dual-stack if `ipv6`, each
    /// gateway with both VIPs on `lo`, BIRD running everywhere.
    fn new(ipv6: bool) -> Rig {
        require_bird();
        let suffix = random_suffix();
        let router = NetNs::with_suffix("router", &suffix);
        router.sysctl(&[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv6.fib_multipath_hash_policy", "1"),
        ]);
        router.ip_batch(&[format!(
            "link add {BRIDGE} type bridge stp_state 0 forward_delay 0 mcast_snooping 0"
        )]);
        let mut lines = vec![format!("addr add {ROUTER_V4}/24 dev {BRIDGE}")];
        if ipv6 {
            lines.push(format!("addr add 2001:db8:2::1/64 dev {BRIDGE} nodad"));
        }
        lines.push(format!("link set {BRIDGE} up"));
        router.ip_batch(&lines);
        let mut gateways = Vec::new();
        for n in 1..=2 {
            let ns = NetNs::with_suffix(&format!("gw{n}"), &suffix);
            let port = format!("p{n}");
            router.ip(format!(
                "link add {port} type veth peer name eth0 netns {}",
                ns.name()
            )
            .split(' '));
            router.ip_batch(&[
                format!("link set {port} master {BRIDGE}"),
                format!("link set {port} up"),
            ]);
            let mut lines = vec![
                format!("addr add {}/24 dev eth0", gateway_lan(n)),
                format!("addr add {VIP_V4}/32 dev lo"),
                format!("addr add {VIP_V6}/128 dev lo"),
                "link set eth0 up".to_owned(),
            ];
            if ipv6 {
                lines.push(format!("addr add {}/64 dev eth0 nodad", gateway_v6(n)));
            } else {
                ns.sysctl(&[("net.ipv6.conf.eth0.disable_ipv6", "1")]);
            }
            ns.ip_batch(&lines);
            ns.wait_ready("eth0");
            gateways.push(ns);
        }
        let router_conf = std::fs::read_to_string(bird_config("router.conf")).unwrap();
        let router_bird = Bird::start(&router, &router_conf);
        let gateway_birds = gateways
            .iter()
            .enumerate()
            .map(|(i, ns)| Bird::start(ns, &gateway_bird_config(i + 1)))
            .collect();
        Rig {
            router_bird,
            _gateway_birds: gateway_birds,
            router,
            gateways,
        }
    }

    /// The router's next hops for `vip` now (none while unrouted), from
    /// its kernel routing table.
    fn next_hops(&self, vip: IpAddr) -> BTreeSet<IpAddr> {
        let family = if vip.is_ipv6() { "-6" } else { "-4" };
        let out = self.router.ip([family, "route", "show", &vip.to_string()]);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "via")
            .filter_map(|w| w[1].parse().ok())
            .collect()
    }

    /// Wait until the router routes `vip` over exactly `want`; how long
    /// it took.
    fn wait_next_hops(&self, vip: IpAddr, want: &[IpAddr]) -> Duration {
        let want: BTreeSet<IpAddr> = want.iter().copied().collect();
        let start = Instant::now();
        loop {
            let now = self.next_hops(vip);
            if now == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < CONVERGE,
                "the router's route to {vip} is over {now:?}, not {want:?}, after {CONVERGE:?}; \
                 router BIRD:\n{}",
                self.router_bird.protocols(&self.router)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Both gateways announce the IPv6 VIP over their one BGP session: the
/// router installs one route with both as next hops (and the IPv4 VIP's
/// route alike); the VIP taken off one gateway's `lo` (what the balancer
/// does on `cluster leave`) leaves one next hop.
#[test]
fn an_ipv6_vip_on_two_gateways_is_one_ecmp_route_until_one_withdraws() {
    let rig = Rig::new(true);
    let both: Vec<IpAddr> = (1..=2).map(|n| gateway_v6(n).into()).collect();
    let took = rig.wait_next_hops(VIP_V6.into(), &both);
    println!("IPv6 VIP over both gateways after {} ms", took.as_millis());
    let both_v4: Vec<IpAddr> = (1..=2).map(|n| gateway_lan(n).into()).collect();
    rig.wait_next_hops(VIP_V4.into(), &both_v4);
    let route = rig.router.ip(["-6", "route", "show", &VIP_V6.to_string()]);
    let route = String::from_utf8_lossy(&route.stdout);
    assert!(
        route.contains("proto bird") && route.matches("nexthop via").count() == 2,
        "{route}"
    );

    rig.gateways[1].ip(["addr", "del", &format!("{VIP_V6}/128"), "dev", "lo"]);
    let took = rig.wait_next_hops(VIP_V6.into(), &both[..1]);
    println!(
        "IPv6 VIP withdrawn from gateway 2: one next hop after {} ms",
        took.as_millis()
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    // The IPv4 VIP is untouched.
    assert_eq!(rig.next_hops(VIP_V4.into()), both_v4.into_iter().collect());
}

/// On a segment without IPv6 (the cluster suite's, and any IPv4-only
/// site), the shipped configs' IPv6 channels stay empty and the IPv4 VIP
/// is still routed over both gateways.
#[test]
fn an_ipv4_only_segment_still_routes_ipv4_vips() {
    let rig = Rig::new(false);
    let both_v4: Vec<IpAddr> = (1..=2).map(|n| gateway_lan(n).into()).collect();
    rig.wait_next_hops(VIP_V4.into(), &both_v4);
    // BGP would have had a second to learn it; nothing is routed.
    std::thread::sleep(Duration::from_secs(1));
    assert!(rig.next_hops(VIP_V6.into()).is_empty());
}
