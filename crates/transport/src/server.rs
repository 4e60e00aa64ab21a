//! Accepting connections and serving one request per bidirectional stream.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use qkv_proto::{Error, Request, Response};
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};

use crate::role::{PeerRole, peer_role};
use crate::wire::{read_body, read_len, write_frame};

/// Most connections a node serves at once; more are refused.
pub const CONNECTIONS_MAX: usize = 1024;
/// A request must arrive whole within this time after its stream opens.
pub const REQUEST_READ_TIMEOUT_MS: u64 = 10_000;
/// Bytes of requests being received at once on one connection, at least (at least
/// one frame of the largest size fits; see [`Budgets`]).
pub const CONNECTION_RECEIVE_BYTES_MAX: usize = 32 << 20;
/// Bytes of requests being received at once by the whole node, at least.
pub const NODE_RECEIVE_BYTES_MAX: usize = 256 << 20;

/// What a node allows in flight while requests are received, as Cassandra's
/// `native_transport_max_request_data_in_flight` does: a request's bytes are taken
/// from its connection's budget and from the node's once its length prefix is read,
/// before its body is allocated, and given back once it is decoded. A request that
/// cannot get them waits (its sender's stream stalls under QUIC flow control), and
/// is refused with [`Error::Overloaded`] if they do not come before the request's
/// read deadline. So one connection cannot take the node's memory, and many cannot
/// take more than the node's budget; everyone else is served meanwhile.
#[derive(Clone, Debug)]
pub struct Budgets {
    /// Per connection, bytes.
    pub connection_bytes: usize,
    /// Per node, bytes.
    pub node_bytes: usize,
}

impl Budgets {
    /// The budgets for frames of at most `frame_bytes_max`: the defaults, raised so
    /// the largest frame fits in one connection's and two in the node's.
    pub fn for_frames(frame_bytes_max: usize) -> Budgets {
        Budgets {
            connection_bytes: CONNECTION_RECEIVE_BYTES_MAX.max(frame_bytes_max),
            node_bytes: NODE_RECEIVE_BYTES_MAX.max(2 * frame_bytes_max),
        }
    }
}

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
    let budgets = Budgets::for_frames(frame_bytes_max);
    let node_bytes = Arc::new(Semaphore::new(budgets.node_bytes));
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
        let limits = Limits {
            frame_bytes_max,
            node: node_bytes.clone(),
            connection: Arc::new(Semaphore::new(budgets.connection_bytes)),
        };
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
            serve_connection(conn, role, handler, limits, shutdown).await;
        });
    }
    endpoint.close(0u32.into(), b"shutting down");
}

/// The frame limit and the receive budgets one connection draws on.
#[derive(Clone)]
struct Limits {
    frame_bytes_max: usize,
    node: Arc<Semaphore>,
    connection: Arc<Semaphore>,
}

/// Read one request within the read deadline, holding `len` bytes of both budgets
/// while its body is received and decoded.
async fn read_request(recv: &mut quinn::RecvStream, limits: &Limits) -> Result<Request, Error> {
    let len = read_len(recv, limits.frame_bytes_max).await?;
    let n = u32::try_from(len).map_err(|_| Error::BadRequest("frame length".into()))?;
    let _conn = limits.connection.clone().acquire_many_owned(n).await.map_err(|_| Error::ShuttingDown)?;
    let _node = limits.node.clone().acquire_many_owned(n).await.map_err(|_| Error::ShuttingDown)?;
    read_body(recv, len).await
}

async fn serve_connection<H: Handler>(
    conn: quinn::Connection,
    role: PeerRole,
    handler: Arc<H>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let frame_bytes_max = limits.frame_bytes_max;
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
        let limits = limits.clone();
        tokio::spawn(async move {
            let read =
                tokio::time::timeout(Duration::from_millis(REQUEST_READ_TIMEOUT_MS), read_request(&mut recv, &limits))
                    .await
                    .unwrap_or_else(|_| {
                        Err(Error::Overloaded(format!(
                            "request not received within {} s (a slow sender, or more bytes of requests in flight than \
                         this connection ({} MiB) or node ({} MiB) takes at once)",
                            REQUEST_READ_TIMEOUT_MS / 1000,
                            limits.connection_bytes_max() >> 20,
                            limits.node_bytes_max() >> 20
                        )))
                    });
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

impl Limits {
    fn connection_bytes_max(&self) -> usize {
        Budgets::for_frames(self.frame_bytes_max).connection_bytes
    }
    fn node_bytes_max(&self) -> usize {
        Budgets::for_frames(self.frame_bytes_max).node_bytes
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
