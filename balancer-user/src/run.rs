//! `balancer run`: validate the config, load (or adopt) and attach the data
//! plane, keep it current, and leave it running (pinned) when the daemon
//! stops.

use std::{
    collections::HashSet,
    path::Path,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use anyhow::Context;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{Notify, mpsc},
};
use tracing::info;

use crate::{
    accounting::{self, FlowTables, SharedCounts},
    adopt,
    announce::Announcer,
    cluster,
    config::{Config, tables::TablesMemory},
    control,
    daemon::{ConfigSource, Daemon, admin},
    dataplane::{DataPlane, Interface},
    metrics, netif, notify, pin, proxy, state,
};

/// Entries the daemon made for its proxied clients, waiting to go to the
/// cluster's peers; beyond this many the peers get them with the next
/// re-announcement (the kernel's ring buffer holds about 26,000).
const DAEMON_ENTRIES_QUEUED: usize = 16_384;

/// The interfaces the config names, resolved; one entry when clients and
/// backends share an interface (one-arm).
pub fn interfaces(config: &Config) -> anyhow::Result<Vec<Interface>> {
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

/// Load the data plane against the pinned maps and write the config into
/// it, keeping every id and table a previous daemon left that is still
/// valid ([`adopt`]). Nothing is attached yet.
fn load(config: &Config, pin_dir: &Path) -> anyhow::Result<(DataPlane, adopt::Plan)> {
    let mut dataplane = DataPlane::load_with_tables(
        pin_dir,
        state::maglev_entries(config),
        config.tables,
        config.interfaces.mode,
    )?;
    info!(
        "kernel tables: {} (allocated in full when created)",
        TablesMemory::from(dataplane.tables())
    );
    let pinned = dataplane.read_pinned()?;
    let mut plan = adopt::plan(config, &pinned)?;
    let adopted: HashSet<u32> = pinned.backends.iter().map(|(id, _)| *id).collect();
    dataplane.write_port_maps(&plan.services)?;
    for service in &mut plan.services {
        for b in service.backends.iter().filter(|b| !adopted.contains(&b.id)) {
            dataplane.reset_backend_stats(b.id)?;
        }
        dataplane
            .write_service(service)
            .with_context(|| format!("service {}", service.config.name))?;
    }
    for key in &plan.removed_services {
        dataplane.remove_service(key)?;
    }
    dataplane.write_fragment_services(&plan.services)?;
    for &id in &plan.freed_backends {
        dataplane.clear_backend(id)?;
    }
    if !pinned.services.is_empty() {
        info!(
            services = pinned.services.len(),
            backends = pinned.backends.len(),
            "adopted the pinned data plane: flows, affinities and tables carry on"
        );
    }
    Ok((dataplane, plan))
}

/// The daemon, for whichever task needs it; a panic elsewhere must not
/// leave the data plane without anyone to manage it.
fn lock(daemon: &Mutex<Daemon>) -> MutexGuard<'_, Daemon> {
    daemon.lock().unwrap_or_else(PoisonError::into_inner)
}

pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    // Everything that can be wrong with the input or the host is checked
    // before the kernel is touched: a bad config attaches nothing.
    // Connections a previous process of this daemon handed over (an
    // in-place restart, SIGUSR2): taken first, so that an error below
    // still closes them rather than leaking them.
    let handover = proxy::handover::inherited()?;
    let config = Config::from_file(config_path)?;
    let interfaces = interfaces(&config)?;
    let pin_dir = pin::prepare(&config.bpf.pin_dir)?;
    pin::refuse_foreign(&pin_dir)?;
    let metrics_listener = metrics::bind(config.metrics.listen).await?;
    let announcer = config
        .announce
        .as_ref()
        .map(|a| Announcer::open(a, config.services.iter().map(|s| s.vip.ip()).collect()))
        .transpose()?;
    let control_socket =
        control::server::bind(&config.control.socket, config.control.group.as_deref()).await?;
    let cluster = cluster::prepare(&config.cluster).await?;

    let (mut dataplane, plan) = load(&config, &pin_dir)?;
    dataplane.attach(&interfaces)?;
    for service in &plan.services {
        info!(service = %service.config.name, vip = %service.config.vip, backends = service.backends.len(), "balancing");
    }

    let tables = Arc::new(FlowTables::open(&pin_dir)?);
    let counts = SharedCounts::default();
    let (health_tx, mut health_rx) = mpsc::unbounded_channel();
    let proxy_threads = config.proxy.threads;
    let source = ConfigSource {
        path: config_path.to_owned(),
        config,
    };
    let daemon = Daemon::new(
        dataplane,
        plan.services,
        plan.ids,
        health_tx,
        Arc::clone(&counts),
        Arc::clone(&tables),
        source,
    )
    // With peers, the VIPs are announced only once this gateway has pulled
    // their entries (`ready_to_announce`); on its own, at once.
    .announcing(announcer, cluster.is_none());
    let timeouts = daemon.watch_affinity_timeouts();
    let proxy_shared = Arc::new(proxy::Shared::new(
        daemon.watch_routes(),
        proxy::route::AffinityMap::open(&pin_dir)?,
        daemon.proxy_stats(),
        proxy_threads,
    )?);
    let handover = handover.unwrap_or_default();
    if !handover.connections.is_empty() || !handover.listeners.is_empty() {
        info!(
            connections = handover.connections.len(),
            listeners = handover.listeners.len(),
            "carried over by the restart in place"
        );
    }
    for conn in handover.connections {
        if let Err(e) = proxy::resume(Arc::clone(&proxy_shared), conn) {
            tracing::warn!("cannot resume a carried-over connection: {e:#}");
        }
    }
    let proxy = proxy::run(Arc::clone(&proxy_shared), handover.listeners);
    let directory = daemon.watch_directory();
    let daemon = Arc::new(Mutex::new(daemon));
    let cluster = match cluster {
        Some(prepared) => {
            let gateway = Arc::new(admin::Gateway(Arc::clone(&daemon)));
            let (made, daemons_entries) = mpsc::channel(DAEMON_ENTRIES_QUEUED);
            proxy_shared.report_affinity_to(made);
            let cluster = prepared.start(&pin_dir, directory, gateway, daemons_entries)?;
            lock(&daemon).set_cluster(cluster.clone());
            Some(cluster)
        }
        None => {
            tokio::spawn(cluster::discard_reports(pin_dir.clone()));
            None
        }
    };
    // The point at which this gateway may announce its VIPs: at once on its
    // own, else once it has pulled its peers' entries (or none answered in
    // `cluster::SYNC_WAIT`), so no client it takes meets a backend other
    // than the one its session is on.
    let ready_to_announce = {
        let daemon = Arc::clone(&daemon);
        let cluster = cluster.clone();
        async move {
            match &cluster {
                Some(cluster) => {
                    info!("cluster: ready to announce ({})", cluster.ready().await);
                    let started =
                        tokio::task::spawn_blocking(move || lock(&daemon).start_announcing());
                    if let Err(e) = started.await {
                        tracing::error!("announcing the VIPs: {e}");
                    }
                }
                None => info!("ready to announce (no cluster peers)"),
            }
            std::future::pending::<()>().await
        }
    };

    let health = {
        let daemon = Arc::clone(&daemon);
        async move {
            while let Some(event) = health_rx.recv().await {
                let daemon = Arc::clone(&daemon);
                let applied =
                    tokio::task::spawn_blocking(move || lock(&daemon).apply_health(&event)).await;
                match applied {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!("applying a health change: {e:#}"),
                    Err(e) => tracing::error!("applying a health change: {e}"),
                }
            }
        }
    };
    let source: metrics::SnapshotSource = {
        let daemon = Arc::clone(&daemon);
        Arc::new(move || lock(&daemon).snapshot())
    };
    let handler: control::server::Handler = {
        let daemon = Arc::clone(&daemon);
        // With peers, a backend change applies on every gateway at once.
        Arc::new(
            move |request| match (&cluster, admin::change_of(&request)) {
                (Some(cluster), Ok(Some(change))) => admin::propose(&daemon, cluster, change),
                _ => lock(&daemon).handle(request),
            },
        )
    };
    let detached = Arc::new(Notify::new());
    let tasks = {
        let detached = Arc::clone(&detached);
        async move {
            tokio::select! {
                () = health => {},
                () = accounting::run(tables, counts, timeouts) => {},
                served = metrics::serve(metrics_listener, source) => served?,
                () = control::server::serve(control_socket, handler, detached) => {},
                () = notify::watchdog() => {},
                () = ready_to_announce => {},
                () = proxy => {},
            }
            anyhow::Ok(())
        }
    };
    tokio::pin!(tasks);

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    // Attached, and the control socket is bound: its requests queue until
    // the loop below polls the server, which is the next thing that runs.
    notify::ready();
    let ended = loop {
        tokio::select! {
            _ = term.recv() => break Ok(()),
            _ = int.recv() => break Ok(()),
            _ = hup.recv() => {
                // As `balancer reload`; it logs what it changed or why it
                // refused. Not awaited: the control socket and health checks
                // carry on meanwhile.
                info!("SIGHUP: reloading {}", config_path.display());
                let daemon = Arc::clone(&daemon);
                tokio::task::spawn_blocking(move || lock(&daemon).reload_from_file());
            }
            _ = usr2.recv() => {
                // Restart in place: the pinned data plane carries the
                // kernel's flows as on any restart, and the proxied
                // connections are handed to the next process.
                info!("SIGUSR2: restarting in place; proxied connections carry over");
                notify::reloading();
                let parked = proxy_shared.park_all().await;
                info!(
                    connections = parked.connections.len(),
                    listeners = parked.listeners.len(),
                    "parked; executing the daemon's binary again"
                );
                break Err(proxy::handover::exec(parked));
            }
            _ = detached.notified() => {
                notify::stopping();
                info!("detached on request: programs and pins removed");
                return Ok(());
            }
            ended = &mut tasks => break ended,
        }
    };
    notify::stopping();
    info!(pin_dir = %pin_dir.display(), "stopping; the data plane stays attached and pinned (`balancer detach` removes it)");
    ended
}
