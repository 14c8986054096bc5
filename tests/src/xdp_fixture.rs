//! A namespace with two veths (client side, backend side), permanent
//! neighbour entries and the real loader's program attached, for running
//! the program with BPF_PROG_TEST_RUN on crafted frames (`xdp_test_run`,
//! `packet_fuzz`). The full fast path runs, FIB lookups included.

use std::str::FromStr;

use aya::programs::{TestRun, TestRunOptions};
use balancer_common::counters::Counter;
use balancer_user::{
    config::Config,
    dataplane::{DataPlane, Interface},
    state::{self, ServiceState},
};

use crate::{NetNs, bpffs::TempBpffs, require_root};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_REDIRECT: u32 = 4;

pub const CLIENT_IF_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa0];
pub const BACKEND_IF_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb0];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

pub fn backend_mac(i: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x01, i]
}

pub struct Fixture {
    pub dataplane: DataPlane,
    pub services: Vec<ServiceState>,
    pub client_if: u32,
    pub backend_if: u32,
}

impl Fixture {
    pub fn service(&self, name: &str) -> &ServiceState {
        self.services.iter().find(|s| s.config.name == name).unwrap()
    }

    /// Run the program once on `frame` arriving on `ifindex`.
    pub fn run_on(&self, ifindex: u32, frame: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; frame.len() + 64];
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex.
        let ctx: Vec<u8> =
            [0, frame.len() as u32, 0, ifindex, 0, 0].iter().flat_map(|w: &u32| w.to_ne_bytes()).collect();
        let result = self
            .dataplane
            .xdp()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                repeat: 1,
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    pub fn run_client_frame(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run_on(self.client_if, frame)
    }

    pub fn run_backend_frame(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run_on(self.backend_if, frame)
    }

    pub fn counter(&self, c: Counter) -> u64 {
        self.dataplane.counter(c).unwrap()
    }
}

pub const CONFIG: &str = r#"
[interfaces]
clients = "veth0"
backends = "veth1"

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
"#;

/// Build the namespace, load and attach the program, write the config's
/// services, then hand the fixture to `test` (inside the namespace).
pub fn with_fixture(test: impl FnOnce(&Fixture) + Send) {
    require_root();
    let ns = NetNs::new("xdprun");
    let mut lines = vec![
        format!(
            "link add veth0 address {} type veth peer name veth1 address {}",
            mac(CLIENT_IF_MAC),
            mac(BACKEND_IF_MAC)
        ),
        "addr add 198.18.0.254/24 dev veth0".into(),
        "addr add 198.18.1.254/24 dev veth1".into(),
        "link set veth0 up".into(),
        "link set veth1 up".into(),
    ];
    // 198.18.0.201-254 have no neighbour entry.
    for i in 0..=200u8 {
        lines.push(format!("neigh replace 198.18.0.{i} lladdr {} dev veth0 nud permanent", mac(client_mac(i))));
    }
    for i in 11..=13u8 {
        lines.push(format!("neigh replace 198.18.1.{i} lladdr {} dev veth1 nud permanent", mac(backend_mac(i))));
    }
    ns.ip_batch(&lines);
    ns.sysctl(&[("net.ipv4.ip_forward", "1")]);
    let client_if = ns.ifindex("veth0");
    let backend_if = ns.ifindex("veth1");
    let bpffs = TempBpffs::new();
    let config = CONFIG.replace("PIN_DIR", bpffs.pin_dir().to_str().unwrap());
    ns.run(move || {
        let config = Config::from_str(&config).unwrap();
        std::fs::create_dir_all(&config.bpf.pin_dir).unwrap();
        let mut services = state::from_config(&config);
        let mut dataplane =
            DataPlane::load(&config.bpf.pin_dir, state::maglev_entries(&config), config.interfaces.mode).unwrap();
        for s in &mut services {
            dataplane.write_service(s).unwrap();
        }
        dataplane
            .attach(&[
                Interface { field: "interfaces.clients", name: "veth0".into(), ifindex: client_if },
                Interface { field: "interfaces.backends", name: "veth1".into(), ifindex: backend_if },
            ])
            .unwrap();
        test(&Fixture { dataplane, services, client_if, backend_if });
    });
    drop(bpffs);
}

pub fn mac(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

pub fn client_mac(i: u8) -> [u8; 6] {
    if i == 1 { CLIENT_MAC } else { [0x02, 0, 0, 0, 0x02, i] }
}
