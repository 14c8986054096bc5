//! One acceptor per daemon-terminated service, kept in line with the
//! services: started when one appears, stopped when it goes or its VIP
//! changes. Each VIP is made local through a route in the `local` table
//! (not an interface address, which `[announce]` and BIRD's `protocol
//! direct` own), so the stack delivers the packets the kernel program
//! passes to it.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{Interest, unix::AsyncFd},
    net::TcpSocket,
    sync::watch,
    task::JoinHandle,
};
use tracing::{error, info, warn};

use super::{Routes, Running, Shared, conn, handover::ParkedListener};
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

/// Keep one acceptor per service of `routes` until the sender is gone or
/// the acceptors park. `inherited`: listening sockets a previous process
/// handed over, used for their services instead of binding anew.
pub async fn run(shared: Arc<Shared>, mut inherited: Vec<ParkedListener<OwnedFd>>) {
    let mut routes = shared.routes.clone();
    let mut parking = shared.parking.subscribe();
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
            let handed = inherited
                .iter()
                .position(|l| l.service == service.config.name && l.vip == service.config.vip)
                .map(|i| inherited.swap_remove(i));
            let listener = match handed {
                Some(l) => adopt(l.fd),
                None => listen(service),
            };
            let threads = shared.workers.len();
            match listener.and_then(|l| per_thread(l, threads)) {
                Ok((listener, copies)) => {
                    let name: Arc<str> = service.config.name.as_str().into();
                    let acceptor = Running::acceptor(&shared);
                    let handle = tokio::spawn(accept(
                        Arc::clone(&shared),
                        acceptor,
                        name,
                        service.config.vip,
                        listener,
                        copies,
                    ));
                    running.insert(service.config.name.clone(), (service.config.vip, handle));
                    info!(service = %service.config.name, vip = %service.config.vip, "accepting (the daemon terminates this service's connections)");
                }
                // Tried again at the next change of the services.
                Err(e) => {
                    error!(service = %service.config.name, "cannot accept on {}: {e:#}", service.config.vip)
                }
            }
        }
        tokio::select! {
            changed = routes.changed() => if changed.is_err() {
                return;
            },
            // Parked: the acceptors hand their sockets over themselves.
            _ = parking.wait_for(|p| *p) => return,
        }
    }
}

/// A listening socket a previous process handed over.
fn adopt(fd: OwnedFd) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::from(fd);
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The VIP made local, and a listening socket on it.
fn listen(service: &ServiceState) -> anyhow::Result<TcpListener> {
    let vip = service.config.vip;
    local_route(Op::Add, vip.ip())?;
    let socket = match vip {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // A restarted daemon binds while the last one's connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(vip)?;
    Ok(socket.listen(BACKLOG)?.into_std()?)
}

/// `listener`, and a descriptor of it for each of `threads` proxy threads.
fn per_thread(
    listener: TcpListener,
    threads: usize,
) -> anyhow::Result<(TcpListener, Vec<TcpListener>)> {
    let copies = (0..threads)
        .map(|_| listener.try_clone())
        .collect::<io::Result<_>>()?;
    Ok((listener, copies))
}

/// `listener` in this thread's epoll.
fn watch_readable(listener: TcpListener) -> anyhow::Result<AsyncFd<TcpListener>> {
    // SAFETY: a `TcpListener` owns its descriptor until dropped or taken
    // back with `into_inner`, and always returns that one.
    unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) }
        .map_err(|e| e.into_parts().1.into())
}

/// One connection waiting on `listener`, non-blocking already, with its
/// peer, as a std stream: [`conn::serve`] registers it with the epoll of
/// the thread that runs it.
fn accept_one(listener: &TcpListener) -> io::Result<(TcpStream, SocketAddr)> {
    // SAFETY: an all-zero `sockaddr_storage` is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of_val(&storage) as libc::socklen_t;
    // SAFETY: accept4(2) writes at most `len` bytes of the peer's address
    // into `storage`, which has that many.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            (&raw mut storage).cast(),
            &mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: accept4(2) returned a new descriptor that nothing else owns.
    let stream = TcpStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
    match peer_address(&storage) {
        Some(peer) => Ok((stream, peer)),
        None => stream.peer_addr().map(|peer| (stream, peer)),
    }
}

/// The address accept4(2) wrote, if IPv4 or IPv6 (saves a getpeername(2)
/// per connection).
fn peer_address(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    let at = std::ptr::from_ref(storage);
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a `sockaddr_in`.
            let a = unsafe { &*at.cast::<libc::sockaddr_in>() };
            Some(SocketAddr::from((
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a `sockaddr_in6`.
            let a = unsafe { &*at.cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Accept on every proxy thread until parked; then the listening socket is
/// put aside for the next process, so that no SYN meets a closed port.
/// Aborting this task (the service went) stops the threads' acceptors.
///
/// Each thread accepts on its own descriptor (`copies`), in its own epoll,
/// and serves what it accepts: a connection goes to a thread free to take
/// it, with no hand-over between threads, and accepting competes with the
/// thread's connections for its time, so that a gateway short of CPU
/// leaves new connections in the listen backlog rather than in memory.
async fn accept(
    shared: Arc<Shared>,
    running: Running,
    name: Arc<str>,
    vip: SocketAddr,
    listener: TcpListener,
    copies: Vec<TcpListener>,
) {
    // Dropped with this task: the threads' acceptors see it go.
    let (_alive, gone) = watch::channel(());
    for (thread, copy) in copies.into_iter().enumerate() {
        shared.workers.spawn_on(
            thread,
            accept_on_thread(
                Arc::clone(&shared),
                Running::acceptor(&shared),
                Arc::clone(&name),
                copy,
                gone.clone(),
            ),
        );
    }
    let _ = shared.parking.subscribe().wait_for(|p| *p).await;
    shared.park_listener(ParkedListener {
        service: name.to_string(),
        vip,
        fd: listener.into(),
    });
    drop(running);
}

/// One proxy thread's acceptor: until parked, or until `gone` says the
/// service's acceptor went.
async fn accept_on_thread(
    shared: Arc<Shared>,
    running: Running,
    name: Arc<str>,
    listener: TcpListener,
    mut gone: watch::Receiver<()>,
) {
    let listener = match watch_readable(listener) {
        Ok(listener) => listener,
        Err(e) => {
            error!(service = %name, "a proxy thread cannot accept: {e:#}");
            return;
        }
    };
    let mut parking = shared.parking.subscribe();
    loop {
        let accepted = tokio::select! {
            ready = listener.readable() => match ready {
                Ok(mut ready) => match ready.try_io(|l| accept_one(l.get_ref())) {
                    Ok(accepted) => accepted,
                    // Another thread took it.
                    Err(_would_block) => continue,
                },
                Err(e) => Err(e),
            },
            _ = parking.wait_for(|p| *p) => break,
            _ = gone.changed() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(conn::serve(
                    Arc::clone(&shared),
                    Running::connection(&shared),
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
    drop(running);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_one_gives_a_nonblocking_stream_and_its_peer() {
        for local in ["127.0.0.1:0", "[::1]:0"] {
            let listener = TcpListener::bind(local).unwrap();
            let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (mut accepted, peer) = accept_one(&listener).unwrap();
            assert_eq!(peer, client.local_addr().unwrap(), "{local}");
            let mut byte = [0u8; 1];
            let read = std::io::Read::read(&mut accepted, &mut byte);
            assert_eq!(
                read.map_err(|e| e.kind()),
                Err(io::ErrorKind::WouldBlock),
                "{local}: the stream does not block"
            );
            listener.set_nonblocking(true).unwrap();
            assert_eq!(
                accept_one(&listener).map(drop).map_err(|e| e.kind()),
                Err(io::ErrorKind::WouldBlock),
                "{local}: nothing more waits"
            );
        }
    }
}
