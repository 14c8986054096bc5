//! Affinity replicated between two gateways (`[cluster]`, issue 17): what
//! one peer link carries, and what a new client costs the data plane.
//!
//! Gateway A is the testbed's gateway; gateway B is a namespace of its own
//! (a veth pair named like A's interfaces, so its daemon attaches as A's
//! does, and nothing behind it), linked to A by a veth. Both daemons run
//! the bench's services with `[cluster]` naming each other. New affinity
//! entries on A come from real confirmations through A's data plane: each
//! never-seen client's flow confirmed by the backend its Maglev slot names
//! (the per-packet part's "confirmation, new client" frames, for every
//! backend). The kernel reports each to A's daemon, which streams it to B;
//! B inserts it. Between steps both gateways' tables are emptied, so every
//! step's clients are new again.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, MapData};
use balancer_common::{
    addr::to_words,
    counters::Counter,
    maps::{AFFINITY, CONNTRACK},
    types::{Affinity, AffinityKey, Flow, FlowKey},
};
use balancer_tests::{
    NetNs,
    daemon::cli_ok,
    netns::random_suffix,
    topology::{GW_BACKEND_IF, GW_CLIENT_IF},
};
use balancer_user::{accounting::monotonic_ns, cluster::stats::ClusterStatus};

use crate::{
    bpf::Hook,
    gateways::{Balancer, kernel_services},
    perpacket::{Sample, timed_phase},
    pinned::{self, Counters},
    progs,
    testbed::Testbed,
    traffic::{Kind, PhaseLimits, Traffic},
};

const CLUSTER_PORT: u16 = 7946;
/// The veth between the two gateways, at each end.
const LINK_IF: &str = "cl";
/// Clients whose replication lag is sampled per step (the last client of
/// the step among them).
pub const LAG_SAMPLES: usize = 20;

#[derive(Clone, Debug)]
pub struct Options {
    /// Offered rates of new clients per second, one step each (None: as
    /// fast as the sender goes).
    pub rates: Vec<Option<u64>>,
    /// Rounds of the per-new-client cost comparison.
    pub cost_rounds: usize,
    /// Confirmations per cost phase.
    pub cost_frames: u64,
}

/// One step of the throughput run.
#[derive(Clone, Debug, Default)]
pub struct Step {
    pub offered: Option<u64>,
    /// Confirmations sent, and the entries A's kernel stored from them.
    pub sent: u64,
    pub stored_a: u64,
    /// Reports A's kernel lost (`affinity_report_failed`).
    pub lost_a: u64,
    pub sent_by_a: u64,
    pub received_b: u64,
    pub inserted_b: u64,
    /// From the first confirmation to the last one sent.
    pub send_secs: f64,
    /// From the first confirmation to the last client's entry on B.
    pub drain_secs: f64,
    /// Replication lag (A's kernel storing the entry → B's map having it)
    /// of the sampled clients, in send order, ms; None: never seen on B.
    pub lags_ms: Vec<Option<f64>>,
    /// Bytes both ways on the link's veth.
    pub wire_bytes: u64,
    /// CPU (user + system) of each daemon over the step, ms.
    pub cpu_a_ms: f64,
    pub cpu_b_ms: f64,
}

impl Step {
    /// Entries per second B received: what the link carried.
    pub fn received_per_sec(&self) -> f64 {
        self.received_b as f64 / self.drain_secs.max(1e-9)
    }
}

/// The per-packet cost of a new client's confirmation, by who reads the
/// kernel's reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reader {
    /// No `[cluster]`: the daemon reads the reports and drops them.
    Discarding,
    /// `[cluster]` with one peer: the daemon streams them to B.
    Streaming,
    /// The daemon stopped (SIGSTOP): nobody reads, the ring fills.
    Nobody,
}

impl Reader {
    pub const ALL: [Reader; 3] = [Reader::Discarding, Reader::Streaming, Reader::Nobody];

    pub fn label(self) -> &'static str {
        match self {
            Reader::Discarding => "no `[cluster]` (the daemon drains the reports and drops them)",
            Reader::Streaming => "`[cluster]`, one peer (the daemon streams the reports to it)",
            Reader::Nobody => "daemon stopped (SIGSTOP): nobody reads the reports",
        }
    }
}

#[derive(Debug, Default)]
pub struct Results {
    pub steps: Vec<Step>,
    pub cost: BTreeMap<Reader, Vec<Sample>>,
    /// Reports lost during the cost phases, by reader.
    pub cost_lost: BTreeMap<Reader, u64>,
}

pub fn run(bed: &Testbed, opts: &Options) -> Result<Results> {
    let mut results = Results::default();
    let mut traffic = Traffic::new(bed)?;
    let peer = PeerNet::new(bed)?;
    let b = peer.start_b(bed)?;
    {
        let _stats = progs::enable_run_stats()?;
        for round in 0..opts.cost_rounds {
            eprintln!(
                "  cost of a new client, round {}/{}",
                round + 1,
                opts.cost_rounds
            );
            for reader in Reader::ALL {
                let a = match reader {
                    Reader::Discarding => Balancer::start(bed, Hook::Xdp)?,
                    Reader::Streaming | Reader::Nobody => peer.start_a(bed)?,
                };
                if reader != Reader::Discarding {
                    wait_linked(&peer.ns, &b, bed, &a)?;
                }
                traffic.prepare(&a.pin_dir())?;
                let ids = progs::ids_on(bed.topo.gw(), &[GW_CLIENT_IF, GW_BACKEND_IF], Hook::Xdp)?;
                let limits = PhaseLimits {
                    time: Duration::from_secs(5),
                    frames: opts.cost_frames,
                    per_second: None,
                };
                let before = Counters::read(&a.pin_dir())?;
                if reader == Reader::Nobody {
                    signal(a.pid(), libc::SIGSTOP);
                }
                let sample =
                    timed_phase(&mut traffic, Kind::ConfirmNewClient, &ids, Some(&a), limits);
                if reader == Reader::Nobody {
                    signal(a.pid(), libc::SIGCONT);
                }
                let lost = Counters::read(&a.pin_dir())?
                    .since(&before)
                    .get(Counter::AffinityReportFailed);
                results.cost.entry(reader).or_default().push(sample?);
                *results.cost_lost.entry(reader).or_default() += lost;
            }
        }
    }

    eprintln!("  peer link throughput");
    let a = peer.start_a(bed)?;
    wait_linked(&peer.ns, &b, bed, &a)?;
    let by_backend = Traffic::new_clients_by_backend(&a.pin_dir())?;
    let ids = ServiceIds::learn(&traffic, &by_backend, &a, &b)?;
    for &rate in &opts.rates {
        clear(&a.pin_dir(), true)?;
        clear(&b.pin_dir(), false)?;
        let step = step(&traffic, &by_backend, rate, &ids, &a, &b, &peer.ns, bed)?;
        eprintln!(
            "    {}: {} sent, {} received by B in {:.2} s ({:.0}/s)",
            rate.map_or("unpaced".into(), |r| format!("{r}/s")),
            step.sent,
            step.received_b,
            step.drain_secs,
            step.received_per_sec()
        );
        results.steps.push(step);
    }
    Ok(results)
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory preconditions; the pid is our child's.
    unsafe { libc::kill(pid as i32, sig) };
}

/// Gateway B's namespace, the link to A, and the shared key.
struct PeerNet {
    ns: NetNs,
    key: std::path::PathBuf,
}

fn link_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 2, 10 + n)
}

impl PeerNet {
    fn new(bed: &Testbed) -> Result<PeerNet> {
        let ns = NetNs::new("peer");
        // Interfaces named as A's, so B's daemon attaches as A's does.
        ns.ip_batch(&[
            format!("link add {GW_CLIENT_IF} type veth peer name {GW_BACKEND_IF}"),
            format!("link set {GW_CLIENT_IF} up"),
            format!("link set {GW_BACKEND_IF} up"),
        ]);
        let gw = bed.topo.gw();
        gw.ip(format!(
            "link add {LINK_IF} type veth peer name {LINK_IF} netns {}",
            ns.name()
        )
        .split(' '));
        // Both ends up before either has carrier.
        for (n, side) in [(1, gw), (2, &ns)] {
            side.ip_batch(&[
                format!("addr add {}/24 dev {LINK_IF}", link_ip(n)),
                format!("link set {LINK_IF} up"),
            ]);
        }
        gw.wait_ready(LINK_IF);
        ns.wait_ready(LINK_IF);
        let key = bed.dir.path(&format!("cluster-key-{}", random_suffix()));
        std::fs::write(
            &key,
            "the bench's shared key for its two gateways, 56 bytes..",
        )?;
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        Ok(PeerNet { ns, key })
    }

    fn tables(&self, bed: &Testbed, me: u8) -> String {
        let other = 3 - me;
        format!(
            "[cluster]\npeers = [\"{}:{CLUSTER_PORT}\"]\nlisten = \"{}:{CLUSTER_PORT}\"\nsecret_file = \"{}\"\n{}",
            link_ip(other),
            link_ip(me),
            self.key.display(),
            kernel_services(&bed.backend_http())
        )
    }

    fn start_a(&self, bed: &Testbed) -> Result<Balancer> {
        Balancer::start_in(bed.topo.gw(), Hook::Xdp, &self.tables(bed, 1))
    }

    fn start_b(&self, bed: &Testbed) -> Result<Balancer> {
        Balancer::start_in(&self.ns, Hook::Xdp, &self.tables(bed, 2))
    }
}

fn status(ns: &NetNs, b: &Balancer) -> Result<ClusterStatus> {
    serde_json::from_str(&cli_ok(
        ns,
        &b.control_socket(),
        &["cluster", "status", "--json"],
    ))
    .context("balancer cluster status --json")
}

/// Until both daemons have their link up.
fn wait_linked(b_ns: &NetNs, b: &Balancer, bed: &Testbed, a: &Balancer) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let up = |s: ClusterStatus| s.peers.first().is_some_and(|p| p.connected);
        if up(status(bed.topo.gw(), a)?) && up(status(b_ns, b)?) {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the gateways' cluster link did not come up in 15 s"
        );
        crate::stop::sleep(Duration::from_millis(100))?;
    }
}

/// The services' ids in each gateway's AFFINITY keys (each daemon numbers
/// its own), learnt from one replicated entry.
struct ServiceIds {
    a: u32,
    b: u32,
}

impl ServiceIds {
    fn learn(
        traffic: &Traffic,
        by_backend: &BTreeMap<Ipv4Addr, Vec<Ipv4Addr>>,
        a: &Balancer,
        b: &Balancer,
    ) -> Result<ServiceIds> {
        let (&backend, clients) = by_backend.iter().next().context("no new client")?;
        let limits = PhaseLimits {
            time: Duration::from_secs(1),
            frames: 1,
            per_second: None,
        };
        traffic.confirm_clients(backend, &clients[..1], limits)?;
        let only = |pin_dir: &Path| -> Result<Option<u32>> {
            let map: HashMap<MapData, AffinityKey, Affinity> = pinned::typed(pin_dir, AFFINITY)?;
            Ok(map.keys().next().transpose()?.map(|k| k.service_id))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let (Some(ia), Some(ib)) = (only(&a.pin_dir())?, only(&b.pin_dir())?) {
                return Ok(ServiceIds { a: ia, b: ib });
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "a new client's entry on A did not reach B within 5 s"
            );
            crate::stop::sleep(Duration::from_millis(20))?;
        }
    }
}

fn key(service_id: u32, client: Ipv4Addr) -> AffinityKey {
    let (client, family) = to_words(client.into());
    AffinityKey {
        service_id,
        family,
        _pad: [0; 3],
        client,
    }
}

/// Empty a gateway's AFFINITY (and CONNTRACK), so the next step's clients
/// are new again.
fn clear(pin_dir: &Path, conntrack: bool) -> Result<()> {
    let mut map: HashMap<MapData, AffinityKey, Affinity> = pinned::typed(pin_dir, AFFINITY)?;
    let keys: Vec<AffinityKey> = map.keys().collect::<Result<_, _>>()?;
    for k in keys {
        map.remove(&k)?;
    }
    if conntrack {
        let mut map: HashMap<MapData, FlowKey, Flow> = pinned::typed(pin_dir, CONNTRACK)?;
        let keys: Vec<FlowKey> = map.keys().collect::<Result<_, _>>()?;
        for k in keys {
            map.remove(&k)?;
        }
    }
    Ok(())
}

/// utime + stime of a process, ms.
fn cpu_ms(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // After the command's closing parenthesis: state is field 3, utime 14.
    let rest = stat.rsplit_once(')').context("/proc/PID/stat")?.1;
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    anyhow::ensure!(fields.len() == 2, "/proc/{pid}/stat: {stat}");
    // SAFETY: sysconf has no preconditions.
    let hz = (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as f64;
    Ok((fields[0] + fields[1]) as f64 * 1000.0 / hz)
}

/// Bytes received and sent on the link's veth in `ns`.
fn link_bytes(ns: &NetNs) -> Result<u64> {
    let mut total = 0;
    for dir in ["rx_bytes", "tx_bytes"] {
        let out = ns.exec(
            "cat",
            [format!("/sys/class/net/{LINK_IF}/statistics/{dir}")],
        );
        total += String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u64>()
            .with_context(|| format!("{LINK_IF} {dir}"))?;
    }
    Ok(total)
}

/// Every new client once at `rate`, backend after backend; then wait until
/// B has them all (or stops receiving).
#[allow(clippy::too_many_arguments)]
fn step(
    traffic: &Traffic,
    by_backend: &BTreeMap<Ipv4Addr, Vec<Ipv4Addr>>,
    rate: Option<u64>,
    ids: &ServiceIds,
    a: &Balancer,
    b: &Balancer,
    b_ns: &NetNs,
    bed: &Testbed,
) -> Result<Step> {
    let order: Vec<Ipv4Addr> = by_backend.values().flatten().copied().collect();
    let every = (order.len() / LAG_SAMPLES).max(1);
    let mut samples: Vec<Ipv4Addr> = order.iter().step_by(every).copied().collect();
    samples.push(*order.last().context("no new client")?);

    let gw = bed.topo.gw();
    let status_a0 = status(gw, a)?.peers[0].clone();
    let status_b0 = status(b_ns, b)?.peers[0].clone();
    let counters0 = Counters::read(&a.pin_dir())?;
    let (cpu_a0, cpu_b0) = (cpu_ms(a.pid())?, cpu_ms(b.pid())?);
    let bytes0 = link_bytes(gw)?;

    // B's map, watched for the sampled clients from another thread while
    // this one sends.
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let done = Arc::clone(&done);
        let keys: Vec<AffinityKey> = samples.iter().map(|&c| key(ids.b, c)).collect();
        let pin_dir = b.pin_dir();
        std::thread::spawn(move || -> Result<Vec<Option<u64>>> {
            let map: HashMap<MapData, AffinityKey, Affinity> = pinned::typed(&pin_dir, AFFINITY)?;
            let mut seen = vec![None; keys.len()];
            let mut quiet_since = None;
            while seen.iter().any(Option::is_none) {
                let now = monotonic_ns();
                let mut new = false;
                for (k, s) in keys.iter().zip(seen.iter_mut()) {
                    if s.is_none() && map.get(k, 0).is_ok() {
                        *s = Some(now);
                        new = true;
                    }
                }
                // Sending is done and nothing new came for 3 s: give up on the rest.
                if done.load(Ordering::Relaxed) {
                    let since = *quiet_since.get_or_insert(now);
                    if new {
                        quiet_since = Some(now);
                    } else if now - since > 3_000_000_000 {
                        break;
                    }
                }
                std::thread::sleep(Duration::from_micros(500));
            }
            Ok(seen)
        })
    };

    let started = monotonic_ns();
    let mut sent = 0;
    for (&backend, clients) in by_backend {
        let limits = PhaseLimits {
            time: Duration::from_secs(60),
            frames: clients.len() as u64,
            per_second: rate,
        };
        sent += traffic.confirm_clients(backend, clients, limits)?;
    }
    let send_end = monotonic_ns();
    done.store(true, Ordering::Relaxed);
    let seen = watcher
        .join()
        .map_err(|_| anyhow::anyhow!("the watcher panicked"))??;
    // The counters settle: B may still count the last batch.
    crate::stop::sleep(Duration::from_millis(100))?;

    let a_map: HashMap<MapData, AffinityKey, Affinity> = pinned::typed(&a.pin_dir(), AFFINITY)?;
    let lags_ms = samples
        .iter()
        .zip(&seen)
        .map(|(&c, s)| {
            let stored = a_map.get(&key(ids.a, c), 0).ok()?.last_seen_ns;
            s.map(|s| s.saturating_sub(stored) as f64 / 1e6)
        })
        .collect();
    let last_seen = seen.last().copied().flatten();
    let status_a = status(gw, a)?.peers[0].clone();
    let status_b = status(b_ns, b)?.peers[0].clone();
    let counted = Counters::read(&a.pin_dir())?.since(&counters0);
    Ok(Step {
        offered: rate,
        sent,
        stored_a: counted.get(Counter::FlowConfirmed).min(counted.connections),
        lost_a: counted.get(Counter::AffinityReportFailed),
        sent_by_a: status_a.entries_sent - status_a0.entries_sent,
        received_b: status_b.entries_received - status_b0.entries_received,
        inserted_b: status_b.entries_inserted - status_b0.entries_inserted,
        send_secs: (send_end - started) as f64 / 1e9,
        drain_secs: last_seen.map_or(f64::NAN, |t| (t - started) as f64 / 1e9),
        lags_ms,
        wire_bytes: link_bytes(gw)? - bytes0,
        cpu_a_ms: cpu_ms(a.pid())? - cpu_a0,
        cpu_b_ms: cpu_ms(b.pid())? - cpu_b0,
    })
}
