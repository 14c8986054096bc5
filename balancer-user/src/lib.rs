//! The balancer daemon and CLI: configuration, loading the kernel object,
//! keeping its maps current.

pub mod config;
pub mod dataplane;
pub mod health;
pub mod metrics;
pub mod netif;
pub mod object;
pub mod pin;
pub mod run;
pub mod state;
