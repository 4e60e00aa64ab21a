//! Outgoing requests over pooled connections: one connection per peer address,
//! redial with exponential backoff. Small, frequent requests (reads, writes, replica
//! traffic, pings, status) share one multiplexed stream per connection
//! ([`crate::mux`]); the others (and any to a peer of an earlier release) take a
//! bidirectional stream each.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qkv_proto::{Request, Response};

use crate::certs::SERVER_NAME;
use crate::mux::{Channel, Sent};
use crate::wire::{FrameError, read_frame, write_frame};

/// Why a request to a peer got no answer.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RequestError {
    /// No connection: the dial failed or timed out, or the peer is in backoff.
    #[error("{addr} is unreachable: {reason}")]
    Unreachable {
        /// The peer.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The deadline passed before the answer came (the request may have run).
    #[error("{addr} did not answer within {ms} ms")]
    Timeout {
        /// The peer.
        addr: SocketAddr,
        /// The deadline.
        ms: u64,
    },
    /// The stream or connection ended mid-request (the request may have run).
    #[error("{addr} dropped the request: {reason}")]
    Dropped {
        /// The peer.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The peer's answer is not a frame of this protocol, or is over the limit.
    #[error("{addr} broke the protocol: {reason}")]
    Protocol {
        /// The peer.
        addr: SocketAddr,
        /// What it sent.
        reason: String,
    },
    /// The request could not be encoded: nothing was sent.
    #[error("cannot encode the request: {0}; nothing was sent")]
    Encode(String),
    /// The request is over the frame limit: nothing was sent.
    #[error("the request of {size} bytes is over the frame limit of {max}; nothing was sent")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
}

impl RequestError {
    /// The failure of an answer read from `addr`.
    fn reading(addr: SocketAddr, e: FrameError) -> Self {
        match e {
            FrameError::Stream(reason) => RequestError::Dropped { addr, reason },
            other => RequestError::Protocol { addr, reason: other.to_string() },
        }
    }
}

impl From<RequestError> for qkv_proto::Error {
    /// What a node reports of a peer it could not get an answer from.
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::TooLarge { size, max } => qkv_proto::Error::TooLarge { what: "frame".into(), size, max },
            RequestError::Encode(m) => qkv_proto::Error::Internal(format!("cannot encode a request: {m}")),
            other => qkv_proto::Error::Unreachable(other.to_string()),
        }
    }
}

/// First wait after a failed dial.
pub const BACKOFF_MIN_MS: u64 = 50;
/// Longest wait between dials of a dead peer.
pub const BACKOFF_MAX_MS: u64 = 1000;
/// Longest wait for a QUIC handshake.
pub const DIAL_TIMEOUT_MS: u64 = 1000;

enum Slot {
    Up(quinn::Connection),
    Backoff { until: Instant, delay_ms: u64 },
}

/// Peers remembered as not speaking multiplexed streams, at most (then forgotten, and
/// asked again).
const LEGACY_MAX: usize = 4096;
/// A peer that answered on a connection within this long is alive: a request of
/// its that timed out does not close the connection.
const ALIVE_MS: u64 = 1000;
/// How long a peer is remembered as not speaking multiplexed streams (it may be
/// upgraded meanwhile).
const LEGACY_FOR: Duration = Duration::from_secs(60);

/// A pool of connections to peers, sharing one QUIC endpoint.
pub struct Pool {
    endpoint: quinn::Endpoint,
    slots: Mutex<HashMap<SocketAddr, Slot>>,
    frame_bytes_max: usize,
    /// Each connection's multiplexed stream.
    pub(crate) channels: Mutex<HashMap<SocketAddr, Arc<Channel>>>,
    /// Per address: serialises dials and channel opens, so concurrent requests share
    /// the first.
    locks: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>>,
    /// Peers that refused multiplexed streams (an earlier release), and since when.
    legacy: Mutex<HashMap<SocketAddr, Instant>>,
}

/// Whether `req` goes on the connection's multiplexed stream: the small, frequent
/// requests. Membership changes, transfers, anti-entropy and batches take streams of
/// their own (large, or not to be sent twice).
fn multiplexed(req: &Request) -> bool {
    matches!(
        req,
        Request::Get(_)
            | Request::Put(_)
            | Request::ReplicaGet { .. }
            | Request::ReplicaDigest { .. }
            | Request::ReplicaPut { .. }
            | Request::ReplicaHint { .. }
            | Request::HintGet { .. }
            | Request::Ping { .. }
            | Request::Status
            | Request::Stats
            | Request::Ring { .. }
    )
}

/// Whether a request that failed this way may be sent once more (see [`Pool::request`]).
type Attempt = Result<Response, (RequestError, bool)>;

impl Pool {
    /// A pool sending from `endpoint`, which must have a default client config.
    pub fn new(endpoint: quinn::Endpoint, frame_bytes_max: usize) -> Self {
        Pool {
            endpoint,
            slots: Mutex::new(HashMap::new()),
            frame_bytes_max,
            channels: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            legacy: Mutex::new(HashMap::new()),
        }
    }

    /// Send `req` to `addr` and wait for its response, all within `timeout`.
    ///
    /// A request that times out closes its connection: a peer that was stopped or
    /// killed is only reached again through a fresh one, and QUIC would otherwise keep
    /// the dead connection until its idle timeout. A request whose connection ends under
    /// it (that close, or a restarted peer's stateless reset) is sent once more.
    pub async fn request(&self, addr: SocketAddr, req: &Request, timeout: Duration) -> Result<Response, RequestError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let too_late = || RequestError::Timeout { addr, ms: timeout.as_millis() as u64 };
        let conn = tokio::time::timeout_at(deadline, self.connection(addr)).await.map_err(|_| too_late())??;
        // The cached connection died before the request went out; or it ended under a
        // request that had not timed out: a stateless reset (the peer's process restarted
        // since we dialed; the one before may have run the request before it died), or
        // another request's timeout closed it. Either way the request is sent once more
        // over a fresh connection, within its deadline. It may run twice, as after any
        // lost answer: replica messages merge idempotently, and a put carries its write
        // id (a second run of it is known). Membership changes are not sent again: a
        // second run would answer as if the first had not happened.
        match self.attempt(addr, &conn, req, deadline, &too_late).await {
            Ok(r) => return Ok(r),
            Err((e, false)) => return Err(e),
            Err((_, true)) => {}
        }
        self.forget(addr, &conn);
        let conn = tokio::time::timeout_at(deadline, self.connection(addr)).await.map_err(|_| too_late())??;
        self.attempt(addr, &conn, req, deadline, &too_late).await.map_err(|(e, _)| e)
    }

    /// One try of `req` on `conn`: on its multiplexed stream when it goes there, else
    /// (or when the peer refuses those) on a stream of its own.
    async fn attempt(
        &self,
        addr: SocketAddr,
        conn: &quinn::Connection,
        req: &Request,
        deadline: tokio::time::Instant,
        too_late: &impl Fn() -> RequestError,
    ) -> Attempt {
        let resend_after_drop = |e: RequestError| {
            let reset = matches!(
                conn.close_reason(),
                Some(quinn::ConnectionError::Reset | quinn::ConnectionError::LocallyClosed)
            );
            let again = matches!(e, RequestError::Dropped { .. }) && reset && !matches!(req, Request::Cluster(_));
            (e, again)
        };
        if multiplexed(req) && !self.is_legacy(addr) {
            match self.channel(addr, conn, deadline).await {
                Ok(ch) => match (ch.now_ms(), ch.request(req, deadline).await) {
                    (sent, Sent::Done(Err(RequestError::Timeout { .. }))) => {
                        // A peer that answered others meanwhile is alive: this request is
                        // abandoned alone. One that answered nothing may be dead with its
                        // connection open: the connection goes (see `request`).
                        if !ch.heard_since(sent) {
                            conn.close(0u32.into(), b"request timed out");
                            self.forget(addr, conn);
                        }
                        return Err((too_late(), false));
                    }
                    (_, Sent::Done(Ok(r))) => return Ok(r),
                    (_, Sent::Done(Err(e))) => return Err(resend_after_drop(e)),
                    (_, Sent::Refused) => self.mark_legacy(addr),
                    (_, Sent::Unavailable) => {}
                },
                // The cached connection died before the stream opened.
                Err(e @ RequestError::Dropped { .. }) => return Err((e, !matches!(req, Request::Cluster(_)))),
                Err(e) => return Err((e, false)),
            }
        }
        let streams = match tokio::time::timeout_at(deadline, conn.open_bi()).await {
            Err(_) => return Err((too_late(), false)),
            Ok(Err(e)) => return Err((RequestError::Dropped { addr, reason: e.to_string() }, true)),
            Ok(Ok(s)) => s,
        };
        self.finish(addr, conn.clone(), streams, req, deadline, too_late).await.map_err(resend_after_drop)
    }

    /// The multiplexed stream of `conn`, opened if it has none (or only a dead one).
    async fn channel(
        &self,
        addr: SocketAddr,
        conn: &quinn::Connection,
        deadline: tokio::time::Instant,
    ) -> Result<Arc<Channel>, RequestError> {
        let current = |pool: &Pool| {
            let channels = pool.channels.lock().unwrap_or_else(|p| p.into_inner());
            channels.get(&addr).filter(|c| c.conn.stable_id() == conn.stable_id() && !c.is_dead()).cloned()
        };
        if let Some(ch) = current(self) {
            return Ok(ch);
        }
        let too_late = || RequestError::Timeout { addr, ms: 0 };
        let lock = self.lock_of(addr);
        let _opening = tokio::time::timeout_at(deadline, lock.lock()).await.map_err(|_| too_late())?;
        if let Some(ch) = current(self) {
            return Ok(ch);
        }
        let ch = tokio::time::timeout_at(deadline, Channel::open(conn.clone(), addr, self.frame_bytes_max))
            .await
            .map_err(|_| too_late())??;
        self.channels.lock().unwrap_or_else(|p| p.into_inner()).insert(addr, ch.clone());
        Ok(ch)
    }

    fn is_legacy(&self, addr: SocketAddr) -> bool {
        let mut legacy = self.legacy.lock().unwrap_or_else(|p| p.into_inner());
        match legacy.get(&addr) {
            Some(since) if since.elapsed() < LEGACY_FOR => true,
            Some(_) => {
                legacy.remove(&addr);
                false
            }
            None => false,
        }
    }

    fn mark_legacy(&self, addr: SocketAddr) {
        let mut legacy = self.legacy.lock().unwrap_or_else(|p| p.into_inner());
        if legacy.len() >= LEGACY_MAX {
            legacy.retain(|_, since| since.elapsed() < LEGACY_FOR);
            if legacy.len() >= LEGACY_MAX {
                legacy.clear();
            }
        }
        legacy.insert(addr, Instant::now());
    }

    /// A request on a stream of its own timed out: close its connection (see
    /// [`Pool::request`]), unless the peer answered on the connection's multiplexed
    /// stream within the last [`ALIVE_MS`]: it is alive, and the connection carries
    /// every other request to it.
    fn timed_out(&self, addr: SocketAddr, conn: &quinn::Connection) {
        let alive = self
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&addr)
            .filter(|c| c.conn.stable_id() == conn.stable_id())
            .is_some_and(|c| c.heard_since(c.now_ms().saturating_sub(ALIVE_MS)));
        if alive {
            return;
        }
        conn.close(0u32.into(), b"request timed out");
        self.forget(addr, conn);
    }

    async fn finish(
        &self,
        addr: SocketAddr,
        conn: quinn::Connection,
        (mut send, mut recv): (quinn::SendStream, quinn::RecvStream),
        req: &Request,
        deadline: tokio::time::Instant,
        too_late: &impl Fn() -> RequestError,
    ) -> Result<Response, RequestError> {
        let exchange = async {
            let written = write_frame(&mut send, req, self.frame_bytes_max).await;
            match written {
                // Refused locally before sending: nothing will come back.
                Err(FrameError::TooLarge { size, max }) => return Err(RequestError::TooLarge { size, max }),
                Err(FrameError::Malformed(reason)) => return Err(RequestError::Encode(reason)),
                _ => {}
            }
            // A peer that refuses a request (e.g. an oversized frame) stops our sending side
            // but still answers why: read that answer before reporting the failed write.
            match read_frame(&mut recv, self.frame_bytes_max).await {
                Ok(resp) => Ok(resp),
                Err(read_err) => Err(RequestError::reading(addr, written.err().unwrap_or(read_err))),
            }
        };
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(r) => r,
            Err(_) => {
                self.timed_out(addr, &conn);
                Err(too_late())
            }
        }
    }

    fn forget(&self, addr: SocketAddr, conn: &quinn::Connection) {
        let mut slots = self.slots.lock().expect("pool lock");
        if matches!(slots.get(&addr), Some(Slot::Up(c)) if c.stable_id() == conn.stable_id()) {
            slots.remove(&addr);
        }
        drop(slots);
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if channels.get(&addr).is_some_and(|c| c.conn.stable_id() == conn.stable_id()) {
            channels.remove(&addr);
        }
    }

    /// The connection to `addr`: the pooled one, or a new dial (one at a time per
    /// address: concurrent requests wait for it and share it).
    async fn connection(&self, addr: SocketAddr) -> Result<quinn::Connection, RequestError> {
        {
            let slots = self.slots.lock().expect("pool lock");
            if let Some(Slot::Up(c)) = slots.get(&addr)
                && c.close_reason().is_none()
            {
                return Ok(c.clone());
            }
        }
        let lock = self.lock_of(addr);
        let _dialing = lock.lock().await;
        self.dial(addr).await
    }

    /// The lock that serialises dials and channel opens to `addr`.
    fn lock_of(&self, addr: SocketAddr) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        if locks.len() >= LEGACY_MAX && !locks.contains_key(&addr) {
            // Addresses come from the layout and the config; past this many, start over.
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        locks.entry(addr).or_default().clone()
    }

    async fn dial(&self, addr: SocketAddr) -> Result<quinn::Connection, RequestError> {
        let prev_delay = {
            let mut slots = self.slots.lock().expect("pool lock");
            match slots.get(&addr) {
                Some(Slot::Up(c)) if c.close_reason().is_none() => return Ok(c.clone()),
                Some(Slot::Up(_)) => {
                    slots.remove(&addr);
                    0
                }
                Some(Slot::Backoff { until, delay_ms }) => {
                    let now = Instant::now();
                    if now < *until {
                        let reason = format!("its last dial failed (next in {} ms)", (*until - now).as_millis());
                        return Err(RequestError::Unreachable { addr, reason });
                    }
                    *delay_ms
                }
                None => 0,
            }
        };
        let unreachable = |reason: String| RequestError::Unreachable { addr, reason };
        let dial = async {
            self.endpoint
                .connect(addr, SERVER_NAME)
                .map_err(|e| unreachable(e.to_string()))?
                .await
                .map_err(|e| unreachable(e.to_string()))
        };
        let result = tokio::time::timeout(Duration::from_millis(DIAL_TIMEOUT_MS), dial)
            .await
            .unwrap_or_else(|_| Err(unreachable(format!("no handshake within {DIAL_TIMEOUT_MS} ms"))));
        let mut slots = self.slots.lock().expect("pool lock");
        match result {
            Ok(conn) => {
                slots.insert(addr, Slot::Up(conn.clone()));
                Ok(conn)
            }
            Err(e) => {
                let delay_ms = (prev_delay * 2).clamp(BACKOFF_MIN_MS, BACKOFF_MAX_MS);
                slots.insert(addr, Slot::Backoff { until: Instant::now() + Duration::from_millis(delay_ms), delay_ms });
                Err(e)
            }
        }
    }
}
