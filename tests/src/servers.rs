//! Test servers that live in backend namespaces, and clients that bind a
//! chosen source address in the client namespace.
//!
//! Protocol, TCP and UDP alike: a request is one line. The TCP server
//! answers `peer` with `<name> <client addr:port as it saw it>` and any
//! other line with `<name>`; the UDP server always answers
//! `<name> <source addr:port>` (padded to the request's length when that is
//! over [`BIG_DATAGRAM`]). The peer address lets a test check that the
//! backend sees the real client, not the gateway.
//!
//! Sockets are created inside the namespace (`NetNs::run`) and served from
//! plain background threads: a socket keeps its namespace for life.

use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use socket2::{Domain, Protocol, Socket, Type};

use crate::netns::NetNs;

/// A UDP request longer than this gets an answer of its own length.
pub const BIG_DATAGRAM: usize = 1400;

/// A sensible client timeout: long enough for a first ARP/ND round trip,
/// short enough that a broken data path fails the test quickly.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// The request line that asks the TCP server for the peer it sees.
pub const PEER_REQUEST: &str = "peer";

/// Backstop for waking idle server threads to look at their stop flag
/// (`Server::drop` wakes them at once by shutting their sockets down).
const POLL: Duration = Duration::from_millis(200);

/// A backend's answer to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The name the server was started with (`b1`, ...).
    pub backend: String,
    /// The client socket's own address.
    pub local: SocketAddr,
    /// The client address as the backend saw it: equal to `local` when the
    /// path does no source NAT.
    pub seen: SocketAddr,
}

/// A running server; stopping or dropping it closes its sockets (open
/// connections get a FIN, new ones are refused) and joins its threads, so a
/// test can kill a backend.
#[derive(Debug)]
pub struct Server {
    name: String,
    port: u16,
    stop: Arc<AtomicBool>,
    /// Clones of the served sockets, shut down on stop to wake their
    /// threads at once (the receive timeout is only the backstop).
    wakers: Vec<Socket>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds the IPv4 and IPv6 wildcards on `port` inside `ns` (two
    /// sockets, so peers show up without v4-mapped forms) and serves each
    /// on its own thread.
    fn start(
        ns: &NetNs,
        name: &str,
        port: u16,
        ty: Type,
        serve: fn(Socket, &str, &AtomicBool),
    ) -> Self {
        let sockets = ns.run(|| {
            wildcards(port).map(|addr| {
                bound_socket(addr, ty).unwrap_or_else(|e| panic!("{name}: bind {addr}: {e}"))
            })
        });
        let stop = Arc::new(AtomicBool::new(false));
        let mut wakers = Vec::new();
        let mut threads = Vec::new();
        for socket in sockets {
            wakers.push(socket.try_clone().expect("clone server socket"));
            let (name, stop) = (name.to_owned(), stop.clone());
            threads.push(thread::spawn(move || serve(socket, &name, &stop)));
        }
        Self {
            name: name.to_owned(),
            port,
            stop,
            wakers,
            threads,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    /// Stops the server now (same as dropping it).
    pub fn stop(self) {}
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for socket in &self.wakers {
            // Linux wakes a blocked accept()/recv() on shutdown; an error
            // (e.g. ENOTCONN on UDP) changes nothing.
            let _ = socket.shutdown(Shutdown::Both);
        }
        for thread in self.threads.drain(..) {
            // A panicked server thread already printed its message; do not
            // panic again while a failed test may be unwinding.
            let _ = thread.join();
        }
    }
}

/// Starts the TCP whoami server on `port` of every address in `ns`.
pub fn tcp_whoami(ns: &NetNs, name: &str, port: u16) -> Server {
    Server::start(ns, name, port, Type::STREAM, |socket, name, stop| {
        accept_loop(&socket.into(), name, stop, serve_tcp)
    })
}

/// [`tcp_whoami`] behind a sender of PROXY headers: each connection starts
/// with one (v1 or v2), and `peer` answers the client it names. A
/// connection without a valid header is closed.
pub fn tcp_whoami_proxied(ns: &NetNs, name: &str, port: u16) -> Server {
    Server::start(ns, name, port, Type::STREAM, |socket, name, stop| {
        accept_loop(&socket.into(), name, stop, serve_tcp_proxied)
    })
}

/// An HTTP/1.1 whoami: every request (its head; no body is read) gets
/// `200` with the body `<name> <peer addr:port>\n`, so a test sees which
/// connection of the gateway's carried it. A request with `Connection:
/// close` gets `Connection: close` and the connection closes. After
/// [`HTTP_REQUESTS_PER_CONNECTION`] answers, the next request closes the
/// connection unanswered: a backend that closes an idle keep-alive
/// connection just as a request arrives, the race a gateway's connection
/// pool has to survive.
pub fn http_whoami(ns: &NetNs, name: &str, port: u16) -> Server {
    Server::start(ns, name, port, Type::STREAM, |socket, name, stop| {
        accept_loop(&socket.into(), name, stop, serve_http)
    })
}

/// Requests [`http_whoami`] answers on one connection.
pub const HTTP_REQUESTS_PER_CONNECTION: usize = 5;

/// Starts the TCP whoami server on `port` of every one of `backends`.
pub fn tcp_whoami_on(backends: &[crate::Backend], port: u16) -> Vec<Server> {
    backends
        .iter()
        .map(|b| tcp_whoami(b.ns(), b.name(), port))
        .collect()
}

/// Starts the UDP whoami server on `port` of every address in `ns`.
pub fn udp_whoami(ns: &NetNs, name: &str, port: u16) -> Server {
    Server::start(ns, name, port, Type::DGRAM, |socket, name, stop| {
        udp_loop(&socket.into(), name, stop)
    })
}

/// Connects from `src` (port chosen by the kernel) to `dst` inside `ns`,
/// with `timeout` for the connect and for every later read and write.
pub fn tcp_connect(
    ns: &NetNs,
    src: IpAddr,
    dst: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    ns.run(|| connect_here(src, dst, timeout))
}

/// [`tcp_connect`] in the calling thread's own namespace (a thread from
/// [`NetNs::spawn_thread`](crate::NetNs::spawn_thread)).
pub fn connect_here(src: IpAddr, dst: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&SocketAddr::new(src, 0).into())?;
    socket.connect_timeout(&dst.into(), timeout)?;
    socket.set_read_timeout(Some(timeout))?;
    socket.set_write_timeout(Some(timeout))?;
    Ok(socket.into())
}

/// Asks the backend behind an open connection who it is and whom it sees:
/// several asks on one stream show a flow staying on its backend.
pub fn ask(stream: &TcpStream) -> io::Result<Answer> {
    (&*stream).write_all(format!("{PEER_REQUEST}\n").as_bytes())?;
    let mut line = String::new();
    if BufReader::new(stream).read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before the answer",
        ));
    }
    parse_answer(&line, stream.local_addr()?)
}

/// One connection, one question: which backend answers `dst` for a client
/// at `src`.
pub fn tcp_ask(ns: &NetNs, src: IpAddr, dst: SocketAddr, timeout: Duration) -> io::Result<Answer> {
    ask(&tcp_connect(ns, src, dst, timeout)?)
}

/// One datagram from `src` to `dst` and its answer. The socket is connected,
/// so only an answer coming back from `dst` itself counts (one from a
/// backend's real address when `dst` is a VIP is ignored and times out).
pub fn udp_ask(ns: &NetNs, src: IpAddr, dst: SocketAddr, timeout: Duration) -> io::Result<Answer> {
    udp_ask_sized(ns, src, dst, 0, timeout).map(|(answer, _)| answer)
}

/// [`udp_ask`] with a request padded to `size` bytes (a datagram over the
/// link MTU leaves in fragments); the answer and its length (as long as the
/// request when that is over [`BIG_DATAGRAM`]).
pub fn udp_ask_sized(
    ns: &NetNs,
    src: IpAddr,
    dst: SocketAddr,
    size: usize,
    timeout: Duration,
) -> io::Result<(Answer, usize)> {
    let socket = ns.run(|| {
        let socket = UdpSocket::bind(SocketAddr::new(src, 0))?;
        socket.connect(dst)?;
        socket.set_read_timeout(Some(timeout))?;
        io::Result::Ok(socket)
    })?;
    let mut request = format!("{PEER_REQUEST}\n").into_bytes();
    request.resize(request.len().max(size), b'.');
    socket.send(&request)?;
    let mut buf = vec![0u8; 65536];
    let len = socket.recv(&mut buf)?;
    let text = String::from_utf8_lossy(&buf[..len]);
    let line = text.split_inclusive('\n').next().unwrap_or_default();
    Ok((parse_answer(line, socket.local_addr()?)?, len))
}

fn parse_answer(line: &str, local: SocketAddr) -> io::Result<Answer> {
    let invalid = || io::Error::new(io::ErrorKind::InvalidData, format!("bad answer {line:?}"));
    let (backend, seen) = line.trim_end().split_once(' ').ok_or_else(invalid)?;
    Ok(Answer {
        backend: backend.to_owned(),
        local,
        seen: seen.parse().map_err(|_| invalid())?,
    })
}

fn wildcards(port: u16) -> [SocketAddr; 2] {
    [
        SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port),
        SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port),
    ]
}

/// A socket bound to `addr` (and listening, for TCP): address reuse so a
/// killed backend can restart on its port at once, IPv6-only so the v4
/// wildcard can share the port, and a receive timeout so idle loops notice
/// their stop flag (Linux honours it in accept(), too).
fn bound_socket(addr: SocketAddr, ty: Type) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), ty, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_read_timeout(Some(POLL))?;
    socket.bind(&addr.into())?;
    if ty == Type::STREAM {
        socket.listen(128)?;
    }
    Ok(socket)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn serve_http(stream: TcpStream, name: &str, peer: SocketAddr) {
    if stream.set_read_timeout(None).is_err() {
        return;
    }
    let mut reader = BufReader::new(&stream);
    for answered in 0.. {
        let mut close = false;
        let mut line = String::new();
        // The request line, then fields up to the blank line.
        let mut lines = 0;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(n) if n > 0 => {}
                _ => return,
            }
            lines += 1;
            if line == "\r\n" && lines > 1 {
                break;
            }
            let lower = line.to_ascii_lowercase();
            close |= lower.starts_with("connection:") && lower.contains("close");
        }
        if answered == HTTP_REQUESTS_PER_CONNECTION {
            break;
        }
        let body = format!("{name} {peer}\n");
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        if (&stream).write_all(answer.as_bytes()).is_err() || close {
            break;
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// Accept until `stop`, serving each connection on a thread of its own
/// with `serve(stream, name, peer)`.
fn accept_loop(
    listener: &TcpListener,
    name: &str,
    stop: &AtomicBool,
    serve: fn(TcpStream, &str, SocketAddr),
) {
    // Each connection: a clone to shut it down on stop, and its thread.
    let mut conns: Vec<(TcpStream, JoinHandle<()>)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                conns.retain(|(_, thread)| !thread.is_finished());
                let handle = stream.try_clone().expect("clone accepted stream");
                let name = name.to_owned();
                conns.push((handle, thread::spawn(move || serve(stream, &name, peer))));
            }
            // A timeout, or the shutdown that `stop` uses to wake us.
            Err(e) if is_timeout(&e) || stop.load(Ordering::Relaxed) => {}
            Err(e) => panic!("accept on {:?}: {e}", listener.local_addr()),
        }
    }
    for (stream, thread) in conns {
        let _ = stream.shutdown(Shutdown::Both);
        let _ = thread.join();
    }
}

/// [`serve_tcp`] behind a PROXY header: the peer it names is the client.
fn serve_tcp_proxied(stream: TcpStream, name: &str, _peer: SocketAddr) {
    if let Some(source) = read_proxy_header(&stream) {
        serve_tcp(stream, name, source);
    }
}

/// The source a connection's PROXY header names, read byte by byte so
/// nothing after it is consumed; `None` (and the connection shut) for a
/// bad, local or missing header.
fn read_proxy_header(mut stream: &TcpStream) -> Option<SocketAddr> {
    use std::io::Read as _;

    use balancer_user::proxy::header::{self, Parsed, ProxyHeader};
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    let _ = stream.set_read_timeout(Some(TIMEOUT));
    let found = loop {
        match header::parse(&buf) {
            Ok(Parsed::Done {
                value: ProxyHeader::Proxied { source, .. },
                ..
            }) => break Some(source),
            Ok(Parsed::Incomplete) if matches!(stream.read(&mut byte), Ok(1)) => buf.push(byte[0]),
            _ => break None,
        }
    };
    if found.is_none() {
        let _ = stream.shutdown(Shutdown::Both);
    }
    found
}

fn serve_tcp(stream: TcpStream, name: &str, peer: SocketAddr) {
    // Accepted sockets inherit the listener's polling timeout; a
    // connection waits for requests until the client or `stop` closes it.
    if stream.set_read_timeout(None).is_err() {
        return;
    }
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
        let answer = if line.trim_end() == PEER_REQUEST {
            format!("{name} {peer}\n")
        } else {
            format!("{name}\n")
        };
        if (&stream).write_all(answer.as_bytes()).is_err() {
            break;
        }
        line.clear();
    }
    // Close now, as a real server does: the clone `accept_loop` keeps for
    // stopping would otherwise hold the socket open, and the FIN back.
    let _ = stream.shutdown(Shutdown::Both);
}

fn udp_loop(socket: &UdpSocket, name: &str, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        // An error is a timeout, an ICMP error for an earlier reply, or the
        // shutdown that `stop` uses to wake us: the flag decides.
        if let Ok((len, peer)) = socket.recv_from(&mut buf) {
            // The reply's source is picked by routing (the socket is bound
            // to the wildcard): the backend's only address of that family.
            // A request bigger than one packet gets an answer as big, padded
            // after the line, so replies get fragmented too.
            let mut reply = format!("{name} {peer}\n").into_bytes();
            if len > BIG_DATAGRAM {
                reply.resize(len, b'.');
            }
            let _ = socket.send_to(&reply, peer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_answers() {
        let local: SocketAddr = "198.18.0.1:4000".parse().unwrap();
        let answer = parse_answer("b2 [2001:db8::1]:4000\n", local).unwrap();
        assert_eq!(answer.backend, "b2");
        assert_eq!(answer.seen, "[2001:db8::1]:4000".parse().unwrap());
        assert_eq!(answer.local, local);
        for bad in ["b2\n", "b2 nonsense\n", ""] {
            let err = parse_answer(bad, local).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{bad:?}");
        }
    }
}
