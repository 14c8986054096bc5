//! The loaded kernel object: loading it against the pinned maps, attaching
//! (or adopting) the program on the interfaces (`attach`), and writing the
//! maps the program reads.

use std::{
    collections::HashMap as StdHashMap,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMapHash, HashMap, MapData, MapError, PerCpuArray, PerCpuValues},
    programs::{SchedClassifier, Xdp},
};
use balancer_common::{
    counters::{COUNTER_COUNT, COUNTER_SLOTS, Counter},
    maps::{self, MAX_BACKENDS},
    types::{
        AdminRecord, Affinity, AffinityKey, Backend, BackendName, BackendStats, BackendVips, Flow,
        FlowKey, FragmentKey, FragmentNat, Pending, SERVICE_AMBIGUOUS_REPLIES, Service, ServiceKey,
        ServiceSlot,
    },
};

pub use crate::attach::Interface;
use crate::{
    adopt::{Pinned, PinnedService},
    attach,
    config::{AffinityMode, Mode, Tables},
    object::ebpf_object,
    port_maps::PortMaps,
    state::ServiceState,
};

pub struct DataPlane {
    ebpf: Ebpf,
    /// Which program is loaded and attached.
    mode: Mode,
    pin_dir: PathBuf,
    fragment_services: HashMap<MapData, ServiceKey, ServiceKey>,
    services: HashMap<MapData, ServiceKey, Service>,
    backends: Array<MapData, Backend>,
    admin: Array<MapData, AdminRecord>,
    backend_names: Array<MapData, BackendName>,
    maglev: Array<MapData, u32>,
    vip_ports: Array<MapData, u32>,
    service_slots: Array<MapData, ServiceSlot>,
    backend_ports: Array<MapData, u32>,
    backend_vips: HashMap<MapData, ServiceKey, BackendVips>,
    /// What VIP_PORTS, BACKEND_PORTS and BACKEND_VIPS hold (this daemon
    /// created them, and only it writes there), and which services it
    /// flagged `SERVICE_AMBIGUOUS_REPLIES`.
    port_maps_written: PortMaps,
    redirect_devs: DevMapHash<MapData>,
    counters: PerCpuArray<MapData, u64>,
    backend_stats: PerCpuArray<MapData, BackendStats>,
    conntrack: HashMap<MapData, FlowKey, Flow>,
    affinity: HashMap<MapData, AffinityKey, Affinity>,
    /// `MAGLEV` again, untyped, for batched table writes.
    maglev_batch: MapData,
    maglev_capacity: u32,
    /// The sizes CONNTRACK and AFFINITY were created with.
    tables: Tables,
}

/// Key size, value size and capacity of every map, as this build and
/// `[tables]` define them (capacity `None` for `MAGLEV`, sized at creation):
/// a map pinned by another build with another layout must not be reused.
fn expected_layout(name: &str, tables: Tables) -> (usize, usize, Option<u32>) {
    use std::mem::size_of as s;

    use balancer_common::maps::{MAX_FRAGMENTS, MAX_REDIRECT_DEVS, MAX_SERVICES};
    match name {
        maps::SERVICES => (s::<ServiceKey>(), s::<Service>(), Some(MAX_SERVICES)),
        maps::BACKENDS => (s::<u32>(), s::<Backend>(), Some(MAX_BACKENDS)),
        maps::ADMIN => (s::<u32>(), s::<AdminRecord>(), Some(1)),
        maps::BACKEND_NAMES => (s::<u32>(), s::<BackendName>(), Some(MAX_BACKENDS)),
        maps::MAGLEV => (s::<u32>(), s::<u32>(), None),
        // `struct bpf_devmap_val`: ifindex and a program fd.
        maps::REDIRECT_DEVS => (s::<u32>(), 2 * s::<u32>(), Some(MAX_REDIRECT_DEVS)),
        maps::CONNTRACK => (s::<FlowKey>(), s::<Flow>(), Some(tables.flows)),
        maps::AFFINITY => (s::<AffinityKey>(), s::<Affinity>(), Some(tables.affinity)),
        maps::BACKEND_STATS => (s::<u32>(), s::<BackendStats>(), Some(MAX_BACKENDS)),
        maps::COUNTERS => (s::<u32>(), s::<u64>(), Some(COUNTER_SLOTS)),
        maps::FRAGMENTS => (s::<FragmentKey>(), s::<FragmentNat>(), Some(MAX_FRAGMENTS)),
        maps::FRAGMENT_SERVICES => (s::<ServiceKey>(), s::<ServiceKey>(), Some(MAX_SERVICES)),
        // A ring buffer has no keys or values; its size is in bytes.
        maps::AFFINITY_EVENTS => (0, 0, Some(maps::AFFINITY_EVENTS_BYTES)),
        _ => unreachable!("map {name} has no expected layout"),
    }
}

/// Check every map pinned in `pin_dir` against this build's layouts and
/// `tables`, and return the pinned `MAGLEV`'s size (fixed once created) if
/// there is one. A pinned CONNTRACK or AFFINITY of another size than
/// `[tables]` asks is refused rather than kept: running with other sizes
/// than the config's would be a silent surprise, and resizing would drop
/// the live entries, which only `balancer detach` may do.
fn check_pinned_maps(pin_dir: &Path, tables: Tables) -> anyhow::Result<Option<u32>> {
    let mut maglev = None;
    for &name in maps::ALL {
        let path = pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapData::from_pin(&path)
            .and_then(|m| m.info())
            .with_context(|| format!("cannot open the pinned map {}", path.display()))?;
        let (key, value, entries) = expected_layout(name, tables);
        let found = (
            info.key_size() as usize,
            info.value_size() as usize,
            info.max_entries(),
        );
        let table_key = match name {
            maps::CONNTRACK => Some("flows"),
            maps::AFFINITY => Some("affinity"),
            _ => None,
        };
        if let (Some(table_key), Some(wanted)) = (table_key, entries)
            && (found.0, found.1) == (key, value)
            && found.2 != wanted
        {
            bail!(
                "the pinned {name} holds {} entries but [tables] {table_key} = {wanted}: a table keeps the size \
                 it was created with; set {table_key} = {} to keep its entries, or run `balancer detach --pin-dir {}` \
                 (which drops the live flows and affinities) and start again",
                found.2,
                found.2,
                pin_dir.display()
            );
        }
        if (found.0, found.1) != (key, value) || entries.is_some_and(|n| n != found.2) {
            bail!(
                "the pinned map {} has {}-byte keys, {}-byte values and {} entries, this build uses {key}, {value} \
                 and {}: it was made by another version (`balancer detach --pin-dir {}` removes it, and the live flows)",
                path.display(),
                found.0,
                found.1,
                found.2,
                entries.map_or_else(|| "any".to_owned(), |n| n.to_string()),
                pin_dir.display()
            );
        }
        if name == maps::MAGLEV {
            maglev = Some(info.max_entries());
        }
    }
    Ok(maglev)
}

/// `flags` with `SERVICE_AMBIGUOUS_REPLIES` set or cleared.
fn with_ambiguous(flags: u32, on: bool) -> u32 {
    if on {
        flags | SERVICE_AMBIGUOUS_REPLIES
    } else {
        flags & !SERVICE_AMBIGUOUS_REPLIES
    }
}

/// Make a port array hold `wanted` where it holds `written`, writing only
/// the entries that change.
fn write_port_array(
    array: &mut Array<MapData, u32>,
    wanted: &StdHashMap<u16, u32>,
    written: &StdHashMap<u16, u32>,
) -> Result<(), MapError> {
    for (&port, &who) in wanted.iter().filter(|(k, v)| written.get(k) != Some(v)) {
        array.set(u32::from(port), who, 0)?;
    }
    for &port in written.keys().filter(|k| !wanted.contains_key(k)) {
        array.set(u32::from(port), 0, 0)?;
    }
    Ok(())
}

fn take_map<T: TryFrom<aya::maps::Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &str,
) -> anyhow::Result<T> {
    let map = ebpf
        .take_map(name)
        .with_context(|| format!("the kernel object has no map {name}"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

impl DataPlane {
    /// [`Self::load_with_tables`] with the default `[tables]`.
    pub fn load(pin_dir: &Path, maglev_entries: u32, mode: Mode) -> anyhow::Result<Self> {
        Self::load_with_tables(pin_dir, maglev_entries, Tables::default(), mode)
    }

    /// Load the object, reusing every map already pinned in `pin_dir` (so a
    /// restarted daemon sees the same flows and affinities) and pinning the
    /// ones it creates. A new `MAGLEV` gets `maglev_entries`; a pinned one
    /// keeps its size. New CONNTRACK and AFFINITY get `tables`' sizes;
    /// pinned ones must have them. Only `mode`'s program is loaded.
    pub fn load_with_tables(
        pin_dir: &Path,
        maglev_entries: u32,
        tables: Tables,
        mode: Mode,
    ) -> anyhow::Result<Self> {
        let maglev_capacity = check_pinned_maps(pin_dir, tables)?.unwrap_or(maglev_entries);
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .map_max_entries(maps::MAGLEV, maglev_capacity)
            .map_max_entries(maps::CONNTRACK, tables.flows)
            .map_max_entries(maps::AFFINITY, tables.affinity)
            .load(ebpf_object()?)
            .context("loading the kernel object")?;
        match mode {
            Mode::Xdp => {
                let program: &mut Xdp = ebpf
                    .program_mut(maps::PROG_XDP)
                    .context("the kernel object has no XDP program")?
                    .try_into()?;
                program
                    .load()
                    .context("the kernel rejected the XDP program")?;
            }
            Mode::Tc => {
                let program: &mut SchedClassifier = ebpf
                    .program_mut(maps::PROG_TC)
                    .context("the kernel object has no TC program")?
                    .try_into()?;
                program
                    .load()
                    .context("the kernel rejected the TC program")?;
            }
        }
        Ok(Self {
            mode,
            fragment_services: take_map(&mut ebpf, maps::FRAGMENT_SERVICES)?,
            services: take_map(&mut ebpf, maps::SERVICES)?,
            backends: take_map(&mut ebpf, maps::BACKENDS)?,
            admin: take_map(&mut ebpf, maps::ADMIN)?,
            backend_names: take_map(&mut ebpf, maps::BACKEND_NAMES)?,
            maglev: take_map(&mut ebpf, maps::MAGLEV)?,
            vip_ports: take_map(&mut ebpf, maps::VIP_PORTS)?,
            service_slots: take_map(&mut ebpf, maps::SERVICE_SLOTS)?,
            backend_ports: take_map(&mut ebpf, maps::BACKEND_PORTS)?,
            backend_vips: take_map(&mut ebpf, maps::BACKEND_VIPS)?,
            port_maps_written: PortMaps::default(),
            redirect_devs: take_map(&mut ebpf, maps::REDIRECT_DEVS)?,
            counters: take_map(&mut ebpf, maps::COUNTERS)?,
            backend_stats: take_map(&mut ebpf, maps::BACKEND_STATS)?,
            conntrack: take_map(&mut ebpf, maps::CONNTRACK)?,
            affinity: take_map(&mut ebpf, maps::AFFINITY)?,
            maglev_batch: MapData::from_pin(pin_dir.join(maps::MAGLEV))
                .context("opening the pinned MAGLEV")?,
            maglev_capacity,
            tables,
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
        })
    }

    /// The loaded XDP program (tests run it with BPF_PROG_TEST_RUN).
    pub fn xdp(&self) -> &Xdp {
        self.ebpf
            .program(maps::PROG_XDP)
            .and_then(|p| p.try_into().ok())
            .expect("the XDP program is loaded")
    }

    /// The loaded TC program (`mode = "tc"`).
    pub fn tc(&self) -> &SchedClassifier {
        self.ebpf
            .program(maps::PROG_TC)
            .and_then(|p| p.try_into().ok())
            .expect("the TC program is loaded")
    }

    /// A global counter, summed over CPUs.
    pub fn counter(&self, counter: Counter) -> anyhow::Result<u64> {
        debug_assert!((counter as u32) < COUNTER_COUNT);
        Ok(self.counters.get(&(counter as u32), 0)?.iter().sum())
    }

    /// The conntrack entry of a client → VIP flow.
    pub fn flow(&self, key: &FlowKey) -> anyhow::Result<Option<Flow>> {
        match self.conntrack.get(key, 0) {
            Ok(flow) => Ok(Some(flow)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).context("reading CONNTRACK"),
        }
    }

    /// The `PENDING` entry of a client → VIP flow (see
    /// `balancer_common::maps::PENDING`): the daemon never needs one,
    /// tests check what the kernel stored.
    pub fn pending(&self, key: &FlowKey) -> anyhow::Result<Option<Pending>> {
        let map = self.ebpf.map(maps::PENDING).context("no PENDING map")?;
        let pending: HashMap<&MapData, FlowKey, Pending> =
            HashMap::try_from(map).context("opening PENDING")?;
        match pending.get(key, 0) {
            Ok(p) => Ok(Some(p)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).context("reading PENDING"),
        }
    }

    /// Write a table half at `base`: batched, or slot by slot on a kernel
    /// without batch updates.
    fn write_table(&mut self, base: u32, table: &[u32]) -> anyhow::Result<()> {
        let slots: Vec<u32> = (base..base + table.len() as u32).collect();
        if crate::mapscan::update_batch(&self.maglev_batch, &slots, table)
            .context("writing MAGLEV")?
        {
            return Ok(());
        }
        for (&slot, id) in slots.iter().zip(table) {
            self.maglev.set(slot, id, 0).context("writing MAGLEV")?;
        }
        Ok(())
    }

    /// The client's affinity entry, if it has one.
    pub fn affinity(&self, key: &AffinityKey) -> anyhow::Result<Option<Affinity>> {
        match self.affinity.get(key, 0) {
            Ok(a) => Ok(Some(a)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).context("reading AFFINITY"),
        }
    }

    /// The pinned admin record (all zeros until a cluster change is made).
    pub fn admin_record(&self) -> anyhow::Result<AdminRecord> {
        self.admin.get(&0, 0).context("reading ADMIN")
    }

    pub fn write_admin_record(&mut self, record: AdminRecord) -> anyhow::Result<()> {
        self.admin.set(0, record, 0).context("writing ADMIN")
    }

    /// The sizes of CONNTRACK and AFFINITY.
    pub fn tables(&self) -> Tables {
        self.tables
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// What a previous daemon left in the pinned maps: services with their
    /// table regions, and every backend slot in use.
    pub fn read_pinned(&self) -> anyhow::Result<Pinned> {
        let mut services = Vec::new();
        for key in self.services.keys() {
            let key = key.context("reading SERVICES")?;
            let value = match self.services.get(&key, 0) {
                Ok(v) => v,
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(e).context("reading SERVICES"),
            };
            services.push(PinnedService {
                key,
                value,
                table_size: value.table_offset[1].wrapping_sub(value.table_offset[0]),
            });
        }
        let mut backends = Vec::new();
        let mut names = std::collections::HashMap::new();
        for id in 0..MAX_BACKENDS {
            let b = self.backends.get(&id, 0).context("reading BACKENDS")?;
            if b.in_use() {
                backends.push((id, b));
                let name = self
                    .backend_names
                    .get(&id, 0)
                    .context("reading BACKEND_NAMES")?;
                if !name.as_bytes().is_empty() {
                    names.insert(id, String::from_utf8_lossy(name.as_bytes()).into_owned());
                }
            }
        }
        Ok(Pinned {
            services,
            backends,
            names,
            maglev_capacity: self.maglev_capacity,
        })
    }

    /// Stop balancing a VIP that left the config.
    pub fn remove_service(&mut self, key: &ServiceKey) -> anyhow::Result<()> {
        match self.services.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e).context("removing from SERVICES"),
        }
    }

    /// Free a backend slot: flows and affinities that name it find no
    /// backend there and choose again on their next packet.
    pub fn clear_backend(&mut self, id: u32) -> anyhow::Result<()> {
        self.backends
            .set(id, Backend::default(), 0)
            .context("clearing a BACKENDS slot")?;
        self.write_backend_name(id, None)
    }

    /// Pin backend `id`'s runtime name (`None`: it has none), for a
    /// restarted daemon to find with the backend.
    pub fn write_backend_name(&mut self, id: u32, name: Option<&str>) -> anyhow::Result<()> {
        let entry = match name {
            Some(name) => BackendName::new(name)
                .with_context(|| format!("backend name {name:?} is too long"))?,
            None => BackendName::default(),
        };
        self.backend_names
            .set(id, entry, 0)
            .context("writing BACKEND_NAMES")
    }

    /// Zero a backend id's counters before a new backend takes the id.
    pub fn reset_backend_stats(&mut self, id: u32) -> anyhow::Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
        let zeros = PerCpuValues::try_from(vec![BackendStats::default(); cpus])?;
        self.backend_stats
            .set(id, zeros, 0)
            .context("zeroing BACKEND_STATS")
    }

    /// A backend's counters, summed over CPUs.
    pub fn backend_stats(&self, backend_id: u32) -> anyhow::Result<BackendStats> {
        Ok(BackendStats::sum(
            self.backend_stats.get(&backend_id, 0)?.iter(),
        ))
    }

    /// Attach to each interface (see [`attach`]); a previous daemon's
    /// attachment is taken over without a gap.
    pub fn attach(&mut self, interfaces: &[Interface]) -> anyhow::Result<()> {
        for iface in interfaces {
            self.redirect_devs
                .insert(iface.ifindex, iface.ifindex, None, 0)
                .with_context(|| {
                    format!(
                        "{}: cannot add {} to the redirect map",
                        iface.field, iface.name
                    )
                })?;
            match self.mode {
                Mode::Xdp => {
                    let program: &mut Xdp = self
                        .ebpf
                        .program_mut(maps::PROG_XDP)
                        .context("no XDP program")?
                        .try_into()?;
                    attach::xdp(program, &self.pin_dir, iface)?;
                }
                Mode::Tc => {
                    let program: &mut SchedClassifier = self
                        .ebpf
                        .program_mut(maps::PROG_TC)
                        .context("no TC program")?
                        .try_into()?;
                    attach::tc(program, &self.pin_dir, iface)?;
                }
            }
        }
        Ok(())
    }

    /// Point each VIP address (and protocol) that has exactly one
    /// `source-ip` service at it, so later fragments arriving before their
    /// first can be placed by client address alone; remove the rest.
    pub fn write_fragment_services(&mut self, services: &[ServiceState]) -> anyhow::Result<()> {
        let mut by_address: StdHashMap<ServiceKey, Vec<ServiceKey>> = Default::default();
        for s in services.iter().filter(|s| {
            s.config.affinity == AffinityMode::SourceIp && !s.config.terminates_in_daemon()
        }) {
            let key = s.key();
            by_address
                .entry(ServiceKey { port: 0, ..key })
                .or_default()
                .push(key);
        }
        let stale: Vec<ServiceKey> = self
            .fragment_services
            .keys()
            .collect::<Result<_, _>>()
            .context("reading FRAGMENT_SERVICES")?;
        for key in stale {
            if by_address.get(&key).is_none_or(|v| v.len() != 1) {
                self.fragment_services
                    .remove(&key)
                    .context("removing from FRAGMENT_SERVICES")?;
            }
        }
        for (address, keys) in by_address.iter().filter(|(_, v)| v.len() == 1) {
            self.fragment_services
                .insert(address, keys[0], 0)
                .context("writing FRAGMENT_SERVICES")?;
        }
        Ok(())
    }

    /// Make VIP_PORTS say how packets of `services` find their service, and
    /// BACKEND_PORTS and BACKEND_VIPS how their replies find their VIP
    /// ([`PortMaps`]): entries that changed are written, entries no service
    /// needs any more cleared. A reply of a backend not yet written here
    /// passes to the kernel unrewritten, so this runs before a new backend
    /// is written into its service. Both port arrays name SERVICE_SLOTS
    /// entries, which `write_service` writes: at start both run before the
    /// program is attached, and a service's id and VIP do not change after.
    /// Services whose replies become ambiguous (see [`PortMaps::ambiguous`])
    /// are flagged before the VIP lists say so, so that their client
    /// packets record `PENDING` by the time a reply looks; the flag is
    /// cleared after. `Err` before any write when a backend would serve too
    /// many services.
    pub fn write_port_maps<'a>(
        &mut self,
        services: impl IntoIterator<Item = &'a ServiceState>,
    ) -> anyhow::Result<()> {
        let services: Vec<&ServiceState> = services.into_iter().collect();
        let wanted = PortMaps::of(services.iter().copied())?;
        let flag_changes: Vec<(&ServiceState, bool)> = services
            .iter()
            .map(|s| (*s, wanted.ambiguous.contains(&s.id)))
            .filter(|(s, on)| self.port_maps_written.ambiguous.contains(&s.id) != *on)
            .collect();
        for &(s, _) in flag_changes.iter().filter(|(_, on)| *on) {
            self.set_ambiguous(s, true)?;
        }
        let written = &self.port_maps_written;
        // The VIP lists first: a port marked shared must find them.
        for (key, vips) in wanted
            .backend_vips
            .iter()
            .filter(|(k, v)| written.backend_vips.get(k) != Some(v))
        {
            self.backend_vips
                .insert(key, vips, 0)
                .context("writing BACKEND_VIPS")?;
        }
        write_port_array(
            &mut self.backend_ports,
            &wanted.backend_ports,
            &written.backend_ports,
        )
        .context("writing BACKEND_PORTS")?;
        write_port_array(&mut self.vip_ports, &wanted.vip_ports, &written.vip_ports)
            .context("writing VIP_PORTS")?;
        for key in written
            .backend_vips
            .keys()
            .filter(|k| !wanted.backend_vips.contains_key(k))
        {
            match self.backend_vips.remove(key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(e).context("removing from BACKEND_VIPS"),
            }
        }
        for &(s, _) in flag_changes.iter().filter(|(_, on)| !*on) {
            self.set_ambiguous(s, false)?;
        }
        self.port_maps_written = wanted;
        Ok(())
    }

    /// Set or clear `SERVICE_AMBIGUOUS_REPLIES` in a service's SERVICES
    /// and SERVICE_SLOTS values, if it has them yet (`write_service` sets
    /// the flag in a new one).
    fn set_ambiguous(&mut self, service: &ServiceState, on: bool) -> anyhow::Result<()> {
        let key = service.key();
        let mut value = match self.services.get(&key, 0) {
            Ok(value) => value,
            Err(MapError::KeyNotFound) => return Ok(()),
            Err(e) => return Err(e).context("reading SERVICES"),
        };
        value.flags = with_ambiguous(value.flags, on);
        self.write_service_value(service.id, key, value)
    }

    /// A service's SERVICES value, then its SERVICE_SLOTS copy (the array
    /// packets read when the service has its port alone). The slot is
    /// written in place, not swapped like a hash entry: a packet reading it
    /// during the write may see the old and new value mixed. Only
    /// `active_table` (one word) or the ambiguous flag changes in a rewrite,
    /// besides `table_size` when the service gains or loses its last
    /// backend; a mixed value reads a slot whose backend `backend_if_up`
    /// still checks belongs to this service, so at worst a new flow in that
    /// instant goes to another of its backends, or is dropped.
    fn write_service_value(
        &mut self,
        id: u32,
        key: ServiceKey,
        value: Service,
    ) -> anyhow::Result<()> {
        self.services
            .insert(key, value, 0)
            .context("writing SERVICES")?;
        let slot = ServiceSlot {
            vip: key,
            _pad: 0,
            service: value,
        };
        self.service_slots
            .set(id, slot, 0)
            .context("writing SERVICE_SLOTS")
    }

    /// Write one service: backends that are up, then its new Maglev table
    /// into the half packets are not reading, then flip the service to that
    /// half (one map update), then backends that went down. No packet sees a
    /// half-written table.
    pub fn write_service(&mut self, service: &mut ServiceState) -> anyhow::Result<()> {
        let key = service.key();
        let active = match self.services.get(&key, 0) {
            Ok(current) => current.active_table & 1,
            Err(MapError::KeyNotFound) => 1,
            Err(e) => return Err(e).context("reading SERVICES"),
        };
        let next = active ^ 1;
        for b in service.backends.iter().filter(|b| b.up) {
            self.backends
                .set(b.id, b.map_value(service.id), 0)
                .context("writing BACKENDS")?;
        }
        let table = service.next_table();
        let base = service.table_base + next * service.config.table_size;
        self.write_table(base, &table)?;
        let mut value = service.map_value(next, !table.is_empty());
        value.flags = with_ambiguous(
            value.flags,
            self.port_maps_written.ambiguous.contains(&service.id),
        );
        self.write_service_value(service.id, key, value)?;
        for b in service.backends.iter().filter(|b| !b.up) {
            self.backends
                .set(b.id, b.map_value(service.id), 0)
                .context("writing BACKENDS")?;
        }
        service.table = table;
        Ok(())
    }
}
