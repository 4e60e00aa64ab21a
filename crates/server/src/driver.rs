//! The core's owner: one task (or, with `core_thread = true`, one OS thread) runs the
//! sans-IO [`Core`] and its fjall store, fed by inboxes. Nothing else touches the
//! core, so there is no lock around it.
//!
//! - **Inboxes**, taken in this order every round: `internal` (answers to this node's
//!   requests and completed flushes: never refused nor dropped, as each is the end of
//!   one request or flush the core itself has in its tables, which bound them), then
//!   `urgent` (pings and the driver's own queries, bounded), then `peers` (replica
//!   traffic) and `clients`, alternately. Each round takes at most
//!   [`ROUND_EVENTS_MAX`] events from a lane, so the outputs go out between rounds
//!   whatever arrives. A ping waits behind at most one round, never behind a queue
//!   of reads and writes. A full urgent, peer or client inbox refuses the request at
//!   once with [`Error::Overloaded`]: backpressure, never an unbounded queue.
//! - **Sends.** Each peer has one task with a bounded queue; it runs up to
//!   [`PEER_IN_FLIGHT_MAX`] requests to that peer at once and posts each answer to
//!   `internal`. No task is spawned per message.
//! - **Flushes.** Writes stay in fjall's journal buffer; at the end of a round one
//!   write hands them all to the OS, and the round's `buffer` flushes complete then.
//!   Flushes that need an fdatasync (`sync`, and the core's lease and vote syncs under
//!   any policy) go to the group-commit thread as one batch per round: one fdatasync
//!   covers every batch queued while the last one ran.
//! - **Timers.** The owner sleeps on its inboxes until the core's next deadline.
//!
//! The task is the default: on a machine whose cores the whole cluster shares, the
//! wake-up of a second thread for every request cost more than it saved (see README
//! "Performance"). Storage calls then run on the runtime's worker; they are memory
//! writes and lookups in the common case, and each event's work is bounded by the
//! core's page sizes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded, unbounded};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use qkv_core::{Core, Output, ReqId, RpcId};
use qkv_proto::{Error, NodeId, Request, Response};
use tokio::sync::{mpsc, oneshot};

use crate::service::Shared;
use crate::storage::StoreHandle;

/// Client requests waiting for the core; more are refused as overloaded.
pub const CLIENT_INBOX_MAX: usize = 8192;
/// Replica requests from peers waiting for the core; more are refused as overloaded.
pub const PEER_INBOX_MAX: usize = 16_384;
/// Pings and the driver's queries waiting for the core; more are refused as overloaded.
pub const URGENT_INBOX_MAX: usize = 4096;
/// Requests queued for one peer's sender task; more fail at once (the core counts
/// them as that peer failing).
pub const PEER_QUEUE_MAX: usize = 16_384;
/// Requests one peer's sender task runs at once; the rest wait in its queue.
pub const PEER_IN_FLIGHT_MAX: usize = 4096;
/// Events the core takes from one lane in a round before the outputs go out.
pub const ROUND_EVENTS_MAX: usize = 256;
/// How often the thread looks for waiters whose client gave up.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// A function run on the core thread (status, metrics, placement).
pub type Query = Box<dyn FnOnce(&mut Core<StoreHandle>, u64) + Send>;

/// What the core thread takes.
pub enum Event {
    /// A request to answer through `reply`.
    /// `arrived`: when a replica write from a peer reached this node (its wait until the
    /// core applies it is a sample for staleness prediction).
    Request { req: Request, reply: oneshot::Sender<Response>, arrived: Option<Instant> },
    /// The answer to, or failure of, a request the core sent.
    Response { rpc: RpcId, result: Result<Response, Error> },
    /// Flushes completed.
    Flushed { tokens: Vec<u64>, result: Result<(), Error> },
    /// Run this on the core.
    Query(Query),
    /// Stop the thread (the node is shutting down).
    Stop,
}

/// Which inbox a request goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Answers to the core's own requests, and completed flushes (never refused).
    Internal,
    /// Liveness and the driver's own queries.
    Urgent,
    /// Replica traffic from other nodes.
    Peer,
    /// Clients' reads, writes and admin requests.
    Client,
}

/// The senders of the inboxes; cheap to clone.
#[derive(Clone)]
pub struct Inbox {
    /// Unbounded by the channel: see the module docs for what bounds it.
    internal: Sender<Event>,
    urgent: Sender<Event>,
    peers: Sender<Event>,
    clients: Sender<Event>,
    bell: Arc<Bell>,
}

/// Wakes the core thread when it sleeps, and costs one atomic swap when it does not
/// (no spinning, no system call on a busy thread).
struct Bell {
    sleeping: AtomicBool,
    /// The core's thread, when it has one.
    thread: OnceLock<std::thread::Thread>,
    /// The core's task, when it runs as one.
    notify: tokio::sync::Notify,
}

impl Bell {
    fn ring(&self) {
        if self.sleeping.swap(false, Ordering::SeqCst) {
            match self.thread.get() {
                Some(t) => t.unpark(),
                None => self.notify.notify_one(),
            }
        }
    }
}

/// The receiving ends of the inboxes.
struct Lanes {
    internal: Receiver<Event>,
    urgent: Receiver<Event>,
    peers: Receiver<Event>,
    clients: Receiver<Event>,
}

impl Lanes {
    fn is_empty(&self) -> bool {
        self.internal.is_empty() && self.urgent.is_empty() && self.peers.is_empty() && self.clients.is_empty()
    }
}

impl Inbox {
    /// Queue `event` on `lane`, or say why not (nothing was queued).
    pub fn post(&self, lane: Lane, event: Event) -> Result<(), Error> {
        let (tx, what, max) = match lane {
            Lane::Internal => (&self.internal, "answers", usize::MAX),
            Lane::Urgent => (&self.urgent, "pings and queries", URGENT_INBOX_MAX),
            Lane::Peer => (&self.peers, "replica requests", PEER_INBOX_MAX),
            Lane::Client => (&self.clients, "client requests", CLIENT_INBOX_MAX),
        };
        match tx.try_send(event) {
            Ok(()) => {
                self.bell.ring();
                Ok(())
            }
            Err(TrySendError::Full(_)) => {
                Err(Error::Overloaded(format!("the node's core has {max} {what} waiting; try again shortly")))
            }
            Err(TrySendError::Disconnected(_)) => Err(Error::ShuttingDown),
        }
    }

    /// Tell the core to stop (after what is queued on the internal lane).
    pub fn stop(&self) -> Result<(), Error> {
        self.post(Lane::Internal, Event::Stop)
    }
}

/// The core's running owner.
pub struct CoreThread {
    thread: Option<JoinHandle<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl CoreThread {
    /// Wait for it to end (after [`Inbox::stop`]).
    pub async fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

/// Start the core's owner: a thread of its own, or (`thread: false`) a task on the
/// node's runtime. It ends at [`Event::Stop`].
pub fn start(core: Core<StoreHandle>, shared: Arc<Shared>, thread: bool) -> std::io::Result<(Inbox, CoreThread)> {
    let (internal_tx, internal_rx) = unbounded();
    let (urgent_tx, urgent_rx) = bounded(URGENT_INBOX_MAX);
    let (peers_tx, peers_rx) = bounded(PEER_INBOX_MAX);
    let (clients_tx, clients_rx) = bounded(CLIENT_INBOX_MAX);
    let bell = Arc::new(Bell { sleeping: AtomicBool::new(false), thread: OnceLock::new(), notify: Default::default() });
    let inbox = Inbox { internal: internal_tx, urgent: urgent_tx, peers: peers_tx, clients: clients_tx, bell };
    let runtime = tokio::runtime::Handle::current();
    let mut driver = Driver {
        core,
        shared,
        inbox: inbox.clone(),
        runtime,
        waiters: HashMap::new(),
        next_req: 1,
        peers: HashMap::new(),
        addrs_epoch: u64::MAX,
        sync_tokens: vec![],
        later: vec![],
        last_sweep: Instant::now(),
    };
    let lanes = Lanes { internal: internal_rx, urgent: urgent_rx, peers: peers_rx, clients: clients_rx };
    if !thread {
        let task = driver.runtime.clone().spawn(driver.run_task(lanes));
        return Ok((inbox, CoreThread { thread: None, task: Some(task) }));
    }
    let handle = std::thread::Builder::new().name("qkv-core".into()).spawn(move || driver.run(lanes))?;
    Ok((inbox, CoreThread { thread: Some(handle), task: None }))
}

struct Driver {
    core: Core<StoreHandle>,
    shared: Arc<Shared>,
    /// For the peer tasks and the group-commit thread to post answers.
    inbox: Inbox,
    runtime: tokio::runtime::Handle,
    /// Requests the core has not answered yet, bounded by the core's own bound on
    /// operations in flight (requests answered at once never stay here).
    waiters: HashMap<ReqId, oneshot::Sender<Response>>,
    next_req: ReqId,
    /// Each peer's sender task.
    peers: HashMap<NodeId, mpsc::Sender<(RpcId, Request, u64)>>,
    /// The layout epoch the peer addresses were last rebuilt for.
    addrs_epoch: u64,
    /// Flush tokens of this round that need an fdatasync.
    sync_tokens: Vec<u64>,
    /// Flushes whose completion goes to the next round.
    later: Vec<(u64, Result<(), Error>)>,
    last_sweep: Instant,
}

/// Passes of a round's drain (outputs, flush, completions) before the rest waits for
/// the next round.
const DRAIN_PASSES_MAX: usize = 8;

impl Driver {
    fn now_ms(&self) -> u64 {
        self.shared.start.elapsed().as_millis() as u64
    }

    /// One round: up to [`ROUND_EVENTS_MAX`] events of each lane (internal, urgent,
    /// then peers and clients alternately), the core's timers, and the outputs. `None`
    /// at [`Event::Stop`], else whether anything was done.
    fn round(&mut self, lanes: &Lanes) -> Option<bool> {
        let mut took = 0;
        for lane in [&lanes.internal, &lanes.urgent] {
            for ev in lane.try_iter().take(ROUND_EVENTS_MAX) {
                if !self.handle(ev) {
                    return None;
                }
                took += 1;
            }
        }
        for _ in 0..ROUND_EVENTS_MAX {
            let mut any = false;
            for lane in [&lanes.peers, &lanes.clients] {
                if let Ok(ev) = lane.try_recv() {
                    any = true;
                    if !self.handle(ev) {
                        return None;
                    }
                }
            }
            if !any {
                break;
            }
            took += 1;
            // Answers and pings go first: look at them between requests.
            if !lanes.internal.is_empty() || !lanes.urgent.is_empty() {
                break;
            }
        }
        let now = self.now_ms();
        if now >= self.core.poll_timeout() {
            self.core.handle_timeout(now);
            let lag = self.core.take_lag_samples();
            self.shared.metrics.lag(&lag);
            took += 1;
        }
        self.drain();
        if self.last_sweep.elapsed() >= SWEEP_INTERVAL {
            self.last_sweep = Instant::now();
            // A waiter whose request task gave up (its guard timed out): forget it.
            self.waiters.retain(|_, tx| !tx.is_closed());
        }
        Some(took > 0)
    }

    /// How long to sleep when idle: until the core's next deadline, at most a sweep.
    fn idle_wait(&self) -> Duration {
        let due = self.core.poll_timeout();
        Duration::from_millis(due.saturating_sub(self.now_ms())).min(SWEEP_INTERVAL)
    }

    /// The loop of a dedicated thread.
    fn run(&mut self, lanes: Lanes) {
        let _ = self.inbox.bell.thread.set(std::thread::current());
        while let Some(busy) = self.round(&lanes) {
            if busy {
                continue;
            }
            // Nothing to do: sleep until an event or the core's next deadline. The bell
            // is set before the last look, so a post after it rings (see `Bell`).
            let wait = self.idle_wait();
            let bell = &self.inbox.bell;
            bell.sleeping.store(true, Ordering::SeqCst);
            if lanes.is_empty() {
                std::thread::park_timeout(wait);
            }
            bell.sleeping.store(false, Ordering::SeqCst);
        }
    }

    /// The loop of a task on the node's runtime.
    async fn run_task(mut self, lanes: Lanes) {
        loop {
            match self.round(&lanes) {
                None => return,
                // Let the transport run between busy rounds.
                Some(true) => tokio::task::yield_now().await,
                Some(false) => {
                    let wait = self.idle_wait();
                    let bell = self.inbox.bell.clone();
                    bell.sleeping.store(true, Ordering::SeqCst);
                    if lanes.is_empty() {
                        let _ = tokio::time::timeout(wait, bell.notify.notified()).await;
                    }
                    bell.sleeping.store(false, Ordering::SeqCst);
                }
            }
        }
    }

    /// Feed one event to the core; false at [`Event::Stop`].
    fn handle(&mut self, ev: Event) -> bool {
        let now = self.now_ms();
        match ev {
            Event::Request { req, reply, arrived } => {
                if let Some(at) = arrived {
                    self.shared.round_trips.waited_to_apply(at.elapsed().as_micros() as u64);
                }
                let id = self.next_req;
                self.next_req += 1;
                self.waiters.insert(id, reply);
                self.core.handle_request(now, id, req);
            }
            Event::Response { rpc, result } => self.core.handle_response(now, rpc, result),
            Event::Flushed { tokens, result } => {
                for t in tokens {
                    self.core.handle_flushed(now, t, result.clone());
                }
            }
            Event::Query(f) => f(&mut self.core, now),
            Event::Stop => return false,
        }
        true
    }

    /// Carry out everything the core asked for, until it asks nothing more: the
    /// round's writes go to the OS in one write, after which its `buffer` flushes
    /// complete (which may release more outputs). Never recursive: a round always ends.
    fn drain(&mut self) {
        let mut passes = 0;
        loop {
            // The layout may have moved (by the round's events, or a flush): re-read the
            // members' addresses before anything is sent.
            self.follow_layout();
            let mut done_flushes = vec![];
            while let Some(o) = self.core.poll_output() {
                match o {
                    Output::Reply { req, resp } => {
                        if let Some(tx) = self.waiters.remove(&req) {
                            let _ = tx.send(resp);
                        }
                    }
                    Output::Send { rpc, to, req, timeout_ms } => self.send(rpc, to, req, timeout_ms),
                    Output::Flush { token, sync } => {
                        if sync || self.shared.storage.needs_sync() {
                            self.sync_tokens.push(token);
                        } else {
                            done_flushes.push(token);
                        }
                    }
                }
            }
            // One write of the journal's buffer for every write of the round: what the
            // `buffer` flushes wait for, and what every other write gets too. A flush
            // someone waits for always asks the journal (a merge that changed nothing
            // waits for an earlier copy's flush, which may have failed).
            let flushed = if done_flushes.is_empty() {
                self.shared.storage.flush_if_written()
            } else {
                self.shared.storage.flush_journal()
            };
            if let Err(e) = &flushed {
                tracing::warn!("flushing the journal: {e}");
            }
            passes += 1;
            if done_flushes.is_empty() || passes > DRAIN_PASSES_MAX {
                for t in done_flushes {
                    // (Past the bound: completed next round, in `complete_later`.)
                    self.later.push((t, flushed.clone()));
                }
                break;
            }
            let now = self.now_ms();
            for t in done_flushes {
                self.core.handle_flushed(now, t, flushed.clone());
            }
        }
        self.complete_later();
        if !self.sync_tokens.is_empty() {
            let tokens = std::mem::take(&mut self.sync_tokens);
            let inbox = self.inbox.clone();
            let done = {
                let tokens = tokens.clone();
                // From the group-commit thread: it never waits (the internal lane takes all).
                Box::new(move |result| {
                    if inbox.post(Lane::Internal, Event::Flushed { tokens, result }).is_err() {
                        tracing::debug!("a completed sync found the core gone");
                    }
                })
            };
            match self.shared.storage.sync_later(done) {
                Ok(()) => {}
                // The group-commit queue is full: ask again next round.
                Err(Error::Storage(e)) => {
                    tracing::warn!("{e}; the syncs wait for the next round");
                    self.sync_tokens = tokens;
                }
                Err(e) => {
                    // Shutting down: they fail (next round, never here: no recursion).
                    self.later.extend(tokens.into_iter().map(|t| (t, Err(e.clone()))));
                }
            }
        }
    }

    /// Flush completions held back from the last pass of a round.
    fn complete_later(&mut self) {
        if self.later.is_empty() {
            return;
        }
        let later = std::mem::take(&mut self.later);
        let inbox = self.inbox.clone();
        for (t, r) in later {
            // Through the internal lane: taken next round, after its outputs went out.
            let _ = inbox.post(Lane::Internal, Event::Flushed { tokens: vec![t], result: r });
        }
    }

    /// The layout moved: re-read the members' addresses before anything is sent.
    fn follow_layout(&mut self) {
        let epoch = self.core.layout_epoch();
        if epoch == self.addrs_epoch {
            return;
        }
        self.addrs_epoch = epoch;
        let ids = self.core.membership().cluster.members();
        let members: Vec<(NodeId, String)> =
            ids.into_iter().filter_map(|id| self.core.peer_addr(id).map(|a| (id, a.to_string()))).collect();
        let shared = self.shared.clone();
        let _guard = self.runtime.enter();
        shared.update_addrs(epoch, &members);
        // Sender tasks of nodes no layout in effect names, nor the config's seeds, end.
        self.peers.retain(|id, _| shared.knows(*id));
        shared.round_trips.retain(|id| shared.knows(id));
    }

    fn send(&mut self, rpc: RpcId, to: NodeId, req: Request, timeout_ms: u64) {
        let queue = match self.peers.get(&to) {
            Some(q) if !q.is_closed() => q.clone(),
            _ => {
                let (tx, rx) = mpsc::channel(PEER_QUEUE_MAX);
                self.runtime.spawn(peer_task(self.shared.clone(), self.inbox.clone(), to, rx));
                self.peers.insert(to, tx.clone());
                tx
            }
        };
        if let Err(e) = queue.try_send((rpc, req, timeout_ms)) {
            let why = match e {
                mpsc::error::TrySendError::Full(_) => {
                    Error::Overloaded(format!("{PEER_QUEUE_MAX} requests to node {to} are waiting to be sent"))
                }
                mpsc::error::TrySendError::Closed(_) => Error::ShuttingDown,
            };
            let now = self.now_ms();
            self.core.handle_response(now, rpc, Err(why));
        }
    }
}

/// Sends the requests queued for one peer, concurrently, and posts each answer.
async fn peer_task(shared: Arc<Shared>, inbox: Inbox, to: NodeId, mut rx: mpsc::Receiver<(RpcId, Request, u64)>) {
    let mut inflight = FuturesUnordered::new();
    let mut open = true;
    while open || !inflight.is_empty() {
        tokio::select! {
            next = rx.recv(), if open && inflight.len() < PEER_IN_FLIGHT_MAX => match next {
                Some((rpc, req, timeout_ms)) => {
                    let shared = shared.clone();
                    inflight.push(async move {
                        let started = Instant::now();
                        let result = shared.request(to, &req, timeout_ms).await;
                        if result.as_ref().is_ok_and(|r| !matches!(r, Response::Error(_))) {
                            shared.round_trips.record(to, &req, started.elapsed().as_micros() as u64);
                        }
                        (rpc, result)
                    });
                }
                // The node left the layouts (or the core stopped): what is in flight
                // still reports its answer.
                None => open = false,
            },
            Some((rpc, result)) = inflight.next(), if !inflight.is_empty() => {
                if inbox.post(Lane::Internal, Event::Response { rpc, result }).is_err() {
                    // The core stopped.
                    return;
                }
            }
        }
    }
}
