//! Several `Core`s wired through an in-memory network, driven by hand: the whole
//! node logic without a socket, a clock or a thread (quinn-proto's `Pair`, for a cluster).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use qkv_core::hints::HintLimits;
use qkv_core::mem::MemStore;
use qkv_core::replica::Limits;
use qkv_core::{AaeConfig, Core, CoreConfig, Output};
use qkv_proto::{Context, DvvSet, Error, GetRequest, Level, NodeId, PutRequest, Request, Response};

type Mem = MemStore;

enum Msg {
    Request { from: NodeId, to: NodeId, rpc: u64, req: Request },
    Response { to: NodeId, rpc: u64, resp: Result<Response, Error> },
}

/// A cluster in one thread. Messages to or from a node in `down` fail at once,
/// as a refused connection would; `hung` nodes swallow them (no answer, no failure).
struct Cluster {
    cores: BTreeMap<NodeId, Core<Mem>>,
    now: u64,
    net: VecDeque<Msg>,
    replies: HashMap<(NodeId, u64), Response>,
    pending: HashMap<(NodeId, u64), (NodeId, u64)>,
    down: BTreeSet<NodeId>,
    hung: BTreeSet<NodeId>,
    /// Requests of this kind are swallowed on the way (no answer, no failure).
    swallow: Option<fn(&Request) -> bool>,
    /// Every request this node sends is logged in `sent`.
    watch: Option<NodeId>,
    sent: Vec<Request>,
    next_req: u64,
}

impl Cluster {
    fn new(nodes: u32, n: usize) -> Cluster {
        Self::build(nodes, n, |_| {})
    }

    fn with_hint_window(nodes: u32, n: usize, window_ms: u64) -> Cluster {
        Self::build(nodes, n, |c| c.hints.window_ms = window_ms)
    }

    fn config(me: NodeId, nodes: u32, n: usize) -> CoreConfig {
        CoreConfig {
            me,
            incarnation: 1,
            hints: HintLimits { owner_bytes_max: 4096, ..HintLimits::default() },
            layout: qkv_core::layout::Layout::legacy(
                &(1..=nodes).map(|i| (i, format!("node{i}"))).collect::<Vec<_>>(),
                16,
                n,
            )
            .unwrap(),
            limits: Limits { key_bytes_max: 1024, value_bytes_max: 1024, ..Limits::default() },
            request_timeout_ms: 1000,
            ping_interval_ms: 100,
            down_after_ms: 300,
            epoch: me,
            aae: AaeConfig { interval_ms: 200, tombstone_grace_ms: 1000, ..AaeConfig::default() },
            secret: qkv_proto::Secret([3; qkv_proto::context::SECRET_BYTES]),
            transfer_bytes_per_s: qkv_core::router::TRANSFER_BYTES_PER_S_DEFAULT,
            bugs: Default::default(),
        }
    }

    fn build(nodes: u32, n: usize, tweak: impl Fn(&mut CoreConfig)) -> Cluster {
        let cores = (1..=nodes)
            .map(|me| {
                let mut cfg = Self::config(me, nodes, n);
                tweak(&mut cfg);
                (me, Core::new(cfg, Mem::default(), 0, 1_000_000).unwrap())
            })
            .collect();
        Cluster {
            cores,
            now: 0,
            net: VecDeque::new(),
            replies: HashMap::new(),
            pending: HashMap::new(),
            down: BTreeSet::new(),
            hung: BTreeSet::new(),
            swallow: None,
            watch: None,
            sent: vec![],
            next_req: 1,
        }
    }

    /// Carry out every output of `node`.
    fn drain(&mut self, node: NodeId) {
        while let Some(o) = self.cores.get_mut(&node).unwrap().poll_output() {
            match o {
                Output::Send { rpc, to, req, .. } => {
                    if self.watch == Some(node) {
                        self.sent.push(req.clone());
                    }
                    self.net.push_back(Msg::Request { from: node, to, rpc, req })
                }
                Output::Reply { req, resp } => match self.pending.remove(&(node, req)) {
                    Some((to, rpc)) => self.net.push_back(Msg::Response { to, rpc, resp: Ok(resp) }),
                    None => {
                        self.replies.insert((node, req), resp);
                    }
                },
                Output::Flush { token, .. } => {
                    let now = self.now;
                    self.cores.get_mut(&node).unwrap().handle_flushed(now, token, Ok(()));
                }
            }
        }
    }

    /// Deliver messages until the network is quiet.
    fn run(&mut self) {
        while let Some(m) = self.net.pop_front() {
            let now = self.now;
            match m {
                Msg::Request { from, to, rpc, req } => {
                    if self.down.contains(&to) {
                        let resp = Err(Error::Unreachable(format!("node {to} is down")));
                        self.net.push_back(Msg::Response { to: from, rpc, resp });
                        continue;
                    }
                    if self.hung.contains(&to) || self.swallow.is_some_and(|f| f(&req)) {
                        continue;
                    }
                    let id = self.next_req;
                    self.next_req += 1;
                    self.pending.insert((to, id), (from, rpc));
                    self.cores.get_mut(&to).unwrap().handle_request(now, id, req);
                    self.drain(to);
                }
                Msg::Response { to, rpc, resp, .. } => {
                    if self.down.contains(&to) {
                        continue;
                    }
                    self.cores.get_mut(&to).unwrap().handle_response(now, rpc, resp);
                    self.drain(to);
                }
            }
        }
    }

    /// A client request to `node`; returns its answer once the network is quiet (if any).
    fn call(&mut self, node: NodeId, req: Request) -> Option<Response> {
        let id = self.next_req;
        self.next_req += 1;
        let now = self.now;
        self.cores.get_mut(&node).unwrap().handle_request(now, id, req);
        self.drain(node);
        self.run();
        self.replies.remove(&(node, id))
    }

    /// Move time to `t`, firing every core's timers.
    fn advance(&mut self, t: u64) {
        while self.now < t {
            let next = self.cores.values().map(|c| c.poll_timeout()).min().unwrap().clamp(self.now + 1, t);
            self.now = next;
            let ids: Vec<NodeId> = self.cores.keys().copied().filter(|i| !self.down.contains(i)).collect();
            for id in ids {
                if self.cores[&id].poll_timeout() <= self.now {
                    let now = self.now;
                    self.cores.get_mut(&id).unwrap().handle_timeout(now);
                    self.drain(id);
                }
            }
            self.run();
        }
    }

    /// Restart `node` from its store (`wipe`: from an empty one, as a new disk would,
    /// under `epoch`), the way a driver would, with `tweak` applied to its config.
    fn restart(&mut self, node: NodeId, wipe: bool, tweak: impl Fn(&mut CoreConfig)) {
        let old = self.cores.remove(&node).unwrap();
        let store = if wipe { Mem::default() } else { old.store().clone() };
        let nodes = self.cores.len() as u32 + 1;
        let mut cfg = Self::config(node, nodes, old.ring().n());
        cfg.incarnation = 2;
        tweak(&mut cfg);
        self.cores.insert(node, Core::new(cfg, store, self.now, 1_000_000 + self.now).unwrap());
    }

    fn stored(&self, node: NodeId, key: &[u8]) -> Option<DvvSet> {
        self.cores[&node].store().value(key).cloned()
    }

    fn hints_held(&self, node: NodeId) -> usize {
        self.cores[&node].store().hints.len()
    }
}

fn put(key: &str, value: &str, w: Level, context: Context) -> Request {
    put_with(key, value, w, context, true)
}

fn put_with(key: &str, value: &str, w: Level, context: Context, strict: bool) -> Request {
    Request::Put(PutRequest {
        key: key.into(),
        value: Some(value.into()),
        context,
        w,
        strict,
        timeout_ms: None,
        forwarded: false,
        write_id: None,
        session: None,
    })
}

fn get(key: &str, r: Level) -> Request {
    Request::Get(GetRequest { key: key.into(), r, strict: true, timeout_ms: None, session: None })
}

fn values(resp: &Response) -> Vec<Vec<u8>> {
    match resp {
        Response::Get(g) => g.values.iter().map(|v| v.to_vec()).collect(),
        other => panic!("not a get answer: {other:?}"),
    }
}

#[test]
fn a_write_through_any_node_lands_on_exactly_the_home_replicas() {
    let mut c = Cluster::new(5, 3);
    for i in 0..50 {
        let key = format!("k{i}");
        let home = c.cores[&1].ring().preference_list(key.as_bytes()).to_vec();
        let entry = (i % 5 + 1) as NodeId;
        let resp = c.call(entry, put(&key, "v", Level::All, Context::empty())).unwrap();
        let Response::Put(p) = resp else { panic!("{resp:?}") };
        assert!(home.contains(&p.coordinator));
        for n in 1..=5 {
            assert_eq!(c.stored(n, key.as_bytes()).is_some(), home.contains(&n), "key {key} on node {n}");
        }
        assert_eq!(values(&c.call(entry, get(&key, Level::All)).unwrap()), vec![b"v".to_vec()]);
    }
}

#[test]
fn quorum_survives_one_down_node_and_read_repair_fixes_it_afterwards() {
    let mut c = Cluster::new(3, 3);
    c.down.insert(3);
    let resp = c.call(1, put("k", "v", Level::Quorum, Context::empty())).unwrap();
    assert!(matches!(resp, Response::Put(_)), "{resp:?}");
    let resp = c.call(1, put("k2", "v", Level::All, Context::empty())).unwrap();
    assert!(matches!(resp, Response::Error(Error::Failed { acked: 2, needed: 3, .. })), "{resp:?}");
    assert_eq!(c.stored(3, b"k"), None);

    c.down.remove(&3);
    let got = c.call(2, get("k", Level::All)).unwrap();
    assert_eq!(values(&got), vec![b"v".to_vec()]);
    assert_eq!(c.stored(3, b"k"), c.stored(1, b"k"), "read repair brought node 3 up to date");
    assert_eq!(c.cores[&2].stats().read_repairs, 1);
}

#[test]
fn a_detected_failure_makes_all_unavailable_before_sending() {
    let mut c = Cluster::new(3, 3);
    c.down.insert(2);
    c.advance(1000);
    assert!(!c.cores[&1].is_up(2) && c.cores[&1].is_up(3));
    let resp = c.call(1, get("k", Level::All)).unwrap();
    assert_eq!(resp, Response::Error(Error::Unavailable { level: "all".into(), needed: 3, alive: 2 }));
    c.down.remove(&2);
    c.advance(1300);
    assert!(c.cores[&1].is_up(2), "back up at its next ping");
}

#[test]
fn unanswered_replicas_time_out_at_the_deadline() {
    let mut c = Cluster::build(3, 3, |cfg| cfg.aae.enabled = false);
    // Requests to node 3 vanish: no answer, no failure.
    c.hung.insert(3);
    let resp = c.call(1, put("k", "v", Level::Quorum, Context::empty()));
    assert!(matches!(resp, Some(Response::Put(_))), "quorum does not wait for node 3");
    let id = 999_999;
    let now = c.now;
    c.cores.get_mut(&1).unwrap().handle_request(now, id, put("k", "w", Level::All, Context::empty()));
    c.drain(1);
    c.run();
    assert!(!c.replies.contains_key(&(1, id)), "still waiting on node 3");
    c.advance(now + 1000);
    let resp = c.replies.remove(&(1, id)).expect("answered at the deadline");
    assert_eq!(resp, Response::Error(Error::Timeout { acked: 2, needed: 3, write: true }));
    assert!(resp_text(&resp).contains("may still have landed"));
    // No op is left behind once everything has answered or timed out.
    c.advance(now + 3000);
    assert!(c.cores[&1].ops_in_flight() <= 2, "only pings may be in flight");
}

fn resp_text(r: &Response) -> String {
    match r {
        Response::Error(e) => e.to_string(),
        other => format!("{other:?}"),
    }
}

#[test]
fn concurrent_writes_through_different_coordinators_become_siblings() {
    let mut c = Cluster::new(3, 3);
    c.call(1, put("k", "a", Level::One, Context::empty())).unwrap();
    c.call(2, put("k", "b", Level::One, Context::empty())).unwrap();
    let got = c.call(3, get("k", Level::All)).unwrap();
    let mut v = values(&got);
    v.sort();
    assert_eq!(v, vec![b"a".to_vec(), b"b".to_vec()]);
    let Response::Get(g) = got else { unreachable!() };
    c.call(3, put("k", "ab", Level::All, g.context)).unwrap();
    assert_eq!(values(&c.call(1, get("k", Level::All)).unwrap()), vec![b"ab".to_vec()]);
}

/// A key whose home replicas, in order, are `home`, on a cluster of `c`.
fn key_with_home(c: &Cluster, prefix: &str, want: impl Fn(&[NodeId]) -> bool) -> String {
    (0..10_000)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| want(c.cores[&1].ring().preference_list(k.as_bytes())))
        .unwrap()
}

#[test]
fn sloppy_writes_go_to_stand_ins_and_are_handed_off_when_the_owners_return() {
    let mut c = Cluster::new(5, 3);
    // A key homed on 1, 2, 3; nodes 2 and 3 die.
    let key = key_with_home(&c, "s", |h| h.contains(&1) && h.contains(&2) && h.contains(&3));
    c.down.insert(2);
    c.down.insert(3);
    c.advance(1000);
    let strict = c.call(1, put_with(&key, "v", Level::Quorum, Context::empty(), true)).unwrap();
    assert!(matches!(strict, Response::Error(Error::Unavailable { needed: 2, alive: 1, .. })), "{strict:?}");
    let sloppy = c.call(1, put_with(&key, "v", Level::Quorum, Context::empty(), false)).unwrap();
    let Response::Put(p) = sloppy else { panic!("{sloppy:?}") };
    assert_eq!(p.home_acks, vec![1]);
    assert_eq!(p.standin_acks.len(), 1, "{p:?}");
    let (standin, owner) = p.standin_acks[0];
    assert!([4, 5].contains(&standin) && [2, 3].contains(&owner));
    // W = all, sloppy: both stand-ins take a hint.
    let all = c.call(1, put_with(&key, "w", Level::All, Context::empty(), false)).unwrap();
    let Response::Put(p) = all else { panic!("{all:?}") };
    assert_eq!(p.standin_acks.len(), 2);
    assert_eq!(c.hints_held(4) + c.hints_held(5), 2);
    // A sloppy read sees the writes through the stand-ins' hints.
    let got = c.call(1, get(&key, Level::All));
    assert!(matches!(got, Some(Response::Error(Error::Unavailable { .. }))), "strict R=all: {got:?}");
    let got = c.call(
        1,
        Request::Get(GetRequest {
            key: key.clone().into(),
            r: Level::All,
            strict: false,
            timeout_ms: None,
            session: None,
        }),
    );
    assert_eq!(values(&got.unwrap()).len(), 2, "v and w are siblings");

    c.down.clear();
    c.advance(3000);
    assert_eq!(c.hints_held(4) + c.hints_held(5), 0, "handed off and deleted");
    let home1 = c.stored(1, key.as_bytes());
    assert_eq!(c.stored(2, key.as_bytes()), home1);
    assert_eq!(c.stored(3, key.as_bytes()), home1);
    let handed: u64 = [4, 5]
        .iter()
        .map(|&n| {
            let st = c.cores[&n].report(c.now);
            for o in &st.hints.owners {
                // Delivered within the rate window: a rate shows, nothing is pending.
                assert!(o.count == 0 && o.rate_hints_per_s > 0.0 && o.rate_bytes_per_s > 0.0, "{o:?}");
            }
            st.hints.handed_off
        })
        .sum();
    assert_eq!(handed, 2, "both hints counted as handed off");
}

#[test]
fn a_home_replica_failing_mid_write_is_replaced_by_a_stand_in() {
    let mut c = Cluster::new(4, 3);
    let key = key_with_home(&c, "m", |h| h[0] == 1 && !h.contains(&4));
    let other = c.cores[&1].ring().preference_list(key.as_bytes())[2];
    // Not yet detected as down: the write goes to it, fails, and node 4 stands in.
    c.down.insert(other);
    let resp = c.call(1, put_with(&key, "v", Level::All, Context::empty(), false)).unwrap();
    let Response::Put(p) = resp else { panic!("{resp:?}") };
    assert_eq!(p.standin_acks, vec![(4, other)]);
    assert_eq!(c.hints_held(4), 1);
}

#[test]
fn a_stand_in_at_its_limit_refuses_and_the_next_one_takes_the_hint() {
    let mut c = Cluster::new(5, 3);
    let key = key_with_home(&c, "l", |h| h.contains(&1) && h.contains(&2) && h.contains(&3));
    c.down.insert(3);
    c.advance(1000);
    // Fill the first stand-in for node 3 up to its 4096-byte per-owner limit.
    let first = c.cores[&1].ring().walk(key.as_bytes())[3];
    let mut filled = 0;
    for i in 0..200 {
        let k = format!("{key}-{i}");
        if c.cores[&1].ring().walk(k.as_bytes())[3] != first
            || !c.cores[&1].ring().preference_list(k.as_bytes()).contains(&3)
        {
            continue;
        }
        let big = "x".repeat(1000);
        let _ = c.call(1, put_with(&k, &big, Level::One, Context::empty(), false));
        filled += 1;
    }
    assert!(filled >= 5, "enough keys to fill the stand-in");
    let big = "y".repeat(1000);
    let resp = c.call(1, put_with(&key, &big, Level::All, Context::empty(), false)).unwrap();
    let Response::Put(p) = resp else { panic!("{resp:?}") };
    let second = c.cores[&1].ring().walk(key.as_bytes())[4];
    assert_eq!(p.standin_acks, vec![(second, 3)], "the second stand-in took it");
    let st = c.cores[&first].report(c.now);
    assert!(st.hints.refused >= 1);
    assert!(st.hints.owners.iter().all(|o| o.bytes <= 4096));
}

#[test]
fn no_hints_for_an_owner_down_past_the_hint_window() {
    let mut c = Cluster::with_hint_window(5, 3, 500);
    let key = key_with_home(&c, "w", |h| h.contains(&1) && h.contains(&3));
    c.down.insert(3);
    c.advance(400);
    let resp = c.call(1, put_with(&key, "early", Level::All, Context::empty(), false)).unwrap();
    assert!(matches!(resp, Response::Put(_)), "inside the window a stand-in takes it: {resp:?}");
    c.advance(2000);
    let resp = c.call(1, put_with(&key, "late", Level::All, Context::empty(), false)).unwrap();
    let Response::Error(e) = resp else { panic!("{resp:?}") };
    assert!(e.to_string().contains("past the hint window"), "{e}");
}

#[test]
fn a_duplicate_replica_write_is_not_acked_before_the_first_copy_is_flushed() {
    let c = Cluster::new(3, 3);
    let mut core = c.cores.into_iter().next().unwrap().1;
    let mut set = DvvSet::new();
    set.update(&qkv_proto::VersionVector::new(), Some(b"v".to_vec()), 2);
    let req = || Request::ReplicaPut { key: b"k".to_vec(), set: set.clone() };
    let drain = |core: &mut Core<Mem>| std::iter::from_fn(|| core.poll_output()).collect::<Vec<_>>();
    core.handle_request(0, 1, req());
    let first = drain(&mut core);
    // The same state again (a duplicated message, a retry, a read repair) before the flush completes.
    core.handle_request(0, 2, req());
    let second = drain(&mut core);
    let replies = first.iter().chain(&second).filter(|o| matches!(o, Output::Reply { .. })).count();
    assert_eq!(replies, 0, "nothing is acked before it is durable: {first:?} {second:?}");
    for o in first.into_iter().chain(second) {
        if let Output::Flush { token, .. } = o {
            core.handle_flushed(1, token, Ok(()));
        }
    }
    let acks =
        drain(&mut core).into_iter().filter(|o| matches!(o, Output::Reply { resp: Response::ReplicaAck, .. })).count();
    assert_eq!(acks, 2, "both acked after the flush");
}

#[test]
fn time_to_all_replicas_is_sampled_when_the_last_home_replica_gets_the_write() {
    // Without anti-entropy, so only the read below repairs node 3.
    let mut c = Cluster::build(3, 3, |cfg| cfg.aae.enabled = false);
    c.call(1, put("fast", "v", Level::All, Context::empty())).unwrap();
    assert_eq!(c.cores.get_mut(&1).unwrap().take_lag_samples(), vec![0], "W=all: on every replica at the ack");

    c.down.insert(3);
    c.advance(1000);
    let Response::Put(_) = c.call(1, put("slow", "v", Level::Quorum, Context::empty())).unwrap() else { panic!() };
    assert_eq!(c.cores[&1].lag_pending().0, 1, "node 3 lacks it");
    c.down.remove(&3);
    c.advance(4000);
    assert!(c.cores.get_mut(&1).unwrap().take_lag_samples().is_empty(), "still missing: no hint, no read");
    c.call(2, get("slow", Level::All)).unwrap();
    c.advance(6000);
    let samples = c.cores.get_mut(&1).unwrap().take_lag_samples();
    assert_eq!(samples.len(), 1, "{samples:?}");
    assert!((3000..=4000).contains(&samples[0]), "{samples:?}: acked at 1 s, repaired at 4 s, seen by the next probe");
    assert_eq!(c.cores[&1].lag_pending(), (0, 0));
}

#[test]
fn a_single_replica_write_leaves_no_op_behind() {
    let mut c = Cluster::new(1, 1);
    for i in 0..10 {
        let resp = c.call(1, put(&format!("k{i}"), "v", Level::One, Context::empty())).unwrap();
        assert!(matches!(resp, Response::Put(_)), "{resp:?}");
    }
    assert_eq!(c.cores[&1].ops_in_flight(), 0, "nothing waits on replicas that do not exist");
}

fn delete(key: &str, w: Level, context: Context) -> Request {
    let Request::Put(p) = put_with(key, "", w, context, true) else { unreachable!() };
    Request::Put(PutRequest { value: None, ..p })
}

fn aae(c: &Cluster, node: NodeId) -> qkv_core::antientropy::Report {
    c.cores[&node].report(c.now).aae
}

#[test]
fn anti_entropy_converges_cold_keys_without_any_read() {
    let mut c = Cluster::new(5, 3);
    c.down.insert(3);
    c.advance(1000);
    let keys: Vec<String> = (0..300).map(|i| format!("cold{i}")).collect();
    for k in &keys {
        // Strict quorum: no stand-in, no hint; node 3's keys miss it.
        let home = c.cores[&1].ring().preference_list(k.as_bytes()).to_vec();
        let entry = *home.iter().find(|&&h| h != 3).unwrap();
        assert!(matches!(c.call(entry, put(k, "v", Level::Quorum, Context::empty())), Some(Response::Put(_))));
    }
    let ring = c.cores[&1].ring().clone();
    let missing = keys.iter().filter(|k| ring.preference_list(k.as_bytes()).contains(&3)).count();
    assert!(keys.iter().all(|k| c.stored(3, k.as_bytes()).is_none()));
    assert!(missing > 100, "node 3 missed its share: {missing}");
    c.down.remove(&3);
    c.advance(8000);
    for k in &keys {
        let home = c.cores[&1].ring().preference_list(k.as_bytes()).to_vec();
        let first = c.stored(home[0], k.as_bytes());
        assert!(first.is_some());
        for h in &home[1..] {
            assert_eq!(c.stored(*h, k.as_bytes()), first, "{k} on node {h}");
        }
    }
    let st = aae(&c, 3);
    let repaired: u64 = (1..=5).map(|n| aae(&c, n).keys_repaired).sum();
    assert!(repaired >= missing as u64, "{repaired} < {missing}");
    assert_eq!(st.ranges_out_of_sync, 0, "{st:?}");
    assert!(st.pairs.iter().all(|p| p.in_sync && p.last_exchange_ago_ms.is_some()), "{st:?}");
}

#[test]
fn a_wiped_node_takes_a_new_epoch_so_its_writes_never_replace_values_it_never_saw() {
    for new_epoch in [true, false] {
        let mut c = Cluster::build(3, 3, |cfg| cfg.aae.enabled = false);
        c.call(3, put("k", "old", Level::All, Context::empty())).unwrap();
        // Node 3's disk is lost. It restarts empty, before anything refills it.
        c.restart(3, true, |cfg| {
            cfg.aae.enabled = false;
            if new_epoch {
                cfg.epoch = 33;
            }
        });
        let Some(Response::Put(p)) = c.call(3, put("k", "new", Level::All, Context::empty())) else { panic!() };
        assert_eq!(p.coordinator, 3);
        let mut vals = values(&c.call(1, get("k", Level::All)).unwrap());
        vals.sort();
        if new_epoch {
            assert_eq!(vals, vec![b"new".to_vec(), b"old".to_vec()], "the blind write is a sibling of the old value");
        } else {
            // The reuse the epoch prevents: same actor, same counter, one write silently gone.
            assert_eq!(vals.len(), 1, "without a new epoch a dot is reused: {vals:?}");
        }
    }
}

#[test]
fn a_wiped_node_is_refilled_by_anti_entropy() {
    let mut c = Cluster::new(3, 3);
    for i in 0..100 {
        c.call(1, put(&format!("k{i}"), "v", Level::All, Context::empty())).unwrap();
    }
    c.restart(2, true, |cfg| cfg.epoch = 22);
    assert!(c.stored(2, b"k0").is_none());
    c.advance(5000);
    for i in 0..100 {
        let k = format!("k{i}");
        assert_eq!(c.stored(2, k.as_bytes()), c.stored(1, k.as_bytes()), "{k}");
    }
}

#[test]
fn tombstones_are_purged_only_once_every_home_replica_holds_them() {
    let mut c = Cluster::new(3, 3);
    let Some(Response::Put(p)) = c.call(1, put("gone", "v", Level::All, Context::empty())) else { panic!() };
    let old = c.stored(3, b"gone").unwrap();
    c.down.insert(3);
    c.advance(1000);
    c.call(1, delete("gone", Level::Quorum, p.context)).unwrap();
    assert!(c.stored(1, b"gone").unwrap().is_deleted());
    // Far past the grace delay: nodes 1 and 2 keep the tombstone, node 3 never confirmed it.
    c.advance(20_000);
    for n in [1, 2] {
        assert!(c.stored(n, b"gone").is_some_and(|s| s.is_deleted()), "node {n} must keep the tombstone");
        assert_eq!(aae(&c, n).tombstones_pending, 1);
        assert_eq!(aae(&c, n).tombstones_purged, 0);
    }
    // Node 3 returns, still holding the value the delete replaced.
    assert_eq!(c.stored(3, b"gone"), Some(old.clone()));
    c.down.remove(&3);
    let back = c.now;
    while (1..=3).any(|n| c.stored(n, b"gone").is_some()) {
        // While node 3 still holds the old value, the others keep the tombstone that replaces it.
        if c.stored(3, b"gone").is_some_and(|s| !s.is_deleted()) {
            assert!([1, 2].iter().all(|&n| c.stored(n, b"gone").is_some_and(|s| s.is_deleted())));
        }
        assert!(c.now < back + 30_000, "not purged in 30 s");
        let t = c.now + 100;
        c.advance(t);
    }
    for n in 1..=3 {
        assert!(aae(&c, n).tombstones_purged >= 1);
    }
    assert!(values(&c.call(2, get("gone", Level::All)).unwrap()).is_empty(), "the value did not come back");
    // A late copy of the old value (a replica or hint that missed the delete) is dropped, not resurrected.
    let resp = c.call(1, Request::ReplicaPut { key: b"gone".to_vec(), set: old.clone() });
    assert_eq!(resp, Some(Response::ReplicaAck));
    assert_eq!(c.stored(1, b"gone"), None);
    // A new write to the key after the purge is kept.
    c.call(1, put("gone", "again", Level::All, Context::empty())).unwrap();
    assert_eq!(values(&c.call(3, get("gone", Level::All)).unwrap()), vec![b"again".to_vec()]);
    // Issue 10, point 5: the purge records survive a restart, and are consulted although
    // the key holds a state again: the late old copy adds nothing.
    let recorded: Vec<NodeId> =
        (1..=3).filter(|n| c.cores[n].store().purged.contains_key(b"gone".as_slice())).collect();
    assert!(!recorded.is_empty(), "purge records are kept for a grace period");
    for &n in &recorded {
        c.restart(n, false, |_| {});
        assert_eq!(aae(&c, n).purge_records, 1, "node {n} read its purge record back");
        let resp = c.call(n, Request::ReplicaPut { key: b"gone".to_vec(), set: old.clone() });
        assert_eq!(resp, Some(Response::ReplicaAck));
    }
    assert_eq!(values(&c.call(3, get("gone", Level::All)).unwrap()), vec![b"again".to_vec()]);
}

/// Issue 10, point 6: tombstones a range cannot confirm (a replica down) do not hold
/// back those of ranges that can.
#[test]
fn tombstone_gc_progresses_whatever_blocks_some_ranges() {
    // Few tombstones a round, so the blocked ones could hide the rest (as the first
    // 10,000 due once did whatever came after them).
    let mut c = Cluster::build(4, 2, |cfg| cfg.aae.gc_batch = 8);
    // Keys whose home replicas include node 4, and keys whose do not.
    let homes = |c: &Cluster, k: &str| c.cores[&1].ring().preference_list(k.as_bytes()).to_vec();
    let blocked: Vec<String> = (0..400).map(|i| format!("b{i}")).filter(|k| homes(&c, k).contains(&4)).collect();
    let free: Vec<String> = (0..400).map(|i| format!("f{i}")).filter(|k| !homes(&c, k).contains(&4)).collect();
    assert!(blocked.len() > 50 && free.len() > 50);
    for k in blocked.iter().chain(&free) {
        let ctx = put_context(&c.call(1, put(k, "v", Level::All, Context::empty())).unwrap());
        c.call(1, delete(k, Level::All, ctx)).unwrap();
    }
    c.down.insert(4);
    c.advance(60_000);
    let stored = |c: &Cluster, k: &String| homes(c, k).iter().any(|&n| c.stored(n, k.as_bytes()).is_some());
    assert!(free.iter().all(|k| !stored(&c, k)), "every tombstone of a range that can confirm is purged");
    assert!(blocked.iter().all(|k| stored(&c, k)), "no tombstone a down replica may miss is purged");
}

fn put_context(r: &Response) -> Context {
    match r {
        Response::Put(p) => p.context.clone(),
        other => panic!("not a put answer: {other:?}"),
    }
}

/// Issue 10, point 1: X and Y write blind through the same coordinator (dots A:1 and
/// A:2). Y's answer must not claim X's write: replacing "its" value with that context
/// keeps X's.
#[test]
fn a_put_reply_context_claims_only_the_writers_own_write() {
    for bug in [false, true] {
        let mut c = Cluster::build(3, 3, |cfg| cfg.bugs.vv_context = bug);
        c.call(1, put("k", "x", Level::All, Context::empty())).unwrap();
        let y = put_context(&c.call(1, put("k", "y", Level::All, Context::empty())).unwrap());
        let y2 = put_context(&c.call(1, put("k", "y2", Level::All, y)).unwrap());
        let mut v = values(&c.call(2, get("k", Level::All)).unwrap());
        v.sort();
        if bug {
            assert_eq!(v, vec![b"y2".to_vec()], "the old rule deletes x, which Y never saw");
        } else {
            assert_eq!(v, vec![b"x".to_vec(), b"y2".to_vec()], "x survives; only y is replaced");
            // Chained put-reply contexts stay small and keep replacing only the writer's value.
            let mut ctx = put_context(&c.call(2, put("k", "y3", Level::All, y2)).unwrap());
            for i in 0..20 {
                ctx = put_context(&c.call(1 + i % 3, put("k", &format!("y{}", i + 4), Level::All, ctx)).unwrap());
                assert!(ctx.seen.actors() <= 4, "{:?}", ctx.seen);
            }
            let mut v = values(&c.call(3, get("k", Level::All)).unwrap());
            v.sort();
            assert_eq!(v, vec![b"x".to_vec(), b"y23".to_vec()]);
        }
    }
}

/// A delete's answer is a context too, with the same rule.
#[test]
fn a_delete_reply_context_claims_only_the_delete() {
    let mut c = Cluster::new(3, 3);
    c.call(1, put("k", "x", Level::All, Context::empty())).unwrap();
    let d = put_context(&c.call(1, delete("k", Level::All, Context::empty())).unwrap());
    c.call(1, put("k", "after", Level::All, d)).unwrap();
    let mut v = values(&c.call(2, get("k", Level::All)).unwrap());
    v.sort();
    assert_eq!(v, vec![b"after".to_vec(), b"x".to_vec()]);
}

/// Issue 10, point 2: a forged, oversized, foreign-key or corrupt context gets a clear
/// error and changes nothing; the node-wide counter cannot be moved by client input.
#[test]
fn untrusted_contexts_are_refused_and_change_nothing() {
    let mut c = Cluster::new(3, 3);
    let r = c.call(1, put("k", "x", Level::All, Context::empty())).unwrap();
    let genuine = put_context(&r);
    let other = put_context(&c.call(1, put("j", "other", Level::All, Context::empty())).unwrap());
    let before: Vec<_> = (1..=3).map(|n| c.stored(n, b"k")).collect();
    let actor = c.cores[&1].actor();
    let mut near_max = genuine.clone();
    near_max.seen.vv.0.insert(actor, u64::MAX - 1);
    let mut invented = genuine.clone();
    for a in 0..300u64 {
        invented.seen.vv.0.insert(1000 + a, 1);
    }
    let mut flipped = genuine.clone();
    flipped.mac[0] ^= 1;
    let cases = [(near_max, "did not issue"), (invented, "actors"), (other, "another key"), (flipped, "did not issue")];
    for (ctx, want) in cases {
        let resp = c.call(1, put("k", "evil", Level::All, ctx)).unwrap();
        let text = resp_text(&resp);
        assert!(text.contains(want), "expected `{want}` in `{text}`");
    }
    let after: Vec<_> = (1..=3).map(|n| c.stored(n, b"k")).collect();
    assert_eq!(before, after, "nothing changed");
    // The counter did not move: writes of every key still work at W = all.
    for key in ["k", "j", "z"] {
        let r = c.call(1, put(key, "fine", Level::All, Context::empty())).unwrap();
        let Response::Put(p) = r else { panic!("{}", resp_text(&r)) };
        assert!(p.dot.counter < 1_000_000, "{:?}", p.dot);
    }
}

fn put_id(key: &str, value: &str, w: Level, write_id: u64) -> Request {
    let Request::Put(p) = put_with(key, value, w, Context::empty(), true) else { unreachable!() };
    Request::Put(PutRequest { write_id: Some(write_id), ..p })
}

#[test]
fn a_retried_write_is_one_sibling_on_one_coordinator_and_on_two() {
    let mut c = Cluster::new(3, 3);
    // The same request twice at one coordinator (a duplicated message, a retry after a lost answer).
    let first = c.call(1, put_id("k", "v", Level::All, 7)).unwrap();
    let again = c.call(1, put_id("k", "v", Level::All, 7)).unwrap();
    let (Response::Put(a), Response::Put(b)) = (&first, &again) else { panic!("{first:?} {again:?}") };
    assert_eq!(a.dot, b.dot, "the retry is answered with the first attempt's write");
    let got = c.call(2, get("k", Level::All)).unwrap();
    assert_eq!(values(&got), vec![b"v".to_vec()]);
    // The answer's context replaces it, as for any write.
    c.call(1, put("k", "w", Level::All, a.context.clone())).unwrap();
    assert_eq!(values(&c.call(3, get("k", Level::All)).unwrap()), vec![b"w".to_vec()]);

    // A retry that failed over to another coordinator before the first attempt reached it.
    c.hung = BTreeSet::from([2, 3]);
    c.call(1, put_id("j", "x", Level::One, 8)).unwrap();
    c.hung = BTreeSet::from([1, 3]);
    c.call(2, put_id("j", "x", Level::One, 8)).unwrap();
    c.hung.clear();
    let got = c.call(3, get("j", Level::All)).unwrap();
    assert_eq!(values(&got), vec![b"x".to_vec()], "replicas keep one sibling of one write id");
    c.advance(5_000);
    for node in 1..=3 {
        let s = c.stored(node, b"j").unwrap();
        assert_eq!(s.siblings().len(), 1, "node {node}: {s:?}");
    }
    // Different writes of one value stay two siblings.
    c.call(1, put_id("i", "same", Level::All, 1)).unwrap();
    c.call(1, put_id("i", "same", Level::All, 2)).unwrap();
    assert_eq!(values(&c.call(2, get("i", Level::All)).unwrap()).len(), 2);
}

/// Issue 10, point 8: a home replica answering an inspect with the wrong kind of
/// answer (hints) neither underflows a counter nor leaves the inspect hanging.
#[test]
fn an_inspect_survives_a_misbehaving_peer_and_has_a_deadline() {
    let mut c = Cluster::new(3, 3);
    let core = c.cores.get_mut(&1).unwrap();
    core.handle_request(0, 9000, Request::Inspect { key: b"k".to_vec() });
    let mut asked = vec![];
    while let Some(o) = core.poll_output() {
        if let Output::Send { rpc, to, .. } = o {
            asked.push((rpc, to));
        }
    }
    assert_eq!(asked.len(), 2, "the two other home replicas");
    // Node 2 answers with hints it was never asked for; node 3 never answers.
    let (rpc, _) = asked.iter().find(|(_, to)| *to == 2).copied().unwrap();
    core.handle_response(1, rpc, Ok(Response::Hints(vec![])));
    c.drain(1);
    assert!(!c.replies.contains_key(&(1, 9000)), "still waiting for node 3");
    c.hung.insert(3);
    c.advance(5_000);
    let Some(Response::Inspect(ins)) = c.replies.remove(&(1, 9000)) else { panic!("no answer by the deadline") };
    assert!(ins.replicas.iter().filter(|r| r.0 != 1).all(|r| r.1.is_err()), "{ins:?}");
}

/// Issue 10, point 9: the table of operations in flight is bounded; past it requests
/// that would start one are refused with a clear error, and the node still answers.
#[test]
fn operations_in_flight_are_bounded() {
    let mut c = Cluster::new(3, 3);
    c.hung = BTreeSet::from([2, 3]);
    let max = qkv_core::router::OPS_MAX;
    let core = c.cores.get_mut(&1).unwrap();
    for i in 0..max as u64 {
        core.handle_request(0, 100 + i, get("k", Level::All));
    }
    while core.poll_output().is_some() {}
    core.handle_request(0, 1, get("k", Level::All));
    core.handle_request(0, 2, Request::ReplicaGet { key: b"k".to_vec() });
    let mut answers = HashMap::new();
    while let Some(o) = core.poll_output() {
        if let Output::Reply { req, resp } = o {
            answers.insert(req, resp);
        }
    }
    let Some(Response::Error(e)) = answers.get(&1) else { panic!("{answers:?}") };
    assert!(matches!(e, Error::Overloaded(_)) && e.to_string().contains("operations in flight"), "{e}");
    assert!(matches!(answers.get(&2), Some(Response::ReplicaState(_))), "a read of one replica is still answered");
}

/// A key whose replicas took writes apart (each under the per-key limit) can merge past
/// twice the limit; anti-entropy skips that one key and repairs the others.
#[test]
fn anti_entropy_repairs_around_a_key_past_the_merge_limit() {
    let mut c = Cluster::build(3, 3, |cfg| cfg.limits.key_siblings_max = 2);
    for node in 1..=3u32 {
        c.hung = (1..=3).filter(|&n| n != node).collect();
        for i in 0..2 {
            c.call(node, put("fat", &format!("n{node}-{i}"), Level::One, Context::empty())).unwrap();
        }
    }
    c.hung = BTreeSet::from([2, 3]);
    for i in 0..20 {
        c.call(1, put(&format!("other{i}"), "v", Level::One, Context::empty())).unwrap();
    }
    c.hung.clear();
    c.advance(30_000);
    for i in 0..20 {
        let k = format!("other{i}");
        for node in 2..=3 {
            assert!(c.stored(node, k.as_bytes()).is_some(), "node {node} lacks {k}");
        }
    }
}

#[test]
fn a_batch_item_past_the_merge_limit_is_refused_alone_and_handoff_delivers_the_rest() {
    let mut c = Cluster::build(5, 3, |cfg| cfg.limits.key_siblings_max = 2);
    let on_123 = |h: &[NodeId]| [1, 2, 3].iter().all(|n| h.contains(n));
    let fat = key_with_home(&c, "fat", on_123);
    let thin = key_with_home(&c, "thin", on_123);
    let late = key_with_home(&c, "late", on_123);
    // Two blind siblings of `fat` on each home replica alone; `thin` and `late` on node 3 only.
    for node in 1..=3u32 {
        c.hung = (1..=5).filter(|&n| n != node).collect();
        for i in 0..2 {
            c.call(node, put(&fat, &format!("n{node}-{i}"), Level::One, Context::empty())).unwrap();
        }
    }
    c.hung = (1..=5).filter(|&n| n != 3).collect();
    c.call(3, put(&thin, "t", Level::One, Context::empty())).unwrap();
    c.call(3, put(&late, "l", Level::One, Context::empty())).unwrap();
    c.hung.clear();
    let state = |c: &Cluster, n: NodeId, k: &str| c.stored(n, k.as_bytes()).unwrap();
    let three_alone = state(&c, 3, &fat);
    // Node 1 takes node 2's siblings (4: twice the limit), not node 3's too (6).
    let two = state(&c, 2, &fat);
    assert_eq!(c.call(1, Request::ReplicaPut { key: fat.clone().into_bytes(), set: two }), Some(Response::ReplicaAck));
    let items = vec![
        qkv_proto::KeyState { key: fat.clone().into_bytes(), set: state(&c, 3, &fat) },
        qkv_proto::KeyState { key: thin.clone().into_bytes(), set: state(&c, 3, &thin) },
    ];
    let resp = c.call(1, Request::ReplicaPutBatch { items, sync: false });
    assert_eq!(resp, Some(Response::ReplicaBatchAck { refused: vec![0] }), "the full key alone is refused");
    assert_eq!(state(&c, 1, &fat).siblings().len(), 4);
    assert!(c.stored(1, thin.as_bytes()).is_some(), "the rest of the batch landed");

    // Handoff: a stand-in holding hints for node 1 of both a key node 1 refuses and
    // another delivers the other and keeps the refused one, instead of retrying both forever.
    for k in [&fat, &late] {
        let set = state(&c, 3, k);
        let resp = c.call(4, Request::ReplicaHint { owner: 1, key: k.clone().into_bytes(), set });
        assert_eq!(resp, Some(Response::ReplicaAck));
    }
    assert_eq!(c.hints_held(4), 2);
    c.advance(2_000);
    assert!(c.stored(1, late.as_bytes()).is_some(), "the deliverable hint was handed off");
    assert_eq!(c.hints_held(4), 1, "the refused hint is kept for later");
    assert_eq!(state(&c, 1, &fat).siblings().len(), 4);

    // A home replica that is up but cannot merge the key is not replaced by a stand-in:
    // that hint could never be handed to it. Node 3 replaces its own two siblings;
    // node 1 would hold five.
    let secret = qkv_proto::Secret([3; qkv_proto::context::SECRET_BYTES]);
    let ctx = Context::issue(&secret, fat.as_bytes(), three_alone.seen());
    let held = c.hints_held(4) + c.hints_held(5);
    let resp = c.call(3, put_with(&fat, "resolved", Level::All, ctx, false)).unwrap();
    assert!(matches!(resp, Response::Error(Error::Failed { .. })), "{resp:?}");
    assert_eq!(c.hints_held(4) + c.hints_held(5), held, "no stand-in took a hint for node 1");
}

#[test]
fn a_read_whose_merged_answer_would_pass_the_frame_is_refused_clearly_and_r_one_still_reads() {
    let mut c = Cluster::build(3, 3, |cfg| cfg.limits.key_state_bytes_max = 400);
    let value = "x".repeat(300);
    // Each replica alone takes one blind sibling (under the limit); merged, they pass twice it.
    for node in 1..=3u32 {
        c.hung = (1..=3).filter(|&n| n != node).collect();
        c.call(node, put("wide", &value, Level::One, Context::empty())).unwrap();
    }
    c.hung.clear();
    let all = c.call(1, get("wide", Level::All)).unwrap();
    assert!(
        matches!(&all, Response::Error(Error::TooLarge { what, max: 800, .. }) if what.contains("R=one")),
        "{all:?}"
    );
    let one = c.call(1, get("wide", Level::One)).unwrap();
    assert_eq!(values(&one).len(), 1, "{one:?}");
}

#[test]
fn a_hint_expires_a_grace_after_its_newest_write_not_its_first() {
    // Grace 1000 ms (the test config), hint window within it, as the node's config requires.
    let mut c = Cluster::with_hint_window(5, 3, 1000);
    let key = key_with_home(&c, "h", |h| [1, 2, 3].iter().all(|n| h.contains(n)));
    // Homes 2 and 3 down; home 1 coordinates but is cut off from the stand-ins, so
    // they cannot hand its hints to it (nor redirect them there).
    c.down = BTreeSet::from([2, 3]);
    c.hung = BTreeSet::from([1]);
    c.advance(400);
    let sloppy = |v: &str| put_with(&key, v, Level::One, Context::empty(), false);
    let r = c.call(1, sloppy("first"));
    assert!(matches!(r, Some(Response::Put(_))), "{r:?}");
    let total = |c: &Cluster| c.hints_held(4) + c.hints_held(5);
    assert!(total(&c) > 0);
    // Within the hint window (1000 ms) of the owners going down.
    c.advance(1000);
    assert!(matches!(c.call(1, sloppy("second")), Some(Response::Put(_))));
    let n = total(&c);
    // A grace after the first write, well within one of the second: the hints stay.
    c.advance(1500);
    assert_eq!(total(&c), n, "a hint holding a write taken 500 ms ago was dropped");
    let expired = |c: &mut Cluster| -> u64 { [4, 5].iter().map(|&s| c.cores[&s].report(c.now).hints.expired).sum() };
    assert_eq!(expired(&mut c), 0);
    // A grace after the newest write, with every home replica still down: dropped, counted.
    c.advance(2200);
    assert_eq!(total(&c), 0);
    assert!(expired(&mut c) >= 1);
}

/// Stage `change` on `node` and commit it; the commit's answer.
fn change_membership(c: &mut Cluster, node: NodeId, change: qkv_proto::ClusterChange) -> Response {
    use qkv_proto::ClusterAdmin;
    let staged = c.call(node, Request::Cluster(ClusterAdmin::Stage(change))).unwrap();
    assert!(matches!(staged, Response::ClusterInfo(_)), "{staged:?}");
    c.call(node, Request::Cluster(ClusterAdmin::Commit)).unwrap()
}

/// Run until every node up holds epoch `epoch` alone (the transition is over), within a minute.
fn settle(c: &mut Cluster, epoch: u64) {
    let deadline = c.now + 60_000;
    while c.now < deadline {
        let done = c.cores.iter().filter(|(id, _)| !c.down.contains(id)).all(|(_, core)| {
            let info = core.membership();
            info.cluster.epoch() == epoch && info.phase == qkv_core::membership::Phase::Stable
        });
        if done {
            return;
        }
        let t = c.now + 100;
        c.advance(t);
    }
    panic!("epoch {epoch} did not settle in a minute");
}

/// A 3-node cluster with a fourth node started outside it (as a joiner: its seeds'
/// layout at epoch 0), with `bugs`.
fn cluster_with_joiner(bugs: qkv_core::router::Bugs) -> Cluster {
    let mut c = Cluster::build(3, 3, |cfg| cfg.bugs = bugs);
    let mut cfg = Cluster::config(4, 3, 3);
    cfg.layout.epoch = 0;
    cfg.bugs = bugs;
    c.cores.insert(4, Core::new(cfg, Mem::default(), 0, 1_000_000).unwrap());
    c.advance(1_000);
    c
}

/// A node that lost a range (a join took it) and gains it back (the joiner leaves)
/// writes a key of it before it fetched the range. Its earlier write of that key, a
/// sibling the others still hold, must survive: under its old actor the new write's
/// clock would claim it. Returns the values read at the end.
fn regained_range_write(bugs: qkv_core::router::Bugs) -> (Vec<Vec<u8>>, Cluster) {
    use qkv_proto::ClusterChange;
    let mut c = cluster_with_joiner(bugs);
    let joined = c.cores[&1]
        .membership()
        .cluster
        .newest()
        .apply(&qkv_core::layout::Change::Join { id: 4, addr: "node4".into() });
    let ring = joined.unwrap().ring().unwrap();
    let key = (0..10_000).map(|i| format!("r{i}")).find(|k| !ring.preference_list(k.as_bytes()).contains(&1)).unwrap();
    let k = key.as_bytes();
    // Two concurrent writes, one coordinated by node 1: siblings on every replica.
    c.call(1, put(&key, "one", Level::All, Context::empty())).unwrap();
    c.call(2, put(&key, "two", Level::All, Context::empty())).unwrap();
    let joined = change_membership(&mut c, 1, ClusterChange::Join { id: 4, addr: "node4".into() });
    assert!(matches!(joined, Response::ClusterInfo(_)), "{joined:?}");
    settle(&mut c, 2);
    // The drop follows the end of the transition: its keys go to their home replicas first.
    let deadline = c.now + 10_000;
    while c.stored(1, k).is_some() && c.now < deadline {
        let t = c.now + 100;
        c.advance(t);
    }
    assert!(c.stored(1, k).is_none(), "node 1 dropped the range it lost");
    // The joiner leaves: node 1 gains the range back, but fetches nothing yet.
    c.swallow = Some(|r| matches!(r, Request::RangeFetch { .. }));
    let left = change_membership(&mut c, 1, ClusterChange::Leave { id: 4 });
    assert!(matches!(left, Response::ClusterInfo(_)), "{left:?}");
    let resp = c.call(1, put_with(&key, "three", Level::Quorum, Context::empty(), false)).unwrap();
    let Response::Put(p) = resp else { panic!("{resp:?}") };
    assert_eq!(p.coordinator, 1, "node 1 coordinates the key again");
    c.swallow = None;
    settle(&mut c, 3);
    let mut v = values(&c.call(2, get(&key, Level::All)).unwrap());
    v.sort();
    (v, c)
}

#[test]
fn a_node_writing_a_range_it_gained_back_keeps_its_own_earlier_siblings() {
    let (v, mut c) = regained_range_write(Default::default());
    assert_eq!(v, vec![b"one".to_vec(), b"three".to_vec(), b"two".to_vec()]);
    // The new actor is kept across a restart; a disk that takes a new epoch (a wipe,
    // or an unclean restart) takes that epoch's actor instead.
    let renewed = c.cores[&1].actor();
    assert_ne!(renewed, qkv_proto::actor(1, 1), "node 1 took a new actor when it gained the range back");
    c.restart(1, false, |_| {});
    assert_eq!(c.cores[&1].actor(), renewed);
    c.restart(1, false, |cfg| cfg.epoch = 77);
    assert_eq!(c.cores[&1].actor(), qkv_proto::actor(1, 77));
}

#[test]
fn a_node_keeping_its_actor_when_it_gains_a_range_back_loses_a_write() {
    let (v, _) = regained_range_write(qkv_core::router::Bugs { keep_actor: true, ..Default::default() });
    assert_eq!(v, vec![b"three".to_vec(), b"two".to_vec()], "the sibling node 1 wrote first is gone");
}

fn error_of(r: Option<Response>) -> Error {
    match r {
        Some(Response::Error(e)) => e,
        other => panic!("not an error: {other:?}"),
    }
}

/// A participant dies for good while a join moves data: the transition waits for it
/// until an operator forgets it; then it ends without it, the dead node is replaced,
/// and every write acknowledged before, during and after is there. The forgotten node,
/// if it comes back, serves nothing.
#[test]
fn a_participant_dead_for_good_is_forgotten_so_the_change_ends_and_then_it_is_replaced() {
    use qkv_proto::{ClusterAdmin, ClusterChange};
    let mut c = cluster_with_joiner(Default::default());
    let mut acked = vec![];
    let mut write = |c: &mut Cluster, i: usize| {
        let key = format!("f{i}");
        let via = (i % 2 + 1) as NodeId;
        if let Some(Response::Put(_)) = c.call(via, put(&key, "v", Level::Quorum, Context::empty())) {
            acked.push(key);
        }
    };
    for i in 0..100 {
        write(&mut c, i);
    }
    // The joiner cannot fetch until node 3 is gone.
    c.swallow = Some(|r| matches!(r, Request::RangeFetch { .. }));
    let joined = change_membership(&mut c, 1, ClusterChange::Join { id: 4, addr: "node4".into() });
    assert!(matches!(joined, Response::ClusterInfo(_)), "{joined:?}");
    c.down.insert(3);
    c.swallow = None;
    let t = c.now + 20_000;
    c.advance(t);
    assert_ne!(c.cores[&1].membership().phase, qkv_core::membership::Phase::Stable, "node 3 holds the change");
    for i in 100..150 {
        write(&mut c, i);
    }
    let forget = |c: &mut Cluster, id| c.call(1, Request::Cluster(ClusterAdmin::Forget { id }));
    assert!(matches!(error_of(forget(&mut c, 1)), Error::BadRequest(m) if m.contains("itself")));
    assert!(matches!(error_of(forget(&mut c, 2)), Error::BadRequest(m) if m.contains("is up")));
    assert!(matches!(error_of(forget(&mut c, 9)), Error::BadRequest(m) if m.contains("not a member")));
    let Some(Response::ClusterInfo(b)) = forget(&mut c, 3) else { panic!("the forget was refused") };
    let info = qkv_core::membership::ClusterInfo::decode(&b).unwrap();
    assert!(info.cluster.is_lost(3));
    settle(&mut c, 2);
    assert!(c.cores.iter().filter(|(id, _)| **id != 3).all(|(_, k)| k.membership().cluster.is_lost(3)), "it spread");
    for i in 150..200 {
        write(&mut c, i);
    }
    // Node 3 comes back with what it held: it learns it was forgotten and serves nothing.
    c.down.remove(&3);
    let t = c.now + 2_000;
    c.advance(t);
    let e = error_of(c.call(3, get("f1", Level::One)));
    assert!(matches!(&e, Error::WrongLayout { reason, .. } if reason.contains("forgotten")), "{e:?}");
    // Nor to a peer that has not heard: its data may predate deletes purged since.
    for req in [Request::ReplicaGet { key: b"f1".to_vec() }, Request::HintGet { key: b"f1".to_vec() }] {
        let e = error_of(c.call(3, req));
        assert!(matches!(&e, Error::WrongLayout { reason, .. } if reason.contains("forgotten")), "{e:?}");
    }
    c.down.insert(3);
    // Replaced by node 5, which fetches from the others.
    let mut cfg = Cluster::config(5, 3, 3);
    cfg.layout.epoch = 0;
    c.cores.insert(5, Core::new(cfg, Mem::default(), c.now, 1_000_000 + c.now).unwrap());
    let t = c.now + 1_000;
    c.advance(t);
    let replaced = change_membership(&mut c, 1, ClusterChange::Replace { old: 3, new: 5, addr: "node5".into() });
    assert!(matches!(replaced, Response::ClusterInfo(_)), "{replaced:?}");
    settle(&mut c, 3);
    assert!(c.cores[&1].membership().cluster.lost.is_empty(), "node 3 is no member: not kept");
    assert!(acked.len() >= 190, "writes went on at quorum: {} of 200", acked.len());
    for key in &acked {
        let got = c.call(5, get(key, Level::All)).unwrap();
        assert_eq!(values(&got), vec![b"v".to_vec()], "{key}");
    }
}

/// An old owner forgotten while it was down in the middle of its hand-over comes back
/// with the layout it held: it must learn its fate before it hands anything over (its
/// data may predate deletes purged since), and then hand over nothing.
#[test]
fn a_forgotten_node_that_returns_pushes_nothing_before_it_learns_its_fate() {
    use qkv_proto::{ClusterAdmin, ClusterChange};
    let mut c = cluster_with_joiner(Default::default());
    for i in 0..100 {
        let r = c.call(1, put(&format!("r{i}"), "v", Level::All, Context::empty()));
        assert!(matches!(r, Some(Response::Put(_))), "{r:?}");
    }
    // Every hand-over page is lost on the way: the old owners stay in `dropping`.
    c.swallow = Some(|r| matches!(r, Request::ReplicaPutBatch { sync: true, .. }));
    let joined = change_membership(&mut c, 1, ClusterChange::Join { id: 4, addr: "node4".into() });
    assert!(matches!(joined, Response::ClusterInfo(_)), "{joined:?}");
    let deadline = c.now + 30_000;
    while c.cores[&3].membership().phase != qkv_core::membership::Phase::Dropping {
        assert!(c.now < deadline, "node 3 reached the drop");
        let t = c.now + 100;
        c.advance(t);
    }
    c.down.insert(3);
    let t = c.now + 1_000;
    c.advance(t);
    let forgot = c.call(1, Request::Cluster(ClusterAdmin::Forget { id: 3 }));
    assert!(matches!(forgot, Some(Response::ClusterInfo(_))), "{forgot:?}");
    c.swallow = None;
    settle(&mut c, 2);
    // Node 3 restarts from its disk, in the drop it never finished.
    c.restart(3, false, |_| {});
    assert_eq!(c.cores[&3].membership().phase, qkv_core::membership::Phase::Dropping);
    c.down.remove(&3);
    c.watch = Some(3);
    let t = c.now + 5_000;
    c.advance(t);
    assert!(c.cores[&3].membership().cluster.is_lost(3), "it learned it was forgotten");
    let pushed: Vec<&Request> = c
        .sent
        .iter()
        .filter(|r| {
            matches!(
                r,
                Request::ReplicaPutBatch { .. }
                    | Request::ReplicaPut { .. }
                    | Request::ReplicaHint { .. }
                    | Request::AaeRoots { .. }
                    | Request::AaeCompare { .. }
            )
        })
        .collect();
    let kinds: Vec<String> =
        pushed.iter().map(|r| format!("{r:?}").chars().take_while(|c| c.is_alphanumeric()).collect()).collect();
    assert!(pushed.is_empty(), "node 3 pushed {kinds:?}");
    assert!(c.sent.iter().any(|r| matches!(r, Request::Ping { .. })), "it pinged");
}

/// A change that would leave only forgotten members is refused when staged: once the
/// old layout retired, the cluster would have nobody to go on with.
#[test]
fn a_layout_of_forgotten_members_alone_cannot_be_staged() {
    use qkv_proto::{ClusterAdmin, ClusterChange};
    let mut c = Cluster::new(4, 2);
    c.advance(1_000);
    c.down.extend([1, 3]);
    let t = c.now + 1_000;
    c.advance(t);
    for id in [1, 3] {
        let r = c.call(2, Request::Cluster(ClusterAdmin::Forget { id }));
        assert!(matches!(r, Some(Response::ClusterInfo(_))), "{r:?}");
    }
    let stage = |c: &mut Cluster, id| c.call(2, Request::Cluster(ClusterAdmin::Stage(ClusterChange::Leave { id })));
    assert!(matches!(stage(&mut c, 4), Some(Response::ClusterInfo(_))), "node 2 is left");
    let e = error_of(stage(&mut c, 2));
    assert!(matches!(&e, Error::BadRequest(m) if m.contains("forgotten")), "{e:?}");
}

/// The hint window still runs for a forgotten home replica, which the failure detector
/// no longer tracks: without it a stand-in would take hints for it with no end, whose
/// old siblings could outlive the purge records of their deletes.
#[test]
fn a_forgotten_owner_takes_hints_only_within_the_hint_window() {
    use qkv_proto::ClusterAdmin;
    let mut c = Cluster::with_hint_window(4, 3, 5_000);
    c.advance(1_000);
    c.down.insert(4);
    let t = c.now + 1_000;
    c.advance(t);
    let forgot = c.call(1, Request::Cluster(ClusterAdmin::Forget { id: 4 }));
    assert!(matches!(forgot, Some(Response::ClusterInfo(_))), "{forgot:?}");
    let ring = c.cores[&1].membership().cluster.newest().ring().unwrap();
    let key = (0..10_000)
        .map(|i| format!("h{i}"))
        .find(|k| {
            let homes = ring.preference_list(k.as_bytes());
            homes.contains(&4) && !homes.contains(&1)
        })
        .unwrap();
    let home = ring.preference_list(key.as_bytes()).iter().copied().find(|&h| h != 4).unwrap();
    assert!(matches!(c.call(home, put(&key, "v", Level::One, Context::empty())), Some(Response::Put(_))));
    let set = c.stored(home, key.as_bytes()).unwrap();
    let hint =
        |c: &mut Cluster| c.call(1, Request::ReplicaHint { owner: 4, key: key.clone().into_bytes(), set: set.clone() });
    assert_eq!(hint(&mut c), Some(Response::ReplicaAck), "within the window");
    let t = c.now + 6_000;
    c.advance(t);
    let e = error_of(hint(&mut c));
    assert!(matches!(&e, Error::HintRefused { reason, .. } if reason.contains("hint window")), "{e:?}");
}

/// A forget the store fails to record is not taken: the operator's error is true, and
/// nothing spreads a forget this node may not hold after a restart.
#[test]
fn a_forget_the_store_cannot_record_changes_nothing() {
    use qkv_proto::ClusterAdmin;
    let mut c = Cluster::new(4, 3);
    c.advance(1_000);
    c.down.insert(4);
    let t = c.now + 1_000;
    c.advance(t);
    let old = c.cores.remove(&1).unwrap();
    let mut store = old.store().clone();
    store.fail_cluster_writes = 1;
    let mut cfg = Cluster::config(1, 4, 3);
    cfg.incarnation = 2;
    c.cores.insert(1, Core::new(cfg, store, c.now, 1_000_000 + c.now).unwrap());
    let t = c.now + 1_000;
    c.advance(t);
    let forget = |c: &mut Cluster| c.call(1, Request::Cluster(ClusterAdmin::Forget { id: 4 }));
    let e = error_of(forget(&mut c));
    assert!(matches!(&e, Error::Storage(m) if m.contains("injected")), "{e:?}");
    let t = c.now + 1_000;
    c.advance(t);
    assert!(c.cores.values().all(|k| !k.membership().cluster.is_lost(4)), "taken nowhere");
    assert!(matches!(forget(&mut c), Some(Response::ClusterInfo(_))), "taken once the store works");
    assert!(c.cores[&1].membership().cluster.is_lost(4));
}
