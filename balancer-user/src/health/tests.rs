//! Real sockets on 127.0.0.1, ephemeral ports, short intervals; every wait
//! is bounded.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU16, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket},
    sync::mpsc::{self, UnboundedReceiver, error::TryRecvError},
    task::JoinHandle,
    time::{sleep, timeout},
};

use super::{probe::parse_status_line, *};

const WAIT: Duration = Duration::from_secs(3);

fn config(
    check: HealthCheckKind,
    interval_ms: u64,
    timeout_ms: u64,
    rise: u32,
    fall: u32,
) -> HealthConfig {
    HealthConfig {
        check,
        path: "/health".to_owned(),
        expect_status: 200,
        interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_millis(timeout_ms),
        rise,
        fall,
    }
}

fn spawn(
    backend: SocketAddr,
    config: HealthConfig,
    initially_up: bool,
) -> (HealthHandle, UnboundedReceiver<HealthEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = HealthChecker::spawn("web".to_owned(), backend, config, initially_up, tx);
    (handle, rx)
}

async fn next_event(rx: &mut UnboundedReceiver<HealthEvent>) -> HealthEvent {
    timeout(WAIT, rx.recv())
        .await
        .expect("no health event in time")
        .expect("health event channel closed")
}

/// A listener on `addr`, which may have been used a moment ago.
fn listen_on(addr: SocketAddr) -> TcpListener {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr).unwrap();
    socket.listen(64).unwrap()
}

async fn listen() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// An address nothing listens on (for now).
async fn refusing_addr() -> SocketAddr {
    listen().await.local_addr().unwrap()
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    timeout(WAIT, async {
        while !cond() {
            sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}

/// A tiny HTTP server answering every request with `status`; keeps the
/// latest request's text.
struct HttpServer {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    last_request: Arc<Mutex<Option<String>>>,
    task: JoinHandle<()>,
}

impl HttpServer {
    async fn start(status: u16) -> Self {
        let listener = listen().await;
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(AtomicU16::new(status));
        let last_request = Arc::new(Mutex::new(None));
        let task = tokio::spawn({
            let status = Arc::clone(&status);
            let last_request = Arc::clone(&last_request);
            async move {
                loop {
                    let (mut stream, _) = listener.accept().await.unwrap();
                    let status = status.load(Ordering::Relaxed);
                    let last_request = Arc::clone(&last_request);
                    tokio::spawn(async move {
                        let mut request = Vec::new();
                        let mut chunk = [0; 512];
                        while !request.ends_with(b"\r\n\r\n") {
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => request.extend_from_slice(&chunk[..n]),
                            }
                        }
                        *last_request.lock().unwrap() =
                            Some(String::from_utf8_lossy(&request).into_owned());
                        let response =
                            format!("HTTP/1.0 {status} Whatever\r\nContent-Length: 0\r\n\r\n");
                        let _ = stream.write_all(response.as_bytes()).await;
                    });
                }
            }
        });
        HttpServer {
            addr,
            status,
            last_request,
            task,
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[test]
fn tracker_falls_after_exactly_fall_failures_in_a_row() {
    let mut t = Tracker::new(true, 2, 3);
    assert_eq!(t.record(false), None);
    assert_eq!(t.record(false), None);
    // A pass resets the failure count.
    assert_eq!(t.record(true), None);
    assert_eq!(t.record(false), None);
    assert_eq!(t.record(false), None);
    assert!(t.is_up());
    assert_eq!(t.record(false), Some(false));
    assert!(!t.is_up());
    // Further failures change nothing.
    assert_eq!(t.record(false), None);
}

#[test]
fn tracker_rises_after_exactly_rise_passes_in_a_row() {
    let mut t = Tracker::new(false, 2, 3);
    assert_eq!(t.record(true), None);
    // A failure resets the pass count.
    assert_eq!(t.record(false), None);
    assert_eq!(t.record(true), None);
    assert_eq!(t.record(true), Some(true));
    assert!(t.is_up());
    assert_eq!(t.record(true), None);
}

#[test]
fn tracker_treats_zero_counts_as_one() {
    let mut t = Tracker::new(true, 0, 0);
    assert_eq!(t.record(false), Some(false));
    assert_eq!(t.record(true), Some(true));
}

#[test]
fn status_line_parsing() {
    assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r"), Some(200));
    assert_eq!(
        parse_status_line(b"HTTP/1.0 503 Service Unavailable"),
        Some(503)
    );
    assert_eq!(parse_status_line(b"HTTP/1.1 204\r"), Some(204));
    assert_eq!(parse_status_line(b"HTTP/1.1 20 OK"), None);
    assert_eq!(parse_status_line(b"HTTP/1.1 abc OK"), None);
    assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH_9.6\r"), None);
    assert_eq!(parse_status_line(b""), None);
}

#[tokio::test]
async fn first_check_runs_at_once() {
    let listener = listen().await;
    let addr = listener.local_addr().unwrap();
    // One interval would outlast the wait.
    let (handle, mut rx) = spawn(addr, config(HealthCheckKind::Tcp, 60_000, 500, 1, 1), false);
    let event = next_event(&mut rx).await;
    assert_eq!(
        event,
        HealthEvent {
            service: "web".to_owned(),
            backend: addr,
            up: true
        }
    );
    assert!(handle.is_up());
}

#[tokio::test]
async fn tcp_detects_listener_going_away_and_coming_back() {
    let (interval, check_timeout, rise, fall) = (50, 200, 2, 2);
    let listener = listen().await;
    let addr = listener.local_addr().unwrap();
    let (handle, mut rx) = spawn(
        addr,
        config(HealthCheckKind::Tcp, interval, check_timeout, rise, fall),
        true,
    );
    let stats = handle.stats();
    wait_until("3 checks passed", || stats.passed() >= 3).await;
    // Up and passing: no transition, no event.
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    assert_eq!(stats.last_result().unwrap().reason, "ok");

    drop(listener);
    let gone = Instant::now();
    let event = next_event(&mut rx).await;
    assert!(!event.up);
    assert!(!handle.is_up());
    let bound = Duration::from_millis(u64::from(fall) * interval + check_timeout);
    let slack = Duration::from_millis(300);
    assert!(
        gone.elapsed() <= bound + slack,
        "down after {:?}, bound {bound:?}",
        gone.elapsed()
    );
    let last = stats.last_result().unwrap();
    assert!(!last.success);
    assert_eq!(last.reason, "connection refused");

    let _listener = listen_on(addr);
    let event = next_event(&mut rx).await;
    assert!(event.up);
    assert!(handle.is_up());
    assert!(stats.last_result().unwrap().success);
}

#[tokio::test]
async fn fall_and_rise_take_exactly_that_many_results() {
    // Wide enough that no further check runs between an event and the
    // assertions (or the listener coming back).
    let interval = 200;
    let addr = refusing_addr().await;
    let (handle, mut rx) = spawn(
        addr,
        config(HealthCheckKind::Tcp, interval, 100, 2, 3),
        true,
    );
    let stats = handle.stats();

    let event = next_event(&mut rx).await;
    assert!(!event.up);
    assert_eq!((stats.failed(), stats.passed()), (3, 0));

    let _listener = listen_on(addr);
    let event = next_event(&mut rx).await;
    assert!(event.up);
    assert_eq!((stats.failed(), stats.passed()), (3, 2));
}

#[tokio::test]
async fn http_follows_the_status_code() {
    let server = HttpServer::start(200).await;
    let (handle, mut rx) = spawn(
        server.addr,
        config(HealthCheckKind::Http, 50, 500, 2, 2),
        false,
    );
    let stats = handle.stats();

    assert!(next_event(&mut rx).await.up);
    assert_eq!(stats.last_result().unwrap().reason, "ok (200)");
    assert_eq!(
        server.last_request.lock().unwrap().as_deref(),
        Some(
            format!(
                "GET /health HTTP/1.0\r\nHost: {}\r\nUser-Agent: balancer-health\r\n\
                 Connection: close\r\n\r\n",
                server.addr
            )
            .as_str()
        )
    );

    server.status.store(503, Ordering::Relaxed);
    assert!(!next_event(&mut rx).await.up);
    assert!(!handle.is_up());
    let last = stats.last_result().unwrap();
    assert!(!last.success);
    assert_eq!(last.reason, "status 503");

    server.status.store(200, Ordering::Relaxed);
    assert!(next_event(&mut rx).await.up);
}

#[tokio::test]
async fn http_server_that_never_answers_times_out() {
    let listener = listen().await;
    let addr = listener.local_addr().unwrap();
    // Accepts, and keeps every connection open without a word.
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            held.push(listener.accept().await.unwrap());
        }
    });
    let check_timeout = Duration::from_millis(150);
    let (handle, mut rx) = spawn(addr, config(HealthCheckKind::Http, 50, 150, 2, 1), true);

    assert!(!next_event(&mut rx).await.up);
    let last = handle.stats().last_result().unwrap();
    assert!(!last.success);
    assert_eq!(last.reason, "timeout");
    assert!(last.duration >= check_timeout, "{:?}", last.duration);
    server.abort();
}

#[tokio::test]
async fn none_never_checks_nor_emits() {
    let listener = listen().await;
    let addr = listener.local_addr().unwrap();
    let (handle, mut rx) = spawn(addr, config(HealthCheckKind::None, 10, 10, 1, 1), false);
    assert!(handle.is_up());
    let got = timeout(Duration::from_millis(100), rx.recv()).await;
    assert!(!matches!(got, Ok(Some(_))), "{got:?}");
    let stats = handle.stats();
    assert_eq!((stats.passed(), stats.failed()), (0, 0));
    assert_eq!(stats.last_result(), None);
}

#[tokio::test]
async fn dropping_the_handle_stops_the_task() {
    let addr = refusing_addr().await;
    let (handle, mut rx) = spawn(addr, config(HealthCheckKind::Tcp, 10, 100, 1, 1), true);
    let stats = handle.stats();
    wait_until("a check ran", || stats.failed() >= 1).await;
    drop(handle);
    // The task's end drops the only sender; the down event may come first.
    timeout(WAIT, async { while rx.recv().await.is_some() {} })
        .await
        .expect("task still running");
    let failed = stats.failed();
    sleep(Duration::from_millis(50)).await;
    assert_eq!(stats.failed(), failed);
}
