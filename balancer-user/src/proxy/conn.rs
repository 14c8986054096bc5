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
    stats::{BadInput, RoutedBy},
};
use crate::{
    config::{AffinityMode, ClientAddress},
    state::ServiceState,
};

/// How long a keep-alive connection may sit between requests (nginx's
/// `keepalive_timeout` default); once a request's first byte arrives, the
/// rest of its head must come within `header_timeout`.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(75);
/// A backend connection used this recently is taken to be open without a
/// probe.
const KEEPALIVE_TRUSTED: Duration = Duration::from_secs(1);
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
    tunnel(shared, &service, client, &backend, Some(origin)).await
}

/// Splice `client` and `backend` both ways until both end. Meanwhile the
/// affinity of `routed_origin` (the client whose address chose this
/// backend) is refreshed every half affinity timeout, as the kernel does
/// for its long flows: a WebSocket open for hours keeps its client's
/// backend for the reconnect after it.
async fn tunnel(
    shared: &Shared,
    service: &ServiceState,
    client: &TcpStream,
    backend: &Backend,
    routed_origin: Option<SocketAddr>,
) -> Result<(), Closed> {
    let refresh = async {
        let Some(origin) = routed_origin else {
            return std::future::pending().await;
        };
        let period = service.config.affinity_timeout / 2;
        loop {
            tokio::time::sleep(period).await;
            if let Err(e) = shared.affinity.remember(service, origin.ip(), backend.id) {
                tracing::warn!(service = %service.config.name, "cannot refresh the client's affinity: {e}");
            }
        }
    };
    tokio::select! {
        ended = splice::tunnel(client, &backend.stream) => ended.map(drop).map_err(Closed::Io),
        never = refresh => never,
    }
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
    /// The client it was opened for: the one its PROXY header names.
    origin: SocketAddr,
    /// The client whose address chose it for the last request, if its
    /// address did (not a sid): that client's next request stays.
    routed_origin: Option<SocketAddr>,
    /// When its last response ended.
    last_used: Instant,
    /// When its client's affinity entry was last written.
    remembered: Instant,
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
            origin,
            routed_origin: None,
            last_used: Instant::now(),
            remembered: Instant::now(),
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
        // Backends close idle keep-alive connections after seconds (Node
        // after 5 s): one used within the last second needs no probe.
        if self.last_used.elapsed() < KEEPALIVE_TRUSTED {
            return true;
        }
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
    let mut pipes = (Pipe::default(), Pipe::default());
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
        // Like a kernel flow, a connection keeps the backend it chose for
        // its client while that backend is up; only a request of another
        // client (a CDN's pooled connection) asks the affinity map again.
        let kept = backend
            .as_ref()
            .filter(|b| b.routed_origin == Some(origin))
            .filter(|b| service.backend_by_id(b.id).is_some_and(|s| s.up))
            .map(|b| b.id);
        let choice = route::choose(&service, sid, || {
            kept.or_else(|| shared.affinity.by_client(&service, origin))
        })
        .ok_or(Closed::Unserved(UNAVAILABLE))?;
        shared.stats.request(name, choice.routed_by);
        // A connection whose PROXY header named another client (a CDN
        // pools many on one) is not reused: the backend would take this
        // request for that client's.
        let reusable = |b: &Backend| {
            b.id == choice.backend_id
                && (!service.config.send_proxy_protocol || b.origin == origin)
                && b.still_open()
        };
        let mut to = match backend.take() {
            Some(b) if reusable(&b) => b,
            _ => Backend::connect(shared, &service, choice, origin).await?,
        };
        to.routed_origin = (choice.routed_by == RoutedBy::Client).then_some(origin);
        if to.routed_origin.is_some()
            && to.remembered.elapsed() > service.config.affinity_timeout / 2
        {
            // A keep-alive connection older than half the affinity timeout
            // refreshes its client's entry, as a long kernel flow does.
            if let Err(e) = shared.affinity.remember(&service, origin.ip(), to.id) {
                tracing::warn!(service = %name, "cannot refresh the client's affinity: {e}");
            }
            to.remembered = Instant::now();
        }
        let to = backend.insert(to);
        relay_message(
            client,
            &to.stream,
            &mut buf,
            head.len,
            head.body,
            &mut pipes.0,
        )
        .await?;
        let response =
            relay_response(&to.stream, client, head.method_is_head, &mut pipes.1).await?;
        to.last_used = Instant::now();
        if response.status == 101 {
            // What the client sent after its upgrade request (its first
            // frames) goes first, then both directions are spliced.
            to.stream.try_write_all(&buf).await?;
            return tunnel(shared, &service, client, to, to.routed_origin).await;
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

/// Pass one message from `from` to `to`: its head (`head_len` bytes at
/// the start of `buf`) and its body of `framing`. What `buf` holds of it
/// goes in one write, so a small message is one packet; the rest of a
/// body with a length, or one that runs until close, is spliced; a chunked
/// body is walked to find its end and copied. Bytes after the message stay
/// in `buf`.
async fn relay_message(
    from: &TcpStream,
    to: &TcpStream,
    buf: &mut Vec<u8>,
    head_len: usize,
    framing: Body,
    pipe: &mut Pipe,
) -> Result<(), Closed> {
    let in_buf = |limit: u64| {
        head_len + (buf.len() - head_len).min(usize::try_from(limit).unwrap_or(usize::MAX))
    };
    match framing {
        Body::None => {
            to.try_write_all(&buf[..head_len]).await?;
            buf.drain(..head_len);
        }
        Body::Length(n) => {
            let sent = in_buf(n);
            to.try_write_all(&buf[..sent]).await?;
            buf.drain(..sent);
            let rest = n - (sent - head_len) as u64;
            if splice::forward(from, to, pipe, Some(rest)).await? < rest {
                return Err(early_end());
            }
        }
        Body::UntilClose => {
            to.try_write_all(buf).await?;
            buf.clear();
            splice::forward(from, to, pipe, None).await?;
        }
        Body::Chunked => {
            to.try_write_all(&buf[..head_len]).await?;
            buf.drain(..head_len);
            let mut framing = ChunkedFraming::new();
            loop {
                let body = framing.feed(buf).map_err(|e| {
                    tracing::debug!("a chunked body is malformed: {e}");
                    early_end()
                })?;
                to.try_write_all(&buf[..body]).await?;
                buf.drain(..body);
                if framing.done() {
                    break;
                }
                buf.reserve(READ_CHUNK);
                if read_shared(from, buf).await? == 0 {
                    return Err(early_end());
                }
            }
        }
    }
    Ok(())
}

fn early_end() -> Closed {
    Closed::Io(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the peer ended the connection inside a body",
    ))
}

/// Read the backend's answer and pass it to the client: interim `1xx`
/// heads, then the final head and its body. For a `101`, what the backend
/// sent after its head (its first frames) is passed on too.
async fn relay_response(
    backend: &TcpStream,
    client: &TcpStream,
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
        answered = true;
        if head.status == 101 {
            client.try_write_all(&rbuf).await?;
            return Ok(head);
        }
        relay_message(backend, client, &mut rbuf, head.len, head.body, pipe).await?;
        if !(100..200).contains(&head.status) {
            return Ok(head);
        }
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
