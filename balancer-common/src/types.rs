//! The values stored in the maps. All `#[repr(C)]`, `Copy`, without implicit
//! padding (explicit `_pad` fields), each size pinned by a const assert so the
//! kernel and userspace layouts cannot drift apart.
//!
//! Addresses are `[u32; 4]` holding the address bytes in network order (the
//! packet's bytes loaded as native words); an IPv4 address uses word 0 and
//! leaves the others zero. Ports are in network byte order too, as they sit
//! in the packet, so the kernel never byte-swaps on the fast path.

use core::mem::size_of;

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Key of `SERVICES`: a VIP `addr:port/proto`; of `BACKEND_VIPS`, a
/// backend's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub addr: [u32; 4],
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}
const _: () = assert!(size_of::<ServiceKey>() == 20);

/// `Service::flags`: hash the 4-tuple instead of the (masked) source address,
/// and keep no affinity entry.
pub const SERVICE_FOUR_TUPLE: u32 = 1;
/// `Service::flags`: a backend address:port of this service serves other
/// VIPs too (`BackendVips::count > 1`), so its replies cannot name their
/// VIP from config alone: the client packets of its unconfirmed flows
/// record their choice in `PENDING` for the replies to find. Set by the
/// daemon from its services.
pub const SERVICE_AMBIGUOUS_REPLIES: u32 = 2;
/// `Service::flags`: the daemon terminates this service's connections
/// (PROXY protocol, X-Forwarded-For, sid affinity): its packets go to the
/// kernel's stack untouched, and its backends' packets are not replies of
/// a balanced flow. Set by the daemon from its config.
pub const SERVICE_TO_STACK: u32 = 4;

/// Value of `SERVICES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// Index of this service (part of affinity keys).
    pub id: u32,
    /// `SERVICE_*` bits.
    pub flags: u32,
    /// Start of each of the two table halves in `MAGLEV`.
    pub table_offset: [u32; 2],
    /// Which half packets read now (0 or 1); userspace writes the other half
    /// then flips this, so no packet sees a half-written table.
    pub active_table: u32,
    /// `M`, a prime; 0 while the service has no usable backend.
    pub table_size: u32,
    pub affinity_timeout_ns: u64,
    pub prefix_v4: u8,
    pub prefix_v6: u8,
    pub _pad: [u8; 2],
    /// Seeds the flow hash: `hash::service_seed` of the VIP, not
    /// the local id, so every gateway hashes a client to the same slot.
    pub hash_seed: u32,
}
const _: () = assert!(size_of::<Service>() == 40);

impl Service {
    /// The affinity prefix for a client of `family`.
    #[inline(always)]
    pub const fn source_prefix(&self, family: u8) -> u8 {
        if family == FAMILY_V4 {
            self.prefix_v4
        } else {
            self.prefix_v6
        }
    }
}

/// Value of `SERVICE_SLOTS` (see `maps::SERVICE_SLOTS`), by service id:
/// the service's VIP and its SERVICES value in one 64-byte slot, so that
/// finding a packet's service touches one cache line.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceSlot {
    pub vip: ServiceKey,
    pub _pad: u32,
    pub service: Service,
}
const _: () = assert!(size_of::<ServiceSlot>() == 64);

/// `Backend::state` bits.
pub const BACKEND_UP: u8 = 1;
/// Up but taking no new clients: existing flows and affinities stay.
pub const BACKEND_DRAINING: u8 = 2;
/// Draining by an operator's request, kept in the map (with the backend
/// down as well) so a restarted daemon adopts it. The kernel reads only
/// `BACKEND_UP` and `BACKEND_DRAINING`.
pub const BACKEND_ADMIN_DRAIN: u8 = 4;
/// Added at runtime (`balancer backend add`), not from the config file: a
/// restarted daemon keeps it although the config does not list it.
pub const BACKEND_RUNTIME: u8 = 8;
/// Weight set by an operator (`balancer backend set-weight`): a restarted
/// daemon keeps this entry's weight over the config's.
pub const BACKEND_ADMIN_WEIGHT: u8 = 16;

/// Value of `BACKENDS`, indexed by backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: [u32; 4],
    /// Network byte order.
    pub port: u16,
    pub family: u8,
    /// `BACKEND_*` bits; no `BACKEND_UP` for a backend that is down.
    pub state: u8,
    pub service_id: u32,
    /// Maglev weight, for the daemon only (a restarted daemon rebuilds
    /// from it); 0 marks an unused slot.
    pub weight: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<Backend>() == 32);

impl Backend {
    #[inline(always)]
    pub const fn is_up(&self) -> bool {
        self.state & BACKEND_UP != 0
    }

    /// Does this slot hold a backend (up or down)?
    #[inline(always)]
    pub const fn in_use(&self) -> bool {
        self.weight != 0
    }
}

/// `ADMIN[0]`: the gateway's cluster admin version
/// (`balancer_user::cluster::admin`) and the fingerprint of the backend
/// set it stood for when it was reached, for the daemon only. Pinned with
/// the backends, so a restart resumes the version only if it finds the
/// same set.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdminRecord {
    pub version: u64,
    pub fingerprint: u64,
}
const _: () = assert!(size_of::<AdminRecord>() == 16);

/// The longest backend (or service) name: the config's limit, and what a
/// `BACKEND_NAMES` entry holds.
pub const MAX_NAME_LEN: usize = 64;

/// Value of `BACKEND_NAMES`, indexed by backend id: a runtime backend's
/// name, NUL-padded (names are 1..=64 of `A-Z a-z 0-9 _ . -`, so a NUL
/// never belongs to one); all zeros for none. For the daemon only.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendName {
    pub bytes: [u8; MAX_NAME_LEN],
}
const _: () = assert!(size_of::<BackendName>() == MAX_NAME_LEN);

impl Default for BackendName {
    fn default() -> Self {
        BackendName {
            bytes: [0; MAX_NAME_LEN],
        }
    }
}

impl BackendName {
    /// `name`'s entry, or `None` if it does not fit.
    pub fn new(name: &str) -> Option<Self> {
        let mut bytes = [0; MAX_NAME_LEN];
        bytes
            .get_mut(..name.len())?
            .copy_from_slice(name.as_bytes());
        Some(BackendName { bytes })
    }

    /// The name's bytes: up to the first NUL; empty for none.
    pub fn as_bytes(&self) -> &[u8] {
        let len = self
            .bytes
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(MAX_NAME_LEN);
        &self.bytes[..len]
    }
}

/// Key of `CONNTRACK`: a client → VIP flow's 5-tuple, as the client's
/// packets carry it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// Network byte order.
    pub sport: u16,
    /// Network byte order.
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<FlowKey>() == 40);

/// `TCP_*` bits of a flow (`Flow::tcp_state`), set by the kernel as it
/// sees FIN and RST.
pub const TCP_FIN_FROM_CLIENT: u32 = 1;
pub const TCP_FIN_FROM_BACKEND: u32 = 2;
pub const TCP_RST: u32 = 4;
/// The backend accepted the connection. Every entry the data plane makes
/// has it: an entry is made when the backend confirms its flow (see
/// `Flow`). An entry adopted from a build that stored flows at the
/// client's SYN may lack it: a connection attempt, not a connection.
pub const TCP_BACKEND_ANSWERED: u32 = 8;

/// Is a connection with these `tcp_state` bits over?
#[inline(always)]
pub const fn tcp_closed(state: u32) -> bool {
    state & TCP_RST != 0
        || state & (TCP_FIN_FROM_CLIENT | TCP_FIN_FROM_BACKEND)
            == (TCP_FIN_FROM_CLIENT | TCP_FIN_FROM_BACKEND)
}

/// Value of `CONNTRACK`: the flow's backend and state, and what its
/// replies need besides the VIP (see `maps::BACKEND_PORTS`): the L2 path
/// back to the client, as the FIB gives it.
///
/// Made only when the flow's backend confirms it: its first packet in the
/// flow that is neither a SYN nor an RST (TCP), or any packet (UDP). A
/// backend's TCP stack sends such a segment only after it accepted the
/// handshake's last ACK against its own sequence number (or SYN cookie),
/// which a sender of spoofed packets never sees; so nobody who can only
/// send packets to the VIP can create entries, or evict the entries of
/// established flows by creating others.
///
/// One entry serves both directions, so a new connection costs one insert
/// into a 1M-entry LRU table, not two (an insert is most of a new flow's
/// cost). The L2 path is the reply's fallback when the FIB later has no
/// neighbour entry for the client: handing such a reply to the kernel does
/// not work, because its source is the VIP, an address of the gateway
/// itself, which the kernel drops as martian.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub backend_id: u32,
    /// `TCP_*` bits the client's packets set (always 0 for UDP). Each
    /// direction keeps its own bits, because the two directions of a flow
    /// run on different CPUs and a shared word would need an atomic OR,
    /// which the Rust BPF target does not offer: when both ends sent FIN at
    /// once, a plain read-modify-write lost one of them, and the closed
    /// connection counted as open until its idle timeout. Read the two
    /// together with `tcp_state()`.
    pub client_tcp_state: u32,
    /// CLOCK_MONOTONIC ns (the kernel's coarse clock) of the last client packet,
    /// to within a quarter of a second (stored only when it moves that much).
    pub last_seen_ns: u64,
    /// When this flow last refreshed its client's affinity entry; a
    /// long-lived connection keeps its affinity alive without a map write per
    /// packet.
    pub affinity_touched_ns: u64,
    /// CLOCK_MONOTONIC ns of creation.
    pub created_ns: u64,
    /// Interface replies leave by towards the client.
    pub client_ifindex: u32,
    /// The client's next hop's MAC (the client or its router).
    pub client_mac: [u8; 6],
    /// The gateway's MAC on `client_ifindex`.
    pub gateway_mac: [u8; 6],
    /// The kernel's: the clock epoch (about a second) in which it last took
    /// the client's next hop from the FIB into `client_mac`, `gateway_mac`
    /// and `client_ifindex` (see the data plane's `forward`).
    pub path_epoch: u16,
    /// `TCP_*` bits the backend's replies set: `TCP_FIN_FROM_BACKEND`,
    /// `TCP_RST`, `TCP_BACKEND_ANSWERED` (see `client_tcp_state`). Written
    /// only by replies, so a flow's two directions never store the same
    /// word. (An entry made by a build with one shared word has 0 here and
    /// all its bits in `client_tcp_state`, which `tcp_state()` reads alike.)
    pub backend_tcp_state: u8,
    pub _pad: [u8; 5],
}
const _: () = assert!(size_of::<Flow>() == 56);

impl Flow {
    /// The connection's `TCP_*` bits, both directions'.
    #[inline(always)]
    pub const fn tcp_state(&self) -> u32 {
        self.client_tcp_state | self.backend_tcp_state as u32
    }
}

/// Value of `PENDING`, keyed by a client → VIP [`FlowKey`]: the backend a
/// flow of a `SERVICE_AMBIGUOUS_REPLIES` service was sent to before its
/// backend confirmed it, and the service, whose VIP the reply then takes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    pub backend_id: u32,
    pub service_id: u32,
}
const _: () = assert!(size_of::<Pending>() == 8);

/// Value of `BACKEND_VIPS`: the VIPs (as `SERVICES` keys) of the services
/// a backend address:port serves, the first `count` of `vips`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendVips {
    pub count: u32,
    pub vips: [ServiceKey; crate::maps::MAX_VIPS_PER_BACKEND],
}
const _: () = assert!(size_of::<BackendVips>() == 84);

/// Key of `FRAGMENTS`: one datagram in pieces, as its fragments arrive.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragmentKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// The IPv4 identification (16 bits) or IPv6 fragment id, as loaded.
    pub id: u32,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<FragmentKey>() == 40);

/// `FragmentNat::direction`.
pub const FRAGMENT_TO_BACKEND: u8 = 0;
pub const FRAGMENT_TO_CLIENT: u8 = 1;

/// Value of `FRAGMENTS`: what the first fragment's rewrite did to the
/// address its later fragments carry too.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragmentNat {
    /// The new destination (to a backend) or source (to a client, the VIP).
    pub addr: [u32; 4],
    pub backend_id: u32,
    /// For replies: the client's L2 path, as in [`Flow`].
    pub client_ifindex: u32,
    pub client_mac: [u8; 6],
    pub gateway_mac: [u8; 6],
    /// `FRAGMENT_TO_*`.
    pub direction: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<FragmentNat>() == 40);

/// Key of `AFFINITY`: a service and a client address masked to the
/// service's prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub service_id: u32,
    pub family: u8,
    pub _pad: [u8; 3],
    pub client: [u32; 4],
}
const _: () = assert!(size_of::<AffinityKey>() == 24);

/// Value of `AFFINITY`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Affinity {
    pub backend_id: u32,
    pub _pad: u32,
    pub last_seen_ns: u64,
}
const _: () = assert!(size_of::<Affinity>() == 16);

/// A record of `AFFINITY_EVENTS`: an affinity entry a confirmation made
/// (a new client, or one whose entry now names another backend), for the
/// daemon to send to its cluster peers. Ids are this gateway's own.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityEvent {
    pub key: AffinityKey,
    pub backend_id: u32,
    pub _pad: u32,
    /// The entry's `last_seen_ns` (kernel clock) when it was made.
    pub last_seen_ns: u64,
}
const _: () = assert!(size_of::<AffinityEvent>() == 40);

/// Value of `BACKEND_STATS` (per CPU), indexed by backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    pub connections_total: u64,
    /// Client → backend.
    pub packets_in: u64,
    pub bytes_in: u64,
    /// Backend → client.
    pub packets_out: u64,
    pub bytes_out: u64,
}
const _: () = assert!(size_of::<BackendStats>() == 40);

impl BackendStats {
    /// Sum of the per-CPU values.
    pub fn sum<'a>(per_cpu: impl IntoIterator<Item = &'a BackendStats>) -> BackendStats {
        per_cpu
            .into_iter()
            .fold(BackendStats::default(), |a, b| BackendStats {
                connections_total: a.connections_total + b.connections_total,
                packets_in: a.packets_in + b.packets_in,
                bytes_in: a.bytes_in + b.bytes_in,
                packets_out: a.packets_out + b.packets_out,
                bytes_out: a.bytes_out + b.bytes_out,
            })
    }
}
