//! Network-namespace test harness for the balancer (DESIGN.md, "Test topology
//! conventions"): namespaces that clean up after themselves, the gateway
//! topology, in-process backend servers and clients that bind a chosen
//! source address.
//!
//! Everything here needs root and panics on setup failures (like aya's own
//! tests), so a broken environment fails loudly with a backtrace instead of
//! being skipped.

pub mod bpffs;
pub mod cdn;
pub mod cluster;
pub mod daemon;
pub mod deploy;
pub mod http;
pub mod idle;
pub mod netns;
pub mod packet;
pub mod rawsend;
pub mod servers;
pub mod socketio;
pub mod spoof;
pub mod topology;
pub mod xdp_fixture;

pub use netns::{NetNs, require_root};
pub use servers::{
    Answer, BIG_DATAGRAM, Server, TIMEOUT, ask, tcp_ask, tcp_connect, tcp_whoami, udp_ask,
    udp_ask_sized, udp_whoami,
};
pub use topology::{Backend, Topology, TopologyOpts};
