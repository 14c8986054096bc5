//! Map names and capacities: the one place both sides spell them.

/// `HashMap<ServiceKey, Service>`: the VIPs.
pub const SERVICES: &str = "SERVICES";
/// `Array<Backend>` indexed by backend id.
pub const BACKENDS: &str = "BACKENDS";
/// `Array<AdminRecord>` of one entry, for the daemon only: the cluster
/// admin version and the fingerprint of the backend set it stands for, so
/// that a restarted gateway resumes its version with the backends it kept.
pub const ADMIN: &str = "ADMIN";
/// `Array<BackendName>` indexed by backend id, for the daemon only: the
/// names of backends added with `balancer backend add --name`, so that a
/// restarted daemon keeps them with the backends (`BACKENDS` has no room
/// for a name). Config backends' names come from the config.
pub const BACKEND_NAMES: &str = "BACKEND_NAMES";
/// `Array<u32>` of backend ids: every service's two Maglev table halves.
pub const MAGLEV: &str = "MAGLEV";
/// `LruHashMap<FlowKey, Flow>`: client → VIP flows (conntrack), keyed as
/// the client sends them. A reply finds its flow here too: its key is
/// rebuilt from the reply with the VIP that `BACKEND_PORTS` leads to.
pub const CONNTRACK: &str = "CONNTRACK";
/// `LruHashMap<AffinityKey, Affinity>`: client (masked) → backend.
pub const AFFINITY: &str = "AFFINITY";
/// `RingBuf` of `AffinityEvent`s (`types`): the affinity entries
/// confirmations made, which the daemon sends to its cluster peers. A full
/// buffer drops the record, counted (`affinity_report_failed`), and never
/// delays a packet. Pinned, so a restarted daemon reads what the kernel
/// wrote meanwhile.
pub const AFFINITY_EVENTS: &str = "AFFINITY_EVENTS";
/// `AFFINITY_EVENTS`' size in bytes (a power-of-two number of pages): a
/// record takes 48 (40 and the kernel's 8-byte header), so about 21,800
/// records wait for the daemon before any is lost.
pub const AFFINITY_EVENTS_BYTES: u32 = 1 << 20;
/// `PerCpuArray<BackendStats>` indexed by backend id.
pub const BACKEND_STATS: &str = "BACKEND_STATS";
/// `PerCpuArray<u64>` indexed by [`crate::counters::Counter`].
pub const COUNTERS: &str = "COUNTERS";
/// `DevMapHash` ifindex → ifindex: the interfaces XDP may redirect to.
pub const REDIRECT_DEVS: &str = "REDIRECT_DEVS";
/// `LruHashMap<FragmentKey, FragmentNat>`: how the first fragment of a
/// datagram was rewritten, for its later fragments (which carry no ports).
pub const FRAGMENTS: &str = "FRAGMENTS";
/// `HashMap<ServiceKey, ServiceKey>`: VIP address and protocol (port 0) →
/// the one `source-ip` service there, so a later fragment seen before its
/// first can still be placed by client address alone.
pub const FRAGMENT_SERVICES: &str = "FRAGMENT_SERVICES";

/// `Array<u32>` of `PORTS` entries, not pinned, indexed by a port (host
/// order): which services have a VIP on it. 0: none (a packet to that port
/// is not for a VIP: replies to a client's ephemeral port, most other
/// traffic); `id + 1`: service `id` only (the packet's service is in
/// `SERVICE_SLOTS[id]` if the slot's VIP is the packet's destination: two
/// array reads); `PORT_SHARED`: several services (a SERVICES lookup, which
/// hashes the key). Written by the daemon with `BACKEND_PORTS`, at every
/// start before it attaches.
pub const VIP_PORTS: &str = "VIP_PORTS";
/// `Array<ServiceSlot>` indexed by service id, not pinned, mmapable (so its
/// values start page-aligned and each 64-byte slot is one cache line): the
/// service's VIP, and the same value as its SERVICES entry, written just
/// after it. Packets of a port with one service (`VIP_PORTS`) and replies
/// of backends of one service (`BACKEND_PORTS`) read it.
pub const SERVICE_SLOTS: &str = "SERVICE_SLOTS";
/// `Array<u32>` of `PORTS` entries, not pinned, indexed by a backend port
/// (host order): who may send replies from it. 0: no backend (a packet from
/// that port is not a reply, and costs no lookup); `id + 1`: backends of
/// service `id` only (the reply's VIP is in `SERVICE_SLOTS[id]`, an array
/// read); `PORT_SHARED`: backends of several services (the VIPs come from
/// `BACKEND_VIPS`, a hash lookup). Written by the daemon with
/// `BACKEND_VIPS`.
pub const BACKEND_PORTS: &str = "BACKEND_PORTS";
pub const PORTS: u32 = 65536;
/// See `VIP_PORTS` and `BACKEND_PORTS`.
pub const PORT_SHARED: u32 = u32::MAX;
/// `HashMap<ServiceKey, BackendVips>`, not pinned: a backend's address,
/// port and protocol → the VIPs of the services it serves, for replies
/// from a `PORT_SHARED` port. Written by the daemon from its services at
/// every start (before it attaches) and on every change.
pub const BACKEND_VIPS: &str = "BACKEND_VIPS";
/// `LruHashMap<FlowKey, Pending>`, not pinned: the client → VIP flows of
/// `SERVICE_AMBIGUOUS_REPLIES` services that their backend has not yet
/// confirmed, so their replies find their VIP. The one state written
/// before confirmation: a flood can evict its entries (which delays those
/// services' handshakes by a retransmitted SYN), never CONNTRACK's or
/// AFFINITY's.
pub const PENDING: &str = "PENDING";
pub const MAX_PENDING: u32 = 1 << 16;
/// `LruHashMap<FlowKey, u32>`, not pinned: flows a host opened straight
/// to a backend's address:port, not through a VIP, keyed as its packets
/// carry them. Their replies carry a backend port's source like a VIP
/// flow's and would otherwise be translated from config when they have no
/// conntrack entry; they pass untouched. Written by packets to a backend
/// port, only when absent.
pub const DIRECT: &str = "DIRECT";
pub const MAX_DIRECT: u32 = 1 << 16;
/// Services one backend address:port may serve (see `BACKEND_VIPS`).
pub const MAX_VIPS_PER_BACKEND: usize = 4;

/// Every pinned map the kernel object must define (checked by a test).
pub const ALL: &[&str] = &[
    SERVICES,
    BACKENDS,
    MAGLEV,
    CONNTRACK,
    AFFINITY,
    BACKEND_STATS,
    COUNTERS,
    REDIRECT_DEVS,
    FRAGMENTS,
    FRAGMENT_SERVICES,
    AFFINITY_EVENTS,
    ADMIN,
    BACKEND_NAMES,
];

/// Program names in the object.
pub const PROG_XDP: &str = "balancer_xdp";
/// The same logic as a TC classifier (cls_bpf, direct-action), `mode = "tc"`.
pub const PROG_TC: &str = "balancer_tc";

pub const MAX_SERVICES: u32 = 256;
/// Backend ids are `0..MAX_BACKENDS`, unique across services.
pub const MAX_BACKENDS: u32 = 4096;
/// At least 1M flows.
pub const MAX_FLOWS: u32 = 1 << 20;
pub const MAX_AFFINITY: u32 = 1 << 20;
pub const MAX_REDIRECT_DEVS: u32 = 64;
/// Datagrams in flight in pieces at once.
pub const MAX_FRAGMENTS: u32 = 1 << 16;
/// The MAGLEV array's size in the object; userspace resizes it at load time
/// to the sum of `2 × table_size` over the configured services.
pub const MAGLEV_DEFAULT_ENTRIES: u32 = 2 * 65537;
