//! The peer of the per-packet comparison: Katran's XDP balancer
//! (`balancer.bpf.o`, built from Katran's source outside this repository;
//! bench/README.md says how), loaded with aya and configured for the bench's
//! VIP and backends the way Katran's own userspace would, then attached to
//! the gateway's interfaces with the same kind of XDP link as the floor.
//!
//! The struct layouts below are Katran's (`balancer_structs.h`): the map
//! values the bench writes and the statistics it reads.

use std::{
    net::Ipv4Addr,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, Pod,
    maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues},
    programs::Xdp,
};
use balancer_tests::{
    rawsend::mac_of,
    topology::{CLIENT_IF, GW_BACKEND_IF, GW_CLIENT_IF, VIP_V4},
};

use crate::{
    bpf::{self, Hook},
    testbed::{SINK_PORT, Testbed},
};

/// Where the object comes from when `--katran` is not given.
pub const OBJ_ENV: &str = "BALANCER_BENCH_KATRAN_OBJ";

/// `balancer_consts.h`: the ring size per VIP, the VIP count that offsets
/// the global counters in `stats`, and those counters' indexes.
const RING_SIZE: u32 = 65537;
const MAX_VIPS: u32 = 512;
const LRU_CNTRS: u32 = 0;
const LRU_MISS_CNTR: u32 = 1;
const FALLBACK_LRU_CNTR: u32 = 3;
const IPPROTO_TCP: u8 = 6;

/// `struct vip_definition`: address (v4 in the first word), port, proto.
#[repr(C)]
#[derive(Clone, Copy)]
struct VipDefinition {
    vip: [u32; 4],
    port: u16,
    proto: u8,
    pad: u8,
}
// SAFETY: repr(C) integers with the padding spelled out.
unsafe impl Pod for VipDefinition {}

/// `struct vip_meta`.
#[repr(C)]
#[derive(Clone, Copy)]
struct VipMeta {
    flags: u32,
    vip_num: u32,
}
// SAFETY: repr(C) integers, no padding.
unsafe impl Pod for VipMeta {}

/// `struct real_definition`: address (v4 in the first word), flags.
#[repr(C)]
#[derive(Clone, Copy)]
struct RealDefinition {
    dst: [u32; 4],
    flags: u8,
    pad: [u8; 3],
}
// SAFETY: repr(C) integers with the padding spelled out.
unsafe impl Pod for RealDefinition {}

/// `struct lb_stats`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct LbStats {
    v1: u64,
    v2: u64,
}
// SAFETY: repr(C) integers, no padding.
unsafe impl Pod for LbStats {}

/// `struct flow_key` (v4/v6 source, destination, ports, proto: 37 bytes,
/// 40 with padding) and `struct real_pos_lru` (position, atime: 16).
const FLOW_KEY_SIZE: u32 = 40;
const REAL_POS_LRU_SIZE: u32 = 16;

/// One CPU's connection table (`flow_key` → `real_pos_lru`, as bytes: the
/// bench only counts its entries).
type Lru = HashMap<MapData, [u8; FLOW_KEY_SIZE as usize], [u8; REAL_POS_LRU_SIZE as usize]>;

/// Katran's own statistics over the VIP's packets, summed over CPUs, and
/// the entries its per-CPU LRU maps hold.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    /// VIP packets (`stats[MAX_VIPS + LRU_CNTRS].v1`).
    pub vip_packets: u64,
    /// Of those, LRU misses routed by the hash ring (`.v2`).
    pub lru_misses: u64,
    /// Misses of SYNs (`stats[MAX_VIPS + LRU_MISS_CNTR].v1`).
    pub syn_misses: u64,
    /// Packets that found no per-CPU LRU and used the fallback one.
    pub fallback: u64,
    /// Entries in the per-CPU LRU maps: each new flow Katran records adds one.
    pub lru_entries: u64,
}

impl Counters {
    pub fn since(&self, before: &Counters) -> Counters {
        Counters {
            vip_packets: self.vip_packets - before.vip_packets,
            lru_misses: self.lru_misses - before.lru_misses,
            syn_misses: self.syn_misses - before.syn_misses,
            fallback: self.fallback - before.fallback,
            lru_entries: self.lru_entries.saturating_sub(before.lru_entries),
        }
    }

    /// Packets routed from the connection table: LRU hits.
    pub fn lru_hits(&self) -> u64 {
        self.vip_packets - self.lru_misses.min(self.vip_packets)
    }
}

/// Katran loaded, configured and attached to both gateway interfaces;
/// dropping it detaches it (links) and frees its maps.
pub struct Katran {
    // Field order is drop order: the links go before the program.
    _links: Vec<OwnedFd>,
    ebpf: Ebpf,
    /// The per-CPU connection tables (`lru_mapping`'s inner maps).
    lrus: Vec<Lru>,
}

impl Katran {
    /// Load `obj`, configure it for the bench's VIP (`VIP_V4:SINK_PORT`,
    /// TCP) and its three backends, give every CPU a connection table of
    /// `lru_entries`, and attach it.
    pub fn start(bed: &Testbed, obj: &Path, lru_entries: u32) -> Result<Katran> {
        let mut ebpf = Ebpf::load_file(obj)
            .with_context(|| format!("loading Katran's object {}", obj.display()))?;
        let prog: &mut Xdp = ebpf
            .program_mut("balancer_ingress")
            .context("no program balancer_ingress in Katran's object")?
            .try_into()?;
        prog.load().context("loading Katran's balancer_ingress")?;
        let backends: Vec<Ipv4Addr> = bed.topo.backends().iter().map(|b| b.v4()).collect();
        configure_vip(&mut ebpf, &backends)?;
        // XDP_TX sends the encapsulated frame back out of the interface it
        // came in on, to the next hop Katran is given: on the client side,
        // the client namespace.
        let next_hop = mac_of(bed.topo.client(), CLIENT_IF)?;
        set_next_hop(&mut ebpf, next_hop)?;
        let lrus = per_cpu_lrus(&mut ebpf, lru_entries)?;

        let prog: &Xdp = ebpf
            .program("balancer_ingress")
            .context("balancer_ingress")?
            .try_into()?;
        let fd = prog.fd()?.as_fd();
        let gw = bed.topo.gw();
        let mut links = Vec::new();
        for ifname in [GW_CLIENT_IF, GW_BACKEND_IF] {
            let ifindex = gw.ifindex(ifname);
            let link = gw
                .run(|| bpf::attach(fd, ifindex, Hook::Xdp))
                .with_context(|| format!("attaching Katran to {ifname}"))?;
            links.push(link);
        }
        Ok(Katran {
            _links: links,
            ebpf,
            lrus,
        })
    }

    pub fn counters(&self) -> Result<Counters> {
        let stats: PerCpuArray<&MapData, LbStats> =
            PerCpuArray::try_from(self.ebpf.map("stats").context("no map stats")?)?;
        let sum = |v: PerCpuValues<LbStats>| {
            v.iter().fold(LbStats::default(), |a, s| LbStats {
                v1: a.v1 + s.v1,
                v2: a.v2 + s.v2,
            })
        };
        let lru = sum(stats.get(&(MAX_VIPS + LRU_CNTRS), 0)?);
        let miss = sum(stats.get(&(MAX_VIPS + LRU_MISS_CNTR), 0)?);
        let fallback = sum(stats.get(&(MAX_VIPS + FALLBACK_LRU_CNTR), 0)?);
        let mut lru_entries = 0;
        for m in &self.lrus {
            lru_entries += m.keys().count() as u64;
        }
        Ok(Counters {
            vip_packets: lru.v1,
            lru_misses: lru.v2,
            syn_misses: miss.v1,
            fallback: fallback.v1,
            lru_entries,
        })
    }
}

/// The VIP as Katran's userspace adds it (vip_num 0, no flags: port-aware
/// hashing, LRU on), its reals at ids 1..=N (Katran keeps id 0 unused), and
/// its hash ring with every slot naming a real. The ring is filled
/// round-robin rather than with Katran's Maglev: the program reads one slot
/// per new flow either way.
fn configure_vip(ebpf: &mut Ebpf, backends: &[Ipv4Addr]) -> Result<()> {
    let mut vips: HashMap<&mut MapData, VipDefinition, VipMeta> =
        HashMap::try_from(ebpf.map_mut("vip_map").context("no map vip_map")?)?;
    let vip = VipDefinition {
        vip: [u32::from_ne_bytes(VIP_V4.octets()), 0, 0, 0],
        port: SINK_PORT.to_be(),
        proto: IPPROTO_TCP,
        pad: 0,
    };
    vips.insert(
        vip,
        VipMeta {
            flags: 0,
            vip_num: 0,
        },
        0,
    )?;
    let mut reals: Array<&mut MapData, RealDefinition> =
        Array::try_from(ebpf.map_mut("reals").context("no map reals")?)?;
    for (i, b) in backends.iter().enumerate() {
        let real = RealDefinition {
            dst: [u32::from_ne_bytes(b.octets()), 0, 0, 0],
            flags: 0,
            pad: [0; 3],
        };
        reals.set(i as u32 + 1, real, 0)?;
    }
    let mut ring: Array<&mut MapData, u32> =
        Array::try_from(ebpf.map_mut("ch_rings").context("no map ch_rings")?)?;
    for slot in 0..RING_SIZE {
        ring.set(slot, slot % backends.len() as u32 + 1, 0)?;
    }
    Ok(())
}

/// `ctl_array[0]`: the MAC address encapsulated frames are sent to.
fn set_next_hop(ebpf: &mut Ebpf, mac: [u8; 6]) -> Result<()> {
    let mut ctl: Array<&mut MapData, u64> =
        Array::try_from(ebpf.map_mut("ctl_array").context("no map ctl_array")?)?;
    let mut value = [0u8; 8];
    value[..6].copy_from_slice(&mac);
    ctl.set(0, u64::from_ne_bytes(value), 0)?;
    Ok(())
}

/// A connection table per possible CPU in `lru_mapping`, as Katran's
/// userspace gives each forwarding core its own LRU (without one, the
/// program falls back to a 1000-entry table and counts it).
fn per_cpu_lrus(ebpf: &mut Ebpf, entries: u32) -> Result<Vec<Lru>> {
    let outer = match ebpf.map("lru_mapping").context("no map lru_mapping")? {
        Map::ArrayOfMaps(m) => m.fd().as_fd().as_raw_fd(),
        other => bail!("lru_mapping is not an array of maps: {other:?}"),
    };
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    let mut lrus = Vec::new();
    for cpu in 0..cpus as u32 {
        let fd = bpf::create_lru_hash(FLOW_KEY_SIZE, REAL_POS_LRU_SIZE, entries, 0)
            .context("creating a per-CPU connection table")?;
        bpf::map_update(outer, &cpu.to_ne_bytes(), &fd.as_raw_fd().to_ne_bytes())
            .with_context(|| format!("lru_mapping[{cpu}]"))?;
        let map = Map::LruHashMap(MapData::from_fd(fd)?);
        lrus.push(HashMap::try_from(map)?);
    }
    Ok(lrus)
}
