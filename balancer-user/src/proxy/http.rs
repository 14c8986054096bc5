//! HTTP/1.x request and response heads, as far as the L7 path needs them:
//! where a head ends, how long its body is, whether the connection stays
//! open or becomes a tunnel, and what picks the backend (the engine.io
//! `sid`, the client's address from `X-Forwarded-For`).
//!
//! The bytes are forwarded as they came, but for one connection option:
//! a client's `close` is taken off the request before it goes to the
//! backend, so that the backend connection can serve other clients
//! afterwards, and said in the response instead ([`drop_close`],
//! [`add_close`]). Framing is never rewritten. That is why framing that two
//! HTTP implementations could read differently (request smuggling, RFC
//! 9112 §6.1 and §6.3) is an error rather than something to repair:
//! `Transfer-Encoding` with `Content-Length`, differing `Content-Length`s,
//! a request whose last transfer coding is not `chunked`, and a bare LF
//! where CRLF belongs.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

pub use super::header::Parsed;

/// The largest head accepted, request line or status line included.
pub const MAX_HEAD: usize = 16 * 1024;

/// The most header fields accepted in one head.
pub const MAX_HEADERS: usize = 64;

/// The longest chunk-size line (with its extensions) or trailer section a
/// chunked body may have: neither is ever buffered, but an endless one
/// would keep a connection from ever reaching its next request.
pub const MAX_CHUNK_LINE: usize = MAX_HEAD;

/// How the body after a head is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    /// No body: the next bytes are the next message.
    None,
    /// Exactly this many bytes (`Length(0)` kept as sent).
    Length(u64),
    /// Chunked: walk it with [`ChunkedFraming`].
    Chunked,
    /// Everything until the server closes (responses only).
    UntilClose,
}

/// What the balancer needs from a request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// The head's length in bytes, final CRLF included.
    pub len: usize,
    /// A response to HEAD has no body whatever its headers say.
    pub method_is_head: bool,
    /// GET, HEAD, OPTIONS, TRACE, PUT or DELETE (RFC 9110 §9.2.2): a
    /// proxy may send it again when its connection failed before any
    /// answer.
    pub idempotent: bool,
    pub http11: bool,
    /// The engine.io session id: the `sid` query parameter when the target
    /// has exactly one, non-empty and without `%` or `+`. The ids backends
    /// give (`<name>.<uuid>`) need no escaping, so an escaped one is not
    /// ours: such a request routes as one without a session, and the
    /// backend it reaches answers it (engine.io: "Session ID unknown").
    pub sid: Option<String>,
    /// Every address of every `X-Forwarded-For` field, in order.
    pub forwarded_for: Vec<IpAddr>,
    /// An HTTP/1.1 upgrade request (`Connection: upgrade` and an `Upgrade`
    /// field): if the response is 101 the connection becomes a tunnel.
    pub upgrade: bool,
    pub body: Body,
    /// The client will close after this request (`Connection: close`, or
    /// HTTP/1.0 without `keep-alive`).
    pub close: bool,
}

/// What the balancer needs from a response head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub len: usize,
    /// 101 means the connection is now a tunnel; another 1xx is an interim
    /// response, and the final response's head follows it.
    pub status: u16,
    pub body: Body,
    /// The server closes after this response (`Connection: close`,
    /// HTTP/1.0 without `keep-alive`, or a body read until close).
    pub close: bool,
}

/// Why a head or chunked body is refused. One line each.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("HTTP head larger than {MAX_HEAD} bytes or {MAX_HEADERS} header fields")]
    TooLarge,
    #[error("{0}")]
    Malformed(String),
}

fn malformed(what: impl std::fmt::Display) -> HeadError {
    HeadError::Malformed(format!("bad HTTP head: {what}"))
}

/// Parses the request head at the start of `buf`.
pub fn parse_request(buf: &[u8]) -> Result<Parsed<RequestHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let Some(len) = head_len(request.parse(bounded(buf)), buf)? else {
        return Ok(Parsed::Incomplete);
    };
    // httparse fills every field of a complete head.
    let http11 = request.version == Some(1);
    let fields = Fields::scan(request.headers)?;
    let body = match (fields.transfer_encoding, fields.content_length) {
        (Some(_), _) if !http11 => return Err(malformed("Transfer-Encoding in HTTP/1.0")),
        (Some(_), Some(_)) => return Err(malformed("both Transfer-Encoding and Content-Length")),
        (Some(Coding::Chunked), None) => Body::Chunked,
        (Some(Coding::Other), None) => return Err(malformed("last transfer coding not chunked")),
        (None, Some(n)) => Body::Length(n),
        (None, None) => Body::None,
    };
    let value = RequestHead {
        len,
        method_is_head: request.method == Some("HEAD"),
        idempotent: matches!(
            request.method,
            Some("GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE")
        ),
        http11,
        sid: request.path.and_then(query_sid).map(str::to_owned),
        forwarded_for: forwarded_for(request.headers)?,
        upgrade: http11 && fields.connection_upgrade && fields.upgrade,
        body,
        close: fields.connection_close || (!http11 && !fields.connection_keep_alive),
    };
    Ok(Parsed::Done { value, len })
}

/// Parses the response head at the start of `buf`, the answer to a request
/// whose method was HEAD if `request_method_is_head`. CONNECT is not
/// expected (the L7 path carries requests to an origin), so a 2xx is never
/// read as the start of a tunnel.
pub fn parse_response(
    buf: &[u8],
    request_method_is_head: bool,
) -> Result<Parsed<ResponseHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let Some(len) = head_len(response.parse(bounded(buf)), buf)? else {
        return Ok(Parsed::Incomplete);
    };
    let http11 = response.version == Some(1);
    let status = response.code.unwrap_or_default();
    // httparse takes any three digits; below 100 is no status at all.
    if status < 100 {
        return Err(malformed(format_args!("status {status:03}")));
    }
    let fields = Fields::scan(response.headers)?;
    // The order of RFC 9112 §6.3. A response with both framings is an
    // error, not "Transfer-Encoding wins": an intermediary must then drop
    // the Content-Length, and this one forwards the head unchanged.
    let body = if request_method_is_head || status < 200 || status == 204 || status == 304 {
        Body::None
    } else {
        match (fields.transfer_encoding, fields.content_length) {
            (Some(_), Some(_)) => {
                return Err(malformed("both Transfer-Encoding and Content-Length"));
            }
            // HTTP/1.0 has no chunked coding: §6.1 says the framing is
            // faulty, so the body ends with the connection.
            (Some(Coding::Chunked), None) if http11 => Body::Chunked,
            (Some(_), None) => Body::UntilClose,
            (None, Some(n)) => Body::Length(n),
            (None, None) => Body::UntilClose,
        }
    };
    let close = body == Body::UntilClose
        || fields.connection_close
        || (!http11 && !fields.connection_keep_alive);
    let value = ResponseHead {
        len,
        status,
        body,
        close,
    };
    Ok(Parsed::Done { value, len })
}

/// The head of `len` bytes at the start of `buf` without the `close`
/// option of its `Connection` fields (a field left empty goes); the new
/// head length. The head was parsed already: CRLF line ends, no folding.
pub fn drop_close(buf: &mut Vec<u8>, len: usize) -> usize {
    let mut head = Vec::with_capacity(len);
    for line in buf[..len].split_inclusive(|&b| b == b'\n') {
        let Some((name, value)) = header_field(line) else {
            head.extend_from_slice(line);
            continue;
        };
        if !name.eq_ignore_ascii_case(b"connection") {
            head.extend_from_slice(line);
            continue;
        }
        let kept: Vec<&[u8]> = list(value)
            .filter(|t| !t.eq_ignore_ascii_case(b"close"))
            .collect();
        if kept.is_empty() {
            continue;
        }
        head.extend_from_slice(name);
        head.extend_from_slice(b": ");
        head.extend_from_slice(&kept.join(&b", "[..]));
        head.extend_from_slice(b"\r\n");
    }
    let new_len = head.len();
    buf.splice(..len, head);
    new_len
}

/// `Connection: close` added at the end of the response head of `len`
/// bytes at the start of `buf`; the new head length.
pub fn add_close(buf: &mut Vec<u8>, len: usize) -> usize {
    const FIELD: &[u8] = b"Connection: close\r\n";
    // Before the blank line that ends the head.
    let at = len - 2;
    buf.splice(at..at, FIELD.iter().copied());
    len + FIELD.len()
}

/// A header line's name and value (with its CRLF); `None` for the
/// request line and the blank line.
fn header_field(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = &line[..colon];
    // A request line's target may hold a colon, after a space.
    if name.is_empty() || name.contains(&b' ') {
        return None;
    }
    Some((name, &line[colon + 1..]))
}

/// At most [`MAX_HEAD`] bytes: a head not complete by then is refused, and
/// httparse never scans more than that.
fn bounded(buf: &[u8]) -> &[u8] {
    &buf[..buf.len().min(MAX_HEAD)]
}

/// The head's length if complete, after checking its line endings.
fn head_len(
    status: Result<httparse::Status<usize>, httparse::Error>,
    buf: &[u8],
) -> Result<Option<usize>, HeadError> {
    match status {
        Ok(httparse::Status::Complete(len)) => {
            // httparse takes a bare LF as a line end; a backend that does
            // not would see a different head in the same bytes.
            let head = &buf[..len];
            let bare_lf = head
                .iter()
                .enumerate()
                .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'));
            if bare_lf {
                return Err(malformed("line ending without CR"));
            }
            Ok(Some(len))
        }
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(e) => Err(malformed(e)),
    }
}

/// The last transfer coding of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Coding {
    Chunked,
    Other,
}

/// The header fields that decide framing and connection reuse.
#[derive(Debug, Default)]
struct Fields {
    transfer_encoding: Option<Coding>,
    content_length: Option<u64>,
    connection_close: bool,
    connection_keep_alive: bool,
    connection_upgrade: bool,
    upgrade: bool,
}

impl Fields {
    fn scan(headers: &[httparse::Header<'_>]) -> Result<Self, HeadError> {
        let mut fields = Self::default();
        let mut chunked_seen = false;
        for header in headers {
            let name = header.name;
            if name.eq_ignore_ascii_case("connection") {
                for token in list(header.value) {
                    fields.connection_close |= token.eq_ignore_ascii_case(b"close");
                    fields.connection_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                    fields.connection_upgrade |= token.eq_ignore_ascii_case(b"upgrade");
                }
            } else if name.eq_ignore_ascii_case("upgrade") {
                fields.upgrade |= list(header.value).next().is_some();
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                // Codings apply in order over every field; parameters
                // (`;name=value`) do not change which coding it is.
                fields.transfer_encoding.get_or_insert(Coding::Other);
                for coding in list(header.value) {
                    let name = trim(coding.split(|&b| b == b';').next().unwrap_or_default());
                    let chunked = name.eq_ignore_ascii_case(b"chunked");
                    // Chunked applies once and last (RFC 9112 §7.1).
                    if chunked_seen {
                        return Err(malformed("transfer coding after chunked"));
                    }
                    chunked_seen = chunked;
                    fields.transfer_encoding = Some(if chunked {
                        Coding::Chunked
                    } else {
                        Coding::Other
                    });
                }
            } else if name.eq_ignore_ascii_case("content-length") {
                for value in header.value.split(|&b| b == b',').map(trim) {
                    let n = content_length(value)?;
                    if fields.content_length.is_some_and(|seen| seen != n) {
                        return Err(malformed("differing Content-Length values"));
                    }
                    fields.content_length = Some(n);
                }
            }
        }
        Ok(fields)
    }
}

/// Digits only: `u64::from_str` would also take a leading `+`.
fn content_length(value: &[u8]) -> Result<u64, HeadError> {
    let bad = || malformed(format_args!("Content-Length {:?}", lossy(value)));
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(bad)
}

/// The non-empty elements of a comma-separated field value (RFC 9110
/// §5.6.1 lets a recipient skip empty ones).
fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim)
        .filter(|v| !v.is_empty())
}

fn trim(value: &[u8]) -> &[u8] {
    value.trim_ascii()
}

fn lossy(value: &[u8]) -> String {
    String::from_utf8_lossy(value).into_owned()
}

/// The `sid` of a request target, as [`RequestHead::sid`] describes.
fn query_sid(target: &str) -> Option<&str> {
    let (_, query) = target.split_once('?')?;
    let mut sids = query
        .split('&')
        .filter_map(|pair| pair.split_once('=').filter(|(key, _)| *key == "sid"))
        .map(|(_, value)| value);
    let sid = sids.next()?;
    let usable = sids.next().is_none() && !sid.is_empty() && !sid.contains(['%', '+']);
    usable.then_some(sid)
}

/// Every `X-Forwarded-For` address, left to right. `[v6]`, `[v6]:port`
/// and `v4:port` (some proxies write those) give their address; IPv4-mapped
/// IPv6 addresses are read as IPv4 so that one trust list covers both.
fn forwarded_for(headers: &[httparse::Header<'_>]) -> Result<Vec<IpAddr>, HeadError> {
    let mut out = Vec::new();
    for header in headers {
        if !header.name.eq_ignore_ascii_case("x-forwarded-for") {
            continue;
        }
        for entry in list(header.value) {
            let ip = std::str::from_utf8(entry).ok().and_then(|entry| {
                entry
                    .parse::<IpAddr>()
                    .ok()
                    .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
                    .or_else(|| {
                        let inner = entry.strip_prefix('[')?.strip_suffix(']')?;
                        inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
                    })
            });
            match ip {
                Some(ip) => out.push(ip.to_canonical()),
                None => {
                    return Err(malformed(format_args!(
                        "bad X-Forwarded-For entry {:?}",
                        lossy(entry)
                    )));
                }
            }
        }
    }
    Ok(out)
}

/// The client's address: the last untrusted hop. Each trusted proxy
/// appends the address it received from, so walking from the peer
/// leftwards, the first address not `trusted` is the nearest one no
/// trusted proxy vouches for beyond; entries further left could be forged
/// by that client. If every entry is trusted, the leftmost is the best
/// there is; without entries, the peer is the client.
pub fn client_address(
    forwarded_for: &[IpAddr],
    peer: IpAddr,
    trusted: impl Fn(IpAddr) -> bool,
) -> IpAddr {
    forwarded_for
        .iter()
        .rev()
        .copied()
        .find(|&ip| !trusted(ip))
        .or_else(|| forwarded_for.first().copied())
        .unwrap_or(peer)
}

/// The backend a session id names: backends give ids `<name>.<random>`,
/// and names (`[A-Za-z0-9_.-]{1,64}`) may hold dots, so the name is what
/// comes before the last one. `None` if there is no dot or the name part
/// is not a backend name.
pub fn sid_backend_name(sid: &str) -> Option<&str> {
    let (name, _) = sid.rsplit_once('.')?;
    let valid = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    valid.then_some(name)
}

/// Where a chunked body is (RFC 9112 §7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// In the chunk size: `value` so far, whether a digit was seen.
    Size {
        value: u64,
        digits: bool,
    },
    /// After the size: whitespace, then `;` and extensions, up to CR.
    AfterSize {
        value: u64,
        ext: bool,
    },
    /// CR of the size line seen.
    SizeLf {
        value: u64,
    },
    /// This many data bytes to go.
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer field or of the final CRLF.
    TrailerStart,
    Trailer,
    TrailerLf,
    FinalLf,
    Done,
}

/// Walks a chunked body as it passes, without changing or keeping it, to
/// find where it ends. After an error the body's framing is lost: the
/// connection must close.
#[derive(Clone, Debug)]
pub struct ChunkedFraming {
    state: Chunk,
    /// Bytes of the current size line, or of the trailer section.
    line: usize,
}

impl Default for ChunkedFraming {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedFraming {
    pub fn new() -> Self {
        Self {
            state: Chunk::Size {
                value: 0,
                digits: false,
            },
            line: 0,
        }
    }

    /// Whether the body's final CRLF has been seen.
    pub fn done(&self) -> bool {
        self.state == Chunk::Done
    }

    /// How many bytes at the start of `buf` belong to the body: all of
    /// them, or fewer once the body ends (the rest is the next message).
    pub fn feed(&mut self, buf: &[u8]) -> Result<usize, HeadError> {
        let mut at = 0;
        while at < buf.len() && self.state != Chunk::Done {
            if let Chunk::Data(left) = self.state {
                // Data is skipped in one step, not byte by byte.
                let take = left.min((buf.len() - at) as u64);
                at += take as usize;
                self.state = match left - take {
                    0 => Chunk::DataCr,
                    left => Chunk::Data(left),
                };
                continue;
            }
            self.step(buf[at])?;
            at += 1;
        }
        Ok(at)
    }

    fn step(&mut self, b: u8) -> Result<(), HeadError> {
        let bad = |what: &str| Err(HeadError::Malformed(format!("bad chunked body: {what}")));
        if matches!(
            self.state,
            Chunk::Size { .. } | Chunk::AfterSize { .. } | Chunk::TrailerStart | Chunk::Trailer
        ) {
            self.line += 1;
            if self.line > MAX_CHUNK_LINE {
                return bad("chunk size line or trailers too long");
            }
        }
        self.state = match (self.state, b) {
            (Chunk::Size { value, .. }, b) if b.is_ascii_hexdigit() => {
                let digit = u64::from((b as char).to_digit(16).unwrap_or_default());
                match value.checked_mul(16).and_then(|v| v.checked_add(digit)) {
                    Some(value) => Chunk::Size {
                        value,
                        digits: true,
                    },
                    None => return bad("chunk size over 64 bits"),
                }
            }
            (Chunk::Size { digits: false, .. }, _) => return bad("chunk size not hexadecimal"),
            (Chunk::Size { value, .. } | Chunk::AfterSize { value, .. }, b'\r') => {
                Chunk::SizeLf { value }
            }
            (Chunk::Size { value, .. } | Chunk::AfterSize { value, ext: false }, b' ' | b'\t') => {
                Chunk::AfterSize { value, ext: false }
            }
            (Chunk::Size { value, .. } | Chunk::AfterSize { value, .. }, b';') => {
                Chunk::AfterSize { value, ext: true }
            }
            // Extensions are passed on unread, but not control characters.
            (Chunk::AfterSize { value, ext: true }, b) if b == b'\t' || !b.is_ascii_control() => {
                Chunk::AfterSize { value, ext: true }
            }
            (Chunk::Size { .. } | Chunk::AfterSize { .. }, _) => {
                return bad("unexpected byte in chunk size line");
            }
            (Chunk::SizeLf { value: 0 }, b'\n') => {
                self.line = 0;
                Chunk::TrailerStart
            }
            (Chunk::SizeLf { value }, b'\n') => Chunk::Data(value),
            (Chunk::DataCr, b'\r') => Chunk::DataLf,
            (Chunk::DataLf, b'\n') => {
                self.line = 0;
                Chunk::Size {
                    value: 0,
                    digits: false,
                }
            }
            (Chunk::TrailerStart, b'\r') => Chunk::FinalLf,
            (Chunk::TrailerStart | Chunk::Trailer, b'\n') => return bad("line ending without CR"),
            (Chunk::Trailer, b'\r') => Chunk::TrailerLf,
            (Chunk::TrailerStart | Chunk::Trailer, _) => Chunk::Trailer,
            (Chunk::TrailerLf, b'\n') => Chunk::TrailerStart,
            (Chunk::FinalLf, b'\n') => Chunk::Done,
            (Chunk::SizeLf { .. } | Chunk::DataCr | Chunk::DataLf | Chunk::TrailerLf, _)
            | (Chunk::FinalLf, _) => return bad("missing CRLF"),
            (Chunk::Data(_) | Chunk::Done, _) => unreachable!("feed handles data and the end"),
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn request(buf: &[u8]) -> RequestHead {
        match parse_request(buf) {
            Ok(Parsed::Done { value, len }) => {
                assert_eq!(value.len, len);
                value
            }
            other => panic!("{}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    fn response(buf: &[u8], head: bool) -> ResponseHead {
        match parse_response(buf, head) {
            Ok(Parsed::Done { value, len }) => {
                assert_eq!(value.len, len);
                value
            }
            other => panic!("{}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    fn request_error(buf: &[u8]) -> HeadError {
        match parse_request(buf) {
            Err(e) => e,
            other => panic!("{}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    fn assert_prefixes_incomplete(head: &[u8]) {
        for n in 0..head.len() {
            assert_eq!(parse_request(&head[..n]), Ok(Parsed::Incomplete), "{n}");
        }
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|ip| ip.parse().unwrap()).collect()
    }

    // Heads as a browser's engine.io client sends them through a CDN.
    const POLLING_GET: &[u8] = b"GET /socket.io/?EIO=4&transport=polling&t=PZx1a2b&sid=b1.4f1c2d3e-9a8b-4c7d-8e6f-0123456789ab HTTP/1.1\r\n\
Host: chat.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0\r\n\
Accept: */*\r\n\
Accept-Language: en-US,en;q=0.5\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Referer: https://chat.example.com/\r\n\
X-Forwarded-For: 203.0.113.7, 198.51.100.2\r\n\
Connection: keep-alive\r\n\
\r\n";

    const POLLING_POST: &[u8] = b"POST /socket.io/?EIO=4&transport=polling&t=PZx1a9q&sid=b2.0c9e8d7f-1a2b-4c3d-9e8f-fedcba987654 HTTP/1.1\r\n\
Host: chat.example.com\r\n\
Content-Type: text/plain;charset=UTF-8\r\n\
Content-Length: 16\r\n\
Origin: https://chat.example.com\r\n\
Connection: keep-alive\r\n\
\r\n";

    const WEBSOCKET: &[u8] = b"GET /socket.io/?EIO=4&transport=websocket&sid=b1.4f1c2d3e-9a8b-4c7d-8e6f-0123456789ab HTTP/1.1\r\n\
Host: chat.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0\r\n\
Accept: */*\r\n\
Sec-WebSocket-Version: 13\r\n\
Origin: https://chat.example.com\r\n\
Sec-WebSocket-Extensions: permessage-deflate\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Connection: keep-alive, Upgrade\r\n\
Upgrade: websocket\r\n\
\r\n";

    #[test]
    fn engine_io_polling_get() {
        let head = request(POLLING_GET);
        assert_eq!(
            head,
            RequestHead {
                len: POLLING_GET.len(),
                method_is_head: false,
                idempotent: true,
                http11: true,
                sid: Some("b1.4f1c2d3e-9a8b-4c7d-8e6f-0123456789ab".into()),
                forwarded_for: ips(&["203.0.113.7", "198.51.100.2"]),
                upgrade: false,
                body: Body::None,
                close: false,
            }
        );
        assert_eq!(sid_backend_name(head.sid.as_deref().unwrap()), Some("b1"));
        assert_prefixes_incomplete(POLLING_GET);
    }

    #[test]
    fn engine_io_polling_post_then_pipelined_request() {
        let mut buf = POLLING_POST.to_vec();
        buf.extend_from_slice(b"42[\"msg\",\"hi!\"]\n");
        buf.extend_from_slice(POLLING_GET);
        let head = request(&buf);
        assert_eq!(head.len, POLLING_POST.len());
        assert_eq!(head.body, Body::Length(16));
        assert_eq!(
            head.sid.as_deref(),
            Some("b2.0c9e8d7f-1a2b-4c3d-9e8f-fedcba987654")
        );
        assert!(head.forwarded_for.is_empty());
        assert!(!head.close && !head.upgrade);
        assert_eq!(
            request(&buf[POLLING_POST.len() + 16..]).len,
            POLLING_GET.len()
        );
        assert_prefixes_incomplete(POLLING_POST);
    }

    #[test]
    fn engine_io_websocket_upgrade() {
        let head = request(WEBSOCKET);
        assert!(head.upgrade);
        assert_eq!(head.body, Body::None);
        assert!(!head.close);
        assert_eq!(sid_backend_name(head.sid.as_deref().unwrap()), Some("b1"));
        assert_prefixes_incomplete(WEBSOCKET);
        // HTTP/1.0 cannot upgrade; both fields are needed.
        let v10 = b"GET / HTTP/1.0\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
        assert!(!request(v10).upgrade);
        assert!(!request(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n").upgrade);
        assert!(!request(b"GET / HTTP/1.1\r\nConnection: upgrade\r\n\r\n").upgrade);
        assert!(request(b"GET / HTTP/1.1\r\nconnection: UPGRADE\r\nupgrade: h2c\r\n\r\n").upgrade);
    }

    #[test]
    fn close_is_taken_off_a_request_and_put_on_a_response() {
        let cases: &[(&[u8], &[u8])] = &[
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            ),
            (
                b"GET http://a:80/x HTTP/1.1\r\nconnection: Close, X-Trace\r\nConnection:close\r\nX-Trace: 1\r\n\r\n",
                b"GET http://a:80/x HTTP/1.1\r\nconnection: X-Trace\r\nX-Trace: 1\r\n\r\n",
            ),
            (
                b"GET / HTTP/1.1\r\nX-Connection: close\r\n\r\n",
                b"GET / HTTP/1.1\r\nX-Connection: close\r\n\r\n",
            ),
        ];
        for &(before, after) in cases {
            let mut buf = before.to_vec();
            buf.extend_from_slice(b"next");
            let len = drop_close(&mut buf, request(before).len);
            assert_eq!(
                String::from_utf8_lossy(&buf[..len]),
                String::from_utf8_lossy(after)
            );
            assert_eq!(&buf[len..], b"next");
            assert!(!request(&buf[..len]).close);
        }
        let mut buf = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec();
        let head_len = response(&buf, false).len;
        let len = add_close(&mut buf, head_len);
        let head = response(&buf, false);
        assert_eq!(
            (head.len, head.close, head.body),
            (len, true, Body::Length(2))
        );
        assert_eq!(&buf[len..], b"ok");
    }

    #[test]
    fn connection_close_and_http10() {
        assert!(request(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").close);
        assert!(request(b"GET / HTTP/1.1\r\nConnection: foo\r\nConnection: Close\r\n\r\n").close);
        assert!(!request(b"GET / HTTP/1.1\r\n\r\n").close);
        assert!(request(b"GET / HTTP/1.0\r\n\r\n").close);
        assert!(!request(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").close);
        let head = request(b"HEAD / HTTP/1.1\r\n\r\n");
        assert!(head.method_is_head);
        assert!(!request(b"GET / HTTP/1.1\r\n\r\n").method_is_head);
    }

    #[test]
    fn sid_from_the_query() {
        let sid = |target: &str| {
            let head = format!("GET {target} HTTP/1.1\r\n\r\n");
            request(head.as_bytes()).sid
        };
        assert_eq!(sid("/socket.io/?sid=a.b&EIO=4").as_deref(), Some("a.b"));
        assert_eq!(sid("/x?sid=abc").as_deref(), Some("abc"));
        assert_eq!(sid("http://h/x?a=1&sid=abc").as_deref(), Some("abc"));
        for target in [
            "/socket.io/?EIO=4&transport=polling",
            "/socket.io/",
            "/?sid=",
            "/?sid",
            "/?xsid=a.b",
            "/?sid=a.b&sid=c.d",
            "/?sid=b1.%41",
            "/?sid=b1+x",
        ] {
            assert_eq!(sid(target), None, "{target}");
        }
    }

    #[test]
    fn sid_names_its_backend() {
        assert_eq!(sid_backend_name("b1.4f1c"), Some("b1"));
        assert_eq!(sid_backend_name("eu-1.node_2.4f1c"), Some("eu-1.node_2"));
        assert_eq!(sid_backend_name("b1."), Some("b1"));
        let longest = format!("{}.x", "n".repeat(64));
        assert_eq!(sid_backend_name(&longest), Some(&longest[..64]));
        for sid in [
            "b14f1c",
            ".4f1c",
            "b 1.x",
            "b/1.x",
            "",
            &format!("{}.x", "n".repeat(65)),
        ] {
            assert_eq!(sid_backend_name(sid), None, "{sid}");
        }
    }

    #[test]
    fn forwarded_for_fields_and_lists() {
        let head = request(
            b"GET / HTTP/1.1\r\n\
X-Forwarded-For: 203.0.113.7 , 2001:db8::7,\t198.51.100.2\r\n\
Host: h\r\n\
x-forwarded-for: [2001:db8::9], 192.0.2.1:4711,, [2001:db8::a]:80, ::ffff:192.0.2.2\r\n\
X-Forwarded-For:\r\n\r\n",
        );
        assert_eq!(
            head.forwarded_for,
            ips(&[
                "203.0.113.7",
                "2001:db8::7",
                "198.51.100.2",
                "2001:db8::9",
                "192.0.2.1",
                "2001:db8::a",
                "192.0.2.2",
            ])
        );
        for bad in [
            "unknown",
            "203.0.113",
            "_hidden",
            "[192.0.2.1]",
            "1.2.3.4:x",
        ] {
            let head = format!("GET / HTTP/1.1\r\nX-Forwarded-For: 192.0.2.1, {bad}\r\n\r\n");
            assert_eq!(
                request_error(head.as_bytes()),
                HeadError::Malformed(format!("bad HTTP head: bad X-Forwarded-For entry {bad:?}"))
            );
        }
    }

    #[test]
    fn client_address_is_the_last_untrusted_hop() {
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let trusted = |ip: IpAddr| matches!(ip, IpAddr::V4(v4) if v4.octets()[0] == 10);
        let xff = ips(&["192.0.2.66", "203.0.113.7", "10.0.0.9", "10.0.0.8"]);
        assert_eq!(
            client_address(&xff, peer, trusted),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        let all_trusted = ips(&["10.1.1.1", "10.0.0.9"]);
        assert_eq!(
            client_address(&all_trusted, peer, trusted),
            "10.1.1.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_address(&[], peer, trusted), peer);
        assert_eq!(client_address(&xff, peer, |_| false), xff[3]);
    }

    #[test]
    fn request_smuggling_is_refused() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
                "both Transfer-Encoding and Content-Length",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                "both Transfer-Encoding and Content-Length",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                "differing Content-Length values",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n",
                "differing Content-Length values",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
                "Content-Length \"+5\"",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                "Content-Length \"-1\"",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n",
                "Content-Length \"0x10\"",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length:\r\n\r\n",
                "Content-Length \"\"",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 18446744073709551616\r\n\r\n",
                "Content-Length \"18446744073709551616\"",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                "last transfer coding not chunked",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                "transfer coding after chunked",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
                "transfer coding after chunked",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
                "transfer coding after chunked",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n",
                "last transfer coding not chunked",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding:\r\n\r\n",
                "last transfer coding not chunked",
            ),
            (
                b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                "Transfer-Encoding in HTTP/1.0",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: h\nContent-Length: 5\r\n\r\n",
                "line ending without CR",
            ),
            (
                b"POST / HTTP/1.1\nContent-Length: 5\n\n",
                "line ending without CR",
            ),
        ];
        for (head, why) in cases {
            assert_eq!(
                request_error(head),
                HeadError::Malformed(format!("bad HTTP head: {why}")),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
        // Obsolete line folding and whitespace before the colon: httparse's
        // defaults refuse both.
        for head in [
            &b"POST / HTTP/1.1\r\nContent-Length : 5\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nX: a\r\n Content-Length: 5\r\n\r\n",
        ] {
            assert!(matches!(request_error(head), HeadError::Malformed(_)));
        }
    }

    #[test]
    fn framing_that_is_allowed() {
        let body = |head: &[u8]| request(head).body;
        assert_eq!(
            body(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
            Body::Length(5)
        );
        assert_eq!(
            body(b"POST / HTTP/1.1\r\nContent-Length: 5 , 5\r\n\r\n"),
            Body::Length(5)
        );
        assert_eq!(
            body(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
            Body::Length(0)
        );
        assert_eq!(
            body(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: Chunked \r\n\r\n"),
            Body::Chunked
        );
        assert_eq!(
            body(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip;q=1, chunked\r\n\r\n"),
            Body::Chunked
        );
    }

    #[test]
    fn malformed_heads() {
        for head in [
            &b"GET / HTTP/2.0\r\n\r\n"[..],
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
            b"GET /\x00 HTTP/1.1\r\n\r\n",
        ] {
            let e = request_error(head);
            assert!(matches!(e, HeadError::Malformed(_)), "{head:?}");
            assert!(!e.to_string().contains('\n'));
        }
    }

    #[test]
    fn too_large() {
        let mut head = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        head.resize(MAX_HEAD - 1, b'a');
        assert_eq!(parse_request(&head), Ok(Parsed::Incomplete));
        head.push(b'a');
        assert_eq!(parse_request(&head), Err(HeadError::TooLarge));
        let mut response_head = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
        response_head.resize(MAX_HEAD, b'a');
        assert_eq!(
            parse_response(&response_head, false),
            Err(HeadError::TooLarge)
        );
        // A head ending exactly at the limit is fine; one byte more is not.
        head.truncate(MAX_HEAD - 4);
        head.extend_from_slice(b"\r\n\r\n");
        assert_eq!(request(&head).len, MAX_HEAD);
        head.insert(20, b'a');
        assert_eq!(parse_request(&head), Err(HeadError::TooLarge));

        let fields = |n: usize| {
            let mut head = b"GET / HTTP/1.1\r\n".to_vec();
            for i in 0..n {
                head.extend_from_slice(format!("X-{i}: {i}\r\n").as_bytes());
            }
            head.extend_from_slice(b"\r\n");
            head
        };
        assert_eq!(request(&fields(MAX_HEADERS)).body, Body::None);
        assert_eq!(
            parse_request(&fields(MAX_HEADERS + 1)),
            Err(HeadError::TooLarge)
        );
        assert_eq!(
            HeadError::TooLarge.to_string(),
            "HTTP head larger than 16384 bytes or 64 header fields"
        );
    }

    #[test]
    fn responses() {
        let cases: &[(&[u8], bool, u16, Body, bool)] = &[
            (b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n", false, 200, Body::Length(12), false),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false, 200, Body::Chunked, false),
            (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n", false, 101, Body::None, false),
            (b"HTTP/1.1 100 Continue\r\n\r\n", false, 100, Body::None, false),
            (b"HTTP/1.1 204 No Content\r\n\r\n", false, 204, Body::None, false),
            (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 512\r\n\r\n", false, 304, Body::None, false),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 512\r\n\r\n", true, 200, Body::None, false),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", true, 200, Body::None, false),
            (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n", false, 200, Body::UntilClose, true),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false, 200, Body::UntilClose, true),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\n", false, 200, Body::Length(3), true),
            (b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n", false, 200, Body::Length(3), true),
            (b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n", false, 200, Body::Length(3), false),
            (b"HTTP/1.0 200 OK\r\n\r\n", false, 200, Body::UntilClose, true),
            (b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false, 200, Body::UntilClose, true),
            (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", false, 404, Body::Length(0), false),
        ];
        for &(head, is_head, status, body, close) in cases {
            let mut buf = head.to_vec();
            buf.extend_from_slice(b"body bytes");
            assert_eq!(
                response(&buf, is_head),
                ResponseHead {
                    len: head.len(),
                    status,
                    body,
                    close
                },
                "{}",
                String::from_utf8_lossy(head)
            );
            for n in 0..head.len() {
                assert_eq!(parse_response(&head[..n], is_head), Ok(Parsed::Incomplete));
            }
        }
        for head in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: three\r\n\r\n",
            b"HTTP/1.1 200 OK\nContent-Length: 3\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 099 Odd\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(parse_response(head, false), Err(HeadError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    const CHUNKED: &[u8] = b"4\r\nWiki\r\n5;name=value;q=\"a b\"\r\npedia\r\nE \r\n in\r\n\r\nchunks.\r\n0\r\nExpires: never\r\nX-Trailer: 1\r\n\r\n";

    #[test]
    fn chunked_body_in_one_feed() {
        let mut buf = CHUNKED.to_vec();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let mut framing = ChunkedFraming::new();
        assert_eq!(framing.feed(&buf), Ok(CHUNKED.len()));
        assert!(framing.done());
        assert_eq!(framing.feed(b"more"), Ok(0));
        // The shortest body: the last chunk and no trailers.
        let mut framing = ChunkedFraming::default();
        assert_eq!(framing.feed(b"0\r\n\r\nX"), Ok(5));
        assert!(framing.done());
    }

    #[test]
    fn chunked_body_split_anywhere() {
        for split in 0..=CHUNKED.len() {
            let mut framing = ChunkedFraming::new();
            assert_eq!(framing.feed(&CHUNKED[..split]), Ok(split));
            assert_eq!(framing.done(), split == CHUNKED.len());
            let mut rest = CHUNKED[split..].to_vec();
            rest.extend_from_slice(b"NEXT");
            assert_eq!(framing.feed(&rest), Ok(CHUNKED.len() - split), "{split}");
            assert!(framing.done());
        }
        let mut framing = ChunkedFraming::new();
        for (i, byte) in CHUNKED.iter().enumerate() {
            assert!(!framing.done(), "{i}");
            assert_eq!(framing.feed(std::slice::from_ref(byte)), Ok(1));
        }
        assert!(framing.done());
    }

    #[test]
    fn chunked_errors() {
        let cases: &[(&[u8], &str)] = &[
            (b"g\r\n", "chunk size not hexadecimal"),
            (b"\r\n", "chunk size not hexadecimal"),
            (b";ext\r\n", "chunk size not hexadecimal"),
            (b" 4\r\n", "chunk size not hexadecimal"),
            (b"-4\r\n", "chunk size not hexadecimal"),
            (b"4g\r\n", "unexpected byte in chunk size line"),
            (b"4 4\r\n", "unexpected byte in chunk size line"),
            (b"4\n", "unexpected byte in chunk size line"),
            (b"4;a\nb\r\n", "unexpected byte in chunk size line"),
            (b"10000000000000000\r\n", "chunk size over 64 bits"),
            (b"4\rX", "missing CRLF"),
            (b"4\r\nWikiX", "missing CRLF"),
            (b"4\r\nWiki\rX", "missing CRLF"),
            (b"4\r\nWiki\n", "missing CRLF"),
            (b"0\r\nX: 1\n", "line ending without CR"),
            (b"0\r\n\n", "line ending without CR"),
            (b"0\r\n\rX", "missing CRLF"),
            (b"0\r\nX: 1\rX", "missing CRLF"),
        ];
        for (body, why) in cases {
            let mut framing = ChunkedFraming::new();
            assert_eq!(
                framing.feed(body),
                Err(HeadError::Malformed(format!("bad chunked body: {why}"))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // The largest size is fine (the data just never ends here).
        let mut framing = ChunkedFraming::new();
        assert_eq!(framing.feed(b"ffffffffffffffff\r\n"), Ok(18));
        assert_eq!(framing.feed(&[0; 100]), Ok(100));
        assert!(!framing.done());
        // Endless extensions or trailers are cut off.
        let mut framing = ChunkedFraming::new();
        let mut long = b"4;".to_vec();
        long.resize(MAX_CHUNK_LINE, b'x');
        assert_eq!(framing.feed(&long), Ok(MAX_CHUNK_LINE));
        assert!(framing.feed(b"x").is_err());
        let mut framing = ChunkedFraming::new();
        let mut trailers = b"0\r\n".to_vec();
        for _ in 0..MAX_CHUNK_LINE / 4 {
            trailers.extend_from_slice(b"X: 123\r\n");
        }
        assert!(framing.feed(&trailers).is_err());
    }

    /// `data` chunked into pieces of the given sizes, with the last chunk.
    fn chunk(data: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = data;
        for &size in sizes {
            let size = size.min(rest.len());
            if size == 0 {
                continue;
            }
            out.extend_from_slice(format!("{size:x}\r\n").as_bytes());
            out.extend_from_slice(&rest[..size]);
            out.extend_from_slice(b"\r\n");
            rest = &rest[size..];
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..2048), head: bool) {
            let _ = parse_request(&buf);
            let _ = parse_response(&buf, head);
            let _ = ChunkedFraming::new().feed(&buf);
        }

        #[test]
        fn heads_with_arbitrary_fields_never_panic(
            line in prop_oneof![Just("GET / HTTP/1.1"), Just("HTTP/1.1 200 OK"), Just("GET / HTTP/1.0")],
            fields in proptest::collection::vec(("[A-Za-z-]{1,20}", "[ -~]{0,40}"), 0..8),
            head: bool,
        ) {
            let mut buf = format!("{line}\r\n");
            for (name, value) in &fields {
                buf.push_str(&format!("{name}: {value}\r\n"));
            }
            buf.push_str("\r\n");
            let _ = parse_request(buf.as_bytes());
            let _ = parse_response(buf.as_bytes(), head);
        }

        #[test]
        fn chunked_bodies_end_where_they_end(
            data in proptest::collection::vec(any::<u8>(), 0..300),
            sizes in proptest::collection::vec(1usize..64, 0..20),
            split in any::<prop::sample::Index>(),
        ) {
            let body = chunk(&data, &sizes);
            let split = split.index(body.len() + 1);
            let mut framing = ChunkedFraming::new();
            prop_assert_eq!(framing.feed(&body[..split]), Ok(split));
            let mut rest = body[split..].to_vec();
            rest.extend_from_slice(b"5\r\nnext!\r\n");
            prop_assert_eq!(framing.feed(&rest), Ok(body.len() - split));
            prop_assert!(framing.done());
        }
    }
}
