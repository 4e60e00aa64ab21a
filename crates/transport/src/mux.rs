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
    /// The peer answered the stream's first frame in a single request's framing: it
    /// ran nothing on the stream.
    unserved: bool,
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
    /// When the peer last sent anything on the stream (ms since `born`).
    heard: Arc<AtomicU64>,
    born: std::time::Instant,
}

impl Channel {
    /// Whether the peer sent anything on the stream since `since` (ms since `born`).
    pub(crate) fn heard_since(&self, since: u64) -> bool {
        self.heard.load(Ordering::Relaxed) > since
    }

    /// Now, in ms since the channel was opened.
    pub(crate) fn now_ms(&self) -> u64 {
        now_ms(&self.born)
    }

    /// Open a channel on `conn` (a stream, a writer and a reader task).
    pub(crate) async fn open(
        conn: quinn::Connection,
        addr: SocketAddr,
        frame_bytes_max: usize,
    ) -> Result<Arc<Channel>, RequestError> {
        let (send, recv) = conn.open_bi().await.map_err(|e| RequestError::Dropped { addr, reason: e.to_string() })?;
        let (queue, rx) = mpsc::channel(QUEUE_MAX);
        let waiters =
            Arc::new(Mutex::new(Waiters { map: HashMap::new(), ended: None, refused: false, unserved: false }));
        let ch = Arc::new(Channel {
            conn,
            addr,
            queue,
            waiters: waiters.clone(),
            next_id: AtomicU64::new(1),
            frame_bytes_max,
            heard: Arc::new(AtomicU64::new(0)),
            born: std::time::Instant::now(),
        });
        tokio::spawn(write_loop(send, rx, addr));
        tokio::spawn(read_loop(recv, waiters, addr, frame_bytes_max, ch.heard.clone(), ch.born));
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
                } else if w.unserved {
                    Sent::Unavailable
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
    }
    w.refused |= refused;
    w.map.clear();
}

fn now_ms(born: &std::time::Instant) -> u64 {
    born.elapsed().as_millis() as u64
}

async fn write_loop(mut send: quinn::SendStream, mut rx: mpsc::Receiver<Vec<u8>>, addr: SocketAddr) {
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
            // The reader says why (a peer of an earlier release stops this side and
            // then answers in its own framing; a lost connection ends both sides).
            // Requests queued from now on go on streams of their own.
            tracing::debug!(%addr, "writing requests: {e}");
            return;
        }
    }
    let _ = send.finish();
}

/// Read and drop a frame body of `len` bytes, in pieces; its first bytes (enough for a
/// multiplexed frame's id) are kept.
pub(crate) async fn skip_body(recv: &mut quinn::RecvStream, len: usize) -> Result<Vec<u8>, quinn::ReadExactError> {
    const HEAD: usize = 16;
    let mut head = vec![0u8; len.min(HEAD)];
    recv.read_exact(&mut head).await?;
    let mut left = len - head.len();
    let mut buf = vec![0u8; left.min(64 << 10)];
    while left > 0 {
        let n = left.min(buf.len());
        recv.read_exact(&mut buf[..n]).await?;
        left -= n;
    }
    Ok(head)
}

async fn read_loop(
    mut recv: quinn::RecvStream,
    waiters: Arc<Mutex<Waiters>>,
    addr: SocketAddr,
    frame_bytes_max: usize,
    heard: Arc<AtomicU64>,
    born: std::time::Instant,
) {
    loop {
        let mut prefix = [0u8; LEN_BYTES];
        if let Err(e) = recv.read_exact(&mut prefix).await {
            end(&waiters, RequestError::Dropped { addr, reason: format!("reading an answer: {e}") }, false);
            return;
        }
        // (Stored one past the ms, so 0 is "never" and an answer in the ms a request
        // was sent counts as after it.)
        heard.store(now_ms(&born) + 1, Ordering::Relaxed);
        let len = match frame::decode_len(prefix, usize::MAX) {
            Ok(l) if l > frame_bytes_max => {
                // An answer over this side's limit: it fails alone; the stream goes on.
                let head = match skip_body(&mut recv, l).await {
                    Ok(h) => h,
                    Err(e) => {
                        end(&waiters, RequestError::Dropped { addr, reason: format!("reading an answer: {e}") }, false);
                        return;
                    }
                };
                let waiter = frame::mux_id(&head)
                    .and_then(|id| waiters.lock().unwrap_or_else(|p| p.into_inner()).map.remove(&id));
                if let Some(w) = waiter {
                    let _ = w.send(Err(RequestError::Protocol {
                        addr,
                        reason: format!("an answer of {l} bytes is over the frame limit of {frame_bytes_max}"),
                    }));
                }
                continue;
            }
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
            // An answer in a single request's framing: from a node of an earlier release,
            // which refuses the version (and ran nothing), or from one that could not
            // read the first frame (it says why).
            let refused = matches!(
                frame::decode_body::<Response>(&body),
                Ok(Response::Error(qkv_proto::Error::BadRequest(m))) if m.contains("unsupported protocol version")
            );
            if refused {
                tracing::debug!(%addr, "the peer does not speak multiplexed streams");
            }
            // Either way the peer read no more of the stream than its first frame, and
            // ran nothing: every request on it goes on a stream of its own.
            // (Marked before the waiters are failed, so each sees it.)
            waiters.lock().unwrap_or_else(|p| p.into_inner()).unserved = true;
            end(&waiters, RequestError::Dropped { addr, reason: "the multiplexed stream was refused".into() }, refused);
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
