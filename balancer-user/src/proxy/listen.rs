//! One acceptor per daemon-terminated service, kept in line with the
//! services: started when one appears, stopped when it goes or its VIP
//! changes. Each VIP is made local through a route in the `local` table
//! (not an interface address, which `[announce]` and BIRD's `protocol
//! direct` own), so the stack delivers the packets the kernel program
//! passes to it.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use tokio::{net::TcpSocket, task::JoinHandle};
use tracing::{error, info, warn};

use super::{Routes, Shared, conn};
use crate::{
    netif,
    rtnetlink::{self, Op},
    state::ServiceState,
};

/// Connections waiting for `accept` (the kernel caps it at
/// `net.core.somaxconn`).
const BACKLOG: u32 = 4096;
/// Pause after a failed accept (out of descriptors, say) before the next.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Keep one acceptor per service of `routes` until the sender is gone.
pub async fn run(shared: Arc<Shared>) {
    let mut routes = shared.routes.clone();
    let mut running: HashMap<String, (SocketAddr, JoinHandle<()>)> = HashMap::new();
    loop {
        let current: Routes = routes.borrow_and_update().clone();
        running.retain(|name, (vip, task)| {
            let keep = current
                .iter()
                .any(|s| &s.config.name == name && s.config.vip == *vip);
            if !keep {
                task.abort();
                info!(service = %name, vip = %vip, "stopped accepting");
                let still_used = current.iter().any(|s| s.config.vip.ip() == vip.ip());
                if !still_used && let Err(e) = local_route(Op::Remove, vip.ip()) {
                    warn!("{e:#}");
                }
            }
            keep
        });
        for service in current.iter() {
            if running.contains_key(&service.config.name) {
                continue;
            }
            match listen(service) {
                Ok(task) => {
                    let name: Arc<str> = service.config.name.as_str().into();
                    let handle = tokio::spawn(accept(Arc::clone(&shared), name, task));
                    running.insert(service.config.name.clone(), (service.config.vip, handle));
                    info!(service = %service.config.name, vip = %service.config.vip, "accepting (the daemon terminates this service's connections)");
                }
                // Tried again at the next change of the services.
                Err(e) => {
                    error!(service = %service.config.name, "cannot accept on {}: {e:#}", service.config.vip)
                }
            }
        }
        if routes.changed().await.is_err() {
            return;
        }
    }
}

/// The VIP made local, and a listening socket on it.
fn listen(service: &ServiceState) -> anyhow::Result<tokio::net::TcpListener> {
    let vip = service.config.vip;
    local_route(Op::Add, vip.ip())?;
    let socket = match vip {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // A restarted daemon binds while the last one's connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(vip)?;
    Ok(socket.listen(BACKLOG)?)
}

async fn accept(shared: Arc<Shared>, name: Arc<str>, listener: tokio::net::TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(conn::serve(
                    Arc::clone(&shared),
                    Arc::clone(&name),
                    stream,
                    peer,
                ));
            }
            Err(e) => {
                warn!(service = %name, "accept: {e}");
                tokio::time::sleep(ACCEPT_RETRY).await;
            }
        }
    }
}

fn local_route(op: Op, ip: IpAddr) -> anyhow::Result<()> {
    let lo = netif::ifindex("loopback", "lo")?;
    rtnetlink::local_route(op, lo, ip)
        .map_err(|e| anyhow::anyhow!("local route for {ip} via lo: {e}"))
}

/// Take the VIPs of the daemon-terminated services among `services` off
/// this host (`balancer detach`): nothing answers on them any more.
pub fn remove_local_routes(services: &[ServiceState]) -> anyhow::Result<()> {
    for s in services.iter().filter(|s| s.config.terminates_in_daemon()) {
        local_route(Op::Remove, s.config.vip.ip())?;
    }
    Ok(())
}
