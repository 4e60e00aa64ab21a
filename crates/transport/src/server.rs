//! Accepting connections and serving one request per bidirectional stream.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use qkv_proto::{Error, Request, Response};
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};

use crate::role::{PeerRole, peer_role};
use crate::wire::{read_frame, write_frame};

/// Most connections a node serves at once; more are refused.
pub const CONNECTIONS_MAX: usize = 1024;
/// A request must arrive whole within this time after its stream opens.
pub const REQUEST_READ_TIMEOUT_MS: u64 = 10_000;

/// Serves requests; called once per stream.
pub trait Handler: Send + Sync + 'static {
    /// Answer `req` from a peer whose certificate grants `role`.
    fn handle(&self, role: PeerRole, req: Request) -> impl Future<Output = Response> + Send;
}

/// Accept connections on `endpoint` until `shutdown` turns true.
pub async fn serve<H: Handler>(
    endpoint: quinn::Endpoint,
    handler: Arc<H>,
    frame_bytes_max: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i { Some(i) => i, None => break },
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            warn!("refusing a connection: {CONNECTIONS_MAX} connections open");
            incoming.refuse();
            continue;
        };
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    info!(%remote, "handshake refused: {e}");
                    return;
                }
            };
            let Some(role) = peer_role(&conn) else {
                warn!(%remote, "closing connection: certificate names no quorumkv role");
                conn.close(1u32.into(), b"certificate names no quorumkv role");
                return;
            };
            serve_connection(conn, role, handler, frame_bytes_max, shutdown).await;
        });
    }
    endpoint.close(0u32.into(), b"shutting down");
}

async fn serve_connection<H: Handler>(
    conn: quinn::Connection,
    role: PeerRole,
    handler: Arc<H>,
    frame_bytes_max: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            s = conn.accept_bi() => s,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let (mut send, mut recv) = match stream {
            Ok(s) => s,
            Err(e) => {
                debug!(remote = %conn.remote_address(), "connection ended: {e}");
                return;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let read = tokio::time::timeout(
                Duration::from_millis(REQUEST_READ_TIMEOUT_MS),
                read_frame::<Request>(&mut recv, frame_bytes_max),
            )
            .await
            .unwrap_or_else(|_| Err(Error::BadRequest("request not received in time".into())));
            let resp = match read {
                Ok(req) => handler.handle(role, req).await,
                Err(e) => {
                    warn!("bad frame: {e}");
                    // Tell the peer to stop sending the rest of an oversized or broken frame.
                    let _ = recv.stop(0u32.into());
                    Response::Error(e)
                }
            };
            if let Err(e) = write_frame(&mut send, &resp, frame_bytes_max).await {
                // The response itself may be too big (a key with huge siblings): say so instead.
                if let Error::TooLarge { .. } = e {
                    let _ = write_frame(&mut send, &Response::Error(e), frame_bytes_max).await;
                } else {
                    debug!("writing response: {e}");
                }
            }
        });
    }
}

/// True when `role` may send `req`: replica traffic needs a node certificate.
pub fn allowed(role: PeerRole, req: &Request) -> bool {
    match req {
        Request::ReplicaGet { .. }
        | Request::ReplicaPut { .. }
        | Request::ReplicaPutBatch { .. }
        | Request::ReplicaHint { .. }
        | Request::HintGet { .. }
        | Request::AaeRoots { .. }
        | Request::AaeCompare { .. }
        | Request::Ping { .. } => matches!(role, PeerRole::Node(_)),
        _ => true,
    }
}
