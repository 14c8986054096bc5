//! Control requests: arguments parsed here (any client may send anything),
//! then handed to the daemon's change methods or answered from the maps.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use anyhow::{Context, bail};
use balancer_common::{
    addr::from_words,
    types::{AffinityKey, FlowKey, PROTO_TCP, SERVICE_FOUR_TUPLE, ServiceKey, tcp_closed},
};

use super::Daemon;
use crate::{
    accounting::{flow_active, monotonic_ns},
    control::{FlowEntry, FlowList, LookupAnswer, Reply, Request, Response},
    oneline::escape_controls,
    state::ServiceState,
};

/// `balancer flows` lists at most this many entries unless told otherwise.
const DEFAULT_FLOW_LIMIT: usize = 1000;

impl Daemon {
    /// Answer one control request; an error is one line and changed nothing.
    pub fn handle(&mut self, request: Request) -> Response {
        match self.reply(request) {
            Ok(reply) => Response::Ok(reply),
            Err(e) => Response::Error(escape_controls(&format!("{e:#}"))),
        }
    }

    fn reply(&mut self, request: Request) -> anyhow::Result<Reply> {
        let done = |message: String| Reply::Done { message };
        Ok(match request {
            Request::Status => Reply::Status(self.snapshot()),
            Request::BackendAdd {
                service,
                address,
                weight,
                name,
            } => done(self.add_backend(
                &service,
                backend_address(&address)?,
                weight.unwrap_or(1),
                name.as_deref(),
            )?),
            Request::BackendRemove { service, address } => {
                done(self.remove_backend(&service, backend_address(&address)?)?)
            }
            Request::BackendDrain { service, address } => {
                done(self.set_draining(&service, backend_address(&address)?, true)?)
            }
            Request::BackendUndrain { service, address } => {
                done(self.set_draining(&service, backend_address(&address)?, false)?)
            }
            Request::BackendSetWeight {
                service,
                address,
                weight,
            } => done(self.set_weight(&service, backend_address(&address)?, weight)?),
            Request::Lookup {
                service,
                client,
                port,
            } => Reply::Lookup(self.lookup(&service, &client, port)?),
            Request::Flows { service, limit } => {
                Reply::Flows(self.flows(service.as_deref(), limit)?)
            }
            Request::Detach => {
                let removed = self.detach()?;
                Reply::Detached {
                    pins_removed: removed.pins,
                    foreign_left: removed.foreign_left,
                }
            }
            Request::Reload => Reply::Changes {
                changes: self.reload_from_file()?,
                applied: true,
            },
            Request::ReloadDiff { config } => Reply::Changes {
                changes: self.reload_diff(&config)?,
                applied: false,
            },
            Request::ClusterLeave => done(self.set_cluster_left(true)?),
            Request::ClusterJoin => done(self.set_cluster_left(false)?),
        })
    }

    /// What the kernel does with a new connection from `client` now: its
    /// fresh affinity entry if its backend is up (the kernel's step 2),
    /// else the Maglev slot the same hash picks (step 3).
    fn lookup(
        &self,
        service: &str,
        client: &str,
        port: Option<u16>,
    ) -> anyhow::Result<LookupAnswer> {
        let s = &self.services[self.service_index(service)?];
        let ip: IpAddr = client.parse().map_err(|_| {
            anyhow::anyhow!("malformed client address {client:?}: expected an IP address")
        })?;
        if ip.is_ipv4() != s.config.vip.is_ipv4() {
            bail!(
                "client {ip} and the VIP {} of {service:?} are of different IP families",
                s.config.vip
            );
        }
        let sport = port.unwrap_or(0);
        let value = s.map_value(0, true);
        let mut answer = LookupAnswer {
            service: service.to_owned(),
            client: ip.to_string(),
            backend: None,
            via: "maglev".to_owned(),
            slot: s.slot_for(ip, sport),
            affinity_idle_ms: None,
        };
        if value.flags & SERVICE_FOUR_TUPLE == 0 {
            let (client, family) = s.masked(ip);
            let key = AffinityKey {
                service_id: s.id,
                family,
                _pad: [0; 3],
                client,
            };
            if let Some(a) = self.dataplane.affinity(&key)? {
                let idle = monotonic_ns().saturating_sub(a.last_seen_ns);
                let up = s.backend_by_id(a.backend_id).filter(|b| b.up);
                if let (true, Some(b)) = (idle < value.affinity_timeout_ns, up) {
                    answer.backend = Some(b.address.to_string());
                    answer.via = "affinity".to_owned();
                    answer.affinity_idle_ms = Some(idle / 1_000_000);
                    return Ok(answer);
                }
            }
        }
        answer.backend = answer
            .slot
            .and_then(|slot| s.table.get(slot as usize))
            .and_then(|&id| s.backend_by_id(id))
            .map(|b| b.address.to_string());
        Ok(answer)
    }

    /// Conntrack entries (of `service` only, if given), at most `limit`.
    fn flows(&self, service: Option<&str>, limit: Option<usize>) -> anyhow::Result<FlowList> {
        let only = service.map(|name| self.service_index(name)).transpose()?;
        let limit = limit.unwrap_or(DEFAULT_FLOW_LIMIT);
        let now = monotonic_ns();
        // Looked up once per request, not once per conntrack entry.
        let by_vip: HashMap<ServiceKey, &ServiceState> =
            self.services.iter().map(|s| (s.key(), s)).collect();
        let backends: HashMap<u32, String> = self
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| (b.id, b.address.to_string())))
            .collect();
        let wanted = only.map(|i| self.services[i].id);
        let mut list = FlowList {
            flows: Vec::new(),
            total: 0,
        };
        self.tables
            .flows(|key, flow| {
                let vip = ServiceKey {
                    addr: key.dst,
                    port: key.dport,
                    proto: key.proto,
                    family: key.family,
                };
                let Some(s) = by_vip.get(&vip) else { return };
                if wanted.is_some_and(|id| id != s.id) {
                    return;
                }
                list.total += 1;
                if list.flows.len() >= limit {
                    return;
                }
                let backend = backends
                    .get(&flow.backend_id)
                    .cloned()
                    .unwrap_or_else(|| "?".to_owned());
                list.flows.push(FlowEntry {
                    service: s.config.name.clone(),
                    protocol: s.config.protocol.to_string(),
                    client: client_of(key).to_string(),
                    backend,
                    state: tcp_state_name(key, flow.tcp_state()).to_owned(),
                    active: flow_active(key, flow, now),
                    idle_ms: now.saturating_sub(flow.last_seen_ns) / 1_000_000,
                    age_ms: now.saturating_sub(flow.created_ns) / 1_000_000,
                });
            })
            .context("listing flows")?;
        Ok(list)
    }
}

/// A backend address as an operator types it, or a one-line reason.
pub(super) fn backend_address(text: &str) -> anyhow::Result<SocketAddr> {
    let addr: SocketAddr = text.parse().map_err(|_| {
        anyhow::anyhow!("malformed backend address {text:?}: expected ADDR:PORT, e.g. 198.18.1.11:3000 or [2001:db8::11]:3000")
    })?;
    if addr.port() == 0 {
        bail!("malformed backend address {text:?}: the port must not be 0");
    }
    Ok(addr)
}

fn client_of(key: &FlowKey) -> SocketAddr {
    SocketAddr::new(from_words(key.src, key.family), u16::from_be(key.sport))
}

fn tcp_state_name(key: &FlowKey, state: u32) -> &'static str {
    use balancer_common::types::{
        TCP_BACKEND_ANSWERED, TCP_FIN_FROM_BACKEND, TCP_FIN_FROM_CLIENT, TCP_RST,
    };
    if key.proto != PROTO_TCP {
        return "open";
    }
    if state & TCP_RST != 0 {
        "reset"
    } else if tcp_closed(state) {
        "closed"
    } else if state & TCP_FIN_FROM_CLIENT != 0 {
        "fin-client"
    } else if state & TCP_FIN_FROM_BACKEND != 0 {
        "fin-backend"
    } else if state & TCP_BACKEND_ANSWERED == 0 {
        "syn-sent"
    } else {
        "open"
    }
}
