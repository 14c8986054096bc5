//! The PROXY protocol header (HAProxy's `proxy-protocol.txt`, versions 1
//! and 2) that a proxy in front of the balancer sends before the client's
//! bytes, naming the client's address.
//!
//! [`parse`] reads as many bytes as the caller has: it answers
//! [`Parsed::Incomplete`] only while those bytes are a valid start of a
//! header, so a client that sends its request straight away (`GET / ...`)
//! is refused at its first bytes rather than after a read timeout.
//! [`encode_v2`] writes the header the balancer sends to a backend.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The longest v1 line the spec allows, `"PROXY "` to CRLF included
/// (`PROXY UNKNOWN` with two full IPv6 addresses and ports).
pub const V1_MAX: usize = 107;

/// The v2 signature: it starts with CRLF CRLF NUL so that no text protocol
/// (HTTP, SMTP, a v1 line) can begin with it.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The fixed v2 header: the signature, version/command, family/protocol and
/// a big-endian length of what follows.
const V2_FIXED: usize = 16;

/// The largest v2 address block plus TLVs accepted. The spec notes that a
/// header meant to arrive in one segment fits the minimum TCP segment size
/// (536 bytes); capping the declared length there bounds what a connection
/// makes the daemon buffer (the field itself allows 64 KiB) while leaving
/// ample room for the TLVs real proxies send (ALPN, authority, TLS details).
pub const V2_MAX_PAYLOAD: usize = 536;

/// The longest v2 header accepted, fixed part included.
pub const V2_MAX: usize = V2_FIXED + V2_MAX_PAYLOAD;

const V1_PREFIX: &[u8] = b"PROXY ";

/// v2 version (high nibble) 2 with the LOCAL or PROXY command (low nibble).
const V2_LOCAL: u8 = 0x20;
const V2_PROXY: u8 = 0x21;

/// v2 family (high nibble) and transport (low nibble) bytes.
const V2_UNSPEC: u8 = 0x00;
const V2_TCP4: u8 = 0x11;
const V2_TCP6: u8 = 0x21;
const V2_UNIX_STREAM: u8 = 0x31;

/// Address block sizes: two addresses then two ports (UNIX: two 108-byte
/// paths).
const V2_INET_LEN: usize = 12;
const V2_INET6_LEN: usize = 36;
const V2_UNIX_LEN: usize = 216;

/// What a header says about the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyHeader {
    /// The proxy relays a TCP connection from `source` to `destination`.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// The header carries no usable address (v1 `UNKNOWN`, v2 `LOCAL`, or
    /// v2 `PROXY` over `AF_UNSPEC` or `AF_UNIX`): the spec says to use the
    /// connection's own addresses.
    Local,
}

/// The result of parsing the bytes received so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed<T> {
    /// A complete item, `len` bytes long from the start of the buffer; any
    /// bytes after it belong to what follows.
    Done { value: T, len: usize },
    /// A valid start: read more and call again with the whole buffer.
    Incomplete,
}

/// Why bytes are not a PROXY header we accept. Each closes the connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("PROXY v1 line longer than {V1_MAX} bytes")]
    V1TooLong,
    #[error("bad PROXY v1 line")]
    V1Syntax,
    #[error("bad PROXY v1 address")]
    V1Address,
    #[error("unsupported PROXY v2 version/command byte {0:#04x}")]
    V2VersionCommand(u8),
    #[error("unsupported PROXY v2 family/protocol byte {0:#04x}")]
    V2Family(u8),
    #[error("PROXY v2 header longer than {V2_MAX} bytes")]
    V2TooLong,
    #[error("PROXY v2 length {0} too short for its addresses")]
    V2Short(u16),
}

/// Parses a v1 or v2 header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed<ProxyHeader>, ProxyHeaderError> {
    if starts_like(buf, &V2_SIGNATURE) {
        parse_v2(buf)
    } else if starts_like(buf, V1_PREFIX) {
        parse_v1(buf)
    } else {
        Err(ProxyHeaderError::NotProxy)
    }
}

/// Whether `buf` and `prefix` agree on their common length (an empty
/// buffer is the start of anything).
fn starts_like(buf: &[u8], prefix: &[u8]) -> bool {
    let n = buf.len().min(prefix.len());
    buf[..n] == prefix[..n]
}

fn parse_v1(buf: &[u8]) -> Result<Parsed<ProxyHeader>, ProxyHeaderError> {
    // The CR must leave room for its LF within V1_MAX bytes.
    let window = &buf[..buf.len().min(V1_MAX - 1)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        if buf.len() >= V1_MAX - 1 {
            return Err(ProxyHeaderError::V1TooLong);
        }
        check_v1_prefix(buf)?;
        return Ok(Parsed::Incomplete);
    };
    // A bare LF before it (or anything but LF after it) would let two
    // parsers disagree on where the line ends.
    check_v1_prefix(&buf[..cr])?;
    match buf.get(cr + 1) {
        None => Ok(Parsed::Incomplete),
        Some(b'\n') => {
            let value = parse_v1_line(&buf[V1_PREFIX.len().min(cr)..cr])?;
            Ok(Parsed::Done { value, len: cr + 2 })
        }
        Some(_) => Err(ProxyHeaderError::V1Syntax),
    }
}

/// Checks that `part` (no CR) can still become a valid v1 line: the
/// protocol is one of the three, and a TCP line holds only address and port
/// characters in at most five fields.
fn check_v1_prefix(part: &[u8]) -> Result<(), ProxyHeaderError> {
    if part.len() <= V1_PREFIX.len() {
        return Ok(());
    }
    if part.contains(&b'\n') {
        return Err(ProxyHeaderError::V1Syntax);
    }
    let rest = &part[V1_PREFIX.len()..];
    let (proto, fields) = match rest.iter().position(|&b| b == b' ') {
        Some(space) => (&rest[..space], Some(&rest[space..])),
        None => (rest, None),
    };
    let known: [&[u8]; 3] = [b"TCP4", b"TCP6", b"UNKNOWN"];
    let fits = |p: &&[u8]| match fields {
        Some(_) => proto == *p,
        None => p.starts_with(proto),
    };
    if !known.iter().any(fits) {
        return Err(ProxyHeaderError::V1Syntax);
    }
    // After UNKNOWN the spec says to ignore everything up to CRLF.
    if proto == b"UNKNOWN" {
        return Ok(());
    }
    let fields = fields.unwrap_or_default();
    let addressy = |b: &u8| match proto {
        b"TCP4" => b.is_ascii_digit() || b". ".contains(b),
        _ => b.is_ascii_hexdigit() || b":. ".contains(b),
    };
    if !fields.iter().all(addressy) || fields.iter().filter(|&&b| b == b' ').count() > 4 {
        return Err(ProxyHeaderError::V1Syntax);
    }
    Ok(())
}

/// Parses what follows `"PROXY "`, without the CRLF.
fn parse_v1_line(line: &[u8]) -> Result<ProxyHeader, ProxyHeaderError> {
    // Whatever follows UNKNOWN is ignored, bytes that are not UTF-8 too.
    if line == b"UNKNOWN" || line.starts_with(b"UNKNOWN ") {
        return Ok(ProxyHeader::Local);
    }
    let line = std::str::from_utf8(line).map_err(|_| ProxyHeaderError::V1Syntax)?;
    // Single spaces only: splitting on one space leaves an empty field
    // wherever there are two, which then fails to parse.
    let fields: Vec<&str> = line.split(' ').collect();
    match fields.as_slice() {
        [proto @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let v4 = *proto == "TCP4";
            Ok(ProxyHeader::Proxied {
                source: v1_address(v4, src, sport)?,
                destination: v1_address(v4, dst, dport)?,
            })
        }
        _ => Err(ProxyHeaderError::V1Syntax),
    }
}

fn v1_address(v4: bool, ip: &str, port: &str) -> Result<SocketAddr, ProxyHeaderError> {
    let ip: IpAddr = if v4 {
        ip.parse::<Ipv4Addr>()
            .map_err(|_| ProxyHeaderError::V1Address)?
            .into()
    } else {
        ip.parse::<Ipv6Addr>()
            .map_err(|_| ProxyHeaderError::V1Address)?
            .into()
    };
    // `u16::from_str` also takes a leading '+', which the spec does not.
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ProxyHeaderError::V1Address);
    }
    let port = port.parse().map_err(|_| ProxyHeaderError::V1Address)?;
    Ok(SocketAddr::new(ip, port))
}

fn parse_v2(buf: &[u8]) -> Result<Parsed<ProxyHeader>, ProxyHeaderError> {
    // Each field is checked as soon as it arrives.
    let Some(&version_command) = buf.get(12) else {
        return Ok(Parsed::Incomplete);
    };
    if version_command != V2_LOCAL && version_command != V2_PROXY {
        return Err(ProxyHeaderError::V2VersionCommand(version_command));
    }
    let Some(&family) = buf.get(13) else {
        return Ok(Parsed::Incomplete);
    };
    // LOCAL ignores the family (the spec says so); PROXY needs a stream
    // family we can use, or one that says "use the connection's addresses".
    let needed = match (version_command, family) {
        (V2_LOCAL, _) => 0,
        (_, V2_UNSPEC) => 0,
        (_, V2_TCP4) => V2_INET_LEN,
        (_, V2_TCP6) => V2_INET6_LEN,
        (_, V2_UNIX_STREAM) => V2_UNIX_LEN,
        _ => return Err(ProxyHeaderError::V2Family(family)),
    };
    let Some(length) = buf.get(14..16) else {
        return Ok(Parsed::Incomplete);
    };
    let length = u16::from_be_bytes([length[0], length[1]]);
    if usize::from(length) > V2_MAX_PAYLOAD {
        return Err(ProxyHeaderError::V2TooLong);
    }
    if usize::from(length) < needed {
        return Err(ProxyHeaderError::V2Short(length));
    }
    let len = V2_FIXED + usize::from(length);
    let Some(block) = buf.get(V2_FIXED..len) else {
        return Ok(Parsed::Incomplete);
    };
    // TLVs after the addresses are skipped: the balancer uses none of them.
    let value = match (version_command, family) {
        (V2_PROXY, V2_TCP4) => {
            let ip = |at: usize| IpAddr::from(<[u8; 4]>::try_from(&block[at..at + 4]).unwrap());
            ProxyHeader::Proxied {
                source: SocketAddr::new(ip(0), port_at(block, 8)),
                destination: SocketAddr::new(ip(4), port_at(block, 10)),
            }
        }
        (V2_PROXY, V2_TCP6) => {
            let ip = |at: usize| IpAddr::from(<[u8; 16]>::try_from(&block[at..at + 16]).unwrap());
            ProxyHeader::Proxied {
                source: SocketAddr::new(ip(0), port_at(block, 32)),
                destination: SocketAddr::new(ip(16), port_at(block, 34)),
            }
        }
        _ => ProxyHeader::Local,
    };
    Ok(Parsed::Done { value, len })
}

fn port_at(block: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([block[at], block[at + 1]])
}

/// A v2 header with the PROXY command over TCP, no TLVs. Both addresses
/// must share a family; if they do not, IPv4 ones are written IPv4-mapped
/// so both fit INET6.
pub fn encode_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(V2_FIXED + V2_INET6_LEN);
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(V2_PROXY);
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            out.push(V2_TCP4);
            out.extend_from_slice(&(V2_INET_LEN as u16).to_be_bytes());
            out.extend_from_slice(&src.octets());
            out.extend_from_slice(&dst.octets());
        }
        (src, dst) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(V2_TCP6);
            out.extend_from_slice(&(V2_INET6_LEN as u16).to_be_bytes());
            out.extend_from_slice(&v6(src).octets());
            out.extend_from_slice(&v6(dst).octets());
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn done(buf: &[u8]) -> (ProxyHeader, usize) {
        match parse(buf) {
            Ok(Parsed::Done { value, len }) => (value, len),
            other => panic!("{buf:?}: {other:?}"),
        }
    }

    fn proxied(source: &str, destination: &str) -> ProxyHeader {
        ProxyHeader::Proxied {
            source: source.parse().unwrap(),
            destination: destination.parse().unwrap(),
        }
    }

    /// Every strict prefix of a complete header asks for more bytes.
    fn assert_prefixes_incomplete(header: &[u8]) {
        for n in 0..header.len() {
            assert_eq!(
                parse(&header[..n]),
                Ok(Parsed::Incomplete),
                "prefix of {n} bytes of {header:?}"
            );
        }
    }

    fn v2(version_command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(version_command);
        out.push(family);
        out.extend_from_slice(&(block.len() as u16).to_be_bytes());
        out.extend_from_slice(block);
        out
    }

    const V1_TCP4: &[u8] = b"PROXY TCP4 198.18.0.1 198.18.1.1 56324 443\r\n";
    const V1_TCP6: &[u8] = b"PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\r\n";
    const V1_UNKNOWN: &[u8] = b"PROXY UNKNOWN\r\n";
    const V1_UNKNOWN_LONGEST: &[u8] = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";

    const V2_TCP4_BLOCK: [u8; 12] = [198, 18, 0, 1, 198, 18, 1, 1, 0xdc, 0x04, 0x01, 0xbb];

    fn v2_tcp6_block() -> Vec<u8> {
        let mut block = Vec::new();
        block.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        block.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        block.extend_from_slice(&[0xdc, 0x04, 0x01, 0xbb]);
        block
    }

    #[test]
    fn v1_tcp4_with_bytes_after() {
        let mut buf = V1_TCP4.to_vec();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            done(&buf),
            (proxied("198.18.0.1:56324", "198.18.1.1:443"), V1_TCP4.len())
        );
        assert_prefixes_incomplete(V1_TCP4);
    }

    #[test]
    fn v1_tcp6() {
        assert_eq!(
            done(V1_TCP6),
            (
                proxied("[2001:db8::1]:56324", "[2001:db8::2]:443"),
                V1_TCP6.len()
            )
        );
        assert_prefixes_incomplete(V1_TCP6);
    }

    #[test]
    fn v1_unknown_is_local() {
        assert_eq!(done(V1_UNKNOWN), (ProxyHeader::Local, V1_UNKNOWN.len()));
        assert_prefixes_incomplete(V1_UNKNOWN);
        assert_eq!(V1_UNKNOWN_LONGEST.len(), V1_MAX);
        assert_eq!(
            done(V1_UNKNOWN_LONGEST),
            (ProxyHeader::Local, V1_UNKNOWN_LONGEST.len())
        );
        assert_prefixes_incomplete(V1_UNKNOWN_LONGEST);
        let odd = b"PROXY UNKNOWN \xff\x00 whatever\r\n";
        assert_eq!(done(odd), (ProxyHeader::Local, odd.len()));
    }

    #[test]
    fn v1_errors() {
        let syntax: &[&[u8]] = &[
            b"PROXY TCP5",
            b"PROXY TCP4X",
            b"PROXY UDP4 1.2.3.4 1.2.3.4 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n",
            b"PROXY TCP4 x",
            b"PROXY TCP4 2001:",
            b"PROXY TCP6 2001:db8::g",
            b"PROXY TCP4 1.2.3.4\n",
            b"PROXY TCP4 1.2.3.4\rX",
            b"PROXY UNKNOWN\rX",
            b"PROXY \r\n",
            b"PROXY TCP4 1.2.3.4  1.2.3.4 1 2\r\n",
        ];
        for buf in syntax {
            assert_eq!(
                parse(buf),
                Err(ProxyHeaderError::V1Syntax),
                "{}",
                String::from_utf8_lossy(buf)
            );
        }
        let address: &[&[u8]] = &[
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 65536\r\n",
            b"PROXY TCP4 1.2.3 1.2.3.4 1 2\r\n",
            b"PROXY TCP4 1.2.3.4.5 1.2.3.4 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 2001:db8::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 \r\n",
            b"PROXY TCP6 ::1 ::2 1 ab\r\n",
        ];
        for buf in address {
            assert_eq!(
                parse(buf),
                Err(ProxyHeaderError::V1Address),
                "{}",
                String::from_utf8_lossy(buf)
            );
        }
        // No CRLF within 107 bytes, whether the line is still arriving or
        // the CR comes one byte too late.
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX - 1, b'a');
        assert_eq!(parse(&long), Err(ProxyHeaderError::V1TooLong));
        long.extend_from_slice(b"\r\n");
        assert_eq!(parse(&long), Err(ProxyHeaderError::V1TooLong));
        long.truncate(V1_MAX - 2);
        long.extend_from_slice(b"\r\n");
        assert_eq!(done(&long), (ProxyHeader::Local, V1_MAX));
    }

    #[test]
    fn not_proxy_at_the_first_byte() {
        for buf in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"G",
            b"PROXX",
            b"\r\n\r\n\0\r\nQUIZ",
            b"\r\n\r\n\r\n",
            b"\x16\x03\x01",
        ] {
            assert_eq!(parse(buf), Err(ProxyHeaderError::NotProxy), "{buf:?}");
        }
    }

    #[test]
    fn v2_tcp4_with_bytes_after() {
        let header = v2(V2_PROXY, V2_TCP4, &V2_TCP4_BLOCK);
        let mut buf = header.clone();
        buf.extend_from_slice(b"GET /");
        assert_eq!(
            done(&buf),
            (proxied("198.18.0.1:56324", "198.18.1.1:443"), 28)
        );
        assert_prefixes_incomplete(&header);
    }

    #[test]
    fn v2_tcp6() {
        let header = v2(V2_PROXY, V2_TCP6, &v2_tcp6_block());
        assert_eq!(
            done(&header),
            (proxied("[2001:db8::1]:56324", "[2001:db8::2]:443"), 52)
        );
        assert_prefixes_incomplete(&header);
    }

    #[test]
    fn v2_local_and_unusable_families() {
        // LOCAL (a health check from the proxy itself) with or without a block.
        for header in [
            v2(V2_LOCAL, V2_UNSPEC, &[]),
            v2(V2_LOCAL, V2_TCP4, &V2_TCP4_BLOCK),
            v2(V2_LOCAL, 0x12, &[]),
            v2(V2_PROXY, V2_UNSPEC, &[]),
            v2(V2_PROXY, V2_UNIX_STREAM, &[0; V2_UNIX_LEN]),
        ] {
            assert_eq!(done(&header), (ProxyHeader::Local, header.len()));
            assert_prefixes_incomplete(&header);
        }
    }

    #[test]
    fn v2_tlvs_are_skipped() {
        let mut block = V2_TCP4_BLOCK.to_vec();
        // PP2_TYPE_ALPN "h2", PP2_TYPE_AUTHORITY "example.com", PP2_TYPE_NOOP.
        block.extend_from_slice(&[0x01, 0, 2, b'h', b'2']);
        block.extend_from_slice(&[0x02, 0, 11]);
        block.extend_from_slice(b"example.com");
        block.extend_from_slice(&[0x04, 0, 3, 0, 0, 0]);
        let header = v2(V2_PROXY, V2_TCP4, &block);
        let mut buf = header.clone();
        buf.push(b'X');
        assert_eq!(
            done(&buf),
            (proxied("198.18.0.1:56324", "198.18.1.1:443"), header.len())
        );
        assert_prefixes_incomplete(&header);
    }

    #[test]
    fn v2_errors() {
        let mut buf = V2_SIGNATURE.to_vec();
        buf.push(0x11);
        assert_eq!(parse(&buf), Err(ProxyHeaderError::V2VersionCommand(0x11)));
        buf[12] = 0x22;
        assert_eq!(parse(&buf), Err(ProxyHeaderError::V2VersionCommand(0x22)));
        for family in [0x12, 0x22, 0x41, 0x10] {
            let header = v2(V2_PROXY, family, &[0; 36]);
            assert_eq!(
                parse(&header[..14]),
                Err(ProxyHeaderError::V2Family(family))
            );
        }
        let header = v2(V2_PROXY, V2_TCP4, &[0; V2_MAX_PAYLOAD]);
        assert_eq!(done(&header).1, V2_MAX);
        let header = v2(V2_PROXY, V2_TCP4, &[0; V2_MAX_PAYLOAD + 1]);
        assert_eq!(parse(&header[..16]), Err(ProxyHeaderError::V2TooLong));
        let header = v2(V2_PROXY, V2_TCP4, &[0; 11]);
        assert_eq!(parse(&header[..16]), Err(ProxyHeaderError::V2Short(11)));
        let header = v2(V2_PROXY, V2_TCP6, &V2_TCP4_BLOCK);
        assert_eq!(parse(&header[..16]), Err(ProxyHeaderError::V2Short(12)));
        let header = v2(V2_PROXY, V2_UNIX_STREAM, &[0; 36]);
        assert_eq!(parse(&header[..16]), Err(ProxyHeaderError::V2Short(36)));
    }

    #[test]
    fn errors_are_one_line() {
        assert_eq!(
            ProxyHeaderError::V2TooLong.to_string(),
            "PROXY v2 header longer than 552 bytes"
        );
        assert_eq!(
            ProxyHeaderError::V1TooLong.to_string(),
            "PROXY v1 line longer than 107 bytes"
        );
        assert_eq!(
            ProxyHeaderError::V2Family(0x12).to_string(),
            "unsupported PROXY v2 family/protocol byte 0x12"
        );
    }

    #[test]
    fn encode_round_trips() {
        for (source, destination, len) in [
            ("198.18.0.1:56324", "198.18.1.1:443", 28),
            ("[2001:db8::1]:1", "[2001:db8::2]:65535", 52),
        ] {
            let header = encode_v2(source.parse().unwrap(), destination.parse().unwrap());
            assert_eq!(header.len(), len);
            assert_eq!(done(&header), (proxied(source, destination), len));
        }
        let header = encode_v2(
            "198.18.0.1:1".parse().unwrap(),
            "[2001:db8::2]:2".parse().unwrap(),
        );
        assert_eq!(
            done(&header),
            (proxied("[::ffff:198.18.0.1]:1", "[2001:db8::2]:2"), 52)
        );
        assert_eq!(header[..16], v2(V2_PROXY, V2_TCP6, &[0; 36])[..16]);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..700)) {
            let _ = parse(&buf);
        }

        #[test]
        fn after_a_signature_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut buf = V2_SIGNATURE.to_vec();
            buf.extend_from_slice(&tail);
            let _ = parse(&buf);
            let mut buf = V1_PREFIX.to_vec();
            buf.extend_from_slice(&tail);
            let _ = parse(&buf);
        }

        #[test]
        fn encode_parse_round_trip(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) {
            let (source, destination) = (SocketAddr::new(src, sport), SocketAddr::new(dst, dport));
            let header = encode_v2(source, destination);
            let (value, len) = done(&header);
            prop_assert_eq!(len, header.len());
            // Mixed families come back as IPv6, the IPv4 side mapped.
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) if src.is_ipv4() != dst.is_ipv4() => IpAddr::V6(v4.to_ipv6_mapped()),
                ip => ip,
            };
            prop_assert_eq!(value, ProxyHeader::Proxied {
                source: SocketAddr::new(v6(src), sport),
                destination: SocketAddr::new(v6(dst), dport),
            });
        }
    }
}
