//! The HTTP endpoint for Prometheus: `GET /metrics` (axum over hyper), loopback by
//! default. Bounded: 64 connections, one request each, an 8 KiB request head read
//! within 5 s, 10 s for the whole exchange, and one render at a time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::metrics::CONTENT_TYPE;

const CONNECTIONS_MAX: usize = 64;
const HEAD_BYTES_MAX: usize = 8192;
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// What `/metrics` renders.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// The routes: `/metrics`, and a 404 that says what is served.
pub fn router(render: Render) -> Router {
    // One render at a time, whoever waits: the permit goes with the render, so a
    // scraper that hangs up does not leave renders piling up behind it.
    let one = Arc::new(Semaphore::new(1));
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let (render, one) = (render.clone(), one.clone());
                async move {
                    let Ok(permit) = one.acquire_owned().await else {
                        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
                    };
                    // The render takes the core's lock: off the async workers.
                    let rendered = tokio::task::spawn_blocking(move || {
                        let _permit = permit;
                        render()
                    });
                    match rendered.await {
                        Ok(body) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
                        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "rendering the metrics failed\n").into_response(),
                    }
                }
            }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "only GET /metrics is served here\n") })
}

/// Serve the [`router`] on `listener` until `shutdown` turns true.
pub async fn serve(listener: TcpListener, render: Render, mut shutdown: watch::Receiver<bool>) {
    let app = router(render);
    let permits = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
            _ = shutdown.wait_for(|s| *s) => return,
        };
        // Over the bound, the connection is closed at once.
        let Ok(permit) = permits.clone().try_acquire_owned() else { continue };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(HEAD_BYTES_MAX)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
        });
    }
}

/// Bind the metrics listener; `None` when metrics are off.
pub async fn bind(addr: Option<SocketAddr>) -> anyhow::Result<Option<TcpListener>> {
    match addr {
        None => Ok(None),
        Some(a) => {
            Ok(Some(TcpListener::bind(a).await.map_err(|e| anyhow::anyhow!("cannot serve metrics on {a}: {e}"))?))
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// The answer to `head`, as far as it came (the server may close the connection early).
    async fn ask(addr: SocketAddr, head: &[u8]) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(head).await;
        let mut out = vec![];
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "the server answers or closes within its deadline");
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn serves_metrics_refuses_other_paths_and_an_oversized_head() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(serve(listener, Arc::new(|| "qkv_up 1\n".to_string()), stopped));
        let ok = ask(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK") && ok.ends_with("qkv_up 1\n"), "{ok}");
        assert!(ok.contains("application/openmetrics-text"), "{ok}");
        let missing = ask(addr, b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404") && missing.contains("only GET /metrics"), "{missing}");
        let post = ask(addr, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        let huge = format!("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n", "a".repeat(64 << 10));
        let refused = ask(addr, huge.as_bytes()).await;
        assert!(!refused.starts_with("HTTP/1.1 200"), "{refused}");
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    }
}
