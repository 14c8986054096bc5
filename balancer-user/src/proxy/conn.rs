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
//!    requests go there, and otherwise taken from, and given back to, the
//!    daemon's [`super::pool`] of idle ones. Bodies with a length are spliced, chunked ones
//!    copied (they must be walked to find their end). A `101 Switching
//!    Protocols` turns the connection into a spliced tunnel;
//! 4. otherwise the connection is tunnelled to the client's backend as a
//!    whole.
//!
//! Bad input closes this connection only, counted by reason (an HTTP
//! client gets a status line first). At the points where nothing is half
//! sent (waiting for a request head, for a response head, or tunnelling)
//! a connection parks when the daemon restarts in place
//! ([`super::handover`]), and the next process resumes it there.

use std::{
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    os::fd::OwnedFd,
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::AsyncWriteExt,
    net::TcpStream,
    time::{Instant, timeout, timeout_at},
};

use super::{
    Running, Shared,
    backend::{Backend, READ_CHUNK, SharedIo},
    handover::{ParkedBackend, ParkedConn, ParkedStep},
    header::{self, Parsed, ProxyHeader},
    http::{self, Body, ChunkedFraming, HeadError},
    route::{self, SidRoute},
    splice::{self, Pipe},
    stats::{BadInput, PoolEvent, RoutedBy},
};
use crate::{
    config::{AffinityMode, ClientAddress},
    state::ServiceState,
};

/// How long a keep-alive connection may sit between requests (nginx's
/// `keepalive_timeout` default); once a request's first byte arrives, the
/// rest of its head must come within `header_timeout`.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(75);
/// How long a backend may take to start its answer. Long-polling requests
/// are held by the backend for up to Socket.IO's `pingInterval` (25 s).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a connection ended early.
#[derive(Debug)]
enum Closed {
    /// The client's input, counted; `answer` goes to an HTTP client first.
    Refused(BadInput, Option<&'static str>),
    /// No backend to send it to, or the backend failed before answering:
    /// the HTTP client gets `answer`.
    Unserved(&'static str),
    /// The same for a connection that speaks no HTTP: closed, no answer.
    UnservedQuietly,
    /// Either side reset or ended the connection mid-exchange.
    Io(io::Error),
    /// The backend ended or reset the connection before any byte of its
    /// answer: the request may be sent again (`Conn::resend`), else the
    /// HTTP client gets a 502.
    NoAnswer,
    /// Put aside at a safe point for an in-place restart: [`Conn`] and
    /// [`Step`] say where it stands.
    Park,
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

/// What a connection waits for next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// The trust check and the PROXY header, then the first request (or,
    /// without HTTP, the tunnel).
    Start,
    /// The next request head; `deadline` is the head's (`None` while the
    /// connection idles between requests).
    Request {
        deadline: Option<Instant>,
    },
    /// The response to a request sent in full.
    Response {
        request_is_head: bool,
        request_close: bool,
    },
    Tunnel,
}

/// A connection's state between its steps: what parks and resumes.
struct Conn {
    peer: SocketAddr,
    /// The client it speaks for: the PROXY header's, or the peer.
    origin: SocketAddr,
    /// Client bytes read and not yet passed on.
    buf: Vec<u8>,
    /// Backend bytes read and not yet passed on.
    rbuf: Vec<u8>,
    backend: Option<Backend>,
    /// The backend was asked to keep its connection open after the
    /// request in flight, and the connection carries no client's identity:
    /// once the response ends cleanly, other clients may use it.
    poolable: bool,
    /// The request in flight's head, when it went on a reused connection
    /// and may be sent again (idempotent, no body): if that connection
    /// ends before any answer (the backend closed it as idle just then),
    /// the request goes once more on a new one. Empty otherwise.
    resend: Vec<u8>,
    /// Client → backend, backend → client.
    pipes: [Pipe; 2],
}

/// Serve one accepted connection of service `name` on the proxy thread
/// that runs this (the socket joins its epoll); `running` counts it until
/// it ends or parks.
pub async fn serve(
    shared: Arc<Shared>,
    running: Running,
    name: Arc<str>,
    client: std::net::TcpStream,
    peer: SocketAddr,
) {
    let client = match TcpStream::from_std(client) {
        Ok(client) => client,
        Err(e) => {
            tracing::warn!(service = %name, peer = %peer, "cannot take a connection: {e}");
            return;
        }
    };
    let conn = Conn {
        peer,
        origin: peer,
        buf: Vec::with_capacity(READ_CHUNK),
        rbuf: Vec::new(),
        backend: None,
        poolable: false,
        resend: Vec::new(),
        pipes: [Pipe::default(), Pipe::default()],
    };
    drive(&shared, &name, client, conn, Step::Start).await;
    drop(running);
}

/// Go on with a connection a previous process parked, on the next proxy
/// thread.
pub fn resume(shared: Arc<Shared>, parked: ParkedConn<OwnedFd>) -> anyhow::Result<()> {
    let nonblocking = |fd: OwnedFd| -> io::Result<std::net::TcpStream> {
        let stream = std::net::TcpStream::from(fd);
        stream.set_nonblocking(true)?;
        Ok(stream)
    };
    let client = nonblocking(parked.client)?;
    let backend = match parked.backend {
        Some(b) => {
            let stream = nonblocking(b.fd)?;
            let address = stream.peer_addr()?;
            Some((b.id, b.origin, b.routed_origin, address, stream))
        }
        None => None,
    };
    let [a, b] = parked.pipes;
    let pipes = [Pipe::resume(a), Pipe::resume(b)];
    let (peer, origin, buf, rbuf) = (parked.peer, parked.origin, parked.buf, parked.rbuf);
    let step = match parked.step {
        ParkedStep::Request => Step::Request { deadline: None },
        ParkedStep::Response {
            request_is_head,
            request_close,
        } => Step::Response {
            request_is_head,
            request_close,
        },
        ParkedStep::Tunnel => Step::Tunnel,
    };
    let name: Arc<str> = parked.service.into();
    let running = Running::connection(&shared);
    Arc::clone(&shared).workers.spawn(async move {
        // The sockets join this thread's epoll.
        let adopted = TcpStream::from_std(client).and_then(|client| {
            let backend = match backend {
                Some((id, origin, routed_origin, address, stream)) => {
                    let stream = TcpStream::from_std(stream)?;
                    shared.stats.resumed(id);
                    let mut backend = Backend::adopt(&shared.stats, id, address, origin, stream);
                    backend.routed_origin = routed_origin;
                    Some(backend)
                }
                None => None,
            };
            Ok((client, backend))
        });
        match adopted {
            Ok((client, backend)) => {
                let conn = Conn {
                    peer,
                    origin,
                    buf,
                    rbuf,
                    backend,
                    // Not carried over: a resumed connection is not pooled,
                    // and its request is not sent again.
                    poolable: false,
                    resend: Vec::new(),
                    pipes,
                };
                drive(&shared, &name, client, conn, step).await;
            }
            Err(e) => tracing::warn!(service = %name, peer = %peer, "cannot resume a carried-over connection: {e}"),
        }
        drop(running);
    });
    Ok(())
}

async fn drive(shared: &Shared, name: &str, mut client: TcpStream, mut conn: Conn, step: Step) {
    let mut step = step;
    let ended = run(shared, name, &mut client, &mut conn, &mut step).await;
    let answer = match ended {
        Ok(()) => None,
        Err(Closed::Park) => {
            park(shared, name, client, conn, step);
            return;
        }
        Err(Closed::Io(e)) => {
            tracing::debug!(service = %name, peer = %conn.peer, "connection ended: {e}");
            None
        }
        Err(Closed::Refused(reason, answer)) => {
            shared.stats.bad_input(name, reason);
            tracing::debug!(service = %name, peer = %conn.peer, reason = reason.as_str(), "connection refused");
            answer
        }
        Err(Closed::Unserved(answer)) => Some(answer),
        Err(Closed::NoAnswer) => Some(BAD_GATEWAY),
        Err(Closed::UnservedQuietly) => None,
    };
    if let Some(status) = answer {
        let response =
            format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let _ = client.write_all(response.as_bytes()).await;
    }
}

/// Put the connection aside for the next process.
fn park(shared: &Shared, name: &str, client: TcpStream, conn: Conn, step: Step) {
    let owned = |stream: TcpStream| stream.into_std().map(OwnedFd::from);
    let step = match step {
        Step::Start | Step::Request { .. } => ParkedStep::Request,
        Step::Response {
            request_is_head,
            request_close,
        } => ParkedStep::Response {
            request_is_head,
            request_close,
        },
        Step::Tunnel => ParkedStep::Tunnel,
    };
    // The socket moves to the next process: this one's count of it ends
    // here (dropping `_open`), that one's starts when it resumes.
    let backend = match conn
        .backend
        .map(|b| (b.id, b.origin, b.routed_origin, owned(b.stream)))
    {
        Some((id, origin, routed_origin, Ok(fd))) => Some(ParkedBackend {
            id,
            origin,
            routed_origin,
            fd,
        }),
        Some((_, _, _, Err(e))) => {
            tracing::warn!(service = %name, "cannot park a backend connection: {e}");
            return;
        }
        None => None,
    };
    let client = match owned(client) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(service = %name, "cannot park a connection: {e}");
            return;
        }
    };
    let [a, b] = conn.pipes;
    shared.park_connection(ParkedConn {
        service: name.to_owned(),
        client,
        peer: conn.peer,
        origin: conn.origin,
        buf: conn.buf,
        rbuf: conn.rbuf,
        backend,
        pipes: [a.park(), b.park()],
        step,
    });
}

/// `fut`, unless the daemon asks its connections to park first.
async fn unless_parking<T>(
    shared: &Shared,
    fut: impl Future<Output = Result<T, Closed>>,
) -> Result<T, Closed> {
    let mut parking = shared.parking.subscribe();
    tokio::select! {
        ended = fut => ended,
        _ = parking.wait_for(|p| *p) => Err(Closed::Park),
    }
}

async fn run(
    shared: &Shared,
    name: &str,
    client: &mut TcpStream,
    conn: &mut Conn,
    step: &mut Step,
) -> Result<(), Closed> {
    let Some(service) = shared.service(name) else {
        return Err(Closed::UnservedQuietly);
    };
    let config = &service.config;
    let http = config.client_address == ClientAddress::XForwardedFor
        || config.affinity == AffinityMode::Sid;
    if *step == Step::Start {
        if config.client_address != ClientAddress::Packet && !trusted(&service, conn.peer.ip()) {
            return Err(Closed::Refused(BadInput::UntrustedSource, None));
        }
        let deadline = Instant::now() + config.header_timeout;
        if config.client_address == ClientAddress::ProxyProtocol
            && let Some(source) = read_proxy_header(client, &mut conn.buf, deadline).await?
        {
            conn.origin = source;
        }
        if !http {
            // Not HTTP: nothing is read past the PROXY header, and a
            // failure closes the connection without an HTTP answer.
            let choice = route::choose(&service, SidRoute::None, || {
                shared.affinity.by_client(&service, conn.origin)
            })
            .ok_or(Closed::UnservedQuietly)?;
            shared.stats.request(name, choice.routed_by);
            let mut backend = Backend::connect(shared, &service, choice, conn.origin)
                .await?
                .map_err(|_| Closed::UnservedQuietly)?;
            backend.routed_origin = Some(conn.origin);
            backend.stream.try_write_all(&conn.buf).await?;
            conn.buf.clear();
            conn.backend = Some(backend);
            *step = Step::Tunnel;
        } else {
            *step = Step::Request {
                deadline: Some(deadline),
            };
        }
    }
    loop {
        match *step {
            Step::Start => unreachable!("handled above"),
            Step::Request { deadline } => {
                let header_timeout = config.header_timeout;
                let mut deadline = deadline;
                let head = unless_parking(
                    shared,
                    read_request(client, &mut conn.buf, &mut deadline, header_timeout),
                )
                .await;
                let Some(head) = head? else {
                    give_back(shared, conn);
                    return Ok(());
                };
                // The service as it is now: a reload or a health change
                // since the last request applies to this one.
                let Some(service) = shared.service(name) else {
                    return Err(Closed::Unserved(UNAVAILABLE));
                };
                send_request(shared, &service, client, conn, &head).await?;
                *step = Step::Response {
                    request_is_head: head.method_is_head,
                    request_close: head.close,
                };
            }
            Step::Response {
                request_is_head,
                request_close,
            } => {
                let mut answered = false;
                // Interim `1xx` heads pass on, then the final one and its
                // body. Only waiting for a head may park: a body in flight
                // finishes first.
                let response = loop {
                    let to = conn.backend.as_ref().expect("a request went to a backend");
                    let read = unless_parking(
                        shared,
                        read_response_head(&to.stream, &mut conn.rbuf, request_is_head, answered),
                    )
                    .await;
                    let mut head = match read {
                        Err(Closed::NoAnswer) if !conn.resend.is_empty() => {
                            send_again(shared, &service, conn).await?;
                            continue;
                        }
                        read => read?,
                    };
                    conn.resend.clear();
                    answered = true;
                    let to = conn.backend.as_ref().expect("a request went to a backend");
                    if head.status == 101 {
                        // The backend's first frames, if any, go with it.
                        client.try_write_all(&conn.rbuf).await?;
                        conn.rbuf.clear();
                        break head;
                    }
                    let last = !(100..200).contains(&head.status);
                    if last && request_close && !head.close {
                        // The backend was asked to keep the connection;
                        // the client is told that this one closes.
                        head.len = http::add_close(&mut conn.rbuf, head.len);
                    }
                    relay_message(
                        &to.stream,
                        client,
                        &mut conn.rbuf,
                        head.len,
                        head.body,
                        &mut conn.pipes[1],
                    )
                    .await?;
                    if last {
                        break head;
                    }
                };
                let to = conn.backend.as_mut().expect("a request went to a backend");
                to.last_used = Instant::now();
                if response.status == 101 {
                    // What the client sent after its upgrade request (its
                    // first frames) goes first, then both ways are spliced.
                    to.stream.try_write_all(&conn.buf).await?;
                    conn.buf.clear();
                    *step = Step::Tunnel;
                    continue;
                }
                if response.close {
                    return Ok(());
                }
                if request_close {
                    give_back(shared, conn);
                    return Ok(());
                }
                *step = Step::Request { deadline: None };
            }
            Step::Tunnel => {
                let to = conn.backend.as_ref().expect("a tunnel has a backend");
                return unless_parking(
                    shared,
                    tunnel(shared, &service, client, to, &mut conn.pipes),
                )
                .await;
            }
        }
    }
}

/// Route one request (its head parsed, at the start of `conn.buf`) and
/// pass it, body included, to its backend.
async fn send_request(
    shared: &Shared,
    service: &ServiceState,
    client: &TcpStream,
    conn: &mut Conn,
    head: &http::RequestHead,
) -> Result<(), Closed> {
    let name = service.config.name.as_str();
    let origin = match service.config.client_address {
        ClientAddress::XForwardedFor => SocketAddr::new(
            http::client_address(&head.forwarded_for, conn.peer.ip(), |ip| {
                trusted(service, ip)
            }),
            conn.origin.port(),
        ),
        _ => conn.origin,
    };
    let sid = match service.config.affinity {
        AffinityMode::Sid => route::by_sid(service, head.sid.as_deref()),
        _ => SidRoute::None,
    };
    if sid == SidRoute::Unknown {
        shared.stats.bad_input(name, BadInput::UnknownSid);
    }
    // Like a kernel flow, a connection keeps the backend it chose for its
    // client while that backend is up; only a request of another client (a
    // CDN's pooled connection) asks the affinity map again.
    let kept = conn
        .backend
        .as_ref()
        .filter(|b| b.routed_origin == Some(origin))
        .filter(|b| service.backend_by_id(b.id).is_some_and(|s| s.up))
        .map(|b| b.id);
    let choice = route::choose(service, sid, || {
        kept.or_else(|| shared.affinity.by_client(service, origin))
    })
    .ok_or(Closed::Unserved(UNAVAILABLE))?;
    shared.stats.request(name, choice.routed_by);
    let spp = service.config.send_proxy_protocol;
    // A client's `close` is not passed on, so that the backend connection
    // can serve others after it (HTTP/1.1 only: an HTTP/1.0 request would
    // need a keep-alive the backend may not speak; an upgrade becomes a
    // tunnel, never pooled).
    let mut head_len = head.len;
    let rewrite = head.close && head.http11 && !head.upgrade && !spp;
    if rewrite {
        head_len = http::drop_close(&mut conn.buf, head.len);
    }
    let retryable = head.idempotent && head.body == Body::None;
    // A connection kept from the last request: reused if it goes to this
    // backend, unless its PROXY header named another client (a CDN pools
    // many on one: the backend would take this request for that
    // client's); otherwise pooled for others.
    let kept = match conn.backend.take() {
        Some(b) if b.id == choice.backend_id && (!spp || b.origin == origin) => {
            b.still_open().then_some(b)
        }
        Some(b) => {
            give_back_backend(shared, conn, b);
            None
        }
        None => None,
    };
    if kept.is_none() {
        // Bytes the last backend sent unasked are not this one's.
        conn.rbuf.clear();
    }
    let pooled = || {
        let b = shared.pool.take(choice.backend_id, choice.address)?;
        shared.stats.pool(name, PoolEvent::Reused);
        Some(b)
    };
    // A pooled connection only for a request that may be sent again.
    let reused = kept.or_else(|| (retryable && !spp).then(pooled).flatten());
    let fresh = reused.is_none();
    let mut to = match reused {
        Some(b) => b,
        None => Backend::connect(shared, service, choice, origin)
            .await?
            .map_err(|_| Closed::Unserved(BAD_GATEWAY))?,
    };
    // The client it now serves (the same one when its PROXY header named
    // it): a new connection for this request speaks for it.
    to.origin = origin;
    let previous = to.routed_origin;
    to.routed_origin = (choice.routed_by == RoutedBy::Client).then_some(origin);
    let stale = to.remembered.elapsed() > service.config.affinity_timeout / 2;
    if !fresh && to.routed_origin.is_some() && (stale || previous != to.routed_origin) {
        // A connection now used for another client (from the pool, or a
        // CDN's), or a keep-alive one older than half the affinity
        // timeout (as a long kernel flow), writes the client's entry.
        if let Err(e) = shared.affinity.remember(service, origin.ip(), to.id) {
            tracing::warn!(service = %name, "cannot refresh the client's affinity: {e}");
        }
        to.remembered = Instant::now();
    }
    conn.poolable = !spp && (!head.close || rewrite);
    let to = conn.backend.insert(to);
    conn.resend.clear();
    if fresh || !retryable {
        return relay_message(
            client,
            &to.stream,
            &mut conn.buf,
            head_len,
            head.body,
            &mut conn.pipes[0],
        )
        .await;
    }
    // On a reused connection, a request that may be sent again is kept
    // until its answer starts.
    conn.resend.extend_from_slice(&conn.buf[..head_len]);
    conn.buf.drain(..head_len);
    if to.stream.try_write_all(&conn.resend).await.is_err() {
        send_again(shared, service, conn).await?;
    }
    Ok(())
}

/// Send the request in `conn.resend` once more, on a new connection to the
/// same backend: the reused one it went on ended before any answer.
async fn send_again(
    shared: &Shared,
    service: &ServiceState,
    conn: &mut Conn,
) -> Result<(), Closed> {
    let old = conn.backend.take().expect("a request went to a backend");
    shared.stats.pool(&service.config.name, PoolEvent::Retried);
    tracing::debug!(service = %service.config.name, backend = %old.address, "a reused connection ended before answering: sending the request again");
    let choice = route::Choice {
        backend_id: old.id,
        address: old.address,
        routed_by: match old.routed_origin {
            Some(_) => RoutedBy::Client,
            None => RoutedBy::Sid,
        },
    };
    let mut fresh = Backend::connect(shared, service, choice, old.origin)
        .await?
        .map_err(|_| Closed::Unserved(BAD_GATEWAY))?;
    fresh.routed_origin = old.routed_origin;
    drop(old);
    conn.rbuf.clear();
    let resend = std::mem::take(&mut conn.resend);
    fresh.stream.try_write_all(&resend).await?;
    conn.backend = Some(fresh);
    Ok(())
}

/// Once a client is done with it (it closed, or its next request goes
/// elsewhere), the backend connection goes to the pool if its last
/// exchange left it clean.
fn give_back(shared: &Shared, conn: &mut Conn) {
    if let Some(b) = conn.backend.take() {
        give_back_backend(shared, conn, b);
    }
}

fn give_back_backend(shared: &Shared, conn: &Conn, backend: Backend) {
    if conn.poolable && conn.rbuf.is_empty() {
        shared.pool.put(backend);
    }
}

/// Splice `client` and `backend` both ways until both end. Meanwhile the
/// affinity of the client whose address chose this backend (if one did)
/// is refreshed every half affinity timeout, as the kernel does for its
/// long flows: a WebSocket open for hours keeps its client's backend for
/// the reconnect after it.
async fn tunnel(
    shared: &Shared,
    service: &ServiceState,
    client: &TcpStream,
    backend: &Backend,
    pipes: &mut [Pipe; 2],
) -> Result<(), Closed> {
    let refresh = async {
        let Some(origin) = backend.routed_origin else {
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
        ended = splice::tunnel(client, &backend.stream, pipes) => ended.map(drop).map_err(Closed::Io),
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
    match timeout_at(deadline, stream.read_some(buf)).await {
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
        if deadline.is_none() && !buf.is_empty() {
            *deadline = Some(Instant::now() + header_timeout);
        }
        let read = match *deadline {
            Some(at) => read_more(client, buf, at, Some(TIMEOUT)).await?,
            None => match timeout(KEEPALIVE_IDLE, client.read_some(buf)).await {
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
    let in_buf = |buf: &Vec<u8>, limit: u64| {
        head_len + (buf.len() - head_len).min(usize::try_from(limit).unwrap_or(usize::MAX))
    };
    match framing {
        Body::None => {
            to.try_write_all(&buf[..head_len]).await?;
            buf.drain(..head_len);
        }
        Body::Length(n) => {
            let sent = in_buf(buf, n);
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
                if from.read_some(buf).await? == 0 {
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

/// Read the backend's next response head into `rbuf` (which may hold its
/// first bytes already). `answered`: an interim `1xx` went to the client
/// already, so a failure now can no longer be answered with a 502.
async fn read_response_head(
    backend: &TcpStream,
    rbuf: &mut Vec<u8>,
    request_is_head: bool,
    answered: bool,
) -> Result<http::ResponseHead, Closed> {
    loop {
        match http::parse_response(rbuf, request_is_head) {
            Ok(Parsed::Done { value, .. }) => return Ok(value),
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
        let read = timeout(RESPONSE_TIMEOUT, backend.read_some(rbuf)).await;
        let nothing_yet = !answered && rbuf.is_empty();
        match read {
            Ok(Ok(0)) if nothing_yet => return Err(Closed::NoAnswer),
            Ok(Err(e)) if nothing_yet => {
                tracing::debug!("a backend connection failed before answering: {e}");
                return Err(Closed::NoAnswer);
            }
            Ok(Ok(0)) | Err(_) if !answered => return Err(Closed::Unserved(BAD_GATEWAY)),
            Ok(Ok(0)) | Err(_) => return Err(early_end()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
        }
    }
}
