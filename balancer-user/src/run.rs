//! `balancer run`: validate the config, load and attach the data plane, keep
//! it current, and leave it running (pinned) when the daemon stops.

use std::path::Path;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

use crate::{
    config::Config,
    dataplane::{DataPlane, Interface},
    netif, pin, state,
};

/// The interfaces the config names, resolved; one entry when clients and
/// backends share an interface (one-arm).
fn interfaces(config: &Config) -> anyhow::Result<Vec<Interface>> {
    let clients = &config.interfaces.clients;
    let backends = &config.interfaces.backends;
    let mut list = vec![Interface {
        field: "interfaces.clients",
        name: clients.clone(),
        ifindex: netif::ifindex("interfaces.clients", clients)?,
    }];
    if backends != clients {
        list.push(Interface {
            field: "interfaces.backends",
            name: backends.clone(),
            ifindex: netif::ifindex("interfaces.backends", backends)?,
        });
    }
    Ok(list)
}

pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    // Everything that can be wrong with the input is checked before the
    // kernel is touched: a bad config attaches nothing.
    let config = Config::from_file(config_path)?;
    let interfaces = interfaces(&config)?;
    let pin_dir = pin::prepare(&config.bpf.pin_dir)?;
    let mut services = state::from_config(&config);

    let mut dataplane = DataPlane::load(&pin_dir, state::maglev_entries(&services))?;
    for service in &mut services {
        dataplane.write_service(service).with_context(|| format!("service {}", service.config.name))?;
    }
    dataplane.attach(&interfaces)?;
    for service in &services {
        info!(service = %service.config.name, vip = %service.config.vip, backends = service.backends.len(), "balancing");
    }

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    info!(pin_dir = %pin_dir.display(), "stopping; the data plane stays attached and pinned (`balancer detach` removes it)");
    Ok(())
}
