//! The loaded kernel object: loading it against the pinned maps, attaching
//! (or adopting) the XDP links, and writing the maps the program reads.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMapHash, HashMap, MapData, MapError, PerCpuArray},
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use balancer_common::{
    counters::{COUNTER_COUNT, Counter},
    maps,
    types::{Backend, BackendStats, Flow, FlowKey, Service, ServiceKey},
};
use tracing::{info, warn};

use crate::{object::ebpf_object, pin, state::ServiceState};

/// An interface to attach to: the config field it came from, its name and
/// index.
pub struct Interface {
    pub field: &'static str,
    pub name: String,
    pub ifindex: u32,
}

pub struct DataPlane {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    services: HashMap<MapData, ServiceKey, Service>,
    backends: Array<MapData, Backend>,
    maglev: Array<MapData, u32>,
    redirect_devs: DevMapHash<MapData>,
    counters: PerCpuArray<MapData, u64>,
    backend_stats: PerCpuArray<MapData, BackendStats>,
    conntrack: HashMap<MapData, FlowKey, Flow>,
}

fn take_map<T: TryFrom<aya::maps::Map, Error = MapError>>(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<T> {
    let map = ebpf.take_map(name).with_context(|| format!("the kernel object has no map {name}"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

impl DataPlane {
    /// Load the object, reusing every map already pinned in `pin_dir` (so a
    /// restarted daemon sees the same flows and affinities) and pinning the
    /// ones it creates.
    pub fn load(pin_dir: &Path, maglev_entries: u32) -> anyhow::Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .map_max_entries(maps::MAGLEV, maglev_entries)
            .load(ebpf_object()?)
            .context("loading the kernel object")?;
        let program: &mut Xdp = ebpf
            .program_mut(maps::PROG_XDP)
            .context("the kernel object has no XDP program")?
            .try_into()?;
        program.load().context("the kernel rejected the XDP program")?;
        Ok(Self {
            services: take_map(&mut ebpf, maps::SERVICES)?,
            backends: take_map(&mut ebpf, maps::BACKENDS)?,
            maglev: take_map(&mut ebpf, maps::MAGLEV)?,
            redirect_devs: take_map(&mut ebpf, maps::REDIRECT_DEVS)?,
            counters: take_map(&mut ebpf, maps::COUNTERS)?,
            backend_stats: take_map(&mut ebpf, maps::BACKEND_STATS)?,
            conntrack: take_map(&mut ebpf, maps::CONNTRACK)?,
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
        })
    }

    fn program(&mut self) -> anyhow::Result<&mut Xdp> {
        Ok(self.ebpf.program_mut(maps::PROG_XDP).context("no XDP program")?.try_into()?)
    }

    /// The loaded XDP program (tests run it with BPF_PROG_TEST_RUN).
    pub fn xdp(&self) -> &Xdp {
        self.ebpf
            .program(maps::PROG_XDP)
            .and_then(|p| p.try_into().ok())
            .expect("the XDP program is loaded")
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

    /// A backend's counters, summed over CPUs.
    pub fn backend_stats(&self, backend_id: u32) -> anyhow::Result<BackendStats> {
        Ok(BackendStats::sum(self.backend_stats.get(&backend_id, 0)?.iter()))
    }

    /// Attach to each interface through a pinned bpf_link. Where a link is
    /// already pinned (a previous daemon's), swap our program into it
    /// atomically: traffic never sees the interface without a program.
    pub fn attach(&mut self, interfaces: &[Interface]) -> anyhow::Result<()> {
        for iface in interfaces {
            self.redirect_devs
                .insert(iface.ifindex, iface.ifindex, None, 0)
                .with_context(|| format!("{}: cannot add {} to the redirect map", iface.field, iface.name))?;
            let pin_path = pin::xdp_link(&self.pin_dir, &iface.name);
            let program = self.program()?;
            let link_id = if pin_path.exists() {
                let old = PinnedLink::from_pin(&pin_path)
                    .with_context(|| format!("cannot open pinned link {}", pin_path.display()))?
                    .unpin()?;
                let link = XdpLink::try_from(old).context("the pinned link is not an XDP link")?;
                info!(interface = %iface.name, "adopting the pinned XDP link");
                program.attach_to_link(link).context("cannot replace the program in the pinned link")?
            } else {
                match program.attach_to_if_index(iface.ifindex, XdpMode::Driver) {
                    Ok(id) => id,
                    Err(e) => {
                        warn!(interface = %iface.name, "native XDP failed ({e}); using generic (skb) XDP");
                        program.attach_to_if_index(iface.ifindex, XdpMode::Skb).with_context(|| {
                            format!("{}: cannot attach XDP to {}", iface.field, iface.name)
                        })?
                    }
                }
            };
            let link = program.take_link(link_id)?;
            let Ok(fd_link) = FdLink::try_from(link) else {
                bail!("{}: the kernel attached XDP to {} without a bpf_link (kernel too old to pin it)", iface.field, iface.name);
            };
            fd_link.pin(&pin_path).with_context(|| format!("cannot pin {}", pin_path.display()))?;
        }
        Ok(())
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
            self.backends.set(b.id, b.map_value(service.id), 0).context("writing BACKENDS")?;
        }
        let table = service.next_table();
        let base = service.table_base + next * service.config.table_size;
        for (slot, id) in table.iter().enumerate() {
            self.maglev.set(base + slot as u32, id, 0).context("writing MAGLEV")?;
        }
        self.services
            .insert(key, service.map_value(next, !table.is_empty()), 0)
            .context("writing SERVICES")?;
        for b in service.backends.iter().filter(|b| !b.up) {
            self.backends.set(b.id, b.map_value(service.id), 0).context("writing BACKENDS")?;
        }
        service.table = table;
        Ok(())
    }
}
