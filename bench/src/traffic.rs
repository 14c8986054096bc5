//! The per-packet phases' traffic: crafted TCP frames through the real
//! topology, one kind at a time, so the program's run statistics over a
//! phase are the cost of one path.
//!
//! Every frame uses port [`SINK_PORT`], which the backends and the client
//! namespace drop on arrival: nothing answers, so no other kind of packet
//! crosses the gateway during a phase.

use std::{collections::BTreeMap, net::Ipv4Addr, path::Path, time::Duration};

use anyhow::{Context as _, Result};
use balancer_tests::{
    packet::{Frame, TCP_ACK, TCP_PSH, TCP_SYN},
    rawsend::{BlastLimits, RawSender, mac_of},
    topology::{BACKEND_IF, CLIENT_IF, GW_BACKEND_IF, GW_CLIENT_IF, VIP_V4},
};

use crate::{
    pinned,
    testbed::{SINK_PORT, Testbed},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Client → VIP on a known flow: the conntrack hit.
    Established,
    /// A new flow (SYN, new port) from a client with an affinity entry.
    NewFlow,
    /// A new flow from a client never seen: affinity miss, Maglev lookup,
    /// three map inserts.
    NewClient,
    /// Backend → client on a known flow: SNAT back to the VIP.
    Reply,
    /// Client → a backend's own address: not for the balancer, passed.
    NonVip,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Established,
        Kind::NewFlow,
        Kind::NewClient,
        Kind::Reply,
        Kind::NonVip,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Kind::Established => "established flow (conntrack hit)",
            Kind::NewFlow => "new connection, known client (affinity hit)",
            Kind::NewClient => "new connection, new client (Maglev)",
            Kind::Reply => "reply, backend → client",
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
/// New-connection ports: below the established ones.
const NEW_PORTS: u32 = 38000;
/// Never-seen clients come from 198.19.0.0/16: this many per daemon.
pub const NEW_CLIENTS: u64 = 250 * 256;

/// How long a phase sends, and how many frames at most.
#[derive(Clone, Copy, Debug)]
pub struct PhaseLimits {
    pub time: Duration,
    pub frames: u64,
}

impl PhaseLimits {
    /// The sender's limits: these, and no more than `room` frames; as fast
    /// as one core goes; stopped early by Ctrl-C.
    fn blast(self, room: u64) -> BlastLimits {
        BlastLimits {
            frames: self.frames.min(room),
            time: self.time,
            per_second: None,
        }
    }
}

pub struct Traffic {
    client_tx: RawSender,
    client_mac: [u8; 6],
    gwc_mac: [u8; 6],
    gwb_mac: [u8; 6],
    backend_tx: BTreeMap<Ipv4Addr, (RawSender, [u8; 6])>,
    /// (client, port) of each established flow.
    flows: Vec<(Ipv4Addr, u16)>,
    /// Flows whose backend answers in the reply phase, and that backend.
    reply_plan: Option<(Ipv4Addr, Vec<(Ipv4Addr, u16)>)>,
    /// New flows and new clients used up under the current daemon (their
    /// conntrack and affinity entries live as long as it does).
    next_flow: u64,
    next_client: u64,
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
        })
    }

    fn client_frame(&self, src: Ipv4Addr, sport: u16, dst: Ipv4Addr, flags: u8) -> Vec<u8> {
        let mut f = Frame::tcp(&src.to_string(), sport, &dst.to_string(), SINK_PORT, flags);
        f.src_mac = self.client_mac;
        f.dst_mac = self.gwc_mac;
        f.build()
    }

    /// Under a freshly started daemon: open the established flows (twice,
    /// so the gateway has resolved every backend's neighbour entry and the
    /// second round takes the fast path), and learn which backend each got.
    pub fn prepare(&mut self, pin_dir: &Path) -> Result<()> {
        self.next_flow = 0;
        self.next_client = 0;
        for _ in 0..2 {
            for &(c, p) in &self.flows {
                self.client_tx
                    .send(&self.client_frame(c, p, VIP_V4, TCP_SYN))?;
            }
            crate::stop::sleep(Duration::from_millis(300))?;
        }
        if self.reply_plan.is_none() {
            let mut by_backend: BTreeMap<Ipv4Addr, Vec<(Ipv4Addr, u16)>> = BTreeMap::new();
            for (key, backend) in pinned::flows(pin_dir)? {
                let client = Ipv4Addr::from(key.src[0].to_ne_bytes());
                let port = u16::from_be(key.sport);
                if self.flows.contains(&(client, port)) {
                    by_backend.entry(backend).or_default().push((client, port));
                }
            }
            let busiest = by_backend
                .into_iter()
                .max_by_key(|(_, f)| f.len())
                .context("no established flow in conntrack")?;
            self.reply_plan = Some(busiest);
        }
        Ok(())
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
                    |i| {
                        let n = start + i;
                        let client = Ipv4Addr::new(198, 19, (n / 250) as u8, 1 + (n % 250) as u8);
                        self.client_frame(client, 40000, VIP_V4, TCP_SYN)
                    },
                )?;
                self.next_client += sent;
                sent
            }
            Kind::Reply => {
                let (backend, flows) = self
                    .reply_plan
                    .as_ref()
                    .context("replies need prepare() first")?;
                let (tx, mac) = &self.backend_tx[backend];
                let frames: Vec<Vec<u8>> = flows
                    .iter()
                    .map(|&(c, p)| {
                        let mut f = Frame::tcp(
                            &backend.to_string(),
                            SINK_PORT,
                            &c.to_string(),
                            p,
                            TCP_ACK | TCP_PSH,
                        );
                        f.src_mac = *mac;
                        f.dst_mac = self.gwb_mac;
                        f.build()
                    })
                    .collect();
                let n = frames.len() as u64;
                tx.blast(limits.blast(u64::MAX), crate::stop::requested, |i| {
                    frames[(i % n) as usize].clone()
                })?
            }
            Kind::NonVip => {
                let (backend, _) = self
                    .reply_plan
                    .as_ref()
                    .context("non-VIP traffic needs prepare() first")?;
                let frames: Vec<Vec<u8>> = self
                    .flows
                    .iter()
                    .map(|&(c, p)| self.client_frame(c, p, *backend, TCP_ACK | TCP_PSH))
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

    /// A non-VIP frame, exactly as the NonVip phase sends it (for
    /// BPF_PROG_TEST_RUN).
    pub fn non_vip_frame(&self) -> Result<Vec<u8>> {
        let (backend, _) = self.reply_plan.as_ref().context("needs prepare() first")?;
        let (c, p) = self.flows[0];
        Ok(self.client_frame(c, p, *backend, TCP_ACK | TCP_PSH))
    }
}
