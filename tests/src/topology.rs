//! The gateway topology of DESIGN.md, built from network namespaces:
//!
//! ```text
//!  client ns                gw ns                     switch ns             backend ns (b1, b2, ...)
//!  eth0 ═══════════ gwc  [gateway]  gwb ═══════════ gw ─┐
//!  198.18.0.1-40/24  198.18.0.254/24  198.18.1.254/24      br0 ─ b1 ═══════════ eth0 198.18.1.11/24
//!  198.18.{2,3}.x/24 + VIPs /32 /128                        └─ b2 ═══════════ eth0 198.18.1.12/24 ...
//! ```
//!
//! Interface names are fixed (each lives in its own namespace, and veths are
//! created straight into their namespaces, so parallel topologies never
//! clash); only namespace names carry the random suffix.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::netns::{NetNs, random_suffix};

/// The client's interface, peer of the gateway's `gwc`.
pub const CLIENT_IF: &str = "eth0";
/// The gateway's client-side interface (where VIP traffic arrives).
pub const GW_CLIENT_IF: &str = "gwc";
/// The gateway's backend-side interface.
pub const GW_BACKEND_IF: &str = "gwb";
/// The bridge in the switch namespace.
pub const BRIDGE: &str = "br0";
/// The bridge port that is the peer of the gateway's `gwb`.
pub const SWITCH_GW_PORT: &str = "gw";
/// Each backend's interface; its bridge port is named after the backend.
pub const BACKEND_IF: &str = "eth0";

pub const GW_CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
pub const GW_CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xfe);
pub const GW_BACKEND_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 254);
pub const GW_BACKEND_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0xfe);
/// The default VIPs, owned by the gateway on `gwc`.
pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);

#[derive(Clone, Debug)]
pub struct TopologyOpts {
    /// Client addresses 198.18.0.1 ..= 198.18.0.N (below the VIP, .100).
    pub clients_v4: u8,
    /// Third octets of further client /24s (198.18.X.0/24), for tests of
    /// /24 affinity: clients in one /24 must share a backend.
    pub extra_nets: Vec<u8>,
    /// Client addresses 198.18.X.1 ..= 198.18.X.N in each extra /24.
    pub clients_per_extra_net: u8,
    /// Client addresses 2001:db8::1 ..= 2001:db8::N (N counted in hex,
    /// below the gateway's ::fe).
    pub clients_v6: u16,
    /// Backends created up front (more with `Topology::add_backend`).
    pub backends: usize,
    /// Addresses the gateway owns for the services.
    pub vips: Vec<IpAddr>,
}

impl Default for TopologyOpts {
    fn default() -> Self {
        Self {
            clients_v4: 40,
            extra_nets: vec![2, 3],
            clients_per_extra_net: 10,
            clients_v6: 40,
            backends: 3,
            vips: vec![VIP_V4.into(), VIP_V6.into()],
        }
    }
}

/// One backend host: its own namespace on the switch.
#[derive(Debug)]
pub struct Backend {
    name: String,
    ns: NetNs,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
}

impl Backend {
    /// `b1`, `b2`, ...: also the name of its bridge port in the switch.
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn ns(&self) -> &NetNs {
        &self.ns
    }
    pub fn v4(&self) -> Ipv4Addr {
        self.v4
    }
    pub fn v6(&self) -> Ipv6Addr {
        self.v6
    }
}

/// The whole topology; dropping it deletes every namespace (and with them
/// every veth and the bridge).
#[derive(Debug)]
pub struct Topology {
    suffix: String,
    client: NetNs,
    gw: NetNs,
    switch: NetNs,
    backends: Vec<Backend>,
    clients_v4: Vec<Ipv4Addr>,
    clients_extra_v4: Vec<Ipv4Addr>,
    clients_v6: Vec<Ipv6Addr>,
}

impl Topology {
    pub fn new(opts: &TopologyOpts) -> Self {
        assert!(
            opts.clients_v4 < 100,
            "client addresses must stay below the VIP .100"
        );
        assert!(
            opts.clients_v6 < 0xfe,
            "client v6 addresses must stay below ::fe"
        );
        assert!(opts.clients_per_extra_net < 254);
        assert!(
            !opts.extra_nets.iter().any(|n| *n <= 1),
            "198.18.0/24 and 198.18.1/24 are taken"
        );

        let suffix = random_suffix();
        let client = NetNs::with_suffix("client", &suffix);
        let gw = NetNs::with_suffix("gw", &suffix);
        let switch = NetNs::with_suffix("switch", &suffix);

        // Set before any interface exists: new interfaces copy `default`.
        for ns in [&client, &gw, &switch] {
            ns.sysctl(&NO_DAD);
        }
        // The switch is pure L2; keep its ports quiet.
        switch.sysctl(&[
            ("net.ipv6.conf.all.disable_ipv6", "1"),
            ("net.ipv6.conf.default.disable_ipv6", "1"),
        ]);
        gw.sysctl(&[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
        ]);

        // Creation order matters: each namespace numbers its interfaces from
        // 2, and when both ends of a veth get the same ifindex the kernel
        // treats its carrier event as not urgent and delays the link's
        // operstate (and so IPv6 setup) by up to a second. Bridge first, then
        // gw side, then client side keeps every pair's numbers apart.
        // STP off and no forward delay: ports forward as soon as they are up.
        // No multicast snooping: ND must flood without a querier.
        switch.ip_batch(&[format!(
            "link add {BRIDGE} type bridge stp_state 0 forward_delay 0 mcast_snooping 0"
        )]);
        veth(&gw, GW_BACKEND_IF, &switch, SWITCH_GW_PORT);
        veth(&client, CLIENT_IF, &gw, GW_CLIENT_IF);

        // veth quirks (DESIGN.md): the peer of each gateway interface needs
        // NAPI (GRO on) to receive XDP-redirected frames, and the hosts must
        // send full checksums because XDP frames lose CHECKSUM_PARTIAL.
        client.exec("ethtool", ["-K", CLIENT_IF, "gro", "on", "tx", "off"]);
        switch.exec("ethtool", ["-K", SWITCH_GW_PORT, "gro", "on"]);

        switch.ip_batch(&[
            format!("link set {SWITCH_GW_PORT} master {BRIDGE}"),
            format!("link set {SWITCH_GW_PORT} up"),
            format!("link set {BRIDGE} up"),
        ]);

        let mut gw_lines = vec![
            format!("addr add {GW_CLIENT_V4}/24 dev {GW_CLIENT_IF}"),
            format!("addr add {GW_CLIENT_V6}/64 dev {GW_CLIENT_IF}"),
            format!("addr add {GW_BACKEND_V4}/24 dev {GW_BACKEND_IF}"),
            format!("addr add {GW_BACKEND_V6}/64 dev {GW_BACKEND_IF}"),
            format!("link set {GW_CLIENT_IF} up"),
            format!("link set {GW_BACKEND_IF} up"),
        ];
        // The extra client /24s sit on the client link without a gateway
        // address of their own: reach them on-link through gwc.
        gw_lines.extend(
            opts.extra_nets
                .iter()
                .map(|n| format!("route add 198.18.{n}.0/24 dev {GW_CLIENT_IF}")),
        );
        gw.ip_batch(&gw_lines);

        let clients_v4: Vec<_> = (1..=opts.clients_v4)
            .map(|i| Ipv4Addr::new(198, 18, 0, i))
            .collect();
        let clients_extra_v4: Vec<_> = opts
            .extra_nets
            .iter()
            .flat_map(|n| {
                (1..=opts.clients_per_extra_net).map(move |i| Ipv4Addr::new(198, 18, *n, i))
            })
            .collect();
        let clients_v6: Vec<_> = (1..=opts.clients_v6)
            .map(|i| Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i))
            .collect();
        let mut client_lines: Vec<_> = clients_v4
            .iter()
            .chain(&clients_extra_v4)
            .map(|a| format!("addr add {a}/24 dev {CLIENT_IF}"))
            .chain(
                clients_v6
                    .iter()
                    .map(|a| format!("addr add {a}/64 dev {CLIENT_IF}")),
            )
            .collect();
        // One default route serves every source address, the extra /24s too.
        client_lines.extend([
            format!("link set {CLIENT_IF} up"),
            format!("route add default via {GW_CLIENT_V4}"),
            format!("route add default via {GW_CLIENT_V6}"),
        ]);
        client.ip_batch(&client_lines);

        switch.wait_ready(BRIDGE);
        switch.wait_ready(SWITCH_GW_PORT);
        gw.wait_ready(GW_BACKEND_IF);
        gw.wait_ready(GW_CLIENT_IF);
        client.wait_ready(CLIENT_IF);

        let mut topology = Self {
            suffix,
            client,
            gw,
            switch,
            backends: Vec::new(),
            clients_v4,
            clients_extra_v4,
            clients_v6,
        };
        for vip in &opts.vips {
            topology.add_vip(*vip);
        }
        for _ in 0..opts.backends {
            topology.add_backend();
        }
        topology
    }

    /// Adds backend `b<N>` (198.18.1.<10+N>, 2001:db8:1::<0x10+N>) on the
    /// switch, with its default route through the gateway so replies pass
    /// the balancer and no SNAT is needed.
    pub fn add_backend(&mut self) -> &Backend {
        let n = self.backends.len() + 1;
        assert!(n <= 200, "too many backends");
        let name = format!("b{n}");
        let v4 = Ipv4Addr::new(198, 18, 1, 10 + n as u8);
        let v6 = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10 + n as u16);
        let ns = NetNs::with_suffix(&name, &self.suffix);
        ns.sysctl(&NO_DAD);

        veth(&ns, BACKEND_IF, &self.switch, &name);
        // GRO on every bridge port is harmless and ready for one-arm setups.
        self.switch.exec("ethtool", ["-K", &name, "gro", "on"]);
        ns.exec("ethtool", ["-K", BACKEND_IF, "tx", "off"]);
        self.switch.ip_batch(&[
            format!("link set {name} master {BRIDGE}"),
            format!("link set {name} up"),
        ]);
        ns.ip_batch(&[
            format!("addr add {v4}/24 dev {BACKEND_IF}"),
            format!("addr add {v6}/64 dev {BACKEND_IF}"),
            format!("link set {BACKEND_IF} up"),
            format!("route add default via {GW_BACKEND_V4}"),
            format!("route add default via {GW_BACKEND_V6}"),
        ]);
        self.switch.wait_ready(&name);
        ns.wait_ready(BACKEND_IF);

        self.backends.push(Backend { name, ns, v4, v6 });
        self.backends.last().expect("just pushed")
    }

    /// Makes the gateway own `ip` (/32 or /128 on `gwc`), so it answers ARP
    /// and ND for it like a real VIP.
    pub fn add_vip(&self, ip: IpAddr) {
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        self.gw
            .ip_batch(&[format!("addr add {ip}/{prefix} dev {GW_CLIENT_IF}")]);
        // An IPv6 VIP answers ND only once its address has left `tentative`.
        self.gw.wait_ready(GW_CLIENT_IF);
    }

    /// The random suffix shared by this topology's namespace names.
    pub fn suffix(&self) -> &str {
        &self.suffix
    }
    pub fn client(&self) -> &NetNs {
        &self.client
    }
    pub fn gw(&self) -> &NetNs {
        &self.gw
    }
    pub fn switch(&self) -> &NetNs {
        &self.switch
    }
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// `IPv4:port` of the backend called `name` (`b1`, `b2`, ...).
    pub fn backend_addr(&self, name: &str, port: u16) -> String {
        let backend = self
            .backends
            .iter()
            .find(|b| b.name() == name)
            .unwrap_or_else(|| panic!("no backend {name}"));
        format!("{}:{port}", backend.v4())
    }
    /// Names of every namespace of this topology.
    pub fn namespaces(&self) -> Vec<String> {
        [&self.client, &self.gw, &self.switch]
            .into_iter()
            .chain(self.backends.iter().map(|b| &b.ns))
            .map(|ns| ns.name().to_owned())
            .collect()
    }
    /// Client addresses in 198.18.0.0/24.
    pub fn clients_v4(&self) -> &[Ipv4Addr] {
        &self.clients_v4
    }
    /// Client addresses in the extra /24s (`TopologyOpts::extra_nets`).
    pub fn clients_extra_v4(&self) -> &[Ipv4Addr] {
        &self.clients_extra_v4
    }
    /// Client addresses in 2001:db8::/64.
    pub fn clients_v6(&self) -> &[Ipv6Addr] {
        &self.clients_v6
    }
}

/// A veth pair with `name` in `ns` and `peer` in `peer_ns`, created
/// straight into both namespaces: the root namespace never sees it.
pub(crate) fn veth(ns: &NetNs, name: &str, peer_ns: &NetNs, peer: &str) {
    let netns = peer_ns.name();
    ns.ip(format!("link add {name} type veth peer name {peer} netns {netns}").split(' '));
}

/// IPv6 addresses usable at once: no duplicate address detection. The kernel
/// runs DAD if either `all` or the interface (copied from `default`) asks.
const NO_DAD: [(&str, &str); 2] = [
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
];
