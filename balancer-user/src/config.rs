//! The daemon's config file (TOML): its types, parsing and validation.
//!
//! The format is the contract in DESIGN.md ("Config (TOML) — contract"); see
//! [`EXAMPLE_CONFIG`]. On top of it, two optional sections of ours:
//!
//! ```toml
//! [control]
//! socket = "/run/balancer/control.sock"   # the CLI's control socket; this is the default
//! group = "balancer"   # may run read-only commands (status, lookup, flows); none if left out
//!
//! [proxy]
//! threads = 4          # threads for the services the daemon terminates; one per CPU if left out
//! ```
//!
//! Parsing validates: [`Config::from_file`] and [`Config::from_str`] return
//! either a config the daemon can apply as it is, or a [`ConfigError`] whose
//! `Display` is one line naming the offending field and where it is, e.g.
//! `services[1].backends[0].address: invalid socket address "1.2.3:80" (...) (balancer.toml:27:11)`.
//! Unknown keys are errors, so a misspelt key never silently falls back to a
//! default. serde reads the file (see `parse` for which crate does what);
//! the `de` module reads each value, `validate` checks the whole.
//!
//! Defaults for keys left out:
//!
//! | key | default |
//! |---|---|
//! | `interfaces.backends` | `interfaces.clients` (one-arm) |
//! | `interfaces.mode` | `"xdp"` |
//! | `metrics.listen` | `"127.0.0.1:9090"` |
//! | `bpf.pin_dir` | `"/sys/fs/bpf/balancer"` |
//! | `control.socket` | `"/run/balancer/control.sock"` |
//! | `announce` | left out: the daemon adds and removes no address |
//! | `announce.state_file` | `"/var/lib/balancer/announce.state"` |
//! | `tables.flows` / `affinity` | `1048576` / `1048576` ([`MIN_TABLE_ENTRIES`]..=[`MAX_TABLE_ENTRIES`]) |
//! | `proxy.threads` | one per CPU the daemon may run on (1..=[`MAX_PROXY_THREADS`]) |
//! | `services.protocol` | `"tcp"` |
//! | `services.affinity` | `"source-ip"` |
//! | `services.source_prefix_v4` / `_v6` | `32` / `128` |
//! | `services.affinity_timeout` | `"10m"` |
//! | `services.table_size` | `65537` (a prime, at most [`MAX_TABLE_SIZE`]) |
//! | `services.client_address` | `"packet"` |
//! | `services.trusted_proxies` | `[]` |
//! | `services.send_proxy_protocol` | `false` |
//! | `services.header_timeout` | `"5s"` |
//! | `services.health.check` | `"tcp"` |
//! | `services.health.path` | `"/"` |
//! | `services.health.expect_status` | `200` |
//! | `services.health.interval` / `timeout` | `"2s"` / `"1s"` |
//! | `services.health.rise` / `fall` | `2` / `3` |
//! | `services.backends.weight` | `1` (1..=65535) |
//! | `services.backends.name` | none (required with `affinity = "sid"`) |
//!
//! Durations are strings such as `"500ms"`, `"2s"`, `"10m"`, `"1h"`, `"1m30s"`,
//! read and written by `humantime` (see [`duration`]).

use std::{
    collections::{HashMap, HashSet},
    fmt, io,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use balancer_common::{
    maglev::is_prime,
    maps::{MAX_AFFINITY, MAX_BACKENDS, MAX_FLOWS, MAX_SERVICES, MAX_VIPS_PER_BACKEND},
    types::{FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP},
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::oneline::escape_controls;

pub mod cidr;
mod de;
pub mod duration;
mod parse;
pub mod tables;
#[cfg(test)]
mod tests;

/// The contract's example config (DESIGN.md); it parses as it is.
pub const EXAMPLE_CONFIG: &str = r#"[interfaces]
clients = "eth0"          # where traffic for the VIPs arrives
backends = "eth1"         # where backends are reached (may equal clients)
mode = "xdp"              # "xdp" | "tc"

[metrics]
listen = "127.0.0.1:9090"

[bpf]
pin_dir = "/sys/fs/bpf/balancer"   # must be on a bpffs; the default if left out

[tables]                  # entries; memory is printed at start
flows = 1048576
affinity = 1048576

[[services]]
name = "chat"
vip = "198.18.0.100:80"
protocol = "tcp"          # "tcp" | "udp"
affinity = "source-ip"    # "source-ip" | "four-tuple" | "sid"
client_address = "packet" # "packet" | "proxy-protocol" | "x-forwarded-for"
trusted_proxies = []      # CIDRs allowed to speak PROXY / set X-Forwarded-For
source_prefix_v4 = 32     # 24 behaves like nginx ip_hash
source_prefix_v6 = 128
affinity_timeout = "10m"
table_size = 65537        # prime

[services.health]
check = "http"            # "http" | "tcp" | "none"
path = "/health"
expect_status = 200
interval = "2s"
timeout = "1s"
rise = 2
fall = 3

[[services.backends]]
address = "198.18.1.11:3000"
weight = 1
name = "b1"               # optional; the sid prefix for affinity = "sid"
"#;

pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9090));
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/balancer";
/// Also the CLI's default `--socket`.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/balancer/control.sock";
/// `[announce] state_file` when left out: under `/var/lib`, which survives
/// a reboot (the systemd unit's `StateDirectory=balancer`).
pub const DEFAULT_ANNOUNCE_STATE_FILE: &str = "/var/lib/balancer/announce.state";
/// The longest group name `groupadd` accepts.
const MAX_GROUP_NAME_LEN: usize = 32;
pub const DEFAULT_AFFINITY_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Maglev's usual `M`: about 1% imbalance up to ~650 backends.
pub const DEFAULT_TABLE_SIZE: u32 = 65537;
/// The largest prime below 2^20. Each service keeps two tables of `u32`s (the
/// double buffer), so this is 8 MiB of kernel memory, and still gives ~1%
/// imbalance with 10,000 backends (Maglev wants `M` ≥ 100 × backends).
pub const MAX_TABLE_SIZE: u32 = 1_048_573;
/// Cap on the sum of `2 × table_size` over all services: the `MAGLEV` array
/// is sized to that sum, and this keeps it within 256 MiB.
pub const MAX_MAGLEV_ENTRIES: u64 = 1 << 26;
pub const MAX_WEIGHT: u32 = 65535;
/// The smallest `[tables]` size: an LRU table much smaller evicts live
/// entries under any real load.
pub const MIN_TABLE_ENTRIES: u32 = 1024;
/// The largest `[tables]` size, 64Mi entries: about 8 GiB of kernel memory
/// for `flows` ([`tables::bytes`]).
pub const MAX_TABLE_ENTRIES: u32 = 1 << 26;
/// Service names show up in metric labels and CLI arguments; keep them
/// short. Backend names are as long at most: `BACKEND_NAMES` holds them.
pub const MAX_NAME_LEN: usize = balancer_common::types::MAX_NAME_LEN;
/// `IFNAMSIZ - 1`.
const MAX_IFNAME_LEN: usize = 15;
/// `sizeof(sun_path) - 1`.
const MAX_SOCKET_PATH_LEN: usize = 107;

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub interfaces: Interfaces,
    pub metrics: Metrics,
    pub bpf: Bpf,
    pub control: Control,
    pub tables: Tables,
    pub proxy: Proxy,
    /// `[announce]`: `None` when the section is left out (one gateway, no
    /// routing daemon: the VIPs are the operator's to configure).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub announce: Option<Announce>,
    pub cluster: Cluster,
    pub services: Vec<ServiceConfig>,
}

/// The file as serde reads it: [`Config`] but for the one required section,
/// which is checked afterwards so that its absence is named like a field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    interfaces: Option<Interfaces>,
    #[serde(default)]
    metrics: Metrics,
    #[serde(default)]
    bpf: Bpf,
    #[serde(default)]
    control: Control,
    #[serde(default)]
    tables: Tables,
    #[serde(default)]
    proxy: Proxy,
    #[serde(default)]
    announce: Option<Announce>,
    #[serde(default)]
    cluster: Cluster,
    #[serde(default, deserialize_with = "de::services")]
    services: Vec<ServiceConfig>,
}

impl ConfigFile {
    fn into_config(self) -> Result<Config, ConfigError> {
        let interfaces = self.interfaces.ok_or_else(|| {
            ConfigError::invalid("interfaces", "required section [interfaces] is missing")
        })?;
        Ok(Config {
            interfaces,
            metrics: self.metrics,
            bpf: self.bpf,
            control: self.control,
            tables: self.tables,
            proxy: self.proxy,
            announce: self.announce,
            cluster: self.cluster,
            services: self.services,
        })
    }
}

/// `[interfaces]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "InterfacesFile")]
pub struct Interfaces {
    /// Where traffic for the VIPs arrives.
    pub clients: String,
    /// Where backends are reached; the same as `clients` if left out.
    pub backends: String,
    pub mode: Mode,
}

/// `[interfaces]` as written, before `backends` defaults to `clients`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table ([interfaces])")]
struct InterfacesFile {
    #[serde(deserialize_with = "de::string")]
    clients: String,
    #[serde(default, deserialize_with = "de::optional_string")]
    backends: Option<String>,
    #[serde(default)]
    mode: Mode,
}

impl From<InterfacesFile> for Interfaces {
    fn from(file: InterfacesFile) -> Self {
        Interfaces {
            backends: file.backends.unwrap_or_else(|| file.clients.clone()),
            clients: file.clients,
            mode: file.mode,
        }
    }
}

/// `[metrics]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table ([metrics])")]
pub struct Metrics {
    /// Address of the HTTP endpoint (`/metrics`, `/status`, `/`).
    #[serde(deserialize_with = "de::socket_addr")]
    pub listen: SocketAddr,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            listen: DEFAULT_METRICS_LISTEN,
        }
    }
}

/// `[bpf]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table ([bpf])")]
pub struct Bpf {
    /// Where maps and links are pinned; must be an absolute path on a bpffs
    /// (the daemon checks the filesystem when it starts).
    #[serde(deserialize_with = "de::path")]
    pub pin_dir: PathBuf,
}

impl Default for Bpf {
    fn default() -> Self {
        Bpf {
            pin_dir: DEFAULT_PIN_DIR.into(),
        }
    }
}

/// `[control]`: not in the contract's example, optional, ours.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table ([control])")]
pub struct Control {
    /// The Unix socket the daemon serves the CLI on (`balancer status`,
    /// `balancer backend add`, ...): the CLI's `--socket` must match it.
    #[serde(deserialize_with = "de::path")]
    pub socket: PathBuf,
    /// A Unix group whose members may run the read-only commands (status,
    /// lookup, flows): the socket becomes `root:group`, mode 0660. Changes
    /// stay root's. `None`: the socket is root's alone (0600).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            socket: DEFAULT_CONTROL_SOCKET.into(),
            group: None,
        }
    }
}

/// `[announce]`: VIP announcement through a routing daemon (BIRD). While
/// this gateway serves a VIP (a service on it has a backend up, and the
/// gateway has not left the cluster with `balancer cluster leave`), the VIP
/// is an address (/32 or /128) on `interface`, which the routing daemon
/// exports; when it stops serving it, the address goes and the route is
/// withdrawn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table ([announce])")]
pub struct Announce {
    /// Where the VIPs are added: usually `lo`, from where BIRD's `protocol
    /// direct` picks them up.
    #[serde(deserialize_with = "de::string")]
    pub interface: String,
    /// Where `balancer cluster leave` is remembered, so that a restart
    /// (or a reboot) after it stays out of the cluster until `cluster join`.
    #[serde(
        default = "defaults::announce_state_file",
        deserialize_with = "de::path"
    )]
    pub state_file: PathBuf,
}

/// `[cluster]`: the other gateways that share this one's affinity entries.
/// Empty: a gateway on its own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table ([cluster])")]
pub struct Cluster {
    /// The other gateways' `listen` addresses; one equal to this gateway's
    /// own `listen` is skipped, so every gateway may list them all.
    #[serde(deserialize_with = "de::socket_addrs")]
    pub peers: Vec<SocketAddr>,
    /// Where this gateway takes its peers' connections; required with
    /// `peers`.
    #[serde(
        deserialize_with = "de::optional_socket_addr",
        skip_serializing_if = "Option::is_none"
    )]
    pub listen: Option<SocketAddr>,
    /// The key every gateway shares, which authenticates each message;
    /// required with `peers`. The daemon and `balancer check` refuse a file
    /// that is missing, empty, or readable by group or others.
    #[serde(
        deserialize_with = "de::optional_path",
        skip_serializing_if = "Option::is_none"
    )]
    pub secret_file: Option<PathBuf>,
}

impl Cluster {
    /// The peers to connect to: `peers` without this gateway's own address.
    pub fn other_peers(&self) -> Vec<SocketAddr> {
        self.peers
            .iter()
            .copied()
            .filter(|p| Some(*p) != self.listen)
            .collect()
    }
}

/// `[tables]`: how many entries the kernel's LRU tables hold. Their memory
/// is taken when they are created (see [`tables`]), and a pinned table keeps
/// its size: changing one takes a `balancer detach`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table ([tables])")]
pub struct Tables {
    /// `CONNTRACK`: flows tracked at once.
    #[serde(deserialize_with = "de::table_entries")]
    pub flows: u32,
    /// `AFFINITY`: clients (masked) remembered at once, all services together.
    #[serde(deserialize_with = "de::table_entries")]
    pub affinity: u32,
}

impl Default for Tables {
    fn default() -> Self {
        Tables {
            flows: MAX_FLOWS,
            affinity: MAX_AFFINITY,
        }
    }
}

/// `[proxy]`: not in the contract's example, optional, ours. How the
/// daemon runs the services it terminates (`client_address` other than
/// `"packet"`, or `affinity = "sid"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table ([proxy])")]
pub struct Proxy {
    /// Threads that run their connections, each with its own event loop
    /// (HAProxy's `nbthread`); `None`: one per CPU the daemon may run on.
    #[serde(
        deserialize_with = "de::proxy_threads",
        skip_serializing_if = "Option::is_none"
    )]
    pub threads: Option<u16>,
}

/// `proxy.threads` at most.
pub const MAX_PROXY_THREADS: u16 = 1024;

/// `[[services]]`: one VIP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table ([[services]])")]
pub struct ServiceConfig {
    /// Unique, `[A-Za-z0-9_.-]{1,64}`.
    #[serde(deserialize_with = "de::string")]
    pub name: String,
    /// Unique together with `protocol`.
    #[serde(deserialize_with = "de::socket_addr")]
    pub vip: SocketAddr,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub affinity: AffinityMode,
    /// Clients in the same IPv4 /N share a backend (`source-ip` affinity).
    #[serde(default = "defaults::prefix_v4", deserialize_with = "de::prefix_v4")]
    pub source_prefix_v4: u8,
    /// Clients in the same IPv6 /N share a backend (`source-ip` affinity).
    #[serde(default = "defaults::prefix_v6", deserialize_with = "de::prefix_v6")]
    pub source_prefix_v6: u8,
    /// An affinity entry idle longer than this is ignored and replaced.
    #[serde(
        default = "defaults::affinity_timeout",
        deserialize_with = "de::duration",
        serialize_with = "duration::serialize"
    )]
    pub affinity_timeout: Duration,
    /// Maglev table size `M`: a prime, at least the number of backends.
    #[serde(default = "defaults::table_size", deserialize_with = "de::table_size")]
    pub table_size: u32,
    #[serde(default)]
    pub health: HealthConfig,
    /// Where a client's address comes from. Anything but `packet` (or
    /// `affinity = "sid"`) makes the daemon terminate the service's TCP
    /// connections ([`ServiceConfig::terminates_in_daemon`]).
    #[serde(default)]
    pub client_address: ClientAddress,
    /// The only sources allowed to speak PROXY or set X-Forwarded-For;
    /// required with those `client_address` values.
    #[serde(default, deserialize_with = "de::cidrs")]
    pub trusted_proxies: Vec<cidr::Cidr>,
    /// Daemon-terminated services: open each backend connection with a
    /// PROXY v2 header naming the client.
    #[serde(default, deserialize_with = "de::boolean")]
    pub send_proxy_protocol: bool,
    /// Daemon-terminated services: how long a client may take to send its
    /// PROXY header and request head, and a keep-alive connection may stay
    /// idle between requests, before it is closed.
    #[serde(
        default = "defaults::header_timeout",
        deserialize_with = "de::duration",
        serialize_with = "duration::serialize"
    )]
    pub header_timeout: Duration,
    /// May be empty: backends can be added at run time with the CLI.
    #[serde(default, deserialize_with = "de::backends")]
    pub backends: Vec<BackendConfig>,
}

/// `#[serde(default = ...)]` of the keys whose default is not their type's.
mod defaults {
    use std::time::Duration;

    pub(super) fn prefix_v4() -> u8 {
        32
    }

    pub(super) fn prefix_v6() -> u8 {
        128
    }

    pub(super) fn affinity_timeout() -> Duration {
        super::DEFAULT_AFFINITY_TIMEOUT
    }

    pub(super) fn table_size() -> u32 {
        super::DEFAULT_TABLE_SIZE
    }

    pub(super) fn header_timeout() -> Duration {
        Duration::from_secs(5)
    }

    pub(super) fn weight() -> u32 {
        1
    }

    pub(super) fn announce_state_file() -> std::path::PathBuf {
        super::DEFAULT_ANNOUNCE_STATE_FILE.into()
    }
}

impl ServiceConfig {
    /// A service with every optional key at its default and no backends.
    pub fn new(name: impl Into<String>, vip: SocketAddr) -> Self {
        ServiceConfig {
            name: name.into(),
            vip,
            protocol: Protocol::default(),
            affinity: AffinityMode::default(),
            source_prefix_v4: defaults::prefix_v4(),
            source_prefix_v6: defaults::prefix_v6(),
            affinity_timeout: defaults::affinity_timeout(),
            table_size: defaults::table_size(),
            health: HealthConfig::default(),
            client_address: ClientAddress::default(),
            trusted_proxies: Vec::new(),
            send_proxy_protocol: false,
            header_timeout: defaults::header_timeout(),
            backends: Vec::new(),
        }
    }

    /// Does the daemon terminate this service's TCP connections (to read
    /// a PROXY header or the request head) rather than the kernel program
    /// forwarding its packets?
    pub fn terminates_in_daemon(&self) -> bool {
        self.client_address != ClientAddress::Packet || self.affinity == AffinityMode::Sid
    }

    /// `FAMILY_V4` or `FAMILY_V6`: the VIP's, and so every backend's.
    pub fn family(&self) -> u8 {
        if self.vip.is_ipv4() {
            FAMILY_V4
        } else {
            FAMILY_V6
        }
    }

    /// The source prefix that applies to this service's clients (its family's).
    pub fn source_prefix(&self) -> u8 {
        if self.vip.is_ipv4() {
            self.source_prefix_v4
        } else {
            self.source_prefix_v6
        }
    }

    /// Can `backend` join this service as it is now? The checks `validate`
    /// makes on each configured backend, for `balancer backend add`. The
    /// error's field is `backend` or `backend.<key>`.
    pub fn check_new_backend(&self, backend: &BackendConfig) -> Result<(), ConfigError> {
        check_backend(self, "backend", backend, &self.backends)?;
        if self.affinity == AffinityMode::Sid && backend.name.is_none() {
            return Err(ConfigError::invalid(
                "backend.name",
                format!(
                    r#"required in service {:?} (affinity = "sid"): the prefix of the session ids this backend mints (--name)"#,
                    self.name
                ),
            ));
        }
        if self.backends.len() >= self.table_size as usize {
            return Err(ConfigError::invalid(
                "backend",
                format!(
                    "service {:?} already has {} backends, as many as its table_size allows",
                    self.name,
                    self.backends.len()
                ),
            ));
        }
        Ok(())
    }
}

/// `[services.health]`, with HAProxy's semantics: a backend goes up after
/// `rise` passing checks in a row and down after `fall` failing ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a table ([services.health])"
)]
pub struct HealthConfig {
    pub check: HealthCheckKind,
    /// The `http` check's request path; starts with `/`.
    #[serde(deserialize_with = "de::string")]
    pub path: String,
    /// The `http` check's expected status (100..=599).
    #[serde(deserialize_with = "de::status")]
    pub expect_status: u16,
    #[serde(
        deserialize_with = "de::duration",
        serialize_with = "duration::serialize"
    )]
    pub interval: Duration,
    /// May exceed `interval`, as in HAProxy.
    #[serde(
        deserialize_with = "de::duration",
        serialize_with = "duration::serialize"
    )]
    pub timeout: Duration,
    #[serde(deserialize_with = "de::count")]
    pub rise: u32,
    #[serde(deserialize_with = "de::count")]
    pub fall: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            check: HealthCheckKind::default(),
            path: "/".to_owned(),
            expect_status: 200,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
        }
    }
}

/// `[[services.backends]]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table ([[services.backends]])")]
pub struct BackendConfig {
    /// Same family as the VIP; unique within the service.
    #[serde(deserialize_with = "de::socket_addr")]
    pub address: SocketAddr,
    /// Relative share of new clients, 1..=[`MAX_WEIGHT`]. To stop sending a
    /// backend new clients, drain it (`balancer backend drain`).
    #[serde(default = "defaults::weight", deserialize_with = "de::weight")]
    pub weight: u32,
    /// What the backend calls itself in its engine.io session ids
    /// (`NAME.random`), for `affinity = "sid"`; unique within the service.
    #[serde(
        default,
        deserialize_with = "de::optional_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub name: Option<String>,
}

impl BackendConfig {
    pub fn new(address: SocketAddr) -> Self {
        BackendConfig {
            address,
            weight: defaults::weight(),
            name: None,
        }
    }
}

/// The keyword enums' shared plumbing: `ALL`, `as_str`, `Display`, `FromStr`
/// (whose error is `expected "a" or "b", got "c"`), `Serialize` and
/// `Deserialize` (as the keyword), all from one table of variant ↔ keyword.
macro_rules! keywords {
    ($name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The keyword the config file uses.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|k| k.as_str() == s)
                    .ok_or_else(|| expected_one_of($name::ALL.iter().map(|k| k.as_str()), s))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                de::keyword(d)
            }
        }
    };
}

/// `expected "a", "b" or "c", got "d"`
fn expected_one_of<'a>(choices: impl Iterator<Item = &'a str>, got: &str) -> String {
    let choices: Vec<String> = choices.map(|c| format!("{c:?}")).collect();
    let list = match choices.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => choices.join(""),
    };
    format!("expected {list}, got {got:?}")
}

/// `interfaces.mode`: how the programs attach.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Mode {
    /// XDP, native where the driver supports it.
    #[default]
    Xdp,
    /// TC (cls_bpf, direct action): the fallback where XDP cannot redirect.
    Tc,
}
keywords!(Mode { Xdp => "xdp", Tc => "tc" });

/// `services.protocol`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}
keywords!(Protocol { Tcp => "tcp", Udp => "udp" });

impl Protocol {
    /// The IP protocol number (`PROTO_TCP`, `PROTO_UDP`).
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        }
    }
}

/// `services.affinity`: what picks the backend of a new flow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum AffinityMode {
    /// The client's address masked to the service's source prefix; sticky
    /// across connections (what Socket.IO needs).
    #[default]
    SourceIp,
    /// The flow's 4-tuple: plain consistent hashing, no affinity entries.
    FourTuple,
    /// The backend named by the engine.io session id's prefix; a request
    /// without one goes by client address as `SourceIp` does. The daemon
    /// terminates these services' connections to read it.
    Sid,
}
keywords!(AffinityMode { SourceIp => "source-ip", FourTuple => "four-tuple", Sid => "sid" });

/// `services.client_address`: where a client's address comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ClientAddress {
    /// The packet's source address.
    #[default]
    Packet,
    /// A PROXY protocol header (v1 or v2) from a trusted proxy.
    ProxyProtocol,
    /// The X-Forwarded-For header of each request from a trusted proxy:
    /// its last hop that is not itself a trusted proxy.
    XForwardedFor,
}
keywords!(ClientAddress { Packet => "packet", ProxyProtocol => "proxy-protocol", XForwardedFor => "x-forwarded-for" });

/// `services.health.check`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum HealthCheckKind {
    /// `GET path`, passing on `expect_status`.
    Http,
    /// A TCP connect.
    #[default]
    Tcp,
    /// No checks: backends are always up.
    None,
}
keywords!(HealthCheckKind { Http => "http", Tcp => "tcp", None => "none" });

/// Why a config was refused. `Display` is one line (no newline), naming the
/// field for [`ConfigError::Invalid`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {error}", escape_controls(&path.display().to_string()))]
    Read { path: PathBuf, error: io::Error },
    /// Not TOML.
    #[error("TOML syntax error: {}{at}", escape_controls(message))]
    Syntax { message: String, at: Location },
    /// TOML, but not a valid config.
    #[error("{}: {}{at}", escape_controls(field), escape_controls(message))]
    Invalid {
        /// The key's dotted path, e.g. `services[1].backends[0].address`.
        field: String,
        message: String,
        at: Location,
    },
}

impl ConfigError {
    fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field: field.into(),
            message: message.into(),
            at: Location::default(),
        }
    }

    /// The offending key's dotted path, for [`ConfigError::Invalid`].
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }

    /// 1-based (line, column) in the file, where known.
    pub fn line_column(&self) -> Option<(usize, usize)> {
        match self {
            ConfigError::Syntax { at, .. } | ConfigError::Invalid { at, .. } => at.line,
            ConfigError::Read { .. } => None,
        }
    }

    fn at_mut(&mut self) -> Option<&mut Location> {
        match self {
            ConfigError::Syntax { at, .. } | ConfigError::Invalid { at, .. } => Some(at),
            ConfigError::Read { .. } => None,
        }
    }
}

/// Where in which file; displays as ` (FILE:LINE:COLUMN)`, ` (line L, column
/// C)`, ` (in FILE)` or nothing, so it can follow a message directly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    pub file: Option<PathBuf>,
    /// 1-based line and column (in characters).
    pub line: Option<(usize, usize)>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some((line, column))) => {
                write!(f, " ({}:{line}:{column})", file.display())
            }
            (None, Some((line, column))) => write!(f, " (line {line}, column {column})"),
            (Some(file), None) => write!(f, " (in {})", file.display()),
            (None, None) => Ok(()),
        }
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        text.parse().map_err(|mut e: ConfigError| {
            if let Some(at) = e.at_mut() {
                at.file = Some(path.to_owned());
            }
            e
        })
    }

    /// Checks everything parsing cannot: ranges, names, uniqueness, address
    /// families, the kernel's limits. Parsing calls it; call it again after
    /// changing a config in code.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_interface("interfaces.clients", &self.interfaces.clients)?;
        check_interface("interfaces.backends", &self.interfaces.backends)?;
        if !self.bpf.pin_dir.is_absolute() {
            return Err(ConfigError::invalid(
                "bpf.pin_dir",
                format!("{:?} is not an absolute path", self.bpf.pin_dir),
            ));
        }
        let socket_len = self.control.socket.as_os_str().len();
        if socket_len == 0 || socket_len > MAX_SOCKET_PATH_LEN {
            return Err(ConfigError::invalid(
                "control.socket",
                format!(
                    "{:?} must be a path of 1 to {MAX_SOCKET_PATH_LEN} bytes (a Unix socket's limit)",
                    self.control.socket
                ),
            ));
        }
        if let Some(group) = &self.control.group {
            // The syntax only: whether the group exists is the host's, and
            // the daemon checks it when it binds the socket.
            let valid = !group.is_empty()
                && group.len() <= MAX_GROUP_NAME_LEN
                && !group.starts_with('-')
                && !group
                    .chars()
                    .any(|c| c == ':' || c.is_whitespace() || c.is_control());
            if !valid {
                return Err(ConfigError::invalid(
                    "control.group",
                    format!(
                        "{group:?} is not a valid group name (1 to {MAX_GROUP_NAME_LEN} bytes, no ':' or spaces)"
                    ),
                ));
            }
        }
        if let Some(announce) = &self.announce {
            check_interface("announce.interface", &announce.interface)?;
            if !announce.state_file.is_absolute() {
                return Err(ConfigError::invalid(
                    "announce.state_file",
                    format!("{:?} is not an absolute path", announce.state_file),
                ));
            }
        }
        check(
            || "tables.flows".to_owned(),
            table_entries(self.tables.flows.into()),
        )?;
        check(
            || "tables.affinity".to_owned(),
            table_entries(self.tables.affinity.into()),
        )?;
        self.check_cluster()?;
        if self.services.is_empty() {
            return Err(ConfigError::invalid("services", "no [[services]] defined"));
        }
        if self.services.len() > MAX_SERVICES as usize {
            return Err(ConfigError::invalid(
                "services",
                format!(
                    "{} services, at most {MAX_SERVICES} are supported",
                    self.services.len()
                ),
            ));
        }
        let mut names = HashSet::new();
        let mut vips = HashSet::new();
        let mut backends_total = 0usize;
        let mut maglev_entries = 0u64;
        let mut services_of_backend: HashMap<(SocketAddr, Protocol), usize> = HashMap::new();
        for (i, service) in self.services.iter().enumerate() {
            let path = format!("services[{i}]");
            check_service(&path, service)?;
            for (j, b) in service.backends.iter().enumerate() {
                let n = services_of_backend
                    .entry((b.address, service.protocol))
                    .or_default();
                *n += 1;
                if *n > MAX_VIPS_PER_BACKEND {
                    return Err(ConfigError::invalid(
                        format!("{path}.backends[{j}].address"),
                        format!(
                            "{} is a backend of more than {MAX_VIPS_PER_BACKEND} services (a reply is matched to its \
                             VIP among at most {MAX_VIPS_PER_BACKEND})",
                            b.address
                        ),
                    ));
                }
            }
            if !names.insert(service.name.as_str()) {
                return Err(ConfigError::invalid(
                    format!("{path}.name"),
                    format!("duplicate service name {:?}", service.name),
                ));
            }
            if !vips.insert((service.vip, service.protocol)) {
                return Err(ConfigError::invalid(
                    format!("{path}.vip"),
                    format!(
                        "{}/{} is already the VIP of another service",
                        service.vip, service.protocol
                    ),
                ));
            }
            backends_total += service.backends.len();
            if backends_total > MAX_BACKENDS as usize {
                return Err(ConfigError::invalid(
                    format!("{path}.backends"),
                    format!("more than {MAX_BACKENDS} backends in all services together"),
                ));
            }
            maglev_entries += 2 * u64::from(service.table_size);
            if maglev_entries > MAX_MAGLEV_ENTRIES {
                return Err(ConfigError::invalid(
                    format!("{path}.table_size"),
                    format!(
                        "the Maglev tables of all services together would need more than \
                         {MAX_MAGLEV_ENTRIES} entries (2 × table_size each); use smaller tables"
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl Config {
    /// `[cluster]`: peers need a listener and a key, and are listed once.
    fn check_cluster(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        let mut seen = HashSet::new();
        for (i, peer) in c.peers.iter().enumerate() {
            if !seen.insert(peer) {
                return Err(ConfigError::invalid(
                    format!("cluster.peers[{i}]"),
                    format!("{peer} is listed twice"),
                ));
            }
            check_endpoint(&format!("cluster.peers[{i}]"), "a peer", *peer)?;
        }
        if c.other_peers().is_empty() {
            return Ok(());
        }
        if c.listen.is_none() {
            return Err(ConfigError::invalid(
                "cluster.listen",
                "required with cluster.peers: the address the peers connect to",
            ));
        }
        match &c.secret_file {
            None => Err(ConfigError::invalid(
                "cluster.secret_file",
                "required with cluster.peers: the key every gateway shares",
            )),
            Some(path) if !path.is_absolute() => Err(ConfigError::invalid(
                "cluster.secret_file",
                format!("{path:?} is not an absolute path"),
            )),
            Some(_) => Ok(()),
        }
    }
}

impl FromStr for Config {
    type Err = ConfigError;

    /// Parses and validates config text; errors carry a line and column but
    /// no file (see [`Config::from_file`]).
    fn from_str(text: &str) -> Result<Config, ConfigError> {
        parse::parse(text)
    }
}

// Per-field checks of integers, shared by parsing (on the file's i64) and
// `validate` (on the typed value), so both give the same message.

fn out_of_range(v: i64, lo: i64, hi: i64) -> String {
    format!("{v} is out of range {lo}..={hi}")
}

fn prefix(max: u8) -> impl Fn(i64) -> Result<u8, String> {
    move |v| {
        u8::try_from(v)
            .ok()
            .filter(|&p| p <= max)
            .ok_or_else(|| out_of_range(v, 0, max.into()))
    }
}

fn table_size(v: i64) -> Result<u32, String> {
    let m = u32::try_from(v)
        .ok()
        .filter(|m| (2..=MAX_TABLE_SIZE).contains(m))
        .ok_or_else(|| format!("{v} is out of range 2..={MAX_TABLE_SIZE} (and must be a prime)"))?;
    if is_prime(m) {
        return Ok(m);
    }
    let next = (m..=MAX_TABLE_SIZE).find(|&n| is_prime(n));
    let hint = next
        .map(|n| format!("; the next prime is {n}"))
        .unwrap_or_default();
    Err(format!("{m} is not a prime{hint}"))
}

fn proxy_threads(v: i64) -> Result<Option<u16>, String> {
    u16::try_from(v)
        .ok()
        .filter(|n| (1..=MAX_PROXY_THREADS).contains(n))
        .map(Some)
        .ok_or_else(|| out_of_range(v, 1, MAX_PROXY_THREADS.into()))
}

/// `[tables]` sizes.
fn table_entries(v: i64) -> Result<u32, String> {
    u32::try_from(v)
        .ok()
        .filter(|n| (MIN_TABLE_ENTRIES..=MAX_TABLE_ENTRIES).contains(n))
        .ok_or_else(|| out_of_range(v, MIN_TABLE_ENTRIES.into(), MAX_TABLE_ENTRIES.into()))
}

fn weight(v: i64) -> Result<u32, String> {
    if v == 0 {
        return Err(format!(
            "0 is not a valid weight (1..={MAX_WEIGHT}); to stop sending new clients to a \
             backend, drain it: `balancer backend drain SERVICE ADDR`"
        ));
    }
    u32::try_from(v)
        .ok()
        .filter(|w| (1..=MAX_WEIGHT).contains(w))
        .ok_or_else(|| out_of_range(v, 1, MAX_WEIGHT.into()))
}

fn status(v: i64) -> Result<u16, String> {
    u16::try_from(v)
        .ok()
        .filter(|s| (100..=599).contains(s))
        .ok_or_else(|| out_of_range(v, 100, 599))
}

/// `rise`, `fall`.
fn count(v: i64) -> Result<u32, String> {
    u32::try_from(v)
        .ok()
        .filter(|&n| n >= 1)
        .ok_or_else(|| out_of_range(v, 1, u32::MAX.into()))
}

fn check<T>(field: impl FnOnce() -> String, result: Result<T, String>) -> Result<(), ConfigError> {
    result
        .map(drop)
        .map_err(|m| ConfigError::invalid(field(), m))
}

/// Linux's `dev_valid_name`.
fn check_interface(field: &str, name: &str) -> Result<(), ConfigError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if valid {
        return Ok(());
    }
    Err(ConfigError::invalid(
        field,
        format!(
            "{name:?} is not a valid interface name (1 to {MAX_IFNAME_LEN} bytes, no '/', ':' or spaces)"
        ),
    ))
}

/// Not 0.0.0.0, ::, multicast or broadcast, and not port 0.
fn check_endpoint(field: &str, what: &str, addr: SocketAddr) -> Result<(), ConfigError> {
    let ip = addr.ip();
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    if ip.is_unspecified() || ip.is_multicast() || broadcast {
        return Err(ConfigError::invalid(
            field,
            format!("{addr} cannot be {what}: not a unicast address"),
        ));
    }
    if addr.port() == 0 {
        return Err(ConfigError::invalid(
            field,
            format!("{addr} cannot be {what}: port 0"),
        ));
    }
    Ok(())
}

fn check_positive(field: impl FnOnce() -> String, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        return Err(ConfigError::invalid(field(), "must be longer than 0s"));
    }
    if d > duration::MAX {
        return Err(ConfigError::invalid(field(), "must be at most 365d"));
    }
    Ok(())
}

/// Is `name` a valid service or backend name: 1 to [`MAX_NAME_LEN`] of
/// `A-Z a-z 0-9 _ . -`?
pub fn valid_name(name: &str) -> bool {
    let name_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    !name.is_empty() && name.len() <= MAX_NAME_LEN && name.chars().all(name_ok)
}

/// A service's or a backend's name: it shows in metric labels, CLI
/// arguments and session ids.
fn check_name(field: &str, name: &str) -> Result<(), ConfigError> {
    if !valid_name(name) {
        return Err(ConfigError::invalid(
            field,
            format!("{name:?} is not a valid name (1 to {MAX_NAME_LEN} of A-Z a-z 0-9 _ . -)"),
        ));
    }
    Ok(())
}

fn check_service(path: &str, s: &ServiceConfig) -> Result<(), ConfigError> {
    let field = |key: &str| format!("{path}.{key}");
    check_name(&field("name"), &s.name)?;
    check_endpoint(&field("vip"), "a VIP", s.vip)?;
    check(
        || field("source_prefix_v4"),
        prefix(32)(s.source_prefix_v4.into()),
    )?;
    check(
        || field("source_prefix_v6"),
        prefix(128)(s.source_prefix_v6.into()),
    )?;
    check_positive(|| field("affinity_timeout"), s.affinity_timeout)?;
    check(|| field("table_size"), table_size(s.table_size.into()))?;
    if s.backends.len() > s.table_size as usize {
        return Err(ConfigError::invalid(
            field("table_size"),
            format!(
                "{} is smaller than the number of backends ({}); Maglev wants about 100 × backends",
                s.table_size,
                s.backends.len()
            ),
        ));
    }

    let h = &s.health;
    if !h.path.starts_with('/') || h.path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConfigError::invalid(
            field("health.path"),
            format!("{:?} must start with '/' and contain no spaces", h.path),
        ));
    }
    check(
        || field("health.expect_status"),
        status(h.expect_status.into()),
    )?;
    check_positive(|| field("health.interval"), h.interval)?;
    check_positive(|| field("health.timeout"), h.timeout)?;
    check(|| field("health.rise"), count(h.rise.into()))?;
    check(|| field("health.fall"), count(h.fall.into()))?;
    check_termination(path, s)?;

    for (j, backend) in s.backends.iter().enumerate() {
        check_backend(
            s,
            &format!("{path}.backends[{j}]"),
            backend,
            &s.backends[..j],
        )?;
    }
    Ok(())
}

/// The keys of services the daemon terminates: TCP only, the proxies named
/// where a header is believed, and no such key on a service the kernel
/// forwards (where it would silently do nothing).
fn check_termination(path: &str, s: &ServiceConfig) -> Result<(), ConfigError> {
    let field = |key: &str| format!("{path}.{key}");
    check_positive(|| field("header_timeout"), s.header_timeout)?;
    if !s.terminates_in_daemon() {
        let unused = if !s.trusted_proxies.is_empty() {
            Some("trusted_proxies")
        } else if s.send_proxy_protocol {
            Some("send_proxy_protocol")
        } else {
            None
        };
        return match unused {
            Some(key) => Err(ConfigError::invalid(
                field(key),
                r#"only used with client_address = "proxy-protocol" or "x-forwarded-for", or affinity = "sid""#,
            )),
            None => Ok(()),
        };
    }
    if s.protocol != Protocol::Tcp {
        return Err(ConfigError::invalid(
            field("protocol"),
            format!(
                "client_address = {:?} and affinity = {:?} need protocol = \"tcp\" (the daemon reads the connection)",
                s.client_address.as_str(),
                s.affinity.as_str()
            ),
        ));
    }
    if s.client_address != ClientAddress::Packet && s.trusted_proxies.is_empty() {
        return Err(ConfigError::invalid(
            field("trusted_proxies"),
            format!(
                "required with client_address = {:?}: the proxies whose word is taken (every other source is refused)",
                s.client_address.as_str()
            ),
        ));
    }
    if s.affinity == AffinityMode::Sid
        && let Some(j) = s.backends.iter().position(|b| b.name.is_none())
    {
        return Err(ConfigError::invalid(
            format!("{path}.backends[{j}].name"),
            r#"required with affinity = "sid": the prefix of the session ids this backend mints"#,
        ));
    }
    Ok(())
}

/// `backend` as a member of `service`, next to the `others` already in it.
fn check_backend(
    service: &ServiceConfig,
    path: &str,
    backend: &BackendConfig,
    others: &[BackendConfig],
) -> Result<(), ConfigError> {
    let address = format!("{path}.address");
    check_endpoint(&address, "a backend", backend.address)?;
    if backend.address.is_ipv4() != service.vip.is_ipv4() {
        let family = |a: SocketAddr| if a.is_ipv4() { "IPv4" } else { "IPv6" };
        return Err(ConfigError::invalid(
            address,
            format!(
                "{} is {} but the VIP {} is {}",
                backend.address,
                family(backend.address),
                service.vip,
                family(service.vip)
            ),
        ));
    }
    if backend.address.ip() == service.vip.ip() {
        return Err(ConfigError::invalid(
            address,
            format!("{} is on the VIP's own address", backend.address),
        ));
    }
    if others.iter().any(|o| o.address == backend.address) {
        return Err(ConfigError::invalid(
            address,
            format!(
                "duplicate backend {} in service {:?}",
                backend.address, service.name
            ),
        ));
    }
    check(|| format!("{path}.weight"), weight(backend.weight.into()))?;
    if let Some(name) = &backend.name {
        check_name(&format!("{path}.name"), name)?;
        if others.iter().any(|o| o.name.as_ref() == Some(name)) {
            return Err(ConfigError::invalid(
                format!("{path}.name"),
                format!(
                    "duplicate backend name {name:?} in service {:?}",
                    service.name
                ),
            ));
        }
    }
    Ok(())
}
