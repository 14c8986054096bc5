//! The CLI's side of the control socket: connect, write one request line,
//! read one response line. Blocking std I/O: the CLI asks one question and
//! exits.

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use super::protocol::{Reply, Request, Response};

/// How long the CLI waits for the daemon to answer (and to take the request).
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The longest response line the CLI reads. Responses come from the daemon
/// (a socket only root and its group may open), so this only stops a runaway; a full `flows`
/// list stays far below it.
const MAX_RESPONSE_BYTES: u64 = 256 * 1024 * 1024;

/// Why a request failed. [`request`] returns it inside an [`anyhow::Error`];
/// `downcast_ref::<Error>()` gets it back (see [`Error::no_daemon`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot reach the daemon at {}: no such socket (is `balancer run` running? --socket sets the path)",
        .0.display()
    )]
    NoSocket(PathBuf),
    #[error(
        "cannot reach the daemon at {}: connection refused (no daemon listens there: is `balancer run` running?)",
        .0.display()
    )]
    Refused(PathBuf),
    #[error(
        "cannot reach the daemon at {}: permission denied (run as root, or for status, lookup and flows as a member of the daemon's [control] group)",
        .0.display()
    )]
    PermissionDenied(PathBuf),
    #[error("cannot reach the daemon at {}: {source}", .path.display())]
    Connect { path: PathBuf, source: io::Error },
    #[error("cannot send the request to the daemon at {}: {source}", .path.display())]
    Send { path: PathBuf, source: io::Error },
    #[error("the daemon at {} did not answer within {} s", .0.display(), TIMEOUT.as_secs())]
    Timeout(PathBuf),
    #[error("cannot read the daemon's response from {}: {source}", .path.display())]
    Receive { path: PathBuf, source: io::Error },
    #[error("the daemon at {} closed the connection without answering", .0.display())]
    NoResponse(PathBuf),
    #[error("the daemon sent an unreadable response: {0}")]
    Unreadable(String),
    /// The daemon refused the request; the text is its one-line reason.
    #[error("{0}")]
    Daemon(String),
}

impl Error {
    /// No daemon serves the socket: it does not exist, or nothing listens
    /// on it (a daemon that stopped leaves its socket file behind).
    pub fn no_daemon(&self) -> bool {
        matches!(self, Error::NoSocket(_) | Error::Refused(_))
    }
}

/// Send `request` to the daemon at `socket` and return its reply. A
/// [`Response::Error`] becomes an error whose text is exactly the daemon's;
/// every error is an [`Error`] and one line.
pub fn request(socket: &Path, request: &Request) -> anyhow::Result<Reply> {
    Ok(exchange(socket, request)?)
}

fn exchange(socket: &Path, request: &Request) -> Result<Reply, Error> {
    let path = || socket.to_path_buf();
    let mut stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => Error::NoSocket(path()),
        io::ErrorKind::ConnectionRefused => Error::Refused(path()),
        io::ErrorKind::PermissionDenied => Error::PermissionDenied(path()),
        _ => Error::Connect {
            path: path(),
            source: e,
        },
    })?;
    let send = |source| Error::Send {
        path: path(),
        source,
    };
    stream.set_write_timeout(Some(TIMEOUT)).map_err(send)?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(send)?;

    let mut line = serde_json::to_vec(request).expect("a Request always serializes");
    line.push(b'\n');
    stream.write_all(&line).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout(path()),
        _ => send(e),
    })?;

    let mut response = Vec::new();
    BufReader::new((&stream).take(MAX_RESPONSE_BYTES))
        .read_until(b'\n', &mut response)
        .map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout(path()),
            _ => Error::Receive {
                path: path(),
                source: e,
            },
        })?;
    parse_response(&response, socket)
}

/// The reply in one response line (newline included or not).
fn parse_response(line: &[u8], socket: &Path) -> Result<Reply, Error> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::NoResponse(socket.to_path_buf()));
    }
    match serde_json::from_slice(line) {
        Ok(Response::Ok(reply)) => Ok(reply),
        Ok(Response::Error(message)) => Err(Error::Daemon(message)),
        Err(e) => Err(Error::Unreadable(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use std::{os::unix::net::UnixListener, thread};

    use super::*;

    /// A one-shot server in a temp dir: reads one line, checks it is
    /// `expect`, answers `answer` verbatim, closes. Returns the socket path.
    fn serve_once(
        name: &str,
        expect: &Request,
        answer: &'static [u8],
    ) -> (PathBuf, thread::JoinHandle<()>) {
        let dir = std::env::temp_dir().join(format!(
            "balancer-control-client-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("control.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let expect = expect.clone();
        let server = thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&conn).read_line(&mut line).unwrap();
            assert!(line.ends_with('\n'), "{line:?}");
            let got: Request = serde_json::from_str(&line).unwrap();
            assert_eq!(got, expect);
            conn.write_all(answer).unwrap();
        });
        (path, server)
    }

    #[test]
    fn control_client_round_trip() {
        let req = Request::BackendDrain {
            service: "chat".into(),
            address: "198.18.1.11:3000".into(),
        };
        let (path, server) = serve_once(
            "ok",
            &req,
            b"{\"ok\":{\"done\":{\"message\":\"draining\"}}}\n",
        );
        let reply = request(&path, &req).unwrap();
        server.join().unwrap();
        assert_eq!(
            reply,
            Reply::Done {
                message: "draining".into()
            }
        );
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn control_client_response_without_newline_is_read_to_eof() {
        let (path, server) = serve_once(
            "eof",
            &Request::Detach,
            b"{\"ok\":{\"detached\":{\"pins_removed\":4}}}",
        );
        let reply = request(&path, &Request::Detach).unwrap();
        server.join().unwrap();
        assert_eq!(
            reply,
            Reply::Detached {
                pins_removed: 4,
                foreign_left: 0
            }
        );
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn control_client_daemon_error_is_its_message_exactly() {
        let (path, server) = serve_once(
            "err",
            &Request::Status,
            b"{\"error\":\"no service named \\\"x\\\"\"}\n",
        );
        let e = request(&path, &Request::Status).unwrap_err();
        server.join().unwrap();
        assert_eq!(e.to_string(), "no service named \"x\"");
        assert_eq!(format!("{e:#}"), "no service named \"x\"");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn control_client_missing_socket_is_one_clear_line() {
        let path = Path::new("/nonexistent-balancer-dir/control.sock");
        let e = request(path, &Request::Status).unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            "cannot reach the daemon at /nonexistent-balancer-dir/control.sock: no such socket \
             (is `balancer run` running? --socket sets the path)"
        );
        assert!(e.downcast_ref::<Error>().is_some_and(Error::no_daemon));
    }

    #[test]
    fn control_client_stale_socket_counts_as_no_daemon() {
        let dir = std::env::temp_dir().join(format!(
            "balancer-control-client-{}-stale",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("control.sock");
        drop(UnixListener::bind(&path).unwrap());
        let e = request(&path, &Request::Status).unwrap_err();
        assert!(
            e.downcast_ref::<Error>().is_some_and(Error::no_daemon),
            "{e:#}"
        );
        assert!(!format!("{e:#}").contains('\n'));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn control_client_unreadable_and_empty_responses() {
        let socket = Path::new("/run/balancer/control.sock");
        let e = parse_response(b"HTTP/1.1 400 Bad Request\r\n", socket).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("the daemon sent an unreadable response: "),
            "{e}"
        );
        assert!(!e.to_string().contains('\n'));
        let e = parse_response(b"{\"ok\":{\"nonsense\":1}}\n", socket).unwrap_err();
        assert!(matches!(e, Error::Unreadable(_)), "{e}");
        let e = parse_response(b"", socket).unwrap_err();
        assert!(matches!(e, Error::NoResponse(_)), "{e}");
    }
}
