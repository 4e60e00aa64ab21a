//! The node: answers requests by driving the sans-IO coordinator with tokio, quinn and fjall.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qkv_coordinator::replica::{self, Limits};
use qkv_coordinator::{
    GetAction, GetOp, Liveness, PutOp, Ring, WriteRoute, check_available, route_write,
};
use qkv_proto::{
    Context, DvvSet, Error, GetReply, GetRequest, InspectReply, MemberStatus, NodeId, PutReply,
    PutRequest, Request, Response, RingReply, StatusReply,
};
use qkv_transport::{Handler, PeerRole, Pool, server};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::config::Config;
use crate::storage::Storage;

/// Extra time a forwarding node waits beyond the request deadline for the coordinator's answer.
const FORWARD_MARGIN_MS: u64 = 500;
/// Longest per-request deadline a client may ask for.
pub const REQUEST_TIMEOUT_MS_MAX: u64 = 60_000;

/// Counters shown by `qkv status`.
#[derive(Default)]
pub struct Stats {
    /// Read repairs sent.
    pub read_repairs: AtomicU64,
}

/// Everything a node's tasks share.
pub struct Inner {
    me: NodeId,
    ring: Ring,
    peers: BTreeMap<NodeId, SocketAddr>,
    storage: Storage,
    pool: Pool,
    liveness: Mutex<Liveness>,
    limits: Limits,
    request_timeout_ms: u64,
    start: Instant,
    /// Counters.
    pub stats: Stats,
}

/// The request handler; cheap to clone.
#[derive(Clone)]
pub struct Node(pub Arc<Inner>);

impl Node {
    /// Assemble a node from its parts.
    pub fn new(cfg: &Config, storage: Storage, pool: Pool) -> anyhow::Result<Node> {
        let ids: Vec<NodeId> = cfg.peers.iter().map(|p| p.id).collect();
        let ring = Ring::new(&ids, cfg.vnodes, cfg.replication)?;
        let others = ids.iter().copied().filter(|&i| i != cfg.id);
        Ok(Node(Arc::new(Inner {
            me: cfg.id,
            ring,
            peers: cfg.peers.iter().map(|p| (p.id, p.addr)).collect(),
            storage,
            pool,
            liveness: Mutex::new(Liveness::new(others, cfg.down_after_ms, 0)),
            limits: Limits {
                key_bytes_max: cfg.key_bytes_max,
                value_bytes_max: cfg.value_bytes_max,
            },
            request_timeout_ms: cfg.request_timeout_ms,
            start: Instant::now(),
            stats: Stats::default(),
        })))
    }

    /// The node's storage (for shutdown).
    pub fn storage(&self) -> &Storage {
        &self.0.storage
    }

    /// The pool (for shutdown).
    pub fn pool(&self) -> &Pool {
        &self.0.pool
    }

    fn now_ms(&self) -> u64 {
        self.0.start.elapsed().as_millis() as u64
    }

    fn is_up(&self, id: NodeId) -> bool {
        id == self.0.me || self.0.liveness.lock().expect("liveness lock").is_up(id)
    }

    fn timeout_ms(&self, asked: Option<u32>) -> Result<u64, Error> {
        match asked {
            None => Ok(self.0.request_timeout_ms),
            Some(0) => Err(Error::BadRequest("timeout must be positive".into())),
            Some(t) if u64::from(t) > REQUEST_TIMEOUT_MS_MAX => Err(Error::BadRequest(format!(
                "timeout {t} ms is over the limit of {REQUEST_TIMEOUT_MS_MAX} ms"
            ))),
            Some(t) => Ok(u64::from(t)),
        }
    }

    /// Send `req` to node `to` with a deadline.
    async fn call(&self, to: NodeId, req: &Request, timeout_ms: u64) -> Result<Response, Error> {
        let addr = *self
            .0
            .peers
            .get(&to)
            .ok_or_else(|| Error::Unreachable(format!("unknown node {to}")))?;
        self.0
            .pool
            .request(addr, req, Duration::from_millis(timeout_ms))
            .await
    }

    /// This node's, or a remote replica's, raw state of `key`.
    async fn replica_state(
        &self,
        to: NodeId,
        key: &[u8],
        timeout_ms: u64,
    ) -> Result<Option<DvvSet>, Error> {
        if to == self.0.me {
            return self.0.storage.get(key);
        }
        match self
            .call(to, &Request::ReplicaGet { key: key.to_vec() }, timeout_ms)
            .await?
        {
            Response::ReplicaState(s) if s.as_ref().is_none_or(DvvSet::is_valid) => Ok(s),
            Response::Error(e) => Err(e),
            other => Err(Error::BadRequest(format!(
                "node {to} answered ReplicaGet with {other:?}"
            ))),
        }
    }

    /// Merge `set` into this node's, or a remote replica's, state of `key`, durably.
    async fn replica_sync(
        &self,
        to: NodeId,
        key: &[u8],
        set: &DvvSet,
        timeout_ms: u64,
    ) -> Result<(), Error> {
        if to == self.0.me {
            return self.local_sync(key, set).await;
        }
        match self
            .call(
                to,
                &Request::ReplicaPut {
                    key: key.to_vec(),
                    set: set.clone(),
                },
                timeout_ms,
            )
            .await?
        {
            Response::ReplicaAck => Ok(()),
            Response::Error(e) => Err(e),
            other => Err(Error::BadRequest(format!(
                "node {to} answered ReplicaPut with {other:?}"
            ))),
        }
    }

    async fn local_sync(&self, key: &[u8], set: &DvvSet) -> Result<(), Error> {
        self.0.limits.check(key, None)?;
        let changed = self.0.storage.update(key, |local| {
            let new = replica::merge(local, set)?;
            let changed = new.is_some();
            Ok((new, changed))
        })?;
        if changed {
            self.0.storage.durable().await?;
        }
        Ok(())
    }

    async fn get(&self, req: GetRequest) -> Result<GetReply, Error> {
        self.0.limits.check(&req.key, None)?;
        let timeout_ms = self.timeout_ms(req.timeout_ms)?;
        let home = self.0.ring.preference_list(&req.key).to_vec();
        let alive = home.iter().filter(|&&n| self.is_up(n)).count();
        let needed = check_available(req.r, self.0.ring.n(), alive)?;
        let mut op = GetOp::new(home, needed, self.now_ms(), timeout_ms);
        let (answer_tx, answer_rx) = oneshot::channel();
        let node = self.clone();
        let key = req.key;
        // The op outlives the answer: it keeps collecting replies for read repair.
        tokio::spawn(async move {
            let (tx, mut rx) = mpsc::channel(op.targets().len());
            for &t in op.targets() {
                let (node, key, tx) = (node.clone(), key.clone(), tx.clone());
                tokio::spawn(async move {
                    let r = node.replica_state(t, &key, timeout_ms).await;
                    let _ = tx.send((t, r)).await;
                });
            }
            drop(tx);
            let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
            let mut answer_tx = Some(answer_tx);
            while !op.is_finished() {
                let actions = tokio::select! {
                    r = rx.recv() => match r {
                        Some((from, Ok(state))) => op.on_reply(from, state),
                        Some((from, Err(e))) => op.on_failure(from, e),
                        None => op.on_timeout(u64::MAX),
                    },
                    _ = tokio::time::sleep_until(deadline) => op.on_timeout(node.now_ms().max(op.deadline_ms())),
                };
                for a in actions {
                    match a {
                        GetAction::Reply(r) => {
                            if let Some(tx) = answer_tx.take() {
                                let _ = tx.send(r);
                            }
                        }
                        GetAction::Repair { to, set } => {
                            let (node, key) = (node.clone(), key.clone());
                            tokio::spawn(async move {
                                match node.replica_sync(to, &key, &set, timeout_ms).await {
                                    Ok(()) => {
                                        node.0.stats.read_repairs.fetch_add(1, Ordering::Relaxed);
                                        debug!(to, "read repair");
                                    }
                                    Err(e) => debug!(to, "read repair failed: {e}"),
                                }
                            });
                        }
                    }
                }
            }
        });
        let answer = answer_rx.await.map_err(|_| Error::ShuttingDown)??;
        Ok(GetReply {
            found: !answer.set.is_deleted(),
            values: answer
                .set
                .values()
                .map(|v| serde_bytes::ByteBuf::from(v.to_vec()))
                .collect(),
            context: Context(answer.set.clock().clone()),
            replied: answer.replied as u32,
        })
    }

    async fn put(&self, req: PutRequest) -> Result<PutReply, Error> {
        self.0.limits.check(&req.key, req.value.as_deref())?;
        let timeout_ms = self.timeout_ms(req.timeout_ms)?;
        let n = self.0.ring.n();
        req.w.required(n)?;
        let home = self.0.ring.preference_list(&req.key).to_vec();
        match route_write(&home, self.0.me, req.forwarded, |id| self.is_up(id))? {
            WriteRoute::Forward(to) => {
                let fwd = Request::Put(PutRequest {
                    forwarded: true,
                    ..req
                });
                return match self.call(to, &fwd, timeout_ms + FORWARD_MARGIN_MS).await {
                    Ok(Response::Put(r)) => Ok(r),
                    Ok(Response::Error(e)) => Err(e),
                    Ok(other) => Err(Error::BadRequest(format!(
                        "node {to} answered a put with {other:?}"
                    ))),
                    Err(e) => Err(Error::Unreachable(format!(
                        "forwarding to coordinator node {to}: {e}"
                    ))),
                };
            }
            WriteRoute::Local => {}
        }
        let alive = home.iter().filter(|&&id| self.is_up(id)).count();
        let needed = check_available(req.w, n, alive)?;
        let me = self.0.me;
        let (set, context) = self.0.storage.update(&req.key, |local| {
            let (set, ctx) = replica::coordinate(local, &req.context, req.value, me);
            Ok((Some(set.clone()), (set, ctx)))
        })?;
        self.0.storage.durable().await?;
        let mut op = PutOp::new(me, home, needed, self.now_ms(), timeout_ms);
        let reply = |acked: Vec<NodeId>| PutReply {
            context: context.clone(),
            home_acks: acked,
            coordinator: me,
        };
        if let Some(r) = op.poll() {
            // Still send to the others; the answer does not wait for them.
            self.spawn_replication(&op, &req.key, &set, timeout_ms, None);
            return r.map(reply);
        }
        let (tx, mut rx) = mpsc::channel(n);
        self.spawn_replication(&op, &req.key, &set, timeout_ms, Some(tx));
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            let outcome = tokio::select! {
                r = rx.recv() => match r {
                    Some((from, Ok(()))) => op.on_ack(from),
                    Some((from, Err(e))) => op.on_failure(from, e),
                    None => op.on_timeout(u64::MAX),
                },
                _ = tokio::time::sleep_until(deadline) => op.on_timeout(self.now_ms().max(op.deadline_ms())),
            };
            if let Some(r) = outcome {
                return r.map(reply);
            }
        }
    }

    fn spawn_replication(
        &self,
        op: &PutOp,
        key: &[u8],
        set: &DvvSet,
        timeout_ms: u64,
        acks: Option<mpsc::Sender<(NodeId, Result<(), Error>)>>,
    ) {
        for to in op.remote_targets() {
            let (node, key, set, acks) = (self.clone(), key.to_vec(), set.clone(), acks.clone());
            tokio::spawn(async move {
                let r = node.replica_sync(to, &key, &set, timeout_ms).await;
                if let Err(e) = &r {
                    debug!(to, "replication failed: {e}");
                }
                if let Some(acks) = acks {
                    let _ = acks.send((to, r)).await;
                }
            });
        }
    }

    fn status(&self) -> StatusReply {
        let own = self.0.ring.ownership();
        StatusReply {
            node: self.0.me,
            n: self.0.ring.n() as u32,
            vnodes: self.0.ring.vnodes(),
            members: self
                .0
                .peers
                .iter()
                .map(|(&id, addr)| MemberStatus {
                    node: id,
                    addr: addr.to_string(),
                    up: self.is_up(id),
                    ownership: own.get(&id).copied().unwrap_or(0.0),
                })
                .collect(),
            read_repairs: self.0.stats.read_repairs.load(Ordering::Relaxed),
        }
    }

    fn ring(&self, key: &[u8]) -> Result<RingReply, Error> {
        self.0.limits.check(key, None)?;
        let replicas = self
            .0
            .ring
            .preference_list(key)
            .iter()
            .map(|id| (*id, self.0.peers[id].to_string()))
            .collect();
        Ok(RingReply { replicas })
    }

    async fn inspect(&self, key: Vec<u8>) -> Result<InspectReply, Error> {
        self.0.limits.check(&key, None)?;
        let home = self.0.ring.preference_list(&key).to_vec();
        let timeout_ms = self.0.request_timeout_ms;
        let mut reads = tokio::task::JoinSet::new();
        for (i, &id) in home.iter().enumerate() {
            let (node, key) = (self.clone(), key.clone());
            reads.spawn(async move { (i, id, node.replica_state(id, &key, timeout_ms).await) });
        }
        let mut replicas = reads.join_all().await;
        replicas.sort_by_key(|r| r.0);
        Ok(InspectReply {
            replicas: replicas.into_iter().map(|(_, id, r)| (id, r)).collect(),
        })
    }

    /// Ping every peer forever, feeding the liveness detector.
    pub async fn ping_loop(self, interval_ms: u64) {
        let mut tick = tokio::time::interval(Duration::from_millis(interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for &peer in self.0.peers.keys().filter(|&&p| p != self.0.me) {
                let node = self.clone();
                tokio::spawn(async move {
                    let ok = matches!(
                        node.call(peer, &Request::Ping { from: node.0.me }, interval_ms * 2).await,
                        Ok(Response::Pong { from }) if from == peer
                    );
                    let now = node.now_ms();
                    let mut l = node.0.liveness.lock().expect("liveness lock");
                    let was_up = l.is_up(peer);
                    if ok {
                        l.on_success(peer, now);
                    } else {
                        l.on_failure(peer);
                    }
                    if was_up != l.is_up(peer) {
                        warn!(peer, up = ok, "peer liveness changed");
                    }
                });
            }
            let now = self.now_ms();
            for p in self.0.liveness.lock().expect("liveness lock").tick(now) {
                warn!(peer = p, "peer silent: marked down");
            }
        }
    }
}

impl Handler for Node {
    async fn handle(&self, role: PeerRole, req: Request) -> Response {
        if !server::allowed(role, &req) {
            return Response::Error(Error::NotAuthorized(
                "replica traffic needs a node certificate".into(),
            ));
        }
        let r = match req {
            Request::Get(g) => self.get(g).await.map(Response::Get),
            Request::Put(p) => self.put(p).await.map(Response::Put),
            Request::Status => Ok(Response::Status(self.status())),
            Request::Ring { key } => self.ring(&key).map(Response::Ring),
            Request::Inspect { key } => self.inspect(key).await.map(Response::Inspect),
            Request::ReplicaGet { key } => self
                .0
                .limits
                .check(&key, None)
                .and_then(|_| self.0.storage.get(&key))
                .map(Response::ReplicaState),
            Request::ReplicaPut { key, set } => self
                .local_sync(&key, &set)
                .await
                .map(|_| Response::ReplicaAck),
            Request::Ping { .. } => Ok(Response::Pong { from: self.0.me }),
            _ => Err(Error::BadRequest("unsupported request".into())),
        };
        r.unwrap_or_else(Response::Error)
    }
}
