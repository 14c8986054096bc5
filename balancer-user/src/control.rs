//! The control socket between the daemon and the CLI: one JSON request line,
//! one JSON response line, then the connection closes.
//!
//! Addresses travel as strings so that the daemon, which must refuse
//! anything malformed from any client, is the one place that parses them.

pub mod client;
pub mod protocol;
pub mod server;

pub use protocol::{FlowEntry, FlowList, LookupAnswer, Reply, Request, Response};
