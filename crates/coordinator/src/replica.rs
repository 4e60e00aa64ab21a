//! The replica's state changes: the only two ways a key's state moves.
//!
//! Both are pure; the node (and the simulator) read the current state, call one
//! of these, and persist the result before acknowledging.

use qkv_proto::{Actor, Dot, DvvSet, Error, Seen};

/// Limits on what a replica accepts.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest key, bytes.
    pub key_bytes_max: usize,
    /// Largest value, bytes.
    pub value_bytes_max: usize,
}

impl Limits {
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
pub fn coordinate(
    local: Option<DvvSet>,
    seen: &Seen,
    value: Option<Vec<u8>>,
    actor: Actor,
    floor: u64,
) -> (DvvSet, Seen, Dot) {
    let mut s = local.unwrap_or_default();
    let dot = Dot { actor, counter: s.clock().get(actor).max(floor) + 1 };
    let concurrent_own = s.siblings().iter().any(|x| x.dot.actor == actor && !seen.covers(x.dot));
    let mut back =
        Seen { vv: seen.vv.clone(), dots: seen.dots.iter().copied().filter(|d| !s.covers_dot(*d)).collect() };
    s.apply(seen, value, dot);
    if concurrent_own {
        back.add_dot(dot);
    } else {
        back.vv.add(dot);
        back.normalize();
    }
    (s, back, dot)
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
        let (s, _, _) = coordinate(None, &Seen::new(), Some(b"a".to_vec()), 1, 0);
        assert_eq!(merge(Some(&s), &s), Ok(None));
        assert_eq!(merge(None, &s), Ok(Some(s.clone())));
        let (t, _, _) = coordinate(None, &Seen::new(), Some(b"b".to_vec()), 2, 0);
        assert_eq!(merge(Some(&s), &t).unwrap().unwrap().values().count(), 2);
    }

    #[test]
    fn the_returned_context_covers_only_what_the_client_saw_and_its_write() {
        let (s, _, _) = coordinate(None, &Seen::new(), Some(b"other".to_vec()), 2, 0);
        let (s, ctx, _) = coordinate(Some(s), &Seen::new(), Some(b"mine".to_vec()), 1, 0);
        // Overwriting with the returned context replaces "mine" but keeps the concurrent "other".
        let (s, _, _) = coordinate(Some(s), &ctx, Some(b"mine2".to_vec()), 1, 0);
        let vals: Vec<_> = s.values().collect();
        assert_eq!(vals, vec![b"mine2".as_slice(), b"other"]);
    }

    #[test]
    fn a_purged_key_gets_a_dot_no_old_replica_has_seen() {
        // A tombstone replicas still hold, after the coordinator purged its own copy.
        let (s, ctx, _) = coordinate(None, &Seen::new(), Some(b"old".to_vec()), 1, 0);
        let (tomb, _, _) = coordinate(Some(s), &ctx, None, 1, 5);
        // Counting from the key's (purged, so empty) state would mint a covered dot: lost.
        let (blind, _, dot) = coordinate(None, &Seen::new(), Some(b"new".to_vec()), 1, 0);
        assert!(tomb.clock().covers(dot));
        assert_eq!(tomb.clone().merged(&blind).values().count(), 0, "the new write would vanish");
        // The node-wide floor keeps it.
        let (fresh, _, dot) = coordinate(None, &Seen::new(), Some(b"new".to_vec()), 1, 6);
        assert!(!tomb.clock().covers(dot));
        assert_eq!(tomb.merged(&fresh).values().collect::<Vec<_>>(), vec![b"new".as_slice()]);
    }

    #[test]
    fn limits() {
        let l = Limits { key_bytes_max: 4, value_bytes_max: 8 };
        assert!(l.check(b"abcd", Some(b"12345678")).is_ok());
        assert!(matches!(l.check(b"abcde", None), Err(Error::TooLarge { .. })));
        assert!(matches!(l.check(b"a", Some(&[0; 9])), Err(Error::TooLarge { .. })));
        assert!(l.check(b"", None).is_err());
    }
}
