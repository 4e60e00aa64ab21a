//! The node: the request handler the transport calls, and what the core thread
//! ([`crate::driver`]) shares with it and with the peer tasks (peer addresses, the
//! connection pool, the fault switch, metrics).
//!
//! A request reaches the core through one of the core thread's inboxes and is
//! answered through a oneshot channel; requests about the node itself (status,
//! stats, placement) run as queries on the core thread. Nothing here takes a lock
//! around the core: there is none.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use qkv_core::router::{FORWARD_MARGIN_MS, REQUEST_TIMEOUT_MS_MAX};
use qkv_core::{Core, CoreConfig};
use qkv_proto::{AnsweredBy, Error, NodeId, Request, Response, StatsReply};
use qkv_transport::{Handler, PeerRole, Pool, server};
use tokio::sync::oneshot;

use crate::config::Config;
use crate::driver::{CoreThread, Event, Inbox, Lane};
use crate::metrics::Metrics;
use crate::storage::{Storage, StoreHandle};

/// A request unanswered this long after its own deadline is failed by the driver (a bug guard).
const SAFETY_MARGIN_MS: u64 = 5_000;
/// How long a status, stats or metrics query waits for the core thread.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// What the node's tasks and its core thread share.
pub struct Shared {
    pub(crate) storage: Arc<Storage>,
    pool: Pool,
    /// Where to dial each peer: the members of the layouts in effect, and the config's
    /// seeds for nodes no layout names (yet).
    addrs: RwLock<PeerAddrs>,
    /// Monotonic time zero of the core.
    pub(crate) start: Instant,
    fault_injection: bool,
    /// Peers cut off by the test-only fault switch.
    isolated: RwLock<BTreeSet<NodeId>>,
    pub(crate) metrics: Metrics,
    metrics_addr: Option<SocketAddr>,
    /// Test-only: replica writes from peers wait a uniform 0 to 2x this (ms) first.
    apply_delay_ms: u64,
    /// Round trips to each peer, for staleness prediction.
    pub(crate) round_trips: crate::latency::RoundTrips,
}

/// Peer addresses, rebuilt from the layouts in effect whenever the layout epoch moves.
struct PeerAddrs {
    /// The epoch the map was built for (a late rebuild of an older one is ignored).
    epoch: u64,
    map: BTreeMap<NodeId, SocketAddr>,
    /// The config's peers: seeds, dialled until a layout gives an address.
    seeds: BTreeMap<NodeId, SocketAddr>,
}

impl PeerAddrs {
    /// Rebuild from the members' addresses of `epoch`; returns the ones that are not
    /// `ip:port` and need a name lookup (done off the core's lock, then [`PeerAddrs::resolved`]).
    fn rebuild(&mut self, epoch: u64, members: &[(NodeId, String)]) -> Vec<(NodeId, String)> {
        if epoch < self.epoch {
            return vec![];
        }
        let mut map = self.seeds.clone();
        let mut lookup = vec![];
        for (id, addr) in members {
            match addr.parse::<SocketAddr>() {
                Ok(a) => {
                    map.insert(*id, a);
                }
                Err(_) => {
                    // Keep what we had for it (or the seed) until the lookup answers.
                    if let Some(&old) = self.map.get(id) {
                        map.insert(*id, old);
                    }
                    lookup.push((*id, addr.clone()));
                }
            }
        }
        self.epoch = epoch;
        self.map = map;
        lookup
    }

    fn resolved(&mut self, epoch: u64, id: NodeId, addr: SocketAddr) {
        if epoch == self.epoch {
            self.map.insert(id, addr);
        }
    }
}

/// Members whose peer address changed the layout, at most this many looked up at once.
const LOOKUPS_MAX: usize = qkv_core::layout::MEMBERS_MAX;

/// The request handler; cheap to clone.
#[derive(Clone)]
pub struct Node {
    shared: Arc<Shared>,
    inbox: Inbox,
    thread: Arc<Mutex<Option<CoreThread>>>,
}

impl Node {
    /// Assemble a node from its parts and start its core thread (inside a tokio runtime).
    pub fn new(
        cfg: &Config,
        storage: Arc<Storage>,
        pool: Pool,
        metrics_addr: Option<SocketAddr>,
    ) -> anyhow::Result<Node> {
        let core_cfg = CoreConfig {
            me: cfg.id,
            incarnation: storage.boot(),
            hints: cfg.hint_limits(),
            // The layout of a first start, from the seeds; a stored one wins.
            layout: cfg.layout()?,
            limits: cfg.limits,
            request_timeout_ms: cfg.request_timeout_ms,
            ping_interval_ms: cfg.ping_interval_ms,
            down_after_ms: cfg.down_after_ms,
            epoch: storage.epoch(),
            aae: cfg.anti_entropy,
            secret: qkv_transport::certs::load_secret(&cfg.secret_path())
                .map_err(|e| anyhow::anyhow!("cluster secret: {e} (run `qkv certs` to create it)"))?,
            transfer_bytes_per_s: cfg.transfer_bytes_per_s,
            bugs: Default::default(),
        };
        let wall_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let core = Core::new(core_cfg, StoreHandle(storage.clone()), 0, wall_ms)?;
        let seeds: BTreeMap<NodeId, SocketAddr> = cfg.peers.iter().map(|p| (p.id, p.addr)).collect();
        if cfg.fault_injection {
            tracing::warn!("fault_injection is on: any node certificate may cut this node off (tests only)");
        }
        let apply_delay_ms = cfg.test_apply_delay_ms.min(APPLY_DELAY_MS_MAX);
        if apply_delay_ms > 0 {
            tracing::warn!(
                "test_apply_delay_ms = {apply_delay_ms}: replica writes from peers are held 0 to {} ms before their \
                 apply (tests only)",
                2 * apply_delay_ms
            );
        }
        let shared = Arc::new(Shared {
            storage,
            pool,
            addrs: RwLock::new(PeerAddrs { epoch: 0, map: seeds.clone(), seeds }),
            start: Instant::now(),
            fault_injection: cfg.fault_injection,
            isolated: RwLock::new(BTreeSet::new()),
            metrics: Metrics::new(cfg.id),
            metrics_addr,
            apply_delay_ms,
            round_trips: Default::default(),
        });
        let (inbox, thread) = crate::driver::start(core, shared.clone(), cfg.core_thread)?;
        Ok(Node { shared, inbox, thread: Arc::new(Mutex::new(Some(thread))) })
    }

    /// The node's storage (for shutdown).
    pub fn storage(&self) -> &Storage {
        &self.shared.storage
    }

    /// Stop the core thread and wait for it: nothing reaches the core afterwards.
    pub async fn stop(&self) {
        let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
        let _ = self.inbox.stop();
        thread.join().await;
    }

    fn now_ms(&self) -> u64 {
        self.shared.start.elapsed().as_millis() as u64
    }

    /// Run `f` on the core and wait (bounded) for its result; queued on `lane` (a
    /// client's question waits in the clients' inbox, and is refused when it is full).
    async fn query<T: Send + 'static>(
        &self,
        lane: Lane,
        f: impl FnOnce(&mut Core<StoreHandle>, u64) -> T + Send + 'static,
    ) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        let run = move |c: &mut Core<StoreHandle>, now| {
            let _ = tx.send(f(c, now));
        };
        self.inbox.post(lane, Event::Query(Box::new(run)))?;
        match tokio::time::timeout(QUERY_TIMEOUT, rx).await {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(_)) => Err(Error::ShuttingDown),
            Err(_) => Err(Error::Internal(format!("the core thread did not answer within {QUERY_TIMEOUT:?}"))),
        }
    }

    /// [`Node::query`] from a thread that may block (the metrics render).
    fn query_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Core<StoreHandle>, u64) -> T + Send + 'static,
    ) -> Result<T, Error> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let run = move |c: &mut Core<StoreHandle>, now| {
            let _ = tx.send(f(c, now));
        };
        self.inbox.post(Lane::Urgent, Event::Query(Box::new(run)))?;
        rx.recv_timeout(QUERY_TIMEOUT).map_err(|e| match e {
            crossbeam_channel::RecvTimeoutError::Timeout => {
                Error::Internal(format!("the core thread did not answer within {QUERY_TIMEOUT:?}"))
            }
            crossbeam_channel::RecvTimeoutError::Disconnected => Error::ShuttingDown,
        })
    }
}

impl Shared {
    /// Rebuild the peer addresses for layout `epoch`; names that are not `ip:port` are
    /// looked up on the blocking pool (never under a lock), each kept once it resolves.
    /// Called inside the runtime.
    pub(crate) fn update_addrs(self: &Arc<Self>, epoch: u64, members: &[(NodeId, String)]) {
        let lookup = self.addrs.write().unwrap_or_else(|p| p.into_inner()).rebuild(epoch, members);
        tracing::debug!(epoch, members = members.len(), "peer addresses follow the layout");
        for (id, name) in lookup.into_iter().take(LOOKUPS_MAX) {
            let shared = self.clone();
            tokio::spawn(async move {
                let looked = tokio::task::spawn_blocking({
                    let name = name.clone();
                    move || std::net::ToSocketAddrs::to_socket_addrs(&name).map(|mut a| a.next())
                });
                match tokio::time::timeout(Duration::from_secs(10), looked).await {
                    Ok(Ok(Ok(Some(addr)))) => {
                        shared.addrs.write().unwrap_or_else(|p| p.into_inner()).resolved(epoch, id, addr)
                    }
                    Ok(Ok(Ok(None))) => tracing::warn!(id, "node {id}'s address `{name}` resolves to nothing"),
                    Ok(Ok(Err(e))) => tracing::warn!(id, "node {id}'s address `{name}`: {e}"),
                    Ok(Err(e)) => tracing::warn!(id, "looking up node {id}'s address `{name}`: {e}"),
                    Err(_) => tracing::warn!(id, "looking up node {id}'s address `{name}` took over 10 s"),
                }
            });
        }
    }

    /// Whether node `id` is a member of a layout in effect, or a seed.
    pub(crate) fn knows(&self, id: NodeId) -> bool {
        self.addrs.read().unwrap_or_else(|p| p.into_inner()).map.contains_key(&id)
    }

    fn is_isolated(&self, id: NodeId) -> bool {
        self.isolated.read().unwrap_or_else(|p| p.into_inner()).contains(&id)
    }

    /// Send `req` to node `to` and wait for its answer, within `timeout_ms`.
    pub(crate) async fn request(&self, to: NodeId, req: &Request, timeout_ms: u64) -> Result<Response, Error> {
        if self.is_isolated(to) {
            return Err(Error::Unreachable(format!("node {to} is cut off (fault injection)")));
        }
        let addr = self.addrs.read().unwrap_or_else(|p| p.into_inner()).map.get(&to).copied();
        match addr {
            Some(addr) => self.pool.request(addr, req, Duration::from_millis(timeout_ms)).await.map_err(Error::from),
            None => {
                tracing::debug!(to, "no address for node {to}: not in a layout in effect, nor a seed");
                Err(Error::Unreachable(format!("unknown node {to}")))
            }
        }
    }
}

impl Node {
    /// The status reply, from the core's report now, and the writes not yet on every replica.
    async fn status(&self, lane: Lane) -> Result<(qkv_proto::StatusReply, usize), Error> {
        self.query(lane, |core, now| (crate::status::status_reply(&core.report(now)), core.lag_pending().0)).await
    }

    fn stats_from(&self, status: qkv_proto::StatusReply, pending: usize) -> (qkv_proto::StatusReply, StatsReply) {
        let base = StatsReply {
            node: status.node,
            uptime_ms: self.now_ms(),
            replication_lag_pending: pending as u64,
            storage_bytes: self.shared.storage.disk_bytes(),
            metrics_addr: self.shared.metrics_addr.map(|a| a.to_string()),
            latency: self.shared.round_trips.snapshot(),
            replica_write_wait_us: self.shared.round_trips.apply_waits(),
            ..Default::default()
        };
        let stats = self.shared.metrics.stats(&status, base);
        (status, stats)
    }

    /// A request about the node itself ([`AnsweredBy::Driver`]), queued on `lane`.
    async fn answer_here(&self, lane: Lane, req: Request) -> Response {
        let answer = match req {
            Request::Fault { isolate } => {
                if !self.shared.fault_injection {
                    return Response::Error(Error::NotAuthorized("fault injection is disabled on this node".into()));
                }
                tracing::warn!(?isolate, "fault injection: cutting off peers");
                *self.shared.isolated.write().unwrap_or_else(|p| p.into_inner()) = isolate.into_iter().collect();
                Ok(Response::ReplicaAck)
            }
            Request::Stats => {
                self.status(lane).await.map(|(s, pending)| Response::Stats(self.stats_from(s, pending).1))
            }
            Request::Status => self.status(lane).await.map(|(s, _)| Response::Status(s)),
            Request::Ring { key } => self
                .query(lane, move |core, _| core.placement(&key))
                .await
                .and_then(|placed| placed.map(|replicas| Response::Ring(qkv_proto::RingReply { replicas }))),
            other => Err(Error::Internal(format!("the driver has no answer to {other:?}"))),
        };
        answer.unwrap_or_else(Response::Error)
    }

    /// The Prometheus exposition (blocks on the core thread: call it off the async workers).
    pub fn prometheus(&self) -> String {
        let queried = self.query_blocking(|core, now| {
            let status = crate::status::status_reply(&core.report(now));
            (status, core.lag_pending().0, core.membership())
        });
        match queried {
            Ok((status, pending, info)) => {
                let (status, stats) = self.stats_from(status, pending);
                self.shared.metrics.prometheus(&status, &stats, &crate::metrics::MembershipStats::new(&info))
            }
            Err(e) => format!("# the node could not render its metrics: {e}\n"),
        }
    }

    /// Serve one request through the core, recording client requests in the metrics.
    async fn serve(&self, lane: Lane, req: Request, arrived: Option<Instant>) -> Response {
        let measured = match &req {
            Request::Get(g) => Some(("get", g.r.to_string(), g.strict)),
            Request::Put(p) if !p.forwarded => {
                Some((if p.value.is_some() { "put" } else { "delete" }, p.w.to_string(), p.strict))
            }
            _ => None,
        };
        let started = Instant::now();
        let resp = self.through_core(lane, req, arrived).await;
        if let Some((op, level, strict)) = measured {
            let micros = started.elapsed().as_micros() as u64;
            let outcome = match &resp {
                Response::Error(e) => Err(e),
                Response::Get(g) => Ok(Some(g.values.len())),
                _ => Ok(None),
            };
            self.shared.metrics.request(op, level, strict, micros, outcome);
        }
        resp
    }

    async fn through_core(&self, lane: Lane, req: Request, arrived: Option<Instant>) -> Response {
        let (tx, rx) = oneshot::channel();
        if let Err(e) = self.inbox.post(lane, Event::Request { req, reply: tx, arrived }) {
            return Response::Error(e);
        }
        // Past the longest an operation can run (a forwarded write's deadline and margin):
        // every request the core takes is answered by then, whatever its config.
        let guard = Duration::from_millis(REQUEST_TIMEOUT_MS_MAX + FORWARD_MARGIN_MS + SAFETY_MARGIN_MS);
        match tokio::time::timeout(guard, rx).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(_)) => Response::Error(Error::ShuttingDown),
            Err(_) => Response::Error(Error::Internal("the core never answered the request".into())),
        }
    }
}

impl Handler for Node {
    async fn handle(&self, role: PeerRole, req: Request) -> Response {
        if !server::allowed(role, &req) {
            return Response::Error(Error::NotAuthorized(req.sender().refusal().into()));
        }
        if let PeerRole::Node(id) = role
            && self.shared.is_isolated(id)
        {
            return Response::Error(Error::Unreachable(format!("node {id} is cut off (fault injection)")));
        }
        // A replica write's wait from its arrival until the core applies it (any test
        // delay, the inbox) is a sample for staleness prediction; nothing else is timed.
        let from_node = matches!(role, PeerRole::Node(_));
        let arrived = (from_node && matches!(req, Request::ReplicaPut { .. })).then(Instant::now);
        if self.shared.apply_delay_ms > 0
            && from_node
            && matches!(req, Request::ReplicaPut { .. } | Request::ReplicaPutBatch { .. })
        {
            // Test-only (`test_apply_delay_ms`): this replica applies the write late. On a
            // blocking thread, to the µs: the runtime's timers fire on millisecond ticks,
            // and early when other work wakes the runtime, which blurs the delay.
            // At most APPLY_DELAYS_MAX held at once (the rest wait for a thread).
            static HELD: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(APPLY_DELAYS_MAX);
            let us = uniform_up_to(2_000 * self.shared.apply_delay_ms);
            let _held = HELD.acquire().await;
            let _ = tokio::task::spawn_blocking(move || std::thread::sleep(Duration::from_micros(us))).await;
        }
        let lane = match (&req, role) {
            (Request::Ping { .. }, _) => Lane::Urgent,
            (_, PeerRole::Node(_)) => Lane::Peer,
            _ => Lane::Client,
        };
        match req.answered_by() {
            AnsweredBy::Driver => self.answer_here(lane, req).await,
            AnsweredBy::Core => self.serve(lane, req, arrived).await,
        }
    }
}

/// The longest test-only apply delay (mean, ms).
const APPLY_DELAY_MS_MAX: u64 = 60_000;

/// Replica writes the test-only apply delay holds at once, each on a blocking thread.
const APPLY_DELAYS_MAX: usize = 64;

/// A number from 0 to `max`, uniform enough for a test delay (std's randomly keyed hasher
/// over a counter: no RNG crate on the request path).
fn uniform_up_to(max: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> = std::sync::OnceLock::new();
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = KEYS.get_or_init(Default::default).build_hasher();
    h.write_u64(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.finish() % (max + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn peer_addresses_follow_the_layout_and_keep_seeds() {
        let seeds: BTreeMap<NodeId, SocketAddr> = [(1, addr("10.0.0.1:7001")), (2, addr("10.0.0.2:7001"))].into();
        let mut a = PeerAddrs { epoch: 0, map: seeds.clone(), seeds };
        let members = vec![(1, "10.0.0.1:7001".to_string()), (4, "10.0.0.4:7001".to_string())];
        assert!(a.rebuild(2, &members).is_empty());
        assert_eq!(a.map.get(&4), Some(&addr("10.0.0.4:7001")), "a member that joined is dialled");
        assert_eq!(a.map.get(&2), Some(&addr("10.0.0.2:7001")), "a seed no layout names is still dialled");
        // A late rebuild of an older epoch changes nothing.
        assert!(a.rebuild(1, &[(5, "10.0.0.5:7001".to_string())]).is_empty());
        assert!(!a.map.contains_key(&5));
        // A name is looked up outside; until then the old address (if any) stays.
        let lookup = a.rebuild(3, &[(4, "node4.example:7001".to_string())]);
        assert_eq!(lookup, vec![(4, "node4.example:7001".to_string())]);
        assert_eq!(a.map.get(&4), Some(&addr("10.0.0.4:7001")));
        a.resolved(3, 4, addr("10.0.0.44:7001"));
        assert_eq!(a.map.get(&4), Some(&addr("10.0.0.44:7001")));
        a.resolved(2, 4, addr("10.0.0.45:7001"));
        assert_eq!(a.map.get(&4), Some(&addr("10.0.0.44:7001")), "a lookup for an older epoch is dropped");
    }
}
