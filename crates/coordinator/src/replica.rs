//! The replica's state changes: the only two ways a key's state moves.
//!
//! Both are pure; the node (and the simulator) read the current state, call one
//! of these, and persist the result before acknowledging.

use qkv_proto::{Context, DvvSet, Error, NodeId};

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

/// The coordinator's write: a new dot from `me` for `value` (`None`: delete) after `context`.
///
/// Returns the new state and the context to give the client: what it sent plus the
/// new dot. Not the state's whole clock, which may cover concurrent siblings the
/// client never saw; a later write with that context would silently drop them.
pub fn coordinate(local: Option<DvvSet>, context: &Context, value: Option<Vec<u8>>, me: NodeId) -> (DvvSet, Context) {
    let mut s = local.unwrap_or_default();
    let dot = s.update(&context.0, value, me);
    let mut ctx = context.clone();
    ctx.0.add(dot);
    (s, ctx)
}

/// Merge a state received from another replica; `None` when nothing changes (no write needed).
pub fn merge(local: Option<DvvSet>, incoming: &DvvSet) -> Result<Option<DvvSet>, Error> {
    if !incoming.is_valid() {
        return Err(Error::BadRequest("invalid version vector set".into()));
    }
    match local {
        Some(l) if l.covers(incoming) => Ok(None),
        Some(l) => Ok(Some(l.merged(incoming))),
        None => Ok(Some(incoming.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_skips_writes_that_change_nothing() {
        let (s, _) = coordinate(None, &Context::empty(), Some(b"a".to_vec()), 1);
        assert_eq!(merge(Some(s.clone()), &s), Ok(None));
        assert_eq!(merge(None, &s), Ok(Some(s.clone())));
        let (t, _) = coordinate(None, &Context::empty(), Some(b"b".to_vec()), 2);
        assert_eq!(merge(Some(s.clone()), &t).unwrap().unwrap().values().count(), 2);
    }

    #[test]
    fn the_returned_context_covers_only_what_the_client_saw_and_its_write() {
        let (s, _) = coordinate(None, &Context::empty(), Some(b"other".to_vec()), 2);
        let (s, ctx) = coordinate(Some(s), &Context::empty(), Some(b"mine".to_vec()), 1);
        // Overwriting with the returned context replaces "mine" but keeps the concurrent "other".
        let (s, _) = coordinate(Some(s), &ctx, Some(b"mine2".to_vec()), 1);
        let vals: Vec<_> = s.values().collect();
        assert_eq!(vals, vec![b"mine2".as_slice(), b"other"]);
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
