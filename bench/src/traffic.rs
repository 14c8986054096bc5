//! The per-packet phases' traffic: crafted TCP frames through the real
//! topology, one kind at a time, so the program's run statistics over a
//! phase are the cost of one path.
//!
//! Every frame uses port [`SINK_PORT`], which the backends and the client
//! namespace drop on arrival: nothing answers, so no other kind of packet
//! crosses the gateway during a phase.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result};
use balancer_tests::{
    packet::{Frame, TCP_ACK, TCP_PSH, TCP_SYN},
    rawsend::{BlastLimits, RawSender, mac_of},
    topology::{BACKEND_IF, CLIENT_IF, GW_BACKEND_IF, GW_CLIENT_IF, VIP_V4},
};

use crate::{
    pinned,
    testbed::{CONFIRM_CLIENTS, SINK_PORT, Testbed},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Client → VIP on a confirmed flow: the conntrack hit.
    Established,
    /// A SYN (new port) from a client with an affinity entry: affinity
    /// hit, read only; nothing written.
    NewFlow,
    /// A SYN from a client never seen: affinity miss, Maglev; nothing
    /// written.
    NewClient,
    /// Backend → client, the backend's first ACK of a flow with no entry,
    /// from the backend the client's affinity names: the confirmation,
    /// one CONNTRACK insert (the affinity entry is refreshed in place).
    Confirm,
    /// The same for a client with no affinity entry, from the backend its
    /// Maglev slot names: CONNTRACK and AFFINITY inserts.
    ConfirmNewClient,
    /// Backend → client, a SYN-ACK of a flow with no entry from the
    /// client's backend: translated from config, nothing written.
    StatelessReply,
    /// Backend → client on a confirmed flow: SNAT back to the VIP.
    Reply,
    /// Client → a backend's own address: not for the balancer, passed.
    NonVip,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Established,
        Kind::NewFlow,
        Kind::NewClient,
        Kind::Confirm,
        Kind::ConfirmNewClient,
        Kind::StatelessReply,
        Kind::Reply,
        Kind::NonVip,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Kind::Established => "established flow (conntrack hit)",
            Kind::NewFlow => "SYN, known client (affinity hit, writes nothing)",
            Kind::NewClient => "SYN, new client (Maglev, writes nothing)",
            Kind::Confirm => "confirmation, known client (backend's first ACK: conntrack insert)",
            Kind::ConfirmNewClient => {
                "confirmation, new client (backend's first ACK: conntrack + affinity inserts)"
            }
            Kind::StatelessReply => "reply without entry (backend SYN-ACK, translated from config)",
            Kind::Reply => "reply, backend → client (conntrack hit)",
            Kind::NonVip => "non-VIP traffic (passed)",
        }
    }

    /// The goal for this path, as a multiple of the floor.
    pub fn goal(self) -> Option<f64> {
        match self {
            Kind::Established => Some(4.0),
            Kind::NewFlow | Kind::NewClient => Some(8.0),
            _ => None,
        }
    }
}

/// Client addresses with established flows (and so affinity entries).
const FLOW_CLIENTS: u8 = 16;
/// Source ports of the established flows, per client.
const FLOW_PORTS: std::ops::Range<u16> = 40000..40004;
/// SYN ports: 1024 and up, below the established ones.
const NEW_PORTS: u32 = 38000;
/// Ports of the flows the confirmation phase confirms, per known client:
/// above the established ones, never sent a SYN.
const CONFIRM_PORTS: std::ops::Range<u16> = 41000..65535;
/// Ports of the stateless replies: no frame ever confirms a flow there.
const STATELESS_PORTS: std::ops::Range<u16> = 39500..39564;
/// Never-seen clients: SYNs come from 198.19.0.0/17 (the backends' sinks
/// drop them, nothing routes back), confirmations go to the routed
/// [`CONFIRM_CLIENTS`]; 250 addresses of each /24, this many per daemon.
pub const NEW_CLIENTS: u64 = 128 * 250;

/// The `n`th never-seen client sending SYNs.
fn syn_client(n: u64) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, (n / 250) as u8, 1 + (n % 250) as u8)
}

/// The `n`th never-seen client whose flow its backend confirms.
fn confirm_client(n: u64) -> Ipv4Addr {
    let [a, b, c, _] = CONFIRM_CLIENTS.0.octets();
    Ipv4Addr::new(a, b, c + (n / 250) as u8, 1 + (n % 250) as u8)
}

/// How long a phase sends, how many frames at most, and at what rate at
/// most (None: as fast as one core goes).
#[derive(Clone, Copy, Debug)]
pub struct PhaseLimits {
    pub time: Duration,
    pub frames: u64,
    pub per_second: Option<u64>,
}

impl PhaseLimits {
    /// The sender's limits: these, and no more than `room` frames; stopped
    /// early by Ctrl-C.
    fn blast(self, room: u64) -> BlastLimits {
        BlastLimits {
            frames: self.frames.min(room),
            time: self.time,
            per_second: self.per_second,
        }
    }
}

/// Which backend answers the backend-side phases, and for whom.
#[derive(Clone, Debug)]
struct ReplyPlan {
    /// The backend with the most established flows.
    backend: Ipv4Addr,
    /// Its established flows.
    flows: Vec<(Ipv4Addr, u16)>,
    /// Known clients whose affinity names it.
    clients: Vec<Ipv4Addr>,
    /// Never-seen clients ([`CONFIRM_CLIENTS`]) whose Maglev slot names it.
    new_clients: Vec<Ipv4Addr>,
}

pub struct Traffic {
    client_tx: RawSender,
    client_mac: [u8; 6],
    gwc_mac: [u8; 6],
    gwb_mac: [u8; 6],
    backend_tx: BTreeMap<Ipv4Addr, (RawSender, [u8; 6])>,
    /// (client, port) of each established flow.
    flows: Vec<(Ipv4Addr, u16)>,
    reply_plan: Option<ReplyPlan>,
    /// SYNs, confirmations and new clients used up under the current
    /// daemon (a confirmed flow's entries live as long as it does).
    next_flow: u64,
    next_client: u64,
    next_confirm: u64,
    next_confirm_client: u64,
}

impl Traffic {
    pub fn new(bed: &Testbed) -> Result<Traffic> {
        let topo = &bed.topo;
        let mut backend_tx = BTreeMap::new();
        for b in topo.backends() {
            backend_tx.insert(
                b.v4(),
                (
                    RawSender::new(b.ns(), BACKEND_IF)?,
                    mac_of(b.ns(), BACKEND_IF)?,
                ),
            );
        }
        let flows = (1..=FLOW_CLIENTS)
            .flat_map(|c| FLOW_PORTS.map(move |p| (Ipv4Addr::new(198, 18, 0, c), p)))
            .collect();
        Ok(Traffic {
            client_tx: RawSender::new(topo.client(), CLIENT_IF)?,
            client_mac: mac_of(topo.client(), CLIENT_IF)?,
            gwc_mac: mac_of(topo.gw(), GW_CLIENT_IF)?,
            gwb_mac: mac_of(topo.gw(), GW_BACKEND_IF)?,
            backend_tx,
            flows,
            reply_plan: None,
            next_flow: 0,
            next_client: 0,
            next_confirm: 0,
            next_confirm_client: 0,
        })
    }

    fn client_frame(&self, src: Ipv4Addr, sport: u16, dst: Ipv4Addr, flags: u8) -> Vec<u8> {
        let mut f = Frame::tcp(&src.to_string(), sport, &dst.to_string(), SINK_PORT, flags);
        f.src_mac = self.client_mac;
        f.dst_mac = self.gwc_mac;
        f.build()
    }

    /// A frame from `backend`'s sink port to `client:port`, through the
    /// gateway's backend side.
    fn backend_frame(&self, backend: Ipv4Addr, client: Ipv4Addr, port: u16, flags: u8) -> Vec<u8> {
        let mut f = Frame::tcp(
            &backend.to_string(),
            SINK_PORT,
            &client.to_string(),
            port,
            flags,
        );
        f.src_mac = self.backend_tx[&backend].1;
        f.dst_mac = self.gwb_mac;
        f.build()
    }

    /// Under a freshly started daemon: open the established flows, and
    /// learn which backend each got. A flow is stored when its backend
    /// confirms it, so each flow's SYN goes out, then an ACK from every
    /// backend: the one the client's SYN went to confirms it, the others
    /// are passed untouched. Both twice, so the gateway has resolved
    /// every neighbour and the second round takes the fast path.
    pub fn prepare(&mut self, pin_dir: &Path) -> Result<()> {
        self.rewind();
        for _ in 0..2 {
            for &(c, p) in &self.flows {
                self.client_tx
                    .send(&self.client_frame(c, p, VIP_V4, TCP_SYN))?;
            }
            crate::stop::sleep(Duration::from_millis(200))?;
            for (&backend, (tx, _)) in &self.backend_tx {
                for &(c, p) in &self.flows {
                    tx.send(&self.backend_frame(backend, c, p, TCP_ACK))?;
                }
            }
            crate::stop::sleep(Duration::from_millis(200))?;
        }
        let mut by_backend: BTreeMap<Ipv4Addr, Vec<(Ipv4Addr, u16)>> = BTreeMap::new();
        for (key, backend) in pinned::flows(pin_dir)? {
            let client = Ipv4Addr::from(key.src[0].to_ne_bytes());
            let port = u16::from_be(key.sport);
            if self.flows.contains(&(client, port)) {
                by_backend.entry(backend).or_default().push((client, port));
            }
        }
        let stored: usize = by_backend.values().map(Vec::len).sum();
        anyhow::ensure!(
            stored == self.flows.len(),
            "{stored} of {} established flows are in conntrack after their confirmation",
            self.flows.len()
        );
        let (backend, mut flows) = by_backend
            .into_iter()
            .max_by_key(|(_, f)| f.len())
            .context("no established flow in conntrack")?;
        flows.sort();
        let mut clients: Vec<Ipv4Addr> = flows.iter().map(|f| f.0).collect();
        clients.dedup();
        let maglev = pinned::MaglevChoice::new(pin_dir, SocketAddrV4::new(VIP_V4, SINK_PORT))?;
        let mut new_clients = Vec::new();
        for n in 0..NEW_CLIENTS {
            let c = confirm_client(n);
            if maglev.backend_of(c)? == backend {
                new_clients.push(c);
            }
        }
        self.reply_plan = Some(ReplyPlan {
            backend,
            flows,
            clients,
            new_clients,
        });
        Ok(())
    }

    /// Start the per-daemon sequences (SYN ports, new clients,
    /// confirmations) over: for a program that keeps no state of its own.
    pub fn rewind(&mut self) {
        self.next_flow = 0;
        self.next_client = 0;
        self.next_confirm = 0;
        self.next_confirm_client = 0;
    }

    fn plan(&self) -> Result<&ReplyPlan> {
        self.reply_plan.as_ref().context("needs prepare() first")
    }

    /// Send one phase of `kind`; the number of frames sent.
    pub fn send(&mut self, kind: Kind, limits: PhaseLimits) -> Result<u64> {
        let n_flows = self.flows.len() as u64;
        let sent = match kind {
            Kind::Established => {
                let frames: Vec<Vec<u8>> = self
                    .flows
                    .iter()
                    .map(|&(c, p)| self.client_frame(c, p, VIP_V4, TCP_ACK | TCP_PSH))
                    .collect();
                self.client_tx
                    .blast(limits.blast(u64::MAX), crate::stop::requested, |i| {
                        frames[(i % n_flows) as usize].clone()
                    })?
            }
            Kind::NewFlow => {
                let start = self.next_flow;
                let room = u64::from(FLOW_CLIENTS) * u64::from(NEW_PORTS) - start;
                let sent =
                    self.client_tx
                        .blast(limits.blast(room), crate::stop::requested, |i| {
                            let n = start + i;
                            let client =
                                Ipv4Addr::new(198, 18, 0, 1 + (n / u64::from(NEW_PORTS)) as u8);
                            self.client_frame(
                                client,
                                1024 + (n % u64::from(NEW_PORTS)) as u16,
                                VIP_V4,
                                TCP_SYN,
                            )
                        })?;
                self.next_flow += sent;
                sent
            }
            Kind::NewClient => {
                let start = self.next_client;
                let sent = self.client_tx.blast(
                    limits.blast(NEW_CLIENTS - start),
                    crate::stop::requested,
                    |i| self.client_frame(syn_client(start + i), 40000, VIP_V4, TCP_SYN),
                )?;
                self.next_client += sent;
                sent
            }
            Kind::Confirm => {
                let plan = self.plan()?;
                let ports = u64::from(CONFIRM_PORTS.end - CONFIRM_PORTS.start);
                let start = self.next_confirm;
                let room = plan.clients.len() as u64 * ports - start;
                let tx = &self.backend_tx[&plan.backend].0;
                let sent = tx.blast(limits.blast(room), crate::stop::requested, |i| {
                    let n = start + i;
                    let client = plan.clients[(n / ports) as usize];
                    let port = CONFIRM_PORTS.start + (n % ports) as u16;
                    self.backend_frame(plan.backend, client, port, TCP_ACK)
                })?;
                self.next_confirm += sent;
                sent
            }
            Kind::ConfirmNewClient => {
                let plan = self.plan()?;
                let start = self.next_confirm_client;
                let room = plan.new_clients.len() as u64 - start;
                let tx = &self.backend_tx[&plan.backend].0;
                let sent = tx.blast(limits.blast(room), crate::stop::requested, |i| {
                    let client = plan.new_clients[(start + i) as usize];
                    self.backend_frame(plan.backend, client, 40000, TCP_ACK)
                })?;
                self.next_confirm_client += sent;
                sent
            }
            Kind::StatelessReply => {
                let plan = self.plan()?;
                let frames: Vec<Vec<u8>> = plan
                    .clients
                    .iter()
                    .flat_map(|&c| STATELESS_PORTS.map(move |p| (c, p)))
                    .map(|(c, p)| self.backend_frame(plan.backend, c, p, TCP_SYN | TCP_ACK))
                    .collect();
                self.blast_from(plan.backend, &frames, limits)?
            }
            Kind::Reply => {
                let plan = self.plan()?;
                let frames: Vec<Vec<u8>> = plan
                    .flows
                    .iter()
                    .map(|&(c, p)| self.backend_frame(plan.backend, c, p, TCP_ACK | TCP_PSH))
                    .collect();
                self.blast_from(plan.backend, &frames, limits)?
            }
            Kind::NonVip => {
                let backend = self.plan()?.backend;
                let frames: Vec<Vec<u8>> = self
                    .flows
                    .iter()
                    .map(|&(c, p)| self.client_frame(c, p, backend, TCP_ACK | TCP_PSH))
                    .collect();
                self.client_tx
                    .blast(limits.blast(u64::MAX), crate::stop::requested, |i| {
                        frames[(i % n_flows) as usize].clone()
                    })?
            }
        };
        crate::stop::check()?;
        Ok(sent)
    }

    /// `frames` round and round from `backend`, within `limits`.
    fn blast_from(
        &self,
        backend: Ipv4Addr,
        frames: &[Vec<u8>],
        limits: PhaseLimits,
    ) -> Result<u64> {
        let n = frames.len() as u64;
        Ok(self.backend_tx[&backend].0.blast(
            limits.blast(u64::MAX),
            crate::stop::requested,
            |i| frames[(i % n) as usize].clone(),
        )?)
    }

    /// Every never-seen client whose flow can be confirmed
    /// ([`CONFIRM_CLIENTS`]), grouped by the backend its Maglev slot names
    /// under the daemon pinned at `pin_dir`: three times the new clients of
    /// the per-packet phases, which use one backend's share.
    pub fn new_clients_by_backend(pin_dir: &Path) -> Result<BTreeMap<Ipv4Addr, Vec<Ipv4Addr>>> {
        let maglev = pinned::MaglevChoice::new(pin_dir, SocketAddrV4::new(VIP_V4, SINK_PORT))?;
        let mut out: BTreeMap<Ipv4Addr, Vec<Ipv4Addr>> = BTreeMap::new();
        for n in 0..NEW_CLIENTS {
            let c = confirm_client(n);
            out.entry(maglev.backend_of(c)?).or_default().push(c);
        }
        Ok(out)
    }

    /// `backend`'s first ACK of a flow from each of `clients` (which must
    /// be the clients its Maglev slot names), within `limits`: each a new
    /// client's confirmation while the client has no entry. The number sent.
    pub fn confirm_clients(
        &self,
        backend: Ipv4Addr,
        clients: &[Ipv4Addr],
        limits: PhaseLimits,
    ) -> Result<u64> {
        let (tx, _) = self
            .backend_tx
            .get(&backend)
            .with_context(|| format!("{backend} is not a backend"))?;
        let sent = tx.blast(
            limits.blast(clients.len() as u64),
            crate::stop::requested,
            |i| self.backend_frame(backend, clients[i as usize], 40000, TCP_ACK),
        )?;
        crate::stop::check()?;
        Ok(sent)
    }

    /// A non-VIP frame, exactly as the NonVip phase sends it (for
    /// BPF_PROG_TEST_RUN).
    pub fn non_vip_frame(&self) -> Result<Vec<u8>> {
        let backend = self.plan()?.backend;
        let (c, p) = self.flows[0];
        Ok(self.client_frame(c, p, backend, TCP_ACK | TCP_PSH))
    }
}
