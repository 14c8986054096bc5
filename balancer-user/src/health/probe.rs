//! The checks themselves, unbounded in time: the caller applies `timeout`.
//! Each returns a short reason, `Ok` if the check passed.

use std::{io, net::SocketAddr};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// The most of the response read while looking for the status line's end.
const MAX_STATUS_LINE: usize = 1024;

pub(super) async fn tcp(backend: SocketAddr) -> Result<String, String> {
    TcpStream::connect(backend)
        .await
        .map_err(|e| io_reason(&e))?;
    Ok("ok".to_owned())
}

/// `GET path` over HTTP/1.0; passes iff the status is `expect_status`.
pub(super) async fn http(
    backend: SocketAddr,
    path: &str,
    expect_status: u16,
) -> Result<String, String> {
    let mut stream = TcpStream::connect(backend)
        .await
        .map_err(|e| io_reason(&e))?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {backend}\r\nUser-Agent: balancer-health\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| io_reason(&e))?;

    let mut buf = Vec::with_capacity(256);
    let line_end = loop {
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            break end;
        }
        if buf.len() >= MAX_STATUS_LINE {
            return Err("status line too long".to_owned());
        }
        let mut chunk = [0; 256];
        let n = stream.read(&mut chunk).await.map_err(|e| io_reason(&e))?;
        if n == 0 {
            return Err(if buf.is_empty() {
                "empty response".to_owned()
            } else {
                "closed before end of status line".to_owned()
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    };

    let status = parse_status_line(&buf[..line_end]).ok_or("bad status line")?;
    if status == expect_status {
        Ok(format!("ok ({status})"))
    } else {
        Err(format!("status {status}"))
    }
}

/// The status code of `HTTP/1.x NNN reason` (trailing `\r` allowed).
pub(super) fn parse_status_line(line: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.trim_end_matches('\r').splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    code.parse().ok()
}

/// A short reason for an I/O error: the common ones in a few words.
fn io_reason(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        io::ErrorKind::ConnectionReset => "connection reset".to_owned(),
        io::ErrorKind::ConnectionAborted => "connection aborted".to_owned(),
        io::ErrorKind::BrokenPipe => "broken pipe".to_owned(),
        io::ErrorKind::TimedOut => "timeout".to_owned(),
        io::ErrorKind::HostUnreachable => "host unreachable".to_owned(),
        io::ErrorKind::NetworkUnreachable => "network unreachable".to_owned(),
        io::ErrorKind::AddrNotAvailable => "address not available".to_owned(),
        _ => error.to_string(),
    }
}
