//! The balancer daemon and CLI: configuration, loading the kernel object,
//! keeping its maps current, and the control socket between them.

pub mod accounting;
pub mod adopt;
pub mod announce;
pub mod attach;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod fingerprint;
pub mod health;
pub mod ids;
pub mod logging;
pub mod mapscan;
pub mod metrics;
pub mod netif;
pub mod notify;
pub mod object;
pub mod oneline;
pub mod pin;
pub mod port_maps;
pub mod proxy;
pub mod reload;
pub mod rtnetlink;
pub mod run;
pub mod state;
pub mod syscall;
pub mod version;
