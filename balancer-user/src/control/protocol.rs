//! The control protocol's messages. A request is one line of JSON, e.g.
//! `{"request":"backend_drain","service":"chat","address":"198.18.1.11:3000"}`;
//! the response is one line, `{"ok":{...}}` or `{"error":"one line"}`.

use serde::{Deserialize, Serialize};

use crate::metrics::Snapshot;

/// The longest request line the daemon reads; anything longer is refused.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Services, backends, states and counts (the same as `GET /status`).
    Status,
    /// Add `address` to `service`; it takes clients once it passes `rise`
    /// health checks (at once with `check = "none"`). `name` is the prefix
    /// of the engine.io session ids it mints (`affinity = "sid"`).
    BackendAdd {
        service: String,
        address: String,
        weight: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// Remove `address`: its flows and affinities move on their next packet.
    BackendRemove { service: String, address: String },
    /// Keep `address`'s clients on it, send it no new ones.
    BackendDrain { service: String, address: String },
    /// Undo `BackendDrain`.
    BackendUndrain { service: String, address: String },
    /// Set `address`'s weight (1..=65535): its share of the table follows.
    BackendSetWeight {
        service: String,
        address: String,
        weight: u32,
    },
    /// The backend a connection from `client` (port `port`, which only
    /// four-tuple services hash) gets now.
    Lookup {
        service: String,
        client: String,
        port: Option<u16>,
    },
    /// Conntrack entries, of one service or all, at most `limit` of them.
    Flows {
        service: Option<String>,
        limit: Option<usize>,
    },
    /// Detach the programs, remove the balancer's pins, and stop the daemon.
    Detach,
    /// Read the daemon's config file again and apply it (as SIGHUP does).
    Reload,
    /// What `Reload` with the config text `config` would change; changes
    /// nothing.
    ReloadDiff { config: String },
    /// Withdraw this gateway's VIPs from `[announce] interface` and stay
    /// out until `ClusterJoin`, restarts included.
    ClusterLeave,
    /// Announce the served VIPs again.
    ClusterJoin,
}

impl Request {
    /// Reads only: what members of `[control] group` may ask. Anything
    /// else (every request added later, until listed here) is root's.
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            Request::Status | Request::Lookup { .. } | Request::Flows { .. }
        )
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok(Reply),
    /// One line, for the CLI to print after `balancer: `.
    Error(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Status(Snapshot),
    /// A backend change was applied; `message` says what it did.
    Done {
        message: String,
    },
    Lookup(LookupAnswer),
    Flows(FlowList),
    /// The daemon detached everything and is exiting.
    Detached {
        pins_removed: usize,
        /// Entries in the pin dir that are not the balancer's, left there.
        #[serde(default)]
        foreign_left: usize,
    },
    /// What a reload changed (`applied`) or would change, one line each.
    Changes {
        changes: Vec<String>,
        applied: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupAnswer {
    pub service: String,
    pub client: String,
    /// `ADDR:PORT` of the backend, `None` when no backend takes clients.
    pub backend: Option<String>,
    /// `"affinity"` (the client's affinity entry, fresh and its backend up)
    /// or `"maglev"` (a new client: the table slot below).
    pub via: String,
    /// The Maglev slot the client hashes to.
    pub slot: Option<u32>,
    /// How long the affinity entry has been idle, for `via = "affinity"`.
    pub affinity_idle_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowList {
    pub flows: Vec<FlowEntry>,
    /// Matching flows in the table, of which `flows` holds the first `limit`.
    pub total: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowEntry {
    pub service: String,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// `ADDR:PORT` of the client.
    pub client: String,
    /// `ADDR:PORT` of the backend (`"?"` for a backend id no longer known).
    pub backend: String,
    /// `syn-sent` (no answer from the backend yet), `open`, `fin-client`,
    /// `fin-backend`, `closed`, `reset` (TCP);
    /// `open` for UDP.
    pub state: String,
    /// Counted in `balancer_backend_active_connections`: not closed, and
    /// idle less than the protocol's idle timeout.
    pub active: bool,
    pub idle_ms: u64,
    pub age_ms: u64,
}
