//! A minimal HTTP/1.1 endpoint for Prometheus: `GET /metrics`, loopback by default.
//! Bounded: 64 connections, 8 KiB of request head, 5 s to send it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

const CONNECTIONS_MAX: usize = 64;
const HEAD_BYTES_MAX: usize = 8192;
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Serve `render()` at `/metrics` on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    render: Arc<dyn Fn() -> String + Send + Sync>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let (mut stream, _) = tokio::select! {
            r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else { continue };
        let render = render.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut head = Vec::with_capacity(1024);
            let read = tokio::time::timeout(HEAD_TIMEOUT, async {
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < HEAD_BYTES_MAX {
                    let n = stream.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let line = String::from_utf8_lossy(head.split(|&b| b == b'\n').next().unwrap_or_default()).into_owned();
            let (status, body, kind) = if line.starts_with("GET /metrics ") || line.starts_with("GET /metrics\r") {
                ("200 OK", render(), "text/plain; version=0.0.4")
            } else {
                ("404 Not Found", "only GET /metrics is served here\n".to_string(), "text/plain")
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tokio::time::timeout(HEAD_TIMEOUT, stream.write_all(resp.as_bytes())).await;
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
