//! The quorumkv client: get, put and delete keys on a quorumkv cluster, choosing
//! per request how many replicas must answer.
//!
//! ```no_run
//! use qkv_client::{Client, Level};
//!
//! # async fn demo() -> Result<(), qkv_client::Error> {
//! let client = Client::builder()
//!     .nodes(["127.0.0.1:7001".parse().unwrap(), "127.0.0.1:7002".parse().unwrap()])
//!     .tls("cluster/certs/ca.pem", "cluster/certs/client.pem", "cluster/certs/client.key")
//!     .build()?;
//!
//! // A blind write: no context, so it replaces nothing and may become a sibling.
//! client.put("user:42", "alice").w(Level::Quorum).await?;
//!
//! // Read at R = quorum: every sibling value, and the causal context.
//! let got = client.get("user:42").r(Level::Quorum).await?;
//! assert!(got.found);
//!
//! // Resolve the siblings by writing with the context of the read.
//! client.put("user:42", "alice v2").context(got.context).await?;
//! # Ok(()) }
//! ```
//!
//! A write made with the context of a read replaces every sibling that read
//! returned; a write without one (or with an older one) keeps them, and the next
//! read returns all of them as siblings. Nothing is dropped silently.
//!
//! With `strict()`, only the key's home replicas count toward R or W; with
//! R + W > N strict, a read sees every write acknowledged before it started.
//!
//! Requests go to the key's home replicas first: the client learns the ring from the
//! nodes (and follows its changes), so a write reaches a node that coordinates it
//! without a forward, and an R = one read one that answers from its own copy. Reads
//! may be hedged ([`ClientBuilder::hedged_reads`], off by default): a read that has not
//! answered after a delay is also sent to another replica, within a retry budget.
//!
//! A [`Session`] ([`Client::session`]) reads its own writes and never reads back in
//! time, at any R and through any node; [`Session::token`] carries it to another
//! process.
//!
//! # Layout
//! - this file: [`Client`], [`ClientBuilder`], requests and results.
//! - `route.rs`: the ring the client routes by, and the hedges' retry budget.
//! - `session.rs`: [`Session`], read-your-writes and monotonic reads.
//! - `error.rs`: [`Error`].
//! - `config.rs`: [`ClientConfig`], the file the `qkv` command reads.

#![warn(missing_docs)]

mod config;
mod error;
mod route;
mod session;

use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use config::ClientConfig;
pub use error::Error;
pub use qkv_core::pbs;
pub use qkv_proto::Error as ClusterError;
pub use qkv_proto::{
    AaePair, AaeStatus, Actor, ClusterAdmin, ClusterChange, Context, Dot, DvvSet, HintStatus, InspectReply, Level,
    NodeId, OpStats, OwnerHints, Percentiles, REQUEST_TIMEOUT_MS_MAX, RingReply, StatsReply, StatusReply, actor_name,
    actor_node,
};
use qkv_proto::{GetRequest, PutRequest, Request, Response};
use qkv_transport::{Pool, TlsFiles};
pub use session::{SESSION_KEYS_DEFAULT, SESSION_TOKEN_CHARS_MAX, Session};

/// Default request deadline.
pub const TIMEOUT_DEFAULT: Duration = Duration::from_secs(1);
/// Time allowed beyond the request deadline for the network and one forwarding hop.
const TRANSPORT_MARGIN: Duration = Duration::from_millis(1000);
/// How long past a node's own deadline the client waits for its answer before it
/// tries the next node (when one is left).
const ATTEMPT_SLACK: Duration = Duration::from_millis(200);
/// ... and a write, which the node may forward, the forward's margin on top.
const FORWARD_SLACK: Duration = Duration::from_millis(500);
/// A failover attempt needs at least this much of the request's deadline left.
const MIN_ATTEMPT: Duration = Duration::from_millis(20);
/// The first pause after a node answered `overloaded` (doubling at each attempt, up to 8x).
const OVERLOADED_PAUSE: Duration = Duration::from_millis(25);
/// A node that failed is skipped at least this long, doubling while it stays down.
const DOWN_BACKOFF_MIN: Duration = Duration::from_millis(250);
/// ... up to this long between probes.
const DOWN_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A node with requests in flight that has answered nothing for this long is tried last.
const SUSPECT_AFTER: Duration = Duration::from_millis(250);
/// Deadline of a membership request: a commit is two rounds of votes among the members,
/// each vote synced to disk and bounded by the node's own request deadline.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of a background probe of a node marked down.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Hedged reads: after `after` without an answer a read is also sent to another home
/// replica, while the budget allows (`budget_percent` % of reads, plus a few saved).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hedge {
    /// How long a read waits for its first node before it asks a second.
    pub after: Duration,
    /// Hedges allowed, as a percentage of reads.
    pub budget_percent: u32,
}

/// A node the client is avoiding.
struct Down {
    until: Instant,
    backoff: Duration,
    probing: bool,
}

/// Builds a [`Client`].
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    nodes: Vec<SocketAddr>,
    tls: Option<TlsFiles>,
    read: Level,
    write: Level,
    timeout: Duration,
    frame_bytes_max: usize,
    route_by_token: bool,
    hedge: Option<Hedge>,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            nodes: vec![],
            tls: None,
            read: Level::Quorum,
            write: Level::Quorum,
            timeout: TIMEOUT_DEFAULT,
            frame_bytes_max: qkv_proto::frame::FRAME_BYTES_MAX_DEFAULT,
            route_by_token: true,
            hedge: None,
        }
    }
}

impl ClientBuilder {
    /// The nodes to talk to; any node accepts any request. Tried in turn on connection errors.
    pub fn nodes(mut self, nodes: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.nodes = nodes.into_iter().collect();
        self
    }

    /// The cluster CA certificate and this client's certificate and key (PEM files).
    pub fn tls(mut self, ca: impl Into<PathBuf>, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls = Some(TlsFiles { ca: ca.into(), cert: cert.into(), key: key.into() });
        self
    }

    /// Default R for reads (default `quorum`).
    pub fn read_level(mut self, level: Level) -> Self {
        self.read = level;
        self
    }

    /// Default W for writes and deletes (default `quorum`).
    pub fn write_level(mut self, level: Level) -> Self {
        self.write = level;
        self
    }

    /// Default request deadline (default 1 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Largest frame sent or accepted (default 24 MiB: a node at default limits holds states up to 16 MiB).
    pub fn frame_bytes_max(mut self, bytes: usize) -> Self {
        self.frame_bytes_max = bytes;
        self
    }

    /// Send each request to the key's home replicas first, by the ring learnt from the
    /// nodes (default `true`); `false`: to the configured nodes in turn.
    pub fn route_by_token(mut self, on: bool) -> Self {
        self.route_by_token = on;
        self
    }

    /// Hedge reads: a read unanswered after `after` is also sent to another home
    /// replica, and the first answer wins; at most `budget_percent` % of reads are
    /// hedged (off by default). A hedge costs the cluster a second read; it saves a read
    /// from waiting on a replica that has stalled (a pause, a full disk queue) until
    /// the cluster takes it for down.
    pub fn hedged_reads(mut self, after: Duration, budget_percent: u32) -> Self {
        self.hedge = Some(Hedge { after, budget_percent: budget_percent.min(100) });
        self
    }

    /// Create the client. Must be called inside a tokio runtime.
    pub fn build(self) -> Result<Client, Error> {
        if self.nodes.is_empty() {
            return Err(Error::Config("no nodes given".into()));
        }
        let tls = self.tls.ok_or_else(|| Error::Config("no TLS files given (CA, certificate, key)".into()))?;
        let endpoint = qkv_transport::client_endpoint(&tls).map_err(|e| Error::Config(e.to_string()))?;
        Ok(Client(Arc::new(Inner {
            pool: Pool::new(endpoint, self.frame_bytes_max),
            health: Mutex::new(HashMap::new()),
            load: Mutex::new(HashMap::new()),
            nodes: self.nodes,
            next: AtomicUsize::new(0),
            read: self.read,
            write: self.write,
            timeout: self.timeout,
            routing: self.route_by_token.then(|| Mutex::new(route::Routing::new())),
            hedge: self.hedge,
            budget: route::Budget::new(self.hedge.map_or(0, |h| h.budget_percent)),
            hedges: AtomicU64::new(0),
        })))
    }
}

struct Inner {
    pool: Pool,
    /// Nodes that failed at the transport level, skipped until a background probe gets an answer.
    health: Mutex<HashMap<SocketAddr, Down>>,
    /// Requests in flight per node, and when it last answered.
    load: Mutex<HashMap<SocketAddr, (u32, Instant)>>,
    nodes: Vec<SocketAddr>,
    next: AtomicUsize,
    read: Level,
    write: Level,
    timeout: Duration,
    /// The ring requests are routed by (`None`: routing by token is off).
    routing: Option<Mutex<route::Routing>>,
    hedge: Option<Hedge>,
    budget: route::Budget,
    /// Hedges sent.
    hedges: AtomicU64,
}

/// A quorumkv client. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Client(Arc<Inner>);

/// A read's result.
#[derive(Clone, Debug, PartialEq)]
pub struct GetResult {
    /// False when the key was never written or is deleted.
    pub found: bool,
    /// Every sibling value (more than one after concurrent writes).
    pub values: Vec<Vec<u8>>,
    /// Pass to the next write of this key to replace these values.
    pub context: Context,
    /// Replicas whose answers made this one (R, or more: a session read asks past R
    /// while the first answers are older than the session).
    pub replied: u32,
}

/// A write's result.
#[derive(Clone, Debug, PartialEq)]
pub struct PutResult {
    /// The context of this write: what the writer saw plus this write, never a concurrent
    /// write it did not see. Pass it to a later write to replace this value (and only it).
    pub context: Context,
    /// The write's version (its dot), for tracing.
    pub dot: Dot,
    /// The home replicas that acknowledged the write before the answer.
    pub home_acks: Vec<NodeId>,
    /// Stand-ins that acknowledged instead of a home replica that was down: (stand-in, home replica).
    /// They hold the write as a hint and hand it to the home replica when it is back.
    pub standin_acks: Vec<(NodeId, NodeId)>,
    /// The node that coordinated the write.
    pub coordinator: NodeId,
    /// The write's id, the same on every attempt (see `PutRequest::write_id`): replicas
    /// that hold it twice (a retry two coordinators took) keep one.
    pub write_id: u64,
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl Client {
    /// Start building a client.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// A client from a [`ClientConfig`] (what the `qkv` command reads).
    pub fn from_config(cfg: &ClientConfig) -> Result<Client, Error> {
        cfg.builder().build()
    }

    /// Read `key`. Await the returned request, after setting options on it.
    pub fn get(&self, key: impl Into<Vec<u8>>) -> Get {
        Get {
            client: self.clone(),
            key: key.into(),
            r: self.0.read,
            strict: false,
            timeout: self.0.timeout,
            session: None,
        }
    }

    /// A new session: its reads return nothing older than what it wrote or read before.
    pub fn session(&self) -> Session {
        Session::new(self.clone())
    }

    /// Resume a session from [`Session::token`] (made by any client of the cluster).
    /// A malformed token is an error here; a token with a floor the cluster did not
    /// issue is refused by the node at the session's first request for that key.
    pub fn resume_session(&self, token: &str) -> Result<Session, Error> {
        Session::resume(self.clone(), token)
    }

    /// Write `value` under `key`.
    pub fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Put {
        self.write(key.into(), Some(value.into()))
    }

    /// Delete `key` (a tombstone; pass the read's context to delete what you saw).
    pub fn delete(&self, key: impl Into<Vec<u8>>) -> Put {
        self.write(key.into(), None)
    }

    fn write(&self, key: Vec<u8>, value: Option<Vec<u8>>) -> Put {
        Put {
            client: self.clone(),
            key,
            value,
            w: self.0.write,
            strict: false,
            context: Context::empty(),
            timeout: self.0.timeout,
            session: None,
        }
    }

    /// One node's view of the cluster.
    pub async fn status_of(&self, node: SocketAddr) -> Result<StatusReply, Error> {
        let resp = self.0.pool.request(node, &Request::Status, self.0.timeout + TRANSPORT_MARGIN).await;
        match resp.map_err(|e| Error::NoNodeReachable { tried: 1, last: e.to_string() })? {
            Response::Status(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    /// Every reachable node's latest round trips to its peers, the ring's preference
    /// lists (who coordinates a key's writes), and the cluster's replication factor:
    /// what [`pbs::predict`] takes to predict staleness.
    pub async fn latency_samples(&self) -> Result<(pbs::Samples, usize), Error> {
        let mut nodes = vec![];
        let (mut n, mut last) = (None, None);
        for &addr in self.nodes() {
            match self.stats_of(addr).await {
                Ok(s) => nodes.push(pbs::NodeReport {
                    node: s.node,
                    peers: s.latency,
                    apply_wait_us: s.replica_write_wait_us,
                }),
                Err(e) => last = Some(e),
            }
            if n.is_none() {
                n = self.status_of(addr).await.ok().map(|s| s.n as usize);
            }
        }
        match (nodes.is_empty(), n) {
            (false, Some(n)) => {
                let mut samples = pbs::Samples::from_nodes(&nodes);
                // Without the layout, every order of the nodes is taken as equally likely.
                match self.fetch_ring().await {
                    Ok(view) => samples.orders = view.shares(),
                    Err(e) => tracing::debug!("no ring for the prediction's key placement: {e}"),
                }
                Ok((samples, n))
            }
            _ => Err(last.unwrap_or(Error::NoNodeReachable { tried: self.nodes().len(), last: "no answer".into() })),
        }
    }

    /// One node's request and replication statistics.
    pub async fn stats_of(&self, node: SocketAddr) -> Result<StatsReply, Error> {
        let resp = self.0.pool.request(node, &Request::Stats, self.0.timeout + TRANSPORT_MARGIN).await;
        match resp.map_err(|e| Error::NoNodeReachable { tried: 1, last: e.to_string() })? {
            Response::Stats(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    /// Membership administration on the node at `node` (staged changes live on the node
    /// that staged them, so a change is staged, planned and committed on one node). The
    /// answer is the node's encoded cluster info (`qkv_core::membership::ClusterInfo`).
    pub async fn cluster_admin(&self, node: SocketAddr, admin: ClusterAdmin) -> Result<Vec<u8>, Error> {
        let resp = self.0.pool.request(node, &Request::Cluster(admin), ADMIN_TIMEOUT + TRANSPORT_MARGIN).await;
        match resp.map_err(|e| Error::NoNodeReachable { tried: 1, last: e.to_string() })? {
            Response::ClusterInfo(b) => Ok(b.into_vec()),
            other => Err(unexpected(other)),
        }
    }

    /// The configured nodes' addresses.
    pub fn nodes(&self) -> &[SocketAddr] {
        &self.0.nodes
    }

    /// Each configured node's view of the cluster (or why it did not answer).
    pub async fn status(&self) -> Vec<(SocketAddr, Result<StatusReply, Error>)> {
        let mut out = vec![];
        for &n in &self.0.nodes {
            out.push((n, self.status_of(n).await));
        }
        out
    }

    /// A key's preference list.
    pub async fn ring(&self, key: impl Into<Vec<u8>>) -> Result<RingReply, Error> {
        match self.send(Request::Ring { key: key.into() }, self.0.timeout).await? {
            Response::Ring(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// What each home replica holds for `key`, unmerged: the operator's view of divergence.
    pub async fn inspect(&self, key: impl Into<Vec<u8>>) -> Result<InspectReply, Error> {
        match self.send(Request::Inspect { key: key.into() }, self.0.timeout).await? {
            Response::Inspect(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// Test-only: tell the node at `node` to cut itself off from `isolate` (empty: heal).
    /// Refused unless that node's config enables `fault_injection`.
    #[doc(hidden)]
    pub async fn inject_fault(&self, node: SocketAddr, isolate: Vec<NodeId>) -> Result<(), Error> {
        let resp = self.0.pool.request(node, &Request::Fault { isolate }, self.0.timeout + TRANSPORT_MARGIN).await;
        match resp.map_err(|e| Error::NoNodeReachable { tried: 1, last: e.to_string() })? {
            Response::ReplicaAck => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Send to one node after another until one answers; errors the node sends back are final.
    ///
    /// Nodes that failed recently are tried last, and so are suspect nodes: those with
    /// requests in flight that have answered nothing for [`SUSPECT_AFTER`]. A node that
    /// dies costs the requests already sent to it their deadline, not every request
    /// until it returns.
    /// Send `req` to a node, failing over to the next one when a node cannot be
    /// reached, or (after a short pause) when it is overloaded and did nothing.
    /// `timeout` is the whole request's: every attempt gets what is left of it (a
    /// retried write keeps its write id, so it never lands twice).
    async fn send(&self, req: Request, timeout: Duration) -> Result<Response, Error> {
        self.send_to(req, timeout, &[]).await.map(|(_, r)| r)
    }

    /// [`Client::send`], trying the nodes of `first` before the configured ones; with
    /// the address that answered.
    async fn send_to(
        &self,
        mut req: Request,
        timeout: Duration,
        first: &[SocketAddr],
    ) -> Result<(SocketAddr, Response), Error> {
        let deadline = Instant::now() + timeout + TRANSPORT_MARGIN;
        let start = self.0.next.fetch_add(1, Ordering::Relaxed);
        let n = self.0.nodes.len();
        let rest = (0..n).map(|i| self.0.nodes[(start + i) % n]).filter(|a| !first.contains(a));
        let mut order: Vec<(u8, SocketAddr)> = first
            .iter()
            .copied()
            .chain(rest)
            .map(|a| (if self.is_down(a) { 2 } else { u8::from(self.is_suspect(a)) }, a))
            .collect();
        // (Stable: the routed nodes stay first among the healthy.)
        order.sort_by_key(|(rank, _)| *rank);
        let n = order.len();
        let mut last = String::new();
        let mut overloaded = None;
        for (tried, (_, addr)) in order.into_iter().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            if tried > 0 && left < MIN_ATTEMPT {
                return Err(Error::Deadline { tried, last });
            }
            // The node's own deadline leaves room for the network, as the first attempt's did.
            let node_deadline = left.saturating_sub(TRANSPORT_MARGIN).max(left / 2);
            set_timeout(&mut req, node_deadline);
            // A node answers by its deadline (a forwarded write by its deadline and the
            // forward's margin), even if only to say it timed out. One that died with its
            // connection open answers nothing: past that and a little, the rest of the
            // time goes to the next node.
            let slack = if matches!(req, Request::Put(_)) { FORWARD_SLACK + ATTEMPT_SLACK } else { ATTEMPT_SLACK };
            // (The next node keeps at least a quarter of what is left.)
            let wait = if tried + 1 < n { (node_deadline + slack).min(left - left / 4) } else { left };
            let in_flight = InFlight::start(self, addr);
            let result = self.0.pool.request(addr, &req, wait).await;
            in_flight.end(result.is_ok());
            match result {
                Ok(Response::Error(e @ qkv_proto::Error::Overloaded(_))) => {
                    // Nothing was done: pause (more at each attempt), then ask the next node.
                    let pause = OVERLOADED_PAUSE * (1 << tried.min(3));
                    last = e.to_string();
                    overloaded = Some(e);
                    let left = deadline.saturating_duration_since(Instant::now());
                    if tried + 1 == n || left < pause + MIN_ATTEMPT {
                        break;
                    }
                    tokio::time::sleep(pause).await;
                }
                // A node outside the cluster (it left, or was forgotten) did nothing: the
                // ring that routed here is stale; ask the next node.
                Ok(Response::Error(e @ qkv_proto::Error::WrongLayout { .. }))
                    if matches!(req, Request::Get(_) | Request::Put(_)) =>
                {
                    self.route_stale();
                    last = e.to_string();
                    overloaded = Some(e);
                }
                Ok(Response::Error(e)) => return Err(Error::Cluster(e)),
                Ok(r) => {
                    self.0.health.lock().unwrap_or_else(|p| p.into_inner()).remove(&addr);
                    return Ok((addr, r));
                }
                // Over the frame limit here: no node would take it, and nothing was sent.
                Err(e @ (qkv_transport::RequestError::TooLarge { .. } | qkv_transport::RequestError::Encode(_))) => {
                    return Err(Error::Cluster(e.into()));
                }
                Err(e) => {
                    self.mark_down(addr);
                    last = e.to_string();
                }
            }
        }
        match overloaded {
            Some(e) => Err(Error::Cluster(e)),
            None => Err(Error::NoNodeReachable { tried: n, last }),
        }
    }

    /// The addresses of `key`'s home replicas by the ring the client knows (empty when
    /// it knows none yet, or routing is off); starts a fetch of the layout when due.
    fn homes(&self, key: &[u8]) -> Vec<SocketAddr> {
        let Some(routing) = &self.0.routing else { return vec![] };
        let (view, fetch) = {
            let mut r = routing.lock().unwrap_or_else(|p| p.into_inner());
            (r.view.clone(), r.start_fetch())
        };
        if fetch {
            let client = self.clone();
            tokio::spawn(async move {
                let view = client.fetch_ring().await;
                if let Err(e) = &view {
                    tracing::debug!("no ring to route by: {e}");
                }
                if let Some(routing) = &client.0.routing {
                    routing.lock().unwrap_or_else(|p| p.into_inner()).fetched(view.ok());
                }
            });
        }
        view.map(|v| v.homes(key)).unwrap_or_default()
    }

    /// The layout of any node, as a ring to route by.
    async fn fetch_ring(&self) -> Result<route::RingView, Error> {
        let info = match self.send(Request::Cluster(ClusterAdmin::Show), self.0.timeout).await? {
            Response::ClusterInfo(b) => qkv_core::membership::ClusterInfo::decode(&b).map_err(Error::Protocol)?,
            other => return Err(unexpected(other)),
        };
        route::RingView::from_info(&info).map_err(Error::Protocol)
    }

    /// The ring looks stale: fetch it again soon.
    fn route_stale(&self) {
        if let Some(routing) = &self.0.routing {
            routing.lock().unwrap_or_else(|p| p.into_inner()).stale();
        }
    }

    /// A write answered by `answered` was coordinated by `coordinator`: when the ring
    /// places it elsewhere, it was forwarded, and the ring is fetched again soon.
    fn check_route(&self, answered: SocketAddr, coordinator: NodeId) {
        let Some(routing) = &self.0.routing else { return };
        let mut r = routing.lock().unwrap_or_else(|p| p.into_inner());
        let placed = r.view.as_ref().and_then(|v| v.addr(coordinator));
        if placed != Some(answered) {
            r.stale();
        }
    }

    /// Hedges sent so far ([`ClientBuilder::hedged_reads`]).
    pub fn hedges_sent(&self) -> u64 {
        self.0.hedges.load(Ordering::Relaxed)
    }

    /// The epoch of the layout the client routes by (`None`: none fetched yet).
    pub fn routing_epoch(&self) -> Option<u64> {
        let r = self.0.routing.as_ref()?.lock().unwrap_or_else(|p| p.into_inner());
        r.view.as_ref().map(|v| v.epoch)
    }

    /// A read, hedged when so configured: after the hedge delay the same read also goes
    /// to the next node, and the first success wins. The first attempt runs on as a
    /// task of its own until it ends: a node that stalls keeps requests in flight and
    /// so becomes suspect, and reads stop going to it first (were it dropped, the
    /// stalled node would look idle, and every read routed to it would need a hedge).
    async fn read(&self, req: Request, timeout: Duration, homes: Vec<SocketAddr>) -> Result<Response, Error> {
        let hedge = match self.0.hedge {
            Some(h) if homes.len() > 1 => h,
            _ => return self.send_to(req, timeout, &homes).await.map(|(_, r)| r),
        };
        self.0.budget.deposit();
        let mut first = tokio::spawn({
            let (client, req, homes) = (self.clone(), req.clone(), homes.clone());
            async move { client.send_to(req, timeout, &homes).await }
        });
        let joined = |r: Result<Result<(SocketAddr, Response), Error>, tokio::task::JoinError>| {
            r.unwrap_or_else(|e| Err(Error::Protocol(format!("a read's task failed: {e}")))).map(|(_, r)| r)
        };
        tokio::select! {
            r = &mut first => return joined(r),
            _ = tokio::time::sleep(hedge.after) => {}
        }
        if !self.0.budget.withdraw() {
            return joined(first.await);
        }
        self.0.hedges.fetch_add(1, Ordering::Relaxed);
        let mut others = homes.clone();
        others.rotate_left(1);
        let second = self.send_to(req, timeout.saturating_sub(hedge.after), &others);
        tokio::pin!(second);
        // The first success wins; an error waits for the other.
        tokio::select! {
            r = &mut first => match joined(r) {
                Ok(r) => Ok(r),
                Err(_) => second.await.map(|(_, r)| r),
            },
            r = &mut second => match r {
                Ok((_, r)) => Ok(r),
                Err(_) => joined(first.await),
            },
        }
    }

    fn load(&self, addr: SocketAddr, f: impl FnOnce(&mut (u32, Instant))) {
        let mut load = self.0.load.lock().unwrap_or_else(|p| p.into_inner());
        f(load.entry(addr).or_insert((0, Instant::now())));
    }

    fn is_suspect(&self, addr: SocketAddr) -> bool {
        let load = self.0.load.lock().unwrap_or_else(|p| p.into_inner());
        load.get(&addr).is_some_and(|(in_flight, heard)| *in_flight > 0 && heard.elapsed() > SUSPECT_AFTER)
    }

    fn is_down(&self, addr: SocketAddr) -> bool {
        let mut health = self.0.health.lock().unwrap_or_else(|p| p.into_inner());
        let Some(d) = health.get_mut(&addr) else { return false };
        if Instant::now() >= d.until && !d.probing {
            // Time to look again: in the background, so no request pays for a dead node.
            d.probing = true;
            let client = self.clone();
            tokio::spawn(async move {
                let ok = client.0.pool.request(addr, &Request::Status, PROBE_TIMEOUT).await.is_ok();
                let mut health = client.0.health.lock().unwrap_or_else(|p| p.into_inner());
                if ok {
                    health.remove(&addr);
                } else if let Some(d) = health.get_mut(&addr) {
                    d.probing = false;
                    d.backoff = (d.backoff * 2).min(DOWN_BACKOFF_MAX);
                    d.until = Instant::now() + d.backoff;
                }
            });
        }
        true
    }

    fn mark_down(&self, addr: SocketAddr) {
        let mut health = self.0.health.lock().unwrap_or_else(|p| p.into_inner());
        let d = health.entry(addr).or_insert(Down { until: Instant::now(), backoff: DOWN_BACKOFF_MIN, probing: false });
        d.until = Instant::now() + d.backoff;
    }
}

/// A request counted in flight to a node until it ends, or its future is dropped (a
/// hedged read's loser, a caller's own timeout): a count left behind would make the
/// node look suspect for good.
struct InFlight<'a> {
    client: &'a Client,
    addr: SocketAddr,
    answered: bool,
}

impl<'a> InFlight<'a> {
    fn start(client: &'a Client, addr: SocketAddr) -> Self {
        client.load(addr, |l| l.0 += 1);
        InFlight { client, addr, answered: false }
    }

    fn end(mut self, answered: bool) {
        self.answered = answered;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let answered = self.answered;
        self.client.load(self.addr, |l| {
            l.0 = l.0.saturating_sub(1);
            if answered {
                l.1 = Instant::now();
            }
        });
    }
}

fn unexpected(r: Response) -> Error {
    match r {
        Response::Error(e) => Error::Cluster(e),
        other => Error::Protocol(format!("unexpected response {other:?}")),
    }
}

fn timeout_ms(d: Duration) -> Option<u32> {
    Some(d.as_millis().clamp(1, u128::from(u32::MAX)) as u32)
}

/// A read in the making: set options, then `.await` it.
#[must_use = "a request does nothing until awaited"]
pub struct Get {
    client: Client,
    key: Vec<u8>,
    r: Level,
    strict: bool,
    timeout: Duration,
    session: Option<Session>,
}

impl Get {
    /// Replicas that must answer (R).
    pub fn r(mut self, level: Level) -> Self {
        self.r = level;
        self
    }

    /// Only the key's home replicas count toward R.
    pub fn strict(mut self) -> Self {
        self.strict = true;
        self
    }

    /// Deadline for this request.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Read in `session`: the answer is at least as new as what the session wrote and
    /// read of the key. While no replica is, the read waits (1 ms, doubling up to
    /// 50 ms) and asks again, until its deadline: then the error is
    /// [`ClusterError::Behind`] (or a timeout), never an older state.
    pub fn session(mut self, session: &Session) -> Self {
        self.session = Some(session.clone());
        self
    }
}

/// First pause of a session read whose replicas are all behind the session.
const BEHIND_PAUSE: Duration = Duration::from_millis(1);
/// Longest such pause.
const BEHIND_PAUSE_MAX: Duration = Duration::from_millis(50);

impl IntoFuture for Get {
    type Output = Result<GetResult, Error>;
    type IntoFuture = BoxFuture<'static, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            // Reads spread over the key's home replicas (each answers R = one itself).
            let mut homes = self.client.homes(&self.key);
            if !homes.is_empty() {
                let turn = self.client.0.next.fetch_add(1, Ordering::Relaxed) % homes.len();
                homes.rotate_left(turn);
            }
            let started = Instant::now();
            // One request of a session on a key at a time: each leaves a floor that
            // covers the ones before it.
            let _turn = Session::turn_of(self.session.as_ref(), &self.key, self.timeout).await?;
            let floor = self.session.as_ref().and_then(|s| s.floor(&self.key)).map(|(f, _)| f);
            let mut pause = BEHIND_PAUSE;
            loop {
                let left = self.timeout.saturating_sub(started.elapsed());
                let req = GetRequest {
                    key: self.key.clone(),
                    r: self.r,
                    strict: self.strict,
                    timeout_ms: timeout_ms(left),
                    session: floor.clone(),
                };
                let answer = self.client.read(Request::Get(req), left, homes.clone()).await;
                match answer {
                    Ok(Response::Get(g)) => {
                        if let Some(s) = &self.session {
                            s.saw(&self.key, &g.context, g.found);
                        }
                        return Ok(GetResult {
                            found: g.found,
                            values: g.values.into_iter().map(|v| v.into_vec()).collect(),
                            context: g.context,
                            replied: g.replied,
                        });
                    }
                    // No replica has caught up with the session yet: wait, then ask again.
                    Err(Error::Cluster(ClusterError::Behind { .. }))
                        if started.elapsed() + pause + MIN_ATTEMPT < self.timeout =>
                    {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(BEHIND_PAUSE_MAX);
                    }
                    Ok(other) => return Err(unexpected(other)),
                    Err(e) => {
                        if let Some(s) = self.session.as_ref().filter(|_| floor.is_some()) {
                            forget_refused_floor(s, &self.key, &e);
                        }
                        return Err(e);
                    }
                }
            }
        })
    }
}

/// The cluster refused a session's floor of `key` (not one it issued for the key):
/// the session forgets it, so that its next request of the key can go through.
fn forget_refused_floor(session: &Session, key: &[u8], e: &Error) {
    if matches!(e, Error::Cluster(ClusterError::BadRequest(m)) if m.contains("invalid context")) {
        session.forget(key);
    }
}

/// A write or delete in the making: set options, then `.await` it.
#[must_use = "a request does nothing until awaited"]
pub struct Put {
    client: Client,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    w: Level,
    strict: bool,
    context: Context,
    timeout: Duration,
    session: Option<Session>,
}

impl Put {
    /// Replicas that must acknowledge (W).
    pub fn w(mut self, level: Level) -> Self {
        self.w = level;
        self
    }

    /// Only the key's home replicas count toward W.
    pub fn strict(mut self) -> Self {
        self.strict = true;
        self
    }

    /// The context from an earlier read: the write replaces the values that read returned.
    pub fn context(mut self, context: Context) -> Self {
        self.context = context;
        self
    }

    /// Deadline for this request.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Write in `session`: the session's later reads of the key see this write (or
    /// something newer). The write replaces only what its own context names.
    pub fn session(mut self, session: &Session) -> Self {
        self.session = Some(session.clone());
        self
    }
}

impl IntoFuture for Put {
    type Output = Result<PutResult, Error>;
    type IntoFuture = BoxFuture<'static, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let write_id = new_write_id();
            let started = Instant::now();
            let _turn = Session::turn_of(self.session.as_ref(), &self.key, self.timeout).await?;
            let timeout = self.timeout.saturating_sub(started.elapsed()).max(MIN_ATTEMPT);
            let (session, since) =
                self.session.as_ref().and_then(|s| s.floor(&self.key)).map(|(f, since)| (f.context, since)).unzip();
            let req = PutRequest {
                key: self.key,
                value: self.value,
                context: self.context,
                w: self.w,
                strict: self.strict,
                timeout_ms: timeout_ms(timeout),
                forwarded: false,
                write_id: Some(write_id),
                session: session.clone(),
            };
            let deleted = req.value.is_none();
            // To the first home replica up: it coordinates the write itself.
            let homes = self.client.homes(&req.key);
            let req_key = req.key.clone();
            let sent = self.client.send_to(Request::Put(req), timeout, &homes).await;
            if let (Err(e), Some(s)) = (&sent, self.session.as_ref().filter(|_| session.is_some())) {
                forget_refused_floor(s, &req_key, e);
            }
            match sent? {
                (answered, Response::Put(p)) => {
                    self.client.check_route(answered, p.coordinator);
                    if let Some(s) = &self.session {
                        let fresh = session.as_ref().is_some_and(|f| p.context.seen.covers_all(&f.seen));
                        // (A node of an earlier release sends no floor: the write's context is one.)
                        s.wrote(&req_key, p.session.unwrap_or_else(|| p.context.clone()), deleted, since, fresh);
                    }
                    Ok(PutResult {
                        context: p.context,
                        dot: p.dot,
                        home_acks: p.home_acks,
                        standin_acks: p.standin_acks,
                        coordinator: p.coordinator,
                        write_id,
                    })
                }
                (_, other) => Err(unexpected(other)),
            }
        })
    }
}

/// Set the deadline a node applies to `req` (reads and writes carry one).
fn set_timeout(req: &mut Request, t: Duration) {
    match req {
        Request::Get(g) => g.timeout_ms = timeout_ms(t),
        Request::Put(p) => p.timeout_ms = timeout_ms(t),
        _ => {}
    }
}

/// A fresh write id: random per process (std's randomly keyed hasher), unique per write.
fn new_write_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut h = KEYS.get_or_init(Default::default).build_hasher();
    h.write_u64(NEXT.fetch_add(1, Ordering::Relaxed));
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}
