//! The replica's state changes: the only two ways a key's state moves.
//!
//! Both are pure; the node (and the simulator) read the current state, call one
//! of these, and persist the result before acknowledging.

use qkv_proto::{Actor, Dot, DvvSet, Error, Seen};

/// Limits on what a replica accepts.
///
/// A key's state is bounded twice. A coordinator refuses a write whose new state
/// would hold more than `key_siblings_max` siblings or `key_state_bytes_max` bytes
/// ([`Error::KeyFull`]). Replicas merge states coordinators accepted concurrently
/// (a partition, sloppy writes), which can add up past that, so a replica refuses
/// only a merge past twice the limits ([`Limits::check_merged`]); the frame limit is
/// sized for that (the node's config), so every state a replica holds can be read,
/// replicated, handed off and compared.
#[derive(Clone, Copy, Debug, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest key, bytes.
    pub key_bytes_max: usize,
    /// Largest value, bytes.
    pub value_bytes_max: usize,
    /// Most siblings (tombstones included) a write may leave in one key.
    pub key_siblings_max: usize,
    /// Most bytes (values, clocks and dots: [`DvvSet::size_bytes`]) a write may leave in one key.
    pub key_state_bytes_max: usize,
}

/// Default for [`Limits::key_siblings_max`] (Riak's `max_siblings` warns at 25 and refuses at 100).
pub const KEY_SIBLINGS_MAX_DEFAULT: usize = 32;
/// Default for [`Limits::key_state_bytes_max`]: two values of the largest default size.
pub const KEY_STATE_BYTES_MAX_DEFAULT: usize = 8 * 1024 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            key_bytes_max: qkv_proto::KEY_BYTES_MAX_DEFAULT,
            value_bytes_max: qkv_proto::VALUE_BYTES_MAX_DEFAULT,
            key_siblings_max: KEY_SIBLINGS_MAX_DEFAULT,
            key_state_bytes_max: KEY_STATE_BYTES_MAX_DEFAULT,
        }
    }
}

impl Limits {
    /// A coordinator's check of the state its write would leave (`before`: the
    /// [`footprint`] of the state now). A write that shrinks the key (one resolving
    /// siblings) always passes.
    pub fn check_write(&self, before: (usize, usize), after: &DvvSet) -> Result<(), Error> {
        self.check_state(before, after, self.key_siblings_max, self.key_state_bytes_max)
    }

    /// A replica's check of a merge: twice the coordinator's limits (see [`Limits`]).
    pub fn check_merged(&self, before: (usize, usize), after: &DvvSet) -> Result<(), Error> {
        self.check_state(
            before,
            after,
            self.key_siblings_max.saturating_mul(2),
            self.key_state_bytes_max.saturating_mul(2),
        )
    }

    /// A read coordinator's check of the merge of its replies: replicas each hold at
    /// most twice the limit, but merging several diverged ones can pass the frame a
    /// node sends. Reading one replica (R = one) always fits, and writing with that
    /// read's context shrinks the key.
    pub fn check_reply(&self, merged: &DvvSet, replied: usize) -> Result<(), Error> {
        if !self.fits_reply(merged) {
            return Err(Error::TooLarge {
                what: format!(
                    "the merge of {replied} replicas' states of this key ({} siblings; read it at R=one and write \
                     with that read's context to resolve them)",
                    merged.siblings().len()
                ),
                size: merged.size_bytes() as u64,
                max: self.key_state_bytes_max.saturating_mul(2) as u64,
            });
        }
        Ok(())
    }

    /// True when `state` is within what a replica may hold (twice the per-key bytes),
    /// so a reply or a repair of it fits every frame.
    pub fn fits_reply(&self, state: &DvvSet) -> bool {
        state.size_bytes() <= self.key_state_bytes_max.saturating_mul(2)
    }

    fn check_state(
        &self,
        before: (usize, usize),
        after: &DvvSet,
        siblings_max: usize,
        bytes_max: usize,
    ) -> Result<(), Error> {
        let (siblings, bytes) = before;
        let (siblings_after, bytes_after) = (after.siblings().len(), after.size_bytes());
        let grows = siblings_after > siblings || bytes_after > bytes;
        if grows && (siblings_after > siblings_max || bytes_after > bytes_max) {
            return Err(Error::KeyFull {
                siblings: siblings as u64,
                bytes: bytes as u64,
                siblings_after: siblings_after as u64,
                bytes_after: bytes_after as u64,
                siblings_max: siblings_max as u64,
                bytes_max: bytes_max as u64,
            });
        }
        Ok(())
    }

    /// Check a key and an optional value against the limits.
    pub fn check(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), Error> {
        if key.is_empty() {
            return Err(Error::BadRequest("the key is empty".into()));
        }
        if key.len() > self.key_bytes_max {
            return Err(Error::TooLarge { what: "key".into(), size: key.len() as u64, max: self.key_bytes_max as u64 });
        }
        if let Some(v) = value
            && v.len() > self.value_bytes_max
        {
            return Err(Error::TooLarge {
                what: "value".into(),
                size: v.len() as u64,
                max: self.value_bytes_max as u64,
            });
        }
        Ok(())
    }
}

/// A key's siblings and bytes ([`DvvSet::size_bytes`]); zero for a key with no state.
pub fn footprint(state: Option<&DvvSet>) -> (usize, usize) {
    state.map_or((0, 0), |s| (s.siblings().len(), s.size_bytes()))
}

/// The coordinator's write: a new dot from `actor` for `value` (`None`: delete) by a
/// writer who saw `seen`, with a counter above `floor` (the highest the actor ever
/// minted) and above the key's own entry; never taken from `seen`, which a client sent.
///
/// Returns the new state, what the writer has now seen (for the context it gets
/// back) and the new dot. That covers exactly what `seen` covered plus the new write,
/// never a concurrent write the writer did not see: the new dot joins the vector
/// only when no live sibling of `actor` is left that `seen` did not cover (then
/// every dot of `actor` the vector claims is the writer's or dead), and is kept
/// apart otherwise. Dots of `seen` this replica already knows are dropped: the new
/// state carries them in its history.
///
/// A write whose `write_id` a live sibling already carries is a retry of it: the
/// state is returned unchanged, with that sibling's dot.
pub fn coordinate(
    local: Option<DvvSet>,
    seen: &Seen,
    value: Option<Vec<u8>>,
    actor: Actor,
    floor: u64,
    write_id: Option<u64>,
) -> (DvvSet, Seen, Dot) {
    let s = local.unwrap_or_default();
    if let Some(dot) = write_id.and_then(|id| s.find_write(id, value.as_deref())) {
        let back = retried(&s, seen, dot);
        return (s, back, dot);
    }
    let mut s = s;
    // Above the key's clock and cloud as well as the node's floor: never a dot this state has seen.
    let in_cloud = s.cloud().iter().filter(|d| d.actor == actor).map(|d| d.counter).max().unwrap_or(0);
    let dot = Dot { actor, counter: s.clock().get(actor).max(in_cloud).max(floor) + 1 };
    let concurrent_own = s.siblings().iter().any(|x| x.dot.actor == actor && !seen.covers(x.dot));
    let mut back = unknown_to(&s, seen);
    s.apply(seen, value, dot, write_id);
    if concurrent_own {
        back.add_dot(dot);
    } else {
        back.vv.add(dot);
        back.normalize();
    }
    (s, back, dot)
}

/// The context for a retry of the write `dot` that `state` already holds or covers:
/// what the writer saw plus that write, kept apart (never a concurrent one).
pub fn retried(state: &DvvSet, seen: &Seen, dot: Dot) -> Seen {
    let mut back = unknown_to(state, seen);
    if !back.covers(dot) {
        back.add_dot(dot);
    }
    back
}

/// What the writer saw, without the single dots `state` already knows (its history
/// carries them): the start of the context a write answers with.
fn unknown_to(state: &DvvSet, seen: &Seen) -> Seen {
    Seen { vv: seen.vv.clone(), dots: seen.dots.iter().copied().filter(|d| !state.covers_dot(*d)).collect() }
}

/// The context rule before dotted contexts (`Bugs::vv_context`): the writer's vector
/// joined with the new dot, which claims concurrent writes of the same actor.
pub fn vv_context(seen: &Seen, dot: Dot) -> Seen {
    let mut back = seen.clone();
    back.vv.add(dot);
    back.normalize();
    back
}

/// Merge a state received from another replica; `None` when nothing changes (no write needed).
pub fn merge(local: Option<&DvvSet>, incoming: &DvvSet) -> Result<Option<DvvSet>, Error> {
    if !incoming.is_valid() {
        return Err(Error::BadRequest("invalid version vector set".into()));
    }
    Ok(match local {
        Some(l) => Some(l.clone().merged(incoming)).filter(|m| m != l),
        None => Some(incoming.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_skips_writes_that_change_nothing() {
        let (s, _, _) = coordinate(None, &Seen::new(), Some(b"a".to_vec()), 1, 0, None);
        assert_eq!(merge(Some(&s), &s), Ok(None));
        assert_eq!(merge(None, &s), Ok(Some(s.clone())));
        let (t, _, _) = coordinate(None, &Seen::new(), Some(b"b".to_vec()), 2, 0, None);
        assert_eq!(merge(Some(&s), &t).unwrap().unwrap().values().count(), 2);
    }

    #[test]
    fn the_returned_context_covers_only_what_the_client_saw_and_its_write() {
        let (s, _, _) = coordinate(None, &Seen::new(), Some(b"other".to_vec()), 2, 0, None);
        let (s, ctx, _) = coordinate(Some(s), &Seen::new(), Some(b"mine".to_vec()), 1, 0, None);
        // Overwriting with the returned context replaces "mine" but keeps the concurrent "other".
        let (s, _, _) = coordinate(Some(s), &ctx, Some(b"mine2".to_vec()), 1, 0, None);
        let vals: Vec<_> = s.values().collect();
        assert_eq!(vals, vec![b"mine2".as_slice(), b"other"]);
    }

    #[test]
    fn a_purged_key_gets_a_dot_no_old_replica_has_seen() {
        // A tombstone replicas still hold, after the coordinator purged its own copy.
        let (s, ctx, _) = coordinate(None, &Seen::new(), Some(b"old".to_vec()), 1, 0, None);
        let (tomb, _, _) = coordinate(Some(s), &ctx, None, 1, 5, None);
        // Counting from the key's (purged, so empty) state would mint a covered dot: lost.
        let (blind, _, dot) = coordinate(None, &Seen::new(), Some(b"new".to_vec()), 1, 0, None);
        assert!(tomb.clock().covers(dot));
        assert_eq!(tomb.clone().merged(&blind).values().count(), 0, "the new write would vanish");
        // The node-wide floor keeps it.
        let (fresh, _, dot) = coordinate(None, &Seen::new(), Some(b"new".to_vec()), 1, 6, None);
        assert!(!tomb.clock().covers(dot));
        assert_eq!(tomb.merged(&fresh).values().collect::<Vec<_>>(), vec![b"new".as_slice()]);
    }

    #[test]
    fn limits() {
        let l = Limits { key_bytes_max: 4, value_bytes_max: 8, ..Limits::default() };
        assert!(l.check(b"abcd", Some(b"12345678")).is_ok());
        assert!(matches!(l.check(b"abcde", None), Err(Error::TooLarge { .. })));
        assert!(matches!(l.check(b"a", Some(&[0; 9])), Err(Error::TooLarge { .. })));
        assert!(l.check(b"", None).is_err());
    }

    #[test]
    fn a_key_is_bounded_and_stays_resolvable() {
        let l = Limits { key_siblings_max: 3, key_state_bytes_max: 1000, ..Limits::default() };
        let mut s: Option<DvvSet> = None;
        let mut seen = Seen::new();
        for i in 0..3u64 {
            let (next, _, _) = coordinate(s.clone(), &Seen::new(), Some(vec![b'x'; 100]), 1, i * 10, None);
            l.check_write(footprint(s.as_ref()), &next).unwrap();
            seen = next.seen();
            s = Some(next);
        }
        // A fourth blind sibling is refused, with the numbers.
        let (next, _, _) = coordinate(s.clone(), &Seen::new(), Some(vec![b'x'; 100]), 1, 40, None);
        let err = l.check_write(footprint(s.as_ref()), &next).unwrap_err();
        assert!(matches!(err, Error::KeyFull { siblings: 3, siblings_after: 4, siblings_max: 3, .. }), "{err}");
        // So is a value that would take it past the bytes.
        let (next, _, _) = coordinate(s.clone(), &Seen::new(), Some(vec![b'x'; 800]), 1, 40, None);
        assert!(matches!(l.check_write(footprint(s.as_ref()), &next), Err(Error::KeyFull { .. })));
        // A write with the read's context resolves it.
        let (next, _, _) = coordinate(s.clone(), &seen, Some(vec![b'y'; 500]), 1, 40, None);
        l.check_write(footprint(s.as_ref()), &next).unwrap();
        assert_eq!(next.siblings().len(), 1);
        // A replica takes a merge up to twice the limits.
        assert!(l.check_merged(footprint(s.as_ref()), &next.clone().merged(s.as_ref().unwrap())).is_ok());
    }
}
