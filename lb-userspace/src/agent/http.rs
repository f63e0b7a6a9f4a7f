//! The metrics endpoint's HTTP server (hyper).
//!
//! GET /metrics answers with the exporter's text; everything else gets the status a scraper or a
//! curious operator expects.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header, Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

use crate::agent::metrics::{encode, Snapshot, CONTENT_TYPE};

/// Scrapes are tiny; a bound keeps a slow or stuck client from holding a socket for long.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections handled at once; more wait in the listen backlog, so a flood of idle
/// connections cannot use up the agent's file descriptors.
const MAX_CONNECTIONS: usize = 64;

pub type SnapshotFn = Arc<dyn Fn() -> anyhow::Result<Snapshot> + Send + Sync>;

/// Serves GET /metrics on `addr` (any other path: 404; other methods: 405), one request per
/// connection. `snapshot` is called per scrape; if it returns Err the answer is 500 with the
/// error text. Returns only when the listener cannot be bound; otherwise runs forever, so
/// spawn it as a task.
pub async fn serve(addr: SocketAddr, snapshot: SnapshotFn) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics listener on {addr}"))?;
    let local = listener.local_addr().unwrap_or(addr);
    log::info!("Prometheus metrics on http://{local}/metrics");
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Typically EMFILE or a connection reset before accept: transient, so keep
                // serving, but pause so a persistent error does not spin the task.
                log::warn!("metrics: accept on {local} failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let snapshot = snapshot.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| respond(req, snapshot.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .title_case_headers(true)
                .timer(TokioTimer::new())
                .header_read_timeout(IO_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(IO_TIMEOUT, conn).await {
                Ok(Err(e)) => log::debug!("metrics: connection from {peer}: {e}"),
                Err(_) => log::debug!("metrics: connection from {peer} timed out"),
                Ok(Ok(())) => {}
            }
            drop(permit);
        });
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    r
}

async fn respond(
    req: Request<Incoming>,
    snapshot: SnapshotFn,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != "/metrics" {
        return Ok(text(
            StatusCode::NOT_FOUND,
            "not found; metrics are at /metrics\n",
        ));
    }
    if req.method() != Method::GET {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET is allowed\n");
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
        return Ok(r);
    }
    // Gathering reads the BPF maps (the flow table can hold millions of entries), which is
    // blocking work that must not stall the runtime the agent's loop runs on.
    Ok(
        match tokio::task::spawn_blocking(move || snapshot().map(|s| encode(&s))).await {
            Ok(Ok(body)) => {
                let mut r = text(StatusCode::OK, body);
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(CONTENT_TYPE),
                );
                r
            }
            Ok(Err(e)) => {
                log::warn!("metrics: gathering the snapshot failed: {e:#}");
                text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n"))
            }
            Err(e) => {
                log::error!("metrics: gathering the snapshot panicked: {e}");
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "gathering the snapshot panicked\n",
                )
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
    };

    use super::*;
    use crate::agent::metrics::tests::{parse, snapshot, value};

    fn free_port() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    /// Sends `request` raw and returns (status, head, body).
    async fn http(addr: SocketAddr, request: &str) -> (u16, String, String) {
        let exchange = async {
            // serve was just spawned: retry until it listens.
            let mut stream = loop {
                match TcpStream::connect(addr).await {
                    Ok(s) => break s,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            };
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await.unwrap();
            String::from_utf8(raw).unwrap()
        };
        let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .expect("the exchange finishes in time");
        let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        // Keep each header line's CRLF so assertions can match whole lines.
        (status, format!("{head}\r\n"), body.to_string())
    }

    fn spawn_serve(f: impl Fn() -> anyhow::Result<Snapshot> + Send + Sync + 'static) -> SocketAddr {
        let addr = free_port();
        tokio::spawn(serve(addr, Arc::new(f)));
        addr
    }

    #[tokio::test]
    async fn serves_metrics_and_rejects_the_rest() {
        let addr = spawn_serve(|| Ok(snapshot()));
        let (status, head, body) = http(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status, 200, "{head}");
        assert!(
            head.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")),
            "{head}"
        );
        assert!(head.contains("Connection: close\r\n"), "{head}");
        assert!(
            head.contains(&format!("Content-Length: {}\r\n", body.len())),
            "{head}"
        );
        let scrape = parse(&body);
        assert_eq!(
            value(
                &scrape,
                "xdplb_backend_packets_total",
                &[("backend", "10.0.1.1")]
            ),
            200.0
        );

        let (status, _, _) = http(addr, "GET /metrics?x=1 HTTP/1.0\r\n\r\n").await;
        assert_eq!(status, 200);
        let (status, _, _) = http(addr, "GET /other HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status, 404);
        let (status, head, _) = http(
            addr,
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        )
        .await;
        assert_eq!(status, 405);
        assert!(head.contains("Allow: GET\r\n"), "{head}");
        let (status, _, _) = http(addr, "garbage\r\n\r\n").await;
        assert_eq!(status, 400);
    }

    #[tokio::test]
    async fn snapshot_error_is_a_500_with_its_text() {
        let addr =
            spawn_serve(|| Err(anyhow::anyhow!("pinned maps gone").context("reading counters")));
        let (status, head, body) = http(addr, "GET /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(status, 500, "{head}");
        assert!(head.contains("Content-Type: text/plain"), "{head}");
        assert_eq!(body, "reading counters: pinned maps gone\n");
    }

    #[tokio::test]
    async fn bind_failure_names_the_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let result = tokio::time::timeout(
            Duration::from_secs(10),
            serve(addr, Arc::new(|| Ok(snapshot()))),
        )
        .await
        .expect("serve returns at once when it cannot bind");
        let err = format!("{:#}", result.unwrap_err());
        assert!(err.contains(&addr.to_string()), "{err}");
    }
}
