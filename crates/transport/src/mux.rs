//! The sending side of a multiplexed stream: one long-lived bidirectional stream per
//! connection carries many requests, each framed with an id ([`frame::MUX_VERSION`]),
//! and their answers come back with the same ids in the order the peer finishes them.
//! A writer task coalesces the frames queued while it wrote the last ones into one
//! write; a reader task hands each answer to its waiter. No stream is opened, and no
//! task spawned, per request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use qkv_proto::frame::{self, LEN_BYTES};
use qkv_proto::{Request, Response};
use tokio::sync::{mpsc, oneshot};

use crate::pool::RequestError;

/// Frames queued for a channel's writer.
const QUEUE_MAX: usize = 4096;
/// Requests waiting for their answers on one channel; past it requests go on streams
/// of their own.
pub const WAITERS_MAX: usize = 65_536;
/// Bytes the writer puts in one write.
const WRITE_BATCH_BYTES: usize = 256 << 10;
/// Larger requests go on a stream of their own, not to hold back the small ones.
pub const FRAME_BYTES_MAX: usize = 64 << 10;

/// What a request on a channel came to.
#[allow(clippy::large_enum_variant)] // one per request, on the stack of its future
pub(crate) enum Sent {
    /// The answer, or why none came.
    Done(Result<Response, RequestError>),
    /// The peer does not speak multiplexed streams (an earlier release): nothing ran.
    Refused,
    /// The channel is full or gone; nothing was sent on it.
    Unavailable,
}

type Waiter = oneshot::Sender<Result<Response, RequestError>>;

struct Waiters {
    map: HashMap<u64, Waiter>,
    /// Why the channel ended; set once, before the waiters are failed.
    ended: Option<RequestError>,
    refused: bool,
}

/// One multiplexed stream on a connection.
pub(crate) struct Channel {
    /// The connection it runs on.
    pub(crate) conn: quinn::Connection,
    addr: SocketAddr,
    queue: mpsc::Sender<Vec<u8>>,
    waiters: Arc<Mutex<Waiters>>,
    next_id: AtomicU64,
    frame_bytes_max: usize,
}

impl Channel {
    /// Open a channel on `conn` (a stream, a writer and a reader task).
    pub(crate) async fn open(
        conn: quinn::Connection,
        addr: SocketAddr,
        frame_bytes_max: usize,
    ) -> Result<Arc<Channel>, RequestError> {
        let (send, recv) = conn.open_bi().await.map_err(|e| RequestError::Dropped { addr, reason: e.to_string() })?;
        let (queue, rx) = mpsc::channel(QUEUE_MAX);
        let waiters = Arc::new(Mutex::new(Waiters { map: HashMap::new(), ended: None, refused: false }));
        let ch = Arc::new(Channel {
            conn,
            addr,
            queue,
            waiters: waiters.clone(),
            next_id: AtomicU64::new(1),
            frame_bytes_max,
        });
        tokio::spawn(write_loop(send, rx, waiters.clone(), addr));
        tokio::spawn(read_loop(recv, waiters, addr, frame_bytes_max));
        Ok(ch)
    }

    /// True once the channel can carry nothing more.
    pub(crate) fn is_dead(&self) -> bool {
        self.queue.is_closed() || self.lock().ended.is_some() || self.conn.close_reason().is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Send `req` and wait for its answer until `deadline`.
    pub(crate) async fn request(&self, req: &Request, deadline: tokio::time::Instant) -> Sent {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let bytes = match frame::encode_mux(id, req, self.frame_bytes_max) {
            Ok(b) => b,
            Err(qkv_proto::Error::TooLarge { size, max, .. }) => {
                return Sent::Done(Err(RequestError::TooLarge { size, max }));
            }
            Err(e) => return Sent::Done(Err(RequestError::Encode(e.to_string()))),
        };
        if bytes.len() > FRAME_BYTES_MAX {
            return Sent::Unavailable;
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut w = self.lock();
            if w.ended.is_some() || w.map.len() >= WAITERS_MAX {
                return Sent::Unavailable;
            }
            w.map.insert(id, tx);
        }
        // Whatever ends the wait (an answer, a timeout, the caller dropping the request),
        // the waiter goes.
        let _waiting = Forget { waiters: &self.waiters, id };
        match tokio::time::timeout_at(deadline, self.queue.send(bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Sent::Unavailable,
            Err(_) => return Sent::Done(Err(RequestError::Timeout { addr: self.addr, ms: 0 })),
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(answer)) => Sent::Done(answer),
            // Failed with the channel: its reason, or a refusal.
            Ok(Err(_)) => {
                let w = self.lock();
                if w.refused {
                    Sent::Refused
                } else {
                    let why = w.ended.clone();
                    drop(w);
                    Sent::Done(Err(
                        why.unwrap_or(RequestError::Dropped { addr: self.addr, reason: "the stream ended".into() })
                    ))
                }
            }
            Err(_) => Sent::Done(Err(RequestError::Timeout { addr: self.addr, ms: 0 })),
        }
    }
}

/// Removes a request's waiter when its wait ends, however it ends.
struct Forget<'a> {
    waiters: &'a Mutex<Waiters>,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner()).map.remove(&self.id);
    }
}

/// End the channel: every waiter fails (their senders are dropped), later requests
/// go elsewhere.
fn end(waiters: &Mutex<Waiters>, why: RequestError, refused: bool) {
    let mut w = waiters.lock().unwrap_or_else(|p| p.into_inner());
    if w.ended.is_none() {
        w.ended = Some(why);
        w.refused |= refused;
    }
    w.map.clear();
}

async fn write_loop(
    mut send: quinn::SendStream,
    mut rx: mpsc::Receiver<Vec<u8>>,
    waiters: Arc<Mutex<Waiters>>,
    addr: SocketAddr,
) {
    let mut buf = Vec::new();
    while let Some(first) = rx.recv().await {
        buf.clear();
        buf.extend_from_slice(&first);
        while buf.len() < WRITE_BATCH_BYTES {
            match rx.try_recv() {
                Ok(more) => buf.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if let Err(e) = send.write_all(&buf).await {
            end(&waiters, RequestError::Dropped { addr, reason: format!("writing a request: {e}") }, false);
            return;
        }
    }
    let _ = send.finish();
}

async fn read_loop(
    mut recv: quinn::RecvStream,
    waiters: Arc<Mutex<Waiters>>,
    addr: SocketAddr,
    frame_bytes_max: usize,
) {
    loop {
        let mut prefix = [0u8; LEN_BYTES];
        if let Err(e) = recv.read_exact(&mut prefix).await {
            end(&waiters, RequestError::Dropped { addr, reason: format!("reading an answer: {e}") }, false);
            return;
        }
        let len = match frame::decode_len(prefix, frame_bytes_max) {
            Ok(l) => l,
            Err(e) => {
                end(&waiters, RequestError::Protocol { addr, reason: e.to_string() }, false);
                return;
            }
        };
        let mut body = vec![0u8; len];
        if let Err(e) = recv.read_exact(&mut body).await {
            end(&waiters, RequestError::Dropped { addr, reason: format!("reading an answer: {e}") }, false);
            return;
        }
        if body.first() == Some(&frame::PROTOCOL_VERSION) {
            // A node of an earlier release: it answered the first frame with an error
            // in its own framing and ran nothing.
            tracing::debug!(%addr, "the peer does not speak multiplexed streams");
            end(&waiters, RequestError::Dropped { addr, reason: "multiplexed streams refused".into() }, true);
            return;
        }
        match frame::decode_mux_body::<Response>(&body) {
            Ok((id, answer)) => {
                let waiter = waiters.lock().unwrap_or_else(|p| p.into_inner()).map.remove(&id);
                if let Some(w) = waiter {
                    let answer = answer.map_err(|e| RequestError::Protocol { addr, reason: e.to_string() });
                    let _ = w.send(answer);
                }
            }
            Err(e) => {
                end(&waiters, RequestError::Protocol { addr, reason: e.to_string() }, false);
                return;
            }
        }
    }
}
