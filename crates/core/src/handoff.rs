//! Hinted handoff as a state machine: push held hints to their owners when they
//! are up, in paced batches; delete a hint only once its owner acknowledged it
//! durably, and only if it did not change while the batch was in flight.
//!
//! Hints age, from the newest write each took (so every write a stand-in
//! acknowledged is kept a grace). A tombstone is purged no sooner than one grace
//! period after the delete, so a hint applied within one grace period of its write
//! can never bring back a value deleted after it; the older siblings of a hint that
//! took later writes are covered by purge records (two graces) and the hint window
//! (within the grace, so a hint stops taking writes a grace after its owner went
//! down). So a hint whose owner stays down past half the grace goes to another
//! home replica of its key that is up (anti-entropy brings the owner up to date
//! when it returns), and a hint older than the grace is dropped, counted and
//! logged: its write survives only where it reached a home replica (all of them
//! down for half the grace, with sloppy W met by stand-ins alone, is the case it
//! does not). Without anti-entropy nothing is purged, and hints wait for their
//! owner however long it takes.
//!
//! [`Handoff`] owns the batches in flight (at most one per owner, as the
//! [`HintIndex`] paces them); what it reads and changes of the rest of the node it
//! is lent for each call ([`Env`]): the index, the store, the ring and liveness.

use std::collections::{BTreeSet, HashMap};

use qkv_proto::{DvvSet, Error, KeyState, NodeId, Request, Response, actor_node};

use crate::hints::{BATCH_KEYS_MAX, HintIndex, hint_bytes};
use crate::ring::Ring;
use crate::router::Store;

/// One batch of hints for `owner`, sent to it or (`redirected`) to another home
/// replica of the keys while it stays down.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// The home replica the hints are for.
    pub owner: NodeId,
    /// Sent to another home replica instead.
    pub redirected: bool,
    /// The keys and the hint states sent.
    pub items: Vec<(Vec<u8>, DvvSet)>,
}

impl Batch {
    /// The request that carries it.
    pub fn request(&self) -> Request {
        let items = self.items.iter().map(|(key, set)| KeyState { key: key.clone(), set: set.clone() }).collect();
        Request::ReplicaPutBatch { items, sync: false }
    }
}

/// What a handoff step uses of its node.
pub struct Env<'a, S, F: Fn(NodeId) -> bool> {
    /// This node.
    pub me: NodeId,
    /// The hints held.
    pub hints: &'a mut HintIndex,
    /// Where they are stored.
    pub store: &'a mut S,
    /// The ring, for the home replicas a redirect may go to.
    pub ring: &'a Ring,
    /// Whether a node is up.
    pub is_up: F,
    /// Monotonic time (the pace), ms.
    pub now_ms: u64,
    /// Wall-clock time (hint ages), ms.
    pub wall_ms: u64,
    /// The tombstone grace, when anti-entropy runs (`None`: hints never expire or move).
    pub grace_ms: Option<u64>,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct Handoff {
    in_flight: HashMap<u64, Batch>,
}

impl Handoff {
    /// Batches in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// A round: drop expired hints, then the next batch for each owner that is
    /// ready: to it if it is up, else (past half the grace) to another home replica.
    /// Returns each batch with where it goes; the caller sends it and
    /// [`Handoff::sent`] it under an id.
    pub fn round<S: Store, F: Fn(NodeId) -> bool>(&mut self, env: &mut Env<'_, S, F>) -> Vec<(NodeId, Batch)> {
        expire(env);
        let mut out = vec![];
        for owner in env.hints.ready_owners() {
            if !(env.is_up)(owner) {
                out.extend(redirect(env, owner));
                continue;
            }
            let keys = env.hints.next_batch(owner, env.now_ms);
            let mut items = vec![];
            for key in keys {
                match env.store.get_hint(owner, &key) {
                    Ok(Some(h)) => items.push((key, h.set)),
                    // Gone from the store: forget it here too.
                    Ok(None) => env.hints.remove(owner, &key),
                    Err(e) => tracing::warn!(owner, "reading a hint: {e}"),
                }
            }
            if items.is_empty() {
                env.hints.batch_done(owner, 0, 0, env.now_ms);
                continue;
            }
            out.push((owner, Batch { owner, redirected: false, items }));
        }
        out
    }

    /// A batch from [`Handoff::round`] went out under `id`.
    pub fn sent(&mut self, id: u64, batch: Batch) {
        debug_assert!(self.in_flight.values().all(|b| b.owner != batch.owner), "one batch per owner");
        self.in_flight.insert(id, batch);
    }

    /// The answer to batch `id`: delete what the receiver holds durably now.
    pub fn on_answer<S: Store, F: Fn(NodeId) -> bool>(
        &mut self,
        id: u64,
        env: &mut Env<'_, S, F>,
        result: Result<Response, Error>,
    ) {
        let Some(Batch { owner, redirected, items }) = self.in_flight.remove(&id) else { return };
        let (mut delivered, mut bytes) = (0u64, 0u64);
        // Items the receiver refused (their key is past its merge limit there) stay and
        // rest a while; the rest are delivered. A list naming items the batch did not
        // hold is a broken peer: nothing counts as delivered.
        let refused: Option<BTreeSet<u32>> = match &result {
            Ok(Response::ReplicaAck) => Some(BTreeSet::new()),
            Ok(Response::ReplicaBatchAck { refused }) if refused.iter().all(|&i| (i as usize) < items.len()) => {
                Some(refused.iter().copied().collect())
            }
            Ok(other) => {
                tracing::warn!(owner, "handoff batch answered with {other:?}");
                None
            }
            Err(_) => None,
        };
        if let Some(refused) = refused {
            if !refused.is_empty() {
                tracing::warn!(owner, "{} handed-off hints refused at the key's limit: kept", refused.len());
            }
            for (i, (key, sent)) in items.into_iter().enumerate() {
                if refused.contains(&(i as u32)) {
                    env.hints.refused_by_owner(owner, &key, env.now_ms);
                    continue;
                }
                match env.store.get_hint(owner, &key) {
                    Ok(Some(h)) if h.set == sent => {
                        if let Err(e) = env.store.delete_hint(owner, &key) {
                            tracing::warn!(owner, "deleting a handed-off hint: {e}");
                            continue;
                        }
                        env.hints.remove(owner, &key);
                        delivered += 1;
                        bytes += hint_bytes(&key, sent.value_bytes());
                    }
                    // Changed in flight: the newer hint goes in a later batch.
                    _ => {}
                }
            }
        } else if let Err(e) = result {
            tracing::debug!(owner, "handoff batch failed: {e}");
        }
        if redirected {
            env.hints.redirected += delivered;
        }
        env.hints.batch_done(owner, delivered, bytes, env.now_ms);
    }
}

/// Drop hints older than the tombstone grace (see the module docs).
fn expire<S: Store, F: Fn(NodeId) -> bool>(env: &mut Env<'_, S, F>) {
    // Without anti-entropy no tombstone is ever purged, so no hint can bring a
    // deleted value back.
    let Some(grace) = env.grace_ms else { return };
    let Some(cutoff) = env.wall_ms.checked_sub(grace) else { return };
    for owner in env.hints.owners_held() {
        if (env.is_up)(owner) {
            // Being handed off: delivering is always better than dropping.
            continue;
        }
        for key in env.hints.older_than(owner, cutoff, BATCH_KEYS_MAX) {
            if let Err(e) = env.store.delete_hint(owner, &key) {
                tracing::warn!(owner, "dropping an expired hint: {e}");
                continue;
            }
            tracing::warn!(
                owner,
                key = %String::from_utf8_lossy(&key[..key.len().min(64)]),
                "dropped a hint older than the tombstone grace: its owner and the key's other home \
                 replicas were down all that time"
            );
            env.hints.remove(owner, &key);
            env.hints.expired += 1;
        }
    }
}

/// Hints for `owner`, down, older than half the grace: to another home replica of
/// their key that is up (one that coordinated none of the hint's writes, when there
/// is one), one batch (one target) at a time.
fn redirect<S: Store, F: Fn(NodeId) -> bool>(env: &mut Env<'_, S, F>, owner: NodeId) -> Option<(NodeId, Batch)> {
    // Only anti-entropy would bring the owner the redirected write.
    let half = env.grace_ms? / 2;
    let cutoff = env.wall_ms.checked_sub(half)?;
    if !env.hints.can_send(env.now_ms) {
        return None;
    }
    let mut target: Option<NodeId> = None;
    let mut items = vec![];
    let mut bytes = 0u64;
    // Look past hints no home replica can take now, so they do not hold back the rest.
    for key in env.hints.older_than(owner, cutoff, 16 * BATCH_KEYS_MAX) {
        if items.len() >= BATCH_KEYS_MAX {
            break;
        }
        if env.hints.is_resting(owner, &key, env.now_ms) {
            continue;
        }
        let up: Vec<NodeId> = env
            .ring
            .preference_list(&key)
            .iter()
            .copied()
            .filter(|&n| n != owner && n != env.me && (env.is_up)(n))
            .collect();
        // Nowhere to go, or not where this batch goes: no need to read it.
        if up.is_empty() || target.is_some_and(|t| !up.contains(&t)) {
            continue;
        }
        let h = match env.store.get_hint(owner, &key) {
            Ok(Some(h)) => h,
            Ok(None) => {
                env.hints.remove(owner, &key);
                continue;
            }
            Err(e) => {
                tracing::warn!(owner, "reading a hint: {e}");
                continue;
            }
        };
        // Rather a home replica that did not coordinate the hint's writes: one that did
        // already holds them, and handing them to it would leave one copy of two.
        let coordinated = |n: NodeId| h.set.siblings().iter().any(|s| actor_node(s.dot.actor) == n);
        let better = up.iter().copied().find(|&n| !coordinated(n));
        match target {
            None => target = better.or(up.first().copied()),
            // This batch's target holds the write while another home replica that is up
            // does not: a later batch takes it there.
            Some(t) if coordinated(t) && better.is_some() => continue,
            Some(_) => {}
        }
        // Within the batch's bytes, as for the owner's own batches (a hint larger than
        // that goes alone).
        let b = hint_bytes(&key, h.set.value_bytes());
        if !items.is_empty() && bytes + b > env.hints.limits().batch_bytes_max {
            break;
        }
        bytes += b;
        items.push((key, h.set));
    }
    let to = target?;
    if items.is_empty() || !env.hints.start_batch(owner, bytes, env.now_ms) {
        return None;
    }
    Some((to, Batch { owner, redirected: true, items }))
}

#[cfg(test)]
mod tests {
    use qkv_proto::VersionVector;

    use super::*;
    use crate::hints::HintLimits;
    use crate::mem::MemStore;
    use crate::router::Hint;

    const GRACE: u64 = 10_000;

    fn state(v: &[u8]) -> DvvSet {
        let mut s = DvvSet::new();
        s.update(&VersionVector::new(), Some(v.to_vec()), 9);
        s
    }

    /// Node 1 holding hints for node 2, on a ring of three where every node is home.
    struct Node {
        hints: HintIndex,
        store: MemStore,
        ring: Ring,
        up: BTreeSet<NodeId>,
        now: u64,
        handoff: Handoff,
        next_id: u64,
    }

    impl Node {
        fn new() -> Node {
            Node::with(HintLimits::default())
        }

        fn with(limits: HintLimits) -> Node {
            Node {
                hints: HintIndex::new(limits, 0),
                store: MemStore::default(),
                ring: Ring::new(&[1, 2, 3], 16, 3).unwrap(),
                up: [1, 2, 3].into(),
                now: 0,
                handoff: Handoff::default(),
                next_id: 0,
            }
        }

        fn hold(&mut self, owner: NodeId, key: &[u8], v: &[u8]) {
            let set = state(v);
            self.hints.record(owner, key, hint_bytes(key, set.value_bytes()), self.now);
            self.store.put_hint(owner, key, &Hint { set, created_ms: self.now }).unwrap();
        }

        fn env(&mut self) -> (&mut Handoff, Env<'_, MemStore, impl Fn(NodeId) -> bool + '_>) {
            let up = &self.up;
            let env = Env {
                me: 1,
                hints: &mut self.hints,
                store: &mut self.store,
                ring: &self.ring,
                is_up: move |n| up.contains(&n),
                now_ms: self.now,
                wall_ms: self.now,
                grace_ms: Some(GRACE),
            };
            (&mut self.handoff, env)
        }

        /// A round; every batch it makes goes out. Returns (id, target, batch).
        fn round(&mut self) -> Vec<(u64, NodeId, Batch)> {
            let batches = {
                let (handoff, mut env) = self.env();
                handoff.round(&mut env)
            };
            batches
                .into_iter()
                .map(|(to, b)| {
                    self.next_id += 1;
                    self.handoff.sent(self.next_id, b.clone());
                    (self.next_id, to, b)
                })
                .collect()
        }

        fn answer(&mut self, id: u64, result: Result<Response, Error>) {
            let (handoff, mut env) = self.env();
            handoff.on_answer(id, &mut env, result);
        }

        fn held(&self) -> usize {
            self.store.hints.len()
        }
    }

    #[test]
    fn a_batch_acked_by_its_owner_is_deleted_and_a_hint_changed_in_flight_is_kept() {
        let mut n = Node::new();
        n.hold(2, b"a", b"1");
        n.hold(2, b"b", b"1");
        let sent = n.round();
        assert_eq!(sent.len(), 1);
        let (id, to, batch) = &sent[0];
        assert_eq!((*to, batch.owner, batch.redirected, batch.items.len()), (2, 2, false, 2));
        assert_eq!(n.round(), vec![], "one batch per owner in flight");
        n.hold(2, b"b", b"2");
        n.answer(*id, Ok(Response::ReplicaAck));
        assert_eq!(n.held(), 1, "b changed while its batch was in flight: kept for the next");
        assert_eq!((n.hints.handed_off, n.handoff.in_flight()), (1, 0));
    }

    #[test]
    fn a_refused_item_stays_and_a_refusal_naming_items_it_did_not_send_delivers_nothing() {
        let mut n = Node::new();
        n.hold(2, b"a", b"1");
        n.hold(2, b"b", b"1");
        let (id, _, batch) = n.round().remove(0);
        let refused_key = batch.items[0].0.clone();
        n.answer(id, Ok(Response::ReplicaBatchAck { refused: vec![0] }));
        assert_eq!(n.held(), 1);
        assert!(n.store.hints.keys().any(|(_, k)| *k == refused_key), "the refused hint is kept");
        n.now += 1_000;
        assert_eq!(n.round(), vec![], "and rests: it does not take the next batch's place");
        let mut m = Node::new();
        m.hold(2, b"a", b"1");
        let (id, _, _) = m.round().remove(0);
        m.answer(id, Ok(Response::ReplicaBatchAck { refused: vec![7] }));
        assert_eq!((m.held(), m.hints.handed_off), (1, 0), "a broken refusal list delivers nothing");
    }

    #[test]
    fn hints_of_an_owner_down_past_half_the_grace_go_to_another_home_replica_and_past_the_grace_are_dropped() {
        let mut n = Node::new();
        n.hold(2, b"a", b"1");
        n.up.remove(&2);
        n.now = GRACE / 2 - 1;
        assert_eq!(n.round(), vec![], "not yet half the grace");
        n.now = GRACE / 2 + 1;
        let (id, to, batch) = n.round().remove(0);
        assert_eq!((to, batch.redirected), (3, true), "to the other home replica that is up");
        n.answer(id, Err(Error::Unreachable("lost".into())));
        assert_eq!(n.held(), 1, "a failed redirect keeps the hint");
        n.up.remove(&3);
        n.now = GRACE + 1;
        assert_eq!(n.round(), vec![], "nowhere to go");
        assert_eq!((n.held(), n.hints.expired), (0, 1), "older than the grace: dropped and counted");
    }

    #[test]
    fn a_redirect_goes_to_a_home_replica_that_did_not_coordinate_the_write_when_one_is_up() {
        // Four homes: node 1 holds node 2's hint of a write node 3 coordinated (and so
        // holds); node 4 is the copy that keeps two.
        let mut n = Node::new();
        n.ring = Ring::new(&[1, 2, 3, 4], 16, 4).unwrap();
        n.up = [1, 3, 4].into();
        let mut set = DvvSet::new();
        set.update(&VersionVector::new(), Some(b"1".to_vec()), qkv_proto::actor(3, 7));
        n.hints.record(2, b"a", hint_bytes(b"a", set.value_bytes()), 0);
        n.store.put_hint(2, b"a", &Hint { set, created_ms: 0 }).unwrap();
        n.now = GRACE / 2 + 1;
        let (id, to, _) = n.round().remove(0);
        assert_eq!(to, 4, "not to node 3, which holds the write already");
        n.answer(id, Err(Error::Unreachable("lost".into())));
        // With node 4 down, the coordinator is better than nothing.
        n.up.remove(&4);
        n.now = GRACE - 1;
        let (_, to, _) = n.round().remove(0);
        assert_eq!(to, 3);
    }

    #[test]
    fn a_redirected_batch_keeps_within_the_batch_bytes_and_a_larger_hint_goes_alone() {
        let value = vec![7u8; 400];
        let one = hint_bytes(b"k0", value.len());
        let mut n = Node::with(HintLimits { batch_bytes_max: 2 * one + one / 2, ..HintLimits::default() });
        for i in 0..5 {
            n.hold(2, format!("k{i}").as_bytes(), &value);
        }
        n.up.remove(&2);
        n.now = GRACE / 2 + 1;
        let (id, _, batch) = n.round().remove(0);
        let bytes: u64 = batch.items.iter().map(|(k, s)| hint_bytes(k, s.value_bytes())).sum();
        assert_eq!((batch.items.len(), bytes), (2, 2 * one), "two fit, a third would overshoot");
        n.answer(id, Ok(Response::ReplicaAck));
        let mut m = Node::with(HintLimits { batch_bytes_max: one / 2, ..HintLimits::default() });
        m.hold(2, b"k0", &value);
        m.hold(2, b"k1", &value);
        m.up.remove(&2);
        m.now = GRACE / 2 + 1;
        let (_, _, batch) = m.round().remove(0);
        assert_eq!(batch.items.len(), 1, "a hint past the batch bytes goes alone, never stuck");
    }
}
