//! The HTTP endpoint: `GET /metrics`, `GET /status`, `GET /`; 404 for any
//! other path, 405 for another method on one of those.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::{
    PROMETHEUS_CONTENT_TYPE, Snapshot, TEXT_CONTENT_TYPE, page::render_html, render_prometheus,
    render_prometheus_text,
};

/// Where the endpoint gets a fresh [`Snapshot`] for each request. It is
/// called on a blocking-task thread, so it may read the kernel maps directly.
pub type SnapshotSource = Arc<dyn Fn() -> Snapshot + Send + Sync>;

/// A client that sends no complete request head in this long is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the metrics address, so the daemon can fail with one clear line
/// (`metrics.listen: cannot bind ADDR: ...`) before attaching anything.
pub async fn bind(listen: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(listen)
        .await
        .with_context(|| format!("metrics.listen: cannot bind {listen}"))
}

/// Serves the endpoint on `listener` until the task is dropped. Errors on
/// one connection are logged and do not stop the others.
pub async fn serve(listener: TcpListener, source: SnapshotSource) -> anyhow::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics endpoint listening");
    }
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // E.g. EMFILE: back off instead of spinning.
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let source = source.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, source.clone()));
            if let Err(e) = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "metrics: connection ended with an error");
            }
        });
    }
}

async fn handle<B>(
    req: Request<B>,
    source: SnapshotSource,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    if !matches!(path, "/" | "/metrics" | "/status") {
        return Ok(plain(StatusCode::NOT_FOUND, "not found\n"));
    }
    if req.method() != Method::GET {
        let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return Ok(resp);
    }
    let path = path.to_owned();
    let openmetrics = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    let snapshot = match tokio::task::spawn_blocking(move || source()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "metrics: taking a snapshot failed");
            return Ok(plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "snapshot failed\n",
            ));
        }
    };
    Ok(match path.as_str() {
        // Prometheus asks for OpenMetrics; curl, promtool and older
        // scrapers get the classic text format.
        "/metrics" if openmetrics => body(PROMETHEUS_CONTENT_TYPE, render_prometheus(&snapshot)),
        "/metrics" => body(TEXT_CONTENT_TYPE, render_prometheus_text(&snapshot)),
        "/status" => match serde_json::to_string_pretty(&snapshot) {
            Ok(json) => body("application/json", json + "\n"),
            Err(e) => {
                tracing::error!(error = %e, "metrics: serializing the snapshot failed");
                plain(StatusCode::INTERNAL_SERVER_ERROR, "serialization failed\n")
            }
        },
        _ => body("text/html; charset=utf-8", render_html(&snapshot)),
    })
}

fn body(content_type: &'static str, text: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut resp = body("text/plain; charset=utf-8", text.to_owned());
    *resp.status_mut() = status;
    resp
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
    };

    use super::*;
    use crate::metrics::tests::sample;

    /// One HTTP/1.1 request over a plain socket: (status, head, body).
    async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
        request_with(addr, method, path, "").await
    }

    /// [`request`] with extra header lines (each ending in `\r\n`).
    async fn request_with(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &str,
    ) -> (u16, String, String) {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let req =
            format!("{method} {path} HTTP/1.1\r\nHost: test\r\n{headers}Connection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read");
        let raw = String::from_utf8(raw).expect("utf-8 response");
        let (head, body) = raw.split_once("\r\n\r\n").expect("head and body");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("status line in {head:?}"));
        (status, head.to_ascii_lowercase(), body.to_owned())
    }

    #[tokio::test]
    async fn metrics_http_endpoints() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, Arc::new(sample)));

        // What Prometheus sends: OpenMetrics preferred.
        let accept = "Accept: application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4\r\n";
        let (status, head, body) = request_with(addr, "GET", "/metrics", accept).await;
        assert_eq!(status, 200, "{head}");
        assert!(
            head.contains(&format!("content-type: {PROMETHEUS_CONTENT_TYPE}")),
            "{head}"
        );
        assert_eq!(body, render_prometheus(&sample()));
        assert!(body.contains(r#"balancer_backend_up{service="web",backend="198.18.1.1:8080"} 1"#));
        // Anyone else: the classic text format.
        let (status, head, body) = request(addr, "GET", "/metrics").await;
        assert_eq!(status, 200, "{head}");
        assert!(
            head.contains(&format!("content-type: {TEXT_CONTENT_TYPE}")),
            "{head}"
        );
        assert_eq!(body, render_prometheus_text(&sample()));

        let (status, head, body) = request(addr, "GET", "/status").await;
        assert_eq!(status, 200, "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        let parsed: Snapshot = serde_json::from_str(&body).expect("JSON snapshot");
        assert_eq!(parsed, sample());

        let (status, head, body) = request(addr, "GET", "/").await;
        assert_eq!(status, 200, "{head}");
        assert!(head.contains("content-type: text/html"), "{head}");
        assert!(
            body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{body}"
        );
        assert!(!body.contains("<script>"), "{body}");

        let (status, _, _) = request(addr, "GET", "/metrics?x=1").await;
        assert_eq!(status, 200);
        let (status, _, _) = request(addr, "GET", "/nope").await;
        assert_eq!(status, 404);
        let (status, head, _) = request(addr, "POST", "/metrics").await;
        assert_eq!(status, 405);
        assert!(head.contains("allow: get"), "{head}");

        server.abort();
    }

    #[tokio::test]
    async fn metrics_bind_error_names_the_setting() {
        let taken = bind("127.0.0.1:0".parse().unwrap()).await.expect("bind");
        let addr = taken.local_addr().unwrap();
        let err = bind(addr).await.expect_err("address in use");
        let text = format!("{err:#}");
        assert!(
            text.starts_with(&format!("metrics.listen: cannot bind {addr}: ")),
            "{text}"
        );
    }
}
