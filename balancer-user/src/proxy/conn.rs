//! One client connection to a daemon-terminated service, from accept to
//! close:
//!
//! 1. a source outside `trusted_proxies` is refused when the service takes
//!    the client's address from a proxy;
//! 2. the PROXY header is read (`client_address = "proxy-protocol"`);
//! 3. for HTTP services (`x-forwarded-for`, or `affinity = "sid"`) each
//!    request head is read and routed on its own, so requests of several
//!    sessions that a CDN pools on one connection each reach their
//!    backend; a connection to a backend is kept while consecutive
//!    requests go there. Bodies with a length are spliced, chunked ones
//!    copied (they must be walked to find their end). A `101 Switching
//!    Protocols` turns the connection into a spliced tunnel;
//! 4. otherwise the connection is tunnelled to the client's backend as a
//!    whole.
//!
//! Bad input closes this connection only, counted by reason (an HTTP
//! client gets a status line first).

use std::{
    io,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::{Instant, timeout, timeout_at},
};

use super::{
    Shared,
    header::{self, Parsed, ProxyHeader},
    http::{self, Body, ChunkedFraming, HeadError},
    route::{self, Choice, SidRoute},
    splice::{self, Pipe},
    stats::BadInput,
};
use crate::{
    config::{AffinityMode, ClientAddress},
    state::ServiceState,
};

/// How long a keep-alive connection may sit between requests (nginx's
/// `keepalive_timeout` default); once a request's first byte arrives, the
/// rest of its head must come within `header_timeout`.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(75);
/// How long a backend may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a backend may take to start its answer. Long-polling requests
/// are held by the backend for up to Socket.IO's `pingInterval` (25 s).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(120);
/// Bytes read at a time into a head buffer.
const READ_CHUNK: usize = 4096;

/// Why a connection ended early.
#[derive(Debug)]
enum Closed {
    /// The client's input, counted; `answer` goes to an HTTP client first.
    Refused(BadInput, Option<&'static str>),
    /// No backend to send it to, or the backend failed before answering:
    /// the HTTP client gets `answer`.
    Unserved(&'static str),
    /// Either side reset or ended the connection mid-exchange.
    Io(io::Error),
}

impl From<io::Error> for Closed {
    fn from(e: io::Error) -> Self {
        Closed::Io(e)
    }
}

const BAD_REQUEST: &str = "400 Bad Request";
const TIMEOUT: &str = "408 Request Timeout";
const TOO_LARGE: &str = "431 Request Header Fields Too Large";
const BAD_GATEWAY: &str = "502 Bad Gateway";
const UNAVAILABLE: &str = "503 Service Unavailable";

/// Serve one accepted connection of service `name`.
pub async fn serve(shared: Arc<Shared>, name: Arc<str>, mut client: TcpStream, peer: SocketAddr) {
    let ended = handle(&shared, &name, &mut client, peer).await;
    let answer = match ended {
        Ok(()) => None,
        Err(Closed::Io(e)) => {
            tracing::debug!(service = %name, %peer, "connection ended: {e}");
            None
        }
        Err(Closed::Refused(reason, answer)) => {
            shared.stats.bad_input(&name, reason);
            tracing::debug!(service = %name, %peer, reason = reason.as_str(), "connection refused");
            answer
        }
        Err(Closed::Unserved(answer)) => Some(answer),
    };
    if let Some(status) = answer {
        let response =
            format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let _ = client.write_all(response.as_bytes()).await;
    }
}

async fn handle(
    shared: &Shared,
    name: &str,
    client: &mut TcpStream,
    peer: SocketAddr,
) -> Result<(), Closed> {
    let Some(service) = shared.service(name) else {
        return Ok(());
    };
    let config = &service.config;
    if config.client_address != ClientAddress::Packet && !trusted(&service, peer.ip()) {
        return Err(Closed::Refused(BadInput::UntrustedSource, None));
    }
    let mut buf = Vec::with_capacity(READ_CHUNK);
    let deadline = Instant::now() + config.header_timeout;
    let mut origin = peer;
    if config.client_address == ClientAddress::ProxyProtocol
        && let Some(source) = read_proxy_header(client, &mut buf, deadline).await?
    {
        origin = source;
    }
    let http = config.client_address == ClientAddress::XForwardedFor
        || config.affinity == AffinityMode::Sid;
    if http {
        let heads = Heads {
            first: deadline,
            timeout: config.header_timeout,
        };
        return requests(shared, name, client, (peer, origin), buf, heads).await;
    }
    let choice = route::choose(&service, SidRoute::None, || {
        shared.affinity.by_client(&service, origin)
    })
    .ok_or(Closed::Unserved(UNAVAILABLE))?;
    shared.stats.request(name, choice.routed_by);
    let backend = Backend::connect(shared, &service, choice, origin).await?;
    backend.stream.try_write_all(&buf).await?;
    splice::tunnel(client, &backend.stream).await?;
    Ok(())
}

fn trusted(service: &ServiceState, ip: IpAddr) -> bool {
    service
        .config
        .trusted_proxies
        .iter()
        .any(|c| c.contains(ip))
}

/// Read into `buf` until `stream` sends more, ends (0), or `deadline`
/// passes (a refusal, counted as a header timeout).
async fn read_more(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
    answer: Option<&'static str>,
) -> Result<usize, Closed> {
    buf.reserve(READ_CHUNK);
    match timeout_at(deadline, stream.read_buf(buf)).await {
        Ok(read) => Ok(read?),
        Err(_) => Err(Closed::Refused(BadInput::HeaderTimeout, answer)),
    }
}

/// The PROXY header's source address (`None` for a LOCAL header, whose
/// connection speaks for itself); the bytes after it stay in `buf`.
async fn read_proxy_header(
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> Result<Option<SocketAddr>, Closed> {
    loop {
        match header::parse(buf) {
            Ok(Parsed::Done { value, len }) => {
                buf.drain(..len);
                return Ok(match value {
                    ProxyHeader::Proxied { source, .. } => Some(source),
                    ProxyHeader::Local => None,
                });
            }
            Ok(Parsed::Incomplete) => {
                if read_more(client, buf, deadline, None).await? == 0 {
                    return Err(Closed::Refused(BadInput::BadProxyHeader, None));
                }
            }
            Err(_) => return Err(Closed::Refused(BadInput::BadProxyHeader, None)),
        }
    }
}

/// An open connection to a backend, counted open until dropped.
struct Backend {
    id: u32,
    stream: TcpStream,
    shared_stats: Arc<super::stats::ProxyStats>,
}

impl Backend {
    /// Connect to `choice`'s backend for `origin` (the client, as the
    /// service knows it): PROXY v2 first when configured, and the client's
    /// affinity recorded once the backend has accepted.
    async fn connect(
        shared: &Shared,
        service: &ServiceState,
        choice: Choice,
        origin: SocketAddr,
    ) -> Result<Backend, Closed> {
        let stream = match timeout(CONNECT_TIMEOUT, TcpStream::connect(choice.address)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::warn!(service = %service.config.name, backend = %choice.address, "cannot connect: {e}");
                return Err(Closed::Unserved(BAD_GATEWAY));
            }
            Err(_) => {
                tracing::warn!(service = %service.config.name, backend = %choice.address, "no answer to connect in {CONNECT_TIMEOUT:?}");
                return Err(Closed::Unserved(BAD_GATEWAY));
            }
        };
        stream.set_nodelay(true)?;
        shared.stats.opened(choice.backend_id);
        let backend = Backend {
            id: choice.backend_id,
            stream,
            shared_stats: Arc::clone(&shared.stats),
        };
        if service.config.send_proxy_protocol {
            let vip = service.config.vip;
            backend
                .stream
                .try_write_all(&header::encode_v2(origin, vip))
                .await?;
        }
        if let Err(e) = shared
            .affinity
            .remember(service, origin.ip(), choice.backend_id)
        {
            tracing::warn!(service = %service.config.name, "cannot record the client's affinity: {e}");
        }
        Ok(backend)
    }
}

impl Backend {
    /// Can the next request go on this connection? Not once the backend
    /// has closed it (an idle keep-alive connection's usual end), nor if
    /// it sent bytes nobody asked for.
    fn still_open(&self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.shared_stats.closed(self.id);
    }
}

/// `write_all` on a shared reference: tokio's needs `&mut`, which the
/// splice paths (which only need `&`) would otherwise have to give up.
trait WriteAll {
    async fn try_write_all(&self, bytes: &[u8]) -> io::Result<()>;
}

impl WriteAll for TcpStream {
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
}

/// When request heads must be complete: the first by `first` (counted
/// from accept), each later one `timeout` after its first byte.
struct Heads {
    first: Instant,
    timeout: Duration,
}

/// The HTTP services' loop: one request at a time, each routed on its
/// own, until either side closes or a `101` makes it a tunnel. `(peer,
/// origin)`: the connection's source, and the client it speaks for (its
/// PROXY header's, or the peer).
async fn requests(
    shared: &Shared,
    name: &str,
    client: &mut TcpStream,
    (peer, origin): (SocketAddr, SocketAddr),
    mut buf: Vec<u8>,
    heads: Heads,
) -> Result<(), Closed> {
    let mut backend: Option<Backend> = None;
    let mut pipes = (Pipe::new()?, Pipe::new()?);
    let mut deadline = Some(heads.first);
    loop {
        let Some(head) = read_request(client, &mut buf, &mut deadline, heads.timeout).await? else {
            return Ok(());
        };
        let Some(service) = shared.service(name) else {
            return Err(Closed::Unserved(UNAVAILABLE));
        };
        let origin = match service.config.client_address {
            ClientAddress::XForwardedFor => SocketAddr::new(
                http::client_address(&head.forwarded_for, peer.ip(), |ip| trusted(&service, ip)),
                origin.port(),
            ),
            _ => origin,
        };
        let sid = match service.config.affinity {
            AffinityMode::Sid => route::by_sid(&service, head.sid.as_deref()),
            _ => SidRoute::None,
        };
        if sid == SidRoute::Unknown {
            shared.stats.bad_input(name, BadInput::UnknownSid);
        }
        let choice = route::choose(&service, sid, || {
            shared.affinity.by_client(&service, origin)
        })
        .ok_or(Closed::Unserved(UNAVAILABLE))?;
        shared.stats.request(name, choice.routed_by);
        let to = match backend.take() {
            Some(b) if b.id == choice.backend_id && b.still_open() => b,
            _ => Backend::connect(shared, &service, choice, origin).await?,
        };
        let to = backend.insert(to);
        to.stream.try_write_all(&buf[..head.len]).await?;
        buf.drain(..head.len);
        send_body(client, &to.stream, &mut buf, head.body, &mut pipes.0).await?;
        let response =
            relay_response(&to.stream, client, head.method_is_head, &mut pipes.1).await?;
        if response.status == 101 {
            // What the client sent after its upgrade request (its first
            // frames) goes first, then both directions are spliced.
            to.stream.try_write_all(&buf).await?;
            splice::tunnel(client, &to.stream).await?;
            return Ok(());
        }
        if response.close || head.close {
            return Ok(());
        }
        deadline = None;
    }
}

/// The next request head, read into `buf`; `None` when the client closed
/// between requests. `deadline` is the head's (the first request's runs
/// from accept); without one, the connection may idle for
/// `KEEPALIVE_IDLE`, and the head's `header_timeout` starts at its first
/// byte.
async fn read_request(
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: &mut Option<Instant>,
    header_timeout: Duration,
) -> Result<Option<http::RequestHead>, Closed> {
    loop {
        match http::parse_request(buf) {
            Ok(Parsed::Done { value, .. }) => return Ok(Some(value)),
            Ok(Parsed::Incomplete) => {}
            Err(HeadError::TooLarge) => {
                return Err(Closed::Refused(BadInput::HeadTooLarge, Some(TOO_LARGE)));
            }
            Err(_) => return Err(Closed::Refused(BadInput::BadRequest, Some(BAD_REQUEST))),
        }
        let read = match *deadline {
            Some(at) => read_more(client, buf, at, Some(TIMEOUT)).await?,
            None => match timeout(KEEPALIVE_IDLE, client.read_buf(buf)).await {
                Ok(read) => read?,
                // Idle between requests: closed quietly, as servers do.
                Err(_) => return Ok(None),
            },
        };
        if read == 0 {
            return match buf.is_empty() {
                true => Ok(None),
                false => Err(Closed::Refused(BadInput::BadRequest, None)),
            };
        }
        if deadline.is_none() {
            *deadline = Some(Instant::now() + header_timeout);
        }
    }
}

/// Send a body of `framing` from `from` (whose first bytes may be in `buf`
/// already) to `to`; bytes after it stay in `buf`.
async fn send_body(
    from: &mut TcpStream,
    to: &TcpStream,
    buf: &mut Vec<u8>,
    framing: Body,
    pipe: &mut Pipe,
) -> Result<(), Closed> {
    match framing {
        Body::None => Ok(()),
        Body::Length(n) => {
            let buffered = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            to.try_write_all(&buf[..buffered]).await?;
            buf.drain(..buffered);
            let rest = n - buffered as u64;
            if splice::forward(from, to, pipe, Some(rest)).await? < rest {
                return Err(early_end());
            }
            Ok(())
        }
        Body::Chunked => copy_chunked(from, to, buf).await,
        Body::UntilClose => {
            to.try_write_all(buf).await?;
            buf.clear();
            splice::forward(from, to, pipe, None).await?;
            Ok(())
        }
    }
}

fn early_end() -> Closed {
    Closed::Io(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the peer ended the connection inside a body",
    ))
}

/// A chunked body, walked to find its end and copied as it is.
async fn copy_chunked(
    from: &mut TcpStream,
    to: &TcpStream,
    buf: &mut Vec<u8>,
) -> Result<(), Closed> {
    let mut framing = ChunkedFraming::new();
    loop {
        let body = framing
            .feed(buf)
            .map_err(|_| Closed::Refused(BadInput::BadRequest, None))?;
        to.try_write_all(&buf[..body]).await?;
        buf.drain(..body);
        if framing.done() {
            return Ok(());
        }
        buf.reserve(READ_CHUNK);
        if from.read_buf(buf).await? == 0 {
            return Err(early_end());
        }
    }
}

/// Read the backend's answer and pass it to the client: interim `1xx`
/// heads, the final head and its body (a `101`'s first bytes included).
async fn relay_response(
    backend: &TcpStream,
    client: &mut TcpStream,
    request_is_head: bool,
    pipe: &mut Pipe,
) -> Result<http::ResponseHead, Closed> {
    let mut rbuf = Vec::with_capacity(READ_CHUNK);
    let mut answered = false;
    loop {
        let head = loop {
            match http::parse_response(&rbuf, request_is_head) {
                Ok(Parsed::Done { value, .. }) => break value,
                Ok(Parsed::Incomplete) => {}
                Err(e) => {
                    tracing::warn!("a backend's response head is not HTTP: {e}");
                    return Err(if answered {
                        early_end()
                    } else {
                        Closed::Unserved(BAD_GATEWAY)
                    });
                }
            }
            rbuf.reserve(READ_CHUNK);
            let read = timeout(RESPONSE_TIMEOUT, read_shared(backend, &mut rbuf)).await;
            match read {
                Ok(Ok(0)) | Err(_) if !answered => return Err(Closed::Unserved(BAD_GATEWAY)),
                Ok(Ok(0)) | Err(_) => return Err(early_end()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
            }
        };
        client.write_all(&rbuf[..head.len]).await?;
        rbuf.drain(..head.len);
        answered = true;
        if (100..200).contains(&head.status) && head.status != 101 {
            continue;
        }
        if head.status == 101 {
            client.write_all(&rbuf).await?;
            return Ok(head);
        }
        match head.body {
            Body::None => {}
            Body::Length(n) => {
                let buffered = rbuf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
                client.write_all(&rbuf[..buffered]).await?;
                let rest = n - buffered as u64;
                if splice::forward(backend, client, pipe, Some(rest)).await? < rest {
                    return Err(early_end());
                }
            }
            Body::Chunked => {
                let mut framing = ChunkedFraming::new();
                loop {
                    let body = framing.feed(&rbuf).map_err(|e| {
                        tracing::warn!("a backend's chunked body is malformed: {e}");
                        early_end()
                    })?;
                    client.write_all(&rbuf[..body]).await?;
                    rbuf.drain(..body);
                    if framing.done() {
                        break;
                    }
                    rbuf.reserve(READ_CHUNK);
                    if read_shared(backend, &mut rbuf).await? == 0 {
                        return Err(early_end());
                    }
                }
            }
            Body::UntilClose => {
                client.write_all(&rbuf).await?;
                splice::forward(backend, client, pipe, None).await?;
            }
        }
        return Ok(head);
    }
}

/// `read_buf` on a shared reference, as [`WriteAll`] writes.
async fn read_shared(stream: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    loop {
        stream.readable().await?;
        match stream.try_read_buf(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}
