//! The exchange alone: two in-memory replicas, an initiator and a responder, and no
//! router between them.

use qkv_proto::{AaeCompared, DvvSet, Error, KeyDigest, KeyState, NodeId, Request, Response};

use super::responder::Responder;
use super::{AaeConfig, AntiEntropy, Exchange, Host, Step, leaf_digests};
use crate::mem::MemStore;
use crate::merkle::{RangeId, Trees, digest};
use crate::pace::Pace;
use crate::replica::{self, Limits};
use crate::ring::{Ring, token};
use crate::router::Store;

/// One node's store, trees and pace.
struct Replica {
    me: NodeId,
    ring: Ring,
    store: MemStore,
    ae: AntiEntropy,
    now: u64,
    repaired: u64,
    flushes: u64,
}

impl Replica {
    fn new(me: NodeId, ring: &Ring, cfg: AaeConfig) -> Replica {
        Replica {
            me,
            ring: ring.clone(),
            store: MemStore::default(),
            ae: AntiEntropy::new(cfg, ring, me, 0),
            now: 0,
            repaired: 0,
            flushes: 0,
        }
    }

    fn write(&mut self, key: &[u8], value: &[u8], actor: u64) {
        let old = self.store.get(key).unwrap();
        let mut set = old.clone().unwrap_or_default();
        let seen = set.clock().clone();
        set.update(&seen, Some(value.to_vec()), actor);
        self.put(key, old, set);
    }

    fn put(&mut self, key: &[u8], old: Option<DvvSet>, set: DvvSet) {
        self.store.put(key, &set).unwrap();
        let old = old.map(|o| digest(key, &o));
        self.ae.on_write(&self.ring, key, old, Some(&set), self.now);
    }

    /// Serve a request as the peer of an exchange.
    fn answer(&mut self, req: Request) -> Result<Response, Error> {
        let limits = Limits::default();
        let (trees, pace) = self.ae.trees_and_pace();
        let me = Responder { me: self.me, ring: &self.ring, trees, store: &self.store, limits: &limits };
        match req {
            Request::AaeRoots { fingerprint, ranges } => me.roots(fingerprint, &ranges),
            Request::AaeCompare { fingerprint, range, leaves, entries } => {
                me.compare(pace, self.now, fingerprint, range, &leaves, entries)
            }
            Request::ReplicaPutBatch { items, .. } => {
                for it in items {
                    Host::merge(self, &it.key, &it.set)?;
                }
                Ok(Response::ReplicaAck)
            }
            other => panic!("not an exchange request: {other:?}"),
        }
    }
}

impl Host for Replica {
    fn now_ms(&self) -> u64 {
        self.now
    }
    fn fingerprint(&self) -> u64 {
        self.ring.fingerprint()
    }
    fn trees(&self) -> &Trees {
        self.ae.trees()
    }
    fn locate(&self, key: &[u8]) -> Option<(RangeId, u32)> {
        self.ae.trees().locate(&self.ring, token(key))
    }
    fn leaf_digests(&self, range: RangeId, leaf: u32, limit: usize) -> Result<Vec<KeyDigest>, Error> {
        leaf_digests(self.ae.trees(), &self.ring, &self.store, range, leaf, limit)
    }
    fn get(&self, key: &[u8]) -> Result<Option<DvvSet>, Error> {
        self.store.get(key)
    }
    fn merge(&mut self, key: &[u8], set: &DvvSet) -> Result<bool, Error> {
        let local = self.store.get(key)?;
        let Some(new) = replica::merge(local.as_ref(), set)? else { return Ok(false) };
        self.put(key, local, new);
        Ok(true)
    }
    fn flush(&mut self) {
        self.flushes += 1;
    }
    fn pace(&mut self) -> &mut Pace {
        self.ae.pace_mut()
    }
    fn in_sync(&mut self, range: RangeId, peer: NodeId, in_sync: bool) {
        self.ae.set_in_sync(range, peer, in_sync);
    }
    fn repaired(&mut self, n: u64) {
        self.repaired += n;
    }
}

fn ring() -> Ring {
    // Two nodes, N = 2: both replicate every key.
    Ring::new(&[1, 2], 8, 2).unwrap()
}

/// Run an exchange from `a` with `b` to its end, the clock stepping over pace waits.
/// Returns the outcome and how many requests `a` sent.
fn exchange(a: &mut Replica, b: &mut Replica) -> (bool, usize) {
    let (mut x, first) = Exchange::start(a.ae.trees(), b.me, a.now, a.ring.fingerprint());
    let mut queue = vec![first];
    let mut sent = 0;
    for _ in 0..10_000 {
        let step = match queue.pop() {
            Some(req) => {
                sent += 1;
                let answer = b.answer(req);
                x.on_answer(a, answer)
            }
            None => match x.wakeup_ms() {
                Some(t) => {
                    a.now = a.now.max(t);
                    b.now = a.now;
                    x.resume(a)
                }
                None => panic!("an exchange waits on nothing"),
            },
        };
        match step {
            Step::Send(reqs) => queue.extend(reqs.into_iter().rev()),
            Step::Wait => {}
            Step::Done { ok } => {
                let now = a.now;
                a.ae.finished(x, ok, now);
                return (ok, sent);
            }
        }
    }
    panic!("the exchange never ended");
}

fn keys(r: &Replica) -> Vec<(Vec<u8>, DvvSet)> {
    r.store.entries().map(|(k, s)| (k.to_vec(), s.clone())).collect()
}

#[test]
fn an_exchange_syncs_both_replicas_both_ways_and_confirms_every_range() {
    let ring = ring();
    let (mut a, mut b) = (Replica::new(1, &ring, AaeConfig::default()), Replica::new(2, &ring, AaeConfig::default()));
    for i in 0..50u32 {
        a.write(format!("k{i}").as_bytes(), b"a", 1);
    }
    for i in 25..75u32 {
        b.write(format!("k{i}").as_bytes(), b"b", 2);
    }
    let (ok, _) = exchange(&mut a, &mut b);
    assert!(ok);
    assert_eq!(keys(&a), keys(&b), "both hold the same states");
    assert_eq!(keys(&a).len(), 75);
    let both = keys(&a).iter().filter(|(_, s)| s.siblings().len() == 2).count();
    assert_eq!(both, 25, "concurrent writes of k25..k49 became siblings on both");
    let st = a.ae.report(a.now);
    assert_eq!((st.exchanges, st.exchanges_failed), (1, 0));
    assert!(st.pairs.iter().all(|p| p.last_exchange_ago_ms == Some(0)), "every range confirmed");
    assert!(a.repaired > 0 && a.flushes > 0);
    // A second exchange finds every range equal: one request, nothing moved.
    let (ok, sent) = exchange(&mut a, &mut b);
    assert!(ok);
    assert_eq!(sent, 1, "the roots agree");
    assert_eq!(a.ae.report(a.now).ranges_in_sync, a.ae.trees().ranges().count() as u32);
}

#[test]
fn a_slow_pace_spreads_an_exchange_over_time_and_still_completes() {
    let ring = ring();
    let slow = AaeConfig { keys_per_s: 5, ..AaeConfig::default() };
    let (mut a, mut b) = (Replica::new(1, &ring, slow), Replica::new(2, &ring, slow));
    for i in 0..40u32 {
        b.write(format!("k{i}").as_bytes(), b"b", 2);
    }
    let (ok, _) = exchange(&mut a, &mut b);
    assert!(ok);
    assert_eq!(keys(&a), keys(&b));
    // 40 states at 5 a second, with a second's burst on each side.
    assert!(a.now >= 5_000, "paced: took {} ms", a.now);
}

#[test]
fn a_peer_sending_a_key_outside_the_compared_leaves_fails_the_exchange() {
    let ring = ring();
    let (mut a, mut b) = (Replica::new(1, &ring, AaeConfig::default()), Replica::new(2, &ring, AaeConfig::default()));
    a.write(b"k", b"a", 1);
    let (mut x, first) = Exchange::start(a.ae.trees(), 2, 0, ring.fingerprint());
    let leaves = b.answer(first).unwrap();
    let Step::Send(reqs) = x.on_answer(&mut a, Ok(leaves)) else { panic!("a comparison follows") };
    let Request::AaeCompare { range, leaves, .. } = &reqs[0] else { panic!("{reqs:?}") };
    // A key in some other leaf (or range) than the ones compared.
    let stray = (0..1000u32)
        .map(|i| format!("x{i}").into_bytes())
        .find(|k| a.locate(k).is_none_or(|(r, l)| r != *range || !leaves.contains(&l)))
        .unwrap();
    b.write(&stray, b"b", 2);
    let set = b.store.get(&stray).unwrap().unwrap();
    let forged = AaeCompared { theirs: vec![KeyState { key: stray.clone(), set }], ..AaeCompared::default() };
    assert_eq!(x.on_answer(&mut a, Ok(Response::AaeCompared(forged))), Step::Done { ok: false });
    assert_eq!(a.store.get(&stray).unwrap(), None, "nothing merged");
    a.ae.finished(x, false, 0);
    assert_eq!(a.ae.report(0).exchanges_failed, 1);
    assert!(a.ae.report(0).pairs.iter().all(|p| p.last_exchange_ago_ms.is_none()), "nothing confirmed");
}

#[test]
fn the_responder_refuses_another_ring_a_range_it_does_not_hold_and_a_leaf_past_the_tree() {
    let ring = ring();
    let mut b = Replica::new(2, &ring, AaeConfig::default());
    let range = b.ae.trees().ranges().next().unwrap();
    let leaves = b.ae.trees().leaves(range).unwrap().len() as u32;
    let fp = ring.fingerprint();
    let bad = |r: Result<Response, Error>| matches!(r, Err(Error::BadRequest(_)));
    assert!(bad(b.answer(Request::AaeRoots { fingerprint: fp ^ 1, ranges: vec![(range, 0)] })));
    assert!(bad(b.answer(Request::AaeRoots { fingerprint: fp, ranges: vec![(u32::MAX, 0)] })));
    let compare = |leaf| Request::AaeCompare { fingerprint: fp, range, leaves: vec![leaf], entries: vec![] };
    assert!(bad(b.answer(compare(leaves))));
    assert!(b.answer(compare(leaves - 1)).is_ok());
}
