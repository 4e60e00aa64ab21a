//! Accepting connections and serving their streams: a stream whose first frame is of
//! version 1 carries one request and its answer; one of version 2 is multiplexed: it
//! carries requests tagged with ids for as long as the connection lives, served
//! concurrently and answered in the order they complete (see [`serve_mux`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use qkv_proto::{Error, Request, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tracing::{debug, info, warn};

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use qkv_proto::frame;

use crate::role::{PeerRole, peer_role};
use crate::wire::{FrameError, read_bytes, read_len, write_frame};

/// Most connections a node serves at once; more are refused.
pub const CONNECTIONS_MAX: usize = 1024;
/// A request must arrive whole within this time after its stream opens.
pub const REQUEST_READ_TIMEOUT_MS: u64 = 10_000;
/// Bytes of requests being received at once on one connection, at least (at least
/// one frame of the largest size fits; see [`Budgets`]).
pub const CONNECTION_RECEIVE_BYTES_MAX: usize = 32 << 20;
/// Bytes of requests in flight at once from all clients of a node, at least; as
/// much again from its peers.
pub const NODE_RECEIVE_BYTES_MAX: usize = 256 << 20;
/// How long a request waits for its bytes' budget before it is refused. Short: a
/// waiting stream's unread bytes sit in its connection's QUIC window, where they
/// hold back the streams that hold the budget on that connection.
pub const BUDGET_WAIT_MS: u64 = 100;
/// Frames up to this size (pings, gets, small puts) take no budget: they never
/// queue behind large ones. What they can hold is bounded by the streams a
/// connection may open (8 KiB x 256 = 2 MiB a connection).
pub const SMALL_FRAME_BYTES: usize = 8 << 10;

/// What a node allows in flight, as Cassandra's `native_transport_max_request_data_in_flight`
/// does: a request's bytes are taken from its connection's budget and from the
/// node's once its length prefix is read, before its body is allocated. A client's
/// are given back once it is answered; a peer's once it is decoded (a forwarded
/// put waits on replica writes to other peers, which must not wait on it), after
/// which the core's bound on operations in flight holds it. Clients and peers
/// draw on separate node budgets, and small frames on none, so clients cannot
/// crowd out replication, nor large requests pings. A request that cannot get its
/// bytes within [`BUDGET_WAIT_MS`] is refused with [`Error::Overloaded`] and its
/// stream stopped (which frees what QUIC buffered for it). So one connection cannot
/// take the node's memory, and many cannot take more than the node's budget;
/// everyone else is served meanwhile.
#[derive(Clone, Debug)]
pub struct Budgets {
    /// Per connection, bytes.
    pub connection_bytes: usize,
    /// Per node, bytes, for each of clients and peers.
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
    shutdown: watch::Receiver<bool>,
) {
    serve_with(endpoint, handler, frame_bytes_max, Budgets::for_frames(frame_bytes_max), shutdown).await
}

/// [`serve`] with the given receive budgets (each at least `frame_bytes_max`).
pub async fn serve_with<H: Handler>(
    endpoint: quinn::Endpoint,
    handler: Arc<H>,
    frame_bytes_max: usize,
    budgets: Budgets,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let client_bytes = Arc::new(Semaphore::new(budgets.node_bytes));
    let peer_bytes = Arc::new(Semaphore::new(budgets.node_bytes));
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
        let (client_bytes, peer_bytes) = (client_bytes.clone(), peer_bytes.clone());
        let connection_bytes = budgets.connection_bytes;
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
            let node = match role {
                PeerRole::Node(_) => peer_bytes,
                PeerRole::Client | PeerRole::Admin => client_bytes,
            };
            let limits = Limits { frame_bytes_max, node, connection: Arc::new(Semaphore::new(connection_bytes)) };
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

/// A request's share of the receive budgets (none for a small frame).
type Held = Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>;

/// Requests of one multiplexed stream being served at once; past it the stream is
/// not read until one is answered (QUIC's flow control then holds the sender back).
pub const MUX_IN_FLIGHT_MAX: usize = 1024;
/// Frames a multiplexed stream's reader decodes ahead of the requests being served.
const MUX_READ_AHEAD: usize = 64;
/// Answers of a multiplexed stream written in one go, at most this many bytes.
const MUX_WRITE_BATCH_BYTES: usize = 256 << 10;

/// Read one frame's body, taking `len` bytes of both budgets (waiting at most
/// [`BUDGET_WAIT_MS`]) before it is received.
async fn read_raw(recv: &mut quinn::RecvStream, limits: &Limits) -> Result<(Vec<u8>, Held), Error> {
    let len = read_len(recv, limits.frame_bytes_max).await?;
    read_rest(recv, len, limits).await
}

/// [`read_raw`] once the length is read.
async fn read_rest(recv: &mut quinn::RecvStream, len: usize, limits: &Limits) -> Result<(Vec<u8>, Held), Error> {
    let held = take_budgets(len, limits).await?;
    let body = read_bytes(recv, len).await?;
    Ok((body, held))
}

/// A frame's share of the receive budgets: nothing for a small one; for a larger one,
/// `len` bytes of its connection's and the node's, each waited for at most
/// [`BUDGET_WAIT_MS`] (then [`Error::Overloaded`]).
async fn take_budgets(len: usize, limits: &Limits) -> Result<Held, Error> {
    if len <= SMALL_FRAME_BYTES {
        return Ok(None);
    }
    let n = u32::try_from(len).map_err(|_| Error::BadRequest("frame length".into()))?;
    let take = |budget: &Arc<Semaphore>, whose: &'static str| {
        let budget = budget.clone();
        async move {
            let wait = Duration::from_millis(BUDGET_WAIT_MS);
            let free = budget.available_permits();
            match tokio::time::timeout(wait, budget.acquire_many_owned(n)).await {
                Ok(Ok(p)) => Ok(p),
                Ok(Err(_)) => Err(Error::ShuttingDown),
                Err(_) => Err(Error::Overloaded(format!(
                    "a request of {len} bytes found only {free} bytes free in {whose} receive budget"
                ))),
            }
        }
    };
    let conn = take(&limits.connection, "this connection's").await?;
    let node = take(&limits.node, "the node's").await?;
    Ok(Some((conn, node)))
}

/// One request of a multiplexed stream, or why the stream cannot go on (`Err`). A
/// frame over the limit, or one that finds no room in the receive budgets, is read
/// and dropped, and answered with its error by its id: the stream goes on.
async fn read_mux_item(recv: &mut quinn::RecvStream, limits: &Limits) -> Result<MuxItem, Error> {
    // A stream between requests waits as long as its connection lives; a frame once
    // begun must arrive whole within the read timeout.
    let len = read_len(recv, usize::MAX).await?;
    let whole = async {
        let refused = if len > limits.frame_bytes_max {
            Error::TooLarge { what: "frame".into(), size: len as u64, max: limits.frame_bytes_max as u64 }
        } else {
            match take_budgets(len, limits).await {
                Ok(held) => {
                    let body = read_bytes(recv, len).await?;
                    let (id, req) = frame::decode_mux_body::<Request>(&body)?;
                    return Ok((id, req, held));
                }
                Err(e @ Error::Overloaded(_)) => e,
                Err(e) => return Err(e),
            }
        };
        let head =
            crate::mux::skip_body(recv, len).await.map_err(|e| Error::Unreachable(format!("reading a frame: {e}")))?;
        let id = frame::mux_id(&head).ok_or_else(|| Error::BadRequest("a multiplexed frame without an id".into()))?;
        debug!("refusing a request on a multiplexed stream: {refused}");
        Ok((id, Err(refused), None))
    };
    tokio::time::timeout(Duration::from_millis(REQUEST_READ_TIMEOUT_MS), whole).await.unwrap_or_else(|_| {
        Err(Error::Overloaded(format!(
            "a request not received within {} s: the sender is too slow",
            REQUEST_READ_TIMEOUT_MS / 1000
        )))
    })
}

/// A request read from a multiplexed stream: its id, the request or why it cannot be
/// served, and its share of the budgets.
type MuxItem = (u64, Result<Request, Error>, Held);

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
                tokio::time::timeout(Duration::from_millis(REQUEST_READ_TIMEOUT_MS), read_raw(&mut recv, &limits))
                    .await
                    .unwrap_or_else(|_| {
                        Err(Error::Overloaded(format!(
                            "request not received within {} s: the sender is too slow",
                            REQUEST_READ_TIMEOUT_MS / 1000
                        )))
                    });
            let resp = match read {
                Ok((body, held)) if body.first() == Some(&frame::MUX_VERSION) => {
                    return serve_mux(send, recv, role, handler, limits, (body, held)).await;
                }
                Ok((body, held)) => match frame::decode_body::<Request>(&body) {
                    Ok(req) => serve_one(role, &*handler, req, held).await,
                    Err(e) => refuse(&mut recv, e),
                },
                Err(e) => refuse(&mut recv, e),
            };
            if let Err(e) = write_frame(&mut send, &resp, frame_bytes_max).await {
                // The response itself may be too big (a key with huge siblings): say so instead.
                if let FrameError::TooLarge { .. } = e {
                    let _ = write_frame(&mut send, &Response::Error(e.into()), frame_bytes_max).await;
                } else {
                    debug!("writing response: {e}");
                }
            }
        });
    }
}

/// Serve one request; a client's bytes stay charged while it is served, a peer's go
/// now (see [`Budgets`]).
async fn serve_one<H: Handler>(role: PeerRole, handler: &H, req: Request, mut held: Held) -> Response {
    if let PeerRole::Node(_) = role {
        held = None;
    }
    let resp = handler.handle(role, req).await;
    drop(held);
    resp
}

/// The answer to a request that could not be read; the peer is told to stop sending
/// the rest of an oversized or broken frame.
fn refuse(recv: &mut quinn::RecvStream, e: Error) -> Response {
    if let Error::Overloaded(_) = e {
        debug!("refusing a request: {e}");
    } else {
        warn!("bad frame: {e}");
    }
    let _ = recv.stop(0u32.into());
    Response::Error(e)
}

/// Serve a multiplexed stream, whose first frame (`first`) was read: a reader task
/// decodes frames ahead, this task serves up to [`MUX_IN_FLIGHT_MAX`] requests at
/// once (no task each) and writes the answers as they complete, several per write.
/// A frame without a readable id ends the stream (there is nobody to answer).
async fn serve_mux<H: Handler>(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    role: PeerRole,
    handler: Arc<H>,
    limits: Limits,
    first: (Vec<u8>, Held),
) {
    type Item = Result<MuxItem, Error>;
    let frame_bytes_max = limits.frame_bytes_max;
    let decode = |(body, held): (Vec<u8>, Held)| -> Item {
        frame::decode_mux_body::<Request>(&body).map(|(id, req)| (id, req, held))
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Item>(MUX_READ_AHEAD);
    let _ = tx.try_send(decode(first));
    let reader = tokio::spawn(async move {
        loop {
            let item = read_mux_item(&mut recv, &limits).await;
            let ended = item.is_err();
            if tx.send(item).await.is_err() || ended {
                return;
            }
        }
    });
    let mut in_flight = FuturesUnordered::new();
    let mut reading = true;
    let mut out = Vec::new();
    loop {
        tokio::select! {
            biased;
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                let mut next = Some(done);
                while let Some((id, resp)) = next {
                    out.extend(encode_answer(id, &resp, frame_bytes_max));
                    next = if out.len() < MUX_WRITE_BATCH_BYTES { in_flight.next().now_or_never().flatten() } else { None };
                }
                if let Err(e) = send.write_all(&out).await {
                    debug!("writing answers: {e}");
                    break;
                }
                out.clear();
            }
            item = rx.recv(), if reading && in_flight.len() < MUX_IN_FLIGHT_MAX => match item {
                Some(Ok((id, Ok(req), held))) => {
                    let handler = handler.clone();
                    in_flight.push(async move { (id, serve_one(role, &*handler, req, held).await) }.boxed());
                }
                Some(Ok((id, Err(e), _))) => {
                    warn!("bad request on a multiplexed stream: {e}");
                    in_flight.push(async move { (id, Response::Error(e)) }.boxed());
                }
                Some(Err(e)) => {
                    if !matches!(e, Error::Unreachable(_)) {
                        warn!("closing a multiplexed stream: {e}");
                    }
                    reading = false;
                }
                None => reading = false,
            },
            else => break,
        }
        if !reading && in_flight.is_empty() {
            break;
        }
    }
    reader.abort();
    let _ = send.finish();
}

/// One answer of a multiplexed stream; one too large for a frame is told as an error.
fn encode_answer(id: u64, resp: &Response, frame_bytes_max: usize) -> Vec<u8> {
    frame::encode_mux(id, resp, frame_bytes_max)
        .or_else(|e| frame::encode_mux(id, &Response::Error(e), frame_bytes_max))
        .unwrap_or_default()
}

/// True when `role` may send `req`: what the message type says ([`Request::sender`]).
pub fn allowed(role: PeerRole, req: &Request) -> bool {
    match req.sender() {
        qkv_proto::msg::Sender::Anyone => true,
        qkv_proto::msg::Sender::Node => matches!(role, PeerRole::Node(_)),
        qkv_proto::msg::Sender::Admin => matches!(role, PeerRole::Node(_) | PeerRole::Admin),
    }
}
