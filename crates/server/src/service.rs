//! The node's driver: runs the sans-IO [`Core`] with tokio, quinn and fjall.
//!
//! The core sits behind one mutex. Every event (a request, a peer's answer, a
//! completed flush, a timer) takes the lock, feeds the core, drains its outputs
//! and releases the lock before carrying them out, so no I/O happens under it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use qkv_core::router::{FORWARD_MARGIN_MS, REQUEST_TIMEOUT_MS_MAX};
use qkv_core::{Core, CoreConfig, Output, ReqId};
use qkv_proto::{AnsweredBy, Error, NodeId, Request, Response, StatsReply};
use qkv_transport::{Handler, PeerRole, Pool, server};
use tokio::sync::{Notify, oneshot};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::storage::{Storage, StoreHandle};

/// A request unanswered this long after its own deadline is failed by the driver (a bug guard).
const SAFETY_MARGIN_MS: u64 = 5_000;

struct Inner {
    core: Mutex<Core<StoreHandle>>,
    storage: Arc<Storage>,
    pool: Pool,
    /// Where to dial each peer: the members of the layouts in effect, and the config's
    /// seeds for nodes no layout names (yet).
    addrs: RwLock<PeerAddrs>,
    /// The layout epoch `addrs` was last rebuilt for (compared under the core's lock).
    addrs_epoch: AtomicU64,
    waiters: Mutex<HashMap<ReqId, oneshot::Sender<Response>>>,
    next_req: AtomicU64,
    timer: Notify,
    start: Instant,
    fault_injection: bool,
    /// Peers cut off by the test-only fault switch.
    isolated: Mutex<BTreeSet<NodeId>>,
    metrics: Metrics,
    metrics_addr: Option<SocketAddr>,
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

/// The request handler and driver; cheap to clone.
#[derive(Clone)]
pub struct Node(Arc<Inner>);

impl Node {
    /// Assemble a node from its parts.
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
        Ok(Node(Arc::new(Inner {
            core: Mutex::new(core),
            storage,
            pool,
            addrs: RwLock::new(PeerAddrs { epoch: 0, map: seeds.clone(), seeds }),
            // Not an epoch any layout has: the first event rebuilds the map from the core's.
            addrs_epoch: AtomicU64::new(u64::MAX),
            waiters: Mutex::new(HashMap::new()),
            next_req: AtomicU64::new(1),
            timer: Notify::new(),
            start: Instant::now(),
            fault_injection: cfg.fault_injection,
            isolated: Mutex::new(BTreeSet::new()),
            metrics: Metrics::new(cfg.id),
            metrics_addr,
        })))
    }

    /// The node's storage (for shutdown).
    pub fn storage(&self) -> &Storage {
        &self.0.storage
    }

    fn now_ms(&self) -> u64 {
        self.0.start.elapsed().as_millis() as u64
    }

    /// Feed the core under its lock, then carry out what it asks outside the lock.
    fn with_core(&self, f: impl FnOnce(&mut Core<StoreHandle>, u64)) {
        let (outputs, earlier, members): (Vec<Output>, bool, _) = {
            let mut core = self.0.core.lock().unwrap_or_else(|p| p.into_inner());
            let due = core.poll_timeout();
            f(&mut core, self.now_ms());
            // The layout moved: re-read the members' addresses before sending anything.
            let epoch = core.layout_epoch();
            let members = (self.0.addrs_epoch.swap(epoch, Ordering::Relaxed) != epoch).then(|| {
                let ids = core.membership().cluster.members();
                let members: Vec<(NodeId, String)> =
                    ids.into_iter().filter_map(|id| core.peer_addr(id).map(|a| (id, a.to_string()))).collect();
                (epoch, members)
            });
            (std::iter::from_fn(|| core.poll_output()).collect(), core.poll_timeout() < due, members)
        };
        if let Some((epoch, members)) = members {
            self.update_addrs(epoch, &members);
        }
        for o in outputs {
            self.perform(o);
        }
        // The timer task sleeps until the deadline it last saw: wake it only if one came earlier.
        if earlier {
            self.0.timer.notify_one();
        }
    }

    /// Rebuild the peer addresses for layout `epoch`; names that are not `ip:port` are
    /// looked up on the blocking pool (never under a lock), each kept once it resolves.
    fn update_addrs(&self, epoch: u64, members: &[(NodeId, String)]) {
        let lookup = self.0.addrs.write().unwrap_or_else(|p| p.into_inner()).rebuild(epoch, members);
        tracing::debug!(epoch, members = members.len(), "peer addresses follow the layout");
        for (id, name) in lookup.into_iter().take(LOOKUPS_MAX) {
            let node = self.clone();
            tokio::spawn(async move {
                let looked = tokio::task::spawn_blocking({
                    let name = name.clone();
                    move || std::net::ToSocketAddrs::to_socket_addrs(&name).map(|mut a| a.next())
                });
                match tokio::time::timeout(Duration::from_secs(10), looked).await {
                    Ok(Ok(Ok(Some(addr)))) => {
                        node.0.addrs.write().unwrap_or_else(|p| p.into_inner()).resolved(epoch, id, addr)
                    }
                    Ok(Ok(Ok(None))) => tracing::warn!(id, "node {id}'s address `{name}` resolves to nothing"),
                    Ok(Ok(Err(e))) => tracing::warn!(id, "node {id}'s address `{name}`: {e}"),
                    Ok(Err(e)) => tracing::warn!(id, "looking up node {id}'s address `{name}`: {e}"),
                    Err(_) => tracing::warn!(id, "looking up node {id}'s address `{name}` took over 10 s"),
                }
            });
        }
    }

    fn perform(&self, o: Output) {
        match o {
            Output::Send { rpc, to, req, timeout_ms } => {
                let node = self.clone();
                tokio::spawn(async move {
                    let addr = node.0.addrs.read().unwrap_or_else(|p| p.into_inner()).map.get(&to).copied();
                    let r = match addr {
                        _ if node.is_isolated(to) => {
                            Err(Error::Unreachable(format!("node {to} is cut off (fault injection)")))
                        }
                        Some(addr) => node
                            .0
                            .pool
                            .request(addr, &req, Duration::from_millis(timeout_ms))
                            .await
                            .map_err(Error::from),
                        None => {
                            tracing::debug!(to, "no address for node {to}: not in a layout in effect, nor a seed");
                            Err(Error::Unreachable(format!("unknown node {to}")))
                        }
                    };
                    node.with_core(|c, now| c.handle_response(now, rpc, r));
                });
            }
            Output::Reply { req, resp } => {
                if let Some(tx) = self.0.waiters.lock().unwrap_or_else(|p| p.into_inner()).remove(&req) {
                    let _ = tx.send(resp);
                }
            }
            Output::Flush { token, .. } if self.0.storage.needs_sync() => {
                let node = self.clone();
                tokio::spawn(async move {
                    let r = node.0.storage.durable().await;
                    node.with_core(|c, now| c.handle_flushed(now, token, r));
                });
            }
            // buffer and periodic, for a counter lease: fdatasync off the async workers.
            Output::Flush { token, sync: true } => {
                let node = self.clone();
                tokio::spawn(async move {
                    let storage = node.0.storage.clone();
                    let r = tokio::task::spawn_blocking(move || storage.sync_data())
                        .await
                        .unwrap_or(Err(Error::ShuttingDown));
                    node.with_core(|c, now| c.handle_flushed(now, token, r));
                });
            }
            // buffer and periodic: the write is already flushed to the OS.
            Output::Flush { token, sync: false } => self.with_core(|c, now| c.handle_flushed(now, token, Ok(()))),
        }
    }

    /// Fire the core's timers (deadlines, pings) until the task is aborted.
    pub async fn timer_loop(self) {
        loop {
            let next = self.0.core.lock().unwrap_or_else(|p| p.into_inner()).poll_timeout();
            let at = tokio::time::Instant::from_std(self.0.start + Duration::from_millis(next));
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {
                    let mut lag = vec![];
                    self.with_core(|c, now| {
                        c.handle_timeout(now);
                        lag = c.take_lag_samples();
                    });
                    self.0.metrics.lag(&lag);
                }
                _ = self.0.timer.notified() => {}
            }
        }
    }
}

impl Node {
    fn is_isolated(&self, id: NodeId) -> bool {
        self.0.isolated.lock().unwrap_or_else(|p| p.into_inner()).contains(&id)
    }

    /// The status reply, from the core's report now.
    fn status(&self) -> (qkv_proto::StatusReply, usize) {
        let now = self.now_ms();
        let core = self.0.core.lock().unwrap_or_else(|p| p.into_inner());
        let report = core.report(now);
        let (pending, _) = core.lag_pending();
        drop(core);
        (crate::status::status_reply(&report), pending)
    }

    fn stats(&self) -> (qkv_proto::StatusReply, StatsReply) {
        let (status, pending) = self.status();
        let base = StatsReply {
            node: status.node,
            uptime_ms: self.now_ms(),
            replication_lag_pending: pending as u64,
            storage_bytes: self.0.storage.disk_bytes(),
            metrics_addr: self.0.metrics_addr.map(|a| a.to_string()),
            ..Default::default()
        };
        let stats = self.0.metrics.stats(&status, base);
        (status, stats)
    }

    /// A request about the node itself ([`AnsweredBy::Driver`]).
    fn answer_here(&self, req: Request) -> Response {
        match req {
            Request::Fault { isolate } => {
                if !self.0.fault_injection {
                    return Response::Error(Error::NotAuthorized("fault injection is disabled on this node".into()));
                }
                tracing::warn!(?isolate, "fault injection: cutting off peers");
                *self.0.isolated.lock().unwrap_or_else(|p| p.into_inner()) = isolate.into_iter().collect();
                Response::ReplicaAck
            }
            Request::Stats => Response::Stats(self.stats().1),
            Request::Status => Response::Status(self.status().0),
            Request::Ring { key } => {
                let placed = self.0.core.lock().unwrap_or_else(|p| p.into_inner()).placement(&key);
                match placed {
                    Ok(replicas) => Response::Ring(qkv_proto::RingReply { replicas }),
                    Err(e) => Response::Error(e),
                }
            }
            other => Response::Error(Error::Internal(format!("the driver has no answer to {other:?}"))),
        }
    }

    /// The Prometheus exposition.
    pub fn prometheus(&self) -> String {
        let (status, stats) = self.stats();
        let info = self.0.core.lock().unwrap_or_else(|p| p.into_inner()).membership();
        self.0.metrics.prometheus(&status, &stats, &crate::metrics::MembershipStats::new(&info))
    }

    /// Serve one request through the core, recording client requests in the metrics.
    async fn serve(&self, req: Request) -> Response {
        let measured = match &req {
            Request::Get(g) => Some(("get", g.r.to_string(), g.strict)),
            Request::Put(p) if !p.forwarded => {
                Some((if p.value.is_some() { "put" } else { "delete" }, p.w.to_string(), p.strict))
            }
            _ => None,
        };
        let started = Instant::now();
        let resp = self.through_core(req).await;
        if let Some((op, level, strict)) = measured {
            let micros = started.elapsed().as_micros() as u64;
            let outcome = match &resp {
                Response::Error(e) => Err(e),
                Response::Get(g) => Ok(Some(g.values.len())),
                _ => Ok(None),
            };
            self.0.metrics.request(op, level, strict, micros, outcome);
        }
        resp
    }

    async fn through_core(&self, req: Request) -> Response {
        let id = self.0.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.0.waiters.lock().unwrap_or_else(|p| p.into_inner()).insert(id, tx);
        self.with_core(|c, now| c.handle_request(now, id, req));
        // Past the longest an operation can run (a forwarded write's deadline and margin):
        // every request the core takes is answered by then, whatever its config.
        let guard = Duration::from_millis(REQUEST_TIMEOUT_MS_MAX + FORWARD_MARGIN_MS + SAFETY_MARGIN_MS);
        match tokio::time::timeout(guard, rx).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(_)) => Response::Error(Error::ShuttingDown),
            Err(_) => {
                self.0.waiters.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                Response::Error(Error::Internal("the core never answered the request".into()))
            }
        }
    }
}

impl Handler for Node {
    async fn handle(&self, role: PeerRole, req: Request) -> Response {
        if !server::allowed(role, &req) {
            return Response::Error(Error::NotAuthorized(req.sender().refusal().into()));
        }
        if let PeerRole::Node(id) = role
            && self.is_isolated(id)
        {
            return Response::Error(Error::Unreachable(format!("node {id} is cut off (fault injection)")));
        }
        match req.answered_by() {
            AnsweredBy::Driver => self.answer_here(req),
            AnsweredBy::Core => self.serve(req).await,
        }
    }
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
