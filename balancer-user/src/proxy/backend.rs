//! One connection to a backend, as a client connection holds it: opened
//! for a choice (with the PROXY v2 header and the client's affinity entry
//! when due), reused while requests keep going there (and by other clients
//! through [`super::pool`]), counted open until dropped. And the two socket
//! calls every layer above needs on shared references.

use std::{io, net::SocketAddr, os::fd::AsRawFd, sync::Arc, time::Duration};

use tokio::{
    io::Interest,
    net::TcpStream,
    time::{Instant, timeout},
};

use super::{
    Shared, header,
    route::Choice,
    stats::{ProxyStats, RoutedBy},
};
use crate::state::ServiceState;

/// How long a backend may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A backend connection used this recently is taken to be open without a
/// probe.
const KEEPALIVE_TRUSTED: Duration = Duration::from_secs(1);

/// Bytes read at a time into a buffer: [`SharedIo::read_some`] makes at
/// least this much room first.
pub const READ_CHUNK: usize = 4096;

/// Why a backend could not be reached: logged, and the client gets a 502.
#[derive(Debug)]
pub struct Unreachable;

pub struct Backend {
    pub id: u32,
    pub address: SocketAddr,
    /// Counts the connection open until dropped.
    _open: Open,
    /// The client of its current or last request (with
    /// `send_proxy_protocol`, the one its PROXY header names).
    pub origin: SocketAddr,
    /// The client whose address chose it for the last request, if its
    /// address did (not a sid): that client's next request stays.
    pub routed_origin: Option<SocketAddr>,
    /// When its last response ended.
    pub last_used: Instant,
    /// When its client's affinity entry was last written.
    pub remembered: Instant,
    pub stream: TcpStream,
}

/// One open backend connection in [`ProxyStats`], until dropped.
struct Open {
    id: u32,
    stats: Arc<ProxyStats>,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.stats.closed(self.id);
    }
}

impl Backend {
    /// Connect to `choice`'s backend for `origin` (the client, as the
    /// service knows it): PROXY v2 first when configured, and the client's
    /// affinity recorded once the backend has accepted (not for a sid's
    /// choice: the next request names the backend again).
    pub async fn connect(
        shared: &Shared,
        service: &ServiceState,
        choice: Choice,
        origin: SocketAddr,
    ) -> Result<Result<Backend, Unreachable>, io::Error> {
        let name = &service.config.name;
        let stream = match timeout(CONNECT_TIMEOUT, TcpStream::connect(choice.address)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::warn!(service = %name, backend = %choice.address, "cannot connect: {e}");
                return Ok(Err(Unreachable));
            }
            Err(_) => {
                tracing::warn!(service = %name, backend = %choice.address, "no answer to connect in {CONNECT_TIMEOUT:?}");
                return Ok(Err(Unreachable));
            }
        };
        stream.set_nodelay(true)?;
        shared.stats.opened(choice.backend_id);
        let backend = Backend::adopt(
            &shared.stats,
            choice.backend_id,
            choice.address,
            origin,
            stream,
        );
        if service.config.send_proxy_protocol {
            let vip = service.config.vip;
            backend
                .stream
                .try_write_all(&header::encode_v2(origin, vip))
                .await?;
        }
        if choice.routed_by == RoutedBy::Client
            && let Err(e) = shared
                .affinity
                .remember(service, origin.ip(), choice.backend_id)
        {
            tracing::warn!(service = %name, "cannot record the client's affinity: {e}");
        }
        Ok(Ok(backend))
    }

    /// A connection already open (and counted: see
    /// [`ProxyStats::resumed`] for one a previous process opened).
    pub fn adopt(
        stats: &Arc<ProxyStats>,
        id: u32,
        address: SocketAddr,
        origin: SocketAddr,
        stream: TcpStream,
    ) -> Self {
        Backend {
            id,
            address,
            _open: Open {
                id,
                stats: Arc::clone(stats),
            },
            origin,
            routed_origin: None,
            last_used: Instant::now(),
            remembered: Instant::now(),
            stream,
        }
    }

    /// Can the next request go on this connection? Not once the backend
    /// has closed it (an idle keep-alive connection's usual end), nor if
    /// it sent bytes nobody asked for.
    pub fn still_open(&self) -> bool {
        // Backends close idle keep-alive connections after seconds (Node
        // after 5 s): one used within the last second needs no probe.
        self.last_used.elapsed() < KEEPALIVE_TRUSTED || self.idle_and_open()
    }

    /// Neither closed by the backend nor holding bytes nobody asked for:
    /// what a connection from the pool, about to serve another client,
    /// must be (one receive call, which finds nothing to read).
    pub fn idle_and_open(&self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// `write_all` and `read_buf` on a shared reference: tokio's need `&mut`,
/// which the splice paths (which only need `&`) would otherwise have to
/// give up.
pub trait SharedIo {
    async fn try_write_all(&self, bytes: &[u8]) -> io::Result<()>;
    async fn read_some(&self, buf: &mut Vec<u8>) -> io::Result<usize>;
}

impl SharedIo for TcpStream {
    async fn try_write_all(&self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            self.writable().await?;
            match self.try_write(bytes) {
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn read_some(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        buf.reserve(READ_CHUNK);
        loop {
            self.readable().await?;
            let spare = buf.spare_capacity_mut();
            let room = spare.len();
            let mut read = 0;
            // A read that leaves room in `buf` emptied the socket's receive
            // queue: tokio is told `WouldBlock` so that it forgets the
            // socket's readiness, and the next read waits for new bytes
            // rather than making a call that finds none (HAProxy does the
            // same). That costs nothing it needs: bytes that arrive meanwhile
            // raise a new readiness event, which tokio does not clear, and
            // an end of stream stays readable.
            let result = self.try_io(Interest::READABLE, || {
                // SAFETY: recv(2) writes at most `room` bytes into the
                // spare capacity it is given.
                let n = unsafe { libc::recv(self.as_raw_fd(), spare.as_mut_ptr().cast(), room, 0) };
                read = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
                match read {
                    n if n > 0 && n < room => Err(io::ErrorKind::WouldBlock.into()),
                    n => Ok(n),
                }
            });
            match result {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && read == 0 => continue,
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                _ => {}
            }
            // SAFETY: recv(2) initialised the first `read` spare bytes.
            unsafe { buf.set_len(buf.len() + read) };
            return Ok(read);
        }
    }
}
