//! A namespace with two veths (client side, backend side), permanent
//! neighbour entries for IPv4 and IPv6 and the real loader's program
//! attached, XDP or TC, for running the program with BPF_PROG_TEST_RUN on
//! crafted frames (`xdp_test_run`, `dataplane_cases`, `packet_fuzz`). The
//! full fast path runs, FIB lookups included.
//!
//! Verdicts are normalised ([`Verdict`]) so one test body checks either
//! mode; [`test_both_modes!`](crate::test_both_modes) runs it in both.

use std::{
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use aya::programs::{TestRun, TestRunOptions};
use balancer_common::counters::{COUNTER_COUNT, Counter};
pub use balancer_user::config::Mode;
use balancer_user::{
    adopt,
    config::Config,
    dataplane::{DataPlane, Interface},
    state::{self, ServiceState},
};

use crate::{
    NetNs,
    bpffs::TempBpffs,
    packet::{ETH_LEN, ETH_P_IP, ETH_P_IPV6, IPV4_LEN, IPV6_LEN},
    require_root,
};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;
pub const TC_ACT_UNSPEC: u32 = u32::MAX;
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

pub const CLIENT_IF_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa0];
pub const BACKEND_IF_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb0];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// IPv4 clients 198.18.0.0-200 and IPv6 clients 2001:db8::0-200 (hex
/// 0-c8) have permanent neighbour entries; the rest of their subnets none.
pub const CLIENTS_WITH_NEIGHBOURS: u8 = 200;

pub fn backend_mac(i: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x01, i]
}

/// The `i` of [`backend_mac`] for a backend address: 198.18.1.`i` or
/// 2001:db8:1::`i` (the same digits, read as hex).
pub fn backend_index(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(v4) => v4.octets()[3],
        IpAddr::V6(v6) => format!("{:x}", v6.segments()[7])
            .parse()
            .expect("a backend address"),
    }
}

/// A verdict in either mode's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
    /// Out of an interface: XDP_TX or XDP_REDIRECT; TC_ACT_REDIRECT (TC
    /// sends the same-interface case with `bpf_redirect` too).
    Forwarded,
    /// XDP_ABORTED (TC spells it TC_ACT_SHOT, a [`Verdict::Drop`]).
    Aborted,
    /// Anything the program never returns.
    Unexpected(u32),
}

impl Verdict {
    pub fn of(mode: Mode, raw: u32) -> Verdict {
        match (mode, raw) {
            (Mode::Xdp, XDP_PASS) | (Mode::Tc, TC_ACT_OK) => Verdict::Pass,
            (Mode::Xdp, XDP_DROP) | (Mode::Tc, TC_ACT_SHOT) => Verdict::Drop,
            (Mode::Xdp, XDP_TX | XDP_REDIRECT) | (Mode::Tc, TC_ACT_REDIRECT) => Verdict::Forwarded,
            (Mode::Xdp, XDP_ABORTED) => Verdict::Aborted,
            (_, other) => Verdict::Unexpected(other),
        }
    }
}

pub struct Fixture {
    pub mode: Mode,
    pub dataplane: DataPlane,
    pub services: Vec<ServiceState>,
    pub client_if: u32,
    pub backend_if: u32,
}

impl Fixture {
    pub fn service(&self, name: &str) -> &ServiceState {
        self.services
            .iter()
            .find(|s| s.config.name == name)
            .unwrap()
    }

    /// The service a backend address belongs to.
    pub fn service_of_backend(&self, backend: SocketAddr) -> Option<&ServiceState> {
        self.services.iter().find(|s| s.backend(backend).is_some())
    }

    /// Can BPF_PROG_TEST_RUN run this mode's program on `frame`? XDP takes
    /// any frame of an Ethernet header or more; for TC the kernel also
    /// refuses an IPv4 (IPv6) ethertype with less than 20 (40) bytes after
    /// the Ethernet header, though such frames can reach a real TC hook.
    pub fn runnable(&self, frame: &[u8]) -> bool {
        if frame.len() < ETH_LEN {
            return false;
        }
        match (self.mode, u16::from_be_bytes([frame[12], frame[13]])) {
            (Mode::Tc, ETH_P_IP) => frame.len() >= ETH_LEN + IPV4_LEN,
            (Mode::Tc, ETH_P_IPV6) => frame.len() >= ETH_LEN + IPV6_LEN,
            _ => true,
        }
    }

    /// Run the program once on `frame` arriving on `ifindex`: the hook's own
    /// return value and the frame as the program left it. Panics on a frame
    /// that is not [`Self::runnable`].
    pub fn run_raw_on(&self, ifindex: u32, frame: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; frame.len() + 64];
        let result = match self.mode {
            Mode::Xdp => {
                // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
                // rx_queue_index, egress_ifindex.
                let ctx = words(&[0, frame.len() as u32, 0, ifindex, 0, 0]);
                self.dataplane.xdp().test_run(TestRunOptions {
                    data_in: Some(frame),
                    data_out: Some(&mut out),
                    ctx_in: Some(&ctx),
                    repeat: 1,
                    ..Default::default()
                })
            }
            Mode::Tc => {
                // struct __sk_buff up to `ifindex` (word 10), which gives the
                // skb its device; `ingress_ifindex` (word 9) its skb_iif.
                let mut ctx = [0u32; 11];
                ctx[9] = ifindex;
                ctx[10] = ifindex;
                self.dataplane.tc().test_run(TestRunOptions {
                    data_in: Some(frame),
                    data_out: Some(&mut out),
                    ctx_in: Some(&words(&ctx)),
                    repeat: 1,
                    ..Default::default()
                })
            }
        }
        .expect("BPF_PROG_TEST_RUN");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    pub fn run_on(&self, ifindex: u32, frame: &[u8]) -> (Verdict, Vec<u8>) {
        let (raw, out) = self.run_raw_on(ifindex, frame);
        (Verdict::of(self.mode, raw), out)
    }

    pub fn run_client_frame(&self, frame: &[u8]) -> (Verdict, Vec<u8>) {
        self.run_on(self.client_if, frame)
    }

    pub fn run_backend_frame(&self, frame: &[u8]) -> (Verdict, Vec<u8>) {
        self.run_on(self.backend_if, frame)
    }

    pub fn counter(&self, c: Counter) -> u64 {
        self.dataplane.counter(c).unwrap()
    }

    /// Point `client`'s affinity entry at `service` to `backend_id`, as a
    /// cluster peer's entry or a failover moves it. The entry must exist
    /// (a confirmed flow made it); it stays as fresh as it was.
    pub fn move_affinity(&self, service: &str, client: IpAddr, backend_id: u32) {
        use aya::maps::{HashMap, Map, MapData};
        use balancer_common::types::{Affinity, AffinityKey};
        let service = self.service(service);
        let (masked, family) = service.masked(client);
        let key = AffinityKey {
            service_id: service.id,
            family,
            _pad: [0; 3],
            client: masked,
        };
        let pinned = self
            .dataplane
            .pin_dir()
            .join(balancer_common::maps::AFFINITY);
        let data = MapData::from_pin(&pinned).expect("pinned AFFINITY");
        let mut map = HashMap::<_, AffinityKey, Affinity>::try_from(Map::LruHashMap(data))
            .expect("AFFINITY is an LRU hash");
        let mut entry = map.get(&key, 0).expect("the client's affinity entry");
        entry.backend_id = backend_id;
        map.insert(key, entry, 0).expect("write AFFINITY");
    }

    /// Every counter, for before/after comparisons.
    pub fn counters(&self) -> Counters {
        Counters(Counter::ALL.map(|c| self.counter(c)))
    }
}

/// A snapshot of the global counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters(pub [u64; COUNTER_COUNT as usize]);

impl Counters {
    /// The counters of a running data plane, from the maps pinned in
    /// `pin_dir` (a daemon's), summed over CPUs.
    pub fn read_pinned(pin_dir: &std::path::Path) -> Counters {
        let map = aya::maps::MapData::from_pin(pin_dir.join(balancer_common::maps::COUNTERS))
            .expect("pinned COUNTERS");
        let counters = aya::maps::PerCpuArray::<_, u64>::try_from(aya::maps::Map::PerCpuArray(map))
            .expect("a per-CPU array");
        Counters(Counter::ALL.map(|c| {
            counters
                .get(&(c as u32), 0)
                .expect("read a counter")
                .iter()
                .sum()
        }))
    }

    pub fn get(&self, c: Counter) -> u64 {
        self.0[c as usize]
    }

    /// The counters that grew since `before`, by how much, by name.
    pub fn since(&self, before: &Counters) -> Vec<(&'static str, u64)> {
        Counter::ALL
            .iter()
            .zip(self.0.iter().zip(before.0.iter()))
            .filter(|(_, (now, was))| now != was)
            .map(|(c, (now, was))| (c.name(), now - was))
            .collect()
    }
}

fn words(w: &[u32]) -> Vec<u8> {
    w.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

pub const CONFIG: &str = r#"
[interfaces]
clients = "veth0"
backends = "veth1"
mode = "MODE"

[bpf]
pin_dir = "PIN_DIR"

[[services]]
name = "web"
vip = "198.18.0.100:80"
table_size = 65537
[[services.backends]]
address = "198.18.1.11:3000"
[[services.backends]]
address = "198.18.1.12:3000"
[[services.backends]]
address = "198.18.1.13:3000"

[[services]]
name = "web-24"
vip = "198.18.0.100:8080"
source_prefix_v4 = 24
table_size = 251
[[services.backends]]
address = "198.18.1.11:3001"
[[services.backends]]
address = "198.18.1.12:3001"
[[services.backends]]
address = "198.18.1.13:3001"

[[services]]
name = "dns"
vip = "198.18.0.100:53"
protocol = "udp"
table_size = 251
[[services.backends]]
address = "198.18.1.11:5353"
[[services.backends]]
address = "198.18.1.12:5353"

[[services]]
name = "empty"
vip = "198.18.0.100:81"
table_size = 251

[[services]]
name = "quic"
vip = "198.18.0.101:443"
protocol = "udp"
affinity = "four-tuple"
table_size = 251
[[services.backends]]
address = "198.18.1.11:4433"
[[services.backends]]
address = "198.18.1.12:4433"
[[services.backends]]
address = "198.18.1.13:4433"

[[services]]
name = "web6"
vip = "[2001:db8::100]:80"
source_prefix_v6 = 64
table_size = 251
[[services.backends]]
address = "[2001:db8:1::11]:8080"
[[services.backends]]
address = "[2001:db8:1::12]:8080"
[[services.backends]]
address = "[2001:db8:1::13]:8080"

[[services]]
name = "dns6"
vip = "[2001:db8::100]:53"
protocol = "udp"
affinity = "four-tuple"
table_size = 251
[[services.backends]]
address = "[2001:db8:1::11]:5353"
[[services.backends]]
address = "[2001:db8:1::12]:5353"
"#;

/// Build the namespace, load and attach the XDP program, write the
/// config's services, then hand the fixture to `test` (inside the
/// namespace).
pub fn with_fixture(test: impl FnOnce(&Fixture) + Send) {
    with_fixture_mode(Mode::Xdp, test);
}

/// [`with_fixture`] with the program of `mode`.
pub fn with_fixture_mode(mode: Mode, test: impl FnOnce(&Fixture) + Send) {
    with_fixture_config(mode, CONFIG, test);
}

/// [`with_fixture_mode`] with another config (`CONFIG` with services
/// added): `PIN_DIR` and `MODE` in it are filled in.
pub fn with_fixture_config(mode: Mode, config: &str, test: impl FnOnce(&Fixture) + Send) {
    require_root();
    let ns = NetNs::new("xdprun");
    // Before the links come up: no link-local addresses, router
    // solicitations or the multicast reports they bring. The program is
    // attached, and a kernel packet crossing the veth pair while a case
    // runs would add to the counters the case checks exactly.
    ns.sysctl(&[
        ("net.ipv6.conf.default.addr_gen_mode", "1"),
        ("net.ipv6.conf.default.router_solicitations", "0"),
    ]);
    let mut lines = vec![
        format!(
            "link add veth0 address {} type veth peer name veth1 address {}",
            mac(CLIENT_IF_MAC),
            mac(BACKEND_IF_MAC)
        ),
        "addr add 198.18.0.254/24 dev veth0".into(),
        "addr add 198.18.1.254/24 dev veth1".into(),
        // Clients anywhere in 2001:db8::/48 (the /64s of the prefix tests),
        // backends in the more specific 2001:db8:1::/64.
        "addr add 2001:db8::fe/48 dev veth0 nodad".into(),
        "addr add 2001:db8:1::fe/64 dev veth1 nodad".into(),
        "link set veth0 up".into(),
        "link set veth1 up".into(),
    ];
    for i in 0..=CLIENTS_WITH_NEIGHBOURS {
        let lladdr = mac(client_mac(i));
        lines.push(format!(
            "neigh replace 198.18.0.{i} lladdr {lladdr} dev veth0 nud permanent"
        ));
        lines.push(format!(
            "neigh replace 2001:db8::{i:x} lladdr {lladdr} dev veth0 nud permanent"
        ));
    }
    for i in 11..=13u8 {
        let lladdr = mac(backend_mac(i));
        lines.push(format!(
            "neigh replace 198.18.1.{i} lladdr {lladdr} dev veth1 nud permanent"
        ));
        // 2001:db8:1::11-13: the digits of the IPv4 backends' last octet.
        lines.push(format!(
            "neigh replace 2001:db8:1::{i} lladdr {lladdr} dev veth1 nud permanent"
        ));
    }
    ns.ip_batch(&lines);
    ns.sysctl(&[
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv6.conf.all.forwarding", "1"),
    ]);
    let client_if = ns.ifindex("veth0");
    let backend_if = ns.ifindex("veth1");
    let bpffs = TempBpffs::new();
    let mode_name = match mode {
        Mode::Xdp => "xdp",
        Mode::Tc => "tc",
    };
    let config = config
        .replace("PIN_DIR", bpffs.pin_dir().to_str().unwrap())
        .replace("MODE", mode_name);
    ns.run(move || {
        let config = Config::from_str(&config).unwrap();
        std::fs::create_dir_all(&config.bpf.pin_dir).unwrap();
        let mut services = adopt::from_config(&config);
        let mut dataplane = DataPlane::load(
            &config.bpf.pin_dir,
            state::maglev_entries(&config),
            config.interfaces.mode,
        )
        .unwrap();
        dataplane.write_port_maps(&services).unwrap();
        for s in &mut services {
            dataplane.write_service(s).unwrap();
        }
        dataplane.write_fragment_services(&services).unwrap();
        dataplane
            .attach(&[
                Interface {
                    field: "interfaces.clients",
                    name: "veth0".into(),
                    ifindex: client_if,
                },
                Interface {
                    field: "interfaces.backends",
                    name: "veth1".into(),
                    ifindex: backend_if,
                },
            ])
            .unwrap();
        test(&Fixture {
            mode,
            dataplane,
            services,
            client_if,
            backend_if,
        });
    });
    drop(bpffs);
}

/// One test body, run as two tests: `NAME::xdp` and `NAME::tc`.
///
/// ```text
/// test_both_modes! {
///     fn a_case(fx) { assert_eq!(fx.run_client_frame(&frame).0, Verdict::Pass); }
/// }
/// ```
#[macro_export]
macro_rules! test_both_modes {
    ($($(#[$meta:meta])* fn $name:ident($fx:ident) $body:block)*) => {$(
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn case($fx: &$crate::xdp_fixture::Fixture) $body

            #[test]
            fn xdp() {
                $crate::xdp_fixture::with_fixture_mode($crate::xdp_fixture::Mode::Xdp, case);
            }

            #[test]
            fn tc() {
                $crate::xdp_fixture::with_fixture_mode($crate::xdp_fixture::Mode::Tc, case);
            }
        }
    )*};
}

pub fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn client_mac(i: u8) -> [u8; 6] {
    if i == 1 {
        CLIENT_MAC
    } else {
        [0x02, 0, 0, 0, 0x02, i]
    }
}
